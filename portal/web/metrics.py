"""Prometheus metrics: request counts and latency histograms by ``url_rule`` and real status
(4xx and 429 included), business counters (money moved, refusals, replays, sign-ins, token
reuse, cache look-ups) and gauges read from the database at scrape time, served at ``/metrics``
to holders of ``PORTAL_METRICS_TOKEN``.

Business counters are observed by the services inside their unit of work and published here
after the commit (``UnitOfWork.observe``; :func:`portal.web.uow.make_uow` passes this app's
:class:`BusinessMetrics` as the sink), so the pages, the API and the worker count alike.

prometheus-flask-exporter records every request; each app gets its own ``CollectorRegistry`` (so
several apps in one process, as in the tests, never collide). Under gunicorn with
``PROMETHEUS_MULTIPROC_DIR`` set, prometheus_client writes each worker's values to that directory
and a scrape aggregates them with ``MultiProcessCollector`` (gunicorn.conf.py empties the directory
at start and drops the files of workers that exit). Without ``PORTAL_METRICS_TOKEN`` there is no
endpoint (404).
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterator
from datetime import UTC, datetime

import sqlalchemy as sa
from flask import Flask, Response, abort, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_flask_exporter import PrometheusMetrics

from portal.extensions import db
from portal.services.admin.audit_log import anchor_state
from portal.services.ledger.reconciliation import last_check
from portal.services.shared.monitoring import queue_state
from portal.web.uow import make_uow

#: Business counters: name observed by the services (``uow.observe(name, value, **labels)``)
#: -> (help, label names). The exported name is ``portal_<name>_total``. To add one, add it here
#: and observe it in the service, inside the unit of work (it is counted after the commit).
BUSINESS_COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "money_moved_minor_units": (
        "Money moved, in minor units of the currency, by kind, currency and outcome.",
        ("kind", "currency", "outcome"),
    ),
    "money_movements": (
        "Money movements by kind, currency and outcome.", ("kind", "currency", "outcome"),
    ),
    "refusals": ("Refused money movements by kind and error code.", ("kind", "code")),
    "idempotent_replays": ("Answers replayed for a reused idempotency key.", ("kind",)),
    "sign_ins": ("Sign-ins by outcome (success, failure, limited).", ("outcome",)),
    "token_reuse_detections": (
        "Refresh tokens presented again after rotation (their family is revoked).", ("reason",),
    ),
    "db_conflicts": (
        "Transactions that met a deadlock, a serialization failure or a lock timeout, by error"
        " and outcome (retried, gave_up).", ("error", "outcome"),
    ),
}  # fmt: skip

#: Sign-in endpoints whose 429 answers count as ``sign_ins{outcome="limited"}``.
SIGN_IN_ENDPOINTS = frozenset({"auth.login", "auth.mfa", "api.create_token"})


class BusinessMetrics:
    """The app's business counters and the sink units of work publish observations to."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.counters = {
            name: Counter(f"portal_{name}", help_, labels, registry=registry)
            for name, (help_, labels) in BUSINESS_COUNTERS.items()
        }
        self.cache_requests = Counter(
            "portal_cache_requests", "Cache look-ups by cache and result (hit, miss, error).",
            ["cache", "result"], registry=registry,
        )  # fmt: skip

    def __call__(self, name: str, value: float, labels: dict[str, str]) -> None:
        self.counters[name].labels(**labels).inc(value)

    def record_limited_sign_in(self, response: Response) -> Response:
        if response.status_code == 429 and request.endpoint in SIGN_IN_ENDPOINTS:
            self.counters["sign_ins"].labels(outcome="limited").inc()
        return response


class PoolMetrics:
    """Database connections of this app's engine, summed over the live processes: in use
    (checked out by a request, a job or a scrape) and open (in use or idle in the pool)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.in_use = Gauge(
            "portal_db_connections_in_use", "Database connections checked out of the pool.",
            registry=registry, multiprocess_mode="livesum",
        )  # fmt: skip
        self.open = Gauge(
            "portal_db_connections_open", "Database connections open (in use or idle).",
            registry=registry, multiprocess_mode="livesum",
        )  # fmt: skip

    def watch(self, engine: sa.Engine) -> None:
        sa.event.listen(engine, "connect", lambda *_: self.open.inc())
        sa.event.listen(engine, "close", lambda *_: self.open.dec())
        sa.event.listen(engine, "checkout", lambda *_: self.in_use.inc())
        sa.event.listen(engine, "checkin", lambda *_: self.in_use.dec())


def business_metrics(app: Flask) -> BusinessMetrics | None:
    """The app's business metrics (None when metrics are off)."""
    found: BusinessMetrics | None = app.extensions.get("portal.business_metrics")
    return found


def _scrape_registry(app: Flask) -> CollectorRegistry:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        aggregated = CollectorRegistry()
        multiprocess.MultiProcessCollector(aggregated)
        return aggregated
    own: CollectorRegistry = app.extensions["portal.metrics"].registry
    return own


class DatabaseState(Collector):
    """Gauges read from the database at scrape time: job queue, pending holds, the audit
    log's last anchor and the last periodic ledger check (the worker's reconciliation; the
    ledger is never summed here).
    Metric families built per scrape, never stored values: under multiprocess mode a stored
    gauge would land in every worker's files and be exported twice."""

    def collect(self) -> Iterator[Metric]:
        state = queue_state(make_uow())
        yield from self._audit_anchor()
        check = last_check(make_uow())
        jobs = GaugeMetricFamily("portal_jobs", "Background jobs by status.", labels=["status"])
        for status, count in state.jobs_by_status.items():
            jobs.add_metric([status], count)
        yield jobs
        yield GaugeMetricFamily(
            "portal_job_oldest_due_seconds", "Age of the oldest job waiting to run.",
            value=state.oldest_due_job_seconds,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "portal_holds_pending", "Holds reserving money (withdrawals in flight).",
            value=state.holds_pending,
        )  # fmt: skip
        if check is None:
            return
        imbalance = GaugeMetricFamily(
            "portal_ledger_imbalance_minor_units",
            "Sum of all postings per currency at the last ledger check (0 when balanced).",
            labels=["currency"],
        )
        for currency, total in check.totals_by_currency.items():
            imbalance.add_metric([currency], total)
        yield imbalance
        yield GaugeMetricFamily(
            "portal_ledger_violations",
            "Violations found by the last ledger check (balances, holds, entries, sums).",
            value=check.violation_count,
        )
        yield GaugeMetricFamily(
            "portal_ledger_last_check_timestamp_seconds",
            "Unix time of the last periodic ledger check.", value=check.checked_at.timestamp(),
        )  # fmt: skip

    def _audit_anchor(self) -> Iterator[Metric]:
        """The audit log's last anchor (the worker writes one every few minutes when entries
        were added): the latest hash per chain, and how long entries have waited for one."""
        anchor = anchor_state(make_uow())
        now = datetime.now(UTC)
        if anchor.anchored_at is not None:
            yield GaugeMetricFamily(
                "portal_audit_last_anchor_entry_timestamp_seconds",
                "Unix time the last audit.anchor entry was written (none is written while no"
                " entry was added).", value=anchor.anchored_at.timestamp(),
            )  # fmt: skip
        heads = GaugeMetricFamily(
            "portal_audit_anchored_head",
            "Each audit chain's head as the last anchor recorded it: its seq, labelled with"
            " its hash (hex).", labels=["chain", "hash"],
        )  # fmt: skip
        for chain, seq, digest in anchor.heads:
            heads.add_metric([str(chain), digest], seq)
        yield heads
        oldest = anchor.oldest_unanchored_at
        yield GaugeMetricFamily(
            "portal_audit_unanchored_oldest_seconds",
            "Age of the oldest audit entry no anchor covers yet (0 when every entry is"
            " anchored).", value=max(0.0, (now - oldest).total_seconds()) if oldest else 0.0,
        )  # fmt: skip


def init_app(app: Flask) -> None:
    if not app.config.get("METRICS_ENABLED", True):
        return
    metrics = PrometheusMetrics.for_app_factory(
        path=None,  # served below, behind the token
        registry=CollectorRegistry(auto_describe=True),
        group_by="url_rule",
        defaults_prefix="portal",
        excluded_paths=["^/metrics$"],
    )
    metrics.init_app(app)
    app.extensions["portal.metrics"] = metrics
    business = BusinessMetrics(metrics.registry)
    app.extensions["portal.business_metrics"] = business
    app.after_request(business.record_limited_sign_in)
    with app.app_context():
        PoolMetrics(metrics.registry).watch(db.engines[None])

    token = app.config.get("METRICS_TOKEN")
    if not token:
        return  # no endpoint at all: scrape needs a token
    database_state = CollectorRegistry()
    database_state.register(DatabaseState())

    def serve_metrics() -> Response:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            abort(401)
        body = generate_latest(_scrape_registry(app)) + generate_latest(database_state)
        return Response(body, mimetype=CONTENT_TYPE_LATEST)

    app.add_url_rule("/metrics", "metrics", serve_metrics, methods=["GET"])
