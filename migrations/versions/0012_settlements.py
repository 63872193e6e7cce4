"""Settlements: balance transactions (``txn_``, one per movement on a merchant's balance, with
its fee, net and the day it becomes available), payouts (``po_``) to the merchant's bank
account (stored sealed, like a withdrawal's), and the demo processor's side of each request it
was asked to carry out (its idempotency keys).

Existing captured payments and refunds get their balance transactions here, available from the
day after their capture plus the default delay of two days, so a database that had payments
before this migration reconciles at once.

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def _created_at():
    return sa.Column(
        "created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
    )


def upgrade():
    with op.batch_alter_table("merchants") as batch_op:
        batch_op.add_column(sa.Column("bank_ciphertext", sa.LargeBinary(), nullable=True))
        batch_op.add_column(sa.Column("bank_key_version", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("bank_name", sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column("bank_account_last4", sa.String(length=4), nullable=True))
        batch_op.add_column(
            sa.Column("payouts_automatic", sa.Boolean(), server_default="true", nullable=False)
        )

    op.create_table(
        "payouts",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column(
            "public_id",
            sa.String(length=29),
            server_default=sa.text("portal_public_id('po')"),
            nullable=False,
        ),  # fmt: skip
        sa.Column("merchant_id", sa.BigInteger(), nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.CHAR(length=3), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="pending", nullable=False),
        sa.Column("automatic", sa.Boolean(), nullable=False),
        #: The UTC day a scheduled payout belongs to (one per merchant, currency and day).
        sa.Column("scheduled_for", sa.Date(), nullable=True),
        sa.Column("opening_balance_minor", sa.BigInteger(), nullable=False),
        sa.Column("bank_ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("bank_key_version", sa.Integer(), nullable=False),
        sa.Column("bank_name", sa.String(length=100), nullable=False),
        sa.Column("bank_account_last4", sa.String(length=4), nullable=False),
        sa.Column("journal_entry_id", sa.BigInteger(), nullable=False),
        sa.Column("failure_entry_id", sa.BigInteger(), nullable=True),
        sa.Column("failure_code", sa.String(length=64), nullable=True),
        sa.Column("processor_reference", sa.String(length=64), nullable=True),
        sa.Column("processing_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("description", sa.String(length=255), server_default="", nullable=False),
        sa.Column("created_by_kind", sa.String(length=16), nullable=False),
        sa.Column("created_by_id", sa.BigInteger(), nullable=True),
        _created_at(),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("paid_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("amount_minor > 0", name=op.f("ck_payouts_amount_positive")),
        sa.CheckConstraint(
            "status IN ('pending', 'processing', 'paid', 'failed')", name=op.f("ck_payouts_status")
        ),
        sa.CheckConstraint(
            "(status = 'failed') = (failure_entry_id IS NOT NULL)",
            name=op.f("ck_payouts_failure_entry"),
        ),
        sa.CheckConstraint(
            "automatic OR scheduled_for IS NULL", name=op.f("ck_payouts_scheduled_automatic")
        ),
        sa.ForeignKeyConstraint(
            ["merchant_id"], ["merchants.id"], name=op.f("fk_payouts_merchant_id_merchants")
        ),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_payouts_account_id_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["journal_entry_id"],
            ["journal_entries.id"],
            name=op.f("fk_payouts_journal_entry_id_journal_entries"),
        ),  # fmt: skip
        sa.ForeignKeyConstraint(
            ["failure_entry_id"],
            ["journal_entries.id"],
            name=op.f("fk_payouts_failure_entry_id_journal_entries"),
        ),  # fmt: skip
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payouts")),
        sa.UniqueConstraint("public_id", name=op.f("uq_payouts_public_id")),
    )
    op.create_index(
        "ix_payouts_merchant_created_at_id", "payouts", ["merchant_id", "created_at", "id"]
    )
    op.create_index(
        "uq_payouts_scheduled", "payouts", ["merchant_id", "currency", "scheduled_for"],
        unique=True, postgresql_where=sa.text("scheduled_for IS NOT NULL"),
    )  # fmt: skip
    op.create_index(
        "ix_payouts_open", "payouts", ["created_at"],
        postgresql_where=sa.text("status IN ('pending', 'processing')"),
    )  # fmt: skip

    op.create_table(
        "balance_transactions",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column(
            "public_id",
            sa.String(length=29),
            server_default=sa.text("portal_public_id('txn')"),
            nullable=False,
        ),  # fmt: skip
        sa.Column("merchant_id", sa.BigInteger(), nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.CHAR(length=3), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        #: Signed, as the merchant sees it: what the customer paid, or what left the balance.
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("fee_minor", sa.BigInteger(), server_default="0", nullable=False),
        #: amount - fee: exactly this transaction's posting on the merchant's balance account.
        sa.Column("net_minor", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("available_on", sa.DateTime(timezone=True), nullable=False),
        sa.Column("journal_entry_id", sa.BigInteger(), nullable=False),
        sa.Column("payment_id", sa.BigInteger(), nullable=True),
        sa.Column("refund_id", sa.BigInteger(), nullable=True),
        #: The payout that paid this transaction out (for type payout: the payout itself).
        sa.Column("payout_id", sa.BigInteger(), nullable=True),
        #: For payout and payout_failure: the payout that moved the money.
        sa.Column("source_payout_id", sa.BigInteger(), nullable=True),
        sa.Column("description", sa.String(length=255), server_default="", nullable=False),
        _created_at(),
        sa.CheckConstraint(
            "type IN ('payment', 'refund', 'fee', 'adjustment', 'payout', 'payout_failure')",
            name=op.f("ck_balance_transactions_type"),
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'available')", name=op.f("ck_balance_transactions_status")
        ),
        sa.CheckConstraint(
            "net_minor = amount_minor - fee_minor AND fee_minor >= 0",
            name=op.f("ck_balance_transactions_net"),
        ),
        sa.CheckConstraint(
            "(type = 'payment') = (payment_id IS NOT NULL AND refund_id IS NULL)"
            " AND (type = 'refund') = (refund_id IS NOT NULL)"
            " AND (type IN ('payout', 'payout_failure')) = (source_payout_id IS NOT NULL)",
            name=op.f("ck_balance_transactions_source"),
        ),
        sa.CheckConstraint(
            "type <> 'payout' OR payout_id = source_payout_id",
            name=op.f("ck_balance_transactions_payout_own"),
        ),
        sa.ForeignKeyConstraint(
            ["merchant_id"],
            ["merchants.id"],
            name=op.f("fk_balance_transactions_merchant_id_merchants"),
        ),  # fmt: skip
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_balance_transactions_account_id_accounts"),
        ),
        sa.ForeignKeyConstraint(
            ["journal_entry_id"],
            ["journal_entries.id"],
            name=op.f("fk_balance_transactions_journal_entry_id_journal_entries"),
        ),  # fmt: skip
        sa.ForeignKeyConstraint(
            ["payment_id"],
            ["payments.id"],
            name=op.f("fk_balance_transactions_payment_id_payments"),
        ),
        sa.ForeignKeyConstraint(
            ["refund_id"], ["refunds.id"], name=op.f("fk_balance_transactions_refund_id_refunds")
        ),
        sa.ForeignKeyConstraint(
            ["payout_id"], ["payouts.id"], name=op.f("fk_balance_transactions_payout_id_payouts")
        ),
        sa.ForeignKeyConstraint(
            ["source_payout_id"],
            ["payouts.id"],
            name=op.f("fk_balance_transactions_source_payout_id_payouts"),
        ),  # fmt: skip
        sa.PrimaryKeyConstraint("id", name=op.f("pk_balance_transactions")),
        sa.UniqueConstraint("public_id", name=op.f("uq_balance_transactions_public_id")),
        # One journal entry touches a merchant's balance once, so it makes one transaction.
        sa.UniqueConstraint(
            "journal_entry_id", name=op.f("uq_balance_transactions_journal_entry_id")
        ),
    )
    op.create_index(
        "ix_balance_transactions_merchant_created_at_id", "balance_transactions",
        ["merchant_id", "created_at", "id"],
    )  # fmt: skip
    op.create_index("ix_balance_transactions_payout_id", "balance_transactions", ["payout_id"])
    op.create_index(
        "ix_balance_transactions_unpaid", "balance_transactions", ["account_id", "status"],
        postgresql_where=sa.text("payout_id IS NULL"),
    )  # fmt: skip
    op.create_index(
        "ix_balance_transactions_pending", "balance_transactions", ["available_on"],
        postgresql_where=sa.text("status = 'pending'"),
    )  # fmt: skip

    op.create_table(
        "demo_processor_requests",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("idempotency_key", sa.String(length=64), nullable=False),
        sa.Column("operation", sa.String(length=16), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.CHAR(length=3), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("reference", sa.String(length=64), nullable=True),
        sa.Column("decline_code", sa.String(length=64), nullable=True),
        _created_at(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_demo_processor_requests")),
        sa.UniqueConstraint(
            "idempotency_key", name=op.f("uq_demo_processor_requests_idempotency_key")
        ),
    )

    # Balance transactions for what is on merchants' balances already.
    op.execute(
        """
        INSERT INTO balance_transactions (merchant_id, account_id, currency, type, amount_minor,
            fee_minor, net_minor, status, available_on, journal_entry_id, payment_id,
            description, created_at)
        SELECT p.merchant_id, a.id, p.currency, 'payment', p.received_minor, p.fee_minor,
               p.received_minor - p.fee_minor,
               CASE WHEN date_trunc('day', p.captured_at AT TIME ZONE 'UTC') + interval '3 days'
                         <= now() AT TIME ZONE 'UTC' THEN 'available' ELSE 'pending' END,
               (date_trunc('day', p.captured_at AT TIME ZONE 'UTC') + interval '3 days')
                   AT TIME ZONE 'UTC',
               p.capture_entry_id, p.id, 'payment ' || p.public_id, p.captured_at
        FROM payments p JOIN accounts a
          ON a.merchant_id = p.merchant_id AND a.currency = p.currency AND a.kind = 'merchant'
        WHERE p.capture_entry_id IS NOT NULL
        """
    )
    op.execute(
        """
        INSERT INTO balance_transactions (merchant_id, account_id, currency, type, amount_minor,
            fee_minor, net_minor, status, available_on, journal_entry_id, payment_id, refund_id,
            description, created_at)
        SELECT r.merchant_id, a.id, r.currency, 'refund', -r.amount_minor, 0, -r.amount_minor,
               'available', r.created_at, r.journal_entry_id, r.payment_id, r.id,
               'refund ' || r.public_id, r.created_at
        FROM refunds r JOIN accounts a
          ON a.merchant_id = r.merchant_id AND a.currency = r.currency AND a.kind = 'merchant'
        WHERE r.journal_entry_id IS NOT NULL
        """
    )


def downgrade():
    op.drop_table("demo_processor_requests")
    op.drop_table("balance_transactions")
    op.drop_table("payouts")
    with op.batch_alter_table("merchants") as batch_op:
        for column in (
            "payouts_automatic", "bank_account_last4", "bank_name", "bank_key_version",
            "bank_ciphertext",
        ):  # fmt: skip
            batch_op.drop_column(column)
