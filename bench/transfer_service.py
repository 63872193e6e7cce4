"""Throughput of the transfer service: threads calling ``wallet.transfer`` on real PostgreSQL.

Measures the service layer alone (no HTTP): the figure to hold against perf-baselines.md's
"Python limit: psycopg 3 + pool, one process, threads" (4,800 TPS for a 6-round-trip transfer).

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/portal_bench \\
        .venv/bin/python bench/transfer_service.py --threads 8 --seconds 20 --cards 1000

The database is migrated if needed and this script's data is wiped afterwards.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import threading
import time
import uuid

import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

from portal import create_app
from portal.domain.errors import InsufficientFunds
from portal.domain.money import Money
from portal.domain.types import Actor
from portal.services.identity import users
from portal.services.shared.uow import UnitOfWork
from portal.services.wallet import cards, wallet

WIPE = """
TRUNCATE postings, holds, journal_entries, top_ups, transfers, withdrawals, payments, refunds,
         idempotency_keys, jobs, outbox_events, audit_events, api_keys, refresh_tokens CASCADE;
DELETE FROM accounts WHERE kind IN ('wallet', 'merchant');
DELETE FROM cards; DELETE FROM merchants; DELETE FROM user_roles; DELETE FROM users;
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--cards", type=int, default=1000, help="more cards, less contention")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if not os.environ.get("DATABASE_URL"):
        sys.exit("set DATABASE_URL to a scratch database (its Portal data is wiped)")

    app = create_app()
    with app.app_context():
        from flask_migrate import upgrade

        upgrade()
    engine = sa.create_engine(
        app.config["SQLALCHEMY_DATABASE_URI"],
        pool_size=args.threads + 2,
        max_overflow=0,
        connect_args=app.config["SQLALCHEMY_ENGINE_OPTIONS"]["connect_args"],
    )
    factory = sessionmaker(bind=engine, expire_on_commit=False, autoflush=False)
    settings = app.config["SERVICE_SETTINGS"]

    def new_uow() -> UnitOfWork:
        return UnitOfWork(factory, settings)

    system = Actor.system("bench")
    setup = new_uow()
    owners, card_ids = [], []  # the cards' public ids: the transfer resolves them as a request's
    print(f"setting up {args.cards} cards...", flush=True)
    for i in range(args.cards):
        if i % 5 == 0:
            user = users.create_user(
                setup, actor=system, email=f"bench{i}-{uuid.uuid4().hex[:6]}@bench.test",
                first_name="Bench", last_name=str(i),
            )  # fmt: skip
            owners.append(users.actor_for(setup, user.id))
        owner = owners[-1]
        card = cards.issue_card(setup, actor=system, user_id=owner.id, card_type="debit",
                                brand="visa", currency="USD")  # fmt: skip
        wallet.top_up(setup, actor=system, card_id=card.card_id, amount=Money(500_000, "USD"),
                      method="bank_transfer", idempotency_key=uuid.uuid4().hex)  # fmt: skip
        card_ids.append(card.public_id)

    stop = threading.Event()
    latencies: list[list[float]] = [[] for _ in range(args.threads)]
    refused = [0] * args.threads

    def run(n: int) -> None:
        rng = random.Random(args.seed * 1000 + n)
        uow = new_uow()
        while not stop.is_set():
            src, dst = rng.sample(card_ids, 2)
            started = time.perf_counter()
            try:
                wallet.transfer(uow, actor=system, from_card_id=src, to_card_id=dst,
                                amount=Money(rng.randint(1, 500), "USD"),
                                idempotency_key=uuid.uuid4().hex)  # fmt: skip
            except InsufficientFunds:
                refused[n] += 1
            latencies[n].append(time.perf_counter() - started)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(args.threads)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(args.seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    all_lat = sorted(x for lst in latencies for x in lst)
    total = len(all_lat)
    p = lambda q: all_lat[min(total - 1, int(q * total))] * 1000  # noqa: E731
    print(
        f"threads={args.threads} cards={args.cards} seconds={elapsed:.1f} transfers={total}"
        f" refused={sum(refused)} tps={total / elapsed:.0f} p50={p(0.5):.2f}ms"
        f" p95={p(0.95):.2f}ms p99={p(0.99):.2f}ms mean={statistics.mean(all_lat) * 1000:.2f}ms"
    )
    with engine.begin() as conn:
        conn.execute(sa.text(WIPE))
    return 0


if __name__ == "__main__":
    sys.exit(main())
