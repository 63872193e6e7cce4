"""The OpenAPI document states the services' rules (issue 11 A10): password length, name and
email lengths, card-name length, the bank account number's shape, and the per-person card
limit. Each limit in the document is the service's own (the same constant, or the same
numbers where the service states them as literals), and a value just past it is refused by
the schema and by the service alike, naming the same parameter (and, for passwords, with the
same code); a value at the limit passes both.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from portal.api import cards as cards_api
from portal.api import payouts as payouts_api
from portal.domain.errors import InvalidInput
from portal.services.identity import accounts, passwords, users
from portal.services.shared.settings import ServiceSettings
from portal.services.shared.uow import UnitOfWork
from portal.services.wallet import activity, cards, wallet
from tests.api.test_auth_api import API, PASSWORD, client_for, error_of, new_email, token_for
from tests.conftest import SYSTEM

NAME_MAX = users.MAX_NAME_LENGTH


@pytest.fixture(scope="module")
def doc(app: Flask) -> dict[str, Any]:
    response = app.test_client().get(f"{API}/openapi.json")
    assert response.status_code == 200
    return response.get_json()  # type: ignore[no-any-return]


def prop(doc: dict[str, Any], model: str, field: str) -> dict[str, Any]:
    """A request body field's schema (the non-null branch of an optional one)."""
    schema = doc["components"]["schemas"][model]["properties"][field]
    for option in schema.get("anyOf", ()):
        if option.get("type") == "string":
            return {**schema, **option}
    return schema  # type: ignore[no-any-return]


@pytest.fixture
def api(app: Flask, connection: Any) -> FlaskClient:
    return client_for(app)


# -- the document states the services' numbers --------------------------------------------------
def test_password_bounds_are_the_policys(doc: dict[str, Any]) -> None:
    for model in ("Registration", "PasswordChange"):
        password = prop(doc, model, "password")
        assert (password["minLength"], password["maxLength"]) == (
            passwords.MIN_LENGTH, passwords.MAX_LENGTH,
        ), model  # fmt: skip
        assert f"{passwords.MIN_LENGTH} to {passwords.MAX_LENGTH}" in password["description"]
    # Signing in takes any password the user may have set before the policy: no lower bound.
    assert "minLength" not in prop(doc, "TokenRequest", "password")


@pytest.mark.parametrize(
    ("model", "fields"),
    [
        ("Registration", ("first_name", "last_name")),
        ("NewUser", ("first_name", "last_name")),
        ("ProfileUpdate", ("first_name", "last_name")),
        ("UserUpdate", ("first_name", "last_name")),
    ],
)
def test_name_bounds_are_the_services(doc: dict[str, Any], model: str, fields: tuple) -> None:
    for field in fields:
        name = prop(doc, model, field)
        assert (name["minLength"], name["maxLength"]) == (1, users.MAX_NAME_LENGTH), field


def test_email_and_card_name_bounds_are_the_services(doc: dict[str, Any]) -> None:
    for model, field in (("Registration", "email"), ("NewUser", "email"),
                         ("UserUpdate", "email"), ("EmailChangeRequest", "new_email")):  # fmt: skip
        assert prop(doc, model, field)["maxLength"] == users.MAX_EMAIL_LENGTH, model
    assert cards.MAX_CARD_NAME == activity.MAX_CARD_NAME  # issuing and renaming agree
    for model in ("NewCard", "CardUpdate"):
        assert prop(doc, model, "name")["maxLength"] == cards.MAX_CARD_NAME, model


def test_the_card_limit_is_stated_on_post_cards(doc: dict[str, Any]) -> None:
    default = next(
        f.default for f in dataclasses.fields(ServiceSettings) if f.name == "max_cards_per_user"
    )
    issue = doc["paths"][f"{API}/cards"]["post"]

    assert default == cards_api.DEFAULT_MAX_CARDS
    assert f"at most {default} cards" in issue["description"]
    assert "PORTAL_MAX_CARDS_PER_USER" in issue["description"]
    assert "`limit_exceeded`" in issue["description"]
    assert "422" in issue["responses"]


def test_the_bank_account_number_rule_is_stated(doc: dict[str, Any]) -> None:
    number = prop(doc, "NewBankAccount", "account_number")

    assert number["pattern"] == payouts_api.ACCOUNT_NUMBER_PATTERN
    assert (number["minLength"], number["maxLength"]) == (
        payouts_api.ACCOUNT_NUMBER_MIN, 2 * payouts_api.ACCOUNT_NUMBER_MAX,
    )  # fmt: skip
    for field in ("bank_name", "account_holder"):
        bounds = prop(doc, "NewBankAccount", field)
        assert (bounds["minLength"], bounds["maxLength"]) == (
            payouts_api.BANK_TEXT_MIN, payouts_api.BANK_TEXT_MAX,
        )  # fmt: skip


# -- the schema and the service refuse the same values ------------------------------------------
def service_refusal(call: Any) -> InvalidInput | None:
    try:
        call()
    except InvalidInput as exc:
        return exc
    return None


@pytest.mark.parametrize(
    ("first_name", "refused"), [("N" * NAME_MAX, False), ("N" * (NAME_MAX + 1), True)]
)
def test_a_name_past_the_limit_is_refused_by_schema_and_service_alike(
    api: FlaskClient, first_name: str, refused: bool
) -> None:
    service = service_refusal(lambda: users.check_names(first_name, "Lovelace"))
    response = api.post(
        f"{API}/auth/register",
        json={"first_name": first_name, "last_name": "Lovelace", "email": new_email(),
              "password": PASSWORD, "password_confirmation": PASSWORD},
    )  # fmt: skip

    if refused:
        error = error_of(response, 422)
        assert service is not None
        assert error["param"] == service.param == "first_name"
        assert error["code"] == service.code == "parameter_invalid"
    else:
        assert service is None
        assert response.status_code == 201, response.get_data(as_text=True)


@pytest.mark.parametrize(
    ("length", "code"),
    [
        (passwords.MIN_LENGTH - 1, "password_too_short"),
        (passwords.MAX_LENGTH + 1, "password_too_long"),
        (passwords.MAX_LENGTH, None),
    ],
)
def test_a_password_past_the_bounds_gets_the_services_code_from_the_schema(
    api: FlaskClient, uow: UnitOfWork, length: int, code: str | None
) -> None:
    password = ("q7-Zw" * 40)[:length]
    service = service_refusal(lambda: passwords.check_password_policy(password, password))
    user = accounts.get_user_view(
        uow,
        users.create_user(
            uow, actor=SYSTEM, email=new_email(), first_name="Ada", last_name="Lovelace",
            password=PASSWORD, verified=True,
        ).id,
    )  # fmt: skip
    token = token_for(uow, user)

    response = api.post(
        f"{API}/users/me/password",
        json={"current_password": PASSWORD, "password": password,
              "password_confirmation": password},
        headers={"Authorization": f"Bearer {token}"},
    )  # fmt: skip

    if code is None:
        assert service is None
        assert response.status_code == 204, response.get_data(as_text=True)
    else:
        error = error_of(response, 422)
        assert service is not None
        assert (error["code"], error["param"]) == (service.code, service.param) == (
            code, "password",
        )  # fmt: skip


@pytest.mark.parametrize("name", ["c" * cards.MAX_CARD_NAME, "c" * (cards.MAX_CARD_NAME + 1)])
def test_a_card_name_past_the_limit_is_refused_by_schema_and_service_alike(
    api: FlaskClient, uow: UnitOfWork, name: str
) -> None:
    user = accounts.get_user_view(uow, accounts.register(
        uow, email=new_email(), first_name="Ada", last_name="Lovelace", password=PASSWORD,
        password_confirmation=PASSWORD,
    ).id)  # fmt: skip
    headers = {"Authorization": f"Bearer {token_for(uow, user)}"}
    too_long = len(name) > cards.MAX_CARD_NAME

    service = service_refusal(
        lambda: cards.issue_card(
            uow, actor=user.actor, user_id=user.id, card_type="debit", brand="visa",
            currency="usd", name=name,
        )
    )  # fmt: skip
    response = api.post(
        f"{API}/cards", json={"card_type": "debit", "brand": "visa", "currency": "usd",
                              "name": name}, headers=headers,
    )  # fmt: skip

    if too_long:
        error = error_of(response, 422)
        assert service is not None
        assert error["param"] == service.param == "name"
    else:
        assert service is None
        assert response.status_code == 201, response.get_data(as_text=True)


def test_cards_past_the_limit_are_refused_as_documented(
    app: Flask, api: FlaskClient, uow: UnitOfWork
) -> None:
    limit = app.config["SERVICE_SETTINGS"].max_cards_per_user
    user = accounts.get_user_view(uow, accounts.register(
        uow, email=new_email(), first_name="Ada", last_name="Lovelace", password=PASSWORD,
        password_confirmation=PASSWORD,
    ).id)  # fmt: skip
    headers = {"Authorization": f"Bearer {token_for(uow, user)}"}
    body = {"card_type": "debit", "brand": "visa", "currency": "usd"}

    statuses = [api.post(f"{API}/cards", json=body, headers=headers).status_code
                for _ in range(limit)]  # fmt: skip
    error = error_of(api.post(f"{API}/cards", json=body, headers=headers), 422)

    assert statuses == [201] * limit
    assert (error["code"], error["param"]) == ("limit_exceeded", "card_type")
    assert f"at most {limit} cards" in error["message"]


@pytest.mark.parametrize(
    "number",
    ["123456", "1234 5678 9012", "1234 5678 9012 3456 7890 1234 5678 9012 34", "12-34-56",
     "A" * 34, " 1 2 3 4 5 6 ", "GB29 NWBK 6016 1331",
     "12345", "A" * 35, "12345\u00e9", "1234_5678", "123456\t", "1234 5678 90\u0661\u0662"],
)  # fmt: skip
def test_the_account_number_pattern_accepts_what_the_service_accepts(number: str) -> None:
    service = service_refusal(lambda: wallet.BankAccount("Bank", number, "Ada L").validated())
    schema: str | None = None
    try:
        payouts_api.NewBankAccount(bank_name="Bank", account_number=number, account_holder="Ada L")
    except ValueError as exc:  # pydantic's ValidationError
        schema = str(exc)

    assert (schema is None) == (service is None), (schema, service)
    if service is not None:
        assert service.param == "account_number"
