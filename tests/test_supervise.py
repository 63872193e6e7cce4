"""``make run``'s supervisor for real (``python -m portal.supervise run``) on a database of its
own: the worker is running before the web server starts, and SIGTERM or Ctrl-C (SIGINT) stops
every process it started and exits 0, so ``make run`` ends without "Error 143"."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests
import sqlalchemy as sa
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def database_url() -> Iterator[str]:
    """A fresh, empty database beside the test database (the supervisor migrates and seeds it)."""
    owner = os.environ.get("TEST_DATABASE_URL")
    if not owner:
        pytest.fail("TEST_DATABASE_URL is not set: run the suite with `make test`")
    url = make_url(owner)
    name = f"{url.database}_supervise_{os.getpid()}"
    admin = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(database_url: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    bind = f"127.0.0.1:{_free_port()}"
    env = {k: v for k, v in os.environ.items() if k not in ("PORTAL_ENV", "TEST_DATABASE_URL")}
    env.update(DATABASE_URL=database_url, PORTAL_BIND=bind, WEB_CONCURRENCY="1")
    env.pop("MIGRATION_DATABASE_URL", None)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "portal.supervise", "run"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    return proc, f"http://{bind}"


def _wait_serving(proc: subprocess.Popen[bytes], url: str, log: Path) -> str:
    deadline = time.monotonic() + 200
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text(errors="replace")[-4000:]
        try:
            if requests.get(f"{url}/healthz", timeout=5).status_code == 200:
                return log.read_text(errors="replace")
        except requests.RequestException:  # not listening yet, or its worker still loading
            pass
        time.sleep(0.5)
    pytest.fail("the portal did not answer /healthz: " + log.read_text(errors="replace")[-4000:])


def _session(proc: subprocess.Popen[bytes]) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == proc.pid and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except (OSError, psutil.Error):
            continue
    return found


def _stop(proc: subprocess.Popen[bytes], signum: int, log: Path) -> None:
    try:
        proc.send_signal(signum)
        code = proc.wait(timeout=60)
    finally:
        for p in _session(proc):  # only if the supervisor failed to: this test's own processes
            p.kill()
    assert code == 0, log.read_text(errors="replace")[-4000:]
    assert "Error" not in log.read_text(errors="replace").split("received: stopping")[-1]


def test_worker_runs_before_the_web_and_a_stop_signal_is_a_clean_exit(
    database_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "run.log"
    for signum in (signal.SIGTERM, signal.SIGINT):  # the second start finds the demo data
        log.write_bytes(b"")
        proc, url = _start(database_url, log)
        try:
            text = _wait_serving(proc, url, log)
            worker_started = text.find("portal.worker worker ")
            assert worker_started != -1, text[-4000:]
            assert "started" in text[worker_started:].splitlines()[0]
            # The web server (gunicorn's first line) came only after the worker said it runs.
            serving = text.find("supervise: serving")
            assert worker_started < serving < text.find("Starting gunicorn"), text[-4000:]
            children = _session(proc)
            assert len(children) >= 4, children  # supervisor, worker, gunicorn and its worker
        except BaseException:
            proc.kill()
            for p in _session(proc):
                p.kill()
            raise
        _stop(proc, signum, log)
        assert not [p for p in children if p.is_running() and p.status() != "zombie"]
        assert f"{signal.Signals(signum).name} received: stopping" in log.read_text()
