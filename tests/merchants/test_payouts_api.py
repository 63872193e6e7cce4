"""The balance, balance transactions and payouts through the API with real merchant keys and
owners' access tokens: shapes, the payout report as a filtered list, idempotency, scopes, the
bank account (owners by token only), errors naming the field, and the ledger check after."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from portal.domain.money import Money
from portal.extensions import limiter
from portal.services.identity import accounts
from portal.services.ledger import reconciliation
from portal.services.merchants import payments
from tests.api.test_auth_api import bearer, client_for, token_for
from tests.conftest import new_key
from tests.merchants.conftest import card_details, open_shop

API = "/api/v1"
SCOPES = ("payments:read", "payments:write", "refunds:write", "payouts:write")
BANK = {"bank_name": "Bank Mandiri", "account_number": "1234 5678 9012",
        "account_holder": "Kopi Kenangan Pte"}  # fmt: skip


@pytest.fixture(autouse=True)
def _fresh_limits() -> None:
    limiter.reset()


@pytest.fixture
def api(app, connection):
    return client_for(app)


@pytest.fixture
def paying_shop(uow, make, staff):
    return open_shop(uow, make, staff, scopes=SCOPES)


def key(shop, **extra: str) -> dict[str, str]:
    assert shop.key.secret is not None
    return bearer(shop.key.secret) | extra


def owner(uow, shop) -> dict[str, str]:
    return bearer(token_for(uow, accounts.get_user_view(uow, shop.owner.id)))


def settled_payment(uow, make, shop, clock, major: str):
    """A payment captured three days ago: available now."""
    clock.now = datetime.now(UTC) - timedelta(days=3)
    try:
        return payments.create_payment(
            uow, actor=shop.api, merchant=shop.merchant.id,
            amount=Money.of_major(major, "USD"),
            card=card_details(make.card(make.user(), balance="500")), idempotency_key=new_key(),
        )  # fmt: skip
    finally:
        clock.now = datetime.now(UTC)


def test_balance_history_and_a_payout_through_the_api(api, uow, make, paying_shop, clock):
    shop = paying_shop
    paid = settled_payment(uow, make, shop, clock, "100")
    fresh = payments.create_payment(
        uow, actor=shop.api, merchant=shop.merchant.id, amount=Money.of_major("20", "USD"),
        card=card_details(make.card(make.user(), balance="50")), idempotency_key=new_key(),
    )  # fmt: skip
    got = api.get(f"{API}/balance", headers=key(shop)).get_json()
    assert got == {
        "object": "balance",
        "available": [{"amount": paid.amount - paid.fee, "currency": "usd"}],
        "pending": [{"amount": fresh.amount - fresh.fee, "currency": "usd"}],
    }
    listed = api.get(f"{API}/balance_transactions?type=payment", headers=key(shop)).get_json()
    assert [t["source"] for t in listed["data"]] == [fresh.id, paid.id]
    txn = listed["data"][1]
    assert (txn["status"], txn["net"], txn["fee"]) == ("available", paid.amount - paid.fee,
                                                       paid.fee)  # fmt: skip
    one = api.get(f"{API}/balance_transactions/{txn['id']}", headers=key(shop))
    assert one.get_json() == txn

    # No bank account yet: a 400 naming it; the owner sets one with an access token.
    refused = api.post(f"{API}/payouts", json={}, headers=key(shop, **{"Idempotency-Key": "a1"}))
    assert refused.status_code == 400
    assert refused.get_json()["error"]["code"] == "bank_account_missing"
    mid = shop.merchant.public_id
    assert (
        api.get(f"{API}/merchants/{mid}/bank_account", headers=owner(uow, shop)).status_code == 404
    )
    put = api.put(f"{API}/merchants/{mid}/bank_account", json=BANK, headers=owner(uow, shop))
    assert put.status_code == 200, put.get_data(as_text=True)
    assert put.get_json() == {"object": "bank_account", "bank_name": "Bank Mandiri",
                              "last4": "9012"}  # fmt: skip
    assert api.get(f"{API}/merchants/{mid}/bank_account",
                   headers=owner(uow, shop)).get_json()["last4"] == "9012"  # fmt: skip

    headers = key(shop, **{"Idempotency-Key": uuid.uuid4().hex})
    made = api.post(f"{API}/payouts", json={"currency": "usd"}, headers=headers)
    assert made.status_code == 201, made.get_data(as_text=True)
    payout = made.get_json()
    assert (payout["amount"], payout["currency"], payout["status"]) == (
        paid.amount - paid.fee, "usd", "pending")  # fmt: skip
    assert payout["destination"] == {"bank_name": "Bank Mandiri", "last4": "9012"}
    again = api.post(f"{API}/payouts", json={"currency": "usd"}, headers=headers)
    assert again.get_json() == payout and again.headers["Idempotent-Replayed"] == "true"

    report = api.get(f"{API}/balance_transactions?payout={payout['id']}", headers=key(shop))
    rows = report.get_json()["data"]
    assert [r["source"] for r in rows] == [paid.id]
    assert sum(r["net"] for r in rows) == payout["amount"]
    assert all(r["payout"] == payout["id"] for r in rows)
    assert api.get(f"{API}/payouts/{payout['id']}", headers=key(shop)).get_json() == payout
    assert [p["id"] for p in api.get(f"{API}/payouts", headers=key(shop)).get_json()["data"]] == [
        payout["id"]
    ]
    balance = api.get(f"{API}/balance", headers=key(shop)).get_json()
    assert balance["available"] == [{"amount": 0, "currency": "usd"}]
    low = api.post(f"{API}/payouts", json={}, headers=key(shop, **{"Idempotency-Key": "b2"}))
    assert low.get_json()["error"]["code"] == "balance_insufficient"
    report = reconciliation.reconcile(uow)
    assert report.ok, report.violations


def test_scopes_roles_and_bad_input(api, uow, make, shop, paying_shop, staff):
    # The default key reads but may not pay out; nobody sets a bank account with a key.
    assert api.get(f"{API}/balance", headers=key(shop)).status_code == 200
    forbidden = api.post(f"{API}/payouts", json={},
                         headers=key(shop, **{"Idempotency-Key": "c3"}))  # fmt: skip
    assert forbidden.status_code == 403
    mid = paying_shop.merchant.public_id
    assert api.put(f"{API}/merchants/{mid}/bank_account", json=BANK,
                   headers=key(paying_shop)).status_code == 401  # fmt: skip
    stranger = make.user()
    other = bearer(token_for(uow, accounts.get_user_view(uow, stranger.id)))
    assert api.put(f"{API}/merchants/{mid}/bank_account", json=BANK,
                   headers=other).status_code == 404  # fmt: skip
    # Bad input is a 4xx naming the field, and nothing changes.
    bad = api.put(f"{API}/merchants/{mid}/bank_account", json=BANK | {"account_number": "12!"},
                  headers=owner(uow, paying_shop))  # fmt: skip
    assert bad.status_code in (400, 422)
    assert bad.get_json()["error"]["param"] == "account_number"
    assert api.get(f"{API}/merchants/{mid}/bank_account",
                   headers=owner(uow, paying_shop)).status_code == 404  # fmt: skip
    for query, param in (("type=gift", "type"), ("payout=pay_123", "payout"),
                         ("limit=0", "limit")):  # fmt: skip
        answer = api.get(f"{API}/balance_transactions?{query}", headers=key(shop))
        assert answer.status_code in (400, 422), query
        assert answer.get_json()["error"]["param"] == param
    no_key = api.post(f"{API}/payouts", json={}, headers=key(paying_shop))
    assert no_key.get_json()["error"]["code"] == "idempotency_key_missing"
    bad_currency = api.post(f"{API}/payouts", json={"currency": 12},
                            headers=key(paying_shop, **{"Idempotency-Key": "d4"}))  # fmt: skip
    assert bad_currency.get_json()["error"]["param"] == "currency"
    assert api.get(f"{API}/payouts/po_nope", headers=key(shop)).status_code == 404
    assert api.get(f"{API}/payouts?status=lost", headers=key(shop)).status_code in (400, 422)
