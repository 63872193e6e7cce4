"""Statistics of the reference's families (``/api/v1/statistics``), read from roll-ups kept in
each movement's own transaction (``portal.services.statistics.rollups``: the design).

A few parameterised endpoints stand for the reference's ~100 statistics routes:

- ``GET /statistics/{family}/monthly``: twelve zero-filled months of ``year``;
- ``GET /statistics/{family}/yearly``: ``year`` and the four years before;
- ``GET /statistics/{family}/methods``: per method (top-ups: funding method; payments: card
  brand) over ``year`` or one ``month`` of it;
- ``GET /statistics/{family}/statuses``: succeeded and failed over ``month`` and the month
  before, or ``year`` and the year before;
- ``GET /statistics/dashboard``: all-time totals of the system, a card (transfers sent and
  received apart) or a merchant.

``family`` is one of ``top_ups``, ``transfers``, ``withdrawals``, ``payments``, ``refunds``,
``balances`` (anything else is a 404). ``scope`` is ``system`` (staff with ``stats:read``),
``card``, ``merchant`` or ``api_key`` with ``id`` the object's public id; cardholders may name
their own cards, merchants (an API key, or a member's token) their own merchant and its keys
(an API key may leave ``id`` out for its merchant); someone else's object is a 404 and
system-wide figures are a 403 for anyone but staff. Only ``succeeded`` movements count unless
``status`` asks otherwise (``all``: every status). Amounts are minor units per currency;
balances are closing balances. ``year`` outside 2000-2100 or ``month`` outside 1-12 is a 400
naming the parameter. Days are UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import Field

from portal.api import bp
from portal.api.merchant_auth import key_failures
from portal.api.operation import operation
from portal.api.schemas import ApiModel, QueryModel
from portal.domain.errors import Forbidden, NotFound
from portal.domain.ids import MAX_LENGTH
from portal.domain.types import Actor
from portal.services.statistics import rollups
from portal.web.uow import make_uow

AUTH = ("bearer", "api_key")
TAGS = ["statistics"]
ERRORS = (Forbidden, NotFound, 400)

Scope = Literal["system", "card", "merchant", "api_key"]
Status = Literal["succeeded", "failed", "pending", "processing", "canceled", "all"]
YEAR = Field(
    None,
    description="Default: this year (UTC). 2000 to 2100, else 400.",
    json_schema_extra={"minimum": rollups.MIN_YEAR, "maximum": rollups.MAX_YEAR},
)
MONTH = Field(
    None,
    description="1 to 12, else 400. Without it: the whole year.",
    json_schema_extra={"minimum": 1, "maximum": 12},
)
SCOPE = Field("system", description="Whose figures: system (staff), card, merchant, api_key.")
ID = Field(
    None,
    max_length=MAX_LENGTH,
    description="The card (`card_...`), merchant (`mch_...`) or API key (`key_...`) of the"
    " scope; an API key may leave it out for its own merchant.",
)


class FiguresQuery(QueryModel):
    year: int | None = YEAR
    scope: Scope = SCOPE
    id: str | None = ID
    status: Status = Field(
        "succeeded", description="Which movements count (all: every status). Not for balances."
    )
    method: str | None = Field(
        None, max_length=32, description="Only this method (top-ups and payments)."
    )
    side: Literal["sent", "received"] | None = Field(
        None, description="Transfers of a card: sent (default) or received."
    )
    currency: str | None = Field(
        None,
        min_length=3,
        max_length=3,
        examples=["usd"],
        description="Only this currency, zero-filled even without movements.",
    )


class MethodsQuery(QueryModel):
    year: int | None = YEAR
    month: int | None = MONTH
    scope: Scope = SCOPE
    id: str | None = ID
    status: Status = Field("succeeded", description="Which movements count (all: every status).")


class StatusesQuery(QueryModel):
    year: int | None = YEAR
    month: int | None = MONTH
    scope: Scope = SCOPE
    id: str | None = ID
    side: Literal["sent", "received"] | None = None


class DashboardQuery(QueryModel):
    scope: Literal["system", "card", "merchant"] = SCOPE
    id: str | None = ID


class ScopeObject(ApiModel):
    kind: Scope
    id: str | None = Field(description="The card, merchant or key; null for the system.")
    side: Literal["sent", "received"] | None = Field(description="Transfers of a card.")


class Point(ApiModel):
    year: int
    month: int | None = Field(description="1-12; null in a yearly series.")
    amount: int = Field(description="Minor units (balances: the closing balance).")
    count: int = Field(description="Movements (balances: postings).")


class Series(ApiModel):
    currency: str = Field(examples=["usd"])
    points: list[Point]


class FiguresObject(ApiModel):
    object: Literal["statistics.series"] = "statistics.series"
    family: str
    period: Literal["monthly", "yearly"]
    year: int
    status: str
    method: str | None
    scope: ScopeObject
    series: list[Series] = Field(description="One per currency with figures (or asked for).")


class MethodRow(ApiModel):
    currency: str
    method: str
    amount: int
    count: int


class MethodsObject(ApiModel):
    object: Literal["statistics.methods"] = "statistics.methods"
    family: str
    year: int
    month: int | None
    status: str
    scope: ScopeObject
    data: list[MethodRow]


class StatusRow(ApiModel):
    currency: str
    status: Literal["succeeded", "failed"]
    year: int
    month: int | None
    amount: int
    count: int


class StatusesObject(ApiModel):
    object: Literal["statistics.statuses"] = "statistics.statuses"
    family: str
    year: int
    month: int | None
    scope: ScopeObject
    data: list[StatusRow] = Field(
        description="Per currency: the period before, then the period asked, succeeded and failed"
        " each, zero-filled."
    )


class Figure(ApiModel):
    amount: int
    count: int


class DashboardTotals(ApiModel):
    currency: str
    figures: dict[str, Figure] = Field(
        description="system: balance, top_ups, withdrawals, payments, transfers, refunds; card:"
        " balance, top_ups, withdrawals, payments, refunds, transfers_sent, transfers_received;"
        " merchant: balance, payments, refunds. Succeeded, all time."
    )


class DashboardObject(ApiModel):
    object: Literal["statistics.dashboard"] = "statistics.dashboard"
    scope: ScopeObject
    totals: list[DashboardTotals]


def _family(family: str) -> str:
    if family not in rollups.FAMILIES:
        raise NotFound(
            f"no such statistics family; one of {', '.join(rollups.FAMILIES)}", param="family"
        )
    return family


def _year(year: int | None) -> int:
    return datetime.now(UTC).year if year is None else year


def _scope(scope: rollups.Scope) -> ScopeObject:
    return ScopeObject(kind=scope.kind, id=scope.id, side=scope.side)  # type: ignore[arg-type]


def _currency(code: str | None) -> str | None:
    return code.upper() if code else None


def _series(found: rollups.Figures, period: str) -> FiguresObject:
    return FiguresObject(
        family=found.family,
        period=period,  # type: ignore[arg-type]
        year=found.year,
        status=found.status,
        method=found.method,
        scope=_scope(found.scope),
        series=[
            Series(
                currency=s.currency.lower(),
                points=[
                    Point(year=p.year, month=p.month, amount=p.amount, count=p.count)
                    for p in s.points
                ],
            )  # fmt: skip
            for s in found.series
        ],
    )


def _figures(family: str, period: str, query: FiguresQuery, actor: Actor) -> FiguresObject:
    found = rollups.figures(
        make_uow(), actor=actor, family=_family(family), period=period, year=_year(query.year),
        scope=query.scope, id=query.id, status=query.status, method=query.method,
        side=query.side, currency=_currency(query.currency),
    )  # fmt: skip
    return _series(found, period)


@operation(
    bp, "GET", "/statistics/<family>/monthly", summary="Monthly statistics of a family",
    tags=TAGS, auth=AUTH, query=FiguresQuery, response=FiguresObject, errors=ERRORS,
    rate_limit=key_failures,
)  # fmt: skip
def statistics_monthly(family: str, query: FiguresQuery, actor: Actor) -> FiguresObject:
    """Twelve zero-filled months of `year`: amount and count per currency of the family's
    movements with `status` (default succeeded) for the scope. Balances: the closing balance
    at each month's end."""
    return _figures(family, "monthly", query, actor)


@operation(
    bp, "GET", "/statistics/<family>/yearly", summary="Yearly statistics of a family",
    tags=TAGS, auth=AUTH, query=FiguresQuery, response=FiguresObject, errors=ERRORS,
    rate_limit=key_failures,
)  # fmt: skip
def statistics_yearly(family: str, query: FiguresQuery, actor: Actor) -> FiguresObject:
    """`year` and the four years before, zero-filled: amount and count per currency."""
    return _figures(family, "yearly", query, actor)


@operation(
    bp, "GET", "/statistics/<family>/methods", summary="Statistics of a family by method",
    tags=TAGS, auth=AUTH, query=MethodsQuery, response=MethodsObject, errors=ERRORS,
    rate_limit=key_failures,
)  # fmt: skip
def statistics_methods(family: str, query: MethodsQuery, actor: Actor) -> MethodsObject:
    """Amount and count per method over `year`, or `month` of it: top-ups by funding method,
    payments by card brand (other families have no method: 400)."""
    found = rollups.by_method(
        make_uow(), actor=actor, family=_family(family), year=_year(query.year),
        month=query.month, scope=query.scope, id=query.id, status=query.status,
    )  # fmt: skip
    return MethodsObject(
        family=found.family, year=found.year, month=found.month, status=found.status or "",
        scope=_scope(found.scope),
        data=[MethodRow(currency=r.currency.lower(), method=r.method, amount=r.amount,
                        count=r.count) for r in found.rows],
    )  # fmt: skip


@operation(
    bp, "GET", "/statistics/<family>/statuses", summary="Succeeded and failed of a family",
    tags=TAGS, auth=AUTH, query=StatusesQuery, response=StatusesObject, errors=ERRORS,
    rate_limit=key_failures,
)  # fmt: skip
def statistics_statuses(family: str, query: StatusesQuery, actor: Actor) -> StatusesObject:
    """Succeeded and failed amount and count for `month` and the month before, or for `year`
    and the year before (no `month`), per currency, zero-filled (not for balances: 400)."""
    found = rollups.by_status(
        make_uow(), actor=actor, family=_family(family), year=_year(query.year),
        month=query.month, scope=query.scope, id=query.id, side=query.side,
    )  # fmt: skip
    return StatusesObject(
        family=found.family, year=found.year, month=found.month, scope=_scope(found.scope),
        data=[StatusRow(currency=r.currency.lower(), status=r.status, year=r.year,
                        month=r.month, amount=r.amount, count=r.count) for r in found.rows],
    )  # fmt: skip


@operation(
    bp, "GET", "/statistics/dashboard", summary="Dashboard totals", tags=TAGS, auth=AUTH,
    query=DashboardQuery, response=DashboardObject, errors=ERRORS, rate_limit=key_failures,
)  # fmt: skip
def statistics_dashboard(query: DashboardQuery, actor: Actor) -> DashboardObject:
    """All-time succeeded totals per currency: the system's, a card's (transfers sent and
    received apart) or a merchant's."""
    found = rollups.dashboard(make_uow(), actor=actor, scope=query.scope, id=query.id)
    return DashboardObject(
        scope=_scope(found.scope),
        totals=[
            DashboardTotals(
                currency=t.currency.lower(),
                figures={n: Figure(amount=t.amounts[n], count=t.counts[n]) for n in t.amounts},
            )
            for t in found.totals
        ],
    )
