"""The audit trail of one record, for the console's detail pages."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from portal.domain.errors import Forbidden
from portal.domain.types import Actor
from portal.services.shared.uow import UnitOfWork

TRAIL_LIMIT = 50


@dataclass(frozen=True, slots=True)
class TrailEntry:
    id: int
    occurred_at: datetime
    action: str
    outcome: str
    actor: str
    address: str | None
    data: dict[str, Any]


_TRAIL = """
SELECT e.id, e.occurred_at, e.action, e.outcome, e.actor_kind, e.actor_id,
       host(e.address) AS address, e.data, u.email AS actor_email
  FROM audit_events e
  LEFT JOIN users u ON e.actor_kind = 'user' AND u.id = e.actor_id
 WHERE e.subject_type = :subject_type AND e.subject_id = :subject_id
 ORDER BY e.occurred_at DESC, e.id DESC
 LIMIT :limit
"""


def _who(row: Any) -> str:
    if row.actor_kind == "user":
        return row.actor_email or f"user {row.actor_id}"
    return str(row.actor_kind) if row.actor_id is None else f"{row.actor_kind} {row.actor_id}"


def trail(
    uow: UnitOfWork, *, actor: Actor, subject_type: str, subject_id: int, limit: int = TRAIL_LIMIT
) -> tuple[TrailEntry, ...]:
    """The newest audit events about one record (``subject_type``, internal id), newest first.
    Raises Forbidden (needs audit:read)."""
    if not actor.can("audit:read"):
        raise Forbidden("missing permission audit:read")
    rows = uow.read(
        _TRAIL, {"subject_type": subject_type, "subject_id": subject_id, "limit": limit}
    )
    return tuple(
        TrailEntry(r.id, r.occurred_at, r.action, r.outcome, _who(r), r.address, dict(r.data or {}))
        for r in rows
    )
