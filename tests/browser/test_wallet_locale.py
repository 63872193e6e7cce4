"""Money in the user's locale in a real browser (issue 13): the browser's time zone kept at
sign-in (time-zone.js), a top-up typed and shown in Indonesian formats, the amount input's sign,
money and limits following the card select (money-form.js) into EUR, the receipt at its own
address, and the history's filters inside their grid at 1280 and 390 px. Screenshots go to
/tmp/work/shots (and test-artifacts)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from playwright.sync_api import expect

from portal.services.identity import users
from portal.services.shared.uow import UnitOfWork
from portal.services.wallet import cards
from tests.conftest import SYSTEM, Factory

PASSWORD = "correct horse battery staple"
#: Where the session keeps screenshots to look at (a fixed, non-secret path: noqa S108).
SHOTS = Path(os.environ.get("PORTAL_SHOTS", "/tmp/work/shots"))  # noqa: S108


def _shot(page: Any, artifacts: Path, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / name), full_page=True)
    page.screenshot(path=str(artifacts / name), full_page=True)


def test_indonesian_formats_in_the_browser(
    browser: Any, live_server: str, real_uow: Callable[[], UnitOfWork],
    committing_engine: sa.Engine, artifacts: Path,
) -> None:  # fmt: skip
    email = f"sari-{uuid.uuid4().hex[:8]}@example.test"
    user = users.create_user(real_uow(), actor=SYSTEM, email=email, first_name="Sari",
                             last_name="Dewi", password=PASSWORD, roles=("cardholder",),
                             verified=True)  # fmt: skip
    with committing_engine.begin() as connection:
        connection.execute(sa.text("UPDATE users SET locale = 'id_ID' WHERE id = :id"),
                           {"id": user.id})  # fmt: skip
    actor = users.actor_for(real_uow(), user.id)
    idr = cards.issue_card(real_uow(), actor=actor, user_id=user.id, card_type="debit",
                           brand="visa", currency="IDR", name="Harian")  # fmt: skip
    eur = cards.issue_card(real_uow(), actor=actor, user_id=user.id, card_type="debit",
                           brand="mastercard", currency="EUR", name="Travel")  # fmt: skip
    Factory(real_uow()).fund(idr, "13985000")
    Factory(real_uow()).fund(eur, "1000.50")

    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=live_server,
                                  timezone_id="Asia/Jakarta", locale="id-ID")  # fmt: skip
    page = context.new_page()
    page.goto("/auth/login?next=/wallet")
    page.get_by_label("Email address").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/wallet")
    with committing_engine.connect() as connection:
        zone = connection.execute(sa.text("SELECT time_zone FROM users WHERE id = :id"),
                                  {"id": user.id}).scalar_one()  # fmt: skip
    assert zone == "Asia/Jakarta"  # from the browser, by time-zone.js
    expect(page.locator(f"#card-{idr.public_id} [data-balance=available]")).to_have_text(
        "Rp\u00a013.985.000"
    )
    expect(page.locator(f"#card-{eur.public_id} [data-balance=available]")).to_have_text(
        "€1.000,50")  # fmt: skip
    _shot(page, artifacts, "locale-wallet-id-1280.png")

    page.goto(f"/wallet/top-up?card={idr.public_id}")
    amount = page.get_by_label("Amount")
    expect(amount).to_be_focused()
    expect(page.locator("[data-amount-sign]")).to_have_text("Rp")
    expect(page.locator("[data-amount-available]")).to_have_text("Rp\u00a013.985.000")
    _shot(page, artifacts, "locale-top-up-id-1280.png")
    # The card select moves the sign, the money and the limits to the EUR card's.
    page.get_by_label("Card to top up").select_option(eur.public_id)
    expect(page.locator("[data-amount-sign]")).to_have_text("€")
    expect(page.locator("[data-amount-available]")).to_have_text("€1.000,50")
    expect(page.locator("[data-amount-limits]")).to_contain_text("€")
    page.get_by_label("Card to top up").select_option(idr.public_id)
    page.get_by_label("Pay with").select_option("cash")
    amount.fill("150.000,00")
    page.get_by_role("button", name="Review top-up").click()
    expect(page.get_by_role("heading", name="Check and confirm")).to_be_visible()
    expect(page.locator(".review__amount")).to_have_text("Rp\u00a0150.000")
    page.set_viewport_size({"width": 390, "height": 844})
    _shot(page, artifacts, "locale-review-id-390.png")
    page.set_viewport_size({"width": 1280, "height": 900})
    page.get_by_role("button", name="Top up Rp\u00a0150.000").click()
    page.wait_for_url("**/wallet/movements/tu_*")
    expect(page.locator(".receipt__amount")).to_have_text("Rp\u00a0150.000")

    # Typed the other way round: refused in Indonesian terms, nothing asked for.
    page.goto(f"/wallet/top-up?card={idr.public_id}")
    page.get_by_label("Pay with").select_option("cash")
    page.get_by_label("Amount").fill("1,000.50")
    page.get_by_role("button", name="Review top-up").click()
    expect(page.locator("#amount-error")).to_have_text(
        "We cannot tell which amount “1,000.50” is: write 1000,50 or 1.000,50."
    )

    for width, height in ((1280, 900), (390, 844)):
        page.set_viewport_size({"width": width, "height": height})
        page.goto("/wallet/activity")
        grid = page.locator(".filters__grid").bounding_box()
        assert grid is not None
        for name in ("since", "until", "q"):
            box = page.locator(f"#{name}").bounding_box()
            assert box is not None
            assert box["x"] >= grid["x"] - 0.5, (width, name, box, grid)
            assert box["x"] + box["width"] <= grid["x"] + grid["width"] + 0.5, (width, name)
        _shot(page, artifacts, f"locale-activity-id-{width}.png")
    expect(page.locator(".activity__amount").first).to_contain_text("Rp\u00a0150.000")
    # A withdrawal to a new account; the next one offers it, and needs none of its fields.
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(f"/wallet/withdraw?card={idr.public_id}")
    page.get_by_label("Amount").fill("60.000")
    page.get_by_label("Bank name").fill("BCA")
    page.get_by_label("Account number").fill("1234 5678 90")
    page.get_by_label("Account holder").fill("Sari Dewi")
    page.get_by_role("button", name="Review withdrawal").click()
    page.get_by_role("button", name="Withdraw Rp\u00a060.000").click()
    page.wait_for_url("**/wallet/movements/wd_*")
    page.goto(f"/wallet/withdraw?card={idr.public_id}")
    expect(page.get_by_label("BCA account ending 7890")).to_be_checked()
    expect(page.get_by_label("Bank name")).to_be_hidden()
    page.get_by_label("Amount").fill("50.000")
    page.get_by_role("button", name="Review withdrawal").click()
    expect(page.get_by_text("BCA account ending 7890 (Sari Dewi)")).to_be_visible()

    for width, height in ((1280, 900), (390, 844)):
        page.set_viewport_size({"width": width, "height": height})
        for path, name in (("/wallet/transfer", "transfer"), ("/wallet/withdraw", "withdraw"),
                           ("/auth/account#preferences", "account")):  # fmt: skip
            page.goto(path)
            _shot(page, artifacts, f"locale-{name}-id-{width}.png")
    # The account page names the chosen formats; the page's scripts raised nothing.
    expect(page.get_by_label("Number and date format")).to_have_value("id_ID")
    expect(page.get_by_label("Time zone", exact=True)).to_have_value("Asia/Jakarta")
    context.close()


def test_send_to_follows_the_sending_card(
    browser: Any, live_server: str, real_uow: Callable[[], UnitOfWork]
) -> None:
    """ "My card" lists only the other cards of the sending card's currency; a sending card with
    none moves "Send to" to someone else's card, and choosing one with a partner brings that
    partner back."""
    email = f"budi-{uuid.uuid4().hex[:8]}@example.test"
    user = users.create_user(real_uow(), actor=SYSTEM, email=email, first_name="Budi",
                             last_name="Santoso", password=PASSWORD, roles=("cardholder",),
                             verified=True)  # fmt: skip
    actor = users.actor_for(real_uow(), user.id)
    made = {}
    for name, currency in (("Daily", "USD"), ("Savings", "USD"), ("Travel", "EUR")):
        made[name] = cards.issue_card(real_uow(), actor=actor, user_id=user.id,
                                      card_type="debit", brand="visa", currency=currency,
                                      name=name)  # fmt: skip
        Factory(real_uow()).fund(made[name], "50.00")
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=live_server)
    page = context.new_page()
    page.goto("/auth/login?next=/wallet")
    page.get_by_label("Email address").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/wallet")

    page.goto(f"/wallet/transfer?card={made['Daily'].public_id}")
    expect(page.get_by_label("One of my cards")).to_be_checked()
    expect(page.locator("select[name=to_card_id]")).to_have_value(made["Savings"].public_id)
    page.locator("select[name=card_id]").select_option(made["Travel"].public_id)
    expect(page.get_by_label("Someone else's card")).to_be_checked()
    expect(page.get_by_label("Card number")).to_be_visible()
    expect(page.locator("select[name=to_card_id]")).to_have_value("")
    # Back to a card with a partner: the choice stays the person's, and the partner is offered.
    page.get_by_label("One of my cards").check()
    page.locator("select[name=card_id]").select_option(made["Savings"].public_id)
    expect(page.locator("select[name=to_card_id]")).to_have_value(made["Daily"].public_id)
    # Drawn for the EUR card from the start, the page already says someone else's card.
    page.goto(f"/wallet/transfer?card={made['Travel'].public_id}")
    expect(page.get_by_label("Someone else's card")).to_be_checked()
    context.close()
