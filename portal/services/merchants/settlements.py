"""Balance transactions and a merchant's balance.

Every journal entry that touches a merchant's balance account writes one balance transaction
(``txn_``) in the same statement, whose ``net`` is exactly that entry's posting on the account:
a captured payment (``amount`` what the customer paid, ``fee`` Portal's, ``net`` the rest), a
refund (negative, the fee is kept), a payout (negative) and a failed payout's return (positive).
A payment's funds are ``pending`` until ``available_on``, the start of the UTC day
``settlement_delay_days`` after its capture; everything else is available at once. Refunds draw
on the whole balance (pending and available, checked under the account's lock by the refund);
payouts take only available transactions, so a refund after a payout is covered by what is
still pending or refused, and no customer account goes negative.

``available + pending`` of a currency is the account's ledger balance; ``portal ledger verify``
checks that, and that each transaction's net is its entry's posting.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from portal.domain.errors import InvalidInput, NotFound
from portal.domain.ids import is_public_id
from portal.domain.types import Actor
from portal.services.merchants import events
from portal.services.merchants.merchants import access, page_after
from portal.services.merchants.objects import unix
from portal.services.shared.pagination import Page, check_limit, page_of
from portal.services.shared.uow import UnitOfWork

TYPES = ("payment", "refund", "fee", "adjustment", "payout", "payout_failure")


def available_on(uow: UnitOfWork, captured: datetime) -> datetime:
    """When captured funds become available: the start of the UTC day ``settlement_delay_days``
    after ``captured``, or at once when the delay is 0."""
    days = uow.settings.settlement_delay_days
    if days <= 0:
        return captured
    day = captured.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day + timedelta(days=days)


def _id(value: int | str | None) -> str:
    """A source column's value: an id, or the name of a deferred part whose row it is."""
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return f"(SELECT id FROM {value})"  # nosec B608
    return str(int(value))


def record(
    uow: UnitOfWork,
    *,
    merchant_id: int,
    account_id: int,
    currency: str,
    type: str,
    amount: int,
    fee: int = 0,
    payment: int | str | None = None,
    refund: int | str | None = None,
    payout: int | str | None = None,
    paid_out_by: int | str | None = None,
    description: str = "",
) -> None:
    """Defer the balance transaction of the movement's journal entry (the deferred part
    ``entry``). ``payment``, ``refund`` and ``payout`` (the payout that moved the money, for
    ``payout`` and ``payout_failure``) are ids or names of deferred parts; ``paid_out_by`` is the
    payout that pays this transaction out (a payout's own transaction names itself)."""
    if type not in TYPES:
        raise ValueError(f"unknown balance transaction type {type!r}")
    now = uow.now()
    on = available_on(uow, now) if type == "payment" else now
    uow.defer(
        "INSERT INTO balance_transactions (merchant_id, account_id, currency, type, amount_minor,"  # nosec B608
        " fee_minor, net_minor, status, available_on, journal_entry_id, payment_id, refund_id,"
        " payout_id, source_payout_id, description, created_at)"
        " VALUES (:m, :account, :cur, :type, :amount, :fee, :net, :status, :on,"
        f" (SELECT id FROM entry), {_id(payment)}, {_id(refund)}, {_id(paid_out_by)},"
        f" {_id(payout)}, :description, :now)",
        name="balance_transaction", m=merchant_id, account=account_id, cur=currency, type=type,
        amount=amount, fee=fee, net=amount - fee,
        status="available" if on <= now else "pending", on=on,
        description=description[:255], now=now,
    )  # fmt: skip


# -- the balance ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class BalanceAmounts:
    currency: str
    available: int
    pending: int


def _balances(uow: UnitOfWork, merchant_id: int) -> list[BalanceAmounts]:
    rows = uow.execute(
        "SELECT a.currency,"
        " COALESCE(sum(t.net_minor) FILTER (WHERE t.status = 'available'"
        "   OR t.available_on <= :now), 0) AS available,"
        " COALESCE(sum(t.net_minor) FILTER (WHERE t.status = 'pending'"
        "   AND t.available_on > :now), 0) AS pending"
        " FROM accounts a LEFT JOIN balance_transactions t ON t.account_id = a.id"
        " WHERE a.merchant_id = :m AND a.kind = 'merchant'"
        " GROUP BY a.currency ORDER BY a.currency",
        {"m": merchant_id, "now": uow.now()},
    ).all()
    return [BalanceAmounts(r.currency, int(r.available), int(r.pending)) for r in rows]


def balance_object(balances: list[BalanceAmounts]) -> dict[str, Any]:
    return {
        "object": "balance",
        "available": [{"amount": b.available, "currency": b.currency.lower()} for b in balances],
        "pending": [{"amount": b.pending, "currency": b.currency.lower()} for b in balances],
    }


def get_balance(uow: UnitOfWork, *, actor: Actor, merchant: str | int) -> list[BalanceAmounts]:
    """The merchant's balance per currency: available (may be paid out) and pending (captured,
    not yet available). Raises NotFound, Forbidden."""

    def work(u: UnitOfWork) -> list[BalanceAmounts]:
        m = access(u, actor, merchant, "read").merchant
        return _balances(u, m.id)

    return uow.run(work)


def release_available(uow: UnitOfWork, *, limit: int = 1000) -> int:
    """Mark pending transactions whose day has come available, and tell each merchant whose
    balance grew (``balance.available``). Returns how many became available."""

    def work(u: UnitOfWork) -> int:
        rows = u.execute(
            "UPDATE balance_transactions SET status = 'available' WHERE id IN ("
            " SELECT id FROM balance_transactions WHERE status = 'pending'"
            " AND available_on <= :now ORDER BY available_on, id LIMIT :limit"
            " FOR UPDATE SKIP LOCKED) RETURNING merchant_id",
            {"now": u.now(), "limit": limit},
        ).all()
        for merchant_id in sorted({r.merchant_id for r in rows}):
            events.record(
                u, merchant_id, ("balance.available", balance_object(_balances(u, merchant_id)),
                                 None),
            )  # fmt: skip
            u.flush()
        return len(rows)

    return uow.run(work)


# -- balance transactions ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class BalanceTransactionView:
    id: str
    type: str
    amount: int
    fee: int
    net: int
    currency: str
    status: str
    available_on: datetime
    created: datetime
    source: str | None
    payout: str | None
    description: str


_SELECT = (
    "SELECT t.public_id, t.type, t.amount_minor, t.fee_minor, t.net_minor, t.currency,"
    " CASE WHEN t.status = 'pending' AND t.available_on <= :now THEN 'available'"
    " ELSE t.status END AS status, t.available_on, t.created_at, t.description,"
    " COALESCE(r.public_id, p.public_id, sp.public_id) AS source, po.public_id AS payout"
    " FROM balance_transactions t"
    " LEFT JOIN payments p ON p.id = t.payment_id LEFT JOIN refunds r ON r.id = t.refund_id"
    " LEFT JOIN payouts sp ON sp.id = t.source_payout_id"
    " LEFT JOIN payouts po ON po.id = t.payout_id"
)


def _view(row: Any) -> BalanceTransactionView:
    return BalanceTransactionView(
        id=row.public_id, type=row.type, amount=row.amount_minor, fee=row.fee_minor,
        net=row.net_minor, currency=row.currency, status=row.status,
        available_on=row.available_on, created=row.created_at, source=row.source,
        payout=row.payout, description=row.description,
    )  # fmt: skip


def balance_transaction_object(t: BalanceTransactionView) -> dict[str, Any]:
    return {
        "id": t.id, "object": "balance_transaction", "type": t.type, "amount": t.amount,
        "fee": t.fee, "net": t.net, "currency": t.currency.lower(), "status": t.status,
        "available_on": unix(t.available_on) or 0, "created": unix(t.created) or 0,
        "source": t.source, "payout": t.payout, "description": t.description,
    }  # fmt: skip


def get_balance_transaction(
    uow: UnitOfWork, *, actor: Actor, merchant: str | int, transaction: str
) -> BalanceTransactionView:
    """One of the merchant's balance transactions. Raises NotFound, Forbidden."""

    def work(u: UnitOfWork) -> BalanceTransactionView:
        m = access(u, actor, merchant, "read").merchant
        row = None
        if is_public_id("balance_transaction", transaction):
            row = u.execute(
                _SELECT + " WHERE t.public_id = :id AND t.merchant_id = :m",
                {"id": transaction, "m": m.id, "now": u.now()},
            ).first()
        if row is None:
            raise NotFound("no such balance transaction", param="balance_transaction")
        return _view(row)

    return uow.run(work)


def payout_rows(uow: UnitOfWork, payout_id: int) -> list[BalanceTransactionView]:
    """The transactions a payout paid out, oldest first (its own transaction left out)."""
    rows = uow.execute(
        _SELECT + " WHERE t.payout_id = :po AND t.type <> 'payout' ORDER BY t.created_at, t.id",
        {"po": payout_id, "now": uow.now()},
    ).all()
    return [_view(r) for r in rows]


def list_balance_transactions(
    uow: UnitOfWork,
    *,
    actor: Actor,
    merchant: str | int,
    payout: str | None = None,
    type: str | None = None,
    currency: str | None = None,
    limit: int | None = None,
    starting_after: str | None = None,
) -> Page[BalanceTransactionView]:
    """The merchant's balance transactions, newest first by cursor; filter by the payout that
    paid them out (``po_...``: the rows of its report), type and currency. Raises NotFound,
    Forbidden, InvalidInput."""
    size = check_limit(limit)
    if type is not None and type not in TYPES:
        raise InvalidInput(f"type is one of {', '.join(TYPES)}", param="type")
    if payout is not None and not is_public_id("payout", payout):
        raise InvalidInput("payout is a payout id (po_...)", param="payout")

    def work(u: UnitOfWork) -> Page[BalanceTransactionView]:
        m = access(u, actor, merchant, "read").merchant
        where = ["t.merchant_id = :m"]
        params: dict[str, Any] = {"m": m.id, "limit": size + 1, "now": u.now()}
        if payout is not None:
            where.append("po.public_id = :payout AND t.type <> 'payout'")
            params["payout"] = payout
        if type is not None:
            where.append("t.type = :type")
            params["type"] = type
        if currency is not None:
            where.append("t.currency = :cur")
            params["cur"] = currency.upper()
        page_after(u, table="balance_transactions", alias="t", kind="balance_transaction",
                   starting_after=starting_after, merchant_id=m.id, where=where,
                   params=params)  # fmt: skip
        rows = u.execute(
            _SELECT + " WHERE " + " AND ".join(where)
            + " ORDER BY t.created_at DESC, t.id DESC LIMIT :limit",
            params,
        ).all()  # fmt: skip
        return page_of([_view(r) for r in rows], size)

    return uow.run(work)
