"""Idempotency keys, the outbox, background jobs and the append-only audit log."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import INET, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from portal.models.base import Base, now_column, pk_column


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"
    __table_args__ = (
        sa.UniqueConstraint("scope", "key", name="uq_idempotency_keys_scope_key"),
        sa.Index("ix_idempotency_keys_expires_at", "expires_at"),
    )

    id: Mapped[int] = pk_column()
    #: The principal the key belongs to, e.g. ``user:42``: keys never collide across users.
    scope: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    key: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    #: SHA-256 of the operation name and its canonical parameters.
    request_hash: Mapped[bytes] = mapped_column(sa.LargeBinary(32), nullable=False)
    #: ``{"result": ...}`` or ``{"error": ...}``; NULL only inside the claiming transaction.
    response: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = now_column()
    expires_at: Mapped[datetime] = mapped_column(nullable=False)


class OutboxEvent(Base):
    """Events written in the transaction that caused them; published after commit."""

    __tablename__ = "outbox_events"
    __table_args__ = (
        sa.Index(
            "ix_outbox_events_unpublished",
            "id",
            postgresql_where=sa.text("published_at IS NULL"),
        ),
    )

    id: Mapped[int] = pk_column()
    topic: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    created_at: Mapped[datetime] = now_column()
    published_at: Mapped[datetime | None]


class Job(Base):
    """A background job. It exists if and only if the transaction that enqueued it committed."""

    __tablename__ = "jobs"
    __table_args__ = (
        sa.CheckConstraint("status IN ('queued', 'running', 'succeeded', 'dead')", name="status"),
        sa.CheckConstraint("attempts >= 0 AND max_attempts > 0", name="attempts"),
        sa.Index(
            "ix_jobs_runnable",
            "run_at",
            postgresql_where=sa.text("status IN ('queued', 'running')"),
        ),
        sa.Index(
            "uq_jobs_dedupe_key",
            "dedupe_key",
            unique=True,
            postgresql_where=sa.text("dedupe_key IS NOT NULL AND status IN ('queued', 'running')"),
        ),
    )

    id: Mapped[int] = pk_column()
    kind: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, server_default="{}")
    #: At most one queued-or-running job per dedupe key (periodic jobs, one payout per withdrawal).
    dedupe_key: Mapped[str | None] = mapped_column(sa.String(128))
    status: Mapped[str] = mapped_column(sa.String(16), nullable=False, server_default="queued")
    attempts: Mapped[int] = mapped_column(sa.Integer, nullable=False, server_default="0")
    max_attempts: Mapped[int] = mapped_column(sa.Integer, nullable=False, server_default="8")
    run_at: Mapped[datetime] = now_column()
    #: Set while a worker holds the job; a job whose lease ran out is claimed again.
    locked_by: Mapped[str | None] = mapped_column(sa.String(128))
    locked_until: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    #: W3C trace context of the request that enqueued the job.
    trace_context: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = now_column()
    updated_at: Mapped[datetime] = now_column()
    finished_at: Mapped[datetime | None]


class LedgerCheck(Base):
    """One periodic reconciliation's result
    (``portal.services.ledger.reconciliation.record_check``)."""

    __tablename__ = "ledger_checks"
    __table_args__ = (
        sa.CheckConstraint("violation_count >= 0", name="violation_count"),
        sa.Index("ix_ledger_checks_checked_at", "checked_at"),
    )

    id: Mapped[int] = pk_column()
    checked_at: Mapped[datetime] = mapped_column(nullable=False)
    duration_ms: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    accounts_checked: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    entries_checked: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    postings_checked: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    #: Sum of all postings per currency: zero in a balanced ledger.
    totals: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    violation_count: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    #: The first violations found (check, subject, expected, actual).
    violations: Mapped[list[Any]] = mapped_column(JSONB, nullable=False)


class AuditEvent(Base):
    """Append-only (a trigger refuses UPDATE and DELETE) and hash-chained: a BEFORE INSERT
    trigger (the ``audit_chain`` migration) sets ``chain``, ``seq`` and ``hash`` on every row,
    whatever the inserter gave (``portal.services.shared.audit_chain``)."""

    __tablename__ = "audit_events"
    __table_args__ = (
        sa.Index("ix_audit_events_subject", "subject_type", "subject_id"),
        sa.Index("ix_audit_events_occurred_at_id", "occurred_at", "id"),
        sa.Index("ix_audit_events_action_id", "action", "id"),
        # The console's audit log, filtered by actor or by action, newest first (0029).
        sa.Index(
            "ix_audit_events_actor_occurred_at_id", "actor_kind", "actor_id", "occurred_at", "id"
        ),
        sa.Index("ix_audit_events_action_occurred_at_id", "action", "occurred_at", "id"),
        sa.UniqueConstraint("chain", "seq", name="uq_audit_events_chain"),
    )

    id: Mapped[int] = pk_column()
    occurred_at: Mapped[datetime] = now_column()
    actor_kind: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    actor_id: Mapped[int | None] = mapped_column(sa.BigInteger)
    action: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    subject_type: Mapped[str] = mapped_column(sa.String(32), nullable=False)
    subject_id: Mapped[int | None] = mapped_column(sa.BigInteger)
    outcome: Mapped[str] = mapped_column(sa.String(16), nullable=False, server_default="success")
    data: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, server_default="{}")
    #: The client address of the request that acted (NULL for the worker and the CLI).
    address: Mapped[str | None] = mapped_column(INET)
    #: Set by the trigger: the chain, the position on it (from 1) and
    #: sha256(previous hash || canonical content).
    chain: Mapped[int] = mapped_column(sa.SmallInteger, nullable=False)
    seq: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    hash: Mapped[bytes] = mapped_column(sa.LargeBinary(32), nullable=False)


class AuditChainHead(Base):
    """The last entry of one audit chain (32 zero bytes and seq 0 before its first), advanced
    only by the ``audit_events`` trigger; the runtime role may only read it."""

    __tablename__ = "audit_chain_heads"
    __table_args__ = (
        sa.CheckConstraint("chain >= 0", name="chain"),
        sa.CheckConstraint("seq >= 0", name="seq"),
        sa.CheckConstraint("octet_length(hash) = 32", name="hash"),
    )

    chain: Mapped[int] = mapped_column(sa.SmallInteger, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    hash: Mapped[bytes] = mapped_column(sa.LargeBinary(32), nullable=False)


class RateLimitCounter(Base):
    """A rate limit's fixed-window counter while Redis is down (``portal.web.ratelimit``):
    shared by every process, deleted by the worker once expired."""

    __tablename__ = "rate_limit_counters"
    __table_args__ = (sa.Index("ix_rate_limit_counters_expires_at", "expires_at"),)

    key: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    count: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    expires_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), nullable=False)
