"""Pay people, not card numbers (issue 13): a chosen ``@handle`` on users (shown as typed, NFKC;
found by ``handle_canonical``, NFKC then case folding, unique), each person's default receiving
card per currency (``receiving_cards``; without a row the first active card of the currency
receives), and saved payees (``payees``: starred, or made when a person paid recently is
listed; ``pye_...`` public ids).

Revision ID: 0020
Revises: 0019
"""

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("users", sa.Column("handle", sa.String(30), nullable=True))
    op.add_column("users", sa.Column("handle_canonical", sa.String(60), nullable=True))
    op.create_index("uq_users_handle_canonical", "users", ["handle_canonical"], unique=True)
    op.create_check_constraint(
        op.f("ck_users_handle_pair"), "users", "(handle IS NULL) = (handle_canonical IS NULL)"
    )
    op.create_table(
        "receiving_cards",
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.CHAR(3), nullable=False),
        sa.Column("card_id", sa.BigInteger(), nullable=False),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_receiving_cards_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["card_id"],
            ["cards.id"],
            name=op.f("fk_receiving_cards_card_id_cards"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", "currency", name=op.f("pk_receiving_cards")),
    )
    op.create_index("ix_receiving_cards_card_id", "receiving_cards", ["card_id"])
    op.create_table(
        "payees",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column(
            "public_id",
            sa.String(29),
            server_default=sa.text("portal_public_id('pye')"),
            nullable=False,
        ),
        sa.Column("owner_id", sa.BigInteger(), nullable=False),
        sa.Column("payee_id", sa.BigInteger(), nullable=False),
        sa.Column("starred", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.CheckConstraint("owner_id <> payee_id", name=op.f("ck_payees_not_self")),
        sa.ForeignKeyConstraint(
            ["owner_id"], ["users.id"], name=op.f("fk_payees_owner_id_users"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["payee_id"], ["users.id"], name=op.f("fk_payees_payee_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payees")),
        sa.UniqueConstraint("public_id", name=op.f("uq_payees_public_id")),
        sa.UniqueConstraint("owner_id", "payee_id", name=op.f("uq_payees_owner_id")),
    )
    op.create_index("ix_payees_payee_id", "payees", ["payee_id"])


def downgrade():
    op.drop_index("ix_payees_payee_id", table_name="payees")
    op.drop_table("payees")
    op.drop_index("ix_receiving_cards_card_id", table_name="receiving_cards")
    op.drop_table("receiving_cards")
    op.drop_constraint(op.f("ck_users_handle_pair"), "users", type_="check")
    op.drop_index("uq_users_handle_canonical", table_name="users")
    op.drop_column("users", "handle_canonical")
    op.drop_column("users", "handle")
