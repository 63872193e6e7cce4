"""The merchant dashboard (``/merchant``): applying, the overview, payments, API keys, the team
and the first-payment guide; and the staff merchants page until the admin console takes it."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("merchant", __name__, url_prefix="/merchant")

from portal.merchant import views  # noqa: E402  (registers the routes on bp)

__all__ = ["bp", "views"]
