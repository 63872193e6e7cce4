"""Merchant accounts through the API with a person's access token (the dashboard's API):
apply, see one's merchants (staff: every merchant), staff decisions, API keys (create, list,
roll, revoke; the secret is in the create and roll answers only) and the team (members and
invitations). A merchant that is not one's own is a 404. Payments themselves are taken with
the merchant's secret key (``/payments``, ``/refunds``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from flask import request
from pydantic import Field

from portal.api import bp
from portal.api.auth import Timestamp
from portal.api.operation import operation
from portal.api.pagination import ListResponse
from portal.api.schemas import ApiModel, QueryModel, RequestBody
from portal.domain.errors import Conflict, NotFound, UnexpectedState
from portal.domain.ids import MAX_LENGTH
from portal.domain.types import Actor
from portal.services.merchants import keys, merchants
from portal.web.uow import make_uow

MERCHANT_ID = {"merchant_id": "merchant"}
KEY_IDS = {**MERCHANT_ID, "key_id": "api_key"}
MEMBER_IDS = {**MERCHANT_ID, "member_id": "member"}

Role = Literal["owner", "developer", "viewer"]
State = Literal["pending", "active", "rejected", "suspended", "archived"]
Scope = Literal[
    "payments:read", "payments:write", "refunds:write", "webhooks:manage", "payouts:write"
]


class Merchant(ApiModel):
    id: str = Field(examples=["mch_4kT9vQ2mLx8ZpR1sN6bY3cDe"])
    object: Literal["merchant"] = "merchant"
    name: str
    website: str
    contact_email: str
    settlement_currency: str = Field(examples=["usd"])
    status: State = Field(description="pending, active, rejected, suspended, or archived.")
    status_reason: str
    fee_bps: int = Field(description="Fee in basis points of each capture.")
    fee_fixed: dict[str, int] = Field(description="Fixed fee per capture, minor units by currency.")
    role: Role | None = Field(description="The caller's role in it (null for staff).")
    created_at: Timestamp

    @classmethod
    def of(cls, m: merchants.MerchantView, role: str | None = None) -> Merchant:
        return cls(
            id=m.public_id, name=m.name, website=m.website, contact_email=m.contact_email,
            settlement_currency=m.settlement_currency.lower(), status=m.state,  # type: ignore[arg-type]
            status_reason=m.status_reason, fee_bps=m.fee_bps,
            fee_fixed={k.lower(): v for k, v in m.fee_fixed.items()}, role=role,  # type: ignore[arg-type]
            created_at=m.created_at,
        )  # fmt: skip


class MerchantList(ListResponse[Merchant]):
    """Merchants, newest first."""


class NewMerchant(RequestBody):
    name: str = Field(min_length=2, max_length=120)
    website: str = Field(max_length=255, examples=["https://shop.example"])
    contact_email: str = Field(max_length=254)
    settlement_currency: str = Field(min_length=3, max_length=3, examples=["usd"])


class MerchantQuery(QueryModel):
    limit: int = Field(50, ge=1, le=100)
    starting_after: str | None = Field(None, max_length=MAX_LENGTH)
    state: State | None = Field(None, description="Staff only: filter by state.")
    q: str | None = Field(None, max_length=100)
    all: bool = Field(False, description="Staff: every merchant, not only one's own.")


class DecisionBody(RequestBody):
    reason: str = Field("", max_length=255)


class ApiKey(ApiModel):
    id: str = Field(examples=["key_9sD3kLm2QpX7vB1nR5tY8wZc"])
    object: Literal["api_key"] = "api_key"
    name: str
    redacted: str = Field(description="The prefix and the last four characters.")
    scopes: list[str]
    secret: str | None = Field(
        description="The whole key: only in the answer that creates it (or rolls it)."
    )
    created_at: Timestamp
    expires_at: Timestamp | None
    last_used_at: Timestamp | None
    last_used_ip: str
    revoked: bool

    @classmethod
    def of(cls, k: keys.ApiKeyView) -> ApiKey:
        return cls(
            id=k.public_id, name=k.name, redacted=k.redacted, scopes=list(k.scopes),
            secret=k.secret, created_at=k.created_at, expires_at=k.expires_at,
            last_used_at=k.last_used_at, last_used_ip=k.last_used_ip,
            revoked=k.revoked_at is not None,
        )  # fmt: skip


class ApiKeyList(ListResponse[ApiKey]):
    """The merchant's keys, newest first (revoked ones too)."""


class NewApiKey(RequestBody):
    name: str = Field(min_length=1, max_length=64)
    scopes: list[Scope] | None = Field(
        None, description="Default: payments:read, payments:write, refunds:write."
    )
    expires_at: datetime | None = None


class Roll(RequestBody):
    overlap_hours: int = Field(0, ge=0, le=keys.MAX_OVERLAP_HOURS,
                               description="How long the old key keeps working.")  # fmt: skip


class Member(ApiModel):
    id: str
    object: Literal["member"] = "member"
    user: str
    email: str
    name: str
    role: Role
    created_at: Timestamp


class MemberList(ListResponse[Member]):
    """The merchant's members."""


class NewInvitation(RequestBody):
    email: str = Field(max_length=254)
    role: Role


class Invitation(ApiModel):
    id: str
    object: Literal["invitation"] = "invitation"
    email: str
    role: Role
    token: str | None = Field(description="The link's secret, in the creating answer only.")
    created_at: Timestamp
    expires_at: Timestamp

    @classmethod
    def of(cls, i: merchants.Invitation) -> Invitation:
        return cls(id=i.public_id, email=i.email, role=i.role, token=i.token,  # type: ignore[arg-type]
                   created_at=i.created_at, expires_at=i.expires_at)  # fmt: skip


class RoleChange(RequestBody):
    role: Role


# -- merchants ----------------------------------------------------------------------------------
@operation(
    bp, "POST", "/merchants", summary="Apply for a merchant account", tags=["merchants"],
    body=NewMerchant, response=Merchant, status=201,
)  # fmt: skip
def apply_for_merchant(body: NewMerchant, actor: Actor) -> Merchant:
    """Apply: the merchant is `pending` until staff approve it; the caller is its owner."""
    view = merchants.apply(
        make_uow(), actor=actor, name=body.name, website=body.website,
        contact_email=body.contact_email, settlement_currency=body.settlement_currency,
    )  # fmt: skip
    return Merchant.of(view, "owner")


@operation(
    bp, "GET", "/merchants", summary="List merchants", tags=["merchants"], query=MerchantQuery,
    response=MerchantList,
)  # fmt: skip
def list_merchants(query: MerchantQuery, actor: Actor) -> MerchantList:
    """The caller's merchants; staff with `all=true` see every merchant (filters `state`, `q`)."""
    if query.all:
        page = merchants.list_merchants(
            make_uow(), actor=actor, state=query.state, search=query.q, limit=query.limit,
            starting_after=query.starting_after,
        )  # fmt: skip
        data, more = [Merchant.of(m) for m in page.items], page.has_more
    else:
        data = [Merchant.of(m.merchant, m.role) for m in merchants.merchants_of(make_uow(),
                actor=actor)]  # fmt: skip
        more = False
    return MerchantList(url=request.path, has_more=more, data=data)


@operation(
    bp, "GET", "/merchants/<merchant_id>", summary="Retrieve a merchant", tags=["merchants"],
    response=Merchant, errors=(NotFound,),
    ids=MERCHANT_ID,
)  # fmt: skip
def get_merchant(merchant_id: str, actor: Actor) -> Merchant:
    """A merchant the caller belongs to (or any, for staff)."""
    membership = merchants.get_merchant(make_uow(), actor=actor, merchant=merchant_id)
    return Merchant.of(membership.merchant, membership.role)


def _decision(action: str) -> None:
    """Register ``POST /merchants/{id}/<action>`` for staff."""

    def decide(merchant_id: str, body: DecisionBody, actor: Actor) -> Merchant:
        view = merchants.decide(
            make_uow(), actor=actor, merchant=merchant_id, action=action, reason=body.reason
        )
        return Merchant.of(view)

    decide.__name__ = f"{action}_merchant"
    operation(
        bp, "POST", f"/merchants/<merchant_id>/{action}",
        summary=f"{action.capitalize()} a merchant (staff)", tags=["merchants"],
        permission="merchants:manage", body=DecisionBody, response=Merchant,
        errors=(NotFound, UnexpectedState), ids=MERCHANT_ID,
        description=f"Staff: {action} the merchant (`reason` is kept with the decision)."
        " Approve or reject an application; suspend, reactivate, archive or restore a merchant;"
        " suspending or archiving stops its keys at once. 400 `merchant_unexpected_state` when"
        " the merchant's state does not allow it.",
    )(decide)  # fmt: skip


for _action in ("approve", "reject", "suspend", "reactivate", "archive", "restore"):
    _decision(_action)


# -- keys ---------------------------------------------------------------------------------------
@operation(
    bp, "POST", "/merchants/<merchant_id>/api_keys", summary="Create an API key",
    tags=["merchants"], body=NewApiKey, response=ApiKey, status=201, errors=(NotFound,),
    ids=MERCHANT_ID,
)  # fmt: skip
def create_api_key(merchant_id: str, body: NewApiKey, actor: Actor) -> ApiKey:
    """A new secret key, `sk_live_...`: the answer is the only time it is shown."""
    key = keys.create_api_key(
        make_uow(), actor=actor, merchant=merchant_id, name=body.name,
        scopes=list(body.scopes) if body.scopes is not None else None, expires_at=body.expires_at,
    )  # fmt: skip
    return ApiKey.of(key)


@operation(
    bp, "GET", "/merchants/<merchant_id>/api_keys", summary="List API keys", tags=["merchants"],
    response=ApiKeyList, errors=(NotFound,),
    ids=MERCHANT_ID,
)  # fmt: skip
def list_api_keys(merchant_id: str, actor: Actor) -> ApiKeyList:
    """The merchant's keys with their last use; never a secret."""
    data = [ApiKey.of(k) for k in keys.list_api_keys(make_uow(), actor=actor, merchant=merchant_id)]
    return ApiKeyList(url=request.path, has_more=False, data=data)


@operation(
    bp, "POST", "/merchants/<merchant_id>/api_keys/<key_id>/roll", summary="Roll an API key",
    tags=["merchants"], body=Roll, response=ApiKey, status=201, errors=(NotFound,),
    ids=KEY_IDS,
)  # fmt: skip
def roll_api_key(merchant_id: str, key_id: str, body: Roll, actor: Actor) -> ApiKey:
    """A replacement key now (its secret in this answer only); the old one keeps working for
    `overlap_hours`, then stops."""
    key = keys.roll_api_key(
        make_uow(), actor=actor, merchant=merchant_id, key=key_id, overlap_hours=body.overlap_hours
    )
    return ApiKey.of(key)


@operation(
    bp, "POST", "/merchants/<merchant_id>/api_keys/<key_id>/revoke", summary="Revoke an API key",
    tags=["merchants"], response=ApiKey, errors=(NotFound,),
    ids=KEY_IDS,
)  # fmt: skip
def revoke_api_key(merchant_id: str, key_id: str, actor: Actor) -> ApiKey:
    """The key stops at once."""
    return ApiKey.of(keys.revoke_api_key(make_uow(), actor=actor, merchant=merchant_id, key=key_id))


# -- team ---------------------------------------------------------------------------------------
@operation(
    bp, "GET", "/merchants/<merchant_id>/members", summary="List members", tags=["merchants"],
    response=MemberList, errors=(NotFound,),
    ids=MERCHANT_ID,
)  # fmt: skip
def list_members(merchant_id: str, actor: Actor) -> MemberList:
    """Owners, developers and viewers."""
    data = [
        Member(id=m.public_id, user=m.user_public_id, email=m.email, name=m.name,
               role=m.role, created_at=m.created_at)  # type: ignore[arg-type]
        for m in merchants.list_members(make_uow(), actor=actor, merchant=merchant_id)
    ]  # fmt: skip
    return MemberList(url=request.path, has_more=False, data=data)


@operation(
    bp, "POST", "/merchants/<merchant_id>/invitations", summary="Invite a member",
    tags=["merchants"], body=NewInvitation, response=Invitation, status=201,
    errors=(NotFound, Conflict),
    ids=MERCHANT_ID,
)  # fmt: skip
def invite_member(merchant_id: str, body: NewInvitation, actor: Actor) -> Invitation:
    """Owners invite by email; the answer carries the link's token (the pages email it)."""
    return Invitation.of(
        merchants.invite_member(
            make_uow(), actor=actor, merchant=merchant_id, email=body.email, role=body.role
        )
    )


@operation(
    bp, "POST", "/merchants/<merchant_id>/members/<member_id>", summary="Change a member's role",
    tags=["merchants"], body=RoleChange, status=204, errors=(NotFound, UnexpectedState),
    ids=MEMBER_IDS,
)  # fmt: skip
def change_member_role(merchant_id: str, member_id: str, body: RoleChange, actor: Actor) -> None:
    """Owners only; a merchant keeps at least one owner (400 `last_owner`)."""
    merchants.change_member_role(
        make_uow(), actor=actor, merchant=merchant_id, member=member_id, role=body.role
    )


@operation(
    bp, "DELETE", "/merchants/<merchant_id>/members/<member_id>", summary="Remove a member",
    tags=["merchants"], status=204, errors=(NotFound, UnexpectedState),
    ids=MEMBER_IDS,
)  # fmt: skip
def remove_member(merchant_id: str, member_id: str, actor: Actor) -> None:
    """Owners only; a merchant keeps at least one owner (400 `last_owner`)."""
    merchants.remove_member(make_uow(), actor=actor, merchant=merchant_id, member=member_id)
