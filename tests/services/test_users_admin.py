"""Staff administration of users and one's own profile: list (cursor, search, filters), read,
update, archive, restore and permanent deletion, with permissions, guard rails and audit."""

from __future__ import annotations

import hashlib
import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa

from portal.domain.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthenticated
from portal.domain.money import Money
from portal.domain.types import Actor
from portal.services.identity import roles, users
from portal.services.shared.pagination import MAX_ID
from portal.services.wallet import wallet
from tests.conftest import SYSTEM, new_key


# -- helpers ---------------------------------------------------------------------------------
def sql(uow, statement: str, **params):
    return uow.run(lambda u: u.execute(statement, params).all())


def events(uow, action: str, subject_id: int) -> list:
    return sql(
        uow,
        "SELECT actor_kind, actor_id, action, subject_type, subject_id, outcome, data"
        " FROM audit_events WHERE action = :action AND subject_id = :id ORDER BY id",
        action=action,
        id=subject_id,
    )


def all_events(uow, subject_id: int) -> list[str]:
    rows = sql(
        uow,
        "SELECT action FROM audit_events WHERE subject_type = 'user' AND subject_id = :id"
        " ORDER BY id",
        id=subject_id,
    )
    return [r.action for r in rows]


@pytest.fixture
def token() -> str:
    return "Zq" + uuid.uuid4().hex[:10]


@pytest.fixture
def admin(make) -> Actor:
    return make.user(roles=("admin",), first_name="Ada", last_name="Admin")


@pytest.fixture
def support(make) -> Actor:
    return make.user(roles=("support",), first_name="Sam", last_name="Support")


@pytest.fixture
def alice(make) -> Actor:
    return make.user(first_name="Alice", last_name="Example", email="alice.example@mail.test")


@pytest.fixture
def bob(make) -> Actor:
    return make.user(first_name="Bob", last_name="Builder")


@pytest.fixture
def helpdesk(uow, make) -> Actor:
    """Staff with users:manage through a custom role, but far from an administrator."""
    roles.create_role(
        uow, actor=SYSTEM, name="helpdesk", permissions=("users:read", "users:manage")
    )
    return make.user(roles=("helpdesk",))


def active_admins(uow) -> int:
    return sql(
        uow,
        "SELECT count(*) FROM user_roles ur JOIN roles r ON r.id = ur.role_id"
        " JOIN users u ON u.id = ur.user_id WHERE r.name = 'admin' AND u.archived_at IS NULL",
    )[0][0]


# -- listing ---------------------------------------------------------------------------------
def test_staff_list_users_with_summaries(uow, admin, support, alice, token, make):
    carol = make.user(first_name="Carol", last_name=token, roles=("merchant", "cardholder"))
    uow.run(
        lambda u: u.execute(
            sa.text(
                "UPDATE users SET email_verified_at = now(), mfa_enabled_at = now() WHERE id = :id"
            ),
            {"id": carol.id},
        )
    )
    for actor in (admin, support):
        page = users.list_users(uow, actor=actor, search=token)
        assert [s.id for s in page.items] == [carol.id]
        assert not page.has_more
    summary = page.items[0]
    assert isinstance(summary, users.UserSummary)
    assert (summary.first_name, summary.last_name) == ("Carol", token)
    assert summary.roles == ("cardholder", "merchant")
    assert summary.email_verified and summary.mfa_enabled and not summary.archived
    assert summary.created_at is not None


@pytest.mark.parametrize("role", [("cardholder",), ("merchant",)])
def test_non_staff_cannot_list_users(uow, make, role):
    with pytest.raises(Forbidden):
        users.list_users(uow, actor=make.user(roles=role))


def test_search_is_case_insensitive_on_email_first_and_last_name(uow, admin, make, token):
    a = make.user(first_name="Zebediah", last_name=token, email=f"zeb.{token}@mail.test")
    b = make.user(first_name="Ingrid", last_name=f"Van{token}Berg")
    c = make.user(first_name=f"{token}x", last_name="Smith")
    make.user(first_name="Nobody", last_name="Else")

    def found(term: str) -> set[int]:
        return {s.id for s in users.list_users(uow, actor=admin, search=term, limit=100).items}

    assert found(token.upper()) == {a.id, b.id, c.id}
    assert found(f"ZEB.{token.lower()}@MAIL") == {a.id}
    assert found("zebediah") == {a.id}
    assert found(f"ingrid van{token}") == {b.id}  # first and last name together
    assert found(f"  {token}X  ") == {c.id}  # trimmed


def test_search_treats_wildcards_literally(uow, admin, make, token):
    percent = make.user(first_name="Fifty%Off", last_name=token)
    under = make.user(first_name="Under_Score", last_name=token)
    plain = make.user(first_name="UnderXScore", last_name=token)
    slash = make.user(first_name="Back\\Slash", last_name=token)

    def found(term: str) -> set[int]:
        return {s.id for s in users.list_users(uow, actor=admin, search=term, limit=100).items}

    assert found("%") == {percent.id}
    assert found("_") == {under.id}
    assert found("under_score") == {under.id}
    assert plain.id in found("underxscore")
    assert found("\\") == {slash.id}
    assert found("") >= {percent.id, under.id, plain.id, slash.id}  # empty: no filter


@pytest.mark.parametrize("search", ["x" * 255, "a\x00b", "\ud800"])
def test_a_malformed_search_is_invalid_input(uow, admin, search):
    with pytest.raises(InvalidInput) as err:
        users.list_users(uow, actor=admin, search=search)
    assert err.value.param == "search"


def test_filter_by_role_and_archived(uow, admin, make, token):
    holder = make.user(roles=("merchant",), last_name=token)
    plain = make.user(last_name=token)
    gone = make.user(last_name=token)
    users.archive_user(uow, actor=admin, user_id=gone.id)

    def ids(**kw) -> list[int]:
        return [s.id for s in users.list_users(uow, actor=admin, search=token, **kw).items]

    assert ids(role="merchant") == [holder.id]
    assert ids(role="cardholder") == [gone.id, plain.id]
    assert ids(archived=True) == [gone.id]
    assert ids(archived=False) == [plain.id, holder.id]
    assert ids() == [gone.id, plain.id, holder.id]
    assert ids(role="cardholder", archived=False) == [plain.id]


@pytest.mark.parametrize(
    ("kw", "param"),
    [
        ({"role": "no-such-role"}, "role"),
        ({"role": "Bad Role"}, "role"),
        ({"archived": "yes"}, "archived"),
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"starting_after": 0}, "starting_after"),
        ({"starting_after": MAX_ID}, "starting_after"),
    ],
)
def test_bad_list_parameters_are_invalid_input(uow, admin, kw, param):
    with pytest.raises(InvalidInput) as err:
        users.list_users(uow, actor=admin, **kw)
    assert err.value.param == param


def test_walking_the_user_list_page_by_page(uow, admin, make, clock, token):
    base = clock.now
    made = []
    for i in range(12):
        clock.now = base - timedelta(minutes=i % 4)  # repeated and out-of-id-order times
        made.append((clock.now, make.user(last_name=token).id))
    clock.now = base
    expected = [user_id for _, user_id in sorted(made, reverse=True)]
    seen, after, pages = [], None, 0
    while True:
        page = users.list_users(uow, actor=admin, search=token, limit=5, starting_after=after)
        pages += 1
        seen.extend(s.id for s in page.items)
        if not page.has_more:
            break
        after = page.items[-1].id
    assert seen == expected
    assert pages == 3
    assert len(users.list_users(uow, actor=admin, search=token, limit=100).items) == 12
    assert len(users.list_users(uow, actor=admin, search=token).items) == 10  # default


# -- reading ---------------------------------------------------------------------------------
def test_staff_read_anyone_and_users_read_themselves(uow, admin, support, alice):
    for actor in (admin, support, alice):
        detail = users.get_user(uow, actor=actor, user_id=alice.id)
        assert isinstance(detail, users.UserDetail)
        assert detail.email == "alice.example@mail.test"
        assert detail.roles == ("cardholder",)
        assert detail.permissions == ("wallet:use",)
        assert not detail.archived and detail.archived_at is None
    assert users.get_profile(uow, actor=alice) == users.get_user(uow, actor=admin, user_id=alice.id)
    assert set(users.get_profile(uow, actor=admin).permissions) >= {"users:manage", "roles:manage"}


def test_a_cardholder_cannot_read_another_user(uow, alice, bob):
    # Another user is a 404 to a cardholder, the same answer as for no such user (issue 11 B).
    with pytest.raises(NotFound):
        users.get_user(uow, actor=alice, user_id=bob.id)
    with pytest.raises(NotFound):  # refused before looking: existence is not revealed
        users.get_user(uow, actor=alice, user_id=MAX_ID)
    with pytest.raises(NotFound):  # and before the id is even checked
        users.get_user(uow, actor=alice, user_id=0)


def test_reading_a_missing_or_malformed_id(uow, admin):
    with pytest.raises(NotFound) as err:
        users.get_user(uow, actor=admin, user_id=MAX_ID)
    assert err.value.param == "user_id"
    for bad in (0, -1, MAX_ID + 1):
        with pytest.raises(InvalidInput):
            users.get_user(uow, actor=admin, user_id=bad)


def test_only_users_have_a_profile(uow):
    with pytest.raises(Forbidden):
        users.get_profile(uow, actor=SYSTEM)


# -- updating --------------------------------------------------------------------------------
def test_staff_change_names_and_email_and_the_new_email_is_unverified(uow, admin, alice):
    uow.run(
        lambda u: u.execute(
            sa.text("UPDATE users SET email_verified_at = now() WHERE id = :id"), {"id": alice.id}
        )
    )
    _seed_identity_rows(uow, alice.id)  # among them a verification link mailed to the old address
    users.update_user(uow, actor=admin, user_id=alice.id, first_name="Alicia")
    assert sql(uow, "SELECT count(*) FROM user_tokens WHERE user_id = :id", id=alice.id)[0][0] == 1
    detail = users.update_user(
        uow, actor=admin, user_id=alice.id, first_name=" Alicia2 ", last_name="Exemplar",
        email="alicia@mail.test",
    )  # fmt: skip
    assert (detail.first_name, detail.last_name, detail.email) == (
        "Alicia2",
        "Exemplar",
        "alicia@mail.test",
    )
    assert not detail.email_verified
    # Links mailed before the change can no longer be spent; sessions are left alone.
    assert sql(uow, "SELECT count(*) FROM user_tokens WHERE user_id = :id", id=alice.id)[0][0] == 0
    assert sql(uow, "SELECT count(*) FROM web_sessions WHERE user_id = :id", id=alice.id)[0][0]
    [_, event] = events(uow, "user.update", alice.id)
    assert (event.actor_kind, event.actor_id, event.subject_type) == ("user", admin.id, "user")
    assert event.data == {
        "fields": ["email", "first_name", "last_name"],
        "email": {"from": "alice.example@mail.test", "to": "alicia@mail.test"},
        "first_name": {"from": "Alicia", "to": "Alicia2"},
        "last_name": {"from": "Example", "to": "Exemplar"},
    }


def test_users_change_their_own_names_but_not_their_email_here(uow, alice):
    detail = users.update_profile(uow, actor=alice, first_name="Ally")
    assert (detail.first_name, detail.last_name) == ("Ally", "Example")
    assert events(uow, "user.update", alice.id)[0].data == {
        "fields": ["first_name"], "first_name": {"from": "Alice", "to": "Ally"},
    }  # fmt: skip
    with pytest.raises(Forbidden) as err:
        users.update_user(uow, actor=alice, user_id=alice.id, email="new@mail.test")
    assert err.value.code == "email_change_requires_verification"
    assert err.value.param == "email"
    # The same address (even as typed with spaces) is no change at all.
    users.update_user(uow, actor=alice, user_id=alice.id, email=" alice.example@mail.test ")
    assert users.get_profile(uow, actor=alice).email == "alice.example@mail.test"


def test_even_an_admin_changes_their_own_email_through_verification(uow, admin):
    with pytest.raises(Forbidden) as err:
        users.update_user(uow, actor=admin, user_id=admin.id, email="elsewhere@mail.test")
    assert err.value.code == "email_change_requires_verification"


def test_an_update_that_changes_nothing_writes_no_event(uow, admin, alice):
    users.update_user(uow, actor=admin, user_id=alice.id, first_name="Alice")
    users.update_user(uow, actor=admin, user_id=alice.id)
    assert events(uow, "user.update", alice.id) == []


@pytest.mark.parametrize("actor_name", ["support", "bob"])
def test_support_and_cardholders_cannot_update_others(uow, request, alice, actor_name):
    actor = request.getfixturevalue(actor_name)
    # Support may read users (403); a cardholder may not know alice exists (404).
    with pytest.raises(Forbidden if actor_name == "support" else NotFound):
        users.update_user(uow, actor=actor, user_id=alice.id, first_name="Mallory")
    assert users.get_user(uow, actor=alice, user_id=alice.id).first_name == "Alice"


def test_email_taken_is_a_conflict_whatever_the_case(uow, admin, alice, bob):
    with pytest.raises(Conflict) as err:
        users.update_user(uow, actor=admin, user_id=bob.id, email="ALICE.example@mail.test")
    assert (err.value.code, err.value.param) == ("email_taken", "email")
    assert events(uow, "user.update", bob.id) == []


@pytest.mark.parametrize(
    ("kw", "param"),
    [
        ({"first_name": "  "}, "first_name"),
        ({"last_name": "x" * 101}, "last_name"),
        ({"first_name": "Nul\x00"}, "first_name"),
        ({"email": "not-an-email"}, "email"),
        ({"email": "a@b.c\x00"}, "email"),
    ],
)
def test_bad_update_input_is_invalid_and_changes_nothing(uow, admin, alice, kw, param):
    with pytest.raises(InvalidInput) as err:
        users.update_user(uow, actor=admin, user_id=alice.id, **kw)
    assert err.value.param == param
    assert events(uow, "user.update", alice.id) == []


def test_updating_a_missing_user_is_not_found(uow, admin):
    with pytest.raises(NotFound):
        users.update_user(uow, actor=admin, user_id=MAX_ID, first_name="Ghost")


def test_users_manage_does_not_reach_holders_of_more_permissions(uow, helpdesk, admin, alice):
    # Changing an administrator's email would let helpdesk reset their password.
    with pytest.raises(Forbidden) as err:
        users.update_user(uow, actor=helpdesk, user_id=admin.id, email="mine@mail.test")
    assert err.value.code == "privilege_escalation"
    for operation in (users.archive_user, users.delete_user):
        with pytest.raises(Forbidden) as err:
            operation(uow, actor=helpdesk, user_id=admin.id)
        assert err.value.code == "privilege_escalation"
    with pytest.raises(Forbidden) as err:
        users.create_user(
            uow, actor=helpdesk, email="second-admin@mail.test", first_name="A", last_name="B",
            roles=("admin",),
        )  # fmt: skip
    assert err.value.code == "privilege_escalation"
    # Within its reach, helpdesk works.
    users.update_user(uow, actor=helpdesk, user_id=alice.id, email="alice2@mail.test")
    users.archive_user(uow, actor=helpdesk, user_id=alice.id)
    created = users.create_user(
        uow, actor=helpdesk, email="new-cardholder@mail.test", first_name="N", last_name="C"
    )
    assert created.roles == ("cardholder",)


# -- archive and restore ---------------------------------------------------------------------
def test_archive_and_restore(uow, admin, alice):
    assert users.actor_for(uow, alice.id).can("wallet:use")
    detail = users.archive_user(uow, actor=admin, user_id=alice.id)
    assert detail.archived and detail.archived_at is not None
    assert detail.permissions == ()
    assert not users.actor_for(uow, alice.id).can("wallet:use")  # signs in as nobody
    users.archive_user(uow, actor=admin, user_id=alice.id)  # again: no change, no event
    restored = users.restore_user(uow, actor=admin, user_id=alice.id)
    assert not restored.archived and restored.permissions == ("wallet:use",)
    users.restore_user(uow, actor=admin, user_id=alice.id)
    assert all_events(uow, alice.id) == ["user.create", "user.archive", "user.restore"]
    [event] = events(uow, "user.archive", alice.id)
    assert (event.actor_id, event.outcome) == (admin.id, "success")


def test_nobody_archives_themselves(uow, admin):
    with pytest.raises(Forbidden) as err:
        users.archive_user(uow, actor=admin, user_id=admin.id)
    assert err.value.code == "cannot_archive_self"


@pytest.mark.parametrize("actor_name", ["support", "bob"])
def test_archive_and_restore_need_users_manage(uow, request, admin, alice, actor_name):
    actor = request.getfixturevalue(actor_name)
    refused = Forbidden if actor_name == "support" else NotFound
    with pytest.raises(refused):
        users.archive_user(uow, actor=actor, user_id=alice.id)
    users.archive_user(uow, actor=admin, user_id=alice.id)
    with pytest.raises(refused):
        users.restore_user(uow, actor=actor, user_id=alice.id)


def test_archive_missing_user_is_not_found(uow, admin):
    with pytest.raises(NotFound):
        users.archive_user(uow, actor=admin, user_id=MAX_ID)


def test_the_last_active_administrator_cannot_be_archived_or_deleted(uow, admin, make):
    assert active_admins(uow) == 1
    for operation in (users.archive_user, users.delete_user):
        with pytest.raises(Conflict) as err:
            operation(uow, actor=SYSTEM, user_id=admin.id)
        assert err.value.code == "last_admin"
    other = make.user(roles=("admin",))
    users.archive_user(uow, actor=admin, user_id=other.id)  # two admins: one may go
    assert active_admins(uow) == 1
    with pytest.raises(Conflict) as err:  # an archived admin does not count
        users.archive_user(uow, actor=SYSTEM, user_id=admin.id)
    assert err.value.code == "last_admin"
    users.restore_user(uow, actor=admin, user_id=other.id)
    users.archive_user(uow, actor=other, user_id=admin.id)
    assert active_admins(uow) == 1


# -- delete ----------------------------------------------------------------------------------
def _seed_identity_rows(uow, user_id: int) -> None:
    def digest() -> bytes:
        return hashlib.sha256(uuid.uuid4().bytes).digest()

    def work(u):
        now = u.now()
        u.execute(
            "INSERT INTO refresh_tokens (user_id, family_id, token_hash, expires_at)"
            " VALUES (:u, :f, :h, :e)",
            {"u": user_id, "f": uuid.uuid4(), "h": digest(), "e": now + timedelta(days=1)},
        )
        u.execute(
            "INSERT INTO web_sessions (user_id, token_hash, last_seen_at, absolute_expires_at)"
            " VALUES (:u, :h, :n, :e)",
            {"u": user_id, "h": digest(), "n": now, "e": now + timedelta(days=1)},
        )
        u.execute(
            "INSERT INTO user_tokens (user_id, purpose, token_hash, expires_at)"
            " VALUES (:u, 'verify_email', :h, :e)",
            {"u": user_id, "h": digest(), "e": now + timedelta(days=1)},
        )
        u.execute(
            "INSERT INTO recovery_codes (user_id, code_hash) VALUES (:u, :h)",
            {"u": user_id, "h": digest()},
        )
        u.execute(
            "INSERT INTO oauth_identities (user_id, issuer, subject)"
            " VALUES (:u, 'https://idp.test', :s)",
            {"u": user_id, "s": uuid.uuid4().hex},
        )

    uow.run(work)


DEPENDENTS = (
    "user_roles",
    "refresh_tokens",
    "web_sessions",
    "user_tokens",
    "recovery_codes",
    "oauth_identities",
)


def test_delete_a_user_without_money_history_with_everything_they_own(uow, admin, alice):
    _seed_identity_rows(uow, alice.id)
    for table in DEPENDENTS:
        assert sql(uow, f"SELECT count(*) FROM {table} WHERE user_id = :id", id=alice.id)[0][0]
    deleted = users.delete_user(uow, actor=admin, user_id=alice.id)
    assert deleted == users.UserDeleted(alice.id, alice.public_id, "alice.example@mail.test")
    with pytest.raises(NotFound):
        users.get_user(uow, actor=admin, user_id=alice.id)
    for table in DEPENDENTS:
        assert sql(uow, f"SELECT count(*) FROM {table} WHERE user_id = :id", id=alice.id)[0][0] == 0
    [event] = events(uow, "user.delete", alice.id)
    assert event.actor_id == admin.id
    assert event.data == {"email": "alice.example@mail.test", "roles": ["cardholder"]}
    with pytest.raises(NotFound):
        users.delete_user(uow, actor=admin, user_id=alice.id)


def test_every_reference_to_users_either_cascades_or_is_money_history(uow):
    """A new table pointing at users must cascade (or be counted as history by delete_user):
    otherwise deleting a user would fail with a database error."""
    rows = sql(
        uow,
        "SELECT c.conrelid::regclass::text AS tbl, c.confdeltype FROM pg_constraint c"
        " WHERE c.contype = 'f' AND c.confrelid = 'users'::regclass",
    )
    history = {"cards", "merchants", "top_ups", "merchant_members", "merchant_invitations",
               "api_keys", "adjustment_requests"}  # fmt: skip
    # "c" cascades; "n" (SET NULL: who made an enrolment code) lets the user go too.
    blocking = sorted(
        r.tbl for r in rows if r.confdeltype not in ("c", "n") and r.tbl not in history
    )
    assert blocking == []
    assert {r.tbl for r in rows} >= set(DEPENDENTS)


def test_delete_refused_for_staff_named_by_an_adjustment(uow, admin, alice, make):
    from portal.domain.money import Money
    from portal.services.admin import adjustments

    maker = make.user(roles=("admin",))
    card = make.card(alice)
    adjustments.request_adjustment(
        uow, actor=maker, target=card.public_id, direction="credit",
        amount=Money(500, card.currency), reason="goodwill", reference="CASE-1",
        idempotency_key="adj-delete-1",
    )  # fmt: skip
    with pytest.raises(Conflict) as err:
        users.delete_user(uow, actor=admin, user_id=maker.id)
    assert err.value.code == "user_has_history"


def test_delete_refused_when_the_user_holds_a_card(uow, admin, alice, make):
    make.card(alice)
    with pytest.raises(Conflict) as err:
        users.delete_user(uow, actor=admin, user_id=alice.id)
    assert err.value.code == "user_has_history"
    assert users.get_user(uow, actor=admin, user_id=alice.id).id == alice.id
    assert events(uow, "user.delete", alice.id) == []


def test_delete_refused_when_the_user_runs_or_joined_a_merchant(uow, admin, bob, make):
    from portal.services.merchants import merchants

    shop = merchants.apply(
        uow,
        actor=bob,
        name="Bob Shop",
        website="https://bob.example",
        contact_email="bob@shop.example",
        settlement_currency="USD",
    )
    member = make.user(email="member@shop.example")
    invitation = merchants.invite_member(
        uow, actor=bob, merchant=shop.public_id, email="member@shop.example", role="viewer"
    )
    merchants.accept_invitation(uow, actor=member, token=invitation.token or "")
    merchants.decide(uow, actor=admin, merchant=shop.public_id, action="approve")
    for person in (bob, member, admin):  # the owner, a member, the staff who approved
        with pytest.raises(Conflict) as err:
            users.delete_user(uow, actor=make.user(roles=("admin",)), user_id=person.id)
        assert err.value.code == "user_has_history"


def test_delete_refused_for_staff_who_moved_money(uow, admin, alice, make):
    other_admin = make.user(roles=("admin",))
    card = make.card(alice)
    wallet.top_up(
        uow, actor=other_admin, card_id=card.card_id, amount=Money.of_major("5", "USD"),
        method="cash", idempotency_key=new_key(),
    )  # fmt: skip
    with pytest.raises(Conflict) as err:
        users.delete_user(uow, actor=admin, user_id=other_admin.id)
    assert err.value.code == "user_has_history"


def test_nobody_deletes_themselves(uow, admin):
    with pytest.raises(Forbidden) as err:
        users.delete_user(uow, actor=admin, user_id=admin.id)
    assert err.value.code == "cannot_delete_self"


@pytest.mark.parametrize("actor_name", ["support", "bob"])
def test_delete_needs_users_manage(uow, request, alice, actor_name):
    with pytest.raises(Forbidden if actor_name == "support" else NotFound):
        users.delete_user(uow, actor=request.getfixturevalue(actor_name), user_id=alice.id)
    assert sql(uow, "SELECT count(*) FROM users WHERE id = :id", id=alice.id)[0][0] == 1


# -- creation (the existing service keeps its contract) --------------------------------------
def test_create_user_still_needs_users_manage_and_writes_an_event(uow, admin, support):
    with pytest.raises(Forbidden):
        users.create_user(uow, actor=support, email="x@mail.test", first_name="X", last_name="Y")
    created = users.create_user(
        uow, actor=admin, email="staff@mail.test", first_name="S", last_name="T",
        roles=("support",),
    )  # fmt: skip
    [event] = events(uow, "user.create", created.id)
    assert event.data == {"roles": ["support"]}


def test_names_and_emails_with_control_characters_are_refused():
    with pytest.raises(InvalidInput):
        users.check_names("A\x00", "B")
    with pytest.raises(InvalidInput):
        users.clean_email("a\x07@b.test")
    # A joiner is kept where it shapes the text (Persian), refused where it is invisible (Latin).
    assert users.check_names(" Zoë ", "مهر\u200cنوش") == ("Zoë", "مهر\u200cنوش")
    with pytest.raises(InvalidInput):
        users.check_names("Zoë", "Ng\u200cuyen")


def test_archiving_revokes_sessions_and_tokens_so_a_restore_does_not_revive_them(uow, make):
    from portal.services.identity import sessions, tokens

    admin = make.user(roles=("admin",))
    target = make.user()
    web = sessions.create_web_session(
        uow, user_id=target.id, user_agent="t", ip="127.0.0.1", mfa_verified=False
    )
    pair = tokens.issue_tokens(uow, user_id=target.id)
    users.archive_user(uow, actor=admin, user_id=target.id)
    users.restore_user(uow, actor=admin, user_id=target.id)
    assert sessions.resolve_web_session(uow, token=web.token) is None
    claims = tokens.verify_access_token(uow.settings, pair.access_token)
    with pytest.raises(Unauthenticated):
        tokens.actor_for_access(uow, claims)
    with pytest.raises(Unauthenticated):
        tokens.refresh(uow, refresh_token=pair.refresh_token)
