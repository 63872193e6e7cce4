"""A real browser (Debian's chromium through Playwright) against a live server.

The server is werkzeug's, in a thread, serving the session's app with its real engine: the
browser's requests come from other threads and connections, so these tests commit for real and
wipe what they wrote afterwards (``committing_engine``). CSRF protection stays on.

No chromium: the tests are skipped, loudly, unless CI=true, where that is a failure.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask
from werkzeug.serving import make_server

from portal.extensions import db, limiter

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"browser tests cannot run under CI: {reason}")
    pytest.skip(
        f"BROWSER TESTS SKIPPED: {reason} (install Debian's chromium; under CI=true "
        "this is a failure)"
    )


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        _unavailable(f"{CHROMIUM} is missing")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:  # pragma: no cover - playwright is a dev dependency
        _unavailable(f"playwright is not installed ({exc})")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def live_server(app: Flask, committing_engine: sa.Engine) -> Iterator[str]:
    """The app served on a free port of 127.0.0.1, committing for real; everything written is
    wiped afterwards by ``committing_engine``."""
    with app.app_context():
        assert isinstance(db.engines[None], sa.Engine), "a test connection is still patched in"
    app.extensions["portal.session_factory"] = None  # bind the unit of work to the real engine
    limiter.reset()
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="live-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
        app.extensions["portal.session_factory"] = None
        limiter.reset()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
