"""Top-ups wait for the funding processor (issue 11 A1): a top-up is ``pending`` until the
funding job marks it ``processing`` (``processing_started_at``, committed before it calls the
processor) and settles it with the processor's answer: ``succeeded`` with the processor's
``funding_reference`` and a journal entry, or ``failed`` with nothing posted. ``completed_at``
is when it settled.

Top-ups written before this revision posted at once: they are settled already, at creation.

Revision ID: 0015
Revises: 0014
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade():
    op.drop_constraint(op.f("ck_top_ups_status"), "top_ups", type_="check")
    op.create_check_constraint(
        op.f("ck_top_ups_status"), "top_ups",
        "status IN ('pending', 'processing', 'succeeded', 'failed')",
    )  # fmt: skip
    op.add_column("top_ups", sa.Column("funding_reference", sa.String(64), nullable=True))
    op.add_column(
        "top_ups", sa.Column("processing_started_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column("top_ups", sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True))
    op.execute(
        "UPDATE top_ups SET completed_at = created_at WHERE status IN ('succeeded', 'failed')"
    )
    # The funding job and the daily cap look for a user's unsettled top-ups.
    op.create_index(
        "ix_top_ups_unsettled", "top_ups", ["created_at"],
        postgresql_where=sa.text("status IN ('pending', 'processing')"),
    )  # fmt: skip


def downgrade():
    # Without the states, nothing can settle an unsettled top-up: they fail (nothing was
    # posted for them), which is what the processor's silence would mean.
    op.execute(
        "UPDATE top_ups SET status = 'failed', failure_code = 'funding_abandoned'"
        " WHERE status IN ('pending', 'processing')"
    )
    op.drop_index("ix_top_ups_unsettled", table_name="top_ups")
    op.drop_column("top_ups", "completed_at")
    op.drop_column("top_ups", "processing_started_at")
    op.drop_column("top_ups", "funding_reference")
    op.drop_constraint(op.f("ck_top_ups_status"), "top_ups", type_="check")
    op.create_check_constraint(
        op.f("ck_top_ups_status"), "top_ups", "status IN ('pending', 'succeeded', 'failed')"
    )
