"""API tokens: JWT access tokens checked claim by claim, opaque refresh tokens rotated on every
use with reuse detection and a grace period for concurrent refreshes."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from dataclasses import replace
from datetime import timedelta

import pytest
from joserfc import jwt
from joserfc.jwk import OctKey

from portal.domain.errors import Forbidden, Unauthenticated
from portal.services.identity import mfa, sessions, tokens, users
from portal.services.identity.accounts import get_user_view
from tests.conftest import SYSTEM
from tests.services.test_identity import PASSWORD, email, signup


@pytest.fixture
def user(uow):
    return signup(uow)


def b64(data: dict | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def claims_of(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def header_of(token: str) -> dict:
    header = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))


def forge(settings, *, key: bytes | None = None, alg: str = "HS256", header: dict | None = None,
          **changes) -> str:  # fmt: skip
    """A token signed like ours, with claims changed (None removes one)."""
    now = int(__import__("time").time())
    claims = {"iss": settings.jwt_issuer, "aud": settings.jwt_audience, "sub": "1",
              "typ": "access", "iat": now, "exp": now + 900, "jti": uuid.uuid4().hex,
              "fam": str(uuid.uuid4())}  # fmt: skip
    for name, value in changes.items():
        if value is None:
            claims.pop(name)
        else:
            claims[name] = value
    head = {"alg": alg, "typ": "at+jwt", **(header or {})}
    return jwt.encode(head, claims, OctKey.import_key(key or settings.jwt_key), algorithms=[alg])


def refuse(settings, token: str, **kw) -> None:
    with pytest.raises(Unauthenticated):
        tokens.verify_access_token(settings, token, **kw)


def family_rows(uow, family_id):
    return uow.run(
        lambda u: u.execute(
            "SELECT id, parent_id, used_at, revoked_at, expires_at FROM refresh_tokens"
            " WHERE family_id = :f ORDER BY id",
            {"f": family_id},
        ).all()
    )


def reuse_events(uow):
    return uow.run(
        lambda u: u.execute(
            "SELECT subject_id, outcome, data FROM audit_events"
            " WHERE action = 'token.reuse_detected'"
        ).all()
    )


# -- issuing ------------------------------------------------------------------------------------
def test_issue_tokens(uow, user, clock):
    pair = tokens.issue_tokens(uow, user_id=user.id, user_agent="curl/8")
    assert (pair.token_type, pair.expires_in) == ("Bearer", 900)
    assert pair.refresh_token.startswith("prt_") and len(pair.refresh_token) == 47
    assert header_of(pair.access_token) == {"alg": "HS256", "typ": "at+jwt"}
    claims = claims_of(pair.access_token)
    assert claims["iss"] == uow.settings.jwt_issuer
    assert claims["aud"] == uow.settings.jwt_audience
    assert (claims["sub"], claims["typ"], claims["fam"]) == (
        str(user.id),
        "access",
        str(pair.family_id),
    )
    assert claims["exp"] - claims["iat"] == 900
    assert claims["iat"] == int(clock.now.timestamp())
    assert len(claims["jti"]) >= 32
    (row,) = family_rows(uow, pair.family_id)
    assert row.parent_id is None and row.used_at is None
    assert row.expires_at == clock.now + timedelta(days=uow.settings.refresh_token_days)
    stored = uow.run(lambda u: u.execute("SELECT token_hash FROM refresh_tokens").scalars().all())
    assert hashlib.sha256(pair.refresh_token.encode()).digest() in [bytes(h) for h in stored]


def test_every_issue_starts_a_new_family_with_new_tokens(uow, user):
    a, b = tokens.issue_tokens(uow, user_id=user.id), tokens.issue_tokens(uow, user_id=user.id)
    assert a.family_id != b.family_id and a.refresh_token != b.refresh_token
    assert claims_of(a.access_token)["jti"] != claims_of(b.access_token)["jti"]


def test_issue_refused_for_archived_user(uow, user):
    uow.run(lambda u: u.execute("UPDATE users SET archived_at = now() WHERE id = :id",
                                {"id": user.id}))  # fmt: skip
    with pytest.raises(Unauthenticated):
        tokens.issue_tokens(uow, user_id=user.id)


def test_staff_need_a_second_factor_for_api_tokens(uow, clock):
    created = users.create_user(uow, actor=SYSTEM, email=email(), first_name="A",
                                last_name="Dmin", password=PASSWORD, roles=("admin",))  # fmt: skip
    with pytest.raises(Forbidden) as err:
        tokens.issue_tokens(uow, user_id=created.id)
    assert err.value.code == "mfa_enrolment_required"
    admin = get_user_view(uow, created.id)
    issued = mfa.issue_enrolment_code(uow, actor=SYSTEM, user_id=admin.id).code
    enrolment = mfa.begin_totp_enrolment(uow, actor=admin.actor, enrolment_code=issued)
    code = mfa.pyotp.TOTP(enrolment.secret).at(clock.now)
    mfa.confirm_totp(uow, actor=admin.actor, code=code)
    assert tokens.issue_tokens(uow, user_id=created.id).refresh_token


# -- verifying access tokens --------------------------------------------------------------------
def test_verify_access_token(uow, user):
    pair = tokens.issue_tokens(uow, user_id=user.id)
    claims = tokens.verify_access_token(uow.settings, pair.access_token)
    assert (claims.user_id, claims.family_id) == (user.id, pair.family_id)
    assert claims.expires_at - claims.issued_at == timedelta(seconds=900)
    actor, view = tokens.actor_for_access(uow, claims)
    assert view == user and actor == user.actor and actor.can("wallet:use")


def test_tampered_token_refused(uow, user):
    token = tokens.issue_tokens(uow, user_id=user.id).access_token
    head, payload, sig = token.split(".")
    other = b64({**claims_of(token), "sub": str(user.id + 1)})
    refuse(uow.settings, f"{head}.{other}.{sig}")
    flipped = sig[:-2] + ("A" if sig[-2] != "A" else "B") + sig[-1]
    refuse(uow.settings, f"{head}.{payload}.{flipped}")
    refuse(uow.settings, token + "x")
    refuse(uow.settings, "not.a.jwt")
    refuse(uow.settings, "")


def test_wrong_key_refused(uow):
    settings = uow.settings
    refuse(settings, forge(settings, key=b"another-key-0123456789abcdef0123456789"))
    assert tokens.verify_access_token(settings, forge(settings))  # the forge itself is sound


def test_alg_none_refused(uow):
    settings = uow.settings
    good = claims_of(forge(settings))
    refuse(settings, f"{b64({'alg': 'none', 'typ': 'at+jwt'})}.{b64(good)}.")
    refuse(settings, f"{b64({'alg': 'None', 'typ': 'at+jwt'})}.{b64(good)}.")


@pytest.mark.parametrize("alg", ["HS384", "HS512"])
def test_other_algorithms_refused_even_with_our_key(uow, alg):
    refuse(uow.settings, forge(uow.settings, alg=alg))


def test_asymmetric_algorithm_confusion_refused(uow):
    # An RS256 header over an HMAC made with our key as if it were a public key.
    settings = uow.settings
    good = forge(settings)
    _, payload, sig = good.split(".")
    refuse(settings, f"{b64({'alg': 'RS256', 'typ': 'at+jwt'})}.{payload}.{sig}")


def test_expired_refused(uow, user, clock):
    token = tokens.issue_tokens(uow, user_id=user.id).access_token
    later = clock.now + timedelta(seconds=900 + tokens.LEEWAY + 1)
    refuse(uow.settings, token, now=later)
    assert tokens.verify_access_token(uow.settings, token, now=clock.now + timedelta(seconds=899))


def test_a_lifetime_longer_than_portal_issues_is_refused(uow):
    """Even signed with our key: an access token lasting longer than PORTAL_ACCESS_TOKEN_SECONDS
    was not made by Portal (a forged one would outlive the key's rotation)."""
    now = int(__import__("time").time())
    longest = uow.settings.access_token_seconds + tokens.LEEWAY
    assert tokens.verify_access_token(uow.settings, forge(uow.settings, iat=now, exp=now + longest))
    refuse(uow.settings, forge(uow.settings, iat=now, exp=now + longest + 1))
    refuse(uow.settings, forge(uow.settings, iat=now, exp=now + 10 * 365 * 86400))


def test_issued_in_the_future_refused(uow):
    now = int(__import__("time").time())
    refuse(uow.settings, forge(uow.settings, iat=now + 600, exp=now + 1500))


@pytest.mark.parametrize(
    "changes",
    [{"aud": "someone-else"}, {"iss": "https://evil.example"}, {"typ": "refresh"},
     {"typ": "id"}, {"aud": ["other", "another"]}],
)  # fmt: skip
def test_wrong_claims_refused(uow, changes):
    refuse(uow.settings, forge(uow.settings, **changes))


@pytest.mark.parametrize("claim", ["iss", "aud", "sub", "typ", "exp", "iat", "jti", "fam"])
def test_missing_claim_refused(uow, claim):
    refuse(uow.settings, forge(uow.settings, **{claim: None}))


@pytest.mark.parametrize(
    "changes", [{"sub": "abc"}, {"sub": 5}, {"fam": "not-a-uuid"}, {"jti": ""}, {"exp": "soon"}]
)
def test_malformed_claims_refused(uow, changes):
    refuse(uow.settings, forge(uow.settings, **changes))


def test_wrong_header_type_refused(uow):
    refuse(uow.settings, forge(uow.settings, header={"typ": "JWT"}))


def test_refresh_token_is_not_an_access_token_nor_the_reverse(uow, user):
    pair = tokens.issue_tokens(uow, user_id=user.id)
    refuse(uow.settings, pair.refresh_token)
    with pytest.raises(Unauthenticated):
        tokens.refresh(uow, refresh_token=pair.access_token)
    with pytest.raises(Unauthenticated):
        tokens.logout(uow, refresh_token=pair.access_token)
    # Neither is changed by the attempts.
    assert tokens.verify_access_token(uow.settings, pair.access_token)
    tokens.refresh(uow, refresh_token=pair.refresh_token)


def test_actor_for_access_follows_the_user_and_roles(uow, user):
    pair = tokens.issue_tokens(uow, user_id=user.id)
    claims = tokens.verify_access_token(uow.settings, pair.access_token)
    uow.run(lambda u: u.execute("UPDATE roles SET archived_at = now() WHERE name = 'cardholder'"))
    actor, _ = tokens.actor_for_access(uow, claims)
    assert not actor.can("wallet:use")  # an archived role grants nothing at once
    uow.run(lambda u: u.execute("UPDATE users SET archived_at = now() WHERE id = :id",
                                {"id": user.id}))  # fmt: skip
    with pytest.raises(Unauthenticated):
        tokens.actor_for_access(uow, claims)


def test_actor_for_access_refuses_forged_family_or_expired_family(uow, user, clock):
    pair = tokens.issue_tokens(uow, user_id=user.id)
    claims = tokens.verify_access_token(uow.settings, pair.access_token)
    with pytest.raises(Unauthenticated):
        tokens.actor_for_access(uow, replace(claims, family_id=uuid.uuid4()))
    other = signup(uow)
    with pytest.raises(Unauthenticated):  # a family of someone else
        tokens.actor_for_access(uow, replace(claims, user_id=other.id))
    clock.advance(days=uow.settings.refresh_token_days, seconds=1)
    with pytest.raises(Unauthenticated):
        tokens.actor_for_access(uow, claims)


# -- refresh rotation ---------------------------------------------------------------------------
def test_refresh_rotates(uow, user, clock):
    first = tokens.issue_tokens(uow, user_id=user.id)
    clock.advance(minutes=10)
    second = tokens.refresh(uow, refresh_token=first.refresh_token)
    assert second.family_id == first.family_id
    assert second.refresh_token != first.refresh_token
    assert second.access_token != first.access_token
    assert tokens.verify_access_token(uow.settings, second.access_token, now=clock.now)
    clock.advance(minutes=10)
    third = tokens.refresh(uow, refresh_token=second.refresh_token)
    rows = family_rows(uow, first.family_id)
    assert [r.parent_id for r in rows] == [None, rows[0].id, rows[1].id]
    assert [r.used_at is not None for r in rows] == [True, True, False]
    # The family's absolute expiry is fixed at sign-in; rotation does not extend it.
    assert len({r.expires_at for r in rows}) == 1
    assert third.refresh_token not in (first.refresh_token, second.refresh_token)


def test_old_token_after_grace_is_reuse_and_revokes_the_family(uow, user, clock):
    first = tokens.issue_tokens(uow, user_id=user.id)
    second = tokens.refresh(uow, refresh_token=first.refresh_token)
    clock.advance(seconds=uow.settings.refresh_grace_seconds + 1)
    with pytest.raises(Unauthenticated):
        tokens.refresh(uow, refresh_token=first.refresh_token)
    assert all(r.revoked_at is not None for r in family_rows(uow, first.family_id))
    # The revocation and its security event were committed despite the refusal.
    (event,) = reuse_events(uow)
    assert (event.subject_id, event.outcome) == (user.id, "failure")
    assert event.data["family_id"] == str(first.family_id)
    # Both parties must sign in again: the thief's and the owner's tokens are dead.
    with pytest.raises(Unauthenticated):
        tokens.refresh(uow, refresh_token=second.refresh_token)
    claims = tokens.verify_access_token(uow.settings, second.access_token, now=clock.now)
    with pytest.raises(Unauthenticated):
        tokens.actor_for_access(uow, claims)


def test_reuse_at_exactly_the_grace_limit_is_still_answered(uow, user, clock):
    first = tokens.issue_tokens(uow, user_id=user.id)
    second = tokens.refresh(uow, refresh_token=first.refresh_token)
    clock.advance(seconds=uow.settings.refresh_grace_seconds)
    again = tokens.refresh(uow, refresh_token=first.refresh_token)
    assert again.refresh_token == second.refresh_token
    assert reuse_events(uow) == []


def test_within_grace_both_concurrent_refreshes_succeed_with_the_same_token(uow, user, clock):
    first = tokens.issue_tokens(uow, user_id=user.id)
    a = tokens.refresh(uow, refresh_token=first.refresh_token)
    clock.advance(seconds=2)
    b = tokens.refresh(uow, refresh_token=first.refresh_token)
    assert a.refresh_token == b.refresh_token  # one live token: whichever a client keeps works
    assert a.access_token != b.access_token
    assert all(tokens.verify_access_token(uow.settings, p.access_token, now=clock.now)
               for p in (a, b))  # fmt: skip
    rows = family_rows(uow, first.family_id)
    assert len(rows) == 2 and all(r.revoked_at is None for r in rows)
    assert reuse_events(uow) == []
    # The shared token rotates normally afterwards, once.
    clock.advance(minutes=5)
    c = tokens.refresh(uow, refresh_token=a.refresh_token)
    assert c.refresh_token != a.refresh_token


def test_within_grace_a_used_token_gets_only_its_own_child_never_a_later_token(uow, user, clock):
    """A thief holding a token the client has used is never handed the client's live token:
    once the client has moved on from the child issued for it, presenting the old token, even
    within the grace period, is reuse and revokes the family (issue 11 A10)."""
    first = tokens.issue_tokens(uow, user_id=user.id)
    second = tokens.refresh(uow, refresh_token=first.refresh_token)
    clock.advance(seconds=1)
    tokens.refresh(uow, refresh_token=second.refresh_token)  # the client moves on
    clock.advance(seconds=1)
    with pytest.raises(Unauthenticated):
        tokens.refresh(uow, refresh_token=first.refresh_token)
    assert all(r.revoked_at is not None for r in family_rows(uow, first.family_id))
    (event,) = reuse_events(uow)
    assert event.data["reason"] == "child_already_used"


def test_grace_answer_never_resurrects_a_revoked_family(uow, user):
    first = tokens.issue_tokens(uow, user_id=user.id)
    tokens.refresh(uow, refresh_token=first.refresh_token)
    sessions.revoke_family(uow, actor=user.actor, family_id=first.family_id)
    with pytest.raises(Unauthenticated):
        tokens.refresh(uow, refresh_token=first.refresh_token)


def test_expired_family_refused(uow, user, clock):
    first = tokens.issue_tokens(uow, user_id=user.id)
    clock.advance(days=uow.settings.refresh_token_days - 1)
    second = tokens.refresh(uow, refresh_token=first.refresh_token)
    clock.advance(days=1, seconds=1)
    with pytest.raises(Unauthenticated):
        tokens.refresh(uow, refresh_token=second.refresh_token)
    assert reuse_events(uow) == []


def test_unknown_and_malformed_refresh_tokens_refused(uow):
    for token in ("prt_" + "A" * 43, "prt_short", "", "x" * 47, "prt_" + "é" * 43):
        with pytest.raises(Unauthenticated):
            tokens.refresh(uow, refresh_token=token)


def test_refresh_refused_for_archived_user(uow, user):
    first = tokens.issue_tokens(uow, user_id=user.id)
    uow.run(lambda u: u.execute("UPDATE users SET archived_at = now() WHERE id = :id",
                                {"id": user.id}))  # fmt: skip
    with pytest.raises(Unauthenticated):
        tokens.refresh(uow, refresh_token=first.refresh_token)


def test_logout_revokes_the_family(uow, user):
    first = tokens.issue_tokens(uow, user_id=user.id)
    other = tokens.issue_tokens(uow, user_id=user.id)
    second = tokens.refresh(uow, refresh_token=first.refresh_token)
    tokens.logout(uow, refresh_token=second.refresh_token)
    with pytest.raises(Unauthenticated):
        tokens.refresh(uow, refresh_token=second.refresh_token)
    claims = tokens.verify_access_token(uow.settings, second.access_token)
    with pytest.raises(Unauthenticated):
        tokens.actor_for_access(uow, claims)
    tokens.logout(uow, refresh_token=second.refresh_token)  # again: nothing more to do
    assert reuse_events(uow) == []
    # Other families (other devices) are untouched.
    tokens.refresh(uow, refresh_token=other.refresh_token)
    with pytest.raises(Unauthenticated):
        tokens.logout(uow, refresh_token="prt_" + "B" * 43)
