"""The console's reconciliation: the ledger check on demand, and each invariant's result.

The check itself is ``portal.services.ledger.reconciliation`` (``portal ledger verify``, and the
worker's periodic ``ledger_check``); running it here records it the same way (``ledger_checks``,
so the imbalance gauge and the overview see it too) and appends a ``reconciliation.run`` audit
event naming who ran it, the check's id and, when the caller ran one, the statistics roll-ups'
recomputation's outcome. The page reads the newest recorded check, periodic or on demand, and
groups its violations by invariant.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from portal.domain.errors import Forbidden
from portal.domain.types import Actor, ActorKind
from portal.services.ledger import reconciliation
from portal.services.ledger.reconciliation import KEPT_VIOLATIONS
from portal.services.shared import audit
from portal.services.shared.uow import UnitOfWork

RUN_PERMISSION = "reconciliation:run"
READ_PERMISSION = "money:read"
RUN_ACTION = "reconciliation.run"

#: (key, what holds when it passes, the ledger check's names that break it)
INVARIANTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("ledger_sum", "The ledger sums to zero in every currency, and so does every journal entry",
     ("ledger_sum", "entry_sum")),
    ("balances", "Every cached balance equals the sum of its postings, and none is negative",
     ("posted_balance", "available_non_negative")),
    ("holds", "Every account's pending debits equal its pending holds", ("pending_debits",)),
    ("payouts", "Every payout adds up: its transactions, its own entry and its opening balance",
     ("payout_rows", "payout_entry", "payout_opening")),
    ("payments", "Every captured payment paid the merchant its net and Portal its fee, and its"
     " refunds add up", ("payment_net", "payment_fee", "payment_refunded")),
    ("merchant_history", "Every merchant balance's history equals its postings",
     ("balance_transaction",)),
    ("top_ups", "Every top-up posted exactly its amount, and no top-up entry lacks its top-up",
     ("top_up_posted",)),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Finding:
    check: str
    subject: str
    expected: int
    actual: int


@dataclass(frozen=True, slots=True)
class InvariantResult:
    key: str
    label: str
    #: The findings kept with the check (all of them unless the check found more than kept).
    findings: tuple[Finding, ...]

    @property
    def ok(self) -> bool:
        return not self.findings


@dataclass(frozen=True, slots=True)
class StatisticsResult:
    """The statistics roll-ups against a recomputation, as the caller ran it."""

    ok: bool
    detail: str


@dataclass(frozen=True, slots=True)
class CheckResult:
    id: int
    checked_at: datetime
    duration_ms: int
    accounts_checked: int
    entries_checked: int
    postings_checked: int
    totals_by_currency: dict[str, int]
    violation_count: int
    invariants: tuple[InvariantResult, ...]
    #: Who ran it from the console (their email), None for the worker's periodic check.
    run_by: str | None
    #: The statistics recomputation run with it (None: not run with this check).
    statistics: StatisticsResult | None
    #: When the worker's periodic check last ran (this one, or an older one when this was run
    #: from the console; None: never).
    periodic_at: datetime | None = None

    @property
    def ok(self) -> bool:
        return self.violation_count == 0

    @property
    def complete(self) -> bool:
        """Whether every finding was kept (the count is always complete)."""
        return self.violation_count <= KEPT_VIOLATIONS


def _require(actor: Actor, permission: str) -> None:
    if not actor.can(permission):
        raise Forbidden(f"missing permission {permission}")


_LAST = """
SELECT c.id, c.checked_at, c.duration_ms, c.accounts_checked, c.entries_checked,
       c.postings_checked, c.totals, c.violation_count, c.violations,
       r.data AS run_data, u.email AS run_by
  FROM (SELECT * FROM ledger_checks ORDER BY checked_at DESC, id DESC LIMIT 1) c
  LEFT JOIN LATERAL (
       SELECT e.data, e.actor_kind, e.actor_id FROM audit_events e
        WHERE e.action = :action AND e.subject_type = 'ledger_check' AND e.subject_id = c.id
        ORDER BY e.id DESC LIMIT 1) r ON TRUE
  LEFT JOIN users u ON r.actor_kind = 'user' AND u.id = r.actor_id
"""
#: The newest check no console run claims: the worker's (newest first, stops at the first).
_PERIODIC = """
SELECT c.checked_at FROM ledger_checks c
 WHERE NOT EXISTS (SELECT 1 FROM audit_events e WHERE e.subject_type = 'ledger_check'
                   AND e.subject_id = c.id AND e.action = :action)
 ORDER BY c.checked_at DESC, c.id DESC LIMIT 1
"""


def _group(violations: list[dict[str, Any]]) -> tuple[InvariantResult, ...]:
    findings = [
        Finding(str(v.get("check")), str(v.get("subject")), int(v.get("expected", 0)),
                int(v.get("actual", 0)))
        for v in violations
    ]  # fmt: skip
    known = {name for _, _, names in INVARIANTS for name in names}
    results = [
        InvariantResult(key, label, tuple(f for f in findings if f.check in names))
        for key, label, names in INVARIANTS
    ]
    others = tuple(f for f in findings if f.check not in known)
    if others:  # a check added to the ledger's that this page does not name yet
        results.append(InvariantResult("other", "Other ledger checks", others))
    return tuple(results)


def _result(row: Any) -> CheckResult:
    run = dict(row.run_data or {})
    stats = run.get("statistics")
    return CheckResult(
        id=row.id, checked_at=row.checked_at, duration_ms=row.duration_ms,
        accounts_checked=row.accounts_checked, entries_checked=row.entries_checked,
        postings_checked=row.postings_checked,
        totals_by_currency={c: int(t) for c, t in (row.totals or {}).items()},
        violation_count=row.violation_count, invariants=_group(list(row.violations or [])),
        run_by=row.run_by if row.run_data is not None else None,
        statistics=StatisticsResult(bool(stats.get("ok")), str(stats.get("detail", "")))
        if isinstance(stats, dict) else None,
    )  # fmt: skip


def last_result(uow: UnitOfWork, *, actor: Actor) -> CheckResult | None:
    """The newest recorded check (periodic or run here), None when none has run. Raises
    Forbidden (needs money:read)."""
    _require(actor, READ_PERMISSION)
    rows = uow.read(_LAST, {"action": RUN_ACTION})
    if not rows:
        return None
    periodic = uow.read(_PERIODIC, {"action": RUN_ACTION})
    return replace(_result(rows[0]), periodic_at=periodic[0].checked_at if periodic else None)


def run_check(
    uow: UnitOfWork, *, actor: Actor, statistics: StatisticsResult | None = None
) -> CheckResult:
    """Run the ledger check now and record it, with an audit event naming who ran it and the
    ``statistics`` outcome the caller got. Raises Forbidden (needs reconciliation:run)."""
    _require(actor, RUN_PERMISSION)
    report = reconciliation.record_check(uow)

    def work(u: UnitOfWork) -> None:
        check_id = u.execute(
            "SELECT id FROM ledger_checks ORDER BY checked_at DESC, id DESC LIMIT 1"
        ).scalar_one()
        data: dict[str, Any] = {"violations": len(report.violations), "ok": report.ok}
        if statistics is not None:
            data["statistics"] = {"ok": statistics.ok, "detail": statistics.detail}
        audit.record(u, actor, RUN_ACTION, "ledger_check", int(check_id),
                     outcome="success" if report.ok else "failure", data=data)  # fmt: skip

    uow.run(work)
    found = last_result(uow, actor=actor if actor.can(READ_PERMISSION) else _reader(actor))
    assert found is not None
    return found


def _reader(actor: Actor) -> Actor:
    """One who may run the check may read what it found."""
    return Actor(ActorKind(actor.kind), actor.id, actor.permissions | {READ_PERMISSION},
                 actor.label, actor.key_id, actor.public_id)  # fmt: skip
