"""Withdrawals take the ``processing`` state: the payout job marks a withdrawal ``processing``
(and when, ``processing_started_at``) in a committed transaction before it calls the payout
processor, and settles it from there only, so staff cannot fail a withdrawal whose money is
with the processor.

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade():
    op.drop_constraint(op.f("ck_withdrawals_status"), "withdrawals", type_="check")
    op.create_check_constraint(
        op.f("ck_withdrawals_status"), "withdrawals",
        "status IN ('pending', 'processing', 'succeeded', 'failed')",
    )  # fmt: skip
    op.add_column(
        "withdrawals",
        sa.Column("processing_started_at", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade():
    # Without the state, a withdrawal with the processor is pending again, as it was before
    # this revision; its payout job (queued or running still) settles it.
    op.execute("UPDATE withdrawals SET status = 'pending' WHERE status = 'processing'")
    op.drop_column("withdrawals", "processing_started_at")
    op.drop_constraint(op.f("ck_withdrawals_status"), "withdrawals", type_="check")
    op.create_check_constraint(
        op.f("ck_withdrawals_status"), "withdrawals",
        "status IN ('pending', 'succeeded', 'failed')",
    )  # fmt: skip
