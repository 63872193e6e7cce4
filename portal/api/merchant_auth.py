"""Merchant API keys as an API scheme: ``Authorization: Bearer sk_live_...`` or the reference's
``X-API-Key: sk_live_...`` header. A key acts only for its merchant and within its scopes (403
otherwise); failed key checks are counted per client address across every merchant endpoint and
refused past ``KEY_FAILURES_PER_ADDRESS`` (429). A key never reaches a log line: the access log
masks ``sk_`` secrets and nothing stores a request's headers.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Request, Response, g, request

from portal.api.security import Scheme, add_scheme
from portal.domain.errors import Forbidden, Unauthenticated
from portal.domain.types import Actor
from portal.extensions import limiter
from portal.services.merchants import keys
from portal.web.uow import make_uow

API_KEY_HEADER = "X-API-Key"
KEY_FAILURES_PER_ADDRESS = "20 per minute; 200 per hour"

API_KEY = Scheme(
    name="api_key",
    authenticator_key="portal.api_key_authenticator",
    openapi={
        "type": "http",
        "scheme": "bearer",
        "description": "A merchant's secret key, `sk_live_...`, sent as `Authorization: Bearer "
        f"sk_live_...` (or as `{API_KEY_HEADER}: sk_live_...`). Create and roll keys in the "
        "merchant dashboard; each has scopes (payments:read, payments:write, refunds:write).",
    },
    prefixes=(keys.SECRET_PREFIX,),
)


def authenticate_key(req: Request) -> keys.KeyPrincipal:
    credential = req.headers.get("Authorization", "").partition(" ")[2].strip() or (
        req.headers.get(API_KEY_HEADER, "").strip()
    )
    try:
        return keys.authenticate_api_key(
            make_uow(), secret=credential, address=req.remote_addr or ""
        )
    except Unauthenticated:
        g.api_key_failed = True
        raise


def _key_failed(_response: Response) -> bool:
    return bool(g.get("api_key_failed"))


#: Every merchant endpoint shares one bucket of failed key checks per client address.
key_failures = limiter.shared_limit(
    KEY_FAILURES_PER_ADDRESS,
    scope="api-key-failures",
    key_func=lambda: f"api-key-failures:{request.remote_addr or 'unknown'}",
    deduct_when=_key_failed,
)


def require_scope(actor: Actor, scope: str) -> None:
    """403 unless the key holds ``scope``."""
    if not actor.can(scope):
        raise Forbidden(
            f"This API key lacks the {scope} scope for this request.", code="permission_denied"
        )


def init_app(app: Flask) -> None:
    add_scheme(app, API_KEY)
    app.extensions[API_KEY.authenticator_key] = authenticate_key


__all__: list[Any] = ["API_KEY", "init_app", "key_failures", "require_scope"]
