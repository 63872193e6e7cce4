"""Transfers addressed to a person (by email, @handle or a saved payee) rather than to a card
number: ``transfers.to_person``. The sender chose a person and never saw the card that
received the money, so their history shows the person (masked name) and nothing of that card;
a transfer to a card number the sender typed shows its brand and last four as before.

Revision ID: 0023
Revises: 0022
"""

import sqlalchemy as sa
from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column(
        "transfers",
        sa.Column("to_person", sa.Boolean(), nullable=False, server_default=sa.false()),
    )


def downgrade():
    op.drop_column("transfers", "to_person")
