"""Cursor pagination: limit bounds, has_more, and keyset walks over real rows (newest first)."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import timedelta

import pytest

from portal.domain.errors import InvalidInput
from portal.domain.ids import is_public_id, new_public_id
from portal.services.shared.pagination import (
    MAX_ID,
    Page,
    check_cursor,
    check_id,
    check_limit,
    like_pattern,
    newest_first,
)


@pytest.mark.parametrize(("given", "expected"), [(None, 10), (1, 1), (10, 10), (100, 100)])
def test_check_limit_accepts_1_to_100_and_defaults_to_10(given, expected):
    assert check_limit(given) == expected


@pytest.mark.parametrize("given", [0, -1, 101, 10**9, True, False, "10", 10.0])
def test_check_limit_refuses_anything_else_naming_limit(given):
    with pytest.raises(InvalidInput) as err:
        check_limit(given)
    assert err.value.param == "limit"
    assert err.value.code == "parameter_invalid"


@pytest.mark.parametrize("given", [0, -3, MAX_ID + 1, True, "7", 7.0, None])
def test_check_id_refuses_what_is_not_a_bigint_id(given):
    with pytest.raises(InvalidInput) as err:
        check_id(given, "user_id")
    assert err.value.param == "user_id"


def test_check_id_and_cursor_accept_ids():
    assert check_id(1, "x") == 1
    assert check_id(MAX_ID, "x") == MAX_ID
    assert check_cursor(None) is None
    assert check_cursor(5) == 5
    with pytest.raises(InvalidInput) as err:
        check_cursor(0)
    assert err.value.param == "starting_after"


def test_page_is_a_frozen_dataclass_with_the_last_id():
    @dataclasses.dataclass(frozen=True)
    class Item:
        id: int

    page = Page((Item(3), Item(2)), has_more=True)
    assert page.last_id == 2
    assert Page((), has_more=False).last_id is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        page.has_more = False  # type: ignore[misc]


def test_like_pattern_escapes_wildcards_and_the_escape_character():
    assert like_pattern("50%_off\\") == "%50\\%\\_off\\\\%"


# -- keyset walks on the users table --------------------------------------------------------
COUNT = 23


@pytest.fixture
def token() -> str:
    return "Pg" + uuid.uuid4().hex[:10]


@pytest.fixture
def people(make, clock, token) -> list[int]:
    """COUNT users whose creation times repeat and do not follow id order; returns their ids
    newest first (created_at DESC, id DESC)."""
    base = clock.now
    made = []
    for i in range(COUNT):
        clock.now = base + timedelta(seconds=(i * 7) % 5)  # 0, 2, 4, 1, 3, 0, ...: ties, jumps
        actor = make.user(last_name=token)
        made.append((clock.now, actor.id))
    clock.now = base
    return [user_id for _, user_id in sorted(made, reverse=True)]


def ids_page(uow, token, *, limit=None, after=None, scope=(), where=None, params=None):
    where = ["u.last_name = :token"] if where is None else where
    return uow.run(
        lambda u: newest_first(
            u,
            select="SELECT u.id FROM users u",
            table="users",
            alias="u",
            convert=lambda row: row.id,
            limit=limit,
            starting_after=after,
            scope=scope,
            where=where,
            params={"token": token, **(params or {})},
        )  # fmt: skip
    )


def walk(uow, token, limit) -> list[Page]:
    pages, after = [], None
    while True:
        page = ids_page(uow, token, limit=limit, after=after)
        pages.append(page)
        if not page.has_more:
            return pages
        after = page.items[-1]
        assert len(pages) <= COUNT + 1, "the walk does not end"


@pytest.mark.parametrize("limit", [1, 4, 5, 22, 23, 100])
def test_walking_every_page_gives_every_row_once_in_order(uow, token, people, limit):
    pages = walk(uow, token, limit)
    seen = [user_id for page in pages for user_id in page.items]
    assert seen == people  # no duplicates, no gaps, newest first with ties broken by id
    assert [page.has_more for page in pages] == [True] * (len(pages) - 1) + [False]
    assert all(len(page.items) == limit for page in pages[:-1])
    assert len(pages) == -(-COUNT // limit)


def test_default_limit_is_10(uow, token, people):
    page = ids_page(uow, token)
    assert page.items == tuple(people[:10])
    assert page.has_more


def test_has_more_is_false_when_the_page_ends_exactly_at_the_last_row(uow, token, people):
    page = ids_page(uow, token, limit=COUNT)
    assert len(page.items) == COUNT and not page.has_more
    page = ids_page(uow, token, limit=COUNT - 1)
    assert page.has_more
    last = ids_page(uow, token, limit=COUNT - 1, after=page.items[-1])
    assert last.items == (people[-1],) and not last.has_more
    empty = ids_page(uow, token, after=people[-1])
    assert empty.items == () and not empty.has_more


def test_rows_added_during_a_walk_neither_repeat_nor_shift_later_pages(
    uow, make, clock, token, people
):
    first = ids_page(uow, token, limit=5)
    clock.now += timedelta(hours=1)
    newer = make.user(last_name=token)  # newer than the cursor: belongs to an earlier page
    clock.now -= timedelta(hours=2)
    older = make.user(last_name=token)  # older than everything: ends the walk
    rest, after = [], first.items[-1]
    while True:
        page = ids_page(uow, token, limit=5, after=after)
        rest.extend(page.items)
        if not page.has_more:
            break
        after = page.items[-1]
    assert list(first.items) + rest == people + [older.id]
    assert newer.id not in rest


def test_an_unknown_starting_after_is_invalid_input(uow, token, people):
    with pytest.raises(InvalidInput) as err:
        ids_page(uow, token, after=max(people) + 10_000)
    assert err.value.param == "starting_after"


@pytest.mark.parametrize("after", [0, -1, MAX_ID + 1, "1"])
def test_a_malformed_starting_after_is_invalid_input(uow, token, after):
    with pytest.raises(InvalidInput) as err:
        ids_page(uow, token, after=after)
    assert err.value.param == "starting_after"


def test_a_limit_out_of_bounds_is_refused_before_reading(uow, token):
    for limit in (0, 101):
        with pytest.raises(InvalidInput) as err:
            ids_page(uow, token, limit=limit)
        assert err.value.param == "limit"


def test_a_starting_after_outside_the_scope_is_unknown(uow, make, token, people):
    stranger = make.user(last_name="Elsewhere")
    scope = ["u.last_name = :token"]
    with pytest.raises(InvalidInput) as err:
        ids_page(uow, token, after=stranger.id, scope=scope, where=[])
    assert err.value.param == "starting_after"
    page = ids_page(uow, token, after=people[2], scope=scope, where=[], limit=100)
    assert page.items == tuple(people[3:])


def test_a_starting_after_outside_the_filters_is_still_a_position(uow, make, clock, token, people):
    base = clock.now
    clock.now = base + timedelta(seconds=2, milliseconds=500)  # amid the rows' creation times
    outside = make.user(last_name="Other")
    created = dict(
        uow.run(
            lambda u: u.execute(
                "SELECT id, created_at FROM users WHERE last_name = :t", {"t": token}
            ).all()
        )
    )
    older = [user_id for user_id in people if created[user_id] < clock.now]
    assert 0 < len(older) < len(people)
    page = ids_page(uow, token, after=outside.id, limit=100)
    assert page.items == tuple(older)


def test_table_and_alias_must_be_identifiers(uow):
    with pytest.raises(ValueError, match="identifiers"):
        uow.run(
            lambda u: newest_first(
                u,
                select="SELECT 1",
                table="users; DROP TABLE users",
                alias="u",
                convert=lambda row: row,
            )  # fmt: skip
        )


# -- public-id cursors ----------------------------------------------------------------------
def public_page(uow, token, *, limit=None, after=None):
    """A page of (public id, internal id) pairs, as the API pages users."""
    return uow.run(
        lambda u: newest_first(
            u,
            select="SELECT u.id, u.public_id FROM users u",
            table="users",
            alias="u",
            convert=lambda row: (row.public_id, row.id),
            limit=limit,
            starting_after=after,
            kind="user",
            where=["u.last_name = :token"],
            params={"token": token},
        )  # fmt: skip
    )


@pytest.mark.parametrize("limit", [1, 4, 23])
def test_a_walk_by_public_id_cursors_gives_every_row_once_in_order(uow, token, people, limit):
    first = public_page(uow, token, limit=limit)
    assert [internal for _, internal in first.items] == people[:limit]  # the first page
    seen, page = list(first.items), first
    while page.has_more:
        page = public_page(uow, token, limit=limit, after=page.items[-1][0])  # the next page
        seen += page.items
    assert [internal for _, internal in seen] == people  # no duplicates, no gaps
    assert len({public for public, _ in seen}) == COUNT
    assert all(is_public_id("user", public) for public, _ in seen)
    # The same position as the internal-id cursor: it is the same keyset.
    public, internal = first.items[-1]
    assert ids_page(uow, token, limit=5, after=public).items == (
        ids_page(uow, token, limit=5, after=internal).items
    )


def test_a_public_id_cursor_of_another_kind_or_shape_or_unknown_is_invalid_input(
    uow, token, people
):
    for after in (new_public_id("card"), "usr_short", "usr_" + "!" * 24, new_public_id("user")):
        with pytest.raises(InvalidInput) as err:
            public_page(uow, token, after=after)
        assert err.value.param == "starting_after"


def test_check_cursor_takes_public_ids_of_the_kind_asked_for():
    user = new_public_id("user")
    assert check_cursor(user, "user") == user
    assert check_cursor(user) == user  # any kind when none is named
    for wrong in (new_public_id("card"), "usr_", user + "x", user.upper()):
        with pytest.raises(InvalidInput):
            check_cursor(wrong, "user")


def test_the_last_id_of_a_page_of_public_objects_is_its_public_id():
    @dataclasses.dataclass(frozen=True)
    class Item:
        id: int
        public_id: str

    page = Page((Item(3, "usr_a"), Item(2, "usr_b")), has_more=True)
    assert page.last_id == "usr_b"
