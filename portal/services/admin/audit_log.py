"""The console's audit log: every audit event, filtered and paged, and the chains verified.

Filters: action, actor (an email or a ``usr_`` id; ``system`` for the worker and the CLI),
subject (a type, optionally with the record's public id or internal id), outcome and a UTC date
range. Pages are newest first, keyset on ``(occurred_at, id)`` (the cursor is the last event's
id), so a deep page reads as few index entries as the first; actor and action filters have
their own ``(..., occurred_at, id)`` indexes (migration 0029).

``verify`` is ``portal.services.shared.audit_chain.verify`` (what ``portal audit verify``
runs): it names each place a chain breaks; the console records who ran it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import sqlalchemy as sa

from portal.domain.errors import Forbidden, InvalidInput
from portal.domain.ids import PREFIXES, is_public_id
from portal.domain.types import Actor
from portal.services.identity.users import canonical_email
from portal.services.shared import audit, audit_chain
from portal.services.shared.audit_chain import AuditReport
from portal.services.shared.pagination import Page, check_limit, like_pattern, page_of
from portal.services.shared.uow import UnitOfWork

log = logging.getLogger(__name__)

PERMISSION = "audit:read"
OUTCOMES = ("success", "failure")
VERIFY_ACTION = "audit.verify"

#: Subject types whose records have a public id, and where it is kept.
SUBJECT_TABLES: dict[str, tuple[str, str]] = {
    "user": ("users", "user"),
    "role": ("roles", "role"),
    "card": ("cards", "card"),
    "merchant": ("merchants", "merchant"),
    "api_key": ("api_keys", "api_key"),
    "payment": ("payments", "payment"),
    "refund": ("refunds", "refund"),
    "payout": ("payouts", "payout"),
    "top_up": ("top_ups", "top_up"),
    "transfer": ("transfers", "transfer"),
    "withdrawal": ("withdrawals", "withdrawal"),
    "webhook_endpoint": ("webhook_endpoints", "webhook_endpoint"),
    "web_session": ("web_sessions", "session"),
    "adjustment_request": ("adjustment_requests", "adjustment"),
}


@dataclass(frozen=True, slots=True)
class AuditRow:
    id: int
    occurred_at: datetime
    actor: str
    actor_kind: str
    actor_id: int | None
    action: str
    subject_type: str
    subject_id: int | None
    outcome: str
    address: str | None
    data: dict[str, Any]
    chain: int
    seq: int
    hash: str  # hex

    @property
    def changes(self) -> list[tuple[str, Any, Any]]:
        """(field, from, to) of the before/after values in ``data``."""
        return [(k, v["from"], v.get("to")) for k, v in self.data.items()
                if isinstance(v, dict) and "from" in v]  # fmt: skip

    @property
    def details(self) -> list[tuple[str, Any]]:
        """The rest of ``data``: what the event says besides before/after values."""
        return [(k, v) for k, v in self.data.items()
                if not (isinstance(v, dict) and "from" in v)]  # fmt: skip


@dataclass(frozen=True, slots=True)
class Filters:
    action: str | None = None
    #: An email (exact, any case), a ``usr_`` id, or ``system``.
    actor: str | None = None
    subject_type: str | None = None
    #: A public id of ``subject_type``'s records, or an internal id.
    subject: str | None = None
    outcome: str | None = None
    since: date | None = None
    until: date | None = None


def _require(actor: Actor) -> None:
    if not actor.can(PERMISSION):
        raise Forbidden(f"missing permission {PERMISSION}")


_SELECT = """
SELECT e.id, e.occurred_at, e.actor_kind, e.actor_id, e.action, e.subject_type, e.subject_id,
       e.outcome, host(e.address) AS address, e.data, e.chain, e.seq, encode(e.hash, 'hex') AS hash,
       u.email AS actor_email
  FROM audit_events e
  LEFT JOIN users u ON e.actor_kind = 'user' AND u.id = e.actor_id
"""


def _who(row: Any) -> str:
    if row.actor_kind == "user":
        return row.actor_email or f"user {row.actor_id}"
    return str(row.actor_kind) if row.actor_id is None else f"{row.actor_kind} {row.actor_id}"


def _row(r: Any) -> AuditRow:
    return AuditRow(
        r.id, r.occurred_at, _who(r), r.actor_kind, r.actor_id, r.action, r.subject_type,
        r.subject_id, r.outcome, r.address, dict(r.data or {}), r.chain, r.seq, r.hash,
    )  # fmt: skip


def _conditions(u: UnitOfWork, f: Filters) -> tuple[list[str], dict[str, Any]] | None:
    """The WHERE conditions of ``f`` and their parameters; None when a filter names nothing
    (an unknown actor or record): then no event matches."""
    where: list[str] = []
    params: dict[str, Any] = {}
    if f.action:
        if f.action.endswith("*"):
            where.append("e.action LIKE :action ESCAPE '\\'")
            params["action"] = like_pattern(f.action[:-1])[1:]  # a prefix
        else:
            where.append("e.action = :action")
            params["action"] = f.action
    if f.actor:
        text = f.actor.strip()
        if text.lower() == "system":
            where.append("e.actor_kind = 'system'")
        else:
            column = "public_id" if is_public_id("user", text) else "email_canonical"
            value = text if column == "public_id" else canonical_email(text)
            found = u.execute(
                f"SELECT id FROM users WHERE {column} = :v",  # nosec B608: one of two columns
                {"v": value},
            ).first()
            if found is None:
                return None
            where.append("e.actor_kind = 'user' AND e.actor_id = :actor_id")
            params["actor_id"] = found.id
    if f.subject_type:
        where.append("e.subject_type = :subject_type")
        params["subject_type"] = f.subject_type
    if f.subject:
        ref = f.subject.strip()
        if ref.isdigit() and len(ref) <= 18:
            params["subject_id"] = int(ref)
        else:
            table = SUBJECT_TABLES.get(f.subject_type or "")
            if table is None or not is_public_id(table[1], ref):
                raise InvalidInput(
                    "the record is a public id of the chosen subject type, or a number",
                    param="subject",
                )
            found = u.execute(
                f"SELECT id FROM {table[0]} WHERE public_id = :p",  # nosec B608: fixed names
                {"p": ref},
            ).first()
            if found is None:
                return None
            params["subject_id"] = found.id
        where.append("e.subject_id = :subject_id")
    if f.outcome:
        where.append("e.outcome = :outcome")
        params["outcome"] = f.outcome
    if f.since:
        where.append("e.occurred_at >= :since")
        params["since"] = datetime.combine(f.since, time(), UTC)
    if f.until:
        where.append("e.occurred_at < :until")
        params["until"] = datetime.combine(f.until + timedelta(days=1), time(), UTC)
    return where, params


def check_filters(f: Filters) -> Filters:
    """Raises InvalidInput naming the first filter that cannot be used."""
    if f.outcome and f.outcome not in OUTCOMES:
        raise InvalidInput("outcome is success or failure", param="outcome")
    if f.since and f.until and f.until < f.since:
        raise InvalidInput("the range ends before it starts", param="until")
    if f.subject and not f.subject.strip().isdigit() and f.subject_type not in SUBJECT_TABLES:
        raise InvalidInput("choose the record's type first", param="subject_type")
    for name in ("action", "actor", "subject_type", "subject"):
        value = getattr(f, name)
        if value is not None and (len(value) > 100 or not value.isprintable()):
            raise InvalidInput(f"{name} is at most 100 printable characters", param=name)
    return f


def list_events(
    uow: UnitOfWork,
    *,
    actor: Actor,
    filters: Filters = Filters(),  # noqa: B008 (frozen)
    limit: int | None = None,
    starting_after: int | None = None,
) -> Page[AuditRow]:
    """Audit events newest first, filtered. Raises Forbidden (needs audit:read), InvalidInput
    (a filter, limit, starting_after)."""
    _require(actor)
    size = check_limit(limit)
    check_filters(filters)
    if starting_after is not None and (
        isinstance(starting_after, bool) or not 0 < starting_after < 2**63
    ):
        raise InvalidInput("starting_after is an audit event's id", param="starting_after")

    def work(u: UnitOfWork) -> Page[AuditRow]:
        found = _conditions(u, filters)
        if found is None:
            return Page((), False)
        where, params = found
        if starting_after is not None:
            cursor = u.execute(
                "SELECT occurred_at, id FROM audit_events WHERE id = :id", {"id": starting_after}
            ).first()
            if cursor is None:
                raise InvalidInput("starting_after is not a known event", param="starting_after")
            where.append("(e.occurred_at, e.id) < (:after_at, :after_id)")
            params.update(after_at=cursor.occurred_at, after_id=cursor.id)
        clause = " WHERE " + " AND ".join(f"({c})" for c in where) if where else ""
        rows = u.execute(
            f"{_SELECT}{clause} ORDER BY e.occurred_at DESC, e.id DESC LIMIT :limit",  # nosec B608
            {**params, "limit": size + 1},
        ).all()
        return page_of([_row(r) for r in rows], size)

    return uow.run(work)


_DISTINCT = """
WITH RECURSIVE walk AS (
    SELECT min({column}) AS value FROM audit_events
    UNION ALL
    SELECT (SELECT min(e.{column}) FROM audit_events e WHERE e.{column} > walk.value) FROM walk
    WHERE walk.value IS NOT NULL
)
SELECT value FROM walk WHERE value IS NOT NULL
"""


def choices(uow: UnitOfWork, *, actor: Actor) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The actions and subject types the log holds (for the filters), each a skip scan of its
    index. Raises Forbidden (needs audit:read)."""
    _require(actor)
    actions = uow.read(_DISTINCT.format(column="action"))
    subjects = uow.read(_DISTINCT.format(column="subject_type"))
    return tuple(r.value for r in actions), tuple(r.value for r in subjects)


def verify(uow: UnitOfWork, *, actor: Actor) -> AuditReport:
    """Verify every chain (``audit_chain.verify``) and record who did and what was found.
    Raises Forbidden (needs audit:read)."""
    _require(actor)
    report = audit_chain.verify(uow)
    try:
        uow.run(
            lambda u: audit.record(
                u,
                actor,
                VERIFY_ACTION,
                "audit_chain",
                None,
                outcome="success" if report.ok else "failure",
                data={
                    "entries": report.entries,
                    "chains": len(report.chains),
                    "anchors": report.anchors,
                    "breaks": len(report.breaks),
                    "first_break": report.breaks[0].message if report.breaks else None,
                },
            )  # fmt: skip
        )
    except sa.exc.IntegrityError:
        # An entry inserted past its chain's head (outside the trigger) takes the position the
        # trigger gives the chain's next entry, so that insert fails: the report that names
        # the break matters more than the record of having looked.
        log.warning("could not record %s: a chain is broken (%d breaks)", VERIFY_ACTION,
                    len(report.breaks))  # fmt: skip
    return report


def known_prefixes() -> dict[str, str]:
    """Subject type -> the public id prefix its records carry (for the filter's hint)."""
    return {t: PREFIXES[kind] for t, (_, kind) in SUBJECT_TABLES.items()}


@dataclass(frozen=True, slots=True)
class AnchorState:
    """The last ``audit.anchor`` entry and what it left unanchored (the web's /metrics)."""

    #: When the last anchor entry was written (None: never).
    anchored_at: datetime | None
    #: Each chain's anchored head: (chain, seq, hex hash), as the last anchor recorded it.
    heads: tuple[tuple[int, int, str], ...]
    #: When the oldest entry no anchor covers was written (None: every entry is anchored).
    oldest_unanchored_at: datetime | None


#: The last anchor, its claims, and on each chain whose head is past what the anchor covered
#: (its claim; on the anchor's own chain, the anchor itself too) the first entry not covered:
#: one index look-up per chain on (chain, seq).
_ANCHOR_STATE = """
WITH last AS (
    SELECT id, chain, seq, occurred_at, data FROM audit_events
     WHERE action = :action ORDER BY id DESC LIMIT 1
), claims AS (
    SELECT c.key::int AS chain, (c.value->>'seq')::bigint AS seq, c.value->>'hash' AS hash
      FROM last, jsonb_each(CASE WHEN jsonb_typeof(last.data->'chains') = 'object'
                                 THEN last.data->'chains' ELSE '{}' END) c
     WHERE c.key ~ '^[0-9]{1,4}$'
), covered AS (
    SELECT h.chain, h.seq AS head,
           COALESCE(cl.seq, 0) + CASE WHEN h.chain = (SELECT chain FROM last) THEN 1 ELSE 0 END
             AS upto
      FROM audit_chain_heads h LEFT JOIN claims cl ON cl.chain = h.chain
)
SELECT (SELECT occurred_at FROM last) AS anchored_at,
       (SELECT min(e.occurred_at) FROM covered c
          JOIN audit_events e ON e.chain = c.chain AND e.seq = c.upto + 1
         WHERE c.head > c.upto) AS oldest_unanchored_at,
       (SELECT COALESCE(jsonb_agg(jsonb_build_array(chain, seq, hash) ORDER BY chain), '[]')
          FROM claims) AS heads
"""


def anchor_state(uow: UnitOfWork) -> AnchorState:
    """The last anchor and how long entries have waited for one: one read, three index
    look-ups and one per chain. For the metrics endpoint (internal: no actor). Raises nothing
    of its own."""
    row = uow.read(_ANCHOR_STATE, {"action": audit_chain.ANCHOR_ACTION})[0]
    heads = tuple(
        (int(chain), int(seq), str(digest)) for chain, seq, digest in row.heads if seq is not None
    )
    return AnchorState(row.anchored_at, heads, row.oldest_unanchored_at)
