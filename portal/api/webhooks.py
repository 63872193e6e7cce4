"""Webhook endpoints (``/api/v1/webhook_endpoints``), for a secret key with the
``webhooks:manage`` scope.

An endpoint is an HTTPS URL and the event types it takes (``["*"]`` for all). Its signing
secret ``whsec_...`` is in the answer to the create and to ``rotate_secret`` and never again;
after a rotation the previous secret keeps signing beside the new one for ``overlap_hours``.
Each delivery is the event as ``GET /api/v1/events/{id}`` answers it, signed twice: Standard
Webhooks (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``) and
``Portal-Signature: t=...,v1=...`` (Stripe's scheme), so either kind of library verifies it. A
receiver that answers 410 disables its endpoint; one failing for five days is disabled too.
In production a URL must resolve to public addresses only. ``POST .../test`` sends one endpoint
a signed test event (sample data, never listed by ``/api/v1/events``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from flask import request
from pydantic import Field

from portal.api import bp
from portal.api.merchant_auth import key_failures
from portal.api.operation import operation
from portal.api.pagination import ListResponse
from portal.api.schemas import ApiModel, QueryModel, RequestBody
from portal.domain.errors import InvalidInput, NotFound, RateLimited
from portal.domain.ids import MAX_LENGTH
from portal.domain.types import Actor
from portal.services.merchants import events, webhooks
from portal.services.merchants.objects import unix
from portal.services.shared.pagination import DEFAULT_LIMIT, MAX_LIMIT
from portal.web.uow import make_uow

EventName = Literal[("*", *events.TYPES)]  # type: ignore[valid-type]
ENDPOINT_ID = {"endpoint_id": "webhook_endpoint"}
_EVENTS = Field(
    min_length=1, max_length=len(events.TYPES) + 1,
    description='Event types to send, or `["*"]` for all (present and future).',
)  # fmt: skip


class WebhookEndpoint(ApiModel):
    id: str = Field(examples=["we_1MqL3yBwLkdIwHu7ix28a3tq"])
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    url: str = Field(examples=["https://shop.example/webhooks/portal"])
    description: str
    enabled_events: list[EventName]
    status: Literal["enabled", "disabled"]
    disabled_reason: Literal["merchant", "gone", "failing"] | None = Field(
        description="`merchant` (turned off), `gone` (the receiver answered 410) or `failing`"
        " (no delivery succeeded for five days)."
    )
    needs_attention: bool = Field(description="Portal disabled it: look at the receiver.")
    secret: str | None = Field(
        description="The signing secret `whsec_...`: only in the answers to create and"
        " rotate_secret."
    )
    previous_secret_expires_at: int | None = Field(
        description="Unix seconds until which the previous secret still signs (after a"
        " rotation with an overlap)."
    )
    created: int = Field(description="Unix seconds.")

    @classmethod
    def of(cls, e: webhooks.WebhookEndpointView) -> WebhookEndpoint:
        return cls(
            id=e.id, url=e.url, description=e.description, enabled_events=list(e.enabled_events),
            status=e.status, disabled_reason=e.disabled_reason,  # type: ignore[arg-type]
            needs_attention=e.needs_attention, secret=e.secret,
            previous_secret_expires_at=unix(e.previous_secret_expires_at),
            created=unix(e.created_at) or 0,
        )  # fmt: skip


class DeletedWebhookEndpoint(ApiModel):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    deleted: Literal[True] = True


class WebhookEndpointList(ListResponse[WebhookEndpoint]):
    """The merchant's webhook endpoints, newest first."""


class NewWebhookEndpoint(RequestBody):
    url: str = Field(
        min_length=1, max_length=webhooks.MAX_URL_LENGTH,
        description="https:// (in production, resolving to public addresses only).",
    )  # fmt: skip
    enabled_events: list[EventName] = _EVENTS
    description: str = Field("", max_length=500)


class WebhookEndpointChange(RequestBody):
    url: str | None = Field(None, min_length=1, max_length=webhooks.MAX_URL_LENGTH)
    enabled_events: list[EventName] | None = Field(
        None, min_length=1, max_length=len(events.TYPES) + 1
    )
    description: str | None = Field(None, max_length=500)
    status: Literal["enabled", "disabled"] | None = Field(
        None, description="`enabled` again after Portal or you disabled it, or `disabled`."
    )


class Rotation(RequestBody):
    overlap_hours: int = Field(
        24, ge=0, le=webhooks.MAX_OVERLAP_HOURS,
        description="How long the current secret keeps signing beside the new one (0: not).",
    )  # fmt: skip


class EndpointListQuery(QueryModel):
    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)
    starting_after: str | None = Field(None, max_length=MAX_LENGTH)


def _merchant(actor: Actor) -> int:
    assert actor.id is not None
    return actor.id


@operation(
    bp, "POST", "/webhook_endpoints", summary="Create a webhook endpoint", tags=["webhooks"],
    auth="api_key", permission="webhooks:manage", body=NewWebhookEndpoint,
    response=WebhookEndpoint, status=201, errors=(InvalidInput,), rate_limit=key_failures,
)  # fmt: skip
def create_webhook_endpoint(body: NewWebhookEndpoint, actor: Actor) -> WebhookEndpoint:
    """Register an endpoint; the answer carries its signing secret, shown this once."""
    return WebhookEndpoint.of(webhooks.create_endpoint(
        make_uow(), actor=actor, merchant=_merchant(actor), url=body.url,
        enabled_events=list(body.enabled_events), description=body.description,
    ))  # fmt: skip


@operation(
    bp, "GET", "/webhook_endpoints", summary="List webhook endpoints", tags=["webhooks"],
    auth="api_key", permission="webhooks:manage", query=EndpointListQuery,
    response=WebhookEndpointList, rate_limit=key_failures,
)  # fmt: skip
def list_webhook_endpoints(query: EndpointListQuery, actor: Actor) -> WebhookEndpointList:
    """The merchant's endpoints, newest first (never their secrets)."""
    page = webhooks.list_endpoints(
        make_uow(), actor=actor, merchant=_merchant(actor), limit=query.limit,
        starting_after=query.starting_after,
    )  # fmt: skip
    return WebhookEndpointList(url=request.path, has_more=page.has_more,
                               data=[WebhookEndpoint.of(e) for e in page.items])  # fmt: skip


@operation(
    bp, "GET", "/webhook_endpoints/<endpoint_id>", summary="Retrieve a webhook endpoint",
    tags=["webhooks"], auth="api_key", permission="webhooks:manage", response=WebhookEndpoint,
    errors=(NotFound,), rate_limit=key_failures, ids=ENDPOINT_ID,
)  # fmt: skip
def get_webhook_endpoint(endpoint_id: str, actor: Actor) -> WebhookEndpoint:
    """One of the merchant's endpoints; another merchant's is a 404."""
    return WebhookEndpoint.of(webhooks.get_endpoint(
        make_uow(), actor=actor, merchant=_merchant(actor), endpoint=endpoint_id))  # fmt: skip


@operation(
    bp, "POST", "/webhook_endpoints/<endpoint_id>", summary="Update a webhook endpoint",
    tags=["webhooks"], auth="api_key", permission="webhooks:manage",
    body=WebhookEndpointChange, response=WebhookEndpoint, errors=(NotFound, InvalidInput),
    rate_limit=key_failures, ids=ENDPOINT_ID,
)  # fmt: skip
def update_webhook_endpoint(
    endpoint_id: str, body: WebhookEndpointChange, actor: Actor
) -> WebhookEndpoint:
    """Change the URL, events or description, or enable or disable the endpoint."""
    return WebhookEndpoint.of(webhooks.update_endpoint(
        make_uow(), actor=actor, merchant=_merchant(actor), endpoint=endpoint_id,
        url=body.url, description=body.description, status=body.status,
        enabled_events=None if body.enabled_events is None else list(body.enabled_events),
    ))  # fmt: skip


@operation(
    bp, "POST", "/webhook_endpoints/<endpoint_id>/rotate_secret",
    summary="Rotate a webhook endpoint's secret", tags=["webhooks"], auth="api_key",
    permission="webhooks:manage", body=Rotation, response=WebhookEndpoint,
    errors=(NotFound, InvalidInput), rate_limit=key_failures, ids=ENDPOINT_ID,
)  # fmt: skip
def rotate_webhook_secret(endpoint_id: str, body: Rotation, actor: Actor) -> WebhookEndpoint:
    """A new secret, shown this once; the current one signs too for `overlap_hours`."""
    return WebhookEndpoint.of(webhooks.rotate_secret(
        make_uow(), actor=actor, merchant=_merchant(actor), endpoint=endpoint_id,
        overlap_hours=body.overlap_hours,
    ))  # fmt: skip


@operation(
    bp, "DELETE", "/webhook_endpoints/<endpoint_id>", summary="Delete a webhook endpoint",
    tags=["webhooks"], auth="api_key", permission="webhooks:manage",
    response=DeletedWebhookEndpoint, errors=(NotFound,), rate_limit=key_failures,
    ids=ENDPOINT_ID,
)  # fmt: skip
def delete_webhook_endpoint(endpoint_id: str, actor: Actor) -> DeletedWebhookEndpoint:
    """Delete the endpoint and its delivery log; nothing more is sent to it."""
    deleted = webhooks.delete_endpoint(make_uow(), actor=actor, merchant=_merchant(actor),
                                       endpoint=endpoint_id)  # fmt: skip
    return DeletedWebhookEndpoint(id=deleted.id)


# -- the delivery log, resending and replaying ---------------------------------------------------
class Attempt(ApiModel):
    attempted_at: int = Field(description="Unix seconds.")
    status_code: int | None = Field(description="The receiver's status; null if none came.")
    duration_ms: int
    response_body: str = Field(description="The first 1 KB of the receiver's answer.")
    error: str | None = Field(description="Why no answer came (timeout, refused, ...).")


class Delivery(ApiModel):
    id: str = Field(examples=["whd_4kT9qL2mXw8ZpR3vN7sB1cYd"])
    object: Literal["webhook_delivery"] = "webhook_delivery"
    endpoint: str
    event: str = Field(description="The event delivered (`evt_...`).")
    event_type: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    next_attempt_at: int | None = Field(description="Unix seconds, while pending.")
    delivered_at: int | None
    created: int
    log: list[Attempt] = Field(description="Every attempt, oldest first.")
    test: bool = Field(description="A test event's delivery (`POST .../test`): sample data,"
                       " not listed by `GET /api/v1/events`.")  # fmt: skip

    @classmethod
    def of(cls, d: webhooks.DeliveryView) -> Delivery:
        return cls(
            id=d.id, endpoint=d.endpoint, event=d.event, event_type=d.event_type,
            status=d.status, attempts=d.attempts,  # type: ignore[arg-type]
            next_attempt_at=unix(d.next_attempt_at), delivered_at=unix(d.delivered_at),
            created=unix(d.created_at) or 0,
            log=[Attempt(attempted_at=unix(a.attempted_at) or 0, status_code=a.status_code,
                         duration_ms=a.duration_ms, response_body=a.response_body,
                         error=a.error) for a in d.log],
            test=d.test,
        )  # fmt: skip


class DeliveryList(ListResponse[Delivery]):
    """An endpoint's deliveries, newest first, with their attempts."""


class DeliveryQuery(QueryModel):
    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)


class ReplayFailed(RequestBody):
    since: int = Field(ge=0, le=4102444800, description="Unix seconds: failed deliveries made "
                       "since then are sent again.")  # fmt: skip


class Replayed(ApiModel):
    object: Literal["webhook_replay"] = "webhook_replay"
    endpoint: str
    queued: int = Field(description="How many failed deliveries are being sent again.")


@operation(
    bp, "GET", "/webhook_endpoints/<endpoint_id>/deliveries", summary="List an endpoint's"
    " deliveries", tags=["webhooks"], auth="api_key", permission="webhooks:manage",
    query=DeliveryQuery, response=DeliveryList, errors=(NotFound,), rate_limit=key_failures,
    ids=ENDPOINT_ID,
)  # fmt: skip
def list_webhook_deliveries(endpoint_id: str, query: DeliveryQuery, actor: Actor) -> DeliveryList:
    """The delivery log: each event sent to the endpoint with every attempt's time, status,
    duration, the start of the answer and the error."""
    found = webhooks.list_deliveries(make_uow(), actor=actor, merchant=_merchant(actor),
                                     endpoint=endpoint_id, limit=query.limit)  # fmt: skip
    return DeliveryList(url=request.path, has_more=False, data=[Delivery.of(d) for d in found])


@operation(
    bp, "POST", "/webhook_endpoints/<endpoint_id>/deliveries/<delivery_id>/resend",
    summary="Resend a delivery", tags=["webhooks"], auth="api_key",
    permission="webhooks:manage", response=Delivery, errors=(NotFound, InvalidInput),
    rate_limit=key_failures, ids={**ENDPOINT_ID, "delivery_id": "webhook_delivery"},
)  # fmt: skip
def resend_webhook_delivery(endpoint_id: str, delivery_id: str, actor: Actor) -> Delivery:
    """Send a delivered or failed delivery again now (the same event id). 422
    `delivery_pending` while it is still being retried."""
    return Delivery.of(webhooks.resend_delivery(
        make_uow(), actor=actor, merchant=_merchant(actor), endpoint=endpoint_id,
        delivery=delivery_id,
    ))  # fmt: skip


@operation(
    bp, "POST", "/webhook_endpoints/<endpoint_id>/replay_failed",
    summary="Replay failed deliveries", tags=["webhooks"], auth="api_key",
    permission="webhooks:manage", body=ReplayFailed, response=Replayed,
    errors=(NotFound, InvalidInput), rate_limit=key_failures, ids=ENDPOINT_ID,
)  # fmt: skip
def replay_failed_webhooks(endpoint_id: str, body: ReplayFailed, actor: Actor) -> Replayed:
    """Send again, now, every delivery to this endpoint that failed since `since`."""
    queued = webhooks.replay_failed(
        make_uow(),
        actor=actor,
        merchant=_merchant(actor),
        endpoint=endpoint_id,
        since=datetime.fromtimestamp(body.since, UTC),
    )
    return Replayed(endpoint=endpoint_id, queued=queued)


@operation(
    bp, "POST", "/webhook_endpoints/<endpoint_id>/test", summary="Send a test event",
    tags=["webhooks"], auth="api_key", permission="webhooks:manage", response=Delivery,
    status=201, errors=(NotFound, InvalidInput, RateLimited), rate_limit=key_failures,
    ids=ENDPOINT_ID,
)  # fmt: skip
def send_webhook_test_event(endpoint_id: str, actor: Actor) -> Delivery:
    """Send this endpoint alone a signed `payment.succeeded` test event with sample data
    (`pay_000...`, `metadata.portal_test` `"true"`; no money moved), now, through the usual
    delivery, retries and log. The event is never listed by `GET /api/v1/events`. 422
    `endpoint_disabled` for a disabled endpoint; 429 after 10 test events in a minute."""
    return Delivery.of(webhooks.send_test_event(
        make_uow(), actor=actor, merchant=_merchant(actor), endpoint=endpoint_id,
    ))  # fmt: skip
