"""OpenTelemetry tracing: a request is one trace with its queries and Redis calls, an incoming
``traceparent`` is continued (and reaches the JSON logs), the worker's job joins the trace of the
request that enqueued it, outgoing HTTP carries the trace on, probes and lone client calls make no
spans, secrets in URLs never reach a span, and with no OTLP endpoint nothing is installed at all
while with one the spans are exported by OTLP from each gunicorn worker.

OpenTelemetry installs one SDK provider per process: this module installs it once, with an
in-memory exporter, and at the end turns instrumentation off and shuts the exporter, so later
tests neither record nor pay for spans. Setups that need a fresh process run in a subprocess.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from flask import Flask
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from sqlalchemy.orm import sessionmaker

from portal import create_app, telemetry
from portal.extensions import db, limiter
from portal.services.shared import jobs
from portal.services.shared.uow import UnitOfWork
from portal.web.uow import make_uow
from portal.worker import Worker
from tests.api.test_auth_api import API, client_for
from tests.api.test_cards_api import token_of
from tests.conftest import Factory
from tests.observability.test_logging import capture_json

ROOT = Path(__file__).resolve().parents[2]
INCOMING_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
INCOMING_SPAN = "00f067aa0ba902b7"


# -- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    """Tracing on for this module, every span kept in memory."""
    kept = InMemorySpanExporter()
    assert telemetry.setup_tracing(span_processor=SimpleSpanProcessor(kept))
    yield kept
    telemetry.disable_tracing()
    kept.shutdown()  # the provider stays (one per process): what later tests make is dropped


@pytest.fixture
def spans(exporter: InMemorySpanExporter) -> InMemorySpanExporter:
    exporter.clear()
    return exporter


@pytest.fixture(scope="module")
def traced_app(app: Flask, exporter: InMemorySpanExporter) -> Iterator[Flask]:
    """An app of its own made while tracing is on (the session's app was made before)."""
    traced = create_app(dict(app.config))
    yield traced
    with traced.app_context():
        db.engine.dispose()


@pytest.fixture
def traced_uow(traced_app: Flask) -> Iterator[UnitOfWork]:
    """Like ``connection`` and ``uow`` in conftest, on the traced app's own (traced) engine: one
    outer transaction, rolled back at the end."""
    with traced_app.app_context():
        engine = db.engine
        engines = db._app_engines[traced_app]
    conn = engine.connect()
    outer = conn.begin()
    original = engines[None]
    engines[None] = conn  # type: ignore[assignment]
    factory = sessionmaker(
        bind=conn, expire_on_commit=False, autoflush=False, join_transaction_mode="create_savepoint"
    )
    traced_app.extensions["portal.session_factory"] = factory
    limiter.reset()
    try:
        yield UnitOfWork(factory, traced_app.config["SERVICE_SETTINGS"])
    finally:
        engines[None] = original
        traced_app.extensions["portal.session_factory"] = None
        outer.rollback()
        conn.close()


@pytest.fixture
def json_log(traced_app: Flask) -> Iterator[io.StringIO]:
    with capture_json(traced_app) as stream:
        yield stream


# -- helpers --------------------------------------------------------------------------------------
def hex_id(number: int, width: int = 32) -> str:
    return format(number, f"0{width}x")


def only(found: list[ReadableSpan]) -> ReadableSpan:
    assert len(found) == 1, [s.name for s in found]
    return found[0]


def server_span(spans: InMemorySpanExporter) -> ReadableSpan:
    return only([s for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER])


def ancestors(span: ReadableSpan, everything: list[ReadableSpan]) -> list[ReadableSpan]:
    """The span's parent, its parent's parent, ... as far as they were recorded."""
    by_id = {s.context.span_id: s for s in everything}
    chain: list[ReadableSpan] = []
    while span.parent is not None and span.parent.span_id in by_id:
        span = by_id[span.parent.span_id]
        chain.append(span)
    return chain


def database_spans(spans: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in spans.get_finished_spans() if s.attributes.get("db.system") == "postgresql"]


def run_python(script: str, **env: str) -> dict[str, Any]:
    """Run ``script`` in a fresh interpreter (no OTEL_* variables but ``env``); its last line of
    output is JSON."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=ROOT,
        env={**clean, "PORTAL_ENV": "test", "PORTAL_LOG_FORMAT": "off", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- requests and their queries -------------------------------------------------------------------
def test_a_transfer_request_is_one_trace_with_its_database_queries(
    traced_app: Flask, traced_uow: UnitOfWork, spans: InMemorySpanExporter
) -> None:
    make = Factory(traced_uow)
    alice = make.user()
    mine, theirs = make.card(alice, balance="10.00"), make.card(alice)
    headers = {**token_of(traced_uow, alice), "Idempotency-Key": uuid.uuid4().hex}
    body = {
        "from_card": mine.public_id,
        "to_card": theirs.public_id,  # one's own: the trace is of the transfer alone
        "amount": 350,
        "currency": "usd",
    }
    spans.clear()

    response = client_for(traced_app).post(f"{API}/transfers", json=body, headers=headers)

    assert response.status_code == 201, response.get_data(as_text=True)
    everything = spans.get_finished_spans()
    request = server_span(spans)
    assert request.name == "POST /api/v1/transfers"
    assert request.attributes["http.route"] == "/api/v1/transfers"
    assert request.attributes["http.status_code"] == 201
    assert request.parent is None  # no incoming context: a new trace
    queries = database_spans(spans)
    statements = " ".join(str(q.attributes["db.statement"]) for q in queries)
    assert "portal_transfer(" in statements  # the transfer's one statement (migration 0030)
    for query in queries:
        assert query.kind == SpanKind.CLIENT
        assert query.context.trace_id == request.context.trace_id
        assert request in ancestors(query, everything)
    # Nothing of the request (authentication, limits, the unit of work) left its trace.
    assert {s.context.trace_id for s in everything} == {request.context.trace_id}


def test_an_incoming_traceparent_is_continued_and_reaches_the_logs(
    traced_app: Flask,
    traced_uow: UnitOfWork,
    spans: InMemorySpanExporter,
    json_log: io.StringIO,
) -> None:
    alice = Factory(traced_uow).user()
    headers = {
        **token_of(traced_uow, alice),
        "traceparent": f"00-{INCOMING_TRACE}-{INCOMING_SPAN}-01",
    }
    spans.clear()

    response = client_for(traced_app).get(f"{API}/cards", headers=headers)

    assert response.status_code == 200, response.get_data(as_text=True)
    request = server_span(spans)
    assert hex_id(request.context.trace_id) == INCOMING_TRACE
    assert request.parent is not None and request.parent.is_remote
    assert hex_id(request.parent.span_id, 16) == INCOMING_SPAN
    assert {s.context.trace_id for s in spans.get_finished_spans()} == {request.context.trace_id}
    access = [
        line
        for line in map(json.loads, json_log.getvalue().splitlines())
        if line["logger"] == "portal.access"
    ]
    assert [(a["trace_id"], a["span_id"]) for a in access] == [
        (INCOMING_TRACE, hex_id(request.context.span_id, 16))
    ]


def test_rate_limit_checks_in_redis_belong_to_the_request(
    traced_app: Flask, traced_uow: UnitOfWork, spans: InMemorySpanExporter, redis_url: str
) -> None:
    make = Factory(traced_uow)
    alice = make.user()
    wanted = make.card(make.user())
    headers = token_of(traced_uow, alice)
    spans.clear()

    response = client_for(traced_app).post(
        f"{API}/cards/lookup", json={"number": wanted.number}, headers=headers
    )

    assert response.status_code == 200, response.get_data(as_text=True)
    request = server_span(spans)
    everything = spans.get_finished_spans()
    redis_calls = [s for s in everything if s.attributes.get("db.system") == "redis"]
    assert redis_calls, [s.name for s in everything]
    for call in redis_calls:
        assert call.kind == SpanKind.CLIENT
        assert call.parent is not None and call.parent.span_id == request.context.span_id


def test_requests_refused_before_the_view_are_traced_too(
    app: Flask, spans: InMemorySpanExporter
) -> None:
    """The request span starts before every other hook: a hook refusing the request (here the
    CSRF check) does not leave it untraced."""
    guarded = create_app({**app.config, "WTF_CSRF_ENABLED": True})
    try:
        response = client_for(guarded).post("/auth/login", data={"email": "a@example.test"})
    finally:
        with guarded.app_context():
            db.engine.dispose()

    request = server_span(spans)
    assert request.name == "POST /auth/login"
    assert request.attributes["http.status_code"] == response.status_code


def test_probes_and_lone_client_calls_make_no_spans(
    traced_app: Flask, traced_uow: UnitOfWork, spans: InMemorySpanExporter, redis_url: str
) -> None:
    client = client_for(traced_app)

    assert client.get("/healthz").status_code == 200  # a query and a Redis ping, both quiet
    traced_uow.run(lambda u: u.execute("SELECT 1"))  # outside any request or job
    traced_app.extensions["portal.redis"].ping()

    assert spans.get_finished_spans() == ()
    with trace.get_tracer("tests").start_as_current_span("some operation") as operation:
        traced_uow.run(lambda u: u.execute("SELECT 1"))  # inside one: kept
    selects = [q for q in database_spans(spans) if q.attributes["db.statement"] == "SELECT 1"]
    assert [q.parent.span_id for q in selects if q.parent] == [operation.get_span_context().span_id]


def test_setting_up_and_instrumenting_again_changes_nothing(
    traced_app: Flask, traced_uow: UnitOfWork, spans: InMemorySpanExporter
) -> None:
    with traced_app.app_context():
        engine = db.engines[None].engine  # under the test's connection (traced_uow)
    listeners = len(engine.dispatch.before_cursor_execute)
    assert listeners > 0
    assert telemetry.setup_tracing()
    telemetry.instrument_app(traced_app)
    telemetry.trace_engine(engine)
    alice = Factory(traced_uow).user()
    headers = token_of(traced_uow, alice)
    spans.clear()

    with trace.get_tracer("tests").start_as_current_span("some operation"):
        traced_uow.run(lambda u: u.execute("SELECT 1"))
    client_for(traced_app).get(f"{API}/cards", headers=headers)

    selects = [q for q in database_spans(spans) if q.attributes["db.statement"] == "SELECT 1"]
    assert len(selects) == 1
    assert server_span(spans).name == "GET /api/v1/cards"  # one request span, not two
    assert traced_app.before_request_funcs[None].count(traced_app._before_request) == 1
    assert len(engine.dispatch.before_cursor_execute) == listeners


def test_secrets_in_urls_never_reach_a_span(
    traced_app: Flask, traced_uow: UnitOfWork, spans: InMemorySpanExporter
) -> None:
    token = "reset-token-" + uuid.uuid4().hex
    code = "oidc-code-" + uuid.uuid4().hex

    client_for(traced_app).get(f"/auth/reset/{token}?code={code}&state=s3cret-state&limit=5")

    request = server_span(spans)
    text = json.dumps(dict(request.attributes)) + request.name
    assert token not in text and code not in text and "s3cret-state" not in text
    assert request.attributes["http.target"] == (
        "/auth/reset/[REDACTED]?code=[REDACTED]&state=[REDACTED]&limit=5"
    )


def test_outgoing_http_requests_carry_the_trace(spans: InMemorySpanExporter) -> None:
    seen: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server protocol
            seen.append(self.headers.get("traceparent"))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with trace.get_tracer("tests").start_as_current_span("sign-in callback") as parent:
            requests.get(f"http://127.0.0.1:{server.server_port}/userinfo", timeout=5)
    finally:
        server.shutdown()
        server.server_close()

    call = only([s for s in spans.get_finished_spans() if s.kind == SpanKind.CLIENT])
    assert call.name == "GET"
    assert call.parent is not None and call.parent.span_id == parent.get_span_context().span_id
    trace_id = hex_id(parent.get_span_context().trace_id)
    (header,) = seen
    assert header is not None and header.split("-")[1:3] == [
        trace_id,
        hex_id(call.context.span_id, 16),
    ]


# -- jobs -----------------------------------------------------------------------------------------
def stored_context(uow: UnitOfWork, job_id: int | None) -> Any:
    return uow.run(
        lambda u: u.execute("SELECT trace_context FROM jobs WHERE id = :id", {"id": job_id})
    ).scalar_one()


def test_enqueue_stores_the_current_trace_context_only_when_there_is_one(uow: UnitOfWork) -> None:
    outside = uow.run(lambda u: jobs.enqueue(u, "test.trace", {}))
    current = trace.SpanContext(
        int(INCOMING_TRACE, 16), int(INCOMING_SPAN, 16), is_remote=False,
        trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
    )  # fmt: skip
    with trace.use_span(trace.NonRecordingSpan(current)):
        inside = uow.run(lambda u: jobs.enqueue(u, "test.trace", {}))
        given = uow.run(
            lambda u: jobs.enqueue(u, "test.trace", {}, trace_context={"traceparent": "given"})
        )

    assert stored_context(uow, outside) is None
    assert stored_context(uow, inside) == {"traceparent": f"00-{INCOMING_TRACE}-{INCOMING_SPAN}-01"}
    assert stored_context(uow, given) == {"traceparent": "given"}


@pytest.mark.concurrency
def test_the_payout_job_joins_the_trace_of_the_withdrawal_request(
    traced_app: Flask, real_uow: Callable[[], UnitOfWork], spans: InMemorySpanExporter
) -> None:
    with traced_app.app_context():
        assert isinstance(db.engines[None], sa.Engine)  # the real engine: requests commit
    make = Factory(real_uow())
    alice = make.user()
    card = make.card(alice, balance="100")
    headers = {**token_of(real_uow(), alice), "Idempotency-Key": uuid.uuid4().hex}
    body = {"card": card.public_id, "amount": 2000, "currency": "usd", "bank_name": "BCA",
            "account_number": "0012-3456-7890", "account_holder": "Alice Wong"}  # fmt: skip
    limiter.reset()
    spans.clear()

    response = client_for(traced_app).post(f"{API}/withdrawals", json=body, headers=headers)
    assert response.status_code == 201, response.get_data(as_text=True)
    request = server_span(spans)
    request_spans = {s.context.span_id for s in spans.get_finished_spans()}
    spans.clear()
    assert Worker(lambda: make_uow(traced_app)).run_once() == 1

    everything = spans.get_finished_spans()
    job = only([s for s in everything if s.kind == SpanKind.CONSUMER])
    assert job.name == "job withdrawal.payout"
    assert job.context.trace_id == request.context.trace_id
    assert job.parent is not None and job.parent.is_remote
    assert job.parent.span_id in request_spans
    assert job.parent.span_id == request.context.span_id  # enqueued in the request's own span
    assert job.attributes["portal.job.kind"] == "withdrawal.payout"
    assert job.attributes["portal.job.attempt"] == 1
    assert job.attributes["portal.job.id"] > 0
    assert job.status.status_code == StatusCode.UNSET
    # The job's queries (the payout, marking the job done) are in it; the claim is not traced.
    queries = database_spans(spans)
    assert queries and all(job in ancestors(q, everything) for q in queries)
    assert (
        response.get_json()["id"]
        and real_uow().run(
            lambda u: u.execute(
                "SELECT status FROM withdrawals WHERE public_id = :id",
                {"id": response.get_json()["id"]},
            ).scalar_one()
        )
        == "succeeded"
    )


@pytest.mark.concurrency
def test_a_failed_job_attempt_is_an_error_span(
    traced_app: Flask, real_uow: Callable[[], UnitOfWork], spans: InMemorySpanExporter
) -> None:
    with trace.get_tracer("tests").start_as_current_span("enqueuer") as enqueuer:
        real_uow().run(lambda u: jobs.enqueue(u, "test.nobody-handles-this", {"n": 1}))
    spans.clear()

    assert Worker(real_uow).run_once() == 1

    job = only([s for s in spans.get_finished_spans() if s.kind == SpanKind.CONSUMER])
    assert job.context.trace_id == enqueuer.get_span_context().trace_id
    assert job.parent is not None and job.parent.span_id == enqueuer.get_span_context().span_id
    assert job.status.status_code == StatusCode.ERROR
    assert "LookupError" in (job.status.description or "")
    assert [e.name for e in job.events] == ["exception"]


# -- set-up ---------------------------------------------------------------------------------------
def test_the_service_name_defaults_per_process_and_the_environment_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    assert telemetry.resource_for("portal-worker").attributes["service.name"] == "portal-worker"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "portal-eu-1")
    assert telemetry.resource_for("portal").attributes["service.name"] == "portal-eu-1"


def test_without_an_otlp_endpoint_nothing_is_installed(app: Flask) -> None:
    found = run_python(
        f"""
        import json, sys
        import click
        from opentelemetry import trace
        from portal import create_app, telemetry

        config = {{"SQLALCHEMY_DATABASE_URI": {app.config["SQLALCHEMY_DATABASE_URI"]!r}}}
        served = create_app(config)
        with click.Context(click.Command("run")):  # as under `flask run`
            developed = create_app(config)
        print(json.dumps({{
            "setup": telemetry.setup_tracing(),
            "provider": type(trace.get_tracer_provider()).__name__,
            "instrumented": [hasattr(a, "_original_wsgi_app") for a in (served, developed)],
            "sdk_loaded": "opentelemetry.sdk.trace" in sys.modules,
        }}))
        """
    )

    assert found == {
        "setup": False,
        "provider": "ProxyTracerProvider",  # the API's no-op
        "instrumented": [False, False],
        "sdk_loaded": False,
    }


def test_flask_run_sets_tracing_up_in_process_and_other_app_factories_do_not(
    app: Flask,
) -> None:
    found = run_python(
        f"""
        import json
        import click
        from opentelemetry import trace
        from portal import create_app

        config = {{"SQLALCHEMY_DATABASE_URI": {app.config["SQLALCHEMY_DATABASE_URI"]!r}}}
        plain = create_app(config)  # gunicorn's master with preload_app, scripts, tests
        before = type(trace.get_tracer_provider()).__name__
        with click.Context(click.Command("run")):  # as under `flask run` / `portal run`
            served = create_app(config)
        provider = trace.get_tracer_provider()
        print(json.dumps({{
            "before": before,
            "after": type(provider).__name__,
            "service": provider.resource.attributes["service.name"],
            "instrumented": [hasattr(a, "_original_wsgi_app") for a in (plain, served)],
        }}))
        """,
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9",  # never called: no span is made
    )

    assert found == {
        "before": "ProxyTracerProvider",
        "after": "TracerProvider",
        "service": "portal",
        "instrumented": [False, True],
    }


@pytest.fixture
def collector() -> Iterator[tuple[str, list[bytes]]]:
    """A stand-in OTLP/HTTP collector: the bodies POSTed to /v1/traces."""
    bodies: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the http.server protocol
            if self.path == "/v1/traces":
                bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", bodies
    finally:
        server.shutdown()
        server.server_close()


def test_each_gunicorn_worker_exports_its_spans_by_otlp(
    app: Flask, collector: tuple[str, list[bytes]]
) -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    endpoint, bodies = collector
    found = run_python(
        f"""
        import json, runpy
        from types import SimpleNamespace
        from opentelemetry import trace
        from portal import create_app, telemetry

        hooks = runpy.run_path("gunicorn.conf.py")
        server = SimpleNamespace(app=SimpleNamespace(callable=None))  # no preload_app
        hooks["post_fork"](server, None)
        provider = trace.get_tracer_provider()
        hooks["post_fork"](server, None)  # twice: nothing changes
        app = create_app({{"SQLALCHEMY_DATABASE_URI": {app.config["SQLALCHEMY_DATABASE_URI"]!r}}})
        status = app.test_client().get("/").status_code
        print(json.dumps({{
            "same_provider": trace.get_tracer_provider() is provider,
            "provider": type(provider).__name__,
            "processors": [type(p).__name__
                           for p in provider._active_span_processor._span_processors],
            "status": status,
            "flushed": provider.force_flush(),
        }}))
        """,
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
    )

    assert found == {
        "same_provider": True,
        "provider": "TracerProvider",
        "processors": ["BatchSpanProcessor"],  # one, although post_fork ran twice
        "status": 200,
        "flushed": True,
    }
    exported = ExportTraceServiceRequest()
    for body in bodies:
        exported.MergeFromString(body)
    (resource_spans,) = exported.resource_spans
    resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    names = [(s.name, s.kind) for scope in resource_spans.scope_spans for s in scope.spans]
    assert resource["service.name"] == "portal"
    assert ("GET /", 2) in names  # SPAN_KIND_SERVER
