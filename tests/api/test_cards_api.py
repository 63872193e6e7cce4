"""The cards API: issue (number and security code shown once), list, retrieve, rename, freeze,
unfreeze, staff archive and restore, balances, and the rate-limited recipient look-up; another
cardholder's cards are 404. Also holds the helpers test_money_api uses."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import jsonschema
import pytest
from flask import Flask
from flask.testing import FlaskClient

from portal.domain import cards as card_numbers
from portal.domain.ids import is_public_id, new_public_id
from portal.domain.types import Actor, IssuedCard
from portal.extensions import limiter
from portal.services.identity import tokens
from portal.services.identity.users import mask_email
from portal.services.shared.uow import UnitOfWork
from tests.api.test_auth_api import API, bearer, client_for, error_of, person, token_for
from tests.conftest import Factory


# -- helpers (also used by test_money_api) ------------------------------------------------------
def token_of(uow: UnitOfWork, actor: Actor) -> dict[str, str]:
    assert actor.id is not None
    return bearer(tokens.issue_tokens(uow, user_id=actor.id).access_token)


def no_secrets(response: Any, *cards: IssuedCard) -> None:
    """No full card number (nor its security code as a field) anywhere in the response."""
    text = response.get_data(as_text=True)
    for card in cards:
        assert card.number not in text
    assert '"number"' not in text and '"cvc"' not in text


@pytest.fixture
def api(app: Flask, connection: Any) -> FlaskClient:
    return client_for(app)


@pytest.fixture
def alice(make: Factory) -> Actor:
    return make.user(first_name="Alice", last_name="Wong")


@pytest.fixture
def budi(make: Factory) -> Actor:
    return make.user(first_name="Budi", last_name="Santoso")


@pytest.fixture
def as_alice(uow: UnitOfWork, alice: Actor) -> dict[str, str]:
    return token_of(uow, alice)


@pytest.fixture
def as_budi(uow: UnitOfWork, budi: Actor) -> dict[str, str]:
    return token_of(uow, budi)


@pytest.fixture
def as_admin(uow: UnitOfWork) -> dict[str, str]:
    return bearer(token_for(uow, person(uow, "admin")))


@pytest.fixture
def as_support(uow: UnitOfWork) -> dict[str, str]:
    return bearer(token_for(uow, person(uow, "support")))


@pytest.fixture(autouse=True)
def _fresh_limits() -> None:
    # Look-up limits count per user id, and ids start again with each test database.
    limiter.reset()


# -- issue --------------------------------------------------------------------------------------
def test_issue_shows_number_and_cvc_once(
    api: FlaskClient, alice: Actor, as_alice: dict[str, str]
) -> None:
    response = api.post(
        f"{API}/cards",
        json={"card_type": "debit", "brand": "amex", "currency": "USD", "name": "Travel"},
        headers=as_alice,
    )

    assert response.status_code == 201, response.get_data(as_text=True)
    issued = response.get_json()
    number, cvc = issued["number"], issued["cvc"]
    assert card_numbers.validate_number(number) == (number, "amex")
    assert len(cvc) == 4 and cvc.isdigit()
    assert (issued["object"], issued["last4"], issued["currency"], issued["name"]) == (
        "card", number[-4:], "usd", "Travel"
    )  # fmt: skip
    assert is_public_id("card", issued["id"]) and issued["user"] == alice.public_id
    assert issued["balance"] == {
        "object": "balance", "card": issued["id"], "currency": "usd", "posted": 0, "pending": 0,
        "available": 0,
    }  # fmt: skip
    later = [
        api.get(f"{API}/cards/{issued['id']}", headers=as_alice),
        api.get(f"{API}/cards", headers=as_alice),
        api.patch(f"{API}/cards/{issued['id']}", json={"name": "Trips"}, headers=as_alice),
        api.post(f"{API}/cards/{issued['id']}/freeze", headers=as_alice),
        api.get(f"{API}/cards/{issued['id']}/balance", headers=as_alice),
        api.get(f"{API}/activity", headers=as_alice),
    ]
    for later_response in later:
        assert later_response.status_code == 200
        text = later_response.get_data(as_text=True)
        assert number not in text
        assert '"number"' not in text and '"cvc"' not in text
    card = later[0].get_json()
    assert set(card) == {
        "id", "object", "user", "name", "card_type", "brand", "last4", "exp_month", "exp_year",
        "currency", "status", "archived", "balance", "created_at",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"card_type": "gold", "brand": "visa", "currency": "usd"}, "parameter_invalid",
         "card_type"),
        ({"card_type": "debit", "brand": "jcb", "currency": "usd"}, "parameter_invalid", "brand"),
        ({"card_type": "debit", "brand": "visa", "currency": "zzz"}, "parameter_invalid",
         "currency"),
        ({"card_type": "debit", "brand": "visa"}, "parameter_missing", "currency"),
        ({"card_type": "debit", "brand": "visa", "currency": "usd", "name": "x" * 65},
         "parameter_invalid", "name"),
    ],
)  # fmt: skip
def test_issue_refusals_name_the_field(
    api: FlaskClient, as_alice: dict[str, str], body: dict[str, Any], code: str, param: str
) -> None:
    error = error_of(api.post(f"{API}/cards", json=body, headers=as_alice), 422)

    assert (error["code"], error["param"]) == (code, param)


def test_issue_respects_the_per_person_maximum(
    api: FlaskClient, app: Flask, as_alice: dict[str, str]
) -> None:
    body = {"card_type": "prepaid", "brand": "visa", "currency": "eur"}
    maximum = app.config["SERVICE_SETTINGS"].max_cards_per_user
    for _ in range(maximum):
        assert api.post(f"{API}/cards", json=body, headers=as_alice).status_code == 201

    error = error_of(api.post(f"{API}/cards", json=body, headers=as_alice), 422)

    assert error["code"] == "limit_exceeded"
    assert len(api.get(f"{API}/cards?limit=100", headers=as_alice).get_json()["data"]) == maximum


def test_issue_for_someone_else_needs_cards_manage(
    api: FlaskClient, as_alice: dict[str, str], as_admin: dict[str, str], budi: Actor
) -> None:
    body = {"card_type": "debit", "brand": "visa", "currency": "usd", "user": budi.public_id}

    refused = error_of(api.post(f"{API}/cards", json=body, headers=as_alice), 403)
    issued = api.post(f"{API}/cards", json=body, headers=as_admin)

    assert refused["code"] == "forbidden"
    assert issued.status_code == 201 and issued.get_json()["user"] == budi.public_id


# -- read and change ----------------------------------------------------------------------------
def test_list_and_get_only_ones_own_cards(
    api: FlaskClient, make: Factory, alice: Actor, budi: Actor, as_alice: dict[str, str],
    as_budi: dict[str, str], as_support: dict[str, str],
) -> None:  # fmt: skip
    mine = [make.card(alice, balance="12.34"), make.card(alice, currency="IDR")]
    theirs = make.card(budi)

    listed = api.get(f"{API}/cards", headers=as_alice).get_json()
    assert (listed["object"], listed["url"], listed["has_more"]) == ("list", f"{API}/cards", False)
    assert [c["id"] for c in listed["data"]] == [c.public_id for c in mine]
    assert listed["data"][0]["balance"]["available"] == 1234
    assert listed["data"][1]["currency"] == "idr"
    first = api.get(f"{API}/cards?limit=1", headers=as_alice).get_json()
    rest = api.get(
        f"{API}/cards?limit=1&starting_after={mine[0].public_id}", headers=as_alice
    ).get_json()
    assert ([c["id"] for c in first["data"]], first["has_more"]) == ([mine[0].public_id], True)
    assert ([c["id"] for c in rest["data"]], rest["has_more"]) == ([mine[1].public_id], False)
    no_secrets(api.get(f"{API}/cards", headers=as_alice), *mine)
    # Someone else's card is not there, whatever the way in.
    for response in (
        api.get(f"{API}/cards/{theirs.public_id}", headers=as_alice),
        api.get(f"{API}/cards/{theirs.public_id}/balance", headers=as_alice),
        api.patch(f"{API}/cards/{theirs.public_id}", json={"name": "x"}, headers=as_alice),
        api.post(f"{API}/cards/{theirs.public_id}/freeze", headers=as_alice),
        api.post(f"{API}/cards/{theirs.public_id}/unfreeze", headers=as_alice),
        api.get(f"{API}/cards/{new_public_id('card')}", headers=as_alice),  # names nothing
        api.get(f"{API}/cards/{theirs.public_id.replace('card_', 'usr_')}", headers=as_alice),
        api.get(f"{API}/cards/{10**15}", headers=as_alice),
        api.get(f"{API}/cards/{2**64}", headers=as_alice),
    ):
        assert error_of(response, 404)["code"] == "not_found"
    error_of(api.get(f"{API}/cards?user={budi.public_id}", headers=as_alice), 404)
    assert api.get(f"{API}/cards", headers=as_budi).get_json()["data"][0]["id"] == theirs.public_id
    # Staff with cards:read see anyone's.
    staff = api.get(f"{API}/cards?user={alice.public_id}", headers=as_support).get_json()
    assert [c["id"] for c in staff["data"]] == [c.public_id for c in mine]
    assert api.get(f"{API}/cards/{theirs.public_id}", headers=as_support).status_code == 200
    error_of(api.get(f"{API}/cards"), 401)


def test_rename_freeze_and_unfreeze(
    api: FlaskClient, make: Factory, alice: Actor, as_alice: dict[str, str]
) -> None:
    card = make.card(alice)
    url = f"{API}/cards/{card.public_id}"

    renamed = api.patch(url, json={"name": " Daily "}, headers=as_alice)
    unchanged = api.patch(url, json={}, headers=as_alice)
    frozen = api.post(f"{url}/freeze", headers=as_alice)
    again = api.post(f"{url}/freeze", headers=as_alice)
    thawed = api.post(f"{url}/unfreeze", headers=as_alice)
    too_long = error_of(api.patch(url, json={"name": "y" * 65}, headers=as_alice), 422)

    assert renamed.status_code == 200 and renamed.get_json()["name"] == "Daily"
    assert unchanged.get_json()["name"] == "Daily"
    assert (frozen.get_json()["status"], again.get_json()["status"]) == ("frozen", "frozen")
    assert thawed.get_json()["status"] == "active"
    assert too_long["param"] == "name"


def test_staff_archive_and_restore(
    api: FlaskClient, make: Factory, alice: Actor, as_alice: dict[str, str],
    as_admin: dict[str, str], as_support: dict[str, str],
) -> None:  # fmt: skip
    card = make.card(alice)
    url = f"{API}/cards/{card.public_id}"

    assert error_of(api.post(f"{url}/archive", headers=as_alice), 403)["code"] == (
        "permission_denied"
    )
    error_of(api.post(f"{url}/archive", headers=as_support), 403)
    archived = api.post(f"{url}/archive", headers=as_admin)
    assert archived.status_code == 200 and archived.get_json()["archived"] is True
    assert api.get(f"{API}/cards", headers=as_alice).get_json()["data"] == []
    listed = api.get(f"{API}/cards?include_archived=true", headers=as_alice).get_json()["data"]
    assert [c["id"] for c in listed] == [card.public_id]
    assert error_of(api.post(f"{url}/freeze", headers=as_alice), 409)["code"] == "invalid_state"
    assert error_of(api.patch(url, json={"name": "z"}, headers=as_alice), 409)["code"] == (
        "invalid_state"
    )
    restored = api.post(f"{url}/restore", headers=as_admin)
    assert restored.get_json()["archived"] is False
    assert api.post(f"{url}/freeze", headers=as_admin).get_json()["status"] == "frozen"


def test_balance(
    api: FlaskClient, make: Factory, alice: Actor, as_alice: dict[str, str],
    as_support: dict[str, str],
) -> None:  # fmt: skip
    card = make.card(alice, balance="100.50")

    mine = api.get(f"{API}/cards/{card.public_id}/balance", headers=as_alice)
    staff = api.get(f"{API}/cards/{card.public_id}/balance", headers=as_support)

    assert mine.get_json() == {
        "object": "balance", "card": card.public_id, "currency": "usd", "posted": 10050,
        "pending": 0, "available": 10050,
    }  # fmt: skip
    assert staff.get_json() == mine.get_json()


# -- recipient look-up --------------------------------------------------------------------------
def budi_email(uow: UnitOfWork, who: Actor) -> str:
    return str(uow.run(lambda u: u.execute(
        "SELECT email FROM users WHERE id = :id", {"id": who.id}).scalar_one()))  # fmt: skip


def recipient_for(api: FlaskClient, headers: dict[str, str], card: IssuedCard) -> str:
    """The `to_card` that pays someone else's card: the look-up's reference for this caller."""
    found = api.post(f"{API}/cards/lookup", json={"number": card.number}, headers=headers)
    assert found.status_code == 200, found.get_data(as_text=True)
    return str(found.get_json()["recipient"])


def test_lookup_shows_only_the_masked_recipient(
    api: FlaskClient, make: Factory, budi: Actor, as_alice: dict[str, str], uow: UnitOfWork
) -> None:
    theirs = make.card(budi, currency="IDR", brand="discover")
    spaced = "-".join(theirs.number[i : i + 4] for i in range(0, len(theirs.number), 4))

    response = api.post(f"{API}/cards/lookup", json={"number": spaced}, headers=as_alice)

    assert response.status_code == 200, response.get_data(as_text=True)
    found = response.get_json()
    reference, expires_at = found.pop("recipient"), found.pop("expires_at")
    assert found == {
        "object": "card_recipient", "brand": "discover", "last4": theirs.number[-4:],
        "currency": "idr", "holder": "Budi S.", "email": mask_email(budi_email(uow, budi)),
    }  # fmt: skip
    # The card's id is never shown: only a reference for this caller, for a quarter of an hour.
    assert reference.startswith("rcp_") and theirs.public_id not in response.get_data(True)
    assert (
        14 * 60
        <= (datetime.fromisoformat(expires_at) - datetime.now(UTC)).total_seconds()
        <= 15 * 60
    )
    assert theirs.number not in response.get_data(as_text=True)
    assert "Santoso" not in response.get_data(as_text=True)
    unknown = error_of(
        api.post(f"{API}/cards/lookup", json={"number": "4111111111111111"}, headers=as_alice),
        404,
    )
    invalid = error_of(
        api.post(f"{API}/cards/lookup", json={"number": "4111111111111112"}, headers=as_alice),
        422,
    )
    assert unknown["param"] == "number"
    assert (invalid["code"], invalid["param"]) == ("invalid_card_number", "number")


def test_lookup_is_rate_limited_per_user_and_per_address(
    app: Flask, connection: Any, uow: UnitOfWork, make: Factory, alice: Actor, budi: Actor
) -> None:
    theirs = make.card(budi)
    body = json.dumps({"number": theirs.number})
    alice_headers = {**token_of(uow, alice), "Content-Type": "application/json"}
    carol_headers = {**token_of(uow, make.user()), "Content-Type": "application/json"}

    def lookup(client: FlaskClient, headers: dict[str, str]) -> Any:
        return client.post(f"{API}/cards/lookup", data=body, headers=headers)

    # Per user: a new address each time does not help.
    answers = [lookup(client_for(app), alice_headers).status_code for _ in range(21)]
    assert answers == [200] * 20 + [429]
    limited = lookup(client_for(app), alice_headers)
    assert error_of(limited, 429)["type"] == "rate_limit_error"
    assert int(limited.headers["Retry-After"]) > 0
    # Per address: another user from the same address is limited too.
    limiter.reset()
    shared = client_for(app)
    answers = [lookup(shared, alice_headers if i % 2 else carol_headers).status_code
               for i in range(21)]  # fmt: skip
    assert answers == [200] * 20 + [429]
    # Someone else, from elsewhere, is not.
    assert lookup(client_for(app), carol_headers).status_code == 200


def test_issue_with_an_idempotency_key_is_taken_once(
    api: FlaskClient, as_alice: dict[str, str]
) -> None:
    body = {"card_type": "debit", "brand": "visa", "currency": "USD", "name": "Retry"}
    headers = {**as_alice, "Idempotency-Key": uuid.uuid4().hex}
    first = api.post(f"{API}/cards", json=body, headers=headers)
    again = api.post(f"{API}/cards", json=body, headers=headers)
    assert (first.status_code, again.status_code) == (201, 201)
    issued = first.get_json()
    # The retry answers the same card without its number and code: those were shown once.
    assert again.get_json() == {**issued, "number": None, "cvc": None}
    assert issued["number"] not in again.get_data(as_text=True)
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    # Both answers are what the document says POST /cards answers.
    document = api.get(f"{API}/openapi.json").get_json()
    created = document["paths"]["/api/v1/cards"]["post"]["responses"]["201"]
    schema = {**created["content"]["application/json"]["schema"], **document}
    validator = jsonschema.Draft202012Validator(schema)
    assert list(validator.iter_errors(issued)) == []
    assert list(validator.iter_errors(again.get_json())) == []
    assert list(validator.iter_errors({**issued, "number": 42})) != []  # the check can fail
    other = api.post(f"{API}/cards", json={**body, "brand": "amex"}, headers=headers)
    assert error_of(other, 422)["type"] == "idempotency_error"
    listed = api.get(f"{API}/cards", headers=as_alice).get_json()["data"]
    assert [c["name"] for c in listed].count("Retry") == 1
