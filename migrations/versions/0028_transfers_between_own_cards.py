"""``transfers.between_own_cards``: whether both cards belong to the same person, set by the
database when the transfer is written (a BEFORE INSERT trigger reads the two cards' owners; a
card never changes owner), with a partial index for the history's incoming branch. A
cardholder's history shows such a transfer once, as money going out of the sending card; the
incoming branch skips them by this flag inside the index instead of walking every one of them.

Revision ID: 0028
Revises: 0027
"""

import sqlalchemy as sa
from alembic import op

revision = "0028"
down_revision = "0027"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column(
        "transfers",
        sa.Column("between_own_cards", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.execute(
        "UPDATE transfers t SET between_own_cards = true FROM cards f, cards c"
        " WHERE f.id = t.from_card_id AND c.id = t.to_card_id AND f.user_id = c.user_id"
    )
    op.execute(
        """
        CREATE FUNCTION transfers_between_own_cards() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            NEW.between_own_cards := COALESCE((
                SELECT f.user_id = c.user_id FROM cards f, cards c
                 WHERE f.id = NEW.from_card_id AND c.id = NEW.to_card_id), false);
            RETURN NEW;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER transfers_between_own_cards BEFORE INSERT ON transfers"
        " FOR EACH ROW EXECUTE FUNCTION transfers_between_own_cards()"
    )
    op.create_index(
        "ix_transfers_incoming_from_others",
        "transfers",
        ["to_card_id", "created_at", "id"],
        postgresql_where=sa.text("status = 'succeeded' AND NOT between_own_cards"),
    )


def downgrade():
    op.drop_index("ix_transfers_incoming_from_others", table_name="transfers")
    op.execute("DROP TRIGGER transfers_between_own_cards ON transfers")
    op.execute("DROP FUNCTION transfers_between_own_cards()")
    op.drop_column("transfers", "between_own_cards")
