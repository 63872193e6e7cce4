"""Single sign-on with an OpenID Connect provider (``/auth/sso``), through authlib's Flask
client. Active only when ``OIDC_ISSUER`` is configured; otherwise its routes answer 404."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("sso", __name__, url_prefix="/auth/sso")

from portal.sso import views  # noqa: E402  (registers the routes on bp)

__all__ = ["bp", "views"]
