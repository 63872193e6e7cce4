"""Base classes of the API's pydantic models, and the error object every failure answers with.

The same models validate requests, serialise responses and generate the OpenAPI document.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from portal.domain.errors import InvalidInput
from portal.domain.ids import MAX_LENGTH, PREFIXES, RANDOM_LENGTH
from portal.domain.money import Money, MoneyError
from portal.services.identity import passwords
from portal.services.identity import users as user_rules
from portal.services.wallet import cards as card_rules


def money(amount: int, currency: str) -> Money:
    """An amount from a request; an unknown currency is a 422 naming ``currency``."""
    try:
        return Money(amount, currency)
    except MoneyError as exc:
        raise InvalidInput(str(exc), param="currency") from None


class ApiModel(BaseModel):
    """Objects the API returns (and nested objects). Unknown fields are refused; in the OpenAPI
    document every serialised field is listed as required, since responses always carry it."""

    model_config = ConfigDict(extra="forbid", json_schema_serialization_defaults_required=True)


class RequestBody(ApiModel):
    """A JSON request body, validated strictly: ``"10"`` is not an integer and ``1.0`` is not
    ``1``. JSON strings still become datetimes, UUIDs and enums. A field can relax with
    ``Field(strict=False)``."""

    model_config = ConfigDict(strict=True)

    @field_validator("*", mode="after")
    @classmethod
    def _no_control_characters(cls, value: Any) -> Any:
        """No text field takes control characters (tab, newline and carriage return aside):
        PostgreSQL cannot store NUL, and the others only hide what a text says."""
        if isinstance(value, str) and _CONTROL.search(value):
            raise ValueError("must not contain control characters")
        return value


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


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
        default=None,
        description="Card errors: why the card declined (insufficient_funds, incorrect_cvc, ...).",
        json_schema_extra={"examples": ["insufficient_funds"]},
    )
    payment: dict[str, Any] | None = Field(
        default=None, description="Card errors: the declined payment as recorded."
    )

    # The two card-error fields are optional in the document (other fields are always sent).
    model_config = ConfigDict(extra="forbid", json_schema_serialization_defaults_required=False)


class Error(ApiModel):
    """The body of every error response."""

    error: ErrorDetail


# -- public ids -------------------------------------------------------------------------------
#: The random part of the example ids the document shows.
_EXAMPLE = "4kT9qL2mXw8ZpR3vN7sB1cYd"

#: How the document names each kind of object in descriptions.
_NAMES = {"top_up": "top-up", "api_key": "API key", "checkout_session": "checkout session"}


def id_pattern(*kinds: str) -> str:
    """The regular expression of the public ids of ``kinds`` (every kind when none is given)."""
    prefixes = "|".join(PREFIXES[k] for k in (kinds or tuple(PREFIXES)))
    prefix = prefixes if len(kinds) == 1 else f"(?:{prefixes})"
    return f"^{prefix}_[0-9A-Za-z]{{{RANDOM_LENGTH}}}$"


def example_id(kind: str) -> str:
    return f"{PREFIXES[kind]}_{_EXAMPLE}"


def id_description(*kinds: str, what: str | None = None) -> str:
    """The description of a public id of ``kinds``: "A card's public id: `card_` and ..."."""
    prefixes = [f"`{PREFIXES[k]}_`" for k in kinds]
    named = prefixes[0] if len(prefixes) == 1 else ", ".join(prefixes[:-1]) + f" or {prefixes[-1]}"
    what = what or " or ".join(_NAMES.get(k, k.replace("_", " ")) for k in kinds)
    article = "An" if what[0] in "aeio" or what.startswith("API") else "A"
    return (
        f"{article} {what}'s public id: {named} and {RANDOM_LENGTH} random letters and digits."
        " Opaque: compare it, never parse it."
    )


def id_field(
    *kinds: str, description: str | None = None, what: str | None = None, **kwargs: Any
) -> Any:
    """A pydantic ``Field`` for a public id of ``kinds``: pattern, examples and description in
    the OpenAPI document; a request's value of another shape is a 422."""
    return Field(
        pattern=id_pattern(*kinds),
        max_length=MAX_LENGTH,
        examples=[example_id(kinds[0])],
        description=description or id_description(*kinds, what=what),
        **kwargs,
    )


def PublicId(*kinds: str) -> Any:  # noqa: N802 (a type, spelled as one)
    """The type of a field that holds a public id of one of ``kinds``."""
    return Annotated[str, id_field(*kinds)]


UserId = PublicId("user")
RoleId = PublicId("role")
SessionId = PublicId("session")
CardId = PublicId("card")
TopUpId = PublicId("top_up")
TransferId = PublicId("transfer")
WithdrawalId = PublicId("withdrawal")
#: An activity entry's id: the public id of the top-up, transfer or withdrawal it shows.
#: Every kind of movement the activity feed lists (a card's payments to merchants and their
#: refunds among them).
ACTIVITY_KINDS = ("top_up", "transfer", "withdrawal", "payment", "refund")
MovementId = Annotated[str, id_field(*ACTIVITY_KINDS, what="movement")]


# -- the services' rules, stated in the schemas ---------------------------------------------------
@dataclass(frozen=True, slots=True)
class ServiceCodes:
    """Field metadata (``Annotated[str, Field(...), ServiceCodes(...)]``, on a top-level field
    of a request body) for length bounds that are a service's rule with codes of its own: a
    value the schema refuses as too short or too long answers the service's code, so a client
    sees the same refusal whichever of the two catches it."""

    too_short: str | None = None
    too_long: str | None = None


#: A new password, as ``passwords.check_password_policy`` bounds it (in code points).
NewPassword = Annotated[
    str,
    Field(
        min_length=passwords.MIN_LENGTH,
        max_length=passwords.MAX_LENGTH,
        description=f"{passwords.MIN_LENGTH} to {passwords.MAX_LENGTH} characters, not a common "
        "password and not the user's email or name (`password_too_short`, `password_too_long`, "
        "`password_too_common`, `password_too_personal`); no composition rules.",
    ),
    ServiceCodes(too_short="password_too_short", too_long="password_too_long"),
]
#: A password being checked (sign-in, re-authentication): any text, bounded only for safety.
PasswordGiven = Annotated[str, Field(max_length=1024)]
#: A first or last name, as ``users.check_names`` bounds it (after trimming; printable, no
#: invisible characters or mixed-script look-alikes).
PersonName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=user_rules.MAX_NAME_LENGTH,
        description=f"1 to {user_rules.MAX_NAME_LENGTH} printable characters (trimmed); no "
        "invisible or text-direction characters, no mixed-script look-alikes.",
    ),
]
#: An email address, as ``users.clean_email`` bounds it.
EmailAddress = Annotated[
    str,
    Field(
        min_length=3,
        max_length=user_rules.MAX_EMAIL_LENGTH,
        description=f"At most {user_rules.MAX_EMAIL_LENGTH} characters; no invisible or "
        "text-direction characters, no mixed-script look-alikes (a Cyrillic `о` in a Latin "
        "address).",
    ),
]
#: A card's name, as ``cards.issue_card`` and ``activity.rename_card`` bound it.
CardName = Annotated[str, Field(max_length=card_rules.MAX_CARD_NAME)]
