"""API credentials: short-lived JWT access tokens and opaque, rotating refresh tokens.

Access tokens are JWTs signed with HS256 under ``settings.jwt_key`` (the only algorithm
accepted), with the JOSE header ``typ`` "at+jwt" and the claims ``iss``, ``aud``, ``sub``,
``typ`` ("access"), ``exp``, ``iat``, ``jti`` and ``fam`` (the refresh-token family), every one
checked on the way in (RFC 8725, ASVS 9.1-9.2). Refresh tokens are opaque: ``prt_`` followed by
43 URL-safe characters (256 bits), never JWTs, so neither kind passes for the other.

Refresh-token families (ASVS 10.4.5, RFC 9700 §4.14.2). Signing in starts a family with a
random token; every exchange marks the presented token used and returns its child. The database
keeps only SHA-256 digests, with ``family_id``, ``parent_id``, ``used_at`` and the family's
absolute expiry (``expires_at``, set at sign-in and copied to every child).

A child's token is not random but derived from its parent's: ``prt_`` + base64url(HMAC-SHA256(
k, parent token)), with ``k`` derived from the JWT key. Only a holder of the parent token can
compute it, and it lets the server answer a token that was *just* used without storing any
token in the clear:

* Presenting an unused token: it is marked used and its child is issued (rotation).
* Presenting a token used at most ``refresh_grace_seconds`` ago (concurrent refreshes, or a
  response lost on the way): the answer is the token that was issued for it (its child), with
  a fresh access token, as long as that child is still unused. Nothing new is stored, so every
  concurrent caller ends up holding the same single live refresh token and whichever of their
  answers a client keeps is valid. Once the child has been used, the presented token has no
  answer left: whoever presents it is not the client that moved on (the grace never hands over
  a later token of the chain, which a thief holding only the old token could otherwise get).
* Presenting a token used longer ago than that (or whose child is used already): reuse.
  The whole family is revoked (its access tokens stop working too), a ``token.reuse_detected``
  audit event is written (outcome failure), and the caller gets Unauthenticated.

Exchanges of one family are serialised by a row lock on the family's first token, so two
concurrent uses of one token never both rotate it.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import OctKey
from joserfc.jws import JWSRegistry

from portal.domain.errors import Forbidden, Unauthenticated
from portal.domain.types import Actor
from portal.services.identity.accounts import (
    USER_VIEW_COLUMNS,
    UserView,
    load_user_view,
    token_digest,
    user_view_from_row,
)
from portal.services.identity.mfa import mfa_required
from portal.services.shared import audit
from portal.services.shared.settings import ServiceSettings
from portal.services.shared.uow import UnitOfWork

ALGORITHM = "HS256"
HEADER_TYPE = "at+jwt"
ACCESS_TYPE = "access"
REFRESH_PREFIX = "prt_"
REFRESH_LENGTH = len(REFRESH_PREFIX) + 43  # 32 bytes in unpadded base64url
#: Clock skew tolerated on ``exp`` and ``iat`` (seconds).
LEEWAY = 5

_REGISTRY = JWSRegistry(algorithms=[ALGORITHM])
_CHILD_DOMAIN = b"portal.refresh-token.child.v1"


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    expires_in: int
    refresh_token: str
    family_id: uuid.UUID
    token_type: str = "Bearer"  # noqa: S105 (the OAuth token type, not a secret)


@dataclass(frozen=True, slots=True)
class AccessClaims:
    """The checked claims of an access token."""

    user_id: int
    family_id: uuid.UUID
    jti: str
    issued_at: datetime
    expires_at: datetime


@functools.lru_cache(maxsize=4)
def _signing_key(key: bytes) -> OctKey:
    return OctKey.import_key(key)


@functools.lru_cache(maxsize=4)
def _child_key(key: bytes) -> bytes:
    return hmac.new(key, _CHILD_DOMAIN, hashlib.sha256).digest()


def _child_token(settings: ServiceSettings, token: str) -> str:
    mac = hmac.new(_child_key(settings.jwt_key), token.encode("ascii"), hashlib.sha256).digest()
    return REFRESH_PREFIX + base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def _new_family_token() -> str:
    return REFRESH_PREFIX + secrets.token_urlsafe(32)


def looks_like_refresh_token(token: str) -> bool:
    return (
        isinstance(token, str)
        and len(token) == REFRESH_LENGTH
        and token.startswith(REFRESH_PREFIX)
        and token.isascii()
    )


def _access_token(
    settings: ServiceSettings, user_id: int, family_id: uuid.UUID, now: datetime
) -> str:
    issued = int(now.timestamp())
    claims = {
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "sub": str(user_id),
        "typ": ACCESS_TYPE,
        "iat": issued,
        "exp": issued + settings.access_token_seconds,
        "jti": uuid.uuid4().hex,
        "fam": str(family_id),
    }
    header = {"alg": ALGORITHM, "typ": HEADER_TYPE}
    return jwt.encode(header, claims, _signing_key(settings.jwt_key), algorithms=[ALGORITHM])


def _pair(u: UnitOfWork, user_id: int, family_id: uuid.UUID, refresh_token: str) -> TokenPair:
    return TokenPair(
        access_token=_access_token(u.settings, user_id, family_id, u.now()),
        expires_in=u.settings.access_token_seconds,
        refresh_token=refresh_token,
        family_id=family_id,
    )


def _insert_token(
    u: UnitOfWork,
    *,
    token: str,
    user_id: int,
    family_id: uuid.UUID,
    parent_id: int | None,
    expires_at: datetime,
    user_agent: str,
) -> None:
    u.defer(
        "INSERT INTO refresh_tokens (user_id, family_id, parent_id, token_hash, issued_at,"
        " expires_at, user_agent) VALUES (:user_id, :family, :parent, :hash, :now, :expires,"
        " :agent)",
        user_id=user_id,
        family=family_id,
        parent=parent_id,
        hash=token_digest(token),
        now=u.now(),
        expires=expires_at,
        agent=(user_agent or "")[:255],
    )


def issue_tokens(uow: UnitOfWork, *, user_id: int, user_agent: str = "") -> TokenPair:
    """Start a refresh-token family for a user who has just authenticated (both factors when
    enrolled: the caller checks them) and return its first pair. Raises Unauthenticated (no
    such live user), Forbidden (code mfa_enrolment_required: staff without a second factor)."""

    def work(u: UnitOfWork) -> TokenPair:
        user = load_user_view(u, user_id)
        if user is None or user.archived:
            raise Unauthenticated("no such user")
        if mfa_required(user) and not user.mfa_enabled:
            raise Forbidden(
                "staff must set up a second factor before using the API",
                code="mfa_enrolment_required",
            )
        family_id = uuid.uuid4()
        token = _new_family_token()
        _insert_token(
            u, token=token, user_id=user_id, family_id=family_id, parent_id=None,
            expires_at=u.now() + timedelta(days=u.settings.refresh_token_days),
            user_agent=user_agent,
        )  # fmt: skip
        return _pair(u, user_id, family_id, token)

    return uow.run(work)


def _reuse(u: UnitOfWork, row: Any, reason: str) -> None:
    """Revoke the family of a replayed token, record it, and refuse after the commit."""
    u.defer(
        "UPDATE refresh_tokens SET revoked_at = :now WHERE family_id = :family"
        " AND revoked_at IS NULL",
        now=u.now(),
        family=row.family_id,
    )
    audit.record(
        u, Actor.system("token-refresh"), "token.reuse_detected", "user", row.user_id,
        outcome="failure",
        data={"family_id": str(row.family_id), "token_id": row.id, "reason": reason,
              "used_at": row.used_at.isoformat()},
    )  # fmt: skip
    u.observe("token_reuse_detections", reason=reason)
    u.refuse_after_commit(Unauthenticated("this refresh token is no longer valid; sign in again"))


def refresh(uow: UnitOfWork, *, refresh_token: str) -> TokenPair:
    """Exchange a refresh token for a new pair (rotation; see the module docstring for the grace
    period). Raises Unauthenticated (unknown, expired or revoked token, archived user, or reuse,
    which also revokes the family)."""
    if not looks_like_refresh_token(refresh_token):
        raise Unauthenticated("not a refresh token")
    digest = token_digest(refresh_token)

    def work(u: UnitOfWork) -> TokenPair | None:
        # Serialise exchanges of the family: lock its first token.
        locked = u.execute(
            "SELECT root.id FROM refresh_tokens t JOIN refresh_tokens root"
            " ON root.family_id = t.family_id AND root.parent_id IS NULL"
            " WHERE t.token_hash = :hash FOR UPDATE OF root",
            {"hash": digest},
        ).one_or_none()
        if locked is None:
            raise Unauthenticated("unknown refresh token")
        row = u.execute(
            "SELECT t.id, t.user_id, t.family_id, t.expires_at, t.used_at, t.revoked_at,"
            " t.user_agent, usr.archived_at AS user_archived_at FROM refresh_tokens t"
            " JOIN users usr ON usr.id = t.user_id WHERE t.token_hash = :hash",
            {"hash": digest},
        ).one()
        now = u.now()
        if row.revoked_at is not None:
            raise Unauthenticated("this refresh token was revoked; sign in again")
        if row.expires_at <= now:
            raise Unauthenticated("this refresh token has expired; sign in again")
        if row.user_archived_at is not None:
            raise Unauthenticated("no such user")
        if row.used_at is None:
            child = _child_token(u.settings, refresh_token)
            u.defer("UPDATE refresh_tokens SET used_at = :now WHERE id = :id", now=now, id=row.id)
            _insert_token(
                u, token=child, user_id=row.user_id, family_id=row.family_id, parent_id=row.id,
                expires_at=row.expires_at, user_agent=row.user_agent,
            )  # fmt: skip
            return _pair(u, row.user_id, row.family_id, child)
        if now - row.used_at <= timedelta(seconds=u.settings.refresh_grace_seconds):
            child = _child_token(u.settings, refresh_token)
            issued = u.execute(
                "SELECT used_at, revoked_at FROM refresh_tokens WHERE family_id = :family"
                " AND token_hash = :hash",
                {"family": row.family_id, "hash": token_digest(child)},
            ).first()
            if issued is not None and issued.used_at is None and issued.revoked_at is None:
                return _pair(u, row.user_id, row.family_id, child)
            _reuse(u, row, "child_already_used")
            return None
        _reuse(u, row, "used_after_grace")
        return None

    pair = uow.run(work)
    assert pair is not None  # reuse was raised after the commit
    return pair


def logout(uow: UnitOfWork, *, refresh_token: str) -> None:
    """Revoke the family of a refresh token (API sign-out); an already revoked family is left as
    it is. Raises Unauthenticated (not a known refresh token)."""
    if not looks_like_refresh_token(refresh_token):
        raise Unauthenticated("not a refresh token")
    digest = token_digest(refresh_token)

    def work(u: UnitOfWork) -> None:
        row = u.execute(
            "SELECT user_id, family_id FROM refresh_tokens WHERE token_hash = :hash",
            {"hash": digest},
        ).one_or_none()
        if row is None:
            raise Unauthenticated("unknown refresh token")
        u.defer(
            "UPDATE refresh_tokens SET revoked_at = :now WHERE family_id = :family"
            " AND revoked_at IS NULL",
            now=u.now(),
            family=row.family_id,
        )
        audit.record(u, Actor.user(row.user_id), "token_family.revoke", "user", row.user_id,
                     data={"family_id": str(row.family_id), "reason": "logout"})  # fmt: skip

    uow.run(work)


def _claims_registry(settings: ServiceSettings, now: int) -> jwt.JWTClaimsRegistry:
    return jwt.JWTClaimsRegistry(
        now=now,
        leeway=LEEWAY,
        iss={"essential": True, "value": settings.jwt_issuer},
        aud={"essential": True, "value": settings.jwt_audience},
        typ={"essential": True, "value": ACCESS_TYPE},
        sub={"essential": True},
        exp={"essential": True},
        iat={"essential": True},
        jti={"essential": True},
        fam={"essential": True},
    )


def verify_access_token(
    settings: ServiceSettings, token: str, *, now: datetime | None = None
) -> AccessClaims:
    """Check an access token: HS256 signature under our key (no other algorithm), header typ
    at+jwt, iss, aud, typ "access", exp, iat, jti, sub and fam, and a lifetime no longer than
    the configured one. Pure (no database). Raises Unauthenticated on any defect."""
    refused = Unauthenticated("the access token is not valid", code="invalid_token")
    if not isinstance(token, str) or not token or len(token) > 4096 or token.count(".") != 2:
        raise refused
    moment = int((now or datetime.now(UTC)).timestamp())
    try:
        decoded = jwt.decode(
            token, _signing_key(settings.jwt_key), algorithms=[ALGORITHM], registry=_REGISTRY
        )
        if decoded.header.get("alg") != ALGORITHM or decoded.header.get("typ") != HEADER_TYPE:
            raise refused
        claims = decoded.claims
        _claims_registry(settings, moment).validate(claims)
        if not isinstance(claims["sub"], str) or not claims["sub"].isdigit():
            raise refused
        if not isinstance(claims["fam"], str) or not isinstance(claims["jti"], str):
            raise refused
        # Never longer-lived than Portal issues them: a token minted with a stolen key and a
        # far expiry would otherwise outlive the key's rotation by as long as it says.
        if claims["exp"] - claims["iat"] > settings.access_token_seconds + LEEWAY:
            raise refused
        return AccessClaims(
            user_id=int(claims["sub"]),
            family_id=uuid.UUID(claims["fam"]),
            jti=claims["jti"],
            issued_at=datetime.fromtimestamp(claims["iat"], UTC),
            expires_at=datetime.fromtimestamp(claims["exp"], UTC),
        )
    except (JoseError, ValueError, TypeError, KeyError, OverflowError) as exc:
        raise refused from exc


def actor_for_access(uow: UnitOfWork, claims: AccessClaims) -> tuple[Actor, UserView]:
    """The actor behind checked access-token claims, in one query: the user exists and is not
    archived, and the token's family is neither revoked nor expired; permissions come from the
    user's live roles. Raises Unauthenticated."""
    rows = uow.read(
        f"SELECT {USER_VIEW_COLUMNS} FROM users u WHERE u.id = :user_id"  # nosec B608: a constant column list; values bound
        " AND u.archived_at IS NULL AND EXISTS (SELECT 1 FROM refresh_tokens t"
        " WHERE t.family_id = :family AND t.user_id = u.id AND t.revoked_at IS NULL"
        " AND t.expires_at > :now)",
        {"user_id": claims.user_id, "family": claims.family_id, "now": uow.clock()},
    )
    row = rows[0] if rows else None
    if row is None:
        raise Unauthenticated("the access token is no longer valid", code="invalid_token")
    user = user_view_from_row(row)
    return user.actor, user
