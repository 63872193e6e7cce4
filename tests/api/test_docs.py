"""Swagger UI at /api/docs renders in a real browser (Debian's chromium) from local assets under
the portal's CSP, and can authorise with a bearer token and call an operation."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.serving import make_server

from tests.api.conftest import READER

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
VENDOR = ROOT / "portal" / "static" / "vendor" / "swagger-ui"

# Collects CSP violations from the first moment of the page (before any page script runs).
WATCH_CSP = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__csp.push(`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`);
});
"""


@pytest.fixture(scope="module")
def live_server(api_app: Flask) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, api_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} is missing: apt-get install chromium fonts-dejavu-core"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def test_assets_are_vendored_locally() -> None:
    for name in ("swagger-ui-bundle.js", "swagger-ui.css", "LICENSE"):
        assert (VENDOR / name).is_file(), f"{name} missing: run `make assets`"


def test_docs_page_has_no_inline_code_and_no_remote_assets(client: FlaskClient) -> None:
    response = client.get("/api/docs")

    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == []
    assert "<style" not in html
    assert not re.search(r"\s(style|on[a-z]+)=", html)
    assert not re.search(r"(src|href)=\"(https?:)?//", html)
    assert 'data-spec-url="/api/v1/openapi.json"' in html
    assert "'unsafe-inline'" not in response.headers["Content-Security-Policy"]
    assert "'unsafe-eval'" not in response.headers["Content-Security-Policy"]


def test_swagger_ui_renders_and_calls_the_api_with_a_bearer_token(
    live_server: str, browser: Any
) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    requested: list[str] = []
    api_calls: list[dict[str, str]] = []
    page.on("request", lambda r: requested.append(r.url))
    page.on(
        "request",
        lambda r: (
            api_calls.append(r.headers)
            if r.url.startswith(f"{live_server}/api/v1/sample/things")
            else None
        ),
    )
    page.add_init_script(WATCH_CSP)
    try:
        page.goto(f"{live_server}/api/docs")
        page.locator(".info .title").wait_for(timeout=20_000)
        assert page.locator(".info .title").inner_text().startswith("Portal API")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "swagger.png"))

        # Authorise with a bearer token ...
        page.locator(".auth-wrapper button.authorize").click()
        bearer = page.locator(".auth-container").filter(has_text="bearer (http, Bearer)")
        bearer.locator("input").fill(READER)
        bearer.locator("button.authorize").click()
        bearer.locator("button.btn-done").click()
        # ... and call an operation that needs it. Swagger UI draws only the operations near
        # the viewport (the spec is long): scroll down to the sample's, as a reader would.
        # The sample's operations come last: scroll to the end.
        operation = page.locator("#operations-things-list_things_view")
        for _ in range(300):
            at = page.evaluate("window.scrollY")
            page.mouse.wheel(0, 1500)
            page.wait_for_timeout(50)
            if operation.count() and page.evaluate("window.scrollY") == at:
                break
        operation.wait_for(state="visible", timeout=20_000)
        sample = "[id^='operations-things-'], [id^='operations-misc-']"
        assert page.locator(f".opblock:is({sample})").count() == 7
        operation.locator(".opblock-summary-control").click()
        operation.locator("button.try-out__btn").click()
        operation.locator("button.execute").click()
        status = operation.locator(".live-responses-table tr.response .response-col_status")
        status.wait_for(timeout=10_000)
        assert status.inner_text().strip() == "200"
        assert '"object": "list"' in operation.locator(".live-responses-table").inner_text()
        page.screenshot(path=str(ARTIFACTS / "swagger-try-it-out.png"), full_page=True)

        assert api_calls and api_calls[-1]["authorization"] == f"Bearer {READER}"
        assert page.evaluate("window.__csp") == []
        assert [
            m
            for m in console
            if "Content Security Policy" in m or m.startswith(("error", "pageerror"))
        ] == []
        assert all(url.startswith(live_server) for url in requested), requested
    finally:
        context.close()
