"""Landing page and ``GET /healthz``."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify, render_template

from portal.web.uow import make_uow

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Any:
    """Database and Redis state as JSON; 503 when the database cannot be reached."""
    checks: dict[str, str] = {}
    try:
        make_uow().run(lambda u: u.execute("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # any failure to reach the database is a 503, never a 500
        checks["database"] = f"error: {type(exc).__name__}"
    client = current_app.extensions.get("portal.redis")
    if client is None:
        checks["redis"] = "disabled"
    else:
        try:
            client.ping()
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = f"error: {type(exc).__name__}"
    healthy = checks["database"] == "ok"
    body = {"status": "ok" if healthy else "unavailable", "checks": checks}
    return jsonify(body), 200 if healthy else 503


@bp.get("/")
def index() -> str:
    return render_template("index.html")
