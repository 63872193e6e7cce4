"""Passwords: the policy (length bounds, a common-password list, no composition rules) and
hashing with argon2id at OWASP's minimum (m=19 MiB, t=2, p=1) or above.

Passwords are NFKC-normalised before hashing and verifying, so the same password typed on
devices that compose accents differently still matches (NIST SP 800-63B §5.1.1.2).
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Iterable

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from portal.domain.errors import InvalidInput

MIN_LENGTH = 8
MAX_LENGTH = 128

_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)


def _normalise(password: str) -> bytes:
    return unicodedata.normalize("NFKC", password).encode("utf-8")


def hash_password(password: str) -> str:
    return _hasher.hash(_normalise(password))


def verify_password(password_hash: str | None, password: str) -> bool:
    if not password_hash:
        return False
    try:
        return _hasher.verify(password_hash, _normalise(password))
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    """True if the hash was made with other parameters than today's (rehash at sign-in)."""
    try:
        return _hasher.check_needs_rehash(password_hash)
    except InvalidHashError:
        return True


@functools.cache
def _dummy_hash() -> str:
    return _hasher.hash(b"portal: no such user; this hash only costs the same time")


def burn_verification(password: str) -> None:
    """Spend the time of one verification, for sign-ins that have no hash to check (an unknown
    email), so their timing does not tell them apart."""
    verify_password(_dummy_hash(), password)


@functools.cache
def common_passwords() -> frozenset[str]:
    """The 30,000 most common passwords (zxcvbn's list, a maintained package), lower-cased;
    loaded once, on first use."""
    from zxcvbn.frequency_lists import FREQUENCY_LISTS

    return frozenset(p.lower() for p in FREQUENCY_LISTS["passwords"])


def check_password_policy(
    password: str,
    confirmation: str | None = None,
    *,
    personal: Iterable[str] = (),
) -> None:
    """Refuse a new password: shorter than 8 or longer than 128 characters (Unicode code
    points), in the common-password list (case-insensitively), equal to one of the user's own
    details (``personal``: email, its local part, names), or unlike its ``confirmation`` when
    one is given. No composition rules. Raises InvalidInput (codes password_too_short,
    password_too_long, password_too_common, password_too_personal, password_mismatch)."""
    if not isinstance(password, str) or len(password) < MIN_LENGTH:
        raise InvalidInput(
            f"use at least {MIN_LENGTH} characters", param="password", code="password_too_short"
        )
    if len(password) > MAX_LENGTH:
        raise InvalidInput(
            f"use at most {MAX_LENGTH} characters", param="password", code="password_too_long"
        )
    folded = password.lower()
    if folded in common_passwords():
        raise InvalidInput(
            "this password is too common; choose one that is harder to guess",
            param="password",
            code="password_too_common",
        )
    for detail in personal:
        detail = (detail or "").strip().lower()
        if detail and folded == detail:
            raise InvalidInput(
                "do not use your email address or name as your password",
                param="password",
                code="password_too_personal",
            )
    if confirmation is not None and confirmation != password:
        raise InvalidInput(
            "the passwords do not match",
            param="password_confirmation",
            code="password_mismatch",
        )
