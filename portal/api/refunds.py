"""Refunds (``/api/v1/refunds``): money back from the merchant's balance to the card a payment
came from. Several partial refunds are allowed until ``amount_received`` is used up, never
beyond it, even under concurrent requests. The fee is kept. A refund to a card that has been
closed is answered with ``status: failed`` and ``failure_reason: expired_or_canceled_card``
(``refund.created`` then ``refund.failed``): nothing moves. When the balance cannot cover a
refund it is a 400 ``balance_insufficient``; a payment refunded in full is a 400
``charge_already_refunded``; more than is left is a 422 ``amount_too_large``.
"""

from __future__ import annotations

from typing import Literal

from flask import request
from pydantic import Field

from portal.api import bp
from portal.api.merchant_auth import key_failures
from portal.api.operation import operation
from portal.api.pagination import ListResponse
from portal.api.payments import _METADATA, Metadata, replayed
from portal.api.schemas import ApiModel, QueryModel, RequestBody
from portal.domain.errors import IdempotencyConflict, NotFound, UnexpectedState
from portal.domain.ids import MAX_LENGTH
from portal.domain.types import Actor
from portal.services.merchants import payments
from portal.services.merchants.objects import refund_object
from portal.services.shared.pagination import DEFAULT_LIMIT, MAX_ID, MAX_LIMIT
from portal.web.uow import make_uow

Reason = Literal["duplicate", "fraudulent", "requested_by_customer"]


class Refund(ApiModel):
    id: str = Field(examples=["re_1Nispe2eZvKYlo2Cd31jOCgZ"])
    object: Literal["refund"] = "refund"
    amount: int
    currency: str = Field(examples=["usd"])
    payment: str = Field(description="The payment refunded.")
    reason: Reason | None
    status: Literal["pending", "succeeded", "failed"]
    failure_reason: str | None
    metadata: Metadata
    created: int = Field(description="Unix seconds.")

    @classmethod
    def of(cls, r: payments.RefundView) -> Refund:
        return cls.model_validate(refund_object(r))


class RefundList(ListResponse[Refund]):
    """The merchant's refunds, newest first."""


class NewRefund(RequestBody):
    payment: str = Field(max_length=MAX_LENGTH, examples=["pay_3MtwBwLkdIwHu7ix28a3tqPa"])
    amount: int | None = Field(None, ge=1, le=MAX_ID, description="Default: all that is left.")
    reason: Reason | None = None
    metadata: Metadata = _METADATA


class RefundListQuery(QueryModel):
    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)
    starting_after: str | None = Field(None, max_length=MAX_LENGTH)
    payment: str | None = Field(None, max_length=MAX_LENGTH, description="Only this payment's.")


@operation(
    bp, "POST", "/refunds", summary="Refund a payment", tags=["refunds"], auth="api_key",
    permission="refunds:write", body=NewRefund, response=Refund, status=201,
    errors=(IdempotencyConflict, NotFound, UnexpectedState, 409), idempotency="required",
    rate_limit=key_failures,
)  # fmt: skip
def create_refund(body: NewRefund, actor: Actor, idempotency_key: str) -> Refund:
    """Refund all that is left of a succeeded payment, or `amount` of it."""
    assert actor.id is not None
    result = payments.create_refund(
        make_uow(), actor=actor, merchant=actor.id, payment=body.payment,
        idempotency_key=idempotency_key, amount=body.amount, reason=body.reason,
        metadata=body.metadata,
    )  # fmt: skip
    replayed(result)
    return Refund.of(result)


@operation(
    bp, "GET", "/refunds/<refund_id>", summary="Retrieve a refund", tags=["refunds"],
    auth="api_key", permission="payments:read", response=Refund, errors=(NotFound,),
    rate_limit=key_failures, ids={"refund_id": "refund"},
)  # fmt: skip
def get_refund(refund_id: str, actor: Actor) -> Refund:
    """One of the merchant's refunds."""
    assert actor.id is not None
    return Refund.of(
        payments.get_refund(make_uow(), actor=actor, merchant=actor.id, refund=refund_id)
    )


@operation(
    bp, "GET", "/refunds", summary="List refunds", tags=["refunds"], auth="api_key",
    permission="payments:read", query=RefundListQuery, response=RefundList,
    rate_limit=key_failures,
)  # fmt: skip
def list_refunds(query: RefundListQuery, actor: Actor) -> RefundList:
    """The merchant's refunds, newest first, optionally one payment's."""
    assert actor.id is not None
    page = payments.list_refunds(
        make_uow(), actor=actor, merchant=actor.id, payment=query.payment, limit=query.limit,
        starting_after=query.starting_after,
    )  # fmt: skip
    return RefundList(url=request.path, has_more=page.has_more,
                      data=[Refund.of(r) for r in page.items])  # fmt: skip
