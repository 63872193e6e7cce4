"""Webhooks: a merchant's endpoints, and the signed delivery of its events to them.

An endpoint is an HTTPS URL (plain HTTP only to loopback when ``allow_loopback_http``), the
event types it takes (``*`` for all) and a signing secret ``whsec_<base64 of 32 bytes>``, sealed
by the vault and shown once (on create and on rotation). A rotation keeps the previous secret
signing for an overlap of up to 7 days.

Recording an event (``events.record``) calls :func:`fan_out`, which adds, in the same statement
and so the same commit, one ``webhook_deliveries`` row per matching enabled endpoint and a job
for its first attempt: a rolled-back change delivers nothing. The worker's :func:`deliver`
claims the delivery under a lease (at most one attempt of an event in flight per endpoint),
POSTs the event JSON (as ``GET /api/v1/events/{id}`` answers it) with both signatures, and
records the attempt. A 2xx ends it; a 410 disables the endpoint; anything else is tried again on
:data:`RETRY_SCHEDULE` (with jitter, about three days); an endpoint failing for
:data:`DISABLE_AFTER` is disabled and flagged ``needs_attention`` for its owner's dashboard.
Redirects are never followed. At most one attempt per endpoint is in flight: a delivery whose
endpoint is busy with another puts its job back a little later (:func:`deliver` answers
``busy``), so a slow receiver gets its events one after the other.

:func:`send_test_event` sends one endpoint a signed ``payment.succeeded`` with sample data
(ids of zeros, ``metadata.portal_test``), an event marked ``test`` that is delivered, retried
and logged like any other but never listed by ``/api/v1/events``.

SSRF: unless ``webhook_allow_private`` (``PORTAL_WEBHOOK_ALLOW_PRIVATE``, off in production),
a URL whose host resolves to anything but a global unicast address (loopback, private,
link-local such as the metadata address 169.254.169.254, reserved, multicast) is refused when
it is registered, and every delivery connects only to addresses checked after its own
resolution (DNS rebinding).

Signatures (``reference/stripe-wire.md``): Standard Webhooks ``webhook-id``,
``webhook-timestamp``, ``webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body" keyed
by the decoded secret>`` and ``Portal-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "t.body" keyed
by the whole secret string>``; one signature of each kind per active secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util.connection import create_connection

from portal.domain.errors import Forbidden, InvalidInput, LimitExceeded, NotFound, RateLimited
from portal.domain.ids import is_public_id, new_public_id
from portal.domain.types import Actor, ActorKind
from portal.services.merchants.merchants import Membership, access, page_after
from portal.services.shared import audit, jobs
from portal.services.shared.pagination import Page, check_limit, page_of
from portal.services.shared.settings import ServiceSettings
from portal.services.shared.uow import UnitOfWork
from portal.services.shared.vault import Vault, binding

JOB_KIND = "webhook.deliver"
SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)
SECRET_PURPOSE = "webhook.secret"  # noqa: S105 (the vault purpose)
ALL_EVENTS = "*"
MAX_ENDPOINTS = 16
MAX_URL_LENGTH = 2048
MAX_OVERLAP_HOURS = 7 * 24
#: Seconds to connect, and to wait for each read of the answer.
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 10.0
#: How long a claimed attempt is the worker's alone: longer than an attempt can take (connect,
#: the answer's head within a read, its body read until a deadline one read later: see
#: ``_post``) plus a margin to record it. A worker that dies mid-attempt holds the endpoint's
#: later deliveries back this long, so it is kept to that bound.
LEASE_SECONDS = CONNECT_TIMEOUT + 3 * READ_TIMEOUT + 5.0
#: How much of an answer's body the log keeps.
RESPONSE_LIMIT = 1024
#: Seconds before the next attempt after attempt 1, 2, ...: 1 min, 5 min, 30 min, 2 h, 5 h,
#: 10 h, then every 12 h: the last of the 12 attempts comes about 77 hours after the first.
RETRY_SCHEDULE = (60, 300, 1800, 7200, 18000, 36000, 43200, 43200, 43200, 43200, 43200)
#: Each delay is stretched or shrunk by up to this fraction, so retries do not arrive in step.
JITTER = 0.1
#: An endpoint whose deliveries have failed (none delivered) for this long is disabled.
DISABLE_AFTER = timedelta(days=5)
USER_AGENT = "Portal-Webhooks/1.0"
#: A test event's type, and how many test events an endpoint takes in a minute (each one is
#: an outbound request Portal makes where the merchant says).
TEST_EVENT_TYPE = "payment.succeeded"
TEST_EVENTS_PER_MINUTE = 10
#: A delivery whose endpoint has another attempt in flight waits 1, 2, 4, ... seconds (capped
#: here, with jitter) before it looks again.
BUSY_WAIT_CAP = 30.0

_COLUMNS = (
    "id, public_id, url, description, enabled_events, status, disabled_reason, disabled_at,"
    " needs_attention, failing_since, previous_secret_expires_at, created_at"
)


@dataclass(frozen=True, slots=True)
class WebhookEndpointView:
    id: str
    url: str
    description: str
    enabled_events: tuple[str, ...]
    status: str
    #: ``merchant`` (turned off), ``gone`` (the receiver answered 410) or ``failing``.
    disabled_reason: str | None
    disabled_at: datetime | None
    #: Portal disabled it (410, failing for days): the owner should be told.
    needs_attention: bool
    failing_since: datetime | None
    #: While a rotation's overlap lasts, the previous secret signs too, until then.
    previous_secret_expires_at: datetime | None
    created_at: datetime
    #: Only on create and on rotation.
    secret: str | None = None
    #: The newest delivery's status and when it was last tried (or made): list_endpoints only.
    last_delivery_status: str | None = None
    last_delivery_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class AttemptView:
    attempted_at: datetime
    status_code: int | None
    duration_ms: int
    response_body: str
    error: str | None


@dataclass(frozen=True, slots=True)
class DeliveryView:
    id: str
    endpoint: str
    event: str
    event_type: str
    status: str
    attempts: int
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    created_at: datetime
    log: tuple[AttemptView, ...]
    #: A test event's delivery (send_test_event).
    test: bool = False


# -- secrets and signatures ---------------------------------------------------------------------
def new_secret() -> str:
    """A fresh signing secret: ``whsec_`` and the base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def sign(
    signing_secrets: Sequence[str], message_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """The signature headers of one delivery: Standard Webhooks' and ``Portal-Signature``,
    one signature of each kind per secret."""
    standard, portal = [], []
    for secret in signing_secrets:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
        signed = f"{message_id}.{timestamp}.".encode() + body
        digest = hmac.new(key, signed, hashlib.sha256).digest()
        standard.append("v1," + base64.b64encode(digest).decode("ascii"))
        stripe_signed = f"{timestamp}.".encode() + body
        portal.append("v1=" + hmac.new(secret.encode(), stripe_signed, hashlib.sha256).hexdigest())
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(standard),
        "Portal-Signature": f"t={timestamp}," + ",".join(portal),
    }


def event_body(row: Any) -> bytes:
    """The event as ``GET /api/v1/events/{id}`` answers it (same fields, order and spacing)."""
    data = row.data
    document = {
        "id": row.public_id,
        "object": "event",
        "type": row.type,
        "api_version": row.api_version,
        "created": int(row.created_at.timestamp()),
        "data": {
            "object": data["object"],
            "previous_attributes": data.get("previous_attributes"),
        },
    }
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


# -- URLs and addresses -------------------------------------------------------------------------
class AddressRefused(ValueError):
    """A webhook host resolved to an address Portal does not send to (see the module
    docstring). Not an OSError, so the HTTP client neither retries nor hides it."""


def refused_address(address: str) -> str | None:
    """Why ``address`` (an IP literal) may not be sent to, or None when it may."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for label, flag in (
        ("loopback", ip.is_loopback), ("link-local", ip.is_link_local),
        ("private", ip.is_private), ("multicast", ip.is_multicast),
        ("unspecified", ip.is_unspecified), ("reserved", ip.is_reserved),
    ):  # fmt: skip
        if flag:
            return label
    return None if ip.is_global else "not globally routable"


def resolve_public(host: str, port: int) -> list[tuple[int, str]]:
    """The addresses of ``host`` as ``(family, address)``, each checked. Raises AddressRefused
    when it does not resolve or any address is not a public one."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise AddressRefused(f"{host} does not resolve ({exc})") from None
    addresses: list[tuple[int, str]] = []
    for family, _, _, _, sockaddr in found:
        address = str(sockaddr[0])
        why = refused_address(address)
        if why is not None:
            raise AddressRefused(f"{host} resolves to {address} ({why})")
        if (family, address) not in addresses:
            addresses.append((family, address))
    if not addresses:
        raise AddressRefused(f"{host} does not resolve")
    return addresses


def _is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(settings: ServiceSettings, url: object) -> str:
    """The URL an endpoint may have. Raises InvalidInput (param "url")."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidInput("url is required", param="url")
    url = url.strip()
    if len(url) > MAX_URL_LENGTH:
        raise InvalidInput(f"url is longer than {MAX_URL_LENGTH} characters", param="url")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise InvalidInput("url is not a valid URL", param="url") from None
    host = (parts.hostname or "").lower()
    if not host:
        raise InvalidInput("url needs a host", param="url")
    if parts.username or parts.password:
        raise InvalidInput("url must not carry a user name or password", param="url")
    if parts.fragment:
        raise InvalidInput("url must not have a fragment", param="url")
    if parts.scheme == "http":
        if not (settings.allow_loopback_http and _is_loopback_host(host)):
            raise InvalidInput("url must use https", param="url")
    elif parts.scheme != "https":
        raise InvalidInput("url must use https", param="url")
    if not settings.webhook_allow_private:
        try:
            resolve_public(host, port or (443 if parts.scheme == "https" else 80))
        except AddressRefused as exc:
            raise InvalidInput(
                f"url must reach a public address: {exc}", param="url", code="url_refused"
            ) from None
    return url


class _CheckedConnect:
    """Connects only to addresses :func:`resolve_public` approves, resolved at connect time."""

    _dns_host: str
    port: int
    timeout: Any
    source_address: Any
    socket_options: Any

    def _new_conn(self) -> socket.socket:
        last: OSError | None = None
        for _, address in resolve_public(self._dns_host, self.port):
            try:
                return create_connection(
                    (address, self.port), self.timeout, source_address=self.source_address,
                    socket_options=self.socket_options,
                )  # fmt: skip
            except OSError as exc:
                last = exc
        raise last or OSError(f"cannot connect to {self._dns_host}")


class _CheckedHTTPConnection(_CheckedConnect, HTTPConnection):
    pass


class _CheckedHTTPSConnection(_CheckedConnect, HTTPSConnection):
    pass


class _CheckedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _CheckedHTTPConnection


class _CheckedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _CheckedHTTPSConnection


class _CheckedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _CheckedHTTPPool,
            "https": _CheckedHTTPSPool,
        }


def _http(allow_private: bool) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # a proxy from the environment would skip the address check
    if not allow_private:
        adapter = _CheckedAdapter()
        session.mount("http://", adapter)
        session.mount("https://", adapter)
    return session


# -- endpoints ----------------------------------------------------------------------------------
def _manage(u: UnitOfWork, actor: Actor, merchant: str | int) -> Membership:
    """A key with ``webhooks:manage``, or an owner or developer."""
    if actor.kind == ActorKind.MERCHANT:
        return access(u, actor, merchant, "webhooks")
    membership = access(u, actor, merchant, "read")
    if membership.role not in ("owner", "developer"):
        raise Forbidden(
            f"your role in {membership.merchant.name} does not allow this",
            code="permission_denied",
        )
    return membership


def _check_events(enabled_events: object) -> list[str]:
    from portal.services.merchants.events import TYPES

    if not isinstance(enabled_events, (list, tuple)) or not enabled_events:
        raise InvalidInput("enabled_events needs at least one event type or *",
                           param="enabled_events")  # fmt: skip
    chosen = list(dict.fromkeys(enabled_events))
    for name in chosen:
        if name != ALL_EVENTS and name not in TYPES:
            raise InvalidInput(f"unknown event type {name}", param="enabled_events")
    return [ALL_EVENTS] if ALL_EVENTS in chosen else chosen


def _check_description(description: object) -> str:
    if not isinstance(description, str) or len(description) > 500:
        raise InvalidInput("description is at most 500 characters", param="description")
    return description


def _view(row: Any, secret: str | None = None) -> WebhookEndpointView:
    return WebhookEndpointView(
        row.public_id, row.url, row.description, tuple(row.enabled_events), row.status,
        row.disabled_reason, row.disabled_at, row.needs_attention, row.failing_since,
        row.previous_secret_expires_at, row.created_at, secret,
        getattr(row, "last_status", None), getattr(row, "last_at", None),
    )  # fmt: skip


def _endpoint_row(u: UnitOfWork, merchant_id: int, endpoint: str, *, lock: bool = False) -> Any:
    row = None
    if is_public_id("webhook_endpoint", endpoint):
        row = u.execute(
            f"SELECT {_COLUMNS} FROM webhook_endpoints WHERE public_id = :id AND merchant_id = :m"  # nosec B608
            + (" FOR UPDATE" if lock else ""),
            {"id": endpoint, "m": merchant_id},
        ).first()
    if row is None:
        raise NotFound("no such webhook endpoint", param="endpoint")
    return row


def create_endpoint(
    uow: UnitOfWork,
    *,
    actor: Actor,
    merchant: str | int,
    url: str,
    enabled_events: Sequence[str],
    description: str = "",
) -> WebhookEndpointView:
    """Register an endpoint; its secret is in the answer, and never again. Raises NotFound,
    Forbidden, InvalidInput (url, enabled_events, description), LimitExceeded."""
    checked = check_url(uow.settings, url)
    chosen = _check_events(enabled_events)
    text = _check_description(description)
    secret = new_secret()
    public_id = new_public_id("webhook_endpoint")  # made here: the secret is sealed bound to it
    sealed, version = Vault.from_settings(uow.settings).encrypt(
        secret.encode(), purpose=SECRET_PURPOSE, record=public_id
    )

    def work(u: UnitOfWork) -> WebhookEndpointView:
        m = _manage(u, actor, merchant).merchant
        # The merchant row serialises concurrent creations, so the cap holds.
        u.execute("SELECT id FROM merchants WHERE id = :m FOR UPDATE", {"m": m.id})
        count = u.execute(
            "SELECT count(*) FROM webhook_endpoints WHERE merchant_id = :m", {"m": m.id}
        ).scalar_one()
        if count >= MAX_ENDPOINTS:
            raise LimitExceeded(f"a merchant has at most {MAX_ENDPOINTS} webhook endpoints",
                                param="url")  # fmt: skip
        row = u.execute(
            "INSERT INTO webhook_endpoints (public_id, merchant_id, url, description,"  # nosec B608
            " enabled_events, secret_ciphertext, secret_key_version, secret_bound, created_at,"
            " updated_at) VALUES (:pid, :m, :url, :description, :events, :sealed, :version,"
            f" true, :now, :now) RETURNING {_COLUMNS}",
            {"pid": public_id, "m": m.id, "url": checked, "description": text, "events": chosen,
             "sealed": sealed, "version": version, "now": u.now()},
        ).one()  # fmt: skip
        audit.record(u, actor, "webhook_endpoint.create", "webhook_endpoint", row.id,
                     data={"merchant_id": m.id, "url": checked, "events": chosen})  # fmt: skip
        return _view(row, secret)

    return uow.run(work)


def list_endpoints(
    uow: UnitOfWork,
    *,
    actor: Actor,
    merchant: str | int,
    limit: int | None = None,
    starting_after: str | None = None,
) -> Page[WebhookEndpointView]:
    """The merchant's endpoints, newest first. Raises NotFound, Forbidden, InvalidInput."""
    size = check_limit(limit)

    def work(u: UnitOfWork) -> Page[WebhookEndpointView]:
        m = _manage(u, actor, merchant).merchant
        where = ["merchant_id = :m"]
        params: dict[str, Any] = {"m": m.id, "limit": size + 1}
        page_after(u, table="webhook_endpoints", alias="webhook_endpoints",
                   kind="webhook_endpoint", starting_after=starting_after, merchant_id=m.id,
                   where=where, params=params)  # fmt: skip
        rows = u.execute(
            f"SELECT {_COLUMNS}, last.last_status, last.last_at"  # nosec B608
            " FROM webhook_endpoints LEFT JOIN LATERAL (SELECT d.status AS last_status,"
            " COALESCE(d.last_attempt_at, d.created_at) AS last_at FROM webhook_deliveries d"
            " WHERE d.endpoint_id = webhook_endpoints.id"
            " ORDER BY d.created_at DESC, d.id DESC LIMIT 1) last ON true"
            " WHERE " + " AND ".join(where)
            + " ORDER BY created_at DESC, id DESC LIMIT :limit",
            params,
        ).all()  # fmt: skip
        return page_of([_view(r) for r in rows], size)

    return uow.run(work)


def get_endpoint(
    uow: UnitOfWork, *, actor: Actor, merchant: str | int, endpoint: str
) -> WebhookEndpointView:
    """One of the merchant's endpoints (never its secret). Raises NotFound, Forbidden."""

    def work(u: UnitOfWork) -> WebhookEndpointView:
        m = _manage(u, actor, merchant).merchant
        return _view(_endpoint_row(u, m.id, endpoint))

    return uow.run(work)


def update_endpoint(
    uow: UnitOfWork,
    *,
    actor: Actor,
    merchant: str | int,
    endpoint: str,
    url: str | None = None,
    enabled_events: Sequence[str] | None = None,
    description: str | None = None,
    status: str | None = None,
) -> WebhookEndpointView:
    """Change an endpoint's URL, events or description, or enable or disable it (enabling
    clears the reason it was disabled and its failure streak). Raises NotFound, Forbidden,
    InvalidInput (url, enabled_events, description, status)."""
    checked = None if url is None else check_url(uow.settings, url)
    chosen = None if enabled_events is None else _check_events(enabled_events)
    text = None if description is None else _check_description(description)
    if status is not None and status not in ("enabled", "disabled"):
        raise InvalidInput("status is enabled or disabled", param="status")

    def work(u: UnitOfWork) -> WebhookEndpointView:
        m = _manage(u, actor, merchant).merchant
        before = _endpoint_row(u, m.id, endpoint, lock=True)
        sets = ["updated_at = :now"]
        params: dict[str, Any] = {"id": before.id, "now": u.now()}
        for column, value in (("url", checked), ("enabled_events", chosen),
                              ("description", text)):  # fmt: skip
            if value is not None:
                sets.append(f"{column} = :{column}")
                params[column] = value
        if status == "enabled" and before.status != "enabled":
            sets += ["status = 'enabled'", "disabled_reason = NULL", "disabled_at = NULL",
                     "needs_attention = false", "failing_since = NULL"]  # fmt: skip
        elif status == "disabled" and before.status != "disabled":
            sets += ["status = 'disabled'", "disabled_reason = 'merchant'",
                     "disabled_at = :now", "needs_attention = false"]  # fmt: skip
        elif status == "enabled":
            sets.append("needs_attention = false")
        row = u.execute(
            f"UPDATE webhook_endpoints SET {', '.join(sets)} WHERE id = :id RETURNING {_COLUMNS}",  # nosec B608
            params,
        ).one()
        changed = {k: v for k, v in (("url", checked), ("enabled_events", chosen),
                                     ("status", status)) if v is not None}  # fmt: skip
        audit.record(u, actor, "webhook_endpoint.update", "webhook_endpoint", row.id,
                     data={"merchant_id": m.id, **changed})  # fmt: skip
        return _view(row)

    return uow.run(work)


def rotate_secret(
    uow: UnitOfWork,
    *,
    actor: Actor,
    merchant: str | int,
    endpoint: str,
    overlap_hours: int = 24,
) -> WebhookEndpointView:
    """A new secret (in the answer, never again); the current one keeps signing beside it for
    ``overlap_hours`` (0 to 168; 0 ends it at once). Raises NotFound, Forbidden, InvalidInput
    (overlap_hours)."""
    if type(overlap_hours) is not int or not 0 <= overlap_hours <= MAX_OVERLAP_HOURS:
        raise InvalidInput(f"overlap_hours is from 0 to {MAX_OVERLAP_HOURS}",
                           param="overlap_hours")  # fmt: skip
    secret = new_secret()
    vault = Vault.from_settings(uow.settings)

    def work(u: UnitOfWork) -> WebhookEndpointView:
        m = _manage(u, actor, merchant).merchant
        before = _endpoint_row(u, m.id, endpoint, lock=True)
        sealed, version = vault.encrypt(
            secret.encode(), purpose=SECRET_PURPOSE, record=before.public_id
        )
        keep = overlap_hours > 0
        row = u.execute(
            "UPDATE webhook_endpoints SET"  # nosec B608
            " previous_secret_ciphertext = CASE WHEN :keep THEN secret_ciphertext END,"
            " previous_secret_key_version = CASE WHEN :keep THEN secret_key_version END,"
            " previous_secret_bound = :keep AND secret_bound,"
            " previous_secret_expires_at = CASE WHEN :keep THEN CAST(:until AS timestamptz) END,"
            " secret_ciphertext = :sealed, secret_key_version = :version, secret_bound = true,"
            " updated_at = :now"
            f" WHERE id = :id RETURNING {_COLUMNS}",
            {"keep": keep, "until": u.now() + timedelta(hours=overlap_hours), "sealed": sealed,
             "version": version, "now": u.now(), "id": before.id},
        ).one()  # fmt: skip
        audit.record(u, actor, "webhook_endpoint.rotate_secret", "webhook_endpoint", row.id,
                     data={"merchant_id": m.id, "overlap_hours": overlap_hours})  # fmt: skip
        return _view(row, secret)

    return uow.run(work)


def delete_endpoint(
    uow: UnitOfWork, *, actor: Actor, merchant: str | int, endpoint: str
) -> WebhookEndpointView:
    """Delete an endpoint and its delivery log; nothing more is sent to it. Raises NotFound,
    Forbidden."""

    def work(u: UnitOfWork) -> WebhookEndpointView:
        m = _manage(u, actor, merchant).merchant
        row = _endpoint_row(u, m.id, endpoint, lock=True)
        u.execute("DELETE FROM webhook_endpoints WHERE id = :id", {"id": row.id})
        audit.record(u, actor, "webhook_endpoint.delete", "webhook_endpoint", row.id,
                     data={"merchant_id": m.id, "url": row.url})  # fmt: skip
        return _view(row)

    return uow.run(work)


def _attempt(a: dict[str, Any]) -> AttemptView:
    return AttemptView(datetime.fromisoformat(a["at"]), a["status"], a["ms"], a["body"], a["error"])


def list_deliveries(
    uow: UnitOfWork, *, actor: Actor, merchant: str | int, endpoint: str, limit: int | None = None
) -> list[DeliveryView]:
    """An endpoint's deliveries, newest first, each with its attempts. Raises NotFound,
    Forbidden, InvalidInput."""
    size = check_limit(limit)

    def work(u: UnitOfWork) -> list[DeliveryView]:
        m = _manage(u, actor, merchant).merchant
        row = _endpoint_row(u, m.id, endpoint)
        rows = u.execute(
            "SELECT d.id, d.public_id, e.public_id AS event, e.type, d.status, d.attempts,"
            " d.next_attempt_at, d.delivered_at, d.created_at, e.test,"
            " COALESCE((SELECT jsonb_agg(jsonb_build_object('at', a.attempted_at,"
            " 'status', a.status_code, 'ms', a.duration_ms, 'body', a.response_body,"
            " 'error', a.error) ORDER BY a.id) FROM webhook_attempts a"
            " WHERE a.delivery_id = d.id), '[]') AS log"
            " FROM webhook_deliveries d JOIN events e ON e.id = d.event_id"
            " WHERE d.endpoint_id = :we ORDER BY d.created_at DESC, d.id DESC LIMIT :limit",
            {"we": row.id, "limit": size},
        ).all()
        return [
            DeliveryView(
                r.public_id,
                row.public_id,
                r.event,
                r.type,
                r.status,
                r.attempts,
                r.next_attempt_at,
                r.delivered_at,
                r.created_at,
                tuple(_attempt(a) for a in r.log),
                r.test,
            )  # fmt: skip
            for r in rows
        ]

    return uow.run(work)


def _queue_again(u: UnitOfWork, delivery: Any) -> None:
    """Send a finished delivery again now: pending, with its next attempt's job due now."""
    u.execute(
        "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = :now WHERE id = :id",
        {"now": u.now(), "id": delivery.id},
    )
    attempt = delivery.attempts + 1
    jobs.enqueue(
        u, JOB_KIND, {"delivery": delivery.id, "attempt": attempt}, run_at=u.now(),
        dedupe_key=f"webhook:{delivery.id}:{attempt}",
    )  # fmt: skip


def resend_delivery(
    uow: UnitOfWork, *, actor: Actor, merchant: str | int, endpoint: str, delivery: str
) -> DeliveryView:
    """Send a delivered or failed delivery of an enabled endpoint again, now (the same event
    id, so a receiver that dedupes by it stays right). Raises NotFound, Forbidden,
    InvalidInput (``delivery_pending`` while it is still being retried, ``endpoint_disabled``)."""

    def work(u: UnitOfWork) -> None:
        m = _manage(u, actor, merchant).merchant
        row = _endpoint_row(u, m.id, endpoint)
        if row.status != "enabled":
            raise InvalidInput("enable the endpoint first", param="endpoint",
                               code="endpoint_disabled")  # fmt: skip
        found = None
        if is_public_id("webhook_delivery", delivery):
            found = u.execute(
                "SELECT id, status, attempts FROM webhook_deliveries WHERE public_id = :id"
                " AND endpoint_id = :we FOR UPDATE",
                {"id": delivery, "we": row.id},
            ).first()
        if found is None:
            raise NotFound("no such delivery", param="delivery")
        if found.status == "pending":
            raise InvalidInput("this delivery is still being retried", param="delivery",
                               code="delivery_pending")  # fmt: skip
        _queue_again(u, found)
        audit.record(u, actor, "webhook.resend", "webhook_endpoint", row.id,
                     data={"delivery": delivery})  # fmt: skip

    uow.run(work)
    return next(
        d for d in list_deliveries(uow, actor=actor, merchant=merchant, endpoint=endpoint,
                                   limit=100) if d.id == delivery
    )  # fmt: skip


def replay_failed(
    uow: UnitOfWork, *, actor: Actor, merchant: str | int, endpoint: str, since: datetime
) -> int:
    """Send again, now, every failed delivery of the endpoint made since ``since`` (at most
    1,000); returns how many. Raises NotFound, Forbidden, InvalidInput."""

    def work(u: UnitOfWork) -> int:
        m = _manage(u, actor, merchant).merchant
        row = _endpoint_row(u, m.id, endpoint)
        if row.status != "enabled":
            raise InvalidInput("enable the endpoint first", param="endpoint",
                               code="endpoint_disabled")  # fmt: skip
        failed = u.execute(
            "SELECT id, status, attempts FROM webhook_deliveries WHERE endpoint_id = :we"
            " AND status = 'failed' AND created_at >= :since ORDER BY id LIMIT 1000"
            " FOR UPDATE",
            {"we": row.id, "since": since},
        ).all()
        for found in failed:
            _queue_again(u, found)
        audit.record(u, actor, "webhook.replay_failed", "webhook_endpoint", row.id,
                     data={"since": since.isoformat(), "count": len(failed)})  # fmt: skip
        return len(failed)

    return uow.run(work)


def _sample_payment(merchant: Any, at: datetime) -> dict[str, Any]:
    """A succeeded payment of 20.00 in the merchant's currency that never happened, as the API
    shows a payment: ids of zeros, and ``metadata.portal_test`` says what it is."""
    from portal.services.merchants.objects import payment_object
    from portal.services.merchants.payments import PaymentView

    amount = 2000
    currency = merchant.settlement_currency
    fee = amount * merchant.fee_bps // 10_000 + merchant.fee_fixed.get(currency, 0)
    return payment_object(PaymentView(
        id="pay_" + "0" * 24, merchant_id=merchant.public_id, amount=amount,
        amount_capturable=0, amount_received=amount, amount_refunded=0, currency=currency,
        status="succeeded", capture_method="automatic", cancellation_reason=None,
        canceled_at=None, last_payment_error=None, fee=min(fee, amount),
        description="Test event from Portal: no payment was made",
        metadata={"portal_test": "true"}, card_brand="visa", card_last4="4242",
        card_fingerprint="0" * 16, checkout_session=None, created=at, captured_at=at,
    ))  # fmt: skip


def send_test_event(
    uow: UnitOfWork, *, actor: Actor, merchant: str | int, endpoint: str
) -> DeliveryView:
    """Send this endpoint alone a signed test event (:data:`TEST_EVENT_TYPE` with sample data,
    see :func:`_sample_payment`): the worker delivers it now and retries it like any delivery,
    with its log; it is never listed by the events API. Raises NotFound, Forbidden,
    InvalidInput (``endpoint_disabled``), RateLimited (more than
    :data:`TEST_EVENTS_PER_MINUTE` in a minute)."""
    from portal.services.merchants.events import API_VERSION

    def work(u: UnitOfWork) -> DeliveryView:
        m = _manage(u, actor, merchant).merchant
        # The endpoint's row serialises test sends to it, so the limit holds.
        row = _endpoint_row(u, m.id, endpoint, lock=True)
        if row.status != "enabled":
            raise InvalidInput("enable the endpoint first", param="endpoint",
                               code="endpoint_disabled")  # fmt: skip
        now = u.now()
        recent = u.execute(
            "SELECT count(*) FROM webhook_deliveries d JOIN events e ON e.id = d.event_id"
            " WHERE d.endpoint_id = :we AND e.test AND d.created_at > :since",
            {"we": row.id, "since": now - timedelta(minutes=1)},
        ).scalar_one()
        if recent >= TEST_EVENTS_PER_MINUTE:
            raise RateLimited(
                f"an endpoint takes at most {TEST_EVENTS_PER_MINUTE} test events a minute",
                param="endpoint",
            )
        data = {"object": _sample_payment(m, now)}
        event = u.execute(
            "INSERT INTO events (public_id, merchant_id, type, api_version, data, test,"
            " created_at) VALUES (:pid, :m, :type, :version, CAST(:data AS jsonb), true, :now)"
            " RETURNING id, public_id",
            {"pid": new_public_id("event"), "m": m.id, "type": TEST_EVENT_TYPE,
             "version": API_VERSION, "data": json.dumps(data), "now": now},
        ).one()  # fmt: skip
        delivery = u.execute(
            "INSERT INTO webhook_deliveries (endpoint_id, event_id, next_attempt_at, created_at)"
            " VALUES (:we, :ev, :now, :now) RETURNING id, public_id",
            {"we": row.id, "ev": event.id, "now": now},
        ).one()
        jobs.enqueue(u, JOB_KIND, {"delivery": delivery.id, "attempt": 1}, run_at=now,
                     dedupe_key=f"webhook:{delivery.id}:1")  # fmt: skip
        audit.record(u, actor, "webhook.test_event", "webhook_endpoint", row.id,
                     data={"merchant_id": m.id, "event": event.public_id})  # fmt: skip
        return DeliveryView(delivery.public_id, row.public_id, event.public_id, TEST_EVENT_TYPE,
                            "pending", 0, now, None, now, (), test=True)  # fmt: skip

    return uow.run(work)


# -- fan-out --------------------------------------------------------------------------------------
def fan_out(uow: UnitOfWork, merchant_id: int, events_part: str) -> None:
    """Defer, beside the deferred part ``events_part`` (an INSERT INTO events ... RETURNING id,
    type), a delivery and its first job for each enabled endpoint of the merchant that takes
    the event's type: the same statement, so they commit with the event or not at all."""
    deliveries = f"{events_part}_whd"
    uow.defer(
        "INSERT INTO webhook_deliveries (endpoint_id, event_id, next_attempt_at, created_at)"  # nosec B608
        f" SELECT we.id, ev.id, :at, :at FROM {events_part} ev JOIN webhook_endpoints we"
        " ON we.merchant_id = :m AND we.status = 'enabled'"
        " AND (:star = ANY(we.enabled_events) OR ev.type = ANY(we.enabled_events))"
        " ORDER BY ev.id, we.id RETURNING id",
        name=deliveries, m=merchant_id, at=uow.now(), star=ALL_EVENTS,
    )  # fmt: skip
    trace = jobs.current_trace_context()
    uow.defer(
        "INSERT INTO jobs (kind, payload, dedupe_key, max_attempts, run_at, trace_context,"  # nosec B608
        " created_at, updated_at)"
        " SELECT :kind, jsonb_build_object('delivery', d.id, 'attempt', 1),"
        " :prefix || d.id || :suffix, 8, :at, CAST(:trace AS jsonb), :at, :at"
        f" FROM {deliveries} d",
        name=f"{deliveries}_jobs", kind=JOB_KIND, at=uow.now(), prefix="webhook:", suffix=":1",
        trace=json.dumps(trace) if trace else None,
    )  # fmt: skip


# -- delivery -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Claimed:
    delivery_id: int
    endpoint_id: int
    url: str
    event_id: str
    body: bytes
    secrets: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Answer:
    status_code: int | None
    duration_ms: int
    body: str
    error: str | None

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def next_delay(attempt: int) -> float | None:
    """Seconds until the attempt after ``attempt`` (1-based), with jitter; None after the last."""
    if attempt > len(RETRY_SCHEDULE):
        return None
    base = RETRY_SCHEDULE[attempt - 1]
    spread = (secrets.randbelow(2001) - 1000) / 1000 * JITTER
    return base * (1 + spread)


def _busy_delay(waits: int) -> float:
    """Seconds a delivery waits for its endpoint's attempt in flight, the ``waits``-th time."""
    base = min(BUSY_WAIT_CAP, 2.0 ** min(waits, 16))
    return base * (1 + (secrets.randbelow(2001) - 1000) / 1000 * JITTER)


def _wait_for_turn(
    u: UnitOfWork, delivery_id: int, attempt: int, waits: int, not_before: datetime | None = None
) -> None:
    """Put this attempt's job back in the queue a little later (not before ``not_before``),
    without spending one of the job's attempts (the worker's ``complete`` then finds it queued
    and leaves it)."""
    run_at = u.now() + timedelta(seconds=_busy_delay(waits))
    if not_before is not None:
        run_at = max(run_at, not_before)
    payload = {"delivery": delivery_id, "attempt": attempt, "waits": waits + 1}
    key = f"webhook:{delivery_id}:{attempt}"
    moved = u.execute(
        "UPDATE jobs SET status = 'queued', run_at = :at, attempts = GREATEST(attempts - 1, 0),"
        " payload = CAST(:payload AS jsonb), locked_by = NULL, locked_until = NULL,"
        " updated_at = :now WHERE kind = :kind AND dedupe_key = :key"
        " AND status IN ('queued', 'running')",
        {"at": run_at, "payload": json.dumps(payload), "now": u.now(), "kind": JOB_KIND,
         "key": key},
    )  # fmt: skip
    if not moved.rowcount:  # type: ignore[attr-defined]
        jobs.enqueue(u, JOB_KIND, payload, run_at=run_at, dedupe_key=key)


def _claim(
    u: UnitOfWork, delivery_id: int, attempt: int, worker: str, waits: int = 0
) -> _Claimed | str | None:
    now = u.now()
    target = u.execute(
        "SELECT endpoint_id FROM webhook_deliveries WHERE id = :id", {"id": delivery_id}
    ).first()
    if target is None:
        return None  # deleted with its endpoint, or its event purged
    # The endpoint's row serialises the claims of its deliveries: two workers never both find
    # it idle, so at most one attempt to it is in flight.
    endpoint = u.execute(
        "SELECT id, public_id, url, status, secret_ciphertext, secret_key_version, secret_bound,"
        " previous_secret_ciphertext, previous_secret_key_version, previous_secret_bound,"
        " previous_secret_expires_at FROM webhook_endpoints WHERE id = :id FOR UPDATE",
        {"id": target.endpoint_id},
    ).first()
    if endpoint is None:
        return None
    row = u.execute(
        "SELECT endpoint_id, event_id, locked_until FROM webhook_deliveries d"
        " WHERE d.id = :id AND d.status = 'pending' AND d.attempts = :done FOR UPDATE",
        {"id": delivery_id, "done": attempt - 1},
    ).first()
    if row is None:
        return None  # delivered, failed, or a stale job
    if row.locked_until is not None and row.locked_until >= now:
        # Another worker is sending this attempt (this job's lease ran out before the
        # delivery's did). Look again once its lease is over: if that worker recorded the
        # attempt, this job has nothing to do; if it died, this job sends it.
        _wait_for_turn(u, delivery_id, attempt, waits,
                       not_before=row.locked_until + timedelta(seconds=1))  # fmt: skip
        return None
    if endpoint.status != "enabled":
        u.execute(
            "UPDATE webhook_deliveries SET status = 'failed', next_attempt_at = NULL,"
            " locked_by = NULL, locked_until = NULL WHERE id = :id",
            {"id": delivery_id},
        )
        return None
    busy = u.execute(
        "SELECT 1 FROM webhook_deliveries WHERE endpoint_id = :we AND id <> :id"
        " AND locked_until IS NOT NULL AND locked_until >= :now LIMIT 1",
        {"we": endpoint.id, "id": delivery_id, "now": now},
    ).first()
    if busy is not None:
        _wait_for_turn(u, delivery_id, attempt, waits)
        return "busy"
    u.execute(
        "UPDATE webhook_deliveries SET locked_by = :worker, locked_until = :until WHERE id = :id",
        {"worker": worker, "until": now + timedelta(seconds=LEASE_SECONDS), "id": delivery_id},
    )
    event = u.execute(
        "SELECT public_id, type, api_version, created_at, data FROM events WHERE id = :id",
        {"id": row.event_id},
    ).one()
    vault = Vault.from_settings(u.settings)
    # Each secret opens for this endpoint's row only (or its purpose alone, a legacy secret).
    signing = [
        vault.decrypt(endpoint.secret_ciphertext, endpoint.secret_key_version,
                      purpose=SECRET_PURPOSE,
                      record=binding(endpoint.public_id, endpoint.secret_bound)).decode()
    ]  # fmt: skip
    if endpoint.previous_secret_ciphertext is not None and (
        endpoint.previous_secret_expires_at is not None
        and endpoint.previous_secret_expires_at > now
    ):
        signing.append(
            vault.decrypt(endpoint.previous_secret_ciphertext,
                          endpoint.previous_secret_key_version, purpose=SECRET_PURPOSE,
                          record=binding(endpoint.public_id, endpoint.previous_secret_bound),
                          ).decode()
        )  # fmt: skip
    return _Claimed(delivery_id, endpoint.id, endpoint.url, event.public_id, event_body(event),
                    tuple(signing))  # fmt: skip


def _read_some(raw: Any, deadline: float) -> str:
    """Up to RESPONSE_LIMIT bytes of the answer's body, read until the deadline: each read
    returns what has arrived (at most one READ_TIMEOUT's wait), so a receiver that drips its
    answer cannot hold the attempt past the deadline by more than one read."""
    body = bytearray()
    while len(body) < RESPONSE_LIMIT and time.monotonic() < deadline:
        chunk = raw.read1(RESPONSE_LIMIT - len(body), decode_content=True)
        if not chunk:
            break
        body += chunk
    return body[:RESPONSE_LIMIT].decode("utf-8", errors="replace")


def _post(claimed: _Claimed, settings: ServiceSettings, timestamp: int) -> _Answer:
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        **sign(claimed.secrets, claimed.event_id, timestamp, claimed.body),
    }
    started = time.monotonic()
    status: int | None = None
    text, error = "", None
    try:
        with _http(settings.webhook_allow_private) as http:
            response = http.post(
                claimed.url, data=claimed.body, headers=headers, allow_redirects=False,
                timeout=(CONNECT_TIMEOUT, READ_TIMEOUT), stream=True,
            )  # fmt: skip
            with response:
                status = response.status_code
                text = _read_some(response.raw, started + CONNECT_TIMEOUT + 2 * READ_TIMEOUT)
        if status is not None and 300 <= status < 400:
            error = "redirect not followed"
        elif status is not None and not 200 <= status < 300:
            error = f"answered {status}"
    except AddressRefused as exc:
        error = f"refused: {exc}"
    except requests.Timeout:
        error = f"timed out (connect {CONNECT_TIMEOUT:g} s, read {READ_TIMEOUT:g} s)"
    except requests.RequestException as exc:
        error = f"{type(exc).__name__}: {exc}"[:1000]
    duration = int((time.monotonic() - started) * 1000)
    return _Answer(status, duration, text, error)


def _record(
    u: UnitOfWork, claimed: _Claimed, attempt: int, worker: str, answer: _Answer, at: datetime
) -> str | None:
    now = u.now()
    endpoint = u.execute(
        "SELECT status, failing_since FROM webhook_endpoints WHERE id = :id FOR UPDATE",
        {"id": claimed.endpoint_id},
    ).first()
    if endpoint is None:
        return None  # deleted meanwhile: its log went with it
    disable: str | None = None
    if answer.delivered:
        state, next_at = "delivered", None
        u.execute("UPDATE webhook_endpoints SET failing_since = NULL WHERE id = :id",
                  {"id": claimed.endpoint_id})  # fmt: skip
    else:
        failing_since = endpoint.failing_since or at
        if answer.status_code == 410:
            disable = "gone"
        elif now - failing_since >= DISABLE_AFTER:
            disable = "failing"
        delay = None if disable else next_delay(attempt)
        state = "failed" if delay is None else "pending"
        next_at = None if delay is None else now + timedelta(seconds=delay)
        u.execute(
            "UPDATE webhook_endpoints SET failing_since = :since,"
            " status = CASE WHEN CAST(:disable AS text) IS NULL THEN status ELSE 'disabled' END,"
            " disabled_reason = COALESCE(CAST(:disable AS text), disabled_reason),"
            " disabled_at = CASE WHEN CAST(:disable AS text) IS NULL THEN disabled_at"
            " ELSE :now END,"
            " needs_attention = needs_attention OR CAST(:disable AS text) IS NOT NULL,"
            " updated_at = :now WHERE id = :id",
            {"since": failing_since, "disable": disable, "now": now, "id": claimed.endpoint_id},
        )
    updated = u.execute(
        "UPDATE webhook_deliveries SET attempts = :attempt, last_attempt_at = :at,"
        " status = :state, next_attempt_at = :next_at,"
        " delivered_at = :delivered_at,"
        " locked_by = NULL, locked_until = NULL"
        " WHERE id = :id AND locked_by = :worker AND status = 'pending'",
        {"attempt": attempt, "at": at, "state": state, "next_at": next_at,
         "delivered_at": at if state == "delivered" else None, "id": claimed.delivery_id,
         "worker": worker},
    )  # fmt: skip
    if not updated.rowcount:  # type: ignore[attr-defined]
        # The lease ran out and another worker took the delivery over: its record counts.
        raise RuntimeError(f"lost the lease on webhook delivery {claimed.delivery_id}")
    u.execute(
        "INSERT INTO webhook_attempts (delivery_id, attempted_at, status_code, duration_ms,"
        " response_body, error) VALUES (:d, :at, :status, :ms, :body, :error)",
        {"d": claimed.delivery_id, "at": at, "status": answer.status_code,
         "ms": answer.duration_ms, "body": answer.body.replace("\x00", ""),
         "error": answer.error},
    )  # fmt: skip
    if disable:
        # Nothing else is sent to a disabled endpoint; its other deliveries end failed.
        u.execute(
            "UPDATE webhook_deliveries SET status = 'failed', next_attempt_at = NULL"
            " WHERE endpoint_id = :we AND status = 'pending' AND locked_by IS NULL",
            {"we": claimed.endpoint_id},
        )
    if next_at is not None:
        jobs.enqueue(
            u, JOB_KIND, {"delivery": claimed.delivery_id, "attempt": attempt + 1},
            run_at=next_at, dedupe_key=f"webhook:{claimed.delivery_id}:{attempt + 1}",
        )  # fmt: skip
    return state


def deliver(uow: UnitOfWork, payload: dict[str, Any]) -> str | None:
    """The worker's handler: one attempt of a delivery. Returns its state after the attempt
    (delivered, pending, failed), ``busy`` when another attempt to the endpoint is in flight
    (the job is put back a little later), or None when there was nothing to do (already
    delivered, the endpoint disabled or deleted, a stale job; or in another worker's hands,
    when the job looks again once that worker's lease is over)."""
    delivery_id, attempt = int(payload["delivery"]), int(payload.get("attempt", 1))
    waits = int(payload.get("waits", 0))
    worker = f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}:{uuid.uuid4().hex}"
    claimed = uow.run(lambda u: _claim(u, delivery_id, attempt, worker, waits))
    if not isinstance(claimed, _Claimed):
        return claimed
    at = uow.clock()
    answer = _post(claimed, uow.settings, int(at.timestamp()))
    return uow.run(lambda u: _record(u, claimed, attempt, worker, answer, at))


def _handle(uow: UnitOfWork, payload: dict[str, Any]) -> None:
    deliver(uow, payload)


def register() -> None:
    jobs.HANDLERS[JOB_KIND] = _handle
