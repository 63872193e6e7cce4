"""Gunicorn settings for Portal: ``gunicorn -c gunicorn.conf.py "portal:create_app()"``.

Environment: ``PORTAL_BIND`` (default ``127.0.0.1:5000``), ``WEB_CONCURRENCY`` worker processes
(default 2), ``PORTAL_THREADS`` threads per worker (default 4). Size the database pool
(``PORTAL_DB_POOL_SIZE``) to the threads per worker: each thread holds at most one connection.
``PORTAL_PROXY_COUNT`` (default 0) decides whether forwarded headers are trusted at all.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

bind = os.environ.get("PORTAL_BIND", "127.0.0.1:5000")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("PORTAL_THREADS", "4"))
worker_class = "gthread"

# X-Forwarded-Proto and the other forwarded headers are trusted from nobody unless Portal is told
# it sits behind proxies (PORTAL_PROXY_COUNT, which the app's ProxyFix reads to take that many
# hops of X-Forwarded-For/-Proto/-Host). Gunicorn's own default trusts 127.0.0.1, so any local
# process could claim https (and get HSTS and secure cookies) with no proxy at all.
if int(os.environ.get("PORTAL_PROXY_COUNT", "0") or 0) > 0:
    # The proxy's address is not known here (ProxyFix counts hops instead), and only the header
    # ProxyFix reads counts: not X-Forwarded-Ssl, which a proxy may pass through from anyone.
    forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "*")
    secure_scheme_headers = {"X-FORWARDED-PROTO": "https"}
else:
    forwarded_allow_ips = ""
    secure_scheme_headers = {}  # a Unix socket's peer is trusted whatever the list says
# Portal is never mounted under a prefix: no SCRIPT_NAME or PATH_INFO from any header.
forwarder_headers = ""

timeout = 30  # a worker silent this long is killed and replaced
graceful_timeout = 10  # on SIGTERM, time for in-flight requests; the supervisor waits longer
keepalive = 5

# No gunicorn access log: it prints raw paths (reset and verification links carry tokens).
# The app logs one masked `portal.access` line per request, by route, with status and duration.
accesslog = None
errorlog = "-"
loglevel = "info"

# gunicorn >= 25 opens a control socket at one fixed path per user ($HOME/.gunicorn/gunicorn.ctl),
# shared by every gunicorn of that user; Portal does not use it.
control_socket_disable = True


# prometheus-flask-exporter's multiprocess mode, when PROMETHEUS_MULTIPROC_DIR is set: start each
# run with an empty directory and drop the files of workers that exit.
def on_starting(server: Any) -> None:
    # In production, never serve as a role that could erase the ledger (a superuser or the
    # tables' owner): README, Database roles. The worker checks the same at its start.
    if os.environ.get("PORTAL_ENV") == "production":
        from portal.commands import refuse_powerful_role
        from portal.config import load_config

        refuse_powerful_role(load_config())
    if directory := os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        Path(directory).mkdir(parents=True, exist_ok=True)
        for stale in Path(directory).glob("*.db"):
            stale.unlink()


def child_exit(server: Any, worker: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


# OpenTelemetry's SDK (when OTEL_EXPORTER_OTLP_ENDPOINT is set) starts in each worker, never in
# the master: the batch span processor's export thread does not survive a fork. With
# preload_app the app exists already and is instrumented here; otherwise create_app does it.
def post_fork(server: Any, worker: Any) -> None:
    from portal import telemetry

    telemetry.setup_tracing(telemetry.WEB_SERVICE, app=getattr(server.app, "callable", None))
