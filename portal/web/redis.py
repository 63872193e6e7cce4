"""The Redis client, or None when ``REDIS_URL`` is unset (in-process fallbacks are used)."""

from __future__ import annotations

import logging
import os

import redis
from flask import Flask

log = logging.getLogger("portal")
NOTICE = (
    "REDIS_URL is not set: cache, rate limits and live events use in-process fallbacks"
    " (fine for one process; set REDIS_URL when running several)"
)
#: Set by the supervisor, which says it once for all the processes it starts.
_announced = bool(os.environ.get("PORTAL_REDIS_NOTICE_SHOWN"))


def init_app(app: Flask) -> None:
    global _announced
    url = app.config.get("REDIS_URL")
    if url:
        app.extensions["portal.redis"] = redis.Redis.from_url(
            url, socket_timeout=1.0, socket_connect_timeout=1.0, health_check_interval=30
        )
        return
    app.extensions["portal.redis"] = None
    if not _announced:
        _announced = True
        log.warning(NOTICE)
