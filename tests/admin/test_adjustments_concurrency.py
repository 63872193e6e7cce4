"""Adjustments under contention, committing for real: approvers racing on one request post it
once; approvals of debits racing transfers on the same card never take the wallet below zero,
and the ledger reconciles afterwards."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import sqlalchemy as sa

from portal.domain.money import Money
from portal.services.admin import adjustments
from portal.services.ledger.reconciliation import reconcile
from portal.services.shared.uow import UnitOfWork
from portal.services.wallet import wallet
from tests.concurrency.helpers import (
    error_kinds,
    fetch_value,
    negative_customer_balances,
    run_together,
    wallet_account,
    warm_pool,
)
from tests.conftest import Factory, new_key

pytestmark = pytest.mark.concurrency


def test_approvers_racing_on_one_request_post_it_once(
    real_uow: Callable[[], UnitOfWork], committing_engine: sa.Engine
) -> None:
    make = Factory(real_uow())
    maker, first, second = (make.user(roles=("admin",)) for _ in range(3))
    card = make.card(make.user(), balance="10.00")
    made = adjustments.request_adjustment(
        real_uow(), actor=maker, target=card.public_id, direction="credit",
        amount=Money.of_major("7.00", "USD"), reason="Goodwill", reference="T-1",
        idempotency_key=new_key(),
    )  # fmt: skip
    checkers = [first, second] * 4
    warm_pool(committing_engine)

    outcomes = run_together(
        len(checkers),
        lambda i: adjustments.approve_adjustment(
            real_uow(), actor=checkers[i], adjustment=made.public_id
        ),
    )

    approved = [o.value for o in outcomes if o.value is not None]
    winners = {a.decided_by_id for a in approved}
    assert len(winners) == 1, winners
    winner = winners.pop()
    # The winner's other submissions answer the same approval; the other checker is refused.
    assert len(approved) == 4 and sum(not a.replayed for a in approved) == 1
    assert {a.journal_entry_id for a in approved} == {approved[0].journal_entry_id}
    assert error_kinds(outcomes) == {"adjustment_decided": 4}
    assert all(checkers[i].id == winner for i, o in enumerate(outcomes) if o.value is not None)
    entries = fetch_value(
        committing_engine, "SELECT count(*) FROM journal_entries WHERE kind = 'adjustment'"
    )
    assert entries == 1
    assert wallet_account(committing_engine, card.card_id).posted_minor == 1700
    approvals = fetch_value(
        committing_engine,
        "SELECT count(*) FROM audit_events WHERE action = 'adjustment.approve'",
    )
    assert approvals == 1
    report = reconcile(real_uow())
    assert report.ok, report.violations


def test_debit_approvals_racing_transfers_keep_the_balance_invariant(
    real_uow: Callable[[], UnitOfWork], committing_engine: sa.Engine
) -> None:
    make = Factory(real_uow())
    maker, checker = make.user(roles=("admin",)), make.user(roles=("admin",))
    holder = make.user()
    card = make.card(holder, balance="100.00")
    other = make.card(holder)
    amount = Money.of_major("30.00", "USD")
    requests = [
        adjustments.request_adjustment(
            real_uow(),
            actor=maker,
            target=card.public_id,
            direction="debit",
            amount=amount,
            reason="Chargeback",
            reference=f"CB-{i}",
            idempotency_key=new_key(),
        )  # fmt: skip
        for i in range(4)
    ]
    warm_pool(committing_engine)

    def work(i: int) -> object:
        if i % 2 == 0:
            return adjustments.approve_adjustment(
                real_uow(), actor=checker, adjustment=requests[i // 2].public_id
            )
        return wallet.transfer(
            real_uow(), actor=holder, from_card_id=card.card_id, to_card_id=other.card_id,
            amount=amount, idempotency_key=new_key(),
        )  # fmt: skip

    outcomes = run_together(8, work)

    succeeded = sum(o.value is not None for o in outcomes)
    # 100.00 covers three debits of 30.00, whichever kind they are; the rest are refused.
    assert succeeded == 3, error_kinds(outcomes)
    assert set(error_kinds(outcomes)) == {"insufficient_funds"}
    account = wallet_account(committing_engine, card.card_id)
    assert account.posted_minor == 10000 - 3 * 3000
    assert negative_customer_balances(committing_engine) == []
    report = reconcile(real_uow())
    assert report.ok, report.violations
