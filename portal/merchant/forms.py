"""The forms of the merchant dashboard (Flask-WTF: each carries the CSRF token).

Fields check only that something was entered and its shape; the services own every rule and
their refusals are shown next to the field they name (:func:`add_service_error`). The payment
actions (capture, cancel, refund) carry a hidden idempotency key minted when the page is
rendered, so a double submit acts once; the key and team forms carry a one-time form token
(:mod:`portal.web.once`) so a double submit or a reload does not make a second key or send a
second invitation.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from flask_wtf import FlaskForm
from wtforms import HiddenField, SelectField, SelectMultipleField, StringField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Length, Optional
from wtforms.widgets import CheckboxInput, ListWidget

from portal.domain.errors import PortalError
from portal.services.merchants.keys import DEFAULT_SCOPES, SCOPES
from portal.services.merchants.merchants import ROLES
from portal.services.merchants.payments import CANCELLATION_REASONS, REFUND_REASONS

#: Service ``param`` names -> the form field that shows the refusal.
PARAM_FIELDS = {
    "name": "name",
    "website": "website",
    "contact_email": "contact_email",
    "email": "email",
    "settlement_currency": "settlement_currency",
    "scopes": "scopes",
    "expires_at": "expires",
    "overlap_hours": "overlap",
    "amount": "amount",
    "amount_to_capture": "amount",
    "reason": "reason",
    "cancellation_reason": "reason",
    "role": "role",
}

SCOPE_LABELS = {
    "payments:read": "Read payments and refunds",
    "payments:write": "Create, capture and cancel payments",
    "refunds:write": "Refund payments",
    "webhooks:manage": "Manage webhooks",
    "payouts:write": "Pay out the balance (owners only)",
}
ROLE_LABELS = {
    "owner": "Owner: everything, including the team",
    "developer": "Developer: API keys, payments and refunds",
    "viewer": "Viewer: read only",
}
ROLE_NAMES = {"owner": "Owner", "developer": "Developer", "viewer": "Viewer"}
CANCEL_LABELS = {
    "requested_by_customer": "Requested by the customer",
    "duplicate": "Duplicate",
    "fraudulent": "Fraudulent",
    "abandoned": "Abandoned",
}
REFUND_LABELS = {
    "requested_by_customer": "Requested by the customer",
    "duplicate": "Duplicate",
    "fraudulent": "Fraudulent",
}
#: Roll overlaps offered (hours the old key keeps working).
OVERLAPS = {0: "Stop the old key now", 1: "1 hour", 24: "24 hours", 168: "7 days"}
PAYMENT_STATUS_LABELS = {
    "succeeded": "Succeeded",
    "requires_capture": "Uncaptured",
    "requires_payment_method": "Declined",
    "canceled": "Canceled",
}
MERCHANT_STATES = {
    "pending": "Pending application",
    "active": "Active",
    "rejected": "Rejected",
    "suspended": "Suspended",
    "archived": "Archived",
}


def options(pairs: Iterable[tuple[Any, str]]) -> list[SelectChoice]:
    """Choices for a select field (wtforms' SelectChoice; tuples are deprecated)."""
    return [SelectChoice(value, label) for value, label in pairs]


def new_key() -> str:
    """A fresh idempotency key (or one-time form token)."""
    return uuid.uuid4().hex


def _sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?", ")")) else text + "."


def add_service_error(
    form: FlaskForm,
    error: PortalError,
    *,
    default: str | None = None,
    aliases: dict[str, str] | None = None,
) -> None:
    """Show a service's refusal next to the field it names (its ``param``, through ``aliases``
    then :data:`PARAM_FIELDS`), else next to ``default``, else on the form."""
    message = _sentence(error.message)
    names = {**PARAM_FIELDS, **(aliases or {})}
    name = names.get(error.param or "", error.param) if error.param else None
    field = getattr(form, name, None) if name else None
    if field is None and default is not None:
        field = getattr(form, default, None)
    if field is not None and hasattr(field, "errors") and not isinstance(field, HiddenField):
        field.errors = [*field.errors, message]
    else:
        form.form_errors.append(message)


class KeyedForm(FlaskForm):
    """A form taken once: its hidden ``idempotency_key`` is made when the form is shown and
    sent back with every submission of it."""

    idempotency_key = HiddenField()

    def ensure_key(self) -> None:
        key = (self.idempotency_key.data or "").strip()
        if not key or len(key) > 200:
            self.idempotency_key.data = new_key()


class ApplyForm(FlaskForm):
    name = StringField(
        "Business name",
        validators=[DataRequired("Enter the business name."),
                    Length(max=120, message="Keep the name to 120 characters.")],
        render_kw={"maxlength": 120, "autocomplete": "organization"},
    )  # fmt: skip
    website = StringField(
        "Website",
        validators=[DataRequired("Enter the business's website.")],
        render_kw={"type": "url", "maxlength": 255, "autocomplete": "url",
                   "placeholder": "https://shop.example", "spellcheck": "false"},
    )  # fmt: skip
    contact_email = StringField(
        "Contact email",
        validators=[DataRequired("Enter an email address for the business.")],
        render_kw={"type": "email", "maxlength": 254, "autocomplete": "email",
                   "spellcheck": "false"},
    )  # fmt: skip
    settlement_currency = SelectField(
        "Settlement currency", validators=[DataRequired("Choose a currency.")]
    )


class PaymentFilterForm(FlaskForm):
    """The payment list's filters: a GET form (no CSRF), read from the query string."""

    class Meta:
        csrf = False

    q = StringField(
        "Search",
        render_kw={"type": "search", "maxlength": 100,
                   "placeholder": "Description, metadata or pay_ id"},
    )  # fmt: skip
    status = SelectField(
        "Status",
        choices=options([("", "Any status"), *PAYMENT_STATUS_LABELS.items()]),
        validate_choice=False,
    )
    since = StringField("From", render_kw={"type": "date"})
    until = StringField("To", render_kw={"type": "date"})


class CaptureForm(KeyedForm):
    amount = StringField(
        "Amount to capture (optional)",
        validators=[Optional()],
        render_kw={"inputmode": "decimal", "autocomplete": "off", "maxlength": 20},
    )


class CancelForm(KeyedForm):
    reason = SelectField(
        "Reason",
        choices=options(
            [("", "No reason given"), *((r, CANCEL_LABELS[r]) for r in CANCELLATION_REASONS)]
        ),  # fmt: skip
        validate_choice=False,
    )


class RefundForm(KeyedForm):
    amount = StringField(
        "Amount (optional)",
        validators=[Optional()],
        render_kw={"inputmode": "decimal", "autocomplete": "off", "maxlength": 20},
    )
    reason = SelectField(
        "Reason",
        choices=options(
            [("", "No reason given"), *((r, REFUND_LABELS[r]) for r in REFUND_REASONS)]
        ),  # fmt: skip
        validate_choice=False,
    )


class BankAccountForm(FlaskForm):
    bank_name = StringField(
        "Bank", validators=[DataRequired("Enter the bank's name."), Length(2, 100)],
        render_kw={"autocomplete": "off", "maxlength": 100},
    )  # fmt: skip
    account_number = StringField(
        "Account number or IBAN",
        validators=[DataRequired("Enter the account number."), Length(6, 40)],
        render_kw={"autocomplete": "off", "maxlength": 40, "spellcheck": "false"},
    )  # fmt: skip
    account_holder = StringField(
        "Account holder", validators=[DataRequired("Enter the account holder."), Length(2, 100)],
        render_kw={"autocomplete": "off", "maxlength": 100},
    )  # fmt: skip


class OnceForm(FlaskForm):
    """A form whose hidden ``form_token`` makes a second submission of the same rendered form
    a no-op (see :mod:`portal.web.once`)."""

    form_token = HiddenField()

    def ensure_token(self) -> None:
        token = (self.form_token.data or "").strip()
        if not token or len(token) > 64:
            self.form_token.data = new_key()


class NewKeyForm(OnceForm):
    name = StringField(
        "Name",
        validators=[DataRequired("Give the key a name, e.g. the server that uses it."),
                    Length(max=64, message="Keep the name to 64 characters.")],
        render_kw={"maxlength": 64, "autocomplete": "off", "placeholder": "e.g. Web shop"},
    )  # fmt: skip
    scopes = SelectMultipleField(
        "Scopes",
        choices=options((s, SCOPE_LABELS.get(s, s)) for s in SCOPES),
        default=list(DEFAULT_SCOPES),
        widget=ListWidget(prefix_label=False),
        option_widget=CheckboxInput(),
        validate_choice=False,
    )
    expires = StringField(
        "Expires on (optional)", validators=[Optional()], render_kw={"type": "date"}
    )


class RollKeyForm(OnceForm):
    overlap = SelectField(
        "The old key keeps working for",
        choices=options((str(h), label) for h, label in OVERLAPS.items()),
        default="24",
        validate_choice=False,
    )


class InviteForm(OnceForm):
    email = StringField(
        "Email address",
        validators=[DataRequired("Enter the email address to invite.")],
        render_kw={"type": "email", "maxlength": 254, "autocomplete": "off",
                   "spellcheck": "false"},
    )  # fmt: skip
    role = SelectField(
        "Role",
        choices=options((r, ROLE_LABELS[r]) for r in ROLES),
        default="developer",
        validate_choice=False,
    )


class RoleForm(FlaskForm):
    role = SelectField("Role", choices=options((r, ROLE_NAMES[r]) for r in ROLES),
                       validate_choice=False)  # fmt: skip


# -- webhooks ------------------------------------------------------------------------------------
#: Rotation overlaps offered (hours the old signing secret keeps signing beside the new one).
WEBHOOK_OVERLAPS = {
    0: "Stop signing with the old secret now",
    1: "1 hour",
    24: "24 hours",
    168: "7 days",
}


def _event_choices() -> list[SelectChoice]:
    from portal.services.merchants.events import TYPES

    def label(name: str) -> str:
        return name.replace(".", " ").replace("_", " ").capitalize()

    return options([("*", "All events, present and future"), *((t, label(t)) for t in TYPES)])


class NewEndpointForm(OnceForm):
    url = StringField(
        "Endpoint URL",
        validators=[DataRequired("Enter the URL Portal should send events to.")],
        render_kw={"type": "url", "maxlength": 2048, "autocomplete": "off",
                   "spellcheck": "false", "placeholder": "https://shop.example/webhooks/portal"},
    )  # fmt: skip
    events = SelectMultipleField(
        "Events to send",
        choices=_event_choices(),
        default=["*"],
        widget=ListWidget(prefix_label=False),
        option_widget=CheckboxInput(),
        validate_choice=False,
    )
    description = StringField(
        "Description (optional)",
        validators=[Optional(), Length(max=500, message="Keep the description to 500 characters.")],
        render_kw={"maxlength": 500, "autocomplete": "off", "placeholder": "e.g. Order service"},
    )


class RotateSecretForm(OnceForm):
    overlap = SelectField(
        "The old secret keeps signing for",
        choices=options((str(h), label) for h, label in WEBHOOK_OVERLAPS.items()),
        default="24",
        validate_choice=False,
    )


class ReplayForm(FlaskForm):
    since = StringField(
        "Failed since (UTC)",
        validators=[DataRequired("Enter the date and time to replay from.")],
        render_kw={"type": "datetime-local"},
    )
