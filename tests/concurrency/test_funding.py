"""Top-ups post exactly once, when the funding processor confirms them (issue 11 A1), on
connections that commit for real: the worker settling a confirmed and a declined top-up, two
workers running one funding job at once, a lease that runs out while the first worker is asking
the processor, a worker killed between the processor's answer and the settle, and many
simultaneous top-ups against the daily cap (pending ones count). Each ends with one request at
the processor per top-up, its money posted once (or not at all on a decline), and the ledger
check passing."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
import sqlalchemy as sa

from portal.domain.errors import LimitExceeded
from portal.domain.money import Money
from portal.domain.types import Actor, IssuedCard, MovementResult, MovementStatus
from portal.services.shared import processor
from portal.services.shared.settings import parse_limits
from portal.services.shared.uow import UnitOfWork
from portal.services.wallet import funding, wallet
from tests.concurrency.helpers import fetch_all, fetch_one, fetch_value, run_together
from tests.concurrency.test_withdrawal_processing import (
    SHORT_LEASE,
    WorkerKilled,
    assert_reconciled,
    wait_until,
    worker,
)
from tests.conftest import Factory, new_key

pytestmark = pytest.mark.concurrency

AMOUNT = Money.of_major("40", "USD")
DECLINED = Money.of_major("40.13", "USD")  # the demo processor declines minor units ending in 13


def pending_top_up(
    real_uow: Callable[[], UnitOfWork], amount: Money = AMOUNT
) -> tuple[Actor, IssuedCard, MovementResult]:
    make = Factory(real_uow())
    owner = make.user()
    card = make.card(owner)
    made = wallet.top_up(real_uow(), actor=owner, card_id=card.card_id, amount=amount,
                         method="debit_card", idempotency_key=new_key())  # fmt: skip
    assert made.status == MovementStatus.PENDING
    return owner, card, made


def funding_job(engine: sa.Engine, top_up_id: int) -> sa.Row[Any]:
    return fetch_one(engine, "SELECT id, payload, status FROM jobs WHERE kind = :k AND"
                     " (payload->>'top_up_id')::bigint = :id", k=wallet.FUNDING_JOB,
                     id=top_up_id)  # fmt: skip


def asked(engine: sa.Engine) -> list[tuple[Any, ...]]:
    """What the funding processor was asked (the demo's record of each key)."""
    rows = fetch_all(engine, "SELECT idempotency_key, operation, amount_minor, outcome"
                     " FROM demo_processor_requests ORDER BY id")  # fmt: skip
    return [tuple(r) for r in rows]


def assert_posted_once(real_uow: Callable[[], UnitOfWork], engine: sa.Engine, owner: Actor,
                       card: IssuedCard, made: MovementResult) -> None:  # fmt: skip
    assert asked(engine) == [(made.public_id, "funding", made.amount.amount_minor, "paid")]
    row = fetch_one(engine, "SELECT status, funding_reference, journal_entry_id FROM top_ups"
                    " WHERE id = :id", id=made.id)  # fmt: skip
    assert row.status == "succeeded" and row.funding_reference.startswith("fund_")
    entries = fetch_all(engine, "SELECT id FROM journal_entries WHERE kind = 'top_up'")
    assert [e.id for e in entries] == [row.journal_entry_id]
    balance = wallet.get_balance(real_uow(), actor=owner, card_id=card.card_id)
    assert balance.posted == made.amount
    confirms = fetch_value(engine, "SELECT count(*) FROM audit_events WHERE subject_type ="
                           " 'top_up' AND subject_id = :id AND action = 'top_up.confirm'",
                           id=made.id)  # fmt: skip
    assert confirms == 1
    assert_reconciled(real_uow)


def test_the_worker_posts_a_confirmed_top_up_and_fails_a_declined_one(
    real_uow: Callable[[], UnitOfWork], committing_engine: sa.Engine
) -> None:
    owner, card, made = pending_top_up(real_uow)
    declined = wallet.top_up(real_uow(), actor=owner, card_id=card.card_id, amount=DECLINED,
                             method="debit_card", idempotency_key=new_key())  # fmt: skip
    assert worker(real_uow, "worker-a").run_once() == 1
    assert worker(real_uow, "worker-a").run_once() == 1
    states = dict(fetch_all(committing_engine, "SELECT id, status FROM top_ups"))
    assert states == {made.id: "succeeded", declined.id: "failed"}
    assert funding_job(committing_engine, declined.id).status == "succeeded"
    balance = wallet.get_balance(real_uow(), actor=owner, card_id=card.card_id)
    assert balance.posted == AMOUNT
    assert_reconciled(real_uow)


def test_two_workers_running_one_funding_job_at_once_post_it_once(
    real_uow: Callable[[], UnitOfWork], committing_engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    owner, card, made = pending_top_up(real_uow)
    job = funding_job(committing_engine, made.id)
    both_inside = threading.Barrier(2)

    class BothAsking:
        def collect(self, uow: UnitOfWork, **kw: Any) -> str:
            both_inside.wait(timeout=30)
            return processor.DemoProcessor().collect(uow, **kw)

    monkeypatch.setattr(processor, "funding_processor", lambda uow: BothAsking())
    outcomes = run_together(2, lambda i: funding.collect(real_uow(), job.payload))
    assert [o.error for o in outcomes] == [None, None]
    assert_posted_once(real_uow, committing_engine, owner, card, made)


def test_a_lease_that_runs_out_mid_call_lets_another_worker_post_it_once(
    real_uow: Callable[[], UnitOfWork], committing_engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    owner, card, made = pending_top_up(real_uow)
    job = funding_job(committing_engine, made.id)
    inside, release = threading.Event(), threading.Event()
    calls: list[str] = []

    class Slow:
        def collect(self, uow: UnitOfWork, **kw: Any) -> str:
            if not calls:
                calls.append("first")
                inside.set()
                assert release.wait(60)
            return processor.DemoProcessor().collect(uow, **kw)

    monkeypatch.setattr(processor, "funding_processor", lambda uow: Slow())
    a, b = worker(real_uow, "worker-a", lease=SHORT_LEASE), worker(real_uow, "worker-b")
    thread = threading.Thread(target=a.run_once, daemon=True)
    thread.start()
    try:
        assert inside.wait(30)
        status = "SELECT status FROM top_ups WHERE id = :id"
        assert fetch_value(committing_engine, status, id=made.id) == "processing"
        expired = "SELECT locked_until < now() FROM jobs WHERE id = :id"
        wait_until(lambda: fetch_value(committing_engine, expired, id=job.id))
        assert b.run_once() == 1
        assert fetch_value(committing_engine, status, id=made.id) == "succeeded"
    finally:
        release.set()
        thread.join(30)
    assert not thread.is_alive()
    assert_posted_once(real_uow, committing_engine, owner, card, made)


@pytest.mark.parametrize("amount", [AMOUNT, DECLINED], ids=["confirmed", "declined"])
def test_a_worker_killed_after_the_answer_settles_once_on_rerun(
    real_uow: Callable[[], UnitOfWork], committing_engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch, amount: Money,
) -> None:  # fmt: skip
    owner, card, made = pending_top_up(real_uow, amount)

    class DiesAfterTheAnswer:
        def collect(self, uow: UnitOfWork, **kw: Any) -> str:
            try:
                processor.DemoProcessor().collect(uow, **kw)
            finally:
                raise WorkerKilled  # noqa: B012 (the answer is lost with the worker)

    monkeypatch.setattr(processor, "funding_processor", lambda uow: DiesAfterTheAnswer())
    with pytest.raises(WorkerKilled):
        worker(real_uow, "worker-a", lease=SHORT_LEASE).run_once()
    status = "SELECT status FROM top_ups WHERE id = :id"
    assert fetch_value(committing_engine, status, id=made.id) == "processing"
    assert_reconciled(real_uow)  # asked, not yet written down: nothing posted

    monkeypatch.setattr(processor, "funding_processor", lambda uow: processor.DemoProcessor())
    b = worker(real_uow, "worker-b")
    wait_until(lambda: b.run_once() == 1)
    if amount is AMOUNT:
        assert_posted_once(real_uow, committing_engine, owner, card, made)
        return
    assert asked(committing_engine) == [(made.public_id, "funding", amount.amount_minor,
                                         "declined")]  # fmt: skip
    row = fetch_one(committing_engine, "SELECT status, failure_code, journal_entry_id"
                    " FROM top_ups WHERE id = :id", id=made.id)  # fmt: skip
    assert tuple(row) == ("failed", "funding_declined", None)
    assert (
        wallet.get_balance(real_uow(), actor=owner, card_id=card.card_id).posted.amount_minor == 0
    )
    assert_reconciled(real_uow)


def test_simultaneous_top_ups_never_pass_the_daily_cap_while_pending(
    real_uow: Callable[[], UnitOfWork], committing_engine: sa.Engine
) -> None:
    make = Factory(real_uow())
    owner = make.user()
    cards_ = [make.card(owner) for _ in range(2)]
    capped = parse_limits({"USD": {"top_up": {"min": "1", "max": "100", "daily": "250"}}})

    def top_up(i: int) -> MovementResult:
        uow = real_uow()
        uow.settings = replace(uow.settings, limits=capped)
        return wallet.top_up(uow, actor=owner, card_id=cards_[i % 2].card_id,
                             amount=Money.of_major("100", "USD"), method="cash",
                             idempotency_key=new_key())  # fmt: skip

    outcomes = run_together(6, top_up)
    accepted = [o.value for o in outcomes if o.error is None]
    refused = [o.error for o in outcomes if o.error is not None]
    assert len(accepted) == 2 and all(isinstance(e, LimitExceeded) for e in refused)
    assert all(t.status == MovementStatus.PENDING for t in accepted)
    pending = "SELECT count(*) FROM top_ups WHERE status = 'pending'"
    assert fetch_value(committing_engine, pending) == 2
    assert [worker(real_uow, "worker-a").run_once() for _ in range(3)] == [1, 1, 0]
    total = sum(
        wallet.get_balance(real_uow(), actor=owner, card_id=c.card_id).posted.amount_minor
        for c in cards_
    )
    assert total == 20_000
    assert_reconciled(real_uow)
