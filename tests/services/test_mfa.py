"""TOTP second factor: enrolment (secret sealed by the vault, pending until confirmed), codes
accepted once within ±1 step, recovery codes spent once, disabling with re-authentication."""

from __future__ import annotations

import hashlib
import re

import pyotp
import pytest

from portal.domain.errors import InvalidInput, InvalidState, Unauthenticated
from portal.services.identity import accounts, mfa, users
from portal.services.shared.vault import Vault
from tests.conftest import SYSTEM
from tests.services.test_identity import PASSWORD, email, signup


@pytest.fixture
def user(uow):
    return signup(uow)


def code_at(secret: str, when, steps: int = 0) -> str:
    return pyotp.TOTP(secret).at(when, counter_offset=steps)


def enrolled(uow, user, clock) -> tuple[str, list[str]]:
    """Enrol the user; returns the secret and recovery codes, with the clock moved to the next
    step (the confirming code's step is spent)."""
    enrolment = mfa.begin_totp_enrolment(uow, actor=user.actor)
    codes = mfa.confirm_totp(uow, actor=user.actor, code=code_at(enrolment.secret, clock.now))
    clock.advance(seconds=30)
    return enrolment.secret, codes


def user_row(uow, user_id):
    return uow.run(
        lambda u: u.execute(
            "SELECT totp_secret_ciphertext, totp_key_version, totp_pending_ciphertext,"
            " totp_pending_key_version, totp_last_step, mfa_enabled_at FROM users WHERE id = :id",
            {"id": user_id},
        ).one()
    )


def second_factor_events(uow, user_id):
    return uow.run(
        lambda u: u.execute(
            "SELECT outcome, data FROM audit_events WHERE action = 'auth.second_factor'"
            " AND subject_id = :id ORDER BY id",
            {"id": user_id},
        ).all()
    )


def test_mfa_required_for_admin_and_support_only(uow, user):
    assert not mfa.mfa_required(user)
    for role in ("admin", "support"):
        created = users.create_user(uow, actor=SYSTEM, email=email(), first_name="S",
                                    last_name="Taff", roles=(role,))  # fmt: skip
        assert mfa.mfa_required(accounts.get_user_view(uow, created.id))
    merchant = users.create_user(uow, actor=SYSTEM, email=email(), first_name="M",
                                 last_name="Erchant", roles=("merchant",))  # fmt: skip
    assert not mfa.mfa_required(accounts.get_user_view(uow, merchant.id))


def test_begin_enrolment_seals_a_pending_secret(uow, user):
    enrolment = mfa.begin_totp_enrolment(uow, actor=user.actor)
    assert re.fullmatch(r"[A-Z2-7]{32}", enrolment.secret)
    assert enrolment.otpauth_uri.startswith("otpauth://totp/Portal:")
    assert f"secret={enrolment.secret}" in enrolment.otpauth_uri
    assert "issuer=Portal" in enrolment.otpauth_uri
    assert enrolment.qr_svg.startswith("<svg") and "<script" not in enrolment.qr_svg
    row = user_row(uow, user.id)
    assert row.mfa_enabled_at is None and row.totp_secret_ciphertext is None
    sealed = bytes(row.totp_pending_ciphertext)
    assert enrolment.secret.encode() not in sealed
    vault = Vault.from_settings(uow.settings)
    opened = vault.decrypt(sealed, row.totp_pending_key_version, purpose="user.totp")
    assert opened == enrolment.secret.encode()
    assert not accounts.get_user_view(uow, user.id).mfa_enabled


def test_confirm_with_wrong_code_leaves_mfa_off(uow, user, clock):
    enrolment = mfa.begin_totp_enrolment(uow, actor=user.actor)
    wrong = code_at(enrolment.secret, clock.now, steps=3)
    with pytest.raises(InvalidInput) as err:
        mfa.confirm_totp(uow, actor=user.actor, code=wrong)
    assert (err.value.code, err.value.param) == ("totp_invalid", "code")
    assert not accounts.get_user_view(uow, user.id).mfa_enabled


def test_confirm_enables_mfa_with_ten_hashed_recovery_codes(uow, user, clock):
    enrolment = mfa.begin_totp_enrolment(uow, actor=user.actor)
    codes = mfa.confirm_totp(uow, actor=user.actor, code=code_at(enrolment.secret, clock.now))
    assert len(codes) == 10 and len(set(codes)) == 10
    assert all(re.fullmatch(r"([0-9a-z]{5}-){4}[0-9a-z]{5}", c) for c in codes)
    assert accounts.get_user_view(uow, user.id).mfa_enabled
    row = user_row(uow, user.id)
    assert row.totp_pending_ciphertext is None and row.totp_secret_ciphertext is not None
    stored = uow.run(
        lambda u: (
            u.execute("SELECT code_hash FROM recovery_codes WHERE user_id = :id", {"id": user.id})
            .scalars()
            .all()
        )
    )
    assert len(stored) == 10
    assert hashlib.sha256(codes[0].replace("-", "").encode()).digest() in map(bytes, stored)
    event = uow.run(
        lambda u: u.execute("SELECT outcome FROM audit_events WHERE action = 'mfa.enrol'"
                            " AND subject_id = :id", {"id": user.id}).scalar_one()
    )  # fmt: skip
    assert event == "success"


def test_confirm_needs_a_pending_enrolment(uow, user, clock):
    with pytest.raises(InvalidState) as err:
        mfa.confirm_totp(uow, actor=user.actor, code="123456")
    assert err.value.code == "mfa_enrolment_not_started"
    enrolled(uow, user, clock)
    with pytest.raises(InvalidState) as err:
        mfa.begin_totp_enrolment(uow, actor=user.actor)
    assert err.value.code == "mfa_already_enabled"


def test_right_code_accepted_once(uow, user, clock):
    secret, _ = enrolled(uow, user, clock)
    code = code_at(secret, clock.now)
    assert mfa.verify_second_factor(uow, user_id=user.id, code=code)
    assert not mfa.verify_second_factor(uow, user_id=user.id, code=code)  # replay
    clock.advance(seconds=30)
    assert mfa.verify_second_factor(uow, user_id=user.id, code=code_at(secret, clock.now))
    outcomes = [(e.outcome, e.data.get("reason")) for e in second_factor_events(uow, user.id)]
    assert outcomes == [("success", None), ("failure", "replayed"), ("success", None)]


def test_code_of_confirmation_cannot_be_replayed(uow, user, clock):
    enrolment = mfa.begin_totp_enrolment(uow, actor=user.actor)
    code = code_at(enrolment.secret, clock.now)
    mfa.confirm_totp(uow, actor=user.actor, code=code)
    assert not mfa.verify_second_factor(uow, user_id=user.id, code=code)


def test_wrong_code_refused(uow, user, clock):
    secret, _ = enrolled(uow, user, clock)
    right = code_at(secret, clock.now)
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    assert not mfa.verify_second_factor(uow, user_id=user.id, code=wrong)
    assert not mfa.verify_second_factor(uow, user_id=user.id, code="12345")
    assert not mfa.verify_second_factor(uow, user_id=user.id, code="")
    assert mfa.verify_second_factor(uow, user_id=user.id, code=right)  # the wrong ones cost nothing


def test_one_step_either_side_accepted_two_refused(uow, user, clock):
    secret, _ = enrolled(uow, user, clock)
    clock.advance(minutes=5)
    assert not mfa.verify_second_factor(uow, user_id=user.id, code=code_at(secret, clock.now, -2))
    assert mfa.verify_second_factor(uow, user_id=user.id, code=code_at(secret, clock.now, -1))
    assert not mfa.verify_second_factor(uow, user_id=user.id, code=code_at(secret, clock.now, 2))
    assert mfa.verify_second_factor(uow, user_id=user.id, code=code_at(secret, clock.now, 1))
    # Once a later step is used, earlier ones (even the current step) are spent.
    assert not mfa.verify_second_factor(uow, user_id=user.id, code=code_at(secret, clock.now))


def test_spaces_in_code_are_ignored(uow, user, clock):
    secret, _ = enrolled(uow, user, clock)
    code = code_at(secret, clock.now)
    assert mfa.verify_second_factor(uow, user_id=user.id, code=f" {code[:3]} {code[3:]} ")


def test_recovery_code_works_once(uow, user, clock):
    _, codes = enrolled(uow, user, clock)
    assert mfa.verify_second_factor(uow, user_id=user.id, code=codes[0].upper().replace("-", ""))
    assert not mfa.verify_second_factor(uow, user_id=user.id, code=codes[0])
    assert mfa.verify_second_factor(uow, user_id=user.id, code=codes[1])
    assert mfa.recovery_codes_left(uow, actor=user.actor) == 8
    assert not mfa.verify_second_factor(uow, user_id=user.id, code="0" * 25)
    methods = [(e.outcome, e.data["method"]) for e in second_factor_events(uow, user.id)]
    assert methods[:3] == [("success", "recovery_code"), ("failure", "recovery_code"),
                           ("success", "recovery_code")]  # fmt: skip


def test_recovery_codes_of_another_user_do_not_work(uow, user, clock):
    _, codes = enrolled(uow, user, clock)
    other = signup(uow)
    enrolled(uow, other, clock)
    assert not mfa.verify_second_factor(uow, user_id=other.id, code=codes[0])


def test_no_second_factor_means_no_code_passes(uow, user):
    assert not mfa.verify_second_factor(uow, user_id=user.id, code="123456")
    assert not mfa.verify_second_factor(uow, user_id=10**12, code="123456")


def test_regenerate_recovery_codes(uow, user, clock):
    _, old = enrolled(uow, user, clock)
    with pytest.raises(InvalidInput):
        mfa.regenerate_recovery_codes(uow, actor=user.actor, password="nope-nope-nope")
    new = mfa.regenerate_recovery_codes(uow, actor=user.actor, password=PASSWORD)
    assert not set(new) & set(old)
    assert not mfa.verify_second_factor(uow, user_id=user.id, code=old[0])
    assert mfa.verify_second_factor(uow, user_id=user.id, code=new[0])


def test_disable_needs_the_password(uow, user, clock):
    secret, codes = enrolled(uow, user, clock)
    with pytest.raises(InvalidInput) as err:
        mfa.disable_totp(uow, actor=user.actor, password="not my password")
    assert (err.value.code, err.value.param) == ("wrong_password", "password")
    assert accounts.get_user_view(uow, user.id).mfa_enabled
    mfa.disable_totp(uow, actor=user.actor, password=PASSWORD)
    assert not accounts.get_user_view(uow, user.id).mfa_enabled
    assert not mfa.verify_second_factor(uow, user_id=user.id, code=code_at(secret, clock.now))
    assert not mfa.verify_second_factor(uow, user_id=user.id, code=codes[2])
    row = user_row(uow, user.id)
    assert row.totp_secret_ciphertext is None and row.totp_last_step is None
    with pytest.raises(InvalidState):
        mfa.disable_totp(uow, actor=user.actor, password=PASSWORD)


def test_re_enrolment_after_disable_uses_a_new_secret(uow, user, clock):
    secret, _ = enrolled(uow, user, clock)
    mfa.disable_totp(uow, actor=user.actor, password=PASSWORD)
    again, _ = enrolled(uow, user, clock)
    assert again != secret
    assert not mfa.verify_second_factor(uow, user_id=user.id, code=code_at(secret, clock.now))
    assert mfa.verify_second_factor(uow, user_id=user.id, code=code_at(again, clock.now))


def test_enrolment_needs_a_signed_in_user(uow):
    with pytest.raises(Unauthenticated):
        mfa.begin_totp_enrolment(uow, actor=SYSTEM)
