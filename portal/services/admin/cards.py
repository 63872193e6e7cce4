"""The console's cards and wallets: every card as a paged, searchable table with its wallet
balance (available, held, ledger), the version a card's page polls, and deleting a card for
good when it never held money.

Freezing, archiving and restoring are ``wallet.cards``'s (``set_frozen``, ``set_archived``);
one card with its balances is ``wallet.activity.get_card``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from portal.domain.errors import Conflict, Forbidden, InvalidInput, NotFound
from portal.domain.ids import is_public_id
from portal.domain.money import Money, MoneyError, normalize_currency
from portal.domain.types import Actor
from portal.services.admin.people import check_search
from portal.services.shared import audit
from portal.services.shared.pagination import (
    Page,
    check_cursor,
    check_limit,
    like_pattern,
    newest_first,
)
from portal.services.shared.refs import Ref, ref_key
from portal.services.shared.uow import UnitOfWork

STATUSES = ("active", "frozen")


@dataclass(frozen=True, slots=True)
class CardRow:
    """A card as the console's table shows it (masked), with its owner and wallet."""

    id: int
    public_id: str
    name: str
    card_type: str
    brand: str
    last4: str
    currency: str
    status: str
    archived: bool
    created_at: datetime
    owner_public_id: str
    owner_email: str
    owner_name: str
    #: Ledger (posted) balance, held (pending debits) and what may be spent.
    posted: Money
    held: Money
    available: Money

    @property
    def state(self) -> str:
        return "archived" if self.archived else self.status


@dataclass(frozen=True, slots=True)
class CardDeleted:
    id: int
    public_id: str
    last4: str


def _require_read(actor: Actor) -> None:
    if not (actor.can("cards:read") or actor.can("cards:manage")):
        raise Forbidden("missing permission cards:read")


_SELECT = (
    "SELECT c.id, c.public_id, c.name, c.card_type, c.brand, c.last4, c.currency, c.status,"
    " c.archived_at IS NOT NULL AS archived, c.created_at, u.public_id AS owner_public_id,"
    " u.email AS owner_email, u.first_name || ' ' || u.last_name AS owner_name,"
    " a.posted_minor, a.pending_debits_minor"
    " FROM cards c JOIN users u ON u.id = c.user_id JOIN accounts a ON a.card_id = c.id"
)


def _row(r: sa.Row[Any]) -> CardRow:
    posted, held = Money(r.posted_minor, r.currency), Money(r.pending_debits_minor, r.currency)
    return CardRow(
        id=r.id, public_id=r.public_id, name=r.name, card_type=r.card_type, brand=r.brand,
        last4=r.last4, currency=r.currency, status=r.status, archived=r.archived,
        created_at=r.created_at, owner_public_id=r.owner_public_id, owner_email=r.owner_email,
        owner_name=r.owner_name, posted=posted, held=held, available=posted - held,
    )  # fmt: skip


def list_cards(
    uow: UnitOfWork,
    *,
    actor: Actor,
    search: str | None = None,
    status: str | None = None,
    currency: str | None = None,
    archived: bool = False,
    limit: int | None = 25,
    starting_after: Ref | None = None,
) -> Page[CardRow]:
    """Every card, newest first, live or archived, with owner and wallet balance. ``search``
    is a card id, the last four digits, the owner's email or name, or the card's name;
    ``status`` active or frozen. Raises Forbidden (cards:read), InvalidInput."""
    _require_read(actor)
    size = check_limit(limit)
    after = check_cursor(starting_after, "card")
    term = check_search(search)
    where = ["c.archived_at IS NOT NULL" if archived else "c.archived_at IS NULL"]
    params: dict[str, Any] = {}
    if status is not None:
        if status not in STATUSES:
            raise InvalidInput("status is active or frozen", param="status")
        where.append("c.status = :status")
        params["status"] = status
    if currency is not None:
        try:
            params["currency"] = normalize_currency(currency)
        except MoneyError as exc:
            raise InvalidInput(str(exc), param="currency") from None
        where.append("c.currency = :currency")
    if term:
        if is_public_id("card", term):
            where.append("c.public_id = :term")
            params["term"] = term
        elif re.fullmatch(r"\d{4}", term):
            where.append("c.last4 = :term")
            params["term"] = term
        else:
            where.append(
                "u.email ILIKE :q ESCAPE '\\' OR (u.first_name || ' ' || u.last_name)"
                " ILIKE :q ESCAPE '\\' OR c.name ILIKE :q ESCAPE '\\'"
            )
            params["q"] = like_pattern(term)
    return uow.run(
        lambda u: newest_first(
            u,
            select=_SELECT,
            table="cards",
            alias="c",
            convert=_row,
            limit=size,
            starting_after=after,
            kind="card",
            where=where,
            params=params,
        )  # fmt: skip
    )


def get_card(uow: UnitOfWork, *, actor: Actor, card_id: Ref) -> CardRow:
    """One card as the console shows it. Raises Forbidden (cards:read), NotFound."""
    _require_read(actor)
    key = ref_key("card", card_id)
    if key is None:
        raise NotFound("no such card", param="card_id")
    column, value = key
    rows = uow.read(f"{_SELECT} WHERE c.{column} = :v", {"v": value})  # nosec B608: a constant select; the column from ref_key; values bound
    if not rows:
        raise NotFound("no such card", param="card_id")
    return _row(rows[0])


def card_version(uow: UnitOfWork, *, actor: Actor, card_id: Ref) -> str:
    """What changes when a card's console page would: its status and archiving, its wallet
    balance and its audit trail. Raises Forbidden, NotFound."""
    _require_read(actor)
    key = ref_key("card", card_id)
    if key is None:
        raise NotFound("no such card", param="card_id")
    column, value = key
    rows = uow.read(
        "SELECT c.updated_at, a.posted_minor, a.pending_debits_minor,"  # nosec B608: the column from ref_key; values bound
        " (SELECT coalesce(max(e.id), 0) FROM audit_events e WHERE e.subject_type = 'card'"
        "  AND e.subject_id = c.id) AS last_event"
        f" FROM cards c JOIN accounts a ON a.card_id = c.id WHERE c.{column} = :v",
        {"v": value},
    )
    if not rows:
        raise NotFound("no such card", param="card_id")
    r = rows[0]
    return (
        f"{r.last_event}-{r.posted_minor}-{r.pending_debits_minor}-{r.updated_at.timestamp():.0f}"
    )


#: Anything that makes a card part of money history: movements on it, postings or holds on its
#: wallet, an adjustment asked for it.
_HISTORY = """
SELECT EXISTS (SELECT 1 FROM top_ups WHERE card_id = :id)
    OR EXISTS (SELECT 1 FROM transfers WHERE from_card_id = :id OR to_card_id = :id)
    OR EXISTS (SELECT 1 FROM withdrawals WHERE card_id = :id)
    OR EXISTS (SELECT 1 FROM payments WHERE card_id = :id)
    OR EXISTS (SELECT 1 FROM refunds WHERE card_id = :id)
    OR EXISTS (SELECT 1 FROM postings p JOIN accounts a ON a.id = p.account_id
               WHERE a.card_id = :id)
    OR EXISTS (SELECT 1 FROM holds h JOIN accounts a ON a.id = h.account_id
               WHERE a.card_id = :id)
    OR EXISTS (SELECT 1 FROM adjustment_requests WHERE card_id = :id)
"""

_HAS_HISTORY = (
    "this card has money history (movements or postings on its wallet): money records are"
    " never deleted; archive it instead"
)


def delete_card(uow: UnitOfWork, *, actor: Actor, card_id: Ref) -> CardDeleted:
    """Delete a card that never held money, with its empty wallet account, for good (staff
    with cards:manage). Raises Forbidden, NotFound, Conflict ("card_has_history")."""
    if not actor.can("cards:manage"):
        raise Forbidden("missing permission cards:manage")
    key = ref_key("card", card_id)
    if key is None:
        raise NotFound("no such card", param="card_id")
    column, value = key

    def work(u: UnitOfWork) -> CardDeleted:
        card = u.execute(
            f"SELECT id, public_id, user_id, brand, last4, currency FROM cards"  # nosec B608: the column from ref_key; values bound
            f" WHERE {column} = :v FOR UPDATE",
            {"v": value},
        ).first()
        if card is None:
            raise NotFound("no such card", param="card_id")
        if u.execute(_HISTORY, {"id": card.id}).scalar_one():
            raise Conflict(_HAS_HISTORY, param="card_id", code="card_has_history")
        try:
            with u.session.begin_nested():
                u.execute(
                    "WITH gone AS (DELETE FROM accounts WHERE card_id = :id RETURNING id),"
                    " bumped AS (UPDATE users SET change_version = change_version + 1"
                    " WHERE id = :user) DELETE FROM cards WHERE id = :id",
                    {"id": card.id, "user": card.user_id},
                )
        except IntegrityError as exc:  # a record this check does not know yet names it
            raise Conflict(_HAS_HISTORY, param="card_id", code="card_has_history") from exc
        audit.record(
            u, actor, "card.delete", "card", card.id,
            data={"user_id": card.user_id, "brand": card.brand, "last4": card.last4,
                  "currency": card.currency},
        )  # fmt: skip
        return CardDeleted(card.id, card.public_id, card.last4)

    return uow.run(work)
