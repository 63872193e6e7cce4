"""Single sign-on: which Portal user an OpenID Connect identity (issuer + subject) is.

The rules, in order:

1. An identity linked before signs in as its user (an archived user is refused).
2. Otherwise, a live user with the same canonical email is linked only when the
   provider says the email is verified AND the Portal account's email is verified: a provider
   that hands out unverified addresses must not become a way into someone else's account. An
   account already linked to another identity of the same provider is refused too (a recycled
   address at the provider). The user is told to sign in with their password (and verify their
   email) instead.
3. Otherwise a cardholder is created, without a password, its email verified only if the
   provider said so, and linked.

Every outcome is audited (``auth.sso_sign_in``; a new link also writes ``auth.sso_link``). This
service signs nobody in: the caller starts the session, and only after the second factor when
the user has one (single sign-on never bypasses TOTP).
"""

from __future__ import annotations

from typing import Any

from portal.domain.errors import Conflict, InvalidCredentials, InvalidInput
from portal.domain.types import Actor
from portal.services.identity.accounts import SELF_REGISTRATION_ROLE, UserView, load_user_view
from portal.services.identity.users import (
    canonical_email,
    clean_email,
    insert_user,
    is_printable,
    name_problem,
)
from portal.services.shared import audit
from portal.services.shared.uow import UnitOfWork

SSO_ACTOR = Actor.system("sso")
#: Column widths of ``oauth_identities.issuer`` / ``subject`` and ``users.first_name`` etc.
MAX_IDENTIFIER = 255
MAX_NAME = 100
#: When the provider gives no family name (``last_name`` is required by Portal).
NO_NAME = "-"

ARCHIVED = "this account cannot sign in; contact support"
NEW_EMAIL_UNVERIFIED = (
    "your provider has not verified this email address: verify it there, or register with a"
    " password"
)
EMAIL_UNVERIFIED_PROVIDER = (
    "an account with this email address exists, but your provider has not verified the address:"
    " sign in with your password instead"
)
EMAIL_UNVERIFIED_PORTAL = (
    "an account with this email address exists, but its address is not verified yet: sign in"
    " with your password and verify your email, then single sign-on will work"
)
OTHER_IDENTITY = (
    "this account is linked to another identity at this provider: sign in with that identity"
    " or with your password"
)
NO_EMAIL = "the provider did not share a valid email address, which Portal needs"
RETRY = "another sign-in for this identity was in progress; try again"


def _identifier(value: object, param: str) -> str:
    if (
        not isinstance(value, str)
        or not value
        or len(value) > MAX_IDENTIFIER
        or not is_printable(value)
    ):
        raise InvalidInput(
            f"the provider sent no usable {param}", param=param, code="sso_identity_invalid"
        )
    return value


def _email(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return clean_email(value)
    except InvalidInput:
        return None


def _name(value: object, fallback: str) -> str:
    """A provider's name claim made fit for Portal (collapsed spaces, printable, at most 100
    characters), or ``fallback``."""
    text = " ".join(value.split()) if isinstance(value, str) else ""
    text = text[:MAX_NAME].strip()
    return text if text and not name_problem(text) else fallback


def sign_in_with_oidc(
    uow: UnitOfWork,
    *,
    issuer: str,
    subject: str,
    email: str | None,
    email_verified: bool,
    first_name: str | None,
    last_name: str | None,
) -> UserView:
    """The user a validated ID token names: the linked user, a user linked now by a verified
    email on both sides, or a new cardholder (only for an address the provider verified).
    Raises InvalidInput (code sso_identity_invalid; sso_email_missing), InvalidCredentials
    (archived user), Conflict (sso_email_unverified, sso_identity_mismatch, sso_retry)."""
    issuer = _identifier(issuer, "issuer")
    subject = _identifier(subject, "subject")
    address = _email(email)
    verified = email_verified is True  # a provider's "true" string is the caller's to read
    event = {"issuer": issuer, "subject": subject}

    def refuse(
        u: UnitOfWork, error: InvalidInput | InvalidCredentials | Conflict, user_id: int | None,
        reason: str,
    ) -> None:  # fmt: skip
        audit.record(
            u, SSO_ACTOR, "auth.sso_sign_in", "user", user_id, outcome="failure",
            data={**event, "email": address, "reason": reason},
        )  # fmt: skip
        u.refuse_after_commit(error)

    def succeed(u: UnitOfWork, user_id: int, how: str) -> UserView:
        view = load_user_view(u, user_id)
        assert view is not None  # locked or inserted by this transaction
        audit.record(
            u, view.actor, "auth.sso_sign_in", "user", view.id, data={**event, "via": how}
        )  # fmt: skip
        return view

    def link(u: UnitOfWork, user_id: int) -> bool:
        # ON CONFLICT: two first sign-ins of one identity at once; the loser retries.
        linked = u.execute(
            "INSERT INTO oauth_identities (user_id, issuer, subject, email, created_at)"
            " VALUES (:user_id, :issuer, :subject, :email, :now)"
            " ON CONFLICT (issuer, subject) DO NOTHING RETURNING id",
            {"user_id": user_id, "issuer": issuer, "subject": subject, "email": address,
             "now": u.now()},
        ).one_or_none()  # fmt: skip
        if linked is None:
            return False
        audit.record(u, Actor.user(user_id), "auth.sso_link", "user", user_id, data=event)
        return True

    def work(u: UnitOfWork) -> UserView | None:
        linked: Any = u.execute(
            "SELECT i.user_id, u.archived_at FROM oauth_identities i"
            " JOIN users u ON u.id = i.user_id"
            " WHERE i.issuer = :issuer AND i.subject = :subject",
            {"issuer": issuer, "subject": subject},
        ).one_or_none()
        if linked is not None:
            if linked.archived_at is not None:
                refuse(u, InvalidCredentials(ARCHIVED), linked.user_id, "archived")
                return None
            if address is not None:  # remember the address the provider gives now
                u.defer(
                    "UPDATE oauth_identities SET email = :email WHERE issuer = :issuer"
                    " AND subject = :subject AND email IS DISTINCT FROM :email",
                    email=address,
                    issuer=issuer,
                    subject=subject,
                )
            return succeed(u, linked.user_id, "link")

        if address is None:
            refuse(u, InvalidInput(NO_EMAIL, param="email", code="sso_email_missing"), None,
                   "email_missing")  # fmt: skip
            return None

        # Locked so that an email change or a second link cannot slip in between the checks.
        existing: Any = u.execute(
            "SELECT id, email_verified_at, archived_at FROM users"
            " WHERE email_canonical = :canonical FOR NO KEY UPDATE",
            {"canonical": canonical_email(address)},
        ).one_or_none()
        if existing is not None:
            if existing.archived_at is not None:
                refuse(u, InvalidCredentials(ARCHIVED), existing.id, "archived")
                return None
            if not verified:
                refuse(
                    u, Conflict(EMAIL_UNVERIFIED_PROVIDER, param="email",
                                code="sso_email_unverified"),
                    existing.id, "provider_email_unverified",
                )  # fmt: skip
                return None
            if existing.email_verified_at is None:
                refuse(
                    u, Conflict(EMAIL_UNVERIFIED_PORTAL, param="email",
                                code="sso_email_unverified"),
                    existing.id, "portal_email_unverified",
                )  # fmt: skip
                return None
            other = u.execute(
                "SELECT 1 FROM oauth_identities WHERE user_id = :id AND issuer = :issuer",
                {"id": existing.id, "issuer": issuer},
            ).first()
            if other is not None:
                refuse(u, Conflict(OTHER_IDENTITY, code="sso_identity_mismatch"), existing.id,
                       "other_identity_linked")  # fmt: skip
                return None
            if not link(u, existing.id):
                raise Conflict(RETRY, code="sso_retry")
            return succeed(u, existing.id, "email")

        if not verified:
            # Creating (and linking) an account from an address the provider has not verified
            # would let whoever claimed it there keep signing in after its real owner verifies
            # it here through a password reset.
            refuse(
                u, Conflict(NEW_EMAIL_UNVERIFIED, param="email", code="sso_email_unverified"),
                None, "provider_email_unverified",
            )  # fmt: skip
            return None
        local = address.partition("@")[0]
        try:
            created = insert_user(
                u, SSO_ACTOR, email=address, first_name=_name(first_name, _name(local, NO_NAME)),
                last_name=_name(last_name, NO_NAME), password_hash=None,
                roles=(SELF_REGISTRATION_ROLE,), verified=True,
            )  # fmt: skip
        except Conflict as exc:  # the address was taken by a concurrent sign-up
            raise Conflict(RETRY, code="sso_retry") from exc
        if not link(u, created.id):
            raise Conflict(RETRY, code="sso_retry")
        return succeed(u, created.id, "new_user")

    view = uow.run(work)
    assert view is not None  # a refusal was raised after its audit event was committed
    return view


def record_failure(
    uow: UnitOfWork, *, issuer: str, reason: str, data: dict[str, str] | None = None
) -> None:
    """Audit a single sign-on that failed before Portal could tell who signed in (the provider
    refused, or its answer did not verify). Raises nothing of its own."""
    uow.run(
        lambda u: audit.record(
            u,
            SSO_ACTOR,
            "auth.sso_sign_in",
            "user",
            None,
            outcome="failure",
            data={**(data or {}), "issuer": issuer, "reason": reason},
        )  # fmt: skip
    )
