"""Keyset indexes for the console's users and cards tables: both are listed newest first,
``(created_at, id) < (cursor)``, so a deep page reads as few index entries as the first.
(Merchants have had theirs since the merchants issue; roles are a short catalogue.)

Revision ID: 0025
Revises: 0024
"""

from alembic import op

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None


def upgrade():
    op.create_index("ix_users_created_at_id", "users", ["created_at", "id"])
    op.create_index("ix_cards_created_at_id", "cards", ["created_at", "id"])


def downgrade():
    op.drop_index("ix_cards_created_at_id", table_name="cards")
    op.drop_index("ix_users_created_at_id", table_name="users")
