"""The migration chain builds the schema the models describe, from an empty database."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import downgrade, upgrade

from portal.extensions import db
from portal.models import Base


def test_models_and_migrations_agree(app):
    """No autogenerate drift: the migrated database (built by the session fixture from an
    empty schema with ``upgrade``) matches the models' metadata."""
    with app.app_context(), db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_chain_downgrades_to_empty_and_upgrades_again(app):
    """As the schema owner (the migrations' engine); afterwards the app's runtime role reads
    and writes again, since 0018 grants it anew."""
    with app.app_context():
        owner = app.extensions["migrate"].db.engine
        downgrade(revision="base")
        with owner.connect() as conn:
            tables = sa.inspect(conn).get_table_names()
        assert tables == ["alembic_version"]
        upgrade()
        with owner.connect() as conn:
            assert set(Base.metadata.tables) <= set(sa.inspect(conn).get_table_names())
        with db.engine.connect() as conn:
            accounts = conn.execute(sa.text("SELECT count(*) FROM accounts")).scalar()
        assert accounts == 4 * 41  # funding, payouts, fees and adjustments per currency
