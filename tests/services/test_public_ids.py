"""Public ids at the service boundary: what they look like (made in Python or by the database),
that every object gets one of its kind, that services take them where they took internal ids
(resolved in the statement they already run: the transfer costs no extra statement), that a
malformed one is NotFound before any query, that another person's object by its public id is the
same NotFound, and that an idempotent replay answers the same public id."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa

from portal.domain.errors import Forbidden, InvalidInput, NotFound
from portal.domain.ids import PREFIXES, RANDOM_LENGTH, is_public_id, new_public_id
from portal.domain.money import Money
from portal.domain.types import Actor
from portal.services.identity import roles, sessions, users
from portal.services.ledger.ledger import lock_wallets, lock_wallets_by_ref
from portal.services.wallet import activity, cards, wallet
from tests.conftest import SYSTEM, new_key

BANK = wallet.BankAccount("Bank Central Asia", "1234567890", "Alice Wong")

#: Every kind the cardholder API names, and the table that stores it.
TABLES = {
    "user": "users",
    "role": "roles",
    "session": "web_sessions",
    "card": "cards",
    "top_up": "top_ups",
    "transfer": "transfers",
    "withdrawal": "withdrawals",
}


def usd(major: str) -> Money:
    return Money.of_major(major, "USD")


@contextmanager
def statements(connection: sa.Connection) -> Iterator[list[str]]:
    """The SQL statements sent on the test's connection (every unit of work joins it)."""
    sent: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        if not statement.lstrip().upper().startswith(("SAVEPOINT", "RELEASE", "ROLLBACK TO")):
            sent.append(statement)

    sa.event.listen(connection, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        sa.event.remove(connection, "before_cursor_execute", record)


def web_session(uow, user: Actor) -> sessions.NewSession:
    assert user.id is not None
    return sessions.create_web_session(
        uow, user_id=user.id, user_agent="", ip="", mfa_verified=True
    )


def stored_public_id(uow, kind: str, internal_id: int) -> str:
    return uow.run(
        lambda u: u.execute(
            f"SELECT public_id FROM {TABLES[kind]} WHERE id = :id", {"id": internal_id}
        ).scalar_one()
    )


# -- the shape -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(PREFIXES))
def test_python_made_ids_have_the_documented_shape(kind):
    made = {new_public_id(kind) for _ in range(200)}

    assert len(made) == 200  # random, not a sequence
    for value in made:
        assert re.fullmatch(rf"{PREFIXES[kind]}_[0-9A-Za-z]{{{RANDOM_LENGTH}}}", value)
        assert is_public_id(kind, value)
        assert [k for k in PREFIXES if is_public_id(k, value)] == [kind]


@pytest.mark.parametrize("kind", sorted(PREFIXES))
def test_database_made_ids_have_the_same_shape(uow, kind):
    made = uow.run(
        lambda u: (
            u.execute(
                "SELECT portal_public_id(:prefix) FROM generate_series(1, 200)",
                {"prefix": PREFIXES[kind]},
            )
            .scalars()
            .all()
        )
    )

    assert len(set(made)) == 200
    assert all(is_public_id(kind, value) for value in made), made[:3]
    # Every character of the alphabet is drawn, upper and lower case and digits alike.
    drawn = set("".join(value.split("_", 1)[1] for value in made))
    assert {"0", "9", "A", "Z", "a", "z"} <= drawn


@pytest.mark.parametrize(
    "value",
    [None, 12, "", "card", "card_", "card_" + "0" * 23, "card_" + "0" * 25, "card-" + "0" * 24,
     "CARD_" + "0" * 24, "card_" + "0" * 23 + "!", " card_" + "0" * 24, "usr_" + "0" * 24],
)  # fmt: skip
def test_anything_else_is_not_a_card_id(value):
    assert not is_public_id("card", value)


def test_every_object_gets_a_public_id_of_its_kind_as_stored(uow, make):
    alice, bob = make.user(), make.user()
    card, other = make.card(alice, balance="50.00"), make.card(bob)
    topped = wallet.top_up(uow, actor=alice, card_id=card.card_id, amount=usd("5"),
                           method="cash", idempotency_key=new_key())  # fmt: skip
    moved = wallet.transfer(uow, actor=alice, from_card_id=card.card_id, to_card_id=other.card_id,
                            amount=usd("2"), idempotency_key=new_key())  # fmt: skip
    held = wallet.withdraw(uow, actor=alice, card_id=card.card_id, amount=usd("10"), bank=BANK,
                           idempotency_key=new_key())  # fmt: skip
    role = roles.create_role(uow, actor=SYSTEM, name="auditor-ids")
    web = web_session(uow, alice)

    made = {
        "user": (alice.public_id, alice.id),
        "role": (role.public_id, role.id),
        "session": (web.public_id, web.id),
        "card": (card.public_id, card.card_id),
        "top_up": (topped.public_id, topped.id),
        "transfer": (moved.public_id, moved.id),
        "withdrawal": (held.public_id, held.id),
    }
    for kind, (public_id, internal_id) in made.items():
        assert is_public_id(kind, public_id), (kind, public_id)
        assert stored_public_id(uow, kind, internal_id) == public_id
    # References carry the other object's public id too.
    assert (moved.card_public_id, moved.counterparty_card_public_id) == (
        card.public_id, other.public_id
    )  # fmt: skip
    assert moved.balance.card_public_id == card.public_id


# -- services take public ids ----------------------------------------------------------------
def test_a_transfer_by_public_ids_costs_not_one_statement_more(uow, make, connection):
    alice = make.user()
    src, dst = make.card(alice, balance="100.00"), make.card(alice)

    with statements(connection) as by_internal_id:
        wallet.transfer(uow, actor=alice, from_card_id=src.card_id, to_card_id=dst.card_id,
                        amount=usd("1"), idempotency_key=new_key())  # fmt: skip
    with statements(connection) as by_public_id:
        moved = wallet.transfer(uow, actor=alice, from_card_id=src.public_id,
                                to_card_id=dst.public_id, amount=usd("1"),
                                idempotency_key=new_key())  # fmt: skip

    assert len(by_public_id) == len(by_internal_id)
    # Resolved in the one call that claims, locks and writes (portal_transfer, migration 0030).
    assert "portal_transfer(" in by_public_id[0]
    assert (moved.card_id, moved.card_public_id) == (src.card_id, src.public_id)
    assert moved.counterparty_card_id == dst.card_id
    assert wallet.get_balance(uow, actor=alice, card_id=src.public_id).posted == usd("98")


@pytest.mark.parametrize("bad", ["card_nope", "usr_" + "0" * 24, "12", "", 0, -1, 2**63])
def test_a_card_ref_that_cannot_name_a_card_is_not_found_before_any_query(
    uow, make, connection, bad
):
    alice = make.user()
    card = make.card(alice, balance="10.00")
    calls = [
        lambda: wallet.transfer(uow, actor=alice, from_card_id=card.public_id, to_card_id=bad,
                                amount=usd("1"), idempotency_key=new_key()),
        lambda: wallet.top_up(uow, actor=alice, card_id=bad, amount=usd("5"), method="cash",
                              idempotency_key=new_key()),
        lambda: wallet.withdraw(uow, actor=alice, card_id=bad, amount=usd("5"), bank=BANK,
                                idempotency_key=new_key()),
        lambda: wallet.get_balance(uow, actor=alice, card_id=bad),
        lambda: activity.get_card(uow, actor=alice, card_id=bad),
        lambda: activity.rename_card(uow, actor=alice, card_id=bad, name="x"),
        lambda: activity.list_activity(uow, actor=alice, card_id=bad),
        lambda: cards.set_frozen(uow, actor=alice, card_id=bad, frozen=True),
    ]  # fmt: skip
    with statements(connection) as sent:
        for call in calls:
            with pytest.raises(NotFound):
                call()
    assert sent == []


def test_someone_elses_card_by_its_public_id_is_the_same_not_found(uow, make):
    alice, bob = make.user(), make.user()
    mine, theirs = make.card(alice, balance="10.00"), make.card(bob, balance="10.00")
    unknown = new_public_id("card")

    def refusal(card_id):
        calls = [
            lambda: wallet.top_up(uow, actor=alice, card_id=card_id, amount=usd("5"),
                                  method="cash", idempotency_key=new_key()),
            lambda: wallet.transfer(uow, actor=alice, from_card_id=card_id,
                                    to_card_id=mine.public_id, amount=usd("1"),
                                    idempotency_key=new_key()),
            lambda: wallet.withdraw(uow, actor=alice, card_id=card_id, amount=usd("5"),
                                    bank=BANK, idempotency_key=new_key()),
            lambda: wallet.get_balance(uow, actor=alice, card_id=card_id),
            lambda: activity.get_card(uow, actor=alice, card_id=card_id),
            lambda: activity.rename_card(uow, actor=alice, card_id=card_id, name="mine"),
            lambda: activity.list_activity(uow, actor=alice, card_id=card_id),
            lambda: cards.set_frozen(uow, actor=alice, card_id=card_id, frozen=True),
        ]  # fmt: skip
        found = []
        for call in calls:
            with pytest.raises(NotFound) as err:
                call()
            found.append((err.value.message, err.value.param, err.value.code))
        return found

    assert refusal(theirs.public_id) == refusal(unknown)
    theirs_now = activity.get_card(uow, actor=bob, card_id=theirs.public_id)
    assert (theirs_now.name, theirs_now.status, theirs_now.posted) == ("", "active", usd("10"))


def test_one_card_named_both_ways_is_still_one_card(uow, make):
    alice = make.user()
    card = make.card(alice, balance="10.00")

    with pytest.raises(InvalidInput) as err:
        wallet.transfer(uow, actor=alice, from_card_id=card.card_id, to_card_id=card.public_id,
                        amount=usd("1"), idempotency_key=new_key())  # fmt: skip

    assert err.value.param == "to_card_id"
    assert wallet.get_balance(uow, actor=alice, card_id=card.card_id).posted == usd("10")


def test_lock_wallets_keeps_internal_ids_and_by_ref_takes_either(uow, make):
    alice = make.user()
    card = make.card(alice)

    def locked(u):
        by_id = lock_wallets(u, [card.card_id])
        by_ref = lock_wallets_by_ref(u, [card.public_id])
        mixed = lock_wallets_by_ref(u, [card.card_id, "card_nope"])
        return by_id, by_ref, mixed, lock_wallets_by_ref(u, ["card_nope", -1])

    by_id, by_ref, mixed, nothing = uow.run(locked)

    assert list(by_id) == [card.card_id]  # the merchant code's contract: internal ids
    assert by_id[card.card_id].card_public_id == card.public_id
    assert set(by_ref) == set(mixed) == {card.card_id, card.public_id}
    assert by_ref[card.public_id] == by_ref[card.card_id] == by_id[card.card_id]
    assert nothing == {}


# -- replays ---------------------------------------------------------------------------------
def test_an_idempotent_replay_answers_the_same_public_id(uow, make):
    alice = make.user()
    card, other = make.card(alice, balance="100.00"), make.card(alice)
    calls = {
        "top_up": lambda key: wallet.top_up(uow, actor=alice, card_id=card.public_id,
                                            amount=usd("5"), method="cash", idempotency_key=key),
        "transfer": lambda key: wallet.transfer(uow, actor=alice, from_card_id=card.public_id,
                                                to_card_id=other.public_id, amount=usd("3"),
                                                idempotency_key=key),
        "withdrawal": lambda key: wallet.withdraw(uow, actor=alice, card_id=card.public_id,
                                                  amount=usd("7"), bank=BANK,
                                                  idempotency_key=key),
    }  # fmt: skip
    for kind, call in calls.items():
        key = new_key()
        first, again = call(key), call(key)
        assert is_public_id(kind, first.public_id)
        assert (again.public_id, again.id, again.replayed) == (first.public_id, first.id, True)
        assert again.card_public_id == first.card_public_id == card.public_id
        count = uow.run(
            lambda u, kind=kind, first=first: u.execute(
                f"SELECT count(*) FROM {TABLES[kind]} WHERE public_id = :p", {"p": first.public_id}
            ).scalar_one()
        )  # fmt: skip
        assert count == 1


def test_a_response_stored_before_public_ids_replays_with_them_read_back(uow, make):
    alice, bob = make.user(), make.user()
    card, other = make.card(alice, balance="100.00"), make.card(bob)
    key = new_key()
    first = wallet.transfer(uow, actor=alice, from_card_id=card.card_id, to_card_id=other.card_id,
                            amount=usd("3"), idempotency_key=key)  # fmt: skip

    def forget_public_ids(u):  # the stored response as it was written before public ids
        row = u.execute(
            "SELECT id, response FROM idempotency_keys WHERE key = :k", {"k": key}
        ).one()
        response = row.response
        for name in ("public_id", "card_public_id", "counterparty_card_public_id"):
            del response["result"][name]
        del response["result"]["balance"]["card_public_id"]
        u.execute(
            "UPDATE idempotency_keys SET response = CAST(:r AS jsonb) WHERE id = :id",
            {"r": json.dumps(response), "id": row.id},
        )

    uow.run(forget_public_ids)
    again = wallet.transfer(uow, actor=alice, from_card_id=card.card_id, to_card_id=other.card_id,
                            amount=usd("3"), idempotency_key=key)  # fmt: skip

    assert again.replayed
    assert (again.public_id, again.card_public_id, again.counterparty_card_public_id) == (
        first.public_id, card.public_id, other.public_id
    )  # fmt: skip
    assert again.balance.card_public_id == card.public_id


# -- people, roles and sessions by public id -------------------------------------------------
def test_users_are_found_by_public_id_and_oneself_is_known_without_a_query(uow, make, connection):
    alice, bob = make.user(), make.user()
    support = make.user(roles=("support",))

    with statements(connection) as sent, pytest.raises(NotFound):  # someone else's, no users:read
        users.get_user(uow, actor=alice, user_id=bob.public_id)
    assert sent == []
    assert users.get_user(uow, actor=alice, user_id=alice.public_id).id == alice.id
    assert users.get_user(uow, actor=support, user_id=bob.public_id).public_id == bob.public_id
    with pytest.raises(NotFound):
        users.get_user(uow, actor=support, user_id=new_public_id("user"))
    with pytest.raises(NotFound):
        users.get_user(uow, actor=support, user_id=bob.public_id.replace("usr_", "card_"))
    renamed = users.update_user(uow, actor=alice, user_id=alice.public_id, first_name="Alicia")
    assert renamed.first_name == "Alicia"


def test_staff_cannot_archive_or_delete_themselves_by_public_id(uow, make):
    admin = make.user(roles=("admin",))
    bare = Actor.user(admin.id, admin.permissions)  # an actor that does not carry its public id

    for actor in (admin, bare):
        with pytest.raises(Forbidden) as archived:
            users.archive_user(uow, actor=actor, user_id=admin.public_id)
        with pytest.raises(Forbidden) as deleted:
            users.delete_user(uow, actor=actor, user_id=admin.public_id)
        with pytest.raises(Forbidden) as own_roles:
            roles.remove_role(uow, actor=actor, user_id=admin.public_id, role="admin")
        assert (archived.value.code, deleted.value.code, own_roles.value.code) == (
            "cannot_archive_self", "cannot_delete_self", "cannot_change_own_roles"
        )  # fmt: skip
    assert not users.get_user(uow, actor=admin, user_id=admin.id).archived


def test_roles_are_named_by_name_or_public_id_and_no_name_looks_like_one(uow, make):
    support = roles.get_role(uow, actor=SYSTEM, role="support")
    holder = make.user()

    assert roles.get_role(uow, actor=SYSTEM, role=support.public_id) == support
    given = roles.assign_role(uow, actor=SYSTEM, user_id=holder.public_id, role=support.public_id)
    assert "support" in given.roles
    with pytest.raises(NotFound):
        roles.get_role(uow, actor=SYSTEM, role=new_public_id("role"))
    with pytest.raises(InvalidInput) as err:
        roles.create_role(uow, actor=SYSTEM, name="rol_" + "a" * RANDOM_LENGTH)
    assert err.value.param == "name"


def test_web_sessions_are_revoked_by_public_id(uow, make):
    alice, bob = make.user(), make.user()
    mine, theirs = web_session(uow, alice), web_session(uow, bob)

    listed = sessions.list_sessions(uow, actor=alice)
    assert [(v.kind, v.public_id) for v in listed] == [("web", mine.public_id)]
    with pytest.raises(NotFound):
        sessions.revoke_session(uow, actor=alice, session_id=theirs.public_id)
    with pytest.raises(NotFound):
        sessions.revoke_session(uow, actor=alice, session_id=str(mine.id))  # not a public id
    assert sessions.revoke_session(uow, actor=alice, session_id=mine.public_id) == mine.id
    assert sessions.resolve_web_session(uow, token=mine.token) is None
    assert sessions.resolve_web_session(uow, token=theirs.token) is not None
    # A user's sessions by their public id (staff), and revoking everything by it.
    staff = make.user(roles=("admin",))
    listed = sessions.list_sessions(uow, actor=staff, user_id=bob.public_id)
    assert [v.public_id for v in listed] == [theirs.public_id]
    sessions.revoke_all(uow, actor=staff, user_id=bob.public_id)
    assert sessions.resolve_web_session(uow, token=theirs.token) is None
    with pytest.raises(NotFound):
        sessions.revoke_all(uow, actor=staff, user_id=new_public_id("user"))
