"""Business records of cardholders' money movements: top-ups, transfers, withdrawals.

Each carries a status (pending, succeeded, failed; a top-up also ``processing`` while the
funding processor is asked whether its money arrived, a withdrawal while its payout is with the
processor) and, once money moved, its journal entry.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.schema import SchemaItem

from portal.models.base import (
    Base,
    currency_column,
    fk_column,
    money_column,
    now_column,
    pk_column,
    public_id_column,
)

_STATUSES = ("pending", "succeeded", "failed")


def _movement_args(table: str, statuses: tuple[str, ...] = _STATUSES) -> tuple[SchemaItem, ...]:
    allowed = ", ".join(f"'{s}'" for s in statuses)
    return (
        sa.CheckConstraint("amount_minor > 0", name="amount_positive"),
        sa.CheckConstraint(f"status IN ({allowed})", name="status"),
        sa.Index(f"ix_{table}_created_at_id", "created_at", "id"),
    )


class TopUp(Base):
    __tablename__ = "top_ups"
    __table_args__ = (
        *_movement_args("top_ups", ("pending", "processing", "succeeded", "failed")),
        sa.CheckConstraint(
            "method IN ('bank_transfer', 'credit_card', 'debit_card', 'e_wallet', 'cash')",
            name="method",
        ),
        sa.Index("ix_top_ups_user_currency_created_at", "user_id", "currency", "created_at"),
        # The activity feed pages each card's movements newest first (migration 0005).
        sa.Index("ix_top_ups_card_id_created_at_id", "card_id", "created_at", "id"),
        sa.Index("ix_top_ups_journal_entry_id", "journal_entry_id"),  # migration 0026
        sa.Index(
            "ix_top_ups_unsettled",
            "created_at",
            postgresql_where=sa.text("status IN ('pending', 'processing')"),
        ),
    )

    id: Mapped[int] = pk_column()
    public_id: Mapped[str] = public_id_column("top_up")
    card_id: Mapped[int] = fk_column("cards.id")
    #: The card owner, denormalised for the daily cap and per-user listings.
    user_id: Mapped[int] = fk_column("users.id")
    amount_minor: Mapped[int] = money_column()
    currency: Mapped[str] = currency_column()
    method: Mapped[str] = mapped_column(sa.String(32), nullable=False)
    status: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    failure_code: Mapped[str | None] = mapped_column(sa.String(64))
    journal_entry_id: Mapped[int | None] = mapped_column(
        sa.BigInteger, sa.ForeignKey("journal_entries.id")
    )
    #: The funding processor's reference for the money received (the demo's ``fund_...``).
    funding_reference: Mapped[str | None] = mapped_column(sa.String(64))
    #: When the funding job marked it ``processing`` (committed before it called the processor).
    processing_started_at: Mapped[datetime | None]
    created_by_kind: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    created_by_id: Mapped[int | None] = mapped_column(sa.BigInteger)
    created_at: Mapped[datetime] = now_column()
    #: When the processor's answer settled it.
    completed_at: Mapped[datetime | None]
    archived_at: Mapped[datetime | None]


class Transfer(Base):
    __tablename__ = "transfers"
    __table_args__ = (
        *_movement_args("transfers"),
        sa.CheckConstraint("from_card_id <> to_card_id", name="distinct_cards"),
        sa.Index("ix_transfers_from_card_id_created_at_id", "from_card_id", "created_at", "id"),
        sa.Index("ix_transfers_to_card_id_created_at_id", "to_card_id", "created_at", "id"),
        sa.Index("ix_transfers_journal_entry_id", "journal_entry_id"),  # migration 0026
        # A history's incoming branch over all of an owner's cards (migration 0028).
        sa.Index(
            "ix_transfers_incoming_from_others",
            "to_card_id",
            "created_at",
            "id",
            postgresql_where=sa.text("status = 'succeeded' AND NOT between_own_cards"),
        ),  # fmt: skip
    )

    id: Mapped[int] = pk_column()
    public_id: Mapped[str] = public_id_column("transfer")
    from_card_id: Mapped[int] = fk_column("cards.id")
    to_card_id: Mapped[int] = fk_column("cards.id")
    amount_minor: Mapped[int] = money_column()
    currency: Mapped[str] = currency_column()
    memo: Mapped[str] = mapped_column(sa.String(140), nullable=False, server_default="")
    #: Addressed to a person (email, @handle, payee): the sender is shown nothing of the card.
    to_person: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, server_default=sa.false())
    #: Both cards are the same person's; set by the database on insert (a trigger, 0028).
    between_own_cards: Mapped[bool] = mapped_column(
        sa.Boolean, nullable=False, server_default=sa.false()
    )
    status: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    failure_code: Mapped[str | None] = mapped_column(sa.String(64))
    journal_entry_id: Mapped[int | None] = mapped_column(
        sa.BigInteger, sa.ForeignKey("journal_entries.id")
    )
    created_by_kind: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    created_by_id: Mapped[int | None] = mapped_column(sa.BigInteger)
    created_at: Mapped[datetime] = now_column()
    archived_at: Mapped[datetime | None]


class Withdrawal(Base):
    __tablename__ = "withdrawals"
    __table_args__ = (
        *_movement_args("withdrawals", ("pending", "processing", "succeeded", "failed")),
        sa.Index("ix_withdrawals_card_id_created_at_id", "card_id", "created_at", "id"),
        sa.Index("ix_withdrawals_journal_entry_id", "journal_entry_id"),  # migration 0026
        # The withdrawal queue: open ones oldest first (migration 0026).
        sa.Index(
            "ix_withdrawals_open",
            "created_at",
            "id",
            postgresql_where=sa.text("status IN ('pending', 'processing')"),
        ),
    )

    id: Mapped[int] = pk_column()
    public_id: Mapped[str] = public_id_column("withdrawal")
    card_id: Mapped[int] = fk_column("cards.id")
    amount_minor: Mapped[int] = money_column()
    currency: Mapped[str] = currency_column()
    status: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    failure_code: Mapped[str | None] = mapped_column(sa.String(64))
    hold_id: Mapped[int | None] = mapped_column(sa.BigInteger, sa.ForeignKey("holds.id"))
    journal_entry_id: Mapped[int | None] = mapped_column(
        sa.BigInteger, sa.ForeignKey("journal_entries.id")
    )
    #: Payout destination, encrypted by the vault like card numbers (JSON inside).
    bank_ciphertext: Mapped[bytes | None] = mapped_column(sa.LargeBinary)
    bank_key_version: Mapped[int | None] = mapped_column(sa.SmallInteger)
    #: Sealed bound to this row's public id (false: a legacy blob bound to its purpose only).
    bank_bound: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, server_default=sa.false())
    bank_name: Mapped[str] = mapped_column(sa.String(100), nullable=False, server_default="")
    bank_account_last4: Mapped[str] = mapped_column(sa.String(4), nullable=False, server_default="")
    #: The processor's reference for the payout (the demo processor's ``bank_...``).
    payout_reference: Mapped[str | None] = mapped_column(sa.String(64))
    #: When the payout job marked it ``processing`` (committed before it called the processor).
    processing_started_at: Mapped[datetime | None]
    created_by_kind: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    created_by_id: Mapped[int | None] = mapped_column(sa.BigInteger)
    created_at: Mapped[datetime] = now_column()
    completed_at: Mapped[datetime | None]
    archived_at: Mapped[datetime | None]
