"""Builds units of work for the web layer, the CLI and the worker from the app's engine."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from flask import Flask, current_app
from psycopg.pq import ConnStatus, ExecStatus
from sqlalchemy.orm import Session, sessionmaker

from portal.extensions import db
from portal.services.shared.uow import UnitOfWork, utcnow

#: A pooled connection idle for longer than this is pinged before it is handed out.
IDLE_PING_SECONDS = 1.0


def init_app(app: Flask) -> None:
    app.extensions["portal.session_factory"] = None  # built lazily inside an app context
    with app.app_context():
        ping_when_idle(db.engine)


def ping_when_idle(engine: sa.Engine) -> None:
    """Check a pooled connection before handing it out only if it sat idle past
    ``IDLE_PING_SECONDS`` (a restarted server, an idle timeout, a killed backend): a busy pool
    pays no round trip per checkout, as ``pool_pre_ping`` would make it. A dead connection is
    replaced (the pool retries with a new one); one that dies between a ping and its use fails
    that unit of work, which retries or answers as after any lost connection."""

    @sa.event.listens_for(engine, "checkin")
    def _checked_in(_dbapi: Any, record: Any) -> None:
        record.info["portal_idle_since"] = time.monotonic()

    @sa.event.listens_for(engine, "checkout")
    def _checked_out(dbapi: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("portal_idle_since")
        if since is not None and time.monotonic() - since < IDLE_PING_SECONDS:
            return
        # An empty query on the libpq connection: one round trip, no transaction begun.
        pgconn = dbapi.pgconn
        if pgconn.status != ConnStatus.OK or pgconn.exec_(b"").status != ExecStatus.EMPTY_QUERY:
            raise sa.exc.DisconnectionError("the pooled connection is gone")


def session_factory(app: Flask | None = None) -> Callable[[], Session]:
    """A session factory bound to the app's engine (or the connection tests patch in), with
    ``join_transaction_mode="create_savepoint"`` so a test's outer transaction stays in
    charge. The unit of work gets its own session: Flask-Login's loader reads through
    ``db.session``, whose open transaction must not collide with the unit of work's."""
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    factory = app.extensions.get("portal.session_factory")
    if factory is None:
        with app.app_context():
            bind = db.engines[None]
        factory = sessionmaker(
            bind=bind,
            expire_on_commit=False,
            autoflush=False,
            join_transaction_mode="create_savepoint",
        )
        app.extensions["portal.session_factory"] = factory
    return factory


def make_uow(app: Flask | None = None, *, clock: Callable[[], datetime] = utcnow) -> UnitOfWork:
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    return UnitOfWork(
        session_factory(app),
        app.config["SERVICE_SETTINGS"],
        clock=clock,
        metrics=app.extensions.get("portal.business_metrics"),
    )
