"""How domain errors map to HTTP: one table for every surface (pages, fragments, JSON)."""

from __future__ import annotations

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
