"""Hosted checkout sessions (``/api/v1/checkout/sessions``), authenticated by a merchant's
secret key.

Shaped like Stripe's Checkout Sessions: the merchant creates a session for an amount with its
success and cancel URLs and sends the payer to the session's ``url``, a Portal page where the
payer signs in and pays with one of their own cards; the merchant never sees card data. The
payer returns to ``success_url`` with ``session_id=cs_...`` added to its query; confirm with
``GET /checkout/sessions/{id}`` (``status`` ``complete``, ``payment_status`` ``paid``) before
fulfilling. A session can be paid once; it expires after ``expires_in`` seconds (30 minutes to
24 hours, 24 hours by default).
"""

from __future__ import annotations

from typing import Literal

from flask import request
from pydantic import Field

from portal.api import bp
from portal.api.merchant_auth import key_failures
from portal.api.operation import mark_replayed, operation
from portal.api.pagination import ListResponse
from portal.api.payments import _METADATA, CaptureMethod, Metadata, money
from portal.api.schemas import ApiModel, QueryModel, RequestBody
from portal.domain.errors import IdempotencyConflict, NotFound, TemporarilyUnavailable
from portal.domain.ids import MAX_LENGTH
from portal.domain.types import Actor
from portal.services.merchants import checkout
from portal.services.merchants.objects import checkout_session_object
from portal.services.shared.pagination import DEFAULT_LIMIT, MAX_ID, MAX_LIMIT
from portal.web.uow import make_uow

SessionStatus = Literal["open", "complete", "expired"]


class CheckoutSession(ApiModel):
    """A hosted payment page for one payment."""

    id: str = Field(examples=["cs_4kT9qL2mXw8ZpR3vN7sB1cYd"])
    object: Literal["checkout.session"] = "checkout.session"
    url: str = Field(description="The Portal page to send the payer to.")
    amount_total: int = Field(description="Minor units of `currency`.", examples=[2000])
    currency: str = Field(description="Lowercase ISO 4217 code.", examples=["usd"])
    description: str
    status: SessionStatus = Field(
        description="`open` until paid (`complete`) or past `expires_at` (`expired`)."
    )
    payment_status: Literal["paid", "unpaid"] = Field(
        description="`paid` once its payment succeeded or holds the money (manual capture)."
    )
    payment: str | None = Field(description="The payment (`pay_...`) that paid it, if any.")
    client_reference_id: str | None
    success_url: str
    cancel_url: str
    capture_method: CaptureMethod
    metadata: Metadata
    created: int = Field(description="Unix seconds.")
    expires_at: int = Field(description="Unix seconds.")

    @classmethod
    def of(cls, s: checkout.CheckoutSessionView) -> CheckoutSession:
        return cls.model_validate(checkout_session_object(s))


class CheckoutSessionList(ListResponse[CheckoutSession]):
    """The merchant's checkout sessions, newest first."""


class NewCheckoutSession(RequestBody):
    amount: int = Field(ge=1, le=MAX_ID, description="Minor units of `currency`.")
    currency: str = Field(min_length=3, max_length=3, examples=["usd"])
    description: str = Field("", max_length=checkout.DESCRIPTION_LENGTH,
                             description="Shown to the payer.")  # fmt: skip
    success_url: str = Field(
        max_length=2048, examples=["https://shop.example/thanks"],
        description="Where the payer goes after paying, with `session_id=cs_...` added to its"
        " query. https (http only to a loopback host in development).",
    )  # fmt: skip
    cancel_url: str = Field(
        max_length=2048, examples=["https://shop.example/cart"],
        description="Where the payer goes on Cancel. https (http only to a loopback host in"
        " development).",
    )  # fmt: skip
    client_reference_id: str | None = Field(
        None, max_length=checkout.CLIENT_REFERENCE_LENGTH,
        description="Your own reference (an order or cart id), echoed back.",
    )  # fmt: skip
    expires_in: int = Field(
        checkout.DEFAULT_EXPIRES_IN, ge=checkout.MIN_EXPIRES_IN, le=checkout.MAX_EXPIRES_IN,
        description="Seconds the session stays payable: 1800 (30 minutes) to 86400 (24 hours).",
    )  # fmt: skip
    capture_method: CaptureMethod = Field(
        "automatic", description="`manual` holds the amount until you capture the payment."
    )
    metadata: Metadata = _METADATA


class CheckoutSessionListQuery(QueryModel):
    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)
    starting_after: str | None = Field(None, max_length=MAX_LENGTH)
    status: SessionStatus | None = None
    client_reference_id: str | None = Field(None, max_length=checkout.CLIENT_REFERENCE_LENGTH)


_ERRORS = (IdempotencyConflict, NotFound, TemporarilyUnavailable, 409)


@operation(
    bp, "POST", "/checkout/sessions", summary="Create a checkout session", tags=["checkout"],
    auth="api_key", permission="payments:write", body=NewCheckoutSession,
    response=CheckoutSession, status=201, errors=_ERRORS, idempotency="required",
    rate_limit=key_failures,
)  # fmt: skip
def create_checkout_session(
    body: NewCheckoutSession, actor: Actor, idempotency_key: str
) -> CheckoutSession:
    """Create a hosted payment page and send the payer to its `url`. They sign in to Portal,
    pick one of their cards and pay; then they return to `success_url` with
    `session_id=cs_...` in its query. Confirm with `GET /checkout/sessions/{id}` before you
    fulfil: never trust the redirect alone."""
    assert actor.id is not None
    session = checkout.create_checkout_session(
        make_uow(), actor=actor, merchant=actor.id, amount=money(body.amount, body.currency),
        success_url=body.success_url, cancel_url=body.cancel_url,
        idempotency_key=idempotency_key, description=body.description,
        client_reference_id=body.client_reference_id, expires_in=body.expires_in,
        capture_method=body.capture_method, metadata=body.metadata,
    )  # fmt: skip
    if session.replayed:
        mark_replayed()
    return CheckoutSession.of(session)


@operation(
    bp, "GET", "/checkout/sessions/<session_id>", summary="Retrieve a checkout session",
    tags=["checkout"], auth="api_key", permission="payments:read", response=CheckoutSession,
    errors=(NotFound,), rate_limit=key_failures,
)  # fmt: skip
def get_checkout_session(session_id: str, actor: Actor) -> CheckoutSession:
    """One of the merchant's sessions (another merchant's is a 404). `status` is `expired` as
    soon as `expires_at` has passed."""
    assert actor.id is not None
    return CheckoutSession.of(
        checkout.get_checkout_session(
            make_uow(), actor=actor, merchant=actor.id, session=session_id
        )
    )


@operation(
    bp, "GET", "/checkout/sessions", summary="List checkout sessions", tags=["checkout"],
    auth="api_key", permission="payments:read", query=CheckoutSessionListQuery,
    response=CheckoutSessionList, rate_limit=key_failures,
)  # fmt: skip
def list_checkout_sessions(query: CheckoutSessionListQuery, actor: Actor) -> CheckoutSessionList:
    """The merchant's sessions, newest first; filter by `status` and `client_reference_id`."""
    assert actor.id is not None
    page = checkout.list_checkout_sessions(
        make_uow(), actor=actor, merchant=actor.id, limit=query.limit,
        starting_after=query.starting_after, status=query.status,
        client_reference_id=query.client_reference_id,
    )  # fmt: skip
    return CheckoutSessionList(url=request.path, has_more=page.has_more,
                               data=[CheckoutSession.of(s) for s in page.items])  # fmt: skip
