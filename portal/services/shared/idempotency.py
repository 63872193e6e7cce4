"""Exactly-once requests: claim a key atomically, replay the stored response, refuse reuse.

A key is scoped to its principal (``Actor.scope``). The claim is ``INSERT ... ON CONFLICT DO
NOTHING``: a concurrent duplicate waits on the unique index until the first transaction ends,
then sees its stored response. The response is stored in the same transaction as the work.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from portal.domain.errors import IdempotencyConflict, InvalidInput
from portal.domain.types import Actor
from portal.services.shared.uow import UnitOfWork

MAX_KEY_LENGTH = 255


@dataclass(frozen=True, slots=True)
class Claim:
    id: int
    #: The stored response of an earlier identical request, or None if this one is new.
    replay: dict[str, Any] | None


def check_key(key: str | None) -> str:
    if not key or not key.strip():
        raise InvalidInput("an idempotency key is required", param="idempotency_key")
    if len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise InvalidInput(
            f"idempotency keys are at most {MAX_KEY_LENGTH} printable characters",
            param="idempotency_key",
        )
    return key


def request_hash(operation: str, params: dict[str, Any]) -> bytes:
    canonical = json.dumps({"op": operation, "params": params}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).digest()


@dataclass(frozen=True, slots=True)
class Request:
    """What a claim is for: ``key`` of ``actor`` naming ``operation`` with ``params``."""

    actor: Actor
    key: str
    operation: str
    params: dict[str, Any]


def claim_part(uow: UnitOfWork, request: Request) -> tuple[str, dict[str, Any]]:
    """The claim's INSERT (and its parameters, prefixed ``claim_``), for a statement that
    claims and does more in the same round trip: it returns the new key's id, or no row when
    the key exists (then settle it with :func:`claim_existing`)."""
    now = uow.now()
    return (
        "INSERT INTO idempotency_keys (scope, key, request_hash, created_at, expires_at)"
        " VALUES (:claim_scope, :claim_key, :claim_hash, :claim_now, :claim_expires)"
        " ON CONFLICT (scope, key) DO NOTHING RETURNING id",
        {
            "claim_scope": request.actor.scope,
            "claim_key": request.key,
            "claim_hash": request_hash(request.operation, request.params),
            "claim_now": now,
            "claim_expires": now + timedelta(hours=uow.settings.idempotency_ttl_hours),
        },
    )


def claim(uow: UnitOfWork, actor: Actor, key: str, operation: str, params: dict[str, Any]) -> Claim:
    """Claim ``key`` for this request. Raises IdempotencyConflict when the key was used for a
    different request."""
    request = Request(actor, key, operation, params)
    sql, values = claim_part(uow, request)
    row = uow.execute(sql, values).first()
    if row is not None:
        return Claim(row.id, None)
    return claim_existing(uow, request)


def claim_existing(uow: UnitOfWork, request: Request) -> Claim:
    """Settle a claim whose key exists: replay its stored response, start an expired key
    afresh, or raise IdempotencyConflict (a different request, or one still without a
    response)."""
    digest = request_hash(request.operation, request.params)
    now = uow.now()
    existing = uow.execute(
        "SELECT id, request_hash, response, expires_at FROM idempotency_keys"
        " WHERE scope = :scope AND key = :key FOR UPDATE",
        {"scope": request.actor.scope, "key": request.key},
    ).one()
    if existing.expires_at <= now:
        # Kept for its retention period and no longer: an expired key starts afresh.
        uow.execute(
            "UPDATE idempotency_keys SET request_hash = :hash, response = NULL,"
            " created_at = :now, expires_at = :expires WHERE id = :id",
            {
                "hash": digest, "now": now, "id": existing.id,
                "expires": now + timedelta(hours=uow.settings.idempotency_ttl_hours),
            },
        )  # fmt: skip
        return Claim(existing.id, None)
    if bytes(existing.request_hash) != digest or existing.response is None:
        raise IdempotencyConflict(
            "this idempotency key was already used for a different request",
            param="idempotency_key",
        )
    return Claim(existing.id, existing.response)


def store(
    uow: UnitOfWork,
    claim_: Claim,
    response: dict[str, Any],
    *,
    fill: dict[tuple[str, ...], str] | None = None,
) -> None:
    """Defer storing the response. ``fill`` maps a JSON path to a deferred part (CTE) whose
    ``id`` goes there, for ids assigned in the same statement."""
    value = "CAST(:response AS jsonb)"
    for path, cte in (fill or {}).items():
        value = f"jsonb_set({value}, '{{{','.join(path)}}}', to_jsonb((SELECT id FROM {cte})))"  # nosec B608
    uow.defer(
        f"UPDATE idempotency_keys SET response = {value} WHERE id = :id",  # nosec B608
        response=json.dumps(response),
        id=claim_.id,
    )


def purge_expired(uow: UnitOfWork) -> int:
    """Delete keys past their retention; returns how many."""
    result = uow.execute(
        "DELETE FROM idempotency_keys WHERE expires_at <= :now", {"now": uow.now()}
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
