"""Security headers and request ids on pages, fragments and the API."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("path", ["/", "/auth/login", "/nope", "/api/v1/openapi.json"])
def test_every_response_carries_the_security_headers(app, path):
    response = app.test_client().get(path)
    headers = response.headers
    csp = headers["Content-Security-Policy"]
    directives = dict(part.strip().split(" ", 1) for part in csp.split(";"))
    assert directives["script-src"] == "'self'"  # no inline scripts, no eval
    assert directives["style-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert directives["object-src"] == "'none'"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "strict-origin-when-cross-origin"
    assert headers["X-Frame-Options"] == "DENY"
    assert "Strict-Transport-Security" not in headers  # plain HTTP: no HSTS
    assert headers["X-Request-ID"].startswith("req_")


def test_hsts_is_sent_over_tls(app):
    response = app.test_client().get("/", base_url="https://portal.example")
    assert response.headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"


def test_a_well_formed_request_id_is_echoed_and_a_bad_one_replaced(app):
    client = app.test_client()
    assert client.get("/", headers={"X-Request-ID": "trace-42"}).headers["X-Request-ID"] == (
        "trace-42"
    )
    replaced = client.get("/", headers={"X-Request-ID": "bad id\twith spaces"})
    assert replaced.headers["X-Request-ID"].startswith("req_")


def _address_seen(app, proxy_count: int) -> str:
    from flask import request

    from portal import create_app

    probe = create_app({**app.config, "PROXY_COUNT": proxy_count})
    seen: list[str] = []

    @probe.get("/_whoami")
    def whoami() -> str:
        seen.append(request.remote_addr or "")
        return "ok"

    probe.test_client().get("/_whoami", headers={"X-Forwarded-For": "203.0.113.9"})
    return seen[0]


def test_trusted_proxy_count_decides_the_client_address(app):
    assert _address_seen(app, 1) == "203.0.113.9"
    assert _address_seen(app, 0) == "127.0.0.1"  # the header is not trusted without proxies
