"""The JSON API's error responses: every failure under /api/ answers with the error object
``{"error": {"type", "code", "message", "param", "request_id"}}``, with the status from the one
table in :mod:`portal.web.errors` (``http_status``)."""

from __future__ import annotations

import json
import uuid

from flask import Flask, Response, g, request
from flask_limiter.errors import RateLimitExceeded
from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES

from portal.api.schemas import Error, ErrorDetail
from portal.api.security import www_authenticate
from portal.domain.errors import PortalError, RateLimited, TemporarilyUnavailable
from portal.web.errors import register_renderer

#: Stable codes for errors raised by the HTTP layer rather than by a service.
HTTP_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    411: "length_required",
    413: "request_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    422: "parameter_invalid",
    429: "rate_limited",
    431: "headers_too_large",
    500: "internal_error",
    501: "not_implemented",
    503: "service_unavailable",
}

INTERNAL_MESSAGE = (
    "Something went wrong on our side; nothing is known to have changed. "
    "Quote the request id if you report it."
)


#: What the API says instead of the service's message, by error code.
MESSAGES: dict[str, str] = {
    "outcome_unknown": (
        "The database connection was lost, so the outcome is unknown: retry with the same "
        "Idempotency-Key."
    ),
}


def is_api_request() -> bool:
    return request.path == "/api" or request.path.startswith("/api/")


def kind_for_status(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "api_error"
    return "invalid_request_error"


def _http_message(error: HTTPException, status: int) -> str:
    if status == 404:
        return f"Unrecognised request URL ({request.method} {request.path})."
    if status == 405:
        allowed = ", ".join(sorted(getattr(error, "valid_methods", None) or ()))
        return f"{request.method} is not allowed on {request.path} (allowed: {allowed})."
    if status == 413:
        return "The request body is too large."
    if isinstance(error, RateLimitExceeded):
        return f"Too many requests ({error.description}). Retry after Retry-After seconds."
    if status >= 500:
        return INTERNAL_MESSAGE
    return HTTP_STATUS_CODES.get(status, "Error") + "."


def render_error(error: PortalError | HTTPException, status: int) -> Response:
    """The JSON error response for ``error`` (headers from the error itself are kept)."""
    request_id = g.get("request_id")
    if not request_id:
        # Set it so the X-Request-ID header (added after this) names the same request.
        request_id = g.request_id = f"req_{uuid.uuid4().hex}"
    if isinstance(error, PortalError):
        detail = ErrorDetail(
            type=error.kind,
            code=error.code,
            message=MESSAGES.get(error.code, error.message),
            param=error.param,
            request_id=request_id,
        )
    else:
        detail = ErrorDetail(
            type=kind_for_status(status),
            code=HTTP_CODES.get(status, f"http_{status}"),
            message=_http_message(error, status),
            param=None,
            request_id=request_id,
        )
    body = Error(error=detail).model_dump(mode="json", exclude_unset=True)
    if isinstance(error, PortalError):
        # A card decline adds decline_code and the payment, as Stripe's card errors do.
        body["error"].update(error.details)
    response = Response(json.dumps(body), status=status, mimetype="application/json")
    if isinstance(error, HTTPException) and error.response is None:
        for key, value in error.get_headers():
            if key.lower() != "content-type":
                response.headers[key] = value
    if isinstance(error, RateLimited):
        response.headers["Retry-After"] = str(error.retry_after)
    elif isinstance(error, TemporarilyUnavailable):
        response.headers["Retry-After"] = "1"
    if status == 401 and "WWW-Authenticate" not in response.headers:
        response.headers["WWW-Authenticate"] = www_authenticate(request)
    response.headers["Cache-Control"] = "no-store"
    return response


def init_app(app: Flask) -> None:
    register_renderer(app, (is_api_request, render_error))
