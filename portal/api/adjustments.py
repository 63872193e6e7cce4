"""Four-eyes balance adjustments (``adj_...``): one administrator (``ledger:adjust``) asks for
a credit or debit of a card's wallet or a merchant's balance; it posts only when a second,
different administrator approves it. Staff who read money (``money:read``) list and read them.
The rules are the service's (``portal.services.admin.adjustments``): the requester cannot
approve or reject (403 ``four_eyes_required``) and only the requester withdraws (403
``not_requester``); a decided request refuses another decision (400 ``adjustment_decided``); a
debit beyond the available balance is refused at approval (402 ``insufficient_funds``);
approving again what one approved answers the same approval and posts nothing."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from portal.api import bp
from portal.api.operation import operation
from portal.api.pagination import ListQuery, ListResponse, cursor_field
from portal.api.schemas import ApiModel, PublicId, RequestBody
from portal.domain.errors import InsufficientFunds, InvalidInput, UnexpectedState
from portal.domain.money import Money, MoneyError
from portal.domain.types import Actor
from portal.services.admin import adjustments as service
from portal.services.admin.adjustments import AdjustmentView
from portal.web.uow import make_uow

AdjustmentId = PublicId("adjustment")
IDS = {"adjustment_id": "adjustment"}


class Adjustment(ApiModel):
    """A manual credit or debit and its decision."""

    id: AdjustmentId
    object: Literal["adjustment"] = "adjustment"
    target: str = Field(description="The card (`card_...`) or merchant (`mch_...`) adjusted.")
    target_type: Literal["card", "merchant"]
    direction: Literal["credit", "debit"]
    amount: int = Field(description="Minor units of `currency`, always positive.")
    currency: str = Field(description="Lowercase ISO 4217 code.", examples=["usd"])
    reason: str
    reference: str
    status: Literal["pending", "approved", "rejected", "withdrawn"]
    requested_by: str = Field(description="The requester's email.")
    created: int = Field(description="Unix time it was requested.")
    decided_by: str | None = Field(description="Who approved, rejected or withdrew it.")
    decided: int | None = Field(description="Unix time of the decision.")
    decision_reason: str | None = Field(description="Why it was rejected.")
    journal_entry: int | None = Field(description="The ledger entry an approval posted.")
    replayed: bool = Field(False, description="True when this answers an earlier request again.")

    @classmethod
    def of(cls, a: AdjustmentView) -> Adjustment:
        def unix(at: datetime | None) -> int | None:
            return int(at.timestamp()) if at is not None else None

        return cls(
            id=a.public_id, target=a.target_public_id,
            target_type="card" if a.target_type == "card" else "merchant",
            direction="credit" if a.direction == "credit" else "debit",
            amount=a.amount.amount_minor, currency=a.amount.currency.lower(), reason=a.reason,
            reference=a.reference, status=a.status,  # type: ignore[arg-type]
            requested_by=a.requested_by, created=int(a.created_at.timestamp()),
            decided_by=a.decided_by, decided=unix(a.decided_at),
            decision_reason=a.decision_reason, journal_entry=a.journal_entry_id,
            replayed=a.replayed,
        )  # fmt: skip


class AdjustmentList(ListResponse[Adjustment]):
    """Adjustments, newest first."""


class AdjustmentQuery(ListQuery):
    starting_after: str | None = cursor_field("adjustment")
    status: Literal["pending", "approved", "rejected", "withdrawn", "decided"] | None = Field(
        None, description="Only these (`decided`: every status but pending)."
    )


class NewAdjustment(RequestBody):
    target: str = Field(
        pattern=r"^(?:card|mch)_[0-9A-Za-z]{24}$",
        description="A card's id (`card_...`, its wallet) or a merchant's (`mch_...`, its"
        " balance in `currency`).",
    )
    direction: Literal["credit", "debit"]
    amount: int = Field(ge=1, le=service.MAX_AMOUNT_MINOR, description="Minor units, positive.")
    currency: str = Field(min_length=3, max_length=3, description="ISO 4217 code, any case.")
    reason: str = Field(min_length=1, max_length=service.MAX_REASON)
    reference: str = Field(min_length=1, max_length=service.MAX_REFERENCE)


class Rejection(RequestBody):
    reason: str = Field(min_length=1, max_length=service.MAX_REASON)


@operation(
    bp, "GET", "/adjustments", summary="List balance adjustments", tags=["adjustments"],
    permission=service.READ_PERMISSION, query=AdjustmentQuery, response=AdjustmentList,
    operation_id="list_adjustments",
)  # fmt: skip
def list_adjustments(query: AdjustmentQuery, actor: Actor) -> AdjustmentList:
    """Newest first, optionally of one status. Needs `money:read`."""
    page = service.list_adjustments(
        make_uow(), actor=actor, status=query.status, limit=query.limit,
        starting_after=query.starting_after,
    )  # fmt: skip
    return AdjustmentList.of(page, Adjustment.of)


@operation(
    bp, "POST", "/adjustments", summary="Request a balance adjustment", tags=["adjustments"],
    permission=service.PERMISSION, body=NewAdjustment, response=Adjustment, status=201,
    idempotency="required", operation_id="create_adjustment",
)  # fmt: skip
def create_adjustment(body: NewAdjustment, actor: Actor, idempotency_key: str) -> Adjustment:
    """Nothing moves until another administrator approves it. Needs `ledger:adjust`. 422
    `currency_mismatch` (not the card's currency), `parameter_invalid` (a merchant without a
    balance in that currency); 404 for an unknown card or merchant."""
    try:
        amount = Money(body.amount, body.currency)
    except MoneyError as exc:
        raise InvalidInput(str(exc), param=exc.param) from exc
    made = service.request_adjustment(
        make_uow(), actor=actor, target=body.target, direction=body.direction, amount=amount,
        reason=body.reason, reference=body.reference, idempotency_key=idempotency_key,
    )  # fmt: skip
    return Adjustment.of(made)


@operation(
    bp, "GET", "/adjustments/<adjustment_id>", summary="Retrieve a balance adjustment",
    tags=["adjustments"], permission=service.READ_PERMISSION, response=Adjustment, ids=IDS,
    operation_id="get_adjustment",
)  # fmt: skip
def get_adjustment(adjustment_id: str, actor: Actor) -> Adjustment:
    """One request with its decision. Needs `money:read`."""
    return Adjustment.of(service.get_adjustment(make_uow(), actor=actor, adjustment=adjustment_id))


@operation(
    bp, "POST", "/adjustments/<adjustment_id>/approve", summary="Approve and post it",
    tags=["adjustments"], permission=service.PERMISSION, response=Adjustment, ids=IDS,
    errors=(UnexpectedState, InsufficientFunds), operation_id="approve_adjustment",
)  # fmt: skip
def approve_adjustment(adjustment_id: str, actor: Actor) -> Adjustment:
    """Posts one journal entry against the `adjustments` system account. By another
    administrator than the requester (403 `four_eyes_required`); approving again answers the
    same approval (`replayed`) and posts nothing."""
    return Adjustment.of(
        service.approve_adjustment(make_uow(), actor=actor, adjustment=adjustment_id)
    )


@operation(
    bp, "POST", "/adjustments/<adjustment_id>/reject", summary="Reject it", tags=["adjustments"],
    permission=service.PERMISSION, body=Rejection, response=Adjustment, ids=IDS,
    errors=(UnexpectedState,), operation_id="reject_adjustment",
)  # fmt: skip
def reject_adjustment(adjustment_id: str, body: Rejection, actor: Actor) -> Adjustment:
    """Nothing is posted. By another administrator than the requester (403
    `four_eyes_required`: the requester withdraws it instead)."""
    return Adjustment.of(
        service.reject_adjustment(
            make_uow(), actor=actor, adjustment=adjustment_id, reason=body.reason
        )
    )


@operation(
    bp, "POST", "/adjustments/<adjustment_id>/withdraw", summary="Withdraw one's own request",
    tags=["adjustments"], permission=service.PERMISSION, response=Adjustment, ids=IDS,
    errors=(UnexpectedState,), operation_id="withdraw_adjustment",
)  # fmt: skip
def withdraw_adjustment(adjustment_id: str, actor: Actor) -> Adjustment:
    """Only its requester (403 `not_requester`), while it is pending."""
    return Adjustment.of(
        service.withdraw_adjustment(make_uow(), actor=actor, adjustment=adjustment_id)
    )
