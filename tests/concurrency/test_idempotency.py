"""Exactly once under concurrency: many identical transfers racing under one idempotency key
move the money once and all get the same answer (CI bar (b)); the key raced with different
parameters is refused with IdempotencyConflict and moves nothing."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import sqlalchemy as sa

from portal.domain.errors import IdempotencyConflict
from portal.domain.money import Money
from portal.domain.types import Actor, IssuedCard, MovementResult, MovementStatus
from portal.services.ledger.reconciliation import reconcile
from portal.services.shared.uow import UnitOfWork
from portal.services.wallet import wallet
from tests.concurrency.helpers import error_kinds, fetch_all, fetch_value, run_together, warm_pool
from tests.conftest import Factory, new_key

pytestmark = pytest.mark.concurrency

THREADS = 100


def two_cards(real_uow: Callable[[], UnitOfWork]) -> tuple[Actor, IssuedCard, IssuedCard]:
    """A sender with 100 USD on one card and an empty card of another user."""
    make = Factory(real_uow())
    sender = make.user()
    return sender, make.card(sender, balance="100"), make.card(make.user())


def posted(engine: sa.Engine, card: IssuedCard) -> int:
    sql = "SELECT posted_minor FROM accounts WHERE card_id = :card"
    return fetch_value(engine, sql, card=card.card_id)


def transfer_rows(engine: sa.Engine) -> list[sa.Row[object]]:
    return fetch_all(engine, "SELECT id, amount_minor, status, journal_entry_id FROM transfers")


def transfer_entries(engine: sa.Engine) -> int:
    return fetch_value(engine, "SELECT count(*) FROM journal_entries WHERE kind = 'transfer'")


def test_100_identical_concurrent_transfers_under_one_key_move_money_once(
    real_uow: Callable[[], UnitOfWork], committing_engine: sa.Engine
) -> None:
    sender, source, dest = two_cards(real_uow)
    key, amount = new_key(), Money.of_major("25", "USD")

    def send(_: int) -> MovementResult:
        return wallet.transfer(
            real_uow(), actor=sender, from_card_id=source.card_id, to_card_id=dest.card_id,
            amount=amount, idempotency_key=key,
        )  # fmt: skip

    warm_pool(committing_engine)
    outcomes = run_together(THREADS, send)

    assert error_kinds(outcomes) == {}
    results = [o.value for o in outcomes]
    assert {r.id for r in results} == {results[0].id}
    assert {r.status for r in results} == {MovementStatus.SUCCEEDED}
    assert sorted(r.replayed for r in results) == [False] + [True] * (THREADS - 1)
    (row,) = transfer_rows(committing_engine)
    assert (row.id, row.amount_minor, row.status) == (results[0].id, 2500, "succeeded")
    assert transfer_entries(committing_engine) == 1
    assert {r.journal_entry_id for r in results} == {row.journal_entry_id}
    assert (posted(committing_engine, source), posted(committing_engine, dest)) == (7500, 2500)
    report = reconcile(real_uow())
    assert report.ok, report.violations


def test_one_key_raced_with_two_amounts_serves_one_and_refuses_the_other(
    real_uow: Callable[[], UnitOfWork], committing_engine: sa.Engine
) -> None:
    """Whichever request claims the key first wins; every racer with the other amount gets
    IdempotencyConflict, every racer with the winning amount gets the winner's transfer."""
    sender, source, dest = two_cards(real_uow)
    key = new_key()
    amounts = {0: Money.of_major("25", "USD"), 1: Money.of_major("30", "USD")}
    group = [int(i % 4 == 3) for i in range(THREADS)]  # three threads in four send 25 USD

    def send(i: int) -> MovementResult:
        return wallet.transfer(
            real_uow(), actor=sender, from_card_id=source.card_id, to_card_id=dest.card_id,
            amount=amounts[group[i]], idempotency_key=key,
        )  # fmt: skip

    warm_pool(committing_engine)
    outcomes = run_together(THREADS, send)

    (row,) = transfer_rows(committing_engine)  # one transfer, of one of the two amounts
    won = next(g for g, a in amounts.items() if a.amount_minor == row.amount_minor)
    winners = [o for o, g in zip(outcomes, group, strict=True) if g == won]
    losers = [o for o, g in zip(outcomes, group, strict=True) if g != won]
    assert error_kinds(winners) == {}
    assert {o.value.id for o in winners} == {row.id}
    assert sum(not o.value.replayed for o in winners) == 1
    assert error_kinds(losers) == {"idempotency_key_reused": len(losers)}
    assert all(isinstance(o.error, IdempotencyConflict) for o in losers)

    # Only the winning amount moved, once.
    moved = amounts[won].amount_minor
    assert transfer_entries(committing_engine) == 1
    assert posted(committing_engine, source) == 10000 - moved
    assert posted(committing_engine, dest) == moved
    report = reconcile(real_uow())
    assert report.ok, report.violations
