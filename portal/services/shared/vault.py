"""The card vault: AES-256-GCM encryption with versioned keys, keyed fingerprints, derived CVVs.

Pure cryptography, no database. Keys live outside the database (settings); each ciphertext
records the key version that sealed it so keys can be rotated. The security code is derived
from the card data under a secret key whenever it is needed and is never stored (PCI DSS 3.3.1).

What a ciphertext is bound to (its associated data, authenticated but not stored in the blob):

* A ciphertext stored in a row is sealed with ``record=`` the row's public id (``card_...``,
  ``wd_...``, ``po_...``, ``mch_...``, ``we_...``, made in Python before the row is written).
  Its associated data is ``portal.vault.record.v1 NUL purpose NUL record``, so it opens only
  for the same purpose *and* the same row: a ciphertext copied into another row (by anyone who
  can write to the database but does not hold the key) fails with VaultError wherever the app
  reads it, instead of paying out to, or showing, another row's secret.
* With ``record=None`` the associated data is the purpose alone. That is how every stored
  ciphertext was sealed before records were bound ("legacy" rows), and what values that are not
  stored rows use (transfer recipient references, which carry the sender inside them, and the
  TOTP secrets of ``portal.services.identity.mfa`` for now).

The two cannot be confused: a purpose contains no NUL, so a purpose-only associated data never
equals a bound one, and each blob authenticates under exactly one of them. Which one a stored
blob was sealed with is recorded next to it, in a boolean ``<column>_bound`` column (migration
0019; false for the rows that existed before it), not in the blob: a legacy blob starts with a
random nonce, so no marker byte inside it could tell the two forms apart for certain, and the
re-sealing must find every legacy row by a query. A reader passes the row's public id when the
flag is set and None when not (:func:`binding`). Forging the flag gains nothing: a bound blob
does not open without its record, and a legacy blob opens for its purpose only, as it always
did, until ``portal vault rotate`` re-seals it bound to its row (and then sets the flag), which
it does for every legacy row whatever its key version. Until then a legacy blob copied into
another row still opens there: that is the old exposure, closed row by row by the rotation.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Self

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from portal.domain.cards import cvv_length, detect_brand

if TYPE_CHECKING:
    from portal.services.shared.settings import ServiceSettings

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16

_DIGITS = frozenset("0123456789")
_CVV_DOMAIN = b"portal.cvv.v1"


class VaultError(Exception):
    """A ciphertext cannot be opened: unknown key version, tampering, or the wrong purpose.

    Deliberately not a PortalError: it signals corrupt data or a key-management fault, never
    bad user input, and must not be shown to the user as one.
    """


def _is_digits(text: str) -> bool:
    return bool(text) and all(ch in _DIGITS for ch in text)


_RECORD_DOMAIN = b"portal.vault.record.v1"


def _aad(purpose: str, record: str | None) -> bytes:
    """The associated data: the purpose alone, or domain, purpose and record joined by NUL
    (neither may contain NUL, so the encoding is unambiguous; see the module docstring)."""
    if not purpose:
        raise ValueError("purpose must name what the ciphertext holds, e.g. 'card.pan'")
    if "\x00" in purpose:
        raise ValueError("purpose must not contain NUL")
    if record is None:
        return purpose.encode("utf-8")
    if not isinstance(record, str) or not record:
        raise ValueError("record must be the public id of the row the ciphertext belongs to")
    if "\x00" in record:
        raise ValueError("record must not contain NUL")
    return b"\x00".join((_RECORD_DOMAIN, purpose.encode("utf-8"), record.encode("utf-8")))


def binding(public_id: str, bound: bool) -> str | None:
    """The ``record`` to open a stored blob with: its row's public id if the row's
    ``<column>_bound`` flag is set, None for a legacy row sealed to its purpose only."""
    return public_id if bound else None


class Vault:
    """Seals and opens secrets under versioned AES-256-GCM keys; see the module docstring."""

    __slots__ = ("_active_version", "_ciphers", "_cvv_key", "_fingerprint_key")

    def __init__(
        self,
        keys: Mapping[int, bytes],
        active_version: int,
        fingerprint_key: bytes,
        cvv_key: bytes,
    ) -> None:
        ciphers: dict[int, AESGCM] = {}
        for version, key in keys.items():
            if type(version) is not int:
                raise ValueError(f"vault key version {version!r} is not an integer")
            if not isinstance(key, bytes) or len(key) != KEY_BYTES:
                raise ValueError(f"vault key version {version} must be {KEY_BYTES} bytes")
            ciphers[version] = AESGCM(key)
        if active_version not in ciphers:
            raise ValueError(f"active vault key version {active_version} has no key")
        if not fingerprint_key:
            raise ValueError("the fingerprint key must not be empty")
        if not cvv_key:
            raise ValueError("the CVV key must not be empty")
        self._ciphers = ciphers
        self._active_version = active_version
        self._fingerprint_key = bytes(fingerprint_key)
        self._cvv_key = bytes(cvv_key)

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> Self:
        return cls(
            settings.vault_keys,
            settings.vault_active_key,
            settings.fingerprint_key,
            settings.cvv_key,
        )

    def __repr__(self) -> str:
        return f"Vault(versions={sorted(self._ciphers)}, active={self._active_version})"

    @property
    def active_version(self) -> int:
        return self._active_version

    # -- encryption ------------------------------------------------------------------------

    def encrypt(
        self, plaintext: bytes, *, purpose: str, record: str | None = None
    ) -> tuple[bytes, int]:
        """Seal under the active key; returns (nonce || ciphertext+tag, key version).

        ``purpose`` and ``record`` (the public id of the row the blob is stored in, or None for
        a value that is no stored row) are bound as associated data, so the blob opens only for
        the same purpose and record (see the module docstring).
        """
        aad = _aad(purpose, record)
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[self._active_version].encrypt(nonce, plaintext, aad)
        return nonce + sealed, self._active_version

    def decrypt(
        self, blob: bytes, key_version: int, *, purpose: str, record: str | None = None
    ) -> bytes:
        """Open a blob from ``encrypt``. Raises VaultError on an unknown key version, a
        truncated or altered blob, or a different purpose or record."""
        aad = _aad(purpose, record)
        cipher = self._ciphers.get(key_version)
        if cipher is None:
            raise VaultError(f"no vault key with version {key_version}")
        data = bytes(blob)  # a driver may hand back a memoryview
        if len(data) < NONCE_BYTES + TAG_BYTES:
            raise VaultError("ciphertext is truncated")
        try:
            return cipher.decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], aad)
        except InvalidTag:
            raise VaultError("ciphertext failed authentication") from None

    def needs_rotation(self, key_version: int, *, bound: bool = True) -> bool:
        """True if a blob sealed under ``key_version`` should be re-encrypted: an old key, or a
        stored blob not yet bound to its record (``bound=False``)."""
        return key_version != self._active_version or not bound

    def reencrypt(
        self,
        blob: bytes,
        key_version: int,
        *,
        purpose: str,
        record: str | None = None,
        sealed_for: str | None = None,
    ) -> tuple[bytes, int]:
        """Move a blob to the active key, bound to ``record``. ``sealed_for`` is the record it
        is bound to now (None: purpose only, a legacy row). Raises VaultError as ``decrypt``.

        A blob already under the active key and bound to ``record`` is authenticated and
        returned unchanged, so a caller can skip the write when nothing changed.
        """
        plaintext = self.decrypt(blob, key_version, purpose=purpose, record=sealed_for)
        if sealed_for == record and not self.needs_rotation(key_version):
            return bytes(blob), key_version
        return self.encrypt(plaintext, purpose=purpose, record=record)

    # -- keyed digests -----------------------------------------------------------------------

    def fingerprint(self, number: str) -> bytes:
        """HMAC-SHA256 (32 bytes) of a normalised card number, for finding a card by number.

        ValueError unless ``number`` is digits only: a spaced or dashed number would silently
        fingerprint differently.
        """
        if not _is_digits(number):
            raise ValueError("fingerprint() takes a normalised card number (digits only)")
        return hmac.new(self._fingerprint_key, number.encode("ascii"), hashlib.sha256).digest()

    def security_code(self, number: str, expiry_month: int, expiry_year: int) -> str:
        """The card's security code, derived from number and expiry; never stored.

        As many digits as the brand uses (4 for American Express, else 3). ValueError on a
        number that is not digits, a month outside 1..12 or a year that is not four digits.
        """
        if not _is_digits(number):
            raise ValueError("security_code() takes a normalised card number (digits only)")
        if type(expiry_month) is not int or not 1 <= expiry_month <= 12:
            raise ValueError("expiry month must be an integer from 1 to 12")
        if type(expiry_year) is not int or not 1000 <= expiry_year <= 9999:
            raise ValueError("expiry year must be a four-digit integer")
        digits = cvv_length(detect_brand(number))
        # Fixed-layout, separator-delimited message: no two inputs share a canonical form.
        message = b"\x00".join(
            (_CVV_DOMAIN, number.encode("ascii"), b"%04d-%02d" % (expiry_year, expiry_month))
        )
        mac = hmac.new(self._cvv_key, message, hashlib.sha256).digest()
        # A 256-bit value mod 10**4 has bias below 2**-242: negligible.
        return str(int.from_bytes(mac, "big") % 10**digits).zfill(digits)

    def verify_security_code(
        self, number: str, expiry_month: int, expiry_year: int, code: str
    ) -> bool:
        """True if ``code`` is the card's security code; False for any wrong or malformed input
        (never raises for it), comparing in constant time."""
        try:
            expected = self.security_code(number, expiry_month, expiry_year)
        except ValueError:
            return False
        if not isinstance(code, str) or len(code) != len(expected) or not _is_digits(code):
            return False
        return hmac.compare_digest(expected.encode("ascii"), code.encode("ascii"))
