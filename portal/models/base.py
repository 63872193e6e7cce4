"""Declarative base with a naming convention so migrations name constraints predictably."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from portal.domain.ids import MAX_LENGTH, PREFIXES

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: sa.DateTime(timezone=True)}


def pk_column() -> Mapped[int]:
    return mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)


def now_column() -> Mapped[datetime]:
    return mapped_column(sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False)


def money_column() -> Mapped[int]:
    return mapped_column(sa.BigInteger, nullable=False)


def currency_column() -> Mapped[str]:
    return mapped_column(sa.CHAR(3), nullable=False)


def public_id_column(kind: str) -> Mapped[str]:
    """The object's public id (``portal.domain.ids``): made by the database unless given."""
    prefix = PREFIXES[kind]
    return mapped_column(
        sa.String(MAX_LENGTH),
        nullable=False,
        unique=True,
        server_default=sa.text(f"portal_public_id('{prefix}')"),
    )


def fk_column(target: str, *, nullable: bool = False, ondelete: str | None = None) -> Mapped[int]:
    return mapped_column(
        sa.BigInteger, sa.ForeignKey(target, ondelete=ondelete), nullable=nullable, index=True
    )
