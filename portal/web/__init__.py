"""Shared web glue: the unit-of-work factory, health, landing page and error handlers."""

from __future__ import annotations

from flask import Flask

from portal.web import health, redis, uow


def init_app(app: Flask) -> None:
    uow.init_app(app)
    redis.init_app(app)
    app.register_blueprint(health.bp)
