"""Cursor pagination for list endpoints, in Stripe's shape.

Query: ``limit`` (1-100, default 10) and ``starting_after`` (an object id: the last id of the
previous page), plus the endpoint's own filters in a subclass of :class:`ListQuery`. Response:
``{"object": "list", "url": ..., "has_more": ..., "data": [...]}`` built from a service's
:class:`~portal.services.shared.pagination.Page` by :meth:`ListResponse.of`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, Literal, Protocol, Self, TypeVar

from flask import request
from pydantic import Field

from portal.api.schemas import ApiModel, QueryModel
from portal.services.shared.pagination import DEFAULT_LIMIT, MAX_ID, MAX_LIMIT

T = TypeVar("T")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


class PageLike(Protocol[R_co]):
    """What a service's page offers (``portal.services.shared.pagination.Page``)."""

    @property
    def items(self) -> Sequence[R_co]: ...

    @property
    def has_more(self) -> bool: ...


class ListQuery(QueryModel):
    """The query every list endpoint takes; subclass it to add filters and search."""

    limit: int = Field(
        DEFAULT_LIMIT,
        ge=1,
        le=MAX_LIMIT,
        description=f"How many objects to return, 1 to {MAX_LIMIT}.",
    )
    starting_after: int | None = Field(
        None,
        ge=1,
        le=MAX_ID,
        description="A cursor: the id of the last object of the previous page. The page starts "
        "right after it.",
    )


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
