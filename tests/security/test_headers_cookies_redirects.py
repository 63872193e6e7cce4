"""Security headers on every response type, cookie flags, and no open redirect anywhere.

Headers: every GET route of ``app.url_map`` (as a persona the access table lets through, its
path objects the matrix's), as a page and as an htmx request, plus the responses no route
makes on purpose: a redirect, 404, 405, 413, a CSRF refusal, an unexpected exception's 500, a
static file, a CSV download, the API's JSON, its errors and a 204, and over TLS (HSTS). Each
carries the CSP (no inline or evaluated script, no plugins, no framing), nosniff,
``X-Frame-Options: DENY``, the Referrer-Policy and a request id.
(``tests/web/test_security_headers.py`` pins the exact CSP on four paths.)

Cookies: the session cookie and the device cookie are HttpOnly, SameSite=Lax, Path=/, and over
TLS Secure with the ``__Host-`` prefix and no Domain. (``tests/pages/test_login.py`` proves a new
session cookie at every sign-in and the old one dead.)

Redirects: every page route, GET and POST, asked to go somewhere else by ``next`` (in the query
and the form) in each spelling browsers read as another site, never sends the browser off the
site (``Location``, ``HX-Redirect``, ``HX-Location``), but to a checkout's own return URLs (a
route that does not redirect for the first spelling is not asked the others).
(``tests/pages/test_login.py`` and ``tests/sso/test_flow.py`` prove where sign-in's ``next``
does land; ``tests/merchants/test_checkout_pages.py`` that checkout returns only to the
session's own URLs.)
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from portal import create_app
from portal.extensions import limiter
from portal.services.identity import users
from portal.web.auth import SESSION_KEY
from portal.web.uow import make_uow
from tests.conftest import SYSTEM
from tests.security.test_authorization_matrix import (  # noqa: F401 (personas: a fixture)
    EXPECTED,
    KEY_ROUTES,
    Persona,
    _normalise,
    personas,
)
from tests.security.test_object_ownership import _fill

PREFERENCE = ("cardholder", "merchant", "admin", "support", "other", "anonymous")


def _caller(method: str, rule: str) -> str:
    allowed = EXPECTED.get((method, rule))
    if not allowed:
        return "cardholder"
    return next(p for p in PREFERENCE if p in allowed)


def header_problems(response: Any, *, tls: bool = False) -> list[str]:
    headers = response.headers
    problems: list[str] = []
    csp = headers.get("Content-Security-Policy", "")
    directives = {
        part.strip().split(" ", 1)[0]: part.strip().partition(" ")[2]
        for part in csp.split(";")
        if part.strip()
    }
    script = directives.get("script-src", directives.get("default-src", ""))
    if not csp:
        problems.append("no Content-Security-Policy")
    elif "'unsafe-inline'" in script or "'unsafe-eval'" in script or "*" in script.split():
        problems.append(f"script-src allows inline or evaluated script: {script}")
    if csp and directives.get("frame-ancestors") != "'none'":
        problems.append(f"frame-ancestors is {directives.get('frame-ancestors')!r}")
    if csp and directives.get("object-src") != "'none'":
        problems.append(f"object-src is {directives.get('object-src')!r}")
    expected = {
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "strict-origin-when-cross-origin",
    }
    for name, value in expected.items():
        if headers.get(name) != value:
            problems.append(f"{name} is {headers.get(name)!r}")
    if not headers.get("X-Request-ID"):
        problems.append("no X-Request-ID")
    hsts = headers.get("Strict-Transport-Security", "")
    if tls and not re.match(r"max-age=(\d+)", hsts or ""):
        problems.append("no HSTS over TLS")
    if tls and hsts and int(re.match(r"max-age=(\d+)", hsts).group(1)) < 15552000:  # type: ignore[union-attr]
        problems.append(f"HSTS too short: {hsts}")
    if not tls and hsts:
        problems.append("HSTS over plain HTTP")
    return problems


def test_the_header_check_itself() -> None:
    from flask import Response

    bare = Response("x")
    assert len(header_problems(bare)) >= 5
    loose = Response("x", headers={
        "Content-Security-Policy": "script-src 'self' 'unsafe-inline'; frame-ancestors *",
        "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
        "Referrer-Policy": "strict-origin-when-cross-origin", "X-Request-ID": "req_1",
    })  # fmt: skip
    assert {p.split(" ")[0] for p in header_problems(loose)} == {"script-src", "frame-ancestors",
                                                               "object-src"}  # fmt: skip
    assert header_problems(loose, tls=True)[-1] == "no HSTS over TLS"


def _as(client: FlaskClient, persona: Persona) -> None:
    with client.session_transaction() as flask_session:
        flask_session.clear()
        if persona.web_token:
            flask_session[SESSION_KEY] = persona.web_token


def _api_headers(persona: Persona, url: str) -> dict[str, str]:
    if url.startswith(KEY_ROUTES) and persona.name == "merchant":
        return {"Authorization": f"Bearer {(persona.merchant or {})['secret']}"}
    if persona.access_token:
        return {"Authorization": f"Bearer {persona.access_token}"}
    return {}


def test_every_get_route_and_htmx_fragment_carries_the_headers(
    app: Flask,
    connection: sa.Connection,
    personas: dict[str, Persona],  # noqa: F811
) -> None:
    client = app.test_client()
    rules = sorted(
        {
            _normalise(rule.rule)
            for rule in app.url_map.iter_rules()
            if "GET" in (rule.methods or set()) and rule.endpoint != "static"
        }
    )
    wrong: list[str] = []
    seen_statuses: set[int] = set()
    for rule in rules:
        persona = personas[_caller("GET", rule)]
        url = _fill(rule, personas["cardholder"])
        _as(client, persona)
        variants = {"page": {}, "htmx": {"HX-Request": "true"}}
        for name, extra in variants.items():
            savepoint = connection.begin_nested()
            try:
                limiter.reset()
                response = client.get(url, headers={**_api_headers(persona, url), **extra})
            finally:
                savepoint.rollback()
            seen_statuses.add(response.status_code)
            wrong += [f"GET {rule} ({name}, {response.status_code}): {p}"
                      for p in header_problems(response)]  # fmt: skip
    assert {200, 302} <= seen_statuses
    assert not wrong, "\n".join(wrong)


@pytest.fixture
def csrf_on(app: Flask) -> Iterator[None]:
    saved = app.config["WTF_CSRF_ENABLED"]
    app.config["WTF_CSRF_ENABLED"] = True
    try:
        yield
    finally:
        app.config["WTF_CSRF_ENABLED"] = saved


def _crashing_app(app: Flask) -> Flask:
    probe = create_app({**app.config, "PROPAGATE_EXCEPTIONS": False, "TESTING": False})

    @probe.get("/_boom")
    def boom() -> str:
        raise RuntimeError("an unexpected failure")

    @probe.get("/api/v1/_boom")
    def api_boom() -> str:
        raise RuntimeError("an unexpected failure")

    return probe


def test_every_kind_of_response_carries_the_headers(
    app: Flask,
    connection: sa.Connection,
    personas: dict[str, Persona],  # noqa: F811
    csrf_on: None,
) -> None:
    limiter.reset()
    client = app.test_client()
    holder = personas["cardholder"]
    token = {"Authorization": f"Bearer {holder.access_token}"}
    static = next(r.rule for r in app.url_map.iter_rules() if r.endpoint == "static")
    asset = next(
        str(path.relative_to(app.static_folder or "."))
        for path in sorted(Path(app.static_folder or ".").rglob("*.css"))
    )
    htmx = {"HX-Request": "true"}
    kinds: dict[str, Any] = {
        "a redirect to sign in": lambda: client.get("/wallet"),
        "a page 404": lambda: client.get("/no-such-page"),
        "a page 405": lambda: client.put("/auth/login"),
        "a CSRF refusal": lambda: client.post("/auth/login", data={"email": "a@b.c"}),
        "a CSRF refusal (htmx)": lambda: client.post("/auth/logout", headers=htmx),
        "a form over the size limit": lambda: client.post(
            "/auth/login", data={"email": "x" * (600 * 1024)}
        ),
        "a static file": lambda: client.get(
            static.replace("<path:filename>", asset), buffered=True
        ),
        "the API's JSON": lambda: client.get("/api/v1/auth/me", headers=token),
        "an API 401": lambda: client.get("/api/v1/auth/me"),
        "an API 404": lambda: client.get("/api/v1/no-such-thing", headers=token),
        "an API 405": lambda: client.delete("/api/v1/auth/me", headers=token),
        "an API 413": lambda: client.post(
            "/api/v1/transfers", data=b"{" + b" " * (2 * 1024 * 1024) + b"}",
            headers={**token, "Content-Type": "application/json"},
        ),
        "an API 422": lambda: client.post("/api/v1/transfers", json={"amount": "x"}, headers=token),
        "the OpenAPI document": lambda: client.get("/api/v1/openapi.json"),
        "Swagger UI": lambda: client.get("/api/docs"),
        "health": lambda: client.get("/healthz"),
    }  # fmt: skip
    crashing = _crashing_app(app).test_client()
    kinds["a page 500"] = lambda: crashing.get("/_boom")
    kinds["an API 500"] = lambda: crashing.get("/api/v1/_boom")
    wrong: list[str] = []
    statuses: dict[str, int] = {}
    for name, send in kinds.items():
        savepoint = connection.begin_nested()
        try:
            response = send()
        finally:
            savepoint.rollback()
        statuses[name] = response.status_code
        wrong += [f"{name} ({response.status_code}): {p}" for p in header_problems(response)]
        tls = send_tls(app, name)
        if tls is not None:
            wrong += [f"{name} over TLS ({tls.status_code}): {p}"
                      for p in header_problems(tls, tls=True)]  # fmt: skip
    assert statuses["a page 500"] == 500 and statuses["an API 500"] == 500
    assert statuses["a CSRF refusal"] == 400 and statuses["an API 413"] == 413
    assert statuses["a static file"] == 200, asset
    assert not wrong, "\n".join(wrong)


def send_tls(app: Flask, name: str) -> Any:
    """A few of the kinds again over https (HSTS)."""
    paths = {"a page 404": "/no-such-page", "an API 401": "/api/v1/auth/me",
             "health": "/healthz", "a redirect to sign in": "/wallet"}  # fmt: skip
    if name not in paths:
        return None
    return app.test_client().get(paths[name], base_url="https://portal.example")


# -- cookies -----------------------------------------------------------------------------------
def _set_cookies(response: Any) -> dict[str, str]:
    return {header.split("=", 1)[0]: header for header in response.headers.getlist("Set-Cookie")}


def _flags(header: str) -> set[str]:
    return {part.strip().split("=")[0].lower() for part in header.split(";")[1:]}


def test_cookies_are_httponly_lax_and_over_tls_secure_host_only(
    app: Flask, connection: sa.Connection
) -> None:
    limiter.reset()
    password = "a long enough passphrase 77"
    created = users.create_user(
        make_uow(app), actor=SYSTEM,
        email="cookies@example.test", first_name="Coo", last_name="Kie", password=password,
        roles=("cardholder",), verified=True,
    )  # fmt: skip
    assert created.id
    client = app.test_client()
    signed_in = client.post(
        "/auth/login", data={"email": "cookies@example.test", "password": password}
    )
    assert signed_in.status_code == 302
    cookies = _set_cookies(signed_in)
    assert {"portal_session", "portal_device"} <= set(cookies), cookies
    for name in ("portal_session", "portal_device"):
        flags = _flags(cookies[name])
        assert {"httponly", "path"} <= flags, cookies[name]
        assert "samesite=lax" in cookies[name].lower().replace(" ", ""), cookies[name]
        assert "domain" not in flags and "secure" not in flags, cookies[name]

    tls = create_app({**app.config, "PUBLIC_URL": "https://portal.example"})
    anonymous = tls.test_client().get("/auth/login", base_url="https://portal.example")
    cookies = _set_cookies(anonymous)
    assert "__Host-portal" in cookies and "portal_session" not in cookies, cookies
    flags = _flags(cookies["__Host-portal"])
    assert {"httponly", "secure", "path"} <= flags and "domain" not in flags
    assert "Path=/" in cookies["__Host-portal"] and "SameSite=Lax" in cookies["__Host-portal"]


# -- open redirects ------------------------------------------------------------------------------
#: Targets a browser reads as another site.
ELSEWHERE = (
    "//evil.example/x",
    "https://evil.example/x",
    "/\\evil.example/x",
    "\\\\evil.example/x",
    "/\t/evil.example/x",
    " //evil.example/x",
    "https:evil.example",
    "javascript:alert(1)",
    "/%2F%2Fevil.example",
    "%2F%2Fevil.example",
    "http://portal.example@evil.example/",
)


#: Hosts Portal may send a browser to: a checkout session's own success and cancel URLs, set
#: by its merchant when creating it (https only, checked there), here the matrix shop's.
MERCHANT_RETURN_HOSTS = {"matrix.example"}


def off_site(location: str) -> bool:
    """Whether a browser following ``location`` from http://localhost leaves the site."""
    cleaned = re.sub(r"[\t\n\r]", "", location).strip(" \x00-\x1f").replace("\\", "/")
    if not cleaned:
        return False
    parts = urlsplit(cleaned)
    if parts.scheme and parts.scheme not in ("http", "https"):
        return True
    if cleaned.startswith("//") or parts.netloc:
        return (parts.hostname or "") not in ("localhost", "")
    return parts.scheme in ("http", "https") and not parts.netloc  # "https:evil.example"


def test_the_off_site_check_itself() -> None:
    for target in ELSEWHERE:
        if not target.startswith(("/%2F", "%2F")):
            assert off_site(target), target
    for here in ("/auth/account", "/wallet?tab=1", "http://localhost/wallet", "wallet"):
        assert not off_site(here), here


def test_no_page_route_redirects_off_site(
    app: Flask,
    connection: sa.Connection,
    personas: dict[str, Persona],  # noqa: F811
) -> None:
    client = app.test_client()
    routes = sorted(
        {
            (method, _normalise(rule.rule))
            for rule in app.url_map.iter_rules()
            if rule.endpoint != "static" and not rule.rule.startswith("/api/")
            for method in (rule.methods or set()) & {"GET", "POST"}
        }
    )
    wrong: list[str] = []
    redirects = 0
    for method, rule in routes:
        persona = personas[_caller(method, rule)]
        url = _fill(rule, personas["cardholder"])
        limiter.reset()
        for n, target in enumerate(ELSEWHERE):
            _as(client, persona)
            savepoint = connection.begin_nested()
            try:
                query = {"next": target, "return_to": target, "redirect": target}
                if method == "GET":
                    response = client.get(url, query_string=query)
                else:
                    response = client.post(url, query_string=query, data=query,
                                           headers={"HX-Request": "true"})  # fmt: skip
            finally:
                savepoint.rollback()
            found = [(h, response.headers[h]) for h in ("Location", "HX-Redirect", "HX-Location")
                     if h in response.headers]  # fmt: skip
            if n == 0 and not found:
                break  # a route that redirects nowhere for one target is not asked again
            for header, value in found:
                redirects += 1
                if off_site(value) and urlsplit(value).hostname not in MERCHANT_RETURN_HOSTS:
                    wrong.append(f"{method} {rule} next={target!r}: {header} {value}")
    assert redirects > 50  # redirects happened and were looked at
    assert not wrong, "\n".join(wrong)
