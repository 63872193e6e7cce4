"""The job queue and the worker, with real commits on separate connections."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from portal.domain.money import Money
from portal.services.ledger import reconciliation
from portal.services.shared import jobs
from portal.services.shared.uow import UnitOfWork
from portal.services.wallet import wallet
from portal.services.wallet.wallet import BankAccount
from portal.worker import Worker
from tests.conftest import SYSTEM, Factory, new_key

pytestmark = pytest.mark.concurrency

BANK = BankAccount("Bank Mandiri", "9876543210", "Alice Example")


def job_rows(uow: UnitOfWork, kind: str) -> list:
    return uow.run(
        lambda u: u.execute(
            "SELECT id, status, attempts, run_at, last_error FROM jobs WHERE kind = :k ORDER BY id",
            {"k": kind},
        ).all()
    )


@pytest.fixture
def recorder():
    """A job kind whose handler records each run (and can be told to fail)."""
    runs: Counter[int] = Counter()
    lock = threading.Lock()
    failing: set[int] = set()

    def handle(uow: UnitOfWork, payload: dict) -> None:
        with lock:
            runs[payload["n"]] += 1
        if payload["n"] in failing:
            raise RuntimeError(f"job {payload['n']} failed on purpose")

    jobs.HANDLERS["test.record"] = handle
    yield runs, failing
    del jobs.HANDLERS["test.record"]


def test_two_workers_never_run_one_job_twice(real_uow, recorder):
    runs, _ = recorder
    uow = real_uow()
    uow.run(lambda u: [jobs.enqueue(u, "test.record", {"n": n}) for n in range(300)])
    workers = [Worker(real_uow, batch=5, worker_id=f"w{i}") for i in range(4)]

    def drain(worker: Worker) -> None:
        while worker.run_once():
            pass

    threads = [threading.Thread(target=drain, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert runs == Counter(range(300))  # each job ran exactly once
    rows = job_rows(uow, "test.record")
    assert {r.status for r in rows} == {"succeeded"} and {r.attempts for r in rows} == {1}


def test_job_enqueued_in_a_rolled_back_transaction_never_exists(real_uow, recorder):
    runs, _ = recorder
    uow = real_uow()

    def enqueue_then_fail(u: UnitOfWork) -> None:
        jobs.enqueue(u, "test.record", {"n": 1})
        raise RuntimeError("the request failed after enqueueing")

    with pytest.raises(RuntimeError):
        uow.run(enqueue_then_fail)
    assert job_rows(uow, "test.record") == []
    Worker(real_uow).run_once()
    assert runs == Counter()


def test_failed_job_retries_with_backoff_then_goes_dead(real_uow, recorder):
    runs, failing = recorder
    failing.add(7)
    uow = real_uow()
    uow.run(lambda u: jobs.enqueue(u, "test.record", {"n": 7}, max_attempts=3))
    worker = Worker(real_uow)
    for attempt in (1, 2, 3):
        before = datetime.now(UTC)
        assert worker.run_once() == 1
        (row,) = job_rows(uow, "test.record")
        assert row.attempts == attempt and "failed on purpose" in row.last_error
        if attempt < 3:
            assert row.status == "queued"
            assert row.run_at >= before + timedelta(seconds=jobs.backoff_seconds(attempt) - 1)
            assert worker.run_once() == 0  # not due yet
            uow.run(lambda u: u.execute("UPDATE jobs SET run_at = now()"))
    assert row.status == "dead"
    assert runs[7] == 3
    uow.run(lambda u: u.execute("UPDATE jobs SET run_at = now()"))
    assert worker.run_once() == 0  # dead jobs are never claimed


def test_payout_job_confirms_a_withdrawal_and_declines_a_closed_account(real_uow):
    make = Factory(real_uow())
    alice = make.user()
    card = make.card(alice, balance="100")
    uow = real_uow()
    ok = wallet.withdraw(uow, actor=alice, card_id=card.card_id, amount=Money(3000, "USD"),
                         bank=BANK, idempotency_key=new_key())  # fmt: skip
    closed = BankAccount("Bank Mandiri", "1111110000", "Alice Example")
    declined = wallet.withdraw(uow, actor=alice, card_id=card.card_id, amount=Money(2000, "USD"),
                               bank=closed, idempotency_key=new_key())  # fmt: skip
    assert Worker(real_uow).run_once() == 2
    states = dict(uow.run(lambda u: u.execute("SELECT id, status FROM withdrawals").all()))
    assert states == {ok.id: "succeeded", declined.id: "failed"}
    balance = wallet.get_balance(uow, actor=alice, card_id=card.card_id)
    assert (balance.posted.amount_minor, balance.pending_debits.amount_minor) == (7000, 0)
    assert reconciliation.reconcile(uow).ok


def test_worker_voids_expired_holds(real_uow):
    make = Factory(real_uow())
    alice = make.user()
    card = make.card(alice, balance="100")
    long_ago = datetime.now(UTC) - timedelta(hours=200)
    past = UnitOfWork(real_uow()._session_factory, real_uow().settings, clock=lambda: long_ago)
    w = wallet.withdraw(past, actor=alice, card_id=card.card_id, amount=Money(5000, "USD"),
                        bank=BANK, idempotency_key=new_key())  # fmt: skip
    uow = real_uow()
    uow.run(lambda u: u.execute("DELETE FROM jobs"))  # only the expiry may settle it
    Worker(real_uow).run_periodic()
    row = uow.run(
        lambda u: u.execute(
            "SELECT w.status, w.failure_code, h.status AS hold FROM withdrawals w"
            " JOIN holds h ON h.id = w.hold_id WHERE w.id = :id", {"id": w.id},
        ).one()
    )  # fmt: skip
    assert tuple(row) == ("failed", "hold_expired", "expired")
    balance = wallet.get_balance(uow, actor=SYSTEM, card_id=card.card_id)
    assert balance.pending_debits.amount_minor == 0
    assert reconciliation.reconcile(uow).ok


WORKER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from portal import create_app
    from portal.services.shared import jobs
    from portal.web.uow import make_uow
    from portal.worker import Worker

    def hang(uow, payload):
        print("started", flush=True)
        time.sleep(600)

    jobs.HANDLERS["test.hang"] = hang
    app = create_app()
    Worker(lambda: make_uow(app), lease_seconds=1.0, worker_id="doomed").run_once()
    """
)


def test_worker_killed_mid_job_leaves_it_to_be_retried(app, real_uow, recorder):
    runs, _ = recorder
    uow = real_uow()
    job_id = uow.run(lambda u: jobs.enqueue(u, "test.hang", {"n": 1}))
    env = {**os.environ, "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
           "PORTAL_ENV": "test"}  # fmt: skip
    with subprocess.Popen(
        [sys.executable, "-c", WORKER_SCRIPT], env=env, stdout=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
    (row,) = job_rows(uow, "test.hang")
    assert row.status == "running" and row.attempts == 1  # orphaned by the dead worker
    # Another worker picks it up once the lease has run out, and finishes it.
    jobs.HANDLERS["test.hang"] = jobs.HANDLERS["test.record"]
    try:
        worker = Worker(real_uow, worker_id="survivor")
        deadline = time.monotonic() + 10
        while not worker.run_once() and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        del jobs.HANDLERS["test.hang"]
    (row,) = job_rows(uow, "test.hang")
    assert (row.id, row.status, row.attempts) == (job_id, "succeeded", 2)
    assert runs[1] == 1
