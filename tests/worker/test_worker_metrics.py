"""What the worker exports: jobs by kind and outcome with their latency, settled withdrawals in
the business counters, the periodic ledger check, and its /healthz and /metrics port."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from prometheus_client import CollectorRegistry
from sqlalchemy.orm import sessionmaker

from portal.domain.money import Money
from portal.services.ledger import reconciliation
from portal.services.shared import jobs
from portal.services.shared.uow import UnitOfWork
from portal.services.wallet import wallet
from portal.web.metrics import BusinessMetrics
from portal.worker import Worker, WorkerMetrics, serve_http
from tests.conftest import Factory, new_key
from tests.worker.test_worker import BANK, recorder  # noqa: F401 (a fixture)

pytestmark = pytest.mark.concurrency


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_jobs_are_counted_by_kind_and_outcome_with_their_latency(real_uow, recorder):  # noqa: F811
    _runs, failing = recorder
    failing.add(2)
    uow = real_uow()
    uow.run(lambda u: [jobs.enqueue(u, "test.record", {"n": 1}),
                       jobs.enqueue(u, "test.record", {"n": 2}, max_attempts=2)])  # fmt: skip
    metrics = WorkerMetrics()
    worker = Worker(real_uow, metrics=metrics)
    assert worker.run_once() == 2
    uow.run(lambda u: u.execute("UPDATE jobs SET run_at = now()"))
    assert worker.run_once() == 1  # the failing job's second and last attempt

    registry = metrics.registry
    jobs_total = "portal_worker_jobs_total"
    assert sample(registry, jobs_total, kind="test.record", outcome="succeeded") == 1
    assert sample(registry, jobs_total, kind="test.record", outcome="retry") == 1
    assert sample(registry, jobs_total, kind="test.record", outcome="dead") == 1
    duration = "portal_worker_job_duration_seconds_count"
    assert sample(registry, duration, kind="test.record") == 3


def test_settled_withdrawals_are_counted_once_committed(
    app, committing_engine, real_uow: Callable[[], UnitOfWork]
) -> None:
    registry = CollectorRegistry()
    business = BusinessMetrics(registry)
    factory = sessionmaker(bind=committing_engine, expire_on_commit=False, autoflush=False)

    def observed_uow() -> UnitOfWork:
        return UnitOfWork(factory, app.config["SERVICE_SETTINGS"], metrics=business)

    make = Factory(real_uow())
    alice = make.user()
    card = make.card(alice, balance="100")
    for account in ("9876543210", "1111110000"):  # the demo processor declines ...0000
        bank = wallet.BankAccount("Bank", account, "Alice")
        wallet.withdraw(observed_uow(), actor=alice, card_id=card.card_id,
                        amount=Money(3000, "USD"), bank=bank,
                        idempotency_key=new_key())  # fmt: skip

    def movements(outcome: str) -> float:
        return sample(registry, "portal_money_movements_total", kind="withdrawal",
                      currency="USD", outcome=outcome)  # fmt: skip

    assert (movements("pending"), movements("succeeded"), movements("failed")) == (2, 0, 0)
    assert Worker(observed_uow).run_once() == 2
    assert (movements("pending"), movements("succeeded"), movements("failed")) == (2, 1, 1)
    moved = sample(registry, "portal_money_moved_minor_units_total", kind="withdrawal",
                   currency="USD", outcome="succeeded")  # fmt: skip
    assert moved == 3000
    assert Worker(observed_uow).run_once() == 0  # nothing settles (or counts) twice


def test_the_periodic_ledger_check_is_recorded(real_uow) -> None:
    make = Factory(real_uow())
    make.card(make.user(), balance="12.34")
    worker = Worker(real_uow, ledger_check_seconds=3600)
    worker.run_periodic()
    check = reconciliation.last_check(real_uow())
    assert check is not None and check.violation_count == 0
    assert check.totals_by_currency["USD"] == 0  # balanced: funding -1234, wallet +1234
    worker.run_periodic()  # not due again for an hour
    count = real_uow().run(lambda u: u.execute("SELECT count(*) FROM ledger_checks").scalar())
    assert count == 1


@pytest.fixture
def served() -> Callable[..., tuple[Worker, str]]:
    servers = []

    def serve(token: str | None) -> tuple[Worker, str]:
        worker = Worker(lambda: None, lease_seconds=60)  # type: ignore[arg-type,return-value]
        server = serve_http(worker, 0, host="127.0.0.1", token=token)
        servers.append(server)
        return worker, f"http://127.0.0.1:{server.server_address[1]}"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


def test_worker_health_follows_its_loop(served) -> None:
    worker, url = served(None)
    worker.beat()
    assert requests.get(f"{url}/healthz", timeout=5).status_code == 200
    worker.last_loop = time.monotonic() - 120  # longer than the lease: stuck
    assert requests.get(f"{url}/healthz", timeout=5).status_code == 503
    worker.beat()
    assert requests.get(f"{url}/healthz", timeout=5).status_code == 200
    worker.stopping.set()
    assert requests.get(f"{url}/healthz", timeout=5).status_code == 503
    assert requests.get(f"{url}/metrics", timeout=5).status_code == 404  # no token, no metrics


def test_worker_metrics_need_the_token(served) -> None:
    worker, url = served("worker-metrics-token")
    worker.metrics.jobs.labels("payout", "succeeded").inc()
    worker.beat()
    assert requests.get(f"{url}/metrics", timeout=5).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert requests.get(f"{url}/metrics", headers=wrong, timeout=5).status_code == 401
    right = {"Authorization": "Bearer worker-metrics-token"}
    answer = requests.get(f"{url}/metrics", headers=right, timeout=5)
    assert answer.status_code == 200
    assert 'portal_worker_jobs_total{kind="payout",outcome="succeeded"} 1.0' in answer.text
    assert "portal_worker_last_loop_timestamp_seconds" in answer.text


def test_the_worker_logs_json_lines_with_secrets_masked(app, real_uow) -> None:
    """``portal worker --once`` as a deployment runs it: JSON lines on stdout, and a card number
    that reaches a log message (here through a job kind) is masked."""
    card_number = "4111111111111111"
    real_uow().run(lambda u: jobs.enqueue(u, f"pay-{card_number}", {}, max_attempts=1))
    env = {**os.environ, "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
           "PORTAL_ENV": "test", "PORTAL_LOG_FORMAT": "json"}  # fmt: skip
    script = Path(sys.executable).parent / "portal"
    done = subprocess.run(
        [str(script), "worker", "--once"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    messages = [line["message"] for line in lines]
    assert any("attempt 1 failed" in m for m in messages), messages
    assert any("ran once: 1 job(s)" in m for m in messages), messages
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    assert card_number not in done.stdout + done.stderr


def test_a_long_periodic_task_holds_up_neither_jobs_nor_the_heartbeat(real_uow, recorder):  # noqa: F811
    runs, _failing = recorder
    release, started = threading.Event(), threading.Event()

    def slow(uow: UnitOfWork) -> None:  # a ledger check on a big ledger, say
        started.set()
        release.wait(30)

    worker = Worker(real_uow, poll_seconds=0.05)
    worker.periodic = [("slow", 3600.0, slow)]
    serving = threading.Thread(target=worker.serve)
    serving.start()
    try:
        assert started.wait(10)
        real_uow().run(lambda u: jobs.enqueue(u, "test.record", {"n": 5}))
        deadline = time.monotonic() + 10
        while not runs[5] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert runs[5] == 1  # run while the periodic task is still busy
        assert worker.healthy(stale_after=1.0)
    finally:
        worker.stopping.set()
        release.set()
        serving.join(10)
    assert not serving.is_alive()


def test_a_database_that_is_away_is_a_warning_and_the_loop_goes_on(app, caplog) -> None:
    """Claiming jobs while the database is unreachable is logged as a warning naming the state
    (no traceback, no advice meant for API clients), and the loop carries on until stopped."""
    import sqlalchemy as sa

    nowhere = sa.create_engine("postgresql+psycopg://portal@127.0.0.1:1/none")
    factory = sessionmaker(bind=nowhere, expire_on_commit=False, autoflush=False)
    worker = Worker(lambda: UnitOfWork(factory, app.config["SERVICE_SETTINGS"]),
                    poll_seconds=0.05, metrics=WorkerMetrics(CollectorRegistry()))  # fmt: skip
    worker.periodic = []  # only the claiming loop
    threading.Timer(0.5, worker.stopping.set).start()
    with caplog.at_level("WARNING", logger="portal.worker"):
        worker.serve()
    claims = [r for r in caplog.records if "claiming jobs failed" in r.getMessage()]
    assert len(claims) >= 2  # it went on trying
    assert all(r.levelname == "WARNING" and r.exc_info is None for r in claims)
    assert all("database is unavailable" in r.getMessage() for r in claims)
    assert not any("idempotency key" in r.getMessage() for r in claims)
