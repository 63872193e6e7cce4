"""The merchant dashboard (``/merchant``): applying, the overview, payments, the balance and
payouts, API keys, the team and the first-payment guide; and the staff merchants page until the
admin console takes it."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("merchant", __name__, url_prefix="/merchant")

from portal.merchant import balance_pages, views, webhook_pages  # noqa: E402  (register the routes on bp)

__all__ = ["balance_pages", "bp", "views", "webhook_pages"]
