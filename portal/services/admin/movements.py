"""Staff listings of every money record (top-ups, transfers, withdrawals, payments, refunds,
payouts) and of webhook deliveries, and each record's detail with what it touches.

Tables are newest first by keyset on ``(created_at, id)`` (:func:`pagination.newest_first`) over
each table's ``ix_<table>_created_at_id`` index (migration 0026 adds the ones missing), so a deep
page reads ``limit + 1`` index entries after one look-up of its cursor, as the first page does.
Filters narrow the same scan (status, currency, a date range on ``created_at`` that bounds the
index range, an amount range); the search box takes a public id (of the record, or of a card,
user, merchant, payment, event or endpoint it involves), a card's last four digits, an email or
a merchant's name. Money records are read only: nothing here changes or deletes one.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from portal.domain.errors import Forbidden, InvalidInput, NotFound
from portal.domain.ids import is_public_id
from portal.domain.money import Money
from portal.domain.types import Actor
from portal.services.shared.pagination import Page, like_pattern, newest_first
from portal.services.shared.uow import UnitOfWork


@dataclass(frozen=True, slots=True)
class Link:
    """Another record a page may link to: its kind (``card``, ``user``, ``merchant``, or a
    console record kind's object name) and public id."""

    kind: str
    public_id: str


@dataclass(frozen=True, slots=True)
class Party:
    role: str
    label: str
    link: Link | None = None


@dataclass(frozen=True, slots=True)
class MovementRow:
    public_id: str
    status: str
    created_at: datetime
    amount: Money | None
    parties: tuple[Party, ...]
    note: str = ""


@dataclass(frozen=True, slots=True)
class Filters:
    """What a table is narrowed to. Amounts are minor units of ``currency`` (required with
    them); dates are whole UTC days, both ends included."""

    q: str = ""
    status: str = ""
    currency: str = ""
    created_from: date | None = None
    created_to: date | None = None
    amount_min: int | None = None
    amount_max: int | None = None


@dataclass(frozen=True, slots=True)
class Search:
    """Where each kind of search term looks, as SQL expressions of the listing's aliases."""

    cards: tuple[str, ...] = ()
    last4: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()
    merchants: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    #: Other records named by public id: object kind -> (column, table).
    others: dict[str, tuple[str, str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Kind:
    name: str
    object: str
    label: str
    singular: str
    table: str
    alias: str
    permission: str
    statuses: tuple[str, ...]
    #: Statuses in which the record may still change (its detail page updates itself).
    open_statuses: tuple[str, ...]
    select: str
    convert: Callable[[Any], MovementRow]
    search: Search
    #: Columns whose change the detail page's poll notices.
    version: str
    money: bool = True


def _card(label: str, public_id: str | None, last4: str | None, brand: str | None = None) -> str:
    return f"{(brand or 'card').title()} ·· {last4}" if last4 else label


def _who(role: str, email: str | None, user_pid: str | None) -> Party:
    return Party(role, email or "unknown", Link("user", user_pid) if user_pid else None)


def _top_up(r: Any) -> MovementRow:
    return MovementRow(
        r.public_id, r.status, r.created_at, Money(r.amount_minor, r.currency),
        (Party("Card", _card("card", r.card_pid, r.last4, r.brand), Link("card", r.card_pid)),
         _who("Owner", r.email, r.user_pid)),
        r.method.replace("_", " "),
    )  # fmt: skip


def _transfer(r: Any) -> MovementRow:
    return MovementRow(
        r.public_id, r.status, r.created_at, Money(r.amount_minor, r.currency),
        (Party("From", _card("card", r.from_pid, r.from_last4, r.from_brand),
               Link("card", r.from_pid)),
         _who("Sender", r.from_email, r.from_user_pid),
         Party("To", _card("card", r.to_pid, r.to_last4, r.to_brand), Link("card", r.to_pid)),
         _who("Receiver", r.to_email, r.to_user_pid)),
        r.memo,
    )  # fmt: skip


def _withdrawal(r: Any) -> MovementRow:
    return MovementRow(
        r.public_id, r.status, r.created_at, Money(r.amount_minor, r.currency),
        (Party("Card", _card("card", r.card_pid, r.last4, r.brand), Link("card", r.card_pid)),
         _who("Owner", r.email, r.user_pid)),
        f"{r.bank_name} ·· {r.bank_account_last4}".strip(" ·") if r.bank_name else "",
    )  # fmt: skip


def _payment(r: Any) -> MovementRow:
    parties = [Party("Merchant", r.merchant_name, Link("merchant", r.merchant_pid)),
               Party("Card", _card("card", r.card_pid, r.card_last4, r.card_brand),
                     Link("card", r.card_pid) if r.card_pid else None)]  # fmt: skip
    if r.email:
        parties.append(_who("Cardholder", r.email, r.user_pid))
    note = r.description
    if r.refunded_minor:
        note = f"refunded {Money(r.refunded_minor, r.currency)}" + (f"; {note}" if note else "")
    return MovementRow(r.public_id, r.status, r.created_at, Money(r.amount_minor, r.currency),
                       tuple(parties), note)  # fmt: skip


def _refund(r: Any) -> MovementRow:
    return MovementRow(
        r.public_id, r.status, r.created_at, Money(r.amount_minor, r.currency),
        (Party("Payment", r.payment_pid, Link("payment", r.payment_pid)),
         Party("Merchant", r.merchant_name, Link("merchant", r.merchant_pid)),
         Party("Card", _card("card", r.card_pid, r.last4, r.brand), Link("card", r.card_pid))),
        (r.reason or "").replace("_", " "),
    )  # fmt: skip


def _payout(r: Any) -> MovementRow:
    return MovementRow(
        r.public_id, r.status, r.created_at, Money(r.amount_minor, r.currency),
        (Party("Merchant", r.merchant_name, Link("merchant", r.merchant_pid)),),
        f"{r.bank_name} ·· {r.bank_account_last4}" + (" (daily)" if r.automatic else ""),
    )  # fmt: skip


def _delivery(r: Any) -> MovementRow:
    tries = f"{r.attempts} attempt{'s' if r.attempts != 1 else ''}"
    return MovementRow(
        r.public_id, r.status, r.created_at, None,
        (Party("Merchant", r.merchant_name, Link("merchant", r.merchant_pid)),
         Party("Event", f"{r.event_type} ({r.event_pid})", None),
         Party("Endpoint", r.url, None)),
        tries,
    )  # fmt: skip


_USER = "(SELECT id FROM users WHERE public_id = :q)"
_CARD = "(SELECT id FROM cards WHERE public_id = :q)"
_MERCHANT = "(SELECT id FROM merchants WHERE public_id = :q)"

KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind(
            "top_ups", "top_up", "Top-ups", "Top-up", "top_ups", "t", "money:read",
            ("pending", "processing", "succeeded", "failed"), ("pending", "processing"),
            "SELECT t.public_id, t.status, t.created_at, t.amount_minor, t.currency, t.method,"
            " c.public_id AS card_pid, c.last4, c.brand, u.public_id AS user_pid, u.email"
            " FROM top_ups t JOIN cards c ON c.id = t.card_id JOIN users u ON u.id = t.user_id",
            _top_up,
            Search(cards=("t.card_id",), last4=("c.last4",), users=("t.user_id",),
                   emails=("u.email",)),
            "t.status, t.journal_entry_id, t.completed_at",
        ),
        Kind(
            "transfers", "transfer", "Transfers", "Transfer", "transfers", "t", "money:read",
            ("pending", "succeeded", "failed"), ("pending",),
            "SELECT t.public_id, t.status, t.created_at, t.amount_minor, t.currency, t.memo,"
            " fc.public_id AS from_pid, fc.last4 AS from_last4, fc.brand AS from_brand,"
            " fu.public_id AS from_user_pid, fu.email AS from_email,"
            " tc.public_id AS to_pid, tc.last4 AS to_last4, tc.brand AS to_brand,"
            " tu.public_id AS to_user_pid, tu.email AS to_email"
            " FROM transfers t JOIN cards fc ON fc.id = t.from_card_id"
            " JOIN users fu ON fu.id = fc.user_id JOIN cards tc ON tc.id = t.to_card_id"
            " JOIN users tu ON tu.id = tc.user_id",
            _transfer,
            Search(cards=("t.from_card_id", "t.to_card_id"), last4=("fc.last4", "tc.last4"),
                   users=("fc.user_id", "tc.user_id"), emails=("fu.email", "tu.email")),
            "t.status, t.journal_entry_id",
        ),
        Kind(
            "withdrawals", "withdrawal", "Withdrawals", "Withdrawal", "withdrawals", "w",
            "money:read", ("pending", "processing", "succeeded", "failed"),
            ("pending", "processing"),
            "SELECT w.public_id, w.status, w.created_at, w.amount_minor, w.currency,"
            " w.bank_name, w.bank_account_last4, c.public_id AS card_pid, c.last4, c.brand,"
            " u.public_id AS user_pid, u.email"
            " FROM withdrawals w JOIN cards c ON c.id = w.card_id JOIN users u ON u.id = c.user_id",
            _withdrawal,
            Search(cards=("w.card_id",), last4=("c.last4", "w.bank_account_last4"),
                   users=("c.user_id",), emails=("u.email",)),
            "w.status, w.journal_entry_id, w.completed_at, w.processing_started_at",
        ),
        Kind(
            "payments", "payment", "Payments", "Payment", "payments", "p", "money:read",
            ("requires_payment_method", "requires_capture", "succeeded", "canceled"),
            ("requires_capture",),
            "SELECT p.public_id, p.status, p.created_at, p.amount_minor, p.currency,"
            " p.refunded_minor, p.description, p.card_brand, p.card_last4,"
            " m.public_id AS merchant_pid, m.name AS merchant_name, c.public_id AS card_pid,"
            " u.public_id AS user_pid, u.email"
            " FROM payments p JOIN merchants m ON m.id = p.merchant_id"
            " LEFT JOIN cards c ON c.id = p.card_id LEFT JOIN users u ON u.id = c.user_id",
            _payment,
            Search(cards=("p.card_id",), last4=("p.card_last4",), users=("c.user_id",),
                   emails=("u.email",), merchants=("p.merchant_id",), names=("m.name",)),
            "p.status, p.updated_at, p.refunded_minor, p.capture_entry_id",
        ),
        Kind(
            "refunds", "refund", "Refunds", "Refund", "refunds", "r", "money:read",
            ("pending", "succeeded", "failed"), ("pending",),
            "SELECT r.public_id, r.status, r.created_at, r.amount_minor, r.currency, r.reason,"
            " p.public_id AS payment_pid, m.public_id AS merchant_pid, m.name AS merchant_name,"
            " c.public_id AS card_pid, c.last4, c.brand"
            " FROM refunds r JOIN payments p ON p.id = r.payment_id"
            " JOIN merchants m ON m.id = r.merchant_id JOIN cards c ON c.id = r.card_id",
            _refund,
            Search(cards=("r.card_id",), last4=("c.last4",), users=("c.user_id",),
                   merchants=("r.merchant_id",), names=("m.name",),
                   others={"payment": ("r.payment_id", "payments")}),
            "r.status, r.journal_entry_id",
        ),
        Kind(
            "payouts", "payout", "Payouts", "Payout", "payouts", "po", "money:read",
            ("pending", "processing", "paid", "failed"), ("pending", "processing"),
            "SELECT po.public_id, po.status, po.created_at, po.amount_minor, po.currency,"
            " po.bank_name, po.bank_account_last4, po.automatic, m.public_id AS merchant_pid,"
            " m.name AS merchant_name FROM payouts po JOIN merchants m ON m.id = po.merchant_id",
            _payout,
            Search(last4=("po.bank_account_last4",), merchants=("po.merchant_id",),
                   names=("m.name",)),
            "po.status, po.updated_at",
        ),
        Kind(
            "deliveries", "webhook_delivery", "Webhook deliveries", "Webhook delivery",
            "webhook_deliveries", "d", "merchants:read", ("pending", "delivered", "failed"),
            ("pending",),
            "SELECT d.public_id, d.status, d.created_at, d.attempts, ev.public_id AS event_pid,"
            " ev.type AS event_type, e.url, m.public_id AS merchant_pid, m.name AS merchant_name"
            " FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id"
            " JOIN events ev ON ev.id = d.event_id JOIN merchants m ON m.id = e.merchant_id",
            _delivery,
            Search(merchants=("e.merchant_id",), names=("m.name",),
                   others={"event": ("d.event_id", "events"),
                           "webhook_endpoint": ("d.endpoint_id", "webhook_endpoints")}),
            "d.status, d.attempts, d.last_attempt_at, d.next_attempt_at",
            money=False,
        ),
    )
}  # fmt: skip

_LAST4 = re.compile(r"^[0-9]{4}$")


def kind_of(name: str) -> Kind:
    try:
        return KINDS[name]
    except KeyError:
        raise NotFound(f"no such list {name}") from None


def _require(actor: Actor, kind: Kind) -> None:
    if not actor.can(kind.permission):
        raise Forbidden(f"missing permission {kind.permission}")


def _any(columns: tuple[str, ...], test: str) -> str:
    return " OR ".join(f"{c} {test}" for c in columns) if columns else "FALSE"


def search_condition(kind: Kind, q: str) -> tuple[str | None, dict[str, Any]]:
    """The condition a search term adds (None: no term), and its parameters. A term that can
    name nothing in this table matches nothing."""
    q = q.strip()
    if not q:
        return None, {}
    s, a = kind.search, kind.alias
    params: dict[str, Any] = {"q": q}
    if is_public_id(kind.object, q):
        return f"{a}.public_id = :q", params
    if is_public_id("card", q):
        return _any(s.cards, f"= {_CARD}"), params
    if is_public_id("user", q):
        return _any(s.users, f"= {_USER}"), params
    if is_public_id("merchant", q):
        return _any(s.merchants, f"= {_MERCHANT}"), params
    for other, (column, table) in s.others.items():
        if is_public_id(other, q):
            return f"{column} = (SELECT id FROM {table} WHERE public_id = :q)", params  # nosec B608: names from KINDS
    if _LAST4.match(q):
        return _any(s.last4, "= :q"), params
    params["q"] = like_pattern(q)
    columns = s.emails if "@" in q else s.emails + s.names
    return _any(columns, "ILIKE :q ESCAPE '\\'"), params


def conditions(kind: Kind, filters: Filters) -> tuple[list[str], dict[str, Any]]:
    """The WHERE conditions (and parameters) of ``filters``. Raises InvalidInput (naming the
    filter)."""
    a = kind.alias
    where: list[str] = []
    params: dict[str, Any] = {}
    term, term_params = search_condition(kind, filters.q)
    if term is not None:
        where.append(term)
        params.update(term_params)
    if filters.status:
        if filters.status not in kind.statuses:
            raise InvalidInput("choose a status from the list", param="status")
        where.append(f"{a}.status = :status")
        params["status"] = filters.status
    if filters.created_from and filters.created_to and filters.created_from > filters.created_to:
        raise InvalidInput("the first day comes after the last", param="created_from")
    if filters.created_from:
        where.append(f"{a}.created_at >= :created_from")
        params["created_from"] = datetime.combine(filters.created_from, time.min, tzinfo=UTC)
    if filters.created_to:
        where.append(f"{a}.created_at < :created_to")
        end = filters.created_to + timedelta(days=1)
        params["created_to"] = datetime.combine(end, time.min, tzinfo=UTC)
    if kind.money:
        if filters.currency:
            where.append(f"{a}.currency = :currency")
            params["currency"] = filters.currency
        if (filters.amount_min is not None or filters.amount_max is not None) and not (
            filters.currency
        ):
            raise InvalidInput("choose a currency to filter by amount", param="currency")
        if (
            filters.amount_min is not None
            and filters.amount_max is not None
            and filters.amount_min > filters.amount_max
        ):
            raise InvalidInput("the smallest amount is above the largest", param="amount_min")
        if filters.amount_min is not None:
            where.append(f"{a}.amount_minor >= :amount_min")
            params["amount_min"] = filters.amount_min
        if filters.amount_max is not None:
            where.append(f"{a}.amount_minor <= :amount_max")
            params["amount_max"] = filters.amount_max
    return where, params


def list_records(
    uow: UnitOfWork,
    *,
    actor: Actor,
    kind: str,
    filters: Filters = Filters(),  # noqa: B008 (frozen)
    starting_after: str | None = None,
    limit: int = 25,
) -> Page[MovementRow]:
    """One page of ``kind``'s records, newest first. Raises NotFound (kind), Forbidden,
    InvalidInput (a filter, or "starting_after")."""
    spec = kind_of(kind)
    _require(actor, spec)
    where, params = conditions(spec, filters)

    def work(u: UnitOfWork) -> Page[MovementRow]:
        return newest_first(
            u, select=spec.select, table=spec.table, alias=spec.alias, convert=spec.convert,
            limit=limit, starting_after=starting_after, kind=spec.object, where=where,
            params=params,
        )  # fmt: skip

    return uow.run(work)


# -- detail -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Fact:
    label: str
    value: str
    link: Link | None = None


@dataclass(frozen=True, slots=True)
class PostingLine:
    account: str
    link: Link | None
    amount: Money

    @property
    def debit(self) -> str:
        return (
            Money(-self.amount.amount_minor, self.amount.currency).format()
            if (self.amount.amount_minor < 0)
            else ""
        )

    @property
    def credit(self) -> str:
        return self.amount.format() if self.amount.amount_minor > 0 else ""


@dataclass(frozen=True, slots=True)
class EntryView:
    id: int
    kind: str
    description: str
    created_at: datetime
    postings: tuple[PostingLine, ...]


@dataclass(frozen=True, slots=True)
class HoldView:
    kind: str
    amount: Money
    status: str
    created_at: datetime
    expires_at: datetime
    resolved_at: datetime | None


@dataclass(frozen=True, slots=True)
class Cell:
    text: str
    link: Link | None = None
    badge: bool = False
    #: An amount: kept on one line.
    num: bool = False


@dataclass(frozen=True, slots=True)
class Related:
    title: str
    headers: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]
    empty: str


@dataclass(frozen=True, slots=True)
class Record:
    kind: str
    object: str
    singular: str
    id: int
    public_id: str
    status: str
    amount: Money | None
    created_at: datetime
    facts: tuple[Fact, ...]
    entries: tuple[EntryView, ...]
    holds: tuple[HoldView, ...]
    related: tuple[Related, ...]
    version: str

    @property
    def live(self) -> bool:
        return self.status in KINDS[self.kind].open_statuses


def _when(at: datetime | None) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S UTC") if at else ""


_ENTRIES = """
SELECT je.id, je.kind, je.description, je.created_at, p.amount_minor, p.currency,
       a.kind AS account_kind, c.public_id AS card_pid, c.last4, c.brand,
       m.public_id AS merchant_pid, m.name AS merchant_name
  FROM journal_entries je
  JOIN postings p ON p.journal_entry_id = je.id
  JOIN accounts a ON a.id = p.account_id
  LEFT JOIN cards c ON c.id = a.card_id
  LEFT JOIN merchants m ON m.id = a.merchant_id
 WHERE je.id = ANY(CAST(:ids AS bigint[]))
 ORDER BY je.id, p.id
"""


def _entries(u: UnitOfWork, ids: list[int | None]) -> tuple[EntryView, ...]:
    wanted = [i for i in ids if i is not None]
    if not wanted:
        return ()
    grouped: dict[int, tuple[Any, list[PostingLine]]] = {}
    for r in u.execute(_ENTRIES, {"ids": wanted}):
        if r.account_kind == "wallet":
            line = PostingLine(f"Wallet of card ·· {r.last4}", Link("card", r.card_pid),
                               Money(r.amount_minor, r.currency))  # fmt: skip
        elif r.account_kind == "merchant":
            line = PostingLine(f"Balance of {r.merchant_name}", Link("merchant", r.merchant_pid),
                               Money(r.amount_minor, r.currency))  # fmt: skip
        else:
            line = PostingLine(f"System: {r.account_kind} ({r.currency})", None,
                               Money(r.amount_minor, r.currency))  # fmt: skip
        grouped.setdefault(r.id, (r, []))[1].append(line)
    return tuple(
        EntryView(r.id, r.kind, r.description, r.created_at, tuple(lines))
        for r, lines in (grouped[i] for i in wanted if i in grouped)
    )


def _holds(u: UnitOfWork, ids: list[int | None]) -> tuple[HoldView, ...]:
    wanted = [i for i in ids if i is not None]
    if not wanted:
        return ()
    rows = u.execute(
        "SELECT kind, amount_minor, currency, status, created_at, expires_at, resolved_at"
        " FROM holds WHERE id = ANY(CAST(:ids AS bigint[])) ORDER BY id",
        {"ids": wanted},
    )
    return tuple(
        HoldView(
            r.kind,
            Money(r.amount_minor, r.currency),
            r.status,
            r.created_at,
            r.expires_at,
            r.resolved_at,
        )  # fmt: skip
        for r in rows
    )


def _card_fact(label: str, pid: str | None, last4: str | None, brand: str | None) -> Fact:
    return Fact(label, _card("card", pid, last4, brand) + (f" ({pid})" if pid else ""),
                Link("card", pid) if pid else None)  # fmt: skip


def _user_fact(label: str, pid: str | None, email: str | None) -> Fact:
    return Fact(label, email or "unknown", Link("user", pid) if pid else None)


def _merchant_fact(pid: str, name: str) -> Fact:
    return Fact("Merchant", name, Link("merchant", pid))


def _money(minor: int | None, currency: str) -> str:
    return "" if minor is None else Money(minor, currency).format()


def _version(u: UnitOfWork, spec: Kind, public_id: str) -> str | None:
    return u.execute(
        f"SELECT md5(concat_ws('|', {spec.version})) AS v FROM {spec.table} {spec.alias}"  # nosec B608: names from KINDS
        f" WHERE {spec.alias}.public_id = :id",
        {"id": public_id},
    ).scalar()


def version(uow: UnitOfWork, *, actor: Actor, kind: str, public_id: str) -> str:
    """What the detail page's poll compares: changes whenever the record's status or money
    does. Raises NotFound, Forbidden."""
    spec = kind_of(kind)
    _require(actor, spec)
    if not is_public_id(spec.object, public_id):
        raise NotFound(f"no such {spec.singular.lower()}", param="id")
    found = uow.run(lambda u: _version(u, spec, public_id))
    if found is None:
        raise NotFound(f"no such {spec.singular.lower()}", param="id")
    return found


def _detail_top_up(u: UnitOfWork, pid: str) -> Any:
    r = u.execute(
        "SELECT t.*, c.public_id AS card_pid, c.last4, c.brand, us.public_id AS user_pid,"
        " us.email FROM top_ups t JOIN cards c ON c.id = t.card_id"
        " JOIN users us ON us.id = t.user_id WHERE t.public_id = :id",
        {"id": pid},
    ).first()
    if r is None:
        return None
    facts = (
        _card_fact("Card", r.card_pid, r.last4, r.brand), _user_fact("Owner", r.user_pid, r.email),
        Fact("Method", r.method.replace("_", " ")),
        Fact("Funding reference", r.funding_reference or ""),
        Fact("Failure", r.failure_code or ""),
        Fact("Processing since", _when(r.processing_started_at)),
        Fact("Completed", _when(r.completed_at)),
        Fact("Created by", f"{r.created_by_kind} {r.created_by_id or ''}".strip()),
    )  # fmt: skip
    return r, facts, _entries(u, [r.journal_entry_id]), (), ()


def _detail_transfer(u: UnitOfWork, pid: str) -> Any:
    r = u.execute(
        "SELECT t.*, fc.public_id AS from_pid, fc.last4 AS from_last4, fc.brand AS from_brand,"
        " fu.public_id AS from_user_pid, fu.email AS from_email, tc.public_id AS to_pid,"
        " tc.last4 AS to_last4, tc.brand AS to_brand, tu.public_id AS to_user_pid,"
        " tu.email AS to_email FROM transfers t JOIN cards fc ON fc.id = t.from_card_id"
        " JOIN users fu ON fu.id = fc.user_id JOIN cards tc ON tc.id = t.to_card_id"
        " JOIN users tu ON tu.id = tc.user_id WHERE t.public_id = :id",
        {"id": pid},
    ).first()
    if r is None:
        return None
    facts = (
        _card_fact("From card", r.from_pid, r.from_last4, r.from_brand),
        _user_fact("Sender", r.from_user_pid, r.from_email),
        _card_fact("To card", r.to_pid, r.to_last4, r.to_brand),
        _user_fact("Receiver", r.to_user_pid, r.to_email),
        Fact("Addressed to", "a person (email, handle or payee)" if r.to_person else "a card"),
        Fact("Memo", r.memo), Fact("Failure", r.failure_code or ""),
    )  # fmt: skip
    return r, facts, _entries(u, [r.journal_entry_id]), (), ()


def _detail_withdrawal(u: UnitOfWork, pid: str) -> Any:
    r = u.execute(
        "SELECT w.*, c.public_id AS card_pid, c.last4, c.brand, us.public_id AS user_pid,"
        " us.email FROM withdrawals w JOIN cards c ON c.id = w.card_id"
        " JOIN users us ON us.id = c.user_id WHERE w.public_id = :id",
        {"id": pid},
    ).first()
    if r is None:
        return None
    facts = (
        _card_fact("Card", r.card_pid, r.last4, r.brand), _user_fact("Owner", r.user_pid, r.email),
        Fact("Bank account", f"{r.bank_name} ·· {r.bank_account_last4}"),
        Fact("Payout reference", r.payout_reference or ""),
        Fact("Failure", r.failure_code or ""),
        Fact("Processing since", _when(r.processing_started_at)),
        Fact("Completed", _when(r.completed_at)),
    )  # fmt: skip
    hold = u.execute("SELECT journal_entry_id FROM holds WHERE id = :h", {"h": r.hold_id}).scalar()
    return r, facts, _entries(u, [r.journal_entry_id, hold]), _holds(u, [r.hold_id]), ()


def _detail_payment(u: UnitOfWork, pid: str) -> Any:
    r = u.execute(
        "SELECT p.*, m.public_id AS merchant_pid, m.name AS merchant_name,"
        " c.public_id AS card_pid, us.public_id AS user_pid, us.email, k.public_id AS key_pid,"
        " k.name AS key_name FROM payments p JOIN merchants m ON m.id = p.merchant_id"
        " LEFT JOIN cards c ON c.id = p.card_id LEFT JOIN users us ON us.id = c.user_id"
        " LEFT JOIN api_keys k ON k.id = p.api_key_id WHERE p.public_id = :id",
        {"id": pid},
    ).first()
    if r is None:
        return None
    error = (r.last_payment_error or {}).get("code") or ""
    facts = (
        _merchant_fact(r.merchant_pid, r.merchant_name),
        _card_fact("Card", r.card_pid, r.card_last4, r.card_brand),
        _user_fact("Cardholder", r.user_pid, r.email),
        Fact("API key", f"{r.key_name} ({r.key_pid})" if r.key_pid else ""),
        Fact("Capture", r.capture_method),
        Fact("Received", _money(r.received_minor, r.currency)),
        Fact("Refunded", _money(r.refunded_minor, r.currency)),
        Fact("Fee", _money(r.fee_minor, r.currency)),
        Fact("Declined", error), Fact("Canceled because", r.cancellation_reason or ""),
        Fact("Description", r.description), Fact("Captured", _when(r.captured_at)),
    )  # fmt: skip
    refunds = u.execute(
        "SELECT public_id, amount_minor, currency, status, reason, created_at, journal_entry_id"
        " FROM refunds WHERE payment_id = :p ORDER BY created_at, id",
        {"p": r.id},
    ).all()
    related = (
        Related(
            "Refunds of this payment", ("Refund", "Created", "Status", "Amount", "Reason"),
            tuple((Cell(x.public_id, Link("refund", x.public_id)), Cell(_when(x.created_at)),
                   Cell(x.status, badge=True), Cell(_money(x.amount_minor, x.currency), num=True),
                   Cell((x.reason or "").replace("_", " "))) for x in refunds),
            "Nothing of this payment was refunded.",
        ),
        _balance_transactions(u, "payment_id", r.id, "Balance transactions of this payment"),
    )  # fmt: skip
    hold = u.execute("SELECT journal_entry_id FROM holds WHERE id = :h", {"h": r.hold_id}).scalar()
    entries = _entries(u, [r.capture_entry_id, hold, *[x.journal_entry_id for x in refunds]])
    return r, facts, entries, _holds(u, [r.hold_id]), related


def _balance_transactions(u: UnitOfWork, column: str, value: int, title: str) -> Related:
    rows = u.execute(
        "SELECT public_id, type, amount_minor, fee_minor, net_minor, currency, status,"  # nosec B608: column is a constant
        f" available_on, created_at FROM balance_transactions WHERE {column} = :v"
        " ORDER BY created_at, id",
        {"v": value},
    ).all()
    return Related(
        title, ("Transaction", "Type", "Amount", "Fee", "Net", "Status", "Available on"),
        tuple((Cell(x.public_id), Cell(x.type.replace("_", " ")),
               Cell(_money(x.amount_minor, x.currency), num=True),
               Cell(_money(x.fee_minor, x.currency), num=True),
               Cell(_money(x.net_minor, x.currency), num=True), Cell(x.status, badge=True),
               Cell(_when(x.available_on))) for x in rows),
        "No balance transaction.",
    )  # fmt: skip


def _detail_refund(u: UnitOfWork, pid: str) -> Any:
    r = u.execute(
        "SELECT r.*, p.public_id AS payment_pid, m.public_id AS merchant_pid,"
        " m.name AS merchant_name, c.public_id AS card_pid, c.last4, c.brand"
        " FROM refunds r JOIN payments p ON p.id = r.payment_id"
        " JOIN merchants m ON m.id = r.merchant_id JOIN cards c ON c.id = r.card_id"
        " WHERE r.public_id = :id",
        {"id": pid},
    ).first()
    if r is None:
        return None
    facts = (
        Fact("Payment", r.payment_pid, Link("payment", r.payment_pid)),
        _merchant_fact(r.merchant_pid, r.merchant_name),
        _card_fact("Card", r.card_pid, r.last4, r.brand),
        Fact("Reason", (r.reason or "").replace("_", " ")),
        Fact("Failure", r.failure_reason or ""),
    )  # fmt: skip
    related = (_balance_transactions(u, "refund_id", r.id, "Balance transactions of this refund"),)
    return r, facts, _entries(u, [r.journal_entry_id]), (), related


def _detail_payout(u: UnitOfWork, pid: str) -> Any:
    r = u.execute(
        "SELECT po.*, m.public_id AS merchant_pid, m.name AS merchant_name FROM payouts po"
        " JOIN merchants m ON m.id = po.merchant_id WHERE po.public_id = :id",
        {"id": pid},
    ).first()
    if r is None:
        return None
    facts = (
        _merchant_fact(r.merchant_pid, r.merchant_name),
        Fact("Bank account", f"{r.bank_name} ·· {r.bank_account_last4}"),
        Fact("Kind", "daily (automatic)" if r.automatic else "on request"),
        Fact("Balance before", _money(r.opening_balance_minor, r.currency)),
        Fact("Processor reference", r.processor_reference or ""),
        Fact("Failure", r.failure_code or ""),
        Fact("Processing since", _when(r.processing_started_at)),
        Fact("Paid", _when(r.paid_at)), Fact("Failed", _when(r.failed_at)),
        Fact("Description", r.description),
    )  # fmt: skip
    related = (_balance_transactions(u, "payout_id", r.id, "Balance transactions it pays out"),)
    return r, facts, _entries(u, [r.journal_entry_id, r.failure_entry_id]), (), related


def _detail_delivery(u: UnitOfWork, pid: str) -> Any:
    r = u.execute(
        "SELECT d.*, ev.public_id AS event_pid, ev.type AS event_type, e.public_id AS endpoint_pid,"
        " e.url, m.public_id AS merchant_pid, m.name AS merchant_name"
        " FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id"
        " JOIN events ev ON ev.id = d.event_id JOIN merchants m ON m.id = e.merchant_id"
        " WHERE d.public_id = :id",
        {"id": pid},
    ).first()
    if r is None:
        return None
    facts = (
        _merchant_fact(r.merchant_pid, r.merchant_name),
        Fact("Event", f"{r.event_type} ({r.event_pid})"),
        Fact("Endpoint", f"{r.url} ({r.endpoint_pid})"),
        Fact("Attempts", str(r.attempts)),
        Fact("Next attempt", _when(r.next_attempt_at)),
        Fact("Last attempt", _when(r.last_attempt_at)),
        Fact("Delivered", _when(r.delivered_at)),
    )  # fmt: skip
    attempts = u.execute(
        "SELECT attempted_at, status_code, duration_ms, error, left(response_body, 200) AS body"
        " FROM webhook_attempts WHERE delivery_id = :d ORDER BY id",
        {"d": r.id},
    ).all()
    related = (
        Related(
            "Attempts", ("When", "Answer", "Took", "Error or response"),
            tuple((Cell(_when(x.attempted_at)),
                   Cell(str(x.status_code) if x.status_code is not None else "no answer"),
                   Cell(f"{x.duration_ms} ms"), Cell(x.error or x.body)) for x in attempts),
            "Not attempted yet.",
        ),
    )  # fmt: skip
    return r, facts, (), (), related


_DETAILS: dict[str, Callable[[UnitOfWork, str], Any]] = {
    "top_ups": _detail_top_up, "transfers": _detail_transfer, "withdrawals": _detail_withdrawal,
    "payments": _detail_payment, "refunds": _detail_refund, "payouts": _detail_payout,
    "deliveries": _detail_delivery,
}  # fmt: skip


def get_record(uow: UnitOfWork, *, actor: Actor, kind: str, public_id: str) -> Record:
    """One record with what it touches: its journal entries and their postings, holds, the
    cards, people and merchant involved, and related records. Raises NotFound, Forbidden."""
    spec = kind_of(kind)
    _require(actor, spec)
    if not is_public_id(spec.object, public_id):
        raise NotFound(f"no such {spec.singular.lower()}", param="id")

    def work(u: UnitOfWork) -> Record | None:
        seen = _version(u, spec, public_id)  # first: a change while reading shows next poll
        found = _DETAILS[kind](u, public_id)
        if found is None or seen is None:
            return None
        r, facts, entries, holds, related = found
        amount = Money(r.amount_minor, r.currency) if spec.money else None
        return Record(
            kind, spec.object, spec.singular, r.id, r.public_id, r.status, amount, r.created_at,
            tuple(f for f in facts if f.value), entries, holds, related, seen,
        )  # fmt: skip

    record = uow.run(work)
    if record is None:
        raise NotFound(f"no such {spec.singular.lower()}", param="id")
    return record
