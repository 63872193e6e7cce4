"""How domain errors map to HTTP: one table for every surface (pages, fragments, JSON)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from flask import Flask, Response, current_app, make_response, render_template, request
from werkzeug.exceptions import HTTPException, InternalServerError
from werkzeug.http import HTTP_STATUS_CODES

from portal.domain.errors import (
    Conflict,
    Forbidden,
    IdempotencyConflict,
    InvalidInput,
    NotFound,
    PortalError,
    RateLimited,
    TemporarilyUnavailable,
    Unauthenticated,
)

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
    (TemporarilyUnavailable, 503),
)


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
    for applies, render in current_app.extensions.get("portal.error_renderers", []):
        if applies():
            return render(error, status)
    message = error.message if isinstance(error, PortalError) else (error.description or "")
    title = HTTP_STATUS_CODES.get(status, "Error")
    template = "errors/_error.html" if _wants_fragment() else "errors/error.html"
    response = make_response(
        render_template(template, status=status, title=title, message=message), status
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
    @app.errorhandler(PortalError)
    def portal_error(error: PortalError) -> Response | tuple[str, int]:
        return _render(error, http_status(error))

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response | tuple[str, int]:
        return _render(error, error.code or 500)

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> Response | tuple[str, int]:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _render(InternalServerError(), 500)
