"""Paying people, not card numbers (issue 13): look a person up by email address or @handle
(or a saved payee) for a currency and get the recipient reference (``rcp_...``) to pay them by
with ``POST /transfers`` (its ``to_card``), exactly as the look-up by card number gives; payees
(starred, and the people paid recently); one's own handle and receiving card per currency; and
one's own card's full number and security code again, after re-authentication.

Look-ups answer one way (404 ``recipient_not_found``, the same message) for "no such person"
and "cannot receive this currency", and are rate limited per user and per client address (the
pages count in the same buckets), so they cannot be used to enumerate accounts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from flask import request
from pydantic import Field

from portal.api import bp
from portal.api.auth import Timestamp
from portal.api.cards import caller_key
from portal.api.operation import operation
from portal.api.pagination import ListResponse
from portal.api.schemas import ApiModel, CardId, RequestBody, id_field
from portal.domain.errors import Conflict, NotFound, RateLimited
from portal.domain.types import Actor
from portal.extensions import limiter
from portal.services.identity import handles
from portal.services.wallet import payees, reveal
from portal.web.uow import make_uow

#: A path's payee id.
PAYEE_ID = {"payee_id": "payee"}

Currency = Annotated[
    str,
    Field(min_length=3, max_length=3, description="ISO 4217 code, any case.", examples=["usd"]),
]


# -- rate limits --------------------------------------------------------------------------------
def _address(scope: str) -> Callable[[], str]:
    return lambda: f"{scope}-address:{request.remote_addr or 'unknown'}"


def _anonymous() -> bool:
    """No valid access token: authentication answers 401 before anything is looked up, so the
    per-user limits do not count it (they would otherwise pool every such request in one)."""
    return caller_key() == "user:-"


def _per_user(limit: str, scope: str, **kwargs: Any) -> Callable[..., Any]:
    """A per-user limit whose counts every route of ``scope`` shares, the pages' too."""
    return limiter.shared_limit(limit, scope, key_func=caller_key, exempt_when=_anonymous, **kwargs)


def _lookup_limits(view: Callable[..., Any]) -> Callable[..., Any]:
    """The person look-up limits, per user and per address, shared with the pages (scope)."""
    view = _per_user(payees.LOOKUPS_PER_USER, "person-lookup")(view)
    return limiter.shared_limit(
        payees.LOOKUPS_PER_ADDRESS, "person-lookup-ip", key_func=_address("person-lookup")
    )(view)


def _reveal_limits(view: Callable[..., Any]) -> Callable[..., Any]:
    return _per_user(reveal.REVEALS_PER_USER, "card-reveal")(view)


def _handle_limits(view: Callable[..., Any]) -> Callable[..., Any]:
    return _per_user(handles.CHANGES_PER_USER, "handle-change", methods=["PUT"])(view)


# -- objects ------------------------------------------------------------------------------------
class PersonRecipient(ApiModel):
    """What a sender may see of a person before paying them: never a card, a full name or a
    full address."""

    object: Literal["person_recipient"] = "person_recipient"
    recipient: str = Field(
        description="Pass it as `to_card` when creating the transfer: an opaque reference"
        " (`rcp_...`) to the person's receiving card for `currency`, for the caller only, valid"
        " until `expires_at`.",
        examples=["rcp_AAE3q0J1Zt..."],
    )
    expires_at: Timestamp
    currency: str = Field(description="Lowercase ISO 4217 code.", examples=["idr"])
    holder: str = Field(description="First name and last initial.", examples=["Budi S."])
    email: str = Field(
        description="Their email address, masked: a look-alike name is told apart by it.",
        examples=["b•••@example.com"],
    )
    handle: str | None = Field(description="Their @handle, without the @.", examples=["budi"])

    @classmethod
    def of(cls, found: payees.PersonRecipient) -> PersonRecipient:
        return cls(
            recipient=found.reference, expires_at=found.reference_expires_at,
            currency=found.currency.lower(), holder=found.holder, email=found.email,
            handle=found.handle,
        )  # fmt: skip


class Payee(ApiModel):
    """A person the caller starred or paid recently (masked as in a look-up)."""

    id: Annotated[str, id_field("payee")]
    object: Literal["payee"] = "payee"
    holder: str = Field(examples=["Budi S."])
    email: str = Field(examples=["b•••@example.com"])
    handle: str | None
    starred: bool
    last_paid_at: Timestamp | None = Field(
        description="When the caller last paid them (any of their cards), if recently."
    )

    @classmethod
    def of(cls, payee: payees.PayeeView) -> Payee:
        return cls(
            id=payee.public_id, holder=payee.holder, email=payee.email, handle=payee.handle,
            starred=payee.starred, last_paid_at=payee.last_paid_at,
        )  # fmt: skip


class PayeeList(ListResponse[Payee]):
    """Starred payees by name, then the people paid most recently (at most 10), newest first."""


class ReceivingCard(ApiModel):
    """The card that receives money paid to the caller in `currency`."""

    object: Literal["receiving_card"] = "receiving_card"
    currency: str = Field(description="Lowercase ISO 4217 code.", examples=["usd"])
    card: CardId
    chosen: bool = Field(
        description="True if the caller chose it; false if it receives by default (their first"
        " active card of the currency)."
    )

    @classmethod
    def of(cls, choice: payees.ReceivingCard) -> ReceivingCard:
        return cls(currency=choice.currency.lower(), card=choice.card_public_id,
                   chosen=choice.chosen)  # fmt: skip


class ReceivingCardList(ListResponse[ReceivingCard]):
    """One receiving card per currency the caller holds an active card in."""


class Handle(ApiModel):
    object: Literal["handle"] = "handle"
    handle: str | None = Field(description="Without the @; null when none.", examples=["budi"])


class CardDetails(ApiModel):
    """One's own card's full details, after re-authentication. Keep them safe."""

    object: Literal["card_details"] = "card_details"
    card: CardId
    brand: str = Field(examples=["visa"])
    number: str = Field(description="The full card number.")
    cvc: str = Field(description="The security code.")
    exp_month: int
    exp_year: int


# -- requests -----------------------------------------------------------------------------------
class PersonLookup(RequestBody):
    to: str = Field(
        min_length=1, max_length=payees.MAX_TO,
        description="Their email address, or their handle (with or without the @).",
        examples=["budi@example.com", "@budi"],
    )  # fmt: skip
    currency: Currency


class PayeeLookup(RequestBody):
    currency: Currency


class NewPayee(RequestBody):
    recipient: str = Field(
        min_length=1, max_length=200,
        description="A recipient reference (`rcp_...`) a look-up gave the caller: star the"
        " person it pays.",
    )  # fmt: skip


class PayeeUpdate(RequestBody):
    starred: bool


class NewReceivingCard(RequestBody):
    card: str = id_field(
        "card", description="One of the caller's active cards: it receives money paid to them"
        " in its currency.",
    )  # fmt: skip


class HandleUpdate(RequestBody):
    handle: str | None = Field(
        max_length=64,
        description=f"{handles.MIN_LENGTH} to {handles.MAX_LENGTH} letters, digits, `_` or `.`"
        " (the @ optional); null or empty removes it.",
    )


class Reauthentication(RequestBody):
    password: str | None = Field(None, max_length=1024, description="The caller's password.")
    code: str | None = Field(
        None, max_length=64,
        description="Instead of the password: a code from the caller's authenticator app, or"
        " one of their recovery codes (spent).",
    )  # fmt: skip


# -- views --------------------------------------------------------------------------------------
@operation(
    bp,
    "POST",
    "/people/lookup",
    summary="Find a person to pay by email or handle",
    tags=["people"],
    permission="wallet:use",
    body=PersonLookup,
    response=PersonRecipient,
    errors=(NotFound, RateLimited),
    rate_limit=_lookup_limits,
    operation_id="lookup_person",
)
def lookup_person(body: PersonLookup, actor: Actor) -> PersonRecipient:
    """The person with this email address or @handle, masked (first name and last initial,
    masked email, handle), and the `recipient` reference that pays their receiving card for
    `currency`: the transfer's `to_card`, for the caller only, for 15 minutes. 404
    `recipient_not_found` (one message) whether there is no such person or they cannot receive
    this currency; 422 `invalid_recipient`, `recipient_is_self`. Limited to 20 a minute and 100
    an hour per user, 30 a minute and 200 an hour per client address (429 with Retry-After)."""
    found = payees.find_person(make_uow(), actor=actor, to=body.to, currency=body.currency)
    return PersonRecipient.of(found)


@operation(
    bp,
    "GET",
    "/payees",
    summary="List my payees",
    tags=["people"],
    permission="wallet:use",
    response=PayeeList,
    operation_id="list_payees",
)
def list_payees(actor: Actor) -> PayeeList:
    """Starred payees by name, then the people the caller paid most recently (at most 10,
    newest first), masked."""
    found = payees.list_payees(make_uow(), actor=actor)
    return PayeeList(url=request.path, has_more=False, data=[Payee.of(p) for p in found])


@operation(
    bp,
    "POST",
    "/payees",
    summary="Star the person a look-up found",
    tags=["people"],
    permission="wallet:use",
    body=NewPayee,
    response=Payee,
    errors=(NotFound,),
    operation_id="create_payee",
)
def create_payee(body: NewPayee, actor: Actor) -> Payee:
    """Star the person a recipient reference from the caller's look-up (by person or by card
    number) pays, making them a payee. Starring again changes nothing. 404 for a reference that
    is not the caller's or has expired."""
    return Payee.of(payees.save_payee(make_uow(), actor=actor, reference=body.recipient))


@operation(
    bp,
    "PATCH",
    "/payees/<payee_id>",
    summary="Star or unstar a payee",
    tags=["people"],
    permission="wallet:use",
    body=PayeeUpdate,
    response=Payee,
    operation_id="update_payee",
    ids=PAYEE_ID,
)
def update_payee(payee_id: str, body: PayeeUpdate, actor: Actor) -> Payee:
    """An unstarred payee the caller has not paid recently leaves the list."""
    updated = payees.set_starred(make_uow(), actor=actor, payee_id=payee_id, starred=body.starred)
    return Payee.of(updated)


@operation(
    bp,
    "POST",
    "/payees/<payee_id>/lookup",
    summary="Get the recipient reference to pay a payee",
    tags=["people"],
    permission="wallet:use",
    body=PayeeLookup,
    response=PersonRecipient,
    errors=(RateLimited,),
    rate_limit=_lookup_limits,
    operation_id="lookup_payee",
    ids=PAYEE_ID,
)
def lookup_payee(payee_id: str, body: PayeeLookup, actor: Actor) -> PersonRecipient:
    """As a look-up by email or handle, for one of the caller's payees: 404
    `recipient_not_found` when they cannot receive `currency`, 404 `not_found` for a payee id
    that is not the caller's. Counted with the look-ups."""
    found = payees.recipient_for_payee(
        make_uow(), actor=actor, payee_id=payee_id, currency=body.currency
    )
    return PersonRecipient.of(found)


@operation(
    bp,
    "GET",
    "/receiving-cards",
    summary="List my receiving cards",
    tags=["people"],
    permission="wallet:use",
    response=ReceivingCardList,
    operation_id="list_receiving_cards",
)
def list_receiving_cards(actor: Actor) -> ReceivingCardList:
    """Per currency the caller holds an active card in, the card money paid to them arrives on:
    the one they chose, or else their first active card of that currency."""
    found = payees.receiving_cards(make_uow(), actor=actor)
    return ReceivingCardList(
        url=request.path, has_more=False, data=[ReceivingCard.of(c) for c in found]
    )


@operation(
    bp,
    "POST",
    "/receiving-cards",
    summary="Choose the card that receives a currency",
    tags=["people"],
    permission="wallet:use",
    body=NewReceivingCard,
    response=ReceivingCard,
    errors=(NotFound, Conflict),
    operation_id="set_receiving_card",
)
def set_receiving_card(body: NewReceivingCard, actor: Actor) -> ReceivingCard:
    """Money paid to the caller in this card's currency arrives on it from now on. 404 for a
    card that is not the caller's; 409 `card_frozen` or `invalid_state` (archived)."""
    chosen = payees.set_receiving_card(make_uow(), actor=actor, card_id=body.card)
    return ReceivingCard.of(chosen)


@operation(
    bp,
    "GET",
    "/users/me/handle",
    summary="Retrieve my handle",
    tags=["people"],
    permission="wallet:use",
    response=Handle,
    operation_id="get_handle",
)
def get_handle(actor: Actor) -> Handle:
    """The @handle others can pay the caller by (without the @), or null."""
    return Handle(handle=handles.get_handle(make_uow(), actor=actor))


@operation(
    bp,
    "PUT",
    "/users/me/handle",
    summary="Choose my handle",
    tags=["people"],
    permission="wallet:use",
    body=HandleUpdate,
    response=Handle,
    errors=(RateLimited,),
    rate_limit=_handle_limits,
    operation_id="set_handle",
)
def set_handle(body: HandleUpdate, actor: Actor) -> Handle:
    """Others can then find the caller by it (in any case: `@Budi` and `@budi` are one). 422
    `invalid_handle` (length, characters, invisible or text-direction characters, mixed scripts
    with look-alike letters) or `handle_taken` (someone's, in any case, or reserved). Limited
    to 10 changes an hour."""
    return Handle(handle=handles.set_handle(make_uow(), actor=actor, handle=body.handle))


@operation(
    bp,
    "POST",
    "/cards/<card_id>/reveal",
    summary="Reveal my card's number and security code",
    tags=["cards"],
    permission="wallet:use",
    body=Reauthentication,
    response=CardDetails,
    errors=(Conflict, RateLimited),
    rate_limit=_reveal_limits,
    operation_id="reveal_card",
    ids={"card_id": "card"},
)
def reveal_card(card_id: str, body: Reauthentication, actor: Actor) -> CardDetails:
    """The full number and security code of one of the caller's own cards, after
    re-authentication: `password`, or else `code` (authenticator or recovery code). Never for
    anyone else's card, staff included (404). 422 `reauthentication_required`,
    `wrong_password` (param `password`), `wrong_code` (param `code`); 409 for an archived card.
    Every attempt is audited; 5 attempts per 15 minutes and 20 a day per user (429)."""
    shown = reveal.reveal_card(
        make_uow(), actor=actor, card_id=card_id, password=body.password, code=body.code
    )
    return CardDetails(
        card=shown.public_id, brand=shown.brand, number=shown.number, cvc=shown.cvv,
        exp_month=shown.expiry_month, exp_year=shown.expiry_year,
    )  # fmt: skip
