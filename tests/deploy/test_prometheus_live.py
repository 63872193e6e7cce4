"""A real Prometheus scrapes a real portal with the shipped scrape configuration.

The portal's web app is served on 127.0.0.1 by werkzeug in a thread, the worker's own endpoint
by ``portal.worker.serve_http``; Prometheus (Debian's ``/usr/bin/prometheus``) runs with
deploy/prometheus/prometheus.yml as shipped except for the targets, the token file's path and
short intervals, and loads the shipped alert rules. The test then asks Prometheus's HTTP API:
the portal's own counters arrive through the bearer-token scrape, every dashboard and rule
expression is accepted by the server, the rules evaluate without error, and stopping the
worker's endpoint makes the worker-down alert go pending.
"""

from __future__ import annotations

import copy
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from flask import Flask
from werkzeug.serving import make_server

from portal import create_app
from portal.extensions import db
from portal.web.uow import make_uow
from portal.worker import Worker, WorkerMetrics, serve_http
from tests.deploy.conftest import ROOT, load_yaml_documents, require_tool
from tests.deploy.promql import dashboard_exprs, rule_exprs

SHIPPED = ROOT / "deploy" / "prometheus" / "prometheus.yml"
TOKEN = "live-prometheus-test-token-0123456789"
DEADLINE = 30.0
#: Values Grafana gives its interval variables, for asking Prometheus directly.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "5m", "$__interval": "15s"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Portal:
    web: str  # host:port
    worker: str
    stop_worker: Callable[[], None]


@pytest.fixture
def portal(app: Flask) -> Iterator[Portal]:
    """The web app with a metrics token and its own engine (it only reads: the scrape-time
    gauges) served over real HTTP, and a worker's /metrics and /healthz endpoint."""
    served = create_app({**app.config, "METRICS_TOKEN": TOKEN})
    web = make_server("127.0.0.1", 0, served, threaded=True)
    web_thread = threading.Thread(target=web.serve_forever, name="live-portal", daemon=True)
    web_thread.start()
    worker = Worker(lambda: make_uow(served), metrics=WorkerMetrics())
    worker.beat()  # the loop's heartbeat; the test runs no jobs (nothing is committed)
    worker_http = serve_http(worker, 0, host="127.0.0.1", token=TOKEN)
    stopped = threading.Event()

    def stop_worker() -> None:
        if not stopped.is_set():
            stopped.set()
            worker_http.shutdown()
            worker_http.server_close()

    try:
        yield Portal(
            web=f"127.0.0.1:{web.server_port}",
            worker=f"127.0.0.1:{worker_http.server_address[1]}",
            stop_worker=stop_worker,
        )
    finally:
        stop_worker()
        web.shutdown()
        web.server_close()
        web_thread.join(timeout=10)
        with served.app_context():
            db.engine.dispose()


def live_config(portal: Portal, token_file: Path) -> dict[str, Any]:
    """The shipped configuration with only what must change here changed: the portal jobs'
    targets, the token file's path, 1-second intervals (and timeouts to match) and the rule
    files' absolute path. Other jobs (the collector, Prometheus itself) are left out."""
    (shipped,) = load_yaml_documents(SHIPPED)
    config = copy.deepcopy(shipped)
    config["global"].update({"scrape_interval": "1s", "evaluation_interval": "1s"})
    config["rule_files"] = [str(SHIPPED.parent / pattern) for pattern in shipped["rule_files"]]
    targets = {"portal": portal.web, "portal-worker": portal.worker}
    jobs = []
    for job in config["scrape_configs"]:
        if job["job_name"] not in targets:
            continue
        assert set(job["authorization"]) == {"type", "credentials_file"}, job["job_name"]
        job["authorization"]["credentials_file"] = str(token_file)
        for static in job["static_configs"]:
            static["targets"] = [targets[job["job_name"]]]
        job["scrape_interval"] = "1s"
        job["scrape_timeout"] = "1s"
        jobs.append(job)
    assert {job["job_name"] for job in jobs} == set(targets)
    config["scrape_configs"] = jobs
    return config


@dataclass
class Prometheus:
    url: str
    http: requests.Session
    log: Path

    def query(self, promql: str) -> dict[str, Any]:
        answer = self.http.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10)
        body: dict[str, Any] = answer.json()
        return body

    def wait_for(self, what: str, check: Callable[[], Any]) -> Any:
        """Poll ``check`` until it returns something truthy, for at most DEADLINE seconds."""
        deadline = time.monotonic() + DEADLINE
        while True:
            try:
                found = check()
            except requests.RequestException:
                found = None
            if found:
                return found
            if time.monotonic() > deadline:
                tail = self.log.read_text(encoding="utf-8", errors="replace")[-3000:]
                pytest.fail(f"Prometheus: no {what} within {DEADLINE:.0f} s\n{tail}")
            time.sleep(0.25)

    def value(self, promql: str) -> float | None:
        body = self.query(promql)
        assert body["status"] == "success", body
        result = body["data"]["result"]
        return float(result[0]["value"][1]) if result else None


@pytest.fixture
def prometheus(portal: Portal, tmp_path: Path) -> Iterator[Prometheus]:
    binary = require_tool("prometheus", "apt-get install -y prometheus")
    token_file = tmp_path / "metrics-token"
    token_file.write_text(TOKEN + "\n", encoding="utf-8")
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(live_config(portal, token_file)), encoding="utf-8")
    address = f"127.0.0.1:{free_port()}"
    log = tmp_path / "prometheus.log"
    with log.open("w", encoding="utf-8") as output:
        server = subprocess.Popen(
            [
                binary,
                f"--config.file={config_file}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address={address}",
                "--storage.tsdb.retention.time=1h",
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    http = requests.Session()
    try:
        live = Prometheus(f"http://{address}", http, log)
        live.wait_for(
            "readiness",
            lambda: (
                server.poll() is None
                and http.get(f"{live.url}/-/ready", timeout=2).status_code == 200
            ),
        )
        yield live
    finally:
        http.close()
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=15)


def test_prometheus_scrapes_the_portal_with_the_shipped_configuration(
    portal: Portal, prometheus: Prometheus
) -> None:
    with requests.Session() as browser:
        assert browser.get(f"http://{portal.web}/metrics", timeout=5).status_code == 401
        for _ in range(3):
            assert browser.get(f"http://{portal.web}/no/such/page", timeout=5).status_code == 404

    # The portal's own histogram, through the bearer-token scrape of job "portal".
    query = 'sum(portal_http_request_duration_seconds_count{job="portal", status="404"})'
    assert prometheus.wait_for("404 count", lambda: prometheus.value(query) == 3)
    assert prometheus.value('up{job="portal"}') == 1
    # The scrape-time database gauges and the worker's own endpoint (job "portal-worker").
    assert prometheus.value('sum(portal_jobs{job="portal"}) >= 0') is not None
    prometheus.wait_for(
        "worker heartbeat",
        lambda: (prometheus.value('portal_worker_last_loop_timestamp_seconds{job="portal-worker"}')
                 or 0) > time.time() - 600,
    )  # fmt: skip
    assert prometheus.value('up{job="portal-worker"}') == 1


def test_every_shipped_expression_is_valid_promql_for_the_server(
    portal: Portal, prometheus: Prometheus
) -> None:
    """Every dashboard query (with Grafana's interval variables filled in) and every rule
    expression is parsed and evaluated by the real server."""
    exprs = dashboard_exprs() + rule_exprs()
    assert len(exprs) > 30
    refused = {}
    for where, expr in exprs:
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        body = prometheus.query(expr)
        if body.get("status") != "success":
            refused[where] = body.get("error")
    assert refused == {}


def test_the_shipped_rules_load_evaluate_and_worker_down_goes_pending(
    portal: Portal, prometheus: Prometheus
) -> None:
    def rules() -> list[dict[str, Any]]:
        answer = prometheus.http.get(f"{prometheus.url}/api/v1/rules", timeout=5).json()
        return [rule for group in answer["data"]["groups"] for rule in group["rules"]]

    shipped = {where.split(": ", 1)[1] for where, _ in rule_exprs()}

    def all_evaluated() -> list[dict[str, Any]] | None:
        found = rules()
        evaluated = [r for r in found if not r["lastEvaluation"].startswith("0001-")]
        return found if {r["name"] for r in evaluated} == shipped else None

    loaded = prometheus.wait_for("evaluation of every rule", all_evaluated)
    assert {rule["name"]: rule["health"] for rule in loaded} == dict.fromkeys(shipped, "ok")
    prometheus.wait_for("worker up", lambda: prometheus.value('up{job="portal-worker"}') == 1)

    portal.stop_worker()
    prometheus.wait_for("worker down", lambda: prometheus.value('up{job="portal-worker"}') == 0)

    def worker_down_alert() -> list[dict[str, Any]]:
        answer = prometheus.http.get(f"{prometheus.url}/api/v1/alerts", timeout=5).json()
        return [
            alert
            for alert in answer["data"]["alerts"]
            if alert["labels"]["alertname"] == "PortalWorkerDown"
        ]

    (alert,) = prometheus.wait_for("PortalWorkerDown pending", worker_down_alert)
    assert alert["state"] == "pending"  # for: 2m
    assert alert["labels"]["instance"] == portal.worker
    assert alert["labels"]["severity"] == "critical"
    assert prometheus.value('up{job="portal"}') == 1  # the web is still scraped
