"""Settlements: what moves on a merchant's balance and how it leaves for the bank.

Every journal entry that touches a merchant's balance account makes one balance transaction
(``txn_``) whose ``net_minor`` is exactly that entry's posting on the account: payments (gross,
fee, net), refunds, adjustments, payouts and returned (failed) payouts. A payment's funds are
``pending`` until ``available_on``; everything else is available at once. A payout (``po_``)
gathers the available transactions not yet paid out, moves their sum from the balance to the
payouts clearing account, and is paid to the bank account sealed on the payout. The balance is
``available`` (sum of available nets) and ``pending`` (sum of pending nets); they add up to the
account's ledger balance.
"""

from __future__ import annotations

from datetime import date, datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from portal.models.base import (
    Base,
    currency_column,
    money_column,
    now_column,
    pk_column,
    public_id_column,
)


def _fk(target: str, *, nullable: bool = True) -> Mapped[int]:
    return mapped_column(sa.BigInteger, sa.ForeignKey(target), nullable=nullable)


class Payout(Base):
    """Money paid from a merchant's available balance to its bank account, exactly once:
    ``processing`` is set under lock before the processor is called with the payout's public id
    as its idempotency key; a failure returns the money with a ``payout_failure`` transaction."""

    __tablename__ = "payouts"
    __table_args__ = (
        sa.CheckConstraint("amount_minor > 0", name="amount_positive"),
        sa.CheckConstraint("status IN ('pending', 'processing', 'paid', 'failed')", name="status"),
        sa.CheckConstraint(
            "(status = 'failed') = (failure_entry_id IS NOT NULL)", name="failure_entry"
        ),
        sa.CheckConstraint("automatic OR scheduled_for IS NULL", name="scheduled_automatic"),
        sa.Index("ix_payouts_merchant_created_at_id", "merchant_id", "created_at", "id"),
        sa.Index("ix_payouts_created_at_id", "created_at", "id"),  # migration 0026
        sa.Index(
            "uq_payouts_scheduled",
            "merchant_id",
            "currency",
            "scheduled_for",
            unique=True,
            postgresql_where=sa.text("scheduled_for IS NOT NULL"),
        ),  # fmt: skip
        sa.Index(
            "ix_payouts_open",
            "created_at",
            postgresql_where=sa.text("status IN ('pending', 'processing')"),
        ),  # fmt: skip
    )

    id: Mapped[int] = pk_column()
    public_id: Mapped[str] = public_id_column("payout")
    merchant_id: Mapped[int] = _fk("merchants.id", nullable=False)
    account_id: Mapped[int] = _fk("accounts.id", nullable=False)
    currency: Mapped[str] = currency_column()
    amount_minor: Mapped[int] = money_column()
    status: Mapped[str] = mapped_column(sa.String(16), nullable=False, server_default="pending")
    automatic: Mapped[bool] = mapped_column(sa.Boolean, nullable=False)
    #: The UTC day a scheduled payout belongs to (one per merchant, currency and day).
    scheduled_for: Mapped[date | None] = mapped_column(sa.Date)
    #: The balance account's ledger balance just before the payout's entry.
    opening_balance_minor: Mapped[int] = money_column()
    bank_ciphertext: Mapped[bytes] = mapped_column(sa.LargeBinary, nullable=False)
    bank_key_version: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    #: Sealed bound to this row's public id (false: a legacy blob bound to its purpose only).
    bank_bound: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, server_default=sa.false())
    bank_name: Mapped[str] = mapped_column(sa.String(100), nullable=False)
    bank_account_last4: Mapped[str] = mapped_column(sa.String(4), nullable=False)
    journal_entry_id: Mapped[int] = _fk("journal_entries.id", nullable=False)
    failure_entry_id: Mapped[int | None] = _fk("journal_entries.id")
    failure_code: Mapped[str | None] = mapped_column(sa.String(64))
    processor_reference: Mapped[str | None] = mapped_column(sa.String(64))
    processing_started_at: Mapped[datetime | None]
    description: Mapped[str] = mapped_column(sa.String(255), nullable=False, server_default="")
    created_by_kind: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    created_by_id: Mapped[int | None] = mapped_column(sa.BigInteger)
    created_at: Mapped[datetime] = now_column()
    updated_at: Mapped[datetime] = mapped_column(nullable=False)
    paid_at: Mapped[datetime | None]
    failed_at: Mapped[datetime | None]


class BalanceTransaction(Base):
    """One movement on a merchant's balance (see the module docstring)."""

    __tablename__ = "balance_transactions"
    __table_args__ = (
        sa.CheckConstraint(
            "type IN ('payment', 'refund', 'fee', 'adjustment', 'payout', 'payout_failure')",
            name="type",
        ),
        sa.CheckConstraint("status IN ('pending', 'available')", name="status"),
        sa.CheckConstraint("net_minor = amount_minor - fee_minor AND fee_minor >= 0", name="net"),
        sa.CheckConstraint(
            "(type = 'payment') = (payment_id IS NOT NULL AND refund_id IS NULL)"
            " AND (type = 'refund') = (refund_id IS NOT NULL)"
            " AND (type IN ('payout', 'payout_failure')) = (source_payout_id IS NOT NULL)",
            name="source",
        ),
        sa.CheckConstraint("type <> 'payout' OR payout_id = source_payout_id", name="payout_own"),
        sa.Index(
            "ix_balance_transactions_merchant_created_at_id", "merchant_id", "created_at", "id"
        ),
        sa.Index("ix_balance_transactions_payout_id", "payout_id"),
        sa.Index(
            "ix_balance_transactions_unpaid",
            "account_id",
            "status",
            postgresql_where=sa.text("payout_id IS NULL"),
        ),  # fmt: skip
        sa.Index(
            "ix_balance_transactions_pending",
            "available_on",
            postgresql_where=sa.text("status = 'pending'"),
        ),  # fmt: skip
    )

    id: Mapped[int] = pk_column()
    public_id: Mapped[str] = public_id_column("balance_transaction")
    merchant_id: Mapped[int] = _fk("merchants.id", nullable=False)
    account_id: Mapped[int] = _fk("accounts.id", nullable=False)
    currency: Mapped[str] = currency_column()
    type: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    #: Signed, as the merchant sees it: what the customer paid, or what left the balance.
    amount_minor: Mapped[int] = money_column()
    fee_minor: Mapped[int] = mapped_column(sa.BigInteger, nullable=False, server_default="0")
    #: amount - fee: exactly this transaction's posting on the merchant's balance account.
    net_minor: Mapped[int] = money_column()
    status: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    available_on: Mapped[datetime] = mapped_column(nullable=False)
    journal_entry_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("journal_entries.id"), nullable=False, unique=True
    )
    payment_id: Mapped[int | None] = _fk("payments.id")
    refund_id: Mapped[int | None] = _fk("refunds.id")
    #: The payout that paid this transaction out (for type payout: the payout itself).
    payout_id: Mapped[int | None] = _fk("payouts.id")
    #: For payout and payout_failure: the payout that moved the money.
    source_payout_id: Mapped[int | None] = _fk("payouts.id")
    description: Mapped[str] = mapped_column(sa.String(255), nullable=False, server_default="")
    created_at: Mapped[datetime] = now_column()


class DemoProcessorRequest(Base):
    """The demo processor's own record of each request (its idempotency keys): what a real
    bank keeps on its side, kept here so tests can count what was paid."""

    __tablename__ = "demo_processor_requests"

    id: Mapped[int] = pk_column()
    idempotency_key: Mapped[str] = mapped_column(sa.String(64), nullable=False, unique=True)
    operation: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    amount_minor: Mapped[int] = money_column()
    currency: Mapped[str] = currency_column()
    outcome: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    reference: Mapped[str | None] = mapped_column(sa.String(64))
    decline_code: Mapped[str | None] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = now_column()
