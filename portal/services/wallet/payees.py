"""Paying people, not card numbers (issue 13): find a person by email address or ``@handle``,
pay them at their receiving card for the currency, keep payees (starred, and the people paid
recently), and choose one's own receiving card per currency.

A person look-up answers what a sender may see (masked name, masked email, their handle) and
the same opaque, short-lived recipient reference (``rcp_...``, :mod:`recipients`) the look-up by
card number gives, sealed around the person's receiving card for that currency, so the transfer
itself is unchanged: it takes the reference as its destination. The card is never named.

The receiving card of a person for a currency is the one they chose (``receiving_cards``) while
it is active and not archived, otherwise their first active card of that currency (the lowest
id). A frozen or archived choice is skipped, not refused: money still arrives on a card that can
take it.

No enumeration: "no such person", "archived", "no card in this currency" and "none that can
receive" are one NotFound (code ``recipient_not_found``, param ``to``) with the same message;
the same statement runs for each. Callers must rate-limit look-ups (they are an oracle for
addresses); :data:`LOOKUPS_PER_USER` and :data:`LOOKUPS_PER_ADDRESS` are the limits.

Recent payees are read from the transfers the person's cards sent to other people's cards
(succeeded ones, by card number or by person alike); listing gives each of them a payee row
(``pye_...``) if they have none, so every listed payee has an id to star or pay by.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from portal.domain.errors import Forbidden, InvalidInput, InvalidState, NotFound
from portal.domain.ids import is_public_id
from portal.domain.money import MoneyError, normalize_currency
from portal.domain.types import Actor, ActorKind
from portal.services.identity.handles import canonical_handle
from portal.services.identity.users import canonical_email, is_printable, mask_email
from portal.services.shared import audit
from portal.services.shared.refs import Ref, ref_key
from portal.services.shared.uow import UnitOfWork
from portal.services.wallet import recipients
from portal.services.wallet.activity import masked_name

#: Person look-ups (by email or handle, or a payee's), counted per user and per client address,
#: shared by the pages and the API.
LOOKUPS_PER_USER = "20 per minute; 100 per hour"
LOOKUPS_PER_ADDRESS = "30 per minute; 200 per hour"
#: The longest ``to`` taken (an email address's longest).
MAX_TO = 254
#: How many people paid recently a payee list shows.
RECENT = 10
#: Transfers read per card to find the people paid recently.
_RECENT_SCAN = 100


# -- results ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PersonRecipient:
    """What a sender may learn of a person before paying them: never more than this (no card,
    no full name, no full address)."""

    holder: str  # masked name, "Budi S."
    email: str  # masked, "b•••@example.com"
    handle: str | None  # their chosen handle, without "@"
    currency: str
    #: What the sender passes as the transfer's destination (``rcp_...``, for this sender only,
    #: until ``reference_expires_at``).
    reference: str
    reference_expires_at: datetime
    #: Internal: the person (for saving them as a payee). Never shown.
    user_id: int


@dataclass(frozen=True, slots=True)
class PayeeView:
    """A person the owner starred or paid recently, masked as in a look-up."""

    public_id: str
    holder: str
    email: str
    handle: str | None
    starred: bool
    last_paid_at: datetime | None


@dataclass(frozen=True, slots=True)
class ReceivingCard:
    """Which of the owner's cards receives money paid to them in ``currency``."""

    currency: str
    card_public_id: str
    #: True when the owner chose it; False when it receives by default (the first card).
    chosen: bool


# -- helpers ---------------------------------------------------------------------------------
def _sender(actor: Actor) -> int:
    if not actor.can("wallet:use"):
        raise Forbidden("missing permission wallet:use")
    if actor.kind != ActorKind.USER or actor.id is None:
        raise Forbidden("only a signed-in user pays people")
    return actor.id


def _currency(currency: str) -> str:
    try:
        return normalize_currency(currency if isinstance(currency, str) else "")
    except MoneyError as exc:
        raise InvalidInput(str(exc), param="currency") from None


def _not_found(currency: str, param: str = "to") -> NotFound:
    """The one answer for every person who cannot be paid in ``currency`` (no enumeration)."""
    return NotFound(
        f"No one can receive {currency} at that email address or handle.",
        param=param, code="recipient_not_found",
    )  # fmt: skip


def parse_to(to: str) -> tuple[str, str]:
    """``("email", canonical address)`` or ``("handle", canonical handle)`` for what a sender
    typed: an address holds an "@" after its first character; anything else is a handle, with
    or without its "@". Raises InvalidInput (param ``to``)."""
    text = to.strip() if isinstance(to, str) else ""
    if not text:
        raise InvalidInput("Enter an email address or an @handle.", param="to")
    if len(text) > MAX_TO or not is_printable(text) or any(c.isspace() for c in text):
        raise InvalidInput(
            "That is not an email address or an @handle.", param="to", code="invalid_recipient"
        )
    if "@" in text[1:]:
        return "email", canonical_email(text)
    return "handle", canonical_handle(text)


#: The receiving card of user ``u`` for ``:cur`` (see the module docstring).
_RECEIVING_CARD_SQL = (
    "(SELECT c.id FROM cards c LEFT JOIN receiving_cards r ON r.user_id = c.user_id"
    " AND r.currency = c.currency AND r.card_id = c.id WHERE c.user_id = u.id"
    " AND c.currency = :cur AND c.archived_at IS NULL AND c.status = 'active'"
    " ORDER BY (r.card_id IS NULL), c.id LIMIT 1)"
)
_PERSON_SQL = (
    "SELECT u.id, u.first_name, u.last_name, u.email, u.handle, "  # nosec B608: constant SQL; {which} is one of this module's conditions
    + _RECEIVING_CARD_SQL
    + " AS card_id FROM users u WHERE {which} AND u.archived_at IS NULL"
)


def _person(u: UnitOfWork, row: Any, sender: int, currency: str, now: datetime,
            reference: str = "") -> PersonRecipient:  # fmt: skip
    return PersonRecipient(
        holder=masked_name(row.first_name, row.last_name), email=mask_email(row.email),
        handle=row.handle, currency=currency,
        reference=reference
        or recipients.issue(u.settings, sender_id=sender, card_id=row.card_id, now=now,
                            person=True),
        reference_expires_at=now + timedelta(minutes=recipients.REFERENCE_MINUTES),
        user_id=row.id,
    )  # fmt: skip


def _payable(u: UnitOfWork, which: str, params: dict[str, Any], sender: int, currency: str,
             param: str = "to") -> PersonRecipient:  # fmt: skip
    row = u.execute(
        _PERSON_SQL.format(which=which),  # nosec B608: which is one of this module's constants
        {**params, "cur": currency},
    ).first()
    if row is None or row.card_id is None:
        raise _not_found(currency, param)
    if row.id == sender:
        raise InvalidInput(
            "That is you. To move money between your own cards, use Send money.",
            param=param, code="recipient_is_self",
        )  # fmt: skip
    return _person(u, row, sender, currency, u.now())


# -- look-ups --------------------------------------------------------------------------------
def find_person(uow: UnitOfWork, *, actor: Actor, to: str, currency: str) -> PersonRecipient:
    """The person with this email address or handle, masked, with the recipient reference that
    pays their receiving card for ``currency``. Raises Forbidden, InvalidInput (``to``,
    ``currency``; ``recipient_is_self``), NotFound (``recipient_not_found``, the same whatever
    the reason). Callers must rate-limit it."""
    sender = _sender(actor)
    cur = _currency(currency)
    kind, key = parse_to(to)
    which = "u.email_canonical = :key" if kind == "email" else "u.handle_canonical = :key"
    return uow.run(lambda u: _payable(u, which, {"key": key}, sender, cur))


def person_by_reference(uow: UnitOfWork, *, actor: Actor, reference: str) -> PersonRecipient:
    """What :func:`find_person` showed for this reference, again (a page's confirm step), while
    it is this sender's and has not expired and the card still receives. Raises NotFound
    (param ``reference``)."""
    sender = _sender(actor)
    sealed = recipients.open_reference(uow.settings, reference, "reference")

    def work(u: UnitOfWork) -> PersonRecipient:
        now = u.now()
        card_id = recipients.check(sealed, sender_id=sender, now=now, param="reference")
        row = u.execute(
            "SELECT u.id, u.first_name, u.last_name, u.email, u.handle, c.id AS card_id,"
            " c.currency FROM cards c JOIN users u ON u.id = c.user_id WHERE c.id = :id"
            " AND c.archived_at IS NULL AND u.archived_at IS NULL",
            {"id": card_id},
        ).first()
        if row is None:
            raise NotFound("no such card", param="reference")
        found = _person(u, row, sender, row.currency, now, reference)
        return PersonRecipient(**{**_fields(found), "reference_expires_at": sealed.expires_at})

    return uow.run(work)


def _fields(value: Any) -> dict[str, Any]:
    return {name: getattr(value, name) for name in value.__slots__}


def recipient_for_payee(
    uow: UnitOfWork, *, actor: Actor, payee_id: str, currency: str
) -> PersonRecipient:
    """A look-up of one of the sender's payees (``pye_...``) for ``currency``, as
    :func:`find_person`. Raises Forbidden, InvalidInput (``currency``), NotFound (a payee that
    is not the sender's: ``payee``; one who cannot receive: ``recipient_not_found``)."""
    sender = _sender(actor)
    cur = _currency(currency)
    if not is_public_id("payee", payee_id):
        raise NotFound("no such payee", param="payee")

    def work(u: UnitOfWork) -> PersonRecipient:
        payee = u.execute(
            "SELECT payee_id FROM payees WHERE public_id = :pid AND owner_id = :me",
            {"pid": payee_id, "me": sender},
        ).scalar()
        if payee is None:
            raise NotFound("no such payee", param="payee")
        return _payable(u, "u.id = :payee", {"payee": payee}, sender, cur, param="payee")

    return uow.run(work)


# -- payees ----------------------------------------------------------------------------------
_PAYEE_COLUMNS = "p.public_id, p.starred, u.first_name, u.last_name, u.email, u.handle"


def _payee(row: Any, last_paid_at: datetime | None) -> PayeeView:
    return PayeeView(
        public_id=row.public_id, holder=masked_name(row.first_name, row.last_name),
        email=mask_email(row.email), handle=row.handle, starred=row.starred,
        last_paid_at=last_paid_at,
    )  # fmt: skip


_RECENT_SQL = (
    "SELECT rc.user_id AS payee_id, max(t.created_at) AS last_paid_at FROM cards mine"
    " CROSS JOIN LATERAL (SELECT to_card_id, created_at FROM transfers"
    " WHERE from_card_id = mine.id AND status = 'succeeded' ORDER BY created_at DESC"
    " LIMIT :scan) t JOIN cards rc ON rc.id = t.to_card_id JOIN users pu ON pu.id = rc.user_id"
    " WHERE mine.user_id = :me AND rc.user_id <> :me AND pu.archived_at IS NULL"
    " GROUP BY rc.user_id ORDER BY last_paid_at DESC LIMIT :recent"
)


def list_payees(uow: UnitOfWork, *, actor: Actor) -> tuple[PayeeView, ...]:
    """The sender's starred payees (by name), then the people they paid most recently (at most
    :data:`RECENT`, newest first), each once. Gives a person paid recently a payee row if they
    have none. Raises Forbidden."""
    sender = _sender(actor)

    def work(u: UnitOfWork) -> tuple[PayeeView, ...]:
        recent = {
            row.payee_id: row.last_paid_at
            for row in u.execute(
                _RECENT_SQL, {"me": sender, "scan": _RECENT_SCAN, "recent": RECENT}
            )
        }
        if recent:
            u.execute(
                "INSERT INTO payees (owner_id, payee_id) SELECT :me, unnest(CAST(:ids AS bigint[]))"
                " ON CONFLICT (owner_id, payee_id) DO NOTHING",
                {"me": sender, "ids": list(recent)},
            )
        rows = u.execute(
            f"SELECT p.payee_id, {_PAYEE_COLUMNS} FROM payees p JOIN users u"  # nosec B608: constant columns
            " ON u.id = p.payee_id WHERE p.owner_id = :me AND u.archived_at IS NULL"
            " AND (p.starred OR p.payee_id = ANY(CAST(:ids AS bigint[])))",
            {"me": sender, "ids": list(recent)},
        ).all()
        found = [_payee(row, recent.get(row.payee_id)) for row in rows]
        starred = sorted((p for p in found if p.starred), key=lambda p: (p.holder, p.email))
        others = sorted((p for p in found if not p.starred),
                        key=lambda p: p.last_paid_at or datetime.min, reverse=True)  # fmt: skip
        return (*starred, *others)

    return uow.run(work)


def _last_paid(u: UnitOfWork, owner: int, payee: int) -> datetime | None:
    return u.execute(
        "SELECT max(t.created_at) FROM cards mine CROSS JOIN LATERAL (SELECT to_card_id,"
        " created_at FROM transfers WHERE from_card_id = mine.id AND status = 'succeeded'"
        " ORDER BY created_at DESC LIMIT :scan) t JOIN cards rc ON rc.id = t.to_card_id"
        " WHERE mine.user_id = :me AND rc.user_id = :payee",
        {"me": owner, "payee": payee, "scan": _RECENT_SCAN},
    ).scalar()


def save_payee(uow: UnitOfWork, *, actor: Actor, reference: str) -> PayeeView:
    """Star the person a recipient reference (``rcp_...``, from a look-up by this sender, by
    person or by card number) pays, making them a payee if they were not one. Raises Forbidden,
    NotFound (param ``recipient``), InvalidInput (one's own card)."""
    sender = _sender(actor)
    sealed = recipients.open_reference(uow.settings, reference, "recipient")

    def work(u: UnitOfWork) -> PayeeView:
        card_id = recipients.check(sealed, sender_id=sender, now=u.now(), param="recipient")
        person = u.execute(
            "SELECT u.id FROM cards c JOIN users u ON u.id = c.user_id WHERE c.id = :id"
            " AND u.archived_at IS NULL",
            {"id": card_id},
        ).scalar()
        if person is None:
            raise NotFound("no such card", param="recipient")
        if person == sender:
            raise InvalidInput("That is you.", param="recipient", code="recipient_is_self")
        row = u.execute(
            "WITH saved AS (INSERT INTO payees (owner_id, payee_id, starred) VALUES (:me, :p, true)"
            " ON CONFLICT (owner_id, payee_id) DO UPDATE SET starred = true, updated_at = :now"
            f" RETURNING public_id, starred, payee_id) SELECT {_PAYEE_COLUMNS} FROM saved p"  # nosec B608: constant columns
            " JOIN users u ON u.id = p.payee_id",
            {"me": sender, "p": person, "now": u.now()},
        ).one()
        audit.record(u, actor, "payee.star", "user", person)
        return _payee(row, _last_paid(u, sender, person))

    return uow.run(work)


def set_starred(uow: UnitOfWork, *, actor: Actor, payee_id: str, starred: bool) -> PayeeView:
    """Star or unstar one of the sender's payees. Raises Forbidden, NotFound (param
    ``payee_id``)."""
    sender = _sender(actor)
    if not is_public_id("payee", payee_id):
        raise NotFound("no such payee", param="payee_id")

    def work(u: UnitOfWork) -> PayeeView:
        row = u.execute(
            "WITH changed AS (UPDATE payees SET starred = :s, updated_at = :now"
            " WHERE public_id = :pid AND owner_id = :me RETURNING public_id, starred, payee_id)"
            f" SELECT p.payee_id, {_PAYEE_COLUMNS} FROM changed p JOIN users u"  # nosec B608: constant columns
            " ON u.id = p.payee_id WHERE u.archived_at IS NULL",
            {"s": bool(starred), "now": u.now(), "pid": payee_id, "me": sender},
        ).first()
        if row is None:
            raise NotFound("no such payee", param="payee_id")
        audit.record(u, actor, "payee.star" if starred else "payee.unstar", "user", row.payee_id)
        return _payee(row, _last_paid(u, sender, row.payee_id))

    return uow.run(work)


# -- one's own receiving cards ---------------------------------------------------------------
def receiving_cards(uow: UnitOfWork, *, actor: Actor) -> tuple[ReceivingCard, ...]:
    """For each currency the actor holds an active card in, the card that receives money paid
    to them, by currency. Raises Forbidden."""
    owner = _sender(actor)

    def work(u: UnitOfWork) -> tuple[ReceivingCard, ...]:
        rows = u.execute(
            "SELECT DISTINCT ON (c.currency) c.currency, c.public_id, r.card_id IS NOT NULL AS"
            " chosen FROM cards c LEFT JOIN receiving_cards r ON r.user_id = c.user_id"
            " AND r.currency = c.currency AND r.card_id = c.id WHERE c.user_id = :me"
            " AND c.archived_at IS NULL AND c.status = 'active'"
            " ORDER BY c.currency, (r.card_id IS NULL), c.id",
            {"me": owner},
        ).all()
        return tuple(ReceivingCard(r.currency, r.public_id, r.chosen) for r in rows)

    return uow.run(work)


def set_receiving_card(uow: UnitOfWork, *, actor: Actor, card_id: Ref) -> ReceivingCard:
    """Make one of one's own active cards the one that receives money paid to one in its
    currency. Raises Forbidden, NotFound (``card_id``), InvalidState (frozen or archived)."""
    owner = _sender(actor)
    key = ref_key("card", card_id)
    if key is None:
        raise NotFound("no such card", param="card_id")
    column, value = key

    def work(u: UnitOfWork) -> ReceivingCard:
        card = u.execute(
            f"SELECT id, public_id, currency, status, archived_at FROM cards WHERE {column} = :ref"  # nosec B608: column from ref_key
            " AND user_id = :me",
            {"ref": value, "me": owner},
        ).first()
        if card is None:
            raise NotFound("no such card", param="card_id")
        if card.archived_at is not None:
            raise InvalidState("card is archived", param="card_id")
        if card.status != "active":
            raise InvalidState(
                "card is frozen: unfreeze it first", param="card_id", code="card_frozen"
            )
        u.execute(
            "INSERT INTO receiving_cards (user_id, currency, card_id, updated_at)"
            " VALUES (:me, :cur, :card, :now) ON CONFLICT (user_id, currency)"
            " DO UPDATE SET card_id = EXCLUDED.card_id, updated_at = EXCLUDED.updated_at",
            {"me": owner, "cur": card.currency, "card": card.id, "now": u.now()},
        )
        audit.record(u, actor, "card.receive_default", "card", card.id,
                     data={"currency": card.currency})  # fmt: skip
        return ReceivingCard(card.currency, card.public_id, True)

    return uow.run(work)


def payee_for_transfer(uow: UnitOfWork, *, actor: Actor, transfer_id: str) -> PayeeView:
    """The person a transfer the actor sent (``tr_...``) paid, as one of the actor's payees
    (made one if they were not). Raises Forbidden, NotFound (not the actor's transfer, or to
    one of their own cards)."""
    sender = _sender(actor)
    if not is_public_id("transfer", transfer_id):
        raise NotFound("no such transfer", param="transfer_id")

    def work(u: UnitOfWork) -> PayeeView:
        person = u.execute(
            "SELECT rc.user_id FROM transfers t JOIN cards fc ON fc.id = t.from_card_id"
            " JOIN cards rc ON rc.id = t.to_card_id JOIN users pu ON pu.id = rc.user_id"
            " WHERE t.public_id = :tr AND fc.user_id = :me AND rc.user_id <> :me"
            " AND pu.archived_at IS NULL",
            {"tr": transfer_id, "me": sender},
        ).scalar()
        if person is None:
            raise NotFound("no such transfer", param="transfer_id")
        row = u.execute(
            "WITH saved AS (INSERT INTO payees (owner_id, payee_id) VALUES (:me, :p)"
            " ON CONFLICT (owner_id, payee_id) DO NOTHING RETURNING public_id, starred, payee_id)"
            f" SELECT {_PAYEE_COLUMNS} FROM (SELECT * FROM saved UNION ALL SELECT public_id,"  # nosec B608: constant columns
            " starred, payee_id FROM payees WHERE owner_id = :me AND payee_id = :p) p"
            " JOIN users u ON u.id = p.payee_id LIMIT 1",
            {"me": sender, "p": person},
        ).one()
        return _payee(row, _last_paid(u, sender, person))

    return uow.run(work)
