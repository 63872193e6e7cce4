"""The merchant's webhook pages in a real browser against a live server: add an endpoint (the
secret shown once), send two test events (the first answered 500) and read the delivery log, at
a desktop's and a phone's width, with no console error and nothing wider than the window."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from playwright.sync_api import expect

from portal.services.identity import users
from portal.services.merchants import merchants
from portal.worker import Worker
from tests.browser.test_merchant_dashboard import _person, _sign_in, users_id
from tests.browser.test_sign_in_flow import Watch
from tests.merchants import test_webhooks as base
from tests.merchants.test_webhooks import Answer, verify_both


@pytest.mark.parametrize("width", [1280, 390])
def test_the_pages_in_a_browser(
    width: int,
    browser: Any,
    live_server: str,
    artifacts: Path,
    committing_engine: sa.Engine,
    real_uow: Any,
) -> None:
    """Add an endpoint (the secret shown once), send two test events (the first answered 500),
    read the log; no console error and nothing wider than the window at either width."""
    engine = committing_engine
    owner_email = _person(real_uow, "Olivia", ("cardholder",))
    staff_email = _person(real_uow, "Sam", ("admin",))
    owner = users.actor_for(real_uow(), users_id(engine, owner_email))
    staff = users.actor_for(real_uow(), users_id(engine, staff_email))
    applied = merchants.apply(real_uow(), actor=owner, name="Kopi Kenangan",
                              website="https://kopi.example", contact_email="hi@kopi.example",
                              settlement_currency="USD")  # fmt: skip
    merchants.decide(real_uow(), actor=staff, merchant=applied.public_id, action="approve")
    mid = applied.public_id
    hook = base.Receiver()
    hook.answer(Answer(500, b'{"error":"database unavailable"}'))
    try:
        context = browser.new_context(viewport={"width": width, "height": 900},
                                      base_url=live_server)  # fmt: skip
        page = _sign_in(context, owner_email, f"/merchant/{mid}")
        watch = Watch(page)
        page.get_by_role("link", name="Webhooks").click()
        expect(page.get_by_role("heading", name="Webhooks", exact=True)).to_be_visible()
        watch.check("empty list")
        page.get_by_label("Endpoint URL").fill(hook.url)
        page.get_by_label("Description (optional)").fill("Order service")
        page.get_by_role("button", name="Add endpoint").click()
        expect(page.get_by_text("You won't see this secret again.")).to_be_visible()
        secret = page.locator("#new-secret").input_value()
        assert secret.startswith("whsec_")
        page.screenshot(path=str(artifacts / f"webhooks-created-{width}.png"), full_page=True)
        watch.check("created")
        for _ in range(2):
            page.get_by_role("button", name="Send test event").click()
            expect(page.get_by_text("A test event (payment.succeeded")).to_be_visible()
        assert secret not in page.content()
        Worker(real_uow, worker_id="browser-test").run_once()
        assert len(hook.received) == 2
        verify_both(secret, hook.received[1])
        page.reload()
        expect(page.locator('[data-status="delivered"]')).to_have_count(1)
        expect(page.locator('[data-status="pending"]')).to_have_count(1)
        expect(page.get_by_text("answered 500")).to_be_visible()
        watch.check("detail")
        page.screenshot(path=str(artifacts / f"webhooks-detail-{width}.png"), full_page=True)
        page.get_by_role("link", name="← Webhooks").click()
        expect(page.locator("[data-endpoints] li")).to_have_count(1)
        watch.check("list")
        page.screenshot(path=str(artifacts / f"webhooks-list-{width}.png"), full_page=True)
        context.close()
    finally:
        hook.close()
