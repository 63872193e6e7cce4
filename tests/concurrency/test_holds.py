"""Concurrent confirm and fail of one pending withdrawal: exactly one outcome wins, the hold
is resolved once, and the balances agree with the winner (CI bar (d))."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import sqlalchemy as sa

from portal.domain.money import Money
from portal.domain.types import MovementResult, MovementStatus
from portal.services.ledger.reconciliation import reconcile
from portal.services.shared.uow import UnitOfWork
from portal.services.wallet import wallet
from tests.concurrency.helpers import (
    error_kinds,
    fetch_all,
    fetch_one,
    fetch_value,
    run_together,
    wallet_account,
    warm_pool,
)
from tests.conftest import SYSTEM, Factory, new_key

pytestmark = pytest.mark.concurrency

WITHDRAWALS = 5  # each raced in turn, so both outcomes are likely to win at least once
THREADS = 20  # per withdrawal: even threads confirm it, odd threads fail it
AMOUNT = Money.of_major("10", "USD")
BANK = wallet.BankAccount("First Test Bank", "GB29 NWBK 6016 1331", "Test Holder")
#: What the hold, the withdrawal's failure code and the journal look like for each outcome.
EXPECTED = {
    MovementStatus.SUCCEEDED: {"hold": "posted", "failure_code": None, "entries": 1},
    MovementStatus.FAILED: {"hold": "voided", "failure_code": "payout_failed", "entries": 0},
}


def settle(real_uow: Callable[[], UnitOfWork], withdrawal_id: int, i: int) -> MovementResult:
    if i % 2 == 0:
        return wallet.confirm_withdrawal(real_uow(), actor=SYSTEM, withdrawal_id=withdrawal_id)
    return wallet.fail_withdrawal(real_uow(), actor=SYSTEM, withdrawal_id=withdrawal_id)


def assert_settled_once(engine: sa.Engine, withdrawal_id: int, status: MovementStatus) -> None:
    """The withdrawal, its hold, its journal entry and its audit trail show ``status`` once."""
    w = fetch_one(
        engine,
        "SELECT w.status, w.failure_code, w.journal_entry_id, w.completed_at, h.status AS hold,"
        " h.resolved_at, h.journal_entry_id AS hold_entry"
        " FROM withdrawals w JOIN holds h ON h.id = w.hold_id WHERE w.id = :id",
        id=withdrawal_id,
    )
    expected = EXPECTED[status]
    assert (w.status, w.hold, w.failure_code) == (
        status,
        expected["hold"],
        expected["failure_code"],
    )
    assert w.completed_at is not None
    assert w.resolved_at is not None
    assert (w.journal_entry_id is not None) == bool(expected["entries"])
    assert w.hold_entry == w.journal_entry_id
    if w.journal_entry_id is not None:
        postings = fetch_all(
            engine,
            "SELECT amount_minor FROM postings WHERE journal_entry_id = :entry ORDER BY 1",
            entry=w.journal_entry_id,
        )
        assert [p.amount_minor for p in postings] == [-AMOUNT.amount_minor, AMOUNT.amount_minor]
    settlements = fetch_value(
        engine,
        "SELECT count(*) FROM audit_events WHERE subject_type = 'withdrawal'"
        " AND subject_id = :id AND action IN ('withdrawal.confirm', 'withdrawal.fail')",
        id=withdrawal_id,
    )
    assert settlements == 1


def test_concurrent_confirm_and_fail_of_a_withdrawal_settle_it_exactly_once(
    real_uow: Callable[[], UnitOfWork], committing_engine: sa.Engine
) -> None:
    make = Factory(real_uow())
    owner = make.user()
    card = make.card(owner, balance="100")
    pending = [
        wallet.withdraw(
            real_uow(), actor=owner, card_id=card.card_id, amount=AMOUNT, bank=BANK,
            idempotency_key=new_key(),
        )
        for _ in range(WITHDRAWALS)
    ]  # fmt: skip
    account = wallet_account(committing_engine, card.card_id)
    assert (account.posted_minor, account.pending_debits_minor) == (10_000, 5_000)

    warm_pool(committing_engine)
    winners = []
    for withdrawal in pending:
        outcomes = run_together(THREADS, lambda i, w=withdrawal: settle(real_uow, w.id, i))
        assert error_kinds(outcomes) == {}
        # Every caller, winner or not, is told the one outcome that stands.
        (status,) = {o.value.status for o in outcomes}
        assert status in EXPECTED
        assert_settled_once(committing_engine, withdrawal.id, status)
        winners.append(status)
    print(f"confirm/fail race winners: {[str(s) for s in winners]}")

    # Money left the wallet once per confirmed withdrawal and came back for the failed ones.
    confirmed = winners.count(MovementStatus.SUCCEEDED)
    account = wallet_account(committing_engine, card.card_id)
    assert (account.posted_minor, account.pending_debits_minor) == (
        10_000 - confirmed * AMOUNT.amount_minor,
        0,
    )
    entries = "SELECT count(*) FROM journal_entries WHERE kind = 'withdrawal'"
    assert fetch_value(committing_engine, entries) == confirmed
    pending_holds = "SELECT count(*) FROM holds WHERE status = 'pending'"
    assert fetch_value(committing_engine, pending_holds) == 0
    report = reconcile(real_uow())
    assert report.ok, report.violations
