"""Events: every change a merchant cares about writes one in the same transaction (none for a
change that did not commit), carrying the object as the API answers it; the events API lists,
filters and pages them by cursor, and another merchant's event is a 404."""

from __future__ import annotations

import uuid

import pytest

from portal.domain.errors import CardDeclined, InvalidInput
from portal.domain.money import Money
from portal.extensions import limiter
from portal.services.ledger import reconciliation
from portal.services.merchants import checkout, events, payments, reports
from portal.services.wallet import cards
from tests.api.test_auth_api import client_for
from tests.conftest import new_key
from tests.merchants.conftest import card_details, open_shop

API = "/api/v1"


@pytest.fixture(autouse=True)
def _fresh_limits() -> None:
    limiter.reset()


@pytest.fixture
def api(app, connection):
    return client_for(app)


def types_of(uow, shop) -> list[str]:
    page = events.list_events(uow, actor=shop.api, merchant=shop.merchant.id, limit=100)
    return [e.type for e in reversed(page.items)]


def pay(uow, shop, card, amount=1000, **kw):
    return payments.create_payment(
        uow, actor=shop.api, merchant=shop.merchant.id, amount=Money(amount, "USD"),
        card=kw.pop("details", None) or card_details(card), idempotency_key=new_key(), **kw,
    )  # fmt: skip


def test_each_change_writes_its_events(uow, make, shop, clock):
    card = make.card(make.user(), balance="100")
    pay(uow, shop, card)
    held = pay(uow, shop, card, 500, capture_method="manual")
    payments.capture_payment(uow, actor=shop.api, merchant=shop.merchant.id, payment=held.id,
                             idempotency_key=new_key(), amount_to_capture=400)  # fmt: skip
    other = pay(uow, shop, card, 300, capture_method="manual")
    payments.cancel_payment(uow, actor=shop.api, merchant=shop.merchant.id, payment=other.id,
                            idempotency_key=new_key(), reason="abandoned")  # fmt: skip
    with pytest.raises(CardDeclined):
        pay(uow, shop, card, 999_999)
    payments.create_refund(uow, actor=shop.api, merchant=shop.merchant.id, payment=held.id,
                           idempotency_key=new_key(), amount=100)  # fmt: skip
    assert types_of(uow, shop) == [
        "payment.created", "payment.succeeded",
        "payment.created", "payment.requires_capture", "payment.succeeded",
        "payment.created", "payment.requires_capture", "payment.canceled",
        "payment.created", "payment.failed",
        "refund.created", "refund.succeeded",
    ]  # fmt: skip
    page = events.list_events(uow, actor=shop.api, merchant=shop.merchant.id, limit=100)
    captured = next(e for e in page.items if e.type == "payment.succeeded"
                    and e.data["object"]["id"] == held.id)  # fmt: skip
    assert captured.data["object"]["amount_received"] == 400
    assert captured.data["previous_attributes"]["status"] == "requires_capture"
    assert captured.data["previous_attributes"]["amount_capturable"] == 500
    assert "amount" not in captured.data["previous_attributes"]  # unchanged fields are left out
    assert captured.api_version == events.API_VERSION


def test_checkout_sessions_write_completed_and_expired(uow, make, shop, clock):
    holder = make.user()
    card = make.card(holder, balance="100")

    def session(expires_in: int = 86400):
        return checkout.create_checkout_session(
            uow, actor=shop.api, merchant=shop.merchant.id, amount=Money(700, "USD"),
            success_url="https://shop.example/ok", cancel_url="https://shop.example/back",
            idempotency_key=new_key(), expires_in=expires_in,
        )  # fmt: skip

    paid = session()
    checkout.pay_checkout_session(uow, actor=holder, session=paid.id, card=card.card_id,
                                  idempotency_key=new_key())  # fmt: skip
    lapsed = session(1800)
    clock.advance(seconds=1801)
    assert checkout.expire_checkout_sessions(uow) == 1
    page = events.list_events(
        uow,
        actor=shop.api,
        merchant=shop.merchant.id,
        types=["checkout.session.completed", "checkout.session.expired"],
    )
    by_type = {e.type: e for e in page.items}
    assert by_type["checkout.session.completed"].data["object"]["id"] == paid.id
    assert by_type["checkout.session.completed"].data["object"]["payment_status"] == "paid"
    assert by_type["checkout.session.expired"].data["object"]["id"] == lapsed.id
    assert by_type["checkout.session.expired"].data["object"]["status"] == "expired"


def test_no_event_without_its_change(uow, make, shop):
    card = make.card(make.user(), balance="100")
    paid = pay(uow, shop, card)
    before = types_of(uow, shop)
    with pytest.raises(InvalidInput):  # refused before anything was written
        payments.create_refund(uow, actor=shop.api, merchant=shop.merchant.id, payment=paid.id,
                               idempotency_key=new_key(), amount=10**6)  # fmt: skip

    def rolled_back(u):
        events.record(u, shop.merchant.id, ("payment.created", {"id": "pay_x"}, None))
        u.flush()  # sent to the database, then the transaction fails
        raise RuntimeError("the change fails after its event was written")

    with pytest.raises(RuntimeError):
        uow.run(rolled_back)
    assert types_of(uow, shop) == before


def test_the_api_lists_filters_pages_and_scopes_events(api, uow, make, staff, shop):
    card = make.card(make.user(), balance="100")
    headers = {"Authorization": f"Bearer {shop.key.secret}"}
    created = api.post(f"{API}/payments", headers={**headers, "Idempotency-Key": uuid.uuid4().hex},
                       json={"amount": 1500, "currency": "usd", "card": {
                           "number": card.number, "exp_month": card.expiry_month,
                           "exp_year": card.expiry_year, "cvc": card.cvv}}).get_json()  # fmt: skip
    listed = api.get(f"{API}/events", headers=headers).get_json()
    assert listed["object"] == "list" and listed["url"] == f"{API}/events"
    assert [e["type"] for e in listed["data"]] == ["payment.succeeded", "payment.created"]
    newest = listed["data"][0]
    assert newest["object"] == "event" and newest["id"].startswith("evt_")
    # data.object is what the API answered for the payment.
    assert newest["data"]["object"] == created
    one = api.get(f"{API}/events/{newest['id']}", headers=headers).get_json()
    assert one == newest
    only = api.get(f"{API}/events?type=payment.created", headers=headers).get_json()
    assert [e["type"] for e in only["data"]] == ["payment.created"]
    after = api.get(f"{API}/events?limit=1&starting_after={newest['id']}", headers=headers)
    assert [e["type"] for e in after.get_json()["data"]] == ["payment.created"]
    future = api.get(f"{API}/events?created[gte]=4102444000", headers=headers).get_json()
    assert future["data"] == []
    bad = api.get(f"{API}/events?type=payment.exploded", headers=headers)
    assert bad.status_code == 422 and bad.get_json()["error"]["param"] == "type.0"
    other = open_shop(uow, make, staff, name="Other")
    theirs = {"Authorization": f"Bearer {other.key.secret}"}
    assert api.get(f"{API}/events/{newest['id']}", headers=theirs).status_code == 404
    assert api.get(f"{API}/events", headers=theirs).get_json()["data"] == []


def test_events_are_kept_thirty_days_at_least(uow, make, shop, clock):
    card = make.card(make.user(), balance="100")
    pay(uow, shop, card)
    clock.advance(days=29)
    assert events.purge_events(uow, days=1) == 0  # never fewer than 30 days
    clock.advance(days=2)
    assert events.purge_events(uow) == 2
    assert types_of(uow, shop) == []


def test_a_refund_to_a_closed_card_fails_and_shows_on_the_timeline(uow, make, shop, staff):
    card = make.card(make.user(), balance="100")
    paid = pay(uow, shop, card, 2000)
    cards.set_archived(uow, actor=staff, card_id=card.card_id, archived=True)
    failed = payments.create_refund(uow, actor=shop.api, merchant=shop.merchant.id,
                                    payment=paid.id, idempotency_key=new_key())  # fmt: skip
    assert (failed.status, failed.failure_reason) == ("failed", "expired_or_canceled_card")
    assert failed.amount == 2000
    after = payments.get_payment(uow, actor=shop.api, merchant=shop.merchant.id, payment=paid.id)
    assert after.amount_refunded == 0
    assert types_of(uow, shop)[-2:] == ["refund.created", "refund.failed"]
    (ev,) = events.list_events(uow, actor=shop.api, merchant=shop.merchant.id,
                               types=["refund.failed"]).items  # fmt: skip
    assert ev.data["object"]["status"] == "failed"
    assert ev.data["previous_attributes"] == {"status": "pending", "failure_reason": None}
    listed = payments.list_refunds(uow, actor=shop.api, merchant=shop.merchant.id,
                                   payment=paid.id).items  # fmt: skip
    assert [r.status for r in listed] == ["failed"]
    last = reports.payment_detail(uow, actor=shop.owner, merchant=shop.merchant.id,
                                  payment=paid.id).timeline[-1]  # fmt: skip
    assert (last.kind, last.title) == ("refund_failed", "Refund failed")
    assert failed.id in last.detail and "card is closed" in last.detail
    report = reconciliation.reconcile(uow)
    assert report.ok, report.violations
    # With the card open again, the refund goes through.
    cards.set_archived(uow, actor=staff, card_id=card.card_id, archived=False)
    done = payments.create_refund(uow, actor=shop.api, merchant=shop.merchant.id,
                                  payment=paid.id, idempotency_key=new_key(),
                                  amount=1000)  # fmt: skip
    assert done.status == "succeeded"
