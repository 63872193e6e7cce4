"""``GET /healthz`` and the landing page."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from flask import Flask

from portal import create_app
from portal.extensions import db

UNREACHABLE = "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"


@pytest.fixture
def unreachable_app() -> Iterator[Flask]:
    """A second app whose database nothing listens for."""
    application = create_app(
        {"TESTING": True, "SQLALCHEMY_DATABASE_URI": UNREACHABLE, "PORTAL_ENV": "test"}
    )
    yield application
    with application.app_context():
        db.engine.dispose()


def test_healthz_reports_the_database_and_redis(app: Flask) -> None:
    response = app.test_client().get("/healthz")

    assert response.status_code == 200
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["status"] == "ok"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["redis"] in ("ok", "disabled")


def test_healthz_answers_503_json_when_the_database_is_unreachable(
    unreachable_app: Flask,
) -> None:
    response = unreachable_app.test_client().get("/healthz")

    assert response.status_code == 503
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"].startswith("error")
    assert body["checks"]["redis"] in ("ok", "disabled")


def test_landing_page_says_what_portal_is_and_where_to_go(app: Flask) -> None:
    response = app.test_client().get("/")

    assert response.status_code == 200
    assert response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    assert "<title>Portal" in html
    assert '<meta name="viewport"' in html
    for href in ('href="/auth/login"', 'href="/auth/register"', 'href="/healthz"'):
        assert href in html
    assert 'href="/static/css/app.css"' in html
    assert re.search(r'<script src="/static/vendor/htmx\.min\.js" defer>', html)


def test_landing_page_has_no_inline_script_or_style(app: Flask) -> None:
    """A strict Content-Security-Policy (no 'unsafe-inline') must not break the page."""
    html = app.test_client().get("/").get_data(as_text=True)

    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == []
    assert "<style" not in html
    assert not re.search(r"\sstyle=", html)
    assert not re.search(r"\son[a-z]+=", html)  # no inline event handlers


def test_stylesheet_is_served_locally(app: Flask) -> None:
    response = app.test_client().get("/static/css/app.css")

    assert response.status_code == 200
    assert response.mimetype == "text/css"
    css = response.get_data(as_text=True)
    assert "--color-" in css
    assert "@import" not in css
    assert "http://" not in css
    assert "https://" not in css
    response.close()
