"""A session that ends while a form is open (issue 13, honest flows), in a real browser: the
top-up form is filled, the session is revoked from elsewhere, and the review press lands on the
sign-in page saying "You were signed out" and why (never a CSRF message under a header still
showing the person signed in); signing in again returns to the same form."""

from __future__ import annotations

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


def _sign_in(page: Any, email: str) -> None:
    page.get_by_label("Email address").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()


def test_a_session_revoked_mid_form_says_so_and_returns_to_the_form(
    browser: Any, live_server: str, real_uow: Callable[[], UnitOfWork],
    committing_engine: sa.Engine, artifacts: Path,
) -> None:  # fmt: skip
    email = f"rina-{uuid.uuid4().hex[:8]}@example.test"
    user = users.create_user(real_uow(), actor=SYSTEM, email=email, first_name="Rina",
                             last_name="Putri", password=PASSWORD, roles=("cardholder",),
                             verified=True)  # fmt: skip
    actor = users.actor_for(real_uow(), user.id)
    card = cards.issue_card(real_uow(), actor=actor, user_id=user.id, card_type="debit",
                            brand="visa", currency="USD", name="Daily")  # fmt: skip
    Factory(real_uow()).fund(card, "50.00")

    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=live_server)
    page = context.new_page()
    page.goto("/auth/login?next=/wallet/top-up")
    _sign_in(page, email)
    page.wait_for_url("**/wallet/top-up")
    page.get_by_label("Amount").fill("25.00")
    with committing_engine.begin() as connection:  # ended from another device
        connection.execute(sa.text("UPDATE web_sessions SET revoked_at = now()"
                                   " WHERE user_id = :id"), {"id": user.id})  # fmt: skip
    page.get_by_role("button", name="Review top-up").click()

    page.wait_for_url("**/auth/login**")
    notice = page.get_by_text("You were signed out: sign in to continue.")
    expect(notice).to_be_visible()
    expect(page.get_by_text("ended from another device")).to_be_visible()
    expect(page.get_by_text("CSRF")).to_have_count(0)
    expect(page.get_by_role("button", name="Sign out")).to_have_count(0)
    page.screenshot(path=str(artifacts / "session-ended-mid-form.png"), full_page=True)
    _sign_in(page, email)
    page.wait_for_url("**/wallet/top-up")
    expect(page.get_by_role("button", name="Review top-up")).to_be_visible()
    with committing_engine.connect() as connection:  # nothing was topped up meanwhile
        count = connection.execute(
            sa.text("SELECT count(*) FROM top_ups WHERE card_id = :c AND created_by_kind = 'user'"),
            {"c": card.card_id},
        ).scalar_one()
    assert count == 0
    context.close()
