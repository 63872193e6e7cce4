"""How the API authenticates: named schemes, each backed by a callable the app registers.

A scheme names an ``app.extensions`` key; the callable stored there takes the request and returns
an object with ``.actor`` (a :class:`~portal.domain.types.Actor`) or raises
:class:`~portal.domain.errors.Unauthenticated`. The identity services register the ``bearer``
scheme's callable (access tokens); merchant API keys will add a second scheme the same way::

    add_scheme(app, Scheme(
        name="api_key",
        authenticator_key="portal.api_key_authenticator",
        openapi={"type": "http", "scheme": "bearer", "description": "A secret key, sk_..."},
        prefixes=("sk_", "rk_"),
    ))
    app.extensions["portal.api_key_authenticator"] = authenticate_api_key

and operations opt in with ``auth=("bearer", "api_key")``. Every scheme reads
``Authorization: Bearer <credential>``; a credential starting with one of a scheme's ``prefixes``
goes to that scheme, any other to the operation's scheme without prefixes.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from flask import Flask, Request, current_app, g, request

from portal.domain.errors import Unauthenticated
from portal.domain.types import Actor

log = logging.getLogger("portal.api")

#: RFC 6750 ``b64token``.
_TOKEN = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")

REALM = "portal"


class Principal(Protocol):
    """What an authenticator returns: at least the actor. (It may carry more, such as the user.)"""

    @property
    def actor(self) -> Actor: ...


Authenticator = Callable[[Request], Principal]


@dataclass(frozen=True, slots=True)
class Scheme:
    """One way to authenticate. ``name`` is what ``@operation(auth=...)`` names and the key of
    the OpenAPI security scheme ``openapi`` describes."""

    name: str
    authenticator_key: str
    openapi: Mapping[str, Any]
    prefixes: tuple[str, ...] = field(default=())

    def claims(self, credential: str) -> bool:
        return any(credential.startswith(p) for p in self.prefixes)


BEARER = Scheme(
    name="bearer",
    authenticator_key="portal.api_authenticator",
    openapi={
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "An access token from POST /api/v1/auth/token, sent as "
        "`Authorization: Bearer <token>`. It lasts about 15 minutes; refresh it with "
        "POST /api/v1/auth/refresh.",
    },
)


def schemes(app: Flask) -> dict[str, Scheme]:
    return cast(dict[str, Scheme], app.extensions.setdefault("portal.api_schemes", {}))


def add_scheme(app: Flask, scheme: Scheme) -> None:
    """Make ``scheme`` available to operations (and to the OpenAPI document) on ``app``."""
    schemes(app)[scheme.name] = scheme


def bearer_credential(req: Request) -> str | None:
    """The credential of ``Authorization: Bearer <credential>``, or None when the header is
    missing or malformed."""
    kind, _, credential = req.headers.get("Authorization", "").partition(" ")
    credential = credential.strip()
    if kind.lower() != "bearer" or not _TOKEN.match(credential):
        return None
    return credential


def www_authenticate(req: Request) -> str:
    """The ``WWW-Authenticate`` value of a 401: ``invalid_token`` when a credential was sent."""
    if bearer_credential(req) is None:
        return f'Bearer realm="{REALM}"'
    return f'Bearer realm="{REALM}", error="invalid_token"'


def authenticate(allowed: tuple[str, ...]) -> Actor:
    """Authenticate the current request with one of the ``allowed`` schemes; store the principal
    in ``g.api_principal`` and its actor in ``g.actor``. Raises Unauthenticated."""
    known = schemes(current_app)
    credential = bearer_credential(request)
    if credential is None and "api_key" in allowed:
        # The reference's header for merchant keys, taken where keys are.
        credential = request.headers.get("X-API-Key", "").strip() or None
    if credential is None:
        raise Unauthenticated("Send your credentials in the header: Authorization: Bearer <token>.")
    missing = [name for name in allowed if name not in known]
    if missing:
        raise RuntimeError(f"API auth schemes not added to this app: {', '.join(missing)}")
    candidates = [known[name] for name in allowed]
    scheme = next((s for s in candidates if s.claims(credential)), None) or next(
        (s for s in candidates if not s.prefixes), None
    )
    if scheme is None:
        raise Unauthenticated("This endpoint does not accept this kind of credential.")
    authenticator = current_app.extensions.get(scheme.authenticator_key)
    if authenticator is None:
        # Fail closed: a missing authenticator is a deployment error, not an open door.
        log.error("no authenticator registered for the %r API scheme", scheme.name)
        raise Unauthenticated("These credentials cannot be checked right now.")
    principal = authenticator(request)
    actor = principal.actor
    if not isinstance(actor, Actor):
        raise TypeError(f"the {scheme.name!r} authenticator returned no Actor")
    g.api_principal = principal
    g.api_scheme = scheme.name
    g.actor = actor
    return actor


def current_actor() -> Actor:
    """The actor of the authenticated operation now running."""
    actor = g.get("actor")
    if not isinstance(actor, Actor):
        raise RuntimeError("current_actor() outside an authenticated API operation")
    return actor
