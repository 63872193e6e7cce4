"""The hosted checkout's one form: which of the payer's cards pays, with the CSRF token and an
idempotency key minted when the page is rendered (a double submit pays once)."""

from __future__ import annotations

import uuid

from flask_wtf import FlaskForm
from wtforms import HiddenField, RadioField
from wtforms.validators import InputRequired


def new_key() -> str:
    """A fresh idempotency key for one rendering of the pay form."""
    return uuid.uuid4().hex


class PayForm(FlaskForm):
    card = RadioField(
        "Pay with",
        validate_choice=False,  # the service decides which cards are the payer's own
        validators=[InputRequired("Choose a card to pay with.")],
    )
    idempotency_key = HiddenField()

    def fresh_key(self) -> None:
        """Every rendering gets a new key: a new attempt (another card after a decline) is a
        new request, while a double submit of one rendering is the same one."""
        self.idempotency_key.data = new_key()
