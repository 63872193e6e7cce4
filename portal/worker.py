"""The background worker: claims due jobs and runs their handlers.

Run one or more with ``portal worker``. Each loop: run periodic tasks when due (hold expiry,
checkout session and uncaptured payment expiry, the ledger check, key purge), claim jobs with
``FOR UPDATE SKIP LOCKED`` under a lease, run each handler (handlers are idempotent), then mark
the job succeeded, or failed with backoff (dead after ``max_attempts``).

With ``PORTAL_WORKER_HTTP_PORT`` set, a worker serves ``GET /healthz`` (200 while its loop has
turned recently, else 503: the probes' signal) and ``GET /metrics`` (its :class:`WorkerMetrics`,
behind ``PORTAL_METRICS_TOKEN`` like the web's) on that port.
"""

from __future__ import annotations

import hmac
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from portal.domain.errors import TemporarilyUnavailable
from portal.domain.types import Actor
from portal.services.ledger import reconciliation
from portal.services.merchants import checkout, events, payments, settlements, webhooks
from portal.services.merchants import payouts as merchant_payouts
from portal.services.shared import audit_chain, jobs
from portal.services.shared.uow import UnitOfWork
from portal.services.statistics import checks as statistics_checks
from portal.services.wallet import funding, payouts, wallet
from portal.telemetry import job_span

log = logging.getLogger("portal.worker")

SYSTEM_ACTOR = Actor.system("worker")
#: How often the audit chains' heads are anchored (an ``audit.anchor`` entry, the gauges below).
AUDIT_ANCHOR_SECONDS = 300.0
#: How often the statistics roll-ups of the previous UTC day are recomputed and compared (once
#: the day has been checked clean it is not recorded again; a new day is checked within this).
STATISTICS_CHECK_SECONDS = 3600.0


def _purge_keys(uow: UnitOfWork) -> int:
    from portal.services.shared.idempotency import purge_expired

    return purge_expired(uow)


def _expire_uncaptured(uow: UnitOfWork) -> int:
    return payments.expire_uncaptured(uow, actor=SYSTEM_ACTOR)


def periodic_tasks(
    ledger_check_seconds: float = 300.0,
) -> list[tuple[str, float, Callable[[UnitOfWork], object]]]:
    """Periodic tasks: (name, interval seconds, task). Each worker runs them; they are
    idempotent, and the ledger check feeds the imbalance gauge and alert."""
    return [
        ("expire_holds", 5.0, lambda uow: wallet.expire_holds(uow, actor=SYSTEM_ACTOR)),
        # Checkout sessions read as expired on time anyway; this writes it down.
        ("expire_checkout_sessions", 30.0, checkout.expire_checkout_sessions),
        # Manual-capture payments not captured within PORTAL_AUTHORIZATION_DAYS are canceled
        # (reason ``expired``) and their holds released: only this releases a payment's hold.
        ("expire_uncaptured_payments", 30.0, _expire_uncaptured),
        ("ledger_check", ledger_check_seconds, reconciliation.record_check),
        ("purge_idempotency_keys", 3600.0, lambda uow: uow.run(_purge_keys)),
        # Events are kept EVENT_RETENTION_DAYS (30) days, then deleted.
        ("purge_events", 3600.0, events.purge_events),
        # Rate-limit counters kept in PostgreSQL while Redis was down (portal.web.ratelimit).
        ("purge_rate_limits", 300.0, lambda uow: uow.run(_purge_rate_limits)),
        # Captured funds whose settlement day has come become available (balance.available),
        # and once PORTAL_PAYOUT_TIME has passed each day, automatic payouts are made.
        ("release_available", 60.0, settlements.release_available),
        ("payout_schedule", 60.0, merchant_payouts.run_schedule),
    ]


def _purge_rate_limits(uow: UnitOfWork) -> int:
    result = uow.execute("DELETE FROM rate_limit_counters WHERE expires_at < now()")
    return int(result.rowcount)  # type: ignore[attr-defined]


class WorkerMetrics:
    """What a worker exports: jobs by kind and outcome with their latency, periodic task
    failures, and when its loop last turned (the liveness signal)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.jobs = Counter(
            "portal_worker_jobs", "Jobs run by kind and outcome (succeeded, retry, dead).",
            ["kind", "outcome"], registry=self.registry,
        )  # fmt: skip
        self.job_seconds = Histogram(
            "portal_worker_job_duration_seconds", "Time to run a job's handler, by kind.",
            ["kind"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )  # fmt: skip
        self.periodic_failures = Counter(
            "portal_worker_periodic_failures", "Periodic task runs that raised, by task.",
            ["task"], registry=self.registry,
        )  # fmt: skip
        self.last_loop = Gauge(
            "portal_worker_last_loop_timestamp_seconds",
            "Unix time the worker's loop last turned.", registry=self.registry,
        )  # fmt: skip
        self.audit_anchor = Gauge(
            "portal_audit_anchor_timestamp_seconds",
            "Unix time the audit chains' heads were last anchored.", registry=self.registry,
        )  # fmt: skip
        self.audit_head = Gauge(
            "portal_audit_chain_head", "Each audit chain's anchored head: its seq, labelled"
            " with its hash (hex).", ["chain", "hash"], registry=self.registry,
        )  # fmt: skip

        self.statistics_differences = Gauge(
            "portal_statistics_rollup_differences",
            "Statistics roll-up cells that differed from a recomputation at the last check"
            " (the previous UTC day).", registry=self.registry,
        )  # fmt: skip
        self.statistics_checked = Gauge(
            "portal_statistics_last_check_timestamp_seconds",
            "Unix time the statistics roll-ups were last recomputed and compared.",
            registry=self.registry,
        )  # fmt: skip

    def anchored(self, found: audit_chain.Anchor) -> None:
        self.audit_head.clear()  # one series per chain: the latest hash only
        for head in found.heads:
            self.audit_head.labels(str(head.chain), head.hash).set(head.seq)
        self.audit_anchor.set(found.at.timestamp())


class Worker:
    def __init__(
        self,
        make_uow: Callable[[], UnitOfWork],
        *,
        poll_seconds: float = 0.5,
        lease_seconds: float = 60.0,
        batch: int = 10,
        worker_id: str | None = None,
        metrics: WorkerMetrics | None = None,
        ledger_check_seconds: float = 300.0,
    ) -> None:
        self.make_uow = make_uow
        self.poll_seconds = poll_seconds
        self.lease_seconds = lease_seconds
        self.batch = batch
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.stopping = threading.Event()
        self.metrics = metrics or WorkerMetrics()
        self.periodic = periodic_tasks(ledger_check_seconds)
        self.periodic.append(("audit_anchor", AUDIT_ANCHOR_SECONDS, self.anchor_audit))
        self.periodic.append(("statistics_check", STATISTICS_CHECK_SECONDS, self.check_statistics))
        self._next_run: dict[str, float] = {}
        #: time.monotonic() when the loop last turned (see healthy()).
        self.last_loop = time.monotonic()
        payouts.register()
        funding.register()
        merchant_payouts.register()
        webhooks.register()

    def run_periodic(self) -> None:
        now = time.monotonic()
        for name, interval, task in self.periodic:
            if self._next_run.get(name, 0.0) <= now:
                self._next_run[name] = now + interval
                try:
                    task(self.make_uow())
                except Exception:
                    self.metrics.periodic_failures.labels(name).inc()
                    log.exception("periodic task %s failed", name)

    def anchor_audit(self, uow: UnitOfWork) -> audit_chain.Anchor:
        found = audit_chain.anchor(uow)
        self.metrics.anchored(found)
        if found.entry_id is not None:
            heads = " ".join(f"{h.chain}:{h.seq}:{h.hash}" for h in found.heads if h.seq)
            log.info("audit anchor %d: %s", found.entry_id, heads)
        return found

    def check_statistics(self, uow: UnitOfWork) -> statistics_checks.CheckResult:
        """The nightly recomputation of the statistics roll-ups (the previous UTC day): each
        difference is logged as an error, the count is the alert's gauge."""
        result = statistics_checks.record_check(uow)
        self.metrics.statistics_differences.set(len(result.differences))
        self.metrics.statistics_checked.set(time.time())
        return result

    def run_once(self) -> int:
        """Claim and run one batch of due jobs; returns how many were claimed."""
        uow = self.make_uow()
        claimed = uow.run(
            lambda u: jobs.claim(u, self.worker_id, lease_seconds=self.lease_seconds,
                                 limit=self.batch)
        )  # fmt: skip
        for job in claimed:
            if self.stopping.is_set():
                break  # the lease runs out and another worker takes the rest
            self.run_job(job)
        return len(claimed)

    def run_job(self, job: jobs.ClaimedJob) -> str:
        """Run one claimed job; returns its outcome: succeeded, retry or dead."""
        with job_span(job) as span:
            handler = jobs.HANDLERS.get(job.kind)
            started = time.perf_counter()
            try:
                if handler is None:
                    raise LookupError(f"no handler for job kind {job.kind!r}")
                with jobs.running(job.id, self.worker_id, self.lease_seconds):
                    handler(self.make_uow(), job.payload)
            except Exception as exc:
                span.failed(exc)
                log.warning(
                    "job %s (%s) attempt %d failed: %s", job.id, job.kind, job.attempts, exc
                )
                error = f"{type(exc).__name__}: {exc}"
                status = self.make_uow().run(lambda u: jobs.fail(u, job, self.worker_id, error))
                outcome = "dead" if status == "dead" else "retry"
            else:
                self.make_uow().run(lambda u: jobs.complete(u, job, self.worker_id))
                outcome = "succeeded"
            self.metrics.job_seconds.labels(job.kind).observe(time.perf_counter() - started)
            self.metrics.jobs.labels(job.kind, outcome).inc()
            return outcome

    def serve(self) -> None:
        """Run jobs until stopped. Periodic tasks run in a thread of their own, so a long one
        (the ledger check grows with the ledger) never holds up payouts nor the heartbeat."""
        log.info("worker %s started", self.worker_id)
        periodic = threading.Thread(target=self._periodic_loop, name="worker-periodic")
        periodic.start()
        while not self.stopping.is_set():
            self.beat()
            try:
                busy = self.run_once()
            except TemporarilyUnavailable as exc:
                # The database is away (lost connection, restart, lock timeout): the claim is
                # rolled back or its lease runs out, and the next loop tries again.
                log.warning("claiming jobs failed, the database is unavailable (%s): trying"
                            " again in %.1f s", exc.code, self.poll_seconds)  # fmt: skip
                busy = 0
            except Exception:
                log.exception("claiming jobs failed")
                busy = 0
            if not busy:
                self.stopping.wait(self.poll_seconds)
        periodic.join()
        log.info("worker %s stopped", self.worker_id)

    def _periodic_loop(self) -> None:
        while not self.stopping.is_set():
            self.run_periodic()
            self.stopping.wait(min(1.0, self.poll_seconds))

    def beat(self) -> None:
        self.last_loop = time.monotonic()
        self.metrics.last_loop.set_to_current_time()

    def healthy(self, stale_after: float) -> bool:
        """Whether the loop turned within ``stale_after`` seconds (a job may hold it for up to
        its lease, so probes allow at least that)."""
        return not self.stopping.is_set() and time.monotonic() - self.last_loop < stale_after

    def install_signal_handlers(self) -> None:
        def stop(signum: int, frame: FrameType | None) -> None:
            self.stopping.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)


def serve_http(
    worker: Worker, port: int, *, host: str, token: str | None = None
) -> ThreadingHTTPServer:
    """Serve ``/healthz`` and (with ``token``) ``/metrics`` for ``worker`` in a daemon thread.
    Nothing here is secret but the metrics, which need the token."""
    stale_after = max(30.0, worker.lease_seconds + 2 * worker.poll_seconds)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path == "/healthz":
                ok = worker.healthy(stale_after)
                self._answer(200 if ok else 503, b"ok\n" if ok else b"stale\n", "text/plain")
            elif self.path == "/metrics" and token:
                given = self.headers.get("Authorization", "")
                if hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                    body = generate_latest(worker.metrics.registry)
                    self._answer(200, body, CONTENT_TYPE_LATEST)
                else:
                    self._answer(401, b"unauthorized\n", "text/plain")
            else:
                self._answer(404, b"not found\n", "text/plain")

        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass  # probes and scrapes every few seconds would drown the worker's own log

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="worker-http", daemon=True).start()
    log.info(
        "worker %s serves /healthz and /metrics on port %d", worker.worker_id,
        server.server_address[1],
    )  # fmt: skip
    return server
