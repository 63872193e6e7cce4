"""Portal: a self-hosted payment gateway and wallet portal."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Application factory. ``config`` overrides what the environment gives."""
    from portal import api, auth, cli, telemetry, web
    from portal.config import load_config
    from portal.extensions import db, migrate

    app = Flask(__name__, instance_relative_config=True)
    app.config.update(load_config())
    if config:
        app.config.update(config)
    if not app.config.get("SQLALCHEMY_DATABASE_URI"):
        raise RuntimeError(
            "DATABASE_URL is not set. Use `make run` / `make test` (they start an embedded "
            "PostgreSQL) or point DATABASE_URL at a PostgreSQL 15+ server."
        )

    db.init_app(app)
    migrate.init_app(app, db)
    web.init_app(app)
    app.register_blueprint(auth.bp)
    from portal import sso

    app.register_blueprint(sso.bp)
    from portal import cardholder

    app.register_blueprint(cardholder.bp)
    from portal import checkout, merchant

    app.register_blueprint(merchant.bp)
    app.register_blueprint(checkout.bp)
    from portal import admin

    app.register_blueprint(admin.bp)
    api.init_app(app)
    cli.init_app(app)
    telemetry.init_app(app)
    return app
