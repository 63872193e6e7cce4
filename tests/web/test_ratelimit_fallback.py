"""Rate limits hold across processes while Redis is down: the counters move to PostgreSQL
(portal.web.ratelimit), which every process shares, instead of each process counting in its
own memory (where five wrong passwords per account became five per process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid

import sqlalchemy as sa

from portal.web.ratelimit import RedisThenPostgres

DEAD_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1
#: One process: a few wrong passwords for one account from one address through the real app.
ATTEMPTS = textwrap.dedent(
    """
    import json, sys
    from portal import create_app

    email, count = sys.argv[1], int(sys.argv[2])
    app = create_app({"TESTING": True})
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = "203.0.113.77"
    statuses = [
        client.post("/api/v1/auth/token", json={"email": email, "password": "wrong password"}
                    ).status_code
        for _ in range(count)
    ]
    print(json.dumps(statuses))
    """
)


def _attempts(app, email: str, count: int) -> list[int]:
    env = {**os.environ, "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
           "PORTAL_ENV": "test", "REDIS_URL": DEAD_REDIS, "PORTAL_LOG_FORMAT": "off"}  # fmt: skip
    done = subprocess.run([sys.executable, "-c", ATTEMPTS, email, str(count)], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_wrong_passwords_are_counted_across_processes_while_redis_is_down(app, committing_engine):
    email = f"nobody-{uuid.uuid4().hex[:8]}@example.test"
    first = _attempts(app, email, 3)
    second = _attempts(app, email, 3)  # another process, with memory of its own
    assert first == [401, 401, 401]
    assert second == [401, 401, 429], second  # the limit is 5 per account and address
    with committing_engine.connect() as conn:
        counted = conn.execute(sa.text(
            "SELECT count FROM rate_limit_counters WHERE key LIKE '%sign-in-account-address%'"
        )).scalars().all()  # fmt: skip
    assert 5 in counted


def test_the_storage_uses_redis_while_it_answers_and_postgres_while_it_does_not(
    app, committing_engine, redis_url
):
    url = app.config["SQLALCHEMY_DATABASE_URI"]
    key = f"test-{uuid.uuid4().hex}"
    up = RedisThenPostgres("portal://", database_url=url, redis_url=redis_url)
    assert [up.incr(key, 60) for _ in range(3)] == [1, 2, 3] and up.get(key) == 3
    assert up.get_expiry(key) > time.time() + 50
    down = RedisThenPostgres("portal://", database_url=url, redis_url=DEAD_REDIS)
    assert [down.incr(key, 60) for _ in range(2)] == [1, 2]  # PostgreSQL's own count
    assert not down.using_redis() and down.check()
    assert down.get(key) == 2 and down.get_expiry(key) > time.time() + 50
    with committing_engine.connect() as conn:
        (row,) = conn.execute(sa.text("SELECT count FROM rate_limit_counters WHERE key = :k"),
                              {"k": key}).all()  # fmt: skip
    assert row.count == 2
    # A window that ended starts again at 1.
    with committing_engine.begin() as conn:
        conn.execute(sa.text("UPDATE rate_limit_counters SET expires_at = now() WHERE key = :k"),
                     {"k": key})  # fmt: skip
    assert down.incr(key, 60) == 1
    # After RETRY_SECONDS it tries Redis again (still down: PostgreSQL keeps counting).
    down._redis_down_until = time.monotonic() - 1
    assert down.using_redis() and down.incr(key, 60) == 2 and not down.using_redis()
    down.clear(key)
    up.clear(key)
    assert down.get(key) == 0 and up.get(key) == 0


def test_a_hit_costs_one_redis_command_and_its_headers_none(app) -> None:
    """The increment answers the window's time left too, so the X-RateLimit headers of the
    same request are answered without asking Redis again; outside a request nothing is kept."""
    storage = RedisThenPostgres(
        "portal://", database_url=app.config["SQLALCHEMY_DATABASE_URI"],
        redis_url=app.config["REDIS_URL"],
    )  # fmt: skip
    connection = storage.redis.get_connection()  # type: ignore[union-attr]
    sent: list[object] = []
    real = connection.execute_command
    connection.execute_command = lambda *a, **k: sent.append(a[0]) or real(*a, **k)  # type: ignore[method-assign]
    key = f"tests/{uuid.uuid4().hex}"
    storage.incr(key, 60)
    with app.test_request_context():
        sent.clear()
        count = storage.incr(key, 60)
        seen = (storage.get(key), storage.get_expiry(key))
        in_request = list(sent)
    assert count == 2 and seen[0] == 2 and 0 < seen[1] - time.time() <= 60
    assert in_request == ["EVALSHA"]  # one round trip for the hit and both headers
    sent.clear()
    assert storage.get(key) == 2 and sent == ["GET"]  # outside a request Redis is asked
    storage.clear(key)
