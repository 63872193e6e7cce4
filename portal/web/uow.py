"""Builds units of work for the web layer, the CLI and the worker from the app's engine."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from flask import Flask, current_app
from sqlalchemy.orm import Session, sessionmaker

from portal.extensions import db
from portal.services.shared.uow import UnitOfWork, utcnow


def init_app(app: Flask) -> None:
    app.extensions["portal.session_factory"] = None  # built lazily inside an app context


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
