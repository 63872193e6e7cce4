"""Paying people through the JSON API (issue 13): a person look-up by email or handle gives the
recipient reference POST /transfers takes, one answer (status and body) for no such person and
cannot receive this currency, the look-up limits, payees, receiving cards, handles, and
revealing one's own card after re-authentication (rate limited, audited)."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from portal.domain.types import Actor
from portal.extensions import limiter
from portal.services.identity import users
from portal.services.ledger import reconciliation
from portal.services.shared.uow import UnitOfWork
from portal.services.wallet import payees
from tests.api.test_auth_api import API, PASSWORD, bearer, client_for, error_of, person, token_for
from tests.api.test_cards_api import token_of
from tests.conftest import SYSTEM, Factory, new_key


@pytest.fixture
def api(app: Flask, connection: Any) -> FlaskClient:
    limiter.reset()
    return client_for(app)


def cardholder(uow: UnitOfWork, first: str, last: str, email: str | None = None) -> Actor:
    created = users.create_user(
        uow, actor=SYSTEM, email=email or f"{first.lower()}-{new_key()[:8]}@example.test",
        first_name=first, last_name=last, password=PASSWORD, verified=True,
    )  # fmt: skip
    return users.actor_for(uow, created.id)


@pytest.fixture
def alice(uow: UnitOfWork) -> Actor:
    return cardholder(uow, "Alice", "Wong")


@pytest.fixture
def budi(uow: UnitOfWork) -> Actor:
    return cardholder(uow, "Budi", "Santoso", email="budi.santoso@example.test")


def conforms(api: FlaskClient, path: str, method: str, status: int, body: Any) -> None:
    """``body`` is what the OpenAPI document says this operation answers with ``status``."""
    document = api.get(f"{API}/openapi.json").get_json()
    answer = document["paths"][f"{API}{path}"][method]["responses"][str(status)]
    schema = {**answer["content"]["application/json"]["schema"], **document}
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(body)) == []


def test_pay_a_person_by_email_then_by_handle_and_the_ledger_balances(
    api: FlaskClient, uow: UnitOfWork, make: Factory, alice: Actor, budi: Actor,
    connection: sa.Connection,
) -> None:  # fmt: skip
    mine = make.card(alice, balance="100")
    theirs = make.card(budi)
    headers = token_of(uow, alice)

    found = api.post(f"{API}/people/lookup", headers=headers,
                     json={"to": "Budi.Santoso@EXAMPLE.test", "currency": "usd"})  # fmt: skip
    assert found.status_code == 200, found.get_data(as_text=True)
    body = found.get_json()
    conforms(api, "/people/lookup", "post", 200, body)
    assert {k: body[k] for k in ("object", "currency", "holder", "email", "handle")} == {
        "object": "person_recipient", "currency": "usd", "holder": "Budi S.",
        "email": "b•••o@example.test", "handle": None,
    }  # fmt: skip
    assert theirs.public_id not in found.get_data(as_text=True)
    assert theirs.last4 not in found.get_data(as_text=True).replace(body["recipient"], "")

    sent = api.post(f"{API}/transfers", headers={**headers, "Idempotency-Key": new_key()},
                    json={"from_card": mine.public_id, "to_card": body["recipient"],
                          "amount": 1234, "currency": "usd"})  # fmt: skip
    assert sent.status_code == 201, sent.get_data(as_text=True)
    assert (
        connection.execute(
            sa.text("SELECT posted_minor FROM accounts WHERE card_id = :c"), {"c": theirs.card_id}
        ).scalar_one()
        == 1234
    )

    # Budi picks a handle; Alice pays him by it too.
    as_budi = token_of(uow, budi)
    chosen = api.put(f"{API}/users/me/handle", headers=as_budi, json={"handle": "@Budi"})
    assert (chosen.status_code, chosen.get_json()) == (200, {"object": "handle", "handle": "Budi"})
    assert api.get(f"{API}/users/me/handle", headers=as_budi).get_json()["handle"] == "Budi"
    by_handle = api.post(f"{API}/people/lookup", headers=headers,
                         json={"to": "@budi", "currency": "USD"})  # fmt: skip
    assert by_handle.status_code == 200
    assert by_handle.get_json()["handle"] == "Budi"
    report = reconciliation.reconcile(uow)
    assert report.ok, report.violations

    # He is now a recent payee; star him, and pay him as a payee.
    listed = api.get(f"{API}/payees", headers=headers)
    assert listed.status_code == 200
    conforms(api, "/payees", "get", 200, listed.get_json())
    (payee,) = listed.get_json()["data"]
    assert (payee["holder"], payee["starred"], payee["handle"]) == ("Budi S.", False, "Budi")
    starred = api.patch(f"{API}/payees/{payee['id']}", headers=headers, json={"starred": True})
    assert starred.get_json()["starred"] is True
    again = api.post(f"{API}/payees/{payee['id']}/lookup", headers=headers,
                     json={"currency": "usd"})  # fmt: skip
    assert again.status_code == 200 and again.get_json()["recipient"].startswith("rcp_")


def test_no_such_person_and_cannot_receive_this_currency_answer_alike(
    api: FlaskClient, uow: UnitOfWork, make: Factory, alice: Actor, budi: Actor
) -> None:
    make.card(budi, currency="IDR")
    headers = token_of(uow, alice)

    def answer(to: str) -> tuple[int, dict[str, Any]]:
        response = api.post(f"{API}/people/lookup", headers=headers,
                            json={"to": to, "currency": "usd"})  # fmt: skip
        error = error_of(response, 404)
        error.pop("request_id")
        return response.status_code, error

    unknown = answer("nobody@example.test")
    holds_idr_only = answer("budi.santoso@example.test")
    assert unknown == holds_idr_only == (404, {
        "type": "invalid_request_error", "code": "recipient_not_found",
        "message": "No one can receive USD at that email address or handle.", "param": "to",
    })  # fmt: skip
    assert answer("@nobody_at_all") == unknown


def test_person_look_ups_are_rate_limited_per_user(
    app: Flask, api: FlaskClient, uow: UnitOfWork, make: Factory, alice: Actor, budi: Actor
) -> None:
    make.card(budi)
    headers = token_of(uow, alice)
    per_minute = int(payees.LOOKUPS_PER_USER.split()[0])
    answers = [
        client_for(app).post(f"{API}/people/lookup", headers=headers,
                             json={"to": "nobody@example.test", "currency": "usd"}).status_code
        for _ in range(per_minute + 1)
    ]  # fmt: skip
    assert answers == [404] * per_minute + [429]
    limited = client_for(app).post(
        f"{API}/people/lookup", headers=headers,
        json={"to": "budi.santoso@example.test", "currency": "usd"},
    )  # fmt: skip
    assert error_of(limited, 429)["type"] == "rate_limit_error"
    assert int(limited.headers["Retry-After"]) > 0
    # Someone else is not limited by Alice's look-ups.
    other = client_for(app).post(f"{API}/people/lookup", headers=token_of(uow, budi),
                                 json={"to": "nobody@example.test", "currency": "usd"})  # fmt: skip
    assert other.status_code == 404


def test_look_up_refusals_name_the_field(api: FlaskClient, uow: UnitOfWork, alice: Actor) -> None:
    headers = token_of(uow, alice)
    for body, param in (({"to": "a b@example.test", "currency": "usd"}, "to"),
                        ({"to": "@budi", "currency": "zzz"}, "currency"),
                        ({"currency": "usd"}, "to")):  # fmt: skip
        error = error_of(api.post(f"{API}/people/lookup", headers=headers, json=body), 422)
        assert error["param"] == param
    assert api.post(f"{API}/people/lookup", json={"to": "@x", "currency": "usd"}).status_code == 401
    shop = bearer(token_for(uow, person(uow, "merchant")))
    error = error_of(
        api.post(f"{API}/people/lookup", headers=shop, json={"to": "@x", "currency": "usd"}), 403
    )
    assert error["code"] == "permission_denied"


def test_receiving_cards_are_listed_and_chosen(
    api: FlaskClient, uow: UnitOfWork, make: Factory, budi: Actor, alice: Actor
) -> None:
    first, second = make.card(budi), make.card(budi)
    headers = token_of(uow, budi)
    listed = api.get(f"{API}/receiving-cards", headers=headers).get_json()
    assert listed["data"] == [
        {"object": "receiving_card", "currency": "usd", "card": first.public_id, "chosen": False}
    ]
    chosen = api.post(f"{API}/receiving-cards", headers=headers, json={"card": second.public_id})
    assert chosen.get_json() == {"object": "receiving_card", "currency": "usd",
                                 "card": second.public_id, "chosen": True}  # fmt: skip
    theirs = make.card(alice)
    error_of(api.post(f"{API}/receiving-cards", headers=headers, json={"card": theirs.public_id}),
             404)  # fmt: skip


def test_handles_taken_in_any_case_or_look_alike_are_refused(
    api: FlaskClient, uow: UnitOfWork, alice: Actor, budi: Actor
) -> None:
    assert api.put(f"{API}/users/me/handle", headers=token_of(uow, alice),
                   json={"handle": "alice"}).status_code == 200  # fmt: skip
    headers = token_of(uow, budi)
    for handle, code in (("ALICE", "handle_taken"), ("\u0430lice", "invalid_handle"),
                         ("al\u202eice", "invalid_handle")):  # fmt: skip
        error = error_of(api.put(f"{API}/users/me/handle", headers=headers,
                                 json={"handle": handle}), 422)  # fmt: skip
        assert (error["code"], error["param"]) == (code, "handle")


def reveal_audits(connection: sa.Connection, card_id: int) -> list[str]:
    return list(
        connection.execute(
            sa.text("SELECT outcome FROM audit_events WHERE action = 'card.reveal'"
                    " AND subject_type = 'card' AND subject_id = :c ORDER BY id"), {"c": card_id},
        ).scalars()
    )  # fmt: skip


def test_reveal_needs_reauthentication_is_audited_and_rate_limited(
    app: Flask, api: FlaskClient, uow: UnitOfWork, make: Factory, alice: Actor, budi: Actor,
    connection: sa.Connection,
) -> None:  # fmt: skip
    card = make.card(alice)
    headers = token_of(uow, alice)
    path = f"{API}/cards/{card.public_id}/reveal"

    missing = error_of(api.post(path, headers=headers, json={}), 422)
    assert missing["code"] == "reauthentication_required"
    wrong = error_of(api.post(path, headers=headers, json={"password": "guess"}), 422)
    assert (wrong["code"], wrong["param"]) == ("wrong_password", "password")
    shown = api.post(path, headers=headers, json={"password": PASSWORD})
    assert shown.status_code == 200, shown.get_data(as_text=True)
    assert shown.headers["Cache-Control"] == "no-store"
    conforms(api, "/cards/{card_id}/reveal", "post", 200, shown.get_json())
    assert shown.get_json() == {
        "object": "card_details", "card": card.public_id, "brand": "visa", "number": card.number,
        "cvc": card.cvv, "exp_month": card.expiry_month, "exp_year": card.expiry_year,
    }  # fmt: skip
    assert reveal_audits(connection, card.card_id) == ["failure", "failure", "success"]
    # Nobody else, with their own password: as a card that does not exist.
    error_of(api.post(path, headers=token_of(uow, budi), json={"password": PASSWORD}), 404)
    # Five attempts per quarter of an hour, right or wrong, from any address.
    answers = [client_for(app).post(path, headers=headers, json={"password": PASSWORD}).status_code
               for _ in range(3)]  # fmt: skip
    assert answers == [200, 200, 429]
    assert reveal_audits(connection, card.card_id).count("success") == 3
