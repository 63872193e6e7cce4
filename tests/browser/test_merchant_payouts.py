"""Balance and payouts in a real browser against a live server: the owner of a merchant with
settled and pending payments sees both amounts, adds a bank account, pays out, reads the
payout's report, watches it become paid once the worker's job has run, and downloads the CSV;
at a desktop's and a phone's width, with no console error and no sideways scroll."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from playwright.sync_api import expect

from portal.domain.money import Money
from portal.services.identity import users
from portal.services.ledger.reconciliation import reconcile
from portal.services.merchants import keys, merchants, payments, payouts
from portal.services.shared.uow import UnitOfWork
from tests.browser.test_merchant_dashboard import PASSWORD, _sign_in
from tests.browser.test_sign_in_flow import Watch
from tests.conftest import SYSTEM, Factory
from tests.merchants.conftest import card_details


def _shop(real_uow: Callable[[], UnitOfWork]) -> tuple[str, str, str]:
    """An active merchant with a 120 USD payment captured three days ago and a 45 USD one
    today; returns (owner's email, merchant id, the available balance as shown)."""
    email = f"olive-{uuid.uuid4().hex[:8]}@example.test"
    made_user = users.create_user(real_uow(), actor=SYSTEM, email=email, first_name="Olive",
                                  last_name="Tester", password=PASSWORD, verified=True)  # fmt: skip
    owner = users.actor_for(real_uow(), made_user.id)
    staff = Factory(real_uow()).user(roles=("admin",))
    applied = merchants.apply(
        real_uow(), actor=owner, name="Toko Buku", website="https://buku.example",
        contact_email="hi@buku.example", settlement_currency="USD",
    )  # fmt: skip
    merchants.decide(real_uow(), actor=staff, merchant=applied.public_id, action="approve")
    key = keys.create_api_key(real_uow(), actor=owner, merchant=applied.public_id, name="server")
    assert key.secret is not None
    api = keys.authenticate_api_key(real_uow(), secret=key.secret).actor
    card = Factory(real_uow()).card(Factory(real_uow()).user(), balance="500")
    then = datetime.now(UTC) - timedelta(days=3)
    made = []
    for major, at in (("120", then), ("45", None)):
        uow = real_uow()
        if at is not None:
            uow.clock = lambda at=at: at
        made.append(payments.create_payment(uow, actor=api, merchant=applied.public_id,
                                amount=Money.of_major(major, "USD"), card=card_details(card),
                                idempotency_key=uuid.uuid4().hex,
                                description=f"Books {major}"))  # fmt: skip
    return email, applied.public_id, Money(made[0].amount - made[0].fee, "USD").format()


def _shot(page: Any, artifacts: Path, name: str) -> None:
    page.wait_for_timeout(200)
    page.screenshot(path=str(artifacts / f"merchant-{name}.png"), full_page=True)


def test_pay_out_and_read_the_report(
    browser: Any, live_server: str, artifacts: Path, real_uow, committing_engine: sa.Engine
) -> None:
    email, mid, available = _shop(real_uow)
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=live_server,
                                  accept_downloads=True)  # fmt: skip
    page = _sign_in(context, email, f"/merchant/{mid}/balance")
    watch = Watch(page)
    card = page.locator('[data-currency="USD"]')
    expect(card.locator('[data-balance="available"]')).to_have_text(available)
    expect(card.locator('[data-balance="pending"]')).not_to_contain_text("0.00 USD")
    expect(page.get_by_role("button", name=f"Pay out {available}")).to_be_disabled()
    _shot(page, artifacts, "balance-empty-1280")

    page.get_by_label("Bank", exact=True).fill("Bank Central Asia")
    page.get_by_label("Account number or IBAN").fill("8830 1234 5678")
    page.get_by_label("Account holder").fill("Toko Buku")
    page.get_by_role("button", name="Add bank account").click()
    expect(page.get_by_text("Payouts now go to Bank Central Asia ····5678.")).to_be_visible()
    watch.check("bank account")

    page.get_by_role("button", name=f"Pay out {available}").click()
    page.wait_for_url(f"**/merchant/{mid}/payouts/po_*")
    expect(page.locator('[data-report="amount"]')).to_have_text(available)
    expect(page.locator('[data-status="pending"]')).to_be_visible()
    watch.check("payout")

    # The worker's job pays it (called here as the worker would, on a real commit).
    with committing_engine.connect() as conn:
        payload = conn.execute(sa.text("SELECT payload FROM jobs WHERE kind = :k"),
                               {"k": payouts.PAY_JOB}).scalar_one()  # fmt: skip
    payouts.pay(real_uow(), payload)
    page.reload()
    expect(page.locator('[data-status="paid"]')).to_have_text("Paid")
    _shot(page, artifacts, "payout-1280")
    with page.expect_download() as download:
        page.get_by_role("link", name="Download CSV").click()
    text = Path(download.value.path()).read_text()
    assert (
        text.startswith("opening_balance,")
        and f"payout_amount,{available.replace(' ', ',')}" in text
    )

    page.goto(f"/merchant/{mid}/balance")
    expect(page.locator('[data-status="paid"]').first).to_be_visible()
    _shot(page, artifacts, "balance-1280")
    page.set_viewport_size({"width": 390, "height": 844})
    watch.check("balance at 390 px")
    _shot(page, artifacts, "balance-390")
    page.locator(".payout-table a").first.click()
    watch.check("payout at 390 px")
    _shot(page, artifacts, "payout-390")
    context.close()
    report = reconcile(real_uow())
    assert report.ok, report.violations
