"""Four-eyes balance adjustments (issue 14): ``adjustment_requests`` and the system account
``adjustments`` (one per currency) that takes the other leg of every manual credit or debit.

One administrator requests a credit or debit of a card's wallet or a merchant's balance (amount,
currency, reason, reference); it posts only when a second, different administrator approves.
The request row keeps who asked and who decided, and, once approved, the journal entry it posted
(``journal_entry_id``, unique: an approval posts once). CHECKs are the backstop of the rules the
service enforces: a request is approved by someone other than its requester, withdrawn only by
its requester, carries an entry exactly when approved, and names a card or a merchant (not both).

The ``adjustments`` account is a system account like ``funding``: no cached balance, never
locked; its balance is minus the sum of every adjustment ever posted.

Revision ID: 0024
Revises: 0023
"""

import sqlalchemy as sa
from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None

OLD_SYSTEM = "('funding', 'payouts', 'fees')"
NEW_SYSTEM = "('funding', 'payouts', 'fees', 'adjustments')"
CURRENCIES = (
    "AUD BHD BRL CAD CHF CLP CNY CZK DKK EUR GBP HKD HUF IDR ILS INR ISK JOD JPY KRW KWD MXN"
    " MYR NOK NZD OMR PHP PLN SAR SEK SGD THB TND TRY TWD UGX USD VND XAF XOF ZAR"
).split()


def _account_rules(system: str) -> None:
    op.drop_constraint(op.f("ck_accounts_kind"), "accounts", type_="check")
    op.drop_constraint(op.f("ck_accounts_balances"), "accounts", type_="check")
    op.drop_index("uq_accounts_system_kind_currency", table_name="accounts")
    kinds = system.strip("()")
    op.create_check_constraint(op.f("ck_accounts_kind"), "accounts", f"kind IN ('wallet', 'merchant', {kinds})")
    op.create_check_constraint(
        op.f("ck_accounts_balances"),
        "accounts",
        "(kind IN ('wallet', 'merchant') AND posted_minor IS NOT NULL"
        " AND pending_debits_minor IS NOT NULL AND pending_debits_minor >= 0"
        " AND posted_minor - pending_debits_minor >= 0)"
        f" OR (kind IN {system} AND posted_minor IS NULL AND pending_debits_minor IS NULL)",
    )
    op.create_index(
        "uq_accounts_system_kind_currency", "accounts", ["kind", "currency"], unique=True,
        postgresql_where=sa.text(f"kind IN {system}"),
    )  # fmt: skip


def upgrade():
    _account_rules(NEW_SYSTEM)
    accounts = sa.table("accounts", sa.column("kind"), sa.column("currency"))
    op.bulk_insert(accounts, [{"kind": "adjustments", "currency": c} for c in CURRENCIES])

    op.create_table(
        "adjustment_requests",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column(
            "public_id", sa.String(length=29),
            server_default=sa.text("portal_public_id('adj')"), nullable=False,
        ),  # fmt: skip
        sa.Column("card_id", sa.BigInteger(), nullable=True),
        sa.Column("merchant_id", sa.BigInteger(), nullable=True),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("direction", sa.String(length=8), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.CHAR(length=3), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("reference", sa.String(length=100), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="pending", nullable=False),
        sa.Column("requested_by", sa.BigInteger(), nullable=False),
        sa.Column("decided_by", sa.BigInteger(), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decision_reason", sa.String(length=500), nullable=True),
        sa.Column("journal_entry_id", sa.BigInteger(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
            nullable=False,
        ),  # fmt: skip
        sa.CheckConstraint("amount_minor > 0", name=op.f("ck_adjustment_requests_amount_positive")),
        sa.CheckConstraint(
            "direction IN ('credit', 'debit')", name=op.f("ck_adjustment_requests_direction")
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'approved', 'rejected', 'withdrawn')",
            name=op.f("ck_adjustment_requests_status"),
        ),
        sa.CheckConstraint(
            "(card_id IS NULL) <> (merchant_id IS NULL)", name=op.f("ck_adjustment_requests_target")
        ),
        sa.CheckConstraint(
            "(status = 'pending') = (decided_by IS NULL AND decided_at IS NULL)",
            name=op.f("ck_adjustment_requests_decided"),
        ),
        sa.CheckConstraint(
            "(status = 'approved') = (journal_entry_id IS NOT NULL)",
            name=op.f("ck_adjustment_requests_entry"),
        ),
        sa.CheckConstraint(
            "status <> 'approved' OR decided_by <> requested_by",
            name=op.f("ck_adjustment_requests_four_eyes"),
        ),
        sa.CheckConstraint(
            "status <> 'withdrawn' OR decided_by = requested_by",
            name=op.f("ck_adjustment_requests_withdrawn_by_requester"),
        ),
        sa.ForeignKeyConstraint(
            ["card_id"], ["cards.id"], name=op.f("fk_adjustment_requests_card_id_cards")
        ),
        sa.ForeignKeyConstraint(
            ["merchant_id"], ["merchants.id"],
            name=op.f("fk_adjustment_requests_merchant_id_merchants"),
        ),  # fmt: skip
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_adjustment_requests_account_id_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["requested_by"], ["users.id"], name=op.f("fk_adjustment_requests_requested_by_users")
        ),
        sa.ForeignKeyConstraint(
            ["decided_by"], ["users.id"], name=op.f("fk_adjustment_requests_decided_by_users")
        ),
        sa.ForeignKeyConstraint(
            ["journal_entry_id"], ["journal_entries.id"],
            name=op.f("fk_adjustment_requests_journal_entry_id_journal_entries"),
        ),  # fmt: skip
        sa.PrimaryKeyConstraint("id", name=op.f("pk_adjustment_requests")),
        sa.UniqueConstraint("public_id", name=op.f("uq_adjustment_requests_public_id")),
        sa.UniqueConstraint(
            "journal_entry_id", name=op.f("uq_adjustment_requests_journal_entry_id")
        ),
    )
    op.create_index(
        "ix_adjustment_requests_created_at_id", "adjustment_requests", ["created_at", "id"]
    )
    op.create_index(
        "ix_adjustment_requests_pending", "adjustment_requests", ["created_at", "id"],
        postgresql_where=sa.text("status = 'pending'"),
    )  # fmt: skip
    op.create_index("ix_adjustment_requests_account_id", "adjustment_requests", ["account_id"])


def downgrade():
    op.drop_table("adjustment_requests")
    op.execute("DELETE FROM accounts WHERE kind = 'adjustments'")
    _account_rules(OLD_SYSTEM)
