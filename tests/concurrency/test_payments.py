"""Payments under concurrency, with real commits on separate connections: racing partial
refunds never exceed what was received, capture and cancel of one payment resolve it once,
racing captures capture once, and payments from many threads never overdraw a card while its
owner transfers from it at the same time. The ledger reconciles after each."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import sqlalchemy as sa

from portal.domain.money import Money
from portal.services.ledger.reconciliation import reconcile
from portal.services.merchants import payments
from portal.services.shared.uow import UnitOfWork
from portal.services.wallet import wallet
from tests.concurrency.helpers import (
    error_kinds,
    fetch_one,
    fetch_value,
    negative_customer_balances,
    run_together,
    wallet_account,
    warm_pool,
)
from tests.conftest import Factory, new_key
from tests.merchants.conftest import Shop, card_details, open_shop

pytestmark = pytest.mark.concurrency


def usd(major: str) -> Money:
    return Money.of_major(major, "USD")


@pytest.fixture
def setup(real_uow: Callable[[], UnitOfWork]) -> tuple[Factory, Shop]:
    make = Factory(real_uow())
    staff = make.user(roles=("admin",))
    return make, open_shop(real_uow(), make, staff)


def pay(real_uow, shop: Shop, card, amount: str, method: str = "automatic"):
    return payments.create_payment(
        real_uow(), actor=shop.api, merchant=shop.merchant.id, amount=usd(amount),
        card=card_details(card), idempotency_key=new_key(), capture_method=method,
    )  # fmt: skip


def assert_ledger_ok(real_uow, engine: sa.Engine) -> None:
    assert negative_customer_balances(engine) == []
    report = reconcile(real_uow())
    assert report.ok, report.violations


def refund(real_uow, shop: Shop, payment: str, amount: int):
    return payments.create_refund(
        real_uow(), actor=shop.api, merchant=shop.merchant.id, payment=payment,
        idempotency_key=new_key(), amount=amount,
    )  # fmt: skip


def test_fifty_racing_partial_refunds_never_exceed_amount_received(
    real_uow, committing_engine, setup
):
    make, shop = setup
    card = make.card(make.user(), balance="1000")
    pay(real_uow, shop, card, "500.00")  # a merchant balance that covers every refund
    payment = pay(real_uow, shop, card, "100.00")
    warm_pool(committing_engine)
    outcomes = run_together(50, lambda i: refund(real_uow, shop, payment.id, 700))
    won = [o.value for o in outcomes if o.error is None]
    assert len(won) == 14  # 14 x 7.00 = 98.00; a 15th would pass 100.00
    assert error_kinds(outcomes) == {"amount_too_large": 36}
    row = fetch_one(
        committing_engine,
        "SELECT received_minor, refunded_minor FROM payments WHERE public_id = :id",
        id=payment.id,
    )
    assert (row.received_minor, row.refunded_minor) == (10_000, 9_800)
    total = fetch_value(
        committing_engine,
        "SELECT SUM(r.amount_minor) FROM refunds r JOIN payments p ON p.id = r.payment_id"
        " WHERE p.public_id = :id",
        id=payment.id,
    )
    assert total == 9_800
    assert_ledger_ok(real_uow, committing_engine)


def test_two_racing_sixties_on_a_hundred_one_wins(real_uow, committing_engine, setup):
    make, shop = setup
    card = make.card(make.user(), balance="1000")
    pay(real_uow, shop, card, "500.00")
    warm_pool(committing_engine)
    for _ in range(5):
        payment = pay(real_uow, shop, card, "100.00")
        outcomes = run_together(2, lambda i, p=payment: refund(real_uow, shop, p.id, 6000))
        assert [o.error is None for o in outcomes].count(True) == 1
        assert error_kinds(outcomes) == {"amount_too_large": 1}
    assert_ledger_ok(real_uow, committing_engine)


def test_racing_capture_and_cancel_resolve_a_payment_once(real_uow, committing_engine, setup):
    make, shop = setup
    card = make.card(make.user(), balance="1000")
    warm_pool(committing_engine)
    winners = []
    for _ in range(5):
        held = pay(real_uow, shop, card, "20.00", "manual")

        def act(i: int, held=held):
            uow = real_uow()
            if i % 2 == 0:
                return payments.capture_payment(
                    uow, actor=shop.api, merchant=shop.merchant.id, payment=held.id,
                    idempotency_key=new_key(),
                )  # fmt: skip
            return payments.cancel_payment(
                uow, actor=shop.api, merchant=shop.merchant.id, payment=held.id,
                idempotency_key=new_key(), reason="abandoned",
            )  # fmt: skip

        outcomes = run_together(20, act)
        won = [o.value for o in outcomes if o.error is None]
        assert len(won) == 1
        assert error_kinds(outcomes) == {"payment_unexpected_state": 19}
        status = fetch_value(
            committing_engine, "SELECT status FROM payments WHERE public_id = :id", id=held.id
        )
        assert status == won[0].status
        holds = fetch_value(
            committing_engine,
            "SELECT h.status FROM holds h JOIN payments p ON p.hold_id = h.id"
            " WHERE p.public_id = :id",
            id=held.id,
        )
        assert holds == ("posted" if status == "succeeded" else "voided")
        winners.append(status)
    captured = winners.count("succeeded")
    account = wallet_account(committing_engine, card.card_id)
    assert (account.posted_minor, account.pending_debits_minor) == (
        100_000 - captured * 2_000, 0,
    )  # fmt: skip
    assert_ledger_ok(real_uow, committing_engine)


def test_racing_captures_capture_once(real_uow, committing_engine, setup):
    make, shop = setup
    card = make.card(make.user(), balance="1000")
    held = pay(real_uow, shop, card, "50.00", "manual")
    warm_pool(committing_engine)
    outcomes = run_together(
        20,
        lambda i: payments.capture_payment(
            real_uow(),
            actor=shop.api,
            merchant=shop.merchant.id,
            payment=held.id,
            idempotency_key=new_key(),
            amount_to_capture=1000 + i,
        ),  # fmt: skip
    )
    assert [o.error is None for o in outcomes].count(True) == 1
    assert error_kinds(outcomes) == {"payment_unexpected_state": 19}
    entries = fetch_value(
        committing_engine, "SELECT count(*) FROM journal_entries WHERE kind = 'payment'"
    )
    assert entries == 1
    account = wallet_account(committing_engine, card.card_id)
    received = fetch_value(
        committing_engine, "SELECT received_minor FROM payments WHERE public_id = :id", id=held.id
    )
    assert (account.posted_minor, account.pending_debits_minor) == (100_000 - received, 0)
    assert_ledger_ok(real_uow, committing_engine)


def test_payments_and_transfers_never_overdraw_one_card(real_uow, committing_engine, setup):
    make, shop = setup
    owner = make.user()
    card = make.card(owner, balance="100")
    other = make.card(owner)
    warm_pool(committing_engine)

    def spend(i: int):
        if i % 4 == 3:
            return wallet.transfer(
                real_uow(), actor=owner, from_card_id=card.card_id, to_card_id=other.card_id,
                amount=usd("5.00"), idempotency_key=new_key(),
            )  # fmt: skip
        return pay(real_uow, shop, card, "5.00", "manual" if i % 4 == 1 else "automatic")

    outcomes = run_together(40, spend)
    kinds = error_kinds(outcomes)
    assert set(kinds) <= {"card_declined", "insufficient_funds"}, kinds
    succeeded = sum(
        1 for o in outcomes
        if o.error is None and getattr(o.value, "status", None) in
        ("succeeded", "requires_capture", wallet.MovementStatus.SUCCEEDED)
    )  # fmt: skip
    assert succeeded == 20  # exactly the 100.00 on the card, in 5.00 steps
    account = wallet_account(committing_engine, card.card_id)
    assert account.posted_minor - account.pending_debits_minor == 0
    assert_ledger_ok(real_uow, committing_engine)
