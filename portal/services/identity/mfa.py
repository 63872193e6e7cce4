"""The TOTP second factor (RFC 6238: 30-second steps, 6 digits, SHA-1, as authenticator apps
expect) and its one-time recovery codes.

The secret is sealed by the vault (purpose "user.totp") and stays pending until the user proves
a code from it. A code is accepted for the current step or one step either side, and only for a
step later than the last one accepted, so an observed code cannot be replayed (the check and the
write are one conditional UPDATE, safe under concurrent submissions). Recovery codes are 125-bit
random values shown once and stored as SHA-256; each works once.

Staff (whose roles require a second factor) cannot set up their first one with their password
alone: whoever learns a new administrator's password would otherwise get the enrolment secret
first. They need a one-time enrolment code, made by ``portal create-admin`` or by another
administrator (:func:`issue_enrolment_code`): 125 bits, stored as SHA-256, single use, valid
24 hours. Spending it records which pending secret it unlocked, and only that one can be
confirmed. Cardholders enrol with their password, as before.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import pyotp
import segno

from portal.domain.errors import (
    Forbidden,
    InvalidInput,
    InvalidState,
    NotFound,
    Unauthenticated,
    UnexpectedState,
)
from portal.domain.types import Actor, ActorKind
from portal.services.identity.accounts import (
    STAFF_ROLES,
    UserView,
    load_user_view,
    reauthenticate,
    require_user,
)
from portal.services.identity.users import (
    assigned_permissions,
    check_no_escalation,
    is_self,
    require,
    user_key,
)
from portal.services.shared import audit
from portal.services.shared.refs import Ref
from portal.services.shared.uow import UnitOfWork
from portal.services.shared.vault import Vault

ISSUER_NAME = "Portal"
TOTP_PURPOSE = "user.totp"
#: Steps accepted either side of the current one (clock drift, a code typed at a boundary).
WINDOW = 1
STEP_SECONDS = 30
RECOVERY_CODE_COUNT = 10
#: Crockford's base32 alphabet (no i, l, o, u): 25 characters carry 125 bits.
_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_RECOVERY_LENGTH = 25
_CONFUSABLE = str.maketrans({"i": "1", "l": "1", "o": "0"})
#: How long an enrolment code stays valid.
ENROLMENT_CODE_HOURS = 24


@dataclass(frozen=True, slots=True)
class TotpEnrolment:
    """What the enrolment page shows: the secret (for typing in), its otpauth:// URI and that
    URI as a QR code (an inline SVG string)."""

    secret: str
    otpauth_uri: str
    qr_svg: str


@dataclass(frozen=True, slots=True)
class EnrolmentCode:
    """A new enrolment code: ``code`` exists in the clear only here (show it once)."""

    code: str
    user_id: int
    user_public_id: str
    email: str
    expires_at: datetime


def mfa_required(user: UserView) -> bool:
    """Staff (admin or support) must enrol a second factor before reaching staff pages or
    getting an API token."""
    return bool(STAFF_ROLES.intersection(user.roles))


def enrolment_code_required(user: UserView) -> bool:
    """Whether setting up a second factor needs an enrolment code besides the password: staff
    who have none yet."""
    return mfa_required(user) and not user.mfa_enabled


def _new_recovery_code() -> str:
    raw = "".join(secrets.choice(_ALPHABET) for _ in range(_RECOVERY_LENGTH))
    return "-".join(raw[i : i + 5] for i in range(0, _RECOVERY_LENGTH, 5))


def _normalise(code: str) -> str:
    return "".join(code.split()).replace("-", "").lower().translate(_CONFUSABLE)


def _recovery_digest(code: str) -> bytes:
    return hashlib.sha256(_normalise(code).encode("ascii", "replace")).digest()


def _enrolment_digest(code: str) -> bytes:
    return hashlib.sha256(
        b"portal.mfa-enrolment:" + _normalise(code).encode("ascii", "replace")
    ).digest()


def _secret_digest(ciphertext: bytes) -> bytes:
    return hashlib.sha256(bytes(ciphertext)).digest()


def _matching_step(secret: str, code: str, now_step: int) -> int | None:
    """The step within the window whose code is ``code`` (compared in constant time)."""
    totp = pyotp.TOTP(secret)
    found = None
    for step in range(now_step - WINDOW, now_step + WINDOW + 1):
        if hmac.compare_digest(totp.generate_otp(step), code):
            found = step
    return found


def _now_step(u: UnitOfWork) -> int:
    return int(u.now().timestamp()) // STEP_SECONDS


def _store_recovery_codes(u: UnitOfWork, user_id: int) -> list[str]:
    codes = [_new_recovery_code() for _ in range(RECOVERY_CODE_COUNT)]
    u.defer("DELETE FROM recovery_codes WHERE user_id = :user_id", user_id=user_id)
    u.defer(
        "INSERT INTO recovery_codes (user_id, code_hash, created_at)"
        " SELECT :user_id, h, :now FROM unnest(CAST(:hashes AS bytea[])) AS h",
        user_id=user_id,
        hashes=[_recovery_digest(c) for c in codes],
        now=u.now(),
    )
    return codes


def begin_totp_enrolment(
    uow: UnitOfWork, *, actor: Actor, enrolment_code: str | None = None
) -> TotpEnrolment:
    """Make a new TOTP secret for the actor, pending until ``confirm_totp`` (a second call
    replaces it). Staff without a second factor must give an enrolment code
    (:func:`issue_enrolment_code`), which this spends; a code given by anyone else is checked
    and spent too. Every attempt with a code is audited. Raises Unauthenticated, InvalidState
    (code mfa_already_enabled), InvalidInput (codes enrolment_code_required,
    enrolment_code_invalid; param enrolment_code)."""
    user_id = require_user(actor)
    given = _normalise(enrolment_code if isinstance(enrolment_code, str) else "")
    secret = pyotp.random_base32()  # 32 base32 characters: 160 bits, as RFC 4226 recommends
    blob, version = Vault.from_settings(uow.settings).encrypt(
        secret.encode("ascii"), purpose=TOTP_PURPOSE
    )

    def work(u: UnitOfWork) -> tuple[str, str]:
        # Locked: two enrolments of one user at once are taken in turn.
        u.execute("SELECT id FROM users WHERE id = :id FOR NO KEY UPDATE", {"id": user_id})
        user = load_user_view(u, user_id)
        if user is None or user.archived:
            raise Unauthenticated("sign in first")
        if user.mfa_enabled:
            raise InvalidState(
                "a second factor is set up already; remove it first", code="mfa_already_enabled"
            )
        if given or enrolment_code_required(user):
            if not given:
                return user.email, "enrolment_code_required"
            spent = u.execute(
                "UPDATE mfa_enrolment_codes SET used_at = :now, secret_digest = :digest"
                " WHERE user_id = :id AND code_hash = :hash AND used_at IS NULL"
                " AND expires_at > :now RETURNING id",
                {"now": u.now(), "digest": _secret_digest(blob), "id": user_id,
                 "hash": _enrolment_digest(given)},
            ).one_or_none()  # fmt: skip
            audit.record(
                u, actor, "mfa.enrolment_code.redeem", "user", user_id,
                outcome="success" if spent else "failure",
                data={"code_id": spent.id} if spent else {"reason": "invalid_or_expired"},
            )  # fmt: skip
            if spent is None:
                return user.email, "enrolment_code_invalid"
        u.defer(
            "UPDATE users SET totp_pending_ciphertext = :blob, totp_pending_key_version = :v"
            " WHERE id = :id",
            blob=blob,
            v=version,
            id=user_id,
        )
        return user.email, ""

    email, refusal = uow.run(work)
    if refusal == "enrolment_code_required":
        raise InvalidInput(
            "your role needs an enrolment code from an administrator to set up two-step"
            " verification",
            param="enrolment_code",
            code=refusal,
        )
    if refusal:
        raise InvalidInput(
            "that enrolment code is not right, was used already or has expired; ask an"
            " administrator for a new one",
            param="enrolment_code",
            code=refusal,
        )
    uri = pyotp.TOTP(secret).provisioning_uri(name=email, issuer_name=ISSUER_NAME)
    svg = segno.make(uri, error="m").svg_inline(scale=4, dark="#000", light="#fff")
    return TotpEnrolment(secret=secret, otpauth_uri=uri, qr_svg=svg)


def confirm_totp(uow: UnitOfWork, *, actor: Actor, code: str) -> list[str]:
    """Finish enrolment with a code from the pending secret: MFA is on, and the 10 recovery
    codes returned are the only time they exist in the clear. For staff the pending secret must
    be the one an enrolment code unlocked. Raises Unauthenticated, InvalidState (codes
    mfa_enrolment_not_started, enrolment_code_required), InvalidInput (code totp_invalid)."""
    user_id = require_user(actor)
    code = _normalise(code or "")
    vault = Vault.from_settings(uow.settings)

    def work(u: UnitOfWork) -> list[str]:
        row = u.execute(
            "SELECT totp_pending_ciphertext, totp_pending_key_version, archived_at"
            " FROM users WHERE id = :id FOR UPDATE",
            {"id": user_id},
        ).one_or_none()
        if row is None or row.archived_at is not None:
            raise Unauthenticated("sign in first")
        if row.totp_pending_ciphertext is None:
            raise InvalidState(
                "start setting up the second factor first", code="mfa_enrolment_not_started"
            )
        user = load_user_view(u, user_id)
        if user is not None and enrolment_code_required(user):
            unlocked = u.execute(
                "SELECT 1 FROM mfa_enrolment_codes WHERE user_id = :id AND secret_digest = :d",
                {"id": user_id, "d": _secret_digest(row.totp_pending_ciphertext)},
            ).first()
            if unlocked is None:  # begun before the user's role needed a code
                raise InvalidState(
                    "your role needs an enrolment code from an administrator; start again with one",
                    code="enrolment_code_required",
                )
        secret = vault.decrypt(
            row.totp_pending_ciphertext, row.totp_pending_key_version, purpose=TOTP_PURPOSE
        ).decode("ascii")
        step = _matching_step(secret, code, _now_step(u)) if code.isdigit() else None
        if step is None:
            raise InvalidInput(
                "that code is not right; check your authenticator's clock and try again",
                param="code",
                code="totp_invalid",
            )
        u.defer(
            "UPDATE users SET totp_secret_ciphertext = totp_pending_ciphertext,"
            " totp_key_version = totp_pending_key_version, totp_pending_ciphertext = NULL,"
            " totp_pending_key_version = NULL, totp_last_step = :step, mfa_enabled_at = :now,"
            " updated_at = :now WHERE id = :id",
            step=step,
            now=u.now(),
            id=user_id,
        )
        codes = _store_recovery_codes(u, user_id)
        # Any other code made for this user is of no use any more.
        u.defer(
            "DELETE FROM mfa_enrolment_codes WHERE user_id = :id AND used_at IS NULL", id=user_id
        )
        audit.record(u, actor, "mfa.enrol", "user", user_id,
                     data={"method": "totp", "mfa": {"from": False, "to": True}})  # fmt: skip
        return codes

    return uow.run(work)


def issue_enrolment_code(
    uow: UnitOfWork, *, actor: Actor, user_id: Ref, hours: int = ENROLMENT_CODE_HOURS
) -> EnrolmentCode:
    """A one-time code with which the user (named by internal or public id) can set up their
    first second factor, valid ``hours`` and replacing any unused code they had. Made by the
    CLI (a system actor) or by a user holding ``users:manage`` and every permission the user
    holds, never for oneself; audited. Raises Forbidden (users:manage; codes
    cannot_enrol_self, privilege_escalation), NotFound, InvalidInput, UnexpectedState (codes
    user_archived, mfa_already_enabled)."""
    require(actor, "users:manage")
    column, value = user_key(user_id)
    if is_self(actor, user_id):
        raise Forbidden(
            "another administrator must make your enrolment code",
            param="user_id",
            code="cannot_enrol_self",
        )
    if not 1 <= hours <= 24 * 7:
        raise InvalidInput("hours must be from 1 to 168", param="hours")
    raw = _new_recovery_code()

    def work(u: UnitOfWork) -> EnrolmentCode:
        row = u.execute(
            f"SELECT id, public_id, email, archived_at, mfa_enabled_at FROM users"  # nosec B608: the column is id or public_id (user_key); values bound
            f" WHERE {column} = :v FOR NO KEY UPDATE",
            {"v": value},
        ).first()
        if row is None:
            raise NotFound("no such user", param="user_id")
        if is_self(actor, row.id):
            raise Forbidden(
                "another administrator must make your enrolment code",
                param="user_id",
                code="cannot_enrol_self",
            )
        check_no_escalation(actor, assigned_permissions(u, row.id))
        if row.archived_at is not None:
            raise UnexpectedState("the user is archived", param="user_id", code="user_archived")
        if row.mfa_enabled_at is not None:
            raise UnexpectedState(
                "the user has a second factor already", param="user_id",
                code="mfa_already_enabled",
            )  # fmt: skip
        expires = u.now() + timedelta(hours=hours)
        u.execute(
            "DELETE FROM mfa_enrolment_codes WHERE user_id = :id AND used_at IS NULL",
            {"id": row.id},
        )
        made = u.execute(
            "INSERT INTO mfa_enrolment_codes (user_id, code_hash, created_by_id, created_at,"
            " expires_at) VALUES (:id, :hash, :by, :now, :expires) RETURNING id",
            {"id": row.id, "hash": _enrolment_digest(raw),
             "by": actor.id if actor.kind == ActorKind.USER else None, "now": u.now(),
             "expires": expires},
        ).scalar_one()  # fmt: skip
        audit.record(
            u, actor, "mfa.enrolment_code.issue", "user", row.id,
            data={"code_id": made, "expires_at": expires.isoformat()},
        )  # fmt: skip
        return EnrolmentCode(
            code=raw, user_id=row.id, user_public_id=row.public_id, email=row.email,
            expires_at=expires,
        )  # fmt: skip

    return uow.run(work)


def verify_second_factor(uow: UnitOfWork, *, user_id: int, code: str) -> bool:
    """True if ``code`` is a TOTP code of the user not used before (current step ±1, later than
    the last step accepted) or one of their unused recovery codes, which is then spent. Every
    attempt is audited. Raises nothing (False for a user without a second factor)."""
    code = _normalise(code if isinstance(code, str) else "")
    vault = Vault.from_settings(uow.settings)

    def work(u: UnitOfWork) -> bool:
        row = u.execute(
            "SELECT totp_secret_ciphertext, totp_key_version, totp_last_step, mfa_enabled_at,"
            " archived_at FROM users WHERE id = :id",
            {"id": user_id},
        ).one_or_none()
        method, reason = "totp", "wrong_code"
        ok = False
        if row is None or row.archived_at is not None or row.mfa_enabled_at is None:
            reason = "not_enrolled"
        elif len(code) == 6 and code.isdigit():
            secret = vault.decrypt(
                row.totp_secret_ciphertext, row.totp_key_version, purpose=TOTP_PURPOSE
            ).decode("ascii")
            step = _matching_step(secret, code, _now_step(u))
            if step is not None:
                # Check and record in one statement: a concurrent use of the same code loses.
                ok = (
                    u.execute(
                        "UPDATE users SET totp_last_step = :step WHERE id = :id"
                        " AND (totp_last_step IS NULL OR totp_last_step < :step) RETURNING id",
                        {"step": step, "id": user_id},
                    ).one_or_none()
                    is not None
                )
                reason = "" if ok else "replayed"
        elif len(code) == _RECOVERY_LENGTH:
            method = "recovery_code"
            ok = (
                u.execute(
                    "UPDATE recovery_codes SET used_at = :now WHERE user_id = :id"
                    " AND code_hash = :hash AND used_at IS NULL RETURNING id",
                    {"now": u.now(), "id": user_id, "hash": _recovery_digest(code)},
                ).one_or_none()
                is not None
            )
        actor = Actor.user(user_id) if row is not None else Actor.system("sign-in")
        audit.record(
            u, actor, "auth.second_factor", "user", user_id if row is not None else None,
            outcome="success" if ok else "failure",
            data={"method": method} if ok else {"method": method, "reason": reason},
        )  # fmt: skip
        return ok

    return uow.run(work)


def recovery_codes_left(uow: UnitOfWork, *, actor: Actor) -> int:
    """How many unused recovery codes the actor has. Raises Unauthenticated."""
    user_id = require_user(actor)
    return uow.run(
        lambda u: u.execute(
            "SELECT count(*) FROM recovery_codes WHERE user_id = :id AND used_at IS NULL",
            {"id": user_id},
        ).scalar_one()
    )


def regenerate_recovery_codes(uow: UnitOfWork, *, actor: Actor, password: str) -> list[str]:
    """Replace the actor's recovery codes with 10 new ones (re-authentication by password).
    Raises Unauthenticated, InvalidInput (code wrong_password), InvalidState (mfa_not_enabled)."""
    user_id = require_user(actor)
    reauthenticate(uow, user_id, password, action="mfa.recovery_codes", param="password")

    def work(u: UnitOfWork) -> list[str]:
        user = load_user_view(u, user_id)
        if user is None or not user.mfa_enabled:
            raise InvalidState("no second factor is set up", code="mfa_not_enabled")
        codes = _store_recovery_codes(u, user_id)
        audit.record(u, actor, "mfa.recovery_codes", "user", user_id)
        return codes

    return uow.run(work)


def disable_totp(uow: UnitOfWork, *, actor: Actor, password: str) -> None:
    """Remove the actor's second factor and recovery codes (re-authentication by password).
    Raises Unauthenticated, InvalidInput (code wrong_password), InvalidState (mfa_not_enabled)."""
    user_id = require_user(actor)
    reauthenticate(uow, user_id, password, action="mfa.disable", param="password")

    def work(u: UnitOfWork) -> None:
        changed = u.execute(
            "UPDATE users SET totp_secret_ciphertext = NULL, totp_key_version = NULL,"
            " totp_pending_ciphertext = NULL, totp_pending_key_version = NULL,"
            " totp_last_step = NULL, mfa_enabled_at = NULL, updated_at = :now"
            " WHERE id = :id AND mfa_enabled_at IS NOT NULL RETURNING id",
            {"now": u.now(), "id": user_id},
        ).one_or_none()
        if changed is None:
            raise InvalidState("no second factor is set up", code="mfa_not_enabled")
        u.defer("DELETE FROM recovery_codes WHERE user_id = :id", id=user_id)
        audit.record(u, actor, "mfa.disable", "user", user_id,
                     data={"method": "totp", "mfa": {"from": True, "to": False}})  # fmt: skip

    uow.run(work)
