"""Sign-up, sign-in, the password policy, email links, password reset and change, email change:
on real PostgreSQL inside a rolled-back transaction."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import replace

import pytest
from argon2 import PasswordHasher, extract_parameters

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
from portal.services.identity import accounts, passwords, sessions, tokens, users
from tests.conftest import SYSTEM

PASSWORD = "Tr0ub4dor&3-purple"
NEW_PASSWORD = "lantern-orbit-cobble-71"


def email() -> str:
    return f"user-{uuid.uuid4().hex[:10]}@example.test"


def signup(uow, *, address: str | None = None, password: str = PASSWORD) -> accounts.UserView:
    return accounts.register(
        uow, email=address or email(), first_name=" Ada ", last_name="Lovelace",
        password=password, password_confirmation=password,
    )  # fmt: skip


def scalar(uow, sql: str, **params):
    return uow.run(lambda u: u.execute(sql, params).scalar())


def audit_events(uow, action: str, user_id: int | None = None) -> list:
    sql = (
        "SELECT actor_kind, actor_id, subject_id, outcome, data FROM audit_events WHERE action = :a"
    )
    params: dict = {"a": action}
    if user_id is not None:
        sql += " AND subject_id = :s"
        params["s"] = user_id
    return uow.run(lambda u: u.execute(sql + " ORDER BY id", params).all())


def archive(uow, user_id: int) -> None:
    uow.run(
        lambda u: u.execute("UPDATE users SET archived_at = now() WHERE id = :id", {"id": user_id})
    )


# -- password policy ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("length", "accepted", "code"),
    [(7, False, "password_too_short"), (8, True, None), (128, True, None),
     (129, False, "password_too_long")],
)  # fmt: skip
def test_password_length_bounds(length, accepted, code):
    password = ("kx7#Qm2v" * 20)[:length]
    if accepted:
        passwords.check_password_policy(password, password)
    else:
        with pytest.raises(InvalidInput) as err:
            passwords.check_password_policy(password, password)
        assert (err.value.code, err.value.param) == (code, "password")


def test_length_counts_unicode_code_points_not_bytes():
    passwords.check_password_policy("ü" * 8)  # 8 code points, 16 bytes in UTF-8
    with pytest.raises(InvalidInput, match="at least"):
        passwords.check_password_policy("日本語のパスワ")  # 7 code points, 21 bytes
    with pytest.raises(InvalidInput, match="at most"):
        passwords.check_password_policy("é" * 129)


def test_no_composition_rules():
    # Only lower-case letters, or only digits, or spaces: all fine if long and uncommon.
    for password in ("zebracrossingmoon", "83917465029", "four words in a row"):
        passwords.check_password_policy(password)


@pytest.mark.parametrize("password", ["password", "PassWord1", "iloveyou", "12345678", "Sunshine"])
def test_common_password_refused_case_insensitively(password):
    with pytest.raises(InvalidInput) as err:
        passwords.check_password_policy(password, password)
    assert (err.value.code, err.value.param) == ("password_too_common", "password")


def test_common_list_is_the_maintained_30000_entry_list():
    common = passwords.common_passwords()
    assert len(common) > 29_000
    assert "trustno1" in common
    assert passwords.common_passwords() is common  # loaded once


def test_confirmation_must_match():
    with pytest.raises(InvalidInput) as err:
        passwords.check_password_policy(PASSWORD, PASSWORD + "x")
    assert (err.value.code, err.value.param) == ("password_mismatch", "password_confirmation")


def test_password_equal_to_own_email_refused(uow):
    address = email()
    with pytest.raises(InvalidInput) as err:
        signup(uow, address=address, password=address.upper())
    assert err.value.code == "password_too_personal"


def test_hash_is_argon2id_at_owasp_minimum():
    p = extract_parameters(passwords.hash_password(PASSWORD))
    assert (p.type.name, p.memory_cost, p.time_cost, p.parallelism) == ("ID", 19 * 1024, 2, 1)


def test_unicode_normalisation_makes_composed_and_decomposed_equal():
    stored = passwords.hash_password("caf\u00e9-au-lait-92")
    assert passwords.verify_password(stored, "cafe\u0301-au-lait-92")


# -- register -----------------------------------------------------------------------------------
def test_register_makes_an_unverified_cardholder(uow):
    address = email()
    user = signup(uow, address=address.upper())
    assert user.email == address.upper()
    assert (user.first_name, user.last_name) == ("Ada", "Lovelace")
    assert user.roles == ("cardholder",)
    assert user.permissions == frozenset({"wallet:use"})
    assert not user.email_verified and not user.mfa_enabled and not user.archived
    stored = scalar(uow, "SELECT password_hash FROM users WHERE id = :id", id=user.id)
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    created = audit_events(uow, "user.create", user.id)
    assert [(e.actor_kind, e.outcome) for e in created] == [("system", "success")]


def test_register_refuses_taken_email_case_insensitively(uow):
    address = email()
    signup(uow, address=address)
    with pytest.raises(Conflict) as err:
        signup(uow, address=address.upper())
    assert err.value.param == "email"


def test_register_refusal_writes_nothing(uow):
    before = scalar(uow, "SELECT count(*) FROM users")
    with pytest.raises(InvalidInput):
        signup(uow, password="short")
    with pytest.raises(InvalidInput) as err:
        accounts.register(uow, email="not-an-email", first_name="A", last_name="B",
                          password=PASSWORD, password_confirmation=PASSWORD)  # fmt: skip
    assert err.value.param == "email"
    assert scalar(uow, "SELECT count(*) FROM users") == before


# -- authenticate -------------------------------------------------------------------------------
def test_authenticate_with_right_password(uow):
    user = signup(uow)
    signed_in = accounts.authenticate(uow, email=f"  {user.email.upper()} ", password=PASSWORD)
    assert signed_in == user
    events = audit_events(uow, "auth.sign_in", user.id)
    assert [(e.outcome, e.actor_id) for e in events] == [("success", user.id)]


def test_authenticate_fails_alike_for_unknown_wrong_and_archived(uow, monkeypatch):
    user = signup(uow)
    archived = signup(uow)
    archive(uow, archived.id)
    calls = []
    real = passwords._hasher

    class CountingHasher:
        def __getattr__(self, name):
            return getattr(real, name)

        def verify(self, stored, password):
            calls.append(stored)
            return real.verify(stored, password)

    monkeypatch.setattr(passwords, "_hasher", CountingHasher())
    failures = {}
    for kind, address, password in [
        ("unknown", email(), PASSWORD),
        ("wrong", user.email, PASSWORD + "!"),
        ("archived", archived.email, PASSWORD),
        ("malformed", "no-at-sign", PASSWORD),
    ]:
        calls.clear()
        with pytest.raises(InvalidCredentials) as err:
            accounts.authenticate(uow, email=address, password=password)
        failures[kind] = (type(err.value), err.value.code, err.value.message, err.value.param)
        # Every kind costs exactly one argon2 verification: an unknown email is checked against
        # a dummy hash, so the time taken does not reveal whether the account exists.
        assert len(calls) == 1, kind
    assert len(set(failures.values())) == 1
    reasons = [
        e.data["reason"] for e in audit_events(uow, "auth.sign_in") if e.outcome == "failure"
    ]
    assert reasons == ["unknown_email", "wrong_password", "archived", "unknown_email"]


def test_user_without_password_cannot_sign_in(uow, make):
    actor = make.user()  # staff-created, no password
    address = scalar(uow, "SELECT email FROM users WHERE id = :id", id=actor.id)
    with pytest.raises(InvalidCredentials):
        accounts.authenticate(uow, email=address, password="")


def test_authenticate_rehashes_when_parameters_changed(uow):
    user = signup(uow)
    weak = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1).hash(PASSWORD)
    uow.run(lambda u: u.execute("UPDATE users SET password_hash = :h WHERE id = :id",
                                {"h": weak, "id": user.id}))  # fmt: skip
    assert passwords.needs_rehash(weak)
    accounts.authenticate(uow, email=user.email, password=PASSWORD)
    stored = scalar(uow, "SELECT password_hash FROM users WHERE id = :id", id=user.id)
    assert stored != weak and not passwords.needs_rehash(stored)
    assert "m=19456,t=2,p=1" in stored
    assert accounts.authenticate(uow, email=user.email, password=PASSWORD).id == user.id
    assert audit_events(uow, "auth.sign_in", user.id)[0].data == {"rehashed": True}


def test_no_rehash_when_parameters_current(uow):
    user = signup(uow)
    before = scalar(uow, "SELECT password_hash FROM users WHERE id = :id", id=user.id)
    accounts.authenticate(uow, email=user.email, password=PASSWORD)
    assert scalar(uow, "SELECT password_hash FROM users WHERE id = :id", id=user.id) == before


def test_get_user_view(uow):
    user = signup(uow)
    assert accounts.get_user_view(uow, user.id) == user
    with pytest.raises(NotFound):
        accounts.get_user_view(uow, 10**12)


def test_user_view_roles_only_live_roles(uow):
    user = signup(uow)
    uow.run(lambda u: u.execute("UPDATE roles SET archived_at = now() WHERE name = 'cardholder'"))
    view = accounts.get_user_view(uow, user.id)
    assert view.roles == () and view.permissions == frozenset()
    assert not view.actor.can("wallet:use")


# -- email verification -------------------------------------------------------------------------
def test_email_verification_is_single_use(uow):
    user = signup(uow)
    token = accounts.issue_email_token(uow, user_id=user.id, purpose="verify_email")
    assert len(token) >= 43
    stored = scalar(uow, "SELECT token_hash FROM user_tokens WHERE user_id = :id", id=user.id)
    assert bytes(stored) == hashlib.sha256(token.encode()).digest()
    verified = accounts.verify_email(uow, token=token)
    assert verified.email_verified
    with pytest.raises(InvalidInput) as err:
        accounts.verify_email(uow, token=token)
    assert (err.value.code, err.value.param) == ("token_invalid", "token")


def test_email_token_expires(uow, clock):
    user = signup(uow)
    token = accounts.issue_email_token(uow, user_id=user.id, purpose="verify_email")
    clock.advance(minutes=uow.settings.email_token_minutes - 1)
    fresh = accounts.issue_email_token(uow, user_id=user.id, purpose="verify_email")
    clock.advance(minutes=2)  # the first is past its expiry, the second is not
    with pytest.raises(InvalidInput, match="not valid"):
        accounts.verify_email(uow, token=token)
    assert accounts.verify_email(uow, token=fresh).email_verified


def test_expired_email_token_refused(uow, clock):
    user = signup(uow)
    token = accounts.issue_email_token(uow, user_id=user.id, purpose="verify_email")
    clock.advance(minutes=uow.settings.email_token_minutes, seconds=1)
    with pytest.raises(InvalidInput):
        accounts.verify_email(uow, token=token)
    assert not accounts.get_user_view(uow, user.id).email_verified


def test_new_email_token_supersedes_the_old(uow):
    user = signup(uow)
    first = accounts.issue_email_token(uow, user_id=user.id, purpose="verify_email")
    second = accounts.issue_email_token(uow, user_id=user.id, purpose="verify_email")
    with pytest.raises(InvalidInput):
        accounts.verify_email(uow, token=first)
    accounts.verify_email(uow, token=second)


def test_email_token_checks(uow):
    user = signup(uow)
    with pytest.raises(InvalidInput):
        accounts.issue_email_token(uow, user_id=user.id, purpose="login")
    with pytest.raises(NotFound):
        accounts.issue_email_token(uow, user_id=10**12, purpose="verify_email")
    accounts.verify_email(
        uow, token=accounts.issue_email_token(uow, user_id=user.id, purpose="verify_email")
    )
    with pytest.raises(InvalidState):
        accounts.issue_email_token(uow, user_id=user.id, purpose="verify_email")


def test_reset_token_cannot_verify_email(uow):
    user = signup(uow)
    token = accounts.issue_email_token(uow, user_id=user.id, purpose="reset_password")
    with pytest.raises(InvalidInput):
        accounts.verify_email(uow, token=token)


def test_require_verified(uow):
    user = signup(uow)
    with pytest.raises(Forbidden) as err:
        accounts.require_verified(uow.settings, user)
    assert err.value.code == "email_unverified"
    accounts.require_verified(replace(uow.settings, require_verified_email=False), user)
    token = accounts.issue_email_token(uow, user_id=user.id, purpose="verify_email")
    accounts.require_verified(uow.settings, accounts.verify_email(uow, token=token))


# -- password reset -----------------------------------------------------------------------------
def test_password_reset_request_for_unknown_or_archived_email_is_none(uow):
    assert accounts.request_password_reset(uow, email=email()) is None
    assert accounts.request_password_reset(uow, email="garbage") is None
    user = signup(uow)
    archive(uow, user.id)
    assert accounts.request_password_reset(uow, email=user.email) is None


def test_password_reset_sets_password_and_revokes_everything(uow):
    user = signup(uow)
    web = sessions.create_web_session(uow, user_id=user.id, user_agent="ua", ip="1.2.3.4",
                                      mfa_verified=False)  # fmt: skip
    pair = tokens.issue_tokens(uow, user_id=user.id)
    found = accounts.request_password_reset(uow, email=user.email.upper())
    assert found is not None
    view, token = found
    assert view.id == user.id
    accounts.reset_password(uow, token=token, password=NEW_PASSWORD,
                            password_confirmation=NEW_PASSWORD)  # fmt: skip
    with pytest.raises(InvalidCredentials):
        accounts.authenticate(uow, email=user.email, password=PASSWORD)
    assert accounts.authenticate(uow, email=user.email, password=NEW_PASSWORD).email_verified
    assert sessions.resolve_web_session(uow, token=web.token) is None
    with pytest.raises(Unauthenticated):
        tokens.refresh(uow, refresh_token=pair.refresh_token)
    with pytest.raises(Unauthenticated):
        tokens.actor_for_access(uow, tokens.verify_access_token(uow.settings, pair.access_token))
    with pytest.raises(InvalidInput) as err:  # single use
        accounts.reset_password(uow, token=token, password=PASSWORD + "2",
                                password_confirmation=PASSWORD + "2")  # fmt: skip
    assert err.value.code == "token_invalid"
    assert len(audit_events(uow, "user.password_reset", user.id)) == 1


def test_password_reset_refused_by_policy_changes_nothing(uow):
    user = signup(uow)
    _, token = accounts.request_password_reset(uow, email=user.email)  # type: ignore[misc]
    with pytest.raises(InvalidInput) as err:
        accounts.reset_password(uow, token=token, password="password",
                                password_confirmation="password")  # fmt: skip
    assert err.value.code == "password_too_common"
    with pytest.raises(InvalidInput) as err:
        accounts.reset_password(uow, token=token, password=NEW_PASSWORD,
                                password_confirmation=NEW_PASSWORD + "?")  # fmt: skip
    assert err.value.param == "password_confirmation"
    accounts.authenticate(uow, email=user.email, password=PASSWORD)
    # The link was not spent by the refusals.
    accounts.reset_password(uow, token=token, password=NEW_PASSWORD,
                            password_confirmation=NEW_PASSWORD)  # fmt: skip


def test_password_reset_link_expires(uow, clock):
    user = signup(uow)
    _, token = accounts.request_password_reset(uow, email=user.email)  # type: ignore[misc]
    clock.advance(minutes=uow.settings.password_reset_minutes, seconds=1)
    with pytest.raises(InvalidInput) as err:
        accounts.reset_password(uow, token=token, password=NEW_PASSWORD,
                                password_confirmation=NEW_PASSWORD)  # fmt: skip
    assert err.value.code == "token_invalid"


def test_password_reset_link_dies_with_archived_user(uow):
    user = signup(uow)
    _, token = accounts.request_password_reset(uow, email=user.email)  # type: ignore[misc]
    archive(uow, user.id)
    with pytest.raises(InvalidInput):
        accounts.reset_password(uow, token=token, password=NEW_PASSWORD,
                                password_confirmation=NEW_PASSWORD)  # fmt: skip


# -- change password ----------------------------------------------------------------------------
def test_change_password_keeps_current_session_and_revokes_the_rest(uow):
    user = signup(uow)
    current = sessions.create_web_session(uow, user_id=user.id, user_agent="a", ip="",
                                          mfa_verified=False)  # fmt: skip
    other = sessions.create_web_session(uow, user_id=user.id, user_agent="b", ip="",
                                        mfa_verified=False)  # fmt: skip
    pair = tokens.issue_tokens(uow, user_id=user.id)
    accounts.change_password(
        uow, actor=user.actor, current_password=PASSWORD, password=NEW_PASSWORD,
        password_confirmation=NEW_PASSWORD, keep_session_id=current.id,
    )  # fmt: skip
    assert sessions.resolve_web_session(uow, token=current.token) is not None
    assert sessions.resolve_web_session(uow, token=other.token) is None
    with pytest.raises(Unauthenticated):
        tokens.refresh(uow, refresh_token=pair.refresh_token)
    assert accounts.authenticate(uow, email=user.email, password=NEW_PASSWORD).id == user.id
    with pytest.raises(InvalidCredentials):
        accounts.authenticate(uow, email=user.email, password=PASSWORD)
    changed = audit_events(uow, "user.password_change", user.id)
    assert [(e.outcome, e.data["kept_session_id"]) for e in changed] == [("success", current.id)]


def test_change_password_needs_the_current_one(uow):
    user = signup(uow)
    with pytest.raises(InvalidInput) as err:
        accounts.change_password(
            uow, actor=user.actor, current_password="not it at all", password=NEW_PASSWORD,
            password_confirmation=NEW_PASSWORD,
        )  # fmt: skip
    assert (err.value.code, err.value.param) == ("wrong_password", "current_password")
    accounts.authenticate(uow, email=user.email, password=PASSWORD)
    failed = audit_events(uow, "user.password_change", user.id)
    assert [e.outcome for e in failed] == ["failure"]


def test_change_password_applies_the_policy(uow):
    user = signup(uow)
    with pytest.raises(InvalidInput) as err:
        accounts.change_password(
            uow, actor=user.actor, current_password=PASSWORD, password="short",
            password_confirmation="short",
        )  # fmt: skip
    assert err.value.code == "password_too_short"
    accounts.authenticate(uow, email=user.email, password=PASSWORD)


def test_change_password_needs_a_user_actor(uow):
    with pytest.raises(Unauthenticated):
        accounts.change_password(
            uow, actor=SYSTEM, current_password=PASSWORD, password=NEW_PASSWORD,
            password_confirmation=NEW_PASSWORD,
        )  # fmt: skip


# -- change email -------------------------------------------------------------------------------
def test_email_change_takes_effect_only_when_verified(uow):
    user = signup(uow)
    _, reset = accounts.request_password_reset(uow, email=user.email)  # type: ignore[misc]
    new = email()
    token = accounts.request_email_change(uow, actor=user.actor, password=PASSWORD, new_email=new)
    assert accounts.get_user_view(uow, user.id).email == user.email
    changed = accounts.verify_email(uow, token=token)
    assert (changed.email, changed.email_verified) == (new, True)
    assert accounts.authenticate(uow, email=new, password=PASSWORD).id == user.id
    # A reset link mailed to the old address died with the change.
    with pytest.raises(InvalidInput):
        accounts.reset_password(uow, token=reset, password=NEW_PASSWORD,
                                password_confirmation=NEW_PASSWORD)  # fmt: skip
    event = audit_events(uow, "user.email_change", user.id)[0]
    assert (event.data["old_email"], event.data["new_email"]) == (user.email, new)


def test_email_change_refusals(uow):
    user = signup(uow)
    other = signup(uow)
    with pytest.raises(InvalidInput) as err:
        accounts.request_email_change(uow, actor=user.actor, password="wrong", new_email=email())
    assert (err.value.code, err.value.param) == ("wrong_password", "password")
    with pytest.raises(InvalidInput) as err:
        accounts.request_email_change(uow, actor=user.actor, password=PASSWORD,
                                      new_email=user.email.upper())  # fmt: skip
    assert err.value.code == "email_unchanged"
    with pytest.raises(Conflict) as err:
        accounts.request_email_change(uow, actor=user.actor, password=PASSWORD,
                                      new_email=other.email)  # fmt: skip
    assert err.value.code == "email_taken"
    with pytest.raises(InvalidInput) as err:
        accounts.request_email_change(uow, actor=user.actor, password=PASSWORD, new_email="x")
    assert err.value.param == "new_email"


def test_email_change_conflict_at_verification(uow):
    user = signup(uow)
    new = email()
    token = accounts.request_email_change(uow, actor=user.actor, password=PASSWORD, new_email=new)
    signup(uow, address=new.upper())  # someone takes the address meanwhile
    with pytest.raises(Conflict):
        accounts.verify_email(uow, token=token)
    assert accounts.get_user_view(uow, user.id).email == user.email


def test_staff_created_users_share_the_hashing(uow):
    created = users.create_user(
        uow, actor=SYSTEM, email=email(), first_name="S", last_name="Taff", password=PASSWORD,
        roles=("support",),
    )  # fmt: skip
    view = accounts.authenticate(uow, email=created.email, password=PASSWORD)
    assert view.roles == ("support",)
    assert view.actor == Actor.user(created.id, view.permissions, public_id=created.public_id)
