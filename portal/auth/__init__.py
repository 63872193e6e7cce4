"""The sign-in pages (``/auth``): sign-up, sign-in with a second factor, sign-out, email
verification, password reset and the account page ("sessions and devices" included).

Views parse forms and call the identity services; throttling of failed sign-ins lives in
:mod:`portal.auth.throttle`.
"""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("auth", __name__, url_prefix="/auth")

from portal.auth import views  # noqa: E402  (registers the routes on bp)

__all__ = ["bp", "views"]
