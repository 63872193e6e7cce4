"""Four-eyes adjustments in a real browser against a live server (real commits, wiped
afterwards): administrator A requests a credit of a card's wallet and cannot approve it; B
signs in with their own second factor in another browser, approves it, and the balance
changes (and A's open page shows it without a reload). The reconciliation and audit pages
then show the ledger holding and the approval. Screenshots at a desktop's and a phone's
width."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyotp
import sqlalchemy as sa
from playwright.sync_api import expect

from portal.services.identity import mfa, users
from portal.services.shared.uow import UnitOfWork
from portal.services.wallet import cards
from tests.browser.test_merchant_dashboard import _person, _sign_in, users_id
from tests.browser.test_sign_in_flow import Watch
from tests.conftest import SYSTEM, Factory


def _admin(real_uow: Callable[[], UnitOfWork], engine: sa.Engine, first: str) -> tuple[str, str]:
    """A new administrator with a confirmed TOTP: (email, secret)."""
    email = _person(real_uow, first, ("admin",))
    actor = users.actor_for(real_uow(), users_id(engine, email))
    issued = mfa.issue_enrolment_code(real_uow(), actor=SYSTEM, user_id=actor.id).code
    enrolment = mfa.begin_totp_enrolment(real_uow(), actor=actor, enrolment_code=issued)
    mfa.confirm_totp(real_uow(), actor=actor, code=pyotp.TOTP(enrolment.secret).now())
    with engine.begin() as conn:  # the enrolment used this step's code
        conn.execute(sa.text("UPDATE users SET totp_last_step = NULL WHERE email = :e"),
                     {"e": email})  # fmt: skip
    return email, enrolment.secret


def _posted(engine: sa.Engine, card_id: int) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT posted_minor FROM accounts WHERE card_id = :c"),
                                {"c": card_id}).scalar_one())  # fmt: skip


def _shots(page: Any, artifacts: Path, name: str) -> None:
    """The page at 1280 and at 390 pixels wide, checked for sideways scrolling at each."""
    for width in (1280, 390):
        page.set_viewport_size({"width": width, "height": 900})
        page.wait_for_timeout(200)
        overflow = page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"{name} at {width}px scrolls sideways by {overflow}px"
        page.screenshot(path=str(artifacts / f"admin-{name}-{width}.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})


def test_a_second_admin_approves_an_adjustment_and_the_balance_moves(
    browser: Any,
    live_server: str,
    artifacts: Path,
    real_uow: Callable[[], UnitOfWork],
    committing_engine: sa.Engine,
) -> None:
    maker_email, maker_secret = _admin(real_uow, committing_engine, "Ana")
    checker_email, checker_secret = _admin(real_uow, committing_engine, "Ben")
    holder_email = _person(real_uow, "Hana", ("cardholder",))
    holder = users.actor_for(real_uow(), users_id(committing_engine, holder_email))
    card = cards.issue_card(real_uow(), actor=holder, user_id=holder.id, card_type="debit",
                            brand="visa", currency="USD")  # fmt: skip
    Factory(real_uow()).fund(card, "100")
    assert _posted(committing_engine, card.card_id) == 10000

    # A asks for a credit of 42.50 USD.
    maker = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=live_server)
    page = _sign_in(maker, maker_email, "/admin/adjustments", maker_secret)
    watch = Watch(page)
    page.get_by_role("link", name="Request an adjustment").click()
    page.get_by_label("Card or merchant").fill(card.public_id)
    page.get_by_label("Credit or debit").select_option("credit")
    page.get_by_label("Amount").fill("42.50")
    page.get_by_label("Currency").select_option("USD")
    page.get_by_label("Reason").fill("Top-up fee charged twice on 3 December")
    page.get_by_label("Reference").fill("SUP-2291")
    _shots(page, artifacts, "adjustment-form")
    page.get_by_role("button", name="Request the adjustment").click()
    expect(page.get_by_text("It posts once another administrator approves it.")).to_be_visible()
    expect(page.get_by_role("heading", name="Waiting for another administrator")).to_be_visible()
    expect(page.get_by_role("button", name="Approve and post")).to_have_count(0)
    adjustment = page.url.rsplit("/", 1)[1]
    assert re.fullmatch(r"adj_[0-9A-Za-z]{24}", adjustment)
    watch.check("the request")
    _shots(page, artifacts, "adjustment-requested")
    assert _posted(committing_engine, card.card_id) == 10000  # nothing moved yet

    # B signs in with their own second factor and approves it from the list.
    checker = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=live_server)
    other = _sign_in(checker, checker_email, "/admin/adjustments", checker_secret)
    other_watch = Watch(other)
    pending = other.locator("#pending")
    expect(pending).to_contain_text("42.50 USD")
    expect(pending).to_contain_text(maker_email)
    _shots(other, artifacts, "adjustments-pending")
    pending.locator(f'[data-adjustment="{adjustment}"] a').click()
    expect(other.get_by_text("Top-up fee charged twice on 3 December", exact=True)).to_be_visible()
    expect(other.locator("[data-available]")).to_have_text("100.00 USD")
    _shots(other, artifacts, "adjustment-to-approve")
    other.get_by_role("button", name="Approve and post").click()
    expect(other.get_by_text(re.compile(r"Approved: 42\.50 USD posted to Visa"))).to_be_visible()
    expect(other.locator("[data-available]")).to_have_text("142.50 USD")
    expect(other.locator("[data-entry]")).to_be_visible()
    expect(other.get_by_role("button", name="Approve and post")).to_have_count(0)
    other_watch.check("the approval")
    _shots(other, artifacts, "adjustment-approved")
    assert _posted(committing_engine, card.card_id) == 14250

    # The ledger still holds, checked from the console; the audit log shows both decisions.
    other.get_by_role("link", name="Reconciliation").first.click()
    other.get_by_role("button", name="Check the ledger now").click()
    expect(other.get_by_text("Checked now: every invariant holds.")).to_be_visible()
    _shots(other, artifacts, "reconciliation")
    other.goto("/admin/audit?subject_type=adjustment_request")
    expect(other.locator("#audit-events")).to_contain_text("adjustment.approve")
    expect(other.locator("#audit-events")).to_contain_text("adjustment.request")
    _shots(other, artifacts, "audit-log")
    other.get_by_role("button", name="Verify the chains").click()
    expect(other.get_by_text("Every audit chain is intact")).to_be_visible()
    _shots(other, artifacts, "audit-verify")
    other_watch.check("reconciliation and audit")

    # A's page, left open, shows by itself who approved it.
    expect(page.get_by_text("Approved by")).to_be_visible(timeout=15000)
    expect(page.locator("body")).to_contain_text(checker_email)
    watch.check("the requester's page, refreshed by its poll")
    maker.close()
    checker.close()
