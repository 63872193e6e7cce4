"""Paying people (issue 13): each person's default receiving card per currency, and the payees
a person saved (starred) or paid recently."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from portal.models.base import Base, now_column, pk_column, public_id_column


class ReceivingCard(Base):
    """The card that receives money paid to ``user_id`` in ``currency``. Without a row, the
    first active card of that currency receives (``services.wallet.payees``)."""

    __tablename__ = "receiving_cards"

    user_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    currency: Mapped[str] = mapped_column(sa.CHAR(3), primary_key=True)
    card_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("cards.id", ondelete="CASCADE"), nullable=False, index=True
    )
    updated_at: Mapped[datetime] = now_column()


class Payee(Base):
    """A person ``owner_id`` pays or has paid: starred by them, or paid recently."""

    __tablename__ = "payees"
    __table_args__ = (
        sa.UniqueConstraint("owner_id", "payee_id"),
        sa.CheckConstraint("owner_id <> payee_id", name="not_self"),
    )

    id: Mapped[int] = pk_column()
    public_id: Mapped[str] = public_id_column("payee")
    owner_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    )
    payee_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
    )
    starred: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, server_default=sa.false())
    created_at: Mapped[datetime] = now_column()
    updated_at: Mapped[datetime] = now_column()
