"""The admin overview's statistics in a real browser against a live server (real commits, wiped
afterwards): staff signed in with a second factor see every family's chart drawn by Chart.js;
picking another year swaps the panel in place (the address follows), its charts drawn again;
picking a month changes the month table; nothing is wider than a phone. Screenshots at a
desktop's and a phone's width (test-artifacts/statistics-*.png)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyotp
import sqlalchemy as sa
from playwright.sync_api import expect

from portal.domain.money import Money
from portal.services.identity import mfa, users
from portal.services.merchants import payments
from portal.services.shared.uow import UnitOfWork
from portal.services.wallet import wallet
from tests.conftest import SYSTEM, Factory, new_key
from tests.merchants.conftest import card_details, open_shop

PASSWORD = "correct horse battery staple"


def _person(real_uow: Callable[[], UnitOfWork], roles: tuple[str, ...]) -> tuple[str, int]:
    email = f"stats-{uuid.uuid4().hex[:8]}@example.test"
    made = users.create_user(real_uow(), actor=SYSTEM, email=email, first_name="Stat",
                             last_name="Tester", password=PASSWORD, roles=roles,
                             verified=True)  # fmt: skip
    return email, made.id


def _sign_in(context: Any, email: str, next_path: str, secret: str | None = None) -> Any:
    page = context.new_page()
    page.goto(f"/auth/login?next={next_path}")
    page.get_by_label("Email address").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    if secret is not None:
        page.wait_for_url("**/auth/mfa**")
        page.get_by_label("Code").fill(pyotp.TOTP(secret).now())
        page.get_by_role("button", name=re.compile("Verify|Continue|Sign in")).click()
    page.wait_for_url(f"**{next_path}**")
    return page


CANVASES = "[...document.querySelectorAll('canvas[data-stat-chart]')]"
DRAWN = f"() => {CANVASES}.map(c => !!Chart.getChart(c))"
ALL_DRAWN = f"() => window.Chart && {CANVASES}.every(c => Chart.getChart(c))"


def _shot(page: Any, folder: Path, name: str) -> None:
    page.wait_for_timeout(400)
    page.screenshot(path=str(folder / f"statistics-{name}.png"), full_page=True)


def test_admin_overview_charts_and_pickers(
    browser: Any,
    live_server: str,
    artifacts: Path,
    real_uow: Callable[[], UnitOfWork],
    committing_engine: sa.Engine,
) -> None:
    staff_email, staff_id = _person(real_uow, ("admin",))
    staff = users.actor_for(real_uow(), staff_id)
    issued = mfa.issue_enrolment_code(real_uow(), actor=SYSTEM, user_id=staff_id).code
    enrolment = mfa.begin_totp_enrolment(real_uow(), actor=staff, enrolment_code=issued)
    mfa.confirm_totp(real_uow(), actor=staff, code=pyotp.TOTP(enrolment.secret).now())
    with committing_engine.begin() as conn:  # the enrolment used this step's code
        conn.execute(sa.text("UPDATE users SET totp_last_step = NULL WHERE id = :i"),
                     {"i": staff_id})  # fmt: skip
    make = Factory(real_uow())
    holder = make.user()
    a, b = make.card(holder, balance="400"), make.card(make.user(), balance="90")
    wallet.transfer(real_uow(), actor=holder, from_card_id=a.card_id, to_card_id=b.card_id,
                    amount=Money.of_major("35", "USD"), idempotency_key=new_key())  # fmt: skip
    shop = open_shop(real_uow(), make, staff)
    payments.create_payment(real_uow(), actor=shop.api, merchant=shop.merchant.id,
                            amount=Money.of_major("42", "USD"), card=card_details(a),
                            idempotency_key=new_key())  # fmt: skip
    this_year = datetime.now(UTC).year

    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=live_server)
    page = _sign_in(context, staff_email, "/admin/", enrolment.secret)
    expect(page.get_by_role("heading", name="Statistics")).to_be_visible()
    page.wait_for_function(
        "() => window.Chart && document.querySelector('canvas[data-stat-chart]')"
        " && Chart.getChart(document.querySelector('canvas[data-stat-chart]'))"
    )
    drawn = page.evaluate(DRAWN)
    assert len(drawn) >= 4 and all(drawn), drawn  # top-ups, transfers, payments, balances
    expect(page.locator("#stat-payments-caption")).to_contain_text("42.00")
    _shot(page, artifacts, "admin-overview-desktop")

    # Another year: the panel is swapped in place, the address follows, nothing to draw.
    page.get_by_label("Year", exact=True).select_option(str(this_year - 1))
    page.wait_for_url(f"**year={this_year - 1}**")
    expect(page.locator("#stat-payments-caption")).to_contain_text("0.00")
    expect(page.locator("#statistics")).to_contain_text(f"Nothing in {this_year - 1}.")
    assert page.evaluate(DRAWN) == []
    # Back to this year, and a month: the charts are drawn again, the month table follows.
    page.get_by_label("Year", exact=True).select_option(str(this_year))
    page.wait_for_url(f"**year={this_year}**")
    page.wait_for_function(ALL_DRAWN)
    # (A glob like **month=1** also matches month=12: the address is matched exactly.)
    page.get_by_label("Month", exact=True).select_option("1")
    expect(page.locator("#statistics")).to_contain_text(f"January {this_year} against December")
    page.wait_for_url(re.compile(r"[?&]month=1(&|$)"))
    now = datetime.now(UTC)
    page.get_by_label("Month", exact=True).select_option(str(now.month))
    expect(page.locator("#statistics")).to_contain_text(f"{now:%B} {this_year} against")
    page.wait_for_url(re.compile(rf"[?&]month={now.month}(&|$)"))
    expect(page.locator(".stats__methods")).to_contain_text("visa")
    context.close()

    with committing_engine.begin() as conn:  # signing in again within the same 30 s step
        conn.execute(sa.text("UPDATE users SET totp_last_step = NULL WHERE id = :i"),
                     {"i": staff_id})  # fmt: skip
    phone = browser.new_context(viewport={"width": 390, "height": 844}, base_url=live_server)
    page = _sign_in(phone, staff_email, "/admin/", enrolment.secret)
    page.wait_for_function(ALL_DRAWN)
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 390, width  # nothing wider than the phone
    _shot(page, artifacts, "admin-overview-phone")
    phone.close()
