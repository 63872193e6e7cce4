"""Domain errors with stable codes. HTTP status is mapped once per surface, never here."""

from __future__ import annotations

from typing import Any, ClassVar


class PortalError(Exception):
    """Base of every refusal a service can give. ``code`` is stable and part of the API."""

    code: ClassVar[str] = "portal_error"
    kind: ClassVar[str] = "invalid_request_error"
    #: True when this refusal is the stored answer to an earlier request with the same
    #: idempotency key (the API then sends ``Idempotent-Replayed: true``).
    replayed: bool = False

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code  # type: ignore[misc]
        #: Further fields of the error object (a decline's ``decline_code`` and ``payment``).
        self.details = dict(details or {})

    def as_dict(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "code": self.code,
            "message": self.message,
            "param": self.param,
            **self.details,
        }


class InvalidInput(PortalError):
    #: The same code the API's schema validation gives a bad field: one code per kind.
    code = "parameter_invalid"


class LimitExceeded(InvalidInput):
    code = "limit_exceeded"


class Unauthenticated(PortalError):
    """No valid credentials (sign-in failed, token missing, expired or revoked)."""

    code = "unauthenticated"
    kind = "authentication_error"


class InvalidCredentials(Unauthenticated):
    """Sign-in failed. One message whatever the reason, so it reveals nothing."""

    code = "invalid_credentials"


class RateLimited(PortalError):
    code = "rate_limited"
    kind = "rate_limit_error"
    retry_after: int = 60

    def __init__(self, message: str, *, retry_after: int = 60, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class NotFound(PortalError):
    code = "not_found"


class Forbidden(PortalError):
    code = "forbidden"


class Conflict(PortalError):
    code = "conflict"


class InsufficientFunds(PortalError):
    code = "insufficient_funds"
    kind = "card_error"


class CardUnavailable(PortalError):
    """The card is frozen, expired or archived (the code says which)."""

    code = "card_unavailable"
    kind = "card_error"


class CurrencyMismatch(InvalidInput):
    code = "currency_mismatch"


class InvalidState(Conflict):
    code = "invalid_state"


class UnexpectedState(PortalError):
    """An action the object's status does not allow (capture a canceled payment): a 400, never
    a 409, since retrying cannot help."""

    code = "unexpected_state"


class CardDeclined(PortalError):
    """A payment the card could not make: ``details`` carries ``decline_code`` and the
    ``payment`` as the API shows it."""

    code = "card_declined"
    kind = "card_error"


class TemporarilyUnavailable(PortalError):
    """Lock timeout or repeated deadlock: nothing was written; retry with the same key."""

    code = "try_again"
    kind = "api_error"


class OutcomeUnknown(TemporarilyUnavailable):
    """The database connection was lost (killed, restarted, unreachable) while a transaction
    that may have written was open or committing: it may or may not have been committed.
    Retrying with the same idempotency key is safe: a committed request is replayed, one that
    was not is carried out."""

    code = "outcome_unknown"


class IdempotencyConflict(PortalError):
    code = "idempotency_key_reused"
    kind = "idempotency_error"


def _subclasses(cls: type[PortalError]) -> dict[str, type[PortalError]]:
    found = {cls.__name__: cls}
    for sub in cls.__subclasses__():
        found.update(_subclasses(sub))
    return found


def error_to_dict(error: PortalError) -> dict[str, Any]:
    """What an idempotency record stores for a refusal, enough to raise it again."""
    return {"class": type(error).__name__, **error.as_dict()}


def error_from_dict(data: dict[str, Any]) -> PortalError:
    """Rebuild a stored refusal (idempotent replay of a failed request)."""
    cls = _subclasses(PortalError).get(data.get("class", ""), PortalError)
    base = {"class", "type", "code", "message", "param"}
    details = {k: v for k, v in data.items() if k not in base}
    error = cls.__new__(cls)
    PortalError.__init__(
        error, data["message"], param=data.get("param"), code=data["code"], details=details
    )
    return error
