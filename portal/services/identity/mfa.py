"""The TOTP second factor (RFC 6238: 30-second steps, 6 digits, SHA-1, as authenticator apps
expect) and its one-time recovery codes.

The secret is sealed by the vault (purpose "user.totp") and stays pending until the user proves
a code from it. A code is accepted for the current step or one step either side, and only for a
step later than the last one accepted, so an observed code cannot be replayed (the check and the
write are one conditional UPDATE, safe under concurrent submissions). Recovery codes are 125-bit
random values shown once and stored as SHA-256; each works once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

import pyotp
import segno

from portal.domain.errors import InvalidInput, InvalidState, Unauthenticated
from portal.domain.types import Actor
from portal.services.identity.accounts import (
    STAFF_ROLES,
    UserView,
    load_user_view,
    reauthenticate,
    require_user,
)
from portal.services.shared import audit
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


@dataclass(frozen=True, slots=True)
class TotpEnrolment:
    """What the enrolment page shows: the secret (for typing in), its otpauth:// URI and that
    URI as a QR code (an inline SVG string)."""

    secret: str
    otpauth_uri: str
    qr_svg: str


def mfa_required(user: UserView) -> bool:
    """Staff (admin or support) must enrol a second factor before reaching staff pages or
    getting an API token."""
    return bool(STAFF_ROLES.intersection(user.roles))


def _new_recovery_code() -> str:
    raw = "".join(secrets.choice(_ALPHABET) for _ in range(_RECOVERY_LENGTH))
    return "-".join(raw[i : i + 5] for i in range(0, _RECOVERY_LENGTH, 5))


def _normalise(code: str) -> str:
    return "".join(code.split()).replace("-", "").lower().translate(_CONFUSABLE)


def _recovery_digest(code: str) -> bytes:
    return hashlib.sha256(_normalise(code).encode("ascii", "replace")).digest()


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


def begin_totp_enrolment(uow: UnitOfWork, *, actor: Actor) -> TotpEnrolment:
    """Make a new TOTP secret for the actor, pending until ``confirm_totp`` (a second call
    replaces it). Raises Unauthenticated, InvalidState (code mfa_already_enabled)."""
    user_id = require_user(actor)
    secret = pyotp.random_base32()  # 32 base32 characters: 160 bits, as RFC 4226 recommends
    blob, version = Vault.from_settings(uow.settings).encrypt(
        secret.encode("ascii"), purpose=TOTP_PURPOSE
    )

    def work(u: UnitOfWork) -> str:
        user = load_user_view(u, user_id)
        if user is None or user.archived:
            raise Unauthenticated("sign in first")
        if user.mfa_enabled:
            raise InvalidState(
                "a second factor is set up already; remove it first", code="mfa_already_enabled"
            )
        u.defer(
            "UPDATE users SET totp_pending_ciphertext = :blob, totp_pending_key_version = :v"
            " WHERE id = :id",
            blob=blob,
            v=version,
            id=user_id,
        )
        return user.email

    email = uow.run(work)
    uri = pyotp.TOTP(secret).provisioning_uri(name=email, issuer_name=ISSUER_NAME)
    svg = segno.make(uri, error="m").svg_inline(scale=4, dark="#000", light="#fff")
    return TotpEnrolment(secret=secret, otpauth_uri=uri, qr_svg=svg)


def confirm_totp(uow: UnitOfWork, *, actor: Actor, code: str) -> list[str]:
    """Finish enrolment with a code from the pending secret: MFA is on, and the 10 recovery
    codes returned are the only time they exist in the clear. Raises Unauthenticated,
    InvalidState (code mfa_enrolment_not_started), InvalidInput (code totp_invalid)."""
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
        audit.record(u, actor, "mfa.enrol", "user", user_id, data={"method": "totp"})
        return codes

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
        audit.record(u, actor, "mfa.disable", "user", user_id)

    uow.run(work)
