"""Payments (``/api/v1/payments``), authenticated by a merchant's secret key.

Shaped like Stripe's PaymentIntents: create with a card (``capture_method`` ``automatic``, the
default, captures at once; ``manual`` holds the amount until ``/capture``), capture with an
optional ``amount_to_capture`` (the rest is released), cancel with a reason, retrieve and list.
Every POST needs an ``Idempotency-Key`` header. A decline is a 402 ``card_error`` with
``code: card_declined``, a ``decline_code`` and the recorded ``payment``
(``requires_payment_method`` with ``last_payment_error``). An action the payment's status does
not allow is a 400 ``payment_unexpected_state``. 409 only ever means "the same idempotency key
is in flight now".
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from flask import request
from pydantic import Field

from portal.api import bp
from portal.api.merchant_auth import key_failures
from portal.api.operation import mark_replayed, operation
from portal.api.pagination import ListResponse
from portal.api.schemas import ApiModel, QueryModel, RequestBody, money
from portal.domain.errors import (
    CardDeclined,
    IdempotencyConflict,
    NotFound,
    RateLimited,
    TemporarilyUnavailable,
    UnexpectedState,
)
from portal.domain.ids import MAX_LENGTH
from portal.domain.types import Actor
from portal.services.merchants import payments
from portal.services.merchants.objects import payment_object
from portal.services.shared.pagination import DEFAULT_LIMIT, MAX_ID, MAX_LIMIT
from portal.web.uow import make_uow

Status = Literal["requires_payment_method", "requires_capture", "succeeded", "canceled"]
CaptureMethod = Literal["automatic", "manual"]
CancellationReason = Literal["duplicate", "fraudulent", "requested_by_customer", "abandoned"]
Metadata = dict[str, str]
_METADATA = Field(
    default_factory=dict,
    description="Up to 50 keys of at most 40 characters and values of at most 500 characters.",
)


def replayed(result: payments.PaymentView | payments.RefundView) -> None:
    if result.replayed:
        mark_replayed()


def run_marked(call):  # type: ignore[no-untyped-def]
    """Run ``call``; a stored refusal answered again is marked as a replay."""
    try:
        return call()
    except CardDeclined as exc:
        if exc.replayed:
            mark_replayed()
        raise


# -- objects ------------------------------------------------------------------------------------
class PaymentCard(ApiModel):
    """All a merchant ever sees of the card."""

    brand: str = Field(examples=["visa"])
    last4: str = Field(examples=["4242"])
    fingerprint: str = Field(
        description="The same card gives the same value to this merchant (never to another)."
    )


class PaymentError(ApiModel):
    code: str = Field(examples=["card_declined"])
    decline_code: str = Field(examples=["insufficient_funds"])
    message: str


class Payment(ApiModel):
    """A payment from a card to the merchant."""

    id: str = Field(examples=["pay_3MtwBwLkdIwHu7ix28a3tqPa"])
    object: Literal["payment"] = "payment"
    amount: int = Field(description="Minor units of `currency`.", examples=[2000])
    amount_capturable: int = Field(description="Held and not captured yet.")
    amount_received: int = Field(description="Captured.")
    amount_refunded: int
    refunded: bool = Field(description="Whether the whole received amount was refunded.")
    currency: str = Field(description="Lowercase ISO 4217 code.", examples=["usd"])
    status: Status
    capture_method: CaptureMethod
    cancellation_reason: str | None
    canceled_at: int | None = Field(description="Unix seconds.")
    last_payment_error: PaymentError | None
    fee: int = Field(description="The merchant's fee, taken at capture and kept on refunds.")
    net: int = Field(description="What the capture added to the balance: received minus fee.")
    description: str
    metadata: Metadata
    card: PaymentCard
    checkout_session: str | None = Field(description="The checkout session paid, if any.")
    created: int = Field(description="Unix seconds.")

    @classmethod
    def of(cls, p: payments.PaymentView) -> Payment:
        return cls.model_validate(payment_object(p))


class PaymentList(ListResponse[Payment]):
    """The merchant's payments, newest first."""


# -- requests -----------------------------------------------------------------------------------
class CardInput(RequestBody):
    number: str = Field(max_length=32, examples=["4242424242424242"])
    exp_month: int = Field(ge=1, le=12)
    exp_year: int = Field(ge=2000, le=2100)
    cvc: str = Field(min_length=3, max_length=4, description="Checked, never stored.")


class NewPayment(RequestBody):
    amount: int = Field(ge=1, le=MAX_ID, description="Minor units of `currency`.")
    currency: str = Field(min_length=3, max_length=3, examples=["usd"])
    capture_method: CaptureMethod = "automatic"
    card: CardInput
    description: str = Field("", max_length=1000)
    metadata: Metadata = _METADATA


class Capture(RequestBody):
    amount_to_capture: int | None = Field(
        None, ge=1, le=MAX_ID, description="At most `amount_capturable`; the rest is released."
    )


class Cancel(RequestBody):
    cancellation_reason: CancellationReason | None = None


class PaymentListQuery(QueryModel):
    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)
    starting_after: str | None = Field(None, max_length=MAX_LENGTH)
    status: Status | None = None
    created_gte: int | None = Field(None, alias="created[gte]", ge=0, le=4102444800,
                                    description="Unix seconds.")  # fmt: skip
    created_lte: int | None = Field(None, alias="created[lte]", ge=0, le=4102444800,
                                    description="Unix seconds.")  # fmt: skip
    card_fingerprint: str | None = Field(None, max_length=32)
    q: str | None = Field(None, max_length=100, description="Search description and metadata.")


_ERRORS = (CardDeclined, IdempotencyConflict, NotFound, UnexpectedState, RateLimited,
           TemporarilyUnavailable, 409)  # fmt: skip


PAYMENT_ID = {"payment_id": "payment"}


def _at(seconds: int | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


# -- endpoints ----------------------------------------------------------------------------------
@operation(
    bp, "POST", "/payments", summary="Create a payment", tags=["payments"], auth="api_key",
    permission="payments:write", body=NewPayment, response=Payment, status=201,
    errors=_ERRORS, idempotency="required", rate_limit=key_failures,
)  # fmt: skip
def create_payment(body: NewPayment, actor: Actor, idempotency_key: str) -> Payment:
    """Charge a card: `automatic` captures now (`succeeded`), `manual` holds the amount
    (`requires_capture`) until captured or canceled; uncaptured holds are canceled after
    PORTAL_AUTHORIZATION_DAYS (reason `expired`). A decline is a 402 with `decline_code`
    (`insufficient_funds`, `expired_card`, `incorrect_cvc`, `card_frozen`,
    `currency_not_supported`, `incorrect_number`) and the recorded payment."""
    assert actor.id is not None
    card = payments.CardDetails(body.card.number, body.card.exp_month, body.card.exp_year,
                                body.card.cvc)  # fmt: skip
    result = run_marked(
        lambda: payments.create_payment(
            make_uow(), actor=actor, merchant=actor.id, amount=money(body.amount, body.currency),
            card=card, idempotency_key=idempotency_key, capture_method=body.capture_method,
            description=body.description, metadata=body.metadata,
        )
    )  # fmt: skip
    replayed(result)
    return Payment.of(result)


@operation(
    bp, "POST", "/payments/<payment_id>/capture", summary="Capture a payment", tags=["payments"],
    auth="api_key", permission="payments:write", body=Capture, response=Payment,
    errors=_ERRORS, idempotency="required", rate_limit=key_failures, ids=PAYMENT_ID,
)  # fmt: skip
def capture_payment(payment_id: str, body: Capture, actor: Actor, idempotency_key: str) -> Payment:
    """Capture a `requires_capture` payment, wholly or `amount_to_capture` of it; the rest of
    the hold is released at once. 400 `payment_unexpected_state` in any other status."""
    assert actor.id is not None
    result = payments.capture_payment(
        make_uow(), actor=actor, merchant=actor.id, payment=payment_id,
        idempotency_key=idempotency_key, amount_to_capture=body.amount_to_capture,
    )  # fmt: skip
    replayed(result)
    return Payment.of(result)


@operation(
    bp, "POST", "/payments/<payment_id>/cancel", summary="Cancel a payment", tags=["payments"],
    auth="api_key", permission="payments:write", body=Cancel, response=Payment,
    errors=_ERRORS, idempotency="required", rate_limit=key_failures, ids=PAYMENT_ID,
)  # fmt: skip
def cancel_payment(payment_id: str, body: Cancel, actor: Actor, idempotency_key: str) -> Payment:
    """Cancel a payment that is not captured (its hold is released). 400
    `payment_unexpected_state` once it has succeeded or was canceled."""
    assert actor.id is not None
    result = payments.cancel_payment(
        make_uow(), actor=actor, merchant=actor.id, payment=payment_id,
        idempotency_key=idempotency_key, reason=body.cancellation_reason,
    )  # fmt: skip
    replayed(result)
    return Payment.of(result)


@operation(
    bp, "GET", "/payments/<payment_id>", summary="Retrieve a payment", tags=["payments"],
    auth="api_key", permission="payments:read", response=Payment, errors=(NotFound,),
    rate_limit=key_failures, ids=PAYMENT_ID,
)  # fmt: skip
def get_payment(payment_id: str, actor: Actor) -> Payment:
    """One of the merchant's payments; another merchant's is a 404."""
    assert actor.id is not None
    return Payment.of(
        payments.get_payment(make_uow(), actor=actor, merchant=actor.id, payment=payment_id)
    )


@operation(
    bp, "GET", "/payments", summary="List payments", tags=["payments"], auth="api_key",
    permission="payments:read", query=PaymentListQuery, response=PaymentList,
    rate_limit=key_failures,
)  # fmt: skip
def list_payments(query: PaymentListQuery, actor: Actor) -> PaymentList:
    """The merchant's payments, newest first; filter by status, `created[gte]` and
    `created[lte]` (unix seconds) and card fingerprint; `q` searches description and metadata
    values."""
    assert actor.id is not None
    page = payments.list_payments(
        make_uow(), actor=actor, merchant=actor.id, limit=query.limit,
        starting_after=query.starting_after, status=query.status,
        created_gte=_at(query.created_gte), created_lte=_at(query.created_lte),
        card_fingerprint=query.card_fingerprint, search=query.q,
    )  # fmt: skip
    return PaymentList(url=request.path, has_more=page.has_more,
                       data=[Payment.of(p) for p in page.items])  # fmt: skip
