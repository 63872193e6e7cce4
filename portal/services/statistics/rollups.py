"""Statistics of the reference's families (seed inventory §2.5-2.11) read from roll-ups.

Families: ``top_ups``, ``transfers``, ``withdrawals``, ``payments``, ``refunds`` and
``balances``. Each movement adds its amount (minor units) and a count of one to the roll-up
rows of its family, keyed by (family, scope kind, scope id, currency, status, method, grain
and period, slot) in ``stat_rollups`` (migration ``statistics_rollups``):

- Scopes: ``system`` (everything, id 0); ``card`` (top-ups, withdrawals, payments and refunds
  of the card, transfers it *sent*); ``card_received`` (transfers a card received); ``merchant``
  (payments, refunds, the merchant's balance); ``api_key`` (payments and refunds made with a
  merchant API key).
- Status: the movement's own status; payments map theirs (``requires_payment_method``, a
  declined attempt, is ``failed``; ``requires_capture`` is ``pending``; ``succeeded``,
  ``canceled``). Figures count ``succeeded`` movements unless a status (or ``all``) is asked
  for. A succeeded payment counts what it received (its captured amount), any other its amount.
- Method: top-ups' funding method, payments' card brand; the other families have none.
- Dating: the UTC day of the movement's ``created_at`` (a status change later never moves a
  movement to another day); ``day`` and ``month`` grains are kept side by side: reads use
  months, the nightly recomputation days.
- Balances: the net of the postings to wallet accounts (``system`` and ``card`` scopes) and to
  merchant balance accounts (``merchant`` scope); system accounts are not counted. A monthly or
  yearly balance figure is the closing balance at the end of that month or year (every earlier
  change summed), its count the postings of that month or year.

Kept where the money moves: AFTER INSERT and AFTER UPDATE statement triggers (with transition
tables) on ``top_ups``, ``transfers``, ``withdrawals``, ``payments``, ``refunds`` and AFTER
INSERT on ``postings`` upsert the roll-up inside the statement that wrote the movement, so a
figure is never stale and the movement still costs the round trips it did (none is added). An
UPDATE subtracts the old row's contribution and adds the new one's: a status change moves the
amount from one status to the other; an update that changes no figure writes nothing.

Hot rows: a key every payment of one merchant (or every movement of the system) updates would
serialise them on one row. Each key has ``SLOTS`` = 8 rows; a transaction writes the slot
``txid_current() % 8`` (concurrent transactions have neighbouring ids, so they spread over the
slots, and one transaction keeps one slot, so two never lock two slots in opposite orders).
Card scopes use slot 0: a card's movements already lock its account row. Reads sum the slots.

Reads are a few parameterised look-ups (monthly, yearly, by method, by status, dashboard
totals), each one range of the roll-up's primary key: their cost depends on the months and
slots read, never on how much history there is. Cardholders see their own cards' figures,
merchants (an API key or a member) their own merchant's and its keys', staff with
``stats:read`` everything; anything else is NotFound (a card, merchant or key not theirs) or
Forbidden (system-wide figures).

The recomputation (``recompute_check``) is in ``portal.services.statistics.checks``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

from portal.domain.errors import Forbidden, InvalidInput, NotFound, PortalError
from portal.domain.ids import is_public_id
from portal.domain.types import Actor, ActorKind
from portal.services.merchants.merchants import access
from portal.services.shared.uow import UnitOfWork

SLOTS = 8
FAMILIES = ("top_ups", "transfers", "withdrawals", "payments", "refunds", "balances")
#: The scopes a family is kept for (``card`` for transfers names the sending side).
SCOPES: dict[str, tuple[str, ...]] = {
    "top_ups": ("system", "card"),
    "transfers": ("system", "card"),
    "withdrawals": ("system", "card"),
    "payments": ("system", "merchant", "card", "api_key"),
    "refunds": ("system", "merchant", "card", "api_key"),
    "balances": ("system", "card", "merchant"),
}
STATUSES: dict[str, tuple[str, ...]] = {
    "top_ups": ("pending", "processing", "succeeded", "failed"),
    "transfers": ("pending", "succeeded", "failed"),
    "withdrawals": ("pending", "processing", "succeeded", "failed"),
    "payments": ("pending", "succeeded", "failed", "canceled"),
    "refunds": ("pending", "succeeded", "failed"),
    "balances": ("succeeded",),
}
#: Families whose movements have a method (top-ups: funding method; payments: card brand).
METHOD_FAMILIES = ("top_ups", "payments")
SIDES = ("sent", "received")
YEARS = 5
MIN_YEAR, MAX_YEAR = 2000, 2100


# -- results ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Point:
    """One month (``month`` 1-12) or one year (``month`` None) of a currency."""

    year: int
    month: int | None
    amount: int
    count: int


@dataclass(frozen=True, slots=True)
class Series:
    currency: str
    points: tuple[Point, ...]


@dataclass(frozen=True, slots=True)
class Scope:
    """Whose figures: ``kind`` as asked (system, card, merchant, api_key), the public id."""

    kind: str
    id: str | None
    side: str | None = None


@dataclass(frozen=True, slots=True)
class Figures:
    """A family's monthly or yearly series per currency."""

    family: str
    scope: Scope
    status: str
    method: str | None
    year: int
    series: tuple[Series, ...]


@dataclass(frozen=True, slots=True)
class MethodRow:
    currency: str
    method: str
    amount: int
    count: int


@dataclass(frozen=True, slots=True)
class StatusRow:
    """A status's figures over one period (``month`` None: the whole year)."""

    currency: str
    status: str
    year: int
    month: int | None
    amount: int
    count: int


@dataclass(frozen=True, slots=True)
class Breakdown:
    """By method or by status, for a year or one of its months."""

    family: str
    scope: Scope
    year: int
    month: int | None
    status: str | None
    rows: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Totals:
    """All-time succeeded totals of one currency, by figure name (``payments``,
    ``transfers_sent`` ...): amount and count each."""

    currency: str
    amounts: dict[str, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Dashboard:
    scope: Scope
    totals: tuple[Totals, ...]


# -- checking what was asked --------------------------------------------------------------
class OutOfRange(PortalError):
    """A year outside 2000-2100 or a month outside 1-12: a 400 naming the parameter, as the
    statistics issue asks (other bad parameters are InvalidInput, a 422)."""

    code = "parameter_out_of_range"


def check_year(year: int) -> int:
    if not isinstance(year, int) or not MIN_YEAR <= year <= MAX_YEAR:
        raise OutOfRange(f"year must be between {MIN_YEAR} and {MAX_YEAR}", param="year")
    return year


def check_month(month: int | None) -> int | None:
    if month is not None and (not isinstance(month, int) or not 1 <= month <= 12):
        raise OutOfRange("month must be between 1 and 12", param="month")
    return month


def _check_family(family: str) -> str:
    if family not in FAMILIES:
        raise InvalidInput(f"family is one of {', '.join(FAMILIES)}", param="family")
    return family


def _check_status(family: str, status: str) -> str:
    if status != "all" and status not in STATUSES[family]:
        allowed = ", ".join((*STATUSES[family], "all"))
        raise InvalidInput(f"status of {family} is one of {allowed}", param="status")
    return status


@dataclass(frozen=True, slots=True)
class _Key:
    kind: str
    id: int
    scope: Scope


def _resolve(
    uow: UnitOfWork, actor: Actor, family: str, scope: str, ref: str | None, side: str | None
) -> _Key:
    """The roll-up scope (kind, internal id) the actor asked for and may see. Raises
    InvalidInput, Forbidden (system figures), NotFound (a card, merchant or key not theirs)."""
    if scope not in SCOPES[family]:
        raise InvalidInput(
            f"scope of {family} is one of {', '.join(SCOPES[family])}", param="scope"
        )
    if side is not None and (family != "transfers" or scope != "card" or side not in SIDES):
        raise InvalidInput("side (sent or received) is for transfers of a card", param="side")
    staff = actor.can("stats:read")
    if scope == "system":
        if not staff:
            raise Forbidden("missing permission stats:read")
        return _Key("system", 0, Scope("system", None))
    if scope == "card":
        row = None
        if is_public_id("card", ref):
            found = uow.read("SELECT id, user_id FROM cards WHERE public_id = :p", {"p": ref})
            row = found[0] if found else None
        mine = row is not None and actor.kind == ActorKind.USER and row.user_id == actor.id
        if row is None or not (mine or staff):
            raise NotFound("no such card", param="id")
        kind = "card_received" if side == "received" else "card"
        return _Key(
            kind, row.id, Scope("card", ref, side or ("sent" if family == "transfers" else None))
        )
    if scope == "merchant":
        if ref is None and actor.kind == ActorKind.MERCHANT and actor.id is not None:
            merchant: str | int = actor.id
        elif ref is not None:
            merchant = ref
        else:
            raise InvalidInput("id names the merchant", param="id")
        view = uow.run(lambda u: _merchant(u, actor, merchant, staff))
        return _Key("merchant", view[0], Scope("merchant", view[1]))
    # api_key
    row = None
    if is_public_id("api_key", ref):
        found = uow.read("SELECT id, merchant_id FROM api_keys WHERE public_id = :p", {"p": ref})
        row = found[0] if found else None
    if row is None:
        raise NotFound("no such API key", param="id")
    if not staff:
        try:
            uow.run(lambda u: access(u, actor, row.merchant_id, "read"))
        except NotFound:
            raise NotFound("no such API key", param="id") from None
    return _Key("api_key", row.id, Scope("api_key", ref))


def _merchant(u: UnitOfWork, actor: Actor, merchant: str | int, staff: bool) -> tuple[int, str]:
    if staff:
        from portal.services.merchants.merchants import merchant_ref

        row = merchant_ref(u, merchant)
        return int(row.id), str(row.public_id)
    view = access(u, actor, merchant, "read").merchant
    return view.id, view.public_id


# -- reads ----------------------------------------------------------------------------------
_SUM = (
    "SELECT currency, {bucket} AS bucket, sum(amount_minor)::bigint AS amount,"
    " sum(count)::bigint AS n FROM stat_rollups"
    " WHERE family = :family AND scope_kind = :kind AND scope_id = :id AND grain = 'month'"
    " AND period >= :first AND period < :last{filters} GROUP BY 1, 2"
    " HAVING sum(amount_minor) <> 0 OR sum(count) <> 0"
)


def _filters(
    status: str | None, method: str | None, currency: str | None
) -> tuple[str, dict[str, Any]]:
    sql, params = "", {}
    if status is not None and status != "all":
        sql += " AND status = :status"
        params["status"] = status
    if method is not None:
        sql += " AND method = :method"
        params["method"] = method
    if currency is not None:
        sql += " AND currency = :currency"
        params["currency"] = currency
    return sql, params


def _series(
    uow: UnitOfWork, key: _Key, family: str, *, yearly: bool, year: int, status: str,
    method: str | None, currency: str | None,
) -> tuple[Series, ...]:  # fmt: skip
    first = date(year - YEARS + 1, 1, 1) if yearly else date(year, 1, 1)
    last = date(year + 1, 1, 1)
    bucket = "extract(year FROM period)::int" if yearly else "extract(month FROM period)::int"
    filters, params = _filters(None if family == "balances" else status, method, currency)
    params.update(family=family, kind=key.kind, id=key.id, first=first, last=last)
    rows = uow.read(_SUM.format(bucket=bucket, filters=filters), params)  # nosec B608: fixed parts
    cells: dict[str, dict[int, tuple[int, int]]] = {}
    for r in rows:
        cells.setdefault(r.currency.strip(), {})[r.bucket] = (r.amount, r.n)
    opening: dict[str, int] = {}
    if family == "balances":  # closing balances: everything before the first bucket too
        before = uow.read(
            "SELECT currency, sum(amount_minor)::bigint AS amount FROM stat_rollups"  # nosec B608
            " WHERE family = 'balances' AND scope_kind = :kind AND scope_id = :id"
            " AND grain = 'month' AND period < :first" + filters + " GROUP BY 1",
            {k: v for k, v in params.items() if k not in ("family", "last")},
        )  # nosec B608: fixed parts
        opening = {r.currency.strip(): r.amount for r in before}
    currencies = sorted(set(cells) | set(opening) | ({currency} if currency else set()))
    buckets = list(range(year - YEARS + 1, year + 1)) if yearly else list(range(1, 13))
    out = []
    for cur in currencies:
        running = opening.get(cur, 0)
        points = []
        for b in buckets:
            amount, count = cells.get(cur, {}).get(b, (0, 0))
            if family == "balances":
                running += amount
                amount = running
            points.append(Point(b if yearly else year, None if yearly else b, amount, count))
        out.append(Series(cur, tuple(points)))
    return tuple(out)


def figures(
    uow: UnitOfWork, *, actor: Actor, family: str, period: str, year: int,
    scope: str = "system", id: str | None = None, status: str = "succeeded",
    method: str | None = None, side: str | None = None, currency: str | None = None,
) -> Figures:  # fmt: skip
    """Twelve zero-filled months of ``year`` (``period="monthly"``) or the year and the four
    before (``"yearly"``), per currency. Raises InvalidInput, Forbidden, NotFound."""
    _check_family(family)
    check_year(year)
    if period not in ("monthly", "yearly"):
        raise InvalidInput("period is monthly or yearly", param="period")
    _check_status(family, status)
    if method is not None and family not in METHOD_FAMILIES:
        raise InvalidInput(f"{family} have no method", param="method")
    key = _resolve(uow, actor, family, scope, id, side)
    series = _series(
        uow, key, family, yearly=period == "yearly", year=year, status=status, method=method,
        currency=currency,
    )  # fmt: skip
    shown = "succeeded" if family == "balances" else status
    return Figures(family, key.scope, shown, method, year, series)


def by_method(
    uow: UnitOfWork, *, actor: Actor, family: str, year: int, month: int | None = None,
    scope: str = "system", id: str | None = None, status: str = "succeeded",
) -> Breakdown:  # fmt: skip
    """Amount and count per method (top-ups: funding method; payments: card brand) over a year
    or one month of it. Raises InvalidInput, Forbidden, NotFound."""
    _check_family(family)
    if family not in METHOD_FAMILIES:
        raise InvalidInput(f"by method is for {' and '.join(METHOD_FAMILIES)}", param="family")
    check_year(year)
    check_month(month)
    _check_status(family, status)
    key = _resolve(uow, actor, family, scope, id, None)
    first = date(year, month or 1, 1)
    last = _next(first) if month else date(year + 1, 1, 1)
    filters, params = _filters(status, None, None)
    rows = uow.read(
        _SUM.format(bucket="method", filters=filters) + " ORDER BY 1, 2",  # nosec B608: fixed parts
        {**params, "family": family, "kind": key.kind, "id": key.id, "first": first, "last": last},
    )
    out = tuple(MethodRow(r.currency.strip(), r.bucket, r.amount, r.n) for r in rows)
    return Breakdown(family, key.scope, year, month, status, out)


def _next(first: date) -> date:
    return date(first.year + first.month // 12, first.month % 12 + 1, 1)


def _previous(first: date) -> date:
    return date(first.year - (first.month == 1), (first.month - 2) % 12 + 1, 1)


def by_status(
    uow: UnitOfWork, *, actor: Actor, family: str, year: int, month: int | None = None,
    scope: str = "system", id: str | None = None, side: str | None = None,
) -> Breakdown:  # fmt: skip
    """Succeeded and failed amount and count of a month and the month before (``month``
    given), or of a year and the year before, per currency, zero-filled. Raises InvalidInput,
    Forbidden, NotFound."""
    _check_family(family)
    if family == "balances":
        raise InvalidInput("balances have no status", param="family")
    check_year(year)
    check_month(month)
    key = _resolve(uow, actor, family, scope, id, side)
    if month is not None:
        current = date(year, month, 1)
        periods = [(_previous(current), current), (current, _next(current))]
        bucket = "date_trunc('month', period)::date"
    else:
        periods = [
            (date(year - 1, 1, 1), date(year, 1, 1)),
            (date(year, 1, 1), date(year + 1, 1, 1)),
        ]
        bucket = "date_trunc('year', period)::date"
    rows = uow.read(
        _SUM.format(bucket=f"status, {bucket}", filters=" AND status IN ('succeeded', 'failed')")
        .replace("GROUP BY 1, 2 ", "GROUP BY 1, 2, 3 "),  # nosec B608: fixed parts
        {"family": family, "kind": key.kind, "id": key.id, "first": periods[0][0],
         "last": periods[1][1]},
    )  # fmt: skip
    cells = {(r.currency.strip(), r.bucket, r.status): (r.amount, r.n) for r in rows}
    currencies = sorted({c for c, _, _ in cells})
    out = []
    for cur in currencies:
        for start, _ in periods:
            for st in ("succeeded", "failed"):
                amount, count = cells.get((cur, start, st), (0, 0))
                out.append(StatusRow(cur, st, start.year, start.month if month else None,
                                     amount, count))  # fmt: skip
    return Breakdown(family, key.scope, year, month, None, tuple(out))


#: Dashboard figures per scope: name -> (family, roll-up scope kind).
_DASHBOARD = {
    "system": {
        "balance": ("balances", "system"), "top_ups": ("top_ups", "system"),
        "withdrawals": ("withdrawals", "system"), "payments": ("payments", "system"),
        "transfers": ("transfers", "system"), "refunds": ("refunds", "system"),
    },
    "card": {
        "balance": ("balances", "card"), "top_ups": ("top_ups", "card"),
        "withdrawals": ("withdrawals", "card"), "payments": ("payments", "card"),
        "refunds": ("refunds", "card"), "transfers_sent": ("transfers", "card"),
        "transfers_received": ("transfers", "card_received"),
    },
    "merchant": {
        "balance": ("balances", "merchant"), "payments": ("payments", "merchant"),
        "refunds": ("refunds", "merchant"),
    },
}  # fmt: skip


def dashboard(
    uow: UnitOfWork, *, actor: Actor, scope: str = "system", id: str | None = None
) -> Dashboard:
    """All-time succeeded totals (amount and count) per currency: the system's (balance of the
    wallets, top-ups, withdrawals, payments, transfers, refunds), a card's (with transfers sent
    and received apart) or a merchant's. Raises InvalidInput, Forbidden, NotFound."""
    if scope not in _DASHBOARD:
        raise InvalidInput(f"scope is one of {', '.join(_DASHBOARD)}", param="scope")
    key = _resolve(uow, actor, "balances" if scope != "merchant" else "payments", scope, id, None)
    names = _DASHBOARD[scope]
    rows = uow.read(
        "SELECT family, scope_kind, currency, sum(amount_minor)::bigint AS amount,"
        " sum(count)::bigint AS n FROM stat_rollups"
        " WHERE family = ANY(:families) AND scope_kind = ANY(:kinds) AND scope_id = :id"
        " AND grain = 'month' AND status = 'succeeded' GROUP BY 1, 2, 3"
        " HAVING sum(amount_minor) <> 0 OR sum(count) <> 0",
        {"families": sorted({f for f, _ in names.values()}),
         "kinds": sorted({k for _, k in names.values()}), "id": key.id},
    )  # fmt: skip
    found = {(r.family, r.scope_kind, r.currency.strip()): (r.amount, r.n) for r in rows}
    out = []
    for cur in sorted({c for _, _, c in found}):
        amounts, counts = {}, {}
        for name, (family, kind) in names.items():
            amounts[name], counts[name] = found.get((family, kind, cur), (0, 0))
        out.append(Totals(cur, amounts, counts))
    return Dashboard(key.scope, tuple(out))
