"""A real gunicorn with two workers: prometheus-flask-exporter's multiprocess mode (one scrape
sums every worker's requests, the gauges read from the database appear once) and its console
output (JSON access lines by route; no raw path with a token in it)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "multiprocess-metrics-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def gunicorn(app: Flask, tmp_path: Path):
    port = free_port()
    multiproc = tmp_path / "prometheus"
    (multiproc).mkdir()
    (multiproc / "gauge_all_999999.db").write_bytes(b"")  # a stale file: emptied at start
    env = {
        **os.environ,
        "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
        "PORTAL_ENV": "test",
        "PORTAL_METRICS_TOKEN": TOKEN,
        "PORTAL_BIND": f"127.0.0.1:{port}",
        "WEB_CONCURRENCY": "2",
        "PORTAL_THREADS": "2",
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
        "PORTAL_LOG_FORMAT": "json",
    }
    output = tmp_path / "output.txt"
    with output.open("wb") as sink:
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "portal:create_app()"],
            cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90  # a loaded 2-core machine boots slowly
        while True:
            try:
                if requests.get(f"{url}/healthz", timeout=10).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(output.read_text())
            time.sleep(0.2)
        yield url, multiproc, server, output
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_one_scrape_adds_up_every_worker(gunicorn: tuple[str, Path, Any, Path]) -> None:
    url, multiproc, _server, _output = gunicorn
    assert not (multiproc / "gauge_all_999999.db").exists()
    session = requests.Session()
    for _ in range(40):  # new connections, so both workers answer some
        requests.get(f"{url}/no/such/page", timeout=30)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    text = session.get(f"{url}/metrics", headers=auth, timeout=30).text
    families = list(text_string_to_metric_families(text))
    names = Counter(family.name for family in families)
    assert [name for name, n in names.items() if n > 1] == []
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples
    }
    count = ("portal_http_request_duration_seconds_count",
             (("method", "GET"), ("status", "404"), ("url_rule", "None")))  # fmt: skip
    assert samples[count] == 40
    for gauge in ("portal_jobs", "portal_holds_pending", "portal_job_oldest_due_seconds"):
        found = [labels for (name, labels) in samples if name == gauge]
        assert found and all("pid" not in dict(labels) for labels in found), gauge


def test_the_console_shows_routes_never_raw_paths(gunicorn: tuple[str, Path, Any, Path]) -> None:
    url, _multiproc, server, output = gunicorn
    token = "Xq9reset-token-that-must-stay-secret"
    assert requests.get(f"{url}/auth/reset/{token}", timeout=30).status_code in (200, 302, 404)
    server.terminate()
    server.wait(timeout=30)
    text = output.read_text()
    assert token not in text
    access = [json.loads(line) for line in text.splitlines() if '"portal.access"' in line]
    assert any(line.get("route") == "/auth/reset/<token>" for line in access), text
