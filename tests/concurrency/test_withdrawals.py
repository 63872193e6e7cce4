"""200 concurrent withdrawals of 80 USD from a wallet of 100 USD: exactly one holds the money,
the other 199 are refused for insufficient funds, and nothing is ever overdrawn (CI bar (a))."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from portal.domain.errors import InsufficientFunds
from portal.domain.money import Money
from portal.domain.types import MovementResult, MovementStatus
from portal.services.ledger.reconciliation import reconcile
from portal.services.shared.uow import UnitOfWork
from portal.services.wallet import wallet
from tests.concurrency.helpers import (
    error_kinds,
    fetch_all,
    fetch_value,
    negative_customer_balances,
    run_together,
    wallet_account,
    warm_pool,
)
from tests.conftest import SYSTEM, Factory, new_key

pytestmark = pytest.mark.concurrency

THREADS = 200
BANK = wallet.BankAccount("First Test Bank", "DE89 3704 0044", "Test Holder")


def assert_reconciled(real_uow: Callable[[], UnitOfWork]) -> None:
    report = reconcile(real_uow())
    assert report.ok, report.violations


def test_200_concurrent_withdrawals_of_80_from_100_hold_the_money_exactly_once(
    real_uow: Callable[[], UnitOfWork], committing_engine: sa.Engine
) -> None:
    make = Factory(real_uow())
    owner = make.user()
    card = make.card(owner, balance="100")
    amount = Money.of_major("80", "USD")

    def withdraw(_: int) -> MovementResult:
        return wallet.withdraw(
            real_uow(), actor=owner, card_id=card.card_id, amount=amount, bank=BANK,
            idempotency_key=new_key(),
        )  # fmt: skip

    warm_pool(committing_engine)
    outcomes = run_together(THREADS, withdraw)

    # Exactly one pending withdrawal; every other caller is refused for insufficient funds.
    results = [o.value for o in outcomes if o.error is None]
    assert error_kinds(outcomes) == Counter({"insufficient_funds": THREADS - 1})
    assert all(isinstance(o.error, InsufficientFunds) for o in outcomes if o.error is not None)
    assert len(results) == 1
    (pending,) = results
    assert pending.status == MovementStatus.PENDING
    assert pending.amount == amount

    # The wallet: posted 100, one hold of 80, available 20; nothing negative anywhere.
    account = wallet_account(committing_engine, card.card_id)
    assert (account.posted_minor, account.pending_debits_minor) == (10000, 8000)
    assert account.posted_minor - account.pending_debits_minor == 2000
    assert negative_customer_balances(committing_engine) == []
    holds = fetch_all(
        committing_engine,
        "SELECT status, amount_minor FROM holds WHERE account_id = :account",
        account=account.id,
    )
    assert [(h.status, h.amount_minor) for h in holds] == [("pending", 8000)]

    # One pending and 199 failed withdrawal records; no money has left the wallet yet.
    records = fetch_all(
        committing_engine,
        "SELECT status, failure_code, count(*) AS n FROM withdrawals WHERE card_id = :card"
        " GROUP BY status, failure_code",
        card=card.card_id,
    )
    assert {(r.status, r.failure_code): r.n for r in records} == {
        ("pending", None): 1,
        ("failed", "insufficient_funds"): THREADS - 1,
    }
    withdrawal_entries = "SELECT count(*) FROM journal_entries WHERE kind = 'withdrawal'"
    assert fetch_value(committing_engine, withdrawal_entries) == 0
    assert_reconciled(real_uow)

    # Confirming the payout posts the hold: posted 20, nothing pending.
    confirmed = wallet.confirm_withdrawal(real_uow(), actor=SYSTEM, withdrawal_id=pending.id)
    assert confirmed.status == MovementStatus.SUCCEEDED
    account = wallet_account(committing_engine, card.card_id)
    assert (account.posted_minor, account.pending_debits_minor) == (2000, 0)
    assert fetch_value(committing_engine, withdrawal_entries) == 1
    hold_status = "SELECT status FROM holds WHERE account_id = :account"
    assert fetch_value(committing_engine, hold_status, account=account.id) == "posted"
    assert negative_customer_balances(committing_engine) == []
    assert_reconciled(real_uow)
