"""The wallet in a real browser against a live server (real commits, wiped afterwards): sign in,
issue a card, top up, send money to another person whose open page shows it arrive without a
reload, withdraw and watch it go from pending to succeeded, a double click that moves money
once; screenshots of the dashboard at a phone's and a desktop's width."""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from playwright.sync_api import expect

from portal.services.identity import users
from portal.services.shared.uow import UnitOfWork
from portal.services.wallet import cards
from portal.worker import Worker
from tests.browser.test_sign_in_flow import Watch
from tests.conftest import SYSTEM, Factory

PASSWORD = "correct horse battery staple"


def _person(real_uow: Callable[[], UnitOfWork], first: str, last: str) -> tuple[int, str]:
    email = f"{first.lower()}-{uuid.uuid4().hex[:8]}@example.test"
    created = users.create_user(real_uow(), actor=SYSTEM, email=email, first_name=first,
                                last_name=last, password=PASSWORD, roles=("cardholder",),
                                verified=True)  # fmt: skip
    return created.id, email


def _sign_in(context: Any, email: str) -> Any:
    page = context.new_page()
    page.goto("/auth/login?next=/wallet")
    page.get_by_label("Email address").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/wallet")
    return page


PHONE_HEIGHT = 844
TAB_BAR_ROOM = 90  # the tab bar (56 px) and a margin


def _tab(page: Any, name: str) -> Any:
    return page.get_by_role("navigation", name="Sections").get_by_role("link", name=name)


def _check_phone_layout(page: Any, *, current: str) -> None:
    """At 390 px: a one-line header, the totals and the first card's balance on the first
    screen above the tab bar, the tab bar with 44 px targets marking the current tab, the
    cards as a strip that snaps."""
    header = page.locator(".site-header").bounding_box()
    assert header is not None and header["height"] <= 64, header
    limit = PHONE_HEIGHT - TAB_BAR_ROOM
    for where in ("#wallet-totals .wallet-totals__amount", "#cards [data-balance=available]"):
        box = page.locator(where).first.bounding_box()
        assert box is not None and box["y"] + box["height"] < limit, (where, box)
    tabs = page.get_by_role("navigation", name="Sections")
    expect(tabs).to_be_visible()
    bar = tabs.bounding_box()
    assert bar is not None and abs(bar["y"] + bar["height"] - PHONE_HEIGHT) <= 1, bar
    for name in ("Wallet", "Activity", "Pay", "Account"):
        box = _tab(page, name).bounding_box()
        assert box is not None and box["height"] >= 44 and box["width"] >= 44, (name, box)
    expect(_tab(page, current)).to_have_attribute("aria-current", "page")
    expect(page.locator(".tab-bar [aria-current]")).to_have_count(1)
    # The header's copies of those links give way to the tab bar.
    expect(page.locator(".site-header").get_by_role("link", name="Activity")).to_be_hidden()
    strip = page.locator("#cards .card-strip")
    assert "x" in strip.evaluate("e => getComputedStyle(e).scrollSnapType")
    assert strip.evaluate("e => getComputedStyle(e).overflowX") == "auto"


def _check_desktop_layout(page: Any) -> None:
    expect(page.locator(".tab-bar")).to_be_hidden()
    nav = page.get_by_role("navigation", name="Main")
    for name in ("Wallet", "Activity", "Account"):
        expect(nav.get_by_role("link", name=name)).to_be_visible()
    expect(nav.get_by_role("link", name="Wallet")).to_have_attribute("aria-current", "page")


@pytest.fixture
def worker(real_uow: Callable[[], UnitOfWork]) -> Iterator[threading.Event]:
    """A background worker that starts running jobs once the test sets the returned event."""
    go, stop = threading.Event(), threading.Event()
    runner = Worker(real_uow, poll_seconds=0.2)

    def loop() -> None:
        while not stop.is_set():
            if go.is_set():
                runner.run_once()
            stop.wait(0.2)

    thread = threading.Thread(target=loop, name="test-worker", daemon=True)
    thread.start()
    try:
        yield go
    finally:
        stop.set()
        thread.join(timeout=10)


def _balance(engine: sa.Engine, card_id: int) -> tuple[int, int]:
    with engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT posted_minor, pending_debits_minor FROM accounts WHERE card_id = :c"),
            {"c": card_id},
        ).one()
    return row.posted_minor, row.pending_debits_minor


def test_wallet_flow_with_live_updates(
    browser: Any,
    live_server: str,
    artifacts: Path,
    real_uow: Callable[[], UnitOfWork],
    committing_engine: sa.Engine,
    worker: threading.Event,
) -> None:
    _alice_id, alice_email = _person(real_uow, "Alice", "Walker")
    bob_id, bob_email = _person(real_uow, "Bob", "Santoso")
    bob_actor = users.actor_for(real_uow(), bob_id)
    bobs_card = cards.issue_card(real_uow(), actor=bob_actor, user_id=bob_id,
                                 card_type="debit", brand="mastercard", currency="USD")  # fmt: skip

    # Bob's dashboard stays open in its own browser context the whole time.
    bob_context = browser.new_context(viewport={"width": 390, "height": 900}, base_url=live_server)
    bob_page = _sign_in(bob_context, bob_email)
    bob_watch = Watch(bob_page)
    assert bob_page.locator(f"#card-{bobs_card.public_id} [data-balance=available]").inner_text() \
        == "$0.00"  # fmt: skip

    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=live_server)
    page = _sign_in(context, alice_email)
    watch = Watch(page)
    expect(page.get_by_text("You have no cards yet")).to_be_visible()
    watch.check("empty dashboard")

    # Issue a card: the number and code are shown once.
    page.get_by_role("link", name="Issue your first card").click()
    page.get_by_label("Prepaid").check()
    page.get_by_label("Visa", exact=True).check()
    page.get_by_label("Currency").select_option("USD")
    page.get_by_label("Name (optional)").fill("Everyday")
    page.get_by_role("button", name="Issue card").click()
    expect(page.get_by_text("You won't see this again")).to_be_visible()
    number = page.locator("#card-number").inner_text().replace(" ", "")
    assert re.fullmatch(r"4\d{15}", number)
    page.screenshot(path=str(artifacts / "wallet-card-issued-1280.png"), full_page=True)
    watch.check("card issued")

    # Top up (review, then confirm).
    page.get_by_role("link", name="I have saved them, top up this card").click()
    page.get_by_label("Amount").fill("250")
    page.get_by_role("button", name="Review top-up").click()
    expect(page.get_by_role("heading", name="Check and confirm")).to_be_visible()
    page.get_by_role("button", name="Top up $250.00").click()
    # Pending until the funding processor confirms it; the receipt updates itself when it does.
    expect(page.get_by_role("heading", name="Top-up requested")).to_be_visible()
    expect(page.locator("#receipt-status").get_by_text("Pending")).to_be_visible()
    page.screenshot(path=str(artifacts / "wallet-top-up-pending-1280.png"), full_page=True)
    assert Worker(real_uow).run_once() == 1  # the funding job
    expect(page.locator("#receipt-status").get_by_text("Succeeded")).to_be_visible(timeout=5000)
    expect(page.locator("#receipt-status")).to_contain_text("$250.00")
    watch.check("top-up")

    # Send money to Bob's card by number: his name is shown masked before sending.
    page.goto("/wallet/transfer")
    page.get_by_label("Someone else's card").check()
    page.get_by_label("Card number").fill(bobs_card.number)
    page.get_by_label("Amount").fill("40")
    page.get_by_role("button", name="Review transfer").click()
    expect(page.get_by_text("Bob S. · Mastercard")).to_be_visible()
    expect(page.get_by_text(f"Mastercard •••• {bobs_card.number[-4:]}", exact=True)).to_be_visible()
    expect(page.get_by_text(re.compile(r"^b•+\w@example\.test$"))).to_be_visible()
    page.screenshot(path=str(artifacts / "wallet-transfer-confirm-1280.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(artifacts / "wallet-transfer-confirm-390.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})
    page.get_by_role("button", name="Send $40.00").click()
    expect(page.get_by_role("heading", name="Money sent")).to_be_visible()

    # Bob's open page shows it within about two seconds, without a reload.
    bob_tile = bob_page.locator(f"#card-{bobs_card.public_id} [data-balance=available]")
    expect(bob_tile).to_have_text("$40.00", timeout=5000)  # within ~2 s
    expect(bob_page.locator("#latest-activity").get_by_text("Alice W.")).to_be_visible()
    # The money that came in is highlighted for a moment and announced (aria-live).
    arrived = bob_page.locator("#latest-activity .activity__item--in", has_text="Alice W.")
    expect(arrived).to_have_class(re.compile(r"\bis-new\b"))
    expect(bob_page.locator(f"#card-{bobs_card.public_id}")).to_have_class(
        re.compile(r"\bis-new\b")
    )
    announcer = bob_page.locator("#live-announcer")
    assert announcer.get_attribute("aria-live") == "polite"
    expect(announcer).to_contain_text("$40.00 received from")
    expect(announcer).to_contain_text("Alice W.")
    expect(bob_page.locator("#wallet-totals [data-total=USD]")).to_contain_text("$40.00")
    bob_page.screenshot(path=str(artifacts / "wallet-dashboard-money-in-390.png"))
    expect(arrived).not_to_have_class(re.compile(r"\bis-new\b"), timeout=8000)  # brief
    bob_page.screenshot(path=str(artifacts / "wallet-dashboard-live-390.png"), full_page=True)
    bob_watch.check("bob's live dashboard")

    # A double click on submit moves money once.
    page.goto("/wallet/transfer")
    page.get_by_label("Someone else's card").check()
    page.get_by_label("Card number").fill(bobs_card.number)
    page.get_by_label("Amount").fill("10")
    page.get_by_role("button", name="Review transfer").click()
    page.get_by_role("button", name="Send $10.00").dblclick()
    expect(page.get_by_role("heading", name="Money sent")).to_be_visible()
    expect(bob_tile).to_have_text("$50.00", timeout=5000)  # within ~2 s
    assert _balance(committing_engine, bobs_card.card_id) == (5000, 0)

    # Withdraw: pending on the dashboard, then succeeded once the worker pays out.
    page.goto("/wallet/withdraw")
    page.get_by_label("Amount").fill("100")
    page.get_by_label("Bank name").fill("Demo Bank")
    page.get_by_label("Account number").fill("12345678")
    page.get_by_label("Account holder").fill("Alice Walker")
    page.get_by_role("button", name="Review withdrawal").click()
    page.get_by_role("button", name="Withdraw $100.00").click()
    expect(page.get_by_role("heading", name="Withdrawal requested")).to_be_visible()
    # Its receipt, left open in another tab, says pending and updates itself once paid out.
    receipt = context.new_page()
    receipt.goto(page.url)
    expect(receipt.locator("#receipt-status").get_by_text("Pending")).to_be_visible()
    page.get_by_role("link", name="Back to wallet").click()
    page.wait_for_url("**/wallet")
    row = page.locator("#latest-activity li", has_text="Demo Bank").first
    expect(row.locator("[data-status=pending]")).to_be_visible()
    assert "$100.00" in page.locator("[data-balance=pending]").first.inner_text()
    worker.set()
    row = page.locator("#latest-activity li", has_text="Demo Bank").first
    row.locator("[data-status]").wait_for(state="detached", timeout=10000)
    assert "$0.00" in page.locator("[data-balance=pending]").first.inner_text()
    assert page.locator("[data-balance=available]").first.inner_text() == "$100.00"
    expect(receipt.locator("#receipt-status").get_by_text("Succeeded")).to_be_visible(timeout=10000)
    receipt.close()
    watch.check("withdrawal settled")

    # Screenshots of the dashboard with data, at a desktop's and a phone's width.
    page.wait_for_timeout(600)  # the chart's first animation
    page.screenshot(path=str(artifacts / "wallet-dashboard-1280.png"), full_page=True)
    _check_desktop_layout(page)
    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    page.wait_for_timeout(600)
    page.screenshot(path=str(artifacts / "wallet-dashboard-390.png"), full_page=True)
    page.screenshot(path=str(artifacts / "wallet-dashboard-390-first-screen.png"))
    _check_phone_layout(page, current="Wallet")
    watch.check("dashboard at 390")
    page.goto("/wallet/activity")
    page.screenshot(path=str(artifacts / "wallet-activity-390.png"), full_page=True)
    expect(_tab(page, "Activity")).to_have_attribute("aria-current", "page")
    watch.check("activity at 390")
    context.close()
    bob_context.close()
    # Money: 250 in, 50 to Bob, 100 withdrawn.


def test_sign_in_lands_on_the_wallet_and_it_works_without_javascript(
    browser: Any,
    live_server: str,
    artifacts: Path,
    real_uow: Callable[[], UnitOfWork],
) -> None:
    """Sign-in without a next lands on the wallet; with JavaScript off the chart's table is
    shown instead of empty chart boxes, and no icon is a symbol character."""
    person_id, email = _person(real_uow, "Carla", "Mendes")
    actor = users.actor_for(real_uow(), person_id)
    usd = cards.issue_card(real_uow(), actor=actor, user_id=person_id, card_type="debit",
                           brand="visa", currency="USD", name="Daily")  # fmt: skip
    cards.issue_card(real_uow(), actor=actor, user_id=person_id, card_type="prepaid",
                     brand="mastercard", currency="EUR", name="Travel")  # fmt: skip
    Factory(real_uow()).fund(usd, "75")

    for width, height in ((1280, 900), (390, 844)):
        context = browser.new_context(viewport={"width": width, "height": height},
                                      base_url=live_server, java_script_enabled=False)  # fmt: skip
        page = context.new_page()
        watch = Watch(page)
        page.goto("/auth/login")
        page.get_by_label("Email address").fill(email)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url("**/wallet")  # not the account page
        expect(page.get_by_role("heading", name="Your wallet")).to_be_visible()
        chart = page.locator("#charts figure").first
        expect(chart.locator(".chart__canvas")).to_be_hidden()
        expect(chart.get_by_text("Show as a table")).to_be_hidden()
        table = chart.get_by_role("table")
        expect(table).to_be_visible()
        expect(table.get_by_role("cell", name="$75.00")).to_be_visible()
        watch.check(f"no-JS wallet at {width} (no sideways scroll, with a strip of cards)")
        page.screenshot(path=str(artifacts / f"wallet-no-js-{width}.png"), full_page=True)
        # Icons are drawn (SVG), with the page's fonts or without them.
        icons = page.locator(".quick-action__icon, .activity__icon")
        assert icons.count() >= 5
        for i in range(icons.count()):
            assert icons.nth(i).locator("svg").count() == 1
            assert icons.nth(i).inner_text().strip() == ""
        text = page.locator("body").inner_text()
        assert not re.search("[\u2196-\u2199\u2300-\u2bff\U0001f000-\U0001faff]", text), text
        totals = page.locator("#wallet-totals")
        expect(totals.locator("[data-total=USD]")).to_contain_text("$75.00")
        expect(totals.locator("[data-total=EUR]")).to_contain_text("€0.00")
        if width == 390:
            _check_phone_layout(page, current="Wallet")
            page.get_by_role("navigation", name="Sections").get_by_role("link", name="Pay").click()
            page.wait_for_url("**/wallet/transfer")
            expect(_tab(page, "Pay")).to_have_attribute("aria-current", "page")
            page.screenshot(path=str(artifacts / "wallet-pay-no-js-390.png"), full_page=True)
        else:
            _check_desktop_layout(page)
        watch.check(f"no-JS wallet at {width}")
        context.close()
