"""Four-eyes balance adjustments: a request by one administrator that posts only when a second
one approves it (migration 0024; the CHECKs are the backstop of the service's rules)."""

from __future__ import annotations

from datetime import datetime

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


class AdjustmentRequest(Base):
    __tablename__ = "adjustment_requests"
    __table_args__ = (
        sa.CheckConstraint("amount_minor > 0", name="amount_positive"),
        sa.CheckConstraint("direction IN ('credit', 'debit')", name="direction"),
        sa.CheckConstraint(
            "status IN ('pending', 'approved', 'rejected', 'withdrawn')", name="status"
        ),
        sa.CheckConstraint("(card_id IS NULL) <> (merchant_id IS NULL)", name="target"),
        sa.CheckConstraint(
            "(status = 'pending') = (decided_by IS NULL AND decided_at IS NULL)", name="decided"
        ),
        sa.CheckConstraint("(status = 'approved') = (journal_entry_id IS NOT NULL)", name="entry"),
        sa.CheckConstraint("status <> 'approved' OR decided_by <> requested_by", name="four_eyes"),
        sa.CheckConstraint(
            "status <> 'withdrawn' OR decided_by = requested_by", name="withdrawn_by_requester"
        ),
        sa.Index("ix_adjustment_requests_created_at_id", "created_at", "id"),
        sa.Index(
            "ix_adjustment_requests_pending",
            "created_at",
            "id",
            postgresql_where=sa.text("status = 'pending'"),
        ),
    )

    id: Mapped[int] = pk_column()
    public_id: Mapped[str] = public_id_column("adjustment")
    card_id: Mapped[int | None] = mapped_column(sa.BigInteger, sa.ForeignKey("cards.id"))
    merchant_id: Mapped[int | None] = mapped_column(sa.BigInteger, sa.ForeignKey("merchants.id"))
    #: The wallet or merchant balance account that moves.
    account_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("accounts.id"), nullable=False, index=True
    )
    direction: Mapped[str] = mapped_column(sa.String(8), nullable=False)
    amount_minor: Mapped[int] = money_column()
    currency: Mapped[str] = currency_column()
    reason: Mapped[str] = mapped_column(sa.String(500), nullable=False)
    reference: Mapped[str] = mapped_column(sa.String(100), nullable=False)
    status: Mapped[str] = mapped_column(sa.String(16), nullable=False, server_default="pending")
    requested_by: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("users.id"), nullable=False
    )
    decided_by: Mapped[int | None] = mapped_column(sa.BigInteger, sa.ForeignKey("users.id"))
    decided_at: Mapped[datetime | None]
    decision_reason: Mapped[str | None] = mapped_column(sa.String(500))
    #: The entry the approval posted (unique: an approval posts once).
    journal_entry_id: Mapped[int | None] = mapped_column(
        sa.BigInteger, sa.ForeignKey("journal_entries.id"), unique=True
    )
    created_at: Mapped[datetime] = now_column()
