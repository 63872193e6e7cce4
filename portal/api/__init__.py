"""The JSON API at ``/api/v1``: the conventions live in :mod:`portal.api.operation`
(``@operation``), :mod:`~portal.api.errors`, :mod:`~portal.api.pagination`,
:mod:`~portal.api.security` and :mod:`~portal.api.openapi`; Swagger UI in :mod:`~portal.api.docs`.

To add endpoints, write a module under ``portal/api/`` whose views are declared with
``@operation(bp, ...)`` and list it in ``ENDPOINT_MODULES``.
"""

from __future__ import annotations

import importlib

from flask import Blueprint, Flask

from portal.api import docs, errors, merchant_auth
from portal.api.operation import operation
from portal.api.security import BEARER, add_scheme, current_actor
from portal.extensions import csrf

bp = Blueprint("api", __name__, url_prefix="/api/v1")
bp.add_url_rule("/openapi.json", view_func=docs.openapi_json, methods=["GET"])

#: Modules whose ``@operation(bp, ...)`` declarations make up the API (imported by init_app).
ENDPOINT_MODULES: tuple[str, ...] = (
    "portal.api.auth",
    "portal.api.users",
    "portal.api.mfa_enrolment",
    "portal.api.roles",
    "portal.api.cards",
    "portal.api.payees",
    "portal.api.money",
    "portal.api.merchants",
    "portal.api.payments",
    "portal.api.refunds",
    "portal.api.checkout",
    "portal.api.events",
    "portal.api.webhooks",
    "portal.api.payouts",
    "portal.api.statistics",
    "portal.api.adjustments",
)

__all__ = ["ENDPOINT_MODULES", "bp", "current_actor", "init_app", "operation"]


def init_app(app: Flask) -> None:
    for module in ENDPOINT_MODULES:
        importlib.import_module(module)
    add_scheme(app, BEARER)
    merchant_auth.init_app(app)
    errors.init_app(app)
    csrf.exempt(bp)  # the API never authenticates by cookie
    app.register_blueprint(bp)
    app.register_blueprint(docs.bp)
