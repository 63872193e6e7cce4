"""Statistics endpoints on a small and a large ledger: warm p95 and cold time per endpoint.

    PYTHONPATH=. .venv/bin/python bench/statistics.py [--small 50000] [--large 5000000]
        [--requests 200] [--url postgresql+psycopg://postgres@127.0.0.1:5432]

For each size it builds a database ``<prefix>_<postings>`` (dropped first) with Portal's
migrations, writes cardholders with funded cards and two years of transfers in bulk
(``bench/bulk.py``: COPY and set-based SQL under ``session_replication_role = replica``, so the
roll-up triggers do not fire during the load), then rebuilds the roll-ups from the movements
with the migration's own contributions (every contribution on a random one of the 8 slots, as
concurrent writers would leave them), checks them with ``statistics.recompute_check`` over the
last week, and measures through the Flask test client with a staff access token:

- warm: ``--requests`` requests per endpoint after 20 to warm up; p50 and p95 in ms;
- cold: the first request on a new engine (a new connection: no plan or catalogue cache),
  median of 5; PostgreSQL's shared buffers and the OS cache are not emptied (a shared
  server), so "cold" is the connection's, not the disk's.

Results are printed as a Markdown table (pasted into bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

WARM_UP = 20
COLD_RUNS = 5


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def log(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def _migration() -> Any:
    path = next((ROOT / "migrations" / "versions").glob("*_statistics_rollups.py"))
    spec = importlib.util.spec_from_file_location("statistics_rollups", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rebuild_rollups(conn: psycopg.Connection) -> None:
    """Roll-ups from scratch (as the owner): the migration's contributions of every row, each
    on a random slot."""
    m = _migration()
    conn.execute("DELETE FROM stat_rollups")
    spread = f"floor(random() * {m.SLOTS})::smallint"
    for family, (table, contributions) in m.FAMILIES.items():
        sql = m._upsert(family, contributions).replace("v_slot", spread)
        conn.execute(f"WITH moved AS (SELECT 1 AS sign, n.* FROM {table} n) {sql}")
    sql = m._upsert("balances", m.BALANCES).replace("v_slot", spread)
    conn.execute(f"WITH moved AS (SELECT 1 AS sign, n.* FROM postings n) {sql}")


def build(server: str, name: str, postings: int) -> None:
    """A fresh database ``name`` with about ``postings`` postings."""
    import bulk

    with psycopg.connect(f"{server.replace('+psycopg', '')}/postgres", autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}"')
        c.execute(f'CREATE DATABASE "{name}"')
    app = make_app(server, name)
    with app.app_context():
        from flask_migrate import upgrade

        upgrade()
    from portal.services.shared.vault import Vault

    vault = Vault.from_settings(app.config["SERVICE_SETTINGS"])
    holders = max(100, min(20_000, postings // 250))
    end = datetime.now(UTC) - timedelta(days=1)
    start = end - timedelta(days=730)
    began = time.monotonic()
    with psycopg.connect(f"{server.replace('+psycopg', '')}/{name}") as conn:
        # Python ints as bigint: small ones would be smallint, and generate_series(smallint,
        # smallint) is ambiguous.
        from psycopg.types.numeric import Int8Dumper

        conn.adapters.register_dumper(int, Int8Dumper)
        with conn.transaction():
            bulk.add_cardholders(conn, vault, holders=holders, cards_per_holder=2,
                                 funds=10_000_000, at=start - timedelta(days=1))  # fmt: skip
        with conn.transaction():
            count = bulk.plan(holders, 2, postings)
            bulk.add_transfers(conn, count=count, start=start, end=end, max_amount=5_000)
            bulk.sync_balances(conn)
        took = time.monotonic() - began
        log(f"{name}: {holders:,} holders, {count:,} transfers in {took:.0f} s")
        with conn.transaction():
            rebuild_rollups(conn)
        conn.execute("ANALYZE")
        conn.commit()
        found = conn.execute("SELECT count(*) FROM postings").fetchone()
        rows = conn.execute("SELECT count(*) FROM stat_rollups").fetchone()
    took = time.monotonic() - began
    log(f"{name}: {found[0]:,} postings, {rows[0]:,} roll-up rows, {took:.0f} s")


def make_app(server: str, name: str) -> Any:
    from portal import create_app

    url = f"{server}/{name}"
    config = {"SQLALCHEMY_DATABASE_URI": url, "MIGRATION_DATABASE_URI": url,
              "PORTAL_ENV": "test", "TESTING": True, "RATELIMIT_ENABLED": False}  # fmt: skip
    return create_app(config)


def staff_token(app: Any) -> str:
    import pyotp

    from portal.services.identity import mfa, tokens, users
    from portal.web.uow import make_uow

    system = __import__("portal.domain.types", fromlist=["Actor"]).Actor.system("bench")
    with app.app_context():
        uow = make_uow(app)
        made = users.create_user(uow, actor=system, email=f"stats-{time.time_ns()}@bench.test",
                                 first_name="Bench", last_name="Staff", roles=("support",),
                                 verified=True)  # fmt: skip
        actor = users.actor_for(uow, made.id)
        code = mfa.issue_enrolment_code(uow, actor=system, user_id=made.id).code
        enrolment = mfa.begin_totp_enrolment(uow, actor=actor, enrolment_code=code)
        mfa.confirm_totp(uow, actor=actor, code=pyotp.TOTP(enrolment.secret).now())
        return tokens.issue_tokens(uow, user_id=made.id, user_agent="bench").access_token


def endpoints(app: Any) -> list[str]:
    now = datetime.now(UTC)
    with app.app_context():
        from portal.extensions import db

        card = db.session.execute(sa.text("SELECT public_id FROM cards ORDER BY id LIMIT 1"))
        card_id = card.scalar_one()
        db.session.close()
    y, m = now.year, now.month
    api = "/api/v1/statistics"
    return [
        f"{api}/transfers/monthly?year={y}",
        f"{api}/transfers/yearly?year={y}",
        f"{api}/balances/monthly?year={y}",
        f"{api}/top_ups/statuses?year={y}&month={m}",
        f"{api}/top_ups/methods?year={y}",
        f"{api}/dashboard",
        f"{api}/transfers/monthly?year={y}&scope=card&id={card_id}",
        f"{api}/balances/yearly?year={y}&scope=card&id={card_id}",
        f"{api}/dashboard?scope=card&id={card_id}",
    ]


def measure(app: Any, token: str, urls: list[str], requests: int) -> dict[str, dict[str, float]]:
    from portal.extensions import db

    client = app.test_client()
    headers = {"Authorization": f"Bearer {token}"}
    out: dict[str, dict[str, float]] = {}
    for url in urls:
        colds = []
        for _ in range(COLD_RUNS):
            with app.app_context():
                db.engine.dispose()  # the next request opens a new connection
            began = time.perf_counter()
            response = client.get(url, headers=headers)
            colds.append((time.perf_counter() - began) * 1000)
            assert response.status_code == 200, (url, response.get_data(as_text=True)[:300])
        for _ in range(WARM_UP):
            client.get(url, headers=headers)
        times = []
        for _ in range(requests):
            began = time.perf_counter()
            client.get(url, headers=headers)
            times.append((time.perf_counter() - began) * 1000)
        times.sort()
        out[url] = {
            "p50": median(times),
            "p95": times[int(0.95 * len(times)) - 1],
            "cold": median(colds),
        }
    return out


def check(app: Any) -> int:
    from portal.services import statistics
    from portal.web.uow import make_uow

    with app.app_context():
        today = datetime.now(UTC).date()
        result = statistics.recompute_check(make_uow(app), (today - timedelta(days=7), today))
        return len(result.differences)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="postgresql+psycopg://postgres@127.0.0.1:5432")
    parser.add_argument("--prefix", default="statbench")
    parser.add_argument("--small", type=int, default=50_000)
    parser.add_argument("--large", type=int, default=5_000_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--keep", action="store_true", help="reuse existing databases")
    args = parser.parse_args()
    logging.getLogger("portal.access").setLevel(logging.WARNING)
    results = {}
    for size in (args.small, args.large):
        name = f"{args.prefix}_{size}"
        if not args.keep:
            build(args.url, name, size)
        app = make_app(args.url, name)
        differences = check(app)
        log(f"{name}: recompute_check over the last week: {differences} differences")
        token = staff_token(app)
        results[size] = measure(app, token, endpoints(app), args.requests)
        with app.app_context():
            from portal.extensions import db

            db.engine.dispose()
    small, large = results[args.small], results[args.large]
    print(f"| endpoint | p50 / p95 warm at {args.small:,} (ms) | p50 / p95 warm at "
          f"{args.large:,} (ms) | cold {args.small:,} (ms) | cold {args.large:,} (ms) |"
          " cold ratio |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for (url_s, s), (_, big) in zip(small.items(), large.items(), strict=True):
        path = url_s.split("/statistics")[1].split("&id=")[0]
        print(f"| `{path}` | {s['p50']:.1f} / {s['p95']:.1f} | {big['p50']:.1f} /"
              f" {big['p95']:.1f} | {s['cold']:.1f} | {big['cold']:.1f} |"
              f" {big['cold'] / s['cold']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
