"""The ``portal`` console script: Flask's CLI with Portal's app factory and commands."""

from __future__ import annotations

import sys
from typing import Any

import click
import sqlalchemy as sa
from flask import Flask
from flask.cli import AppGroup, FlaskGroup
from sqlalchemy.pool import NullPool


class MigrationDatabase:
    """What Alembic's ``env.py`` reads as ``db``: the models' metadata, and an engine connected
    as the schema owner (``MIGRATION_DATABASE_URI``) rather than the app's runtime role. Every
    ``portal db ...`` command and ``flask_migrate.upgrade()`` go through it."""

    def __init__(self, app: Flask, db: Any) -> None:
        self._app = app
        self._db = db
        self._engine: sa.Engine | None = None

    @property
    def metadata(self) -> sa.MetaData:
        return self._db.metadata

    @property
    def engine(self) -> sa.Engine:
        url = self._app.config.get("MIGRATION_DATABASE_URI")
        if not url or url == self._app.config["SQLALCHEMY_DATABASE_URI"]:
            return self._db.engine
        if self._engine is None or self._engine.url != sa.make_url(url):
            # No pool: migrations run rarely, and no owner connection should stay open.
            options = self._app.config["SQLALCHEMY_ENGINE_OPTIONS"]
            self._engine = sa.create_engine(
                url, poolclass=NullPool, connect_args=options.get("connect_args", {})
            )
        return self._engine

    def get_engine(self, *_args: Any, **_kwargs: Any) -> sa.Engine:
        """What Flask-Migrate's stock ``env.py`` calls first: the same owner engine."""
        return self.engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


audit = AppGroup("audit", help="The tamper-evident audit log.")


@audit.command("verify")
def audit_verify() -> None:
    """Walk every audit chain, recomputing each entry's hash, and check every anchor. Names
    each edited, deleted or inserted entry; exits 1 on any."""
    from portal.services.shared.audit_chain import describe, verify
    from portal.web.uow import make_uow

    report = verify(make_uow())
    for line in describe(report):
        click.echo(line)
    if not report.ok:
        click.echo(f"FAILED: {len(report.breaks)} break(s) in the audit log")
        sys.exit(1)
    click.echo("OK: every audit chain is intact and every anchor is on its chain")


def init_app(app: Flask) -> None:
    from portal import commands

    app.cli.add_command(audit)

    migrate = app.extensions.get("migrate")
    if migrate is not None:  # Flask-Migrate's per-app config: its ``db`` is what env.py uses
        migrate.db = MigrationDatabase(app, migrate.db)
    commands.register(app)


def main() -> None:
    from portal import create_app

    FlaskGroup(create_app=create_app, help="Portal: payment gateway and wallet portal.")()
