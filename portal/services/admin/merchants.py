"""The console's merchants: every merchant as a paged table by state (applications waiting,
live ones by status, archived), a merchant's balance, the version its page polls, and deleting
a merchant that never took money.

Decisions (approve, reject, suspend, reactivate, archive, restore) are ``merchants.decide``'s;
keys' metadata and the team are ``keys.list_api_keys`` and ``merchants.list_members``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError

from portal.domain.errors import Conflict, Forbidden, InvalidInput, NotFound
from portal.domain.money import Money
from portal.domain.types import Actor
from portal.services.admin.people import check_search
from portal.services.merchants import merchants
from portal.services.merchants.merchants import MerchantView
from portal.services.shared import audit
from portal.services.shared.pagination import (
    Page,
    check_cursor,
    check_limit,
    like_pattern,
    newest_first,
)
from portal.services.shared.uow import UnitOfWork

#: The table's views: live (not archived) ones of every status, each status, and archived.
STATES = ("pending", "active", "suspended", "rejected", "archived")


@dataclass(frozen=True, slots=True)
class Balance:
    currency: str
    posted: Money
    held: Money
    available: Money


@dataclass(frozen=True, slots=True)
class Waiting:
    count: int
    oldest_at: datetime | None


@dataclass(frozen=True, slots=True)
class MerchantDeleted:
    id: int
    public_id: str
    name: str


def _require_read(actor: Actor) -> None:
    if not (actor.can("merchants:read") or actor.can("merchants:manage")):
        raise Forbidden("missing permission merchants:read")


def list_merchants(
    uow: UnitOfWork,
    *,
    actor: Actor,
    state: str | None = None,
    search: str | None = None,
    limit: int | None = 25,
    starting_after: str | None = None,
) -> Page[MerchantView]:
    """Merchants, newest first: live ones (``state`` None), those of one status, or archived
    ones; ``search`` matches name, contact email, website or the public id. Raises Forbidden
    (merchants:read), InvalidInput."""
    _require_read(actor)
    size = check_limit(limit)
    after = check_cursor(starting_after, "merchant")
    term = check_search(search)
    if state is not None and state not in STATES:
        raise InvalidInput("unknown state", param="state")
    where = ["m.archived_at IS NOT NULL" if state == "archived" else "m.archived_at IS NULL"]
    params: dict[str, Any] = {}
    if state not in (None, "archived"):
        where.append("m.status = :state")
        params["state"] = state
    if term:
        where.append(
            "m.name ILIKE :q ESCAPE '\\' OR m.contact_email ILIKE :q ESCAPE '\\'"
            " OR m.website ILIKE :q ESCAPE '\\' OR m.public_id = :term"
        )
        params.update(q=like_pattern(term), term=term)
    select = f"SELECT {merchants._MERCHANT_COLUMNS} FROM merchants m"  # nosec B608: a constant column list
    return uow.run(
        lambda u: newest_first(
            u,
            select=select,
            table="merchants",
            alias="m",
            convert=lambda r: merchants.merchant_view(u, r),
            limit=size,
            starting_after=after,
            kind="merchant",
            where=where,
            params=params,
        )  # fmt: skip
    )


def waiting(uow: UnitOfWork, *, actor: Actor) -> Waiting:
    """How many applications wait for a decision, and since when. Raises Forbidden."""
    _require_read(actor)
    row = uow.read(
        "SELECT count(*) AS n, min(created_at) AS oldest FROM merchants"
        " WHERE status = 'pending' AND archived_at IS NULL"
    )[0]
    return Waiting(row.n, row.oldest)


def balances(uow: UnitOfWork, *, actor: Actor, merchant_id: int) -> tuple[Balance, ...]:
    """A merchant's balance accounts (ledger, held by payouts in flight, available). Raises
    Forbidden."""
    _require_read(actor)
    rows = uow.read(
        "SELECT currency, posted_minor, pending_debits_minor FROM accounts"
        " WHERE merchant_id = :m ORDER BY currency",
        {"m": merchant_id},
    )
    found = []
    for r in rows:
        posted, held = Money(r.posted_minor, r.currency), Money(r.pending_debits_minor, r.currency)
        found.append(Balance(r.currency, posted, held, posted - held))
    return tuple(found)


def merchant_version(uow: UnitOfWork, *, actor: Actor, merchant: str) -> str:
    """What changes when a merchant's console page would: its row (a decision, an
    archiving), its balances, its keys and team, its audit trail. Raises Forbidden,
    NotFound."""
    _require_read(actor)
    rows = uow.read(
        "SELECT m.updated_at,"
        " (SELECT coalesce(max(e.id), 0) FROM audit_events e WHERE e.subject_type = 'merchant'"
        "  AND e.subject_id = m.id) AS last_event,"
        " (SELECT coalesce(sum(a.posted_minor), 0) || ':' || coalesce(sum(a.pending_debits_minor),"
        "  0) FROM accounts a WHERE a.merchant_id = m.id) AS money,"
        " (SELECT count(*) || ':' || coalesce(max(k.id), 0) || ':' || count(k.revoked_at)"
        "  FROM api_keys k WHERE k.merchant_id = m.id) AS keys,"
        " (SELECT count(*) FROM merchant_members mm WHERE mm.merchant_id = m.id) AS members"
        " FROM merchants m WHERE m.public_id = :p",
        {"p": merchant},
    )
    if not rows:
        raise NotFound("no such merchant", param="merchant")
    r = rows[0]
    return f"{r.last_event}-{r.money}-{r.keys}-{r.members}-{r.updated_at.timestamp():.0f}"


#: Anything that makes a merchant part of money history: payments (and their checkout
#: sessions and events), refunds, payouts, balance transactions, postings or holds on its
#: balance, an adjustment asked for it.
_HISTORY = """
SELECT EXISTS (SELECT 1 FROM payments WHERE merchant_id = :id)
    OR EXISTS (SELECT 1 FROM refunds WHERE merchant_id = :id)
    OR EXISTS (SELECT 1 FROM payouts WHERE merchant_id = :id)
    OR EXISTS (SELECT 1 FROM balance_transactions WHERE merchant_id = :id)
    OR EXISTS (SELECT 1 FROM checkout_sessions WHERE merchant_id = :id)
    OR EXISTS (SELECT 1 FROM events WHERE merchant_id = :id)
    OR EXISTS (SELECT 1 FROM postings p JOIN accounts a ON a.id = p.account_id
               WHERE a.merchant_id = :id)
    OR EXISTS (SELECT 1 FROM holds h JOIN accounts a ON a.id = h.account_id
               WHERE a.merchant_id = :id)
    OR EXISTS (SELECT 1 FROM adjustment_requests WHERE merchant_id = :id)
"""

_HAS_HISTORY = (
    "this merchant has money history (payments, refunds, payouts or postings): money records"
    " are never deleted; archive it instead"
)


def delete_merchant(uow: UnitOfWork, *, actor: Actor, merchant: str | int) -> MerchantDeleted:
    """Delete a merchant that never took money (an application, say) for good, with its team,
    invitations, keys, webhook endpoints and empty balance accounts (staff with
    merchants:manage). Raises Forbidden, NotFound, Conflict ("merchant_has_history")."""
    if not actor.can("merchants:manage"):
        raise Forbidden("missing permission merchants:manage")

    def work(u: UnitOfWork) -> MerchantDeleted:
        ref = merchants.merchant_ref(u, merchant)
        row = u.execute(
            "SELECT id, public_id, name, status, user_id FROM merchants WHERE id = :id FOR UPDATE",
            {"id": ref.id},
        ).one()
        if u.execute(_HISTORY, {"id": row.id}).scalar_one():
            raise Conflict(_HAS_HISTORY, param="merchant", code="merchant_has_history")
        try:
            with u.session.begin_nested():
                for table in ("webhook_endpoints", "api_keys", "merchant_invitations",
                              "merchant_members", "accounts"):  # fmt: skip
                    u.execute(f"DELETE FROM {table} WHERE merchant_id = :id", {"id": row.id})  # nosec B608: table names from the constant tuple above
                u.execute("DELETE FROM merchants WHERE id = :id", {"id": row.id})
        except IntegrityError as exc:  # a record this check does not know yet names it
            raise Conflict(_HAS_HISTORY, param="merchant", code="merchant_has_history") from exc
        audit.record(
            u, actor, "merchant.delete", "merchant", row.id,
            data={"name": row.name, "status": row.status, "owner_id": row.user_id},
        )  # fmt: skip
        return MerchantDeleted(row.id, row.public_id, row.name)

    return uow.run(work)
