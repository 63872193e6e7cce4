"""The forms of the wallet pages (Flask-WTF: each carries the CSRF token).

Fields check only that something was entered and its shape; the services own every rule
(limits, available money, frozen cards) and their refusals are shown next to the field they
name (:func:`add_service_error`). Money forms carry a hidden idempotency key minted when the form
is first rendered and kept through the review step, so a double submit moves money once.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from flask_wtf import FlaskForm
from wtforms import HiddenField, RadioField, SelectField, StringField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, InputRequired, Length, Optional

from portal.domain.cards import BRANDS
from portal.domain.errors import PortalError
from portal.domain.types import CardType, TopUpMethod
from portal.services.wallet.activity import FIRST_DAY, LAST_DAY

#: Service ``param`` names -> the form field that shows the refusal.
PARAM_FIELDS = {
    "card_id": "card_id",
    "from_card_id": "card_id",
    "to_card_id": "to_card_id",
    "number": "to_number",
    "currency": "amount",
    "amount": "amount",
    "method": "method",
    "memo": "memo",
    "bank_name": "bank_name",
    "account_number": "account_number",
    "account_holder": "account_holder",
    "saved_account": "saved_account",
    "name": "name",
    "card_type": "card_type",
    "brand": "brand",
}

METHOD_LABELS = {
    TopUpMethod.BANK_TRANSFER: "Bank transfer",
    TopUpMethod.DEBIT_CARD: "Debit card",
    TopUpMethod.CREDIT_CARD: "Credit card",
    TopUpMethod.E_WALLET: "E-wallet",
    TopUpMethod.CASH: "Cash at a partner store",
}

CARD_TYPE_LABELS = {
    CardType.DEBIT: "Debit",
    CardType.CREDIT: "Credit",
    CardType.PREPAID: "Prepaid",
}


def options(pairs: Iterable[tuple[Any, str]]) -> list[SelectChoice]:
    """Choices for a select or radio field (wtforms' SelectChoice; tuples are deprecated)."""
    return [SelectChoice(value, label) for value, label in pairs]


def new_key() -> str:
    """A fresh idempotency key for a money form."""
    return uuid.uuid4().hex


def _sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?", ")")) else text + "."


def add_service_error(form: FlaskForm, error: PortalError, *, default: str | None = None) -> None:
    """Show a service's refusal next to the field it names (its ``param``), else on the form."""
    message = _sentence(error.message)
    name = PARAM_FIELDS.get(error.param or "", error.param) if error.param else None
    field = getattr(form, name, None) if name else None
    if field is None and default is not None:
        field = getattr(form, default, None)
    if field is not None and hasattr(field, "errors"):
        field.errors = [*field.errors, message]
    else:
        form.form_errors.append(message)


def _amount() -> StringField:
    return StringField(
        "Amount",
        validators=[DataRequired("Enter an amount.")],
        render_kw={"inputmode": "decimal", "autocomplete": "off", "maxlength": 20,
                   "placeholder": "0.00", "class_": "input input--amount"},
    )  # fmt: skip


def _card(label: str) -> SelectField:
    """A choice of the user's cards; the values are the cards' public ids (``card_...``)."""
    return SelectField(
        label, validate_choice=False,
        validators=[InputRequired("Choose a card.")],
    )  # fmt: skip


class IdempotentForm(FlaskForm):
    """A form whose submission is taken once: a hidden idempotency key, made when the form is
    shown and sent back with every submission of it (a double submit replays the first)."""

    idempotency_key = HiddenField()

    def ensure_key(self) -> None:
        key = (self.idempotency_key.data or "").strip()
        if not key or len(key) > 200:
            self.idempotency_key.data = new_key()


class MoneyForm(IdempotentForm):
    """Shared by the three money forms: the idempotency key and the step of the flow."""

    #: "review" (form -> summary), "confirm" (summary -> move money), "edit" (summary -> form).
    step = HiddenField(default="review")


class TopUpForm(MoneyForm):
    card_id = _card("Card to top up")
    method = SelectField(
        "Pay with",
        choices=options((m.value, label) for m, label in METHOD_LABELS.items()),
        validators=[DataRequired("Choose how you pay.")],
    )
    amount = _amount()


class TransferForm(MoneyForm):
    card_id = _card("From")
    destination = RadioField(
        "Send to",
        choices=options([("own", "One of my cards"), ("other", "Someone else's card")]),
        default="own",
        validators=[DataRequired("Choose where the money goes.")],
    )
    to_card_id = SelectField("My card", validate_choice=False, validators=[Optional()])
    to_number = StringField(
        "Card number",
        render_kw={"inputmode": "numeric", "autocomplete": "off", "maxlength": 23,
                   "spellcheck": "false", "placeholder": "1234 5678 9012 3456"},
    )  # fmt: skip
    #: The look-up's recipient reference, carried from the review to the confirm step in place of
    #: the card number (which never goes back to the browser).
    recipient = HiddenField()
    amount = _amount()
    memo = StringField(
        "Note for the recipient (optional)",
        validators=[Optional(), Length(max=140, message="Keep the note to 140 characters.")],
        render_kw={"maxlength": 140, "autocomplete": "off"},
    )

    def validate(self, extra_validators: object = None) -> bool:
        ok = super().validate(extra_validators)
        if self.destination.data == "other":
            if not (self.to_number.data or "").strip() and not self.recipient.data:
                self.to_number.errors = [*self.to_number.errors, "Enter the card number."]
                ok = False
        elif self.destination.data == "own" and not self.to_card_id.data:
            self.to_card_id.errors = [*self.to_card_id.errors, "Choose one of your cards."]
            ok = False
        return ok


class WithdrawForm(MoneyForm):
    card_id = _card("From card")
    amount = _amount()
    #: An account withdrawn to before (the earlier withdrawal's ``wd_...``), or "" for a new one.
    saved_account = RadioField("Pay to", validate_choice=False, validators=[Optional()])
    bank_name = StringField(
        "Bank name",
        render_kw={"autocomplete": "off", "maxlength": 100},
    )
    account_number = StringField(
        "Account number",
        render_kw={"autocomplete": "off", "maxlength": 40, "spellcheck": "false"},
    )
    account_holder = StringField(
        "Account holder",
        render_kw={"autocomplete": "name", "maxlength": 100},
    )

    def validate(self, extra_validators: object = None) -> bool:
        ok = super().validate(extra_validators)
        if not self.saved_account.data:  # a new account: its three fields are needed
            for name, message in (
                ("bank_name", "Enter the name of the bank."),
                ("account_number", "Enter the account number."),
                ("account_holder", "Enter the name on the bank account."),
            ):
                field = getattr(self, name)
                if not (field.data or "").strip():
                    field.errors = [*field.errors, message]
                    ok = False
        return ok


class IssueCardForm(IdempotentForm):
    card_type = RadioField(
        "Card type",
        choices=options((t.value, label) for t, label in CARD_TYPE_LABELS.items()),
        default=CardType.DEBIT.value,
        validators=[DataRequired("Choose a card type.")],
    )
    brand = RadioField(
        "Network",
        choices=options((b.id, b.name) for b in BRANDS.values()),
        default="visa",
        validators=[DataRequired("Choose a card network.")],
    )
    currency = SelectField("Currency", validators=[DataRequired("Choose a currency.")])
    name = StringField(
        "Name (optional)",
        validators=[Optional(), Length(max=64, message="Keep the name to 64 characters.")],
        render_kw={"maxlength": 64, "autocomplete": "off", "placeholder": "e.g. Groceries"},
    )


class RenameCardForm(FlaskForm):
    name = StringField(
        "Card name",
        validators=[Length(max=64, message="Keep the name to 64 characters.")],
        render_kw={"maxlength": 64, "autocomplete": "off"},
    )


#: A date input limited to the days the history can be filtered by.
_DAY_INPUT = {"type": "date", "min": FIRST_DAY.isoformat(), "max": LAST_DAY.isoformat()}


class ActivityFilterForm(FlaskForm):
    """The history's filters: a GET form (no CSRF), read from the query string."""

    class Meta:
        csrf = False

    card = SelectField("Card", validate_choice=False)
    kind = SelectField("Kind", validate_choice=False)
    status = SelectField("Status", validate_choice=False)
    since = StringField("From", render_kw=_DAY_INPUT)
    until = StringField("To", render_kw=_DAY_INPUT)
    q = StringField("Search", render_kw={"type": "search", "maxlength": 100,
                                         "placeholder": "Counterparty, card, amount…"})  # fmt: skip
