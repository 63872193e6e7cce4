"""Cards, accounts and the double-entry journal (entries, postings, holds).

Sign convention: a posting's ``amount_minor`` is positive for a credit (money into the account)
and negative for a debit. A customer account's posted balance is the sum of its postings; the
postings of one journal entry sum to zero per currency (enforced by a deferred trigger).
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from portal.models.base import (
    Base,
    currency_column,
    fk_column,
    money_column,
    now_column,
    pk_column,
    public_id_column,
)

CUSTOMER_ACCOUNT_KINDS = ("wallet", "merchant")
SYSTEM_ACCOUNT_KINDS = ("funding", "payouts", "fees", "adjustments")


class Card(Base):
    __tablename__ = "cards"
    __table_args__ = (
        sa.Index("ix_cards_created_at_id", "created_at", "id"),
        sa.CheckConstraint("card_type IN ('debit', 'credit', 'prepaid')", name="card_type"),
        sa.CheckConstraint("brand IN ('visa', 'mastercard', 'amex', 'discover')", name="brand"),
        sa.CheckConstraint("status IN ('active', 'frozen')", name="status"),
        sa.CheckConstraint("expiry_month BETWEEN 1 AND 12", name="expiry_month"),
        sa.CheckConstraint("last4 ~ '^[0-9]{4}$'", name="last4"),
    )

    id: Mapped[int] = pk_column()
    public_id: Mapped[str] = public_id_column("card")
    user_id: Mapped[int] = fk_column("users.id")
    name: Mapped[str] = mapped_column(sa.String(64), nullable=False, server_default="")
    card_type: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    brand: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    last4: Mapped[str] = mapped_column(sa.CHAR(4), nullable=False)
    #: AES-GCM(nonce || ciphertext) of the full number under vault key ``key_version``.
    pan_ciphertext: Mapped[bytes] = mapped_column(sa.LargeBinary, nullable=False)
    key_version: Mapped[int] = mapped_column(sa.SmallInteger, nullable=False)
    #: Sealed bound to this row's public id (false: a legacy blob bound to its purpose only).
    pan_bound: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, server_default=sa.false())
    #: Keyed HMAC-SHA256 of the number, for look-ups without decrypting.
    fingerprint: Mapped[bytes] = mapped_column(sa.LargeBinary(32), nullable=False, unique=True)
    expiry_month: Mapped[int] = mapped_column(sa.SmallInteger, nullable=False)
    expiry_year: Mapped[int] = mapped_column(sa.SmallInteger, nullable=False)
    currency: Mapped[str] = currency_column()
    status: Mapped[str] = mapped_column(sa.String(16), nullable=False, server_default="active")
    created_at: Mapped[datetime] = now_column()
    updated_at: Mapped[datetime] = now_column()
    archived_at: Mapped[datetime | None]


class Account(Base):
    """A ledger account. Customer accounts (wallet, merchant) carry cached balances updated in
    the same transaction as their postings; system accounts carry none (derived from postings)
    and are never locked, so they never serialise movements."""

    __tablename__ = "accounts"
    __table_args__ = (
        sa.UniqueConstraint("id", "currency", name="uq_accounts_id_currency"),
        sa.UniqueConstraint("merchant_id", "currency", name="uq_accounts_merchant_id_currency"),
        sa.CheckConstraint(
            "kind IN ('wallet', 'merchant', 'funding', 'payouts', 'fees', 'adjustments')",
            name="kind",
        ),
        sa.CheckConstraint(
            "(kind IN ('wallet', 'merchant') AND posted_minor IS NOT NULL"
            " AND pending_debits_minor IS NOT NULL AND pending_debits_minor >= 0"
            " AND posted_minor - pending_debits_minor >= 0)"
            " OR (kind IN ('funding', 'payouts', 'fees', 'adjustments') AND posted_minor IS NULL"
            " AND pending_debits_minor IS NULL)",
            name="balances",
        ),
        sa.CheckConstraint(
            "(kind = 'wallet') = (card_id IS NOT NULL)"
            " AND (kind = 'merchant') = (merchant_id IS NOT NULL)",
            name="owner",
        ),
        sa.Index(
            "uq_accounts_system_kind_currency",
            "kind",
            "currency",
            unique=True,
            postgresql_where=sa.text("kind IN ('funding', 'payouts', 'fees', 'adjustments')"),
        ),
    )

    id: Mapped[int] = pk_column()
    kind: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    card_id: Mapped[int | None] = mapped_column(
        sa.BigInteger, sa.ForeignKey("cards.id"), unique=True
    )
    #: A merchant has one balance account per currency it has been paid in.
    merchant_id: Mapped[int | None] = mapped_column(sa.BigInteger, sa.ForeignKey("merchants.id"))
    currency: Mapped[str] = currency_column()
    #: Sum of this account's postings (customer accounts only).
    posted_minor: Mapped[int | None] = mapped_column(sa.BigInteger)
    #: Sum of this account's pending holds (customer accounts only).
    pending_debits_minor: Mapped[int | None] = mapped_column(sa.BigInteger)
    created_at: Mapped[datetime] = now_column()


class JournalEntry(Base):
    __tablename__ = "journal_entries"

    id: Mapped[int] = pk_column()
    kind: Mapped[str] = mapped_column(sa.String(32), nullable=False)
    description: Mapped[str] = mapped_column(sa.String(255), nullable=False, server_default="")
    created_at: Mapped[datetime] = now_column()


class Posting(Base):
    """Append-only: a trigger refuses UPDATE and DELETE. Corrections are new entries."""

    __tablename__ = "postings"
    __table_args__ = (
        sa.CheckConstraint("amount_minor <> 0", name="nonzero"),
        sa.ForeignKeyConstraint(
            ["account_id", "currency"],
            ["accounts.id", "accounts.currency"],
            name="fk_postings_account_currency",
        ),
        sa.Index("ix_postings_account_id_id", "account_id", "id"),
    )

    id: Mapped[int] = pk_column()
    journal_entry_id: Mapped[int] = fk_column("journal_entries.id")
    account_id: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    #: Signed minor units: positive credits the account, negative debits it.
    amount_minor: Mapped[int] = money_column()
    currency: Mapped[str] = currency_column()
    created_at: Mapped[datetime] = now_column()


class Hold(Base):
    """Reserved funds: pending until posted, voided or expired. Pending holds count against
    the available balance."""

    __tablename__ = "holds"
    __table_args__ = (
        sa.CheckConstraint("amount_minor > 0", name="amount_positive"),
        sa.CheckConstraint("status IN ('pending', 'posted', 'voided', 'expired')", name="status"),
        sa.ForeignKeyConstraint(
            ["account_id", "currency"],
            ["accounts.id", "accounts.currency"],
            name="fk_holds_account_currency",
        ),
        sa.Index(
            "ix_holds_pending_expires_at",
            "expires_at",
            postgresql_where=sa.text("status = 'pending'"),
        ),
    )

    id: Mapped[int] = pk_column()
    account_id: Mapped[int] = mapped_column(sa.BigInteger, nullable=False, index=True)
    kind: Mapped[str] = mapped_column(sa.String(32), nullable=False)
    amount_minor: Mapped[int] = money_column()
    currency: Mapped[str] = currency_column()
    status: Mapped[str] = mapped_column(sa.String(16), nullable=False, server_default="pending")
    expires_at: Mapped[datetime] = mapped_column(nullable=False)
    journal_entry_id: Mapped[int | None] = mapped_column(
        sa.BigInteger, sa.ForeignKey("journal_entries.id")
    )
    created_at: Mapped[datetime] = now_column()
    resolved_at: Mapped[datetime | None]
