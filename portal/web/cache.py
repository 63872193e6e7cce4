"""A read-through cache in Redis (or, without ``REDIS_URL``, in this process), with hits,
misses and errors counted in ``portal_cache_requests_total{cache, result}``.

Keys name the state they were computed from (a user's change version, say), so nothing is ever
invalidated: a change makes a new key and old entries expire. A Redis failure is counted as an
error and the value is computed as if nothing were cached: the cache can only make pages
faster, never wrong or unavailable.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

import redis
from flask import Flask, current_app

from portal.web.metrics import business_metrics

T = TypeVar("T")
log = logging.getLogger(__name__)

#: Entries kept by the in-process fallback.
LOCAL_ENTRIES = 2048


class _LocalStore:
    """A bounded, thread-safe LRU with expiry: the fallback for one process without Redis."""

    def __init__(self, size: int = LOCAL_ENTRIES) -> None:
        self.size = size
        self._entries: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> str | None:
        with self._lock:
            found = self._entries.get(key)
            if found is None or found[0] < time.monotonic():
                self._entries.pop(key, None)
                return None
            self._entries.move_to_end(key)
            return found[1]

    def set(self, key: str, value: str, ttl: int) -> None:
        with self._lock:
            self._entries[key] = (time.monotonic() + ttl, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)


def init_app(app: Flask) -> None:
    app.extensions["portal.cache_local"] = _LocalStore()


def cached(
    cache: str,
    key: str,
    compute: Callable[[], T],
    *,
    dump: Callable[[T], str],
    load: Callable[[str], T],
    ttl: int = 3600,
) -> T:
    """``load(stored)`` for ``cache:key`` when present; else ``compute()``, stored as ``dump``."""
    app = current_app
    client: redis.Redis | None = app.extensions.get("portal.redis")
    local: _LocalStore = app.extensions["portal.cache_local"]
    full_key = f"portal:cache:{cache}:{key}"
    metrics = business_metrics(app)

    def count(result: str) -> None:
        if metrics is not None:
            metrics.cache_requests.labels(cache=cache, result=result).inc()

    try:
        stored: bytes | str | None = (
            client.get(full_key) if client is not None else local.get(full_key)  # type: ignore[assignment]
        )
    except redis.RedisError as exc:
        log.warning("cache %s unavailable: %s", cache, exc)
        count("error")
        return compute()
    if stored is not None:
        count("hit")
        return load(stored.decode() if isinstance(stored, bytes) else stored)
    count("miss")
    value = compute()
    try:
        if client is not None:
            client.set(full_key, dump(value), ex=ttl)
        else:
            local.set(full_key, dump(value), ttl)
    except redis.RedisError as exc:
        log.warning("cache %s unavailable: %s", cache, exc)
    return value
