"""The audit chain migration chains the rows written before it (on chain 0, in id order), and
its downgrade leaves the rows in place."""

from __future__ import annotations

import sqlalchemy as sa
from flask_migrate import downgrade, upgrade

from portal.services.shared import audit_chain
from portal.web.uow import make_uow
from tests.conftest import wipe

CHAIN_MIGRATION = "0022"


def test_existing_rows_are_chained_by_the_migration(app) -> None:
    owner_url = app.config["MIGRATION_DATABASE_URI"]
    with app.app_context():
        owner = app.extensions["migrate"].db.engine
        try:
            downgrade(revision=f"{CHAIN_MIGRATION}-1")  # and any later one
            with owner.begin() as conn:
                columns = {c["name"] for c in sa.inspect(conn).get_columns("audit_events")}
                assert "hash" not in columns
                conn.execute(
                    sa.text(
                        "INSERT INTO audit_events (occurred_at, actor_kind, actor_id, action,"
                        " subject_type, subject_id, data) SELECT now() - i * interval '1 minute',"
                        " 'user', i, 'old.event', 'user', i, jsonb_build_object('i', i, 'é', 'x')"
                        " FROM generate_series(1, 25) i"
                    )
                )
            upgrade()
            with owner.connect() as conn:
                rows = conn.execute(
                    sa.text("SELECT id, chain, seq FROM audit_events ORDER BY id")
                ).all()
                head = conn.execute(
                    sa.text("SELECT seq FROM audit_chain_heads WHERE chain = 0")
                ).scalar_one()
            assert [(r.chain, r.seq) for r in rows] == [(0, n) for n in range(1, 26)]
            assert head == 25
            report = audit_chain.verify(make_uow(app))
            assert report.ok, report.breaks
            assert report.entries == 25
        finally:
            wipe(owner_url)
