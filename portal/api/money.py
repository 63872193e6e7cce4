"""Money movements: top-ups, transfers and withdrawals (create, retrieve, list), staff settlement
of withdrawals by hand, and the activity feed over all three.

Creating one needs the ``Idempotency-Key`` header (400 ``idempotency_key_missing`` without it).
The first request answers 201; the same request again with the same key answers that first
response with ``Idempotent-Replayed: true``; the key with a different body is a 422 of type
``idempotency_error``. Not enough available money is a 402 ``insufficient_funds``; a frozen,
expired or archived card a 402 ``card_unavailable`` (``card_frozen``...): the refused movement
is kept, failed, in the history, and no balance changed.

Amounts are integers in minor units (``amount``) with an ISO currency code (``currency``,
accepted in any case, answered in lowercase), as in Stripe. Movements are named by their public
ids (``tu_...``, ``tr_...``, ``wd_...``) and cards by theirs (``card_...``), in paths, bodies,
answers and cursors alike.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date, datetime
from typing import Annotated, Literal, TypeVar

from flask import current_app, request
from pydantic import BeforeValidator, Field, WithJsonSchema

from portal.api import bp
from portal.api.auth import Timestamp
from portal.api.cards import caller_key
from portal.api.operation import mark_replayed, operation
from portal.api.pagination import ListQuery, ListResponse, cursor_field
from portal.api.payouts import NewBankAccount
from portal.api.schemas import (
    ACTIVITY_KINDS,
    ApiModel,
    CardId,
    MovementId,
    QueryModel,
    RequestBody,
    TopUpId,
    TransferId,
    WithdrawalId,
    id_field,
    money,
)
from portal.domain.errors import (
    CardUnavailable,
    IdempotencyConflict,
    InsufficientFunds,
    NotFound,
    PortalError,
    RateLimited,
    TemporarilyUnavailable,
    UnexpectedState,
)
from portal.domain.ids import RANDOM_LENGTH
from portal.domain.money import Money
from portal.domain.types import Actor, MovementResult
from portal.extensions import limiter
from portal.services.shared.pagination import DEFAULT_LIMIT, MAX_ID, MAX_LIMIT, Page
from portal.services.wallet import activity, recipients, wallet
from portal.web.uow import make_uow

T = TypeVar("T")


#: ``processing``: a withdrawal whose payout is with the processor (it settles by itself).
Status = Literal["pending", "processing", "succeeded", "failed"]
Kind = Literal["top_up", "transfer", "withdrawal", "payment", "refund"]
Method = Literal["bank_transfer", "credit_card", "debit_card", "e_wallet", "cash"]

#: Service parameter names and the API's names for them.
_PARAMS = {"search": "q", "card_id": "card", "from_card_id": "from_card", "to_card_id": "to_card"}

_CREATE_ERRORS = (InsufficientFunds, CardUnavailable, IdempotencyConflict, NotFound,
                  TemporarilyUnavailable)  # fmt: skip


def _day(value: object) -> date:
    """A day filter: YYYY-MM-DD only (pydantic's own date parsing also takes ``0`` or
    ``20250131``, as seconds since 1970), within the days the feed can be filtered by."""
    if isinstance(value, str):
        if not re.fullmatch(activity.DAY_PATTERN, value):
            raise ValueError("expected a day written YYYY-MM-DD")
        try:
            value = date.fromisoformat(value)
        except ValueError:
            raise ValueError("no such day in the calendar") from None
    if not isinstance(value, date) or isinstance(value, datetime):
        raise ValueError("expected a day written YYYY-MM-DD")
    if not activity.FIRST_DAY <= value <= activity.LAST_DAY:
        raise ValueError(
            f"expected a day from {activity.FIRST_DAY.isoformat()} to"
            f" {activity.LAST_DAY.isoformat()}"
        )
    return value


#: A UTC day, YYYY-MM-DD, from activity.FIRST_DAY to activity.LAST_DAY.
Day = Annotated[
    date,
    BeforeValidator(_day),
    WithJsonSchema({"type": "string", "format": "date", "pattern": activity.DAY_PATTERN}),
]


# -- objects ------------------------------------------------------------------------------------
class Movement(ApiModel):
    id: str
    amount: int = Field(description="Minor units of `currency`.", examples=[5000])
    currency: str = Field(description="Lowercase ISO 4217 code.", examples=["usd"])
    status: Status
    card: CardId = Field(description="The caller's card this movement is seen from (`card_...`).")
    card_last4: str
    direction: Literal["in", "out"] = Field(description="Money into or out of `card`.")
    counterparty: str = Field(
        description="Masked: a method, a card with its holder's first name and last initial, "
        "or a bank with the last four digits of the account.",
        examples=["Visa •••• 4242 (Budi S.)"],
    )
    failure_code: str | None = Field(description="Why it failed, when it did.")
    created_at: Timestamp


class TopUp(Movement):
    """Money added to a card from outside: `pending` until the funding processor confirms it
    (`processing` while it is asked), then `succeeded` or `failed`."""

    id: TopUpId
    object: Literal["top_up"] = "top_up"
    method: Method


class Transfer(Movement):
    """Money moved from one card to another."""

    id: TransferId
    object: Literal["transfer"] = "transfer"
    memo: str


class Withdrawal(Movement):
    """Money paid out to a bank account: `pending` (held), then `processing` while the payout
    is with the processor, until the payout succeeds or fails."""

    id: WithdrawalId
    object: Literal["withdrawal"] = "withdrawal"


class Activity(ApiModel):
    """One entry of the activity feed."""

    id: MovementId = Field(
        description="The movement's own public id: a top-up's `tu_...`, a transfer's `tr_...`,"
        " a withdrawal's `wd_...`, a payment's `pay_...` or a refund's `re_...` (the same id"
        " its own endpoint answers)."
    )
    object: Literal["activity"] = "activity"
    type: Kind
    amount: int
    currency: str
    status: Status
    card: CardId = Field(description="The caller's card this entry is seen from (`card_...`).")
    card_last4: str
    direction: Literal["in", "out"]
    counterparty: str
    method: Method | None
    memo: str
    failure_code: str | None
    created_at: Timestamp

    @classmethod
    def of(cls, item: activity.ActivityItem) -> Activity:
        return cls(
            id=item.id, type=item.kind,  # type: ignore[arg-type]
            amount=item.amount.amount_minor, currency=item.amount.currency.lower(),
            status=item.status, card=item.card_public_id,  # type: ignore[arg-type]
            card_last4=item.card_last4, direction=item.direction,  # type: ignore[arg-type]
            counterparty=item.counterparty, method=item.method,  # type: ignore[arg-type]
            memo=item.memo, failure_code=item.failure_code, created_at=item.created_at,
        )  # fmt: skip


M = TypeVar("M", TopUp, Transfer, Withdrawal)


def _movement(model: type[M], item: activity.ActivityItem) -> M:
    extra: dict[str, object] = {}
    if model is TopUp:
        extra["method"] = item.method
    elif model is Transfer:
        extra["memo"] = item.memo
    return model.model_validate(
        {
            "id": item.id, "amount": item.amount.amount_minor,
            "currency": item.amount.currency.lower(), "status": item.status,
            "card": item.card_public_id, "card_last4": item.card_last4, "direction": item.direction,
            "counterparty": item.counterparty, "failure_code": item.failure_code,
            "created_at": item.created_at, **extra,
        }
    )  # fmt: skip


class TopUpList(ListResponse[TopUp]):
    """Top-ups on the caller's cards, newest first."""


class TransferList(ListResponse[Transfer]):
    """Transfers from and to the caller's cards, newest first."""


class WithdrawalList(ListResponse[Withdrawal]):
    """Withdrawals from the caller's cards, newest first."""


class ActivityList(ListResponse[Activity]):
    """Money movements on the caller's cards, newest first."""


# -- requests -----------------------------------------------------------------------------------
class Amount(RequestBody):
    amount: int = Field(ge=1, le=MAX_ID, description="Minor units of `currency`.", examples=[5000])
    currency: str = Field(
        min_length=3, max_length=3, description="ISO 4217 code, any case.", examples=["usd"]
    )


class NewTopUp(Amount):
    card: CardId = Field(description="One of the caller's cards (`card_...`).")
    method: Method


class NewTransfer(Amount):
    from_card: CardId = Field(description="One of the caller's cards (`card_...`).")
    to_card: str = Field(
        pattern=rf"^(?:card_[0-9A-Za-z]{{{RANDOM_LENGTH}}}|rcp_[0-9A-Za-z_-]{{20,190}})$",
        max_length=recipients.MAX_LENGTH,
        description="One of the caller's own cards (`card_...`), or someone else's by the"
        " `recipient` reference POST /cards/lookup gave the caller (`rcp_...`, valid 15"
        " minutes). Another person's card id is not found, as a card that does not exist.",
        examples=["card_4kT9qL2mXw8ZpR3vN7sB1cYd"],
    )
    memo: str = Field("", max_length=140)


class NewWithdrawal(Amount):
    card: CardId = Field(description="One of the caller's cards (`card_...`).")
    # The bank account's rules are the merchant bank account's (and the service's).
    bank_name: str = NewBankAccount.model_fields["bank_name"]
    account_number: str = NewBankAccount.model_fields["account_number"]
    account_holder: str = NewBankAccount.model_fields["account_holder"]


class Settlement(RequestBody):
    payout_reference: str | None = Field(None, max_length=64)


class Failure(RequestBody):
    failure_code: str = Field("payout_failed", pattern=r"^[a-z][a-z0-9_]{0,63}$")


class Filters(QueryModel):
    card: str | None = id_field(
        "card", default=None, description="Only this card's movements (`card_...`)."
    )
    status: Status | None = None
    since: Day | None = Field(
        None,
        description=f"From this UTC day on (YYYY-MM-DD, {activity.FIRST_DAY.isoformat()} to"
        f" {activity.LAST_DAY.isoformat()}).",
    )
    until: Day | None = Field(
        None,
        description=f"Up to and including this UTC day (YYYY-MM-DD,"
        f" {activity.FIRST_DAY.isoformat()} to {activity.LAST_DAY.isoformat()}).",
    )
    q: str | None = Field(
        None, max_length=100, description="Search what is shown: counterparty, method, memo."
    )


class MovementListQuery(ListQuery, Filters):
    """A list of one kind of movement (its subclasses narrow the cursor to that kind)."""


class TopUpListQuery(MovementListQuery):
    starting_after: str | None = cursor_field("top_up")


class TransferListQuery(MovementListQuery):
    starting_after: str | None = cursor_field("transfer")


class WithdrawalListQuery(MovementListQuery):
    starting_after: str | None = cursor_field("withdrawal")


class ActivityQuery(Filters):
    limit: int = Field(
        DEFAULT_LIMIT, ge=1, le=MAX_LIMIT, description=f"How many, 1 to {MAX_LIMIT}."
    )
    starting_after: str | None = cursor_field(*ACTIVITY_KINDS)
    type: Kind | None = Field(None, description="Only this kind of movement.")


# -- helpers ------------------------------------------------------------------------------------
def _money(body: Amount) -> Money:
    return money(body.amount, body.currency)


def _named(call: Callable[[], T]) -> T:
    """Run ``call``, naming refused parameters as the API does."""
    try:
        return call()
    except PortalError as exc:
        if exc.param in _PARAMS:
            exc.param = _PARAMS[exc.param]
        if getattr(exc, "replayed", False):  # a stored refusal answered again
            mark_replayed()
        raise


def _created(model: type[M], actor: Actor, result: MovementResult) -> M:
    """The 201 response of a movement: as first recorded (a replay answers the same). A
    transfer's is built from the movement's own result; others are read back."""
    if result.replayed:
        mark_replayed()
    if model is Transfer and result.card_last4:
        return model(
            id=result.public_id, amount=result.amount.amount_minor,
            currency=result.amount.currency.lower(), status=result.status.value,
            card=result.card_public_id, card_last4=result.card_last4, direction="out",
            counterparty=result.counterparty, failure_code=None, created_at=result.created_at,
            memo=result.memo,
        )  # fmt: skip
    item = activity.get_activity_item(make_uow(), actor=actor, item_id=result.public_id)
    # Status and time as the first response had them (a withdrawal settles later).
    return _movement(model, item).model_copy(
        update={"status": result.status.value, "created_at": result.created_at}
    )


def _one(model: type[M], public_id: str, actor: Actor) -> M:
    """The movement a path names (its shape checked by the operation's ``ids``)."""
    item = activity.get_activity_item(make_uow(), actor=actor, item_id=public_id)
    return _movement(model, item)


def _page(kind: str, query: MovementListQuery, actor: Actor) -> Page[activity.ActivityItem]:
    return _named(
        lambda: activity.list_activity(
            make_uow(), actor=actor, card_id=query.card, kind=kind, status=query.status,
            since=query.since, until=query.until, search=query.q, limit=query.limit,
            starting_after=query.starting_after,
        )
    )  # fmt: skip


def _list(model: type[M], listing: type[ListResponse[M]], kind: str, query: MovementListQuery,
          actor: Actor) -> ListResponse[M]:  # fmt: skip
    page = _page(kind, query, actor)
    return listing(
        url=request.path, has_more=page.has_more, data=[_movement(model, i) for i in page.items]
    )


# -- top-ups ------------------------------------------------------------------------------------
@operation(
    bp,
    "POST",
    "/top_ups",
    summary="Top up a card",
    tags=["money"],
    permission="wallet:use",
    body=NewTopUp,
    response=TopUp,
    status=201,
    errors=(400, *_CREATE_ERRORS),
    operation_id="create_top_up",
    idempotency="required",
    description="Ask for money to be added to one of the caller's cards from an outside method."
    " The top-up is `pending` (nothing posted, nothing to spend) until the funding processor"
    " confirms the money arrived, a few seconds later (`PORTAL_FUNDING_DELAY_SECONDS`): then it"
    " is `succeeded` and the money is on the card, or `failed` with `failure_code`"
    " `funding_declined` and nothing moved. Follow it with GET /top_ups/{top_up_id}. The demo"
    " processor declines an amount whose minor units end in 13 (e.g. 1013). Pending top-ups"
    " count toward the daily cap. 422 `limit_exceeded` outside the currency's limits or past the"
    " daily cap.",
)
def create_top_up(body: NewTopUp, actor: Actor, idempotency_key: str) -> TopUp:
    result = _named(
        lambda: wallet.top_up(
            make_uow(), actor=actor, card_id=body.card, amount=_money(body), method=body.method,
            idempotency_key=idempotency_key,
        )
    )  # fmt: skip
    return _created(TopUp, actor, result)


@operation(
    bp,
    "GET",
    "/top_ups/<top_up_id>",
    summary="Retrieve a top-up",
    tags=["money"],
    response=TopUp,
    operation_id="get_top_up",
    ids={"top_up_id": "top_up"},
)
def get_top_up(top_up_id: str, actor: Actor) -> TopUp:
    """A top-up on one of the caller's cards (staff with money:read: any)."""
    return _one(TopUp, top_up_id, actor)


@operation(
    bp,
    "GET",
    "/top_ups",
    summary="List top-ups",
    tags=["money"],
    query=TopUpListQuery,
    response=TopUpList,
    operation_id="list_top_ups",
)
def list_top_ups(query: TopUpListQuery, actor: Actor) -> TopUpList:
    """Top-ups on the caller's cards (one card's with `card`), newest first, filtered by
    `status`, `since`, `until` and searched with `q`."""
    return _list(TopUp, TopUpList, "top_up", query, actor)  # type: ignore[return-value]


# -- transfers ----------------------------------------------------------------------------------
def _transfer_limits() -> str:
    return str(current_app.config["PORTAL_TRANSFER_LIMITS"])


@operation(
    bp,
    "POST",
    "/transfers",
    summary="Transfer money to a card",
    tags=["money"],
    permission="wallet:use",
    body=NewTransfer,
    response=Transfer,
    status=201,
    errors=(400, *_CREATE_ERRORS, RateLimited),
    operation_id="create_transfer",
    idempotency="required",
    description="Move money from one of the caller's cards to another card of the same"
    " currency: one of their own, or someone else's by the `recipient` reference of POST"
    " /cards/lookup. An unknown card, another person's card id and an expired or foreign"
    " reference all answer the same 404 on `to_card`. Limited per user (`PORTAL_TRANSFER_LIMITS`,"
    " by default 30 a minute and 1000 a day; 429 with Retry-After).",
    rate_limit=lambda view: limiter.limit(_transfer_limits, key_func=caller_key)(view),
)
def create_transfer(body: NewTransfer, actor: Actor, idempotency_key: str) -> Transfer:
    result = _named(
        lambda: wallet.transfer(
            make_uow(), actor=actor, from_card_id=body.from_card, to_card_id=body.to_card,
            amount=_money(body), idempotency_key=idempotency_key, memo=body.memo,
        )
    )  # fmt: skip
    return _created(Transfer, actor, result)


@operation(
    bp,
    "GET",
    "/transfers/<transfer_id>",
    summary="Retrieve a transfer",
    tags=["money"],
    response=Transfer,
    operation_id="get_transfer",
    ids={"transfer_id": "transfer"},
)
def get_transfer(transfer_id: str, actor: Actor) -> Transfer:
    """A transfer from one of the caller's cards, or one that reached one of their cards
    (staff with money:read: any, seen from the sending card)."""
    return _one(Transfer, transfer_id, actor)


@operation(
    bp,
    "GET",
    "/transfers",
    summary="List transfers",
    tags=["money"],
    query=TransferListQuery,
    response=TransferList,
    operation_id="list_transfers",
)
def list_transfers(query: TransferListQuery, actor: Actor) -> TransferList:
    """Transfers from and (once they succeeded) to the caller's cards, newest first."""
    return _list(Transfer, TransferList, "transfer", query, actor)  # type: ignore[return-value]


# -- withdrawals --------------------------------------------------------------------------------
@operation(
    bp,
    "POST",
    "/withdrawals",
    summary="Withdraw to a bank account",
    tags=["money"],
    permission="wallet:use",
    body=NewWithdrawal,
    response=Withdrawal,
    status=201,
    errors=(400, *_CREATE_ERRORS),
    operation_id="create_withdrawal",
    idempotency="required",
    description="Hold money on one of the caller's cards for a payout to a bank account: the"
    " withdrawal is `pending`, then `processing` while the payout is with the processor, until"
    " the payout succeeds (the money leaves) or fails (the hold is released).",
)
def create_withdrawal(body: NewWithdrawal, actor: Actor, idempotency_key: str) -> Withdrawal:
    bank = wallet.BankAccount(body.bank_name, body.account_number, body.account_holder)
    result = _named(
        lambda: wallet.withdraw(
            make_uow(), actor=actor, card_id=body.card, amount=_money(body), bank=bank,
            idempotency_key=idempotency_key,
        )
    )  # fmt: skip
    return _created(Withdrawal, actor, result)


@operation(
    bp,
    "GET",
    "/withdrawals/<withdrawal_id>",
    summary="Retrieve a withdrawal",
    tags=["money"],
    response=Withdrawal,
    operation_id="get_withdrawal",
    ids={"withdrawal_id": "withdrawal"},
)
def get_withdrawal(withdrawal_id: str, actor: Actor) -> Withdrawal:
    """A withdrawal from one of the caller's cards (staff with money:read or
    withdrawals:manage: any)."""
    return _one(Withdrawal, withdrawal_id, actor)


@operation(
    bp,
    "GET",
    "/withdrawals",
    summary="List withdrawals",
    tags=["money"],
    query=WithdrawalListQuery,
    response=WithdrawalList,
    operation_id="list_withdrawals",
)
def list_withdrawals(query: WithdrawalListQuery, actor: Actor) -> WithdrawalList:
    """Withdrawals from the caller's cards, newest first."""
    return _list(Withdrawal, WithdrawalList, "withdrawal", query, actor)  # type: ignore[return-value]


@operation(
    bp,
    "POST",
    "/withdrawals/<withdrawal_id>/confirm",
    summary="Confirm a withdrawal's payout",
    tags=["money"],
    permission="withdrawals:manage",
    body=Settlement,
    response=Withdrawal,
    errors=(UnexpectedState, TemporarilyUnavailable),
    operation_id="confirm_withdrawal",
    ids={"withdrawal_id": "withdrawal"},
)
def confirm_withdrawal(withdrawal_id: str, body: Settlement, actor: Actor) -> Withdrawal:
    """Staff: the payout went out; the held money leaves the card. A settled withdrawal is
    answered as it is, unchanged; a `processing` one (its payout is with the processor) is
    refused with 400 `unexpected_state`."""
    wallet.confirm_withdrawal(
        make_uow(), actor=actor, withdrawal_id=withdrawal_id,
        payout_reference=body.payout_reference,
    )  # fmt: skip
    return _one(Withdrawal, withdrawal_id, actor)


@operation(
    bp,
    "POST",
    "/withdrawals/<withdrawal_id>/fail",
    summary="Fail a withdrawal's payout",
    tags=["money"],
    permission="withdrawals:manage",
    body=Failure,
    response=Withdrawal,
    errors=(UnexpectedState, TemporarilyUnavailable),
    operation_id="fail_withdrawal",
    ids={"withdrawal_id": "withdrawal"},
)
def fail_withdrawal(withdrawal_id: str, body: Failure, actor: Actor) -> Withdrawal:
    """Staff: the payout failed; the hold is released and the money is available again. A
    settled withdrawal is answered as it is, unchanged; a `processing` one (its payout is with
    the processor) is refused with 400 `unexpected_state`."""
    wallet.fail_withdrawal(
        make_uow(), actor=actor, withdrawal_id=withdrawal_id, failure_code=body.failure_code
    )
    return _one(Withdrawal, withdrawal_id, actor)


# -- the activity feed --------------------------------------------------------------------------
@operation(
    bp,
    "GET",
    "/activity",
    summary="List activity",
    tags=["money"],
    query=ActivityQuery,
    response=ActivityList,
    operation_id="list_activity",
)
def list_activity(query: ActivityQuery, actor: Actor) -> ActivityList:
    """Every money movement on the caller's cards, incoming transfers included, newest first;
    filtered by `card`, `type`, `status`, `since`, `until`, searched with `q`, and paged with
    `starting_after` (an entry's id: the movement's `tu_`, `tr_` or `wd_` id)."""
    page = _named(
        lambda: activity.list_activity(
            make_uow(), actor=actor, card_id=query.card, kind=query.type, status=query.status,
            since=query.since, until=query.until, search=query.q, limit=query.limit,
            starting_after=query.starting_after,
        )
    )  # fmt: skip
    return ActivityList.of(page, Activity.of)
