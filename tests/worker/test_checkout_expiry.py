"""The worker's expiry of checkout sessions and of uncaptured payments, and the rule that a
payment's hold is released only through its payment (never by the generic hold expiry)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from portal.domain.money import Money
from portal.services.ledger import reconciliation
from portal.services.merchants import checkout, payments
from portal.services.shared.uow import UnitOfWork
from portal.services.wallet import wallet
from portal.worker import Worker, periodic_tasks
from tests.conftest import Factory, new_key
from tests.merchants.conftest import card_details, open_shop


def _at(real_uow, moment: datetime) -> UnitOfWork:
    """A committing unit of work whose clock reads ``moment``."""
    base = real_uow()
    return UnitOfWork(base._session_factory, base.settings, clock=lambda: moment)


def _hold_and_payment(uow: UnitOfWork, payment_id: str):
    return uow.run(
        lambda u: u.execute(
            "SELECT p.status, p.cancellation_reason, h.status AS hold FROM payments p"
            " JOIN holds h ON h.id = p.hold_id WHERE p.public_id = :id",
            {"id": payment_id},
        ).one()
    )


def _available(uow: UnitOfWork, card_id: int) -> int:
    return uow.run(
        lambda u: u.execute(
            "SELECT posted_minor - pending_debits_minor FROM accounts WHERE card_id = :c",
            {"c": card_id},
        ).scalar_one()
    )


@pytest.fixture
def shop(uow: UnitOfWork, make: Factory):
    return open_shop(uow, make, make.user(roles=("admin",)))


def test_the_worker_has_both_expiry_tasks():
    names = [name for name, _interval, _task in periodic_tasks()]
    assert {"expire_checkout_sessions", "expire_uncaptured_payments", "expire_holds"} <= set(names)


@pytest.mark.concurrency
def test_worker_expires_sessions_and_uncaptured_payments(real_uow):
    make = Factory(real_uow())
    staff = make.user(roles=("admin",))
    shop = open_shop(real_uow(), make, staff)
    payer = make.user()
    card = make.card(payer, balance="100")
    now = datetime.now(UTC)
    days = real_uow().settings.authorization_days

    stale = checkout.create_checkout_session(
        _at(real_uow, now - timedelta(hours=1)), actor=shop.api, merchant=shop.merchant.id,
        amount=Money(1500, "USD"), success_url="https://shop.example/ok",
        cancel_url="https://shop.example/no", idempotency_key=new_key(), expires_in=1800,
    )  # fmt: skip
    fresh = checkout.create_checkout_session(
        real_uow(), actor=shop.api, merchant=shop.merchant.id, amount=Money(1500, "USD"),
        success_url="https://shop.example/ok", cancel_url="https://shop.example/no",
        idempotency_key=new_key(),
    )  # fmt: skip
    held = payments.create_payment(
        _at(real_uow, now - timedelta(days=days, minutes=1)), actor=shop.api,
        merchant=shop.merchant.id, amount=Money(3000, "USD"), card=card_details(card),
        idempotency_key=new_key(), capture_method="manual",
    )  # fmt: skip
    recent = payments.create_payment(
        real_uow(), actor=shop.api, merchant=shop.merchant.id, amount=Money(2000, "USD"),
        card=card_details(card), idempotency_key=new_key(), capture_method="manual",
    )  # fmt: skip
    uow = real_uow()
    assert _available(uow, card.card_id) == 5000

    Worker(real_uow).run_periodic()

    stored = dict(
        uow.run(lambda u: u.execute("SELECT public_id, status FROM checkout_sessions").all())
    )
    assert stored == {stale.id: "expired", fresh.id: "open"}
    old = _hold_and_payment(uow, held.id)
    assert tuple(old) == ("canceled", "expired", "expired")
    assert tuple(_hold_and_payment(uow, recent.id)) == ("requires_capture", None, "pending")
    assert _available(uow, card.card_id) == 8000
    assert reconciliation.reconcile(uow).ok


def test_generic_hold_expiry_leaves_payment_holds_to_their_payment(uow, make, shop, clock):
    """Regression: a manual payment's hold expires with the authorisation; the generic hold
    expiry used to release it and leave the payment ``requires_capture`` with no money held."""
    card = make.card(make.user(), balance="100")
    held = payments.create_payment(
        uow, actor=shop.api, merchant=shop.merchant.id, amount=Money(3000, "USD"),
        card=card_details(card), idempotency_key=new_key(), capture_method="manual",
    )  # fmt: skip
    clock.advance(days=uow.settings.authorization_days, seconds=1)
    assert wallet.expire_holds(uow, actor=shop.owner) == 0
    assert tuple(_hold_and_payment(uow, held.id)) == ("requires_capture", None, "pending")
    assert _available(uow, card.card_id) == 7000
    # Only through its payment, which ends canceled (expired), is the hold released.
    assert payments.expire_uncaptured(uow, actor=shop.owner) == 1
    assert tuple(_hold_and_payment(uow, held.id)) == ("canceled", "expired", "expired")
    assert _available(uow, card.card_id) == 10000
    assert wallet.expire_holds(uow, actor=shop.owner) == 0
    report = reconciliation.reconcile(uow)
    assert report.ok, report.violations
