"""Server-side web sessions: new token per sign-in, idle and absolute timeouts, archived users,
listing and revoking (owner or staff only)."""

from __future__ import annotations

import hashlib

import pytest

from portal.domain.errors import NotFound, Unauthenticated
from portal.services.identity import accounts, sessions, tokens, users
from tests.conftest import SYSTEM
from tests.services.test_identity import PASSWORD, email, signup


def new_session(uow, user, *, mfa: bool = False) -> sessions.NewSession:
    return sessions.create_web_session(
        uow, user_id=user.id, user_agent="Firefox", ip="192.0.2.7", mfa_verified=mfa
    )


def last_seen(uow, session_id: int):
    return uow.run(
        lambda u: u.execute(
            "SELECT last_seen_at FROM web_sessions WHERE id = :id", {"id": session_id}
        ).scalar_one()
    )


def staff(uow, role: str) -> accounts.UserView:
    created = users.create_user(uow, actor=SYSTEM, email=email(), first_name="S",
                                last_name="Taff", password=PASSWORD, roles=(role,))  # fmt: skip
    return accounts.get_user_view(uow, created.id)


@pytest.fixture
def user(uow):
    return signup(uow)


def test_new_random_token_at_every_sign_in_stored_only_hashed(uow, user):
    first, second = new_session(uow, user), new_session(uow, user)
    assert first.id != second.id and first.token != second.token
    assert len(first.token) >= 43  # 256 bits, URL-safe base64
    row = uow.run(
        lambda u: u.execute(
            "SELECT token_hash, user_agent, ip, mfa_verified_at FROM web_sessions WHERE id = :id",
            {"id": first.id},
        ).one()
    )
    assert bytes(row.token_hash) == hashlib.sha256(first.token.encode()).digest()
    assert (row.user_agent, row.ip, row.mfa_verified_at) == ("Firefox", "192.0.2.7", None)


def test_resolve_returns_the_user_and_mfa_state(uow, user):
    made = new_session(uow, user, mfa=True)
    info = sessions.resolve_web_session(uow, token=made.token)
    assert info is not None
    assert (info.session_id, info.user, info.mfa_verified) == (made.id, user, True)
    assert info.actor.can("wallet:use")


@pytest.mark.parametrize("token", ["", "x" * 43, "a" * 1000])
def test_unknown_token_resolves_to_none(uow, token):
    assert sessions.resolve_web_session(uow, token=token) is None


def test_session_for_archived_user_cannot_start(uow):
    archived = signup(uow)
    uow.run(lambda u: u.execute("UPDATE users SET archived_at = now() WHERE id = :id",
                                {"id": archived.id}))  # fmt: skip
    with pytest.raises(Unauthenticated):
        new_session(uow, archived)


def test_idle_timeout(uow, user, clock):
    made = new_session(uow, user)
    idle = uow.settings.session_idle_minutes
    clock.advance(minutes=idle - 1)
    assert sessions.resolve_web_session(uow, token=made.token) is not None  # touched now
    clock.advance(minutes=idle - 1)
    assert sessions.resolve_web_session(uow, token=made.token) is not None  # still in use
    clock.advance(minutes=idle, seconds=1)
    assert sessions.resolve_web_session(uow, token=made.token) is None


def test_absolute_timeout_even_when_active(uow, user, clock):
    made = new_session(uow, user)
    step = uow.settings.session_idle_minutes - 5
    elapsed = 0
    while elapsed + step < uow.settings.session_absolute_hours * 60:
        clock.advance(minutes=step)
        elapsed += step
        assert sessions.resolve_web_session(uow, token=made.token) is not None, elapsed
    clock.advance(minutes=step)
    assert sessions.resolve_web_session(uow, token=made.token) is None


def test_archived_user_session_stops_working(uow, user):
    made = new_session(uow, user)
    uow.run(lambda u: u.execute("UPDATE users SET archived_at = now() WHERE id = :id",
                                {"id": user.id}))  # fmt: skip
    assert sessions.resolve_web_session(uow, token=made.token) is None


def test_last_seen_touched_at_most_once_a_minute(uow, user, clock):
    made = new_session(uow, user)
    start = last_seen(uow, made.id)
    clock.advance(seconds=30)
    sessions.resolve_web_session(uow, token=made.token)
    assert last_seen(uow, made.id) == start
    clock.advance(seconds=31)
    sessions.resolve_web_session(uow, token=made.token)
    assert last_seen(uow, made.id) == clock.now


def test_mark_mfa_verified_rotates_the_token(uow, user):
    made = new_session(uow, user)
    rotated = sessions.mark_mfa_verified(uow, session_id=made.id)
    assert rotated.id == made.id and rotated.token != made.token
    assert sessions.resolve_web_session(uow, token=made.token) is None
    info = sessions.resolve_web_session(uow, token=rotated.token)
    assert info is not None and info.mfa_verified


def test_mark_mfa_verified_on_ended_session_refused(uow, user):
    made = new_session(uow, user)
    sessions.revoke_session(uow, actor=user.actor, session_id=made.id)
    with pytest.raises(Unauthenticated):
        sessions.mark_mfa_verified(uow, session_id=made.id)


def test_list_sessions_shows_web_sessions_and_api_families(uow, user, clock):
    a = new_session(uow, user)
    b = new_session(uow, user)
    pair = tokens.issue_tokens(uow, user_id=user.id, user_agent="curl/8")
    revoked = new_session(uow, user)
    sessions.revoke_session(uow, actor=user.actor, session_id=revoked.id)
    other = signup(uow)
    new_session(uow, other)
    listed = sessions.list_sessions(uow, actor=user.actor, current_session_id=a.id)
    assert sorted((v.kind, v.id, v.current) for v in listed) == sorted(
        [("web", str(a.id), True), ("web", str(b.id), False),
         ("api", str(pair.family_id), False)]
    )  # fmt: skip
    api = next(v for v in listed if v.kind == "api")
    assert api.user_agent == "curl/8"
    listed = sessions.list_sessions(uow, actor=user.actor, current_family_id=pair.family_id)
    assert [v.kind for v in listed if v.current] == ["api"]
    # Idle sessions drop off the list; the family lives on.
    clock.advance(minutes=uow.settings.session_idle_minutes + 1)
    assert [v.kind for v in sessions.list_sessions(uow, actor=user.actor)] == ["api"]


def test_list_someone_elses_sessions_needs_users_read(uow, user):
    new_session(uow, user)
    stranger = signup(uow)
    with pytest.raises(NotFound):
        sessions.list_sessions(uow, actor=stranger.actor, user_id=user.id)
    support = staff(uow, "support")
    assert len(sessions.list_sessions(uow, actor=support.actor, user_id=user.id)) == 1


def test_owner_revokes_a_session(uow, user):
    made = new_session(uow, user)
    sessions.revoke_session(uow, actor=user.actor, session_id=made.id)
    assert sessions.resolve_web_session(uow, token=made.token) is None
    event = uow.run(
        lambda u: u.execute(
            "SELECT actor_id, subject_id FROM audit_events WHERE action = 'session.revoke'"
        ).one()
    )
    assert (event.actor_id, event.subject_id) == (user.id, made.id)


def test_only_owner_or_user_managers_revoke(uow, user):
    made = new_session(uow, user)
    stranger = signup(uow)
    with pytest.raises(NotFound):
        sessions.revoke_session(uow, actor=stranger.actor, session_id=made.id)
    support = staff(uow, "support")  # users:read only
    with pytest.raises(NotFound):
        sessions.revoke_session(uow, actor=support.actor, session_id=made.id)
    assert sessions.resolve_web_session(uow, token=made.token) is not None
    admin = staff(uow, "admin")
    sessions.revoke_session(uow, actor=admin.actor, session_id=made.id)
    assert sessions.resolve_web_session(uow, token=made.token) is None
    with pytest.raises(NotFound):
        sessions.revoke_session(uow, actor=admin.actor, session_id=10**12)


def test_revoke_family(uow, user):
    pair = tokens.issue_tokens(uow, user_id=user.id)
    stranger = signup(uow)
    with pytest.raises(NotFound):
        sessions.revoke_family(uow, actor=stranger.actor, family_id=pair.family_id)
    claims = tokens.verify_access_token(uow.settings, pair.access_token)
    tokens.actor_for_access(uow, claims)
    sessions.revoke_family(uow, actor=user.actor, family_id=pair.family_id)
    with pytest.raises(Unauthenticated):
        tokens.actor_for_access(uow, claims)
    with pytest.raises(Unauthenticated):
        tokens.refresh(uow, refresh_token=pair.refresh_token)
    assert [v.kind for v in sessions.list_sessions(uow, actor=user.actor)] == []


def test_revoke_all_but_this_one(uow, user):
    keep, lose = new_session(uow, user), new_session(uow, user)
    pair = tokens.issue_tokens(uow, user_id=user.id)
    sessions.revoke_all(uow, actor=user.actor, except_session_id=keep.id)
    assert sessions.resolve_web_session(uow, token=keep.token) is not None
    assert sessions.resolve_web_session(uow, token=lose.token) is None
    with pytest.raises(Unauthenticated):
        tokens.refresh(uow, refresh_token=pair.refresh_token)
    sessions.revoke_all(uow, actor=user.actor)
    assert sessions.resolve_web_session(uow, token=keep.token) is None


def test_revoke_all_of_someone_else_needs_users_manage(uow, user):
    made = new_session(uow, user)
    with pytest.raises(NotFound):
        sessions.revoke_all(uow, actor=signup(uow).actor, user_id=user.id)
    sessions.revoke_all(uow, actor=staff(uow, "admin").actor, user_id=user.id)
    assert sessions.resolve_web_session(uow, token=made.token) is None


def test_anonymous_actor_cannot_list(uow):
    with pytest.raises(Unauthenticated):
        sessions.list_sessions(uow, actor=SYSTEM)
