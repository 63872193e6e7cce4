"""The withdrawal and payout queues: what waits for staff, oldest first, with its age.

A queue holds the open items (``pending``, and ``processing`` while the processor has them).
Pages are keyset on ``(created_at, id)`` ascending over the open-items partial indexes
(``ix_withdrawals_open``, ``ix_payouts_open``), so a long queue pages as cheaply as a short one.
Acting on an item goes through the services that own it (``wallet.confirm_withdrawal`` /
``fail_withdrawal``, ``payouts.confirm_payout`` / ``fail_payout``), which refuse a
``processing`` one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from portal.domain.errors import Forbidden, InvalidInput
from portal.domain.ids import is_public_id
from portal.domain.money import Money
from portal.domain.types import Actor
from portal.services.admin.movements import Link, Party
from portal.services.shared.pagination import Page, check_limit, page_of
from portal.services.shared.uow import UnitOfWork

#: Reasons staff may give for failing an item (stored as its failure code).
FAILURE_REASONS: dict[str, str] = {
    "payout_failed": "The bank refused the payout",
    "account_closed": "The bank account is closed",
    "bank_details_invalid": "The bank details are wrong",
    "risk_review": "Stopped by a risk review",
    "requested_by_customer": "The customer asked to cancel it",
}


@dataclass(frozen=True, slots=True)
class QueueItem:
    id: int
    public_id: str
    status: str
    amount: Money
    created_at: datetime
    processing_started_at: datetime | None
    parties: tuple[Party, ...]
    bank: str

    @property
    def processing(self) -> bool:
        return self.status == "processing"


@dataclass(frozen=True, slots=True)
class Queue:
    kind: str
    count: int
    oldest_at: datetime | None
    page: Page[QueueItem]


_QUEUES: dict[str, tuple[str, str, str]] = {
    "withdrawals": (
        "w",
        "withdrawals",
        "SELECT w.id, w.public_id, w.status, w.amount_minor, w.currency, w.created_at,"
        " w.processing_started_at, w.bank_name, w.bank_account_last4,"
        " c.public_id AS card_pid, c.last4, c.brand, u.public_id AS user_pid, u.email"
        " FROM withdrawals w JOIN cards c ON c.id = w.card_id JOIN users u ON u.id = c.user_id",
    ),
    "payouts": (
        "po",
        "payouts",
        "SELECT po.id, po.public_id, po.status, po.amount_minor, po.currency, po.created_at,"
        " po.processing_started_at, po.bank_name, po.bank_account_last4,"
        " m.public_id AS merchant_pid, m.name AS merchant_name"
        " FROM payouts po JOIN merchants m ON m.id = po.merchant_id",
    ),
}
_OBJECT = {"withdrawals": "withdrawal", "payouts": "payout"}


def _item(kind: str, r: Any) -> QueueItem:
    if kind == "withdrawals":
        parties: tuple[Party, ...] = (
            Party("Card", f"{r.brand.title()} ·· {r.last4}", Link("card", r.card_pid)),
            Party("Owner", r.email, Link("user", r.user_pid)),
        )
    else:
        parties = (Party("Merchant", r.merchant_name, Link("merchant", r.merchant_pid)),)
    return QueueItem(
        r.id, r.public_id, r.status, Money(r.amount_minor, r.currency), r.created_at,
        r.processing_started_at, parties, f"{r.bank_name} ·· {r.bank_account_last4}",
    )  # fmt: skip


def queue(
    uow: UnitOfWork, *, actor: Actor, kind: str, starting_after: str | None = None,
    limit: int = 25,
) -> Queue:  # fmt: skip
    """The open items of the withdrawal or payout queue, oldest first, after
    ``starting_after`` (a public id). Raises Forbidden (money:read), InvalidInput."""
    if not actor.can("money:read"):
        raise Forbidden("missing permission money:read")
    if kind not in _QUEUES:
        raise InvalidInput("no such queue", param="kind")
    alias, table, select = _QUEUES[kind]
    size = check_limit(limit)
    if starting_after is not None and not is_public_id(_OBJECT[kind], starting_after):
        raise InvalidInput("starting_after must be an item of this queue", param="starting_after")
    open_ = f"{alias}.status IN ('pending', 'processing')"

    def work(u: UnitOfWork) -> Queue:
        head = u.execute(
            f"SELECT count(*) AS n, min(created_at) AS oldest FROM {table} {alias}"  # nosec B608: names from _QUEUES
            f" WHERE {open_}"
        ).one()
        where = [open_]
        params: dict[str, Any] = {"n": size + 1}
        if starting_after is not None:
            cursor = u.execute(
                f"SELECT created_at, id FROM {table} WHERE public_id = :p",  # nosec B608: names from _QUEUES
                {"p": starting_after},
            ).first()
            if cursor is None:
                raise InvalidInput("starting_after is not an item of this queue",
                                   param="starting_after")  # fmt: skip
            where.append(f"({alias}.created_at, {alias}.id) > (:at, :id)")
            params.update(at=cursor.created_at, id=cursor.id)
        rows = u.execute(
            f"{select} WHERE {' AND '.join(where)}"  # nosec B608: names from _QUEUES
            f" ORDER BY {alias}.created_at, {alias}.id LIMIT :n",
            params,
        ).all()
        return Queue(kind, head.n, head.oldest, page_of([_item(kind, r) for r in rows], size))

    return uow.run(work)


def version(uow: UnitOfWork, *, actor: Actor, kind: str) -> str:
    """What the queue page's poll compares: changes when an item joins, leaves or changes
    status. Raises Forbidden (money:read), InvalidInput."""
    if not actor.can("money:read"):
        raise Forbidden("missing permission money:read")
    if kind not in _QUEUES:
        raise InvalidInput("no such queue", param="kind")
    _alias, table, _select = _QUEUES[kind]
    rows = uow.read(
        "SELECT md5(coalesce(string_agg(public_id || ':' || status, ','"  # nosec B608: names from _QUEUES
        f" ORDER BY created_at, id), '')) AS v FROM {table}"
        " WHERE status IN ('pending', 'processing')"
    )
    return str(rows[0].v)
