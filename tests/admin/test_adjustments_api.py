"""The adjustments API: the same four-eyes rules over JSON, documented in the OpenAPI schema."""

from __future__ import annotations

import uuid

import pyotp
import sqlalchemy as sa
from flask import Flask

from portal.domain.types import Actor
from portal.services.identity import mfa
from portal.services.ledger.reconciliation import reconcile
from portal.services.shared.uow import UnitOfWork
from tests.api.test_auth_api import API, client_for
from tests.api.test_cards_api import token_of
from tests.conftest import SYSTEM, Factory


def staff(make: Factory, uow: UnitOfWork, role: str = "admin") -> Actor:
    """Staff use the API only with a second factor set up."""
    actor = make.user(roles=(role,))
    assert actor.id is not None
    issued = mfa.issue_enrolment_code(uow, actor=SYSTEM, user_id=actor.id).code
    enrolment = mfa.begin_totp_enrolment(uow, actor=actor, enrolment_code=issued)
    mfa.confirm_totp(uow, actor=actor, code=pyotp.TOTP(enrolment.secret).now())
    return actor


def posted(connection: sa.Connection, card_id: int) -> int:
    return int(
        connection.execute(
            sa.text("SELECT posted_minor FROM accounts WHERE card_id = :c"), {"c": card_id}
        ).scalar_one()
    )


def test_request_approve_over_the_api(
    app: Flask, uow: UnitOfWork, make: Factory, connection: sa.Connection
) -> None:
    client = client_for(app)
    maker, checker = staff(make, uow), staff(make, uow)
    support, holder = staff(make, uow, "support"), make.user()
    card = make.card(holder, balance="10.00")
    as_maker, as_checker = token_of(uow, maker), token_of(uow, checker)
    body = {"target": card.public_id, "direction": "credit", "amount": 1250, "currency": "usd",
            "reason": "Fee charged twice", "reference": "SUP-9"}  # fmt: skip
    key = {"Idempotency-Key": uuid.uuid4().hex}

    missing = client.post(f"{API}/adjustments", json=body, headers=as_maker)
    assert missing.status_code == 400
    refused = client.post(f"{API}/adjustments", json=body,
                          headers={**token_of(uow, support), **key})  # fmt: skip
    assert refused.status_code == 403
    made = client.post(f"{API}/adjustments", json=body, headers={**as_maker, **key})
    assert made.status_code == 201, made.get_json()
    adjustment = made.get_json()
    assert (adjustment["object"], adjustment["status"], adjustment["amount"]) == (
        "adjustment", "pending", 1250,
    )  # fmt: skip
    again = client.post(f"{API}/adjustments", json=body, headers={**as_maker, **key})
    assert again.get_json()["id"] == adjustment["id"]
    path = f"{API}/adjustments/{adjustment['id']}"

    own = client.post(f"{path}/approve", headers=as_maker)
    assert own.status_code == 403
    assert own.get_json()["error"]["code"] == "four_eyes_required"
    assert client.get(path, headers=token_of(uow, support)).status_code == 200
    assert client.get(path, headers=token_of(uow, holder)).status_code == 403
    listed = client.get(f"{API}/adjustments?status=pending", headers=as_checker).get_json()
    assert [a["id"] for a in listed["data"]] == [adjustment["id"]]

    done = client.post(f"{path}/approve", headers=as_checker)
    assert done.status_code == 200, done.get_json()
    approved = done.get_json()
    assert approved["status"] == "approved" and approved["journal_entry"] is not None
    assert posted(connection, card.card_id) == 2250
    twice = client.post(f"{path}/approve", headers=as_checker).get_json()
    assert twice["replayed"] is True and posted(connection, card.card_id) == 2250
    late = client.post(f"{path}/reject", json={"reason": "late"},
                       headers=token_of(uow, staff(make, uow)))  # fmt: skip
    assert late.status_code == 400 and late.get_json()["error"]["code"] == "adjustment_decided"
    report = reconcile(uow)
    assert report.ok, report.violations


def test_debits_rejections_and_withdrawals_over_the_api(
    app: Flask, uow: UnitOfWork, make: Factory, connection: sa.Connection
) -> None:
    client = client_for(app)
    maker, checker = staff(make, uow), staff(make, uow)
    card = make.card(make.user(), balance="10.00")
    as_maker, as_checker = token_of(uow, maker), token_of(uow, checker)

    def ask(**fields: object) -> dict:
        body = {"target": card.public_id, "direction": "debit", "amount": 1001,
                "currency": "USD", "reason": "Chargeback", "reference": "CB-1",
                **fields}  # fmt: skip
        answer = client.post(f"{API}/adjustments", json=body,
                             headers={**as_maker, "Idempotency-Key": uuid.uuid4().hex})  # fmt: skip
        assert answer.status_code == 201, answer.get_json()
        return answer.get_json()

    too_much = ask()
    refused = client.post(f"{API}/adjustments/{too_much['id']}/approve", headers=as_checker)
    assert refused.status_code == 402
    assert refused.get_json()["error"]["code"] == "insufficient_funds"
    no_reason = client.post(f"{API}/adjustments/{too_much['id']}/reject", json={"reason": ""},
                            headers=as_checker)  # fmt: skip
    assert no_reason.status_code == 422
    rejected = client.post(f"{API}/adjustments/{too_much['id']}/reject",
                           json={"reason": "Too much"}, headers=as_checker)  # fmt: skip
    assert rejected.get_json()["status"] == "rejected"
    mine = ask(amount=100)
    theirs = client.post(f"{API}/adjustments/{mine['id']}/withdraw", headers=as_checker)
    assert theirs.status_code == 403 and theirs.get_json()["error"]["code"] == "not_requester"
    back = client.post(f"{API}/adjustments/{mine['id']}/withdraw", headers=as_maker)
    assert back.get_json()["status"] == "withdrawn"
    assert client.get(f"{API}/adjustments/adj_{'0' * 24}", headers=as_maker).status_code == 404
    assert client.get(f"{API}/adjustments/nonsense", headers=as_maker).status_code == 404
    mismatch = client.post(
        f"{API}/adjustments",
        json={"target": card.public_id, "direction": "credit", "amount": 5, "currency": "eur",
              "reason": "x", "reference": "y"},
        headers={**as_maker, "Idempotency-Key": uuid.uuid4().hex},
    )  # fmt: skip
    assert mismatch.status_code in (400, 422)
    assert mismatch.get_json()["error"]["code"] == "currency_mismatch"
    assert posted(connection, card.card_id) == 1000


def test_the_operations_are_documented(app: Flask) -> None:
    spec = client_for(app).get(f"{API}/openapi.json").get_json()
    paths = spec["paths"]
    assert {"get", "post"} <= set(paths["/api/v1/adjustments"])
    for action in ("approve", "reject", "withdraw"):
        assert "post" in paths[f"/api/v1/adjustments/{{adjustment_id}}/{action}"]
    create = paths["/api/v1/adjustments"]["post"]
    (header,) = [
        spec["components"]["parameters"][p["$ref"].rsplit("/", 1)[-1]]
        for p in create["parameters"]
        if "$ref" in p
    ]
    assert (header["name"], header["required"]) == ("Idempotency-Key", True)
