"""Console indexes: every money record's table newest first across all owners (keyset on
``(created_at, id)``, so page 1,000 costs what page 1 costs), the open withdrawals oldest first
(the withdrawal queue), and the journal entry of each movement (from an entry to the record
that made it, and so that the journal's foreign keys are checked without a scan).

Revision ID: 0026
Revises: 0025
"""

import sqlalchemy as sa
from alembic import op

revision = "0026"
down_revision = "0025"
branch_labels = None
depends_on = None

# (index, table, columns); copied, not imported: a migration must not change with the code.
INDEXES = (
    ("ix_payments_created_at_id", "payments", ["created_at", "id"]),
    ("ix_refunds_created_at_id", "refunds", ["created_at", "id"]),
    ("ix_payouts_created_at_id", "payouts", ["created_at", "id"]),
    ("ix_webhook_deliveries_created_at_id", "webhook_deliveries", ["created_at", "id"]),
    ("ix_top_ups_journal_entry_id", "top_ups", ["journal_entry_id"]),
    ("ix_transfers_journal_entry_id", "transfers", ["journal_entry_id"]),
    ("ix_withdrawals_journal_entry_id", "withdrawals", ["journal_entry_id"]),
    ("ix_refunds_journal_entry_id", "refunds", ["journal_entry_id"]),
    ("ix_payments_capture_entry_id", "payments", ["capture_entry_id"]),
)


def upgrade():
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns, unique=False)
    op.create_index(
        "ix_withdrawals_open", "withdrawals", ["created_at", "id"], unique=False,
        postgresql_where=sa.text("status IN ('pending', 'processing')"),
    )  # fmt: skip


def downgrade():
    op.drop_index("ix_withdrawals_open", table_name="withdrawals")
    for name, table, _columns in reversed(INDEXES):
        op.drop_index(name, table_name=table)
