"""Server-side web sessions, and the "sessions and devices" list of the account page.

A browser holds only a random 256-bit token; the database keeps its SHA-256 with the session's
state, so every request is checked against the row and a session can be listed, timed out and
revoked. Every sign-in makes a new session with a new token (ASVS 7.2.4), and passing the second
factor rotates the token again. A session ends when revoked, idle for longer than
``session_idle_minutes``, older than ``session_absolute_hours`` or when its user is archived
(ASVS 7.3.1, 7.3.2, 7.4.2).

A web session is named by :data:`~portal.services.shared.refs.Ref` (its public id ``ses_...``
from a request, or its internal id); an API session is its refresh-token family's UUID.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from portal.domain.errors import NotFound, Unauthenticated
from portal.domain.types import Actor
from portal.services.identity.accounts import (
    USER_VIEW_COLUMNS,
    UserView,
    new_secret,
    require_user,
    token_digest,
    user_view_from_row,
)
from portal.services.identity.credentials import revoke_credentials
from portal.services.identity.users import is_self
from portal.services.shared import audit
from portal.services.shared.refs import Ref, ref_key
from portal.services.shared.uow import UnitOfWork

#: ``last_seen_at`` is written at most this often per session (keeps resolving cheap).
TOUCH_INTERVAL = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class NewSession:
    """A session just made: its ids and the token for the cookie (shown only now)."""

    id: int
    token: str
    public_id: str


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """The live session behind a request."""

    session_id: int
    user: UserView
    mfa_verified: bool

    @property
    def actor(self) -> Actor:
        return self.user.actor


@dataclass(frozen=True, slots=True)
class SessionView:
    """One line of "sessions and devices": a web session (``kind="web"``, ``id`` its internal
    number, ``public_id`` its ``ses_...`` id) or an API refresh-token family (``kind="api"``,
    ``id`` and ``public_id`` the family's UUID)."""

    kind: str
    id: str
    public_id: str
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime
    user_agent: str
    ip: str
    current: bool


def create_web_session(
    uow: UnitOfWork, *, user_id: int, user_agent: str, ip: str, mfa_verified: bool
) -> NewSession:
    """Start a web session with a new random token (call after authenticating; one per sign-in).
    Raises Unauthenticated (no such live user)."""
    token = new_secret()

    def work(u: UnitOfWork) -> NewSession:
        now = u.now()
        row = u.execute(
            "INSERT INTO web_sessions (user_id, token_hash, created_at, last_seen_at,"
            " absolute_expires_at, mfa_verified_at, user_agent, ip)"
            " SELECT id, :hash, :now, :now, :expires, :mfa, :agent, :ip FROM users"
            " WHERE id = :user_id AND archived_at IS NULL RETURNING id, public_id",
            {
                "hash": token_digest(token),
                "now": now,
                "expires": now + timedelta(hours=u.settings.session_absolute_hours),
                "mfa": now if mfa_verified else None,
                "agent": (user_agent or "")[:255],
                "ip": (ip or "")[:64],
                "user_id": user_id,
            },
        ).one_or_none()
        if row is None:
            raise Unauthenticated("no such user")
        return NewSession(row.id, token, row.public_id)

    return uow.run(work)


def _live(u: UnitOfWork, row: Any, now: datetime | None = None) -> bool:
    now = now or u.now()
    idle = timedelta(minutes=u.settings.session_idle_minutes)
    return (
        row.revoked_at is None
        and row.absolute_expires_at > now
        and now - row.last_seen_at <= idle
        and row.u_archived_at is None
    )


def resolve_web_session(uow: UnitOfWork, *, token: str, touch: bool = True) -> SessionInfo | None:
    """The live session of a cookie token, or None when it is unknown, revoked, idle too long,
    past its absolute expiry, or its user is archived. Touches ``last_seen_at`` at most once a
    minute, and not at all with ``touch=False`` (a request the browser makes by itself, such as
    a live poll, is no sign of the person: it must not keep the session from idling out).
    Raises nothing."""
    if not token or not isinstance(token, str) or len(token) > 256:
        return None
    digest = token_digest(token)

    rows = uow.read(  # one statement, no transaction: every page and poll asks it
        "SELECT s.id, s.last_seen_at, s.absolute_expires_at, s.revoked_at,"  # nosec B608: a constant column list; values bound
        f" s.mfa_verified_at, {USER_VIEW_COLUMNS}"
        " FROM web_sessions s JOIN users u ON u.id = s.user_id WHERE s.token_hash = :hash",
        {"hash": digest},
    )
    row = rows[0] if rows else None
    now = uow.clock()
    if row is None or not _live(uow, row, now):
        return None
    if touch and now - row.last_seen_at >= TOUCH_INTERVAL:  # at most once a minute
        uow.run(
            lambda u: u.execute(
                "UPDATE web_sessions SET last_seen_at = :now WHERE id = :id"
                " AND last_seen_at < :now",
                {"now": u.now(), "id": row.id},
            )
        )
    return SessionInfo(row.id, user_view_from_row(row), row.mfa_verified_at is not None)


def ended_reason(uow: UnitOfWork, *, token: str) -> str | None:
    """Why the session of a cookie token is no longer live: ``"revoked"`` (signed out
    elsewhere, or by an administrator), ``"idle"``, ``"expired"`` (its absolute limit),
    ``"archived"``; None if it is unknown or still live. For telling a person why they were
    signed out (rare path). Raises nothing."""
    if not token or not isinstance(token, str) or len(token) > 256:
        return None

    def work(u: UnitOfWork) -> str | None:
        row = u.execute(
            "SELECT s.last_seen_at, s.absolute_expires_at, s.revoked_at,"
            " u.archived_at AS u_archived_at FROM web_sessions s"
            " JOIN users u ON u.id = s.user_id WHERE s.token_hash = :hash",
            {"hash": token_digest(token)},
        ).one_or_none()
        if row is None or _live(u, row):
            return None
        if row.u_archived_at is not None:
            return "archived"
        if row.revoked_at is not None:
            return "revoked"
        if row.absolute_expires_at <= u.now():
            return "expired"
        return "idle"

    return uow.run(work)


def mark_mfa_verified(uow: UnitOfWork, *, session_id: int) -> NewSession:
    """Record that the session's user passed the second factor, and rotate the session token
    (a new token at every step up in authentication): the caller must store the returned token
    in place of the old one. Raises Unauthenticated (session not live)."""
    token = new_secret()

    def work(u: UnitOfWork) -> NewSession:
        row = u.execute(
            "SELECT s.id, s.public_id, s.last_seen_at, s.absolute_expires_at, s.revoked_at,"
            " u.archived_at AS u_archived_at FROM web_sessions s"
            " JOIN users u ON u.id = s.user_id WHERE s.id = :id FOR UPDATE OF s",
            {"id": session_id},
        ).one_or_none()
        if row is None or not _live(u, row):
            raise Unauthenticated("the session has ended; sign in again")
        u.defer(
            "UPDATE web_sessions SET mfa_verified_at = :now, last_seen_at = :now,"
            " token_hash = :hash WHERE id = :id",
            now=u.now(),
            hash=token_digest(token),
            id=session_id,
        )
        return NewSession(session_id, token, row.public_id)

    return uow.run(work)


def _target_user(actor: Actor, user_id: Ref | None, permission: str) -> tuple[str, int | str]:
    """Whose sessions: one's own, or (with ``permission``) anyone's, as the users column and
    value that find them. Raises Unauthenticated, NotFound (someone else's without the
    permission: their existence is not revealed; or a ref that names no user)."""
    if user_id is None:
        return "id", require_user(actor)
    key = ref_key("user", user_id)
    if key is None:
        raise NotFound("no such user", param="user_id")
    if is_self(actor, user_id) or actor.can(permission):
        return key
    raise NotFound("no such user", param="user_id")


def list_sessions(
    uow: UnitOfWork,
    *,
    actor: Actor,
    user_id: Ref | None = None,
    current_session_id: int | None = None,
    current_family_id: uuid.UUID | None = None,
) -> list[SessionView]:
    """Live web sessions and API refresh-token families of the actor (or, with users:read, of
    ``user_id``), most recently used first; the caller names its own session or family to mark
    it current. Raises Unauthenticated, NotFound (also for a ``user_id`` naming nobody)."""
    column, target = _target_user(actor, user_id, "users:read")
    owner = f"user_id = (SELECT id FROM users WHERE {column} = :user_id)"  # nosec B608: the column is id or public_id (ref_key); values bound

    def work(u: UnitOfWork) -> list[SessionView]:
        now = u.now()
        idle_since = now - timedelta(minutes=u.settings.session_idle_minutes)
        web = u.execute(
            "SELECT id, public_id, created_at, last_seen_at, absolute_expires_at, user_agent, ip"  # nosec B608: owner is the constant fragment above; values bound
            f" FROM web_sessions WHERE {owner} AND revoked_at IS NULL"
            " AND absolute_expires_at > :now AND last_seen_at >= :idle_since",
            {"user_id": target, "now": now, "idle_since": idle_since},
        ).all()
        api = u.execute(
            "SELECT family_id, min(issued_at) AS created_at, max(issued_at) AS last_seen_at,"  # nosec B608: owner is the constant fragment above; values bound
            " max(expires_at) AS expires_at,"
            " (array_agg(user_agent ORDER BY id))[1] AS user_agent"
            f" FROM refresh_tokens WHERE {owner} GROUP BY family_id"
            " HAVING bool_and(revoked_at IS NULL) AND max(expires_at) > :now",
            {"user_id": target, "now": now},
        ).all()
        if not web and not api and user_id is not None:  # nothing, or nobody? (rare path)
            exists = u.execute(
                f"SELECT EXISTS (SELECT 1 FROM users WHERE {column} = :user_id)",  # nosec B608: the column is id or public_id (ref_key); values bound
                {"user_id": target},
            ).scalar_one()
            if not exists:
                raise NotFound("no such user", param="user_id")
        views = [
            SessionView("web", str(r.id), r.public_id, r.created_at, r.last_seen_at,
                        min(r.absolute_expires_at, r.last_seen_at
                            + timedelta(minutes=u.settings.session_idle_minutes)),
                        r.user_agent, r.ip, r.id == current_session_id)
            for r in web
        ] + [
            SessionView("api", str(r.family_id), str(r.family_id), r.created_at,
                        r.last_seen_at, r.expires_at, r.user_agent, "",
                        r.family_id == current_family_id)
            for r in api
        ]  # fmt: skip
        return sorted(views, key=lambda v: v.last_seen_at, reverse=True)

    return uow.run(work)


def revoke_session(uow: UnitOfWork, *, actor: Actor, session_id: Ref) -> int:
    """End a web session (sign-out, or from "sessions and devices"): the owner's own, or anyone's
    with users:manage. Revoking an ended session changes nothing. Returns the session's
    internal id. Raises Unauthenticated, NotFound (unknown, or someone else's)."""
    key = ref_key("session", session_id)
    if key is None:
        raise NotFound("no such session", param="session_id")
    column, value = key

    def work(u: UnitOfWork) -> int:
        found = u.execute(
            f"SELECT id, user_id FROM web_sessions WHERE {column} = :v",  # nosec B608: the column is id or public_id (ref_key); values bound
            {"v": value},
        ).one_or_none()
        if found is None:
            raise NotFound("no such session", param="session_id")
        _target_user(actor, found.user_id, "users:manage")
        u.defer(
            "UPDATE web_sessions SET revoked_at = :now WHERE id = :id AND revoked_at IS NULL",
            now=u.now(),
            id=found.id,
        )
        audit.record(u, actor, "session.revoke", "web_session", found.id,
                     data={"user_id": found.user_id})  # fmt: skip
        return int(found.id)

    return uow.run(work)


def revoke_family(uow: UnitOfWork, *, actor: Actor, family_id: uuid.UUID) -> None:
    """Revoke an API refresh-token family (its access tokens stop working too): the owner's own,
    or anyone's with users:manage. Raises Unauthenticated, NotFound."""

    def work(u: UnitOfWork) -> None:
        # The family's first token, locked as refresh() locks it: a refresh in flight finishes
        # first, and the revocation then sees (and revokes) the token it issued.
        owner = u.execute(
            "SELECT user_id FROM refresh_tokens WHERE family_id = :family AND parent_id IS NULL"
            " FOR UPDATE",
            {"family": family_id},
        ).scalar_one_or_none()
        if owner is None:
            raise NotFound("no such session", param="family_id")
        _target_user(actor, owner, "users:manage")
        u.defer(
            "UPDATE refresh_tokens SET revoked_at = :now WHERE family_id = :family"
            " AND revoked_at IS NULL",
            now=u.now(),
            family=family_id,
        )
        audit.record(u, actor, "token_family.revoke", "user", owner,
                     data={"family_id": str(family_id), "reason": "revoked"})  # fmt: skip

    uow.run(work)


def revoke_all(
    uow: UnitOfWork,
    *,
    actor: Actor,
    except_session_id: int | None = None,
    user_id: Ref | None = None,
) -> None:
    """Revoke every web session (but ``except_session_id``) and every refresh-token family of
    the actor, or with users:manage of ``user_id``. Raises Unauthenticated, NotFound (also for a
    user named by a public id that names nobody)."""
    column, value = _target_user(actor, user_id, "users:manage")

    def work(u: UnitOfWork) -> None:
        found: Any = value
        if column == "public_id":  # one indexed look-up: the revocations go by internal id
            found = u.execute(
                "SELECT id FROM users WHERE public_id = :v", {"v": value}
            ).scalar_one_or_none()
            if found is None:
                raise NotFound("no such user", param="user_id")
        target = int(found)
        revoke_credentials(u, target, except_session_id=except_session_id)
        audit.record(u, actor, "session.revoke_all", "user", target,
                     data={"kept_session_id": except_session_id})  # fmt: skip

    uow.run(work)
