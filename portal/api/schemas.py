"""Base classes of the API's pydantic models, and the error object every failure answers with.

The same models validate requests, serialise responses and generate the OpenAPI document.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ApiModel(BaseModel):
    """Objects the API returns (and nested objects). Unknown fields are refused; in the OpenAPI
    document every serialised field is listed as required, since responses always carry it."""

    model_config = ConfigDict(extra="forbid", json_schema_serialization_defaults_required=True)


class RequestBody(ApiModel):
    """A JSON request body, validated strictly: ``"10"`` is not an integer and ``1.0`` is not
    ``1``. JSON strings still become datetimes, UUIDs and enums. A field can relax with
    ``Field(strict=False)``."""

    model_config = ConfigDict(strict=True)


class QueryModel(ApiModel):
    """Query-string parameters: every value arrives as text, so validation is lax (``"10"`` is
    10). A ``list[...]`` field takes a repeated parameter (``?status=a&status=b``)."""


class ErrorDetail(ApiModel):
    """What went wrong, in Stripe's shape."""

    type: str = Field(
        description="Category: invalid_request_error, authentication_error, rate_limit_error, "
        "card_error, idempotency_error or api_error.",
        examples=["invalid_request_error"],
    )
    code: str = Field(
        description="Stable, machine-readable reason.", examples=["parameter_missing"]
    )
    message: str = Field(description="A readable explanation, safe to show.")
    param: str | None = Field(
        description="The parameter at fault (dotted path), when there is one.",
        examples=["email"],
    )
    request_id: str = Field(
        description="Identifies this request (also in the X-Request-ID header).",
        examples=["req_4f2a9c1b0d6e4e7f8a9b0c1d2e3f4a5b"],
    )
    # Card errors only (402 card_declined), as in Stripe: absent from other errors.
    decline_code: str | None = Field(
        None,
        description="Card errors: why the card declined (insufficient_funds, incorrect_cvc, ...).",
        json_schema_extra={"examples": ["insufficient_funds"]},
    )
    payment: dict[str, Any] | None = Field(
        None, description="Card errors: the declined payment as recorded."
    )

    # The two card-error fields are optional in the document (other fields are always sent).
    model_config = ConfigDict(extra="forbid", json_schema_serialization_defaults_required=False)


class Error(ApiModel):
    """The body of every error response."""

    error: ErrorDetail
