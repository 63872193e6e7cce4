"""Activity feed indexes: each card's top-ups, transfers (both ways) and withdrawals, newest
first, so a feed page reads at most ``limit + 1`` rows per branch.

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# (index, table, columns); copied, not imported: a migration must not change with the code.
INDEXES = (
    ("ix_top_ups_card_id_created_at_id", "top_ups", ["card_id", "created_at", "id"]),
    ("ix_transfers_from_card_id_created_at_id", "transfers", ["from_card_id", "created_at", "id"]),
    ("ix_transfers_to_card_id_created_at_id", "transfers", ["to_card_id", "created_at", "id"]),
    ("ix_withdrawals_card_id_created_at_id", "withdrawals", ["card_id", "created_at", "id"]),
)


def upgrade():
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns, unique=False)


def downgrade():
    for name, table, _columns in reversed(INDEXES):
        op.drop_index(name, table_name=table)
