"""Merchants and payments: merchants with their applications and fees, members and invitations,
API keys stored as HMACs, payments shaped like Stripe's PaymentIntents, refunds and hosted
checkout sessions, every one with a public id. A merchant has one balance account per currency
it is paid in. The tables 0001 made for these held nothing yet: they are rebuilt.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def _drop_merchant_tables(tables):
    for table in tables:
        op.drop_table(table)


def upgrade():
    _drop_merchant_tables(["refunds", "payments", "api_keys"])
    op.drop_constraint("fk_accounts_merchant_id_merchants", "accounts", type_="foreignkey")
    op.drop_constraint("uq_accounts_merchant_id", "accounts", type_="unique")
    op.drop_table("merchants")
    op.create_table(
        "merchants",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column(
            "public_id",
            sa.String(length=29),
            server_default=sa.text("portal_public_id('mch')"),
            nullable=False,
        ),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.String(length=120), nullable=False),
        sa.Column("website", sa.String(length=255), nullable=False),
        sa.Column("contact_email", sa.String(length=254), nullable=False),
        sa.Column("settlement_currency", sa.CHAR(length=3), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="pending", nullable=False),
        sa.Column("fee_bps", sa.Integer(), nullable=True),
        sa.Column("fee_fixed", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("status_reason", sa.String(length=255), server_default="", nullable=False),
        sa.Column("reviewed_by_id", sa.BigInteger(), nullable=True),
        sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("archived_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'active', 'rejected', 'suspended')",
            name=op.f("ck_merchants_status"),
        ),
        sa.CheckConstraint(
            "fee_bps IS NULL OR fee_bps BETWEEN 0 AND 10000", name=op.f("ck_merchants_fee_bps")
        ),
        sa.ForeignKeyConstraint(
            ["reviewed_by_id"], ["users.id"], name=op.f("fk_merchants_reviewed_by_id_users")
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_merchants_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_merchants")),
        sa.UniqueConstraint("public_id", name=op.f("uq_merchants_public_id")),
    )
    with op.batch_alter_table("merchants", schema=None) as batch_op:
        batch_op.create_index("ix_merchants_created_at_id", ["created_at", "id"], unique=False)
        batch_op.create_index(batch_op.f("ix_merchants_user_id"), ["user_id"], unique=False)

    op.create_table(
        "merchant_members",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column(
            "public_id",
            sa.String(length=29),
            server_default=sa.text("portal_public_id('mem')"),
            nullable=False,
        ),
        sa.Column("merchant_id", sa.BigInteger(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "role IN ('owner', 'developer', 'viewer')", name=op.f("ck_merchant_members_role")
        ),
        sa.ForeignKeyConstraint(
            ["merchant_id"],
            ["merchants.id"],
            name=op.f("fk_merchant_members_merchant_id_merchants"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_merchant_members_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_merchant_members")),
        sa.UniqueConstraint("merchant_id", "user_id", name="uq_merchant_members_merchant_user"),
        sa.UniqueConstraint("public_id", name=op.f("uq_merchant_members_public_id")),
    )
    with op.batch_alter_table("merchant_members", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_merchant_members_merchant_id"), ["merchant_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_merchant_members_user_id"), ["user_id"], unique=False)

    op.create_table(
        "merchant_invitations",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column(
            "public_id",
            sa.String(length=29),
            server_default=sa.text("portal_public_id('inv')"),
            nullable=False,
        ),
        sa.Column("merchant_id", sa.BigInteger(), nullable=False),
        sa.Column("email", sa.String(length=254), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("token_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("invited_by_id", sa.BigInteger(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("accepted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "role IN ('owner', 'developer', 'viewer')", name=op.f("ck_merchant_invitations_role")
        ),
        sa.ForeignKeyConstraint(
            ["invited_by_id"],
            ["users.id"],
            name=op.f("fk_merchant_invitations_invited_by_id_users"),
        ),
        sa.ForeignKeyConstraint(
            ["merchant_id"],
            ["merchants.id"],
            name=op.f("fk_merchant_invitations_merchant_id_merchants"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_merchant_invitations")),
        sa.UniqueConstraint("public_id", name=op.f("uq_merchant_invitations_public_id")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_merchant_invitations_token_hash")),
    )
    with op.batch_alter_table("merchant_invitations", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_merchant_invitations_merchant_id"), ["merchant_id"], unique=False
        )
        batch_op.create_index(
            "uq_merchant_invitations_open",
            ["merchant_id", "email"],
            unique=True,
            postgresql_where=sa.text("accepted_at IS NULL AND revoked_at IS NULL"),
        )

    op.create_table(
        "api_keys",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column(
            "public_id",
            sa.String(length=29),
            server_default=sa.text("portal_public_id('key')"),
            nullable=False,
        ),
        sa.Column("merchant_id", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=32), nullable=False),
        sa.Column("last4", sa.CHAR(length=4), nullable=False),
        sa.Column("key_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("scopes", sa.ARRAY(sa.String(length=32)), nullable=False),
        sa.Column("created_by_id", sa.BigInteger(), nullable=True),
        sa.Column("rolled_from_id", sa.BigInteger(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_ip", sa.String(length=64), server_default="", nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["created_by_id"], ["users.id"], name=op.f("fk_api_keys_created_by_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["merchant_id"], ["merchants.id"], name=op.f("fk_api_keys_merchant_id_merchants")
        ),
        sa.ForeignKeyConstraint(
            ["rolled_from_id"], ["api_keys.id"], name=op.f("fk_api_keys_rolled_from_id_api_keys")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
        sa.UniqueConstraint("public_id", name=op.f("uq_api_keys_public_id")),
    )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.create_index(
            "ix_api_keys_merchant_id_created_at", ["merchant_id", "created_at"], unique=False
        )

    op.create_table(
        "payments",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column(
            "public_id",
            sa.String(length=29),
            server_default=sa.text("portal_public_id('pay')"),
            nullable=False,
        ),
        sa.Column("merchant_id", sa.BigInteger(), nullable=False),
        sa.Column("card_id", sa.BigInteger(), nullable=True),
        sa.Column("api_key_id", sa.BigInteger(), nullable=True),
        sa.Column("checkout_session_id", sa.BigInteger(), nullable=True),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("received_minor", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("refunded_minor", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("fee_minor", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("currency", sa.CHAR(length=3), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("capture_method", sa.String(length=16), nullable=False),
        sa.Column("cancellation_reason", sa.String(length=32), nullable=True),
        sa.Column("last_payment_error", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("card_brand", sa.String(length=16), nullable=False),
        sa.Column("card_last4", sa.CHAR(length=4), nullable=False),
        sa.Column("card_fingerprint", sa.String(length=32), nullable=False),
        sa.Column("hold_id", sa.BigInteger(), nullable=True),
        sa.Column("capture_entry_id", sa.BigInteger(), nullable=True),
        sa.Column("description", sa.String(length=1000), server_default="", nullable=False),
        sa.Column(
            "metadata", postgresql.JSONB(astext_type=sa.Text()), server_default="{}", nullable=False
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("captured_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("canceled_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "cancellation_reason IS NULL OR cancellation_reason IN ('duplicate', 'fraudulent', 'requested_by_customer', 'abandoned', 'expired')",
            name=op.f("ck_payments_cancellation_reason"),
        ),
        sa.CheckConstraint(
            "capture_method IN ('automatic', 'manual')", name=op.f("ck_payments_capture_method")
        ),
        sa.CheckConstraint(
            "status IN ('requires_payment_method', 'requires_capture', 'succeeded', 'canceled')",
            name=op.f("ck_payments_status"),
        ),
        sa.CheckConstraint("amount_minor > 0", name=op.f("ck_payments_amount_positive")),
        sa.CheckConstraint(
            "fee_minor >= 0 AND fee_minor <= received_minor", name=op.f("ck_payments_fee")
        ),
        sa.CheckConstraint(
            "received_minor >= 0 AND received_minor <= amount_minor",
            name=op.f("ck_payments_received"),
        ),
        sa.CheckConstraint(
            "refunded_minor >= 0 AND refunded_minor <= received_minor",
            name=op.f("ck_payments_refunded"),
        ),
        sa.ForeignKeyConstraint(
            ["api_key_id"], ["api_keys.id"], name=op.f("fk_payments_api_key_id_api_keys")
        ),
        sa.ForeignKeyConstraint(
            ["capture_entry_id"],
            ["journal_entries.id"],
            name=op.f("fk_payments_capture_entry_id_journal_entries"),
        ),
        sa.ForeignKeyConstraint(["card_id"], ["cards.id"], name=op.f("fk_payments_card_id_cards")),
        sa.ForeignKeyConstraint(["hold_id"], ["holds.id"], name=op.f("fk_payments_hold_id_holds")),
        sa.ForeignKeyConstraint(
            ["merchant_id"], ["merchants.id"], name=op.f("fk_payments_merchant_id_merchants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payments")),
        sa.UniqueConstraint("public_id", name=op.f("uq_payments_public_id")),
    )
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_payments_api_key_id"), ["api_key_id"], unique=False)
        batch_op.create_index(
            "ix_payments_card_created_at_id", ["card_id", "created_at", "id"], unique=False
        )
        batch_op.create_index(
            "ix_payments_merchant_created_at_id", ["merchant_id", "created_at", "id"], unique=False
        )
        batch_op.create_index(
            "ix_payments_merchant_fingerprint", ["merchant_id", "card_fingerprint"], unique=False
        )
        batch_op.create_index(
            "ix_payments_cvc_failures_card",
            ["card_id", "created_at"],
            unique=False,
            postgresql_where=sa.text("(last_payment_error ->> 'decline_code') = 'incorrect_cvc'"),
        )
        batch_op.create_index(
            "ix_payments_guesses_key",
            ["api_key_id", "created_at"],
            unique=False,
            postgresql_where=sa.text(
                "(last_payment_error ->> 'decline_code') IN ('incorrect_cvc', 'incorrect_number')"
            ),
        )
        batch_op.create_index(
            "ix_payments_merchant_uncaptured",
            ["merchant_id"],
            unique=False,
            postgresql_where=sa.text("status = 'requires_capture'"),
        )
        batch_op.create_index(
            "ix_payments_uncaptured_created_at",
            ["created_at"],
            unique=False,
            postgresql_where=sa.text("status = 'requires_capture'"),
        )

    op.create_table(
        "checkout_sessions",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column(
            "public_id",
            sa.String(length=29),
            server_default=sa.text("portal_public_id('cs')"),
            nullable=False,
        ),
        sa.Column("merchant_id", sa.BigInteger(), nullable=False),
        sa.Column("api_key_id", sa.BigInteger(), nullable=True),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.CHAR(length=3), nullable=False),
        sa.Column("description", sa.String(length=255), server_default="", nullable=False),
        sa.Column("success_url", sa.String(length=2048), nullable=False),
        sa.Column("cancel_url", sa.String(length=2048), nullable=False),
        sa.Column("client_reference_id", sa.String(length=200), nullable=True),
        sa.Column("capture_method", sa.String(length=16), nullable=False),
        sa.Column(
            "metadata", postgresql.JSONB(astext_type=sa.Text()), server_default="{}", nullable=False
        ),
        sa.Column("status", sa.String(length=16), server_default="open", nullable=False),
        sa.Column("payment_id", sa.BigInteger(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "capture_method IN ('automatic', 'manual')",
            name=op.f("ck_checkout_sessions_capture_method"),
        ),
        sa.CheckConstraint(
            "status IN ('open', 'complete', 'expired')", name=op.f("ck_checkout_sessions_status")
        ),
        sa.CheckConstraint("amount_minor > 0", name=op.f("ck_checkout_sessions_amount_positive")),
        sa.ForeignKeyConstraint(
            ["api_key_id"], ["api_keys.id"], name=op.f("fk_checkout_sessions_api_key_id_api_keys")
        ),
        sa.ForeignKeyConstraint(
            ["merchant_id"],
            ["merchants.id"],
            name=op.f("fk_checkout_sessions_merchant_id_merchants"),
        ),
        sa.ForeignKeyConstraint(
            ["payment_id"], ["payments.id"], name=op.f("fk_checkout_sessions_payment_id_payments")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_checkout_sessions")),
        sa.UniqueConstraint("payment_id", name=op.f("uq_checkout_sessions_payment_id")),
        sa.UniqueConstraint("public_id", name=op.f("uq_checkout_sessions_public_id")),
    )
    with op.batch_alter_table("checkout_sessions", schema=None) as batch_op:
        batch_op.create_index(
            "ix_checkout_sessions_merchant_created_at_id",
            ["merchant_id", "created_at", "id"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_checkout_sessions_merchant_id"), ["merchant_id"], unique=False
        )
        batch_op.create_index(
            "ix_checkout_sessions_open_expires_at",
            ["expires_at"],
            unique=False,
            postgresql_where=sa.text("status = 'open'"),
        )

    op.create_table(
        "refunds",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column(
            "public_id",
            sa.String(length=29),
            server_default=sa.text("portal_public_id('re')"),
            nullable=False,
        ),
        sa.Column("payment_id", sa.BigInteger(), nullable=False),
        sa.Column("merchant_id", sa.BigInteger(), nullable=False),
        sa.Column("card_id", sa.BigInteger(), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.CHAR(length=3), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("failure_reason", sa.String(length=64), nullable=True),
        sa.Column("journal_entry_id", sa.BigInteger(), nullable=True),
        sa.Column("api_key_id", sa.BigInteger(), nullable=True),
        sa.Column(
            "metadata", postgresql.JSONB(astext_type=sa.Text()), server_default="{}", nullable=False
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "reason IS NULL OR reason IN ('duplicate', 'fraudulent', 'requested_by_customer')",
            name=op.f("ck_refunds_reason"),
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'succeeded', 'failed')", name=op.f("ck_refunds_status")
        ),
        sa.CheckConstraint("amount_minor > 0", name=op.f("ck_refunds_amount_positive")),
        sa.ForeignKeyConstraint(
            ["api_key_id"], ["api_keys.id"], name=op.f("fk_refunds_api_key_id_api_keys")
        ),
        sa.ForeignKeyConstraint(
            ["card_id"], ["cards.id"], name=op.f("fk_refunds_card_id_cards")
        ),
        sa.ForeignKeyConstraint(
            ["journal_entry_id"],
            ["journal_entries.id"],
            name=op.f("fk_refunds_journal_entry_id_journal_entries"),
        ),
        sa.ForeignKeyConstraint(
            ["merchant_id"], ["merchants.id"], name=op.f("fk_refunds_merchant_id_merchants")
        ),
        sa.ForeignKeyConstraint(
            ["payment_id"], ["payments.id"], name=op.f("fk_refunds_payment_id_payments")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_refunds")),
        sa.UniqueConstraint("public_id", name=op.f("uq_refunds_public_id")),
    )
    with op.batch_alter_table("refunds", schema=None) as batch_op:
        batch_op.create_index(
            "ix_refunds_merchant_created_at_id", ["merchant_id", "created_at", "id"], unique=False
        )
        batch_op.create_index(
            "ix_refunds_card_id_created_at_id", ["card_id", "created_at", "id"], unique=False
        )
        batch_op.create_index(
            "ix_refunds_payment_id_created_at_id", ["payment_id", "created_at", "id"], unique=False
        )

    # ### end Alembic commands ###

    op.create_foreign_key(
        "fk_accounts_merchant_id_merchants", "accounts", "merchants", ["merchant_id"], ["id"]
    )
    op.create_unique_constraint(
        "uq_accounts_merchant_id_currency", "accounts", ["merchant_id", "currency"]
    )


def downgrade():
    _drop_merchant_tables(
        [
            "refunds",
            "checkout_sessions",
            "payments",
            "api_keys",
            "merchant_invitations",
            "merchant_members",
        ]
    )
    op.drop_constraint("fk_accounts_merchant_id_merchants", "accounts", type_="foreignkey")
    op.drop_constraint("uq_accounts_merchant_id_currency", "accounts", type_="unique")
    op.drop_table("merchants")
    op.create_table(
        "merchants",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.String(length=120), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="pending", nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("archived_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'approved', 'rejected', 'suspended')",
            name=op.f("ck_merchants_status"),
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_merchants_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_merchants")),
    )
    with op.batch_alter_table("merchants", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_merchants_user_id"), ["user_id"], unique=False)

    op.create_table(
        "api_keys",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("merchant_id", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.String(length=64), server_default="", nullable=False),
        sa.Column("prefix", sa.String(length=32), nullable=False),
        sa.Column("key_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("mode", sa.String(length=8), nullable=False),
        sa.Column("scopes", sa.ARRAY(sa.String(length=64)), server_default="{}", nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("mode IN ('test', 'live')", name=op.f("ck_api_keys_mode")),
        sa.ForeignKeyConstraint(
            ["merchant_id"], ["merchants.id"], name=op.f("fk_api_keys_merchant_id_merchants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
        sa.UniqueConstraint("prefix", name=op.f("uq_api_keys_prefix")),
    )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_keys_merchant_id"), ["merchant_id"], unique=False)

    op.create_table(
        "payments",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("merchant_id", sa.BigInteger(), nullable=False),
        sa.Column("card_id", sa.BigInteger(), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("captured_minor", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("refunded_minor", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("currency", sa.CHAR(length=3), nullable=False),
        sa.Column("status", sa.String(length=24), nullable=False),
        sa.Column("failure_code", sa.String(length=64), nullable=True),
        sa.Column("hold_id", sa.BigInteger(), nullable=True),
        sa.Column("description", sa.String(length=255), server_default="", nullable=False),
        sa.Column("livemode", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "status IN ('authorized', 'captured', 'voided', 'expired', 'failed', 'partially_refunded', 'refunded')",
            name=op.f("ck_payments_status"),
        ),
        sa.CheckConstraint("amount_minor > 0", name=op.f("ck_payments_amount_positive")),
        sa.CheckConstraint(
            "captured_minor >= 0 AND captured_minor <= amount_minor",
            name=op.f("ck_payments_captured"),
        ),
        sa.CheckConstraint(
            "refunded_minor >= 0 AND refunded_minor <= captured_minor",
            name=op.f("ck_payments_refunded"),
        ),
        sa.ForeignKeyConstraint(["card_id"], ["cards.id"], name=op.f("fk_payments_card_id_cards")),
        sa.ForeignKeyConstraint(["hold_id"], ["holds.id"], name=op.f("fk_payments_hold_id_holds")),
        sa.ForeignKeyConstraint(
            ["merchant_id"], ["merchants.id"], name=op.f("fk_payments_merchant_id_merchants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payments")),
    )
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_payments_card_id"), ["card_id"], unique=False)
        batch_op.create_index(
            "ix_payments_merchant_created_at_id", ["merchant_id", "created_at", "id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_payments_merchant_id"), ["merchant_id"], unique=False)

    op.create_table(
        "refunds",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("payment_id", sa.BigInteger(), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.CHAR(length=3), nullable=False),
        sa.Column("reason", sa.String(length=32), server_default="", nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("journal_entry_id", sa.BigInteger(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'succeeded', 'failed')", name=op.f("ck_refunds_status")
        ),
        sa.CheckConstraint("amount_minor > 0", name=op.f("ck_refunds_amount_positive")),
        sa.ForeignKeyConstraint(
            ["journal_entry_id"],
            ["journal_entries.id"],
            name=op.f("fk_refunds_journal_entry_id_journal_entries"),
        ),
        sa.ForeignKeyConstraint(
            ["payment_id"], ["payments.id"], name=op.f("fk_refunds_payment_id_payments")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_refunds")),
    )
    with op.batch_alter_table("refunds", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_refunds_payment_id"), ["payment_id"], unique=False)

    # ### end Alembic commands ###

    op.create_foreign_key(
        "fk_accounts_merchant_id_merchants", "accounts", "merchants", ["merchant_id"], ["id"]
    )
    op.create_unique_constraint("uq_accounts_merchant_id", "accounts", ["merchant_id"])
