"""Withdrawals are paid out exactly once, on connections that commit for real: two workers
running the payout job at once, a lease that runs out while the first worker is inside the
processor call (real workers claiming the job), staff trying to fail or confirm it mid-call
(refused: it is ``processing``), and a worker killed between the processor's answer and the
settle each end with one request at the processor, the hold posted (or voided, on a decline)
once, and the ledger check passing."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from portal.domain.errors import UnexpectedState
from portal.domain.money import Money
from portal.domain.types import Actor, MovementResult, MovementStatus
from portal.services.ledger.reconciliation import reconcile
from portal.services.shared import jobs, processor
from portal.services.shared.uow import UnitOfWork
from portal.services.wallet import payouts, wallet
from portal.worker import Worker
from tests.concurrency.helpers import fetch_all, fetch_one, fetch_value, run_together
from tests.conftest import SYSTEM, Factory, new_key

pytestmark = pytest.mark.concurrency

BANK = wallet.BankAccount("First Test Bank", "DE89 3704 0044", "Test Holder")
CLOSED = wallet.BankAccount("First Test Bank", "DE89 3704 0000", "Test Holder")  # declined
AMOUNT = Money.of_major("30", "USD")
#: A lease short enough to run out while a test holds a worker inside the processor call.
SHORT_LEASE = 1.0


@dataclass(frozen=True)
class Setup:
    owner: Actor
    staff: Actor
    card_id: int
    withdrawal: MovementResult


def withdrawal(real_uow: Callable[[], UnitOfWork], bank: wallet.BankAccount = BANK) -> Setup:
    """A card with 100 USD and a pending withdrawal of 30 USD (its payout job queued)."""
    make = Factory(real_uow())
    owner = make.user()
    staff = make.user(roles=("admin",))
    card = make.card(owner, balance="100")
    made = wallet.withdraw(
        real_uow(), actor=owner, card_id=card.card_id, amount=AMOUNT, bank=bank,
        idempotency_key=new_key(),
    )  # fmt: skip
    assert made.status == MovementStatus.PENDING
    return Setup(owner, staff, card.card_id, made)


def payout_job(engine: sa.Engine) -> sa.Row[Any]:
    return fetch_one(engine, "SELECT id, payload FROM jobs WHERE kind = :k", k=wallet.PAYOUT_JOB)


def status(engine: sa.Engine, withdrawal_id: int) -> str:
    return str(
        fetch_value(engine, "SELECT status FROM withdrawals WHERE id = :id", id=withdrawal_id)
    )


def requests(engine: sa.Engine) -> list[tuple[Any, ...]]:
    """What the bank (the demo processor) was asked to do."""
    rows = fetch_all(
        engine,
        "SELECT idempotency_key, operation, amount_minor, outcome FROM demo_processor_requests"
        " WHERE operation = 'payout'",
    )
    return [tuple(r) for r in rows]


def assert_reconciled(real_uow: Callable[[], UnitOfWork]) -> None:
    report = reconcile(real_uow())
    assert report.ok, report.violations


def assert_paid_once(real_uow: Callable[[], UnitOfWork], engine: sa.Engine, s: Setup) -> None:
    """One request at the processor, and Portal wrote its answer down once: the withdrawal
    succeeded with the processor's reference, its hold posted, one journal entry moved the
    30 USD from the wallet to the payouts account, one confirm in the audit trail."""
    w = s.withdrawal
    assert requests(engine) == [(w.public_id, "payout", AMOUNT.amount_minor, "paid")]
    (bank_ref,) = fetch_all(
        engine, "SELECT reference FROM demo_processor_requests WHERE operation = 'payout'"
    )
    row = fetch_one(
        engine,
        "SELECT w.status, w.payout_reference, w.failure_code, w.processing_started_at,"
        " w.journal_entry_id, h.status AS hold FROM withdrawals w"
        " JOIN holds h ON h.id = w.hold_id WHERE w.id = :id",
        id=w.id,
    )
    assert (row.status, row.payout_reference, row.failure_code, row.hold) == (
        "succeeded", bank_ref.reference, None, "posted"
    )  # fmt: skip
    assert row.processing_started_at is not None
    entries = fetch_all(engine, "SELECT id FROM journal_entries WHERE kind = 'withdrawal'")
    assert [e.id for e in entries] == [row.journal_entry_id]
    cleared = fetch_value(
        engine,
        "SELECT coalesce(sum(p.amount_minor), 0) FROM postings p JOIN accounts a"
        " ON a.id = p.account_id WHERE a.kind = 'payouts' AND a.currency = 'USD'",
    )
    assert cleared == AMOUNT.amount_minor
    balance = wallet.get_balance(real_uow(), actor=s.owner, card_id=s.card_id)
    assert (balance.posted.amount_minor, balance.pending_debits.amount_minor) == (7000, 0)
    assert settlements(engine, w.id) == ["withdrawal.confirm"]
    assert_reconciled(real_uow)


def settlements(engine: sa.Engine, withdrawal_id: int) -> list[str]:
    rows = fetch_all(
        engine,
        "SELECT action FROM audit_events WHERE subject_type = 'withdrawal' AND subject_id = :id"
        " AND action IN ('withdrawal.confirm', 'withdrawal.fail') ORDER BY id",
        id=withdrawal_id,
    )
    return [r.action for r in rows]


class Gated:
    """The real demo processor behind a gate: the first call signals ``inside`` and waits for
    ``release`` before it reaches the bank (a slow bank); later calls go straight through.
    Every answer is kept, so a test can see that each call got the same one."""

    def __init__(self) -> None:
        self.inside = threading.Event()
        self.release = threading.Event()
        self.answers: list[str] = []
        self._lock = threading.Lock()
        self._calls = 0

    def pay_out(self, uow: UnitOfWork, **kw: Any) -> str:
        with self._lock:
            self._calls += 1
            first = self._calls == 1
        if first:
            self.inside.set()
            assert self.release.wait(60), "the test never released the processor call"
        answer = processor.DemoProcessor().pay_out(uow, **kw)
        with self._lock:
            self.answers.append(answer)
        return answer


def worker(real_uow: Callable[[], UnitOfWork], name: str, lease: float = 60.0) -> Worker:
    return Worker(real_uow, lease_seconds=lease, worker_id=name, batch=1)


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


# -- two workers at once -------------------------------------------------------------------------
def test_two_workers_running_the_job_at_once_pay_it_once(
    real_uow: Callable[[], UnitOfWork], committing_engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    s = withdrawal(real_uow)
    job = payout_job(committing_engine)
    both_inside = threading.Barrier(2)

    class BothCalling:
        """The real demo processor, entered by both workers before either reaches the bank:
        the second worker found the withdrawal ``processing`` and called with the same key."""

        def pay_out(self, uow: UnitOfWork, **kw: Any) -> str:
            both_inside.wait(timeout=30)
            return processor.DemoProcessor().pay_out(uow, **kw)

    monkeypatch.setattr(processor, "payout_processor", lambda uow: BothCalling())
    outcomes = run_together(2, lambda i: payouts.pay_out(real_uow(), job.payload))
    assert [o.error for o in outcomes] == [None, None]
    assert_paid_once(real_uow, committing_engine, s)


# -- the lease runs out mid-call ----------------------------------------------------------------
def test_a_lease_that_runs_out_mid_call_lets_another_worker_finish_it_once(
    real_uow: Callable[[], UnitOfWork], committing_engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    s = withdrawal(real_uow)
    job = payout_job(committing_engine)
    gate = Gated()
    monkeypatch.setattr(processor, "payout_processor", lambda uow: gate)
    a, b = worker(real_uow, "worker-a", lease=SHORT_LEASE), worker(real_uow, "worker-b")
    claimed: list[int] = []
    thread = threading.Thread(target=lambda: claimed.append(a.run_once()), daemon=True)
    thread.start()
    try:
        assert gate.inside.wait(30)
        # Marked processing and committed before the call; A renewed its lease just before it.
        assert status(committing_engine, s.withdrawal.id) == "processing"
        assert requests(committing_engine) == []
        held_by = "SELECT locked_by, locked_until < now() AS expired FROM jobs WHERE id = :id"
        assert fetch_one(committing_engine, held_by, id=job.id).locked_by == "worker-a"
        # A is still inside the call when its lease runs out: B claims the job and pays it
        # with the same idempotency key.
        wait_until(lambda: fetch_one(committing_engine, held_by, id=job.id).expired)
        assert b.run_once() == 1
        assert status(committing_engine, s.withdrawal.id) == "succeeded"
    finally:
        gate.release.set()
        thread.join(30)
    assert not thread.is_alive() and claimed == [1]
    # A's call reached the bank after B's: it got the first answer, and its settle changed
    # nothing. The job is B's, done; its attempts count both claims.
    assert len(gate.answers) == 2 and len(set(gate.answers)) == 1
    done = fetch_one(
        committing_engine, "SELECT status, attempts, locked_by FROM jobs WHERE id = :id",
        id=job.id,
    )  # fmt: skip
    assert tuple(done) == ("succeeded", 2, None)
    assert_paid_once(real_uow, committing_engine, s)


def test_a_worker_that_lost_its_lease_before_the_call_does_not_call(
    real_uow: Callable[[], UnitOfWork], committing_engine: sa.Engine
) -> None:
    s = withdrawal(real_uow)
    job = payout_job(committing_engine)
    # Another worker holds the job now (A's lease ran out and B claimed it) ...
    (claimed,) = real_uow().run(lambda u: jobs.claim(u, "worker-b", lease_seconds=60))
    assert claimed.id == job.id
    # ... so A, still running its old attempt, stops before it calls the processor.
    with jobs.running(job.id, "worker-a", 60), pytest.raises(jobs.LeaseLost):
        payouts.pay_out(real_uow(), job.payload)
    assert requests(committing_engine) == []
    assert status(committing_engine, s.withdrawal.id) == "processing"
    with jobs.running(job.id, "worker-b", 60):
        payouts.pay_out(real_uow(), job.payload)
    assert_paid_once(real_uow, committing_engine, s)


# -- staff act mid-call -------------------------------------------------------------------------
def test_staff_cannot_fail_or_confirm_a_withdrawal_while_it_is_processing(
    real_uow: Callable[[], UnitOfWork], committing_engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    s = withdrawal(real_uow)
    gate = Gated()
    monkeypatch.setattr(processor, "payout_processor", lambda uow: gate)
    thread = threading.Thread(target=worker(real_uow, "worker-a").run_once, daemon=True)
    thread.start()
    try:
        assert gate.inside.wait(30)
        for settle in (wallet.fail_withdrawal, wallet.confirm_withdrawal):
            with pytest.raises(UnexpectedState) as refused:
                settle(real_uow(), actor=s.staff, withdrawal_id=s.withdrawal.public_id)
            assert refused.value.code == "unexpected_state"
            assert refused.value.param == "withdrawal_id"
            assert f"{s.withdrawal.public_id} is processing" in refused.value.message
        # Its hold does not expire meanwhile either: the processor has the money's order.
        later = real_uow()
        at = later.now() + timedelta(hours=later.settings.withdrawal_hold_hours, minutes=1)
        assert wallet.expire_holds(UnitOfWork(later._session_factory, later.settings,
                                              clock=lambda: at), actor=SYSTEM) == 0  # fmt: skip
        assert status(committing_engine, s.withdrawal.id) == "processing"
        assert settlements(committing_engine, s.withdrawal.id) == []
        assert_reconciled(real_uow)
    finally:
        gate.release.set()
        thread.join(30)
    assert not thread.is_alive()
    assert_paid_once(real_uow, committing_engine, s)
    # Settled, it is answered as it is, unchanged (as before).
    again = wallet.fail_withdrawal(real_uow(), actor=s.staff, withdrawal_id=s.withdrawal.id)
    assert again.status == MovementStatus.SUCCEEDED
    assert_paid_once(real_uow, committing_engine, s)


def test_staff_who_settle_it_before_the_job_runs_keep_it_from_the_processor(
    real_uow: Callable[[], UnitOfWork], committing_engine: sa.Engine
) -> None:
    s = withdrawal(real_uow)
    failed = wallet.fail_withdrawal(real_uow(), actor=s.staff, withdrawal_id=s.withdrawal.id)
    assert failed.status == MovementStatus.FAILED
    assert worker(real_uow, "worker-a").run_once() == 1
    assert requests(committing_engine) == []  # never sent to the bank
    assert status(committing_engine, s.withdrawal.id) == "failed"
    assert_reconciled(real_uow)


# -- the worker dies between the answer and the settle ------------------------------------------
class WorkerKilled(BaseException):
    """The worker process is gone (a BaseException, so the worker cannot record a failure)."""


class DiesAfterTheCall:
    """The real demo processor; the worker dies once the bank has answered (paid or
    declined), before Portal writes the answer down."""

    def pay_out(self, uow: UnitOfWork, **kw: Any) -> str:
        try:
            processor.DemoProcessor().pay_out(uow, **kw)
        finally:
            raise WorkerKilled  # noqa: B012 (the answer, or the decline, is lost with it)


@pytest.mark.parametrize("bank", [BANK, CLOSED], ids=["paid", "declined"])
def test_a_worker_killed_after_the_call_and_before_the_settle_settles_once_on_rerun(
    real_uow: Callable[[], UnitOfWork], committing_engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch, bank: wallet.BankAccount,
) -> None:  # fmt: skip
    s = withdrawal(real_uow, bank)
    job = payout_job(committing_engine)
    monkeypatch.setattr(processor, "payout_processor", lambda uow: DiesAfterTheCall())
    with pytest.raises(WorkerKilled):
        worker(real_uow, "worker-a", lease=SHORT_LEASE).run_once()
    # The bank acted; Portal has not written it down: processing, the hold still pending,
    # the job still running under the dead worker's lease. The ledger is consistent.
    outcome = "paid" if bank is BANK else "declined"
    assert requests(committing_engine) == [
        (s.withdrawal.public_id, "payout", AMOUNT.amount_minor, outcome)
    ]
    assert status(committing_engine, s.withdrawal.id) == "processing"
    hold = "SELECT h.status FROM holds h JOIN withdrawals w ON w.hold_id = h.id WHERE w.id = :id"
    assert fetch_value(committing_engine, hold, id=s.withdrawal.id) == "pending"
    running = "SELECT status, locked_by FROM jobs WHERE id = :id"
    assert tuple(fetch_one(committing_engine, running, id=job.id)) == ("running", "worker-a")
    assert_reconciled(real_uow)

    # Once the lease has run out, another worker runs the job again: the same key gets the
    # bank's first answer and the money moves once.
    monkeypatch.setattr(processor, "payout_processor", lambda uow: processor.DemoProcessor())
    b = worker(real_uow, "worker-b")
    wait_until(lambda: b.run_once() == 1)
    assert fetch_value(committing_engine, "SELECT status FROM jobs WHERE id = :id",
                       id=job.id) == "succeeded"  # fmt: skip
    if bank is BANK:
        assert_paid_once(real_uow, committing_engine, s)
        return
    assert requests(committing_engine) == [
        (s.withdrawal.public_id, "payout", AMOUNT.amount_minor, "declined")
    ]
    row = fetch_one(
        committing_engine,
        "SELECT w.status, w.failure_code, w.journal_entry_id, h.status AS hold"
        " FROM withdrawals w JOIN holds h ON h.id = w.hold_id WHERE w.id = :id",
        id=s.withdrawal.id,
    )
    assert tuple(row) == ("failed", "account_closed", None, "voided")
    entries = "SELECT count(*) FROM journal_entries WHERE kind = 'withdrawal'"
    assert fetch_value(committing_engine, entries) == 0
    balance = wallet.get_balance(real_uow(), actor=s.owner, card_id=s.card_id)
    assert (balance.posted.amount_minor, balance.pending_debits.amount_minor) == (10000, 0)
    assert settlements(committing_engine, s.withdrawal.id) == ["withdrawal.fail"]
    assert_reconciled(real_uow)
