"""Enrolment codes: staff without a second factor cannot get an enrolment secret with their
password alone; a code made by the CLI or by another administrator (stored hashed, audited)
works once, for that user, until it expires, and only the secret it unlocked can be confirmed.
Cardholders enrol as before."""

from __future__ import annotations

import hashlib

import pyotp
import pytest

from portal.domain.errors import Forbidden, InvalidInput, InvalidState, UnexpectedState
from portal.services.identity import accounts, mfa, roles, users
from tests.conftest import SYSTEM
from tests.services.test_identity import PASSWORD, email, signup


def staff(uow, role: str = "admin") -> accounts.UserView:
    created = users.create_user(
        uow, actor=SYSTEM, email=email(), first_name="Sam", last_name="Staff",
        password=PASSWORD, roles=(role,), verified=True,
    )  # fmt: skip
    return accounts.get_user_view(uow, created.id)


def enrolled_admin(uow, clock) -> accounts.UserView:
    admin = staff(uow)
    code = mfa.issue_enrolment_code(uow, actor=SYSTEM, user_id=admin.id).code
    enrolment = mfa.begin_totp_enrolment(uow, actor=admin.actor, enrolment_code=code)
    mfa.confirm_totp(uow, actor=admin.actor, code=pyotp.TOTP(enrolment.secret).at(clock.now))
    return accounts.get_user_view(uow, admin.id)


def pending_of(uow, user_id: int):
    return uow.run(
        lambda u: u.execute(
            "SELECT totp_pending_ciphertext FROM users WHERE id = :id", {"id": user_id}
        ).scalar_one()
    )


def audit_of(uow, action: str, user_id: int):
    return uow.run(
        lambda u: u.execute(
            "SELECT actor_kind, actor_id, outcome, data FROM audit_events"
            " WHERE action = :action AND subject_id = :id ORDER BY id",
            {"action": action, "id": user_id},
        ).all()
    )


def test_staff_without_a_second_factor_get_no_secret_without_a_valid_code(uow):
    for role in ("admin", "support"):
        member = staff(uow, role)
        assert mfa.enrolment_code_required(member)
        with pytest.raises(InvalidInput) as missing:
            mfa.begin_totp_enrolment(uow, actor=member.actor)
        assert (missing.value.code, missing.value.param) == (
            "enrolment_code_required",
            "enrolment_code",
        )
        for wrong in ("", "   ", "0000-0000", "a" * 25, mfa._new_recovery_code()):
            with pytest.raises(InvalidInput) as refused:
                mfa.begin_totp_enrolment(uow, actor=member.actor, enrolment_code=wrong)
            assert refused.value.param == "enrolment_code"
        assert pending_of(uow, member.id) is None  # no secret was made for them
        failures = audit_of(uow, "mfa.enrolment_code.redeem", member.id)
        assert failures and {f.outcome for f in failures} == {"failure"}


def test_a_code_for_one_user_does_not_work_for_another(uow):
    first, second = staff(uow), staff(uow)
    code = mfa.issue_enrolment_code(uow, actor=SYSTEM, user_id=first.id).code
    with pytest.raises(InvalidInput, match="enrolment code"):
        mfa.begin_totp_enrolment(uow, actor=second.actor, enrolment_code=code)
    assert pending_of(uow, second.id) is None
    assert mfa.begin_totp_enrolment(uow, actor=first.actor, enrolment_code=code).secret


def test_a_code_works_once_then_enrolment_completes(uow, clock):
    admin = staff(uow)
    issued = mfa.issue_enrolment_code(uow, actor=SYSTEM, user_id=admin.id)
    assert issued.email == admin.email
    assert issued.expires_at == clock.now + mfa.timedelta(hours=24)
    # Typed as people do: upper case, spaces instead of dashes.
    typed = issued.code.upper().replace("-", " ")
    enrolment = mfa.begin_totp_enrolment(uow, actor=admin.actor, enrolment_code=typed)
    with pytest.raises(InvalidInput, match="used already"):
        mfa.begin_totp_enrolment(uow, actor=admin.actor, enrolment_code=issued.code)
    # The refused second attempt changed nothing: the first secret is still the pending one.
    codes = mfa.confirm_totp(
        uow, actor=admin.actor, code=pyotp.TOTP(enrolment.secret).at(clock.now)
    )
    assert len(codes) == mfa.RECOVERY_CODE_COUNT
    assert accounts.get_user_view(uow, admin.id).mfa_enabled
    (redeemed,) = [e for e in audit_of(uow, "mfa.enrolment_code.redeem", admin.id)
                   if e.outcome == "success"]  # fmt: skip
    assert redeemed.actor_id == admin.id


def test_a_code_expires_after_24_hours(uow, clock):
    admin = staff(uow)
    code = mfa.issue_enrolment_code(uow, actor=SYSTEM, user_id=admin.id).code
    clock.advance(hours=24, seconds=1)
    with pytest.raises(InvalidInput) as expired:
        mfa.begin_totp_enrolment(uow, actor=admin.actor, enrolment_code=code)
    assert expired.value.code == "enrolment_code_invalid"
    fresh = mfa.issue_enrolment_code(uow, actor=SYSTEM, user_id=admin.id).code
    clock.advance(hours=23, minutes=59)
    assert mfa.begin_totp_enrolment(uow, actor=admin.actor, enrolment_code=fresh).secret


def test_a_new_code_voids_the_unused_one(uow):
    admin = staff(uow)
    old = mfa.issue_enrolment_code(uow, actor=SYSTEM, user_id=admin.id).code
    new = mfa.issue_enrolment_code(uow, actor=SYSTEM, user_id=admin.id).code
    with pytest.raises(InvalidInput):
        mfa.begin_totp_enrolment(uow, actor=admin.actor, enrolment_code=old)
    assert mfa.begin_totp_enrolment(uow, actor=admin.actor, enrolment_code=new).secret


def test_codes_are_stored_hashed(uow):
    admin = staff(uow)
    issued = mfa.issue_enrolment_code(uow, actor=SYSTEM, user_id=admin.id)
    row = uow.run(
        lambda u: u.execute(
            "SELECT row_to_json(c)::text AS text, code_hash FROM mfa_enrolment_codes c"
            " WHERE user_id = :id",
            {"id": admin.id},
        ).one()
    )
    plain = issued.code.replace("-", "")
    assert issued.code not in row.text and plain not in row.text
    assert (
        bytes(row.code_hash) == hashlib.sha256(b"portal.mfa-enrolment:" + plain.encode()).digest()
    )


def test_another_administrator_can_make_a_code_and_it_is_audited(uow, clock):
    admin = enrolled_admin(uow, clock)
    newcomer = staff(uow, "support")
    issued = mfa.issue_enrolment_code(uow, actor=admin.actor, user_id=newcomer.public_id)
    assert issued.user_id == newcomer.id
    (event,) = audit_of(uow, "mfa.enrolment_code.issue", newcomer.id)
    assert (event.actor_kind, event.actor_id) == ("user", admin.id)
    assert issued.code not in str(event.data)
    made_by = uow.run(
        lambda u: u.execute(
            "SELECT created_by_id FROM mfa_enrolment_codes WHERE user_id = :id",
            {"id": newcomer.id},
        ).scalar_one()
    )
    assert made_by == admin.id
    assert mfa.begin_totp_enrolment(uow, actor=newcomer.actor, enrolment_code=issued.code)


def test_who_may_not_make_a_code(uow, clock):
    admin = enrolled_admin(uow, clock)
    supporter = staff(uow, "support")
    holder = signup(uow)
    target = staff(uow)
    with pytest.raises(Forbidden):  # support holds no users:manage
        mfa.issue_enrolment_code(uow, actor=supporter.actor, user_id=target.id)
    with pytest.raises(Forbidden):
        mfa.issue_enrolment_code(uow, actor=holder.actor, user_id=target.id)
    for ref in (admin.id, admin.public_id):
        with pytest.raises(Forbidden) as own:
            mfa.issue_enrolment_code(uow, actor=admin.actor, user_id=ref)
        assert own.value.code == "cannot_enrol_self"
    with pytest.raises(UnexpectedState) as has_one:  # a code is for a first second factor
        mfa.issue_enrolment_code(uow, actor=SYSTEM, user_id=admin.id)
    assert has_one.value.code == "mfa_already_enabled"
    users.archive_user(uow, actor=admin.actor, user_id=target.id)
    with pytest.raises(UnexpectedState) as archived:
        mfa.issue_enrolment_code(uow, actor=admin.actor, user_id=target.id)
    assert archived.value.code == "user_archived"
    assert audit_of(uow, "mfa.enrolment_code.issue", target.id) == []


def test_cardholders_enrol_with_their_password_as_before(uow, clock):
    holder = signup(uow)
    assert not mfa.enrolment_code_required(holder)
    enrolment = mfa.begin_totp_enrolment(uow, actor=holder.actor)
    mfa.confirm_totp(uow, actor=holder.actor, code=pyotp.TOTP(enrolment.secret).at(clock.now))
    assert accounts.get_user_view(uow, holder.id).mfa_enabled


def test_a_secret_begun_before_a_staff_role_cannot_be_confirmed_without_a_code(uow, clock):
    """Whoever knew a cardholder's password and began enrolment must not finish it once the
    user is made staff."""
    admin = enrolled_admin(uow, clock)
    holder = signup(uow)
    enrolment = mfa.begin_totp_enrolment(uow, actor=holder.actor)
    roles.assign_role(uow, actor=admin.actor, user_id=holder.id, role="support")
    promoted = accounts.get_user_view(uow, holder.id)
    with pytest.raises(InvalidState) as refused:
        mfa.confirm_totp(uow, actor=promoted.actor, code=pyotp.TOTP(enrolment.secret).at(clock.now))
    assert refused.value.code == "enrolment_code_required"
    assert not accounts.get_user_view(uow, holder.id).mfa_enabled
    code = mfa.issue_enrolment_code(uow, actor=admin.actor, user_id=holder.id).code
    again = mfa.begin_totp_enrolment(uow, actor=promoted.actor, enrolment_code=code)
    mfa.confirm_totp(uow, actor=promoted.actor, code=pyotp.TOTP(again.secret).at(clock.now))
    assert accounts.get_user_view(uow, holder.id).mfa_enabled
    unused = uow.run(
        lambda u: u.execute(
            "SELECT count(*) FROM mfa_enrolment_codes WHERE user_id = :id AND used_at IS NULL",
            {"id": holder.id},
        ).scalar_one()
    )
    assert unused == 0


def test_deleting_the_admin_who_made_a_code_keeps_the_code(uow, clock):
    maker, other = enrolled_admin(uow, clock), enrolled_admin(uow, clock)
    newcomer = staff(uow, "support")
    code = mfa.issue_enrolment_code(uow, actor=maker.actor, user_id=newcomer.id).code
    users.delete_user(uow, actor=other.actor, user_id=maker.id)
    made_by = uow.run(
        lambda u: u.execute(
            "SELECT created_by_id FROM mfa_enrolment_codes WHERE user_id = :id",
            {"id": newcomer.id},
        ).scalar_one()
    )
    assert made_by is None
    assert mfa.begin_totp_enrolment(uow, actor=newcomer.actor, enrolment_code=code).secret
