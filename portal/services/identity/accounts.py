"""Who a user is and how they prove it: sign-up, sign-in, email verification, password reset and
change, email change.

Sign-in reveals nothing: an unknown email, a wrong password and an archived account get the
same ``InvalidCredentials`` message, and an unknown email still costs one argon2 verification
(against a dummy hash) so the timing is alike. One-time email links are 256-bit random tokens
stored as SHA-256, single use (consumed by one conditional UPDATE) and short-lived. A password
reset does not sign anyone in, so it never bypasses the second factor (ASVS 6.4.3).
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError

from portal.domain.errors import (
    Conflict,
    Forbidden,
    InvalidCredentials,
    InvalidInput,
    InvalidState,
    NotFound,
    Unauthenticated,
)
from portal.domain.types import Actor
from portal.services.identity.credentials import revoke_credentials
from portal.services.identity.passwords import (
    burn_verification,
    check_password_policy,
    hash_password,
    needs_rehash,
    verify_password,
)
from portal.services.identity.users import canonical_email, check_names, clean_email, insert_user
from portal.services.shared import audit
from portal.services.shared.settings import ServiceSettings
from portal.services.shared.uow import UnitOfWork

#: The one answer to every failed sign-in, whatever the reason.
SIGN_IN_FAILED = "the email or password is not right"
#: The one answer to a bad, used or expired email link.
LINK_INVALID = "this link is not valid any more; ask for a new one"

SELF_REGISTRATION_ROLE = "cardholder"
STAFF_ROLES = frozenset({"admin", "support"})
EMAIL_TOKEN_PURPOSES = ("verify_email", "reset_password")


@dataclass(frozen=True, slots=True)
class UserView:
    """A user as the pages and the API see them (never an ORM row). ``roles`` and
    ``permissions`` come from live (unarchived) roles; an archived user holds none. ``id`` is
    internal; ``public_id`` (``usr_...``) is what the API and the pages call the user."""

    id: int
    public_id: str
    email: str
    first_name: str
    last_name: str
    email_verified: bool
    mfa_enabled: bool
    roles: tuple[str, ...]
    permissions: frozenset[str]
    archived: bool
    created_at: datetime
    #: Number, currency and date formats (``portal.domain.locale``) and the pages' time zone.
    locale: str = "en_US"
    time_zone: str = "UTC"

    @property
    def actor(self) -> Actor:
        """The actor acting as this user, with the permissions of their live roles."""
        return Actor.user(
            self.id, frozenset() if self.archived else self.permissions, public_id=self.public_id
        )

    @property
    def full_name(self) -> str:
        return f"{self.first_name} {self.last_name}"


# -- shared SQL and helpers (used by sessions, tokens and mfa too) -----------------------------
#: Columns of a ``UserView`` for a ``users`` row aliased ``u``, each labelled ``u_*``.
USER_VIEW_COLUMNS = """
    u.id AS u_id, u.public_id AS u_public_id, u.email AS u_email, u.first_name AS u_first_name,
    u.last_name AS u_last_name, u.email_verified_at AS u_email_verified_at,
    u.mfa_enabled_at AS u_mfa_enabled_at, u.archived_at AS u_archived_at,
    u.created_at AS u_created_at, u.locale AS u_locale,
    coalesce(u.time_zone, 'UTC') AS u_time_zone,
    ARRAY(SELECT r.name FROM user_roles ur
          JOIN roles r ON r.id = ur.role_id AND r.archived_at IS NULL
          WHERE ur.user_id = u.id ORDER BY r.name) AS u_roles,
    ARRAY(SELECT DISTINCT p.name FROM user_roles ur
          JOIN roles r ON r.id = ur.role_id AND r.archived_at IS NULL
          JOIN role_permissions rp ON rp.role_id = r.id
          JOIN permissions p ON p.id = rp.permission_id
          WHERE ur.user_id = u.id) AS u_permissions
"""


def user_view_from_row(row: Any) -> UserView:
    """Build a ``UserView`` from a row selected with ``USER_VIEW_COLUMNS``."""
    archived = row.u_archived_at is not None
    return UserView(
        id=row.u_id,
        public_id=row.u_public_id,
        email=row.u_email,
        first_name=row.u_first_name,
        last_name=row.u_last_name,
        email_verified=row.u_email_verified_at is not None,
        mfa_enabled=row.u_mfa_enabled_at is not None,
        roles=tuple(row.u_roles),
        permissions=frozenset() if archived else frozenset(row.u_permissions),
        archived=archived,
        created_at=row.u_created_at,
        locale=row.u_locale,
        time_zone=row.u_time_zone,
    )


def load_user_view(u: UnitOfWork, user_id: int) -> UserView | None:
    """The ``UserView`` of a user inside an open transaction (None if there is no such user)."""
    row = u.execute(
        f"SELECT {USER_VIEW_COLUMNS} FROM users u WHERE u.id = :id",  # nosec B608: a constant column list; values bound
        {"id": user_id},
    ).one_or_none()
    return None if row is None else user_view_from_row(row)


def token_digest(token: str) -> bytes:
    """SHA-256 of a bearer secret (session, refresh or email token): what the database keeps."""
    return hashlib.sha256(token.encode("utf-8")).digest()


def new_secret() -> str:
    """A 256-bit random secret, URL-safe."""
    return secrets.token_urlsafe(32)


def require_user(actor: Actor) -> int:
    """The user id of an actor who must be a signed-in user. Raises Unauthenticated."""
    if actor.kind != "user" or actor.id is None:
        raise Unauthenticated("sign in first")
    return actor.id


def require_verified(settings: ServiceSettings, user: UserView) -> None:
    """For pages and endpoints that move money: refuse an unverified email while the setting
    ``require_verified_email`` is on. Raises Forbidden (code email_unverified)."""
    if settings.require_verified_email and not user.email_verified:
        raise Forbidden("verify your email address before moving money", code="email_unverified")


def is_staff(user: UserView) -> bool:
    return bool(STAFF_ROLES.intersection(user.roles))


def _personal(email: str, first_name: str, last_name: str) -> tuple[str, ...]:
    return (email, email.partition("@")[0], first_name, last_name)


# -- sign-up and sign-in -----------------------------------------------------------------------
def register(
    uow: UnitOfWork,
    *,
    email: str,
    first_name: str,
    last_name: str,
    password: str,
    password_confirmation: str,
) -> UserView:
    """Sign up a cardholder (unverified email). Raises InvalidInput (email, names, password
    policy), Conflict (email taken)."""
    email = clean_email(email)
    first, last = check_names(first_name, last_name)
    check_password_policy(password, password_confirmation, personal=_personal(email, first, last))
    password_hash = hash_password(password)  # outside the transaction: it takes ~15 ms

    def work(u: UnitOfWork) -> UserView:
        created = insert_user(
            u, Actor.system("signup"), email=email, first_name=first, last_name=last,
            password_hash=password_hash, roles=(SELF_REGISTRATION_ROLE,), verified=False,
        )  # fmt: skip
        u.defer(
            "UPDATE users SET password_changed_at = :now WHERE id = :id",
            now=u.now(),
            id=created.id,
        )
        view = load_user_view(u, created.id)
        assert view is not None
        return view

    return uow.run(work)


def authenticate(uow: UnitOfWork, *, email: str, password: str) -> UserView:
    """Check an email and password (first factor only), rehashing the password when the hashing
    parameters changed. Raises InvalidCredentials with one message for an unknown email, a
    wrong password and an archived account."""
    try:
        address: str | None = clean_email(email)
    except InvalidInput:
        address = None
    password = password if isinstance(password, str) else ""
    row = None
    if address is not None:
        row = uow.run(
            lambda u: u.execute(
                "SELECT id, password_hash FROM users WHERE email_canonical = :canonical",
                {"canonical": canonical_email(address)},
            ).one_or_none()
        )
    stored: str | None = None if row is None else row.password_hash
    user_id: int | None = None if row is None else row.id
    if stored is None:
        burn_verification(password)  # the same cost as checking a real hash
        ok = False
    else:
        ok = verify_password(stored, password)
    new_hash = hash_password(password) if ok and stored and needs_rehash(stored) else None

    def work(u: UnitOfWork) -> UserView | None:
        view = load_user_view(u, user_id) if user_id is not None else None
        if ok and view is not None and not view.archived:
            if new_hash is not None:
                u.defer(
                    "UPDATE users SET password_hash = :new WHERE id = :id AND password_hash = :old",
                    new=new_hash,
                    id=view.id,
                    old=stored,
                )
            audit.record(
                u, view.actor, "auth.sign_in", "user", view.id,
                data={"rehashed": new_hash is not None},
            )  # fmt: skip
            u.observe("sign_ins", outcome="success")
            return view
        if view is None:
            reason = "unknown_email"
        elif view.archived:
            reason = "archived"
        else:
            reason = "wrong_password"
        audit.record(
            u, Actor.system("sign-in"), "auth.sign_in", "user", user_id,
            outcome="failure", data={"reason": reason},
        )  # fmt: skip
        u.observe("sign_ins", outcome="failure")
        u.refuse_after_commit(InvalidCredentials(SIGN_IN_FAILED))
        return None

    view = uow.run(work)
    assert view is not None  # a failure was raised after the commit
    return view


def account_key(uow: UnitOfWork, email: str) -> str:
    """How per-account limits name the account an address signs in to: ``user:<id>`` for the
    user with this canonical address (archived or not), else ``email:<canonical address>``, so
    every spelling of one account (case, width, compatibility forms) shares one bucket. Raises
    nothing."""
    canonical = canonical_email(email if isinstance(email, str) else "")
    user_id = None
    if canonical:
        user_id = uow.run(
            lambda u: u.execute(
                "SELECT id FROM users WHERE email_canonical = :canonical",
                {"canonical": canonical},
            ).scalar_one_or_none()
        )
    return f"user:{user_id}" if user_id is not None else f"email:{canonical}"


def get_user_view(uow: UnitOfWork, user_id: int) -> UserView:
    """A user's view. Raises NotFound."""
    view = uow.run(lambda u: load_user_view(u, user_id))
    if view is None:
        raise NotFound("no such user", param="user_id")
    return view


# -- one-time email links ----------------------------------------------------------------------
def _issue(u: UnitOfWork, user_id: int, purpose: str, new_email: str | None) -> str:
    """Inside an open transaction: replace the user's outstanding links of ``purpose`` with a
    new one and return its token (the only time it exists in the clear)."""
    minutes = (
        u.settings.password_reset_minutes
        if purpose == "reset_password"
        else u.settings.email_token_minutes
    )
    token = new_secret()
    u.defer(
        "DELETE FROM user_tokens WHERE user_id = :user_id AND purpose = :purpose"
        " AND used_at IS NULL",
        user_id=user_id,
        purpose=purpose,
    )
    u.defer(
        "INSERT INTO user_tokens (user_id, purpose, token_hash, new_email, created_at,"
        " expires_at) VALUES (:user_id, :purpose, :hash, :new_email, :now, :expires)",
        user_id=user_id,
        purpose=purpose,
        hash=token_digest(token),
        new_email=new_email,
        now=u.now(),
        expires=u.now() + timedelta(minutes=minutes),
    )
    return token


def issue_email_token(
    uow: UnitOfWork, *, user_id: int, purpose: str, new_email: str | None = None
) -> str:
    """A new single-use link token (verify_email, optionally for a new address, or
    reset_password), superseding the user's earlier unused ones of that purpose. Raises
    InvalidInput (purpose, new_email), NotFound (no live user), InvalidState (already
    verified)."""
    if purpose not in EMAIL_TOKEN_PURPOSES:
        raise InvalidInput("unknown token purpose", param="purpose")
    if new_email is not None:
        if purpose != "verify_email":
            raise InvalidInput("only an email verification names a new address", param="purpose")
        new_email = clean_email(new_email)

    def work(u: UnitOfWork) -> str:
        view = load_user_view(u, user_id)
        if view is None or view.archived:
            raise NotFound("no such user", param="user_id")
        if purpose == "verify_email" and new_email is None and view.email_verified:
            raise InvalidState(
                "this email address is verified already", code="email_already_verified"
            )
        return _issue(u, user_id, purpose, new_email)

    return uow.run(work)


def _consume(u: UnitOfWork, token: str, purpose: str) -> Any:
    """Spend a link token in one conditional UPDATE (so two concurrent uses cannot both
    succeed): unused, unexpired, of a live user. Raises InvalidInput (code token_invalid)."""
    row = u.execute(
        "UPDATE user_tokens t SET used_at = :now FROM users usr"
        " WHERE t.token_hash = :hash AND t.purpose = :purpose AND t.used_at IS NULL"
        " AND t.expires_at > :now AND usr.id = t.user_id AND usr.archived_at IS NULL"
        " RETURNING t.id, t.user_id, t.new_email",
        {"hash": token_digest(token or ""), "purpose": purpose, "now": u.now()},
    ).one_or_none()
    if row is None:
        raise InvalidInput(LINK_INVALID, param="token", code="token_invalid")
    return row


def verify_email(uow: UnitOfWork, *, token: str) -> UserView:
    """Spend an email-verification link: mark the address verified, or for an email change
    switch to the new (now verified) address. Raises InvalidInput (code token_invalid),
    Conflict (the new address was taken meanwhile)."""

    def work(u: UnitOfWork) -> UserView:
        row = _consume(u, token, "verify_email")
        if row.new_email:
            old = u.execute(
                "SELECT email FROM users WHERE id = :id FOR UPDATE", {"id": row.user_id}
            ).scalar_one()
            try:
                # The unique index on email_canonical decides, even against a concurrent
                # sign-up.
                with u.session.begin_nested():
                    u.execute(
                        "UPDATE users SET email = :email, email_canonical = :canonical,"
                        " email_verified_at = :now, updated_at = :now WHERE id = :id",
                        {"email": row.new_email, "canonical": canonical_email(row.new_email),
                         "now": u.now(), "id": row.user_id},
                    )  # fmt: skip
            except IntegrityError as exc:
                raise Conflict(
                    "an account with this email already exists", param="email", code="email_taken"
                ) from exc
            # Links mailed to the old address must not outlive the change.
            u.defer(
                "DELETE FROM user_tokens WHERE user_id = :id AND used_at IS NULL",
                id=row.user_id,
            )
            audit.record(
                u, Actor.user(row.user_id), "user.email_change", "user", row.user_id,
                data={"old_email": old, "new_email": row.new_email},
            )  # fmt: skip
        else:
            u.defer(
                "UPDATE users SET email_verified_at = COALESCE(email_verified_at, :now)"
                " WHERE id = :id",
                now=u.now(),
                id=row.user_id,
            )
            audit.record(u, Actor.user(row.user_id), "user.email_verify", "user", row.user_id)
        view = load_user_view(u, row.user_id)
        assert view is not None
        return view

    return uow.run(work)


# -- passwords -----------------------------------------------------------------------------------
def request_password_reset(uow: UnitOfWork, *, email: str) -> tuple[UserView, str] | None:
    """A reset link token for a live user with this email, or None when there is none: the
    caller answers the same either way. Raises nothing for an unknown or malformed email."""
    try:
        address = clean_email(email)
    except InvalidInput:
        return None

    def work(u: UnitOfWork) -> tuple[UserView, str] | None:
        user_id = u.execute(
            "SELECT id FROM users WHERE email_canonical = :canonical AND archived_at IS NULL",
            {"canonical": canonical_email(address)},
        ).scalar_one_or_none()
        if user_id is None:
            return None
        view = load_user_view(u, user_id)
        assert view is not None
        token = _issue(u, user_id, "reset_password", None)
        audit.record(u, Actor.system("password-reset"), "user.password_reset_request", "user",
                     user_id)  # fmt: skip
        return view, token

    return uow.run(work)


def reset_password(
    uow: UnitOfWork, *, token: str, password: str, password_confirmation: str
) -> UserView:
    """Spend a reset link: set the new password, verify the address the link went to, and
    revoke every web session and refresh-token family of the user. Signs nobody in. Raises
    InvalidInput (code token_invalid, or the password policy's codes)."""
    digest = token_digest(token or "")

    def peek(u: UnitOfWork) -> Any:
        return u.execute(
            "SELECT usr.email, usr.first_name, usr.last_name FROM user_tokens t"
            " JOIN users usr ON usr.id = t.user_id AND usr.archived_at IS NULL"
            " WHERE t.token_hash = :hash AND t.purpose = 'reset_password'"
            " AND t.used_at IS NULL AND t.expires_at > :now",
            {"hash": digest, "now": u.now()},
        ).one_or_none()

    found = uow.run(peek)
    if found is None:
        raise InvalidInput(LINK_INVALID, param="token", code="token_invalid")
    check_password_policy(
        password, password_confirmation,
        personal=_personal(found.email, found.first_name, found.last_name),
    )  # fmt: skip
    password_hash = hash_password(password)

    def work(u: UnitOfWork) -> UserView:
        row = _consume(u, token, "reset_password")
        u.defer(
            "UPDATE users SET password_hash = :hash, password_changed_at = :now,"
            " updated_at = :now, email_verified_at = COALESCE(email_verified_at, :now)"
            " WHERE id = :id",
            hash=password_hash,
            now=u.now(),
            id=row.user_id,
        )
        u.defer(
            "DELETE FROM user_tokens WHERE user_id = :id AND purpose = 'reset_password'"
            " AND used_at IS NULL",
            id=row.user_id,
        )
        revoke_credentials(u, row.user_id)
        audit.record(u, Actor.user(row.user_id), "user.password_reset", "user", row.user_id)
        view = load_user_view(u, row.user_id)
        assert view is not None
        return view

    return uow.run(work)


def reauthenticate(
    uow: UnitOfWork, user_id: int, password: str, *, action: str, param: str = "current_password"
) -> Any:
    """Re-authentication before a sensitive change: the user's row (id, email, names,
    password_hash) if ``password`` is theirs; otherwise write a failure audit event for
    ``action`` and raise InvalidInput (code wrong_password, on ``param``). Raises
    Unauthenticated (no such live user)."""
    row = uow.run(
        lambda u: u.execute(
            "SELECT id, email, first_name, last_name, password_hash, archived_at"
            " FROM users WHERE id = :id",
            {"id": user_id},
        ).one_or_none()
    )
    if row is None or row.archived_at is not None:
        raise Unauthenticated("sign in first")
    if verify_password(row.password_hash, password if isinstance(password, str) else ""):
        return row

    def fail(u: UnitOfWork) -> None:
        audit.record(u, Actor.user(user_id), action, "user", user_id, outcome="failure",
                     data={"reason": "wrong_password"})  # fmt: skip

    uow.run(fail)
    raise InvalidInput("the password is not right", param=param, code="wrong_password")


def change_password(
    uow: UnitOfWork,
    *,
    actor: Actor,
    current_password: str,
    password: str,
    password_confirmation: str,
    keep_session_id: int | None = None,
    keep_family_id: uuid.UUID | None = None,
) -> None:
    """Change one's own password (the current one required); revoke every web session and
    every refresh-token family but the caller's own (``keep_session_id`` for the pages,
    ``keep_family_id`` for the API). Raises Unauthenticated, InvalidInput (wrong_password, the
    password policy's codes), Conflict (changed concurrently)."""
    user_id = require_user(actor)
    row = reauthenticate(uow, user_id, current_password, action="user.password_change")
    check_password_policy(
        password, password_confirmation,
        personal=_personal(row.email, row.first_name, row.last_name),
    )  # fmt: skip
    password_hash = hash_password(password)

    def work(u: UnitOfWork) -> None:
        changed = u.execute(
            "UPDATE users SET password_hash = :new, password_changed_at = :now, updated_at = :now"
            " WHERE id = :id AND password_hash = :old AND archived_at IS NULL RETURNING id",
            {"new": password_hash, "now": u.now(), "id": user_id, "old": row.password_hash},
        ).one_or_none()
        if changed is None:
            raise Conflict("the password was changed meanwhile; try again", code="conflict")
        u.defer(
            "DELETE FROM user_tokens WHERE user_id = :id AND purpose = 'reset_password'"
            " AND used_at IS NULL",
            id=user_id,
        )
        revoke_credentials(
            u, user_id, except_session_id=keep_session_id, except_family_id=keep_family_id
        )
        kept = {
            "kept_session_id": keep_session_id,
            "kept_family_id": None if keep_family_id is None else str(keep_family_id),
        }
        audit.record(u, actor, "user.password_change", "user", user_id, data=kept)

    uow.run(work)


def request_email_change(uow: UnitOfWork, *, actor: Actor, password: str, new_email: str) -> str:
    """Start changing one's email (re-authentication by password); returns the verification
    token to mail to the new address, which becomes the email only once verified. Raises
    Unauthenticated, InvalidInput (new_email, wrong_password, email_unchanged), Conflict
    (email_taken)."""
    user_id = require_user(actor)
    try:
        address = clean_email(new_email)
    except InvalidInput as exc:
        raise InvalidInput(exc.message, param="new_email") from None
    row = reauthenticate(
        uow, user_id, password, action="user.email_change_request", param="password"
    )
    if canonical_email(address) == canonical_email(row.email):
        raise InvalidInput(
            "this is your email address already", param="new_email", code="email_unchanged"
        )

    def work(u: UnitOfWork) -> str:
        taken = u.execute(
            "SELECT 1 FROM users WHERE email_canonical = :canonical",
            {"canonical": canonical_email(address)},
        ).first()
        if taken:
            raise Conflict(
                "an account with this email already exists", param="new_email", code="email_taken"
            )
        token = _issue(u, user_id, "verify_email", address)
        audit.record(u, actor, "user.email_change_request", "user", user_id,
                     data={"new_email": address})  # fmt: skip
        return token

    return uow.run(work)
