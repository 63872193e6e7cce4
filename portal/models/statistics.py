"""Statistics roll-ups (``portal.services.statistics``): written only by the triggers of the
``statistics_rollups`` migration, read by the statistics service."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from portal.models.base import Base, now_column, pk_column
from portal.models.ledger import Posting
from portal.models.merchants import Payment, Refund


class StatRollup(Base):
    """Amount and count of one family's movements for a scope, currency, status, method and
    day or month, on one of several slots (reads sum the slots)."""

    __tablename__ = "stat_rollups"
    __table_args__ = (
        sa.CheckConstraint("grain IN ('day', 'month')", name="grain"),
        sa.CheckConstraint("slot >= 0 AND slot < 8", name="slot"),
    )

    family: Mapped[str] = mapped_column(sa.String(16), primary_key=True)
    scope_kind: Mapped[str] = mapped_column(sa.String(16), primary_key=True)
    scope_id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
    grain: Mapped[str] = mapped_column(sa.String(8), primary_key=True)
    period: Mapped[date] = mapped_column(sa.Date, primary_key=True)
    currency: Mapped[str] = mapped_column(sa.CHAR(3), primary_key=True)
    status: Mapped[str] = mapped_column(sa.String(16), primary_key=True)
    method: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    slot: Mapped[int] = mapped_column(sa.SmallInteger, primary_key=True)
    amount_minor: Mapped[int] = mapped_column(
        sa.BigInteger, nullable=False, server_default=sa.text("0")
    )
    count: Mapped[int] = mapped_column(sa.BigInteger, nullable=False, server_default=sa.text("0"))


class StatCheck(Base):
    """One recomputation of the roll-ups against the movements (the nightly job's result)."""

    __tablename__ = "stat_checks"
    __table_args__ = (sa.Index("ix_stat_checks_checked_at", "checked_at"),)

    id: Mapped[int] = pk_column()
    first_day: Mapped[date] = mapped_column(sa.Date, nullable=False)
    last_day: Mapped[date] = mapped_column(sa.Date, nullable=False)
    checked_at: Mapped[datetime] = now_column()
    differences: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    details: Mapped[list[Any]] = mapped_column(
        JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")
    )


# One day of history without a scan, for the recomputation (append-ordered tables: BRIN).
sa.Index("ix_postings_created_at_brin", Posting.__table__.c.created_at, postgresql_using="brin")
sa.Index("ix_payments_created_at_brin", Payment.__table__.c.created_at, postgresql_using="brin")
sa.Index("ix_refunds_created_at_brin", Refund.__table__.c.created_at, postgresql_using="brin")
