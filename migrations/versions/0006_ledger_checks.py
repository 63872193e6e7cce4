"""Ledger checks: the result of each periodic reconciliation, read by monitoring (the ledger
imbalance gauge and the last check's age) without summing the ledger at every scrape.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "ledger_checks",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.Column("accounts_checked", sa.BigInteger(), nullable=False),
        sa.Column("entries_checked", sa.BigInteger(), nullable=False),
        sa.Column("postings_checked", sa.BigInteger(), nullable=False),
        # Sum of all postings per currency: zero in a balanced ledger.
        sa.Column("totals", postgresql.JSONB, nullable=False),
        sa.Column("violation_count", sa.Integer(), nullable=False),
        # The first violations found (check, subject, expected, actual), for the console.
        sa.Column("violations", postgresql.JSONB, nullable=False),
        sa.CheckConstraint("violation_count >= 0", name=op.f("ck_ledger_checks_violation_count")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_checks")),
    )
    op.create_index(op.f("ix_ledger_checks_checked_at"), "ledger_checks", ["checked_at"])


def downgrade():
    op.drop_index("ix_ledger_checks_checked_at", table_name="ledger_checks")
    op.drop_table("ledger_checks")
