"""Users, roles, permissions and refresh tokens."""

from __future__ import annotations

import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from portal.models.base import Base, fk_column, now_column, pk_column

user_roles = sa.Table(
    "user_roles",
    Base.metadata,
    sa.Column(
        "user_id", sa.BigInteger, sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column(
        "role_id", sa.BigInteger, sa.ForeignKey("roles.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column(
        "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
    ),
)

role_permissions = sa.Table(
    "role_permissions",
    Base.metadata,
    sa.Column(
        "role_id", sa.BigInteger, sa.ForeignKey("roles.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column(
        "permission_id",
        sa.BigInteger,
        sa.ForeignKey("permissions.id", ondelete="CASCADE"),
        primary_key=True,
    ),
)


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        sa.Index("uq_users_email_lower", sa.func.lower(sa.text("email")), unique=True),
    )

    id: Mapped[int] = pk_column()
    email: Mapped[str] = mapped_column(sa.String(254), nullable=False)
    password_hash: Mapped[str | None] = mapped_column(sa.String(255))
    first_name: Mapped[str] = mapped_column(sa.String(100), nullable=False)
    last_name: Mapped[str] = mapped_column(sa.String(100), nullable=False)
    email_verified_at: Mapped[datetime | None]
    #: TOTP secret, encrypted by the vault; NULL until the user enrols.
    totp_secret_ciphertext: Mapped[bytes | None] = mapped_column(sa.LargeBinary)
    mfa_enabled_at: Mapped[datetime | None]
    #: Bumped in the same transaction as any money movement touching the user (live updates).
    change_version: Mapped[int] = mapped_column(sa.BigInteger, nullable=False, server_default="0")
    created_at: Mapped[datetime] = now_column()
    updated_at: Mapped[datetime] = now_column()
    archived_at: Mapped[datetime | None]


class Role(Base):
    __tablename__ = "roles"

    id: Mapped[int] = pk_column()
    name: Mapped[str] = mapped_column(sa.String(64), nullable=False, unique=True)
    description: Mapped[str] = mapped_column(sa.String(255), nullable=False, server_default="")
    created_at: Mapped[datetime] = now_column()
    archived_at: Mapped[datetime | None]


class Permission(Base):
    __tablename__ = "permissions"

    id: Mapped[int] = pk_column()
    name: Mapped[str] = mapped_column(sa.String(64), nullable=False, unique=True)
    description: Mapped[str] = mapped_column(sa.String(255), nullable=False, server_default="")


class RefreshToken(Base):
    __tablename__ = "refresh_tokens"

    id: Mapped[int] = pk_column()
    user_id: Mapped[int] = fk_column("users.id", ondelete="CASCADE")
    family_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, nullable=False, index=True)
    parent_id: Mapped[int | None] = mapped_column(sa.BigInteger, sa.ForeignKey("refresh_tokens.id"))
    #: SHA-256 of the opaque token; the token itself is never stored.
    token_hash: Mapped[bytes] = mapped_column(sa.LargeBinary(32), nullable=False, unique=True)
    issued_at: Mapped[datetime] = now_column()
    expires_at: Mapped[datetime] = mapped_column(nullable=False)
    used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    user_agent: Mapped[str] = mapped_column(sa.String(255), nullable=False, server_default="")
