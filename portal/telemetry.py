"""OpenTelemetry tracing: web requests, database queries, Redis, outgoing HTTP and worker jobs.

Off unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set and
``OTEL_SDK_DISABLED`` is not true: then no SDK provider is installed, nothing is instrumented and
the code that asks for spans gets the API's no-op tracer. When on, spans go by OTLP over HTTP
through a batch processor, and the SDK's standard variables apply (``OTEL_SERVICE_NAME``, default
``portal`` for the web and ``portal-worker`` for the worker, ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_TRACES_SAMPLER``, ``OTEL_EXPORTER_OTLP_HEADERS``, ...).

Where the SDK starts (:func:`setup_tracing`): in each gunicorn worker from ``post_fork`` (never
before the fork: the batch processor's thread does not survive it), in ``portal worker``, and in
Flask's ``run`` command from ``create_app``. What is traced:

- requests of each app (Flask; the trace continues an incoming W3C ``traceparent``), except
  health checks, metrics scrapes and static files;
- the app's SQLAlchemy engines (the database is instrumented there and only there, never also
  through psycopg), Redis commands and ``requests`` calls (single sign-on);
- worker jobs (:func:`job_span`), continuing the trace of the request that enqueued them
  (``portal.services.shared.jobs.enqueue`` stores the context with the job).

Client spans with no parent (the worker's polling, health checks' queries, start-up) are dropped:
a trace starts with a request or a job.
"""

from __future__ import annotations

import os
import re
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

if TYPE_CHECKING:
    import sqlalchemy as sa
    from flask import Flask
    from opentelemetry.context import Context
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.sampling import Sampler, SamplingResult
    from opentelemetry.util.types import Attributes

    from portal.services.shared.jobs import ClaimedJob

WEB_SERVICE = "portal"
WORKER_SERVICE = "portal-worker"
#: Requests nobody traces (regular expressions searched in the URL, comma-separated like
#: ``OTEL_PYTHON_FLASK_EXCLUDED_URLS``, which replaces them when set): probes, scrapes, assets.
QUIET_URLS = "/healthz$,/metrics$,/static/"
MASK = "[REDACTED]"
#: Path variables and query parameters whose values never reach a span (reset and verification
#: tokens in paths, the OpenID Connect code and state in the callback's query).
_SECRET_NAME = re.compile(r"token|code|state|secret|password|signature|(^|_)key$", re.IGNORECASE)
_RULE_VARIABLE = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")
_URL_ATTRIBUTES = ("http.target", "http.url", "url.full", "url.path", "url.query")

_lock = threading.Lock()
_provider: TracerProvider | None = None
_enabled = False
_traced_engines: weakref.WeakSet[sa.Engine] = weakref.WeakSet()
#: Follows whichever provider is installed; the no-op tracer until then.
_tracer = trace.get_tracer("portal")


def exporting() -> bool:
    """Whether the environment asks for traces to be exported."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def setup_tracing(
    service_name: str = WEB_SERVICE,
    *,
    app: Flask | None = None,
    span_processor: SpanProcessor | None = None,
) -> bool:
    """Install the SDK (once per process) and instrument Redis and ``requests``, then ``app`` if
    given; returns whether tracing is on. Safe to call again: later calls change nothing.

    Without ``span_processor`` tracing is on only when :func:`exporting`, with an OTLP exporter
    behind a batch processor; tests pass an in-memory exporter's processor instead."""
    global _provider, _enabled
    with _lock:
        if not _enabled:
            if span_processor is None and _provider is None and not exporting():
                return False
            if _provider is None:
                _provider = _install_provider(service_name, span_processor or _otlp_processor())
            elif span_processor is not None:
                _provider.add_span_processor(span_processor)
            _instrument_libraries(_provider)
            _enabled = True
    if app is not None:
        instrument_app(app)
    return True


def disable_tracing() -> None:
    """Undo :func:`setup_tracing`'s process-wide instrumentation and stop instrumenting new apps
    (for tests). The SDK provider stays: OpenTelemetry installs one per process, so a later
    :func:`setup_tracing` turns tracing on again with it."""
    global _enabled
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.instrumentation.requests import RequestsInstrumentor

    with _lock:
        for instrumentor in (RedisInstrumentor(), RequestsInstrumentor()):
            if instrumentor.is_instrumented_by_opentelemetry:
                instrumentor.uninstrument()
        _enabled = False


def init_app(app: Flask) -> None:
    """Called by ``create_app``: Flask's ``run`` command (the development server) sets up the SDK
    here; gunicorn (``post_fork``) and ``portal worker`` set it up themselves. Instruments the app
    when tracing is on."""
    if not _enabled and _running_flask_run():
        setup_tracing(WEB_SERVICE)
    instrument_app(app)


def instrument_app(app: Flask) -> None:
    """Trace the app's requests and its database engines; nothing when tracing is off, nothing
    the second time."""
    if not _enabled or app.extensions.get("portal.telemetry"):
        return
    from opentelemetry.instrumentation.flask import FlaskInstrumentor

    from portal.extensions import db

    quiet_urls = (
        os.environ.get("OTEL_PYTHON_FLASK_EXCLUDED_URLS")
        or os.environ.get("OTEL_PYTHON_EXCLUDED_URLS")
        or QUIET_URLS
    )
    FlaskInstrumentor.instrument_app(
        app,
        tracer_provider=_provider,
        excluded_urls=quiet_urls,
        enable_commenter=False,
        response_hook=_redact_url_attributes,
    )

    # The request span starts before every other hook, so a request a hook refuses (CSRF, rate
    # limits) is traced too and what the hooks log carries its trace id; it ends after the other
    # teardowns, which run in reverse order.
    before = app.before_request_funcs.setdefault(None, [])
    before.remove(app._before_request)  # type: ignore[attr-defined]
    before.insert(0, app._before_request)  # type: ignore[attr-defined]
    teardown = app.teardown_request_funcs.setdefault(None, [])
    teardown.remove(app._teardown_request)  # type: ignore[attr-defined]
    teardown.insert(0, app._teardown_request)  # type: ignore[attr-defined]

    with app.app_context():
        engines = list(db.engines.values())
    for engine in engines:
        trace_engine(engine)
    app.extensions["portal.telemetry"] = True


def trace_engine(engine: sa.Engine) -> None:
    """A span per statement on this engine (idempotent). The instrumentor's ``instrument()`` is
    not used: it would also patch ``create_engine`` and ``Engine.connect`` for every engine in
    the process, and it refuses SQLAlchemy versions newer than it knows."""
    if not _enabled or engine in _traced_engines:
        return
    from opentelemetry import metrics
    from opentelemetry.instrumentation.sqlalchemy import __version__
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer

    tracer = trace.get_tracer(
        "opentelemetry.instrumentation.sqlalchemy", __version__, tracer_provider=_provider
    )
    usage = metrics.get_meter("portal").create_up_down_counter(
        "db.client.connections.usage", unit="connections"
    )
    EngineTracer(tracer, engine, usage)
    _traced_engines.add(engine)


class JobSpan:
    """The span of one job attempt, as :func:`job_span` yields it."""

    def __init__(self, span: trace.Span) -> None:
        self.span = span

    def failed(self, exc: BaseException) -> None:
        """The attempt failed (it is retried or dead): error status and the exception."""
        self.span.record_exception(exc)
        self.span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


@contextmanager
def job_span(job: ClaimedJob) -> Iterator[JobSpan]:
    """A CONSUMER span around one attempt of ``job``, in the trace of whoever enqueued it (its
    stored W3C context), or a new trace when it has none. The no-op span when tracing is off."""
    parent = propagate.extract(job.trace_context) if job.trace_context else None
    with _tracer.start_as_current_span(
        f"job {job.kind}",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes={
            "portal.job.id": job.id,
            "portal.job.kind": job.kind,
            "portal.job.attempt": job.attempts,
            "portal.job.max_attempts": job.max_attempts,
        },
    ) as span:
        yield JobSpan(span)


# -- internals -------------------------------------------------------------------------------
def resource_for(service_name: str) -> Resource:
    """The SDK resource: the environment's attributes (``OTEL_SERVICE_NAME``,
    ``OTEL_RESOURCE_ATTRIBUTES``), with ``service_name`` when the environment names no service."""
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource

    detected = Resource.create()
    if str(detected.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        return detected.merge(Resource({SERVICE_NAME: service_name}))
    return detected


def _install_provider(service_name: str, processor: SpanProcessor) -> TracerProvider:
    from opentelemetry.sdk import trace as sdk_trace
    from opentelemetry.sdk.trace import sampling

    current = trace.get_tracer_provider()
    if isinstance(current, sdk_trace.TracerProvider):  # installed by someone else already
        current.add_span_processor(processor)
        return current
    # The sampler the SDK would pick from OTEL_TRACES_SAMPLER (parent-based always-on by default).
    from_env = getattr(sampling, "_get_from_env_or_default", None)
    inner = from_env() if from_env else sampling.ParentBased(sampling.ALWAYS_ON)
    provider = sdk_trace.TracerProvider(
        resource=resource_for(service_name), sampler=_no_lone_client_spans(inner)
    )
    provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    return provider


def _otlp_processor() -> SpanProcessor:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    return BatchSpanProcessor(OTLPSpanExporter())


def _instrument_libraries(provider: TracerProvider) -> None:
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.instrumentation.requests import RequestsInstrumentor

    for instrumentor in (RedisInstrumentor(), RequestsInstrumentor()):
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument(tracer_provider=provider)


def _running_flask_run() -> bool:
    """Whether the app is being made for Flask's ``run`` command (``flask run``, ``portal run``)."""
    import click

    context = click.get_current_context(silent=True)
    return context is not None and context.command.name == "run"


def _redact_url_attributes(span: trace.Span, status: str, headers: list[Any]) -> None:
    """Replace the request's URL attributes by ones without secrets: reset and verification
    tokens in the path, the sign-in code and state in the query (logs use the route for the
    same reason)."""
    from flask import has_request_context, request

    attributes = getattr(span, "attributes", None)
    if not span.is_recording() or attributes is None or not has_request_context():
        return
    path = request.path
    if request.url_rule is not None and any(map(_SECRET_NAME.search, request.view_args or {})):
        values = request.view_args or {}
        path = request.script_root + _RULE_VARIABLE.sub(
            lambda m: MASK if _SECRET_NAME.search(m[1]) else str(values.get(m[1], m[0])),
            request.url_rule.rule,
        )
    query = "&".join(
        f"{name}={MASK if _SECRET_NAME.search(name) else value}"
        for name, value in request.args.items(multi=True)
    )
    target = f"{path}?{query}" if query else path
    safe = {
        "http.target": target,
        "url.path": path,
        "url.query": query,
        "http.url": f"{request.host_url.rstrip('/')}{target}",
        "url.full": f"{request.host_url.rstrip('/')}{target}",
    }
    for key in _URL_ATTRIBUTES:
        if key in attributes:
            span.set_attribute(key, safe[key])


def _no_lone_client_spans(inner: Sampler) -> Sampler:
    """A sampler that drops client spans (database, Redis, HTTP) having no parent and asks
    ``inner`` about every other span."""
    from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult

    class NoLoneClientSpans(Sampler):
        def should_sample(
            self,
            parent_context: Context | None,
            trace_id: int,
            name: str,
            kind: SpanKind | None = None,
            attributes: Attributes = None,
            links: Sequence[trace.Link] | None = None,
            trace_state: trace.TraceState | None = None,
        ) -> SamplingResult:
            parent = trace.get_current_span(parent_context).get_span_context()
            if kind == SpanKind.CLIENT and not parent.is_valid:
                return SamplingResult(Decision.DROP)
            return inner.should_sample(
                parent_context, trace_id, name, kind, attributes, links, trace_state
            )

        def get_description(self) -> str:
            return f"NoLoneClientSpans{{{inner.get_description()}}}"

    return NoLoneClientSpans()
