"""Rendering for the page blueprints: whether an htmx request wants a fragment, and responses
that vary on ``HX-Request`` (a boosted navigation sends it too, and must get the whole page)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Response, make_response, render_template, request


def wants_fragment() -> bool:
    """An htmx request that wants a fragment (not a boosted navigation or a history restore)."""
    headers = request.headers
    return (
        headers.get("HX-Request") == "true"
        and not headers.get("HX-Boosted")
        and not headers.get("HX-History-Restore-Request")
    )


def render_page(template: str, status: int = 200, /, **context: Any) -> Response:
    """``template`` rendered, varying on ``HX-Request``."""
    response = make_response(render_template(template, **context), status)
    response.vary.add("HX-Request")
    return response


def render_fragments(*parts: tuple[str, Mapping[str, Any]], status: int = 200) -> Response:
    """Several templates rendered one after the other (htmx swaps them, out of band or not)."""
    response = make_response("".join(render_template(n, **c) for n, c in parts), status)
    response.vary.add("HX-Request")
    return response
