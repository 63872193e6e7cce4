"""Users, roles, permissions, and how users prove who they are: refresh tokens, web sessions,
one-time email links, TOTP recovery codes, second-factor enrolment codes and single-sign-on
identities."""

from __future__ import annotations

import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from portal.models.base import Base, fk_column, now_column, pk_column, public_id_column

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
        sa.Index("uq_users_email_canonical", "email_canonical", unique=True),
        sa.Index("uq_users_handle_canonical", "handle_canonical", unique=True),
        sa.Index("ix_users_created_at_id", "created_at", "id"),
        sa.CheckConstraint("(handle IS NULL) = (handle_canonical IS NULL)", name="handle_pair"),
    )

    id: Mapped[int] = pk_column()
    public_id: Mapped[str] = public_id_column("user")
    email: Mapped[str] = mapped_column(sa.String(254), nullable=False)
    #: The address in the one form that names the account (NFKC, then case folding), computed
    #: by ``services.identity.users.canonical_email``: what look-ups and uniqueness use.
    email_canonical: Mapped[str] = mapped_column(sa.String(254), nullable=False)
    password_hash: Mapped[str | None] = mapped_column(sa.String(255))
    #: A chosen ``@handle`` others can pay by, as the person wrote it (NFKC, without the "@");
    #: ``handle_canonical`` is the form that names them (``services.identity.handles``).
    handle: Mapped[str | None] = mapped_column(sa.String(30))
    handle_canonical: Mapped[str | None] = mapped_column(sa.String(60))
    first_name: Mapped[str] = mapped_column(sa.String(100), nullable=False)
    last_name: Mapped[str] = mapped_column(sa.String(100), nullable=False)
    email_verified_at: Mapped[datetime | None]
    #: TOTP secret, encrypted by the vault (purpose "user.totp"); NULL until the user enrols.
    totp_secret_ciphertext: Mapped[bytes | None] = mapped_column(sa.LargeBinary)
    #: Vault key version that sealed ``totp_secret_ciphertext``.
    totp_key_version: Mapped[int | None] = mapped_column(sa.Integer)
    #: A secret being enrolled: becomes the secret once the user proves a code from it.
    totp_pending_ciphertext: Mapped[bytes | None] = mapped_column(sa.LargeBinary)
    totp_pending_key_version: Mapped[int | None] = mapped_column(sa.Integer)
    #: The last TOTP time step accepted: a code is accepted only for a later step (no replay).
    totp_last_step: Mapped[int | None] = mapped_column(sa.BigInteger)
    mfa_enabled_at: Mapped[datetime | None]
    password_changed_at: Mapped[datetime | None]
    #: Bumped in the same transaction as any money movement touching the user (live updates).
    change_version: Mapped[int] = mapped_column(sa.BigInteger, nullable=False, server_default="0")
    #: Number, currency and date formats of the pages (``portal.domain.locale.LOCALES``).
    locale: Mapped[str] = mapped_column(sa.String(16), nullable=False, server_default="en_US")
    #: IANA time zone the pages show times in (CSV and the API stay UTC); NULL until chosen or
    #: brought by a sign-in from the browser (shown as UTC meanwhile).
    time_zone: Mapped[str | None] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = now_column()
    updated_at: Mapped[datetime] = now_column()
    archived_at: Mapped[datetime | None]


class Role(Base):
    __tablename__ = "roles"

    id: Mapped[int] = pk_column()
    public_id: Mapped[str] = public_id_column("role")
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
    #: The family's absolute expiry: set when the family starts, copied to every rotation.
    expires_at: Mapped[datetime] = mapped_column(nullable=False)
    #: Set when the token is exchanged (rotated); a later exchange is reuse.
    used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    user_agent: Mapped[str] = mapped_column(sa.String(255), nullable=False, server_default="")


class WebSession(Base):
    """A signed-in browser. The cookie holds a random token; only its SHA-256 is stored."""

    __tablename__ = "web_sessions"

    id: Mapped[int] = pk_column()
    public_id: Mapped[str] = public_id_column("session")
    user_id: Mapped[int] = fk_column("users.id", ondelete="CASCADE")
    token_hash: Mapped[bytes] = mapped_column(sa.LargeBinary(32), nullable=False, unique=True)
    created_at: Mapped[datetime] = now_column()
    last_seen_at: Mapped[datetime] = mapped_column(nullable=False)
    absolute_expires_at: Mapped[datetime] = mapped_column(nullable=False)
    revoked_at: Mapped[datetime | None]
    mfa_verified_at: Mapped[datetime | None]
    user_agent: Mapped[str] = mapped_column(sa.String(255), nullable=False, server_default="")
    ip: Mapped[str] = mapped_column(sa.String(64), nullable=False, server_default="")


class UserToken(Base):
    """A one-time link sent by email (verify an address, reset a password); stored hashed."""

    __tablename__ = "user_tokens"
    __table_args__ = (
        sa.CheckConstraint("purpose IN ('verify_email', 'reset_password')", name="purpose"),
    )

    id: Mapped[int] = pk_column()
    user_id: Mapped[int] = fk_column("users.id", ondelete="CASCADE")
    purpose: Mapped[str] = mapped_column(sa.String(32), nullable=False)
    token_hash: Mapped[bytes] = mapped_column(sa.LargeBinary(32), nullable=False, unique=True)
    #: For an email change: the address being verified (the email changes once it is).
    new_email: Mapped[str | None] = mapped_column(sa.String(254))
    created_at: Mapped[datetime] = now_column()
    expires_at: Mapped[datetime] = mapped_column(nullable=False)
    used_at: Mapped[datetime | None]


class RecoveryCode(Base):
    """A one-time TOTP recovery code (SHA-256 of a 125-bit random code)."""

    __tablename__ = "recovery_codes"
    __table_args__ = (
        sa.UniqueConstraint("user_id", "code_hash", name="uq_recovery_codes_user_id_code_hash"),
    )

    id: Mapped[int] = pk_column()
    user_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    )
    code_hash: Mapped[bytes] = mapped_column(sa.LargeBinary(32), nullable=False)
    created_at: Mapped[datetime] = now_column()
    used_at: Mapped[datetime | None]


class MfaEnrolmentCode(Base):
    """A one-time code that lets a staff member set up their first second factor (the password
    alone does not): SHA-256 of a 125-bit random code, single use, expiring. Once spent it
    records which pending secret it unlocked (``secret_digest``), so only that one can be
    confirmed."""

    __tablename__ = "mfa_enrolment_codes"
    __table_args__ = (
        sa.CheckConstraint("used_at IS NOT NULL OR secret_digest IS NULL", name="digest_when_used"),
    )

    id: Mapped[int] = pk_column()
    user_id: Mapped[int] = fk_column("users.id", ondelete="CASCADE")
    code_hash: Mapped[bytes] = mapped_column(sa.LargeBinary(32), nullable=False, unique=True)
    #: The administrator who made it; NULL when the CLI or the demo seeding did.
    created_by_id: Mapped[int | None] = fk_column("users.id", nullable=True, ondelete="SET NULL")
    created_at: Mapped[datetime] = now_column()
    expires_at: Mapped[datetime] = mapped_column(nullable=False)
    used_at: Mapped[datetime | None]
    #: SHA-256 of the pending TOTP ciphertext this code unlocked.
    secret_digest: Mapped[bytes | None] = mapped_column(sa.LargeBinary(32))


class OAuthIdentity(Base):
    """A user's account at an OpenID Connect provider (issuer + subject), for single sign-on."""

    __tablename__ = "oauth_identities"
    __table_args__ = (
        sa.UniqueConstraint("issuer", "subject", name="uq_oauth_identities_issuer_subject"),
    )

    id: Mapped[int] = pk_column()
    user_id: Mapped[int] = fk_column("users.id", ondelete="CASCADE")
    issuer: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    subject: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    email: Mapped[str | None] = mapped_column(sa.String(254))
    created_at: Mapped[datetime] = now_column()
