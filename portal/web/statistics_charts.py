"""The statistics panel the admin overview and the merchant dashboard draw: monthly charts per
family for a year, the chosen month's succeeded and failed against the month before, its
methods, and all-time totals, read from ``portal.services.statistics.rollups``.

The year, month and currency come from the page's query string (a GET form: the pickers);
anything unreadable or out of range falls back to today's (UTC) with no error, since a page is
not an API. Each chart is a ``data-stat-chart`` canvas for ``static/js/statistics-charts.js``
(no inline script) with the same numbers in a table beside it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from portal.domain.money import Money, exponent
from portal.domain.types import Actor
from portal.services.shared.uow import UnitOfWork
from portal.services.statistics import rollups

MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
LABELS = {
    "top_ups": "Top-ups", "transfers": "Transfers", "withdrawals": "Withdrawals",
    "payments": "Payments", "refunds": "Refunds", "balances": "Balances",
    "balance": "Balance", "transfers_sent": "Transfers sent",
    "transfers_received": "Transfers received",
}  # fmt: skip
#: Years the picker offers: this one and the ones before.
PICKER_YEARS = 6


@dataclass(frozen=True, slots=True)
class Chart:
    family: str
    currency: str
    year: int
    amounts: tuple[int, ...]
    counts: tuple[int, ...]

    @property
    def title(self) -> str:
        return LABELS[self.family]

    @property
    def closing(self) -> bool:
        """Balances show the closing balance of each month (a line), the others the month's
        movements (bars)."""
        return self.family == "balances"

    @property
    def total(self) -> int:
        return self.amounts[-1] if self.closing else sum(self.amounts)

    @property
    def empty(self) -> bool:
        return not any(self.amounts) and not any(self.counts)

    @property
    def rows(self) -> list[tuple[str, int, int]]:
        return list(zip(MONTH_NAMES, self.amounts, self.counts, strict=True))

    @property
    def payload(self) -> str:
        return json.dumps(
            {
                "kind": "line" if self.closing else "bar",
                "currency": self.currency,
                "digits": exponent(self.currency),
                "labels": [f"{m} {self.year}" for m in MONTH_NAMES],
                "label": "Closing balance" if self.closing else f"{self.title} succeeded",
                "values": [Money(a, self.currency).to_major_str() for a in self.amounts],
                "counts": list(self.counts),
            },
            separators=(",", ":"),
        )


@dataclass(frozen=True, slots=True)
class StatusFigures:
    family: str
    previous: tuple[int, int, int, int]  # succeeded amount, count, failed amount, count
    current: tuple[int, int, int, int]

    @property
    def title(self) -> str:
        return LABELS[self.family]


@dataclass(frozen=True, slots=True)
class Panel:
    """Everything the panel shows; ``currencies`` the picker's choices."""

    year: int
    month: int
    currency: str
    currencies: tuple[str, ...]
    years: tuple[int, ...]
    charts: tuple[Chart, ...]
    statuses: tuple[StatusFigures, ...]
    methods: tuple[tuple[str, str, int, int], ...]  # family, method, amount, count
    totals: tuple[tuple[str, int, int], ...]  # figure name, amount, count

    @property
    def month_name(self) -> str:
        return datetime(self.year, self.month, 1).strftime("%B %Y")

    @property
    def previous_name(self) -> str:
        y, m = (self.year - 1, 12) if self.month == 1 else (self.year, self.month - 1)
        return datetime(y, m, 1).strftime("%B %Y")

    @property
    def month_names(self) -> Sequence[tuple[int, str]]:
        return [(i + 1, datetime(2000, i + 1, 1).strftime("%B")) for i in range(12)]

    def label(self, name: str) -> str:
        return LABELS.get(name, name)


def _number(args: Mapping[str, str], name: str, low: int, high: int, default: int) -> int:
    try:
        value = int(args.get(name, ""))
    except ValueError:
        return default
    return value if low <= value <= high else default


def panel(
    uow: UnitOfWork, *, actor: Actor, args: Mapping[str, str], scope: str = "system",
    id: str | None = None, families: Sequence[str] = rollups.FAMILIES,
    default_currency: str = "USD",
) -> Panel:  # fmt: skip
    """The panel for ``scope`` (``system`` or ``merchant``), as the actor may see it. Raises
    what the statistics service raises (Forbidden, NotFound)."""
    today = datetime.now(UTC).date()
    year = _number(args, "year", rollups.MIN_YEAR, rollups.MAX_YEAR, today.year)
    month = _number(args, "month", 1, 12, today.month if year == today.year else 12)
    dashboard = rollups.dashboard(uow, actor=actor, scope=scope, id=id)
    known = tuple(t.currency for t in dashboard.totals) or (default_currency,)
    asked = (args.get("currency") or "").upper()
    currency = asked if asked in known else known[0]
    charts = []
    for family in families:
        found = rollups.figures(
            uow, actor=actor, family=family, period="monthly", year=year, scope=scope, id=id,
            currency=currency,
        )  # fmt: skip
        points = found.series[0].points if found.series else ()
        charts.append(Chart(family, currency, year, tuple(p.amount for p in points),
                            tuple(p.count for p in points)))  # fmt: skip
    statuses = []
    for family in families:
        if family == "balances":
            continue
        rows = rollups.by_status(
            uow, actor=actor, family=family, year=year, month=month, scope=scope, id=id
        ).rows
        cells = {(r.status, r.month): (r.amount, r.count) for r in rows if r.currency == currency}
        before = 12 if month == 1 else month - 1

        def four(m: int, cells: dict[Any, Any] = cells) -> tuple[int, int, int, int]:
            s, f = cells.get(("succeeded", m), (0, 0)), cells.get(("failed", m), (0, 0))
            return (s[0], s[1], f[0], f[1])

        statuses.append(StatusFigures(family, four(before), four(month)))
    methods = []
    for family in families:
        if family not in rollups.METHOD_FAMILIES:
            continue
        found_m = rollups.by_method(
            uow, actor=actor, family=family, year=year, month=month, scope=scope, id=id
        )
        methods += [(family, r.method, r.amount, r.count) for r in found_m.rows
                    if r.currency == currency]  # fmt: skip
    mine = next((t for t in dashboard.totals if t.currency == currency), None)
    totals = tuple((n, mine.amounts[n], mine.counts[n]) for n in mine.amounts) if mine else ()
    years = tuple(range(today.year, today.year - PICKER_YEARS, -1))
    if year not in years:
        years = (*years, year)
    return Panel(year, month, currency, known, years, tuple(charts), tuple(statuses),
                 tuple(methods), totals)  # fmt: skip
