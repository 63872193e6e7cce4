"""The payments and refunds API with real merchant keys: authentication (Bearer and X-API-Key,
suspended merchants, revoked and rolled keys), scopes, another merchant's objects, idempotency,
declines as 402 card errors carrying the payment, wrong-state actions as 400, refunds."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from flask.testing import FlaskClient

from portal.domain.errors import Unauthenticated
from portal.domain.ids import is_public_id
from portal.extensions import limiter
from portal.services.ledger import reconciliation
from portal.services.merchants import keys, merchants
from tests.api.test_auth_api import client_for
from tests.merchants.conftest import open_shop

API = "/api/v1"


@pytest.fixture(autouse=True)
def _fresh_limits() -> None:
    limiter.reset()


@pytest.fixture
def api(app, connection) -> FlaskClient:
    return client_for(app)


def as_key(secret: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}", **extra}


def idem() -> dict[str, str]:
    return {"Idempotency-Key": uuid.uuid4().hex}


def card_body(issued, **kw: Any) -> dict[str, Any]:
    body = {
        "amount": 2000, "currency": "usd",
        "card": {"number": issued.number, "exp_month": issued.expiry_month,
                 "exp_year": issued.expiry_year, "cvc": issued.cvv},
    }  # fmt: skip
    body.update(kw)
    return body


def error(response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()["error"]
    assert body["request_id"] == response.headers["X-Request-ID"]
    return body


def available(api, uow, card) -> int:
    return uow.run(
        lambda u: u.execute(
            "SELECT posted_minor - pending_debits_minor FROM accounts WHERE card_id = :c",
            {"c": card.card_id},
        ).scalar_one()
    )


def test_payment_lifecycle_through_the_api(api, uow, make, shop):
    card = make.card(make.user(), balance="100")
    headers = as_key(shop.key.secret)
    created = api.post(f"{API}/payments", json=card_body(card, capture_method="manual",
                       metadata={"order": "7"}), headers={**headers, **idem()})  # fmt: skip
    assert created.status_code == 201, created.get_data(as_text=True)
    payment = created.get_json()
    assert payment["object"] == "payment" and is_public_id("payment", payment["id"])
    assert (payment["status"], payment["amount_capturable"], payment["currency"]) == (
        "requires_capture", 2000, "usd",
    )  # fmt: skip
    assert payment["card"]["last4"] == card.last4 and card.number not in created.get_data(True)
    captured = api.post(
        f"{API}/payments/{payment['id']}/capture",
        json={"amount_to_capture": 1500},
        headers={**headers, **idem()},
    )
    assert captured.status_code == 200, captured.get_data(as_text=True)
    assert (captured.get_json()["status"], captured.get_json()["amount_received"]) == (
        "succeeded", 1500,
    )  # fmt: skip
    fetched = api.get(f"{API}/payments/{payment['id']}", headers=headers).get_json()
    assert fetched["fee"] == 44 + 30  # 2.9 % of 1500 is 43.5, rounded half up
    assert fetched["net"] == 1500 - fetched["fee"]
    listed = api.get(f"{API}/payments?status=succeeded", headers=headers).get_json()
    assert listed["object"] == "list" and listed["url"] == f"{API}/payments"
    assert [p["id"] for p in listed["data"]] == [payment["id"]]
    refund = api.post(f"{API}/refunds", json={"payment": payment["id"], "amount": 500},
                      headers={**headers, **idem()})  # fmt: skip
    assert refund.status_code == 201, refund.get_data(as_text=True)
    assert refund.get_json()["object"] == "refund"
    refunds = api.get(f"{API}/refunds?payment={payment['id']}", headers=headers).get_json()
    assert [r["amount"] for r in refunds["data"]] == [500]
    assert available(api, uow, card) == 10000 - 1500 + 500
    assert reconciliation.reconcile(uow).ok


def test_the_x_api_key_header_works_too(api, make, shop):
    response = api.get(f"{API}/payments", headers={"X-API-Key": shop.key.secret})
    assert response.status_code == 200


def test_decline_is_a_402_card_error_with_the_payment(api, uow, make, shop):
    card = make.card(make.user(), balance="5")
    key = idem()
    first = api.post(f"{API}/payments", json=card_body(card), headers={**as_key(shop.key.secret),
                     **key})  # fmt: skip
    body = error(first, 402)
    assert (body["type"], body["code"], body["decline_code"]) == (
        "card_error", "card_declined", "insufficient_funds",
    )  # fmt: skip
    assert body["payment"]["status"] == "requires_payment_method"
    assert body["payment"]["last_payment_error"]["decline_code"] == "insufficient_funds"
    again = api.post(f"{API}/payments", json=card_body(card), headers={**as_key(shop.key.secret),
                     **key})  # fmt: skip
    assert error(again, 402)["payment"]["id"] == body["payment"]["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert available(api, uow, card) == 500


def test_idempotent_replay_moves_money_once(api, uow, make, shop):
    card = make.card(make.user(), balance="100")
    key = idem()
    headers = {**as_key(shop.key.secret), **key}
    first = api.post(f"{API}/payments", json=card_body(card), headers=headers)
    second = api.post(f"{API}/payments", json=card_body(card), headers=headers)
    assert first.status_code == second.status_code == 201
    assert second.get_json() == first.get_json()
    assert second.headers["Idempotent-Replayed"] == "true"
    assert available(api, uow, card) == 8000
    reused = api.post(f"{API}/payments", json=card_body(card, amount=2100), headers=headers)
    assert error(reused, 422)["type"] == "idempotency_error"
    missing = api.post(f"{API}/payments", json=card_body(card), headers=as_key(shop.key.secret))
    assert error(missing, 400)["code"] == "idempotency_key_missing"


def test_another_merchants_payment_is_a_404(api, uow, make, staff, shop):
    other = open_shop(uow, make, staff, name="Other")
    card = make.card(make.user(), balance="100")
    paid = api.post(f"{API}/payments", json=card_body(card),
                    headers={**as_key(shop.key.secret), **idem()}).get_json()  # fmt: skip
    theirs = as_key(other.key.secret)
    assert error(api.get(f"{API}/payments/{paid['id']}", headers=theirs), 404)
    assert error(api.post(f"{API}/payments/{paid['id']}/cancel", json={},
                          headers={**theirs, **idem()}), 404)  # fmt: skip
    assert error(api.post(f"{API}/refunds", json={"payment": paid["id"]},
                          headers={**theirs, **idem()}), 404)  # fmt: skip
    assert error(api.get(f"{API}/payments/pay_notanid", headers=theirs), 404)
    listed = api.get(f"{API}/payments", headers=theirs).get_json()
    assert listed["data"] == []


def test_suspended_merchants_keys_stop_at_once(api, uow, make, staff, shop):
    headers = as_key(shop.key.secret)
    assert api.get(f"{API}/payments", headers=headers).status_code == 200
    merchants.decide(uow, actor=staff, merchant=shop.merchant.public_id, action="suspend")
    assert error(api.get(f"{API}/payments", headers=headers), 401)["code"] == "invalid_api_key"
    merchants.decide(uow, actor=staff, merchant=shop.merchant.public_id, action="reactivate")
    assert api.get(f"{API}/payments", headers=headers).status_code == 200
    merchants.decide(uow, actor=staff, merchant=shop.merchant.public_id, action="archive")
    assert error(api.get(f"{API}/payments", headers=headers), 401)


def test_revoked_and_rolled_keys(api, uow, make, shop, clock):
    rolled = keys.roll_api_key(uow, actor=shop.owner, merchant=shop.merchant.public_id,
                               key=shop.key.public_id, overlap_hours=1)  # fmt: skip
    assert api.get(f"{API}/payments", headers=as_key(shop.key.secret)).status_code == 200
    assert api.get(f"{API}/payments", headers=as_key(rolled.secret)).status_code == 200
    clock.advance(hours=1, seconds=1)  # the services' clock: the overlap has ended
    with pytest.raises(Unauthenticated):
        keys.authenticate_api_key(uow, secret=shop.key.secret)
    assert keys.authenticate_api_key(uow, secret=rolled.secret).key_public_id == rolled.public_id
    keys.revoke_api_key(uow, actor=shop.owner, merchant=shop.merchant.public_id,
                        key=rolled.public_id)  # fmt: skip
    assert error(api.get(f"{API}/payments", headers=as_key(rolled.secret)), 401)


def test_a_key_without_refunds_write_is_a_403(api, uow, make, staff):
    shop = open_shop(uow, make, staff, scopes=("payments:read", "payments:write"))
    card = make.card(make.user(), balance="100")
    paid = api.post(f"{API}/payments", json=card_body(card),
                    headers={**as_key(shop.key.secret), **idem()}).get_json()  # fmt: skip
    refused = api.post(f"{API}/refunds", json={"payment": paid["id"]},
                       headers={**as_key(shop.key.secret), **idem()})  # fmt: skip
    assert error(refused, 403)["code"] == "permission_denied"
    reader = open_shop(uow, make, staff, name="Reader", scopes=("payments:read",))
    assert error(api.post(f"{API}/payments", json=card_body(card),
                          headers={**as_key(reader.key.secret), **idem()}), 403)  # fmt: skip


def test_wrong_state_is_400_never_409(api, make, shop):
    card = make.card(make.user(), balance="100")
    headers = as_key(shop.key.secret)
    paid = api.post(f"{API}/payments", json=card_body(card), headers={**headers, **idem()})
    payment = paid.get_json()
    cancel = api.post(
        f"{API}/payments/{payment['id']}/cancel",
        json={"cancellation_reason": "duplicate"},
        headers={**headers, **idem()},
    )
    body = error(cancel, 400)
    assert body["code"] == "payment_unexpected_state" and "succeeded" in body["message"]
    capture = api.post(f"{API}/payments/{payment['id']}/capture", json={},
                       headers={**headers, **idem()})  # fmt: skip
    assert error(capture, 400)["code"] == "payment_unexpected_state"


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"amount": 0}, "amount"),
        ({"amount": -100}, "amount"),
        ({"currency": "xx"}, "currency"),
        ({"capture_method": "later"}, "capture_method"),
        (
            {"card": {"number": "4242", "exp_month": 1, "exp_year": 2030, "cvc": "123"}},
            "card.number",
        ),
        ({"metadata": {"k" * 41: "v"}}, "metadata.kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk"),
        ({"metadata": {"k": "v" * 501}}, "metadata.k"),
    ],
)
def test_bad_input_names_the_field_and_changes_nothing(api, uow, make, shop, change, param):
    card = make.card(make.user(), balance="100")
    response = api.post(f"{API}/payments", json=card_body(card, **change),
                        headers={**as_key(shop.key.secret), **idem()})  # fmt: skip
    assert response.status_code in (400, 422), response.get_data(as_text=True)
    assert response.get_json()["error"]["param"] == param
    assert available(api, uow, card) == 10000


def test_negative_or_oversized_capture_is_refused(api, uow, make, shop):
    card = make.card(make.user(), balance="100")
    headers = as_key(shop.key.secret)
    held = api.post(f"{API}/payments", json=card_body(card, capture_method="manual"),
                    headers={**headers, **idem()}).get_json()  # fmt: skip
    for amount in (-1, 0, 2001):
        response = api.post(
            f"{API}/payments/{held['id']}/capture",
            json={"amount_to_capture": amount},
            headers={**headers, **idem()},
        )
        assert error(response, 422)["param"] == "amount_to_capture"
    assert available(api, uow, card) == 8000


def test_failed_key_checks_are_rate_limited_per_address(api):
    bad = as_key("sk_live_" + "x" * 32)
    statuses = [api.get(f"{API}/payments", headers=bad).status_code for _ in range(21)]
    assert statuses[:20] == [401] * 20 and statuses[20] == 429
    assert "Retry-After" in api.get(f"{API}/payments", headers=bad).headers


def test_the_openapi_document_describes_payments(api):
    doc = api.get(f"{API}/openapi.json").get_json()
    assert "/api/v1/payments" in doc["paths"] and "/api/v1/refunds" in doc["paths"]
    create = doc["paths"]["/api/v1/payments"]["post"]
    assert "402" in create["responses"] and "api_key" in str(create["security"])


def test_card_errors_are_documented_and_other_errors_lack_their_fields(api, make, shop):
    doc = api.get(f"{API}/openapi.json").get_json()
    detail = doc["components"]["schemas"]["ErrorDetail"]
    assert {"decline_code", "payment"} <= set(detail["properties"])
    assert "decline_code" not in detail.get("required", [])
    assert {"type", "code", "message", "param", "request_id"} <= set(detail["required"])
    plain = error(api.get(f"{API}/payments/pay_x", headers=as_key(shop.key.secret)), 404)
    assert set(plain) == {"type", "code", "message", "param", "request_id"}


def test_a_key_never_reaches_a_log_line_or_a_stored_row(app, api, uow, make, shop):
    import logging

    from tests.observability.test_logging import capture_json

    card = make.card(make.user(), balance="100")
    secret = shop.key.secret
    with capture_json(app) as stream:
        logging.getLogger("portal.test").warning("leaked by mistake: %s", secret)
        api.post(f"{API}/payments", json=card_body(card),
                 headers={**as_key(secret), **idem()})  # fmt: skip
        api.get(f"{API}/payments?q={secret}", headers={"X-API-Key": secret})
        api.get(f"{API}/payments", headers=as_key(secret[:-1] + "x"))  # a wrong key, logged
    logged = stream.getvalue()
    assert logged and secret not in logged and secret[8:] not in logged
    assert card.number not in logged
    stored = uow.run(
        lambda u: u.execute(
            "SELECT concat_ws(' ', (SELECT string_agg(response::text, ' ') FROM idempotency_keys),"
            " (SELECT string_agg(data::text, ' ') FROM audit_events),"
            " (SELECT string_agg(concat_ws(' ', prefix, last4, encode(key_hash, 'hex')), ' ')"
            "  FROM api_keys))"
        ).scalar_one()
    )
    assert secret not in stored and secret[8:] not in stored and card.number not in stored
