"""What a cardholder sees of their money: cards with balances, the activity feed, monthly
totals, the live-update version, recipient look-ups by card number, and renaming a card.

Reads only, except ``rename_card``. Every read is scoped to the actor's own cards; staff reach
other people's cards with ``cards:read`` (cards) or ``money:read`` (movements), and an object
out of reach is NotFound, never Forbidden, so its existence does not leak.

The feed is one statement: a ``UNION ALL`` over top-ups, outgoing transfers, incoming
transfers, withdrawals, payments to merchants and their refunds, each branch filtered,
keyset-paged and limited on its own (so each reads at most ``limit + 1`` rows through its card
index) before the merge. Items are ordered ``created_at DESC, kind DESC, id DESC``; an item's
id is its movement's public id (``tu_...``, ``tr_...``, ``wd_...``, ``pay_...``, ``re_...``),
and a cursor is one: its prefix names the table, and its row's ``(created_at, id)`` is read in
the feed's own statement (a CTE), so paging stays a keyset.
Cards and users are named by :data:`~portal.services.shared.refs.Ref` (a public id from a
request, or an internal id).

Visibility rules: an incoming transfer shows to its recipient only once it succeeded (a failed
one moved nothing and is the sender's business); a transfer between two cards of the same
person shows once, as outgoing from its source card, unless the feed is filtered to the
destination card, where it shows as incoming. Monthly totals leave transfers between one's own
cards out (they are neither money in nor money out).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import sqlalchemy as sa

from portal.domain import cards as card_numbers
from portal.domain.errors import Forbidden, InvalidInput, InvalidState, NotFound
from portal.domain.ids import PREFIXES, is_public_id
from portal.domain.money import Money
from portal.domain.types import Actor, ActorKind, MovementStatus
from portal.services.identity.users import is_printable, is_self, mask_email
from portal.services.shared import audit
from portal.services.shared.pagination import Page, check_limit, like_pattern
from portal.services.shared.refs import Ref, ref_key
from portal.services.shared.uow import UnitOfWork
from portal.services.shared.vault import Vault
from portal.services.wallet import recipients
from portal.services.wallet.cards import update_card

KINDS = ("top_up", "transfer", "withdrawal", "payment", "refund")
STATUSES = tuple(s.value for s in MovementStatus)
MAX_SEARCH = 100
MAX_MONTHS = 120
MAX_CARD_NAME = 64
#: The days the feed can be filtered by (``since`` and ``until``), written YYYY-MM-DD.
FIRST_DAY = date(1970, 1, 1)
LAST_DAY = date(2999, 12, 31)
DAY_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
_DAY = re.compile(DAY_PATTERN)

METHOD_LABELS = {
    "bank_transfer": "Bank transfer",
    "credit_card": "Credit card",
    "debit_card": "Debit card",
    "e_wallet": "E-wallet",
    "cash": "Cash",
}

_DOTS = "\u2022\u2022\u2022\u2022"


# -- results ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CardSummary:
    """A card as the cardholder sees it: masked, with its wallet balances. ``id`` and
    ``user_id`` are internal; ``public_id`` and ``user_public_id`` are what requests name."""

    id: int
    public_id: str
    user_id: int
    user_public_id: str
    name: str
    card_type: str
    brand: str
    last4: str
    expiry_month: int
    expiry_year: int
    currency: str
    status: str
    archived: bool
    posted: Money
    pending: Money
    available: Money
    created_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ActivityItem:
    """One money movement as seen from ``card_id`` (one of the viewer's cards)."""

    id: str  # the movement's public id: "tu_...", "tr_...", "wd_..."
    record_id: int  # its internal id in its own table
    kind: str
    status: str
    amount: Money
    direction: str  # "in" | "out", as seen from card_id
    card_id: int
    card_public_id: str
    card_last4: str
    counterparty: str  # masked: "Visa •••• 4242 (Budi S.)" / "BCA •••• 7890" / method name
    method: str | None
    failure_code: str | None
    created_at: datetime
    memo: str = ""


@dataclass(frozen=True, slots=True)
class MonthTotals:
    month: date  # first day of the month (UTC)
    currency: str
    money_in: Money
    money_out: Money


@dataclass(frozen=True, slots=True)
class Recipient:
    """What a sender may learn of a card before paying it: never more than this."""

    card_id: int
    card_public_id: str
    brand: str
    last4: str
    currency: str
    holder: str  # masked name, e.g. "Budi S."
    email: str  # masked, e.g. "b•••@example.com": look-alike names are told apart by it
    #: What the sender passes as the transfer's destination (``rcp_...``, for this sender only,
    #: until ``reference_expires_at``): see ``portal.services.wallet.recipients``.
    reference: str
    reference_expires_at: datetime


# -- helpers ---------------------------------------------------------------------------------
def masked_name(first_name: str | None, last_name: str | None) -> str:
    """First name and the initial of the last name: ``"Budi S."``."""
    first = (first_name or "").strip()
    last = (last_name or "").strip()
    if first and last:
        return f"{first} {last[0].upper()}."
    if first:
        return first
    return f"{last[0].upper()}." if last else "Cardholder"


def _user_id(actor: Actor) -> int:
    if actor.kind != ActorKind.USER or actor.id is None:
        raise Forbidden("only a signed-in user has cards")
    return actor.id


def item_kind(value: object) -> str | None:
    """The movement kind an activity item id names by its prefix (``"transfer"`` for
    ``"tr_..."``), or None when it is not a movement's public id."""
    return next((kind for kind in KINDS if is_public_id(kind, value)), None)


def parse_item_id(value: object, param: str) -> tuple[str, str]:
    """(kind, public id) of an activity item id. Raises InvalidInput (param ``param``)."""
    kind = item_kind(value)
    if kind is None:
        examples = ", ".join(f"{PREFIXES[k]}_..." for k in KINDS)
        raise InvalidInput(f"{param} must be the id of a movement ({examples})", param=param)
    assert isinstance(value, str)
    return kind, value


def _card_key(card_id: object) -> tuple[str, int | str]:
    """How to find the card ``card_id`` names; NotFound (without a query) when it names none."""
    key = ref_key("card", card_id)
    if key is None:
        raise NotFound("no such card", param="card_id")
    return key


_CARD_COLUMNS = (
    "c.id, c.public_id, c.user_id, u.public_id AS user_public_id, c.name, c.card_type, c.brand,"
    " c.last4, c.expiry_month, c.expiry_year, c.currency, c.status,"
    " c.archived_at IS NOT NULL AS archived, c.created_at, a.posted_minor, a.pending_debits_minor"
)
_CARDS = (
    f"SELECT {_CARD_COLUMNS} FROM cards c JOIN accounts a ON a.card_id = c.id"  # nosec B608: constant column list
    " JOIN users u ON u.id = c.user_id"
)


def _card(row: sa.Row[Any]) -> CardSummary:
    posted = Money(row.posted_minor, row.currency)
    pending = Money(row.pending_debits_minor, row.currency)
    return CardSummary(
        id=row.id, public_id=row.public_id, user_id=row.user_id,
        user_public_id=row.user_public_id, name=row.name, card_type=row.card_type,
        brand=row.brand, last4=row.last4, expiry_month=row.expiry_month,
        expiry_year=row.expiry_year, currency=row.currency, status=row.status,
        archived=row.archived, posted=posted, pending=pending, available=posted - pending,
        created_at=row.created_at,
    )  # fmt: skip


# -- cards -----------------------------------------------------------------------------------
def list_cards(
    uow: UnitOfWork, *, actor: Actor, user_id: Ref | None = None, include_archived: bool = False
) -> tuple[CardSummary, ...]:
    """The actor's cards (or, with cards:read, ``user_id``'s), oldest first, with balances.
    Raises NotFound (another user's, without cards:read), InvalidInput."""
    owner: int | str
    if user_id is None:
        column, owner = "id", _user_id(actor)
    else:
        key = ref_key("user", user_id)
        if key is None:
            raise InvalidInput("user_id must be a user's id", param="user_id")
        if not is_self(actor, user_id) and not actor.can("cards:read"):
            raise NotFound("no such user", param="user")  # another's: not revealed
        column, owner = key
    archived = "" if include_archived else " AND c.archived_at IS NULL"

    def work(u: UnitOfWork) -> tuple[CardSummary, ...]:
        rows = u.execute(
            f"{_CARDS} WHERE u.{column} = :owner{archived} ORDER BY c.created_at, c.id",
            {"owner": owner},
        ).all()
        return tuple(_card(r) for r in rows)

    return uow.run(work)


def _may_see_card(actor: Actor, owner_id: int) -> bool:
    # Staff who may manage any card may see the card they manage.
    return (
        (actor.kind == ActorKind.USER and actor.id == owner_id)
        or actor.can("cards:read")
        or actor.can("cards:manage")
    )


def get_card(uow: UnitOfWork, *, actor: Actor, card_id: Ref) -> CardSummary:
    """One card with balances: one's own, or any with cards:read or cards:manage. Raises
    NotFound."""
    column, value = _card_key(card_id)

    def work(u: UnitOfWork) -> CardSummary:
        row = u.execute(f"{_CARDS} WHERE c.{column} = :ref", {"ref": value}).first()
        if row is None or not _may_see_card(actor, row.user_id):
            raise NotFound("no such card", param="card_id")
        return _card(row)

    return uow.run(work)


def rename_card(uow: UnitOfWork, *, actor: Actor, card_id: Ref, name: str) -> CardSummary:
    """Name one's own card (at most 64 characters; empty clears it). Owner only. Raises
    InvalidInput, NotFound, InvalidState (archived card)."""
    if not isinstance(name, str):
        raise InvalidInput("name must be text", param="name")
    name = name.strip()
    if len(name) > MAX_CARD_NAME or not is_printable(name):
        raise InvalidInput(
            f"card name is at most {MAX_CARD_NAME} printable characters", param="name"
        )
    column, value = _card_key(card_id)

    def work(u: UnitOfWork) -> CardSummary:
        row = u.execute(
            f"SELECT id, user_id, name, archived_at FROM cards WHERE {column} = :ref"  # nosec B608: column is id or public_id (ref_key)
            " FOR NO KEY UPDATE",
            {"ref": value},
        ).first()
        if row is None or not (actor.kind == ActorKind.USER and actor.id == row.user_id):
            raise NotFound("no such card", param="card_id")
        if row.archived_at is not None:
            raise InvalidState("card is archived", param="card_id")
        if row.name != name:
            update_card(u, row.id, "name = :name", name=name)
            audit.record(u, actor, "card.rename", "card", row.id, data={"name": name})
        return _card(u.execute(f"{_CARDS} WHERE c.id = :id", {"id": row.id}).one())

    return uow.run(work)


# -- the activity feed -----------------------------------------------------------------------
_BRAND_NAME_SQL = (
    "CASE o.brand "
    + " ".join(f"WHEN '{b.id}' THEN '{b.name}'" for b in card_numbers.BRANDS.values())
    + " ELSE 'Card' END"
)
_METHOD_LABEL_SQL = (
    "CASE t.method "
    + " ".join(f"WHEN '{k}' THEN '{v}'" for k, v in METHOD_LABELS.items())
    + " ELSE t.method END"
)

_COLUMNS = (
    "kind, id, public_id, created_at, status, amount_minor, currency, direction, card_id,"
    " card_public_id, card_last4, cp_brand, cp_last4, cp_first, cp_last, method, failure_code,"
    " bank_name, bank_last4, memo, merchant_name"
)

# Each branch: (kind, SELECT list, FROM/JOIN, base condition over the scope, search haystack).
_TOPUP = (
    "top_up",
    "'top_up'::text AS kind, t.id, t.public_id::text AS public_id, t.created_at,"
    " t.status::text AS status, t.amount_minor, t.currency::text AS currency,"
    " 'in'::text AS direction, t.card_id, c.public_id::text AS card_public_id,"
    " c.last4::text AS card_last4, NULL::text AS cp_brand, NULL::text AS cp_last4,"
    " NULL::text AS cp_first, NULL::text AS cp_last, t.method::text AS method,"
    " t.failure_code::text AS failure_code, NULL::text AS bank_name, NULL::text AS bank_last4,"
    " ''::text AS memo, NULL::text AS merchant_name",
    "top_ups t JOIN cards c ON c.id = t.card_id",
    "t.card_id IN (SELECT id FROM scope)",
    f"concat_ws(' ', {_METHOD_LABEL_SQL}, c.last4, c.name)",
)


_SHOWN = "CASE WHEN t.status <> 'failed' THEN "


def _transfer_branch(
    direction: str, *, whole_owner: bool = False
) -> tuple[str, str, str, str, str]:
    mine, other = (
        ("from_card_id", "to_card_id") if direction == "out" else ("to_card_id", "from_card_id")
    )
    base = f"t.{mine} IN (SELECT id FROM scope)"  # nosec B608: mine is a constant column name
    if direction == "in":
        # Shown once between one's own cards (as outgoing), and only once it moved money. Over
        # all of an owner's cards that is the flag the database keeps (migration 0028), which
        # a partial index serves; over one card, what came from the owner's other cards shows.
        others = f"t.{other} NOT IN (SELECT id FROM scope)"  # nosec B608: other is a constant column name
        if whole_owner:
            others = "NOT t.between_own_cards"
        base += f" AND {others} AND t.status = 'succeeded'"
    # The card it went to, unless the sender paid a person and never saw that card.
    card = (
        "CASE WHEN t.status <> 'failed' AND NOT t.to_person THEN " if direction == "out" else _SHOWN
    )
    return (
        "transfer",
        "'transfer'::text AS kind, t.id, t.public_id::text AS public_id, t.created_at,"
        " t.status::text AS status, t.amount_minor, t.currency::text AS currency,"
        f" '{direction}'::text AS direction, t.{mine} AS card_id,"
        " c.public_id::text AS card_public_id, c.last4::text AS card_last4,"
        # A refused transfer shows nothing of the other card (issue 11 A5): it may never have
        # been the sender's to see.
        f" {card}o.brand END::text AS cp_brand, {card}o.last4 END::text AS cp_last4,"
        f" {_SHOWN}ou.first_name END::text AS cp_first,"
        f" {_SHOWN}ou.last_name END::text AS cp_last, NULL::text AS method,"
        " t.failure_code::text AS failure_code, NULL::text AS bank_name,"
        " NULL::text AS bank_last4, t.memo::text AS memo, NULL::text AS merchant_name",
        f"transfers t JOIN cards c ON c.id = t.{mine} JOIN cards o ON o.id = t.{other}"
        " JOIN users ou ON ou.id = o.user_id",
        base,
        # Only what is shown: the holder's first name and last initial (never the last name).
        f"concat_ws(' ', {card}concat_ws(' ', {_BRAND_NAME_SQL}, o.last4) END,"
        f" {_SHOWN}concat_ws(' ', ou.first_name, left(ou.last_name, 1)) END,"
        " t.memo, c.last4, c.name)",
    )


_TRANSFER_OUT = _transfer_branch("out")
_TRANSFER_IN = _transfer_branch("in")
_TRANSFER_IN_FROM_OTHERS = _transfer_branch("in", whole_owner=True)
_WITHDRAWAL = (
    "withdrawal",
    "'withdrawal'::text AS kind, t.id, t.public_id::text AS public_id, t.created_at,"
    " t.status::text AS status, t.amount_minor, t.currency::text AS currency,"
    " 'out'::text AS direction, t.card_id, c.public_id::text AS card_public_id,"
    " c.last4::text AS card_last4, NULL::text AS cp_brand, NULL::text AS cp_last4,"
    " NULL::text AS cp_first, NULL::text AS cp_last, NULL::text AS method,"
    " t.failure_code::text AS failure_code, t.bank_name::text AS bank_name,"
    " t.bank_account_last4::text AS bank_last4, ''::text AS memo, NULL::text AS merchant_name",
    "withdrawals t JOIN cards c ON c.id = t.card_id",
    "t.card_id IN (SELECT id FROM scope)",
    "concat_ws(' ', t.bank_name, t.bank_account_last4, 'bank withdrawal', c.last4, c.name)",
)

# Payments to merchants, as the cardholder sees them: a held payment is pending, a captured one
# succeeded (for what was captured), a declined or canceled one failed (the decline code or the
# cancellation reason says why). Refunds come back in.
_PAYMENT_STATUS_SQL = (
    "CASE p.status WHEN 'requires_capture' THEN 'pending' WHEN 'succeeded' THEN 'succeeded'"
    " ELSE 'failed' END"
)
_PAYMENT = (
    "payment",
    "'payment'::text AS kind, t.id, t.public_id::text AS public_id, t.created_at,"
    " t.status::text AS status, t.amount_minor, t.currency::text AS currency,"
    " 'out'::text AS direction, t.card_id, c.public_id::text AS card_public_id,"
    " c.last4::text AS card_last4, NULL::text AS cp_brand, NULL::text AS cp_last4,"
    " NULL::text AS cp_first, NULL::text AS cp_last, NULL::text AS method,"
    " t.failure_code::text AS failure_code, NULL::text AS bank_name, NULL::text AS bank_last4,"
    " t.description::text AS memo, m.name::text AS merchant_name",
    # A simple subquery: PostgreSQL pulls it up, so the (card_id, created_at, id) index serves.
    f"(SELECT p.id, p.public_id, p.created_at, p.card_id, p.merchant_id, p.currency,"  # nosec B608: constant status expression
    f" {_PAYMENT_STATUS_SQL} AS status,"
    " CASE WHEN p.status = 'succeeded' THEN p.received_minor ELSE p.amount_minor END"
    " AS amount_minor, COALESCE(p.last_payment_error->>'decline_code', p.cancellation_reason)"
    " AS failure_code, p.description FROM payments p) t"
    " JOIN cards c ON c.id = t.card_id JOIN merchants m ON m.id = t.merchant_id",
    "t.card_id IN (SELECT id FROM scope)",
    "concat_ws(' ', m.name, t.description, 'payment', c.last4, c.name)",
)
_REFUND = (
    "refund",
    "'refund'::text AS kind, t.id, t.public_id::text AS public_id, t.created_at,"
    " t.status::text AS status, t.amount_minor, t.currency::text AS currency,"
    " 'in'::text AS direction, t.card_id, c.public_id::text AS card_public_id,"
    " c.last4::text AS card_last4, NULL::text AS cp_brand, NULL::text AS cp_last4,"
    " NULL::text AS cp_first, NULL::text AS cp_last, NULL::text AS method,"
    " t.failure_reason::text AS failure_code, NULL::text AS bank_name,"
    " NULL::text AS bank_last4, ''::text AS memo, m.name::text AS merchant_name",
    "refunds t JOIN cards c ON c.id = t.card_id JOIN merchants m ON m.id = t.merchant_id",
    "t.card_id IN (SELECT id FROM scope)",
    "concat_ws(' ', m.name, 'refund', c.last4, c.name)",
)

#: The cursor row, found by its public id (a unique index), where it must be to be reachable
#: (the scope, before any filter).
_CURSOR_REACH = {
    "top_up": "SELECT created_at, id FROM top_ups WHERE public_id = :cursor"
    " AND card_id IN (SELECT id FROM scope)",
    "transfer": "SELECT created_at, id FROM transfers WHERE public_id = :cursor"
    " AND (from_card_id IN (SELECT id FROM scope)"
    " OR (to_card_id IN (SELECT id FROM scope) AND status = 'succeeded'))",
    "withdrawal": "SELECT created_at, id FROM withdrawals WHERE public_id = :cursor"
    " AND card_id IN (SELECT id FROM scope)",
    "payment": "SELECT created_at, id FROM payments WHERE public_id = :cursor"
    " AND card_id IN (SELECT id FROM scope)",
    "refund": "SELECT created_at, id FROM refunds WHERE public_id = :cursor"
    " AND card_id IN (SELECT id FROM scope)",
}


def _counterparty(row: sa.Row[Any]) -> str:
    if row.kind in ("payment", "refund"):
        return str(row.merchant_name)
    if row.kind == "top_up":
        return METHOD_LABELS.get(row.method, row.method or "")
    if row.kind == "transfer":
        if row.cp_first is None and row.cp_last is None:
            return "Card transfer"  # refused: nothing of the other card is shown
        name = masked_name(row.cp_first, row.cp_last)
        if row.cp_last4 is None:  # paid as a person: nothing of their card
            return name
        return f"{card_numbers.mask(row.cp_last4, row.cp_brand)} ({name})"
    bank = row.bank_name or "bank"
    return f"{bank} {_DOTS} {row.bank_last4}" if row.bank_last4 else bank


def _item(row: sa.Row[Any]) -> ActivityItem:
    return ActivityItem(
        id=row.public_id, record_id=row.id, kind=row.kind, status=row.status,
        amount=Money(row.amount_minor, row.currency), direction=row.direction,
        card_id=row.card_id, card_public_id=row.card_public_id, card_last4=row.card_last4,
        counterparty=_counterparty(row),
        method=row.method, failure_code=row.failure_code, created_at=row.created_at,
        memo=row.memo or "",
    )  # fmt: skip


def parse_day(text: str, param: str) -> date:
    """A day written YYYY-MM-DD (nothing else: not ``0``, not ``20250131``, not a week date)
    from FIRST_DAY to LAST_DAY. Raises InvalidInput naming ``param``."""
    if not isinstance(text, str) or not _DAY.fullmatch(text):
        raise InvalidInput(f"{param} must be a day written YYYY-MM-DD", param=param)
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise InvalidInput(f"{param} is not a day of the calendar", param=param) from None
    check_day(day, param)
    return day


def check_day(day: object, param: str) -> None:
    """Raises InvalidInput naming ``param`` unless ``day`` is a date from FIRST_DAY to
    LAST_DAY."""
    if not isinstance(day, date) or isinstance(day, datetime):
        raise InvalidInput(f"{param} must be a day written YYYY-MM-DD", param=param)
    if not FIRST_DAY <= day <= LAST_DAY:
        raise InvalidInput(
            f"{param} must be a day from {FIRST_DAY.isoformat()} to {LAST_DAY.isoformat()}",
            param=param,
        )


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def _feed_sql(
    branches: list[tuple[str, str, str, str, str]],
    scope: str,
    filters: list[str],
    search: bool,
    cursor_kind: str | None,
    amounts: int = 0,
    *,
    per_card: bool = False,
) -> str:
    """The feed as one statement: a UNION ALL of the branches, newest first. ``per_card``
    reads each branch once per card of the scope (a LATERAL join whose LIMITed range walks that
    card's (card, created_at, id) index), so a page costs the same however long the history is;
    without it each branch's rows over the whole scope are read and sorted (fine for a look-up
    by public id)."""
    parts = []
    # A search also finds the amounts it may mean (``:amount_<n>``/``:currency_<n>``).
    by_amount = "".join(
        f" OR (t.amount_minor = :amount_{n} AND t.currency = :currency_{n})" for n in range(amounts)
    )
    for kind, columns, source, base, haystack in branches:
        conditions = [base, *filters]
        if search:
            conditions.append(f"{haystack} ILIKE :pattern ESCAPE '\\'{by_amount}")
        if cursor_kind is not None:
            # (created_at, kind, id) < cursor, with this branch's kind a constant.
            if kind < cursor_kind:
                conditions.append("t.created_at <= (SELECT created_at FROM cur)")
            elif kind == cursor_kind:
                conditions.append(
                    "(t.created_at, t.id) < ((SELECT created_at FROM cur), (SELECT id FROM cur))"
                )
            else:
                conditions.append("t.created_at < (SELECT created_at FROM cur)")
        order = " ORDER BY t.created_at DESC, t.id DESC LIMIT :lim"
        if not per_card:
            where = " AND ".join(f"({c})" for c in conditions)
            parts.append(f"(SELECT {columns} FROM {source} WHERE {where}{order})")  # nosec B608: the branches' constant columns, tables and conditions
            continue
        # The branch's own card column, for one card of the scope at a time.
        conditions[0] = _ON_SCOPE_CARD.sub(" = s.id", base, count=1)
        where = " AND ".join(f"({c})" for c in conditions)
        if search:  # the haystack needs the joined names: filter after the joins
            branch = f"SELECT {columns} FROM {source} WHERE {where}{order}"  # nosec B608: as above
        else:
            # The LIMIT on the movement table alone, so it stops after :lim index entries
            # whatever the planner guesses of the joins; the joins then fetch :lim rows.
            table, joins = source.split(" JOIN ", 1)
            branch = (
                f"SELECT {columns} FROM (SELECT t.* FROM {table} WHERE {where}{order}) t"  # nosec B608: as above
                f" JOIN {joins}"
            )
        parts.append(f"(SELECT b.* FROM scope s CROSS JOIN LATERAL ({branch}) b)")  # nosec B608: the branch built above from constants
    ctes = [f"scope AS ({scope})"]
    if cursor_kind is not None:
        ctes.append(f"cur AS ({_CURSOR_REACH[cursor_kind]})")
    return (
        f"WITH {', '.join(ctes)} SELECT {_COLUMNS} FROM ("  # nosec B608: constant CTEs, columns and branches
        + " UNION ALL ".join(parts)
        + ") feed ORDER BY created_at DESC, kind DESC, id DESC LIMIT :lim"
    )


#: How a branch's base condition starts: its card column in the scope.
_ON_SCOPE_CARD = re.compile(r" IN \(SELECT id FROM scope\)")


def _branches_for(
    kind: str | None, *, unrestricted: bool, whole_owner: bool = False
) -> list[tuple[str, str, str, str, str]]:
    """The feed's branches; ``whole_owner`` when the scope is every card of one owner."""
    incoming = _TRANSFER_IN_FROM_OTHERS if whole_owner else _TRANSFER_IN
    every = [_TOPUP, _TRANSFER_OUT, _WITHDRAWAL, _PAYMENT, _REFUND] if unrestricted else [
        _TOPUP, _TRANSFER_OUT, incoming, _WITHDRAWAL, _PAYMENT, _REFUND
    ]  # fmt: skip
    return [b for b in every if kind is None or b[0] == kind]


def _scope_for(actor: Actor, card_id: Ref | None, params: dict[str, Any]) -> str:
    """SQL selecting the card ids the feed covers (the actor's cards, or one card)."""
    if card_id is None:
        params["owner"] = _user_id(actor)
        return "SELECT id FROM cards WHERE user_id = :owner"
    column, params["card"] = _card_key(card_id)
    if actor.can("money:read"):
        return f"SELECT id FROM cards WHERE {column} = :card"  # nosec B608: column is id or public_id (ref_key)
    params["owner"] = _user_id(actor)
    return f"SELECT id FROM cards WHERE {column} = :card AND user_id = :owner"  # nosec B608: column is id or public_id (ref_key)


def list_activity(
    uow: UnitOfWork,
    *,
    actor: Actor,
    card_id: Ref | None = None,
    kind: str | None = None,
    status: str | None = None,
    since: date | None = None,
    until: date | None = None,
    search: str | None = None,
    limit: int = 20,
    starting_after: str | None = None,
    search_amounts: Sequence[Money] = (),
) -> Page[ActivityItem]:
    """Money movements on the actor's cards (incoming transfers included), newest first; one
    card's with ``card_id`` (any card's with money:read). ``since``/``until`` are UTC days,
    both included. ``search`` also finds the movements of exactly ``search_amounts`` (what the
    search text means as an amount, read by the caller in the user's format; at most 10).
    Raises InvalidInput, NotFound (card out of reach), Forbidden."""
    size = check_limit(limit)
    params: dict[str, Any] = {"lim": size + 1}
    filters: list[str] = []
    if card_id is not None:
        _card_key(card_id)
    if kind is not None and kind not in KINDS:
        raise InvalidInput("kind must be one of " + ", ".join(KINDS), param="kind")
    if status is not None:
        if status not in STATUSES:
            raise InvalidInput("status must be one of " + ", ".join(STATUSES), param="status")
        filters.append("t.status = :status")
        params["status"] = status
    if since is not None:
        check_day(since, "since")
    if until is not None:
        check_day(until, "until")
    if since is not None and until is not None and since > until:
        raise InvalidInput("since must not be after until", param="since")
    if since is not None:
        filters.append("t.created_at >= :since_at")
        params["since_at"] = _day_start(since)
    if until is not None:
        filters.append("t.created_at < :until_at")
        params["until_at"] = _day_start(until + timedelta(days=1))
    term = None
    if search is not None:
        term = search.strip() if isinstance(search, str) else None
        if term is None or len(term) > MAX_SEARCH or not is_printable(term):
            raise InvalidInput(f"search is at most {MAX_SEARCH} characters", param="search")
        if term:
            params["pattern"] = like_pattern(term)
            for n, money in enumerate(tuple(search_amounts)[:10]):
                params[f"amount_{n}"] = money.amount_minor
                params[f"currency_{n}"] = money.currency
    cursor_kind: str | None = None
    if starting_after is not None:
        cursor_kind, params["cursor"] = parse_item_id(starting_after, "starting_after")
    scope = _scope_for(actor, card_id, params)
    amounts = min(len(search_amounts), 10) if term else 0
    branches = _branches_for(kind, unrestricted=False, whole_owner=card_id is None)
    sql = _feed_sql(branches, scope, filters, bool(term), cursor_kind, amounts, per_card=True)

    rows = uow.read(sql, params)  # one statement: no transaction of its own
    if not rows and (card_id is not None or cursor_kind is not None):
        _check_reach(uow, scope, params, card_id, cursor_kind)
    items = [_item(r) for r in rows]
    return Page(tuple(items[:size]), len(items) > size)


def _check_reach(
    u: UnitOfWork, scope: str, params: dict[str, Any], card_id: Ref | None, cursor: str | None
) -> None:
    """Why an empty page is empty, when it may be a card or cursor out of reach (rare path)."""
    reach = f"WITH scope AS ({scope}) SELECT EXISTS (SELECT 1 FROM scope) AS card"  # nosec B608: scope is this module's constant SQL
    if cursor is not None:
        reach += f", EXISTS ({_CURSOR_REACH[cursor]}) AS cursor"
    row = u.read(reach, params)[0]
    if card_id is not None and not row.card:
        raise NotFound("no such card", param="card_id")
    if cursor is not None and not row.cursor:
        raise InvalidInput("starting_after is not a known activity id", param="starting_after")


#: Each kind's journal entry column (a payment's is its capture).
_ENTRY_OF = {
    "top_up": ("top_ups", "journal_entry_id"),
    "transfer": ("transfers", "journal_entry_id"),
    "withdrawal": ("withdrawals", "journal_entry_id"),
    "payment": ("payments", "capture_entry_id"),
    "refund": ("refunds", "journal_entry_id"),
}


def balances_after(
    uow: UnitOfWork, *, actor: Actor, items: Sequence[ActivityItem]
) -> dict[str, Money]:
    """The posted balance of each item's card right after the item's ledger entry (postings in
    ledger order), by item id; items that moved no money yet (pending, failed) are left out.
    Only the actor's own cards are read. Raises Forbidden (not a user)."""
    owner = _user_id(actor)
    wanted = [(i.kind, i.record_id, i.card_id) for i in items if i.kind in _ENTRY_OF]
    if not wanted:
        return {}
    params: dict[str, Any] = {"owner": owner}
    rows = []
    for n, (kind, record_id, card_id) in enumerate(wanted):
        table, column = _ENTRY_OF[kind]
        params[f"r{n}"], params[f"c{n}"] = record_id, card_id
        rows.append(
            f"SELECT {n} AS n, (SELECT {column} FROM {table} WHERE id = :r{n}) AS entry,"  # nosec B608: table and column from the constant _ENTRY_OF; values bound
            f" :c{n} AS card_id"
        )
    sql = (
        "WITH m AS (" + " UNION ALL ".join(rows) + ")"  # nosec B608: constant fragments above
        " SELECT m.n, a.currency, (SELECT sum(q.amount_minor) FROM postings q"
        " WHERE q.account_id = a.id AND q.id <= p.id) AS after"
        " FROM m JOIN cards c ON c.id = m.card_id AND c.user_id = :owner"
        " JOIN accounts a ON a.card_id = c.id AND a.kind = 'wallet'"
        " JOIN postings p ON p.journal_entry_id = m.entry AND p.account_id = a.id"
    )

    def work(u: UnitOfWork) -> dict[str, Money]:
        found = {}
        for row in u.execute(sql, params).all():
            item = [i for i in items if i.kind in _ENTRY_OF][row.n]
            found[item.id] = Money(int(row.after), row.currency.strip())
        return found

    return uow.run(work)


def get_activity_item(uow: UnitOfWork, *, actor: Actor, item_id: str) -> ActivityItem:
    """One movement by its public id (``tu_...``, ``tr_...``, ``wd_...``), as its viewer sees
    it: on one's own cards (incoming transfers once they succeeded), or any with money:read
    (withdrawals also with withdrawals:manage), seen from the source card. Raises
    InvalidInput, NotFound."""
    kind, public_id = parse_item_id(item_id, "id")
    staff = actor.can("money:read") or (kind == "withdrawal" and actor.can("withdrawals:manage"))
    params: dict[str, Any] = {"lim": 2, "only": public_id}
    if staff:
        scope = "SELECT id FROM cards"
        branches = [
            (k, c, s, "TRUE", h) for k, c, s, _, h in _branches_for(kind, unrestricted=True)
        ]
    else:
        params["owner"] = _user_id(actor)
        scope = "SELECT id FROM cards WHERE user_id = :owner"
        branches = _branches_for(kind, unrestricted=False, whole_owner=True)
    sql = _feed_sql(branches, scope, ["t.public_id = :only"], False, None)

    def work(u: UnitOfWork) -> ActivityItem:
        row = u.execute(sql, params).first()
        if row is None:
            raise NotFound(f"no such {kind.replace('_', '-')}", param="id")
        return _item(row)

    return uow.run(work)


# -- monthly totals --------------------------------------------------------------------------
def _month_starts(today: date, months: int) -> list[date]:
    y, m = today.year, today.month
    starts = []
    for _ in range(months):
        starts.append(date(y, m, 1))
        y, m = (y, m - 1) if m > 1 else (y - 1, 12)
    return starts[::-1]


_TOTALS_SQL = """
WITH scope AS (SELECT id FROM cards WHERE user_id = :owner),
flows AS (
    SELECT created_at, currency, amount_minor AS money_in, 0::bigint AS money_out
      FROM top_ups WHERE card_id IN (SELECT id FROM scope)
       AND status = 'succeeded' AND created_at >= :start
    UNION ALL
    SELECT created_at, currency, 0, amount_minor FROM transfers
     WHERE from_card_id IN (SELECT id FROM scope) AND to_card_id NOT IN (SELECT id FROM scope)
       AND status = 'succeeded' AND created_at >= :start
    UNION ALL
    SELECT created_at, currency, amount_minor, 0 FROM transfers
     WHERE to_card_id IN (SELECT id FROM scope) AND from_card_id NOT IN (SELECT id FROM scope)
       AND status = 'succeeded' AND created_at >= :start
    UNION ALL
    SELECT created_at, currency, 0, amount_minor FROM withdrawals
     WHERE card_id IN (SELECT id FROM scope) AND status = 'succeeded' AND created_at >= :start
    UNION ALL
    SELECT created_at, currency, 0, received_minor FROM payments
     WHERE card_id IN (SELECT id FROM scope) AND status = 'succeeded' AND created_at >= :start
    UNION ALL
    SELECT created_at, currency, amount_minor, 0 FROM refunds
     WHERE card_id IN (SELECT id FROM scope) AND status = 'succeeded' AND created_at >= :start
)
SELECT 'flow' AS source, (date_trunc('month', created_at AT TIME ZONE 'UTC'))::date AS month,
       currency::text AS currency, sum(money_in)::bigint AS money_in,
       sum(money_out)::bigint AS money_out
  FROM flows GROUP BY 2, 3
UNION ALL
SELECT DISTINCT 'card', NULL::date, currency::text, 0::bigint, 0::bigint FROM cards
 WHERE user_id = :owner AND archived_at IS NULL
"""


def monthly_totals(uow: UnitOfWork, *, actor: Actor, months: int = 12) -> tuple[MonthTotals, ...]:
    """Money in and out of the actor's cards per UTC calendar month and currency, succeeded
    movements only, over the last ``months`` months including the current one; months with
    nothing are zero. Transfers between one's own cards count neither way. Ordered by
    currency, then month. Raises InvalidInput, Forbidden."""
    owner = _user_id(actor)
    if isinstance(months, bool) or not isinstance(months, int) or not 1 <= months <= MAX_MONTHS:
        raise InvalidInput(f"months must be 1 to {MAX_MONTHS}", param="months")

    def work(u: UnitOfWork) -> tuple[MonthTotals, ...]:
        starts = _month_starts(u.now().astimezone(UTC).date(), months)
        rows = u.execute(_TOTALS_SQL, {"owner": owner, "start": _day_start(starts[0])}).all()
        currencies = sorted({r.currency for r in rows})
        found = {(r.currency, r.month): r for r in rows if r.source == "flow"}
        out = []
        for currency in currencies:
            for month in starts:
                row = found.get((currency, month))
                out.append(
                    MonthTotals(
                        month=month,
                        currency=currency,
                        money_in=Money(row.money_in if row else 0, currency),
                        money_out=Money(row.money_out if row else 0, currency),
                    )
                )
        return tuple(out)

    return uow.run(work)


# -- live updates and recipients -------------------------------------------------------------
def change_version(uow: UnitOfWork, *, actor: Actor) -> int:
    """The actor's money-view version, bumped by every movement touching their cards (pages
    poll it). Raises Forbidden (not a user), NotFound (user gone)."""
    owner = _user_id(actor)

    rows = uow.read("SELECT change_version FROM users WHERE id = :id", {"id": owner})
    if not rows:
        raise NotFound("no such user", param="user_id")
    return int(rows[0].change_version)


_RECIPIENT_SQL = (
    "SELECT c.id, c.public_id, c.brand, c.last4, c.currency, u.first_name, u.last_name,"
    " u.email FROM cards c JOIN users u ON u.id = c.user_id WHERE {which}"
    " AND c.archived_at IS NULL AND u.archived_at IS NULL"
)


def _recipient(
    u: UnitOfWork, row: Any, sender: int, now: datetime, reference: str = ""
) -> Recipient:
    return Recipient(
        card_id=row.id, card_public_id=row.public_id, brand=row.brand, last4=row.last4,
        currency=row.currency, holder=masked_name(row.first_name, row.last_name),
        email=mask_email(row.email),
        reference=reference
        or recipients.issue(u.settings, sender_id=sender, card_id=row.id, now=now),
        reference_expires_at=now + timedelta(minutes=recipients.REFERENCE_MINUTES),
    )  # fmt: skip


def find_recipient(uow: UnitOfWork, *, actor: Actor, number: str) -> Recipient:
    """The card with this full number, masked, for a sender to confirm before paying it, with
    the recipient reference the sender pays it by. Needs wallet:use (or money:manage). Raises
    InvalidInput (``invalid_card_number``), NotFound (no such card, or archived, or its holder
    archived), Forbidden. Callers must rate-limit it: it is an oracle for card numbers."""
    if not actor.can("wallet:use") and not actor.can("money:manage"):
        raise Forbidden("missing permission wallet:use")
    if not isinstance(number, str):
        raise InvalidInput("Enter a card number.", param="number", code="invalid_card_number")
    if len(number) > 64:
        raise InvalidInput(
            "This card number is too long.", param="number", code="invalid_card_number"
        )
    digits, _brand = card_numbers.validate_number(number)
    fingerprint = Vault.from_settings(uow.settings).fingerprint(digits)
    sender = actor.id if actor.id is not None else 0  # the system's references name nobody

    def work(u: UnitOfWork) -> Recipient:
        row = u.execute(
            _RECIPIENT_SQL.format(which="c.fingerprint = :fp"),  # nosec B608: constant SQL
            {"fp": fingerprint},
        ).first()
        if row is None:
            raise NotFound("no card with this number", param="number")
        return _recipient(u, row, sender, u.now())

    return uow.run(work)


def recipient_by_reference(uow: UnitOfWork, *, actor: Actor, reference: str) -> Recipient:
    """What :func:`find_recipient` showed for this reference, again (a page's confirm step),
    while the reference is this sender's and has not expired. Raises NotFound (``reference``)."""
    sealed = recipients.open_reference(uow.settings, reference, "reference")

    def work(u: UnitOfWork) -> Recipient:
        now = u.now()
        card_id = recipients.check(sealed, sender_id=actor.id, now=now, param="reference")
        row = u.execute(
            _RECIPIENT_SQL.format(which="c.id = :id"),
            {"id": card_id},  # nosec B608: constant SQL
        ).first()
        if row is None:
            raise NotFound("no such card", param="reference")
        return replace(_recipient(u, row, sealed.sender_id, now, reference),
                       reference_expires_at=sealed.expires_at)  # fmt: skip

    return uow.run(work)


__all__ = [
    "KINDS",
    "METHOD_LABELS",
    "ActivityItem",
    "CardSummary",
    "MonthTotals",
    "Recipient",
    "change_version",
    "find_recipient",
    "recipient_by_reference",
    "get_activity_item",
    "get_card",
    "item_kind",
    "list_activity",
    "list_cards",
    "masked_name",
    "monthly_totals",
    "parse_item_id",
    "rename_card",
]
