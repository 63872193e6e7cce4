"""Transfers in opposite directions between the same two wallets, in parallel: the wallets are
locked in account-id order, so no deadlock (nor lock timeout) ever reaches a caller."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from portal.domain.money import Money
from portal.services.ledger.reconciliation import reconcile
from portal.services.shared.uow import UnitOfWork
from portal.services.wallet import wallet
from tests.concurrency.helpers import (
    counting_retries,
    error_kind,
    error_kinds,
    fetch_value,
    run_together,
    wallet_account,
    warm_pool,
)
from tests.conftest import Factory, new_key

pytestmark = pytest.mark.concurrency

THREADS_PER_DIRECTION = 2
TRANSFERS_PER_THREAD = 75  # 150 each way
AMOUNT = Money.of_major("1", "USD")


def test_opposite_transfers_between_two_wallets_never_deadlock(
    real_uow: Callable[[], UnitOfWork], committing_engine: sa.Engine
) -> None:
    make = Factory(real_uow())
    alice, bob = make.user(), make.user()
    # Enough that no transfer is ever refused: each wallet can send all of its transfers.
    a = make.card(alice, balance="1000")
    b = make.card(bob, balance="1000")
    directions = [(alice, a, b), (bob, b, a)]
    stop = threading.Event()  # set by the first error (fail fast) or on overrunning the join

    def send_many(i: int) -> Counter[str]:
        """Each transfer's outcome: "succeeded" or the kind of error it raised."""
        actor, source, dest = directions[i % 2]
        uow = real_uow()  # one unit of work per thread, reused for each of its transfers
        seen: Counter[str] = Counter()
        for _ in range(TRANSFERS_PER_THREAD):
            if stop.is_set():
                break
            try:
                result = wallet.transfer(
                    uow, actor=actor, from_card_id=source.card_id, to_card_id=dest.card_id,
                    amount=AMOUNT, idempotency_key=new_key(),
                )  # fmt: skip
            except Exception as exc:  # counted: the test expects none
                seen[error_kind(exc)] += 1
                stop.set()
            else:
                seen[str(result.status)] += 1
        return seen

    warm_pool(committing_engine)
    with counting_retries() as retries:
        outcomes = run_together(2 * THREADS_PER_DIRECTION, send_many, stop=stop)
    seen = sum((o.value for o in outcomes if o.error is None), Counter())
    print(f"opposite transfers: {dict(seen)}; {retries.count} unit-of-work retries")

    # No deadlock, lock timeout or any other error reached a caller; every transfer succeeded.
    total = 2 * THREADS_PER_DIRECTION * TRANSFERS_PER_THREAD
    assert error_kinds(outcomes) == {}
    assert seen == {"succeeded": total}
    entries = "SELECT count(*) FROM journal_entries WHERE kind = 'transfer'"
    assert fetch_value(committing_engine, entries) == total

    # As many went each way, so both wallets end where they started; the ledger reconciles.
    balances = [wallet_account(committing_engine, card.card_id) for card in (a, b)]
    assert [(w.posted_minor, w.pending_debits_minor) for w in balances] == [(100_000, 0)] * 2
    report = reconcile(real_uow())
    assert report.ok, report.violations
