"""The job queue: a PostgreSQL table used as a transactional outbox.

``enqueue`` inserts in the caller's transaction, so a job exists if and only if that transaction
committed. Workers claim due jobs with ``FOR UPDATE SKIP LOCKED`` and take a lease; a job whose
worker died (its lease ran out) is claimed again. Failures retry with exponential backoff and
end in the ``dead`` state after ``max_attempts``. Handlers must be idempotent: the lease makes
"at least once" the guarantee, and every handler checks state under a row lock.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from opentelemetry import propagate, trace

from portal.services.shared.uow import UnitOfWork

Handler = Callable[[UnitOfWork, dict[str, Any]], None]

#: Handlers by job kind, registered by the modules that own them.
HANDLERS: dict[str, Handler] = {}


class LeaseLost(Exception):
    """This worker no longer holds the job it is running (its lease ran out and another worker
    claimed it): the handler must stop before it calls out or changes anything."""


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    id: int
    kind: str
    payload: dict[str, Any]
    attempts: int
    max_attempts: int
    trace_context: dict[str, Any] | None


def enqueue(
    uow: UnitOfWork,
    kind: str,
    payload: dict[str, Any] | None = None,
    *,
    run_at: datetime | None = None,
    dedupe_key: str | None = None,
    max_attempts: int = 8,
    trace_context: dict[str, Any] | None = None,
) -> int | None:
    """Add a job in the current transaction. With ``dedupe_key``, at most one such job is
    queued or running at a time; returns None when one already is. Without ``trace_context``,
    the current span's W3C context is stored (none when no span is current), so the worker
    continues the trace of the request that enqueued the job."""
    if trace_context is None:
        trace_context = current_trace_context()
    row = uow.execute(
        "INSERT INTO jobs (kind, payload, dedupe_key, max_attempts, run_at, trace_context,"
        " created_at, updated_at)"
        " VALUES (:kind, CAST(:payload AS jsonb), :dedupe, :max, :run_at,"
        " CAST(:trace AS jsonb), :now, :now)"
        " ON CONFLICT (dedupe_key) WHERE dedupe_key IS NOT NULL"
        " AND status IN ('queued', 'running') DO NOTHING RETURNING id",
        {
            "kind": kind,
            "payload": json.dumps(payload or {}),
            "dedupe": dedupe_key,
            "max": max_attempts,
            "run_at": run_at or uow.now(),
            "trace": json.dumps(trace_context) if trace_context else None,
            "now": uow.now(),
        },
    ).first()
    return None if row is None else int(row.id)


@dataclass(frozen=True, slots=True)
class _Running:
    job_id: int
    worker_id: str
    lease_seconds: float


_running: ContextVar[_Running | None] = ContextVar("portal_running_job", default=None)


@contextmanager
def running(job_id: int, worker_id: str, lease_seconds: float) -> Iterator[None]:
    """Mark the job this thread runs, so its handler can renew the lease (``renew_lease``)."""
    token = _running.set(_Running(job_id, worker_id, lease_seconds))
    try:
        yield
    finally:
        _running.reset(token)


def renew_lease(uow: UnitOfWork) -> None:
    """Extend the running job's lease by a full lease from now, in a transaction of its own,
    before a handler calls something slow outside the database (a processor, a receiver).
    Raises LeaseLost if another worker holds the job now. Outside a worker (a handler called
    directly, as tests do) there is no lease and nothing happens."""
    job = _running.get()
    if job is None:
        return

    def renew(u: UnitOfWork) -> bool:
        result = u.execute(
            "UPDATE jobs SET locked_until = :until, updated_at = :now"
            " WHERE id = :id AND locked_by = :worker AND status = 'running'",
            {"until": u.now() + timedelta(seconds=job.lease_seconds), "now": u.now(),
             "id": job.job_id, "worker": job.worker_id},
        )  # fmt: skip
        return bool(result.rowcount)  # type: ignore[attr-defined]

    if not uow.run(renew):
        raise LeaseLost(f"job {job.job_id} is no longer held by {job.worker_id}")


def current_trace_context() -> dict[str, str] | None:
    """The current span's context as W3C headers (``traceparent``, ``tracestate``), or None."""
    if not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier or None


def claim(
    uow: UnitOfWork, worker_id: str, *, lease_seconds: float, limit: int = 1
) -> list[ClaimedJob]:
    """Claim up to ``limit`` due jobs (queued, or running with an expired lease)."""
    now = uow.now()
    rows = uow.execute(
        """
        UPDATE jobs SET status = 'running', attempts = attempts + 1, locked_by = :worker,
                        locked_until = :until, updated_at = :now
        WHERE id IN (
            SELECT id FROM jobs
            WHERE (status = 'queued' AND run_at <= :now)
               OR (status = 'running' AND locked_until < :now)
            ORDER BY run_at, id
            FOR UPDATE SKIP LOCKED
            LIMIT :limit
        )
        RETURNING id, kind, payload, attempts, max_attempts, trace_context
        """,
        {
            "worker": worker_id,
            "until": now + timedelta(seconds=lease_seconds),
            "now": now,
            "limit": limit,
        },
    ).mappings()
    return [ClaimedJob(**row) for row in rows]


def complete(uow: UnitOfWork, job: ClaimedJob, worker_id: str) -> bool:
    """Mark a job done, only if this worker still holds it."""
    result = uow.execute(
        "UPDATE jobs SET status = 'succeeded', finished_at = :now, updated_at = :now,"
        " locked_by = NULL, locked_until = NULL, dedupe_key = NULL"
        " WHERE id = :id AND locked_by = :worker AND status = 'running'",
        {"now": uow.now(), "id": job.id, "worker": worker_id},
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def backoff_seconds(attempts: int) -> float:
    """2, 4, 8, ... seconds, capped at one hour."""
    return float(min(2**attempts, 3600))


def fail(uow: UnitOfWork, job: ClaimedJob, worker_id: str, error: str) -> str:
    """Record a failed attempt: queue a retry with backoff, or move to ``dead``."""
    dead = job.attempts >= job.max_attempts
    status = "dead" if dead else "queued"
    uow.execute(
        "UPDATE jobs SET status = :status, last_error = :error, updated_at = :now,"
        " run_at = :run_at, finished_at = CASE WHEN :dead THEN :now END,"
        " dedupe_key = CASE WHEN :dead THEN NULL ELSE dedupe_key END,"
        " locked_by = NULL, locked_until = NULL"
        " WHERE id = :id AND locked_by = :worker",
        {
            "status": status,
            "error": error[:4000],
            "now": uow.now(),
            "run_at": uow.now() + timedelta(seconds=backoff_seconds(job.attempts)),
            "dead": dead,
            "id": job.id,
            "worker": worker_id,
        },
    )
    return status
