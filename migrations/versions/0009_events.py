"""Events: what a merchant cares about (payment.succeeded, refund.created, ...), written in the
same transaction as the change, with the object as the API shows it; listed and read through
``/api/v1/events`` and kept at least 30 days.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "events",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column(
            "public_id",
            sa.String(length=29),
            server_default=sa.text("portal_public_id('evt')"),
            nullable=False,
        ),
        sa.Column("merchant_id", sa.BigInteger(), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("api_version", sa.String(length=16), nullable=False),
        sa.Column("data", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["merchant_id"], ["merchants.id"], name=op.f("fk_events_merchant_id_merchants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
        sa.UniqueConstraint("public_id", name=op.f("uq_events_public_id")),
    )
    op.create_index(
        "ix_events_merchant_created_at_id", "events", ["merchant_id", "created_at", "id"]
    )
    op.create_index(
        "ix_events_merchant_type_created_at", "events", ["merchant_id", "type", "created_at"]
    )
    op.create_index("ix_events_created_at", "events", ["created_at"])


def downgrade():
    op.drop_table("events")
