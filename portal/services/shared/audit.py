"""Audit events, written in the same transaction (and statement) as what they describe."""

from __future__ import annotations

import json
from typing import Any

from portal.domain.types import Actor
from portal.services.shared.uow import UnitOfWork


def record(
    uow: UnitOfWork,
    actor: Actor,
    action: str,
    subject_type: str,
    subject_id: int | None,
    *,
    subject_from: str | None = None,
    outcome: str = "success",
    data: dict[str, Any] | None = None,
) -> None:
    """Defer an audit event. ``subject_from`` names a deferred part (CTE) whose ``id`` is the
    subject, for records inserted in the same statement."""
    subject = f"(SELECT id FROM {subject_from})" if subject_from else ":subject_id"  # nosec B608
    uow.defer(
        "INSERT INTO audit_events (occurred_at, actor_kind, actor_id, action, subject_type,"  # nosec B608
        f" subject_id, outcome, data) VALUES (:now, :actor_kind, :actor_id, :action, :subject_type,"
        f" {subject}, :outcome, CAST(:data AS jsonb))",
        now=uow.now(),
        actor_kind=str(actor.kind),
        actor_id=actor.id,
        action=action,
        subject_type=subject_type,
        subject_id=subject_id,
        outcome=outcome,
        data=json.dumps(data or {}),
    )
