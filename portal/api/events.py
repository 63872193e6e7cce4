"""Events (``/api/v1/events``): what happened to the merchant's objects, newest first, kept at
least 30 days, so a merchant can reconcile what it missed. Each is
``{"id": "evt_...", "object": "event", "type", "created", "api_version", "data": {"object",
"previous_attributes"}}``, where ``data.object`` is the object as the API answered it when the
event was written (in the same transaction as the change)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from flask import request
from pydantic import Field

from portal.api import bp
from portal.api.merchant_auth import key_failures
from portal.api.operation import operation
from portal.api.pagination import ListResponse
from portal.api.schemas import ApiModel, QueryModel
from portal.domain.errors import NotFound
from portal.domain.ids import MAX_LENGTH
from portal.domain.types import Actor
from portal.services.merchants import events
from portal.services.merchants.objects import unix
from portal.services.shared.pagination import DEFAULT_LIMIT, MAX_LIMIT
from portal.web.uow import make_uow

EventType = Literal[events.TYPES]  # type: ignore[valid-type]


class EventData(ApiModel):
    object: dict[str, Any] = Field(description="The object as the API answered it then.")
    previous_attributes: dict[str, Any] | None = Field(
        None, description="For changes: the fields that changed, with their values before."
    )


class Event(ApiModel):
    id: str = Field(examples=["evt_4kT9qL2mXw8ZpR3vN7sB1cYd"])
    object: Literal["event"] = "event"
    type: EventType
    api_version: str = Field(examples=[events.API_VERSION])
    created: int = Field(description="Unix seconds.")
    data: EventData

    @classmethod
    def of(cls, e: events.EventView) -> Event:
        return cls(
            id=e.id, type=e.type, api_version=e.api_version, created=unix(e.created) or 0,
            data=EventData(object=e.data["object"],
                           previous_attributes=e.data.get("previous_attributes")),
        )  # fmt: skip


class EventList(ListResponse[Event]):
    """The merchant's events, newest first."""


class EventQuery(QueryModel):
    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)
    starting_after: str | None = Field(None, max_length=MAX_LENGTH)
    type: list[EventType] | None = Field(None, description="Only these types (repeatable).")
    created_gte: int | None = Field(None, alias="created[gte]", ge=0, le=4102444800,
                                    description="Unix seconds.")  # fmt: skip
    created_lte: int | None = Field(None, alias="created[lte]", ge=0, le=4102444800,
                                    description="Unix seconds.")  # fmt: skip


def _at(seconds: int | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


@operation(
    bp, "GET", "/events", summary="List events", tags=["events"], auth="api_key",
    permission="payments:read", query=EventQuery, response=EventList, rate_limit=key_failures,
)  # fmt: skip
def list_events(query: EventQuery, actor: Actor) -> EventList:
    """The merchant's events, newest first; filter by `type` (repeatable) and `created[gte]` /
    `created[lte]` (unix seconds). Kept at least 30 days."""
    assert actor.id is not None
    page = events.list_events(
        make_uow(), actor=actor, merchant=actor.id, types=list(query.type or ()),
        created_gte=_at(query.created_gte), created_lte=_at(query.created_lte),
        limit=query.limit, starting_after=query.starting_after,
    )  # fmt: skip
    return EventList(url=request.path, has_more=page.has_more,
                     data=[Event.of(e) for e in page.items])  # fmt: skip


@operation(
    bp, "GET", "/events/<event_id>", summary="Retrieve an event", tags=["events"],
    auth="api_key", permission="payments:read", response=Event, errors=(NotFound,),
    rate_limit=key_failures, ids={"event_id": "event"},
)  # fmt: skip
def get_event(event_id: str, actor: Actor) -> Event:
    """One of the merchant's events; another merchant's is a 404."""
    assert actor.id is not None
    return Event.of(events.get_event(make_uow(), actor=actor, merchant=actor.id, event=event_id))
