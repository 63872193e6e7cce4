"""Shared web glue: request ids and security headers, errors, CSRF, rate limits, the unit of
work, Redis and the cache, health and the landing page."""

from __future__ import annotations

from flask import Flask

from portal.extensions import csrf, limiter
from portal.web import auth, cache, errors, health, ratelimit, redis, requests, uow
from portal.web import logging as log_setup
from portal.web import metrics as metrics_setup


def init_app(app: Flask) -> None:
    requests.init_app(app)
    log_setup.init_app(app)
    metrics_setup.init_app(app)
    errors.init_app(app)
    uow.init_app(app)
    redis.init_app(app)
    cache.init_app(app)
    csrf.init_app(app)
    auth.init_app(app)
    # Counters in Redis, and in PostgreSQL while Redis is down (portal.web.ratelimit).
    app.config.setdefault("RATELIMIT_STORAGE_URI", ratelimit.STORAGE_URI)
    app.config.setdefault("RATELIMIT_STORAGE_OPTIONS", {
        "database_url": app.config["SQLALCHEMY_DATABASE_URI"],
        "redis_url": app.config.get("REDIS_URL") or "",
    })  # fmt: skip
    app.config.setdefault("RATELIMIT_KEY_PREFIX", "portal")
    limiter.init_app(app)
    app.register_blueprint(health.bp)
