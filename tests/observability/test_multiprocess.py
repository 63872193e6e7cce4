"""prometheus-flask-exporter's multiprocess mode under a real gunicorn with two workers: one
scrape sums every worker's requests, and the gauges read from the database appear once."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

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
        "PORTAL_LOG_FORMAT": "off",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "portal:create_app()"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
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
                raise AssertionError(server.stderr.read().decode() if server.stderr else "")
            time.sleep(0.2)
        yield url, multiproc
    finally:
        server.terminate()
        server.wait(timeout=30)
        if server.stderr:
            server.stderr.close()


def test_one_scrape_adds_up_every_worker(gunicorn: tuple[str, Path]) -> None:
    url, multiproc = gunicorn
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
