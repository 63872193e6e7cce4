"""Audit events, written in the same transaction as what they describe."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from portal.domain.types import Actor
from portal.models import AuditEvent
from portal.services.uow import UnitOfWork


def record(
    uow: UnitOfWork,
    actor: Actor,
    action: str,
    subject_type: str,
    subject_id: int | None,
    *,
    outcome: str = "success",
    data: dict[str, Any] | None = None,
) -> None:
    uow.execute(
        sa.insert(AuditEvent).values(
            occurred_at=uow.now(),
            actor_kind=str(actor.kind),
            actor_id=actor.id,
            action=action,
            subject_type=subject_type,
            subject_id=subject_id,
            outcome=outcome,
            data=data or {},
        )
    )
