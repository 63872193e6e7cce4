"""How domain errors map to HTTP: one table for every surface (pages, fragments, JSON)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from flask import Flask, Response, current_app, g, make_response, render_template, request
from werkzeug.exceptions import HTTPException, InternalServerError
from werkzeug.http import HTTP_STATUS_CODES

from portal.domain.errors import (
    Conflict,
    Forbidden,
    IdempotencyConflict,
    InvalidInput,
    NotFound,
    OutcomeUnknown,
    PortalError,
    RateLimited,
    TemporarilyUnavailable,
    Unauthenticated,
)
from portal.services.shared.uow import LOST_MESSAGE, connection_lost

log = logging.getLogger("portal.web")

#: Most specific class first. Card errors (insufficient funds, a frozen card) are 402, as in
#: Stripe: the request was valid but could not be carried out.
STATUS_BY_CLASS: tuple[tuple[type[PortalError], int], ...] = (
    (Unauthenticated, 401),
    (Forbidden, 403),
    (NotFound, 404),
    (IdempotencyConflict, 422),
    (InvalidInput, 422),
    (Conflict, 409),
    (RateLimited, 429),
    # The database connection was lost mid-request: it may have been carried out; retry.
    (OutcomeUnknown, 503),
    (TemporarilyUnavailable, 503),
)

#: Seconds a client should wait before retrying a 503.
RETRY_AFTER = 1

#: What pages say instead of the service's message, by error code (a page has no
#: ``Idempotency-Key``: its forms carry their key, so sending one again is safe).
PAGE_MESSAGES = {
    OutcomeUnknown.code: (
        "Portal lost its connection to the database while handling this, so we cannot tell "
        "whether it went through. Wait a moment, then check your activity or send the same "
        "form again: a form is never carried out twice."
    ),
}


def http_status(error: PortalError) -> int:
    if error.kind == "card_error":
        return 402
    for cls, status in STATUS_BY_CLASS:
        if isinstance(error, cls):
            return status
    return 400


# -- rendering ---------------------------------------------------------------------------------
#: A surface that renders errors its own way: (does this request belong to it?, renderer).
#: The JSON API registers one for /api/; everything else gets pages or htmx fragments.
ErrorRenderer = tuple[Callable[[], bool], Callable[[PortalError | HTTPException, int], Response]]


def register_renderer(app: Flask, renderer: ErrorRenderer) -> None:
    app.extensions.setdefault("portal.error_renderers", []).append(renderer)


def _render(error: PortalError | HTTPException, status: int) -> Response | tuple[str, int]:
    if isinstance(error, TemporarilyUnavailable):
        g.portal_retry_after = RETRY_AFTER  # see _keep_retry_after
    for applies, render in current_app.extensions.get("portal.error_renderers", []):
        if applies():
            return render(error, status)
    if isinstance(error, PortalError):
        message = PAGE_MESSAGES.get(error.code, error.message)
    else:
        message = error.description or ""
    title = HTTP_STATUS_CODES.get(status, "Error")
    template = "errors/_error.html" if _wants_fragment() else "errors/error.html"
    retry = isinstance(error, TemporarilyUnavailable)
    response = make_response(
        render_template(template, status=status, title=title, message=message, retry=retry),
        status,
    )
    response.headers["Vary"] = "HX-Request"
    if isinstance(error, HTTPException) and error.response is None:
        for key, value in error.get_headers():
            if key.lower() != "content-type":
                response.headers[key] = value
    return response


def _wants_fragment() -> bool:
    return request.headers.get("HX-Request") == "true" and not request.headers.get("HX-Boosted")


def init_app(app: Flask) -> None:
    @app.after_request
    def _keep_retry_after(response: Response) -> Response:
        # On a rate-limited route flask-limiter (whose after_request runs before this one,
        # registered earlier) rewrites Retry-After to the end of the limit's window, or rounds
        # our 1 s down to 0. A 503's Retry-After says when to retry it.
        if (seconds := g.get("portal_retry_after")) is not None:
            response.headers["Retry-After"] = str(seconds)
        elif response.status_code not in (429, 503):
            # flask-limiter adds Retry-After to every answer of a limited route; only a refusal
            # to be retried later carries it (a failed sign-in's 401 is not one).
            response.headers.pop("Retry-After", None)
        return response

    @app.errorhandler(PortalError)
    def portal_error(error: PortalError) -> Response | tuple[str, int]:
        return _render(error, http_status(error))

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response | tuple[str, int]:
        return _render(error, error.code or 500)

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> Response | tuple[str, int]:
        if connection_lost(error):
            # Lost outside a unit of work (the sign-in loader's read, say): a unit of work may
            # have committed earlier in the request, so the outcome is unknown here too.
            log.warning(
                "database connection lost on %s %s: %s", request.method, request.path,
                type(getattr(error, "orig", error)).__name__,
            )  # fmt: skip
            return _render(OutcomeUnknown(LOST_MESSAGE), 503)
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _render(InternalServerError(), 500)
