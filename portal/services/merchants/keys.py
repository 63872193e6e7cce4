"""Merchant API keys: ``sk_live_`` and 32 random base62 characters (about 190 bits).

Only an HMAC-SHA256 of the whole secret (under ``settings.api_key_hash_key``) is stored, with a
visible prefix and the last four characters; the secret is in the result of ``create`` and
``roll`` and never again. A key acts only for its merchant and within its scopes; it stops when
it is revoked, when it expires, and the moment its merchant is suspended or archived (checked on
every request). Rolling makes a new key now and lets the old one work for a chosen overlap.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from portal.domain.errors import Forbidden, InvalidInput, NotFound, Unauthenticated
from portal.domain.ids import ALPHABET, is_public_id
from portal.domain.types import Actor, ActorKind
from portal.services.identity.users import is_printable
from portal.services.merchants.merchants import (
    SCOPE_ABILITIES,
    Membership,
    access,
)
from portal.services.shared import audit
from portal.services.shared.uow import UnitOfWork

SECRET_PREFIX = "sk_live_"  # noqa: S105 (a prefix, not a secret)
SECRET_LENGTH = 32
SCOPES = tuple(SCOPE_ABILITIES)
DEFAULT_SCOPES = ("payments:read", "payments:write", "refunds:write")
#: The longest overlap a rolled key may keep working.
MAX_OVERLAP_HOURS = 7 * 24
#: A key's last use is written at most this often (not on every request).
LAST_USED_EVERY = timedelta(seconds=60)


@dataclass(frozen=True, slots=True)
class ApiKeyView:
    id: int
    public_id: str
    name: str
    prefix: str
    last4: str
    scopes: tuple[str, ...]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    last_used_ip: str
    revoked_at: datetime | None
    #: The whole secret: only in the result of ``create_api_key`` and ``roll_api_key``.
    secret: str | None = None

    def active(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    @property
    def redacted(self) -> str:
        return f"{self.prefix}…{self.last4}"


@dataclass(frozen=True, slots=True)
class KeyPrincipal:
    """An authenticated API key: the merchant actor and the key."""

    actor: Actor
    key_public_id: str
    merchant_public_id: str


_COLUMNS = (
    "id, public_id, name, prefix, last4, scopes, created_at, expires_at, last_used_at,"
    " last_used_ip, revoked_at"
)


def hash_secret(settings_key: bytes, secret: str) -> bytes:
    return hmac.new(settings_key, secret.encode(), hashlib.sha256).digest()


def _view(row: object, secret: str | None = None) -> ApiKeyView:
    data = {k: v for k, v in row._mapping.items() if k != "merchant_id"}  # type: ignore[attr-defined]
    data["scopes"] = tuple(data["scopes"])
    return ApiKeyView(**data, secret=secret)


def _check(name: str, scopes: list[str] | tuple[str, ...] | None) -> tuple[str, tuple[str, ...]]:
    name = (name or "").strip()
    if not 1 <= len(name) <= 64 or not is_printable(name):
        raise InvalidInput("name is 1 to 64 characters", param="name")
    chosen = tuple(dict.fromkeys(scopes if scopes is not None else DEFAULT_SCOPES))
    unknown = [s for s in chosen if s not in SCOPES]
    if unknown or not chosen:
        raise InvalidInput(f"scopes are one or more of {', '.join(SCOPES)}", param="scopes")
    return name, chosen


def _may_grant(membership: Membership, scopes: tuple[str, ...]) -> None:
    """Only a member who may pay out (an owner) can make a key that pays out."""
    if "payouts:write" in scopes and not membership.can("payouts"):
        raise Forbidden("only an owner can give a key payouts:write", param="scopes",
                        code="permission_denied")  # fmt: skip


def _insert(
    uow: UnitOfWork,
    merchant_id: int,
    actor: Actor,
    name: str,
    scopes: tuple[str, ...],
    expires_at: datetime | None,
    rolled_from: int | None = None,
) -> ApiKeyView:
    secret = SECRET_PREFIX + "".join(secrets.choice(ALPHABET) for _ in range(SECRET_LENGTH))
    row = uow.execute(
        "INSERT INTO api_keys (merchant_id, name, prefix, last4, key_hash, scopes, created_by_id,"  # nosec B608
        " rolled_from_id, created_at, expires_at) VALUES (:m, :name, :prefix, :last4, :hash,"
        f" :scopes, :by, :from, :now, :expires) RETURNING {_COLUMNS}",
        {"m": merchant_id, "name": name, "prefix": secret[: len(SECRET_PREFIX) + 4],
         "last4": secret[-4:], "hash": hash_secret(uow.settings.api_key_hash_key, secret),
         "scopes": list(scopes), "by": actor.id if actor.kind == ActorKind.USER else None,
         "from": rolled_from, "now": uow.now(), "expires": expires_at},
    ).one()  # fmt: skip
    return _view(row, secret)


def create_api_key(
    uow: UnitOfWork,
    *,
    actor: Actor,
    merchant: str | int,
    name: str,
    scopes: list[str] | tuple[str, ...] | None = None,
    expires_at: datetime | None = None,
) -> ApiKeyView:
    """A new secret key (owners and developers); the result carries the secret, shown once.
    Raises NotFound, Forbidden, InvalidInput."""
    name, chosen = _check(name, scopes)

    def work(u: UnitOfWork) -> ApiKeyView:
        if expires_at is not None and expires_at <= u.now():
            raise InvalidInput("expires_at must be in the future", param="expires_at")
        membership = access(u, actor, merchant, "keys")
        _may_grant(membership, chosen)
        m = membership.merchant
        key = _insert(u, m.id, actor, name, chosen, expires_at)
        audit.record(
            u, actor, "api_key.create", "api_key", key.id,
            data={"merchant_id": m.id, "prefix": key.prefix, "scopes": list(chosen)},
        )  # fmt: skip
        return key

    return uow.run(work)


def list_api_keys(uow: UnitOfWork, *, actor: Actor, merchant: str | int) -> list[ApiKeyView]:
    """The merchant's keys, newest first, revoked ones included (never a secret). Raises
    NotFound, Forbidden."""

    def work(u: UnitOfWork) -> list[ApiKeyView]:
        m = access(u, actor, merchant, "read").merchant
        rows = u.execute(
            f"SELECT {_COLUMNS} FROM api_keys WHERE merchant_id = :m ORDER BY created_at DESC, id"  # nosec B608
            " DESC",
            {"m": m.id},
        ).all()
        return [_view(r) for r in rows]

    return uow.run(work)


def _locked_key(uow: UnitOfWork, merchant_id: int, key: str) -> object:
    row = None
    if is_public_id("api_key", key):
        row = uow.execute(
            f"SELECT {_COLUMNS}, merchant_id FROM api_keys WHERE public_id = :id"  # nosec B608
            " AND merchant_id = :m FOR UPDATE",
            {"id": key, "m": merchant_id},
        ).first()
    if row is None:
        raise NotFound("no such API key", param="key")
    return row


def revoke_api_key(uow: UnitOfWork, *, actor: Actor, merchant: str | int, key: str) -> ApiKeyView:
    """Revoke a key at once (revoking a revoked key changes nothing). Raises NotFound,
    Forbidden."""

    def work(u: UnitOfWork) -> ApiKeyView:
        m = access(u, actor, merchant, "keys").merchant
        row = _locked_key(u, m.id, key)
        if row.revoked_at is not None:  # type: ignore[attr-defined]
            return _view(row)
        updated = u.execute(
            f"UPDATE api_keys SET revoked_at = :now WHERE id = :id RETURNING {_COLUMNS}",  # nosec B608
            {"now": u.now(), "id": row.id},  # type: ignore[attr-defined]
        ).one()
        audit.record(u, actor, "api_key.revoke", "api_key", updated.id, data={"merchant_id": m.id})
        return _view(updated)

    return uow.run(work)


def roll_api_key(
    uow: UnitOfWork,
    *,
    actor: Actor,
    merchant: str | int,
    key: str,
    overlap_hours: int = 0,
) -> ApiKeyView:
    """Replace a key: a new key with the same name and scopes now (its secret in the result);
    the old one keeps working for ``overlap_hours`` (0: revoked now). Raises NotFound,
    Forbidden, InvalidInput."""
    if isinstance(overlap_hours, bool) or not 0 <= overlap_hours <= MAX_OVERLAP_HOURS:
        raise InvalidInput(f"overlap is 0 to {MAX_OVERLAP_HOURS} hours", param="overlap_hours")

    def work(u: UnitOfWork) -> ApiKeyView:
        m = access(u, actor, merchant, "keys").merchant
        old = _locked_key(u, m.id, key)
        now = u.now()
        if not _view(old).active(now):
            raise InvalidInput("only an active key can be rolled", param="key", code="key_inactive")
        ends = now + timedelta(hours=overlap_hours)
        if overlap_hours == 0:
            u.execute("UPDATE api_keys SET revoked_at = :now WHERE id = :id",
                      {"now": now, "id": old.id})  # type: ignore[attr-defined]  # fmt: skip
        else:
            u.execute(
                "UPDATE api_keys SET expires_at = LEAST(COALESCE(expires_at, :ends), :ends)"
                " WHERE id = :id",
                {"ends": ends, "id": old.id},  # type: ignore[attr-defined]
            )
        new = _insert(
            u, m.id, actor, old.name, tuple(old.scopes),  # type: ignore[attr-defined]
            old.expires_at if old.expires_at and old.expires_at > ends else None,  # type: ignore[attr-defined]
            rolled_from=old.id,  # type: ignore[attr-defined]
        )  # fmt: skip
        audit.record(
            u, actor, "api_key.roll", "api_key", new.id,
            data={"merchant_id": m.id, "replaces": old.public_id,  # type: ignore[attr-defined]
                  "old_key_ends": ends.isoformat()},
        )  # fmt: skip
        return new

    return uow.run(work)


def authenticate_api_key(uow: UnitOfWork, *, secret: str, address: str = "") -> KeyPrincipal:
    """The merchant actor of a secret key, with the key's scopes as its permissions. Raises
    Unauthenticated, one message whatever the reason (unknown, revoked, expired, merchant not
    active)."""
    refused = Unauthenticated("Invalid API key.", code="invalid_api_key")
    if not secret.startswith(SECRET_PREFIX) or len(secret) != len(SECRET_PREFIX) + SECRET_LENGTH:
        raise refused
    digest = hash_secret(uow.settings.api_key_hash_key, secret)

    def work(u: UnitOfWork) -> KeyPrincipal:
        now = u.now()
        row = u.execute(
            "SELECT k.id, k.public_id, k.scopes, k.last_used_at, k.last_used_ip, k.merchant_id,"
            " m.public_id AS merchant_public_id FROM api_keys k"
            " JOIN merchants m ON m.id = k.merchant_id"
            " WHERE k.key_hash = :hash AND k.revoked_at IS NULL"
            " AND (k.expires_at IS NULL OR k.expires_at > :now)"
            " AND m.status = 'active' AND m.archived_at IS NULL",
            {"hash": digest, "now": now},
        ).first()
        if row is None:  # found by its HMAC: nothing of the secret is compared in Python
            raise refused
        if (
            row.last_used_at is None
            or now - row.last_used_at >= LAST_USED_EVERY
            or row.last_used_ip != address[:64]
        ):
            u.execute(
                "UPDATE api_keys SET last_used_at = :now, last_used_ip = :ip WHERE id = :id",
                {"now": now, "ip": address[:64], "id": row.id},
            )
        actor = Actor(
            ActorKind.MERCHANT, row.merchant_id, frozenset(row.scopes), row.public_id,
            key_id=row.id,
        )  # fmt: skip
        return KeyPrincipal(actor, row.public_id, row.merchant_public_id)

    return uow.run(work)
