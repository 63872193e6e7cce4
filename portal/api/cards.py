"""Cards: issue (the full number and security code are in that response, not in a replay of
it; afterwards only the holder sees them, after re-authentication, through
``POST /cards/{card_id}/reveal`` in :mod:`portal.api.payees`), list, retrieve, rename, freeze
and unfreeze one's own; staff archive and restore any; balances; and the recipient look-up by
card number before a transfer (rate limited per user and per client address, so card numbers
cannot be enumerated).

Amounts are integers in minor units with a lowercase ISO currency code, as in Stripe. Cards are
named by their public ids (``card_...``) in paths, bodies and answers. Another person's card is a
404, never a 403, so its existence does not leak."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal, cast

from flask import request
from pydantic import Field

from portal.api import bp
from portal.api.auth import Timestamp
from portal.api.operation import mark_replayed, operation
from portal.api.pagination import ListQuery, ListResponse, cursor_field
from portal.api.schemas import ApiModel, CardId, CardName, RequestBody, UserId, id_field
from portal.api.security import bearer_credential
from portal.domain.errors import (
    Conflict,
    IdempotencyConflict,
    InvalidInput,
    NotFound,
    RateLimited,
)
from portal.domain.types import Actor
from portal.extensions import limiter
from portal.services.shared.settings import ServiceSettings
from portal.services.wallet import activity, cards, wallet
from portal.web.auth import access_claims
from portal.web.uow import make_uow

#: Look-ups by card number, counted per user and per client address.
LOOKUPS_PER_USER = "20 per minute; 100 per hour"
LOOKUPS_PER_ADDRESS = "20 per minute; 100 per hour"

#: A path's card id.
CARD_ID = {"card_id": "card"}

CardType = Literal["debit", "credit", "prepaid"]
Brand = Literal["visa", "mastercard", "amex", "discover"]


# -- objects ------------------------------------------------------------------------------------
class CardBalance(ApiModel):
    """A card's wallet balances, in minor units of the card's currency."""

    object: Literal["balance"] = "balance"
    card: CardId
    currency: str = Field(description="Lowercase ISO 4217 code.", examples=["usd"])
    posted: int = Field(description="Settled money on the card.")
    pending: int = Field(description="Held for pending withdrawals; not spendable.")
    available: int = Field(description="What can be spent now: posted minus pending.")

    @classmethod
    def of_card(cls, card: activity.CardSummary) -> CardBalance:
        return cls(
            card=card.public_id, currency=card.currency.lower(), posted=card.posted.amount_minor,
            pending=card.pending.amount_minor, available=card.available.amount_minor,
        )  # fmt: skip


class Card(ApiModel):
    """A card, masked: brand and last four only."""

    id: CardId
    object: Literal["card"] = "card"
    user: UserId = Field(description="The cardholder's user id (`usr_...`).")
    name: str
    card_type: str = Field(examples=["debit"])
    brand: str = Field(examples=["visa"])
    last4: str = Field(examples=["4242"])
    exp_month: int
    exp_year: int
    currency: str = Field(description="Lowercase ISO 4217 code.", examples=["usd"])
    status: Literal["active", "frozen"]
    archived: bool
    balance: CardBalance
    created_at: Timestamp | None

    @classmethod
    def of(cls, card: activity.CardSummary) -> Card:
        return cls(
            id=card.public_id, user=card.user_public_id, name=card.name, card_type=card.card_type,
            brand=card.brand, last4=card.last4, exp_month=card.expiry_month,
            exp_year=card.expiry_year, currency=card.currency.lower(),
            status=card.status,  # type: ignore[arg-type]
            archived=card.archived, balance=CardBalance.of_card(card), created_at=card.created_at,
        )  # fmt: skip


class IssuedCard(Card):
    """A card just issued, with its full number and security code. Afterwards only its holder
    sees them again, after re-entering their password or a second-factor code
    (`POST /cards/{card_id}/reveal`). A retry under the same `Idempotency-Key`
    (`Idempotent-Replayed: true`) answers the same card with both `null`."""

    number: str | None = Field(
        description="The full card number. Shown once, in the first response to this request;"
        " `null` in a replay."
    )
    cvc: str | None = Field(
        description="The security code. Shown once, in the first response to this request;"
        " `null` in a replay."
    )


class CardList(ListResponse[Card]):
    """The caller's cards, in the order they were issued."""


class Recipient(ApiModel):
    """What a sender may see of a card before paying it (never its id)."""

    object: Literal["card_recipient"] = "card_recipient"
    recipient: str = Field(
        description="Pass it as `to_card` when creating the transfer: an opaque reference"
        " (`rcp_...`) for the caller only, valid until `expires_at`.",
        examples=["rcp_AAE3q0J1Zt..."],
    )
    expires_at: Timestamp
    brand: str
    last4: str
    currency: str
    holder: str = Field(description="First name and last initial.", examples=["Budi S."])
    email: str = Field(
        description="The holder's email address, masked: a look-alike name is told apart by it"
        " and the card.",
        examples=["b•••@example.com"],
    )


# -- requests -----------------------------------------------------------------------------------
class NewCard(RequestBody):
    card_type: CardType
    brand: Brand
    currency: str = Field(
        min_length=3, max_length=3, description="ISO 4217 code, any case.", examples=["usd"]
    )
    name: CardName = ""
    user: str | None = id_field(
        "user", default=None,
        description="Staff with cards:manage only: issue for this user (`usr_...`).",
    )  # fmt: skip


class CardUpdate(RequestBody):
    name: CardName | None = Field(None, description="Empty clears the name.")


class CardListQuery(ListQuery):
    starting_after: str | None = cursor_field("card")
    include_archived: bool = Field(False, description="Also list archived cards.")
    user: str | None = id_field(
        "user", default=None, description="Staff with cards:read: this user's cards (`usr_...`)."
    )


class Lookup(RequestBody):
    number: str = Field(max_length=64, description="The full card number; spaces and dashes ok.")


# -- views --------------------------------------------------------------------------------------
#: The per-person card limit a deployment has unless it sets PORTAL_MAX_CARDS_PER_USER (what
#: ``cards.issue_card`` enforces, from the service settings).
DEFAULT_MAX_CARDS = cast(
    int,
    next(f.default for f in dataclasses.fields(ServiceSettings) if f.name == "max_cards_per_user"),
)

ISSUE_CARD_DESCRIPTION = (
    "Issue a card with its wallet (for oneself; staff with cards:manage for `user`). The "
    "response carries the full `number` and `cvc`, once: a retry of the same request under the "
    "same `Idempotency-Key` answers the same card (`Idempotent-Replayed: true`) with `number` "
    "and `cvc` `null`.\n\n"
    f"A person holds at most {DEFAULT_MAX_CARDS} cards that are not archived (the deployment's "
    "`PORTAL_MAX_CARDS_PER_USER`; the error message states the limit in force): one more is a "
    "422 `limit_exceeded` with `param` `card_type`, and issues nothing."
)


@operation(
    bp,
    "POST",
    "/cards",
    summary="Issue a card",
    tags=["cards"],
    permission="wallet:use",
    body=NewCard,
    response=IssuedCard,
    status=201,
    operation_id="issue_card",
    idempotency="optional",
    errors=(IdempotencyConflict,),
    description=ISSUE_CARD_DESCRIPTION,
)
def issue_card(body: NewCard, actor: Actor, idempotency_key: str | None) -> IssuedCard:
    """Issue a card (see ``ISSUE_CARD_DESCRIPTION``)."""
    uow = make_uow()
    issued = cards.issue_card(
        uow, actor=actor, user_id=body.user if body.user is not None else (actor.id or 0),
        card_type=body.card_type, brand=body.brand, currency=body.currency, name=body.name,
        idempotency_key=idempotency_key,
    )  # fmt: skip
    card = Card.of(activity.get_card(uow, actor=actor, card_id=issued.public_id))
    if isinstance(issued, cards.ReissuedCard):
        mark_replayed()
        return IssuedCard(**dict(card), number=None, cvc=None)
    return IssuedCard(**dict(card), number=issued.number, cvc=issued.cvv)


@operation(
    bp,
    "GET",
    "/cards",
    summary="List my cards",
    tags=["cards"],
    query=CardListQuery,
    response=CardList,
    operation_id="list_cards",
)
def list_cards(query: CardListQuery, actor: Actor) -> CardList:
    """The caller's cards (staff with cards:read: `user`'s), in the order they were issued,
    with balances. Archived cards only with `include_archived=true`."""
    found = activity.list_cards(
        make_uow(), actor=actor, user_id=query.user, include_archived=query.include_archived
    )
    if query.starting_after is not None:
        ids = [c.public_id for c in found]
        if query.starting_after not in ids:
            raise InvalidInput("starting_after is not a known card id", param="starting_after")
        found = found[ids.index(query.starting_after) + 1 :]
    return CardList(
        url=request.path,
        has_more=len(found) > query.limit,
        data=[Card.of(c) for c in found[: query.limit]],
    )


@operation(
    bp,
    "GET",
    "/cards/<card_id>",
    summary="Retrieve a card",
    tags=["cards"],
    response=Card,
    operation_id="get_card",
    ids=CARD_ID,
)
def get_card(card_id: str, actor: Actor) -> Card:
    """One of the caller's cards (staff with cards:read: any), masked, with balances. Never
    the full number or security code."""
    return Card.of(activity.get_card(make_uow(), actor=actor, card_id=card_id))


@operation(
    bp,
    "PATCH",
    "/cards/<card_id>",
    summary="Rename a card",
    tags=["cards"],
    body=CardUpdate,
    response=Card,
    errors=(Conflict,),
    operation_id="update_card",
    ids=CARD_ID,
)
def update_card(card_id: str, body: CardUpdate, actor: Actor) -> Card:
    """Name one of one's own cards (owner only). 409 `invalid_state` for an archived card."""
    uow = make_uow()
    if body.name is None:  # nothing to change; still only for the owner
        card = activity.get_card(uow, actor=actor, card_id=card_id)
        if card.user_id != actor.id or actor.kind != "user":
            raise NotFound("no such card", param="card_id")
        return Card.of(card)
    return Card.of(activity.rename_card(uow, actor=actor, card_id=card_id, name=body.name))


def _changed(actor: Actor, card_id: str) -> Card:
    return Card.of(activity.get_card(make_uow(), actor=actor, card_id=card_id))


@operation(
    bp,
    "POST",
    "/cards/<card_id>/freeze",
    summary="Freeze a card",
    tags=["cards"],
    response=Card,
    errors=(Conflict,),
    operation_id="freeze_card",
    ids=CARD_ID,
)
def freeze_card(card_id: str, actor: Actor) -> Card:
    """A frozen card can neither send nor receive money until unfrozen (its owner, or staff
    with cards:manage). Freezing a frozen card changes nothing. 409 for an archived card."""
    cards.set_frozen(make_uow(), actor=actor, card_id=card_id, frozen=True)
    return _changed(actor, card_id)


@operation(
    bp,
    "POST",
    "/cards/<card_id>/unfreeze",
    summary="Unfreeze a card",
    tags=["cards"],
    response=Card,
    errors=(Conflict,),
    operation_id="unfreeze_card",
    ids=CARD_ID,
)
def unfreeze_card(card_id: str, actor: Actor) -> Card:
    """The card can send and receive money again (its owner, or staff with cards:manage).
    409 for an archived card."""
    cards.set_frozen(make_uow(), actor=actor, card_id=card_id, frozen=False)
    return _changed(actor, card_id)


@operation(
    bp,
    "POST",
    "/cards/<card_id>/archive",
    summary="Archive a card",
    tags=["cards"],
    permission="cards:manage",
    response=Card,
    operation_id="archive_card",
    ids=CARD_ID,
)
def archive_card(card_id: str, actor: Actor) -> Card:
    """Staff: the card leaves its holder's list and can neither send nor receive money; its
    history stays."""
    cards.set_archived(make_uow(), actor=actor, card_id=card_id, archived=True)
    return _changed(actor, card_id)


@operation(
    bp,
    "POST",
    "/cards/<card_id>/restore",
    summary="Restore an archived card",
    tags=["cards"],
    permission="cards:manage",
    response=Card,
    operation_id="restore_card",
    ids=CARD_ID,
)
def restore_card(card_id: str, actor: Actor) -> Card:
    """Staff: bring an archived card back."""
    cards.set_archived(make_uow(), actor=actor, card_id=card_id, archived=False)
    return _changed(actor, card_id)


@operation(
    bp,
    "GET",
    "/cards/<card_id>/balance",
    summary="Retrieve a card's balance",
    tags=["cards"],
    response=CardBalance,
    operation_id="get_card_balance",
    ids=CARD_ID,
)
def get_card_balance(card_id: str, actor: Actor) -> CardBalance:
    """Posted, pending (held) and available money on one of the caller's cards (staff with
    money:read: any card)."""
    balance = wallet.get_balance(make_uow(), actor=actor, card_id=card_id)
    return CardBalance(
        card=balance.card_public_id, currency=balance.posted.currency.lower(),
        posted=balance.posted.amount_minor, pending=balance.pending_debits.amount_minor,
        available=balance.available.amount_minor,
    )  # fmt: skip


# -- the recipient look-up ----------------------------------------------------------------------
def caller_key() -> str:
    """A per-user rate limit's key: the calling user's id from the access token, or "-" (each
    limited route counts its own). Never raises: a key function that raised would make
    flask-limiter think its storage died."""
    try:
        credential = bearer_credential(request)
        if credential is None:
            return "user:-"
        claims = access_claims(credential)
        return f"user:{claims.user_id}"
    except Exception:
        return "user:-"


def _lookup_address() -> str:
    return f"card-lookup-address:{request.remote_addr or 'unknown'}"


def _lookup_limits(view: Callable[..., Any]) -> Callable[..., Any]:
    view = limiter.limit(LOOKUPS_PER_USER, key_func=caller_key)(view)
    return limiter.limit(LOOKUPS_PER_ADDRESS, key_func=_lookup_address)(view)


@operation(
    bp,
    "POST",
    "/cards/lookup",
    summary="Find a transfer recipient by card number",
    tags=["cards"],
    permission="wallet:use",
    body=Lookup,
    response=Recipient,
    errors=(NotFound, RateLimited),
    rate_limit=_lookup_limits,
    operation_id="lookup_card",
)
def lookup_card(body: Lookup, actor: Actor) -> Recipient:
    """The card with this number, masked (brand, last four, currency, the holder's first name
    and last initial, their masked email), to confirm before a transfer, and the `recipient`
    reference to pay it by: the transfer's `to_card`, for the caller only, for 15 minutes.
    404 when no active card has this number; 422 `invalid_card_number`. Limited to 20 a
    minute and 100 an hour per user and per client address (429 with Retry-After)."""
    found = activity.find_recipient(make_uow(), actor=actor, number=body.number)
    return Recipient(
        recipient=found.reference, expires_at=found.reference_expires_at, brand=found.brand,
        last4=found.last4, currency=found.currency.lower(), holder=found.holder, email=found.email,
    )  # fmt: skip
