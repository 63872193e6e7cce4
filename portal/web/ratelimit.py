"""Rate-limit counters that hold across processes even when Redis is down.

flask-limiter keeps its counters in Redis. Its own fallback, when Redis stops answering, is a
counter in each process's memory: with several gunicorn workers (and several machines) every
process then grants the whole limit, so five wrong passwords became eleven. This storage
(``portal://``, with the Redis URL and the database URL as options; with no Redis at all it
counts in PostgreSQL only) keeps the counters in Redis and, while Redis fails, in PostgreSQL
(``rate_limit_counters``, one row per key and window, incremented with one upsert), which every
process shares. After a Redis error
it stays on PostgreSQL for :data:`RETRY_SECONDS` before trying Redis again, so a dead Redis
costs one connection timeout per process, not one per request. Counts do not carry over
between the two stores: a switch starts the window afresh in the other one, never beyond one
window's allowance. Only the fixed-window strategy (flask-limiter's default, the one Portal
uses) is supported. The worker deletes expired rows (``purge_rate_limits``).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import redis
import sqlalchemy as sa
from flask import g, has_request_context
from limits.storage import RedisStorage, Storage

#: The storage's URI for flask-limiter (importing this module registers the scheme).
STORAGE_URI = "portal://"
#: How long to stay on PostgreSQL after Redis failed before trying Redis again.
RETRY_SECONDS = 5.0
#: Connect and read timeouts for Redis, so a dead server is noticed quickly.
REDIS_TIMEOUT_SECONDS = 0.5

_INCR = sa.text(
    "INSERT INTO rate_limit_counters AS c (key, count, expires_at)"
    " VALUES (:key, :amount, now() + make_interval(secs => :expiry))"
    " ON CONFLICT (key) DO UPDATE SET"
    " count = CASE WHEN c.expires_at <= now() THEN :amount ELSE c.count + :amount END,"
    " expires_at = CASE WHEN c.expires_at <= now()"
    "   THEN now() + make_interval(secs => :expiry) ELSE c.expires_at END"
    " RETURNING count"
)
_GET = sa.text(
    "SELECT count AS n, extract(epoch FROM expires_at) AS expires FROM rate_limit_counters"
    " WHERE key = :key AND expires_at > now()"
)


#: limits' own increment (INCRBY, and EXPIRE on a new window) that also answers the window's
#: time left, so the response's X-RateLimit-Remaining and -Reset headers cost no more round
#: trips: the counts a request's hits got are kept for that request (``_windows``).
_INCR_WITH_TTL = """
local amount = tonumber(ARGV[2])
local current = redis.call('incrby', KEYS[1], amount)
if current == amount then
    redis.call('expire', KEYS[1], ARGV[1])
end
return {current, redis.call('pttl', KEYS[1])}
"""


def _windows() -> dict[str, tuple[int, float]]:
    """(count, window's end) per key this request incremented in Redis; outside a request,
    an empty dict no one keeps."""
    if not has_request_context():
        return {}
    windows: dict[str, tuple[int, float]] = g.setdefault("portal_rate_windows", {})
    return windows


class PostgresCounters:
    """Fixed-window counters in PostgreSQL, on an engine of their own (the limiter runs outside
    the request's unit of work, and must not share its transaction). Used only while Redis is
    down (and to reset), so each use opens its own connection rather than keeping a pool."""

    def __init__(self, database_url: str) -> None:
        self.engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)

    def incr(self, key: str, expiry: int, amount: int) -> int:
        with self.engine.begin() as conn:
            return int(conn.execute(_INCR, {"key": key, "expiry": expiry,
                                            "amount": amount}).scalar_one())  # fmt: skip

    def get(self, key: str) -> tuple[int, float]:
        with self.engine.connect() as conn:
            row = conn.execute(_GET, {"key": key}).first()
        return (0, time.time()) if row is None else (int(row.n), float(row.expires))

    def clear(self, key: str | None = None) -> None:
        with self.engine.begin() as conn:
            if key is None:
                conn.execute(sa.text("DELETE FROM rate_limit_counters"))
            else:
                conn.execute(sa.text("DELETE FROM rate_limit_counters WHERE key = :key"),
                             {"key": key})  # fmt: skip

    def check(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            return True
        except sa.exc.SQLAlchemyError:
            return False


class RedisThenPostgres(Storage):
    """A ``limits`` storage: Redis while it answers, PostgreSQL while it does not."""

    STORAGE_SCHEME = ["portal"]

    def __init__(
        self, uri: str, database_url: str = "", redis_url: str = "", **options: Any
    ) -> None:
        super().__init__(uri, wrap_exceptions=False)
        if not database_url:
            raise ValueError("the portal rate-limit storage needs database_url")
        self.postgres = PostgresCounters(database_url)
        self.redis: RedisStorage | None = None
        if redis_url:
            self.redis = RedisStorage(
                redis_url, socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
                socket_timeout=REDIS_TIMEOUT_SECONDS, **options,
            )  # fmt: skip
        self._lock = threading.Lock()
        self._redis_down_until = 0.0
        if self.redis is not None:
            self._incr_script = self.redis.get_connection().register_script(_INCR_WITH_TTL.encode())

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return (sa.exc.SQLAlchemyError,)

    def using_redis(self) -> bool:
        return self.redis is not None and time.monotonic() >= self._redis_down_until

    def _redis(self, call: Any) -> tuple[bool, Any]:
        """(True, result) from Redis, or (False, None) when it failed (then PostgreSQL counts
        for the next RETRY_SECONDS)."""
        if not self.using_redis():
            return False, None
        try:
            return True, call(self.redis)
        except (redis.RedisError, OSError):
            with self._lock:
                self._redis_down_until = time.monotonic() + RETRY_SECONDS
            return False, None

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        ok, value = self._redis(
            lambda r: self._incr_script([r.prefixed_key(key)], [expiry, amount])
        )
        if not ok:
            return self.postgres.incr(key, expiry, amount)
        count, ttl_ms = int(value[0]), int(value[1])
        _windows()[key] = (count, time.time() + max(ttl_ms, 0) / 1000)
        return count

    def get(self, key: str) -> int:
        if (seen := _windows().get(key)) is not None:
            return seen[0]
        ok, value = self._redis(lambda r: r.get(key))
        return int(value) if ok else self.postgres.get(key)[0]

    def get_expiry(self, key: str) -> float:
        if (seen := _windows().get(key)) is not None:
            return seen[1]
        ok, value = self._redis(lambda r: r.get_expiry(key))
        return float(value) if ok else self.postgres.get(key)[1]

    def check(self) -> bool:
        ok, healthy = self._redis(lambda r: r.check())
        return True if ok and healthy else self.postgres.check()

    def reset(self) -> int | None:
        self._redis(lambda r: r.reset())
        self.postgres.clear()
        return None

    def clear(self, key: str) -> None:
        _windows().pop(key, None)
        self._redis(lambda r: r.clear(key))
        self.postgres.clear(key)
