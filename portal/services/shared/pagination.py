"""Cursor pagination for every list: newest first, ``limit`` and ``starting_after``.

Lists are ordered ``created_at DESC, id DESC`` and paged by keyset: the next page holds the rows
strictly after the ``starting_after`` row in that order, so a page never repeats or skips a row
when rows are added meanwhile (ids alone are not enough: demo data and imports may write rows
whose ``created_at`` does not follow id order). Each page fetches ``limit + 1`` rows to learn
whether there are more.

``starting_after`` is the last item of the previous page, named as every object is (see
:mod:`portal.services.shared.refs`): by its public id, as a request gives it, or by its internal
id. Either way the cursor row's ``(created_at, id)`` is read with one indexed look-up and the
page is a keyset from there, never an OFFSET.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import sqlalchemy as sa

from portal.domain.errors import InvalidInput
from portal.domain.ids import PREFIXES, is_public_id
from portal.services.shared.refs import MAX_ID, Ref
from portal.services.shared.uow import UnitOfWork

T = TypeVar("T")

DEFAULT_LIMIT = 10
MAX_LIMIT = 100

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a list; ``has_more`` says whether a next page exists."""

    items: tuple[T, ...]
    has_more: bool

    @property
    def last_id(self) -> Any:
        """The ``starting_after`` of the next page: the last item's ``public_id`` when it has
        one, else its ``id`` (None if the page is empty)."""
        if not self.items:
            return None
        last = self.items[-1]
        return getattr(last, "public_id", None) or getattr(last, "id", None)


def check_limit(limit: int | None) -> int:
    """The page size: 1 to 100, 10 when not given. Raises InvalidInput (param "limit")."""
    if limit is None:
        return DEFAULT_LIMIT
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be a whole number from 1 to {MAX_LIMIT}", param="limit")
    return limit


def check_id(value: object, param: str) -> int:
    """An object id given by a caller: a positive BIGINT. Raises InvalidInput (param ``param``)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ID:
        raise InvalidInput(f"{param} must be an object id", param=param)
    return value


def check_cursor(starting_after: Ref | None, kind: str | None = None) -> Ref | None:
    """Validate ``starting_after``: None, an internal id, or a public id (of ``kind`` when given,
    else of any kind). Raises InvalidInput (param "starting_after")."""
    if starting_after is None:
        return None
    if isinstance(starting_after, str):
        kinds = [kind] if kind is not None else list(PREFIXES)
        if not any(is_public_id(k, starting_after) for k in kinds):
            raise InvalidInput(
                "starting_after must be the id of an object of this list", param="starting_after"
            )
        return starting_after
    return check_id(starting_after, "starting_after")


def page_of(rows: Sequence[T], limit: int) -> Page[T]:
    """Trim ``limit + 1`` fetched rows to a page."""
    return Page(tuple(rows[:limit]), len(rows) > limit)


def newest_first(
    u: UnitOfWork,
    *,
    select: str,
    table: str,
    alias: str,
    convert: Callable[[sa.Row[Any]], T],
    limit: int | None = None,
    starting_after: Ref | None = None,
    kind: str | None = None,
    scope: Sequence[str] = (),
    where: Sequence[str] = (),
    params: Mapping[str, Any] | None = None,
) -> Page[T]:
    """One page of ``select`` (``SELECT ... FROM <table> <alias> [JOIN ...]``, no WHERE/ORDER),
    newest first, inside an open unit of work.

    ``scope`` conditions bound what the caller may see (ownership): they apply to the list and to
    the ``starting_after`` row, so a cursor outside the caller's reach is "unknown" too. ``where``
    conditions are filters and apply to the list only. Both may use ``params``; the names
    ``_after_at``, ``_after_id``, ``_after`` and ``_limit`` are reserved. ``starting_after`` is
    the public id (of ``kind``, the table's objects) or the internal id of the previous page's
    last row. Raises InvalidInput (param "limit", or "starting_after" for an unknown or
    unreachable id).
    """
    size = check_limit(limit)
    after = check_cursor(starting_after, kind)
    if not (_IDENTIFIER.match(table) and _IDENTIFIER.match(alias)):
        raise ValueError("table and alias must be plain identifiers")
    bound: dict[str, Any] = dict(params or {})
    conditions = list(scope) + list(where)
    if after is not None:
        scoped = "".join(f" AND ({c})" for c in scope)
        column = "public_id" if isinstance(after, str) else "id"
        cursor = u.execute(
            f"SELECT {alias}.created_at, {alias}.id FROM {table} {alias}"  # nosec B608
            f" WHERE {alias}.{column} = :_after{scoped}",
            {**bound, "_after": after},
        ).first()
        if cursor is None:
            raise InvalidInput("starting_after is not a known object id", param="starting_after")
        conditions.append(f"({alias}.created_at, {alias}.id) < (:_after_at, :_after_id)")
        bound.update(_after_at=cursor.created_at, _after_id=cursor.id)
    clause = " WHERE " + " AND ".join(f"({c})" for c in conditions) if conditions else ""
    rows = u.execute(
        f"{select}{clause} ORDER BY {alias}.created_at DESC, {alias}.id DESC LIMIT :_limit",
        {**bound, "_limit": size + 1},
    ).all()
    return page_of([convert(r) for r in rows], size)


def like_pattern(text: str) -> str:
    """A substring pattern for ``ILIKE ... ESCAPE '\\'`` that matches ``text`` literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"
