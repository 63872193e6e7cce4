"""One-time form tokens: a page form that is not a money movement (create an API key, send an
invitation) carries a random token made when it is rendered; the first submission claims it
and a second one (a double click, a reload that posts again) finds it taken.

Claims are ``SET NX`` in Redis with an expiry, or, without ``REDIS_URL``, a bounded in-process
table. A Redis failure lets the submission through (the form then behaves like any other form:
it cannot be worse than having no token).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict

import redis
from flask import current_app

log = logging.getLogger(__name__)

TTL_SECONDS = 24 * 3600
LOCAL_ENTRIES = 4096
_lock = threading.Lock()


def _local() -> OrderedDict[str, float]:
    store: OrderedDict[str, float] = current_app.extensions.setdefault(
        "portal.once_local", OrderedDict()
    )
    return store


def claim(scope: str, token: str, *, ttl: int = TTL_SECONDS) -> bool:
    """True the first time ``token`` is claimed in ``scope`` (e.g. ``"api_key:<user id>"``);
    False afterwards, until it expires."""
    key = f"portal:once:{scope}:{token}"
    client: redis.Redis | None = current_app.extensions.get("portal.redis")
    if client is not None:
        try:
            return bool(client.set(key, b"1", nx=True, ex=ttl))
        except redis.RedisError as exc:
            log.warning("one-time form tokens unavailable: %s", exc)
            return True
    now = time.monotonic()
    with _lock:
        store = _local()
        expires = store.get(key)
        if expires is not None and expires > now:
            return False
        store[key] = now + ttl
        store.move_to_end(key)
        while len(store) > LOCAL_ENTRIES:
            store.popitem(last=False)
        return True
