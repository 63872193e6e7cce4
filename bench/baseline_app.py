"""Baselines (b) and (c) of ``make bench``: a minimal Flask app under gunicorn, psycopg 3 with a
pool, no ORM, authentication, idempotency, audit or events.

- ``POST /transfer`` {"from", "to", "amount"}: the 6-round-trip transfer of
  ``shared/reference/perf-baselines.md`` (BEGIN; lock both accounts in id order with one
  ``SELECT ... ORDER BY id FOR UPDATE``; debit; credit; one ledger INSERT; COMMIT), 201.
- ``GET /balance/<id>``: one balance row from PostgreSQL and one Redis key, 200.

    BASELINE_DATABASE_URL=postgresql://... BASELINE_REDIS_URL=redis://... \\
        gunicorn -k gthread -w 2 --threads 4 --chdir bench baseline_app:app

``bench/run.py`` creates its tables (``SCHEMA``) and starts it beside Portal.
"""

from __future__ import annotations

import os
from typing import Any

import redis
from flask import Flask, jsonify, request
from psycopg_pool import ConnectionPool

SCHEMA = """
DROP TABLE IF EXISTS bench_ledger, bench_accounts;
CREATE TABLE bench_accounts (id integer PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0));
CREATE TABLE bench_ledger (
    id bigserial PRIMARY KEY,
    debit integer NOT NULL REFERENCES bench_accounts,
    credit integer NOT NULL REFERENCES bench_accounts,
    amount bigint NOT NULL CHECK (amount > 0),
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO bench_accounts SELECT i, 100000000 FROM generate_series(1, %(accounts)d) AS i;
"""

#: The statements of one transfer, in order (the pgbench script runs the same ones).
LOCK = "SELECT id, balance FROM bench_accounts WHERE id IN (%s, %s) ORDER BY id FOR UPDATE"
DEBIT = "UPDATE bench_accounts SET balance = balance - %s WHERE id = %s"
CREDIT = "UPDATE bench_accounts SET balance = balance + %s WHERE id = %s"
LEDGER = "INSERT INTO bench_ledger (debit, credit, amount) VALUES (%s, %s, %s)"
BALANCE = "SELECT balance FROM bench_accounts WHERE id = %s"

app = Flask(__name__)
threads = int(os.environ.get("BASELINE_THREADS", "4"))
pool = ConnectionPool(
    os.environ.get("BASELINE_DATABASE_URL", ""), min_size=threads, max_size=threads, open=False
)
cache = redis.Redis.from_url(os.environ.get("BASELINE_REDIS_URL", "redis://127.0.0.1:6379/0"))


@app.before_request
def _open_pool() -> None:
    if pool.closed:  # opened in the worker, after gunicorn forks
        pool.open(wait=True)


@app.post("/transfer")
def transfer() -> Any:
    body = request.get_json()
    src, dst, amount = int(body["from"]), int(body["to"]), int(body["amount"])
    with pool.connection() as conn, conn.transaction():
        rows = conn.execute(LOCK, (src, dst)).fetchall()
        balance = {row[0]: row[1] for row in rows}
        if balance.get(src, 0) < amount:
            return jsonify(error="insufficient_funds"), 402
        conn.execute(DEBIT, (amount, src))
        conn.execute(CREDIT, (amount, dst))
        conn.execute(LEDGER, (src, dst, amount))
    return jsonify(object="transfer", amount=amount), 201


@app.get("/balance/<int:account>")
def balance(account: int) -> Any:
    with pool.connection() as conn:
        row = conn.execute(BALANCE, (account,)).fetchone()
    cached = cache.get(f"balance:{account}")
    if row is None:
        return jsonify(error="not_found"), 404
    return jsonify(object="balance", available=row[0], cached=cached is not None), 200
