"""Hosted checkout (``/checkout/<session id>``): the page a merchant sends a payer to."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("checkout", __name__, url_prefix="/checkout")

from portal.checkout import views  # noqa: E402  (registers the routes on bp)

__all__ = ["bp", "views"]
