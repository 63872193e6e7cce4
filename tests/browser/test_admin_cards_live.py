"""The console's card page in a real browser against a live server (real commits, wiped
afterwards): a card frozen elsewhere (here by its owner's service call) shows as Frozen on the
open page without a reload, through the htmx poll; then staff tick two cards in the table and
archive both with one bulk action, each reported. At 390 px the page does not scroll sideways."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyotp
import sqlalchemy as sa
from playwright.sync_api import expect

from portal.services.identity import mfa, users
from portal.services.shared.uow import UnitOfWork
from portal.services.wallet import cards
from tests.conftest import SYSTEM

PASSWORD = "correct horse battery staple"


def _staff(real_uow: Callable[[], UnitOfWork], engine: sa.Engine) -> tuple[str, str]:
    email = f"sam-{uuid.uuid4().hex[:8]}@example.test"
    made = users.create_user(real_uow(), actor=SYSTEM, email=email, first_name="Sam",
                             last_name="Staff", password=PASSWORD, roles=("admin",),
                             verified=True)  # fmt: skip
    staff = users.actor_for(real_uow(), made.id)
    issued = mfa.issue_enrolment_code(real_uow(), actor=SYSTEM, user_id=made.id).code
    enrolment = mfa.begin_totp_enrolment(real_uow(), actor=staff, enrolment_code=issued)
    mfa.confirm_totp(real_uow(), actor=staff, code=pyotp.TOTP(enrolment.secret).now())
    with engine.begin() as conn:  # the enrolment used this step's code
        conn.execute(sa.text("UPDATE users SET totp_last_step = NULL WHERE id = :i"),
                     {"i": made.id})  # fmt: skip
    return email, enrolment.secret


def test_a_card_frozen_elsewhere_shows_live_and_bulk_archive(
    browser: Any,
    live_server: str,
    artifacts: Path,
    real_uow: Callable[[], UnitOfWork],
    committing_engine: sa.Engine,
) -> None:
    email, secret = _staff(real_uow, committing_engine)
    holder = users.create_user(real_uow(), actor=SYSTEM, email=f"h-{uuid.uuid4().hex[:8]}@x.test",
                               first_name="Hana", last_name="Holder", verified=True)  # fmt: skip
    owner = users.actor_for(real_uow(), holder.id)
    first, second = (
        cards.issue_card(real_uow(), actor=owner, user_id=holder.id, card_type="debit",
                         brand="visa", currency="USD")
        for _ in range(2)
    )  # fmt: skip

    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=live_server)
    page = context.new_page()
    page.goto(f"/auth/login?next=/admin/cards/{first.public_id}")
    page.get_by_label("Email address").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/auth/mfa**")
    page.get_by_label("Code").fill(pyotp.TOTP(secret).now())
    page.get_by_role("button", name=re.compile("Verify|Continue|Sign in")).click()
    page.wait_for_url(f"**/admin/cards/{first.public_id}")
    heading = page.locator("#record h1")
    expect(heading).to_contain_text("Active")

    cards.set_frozen(real_uow(), actor=owner, card_id=first.card_id, frozen=True)
    expect(heading).to_contain_text("Frozen", timeout=10_000)  # no reload: the poll swapped it
    expect(page.locator("#record")).to_contain_text("card.freeze")
    expect(page.get_by_role("button", name="Unfreeze")).to_be_visible()

    page.goto(f"/admin/cards?q={holder.email}")
    page.get_by_label("Select Visa " + first.last4).check()
    page.get_by_label("Select Visa " + second.last4).check()
    page.get_by_label("With the ticked cards").select_option("archive")
    page.get_by_role("button", name="Apply to ticked cards").click()
    expect(page.get_by_text("Archived 2:")).to_be_visible()
    expect(page.get_by_text("No card matches.")).to_be_visible()
    page.goto(f"/admin/cards?state=archived&q={holder.email}")
    expect(page.locator("tbody tr")).to_have_count(2)
    page.screenshot(path=str(artifacts / "admin-cards-archived-1280.png"), full_page=True)

    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"/admin/cards/{first.public_id}")
    page.wait_for_load_state("networkidle")
    wider = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert wider <= 0, f"the card page scrolls sideways by {wider}px at 390"
    page.screenshot(path=str(artifacts / "admin-card-390.png"), full_page=True)
    context.close()
