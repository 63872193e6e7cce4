"""Events: what a merchant cares about, written in the same transaction as the change.

``record`` defers the insert onto the unit of work, so the event reaches the database in the
same statement (and commit) as the change it describes: an event exists if and only if its
change committed. ``data.object`` is the object as the API answers it (``objects``), and
``data.previous_attributes`` the fields that changed, with their values before. Merchants read
them with ``list_events`` and ``get_event`` (kept ``EVENT_RETENTION_DAYS`` days at least);
neither shows a test event (``test``, sent to one endpoint by ``webhooks.send_test_event``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from portal.domain.errors import InvalidInput, NotFound
from portal.domain.ids import is_public_id, new_public_id
from portal.domain.types import Actor
from portal.services.merchants import webhooks
from portal.services.merchants.merchants import access, page_after
from portal.services.shared.pagination import Page, check_limit, page_of
from portal.services.shared.uow import UnitOfWork

#: The version of the objects' shape events carry.
API_VERSION = "2026-12-01"
EVENT_RETENTION_DAYS = 30
TYPES = (
    "payment.created",
    "payment.requires_capture",
    "payment.succeeded",
    "payment.failed",
    "payment.canceled",
    "refund.created",
    "refund.succeeded",
    "refund.failed",
    "checkout.session.completed",
    "checkout.session.expired",
    "payout.created",
    "payout.paid",
    "payout.failed",
    "balance.available",
)


@dataclass(frozen=True, slots=True)
class EventView:
    id: str
    type: str
    api_version: str
    created: datetime
    data: dict[str, Any]


def record(
    uow: UnitOfWork,
    merchant_id: int,
    *happened: tuple[str, dict[str, Any], dict[str, Any] | None],
    step: int = 0,
) -> list[str]:
    """Defer events, each ``(type, object, previous_attributes or None)``, onto the unit of
    work (they commit with the change); returns their ids. One call's events are one INSERT,
    numbered in order; ``step`` orders the events of a later call in the same transaction after
    an earlier one's (every row of a transaction has the transaction's clock reading)."""
    if not happened:
        return []
    rows = []
    for event_type, obj, previous in happened:
        if event_type not in TYPES:
            raise ValueError(f"unknown event type {event_type!r}")
        data: dict[str, Any] = {"object": obj}
        if previous:
            data["previous_attributes"] = previous
        rows.append((new_public_id("event"), event_type, json.dumps(data)))
    # Named after its first event's id (unique in the statement), for the webhook fan-out.
    part = f"events_{rows[0][0].lower()}"
    uow.defer(
        "INSERT INTO events (public_id, merchant_id, type, api_version, data, created_at)"
        " SELECT e.pid, :m, e.type, :version, CAST(e.data AS jsonb), :at"
        " FROM unnest(CAST(:pids AS text[]), CAST(:types AS text[]), CAST(:datas AS text[]))"
        " WITH ORDINALITY AS e(pid, type, data, n) ORDER BY e.n RETURNING id, type",
        name=part, m=merchant_id, version=API_VERSION,
        at=uow.now() + timedelta(microseconds=step),
        pids=[r[0] for r in rows], types=[r[1] for r in rows], datas=[r[2] for r in rows],
    )  # fmt: skip
    webhooks.fan_out(uow, merchant_id, part)
    return [r[0] for r in rows]


def _view(row: Any) -> EventView:
    return EventView(row.public_id, row.type, row.api_version, row.created_at, row.data)


def get_event(uow: UnitOfWork, *, actor: Actor, merchant: str | int, event: str) -> EventView:
    """One of the merchant's events. Raises NotFound, Forbidden."""

    def work(u: UnitOfWork) -> EventView:
        m = access(u, actor, merchant, "read").merchant
        row = None
        if is_public_id("event", event):
            row = u.execute(
                "SELECT public_id, type, api_version, created_at, data FROM events"
                " WHERE public_id = :id AND merchant_id = :m AND NOT test",
                {"id": event, "m": m.id},
            ).first()
        if row is None:
            raise NotFound("no such event", param="event")
        return _view(row)

    return uow.run(work)


def list_events(
    uow: UnitOfWork,
    *,
    actor: Actor,
    merchant: str | int,
    types: list[str] | None = None,
    created_gte: datetime | None = None,
    created_lte: datetime | None = None,
    limit: int | None = None,
    starting_after: str | None = None,
) -> Page[EventView]:
    """The merchant's events, newest first by cursor; filter by type (several allowed) and
    created range. Raises NotFound, Forbidden, InvalidInput."""
    size = check_limit(limit)
    unknown = [t for t in types or () if t not in TYPES]
    if unknown:
        raise InvalidInput(f"unknown event type {unknown[0]}", param="type")

    def work(u: UnitOfWork) -> Page[EventView]:
        m = access(u, actor, merchant, "read").merchant
        # Test events (webhooks.send_test_event) are for one endpoint, not for reconciliation.
        where = ["merchant_id = :m", "NOT test"]
        params: dict[str, Any] = {"m": m.id, "limit": size + 1}
        if types:
            where.append("type = ANY(:types)")
            params["types"] = list(types)
        if created_gte is not None:
            where.append("created_at >= :gte")
            params["gte"] = created_gte
        if created_lte is not None:
            where.append("created_at <= :lte")
            params["lte"] = created_lte
        page_after(u, table="events", alias="events", kind="event",
                   starting_after=starting_after, merchant_id=m.id, where=where,
                   params=params)  # fmt: skip
        rows = u.execute(
            "SELECT public_id, type, api_version, created_at, data FROM events WHERE "  # nosec B608
            + " AND ".join(where)
            + " ORDER BY created_at DESC, id DESC LIMIT :limit",
            params,
        ).all()
        return page_of([_view(r) for r in rows], size)

    return uow.run(work)


def purge_events(uow: UnitOfWork, *, days: int = EVENT_RETENTION_DAYS) -> int:
    """Delete events older than ``days`` (never fewer than the 30 days promised)."""
    keep = timedelta(days=max(days, EVENT_RETENTION_DAYS))
    result = uow.run(
        lambda u: u.execute(
            "DELETE FROM events WHERE created_at < :cutoff", {"cutoff": u.now() - keep}
        )  # fmt: skip
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
