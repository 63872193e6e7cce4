"""Prometheus metrics: request counts and latency histograms by ``url_rule`` and real status
(4xx and 429 included) and business counters (money moved, refusals, replays, sign-ins), served
at ``/metrics`` to holders of ``PORTAL_METRICS_TOKEN``.

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

from flask import Flask, Response, abort, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)
from prometheus_flask_exporter import PrometheusMetrics

from portal.services.monitoring import queue_state
from portal.web.uow import make_uow

#: Money-moving API routes (POST) and the movement kind each creates.
MONEY_ROUTES = {
    "/api/v1/top_ups": "top_up",
    "/api/v1/transfers": "transfer",
    "/api/v1/withdrawals": "withdrawal",
}
SIGN_IN_ROUTE = "/api/v1/auth/token"


class BusinessMetrics:
    """Business counters, recorded from responses: a response exists only after the service
    returned, so after its unit of work committed (a refusal rolled back). Replays
    (``Idempotent-Replayed: true``) are counted as replays, never as money moved again. A new
    money-moving route or outcome is added to :data:`MONEY_ROUTES` / :meth:`record`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.moved = Counter(
            "portal_money_moved_minor_units",
            "Money moved, in minor units of the currency, by kind, currency and outcome.",
            ["kind", "currency", "outcome"],
            registry=registry,
        )
        self.movements = Counter(
            "portal_money_movements",
            "Money movements by kind, currency and outcome.",
            ["kind", "currency", "outcome"],
            registry=registry,
        )
        self.refusals = Counter(
            "portal_refusals", "Refused money movements by error code.", ["kind", "code"],
            registry=registry,
        )  # fmt: skip
        self.replays = Counter(
            "portal_idempotent_replays", "Answers replayed for a reused idempotency key.",
            ["kind"], registry=registry,
        )  # fmt: skip
        self.sign_ins = Counter(
            "portal_sign_ins", "API sign-ins by outcome (success, failure, limited).",
            ["outcome"], registry=registry,
        )  # fmt: skip

    def record(self, response: Response) -> None:
        rule = request.url_rule.rule if request.url_rule else None
        if request.method != "POST" or rule is None:
            return
        status = response.status_code
        if rule == SIGN_IN_ROUTE:
            outcome = {200: "success", 401: "failure", 429: "limited"}.get(status)
            if outcome:
                self.sign_ins.labels(outcome).inc()
            return
        kind = MONEY_ROUTES.get(rule)
        if kind is None or not response.is_json:
            return
        if response.headers.get("Idempotent-Replayed") == "true":
            self.replays.labels(kind).inc()
            return
        body = response.get_json(silent=True) or {}
        if status == 201:
            currency, outcome = str(body.get("currency", "")), str(body.get("status", ""))
            self.movements.labels(kind, currency, outcome).inc()
            self.moved.labels(kind, currency, outcome).inc(int(body.get("amount") or 0))
        elif 400 <= status < 500 and isinstance(body.get("error"), dict):
            self.refusals.labels(kind, str(body["error"].get("code") or "unknown")).inc()


def _scrape_registry(app: Flask) -> CollectorRegistry:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        aggregated = CollectorRegistry()
        multiprocess.MultiProcessCollector(aggregated)
        return aggregated
    own: CollectorRegistry = app.extensions["portal.metrics"].registry
    return own


def _database_state() -> CollectorRegistry:
    """Gauges read from the database at scrape time: job queue and pending holds."""
    state = queue_state(make_uow())
    registry = CollectorRegistry()
    jobs = Gauge("portal_jobs", "Background jobs by status.", ["status"], registry=registry)
    for status, count in state.jobs_by_status.items():
        jobs.labels(status=status).set(count)
    Gauge(
        "portal_job_oldest_due_seconds", "Age of the oldest job waiting to run.",
        registry=registry,
    ).set(state.oldest_due_job_seconds)  # fmt: skip
    Gauge(
        "portal_holds_pending", "Holds reserving money (withdrawals in flight).", registry=registry
    ).set(state.holds_pending)
    return registry


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

    @app.after_request
    def record_business(response: Response) -> Response:
        business.record(response)
        return response

    token = app.config.get("METRICS_TOKEN")
    if not token:
        return  # no endpoint at all: scrape needs a token

    def serve_metrics() -> Response:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            abort(401)
        body = generate_latest(_scrape_registry(app)) + generate_latest(_database_state())
        return Response(body, mimetype=CONTENT_TYPE_LATEST)

    app.add_url_rule("/metrics", "metrics", serve_metrics, methods=["GET"])
