"""The card vault: AES-256-GCM with key versions, fingerprints and derived security codes."""

from __future__ import annotations

import hashlib
import hmac
import random
from collections import Counter

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from portal.domain import cards
from portal.services.shared.settings import ServiceSettings
from portal.services.shared.vault import Vault, VaultError, binding

KEY_1 = bytes(range(32))
KEY_2 = bytes(range(100, 132))
FP_KEY = b"fingerprint-key-for-tests-000001"
CVV_KEY = b"cvv-key-for-tests-00000000000001"
PAN = b"4242424242424242"


@pytest.fixture
def vault() -> Vault:
    return Vault({1: KEY_1}, 1, FP_KEY, CVV_KEY)


@pytest.fixture
def rotated() -> Vault:
    """Key 2 is now active; key 1 is kept to read old ciphertexts."""
    return Vault({1: KEY_1, 2: KEY_2}, 2, FP_KEY, CVV_KEY)


# -- construction ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 16, 24, 31, 33, 64])
def test_refuses_keys_that_are_not_32_bytes(size: int) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        Vault({1: bytes(size)}, 1, FP_KEY, CVV_KEY)
    with pytest.raises(ValueError, match="32 bytes"):
        Vault({1: KEY_1, 2: bytes(size)}, 1, FP_KEY, CVV_KEY)


def test_refuses_active_version_without_key() -> None:
    with pytest.raises(ValueError, match="active"):
        Vault({1: KEY_1}, 2, FP_KEY, CVV_KEY)
    with pytest.raises(ValueError, match="active"):
        Vault({}, 1, FP_KEY, CVV_KEY)


def test_refuses_empty_fingerprint_and_cvv_keys() -> None:
    with pytest.raises(ValueError, match="fingerprint"):
        Vault({1: KEY_1}, 1, b"", CVV_KEY)
    with pytest.raises(ValueError, match="CVV"):
        Vault({1: KEY_1}, 1, FP_KEY, b"")


def test_from_settings_uses_the_configured_keys(vault: Vault) -> None:
    settings = ServiceSettings(
        vault_keys={1: KEY_1, 2: KEY_2}, vault_active_key=2, fingerprint_key=FP_KEY, cvv_key=CVV_KEY
    )
    configured = Vault.from_settings(settings)
    blob, version = configured.encrypt(PAN, purpose="card.pan")
    assert version == 2
    assert configured.active_version == 2
    assert AESGCM(KEY_2).decrypt(blob[:12], blob[12:], b"card.pan") == PAN
    assert configured.fingerprint("4242424242424242") == vault.fingerprint("4242424242424242")
    assert configured.security_code("4242424242424242", 1, 2030) == vault.security_code(
        "4242424242424242", 1, 2030
    )


def test_repr_does_not_reveal_keys(rotated: Vault) -> None:
    text = repr(rotated)
    assert "versions=[1, 2]" in text
    for secret in (KEY_1, KEY_2, FP_KEY, CVV_KEY):
        assert secret.hex() not in text
        assert repr(secret) not in text


# -- encryption ------------------------------------------------------------------------------


def test_round_trip(vault: Vault) -> None:
    blob, version = vault.encrypt(PAN, purpose="card.pan")
    assert version == 1
    assert len(blob) == 12 + len(PAN) + 16  # nonce || ciphertext || tag
    assert PAN not in blob
    assert vault.decrypt(blob, version, purpose="card.pan") == PAN


def test_round_trip_of_empty_and_binary_plaintexts(vault: Vault) -> None:
    for plaintext in (b"", bytes(range(256)), "IBAN DE89 3704 0044 0532 0130 00 é".encode()):
        blob, version = vault.encrypt(plaintext, purpose="withdrawal.bank")
        assert vault.decrypt(blob, version, purpose="withdrawal.bank") == plaintext


def test_is_standard_aes_256_gcm_with_purpose_as_associated_data(vault: Vault) -> None:
    blob, _ = vault.encrypt(PAN, purpose="card.pan")
    assert AESGCM(KEY_1).decrypt(blob[:12], blob[12:], b"card.pan") == PAN
    nonce = bytes(12)
    outside = nonce + AESGCM(KEY_1).encrypt(nonce, PAN, b"card.pan")
    assert vault.decrypt(outside, 1, purpose="card.pan") == PAN


def test_ciphertext_differs_each_time(vault: Vault) -> None:
    blobs = {vault.encrypt(PAN, purpose="card.pan")[0] for _ in range(100)}
    assert len(blobs) == 100
    assert len({b[:12] for b in blobs}) == 100  # fresh nonce every time


def test_any_tampered_byte_fails(vault: Vault) -> None:
    blob, version = vault.encrypt(PAN, purpose="card.pan")
    for i in range(len(blob)):
        for flip in (0x01, 0x80):
            tampered = bytearray(blob)
            tampered[i] ^= flip
            with pytest.raises(VaultError):
                vault.decrypt(bytes(tampered), version, purpose="card.pan")


@pytest.mark.parametrize("cut", [0, 1, 12, 27, -1])
def test_truncated_or_extended_blob_fails(vault: Vault, cut: int) -> None:
    blob, version = vault.encrypt(PAN, purpose="card.pan")
    with pytest.raises(VaultError):
        vault.decrypt(blob[:cut], version, purpose="card.pan")
    with pytest.raises(VaultError):
        vault.decrypt(blob + b"\x00", version, purpose="card.pan")


def test_wrong_purpose_fails(vault: Vault) -> None:
    blob, version = vault.encrypt(b"DE89370400440532013000", purpose="withdrawal.bank")
    for purpose in ("card.pan", "withdrawal.bank ", "Withdrawal.bank", "withdrawal"):
        with pytest.raises(VaultError):
            vault.decrypt(blob, version, purpose=purpose)


def test_empty_purpose_is_refused(vault: Vault) -> None:
    with pytest.raises(ValueError, match="purpose"):
        vault.encrypt(PAN, purpose="")
    blob, version = vault.encrypt(PAN, purpose="card.pan")
    with pytest.raises(ValueError, match="purpose"):
        vault.decrypt(blob, version, purpose="")


def test_unknown_key_version_fails(vault: Vault) -> None:
    blob, _ = vault.encrypt(PAN, purpose="card.pan")
    with pytest.raises(VaultError, match="version 7"):
        vault.decrypt(blob, 7, purpose="card.pan")


def test_wrong_known_key_version_fails(rotated: Vault) -> None:
    blob, version = rotated.encrypt(PAN, purpose="card.pan")
    assert version == 2
    with pytest.raises(VaultError):
        rotated.decrypt(blob, 1, purpose="card.pan")


def test_vault_error_is_not_a_user_facing_error() -> None:
    from portal.domain.errors import PortalError

    assert not issubclass(VaultError, PortalError)


def test_accepts_a_memoryview_blob(vault: Vault) -> None:
    blob, version = vault.encrypt(PAN, purpose="card.pan")
    assert vault.decrypt(memoryview(blob), version, purpose="card.pan") == PAN


# -- rotation --------------------------------------------------------------------------------


def test_old_ciphertexts_open_after_rotation(vault: Vault, rotated: Vault) -> None:
    old_blob, old_version = vault.encrypt(PAN, purpose="card.pan")
    assert rotated.decrypt(old_blob, old_version, purpose="card.pan") == PAN
    new_blob, new_version = rotated.encrypt(PAN, purpose="card.pan")
    assert new_version == 2
    with pytest.raises(VaultError):  # the old vault does not know key 2
        vault.decrypt(new_blob, new_version, purpose="card.pan")


def test_needs_rotation(vault: Vault, rotated: Vault) -> None:
    assert not vault.needs_rotation(1)
    assert rotated.needs_rotation(1)
    assert not rotated.needs_rotation(2)
    assert rotated.needs_rotation(3)


def test_reencrypt_moves_to_the_active_key(vault: Vault, rotated: Vault) -> None:
    old_blob, old_version = vault.encrypt(PAN, purpose="card.pan")
    new_blob, new_version = rotated.reencrypt(old_blob, old_version, purpose="card.pan")
    assert new_version == 2
    assert not rotated.needs_rotation(new_version)
    assert new_blob != old_blob
    assert AESGCM(KEY_2).decrypt(new_blob[:12], new_blob[12:], b"card.pan") == PAN
    retired = Vault({2: KEY_2}, 2, FP_KEY, CVV_KEY)  # key 1 can now be dropped
    assert retired.decrypt(new_blob, new_version, purpose="card.pan") == PAN
    with pytest.raises(VaultError):
        retired.decrypt(old_blob, old_version, purpose="card.pan")


def test_reencrypt_keeps_purpose_binding(vault: Vault, rotated: Vault) -> None:
    old_blob, old_version = vault.encrypt(PAN, purpose="card.pan")
    with pytest.raises(VaultError):
        rotated.reencrypt(old_blob, old_version, purpose="withdrawal.bank")
    new_blob, new_version = rotated.reencrypt(old_blob, old_version, purpose="card.pan")
    with pytest.raises(VaultError):
        rotated.decrypt(new_blob, new_version, purpose="withdrawal.bank")


def test_reencrypt_of_current_blob_is_a_checked_no_op(rotated: Vault) -> None:
    blob, version = rotated.encrypt(PAN, purpose="card.pan")
    assert rotated.reencrypt(blob, version, purpose="card.pan") == (blob, version)
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(VaultError):
        rotated.reencrypt(tampered, version, purpose="card.pan")


# -- record binding --------------------------------------------------------------------------
CARD_A = "card_" + "A" * 24
CARD_B = "card_" + "B" * 24


def test_record_is_bound_as_documented_associated_data(vault: Vault) -> None:
    blob, version = vault.encrypt(PAN, purpose="card.pan", record=CARD_A)
    aad = b"portal.vault.record.v1\x00card.pan\x00" + CARD_A.encode()
    assert AESGCM(KEY_1).decrypt(blob[:12], blob[12:], aad) == PAN
    assert len(blob) == 12 + len(PAN) + 16  # the layout of the blob is unchanged
    assert vault.decrypt(blob, version, purpose="card.pan", record=CARD_A) == PAN


def test_a_bound_blob_opens_for_no_other_record(vault: Vault) -> None:
    blob, version = vault.encrypt(PAN, purpose="card.pan", record=CARD_A)
    for record in (CARD_B, CARD_A + " ", CARD_A[:-1], CARD_A.lower(), "wd_" + "A" * 24):
        with pytest.raises(VaultError):
            vault.decrypt(blob, version, purpose="card.pan", record=record)
    with pytest.raises(VaultError):  # nor as a legacy blob (purpose only)
        vault.decrypt(blob, version, purpose="card.pan")
    with pytest.raises(VaultError):  # nor for another purpose of the same record
        vault.decrypt(blob, version, purpose="withdrawal.bank", record=CARD_A)


def test_a_legacy_blob_opens_only_as_legacy(vault: Vault) -> None:
    blob, version = vault.encrypt(PAN, purpose="card.pan")
    assert vault.decrypt(blob, version, purpose="card.pan") == PAN
    with pytest.raises(VaultError):
        vault.decrypt(blob, version, purpose="card.pan", record=CARD_A)


def test_purpose_and_record_cannot_be_shifted_into_each_other(vault: Vault) -> None:
    """NUL separates purpose and record and neither may hold one, so no other split of the
    same bytes is accepted."""
    blob, version = vault.encrypt(PAN, purpose="a.b", record="c")
    with pytest.raises(VaultError):
        vault.decrypt(blob, version, purpose="a", record=".bc")
    for bad in ("card\x00pan", "\x00"):
        with pytest.raises(ValueError, match="NUL"):
            vault.encrypt(PAN, purpose=bad)
        with pytest.raises(ValueError, match="NUL"):
            vault.encrypt(PAN, purpose="card.pan", record=bad)
    with pytest.raises(ValueError, match="record"):
        vault.encrypt(PAN, purpose="card.pan", record="")
    with pytest.raises(ValueError, match="record"):
        vault.decrypt(blob, version, purpose="card.pan", record="")


def test_binding_names_the_record_of_bound_rows_only() -> None:
    assert binding(CARD_A, True) == CARD_A
    assert binding(CARD_A, False) is None


def test_needs_rotation_of_a_legacy_blob_under_the_active_key(rotated: Vault) -> None:
    assert rotated.needs_rotation(2, bound=False)
    assert rotated.needs_rotation(1, bound=True)
    assert not rotated.needs_rotation(2, bound=True)


def test_reencrypt_binds_a_legacy_blob_to_its_record(vault: Vault, rotated: Vault) -> None:
    for sealer in (vault, rotated):  # under an old key or under the active one
        legacy, version = sealer.encrypt(PAN, purpose="card.pan")
        bound, new_version = rotated.reencrypt(
            legacy, version, purpose="card.pan", record=CARD_A, sealed_for=None
        )
        assert new_version == 2 and bound != legacy
        assert rotated.decrypt(bound, 2, purpose="card.pan", record=CARD_A) == PAN
        with pytest.raises(VaultError):
            rotated.decrypt(bound, 2, purpose="card.pan")
        with pytest.raises(VaultError):
            rotated.decrypt(bound, 2, purpose="card.pan", record=CARD_B)


def test_reencrypt_of_a_bound_blob_checks_the_record_it_was_sealed_for(
    vault: Vault, rotated: Vault
) -> None:
    blob, version = vault.encrypt(PAN, purpose="card.pan", record=CARD_A)
    with pytest.raises(VaultError):  # B's row holding A's blob does not move to B
        rotated.reencrypt(blob, version, purpose="card.pan", record=CARD_B, sealed_for=CARD_B)
    with pytest.raises(VaultError):  # nor when claimed to be a legacy blob
        rotated.reencrypt(blob, version, purpose="card.pan", record=CARD_B, sealed_for=None)
    moved, new_version = rotated.reencrypt(
        blob, version, purpose="card.pan", record=CARD_A, sealed_for=CARD_A
    )
    assert rotated.decrypt(moved, new_version, purpose="card.pan", record=CARD_A) == PAN
    # Bound and under the active key: authenticated and returned unchanged.
    assert rotated.reencrypt(
        moved, new_version, purpose="card.pan", record=CARD_A, sealed_for=CARD_A
    ) == (moved, new_version)


# -- fingerprint -----------------------------------------------------------------------------


def test_fingerprint_is_hmac_sha256_of_the_number(vault: Vault) -> None:
    fp = vault.fingerprint("4242424242424242")
    assert fp == hmac.new(FP_KEY, b"4242424242424242", hashlib.sha256).digest()
    assert len(fp) == 32
    assert fp == vault.fingerprint("4242424242424242")
    assert fp == Vault({9: KEY_2}, 9, FP_KEY, b"other").fingerprint("4242424242424242")


def test_fingerprint_differs_by_number_and_key(vault: Vault) -> None:
    fp = vault.fingerprint("4242424242424242")
    assert fp != vault.fingerprint("4000056655665556")
    assert fp != hashlib.sha256(b"4242424242424242").digest()  # keyed, not a plain hash
    other = Vault({1: KEY_1}, 1, b"another-fingerprint-key", CVV_KEY)
    assert other.fingerprint("4242424242424242") != fp


@pytest.mark.parametrize("number", ["", "4242 4242 4242 4242", "4242-4242-4242-4242", "x"])
def test_fingerprint_refuses_unnormalised_numbers(vault: Vault, number: str) -> None:
    with pytest.raises(ValueError, match="digits"):
        vault.fingerprint(number)


# -- security code ---------------------------------------------------------------------------

NUMBERS = {
    "visa": "4242424242424242",
    "mastercard": "5555555555554444",
    "amex": "378282246310005",
    "discover": "6011111111111117",
}


@pytest.mark.parametrize(("brand", "length"), [("visa", 3), ("mastercard", 3), ("amex", 4)])
def test_security_code_length_per_brand(vault: Vault, brand: str, length: int) -> None:
    code = vault.security_code(NUMBERS[brand], 12, 2030)
    assert len(code) == length
    assert code.isascii()
    assert code.isdigit()


def test_security_code_length_discover(vault: Vault) -> None:
    code = vault.security_code(NUMBERS["discover"], 12, 2030)
    assert len(code) == 3


def test_security_code_matches_the_documented_derivation(vault: Vault) -> None:
    # Pinned: changing the derivation would invalidate the code of every issued card.
    for number, month, year in [("4242424242424242", 3, 2029), ("378282246310005", 11, 2031)]:
        message = b"portal.cvv.v1\x00" + number.encode() + b"\x00" + f"{year}-{month:02d}".encode()
        value = int.from_bytes(hmac.new(CVV_KEY, message, hashlib.sha256).digest(), "big")
        digits = cards.cvv_length(cards.detect_brand(number))
        assert vault.security_code(number, month, year) == str(value % 10**digits).zfill(digits)


def test_security_code_is_stable(vault: Vault) -> None:
    first = vault.security_code(NUMBERS["visa"], 6, 2028)
    assert vault.security_code(NUMBERS["visa"], 6, 2028) == first
    same_key = Vault({5: KEY_2}, 5, b"unrelated", CVV_KEY)
    assert same_key.security_code(NUMBERS["visa"], 6, 2028) == first


def test_security_code_differs_with_expiry_number_and_key(vault: Vault) -> None:
    number = NUMBERS["amex"]
    by_expiry = {vault.security_code(number, m, y) for m in range(1, 13) for y in range(2025, 2035)}
    assert len(by_expiry) > 100  # 120 expiries into 10,000 codes: nearly all distinct
    rng = random.Random(5)
    generated = [cards.generate_number("amex", rng) for _ in range(200)]
    assert len({vault.security_code(n, 1, 2030) for n in generated}) > 190
    other = Vault({1: KEY_1}, 1, FP_KEY, b"another-cvv-key")
    differing = sum(
        vault.security_code(n, 1, 2030) != other.security_code(n, 1, 2030) for n in generated
    )
    assert differing > 190


def test_security_code_digits_are_spread_evenly(vault: Vault) -> None:
    rng = random.Random(11)
    counts: Counter[str] = Counter()
    for _ in range(2000):
        counts.update(vault.security_code(cards.generate_number("visa", rng), 1, 2030))
    assert set(counts) == set("0123456789")
    assert all(480 < c < 720 for c in counts.values()), counts  # 600 expected each


@pytest.mark.parametrize(
    ("number", "month", "year"),
    [
        ("4242 4242 4242 4242", 1, 2030),
        ("", 1, 2030),
        ("4242424242424242", 0, 2030),
        ("4242424242424242", 13, 2030),
        ("4242424242424242", 1, 30),
        ("4242424242424242", 1, 10000),
    ],
)
def test_security_code_refuses_malformed_input(
    vault: Vault, number: str, month: int, year: int
) -> None:
    with pytest.raises(ValueError, match="digits|month|year"):
        vault.security_code(number, month, year)


def test_verify_security_code(vault: Vault) -> None:
    for brand, number in NUMBERS.items():
        code = vault.security_code(number, 4, 2027)
        assert vault.verify_security_code(number, 4, 2027, code), brand
        wrong = str((int(code) + 1) % 10 ** len(code)).zfill(len(code))
        assert not vault.verify_security_code(number, 4, 2027, wrong)
        assert not vault.verify_security_code(number, 4, 2027, code + "0")
        assert not vault.verify_security_code(number, 4, 2027, code[:-1])
        assert not vault.verify_security_code(number, 4, 2027, "")
        assert not vault.verify_security_code(number, 4, 2027, f" {code}")


def test_verify_rejects_code_of_another_expiry_or_card(vault: Vault) -> None:
    number = NUMBERS["amex"]
    code = vault.security_code(number, 4, 2027)
    others = [(m, y) for m in range(1, 13) for y in (2027, 2028) if (m, y) != (4, 2027)]
    rejected = sum(not vault.verify_security_code(number, m, y, code) for m, y in others)
    assert rejected >= len(others) - 1  # a 4-digit collision is a 1 in 10,000 event
    assert not vault.verify_security_code(NUMBERS["amex"], 4, 2027, "abcd")


def test_verify_never_raises_on_malformed_input(vault: Vault) -> None:
    number = NUMBERS["visa"]
    code = vault.security_code(number, 4, 2027)
    fullwidth = "".join(chr(0xFF10 + int(d)) for d in code)
    assert not vault.verify_security_code(number, 4, 2027, fullwidth)
    assert not vault.verify_security_code(number, 13, 2027, code)
    assert not vault.verify_security_code(number, 4, 27, code)
    assert not vault.verify_security_code("4242 4242 4242 4242", 4, 2027, code)
    assert not vault.verify_security_code(number, 4, 2027, "é" * len(code))
