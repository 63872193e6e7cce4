"""Hosted checkout in a real browser against a live server (real commits, wiped afterwards; CSRF
on): a merchant creates a session over HTTP with its secret key, the payer opens its page,
signs in and comes back, is declined on a card without enough money, pays with another and
lands on the merchant's success URL (a tiny server on another port of 127.0.0.1) with the
session id; the API then says complete and paid. Cancel lands on the cancel URL. At a desktop's
and a phone's width, and at a phone's with JavaScript off; screenshots go to /tmp/work/shots/."""

from __future__ import annotations

import re
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import sqlalchemy as sa
from flask import Flask
from playwright.sync_api import expect

from portal.domain.cards import brand_name
from portal.services.identity import users
from portal.services.shared.uow import UnitOfWork
from tests.browser.test_sign_in_flow import Watch
from tests.conftest import SYSTEM, Factory
from tests.merchants.conftest import open_shop

PASSWORD = "correct horse battery staple"
SHOTS = Path(tempfile.gettempdir()) / "work" / "shots"


class MerchantSite:
    """The merchant's own site: answers every GET with a small page and remembers the paths."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                site.seen.append(self.path)
                body = b"<!doctype html><title>Shop</title><h1>Back at the shop</h1>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.thread.join(timeout=10)
        self.server.server_close()


@pytest.fixture
def merchant_site() -> Iterator[MerchantSite]:
    site = MerchantSite()
    try:
        yield site
    finally:
        site.close()


@pytest.fixture
def csrf_on(app: Flask) -> Iterator[None]:
    saved = app.config.get("WTF_CSRF_ENABLED")
    app.config["WTF_CSRF_ENABLED"] = True
    try:
        yield
    finally:
        app.config["WTF_CSRF_ENABLED"] = saved


def api(live_server: str, secret: str, method: str, path: str, body: Any = None) -> Any:
    """Call the live server's API over HTTP with the merchant's secret key."""
    response = requests.request(
        method, f"{live_server}/api/v1{path}", json=body, timeout=30,
        headers={"Authorization": f"Bearer {secret}", "Idempotency-Key": uuid.uuid4().hex},
    )  # fmt: skip
    assert response.ok, response.text
    return response.json()


def shot(page: Any, name: str, width: int, javascript: bool) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    suffix = "" if javascript else "-nojs"
    page.screenshot(path=str(SHOTS / f"checkout-{name}-{width}{suffix}.png"), full_page=True)


def _card_label(card: Any) -> re.Pattern[str]:
    return re.compile(re.escape(f"{brand_name(card.brand)} •••• {card.last4}"))


@pytest.mark.parametrize(
    ("width", "javascript"), [(1280, True), (390, True), (390, False)],
    ids=["1280", "390", "390-no-javascript"],
)  # fmt: skip
def test_pay_and_cancel_in_a_browser(
    browser: Any,
    live_server: str,
    merchant_site: MerchantSite,
    csrf_on: None,
    real_uow: Callable[[], UnitOfWork],
    committing_engine: sa.Engine,
    width: int,
    javascript: bool,
) -> None:
    make = Factory(real_uow())
    shop = open_shop(real_uow(), make, make.user(roles=("admin",)), name="Kopi Kenangan")
    assert shop.key.secret is not None
    email = f"payer-{uuid.uuid4().hex[:8]}@example.test"
    created = users.create_user(real_uow(), actor=SYSTEM, email=email, first_name="Budi",
                                last_name="Santoso", password=PASSWORD, roles=("cardholder",),
                                verified=True)  # fmt: skip
    payer = users.actor_for(real_uow(), created.id)
    poor = make.card(payer, balance="5")
    good = make.card(payer, balance="100")

    session = api(live_server, shop.key.secret, "POST", "/checkout/sessions", {
        "amount": 2450, "currency": "usd", "description": "2 × Kopi Susu Gula Aren",
        "success_url": f"{merchant_site.base}/thanks?order=42",
        "cancel_url": f"{merchant_site.base}/cart",
    })  # fmt: skip
    path = urlsplit(session["url"]).path
    assert path == f"/checkout/{session['id']}"

    context = browser.new_context(
        viewport={"width": width, "height": 900}, base_url=live_server,
        java_script_enabled=javascript,
    )  # fmt: skip
    page = context.new_page()
    watch = Watch(page)

    # Signed out: the merchant, the amount and the description, and a way to sign in.
    page.goto(path)
    expect(page.get_by_role("heading", name="Pay Kopi Kenangan")).to_be_visible()
    expect(page.get_by_text("24.50 USD", exact=True)).to_be_visible()
    expect(page.get_by_text("2 × Kopi Susu Gula Aren")).to_be_visible()
    shot(page, "signed-out", width, javascript)
    watch.check("checkout, signed out")

    # Sign in and come straight back.
    page.get_by_role("link", name="Sign in to pay").click()
    page.wait_for_url(re.compile(r"/auth/login\?next=/checkout/cs_"))
    page.get_by_label("Email address").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"**{path}")
    expect(page.get_by_text("5.00 USD available")).to_be_visible()
    expect(page.get_by_text("100.00 USD available")).to_be_visible()
    shot(page, "cards", width, javascript)
    watch.check("checkout, signed in")

    # A card without enough money: declined, said why, and still payable.
    page.get_by_label(_card_label(poor)).check()
    page.get_by_role("button", name="Pay 24.50 USD").click()
    expect(page.get_by_role("alert")).to_contain_text("insufficient funds")
    assert page.url.endswith(path)
    shot(page, "declined", width, javascript)
    # The decline page is answered 402, which the browser logs; nothing else may be logged.
    assert all("status of 402" in e for e in watch.errors), watch.errors
    watch.errors.clear()
    watch.check("checkout, declined")

    # Another card pays; the browser lands on the merchant's success URL with the session id.
    page.get_by_label(_card_label(good)).check()
    page.get_by_role("button", name="Pay 24.50 USD").click()
    page.wait_for_url(re.compile(re.escape(f"{merchant_site.base}/thanks?")))
    landed = urlsplit(page.url)
    assert parse_qs(landed.query) == {"order": ["42"], "session_id": [session["id"]]}
    expect(page.get_by_role("heading", name="Back at the shop")).to_be_visible()
    assert watch.errors == [], watch.errors  # no CSP refusal on the way out

    seen = api(live_server, shop.key.secret, "GET", f"/checkout/sessions/{session['id']}")
    assert (seen["status"], seen["payment_status"]) == ("complete", "paid")
    payment = api(live_server, shop.key.secret, "GET", f"/payments/{seen['payment']}")
    assert (payment["status"], payment["amount_received"]) == ("succeeded", 2450)
    with committing_engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT status FROM payments WHERE checkout_session_id ="
                " (SELECT id FROM checkout_sessions WHERE public_id = :id) ORDER BY id"
            ),
            {"id": session["id"]},
        ).scalars()
        assert list(rows) == ["requires_payment_method", "succeeded"]

    # The page of a paid session says so and offers no way to pay again.
    page.goto(path)
    expect(page.get_by_text("This payment is complete")).to_be_visible()
    expect(page.get_by_role("button", name=re.compile("^Pay"))).to_have_count(0)
    shot(page, "complete", width, javascript)
    watch.check("checkout, complete")

    # Cancel on another session goes back to its cancel URL, and it stays open.
    other = api(live_server, shop.key.secret, "POST", "/checkout/sessions", {
        "amount": 990, "currency": "usd", "description": "Croissant",
        "success_url": f"{merchant_site.base}/thanks", "cancel_url": f"{merchant_site.base}/cart",
    })  # fmt: skip
    page.goto(urlsplit(other["url"]).path)
    page.get_by_role("link", name="Cancel and return to Kopi Kenangan").click()
    page.wait_for_url(f"{merchant_site.base}/cart")
    assert "/cart" in merchant_site.seen
    seen = api(live_server, shop.key.secret, "GET", f"/checkout/sessions/{other['id']}")
    assert (seen["status"], seen["payment_status"]) == ("open", "unpaid")

    # An expired session's page.
    with committing_engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE checkout_sessions SET expires_at = now() - interval '1 second'"
                " WHERE public_id = :id"
            ),
            {"id": other["id"]},
        )
    page.goto(urlsplit(other["url"]).path)
    expect(page.get_by_text("This checkout has expired")).to_be_visible()
    shot(page, "expired", width, javascript)
    watch.check("checkout, expired")
    context.close()
