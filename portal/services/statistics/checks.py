"""Roll-ups equal a recomputation: the nightly check of ``stat_rollups``.

``recompute_check(uow, day)`` recomputes each day of a range from the movements themselves
(the business rows, and the postings for balances) with the definitions of
``portal.services.statistics.rollups`` written out here again, and compares them with the
day roll-ups summed over slots; then checks that each month roll-up of the months touched
equals the sum of its days. Any difference (a roll-up edited, a movement written with the
triggers off, a trigger that went wrong) is listed with what was expected and what is there.

``record_check`` runs it for the previous UTC day (the worker's nightly task), keeps the result
in ``stat_checks`` (what the reconciliation page and the gauge read), logs each difference and
returns the result.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, time, timedelta

from portal.services.shared.uow import UnitOfWork

log = logging.getLogger("portal.statistics")

#: Differences kept with a recorded check (the count is always complete).
KEPT_DIFFERENCES = 50

_DAY = "(r.created_at AT TIME ZONE 'UTC')::date"
_RANGE = "r.created_at >= :lo AND r.created_at < :hi"


def _family(family: str, table: str, scopes: list[tuple[str, str, str]], status: str,
            method: str, amount: str) -> str:  # fmt: skip
    parts = []
    for kind, scope_id, extra in scopes:
        parts.append(
            f"SELECT '{family}' AS family, '{kind}' AS sk, {scope_id} AS sid,"  # nosec B608: constant parts
            f" r.currency::text AS cur, ({status})::text AS st, ({method})::text AS meth,"
            f" {_DAY} AS day, ({amount})::bigint AS amt, 1::bigint AS cnt"
            f" FROM {table} r WHERE {_RANGE}{extra}"
        )
    return "\nUNION ALL ".join(parts)


_EXPECTED = "\nUNION ALL ".join([
    _family("top_ups", "top_ups", [("system", "0", ""), ("card", "r.card_id", "")],
            "r.status", "r.method", "r.amount_minor"),
    _family("transfers", "transfers",
            [("system", "0", ""), ("card", "r.from_card_id", ""),
             ("card_received", "r.to_card_id", "")], "r.status", "''", "r.amount_minor"),
    _family("withdrawals", "withdrawals", [("system", "0", ""), ("card", "r.card_id", "")],
            "r.status", "''", "r.amount_minor"),
    _family("payments", "payments",
            [("system", "0", ""), ("merchant", "r.merchant_id", ""),
             ("card", "r.card_id", " AND r.card_id IS NOT NULL"),
             ("api_key", "r.api_key_id", " AND r.api_key_id IS NOT NULL")],
            "CASE r.status WHEN 'requires_payment_method' THEN 'failed'"
            " WHEN 'requires_capture' THEN 'pending' ELSE r.status END",
            "r.card_brand",
            "CASE WHEN r.status = 'succeeded' THEN r.received_minor ELSE r.amount_minor END"),
    _family("refunds", "refunds",
            [("system", "0", ""), ("merchant", "r.merchant_id", ""), ("card", "r.card_id", ""),
             ("api_key", "r.api_key_id", " AND r.api_key_id IS NOT NULL")],
            "r.status", "''", "r.amount_minor"),
    # Balances: postings to wallets (system and card) and merchant accounts (merchant).
    f"SELECT 'balances', 'system', 0, r.currency::text, 'succeeded', '', {_DAY},"  # nosec B608: constant parts
    f" r.amount_minor, 1 FROM postings r JOIN accounts a ON a.id = r.account_id"
    f" WHERE {_RANGE} AND a.kind = 'wallet'",
    f"SELECT 'balances', 'card', a.card_id, r.currency::text, 'succeeded', '', {_DAY},"  # nosec B608: constant parts
    f" r.amount_minor, 1 FROM postings r JOIN accounts a ON a.id = r.account_id"
    f" WHERE {_RANGE} AND a.kind = 'wallet'",
    f"SELECT 'balances', 'merchant', a.merchant_id, r.currency::text, 'succeeded', '', {_DAY},"  # nosec B608: constant parts
    f" r.amount_minor, 1 FROM postings r JOIN accounts a ON a.id = r.account_id"
    f" WHERE {_RANGE} AND a.kind = 'merchant'",
])  # fmt: skip

_KEY = "family, sk, sid, cur, st, meth, day"

_RECOMPUTE = """
WITH expected AS (
    SELECT <key>, sum(amt)::bigint AS amt, sum(cnt)::bigint AS cnt
    FROM (<expected>) e GROUP BY <key>
), actual AS (
    SELECT family::text, scope_kind::text AS sk, scope_id AS sid, currency::text AS cur,
           status::text AS st, method::text AS meth, period AS day,
           sum(amount_minor)::bigint AS amt, sum(count)::bigint AS cnt
    FROM stat_rollups WHERE grain = 'day' AND period >= :first AND period <= :last
    GROUP BY 1, 2, 3, 4, 5, 6, 7 HAVING sum(amount_minor) <> 0 OR sum(count) <> 0
)
SELECT 'day' AS grain, <key>, coalesce(e.amt, 0) AS expected_amount,
       coalesce(e.cnt, 0) AS expected_count, coalesce(a.amt, 0) AS actual_amount,
       coalesce(a.cnt, 0) AS actual_count
FROM expected e FULL JOIN actual a USING (<key>)
WHERE coalesce(e.amt, 0) <> coalesce(a.amt, 0) OR coalesce(e.cnt, 0) <> coalesce(a.cnt, 0)
UNION ALL
SELECT 'month', <key>, coalesce(d.amt, 0), coalesce(d.cnt, 0), coalesce(m.amt, 0),
       coalesce(m.cnt, 0)
FROM (SELECT family::text, scope_kind::text AS sk, scope_id AS sid, currency::text AS cur,
             status::text AS st, method::text AS meth,
             date_trunc('month', period::timestamp)::date AS day,
             sum(amount_minor)::bigint AS amt, sum(count)::bigint AS cnt
      FROM stat_rollups WHERE grain = 'day' AND period >= :month_first AND period < :month_last
      GROUP BY 1, 2, 3, 4, 5, 6, 7) d
FULL JOIN (SELECT family::text, scope_kind::text AS sk, scope_id AS sid, currency::text AS cur,
                  status::text AS st, method::text AS meth, period AS day,
                  sum(amount_minor)::bigint AS amt, sum(count)::bigint AS cnt
           FROM stat_rollups WHERE grain = 'month' AND period >= :month_first
                AND period < :month_last
           GROUP BY 1, 2, 3, 4, 5, 6, 7) m USING (<key>)
WHERE coalesce(d.amt, 0) <> coalesce(m.amt, 0) OR coalesce(d.cnt, 0) <> coalesce(m.cnt, 0)
ORDER BY 1, 2, 8, 3, 4, 5, 6, 7
"""
RECOMPUTE_SQL = _RECOMPUTE.replace("<key>", _KEY).replace("<expected>", _EXPECTED)


@dataclass(frozen=True, slots=True)
class Difference:
    """A roll-up cell that disagrees: ``grain`` day (against the movements) or month
    (against the sum of its days); ``period`` the day or the month's first day."""

    grain: str
    family: str
    scope_kind: str
    scope_id: int
    currency: str
    status: str
    method: str
    period: date
    expected_amount: int
    expected_count: int
    actual_amount: int
    actual_count: int


@dataclass(frozen=True, slots=True)
class CheckResult:
    first_day: date
    last_day: date
    differences: tuple[Difference, ...]

    @property
    def ok(self) -> bool:
        return not self.differences

    @property
    def by_family(self) -> dict[str, int]:
        """Differences per family (every family listed, 0 when it agrees)."""
        from portal.services.statistics.rollups import FAMILIES

        found = Counter(d.family for d in self.differences)
        return {family: found.get(family, 0) for family in FAMILIES}


def _month_first(day: date) -> date:
    return day.replace(day=1)


def _month_after(day: date) -> date:
    return date(day.year + day.month // 12, day.month % 12 + 1, 1)


def recompute_check(uow: UnitOfWork, day: date | tuple[date, date] | None = None) -> CheckResult:
    """Recompute the roll-ups of ``day`` (default: yesterday, UTC) or of the days
    ``(first, last)`` inclusive from the movements and the postings, and compare; the month
    roll-ups of those months are compared with their days. One read; raises nothing."""
    if day is None:
        first = last = uow.clock().astimezone(UTC).date() - timedelta(days=1)
    elif isinstance(day, tuple):
        first, last = day
    else:
        first = last = day
    if last < first:
        raise ValueError("the range ends before it starts")
    params = {
        "first": first, "last": last,
        "lo": datetime.combine(first, time(), UTC),
        "hi": datetime.combine(last + timedelta(days=1), time(), UTC),
        "month_first": _month_first(first), "month_last": _month_after(last),
    }  # fmt: skip
    rows = uow.read(RECOMPUTE_SQL, params)  # nosec B608: fixed parts
    found = tuple(
        Difference(
            r.grain,
            r.family,
            r.sk,
            int(r.sid),
            r.cur.strip(),
            r.st,
            r.meth,
            r.day,
            int(r.expected_amount),
            int(r.expected_count),
            int(r.actual_amount),
            int(r.actual_count),
        )  # fmt: skip
        for r in rows
    )
    return CheckResult(first, last, found)


@dataclass(frozen=True, slots=True)
class CheckSummary:
    """The last recorded check (the reconciliation page, the metrics)."""

    first_day: date
    last_day: date
    checked_at: datetime
    differences: int


def record_check(uow: UnitOfWork, day: date | None = None) -> CheckResult:
    """The nightly task: check ``day`` (default yesterday, UTC) unless it was checked already,
    keep the result in ``stat_checks`` and log every difference (an error each)."""
    target = day or uow.clock().astimezone(UTC).date() - timedelta(days=1)
    done = uow.read(
        "SELECT 1 FROM stat_checks WHERE first_day = :d AND last_day = :d AND differences = 0",
        {"d": target},
    )
    result = recompute_check(uow, target)
    if done and result.ok:
        return result
    for d in result.differences[:KEPT_DIFFERENCES]:
        log.error(
            "statistics roll-up differs from a recomputation: %s %s %s:%s %s %s %s %s"
            " expected %d (%d) found %d (%d)",
            d.grain, d.family, d.scope_kind, d.scope_id, d.currency, d.status, d.method or "-",
            d.period, d.expected_amount, d.expected_count, d.actual_amount, d.actual_count,
        )  # fmt: skip
    details = [
        {**asdict(d), "period": d.period.isoformat()} for d in result.differences[:KEPT_DIFFERENCES]
    ]
    uow.run(
        lambda u: u.execute(
            "INSERT INTO stat_checks (first_day, last_day, checked_at, differences, details)"
            " VALUES (:first, :last, :now, :n, CAST(:details AS jsonb))",
            {
                "first": result.first_day,
                "last": result.last_day,
                "now": u.now(),
                "n": len(result.differences),
                "details": json.dumps(details),
            },
        )  # fmt: skip
    )
    return result


def last_check(uow: UnitOfWork) -> CheckSummary | None:
    """The latest recorded check, or None."""
    rows = uow.read(
        "SELECT first_day, last_day, checked_at, differences FROM stat_checks"
        " ORDER BY checked_at DESC, id DESC LIMIT 1"
    )
    if not rows:
        return None
    r = rows[0]
    return CheckSummary(r.first_day, r.last_day, r.checked_at, r.differences)
