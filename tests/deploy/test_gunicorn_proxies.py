"""Gunicorn trusts forwarded headers only behind configured proxies (issue 11, A10): with
``PORTAL_PROXY_COUNT=0`` (the default) nobody, not even 127.0.0.1 (gunicorn's own default), may
say a request came over https; behind proxies only ``X-Forwarded-Proto`` counts, the header the
app's ProxyFix reads."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from gunicorn.config import Config

from tests.deploy.conftest import ROOT
from tests.observability.test_multiprocess import free_port

CONF = ROOT / "gunicorn.conf.py"
#: Every header gunicorn's default secure_scheme_headers would believe.
CLAIMS_HTTPS = {"X-Forwarded-Proto": "https", "X-Forwarded-Ssl": "on",
                "X-Forwarded-Protocol": "ssl"}  # fmt: skip


def settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> Config:
    """gunicorn's settings as gunicorn.conf.py makes them under ``env``."""
    for name in ("PORTAL_PROXY_COUNT", "FORWARDED_ALLOW_IPS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = Config()
    for name, value in runpy.run_path(str(CONF)).items():
        if name in config.settings:
            config.set(name, value)
    return config


def test_without_proxies_nobody_is_trusted(monkeypatch: pytest.MonkeyPatch) -> None:
    for env in ({}, {"PORTAL_PROXY_COUNT": "0"}, {"FORWARDED_ALLOW_IPS": "127.0.0.1"}):
        config = settings(monkeypatch, **env)
        assert config.forwarded_allow_ips == []
        assert config.secure_scheme_headers == {}  # a Unix socket's peer too
        assert config.forwarder_headers == []


def test_behind_proxies_only_x_forwarded_proto_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    config = settings(monkeypatch, PORTAL_PROXY_COUNT="1")
    assert config.forwarded_allow_ips == ["*"]
    assert config.secure_scheme_headers == {"X-FORWARDED-PROTO": "https"}
    assert config.forwarder_headers == []
    narrowed = settings(monkeypatch, PORTAL_PROXY_COUNT="2", FORWARDED_ALLOW_IPS="10.0.0.0/8")
    assert narrowed.forwarded_allow_ips == ["10.0.0.0/8"]


@pytest.fixture
def gunicorn(app: Flask, tmp_path: Path) -> Iterator[str]:
    """A real gunicorn (one worker) with the shipped settings and no proxy configured."""
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("PORTAL_PROXY_COUNT",
                                                            "FORWARDED_ALLOW_IPS")},
        "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
        "PORTAL_ENV": "test",
        "PORTAL_BIND": f"127.0.0.1:{port}",
        "WEB_CONCURRENCY": "1",
        "PORTAL_THREADS": "1",
        "PORTAL_LOG_FORMAT": "off",
    }  # fmt: skip
    output = tmp_path / "output.txt"
    with output.open("wb") as sink:
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(CONF), "portal:create_app()"],
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
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def is_https(response: Any) -> bool:
    """The app sends HSTS only on requests it sees as https (request.is_secure)."""
    return "Strict-Transport-Security" in response.headers


def test_a_local_client_cannot_claim_https_without_a_proxy(gunicorn: str) -> None:
    for name, value in CLAIMS_HTTPS.items():
        claimed = requests.get(f"{gunicorn}/healthz", headers={name: value}, timeout=30)
        assert claimed.status_code == 200
        assert not is_https(claimed), name
