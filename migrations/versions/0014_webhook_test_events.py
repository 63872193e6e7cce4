"""Test events and one delivery in flight per endpoint: ``events.test`` marks an event a
merchant sent to one endpoint from "send test event" (it is delivered and logged like any
other, and never listed by ``/api/v1/events``), and a partial index finds an endpoint's
delivery in flight (``locked_until`` set) without reading its whole log.

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column(
        "events", sa.Column("test", sa.Boolean(), server_default=sa.false(), nullable=False)
    )
    op.create_index(
        "ix_webhook_deliveries_in_flight",
        "webhook_deliveries",
        ["endpoint_id"],
        postgresql_where=sa.text("locked_until IS NOT NULL"),
    )


def downgrade():
    op.drop_index("ix_webhook_deliveries_in_flight", table_name="webhook_deliveries")
    op.drop_column("events", "test")
