"""Audit events, written in the same transaction (and statement) as what they describe.

The database chains every row it is given (``portal.services.shared.audit_chain``, migration
nothing here computes a hash. An event's ``address`` is the client address of the
request that acted: passed explicitly, or else the one the web layer bound for the current
request (:func:`bind_address`, set by ``portal.web.requests`` before each request); the worker
and the CLI have none. Before/after values go in ``data`` as ``{"<field>": {"from": ...,
"to": ...}}``.
"""

from __future__ import annotations

import ipaddress
import json
from contextvars import ContextVar
from typing import Any

from portal.domain.types import Actor
from portal.services.shared.uow import UnitOfWork

_address: ContextVar[str | None] = ContextVar("portal_audit_address", default=None)


def _clean(address: str | None) -> str | None:
    """A valid IP address as PostgreSQL's ``inet`` reads it, else None (an unreadable address
    is not worth failing the action it describes)."""
    if not address:
        return None
    try:
        return str(ipaddress.ip_address(address.strip().split("%", 1)[0]))
    except ValueError:
        return None


def bind_address(address: str | None) -> None:
    """The client address of the request this thread (context) is serving now; None after it."""
    _address.set(_clean(address))


def current_address() -> str | None:
    return _address.get()


def diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{field: {"from": old, "to": new}}`` for the fields whose value changed."""
    return {
        k: {"from": before.get(k), "to": after.get(k)}
        for k in sorted(set(before) | set(after))
        if before.get(k) != after.get(k)
    }


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
    address: str | None = None,
) -> None:
    """Defer an audit event. ``subject_from`` names a deferred part (CTE) whose ``id`` is the
    subject, for records inserted in the same statement. ``address`` defaults to the bound
    request's (:func:`bind_address`)."""
    subject = f"(SELECT id FROM {subject_from})" if subject_from else ":subject_id"  # nosec B608
    uow.defer(
        "INSERT INTO audit_events (occurred_at, actor_kind, actor_id, action, subject_type,"  # nosec B608
        f" subject_id, outcome, data, address) VALUES (:now, :actor_kind, :actor_id, :action,"
        f" :subject_type, {subject}, :outcome, CAST(:data AS jsonb), CAST(:address AS inet))",
        now=uow.now(),
        actor_kind=str(actor.kind),
        actor_id=actor.id,
        action=action,
        subject_type=subject_type,
        subject_id=subject_id,
        outcome=outcome,
        data=json.dumps(data or {}),
        address=_clean(address) if address is not None else _address.get(),
    )
