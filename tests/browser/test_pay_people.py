"""Paying a person in a real browser against a live server (real commits, wiped afterwards):
pay by email after the confirmation with the masked name and email (screenshots at 1280 and
390 px), star them on the receipt, pay them again from the saved payees, and reveal one's own
card's details after re-entering the password."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from playwright.sync_api import expect

from portal.services.identity import handles, users
from portal.services.ledger import reconciliation
from portal.services.shared.uow import UnitOfWork
from portal.services.wallet import cards
from tests.conftest import SYSTEM, Factory

PASSWORD = "correct horse battery staple"


def _person(real_uow: Callable[[], UnitOfWork], first: str, last: str, email: str) -> Any:
    created = users.create_user(real_uow(), actor=SYSTEM, email=email, first_name=first,
                                last_name=last, password=PASSWORD, roles=("cardholder",),
                                verified=True)  # fmt: skip
    return users.actor_for(real_uow(), created.id)


def _card(real_uow: Callable[[], UnitOfWork], owner: Any) -> Any:
    return cards.issue_card(real_uow(), actor=owner, user_id=owner.id, card_type="debit",
                            brand="visa", currency="USD")  # fmt: skip


def _posted(engine: sa.Engine, card_id: int) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text("SELECT posted_minor FROM accounts WHERE card_id = :c"), {"c": card_id}
            ).scalar_one()
        )


def test_pay_a_person_by_email_star_them_pay_again_and_reveal_a_card(
    browser: Any, live_server: str, real_uow: Callable[[], UnitOfWork],
    committing_engine: sa.Engine, artifacts: Path,
) -> None:  # fmt: skip
    tag = uuid.uuid4().hex[:6]
    alice_email = f"alice-{tag}@example.test"
    alice = _person(real_uow, "Alice", "Wong", alice_email)
    budi = _person(real_uow, "Budi", "Santoso", f"budi.santoso-{tag}@example.test")
    handles.set_handle(real_uow(), actor=budi, handle=f"budi_{tag}")
    mine = _card(real_uow, alice)
    Factory(real_uow()).fund(mine, "100")
    theirs = _card(real_uow, budi)

    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=live_server)
    page = context.new_page()
    page.goto("/auth/login?next=/wallet/pay")
    page.get_by_label("Email address").fill(alice_email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/wallet/pay")

    page.get_by_label("Email address or @handle").fill(f"Budi.Santoso-{tag}@EXAMPLE.test")
    page.get_by_label("Amount").fill("12.50")
    page.get_by_label("Note for them (optional)").fill("Dinner")
    page.get_by_role("button", name="Review payment").click()
    expect(page.get_by_role("heading", name="Check who you are paying")).to_be_visible()
    confirmation = page.locator("#pay-confirm")
    expect(confirmation).to_contain_text("Budi S.")
    expect(confirmation).to_contain_text(f"@budi_{tag}")
    expect(confirmation).to_contain_text("b•••")
    assert f"budi.santoso-{tag}" not in confirmation.inner_text().lower()
    page.screenshot(path=str(artifacts / "pay-person-confirm-1280.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(artifacts / "pay-person-confirm-390.png"), full_page=True)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the confirmation is {width} px wide at 390"
    page.set_viewport_size({"width": 1280, "height": 900})

    page.get_by_role("button", name=re.compile(r"^Pay Budi S\.")).click()
    page.wait_for_url(re.compile(r".*/wallet/pay/sent/tr_[0-9A-Za-z]{24}$"))
    expect(page.get_by_role("heading", name="Money sent to Budi S.")).to_be_visible()
    assert _posted(committing_engine, theirs.card_id) == 1250
    page.screenshot(path=str(artifacts / "pay-person-sent-1280.png"), full_page=True)

    page.get_by_role("button", name="Star Budi S. as a payee").click()
    expect(page.get_by_role("button", name="Unstar Budi S.")).to_be_visible()

    page.goto("/wallet/pay")
    payees = page.get_by_role("region", name="Your payees")
    expect(payees).to_contain_text("Starred")
    payees.get_by_role("link", name="Budi S.").click()
    page.get_by_label("Amount").fill("2")
    page.get_by_role("button", name="Review payment").click()
    expect(page.locator("#pay-confirm")).to_contain_text("Budi S.")
    page.get_by_role("button", name=re.compile(r"^Pay Budi S\.")).click()
    page.wait_for_url(re.compile(r".*/wallet/pay/sent/tr_"))
    assert _posted(committing_engine, theirs.card_id) == 1450
    report = reconciliation.reconcile(real_uow())
    assert report.ok, report.violations

    # The card's details again, after the password only.
    page.goto(f"/wallet/cards/{mine.public_id}")
    page.get_by_role("link", name="Show the card number and security code").click()
    expect(page.locator("body")).not_to_contain_text(mine.number)
    page.get_by_label("Your password").fill("not my password")
    page.get_by_role("button", name="Show details").click()
    expect(page.locator("body")).to_contain_text("password is not right")
    page.get_by_label("Your password").fill(PASSWORD)
    page.get_by_role("button", name="Show details").click()
    expect(page.locator("#card-number")).to_have_text(mine.number)
    expect(page.locator("#card-cvv")).to_have_text(mine.cvv)
    page.screenshot(path=str(artifacts / "card-reveal-1280.png"), full_page=True)
    context.close()
