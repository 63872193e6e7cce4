"""``GET /api/v1/openapi.json`` and Swagger UI at ``GET /api/docs``, served from local assets
(``make assets`` copies npm's swagger-ui-dist into ``static/vendor/swagger-ui``)."""

from __future__ import annotations

import json

from flask import Blueprint, Response, current_app, render_template_string, url_for

from portal.api import openapi

bp = Blueprint("api_docs", __name__, url_prefix="/api")

# No inline script or style: the page runs under the portal's default CSP.
PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Portal API reference</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="{{ asset('vendor/swagger-ui/swagger-ui.css') }}">
</head>
<body>
<nav class="swagger-ui" aria-label="Portal"><p class="wrapper">
<a href="{{ home_url }}">&larr; Back to Portal</a> &middot;
<a href="{{ spec_url }}">openapi.json</a>
</p></nav>
<main id="swagger-ui" data-spec-url="{{ spec_url }}"></main>
<script src="{{ asset('vendor/swagger-ui/swagger-ui-bundle.js') }}" defer></script>
<script src="{{ asset('js/swagger-init.js') }}" defer></script>
</body>
</html>
"""


def openapi_json() -> Response:
    """The OpenAPI document, built once per app (routes cannot change after the first request)."""
    cached = current_app.extensions.get("portal.api_openapi")
    if cached is None:
        cached = json.dumps(openapi.build(current_app), separators=(",", ":"))
        current_app.extensions["portal.api_openapi"] = cached
    return Response(cached, mimetype="application/json")


@bp.get("/docs")
def swagger_ui() -> str:
    return render_template_string(
        PAGE,
        spec_url=url_for("api.openapi_json"),
        home_url=url_for("health.index"),
        asset=lambda name: url_for("static", filename=name),
    )
