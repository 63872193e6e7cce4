"""Cursor pagination for list endpoints, in Stripe's shape.

Query: ``limit`` (1-100, default 10) and ``starting_after`` (an object's public id: the last id
of the previous page; a subclass narrows it to its objects' kind with :func:`cursor_field`), plus
the endpoint's own filters in a subclass of :class:`ListQuery`. The service resolves the cursor's
row and pages by keyset from it. Response:
``{"object": "list", "url": ..., "has_more": ..., "data": [...]}`` built from a service's
:class:`~portal.services.shared.pagination.Page` by :meth:`ListResponse.of`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, Literal, Protocol, Self, TypeVar

from flask import request
from pydantic import Field

from portal.api.schemas import ApiModel, QueryModel, example_id, id_pattern
from portal.domain.ids import MAX_LENGTH
from portal.services.shared.pagination import DEFAULT_LIMIT, MAX_LIMIT

T = TypeVar("T")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


class PageLike(Protocol[R_co]):
    """What a service's page offers (``portal.services.shared.pagination.Page``)."""

    @property
    def items(self) -> Sequence[R_co]: ...

    @property
    def has_more(self) -> bool: ...


def cursor_field(*kinds: str) -> Any:
    """``starting_after`` of a list of ``kinds`` (every kind when none is given): the public id
    of the last object of the previous page."""
    return Field(
        None,
        pattern=id_pattern(*kinds),
        max_length=MAX_LENGTH,
        examples=[example_id(kinds[0])] if kinds else None,
        description="A cursor: the id of the last object of the previous page. The page starts "
        "right after it.",
    )


class ListQuery(QueryModel):
    """The query every list endpoint takes; subclass it to add filters and search (and to
    narrow ``starting_after`` to the list's kind: ``starting_after: str | None =
    cursor_field("card")``)."""

    limit: int = Field(
        DEFAULT_LIMIT,
        ge=1,
        le=MAX_LIMIT,
        description=f"How many objects to return, 1 to {MAX_LIMIT}.",
    )
    starting_after: str | None = cursor_field()


class ListResponse(ApiModel, Generic[T]):
    """One page of a list, newest first."""

    object: Literal["list"] = "list"
    url: str = Field(description="The path this list lives at.")
    has_more: bool = Field(description="Whether more objects follow this page.")
    data: list[T]

    @classmethod
    def of(cls, page: PageLike[R], convert: Callable[[R], T]) -> Self:
        """This page's response: each service result turned into an API object by ``convert``.
        Call it on the parametrised class: ``ListResponse[UserObject].of(page, UserObject.of)``."""
        return cls(url=request.path, has_more=page.has_more, data=[convert(i) for i in page.items])
