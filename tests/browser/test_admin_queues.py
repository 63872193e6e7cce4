"""The withdrawal queue in a real browser against a live server: an administrator signs in
with the second factor, opens the queue, confirms one withdrawal and fails another with a
reason, and sees each result on the page; the ledger reconciles after. At a desktop's and a
phone's width, with no console error and no sideways scroll."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyotp
import pytest
import sqlalchemy as sa
from playwright.sync_api import expect

from portal.domain.money import Money
from portal.services.identity import mfa, users
from portal.services.ledger.reconciliation import reconcile
from portal.services.shared.uow import UnitOfWork
from portal.services.wallet import wallet
from tests.browser.test_sign_in_flow import Watch
from tests.conftest import SYSTEM, Factory

PASSWORD = "correct horse battery staple"


def _admin(real_uow: Callable[[], UnitOfWork], width: int) -> tuple[str, str]:
    """A new administrator with an authenticator app enrolled: (email, TOTP secret)."""
    email = f"queue-admin-{width}-{uuid.uuid4().hex[:8]}@example.test"
    made = users.create_user(real_uow(), actor=SYSTEM, email=email, first_name="Quinn",
                             last_name="Admin", password=PASSWORD, roles=("admin",),
                             verified=True)  # fmt: skip
    actor = users.actor_for(real_uow(), made.id)
    code = mfa.issue_enrolment_code(real_uow(), actor=SYSTEM, user_id=made.id).code
    enrolment = mfa.begin_totp_enrolment(real_uow(), actor=actor, enrolment_code=code)
    mfa.confirm_totp(real_uow(), actor=actor, code=pyotp.TOTP(enrolment.secret).now())
    return email, enrolment.secret


def _withdrawals(real_uow: Callable[[], UnitOfWork]) -> tuple[str, str]:
    make = Factory(real_uow())
    holder = make.user()
    card = make.card(holder, balance="200.00")
    made = [
        wallet.withdraw(
            real_uow(), actor=holder, card_id=card.card_id, amount=Money.of_major(major, "USD"),
            bank=wallet.BankAccount("Queue Bank", "12345678", "Holder"),
            idempotency_key=uuid.uuid4().hex,
        ).public_id
        for major in ("40.00", "25.00")
    ]  # fmt: skip
    return made[0], made[1]


def _shot(page: Any, artifacts: Path, name: str, width: int) -> None:
    page.wait_for_timeout(150)
    page.screenshot(path=str(artifacts / f"admin-queue-{name}-{width}.png"), full_page=True)


@pytest.mark.parametrize("width", [1280, 390])
def test_an_admin_confirms_one_withdrawal_and_fails_another(
    browser: Any, live_server: str, artifacts: Path, real_uow: Callable[[], UnitOfWork],
    committing_engine: sa.Engine, width: int,
) -> None:  # fmt: skip
    email, secret = _admin(real_uow, width)
    confirm_me, fail_me = _withdrawals(real_uow)
    context = browser.new_context(viewport={"width": width, "height": 900}, base_url=live_server)
    page = context.new_page()
    watch = Watch(page)
    page.goto("/admin/queues/withdrawals")
    page.wait_for_url("**/auth/login**")
    page.get_by_label("Email address").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/auth/mfa**")
    # The next step's code: the current one was spent confirming the enrolment.
    page.get_by_label("Code").fill(pyotp.TOTP(secret).at(time.time() + 30))
    page.get_by_role("button", name="Verify").click()
    page.wait_for_url("**/admin/queues/withdrawals")
    expect(page.get_by_role("heading", name="Withdrawal queue")).to_be_visible()
    first, second = page.locator(f"#item-{confirm_me}"), page.locator(f"#item-{fail_me}")
    expect(first).to_contain_text("40.00 USD")
    expect(first).to_contain_text("Pending")
    expect(second).to_contain_text("25.00 USD")
    _shot(page, artifacts, "open", width)
    watch.check("the queue")

    first.get_by_role("button", name="Confirm").click()
    page.wait_for_url("**/admin/queues/withdrawals")
    expect(page.get_by_role("alert").or_(page.locator(".flash, .alert")).first).to_contain_text(
        f"Withdrawal {confirm_me} confirmed: 40.00 USD left the card."
    )
    expect(page.locator(f"#item-{confirm_me}")).to_have_count(0)
    watch.check("confirmed")

    second = page.locator(f"#item-{fail_me}")
    second.get_by_label("Reason").select_option("account_closed")
    second.get_by_label("Note").fill("The bank returned it")
    second.get_by_role("button", name="Fail").click()
    page.wait_for_url("**/admin/queues/withdrawals")
    expect(page.locator("body")).to_contain_text(
        f"Withdrawal {fail_me} failed (the bank account is closed): its 25.00 USD is available"
        " on the card again."
    )
    expect(page.locator(f"#item-{fail_me}")).to_have_count(0)
    _shot(page, artifacts, "done", width)
    watch.check("failed")

    # The failed one's page: failed, its hold voided, the staff action in its audit trail.
    page.goto(f"/admin/withdrawals/{fail_me}")
    expect(page.locator("#record")).to_contain_text("Failed")
    expect(page.locator("#record")).to_contain_text("account_closed")
    expect(page.locator("#trail-title")).to_be_visible()
    expect(page.locator("body")).to_contain_text("withdrawal.fail")
    _shot(page, artifacts, "detail", width)
    watch.check("the record")
    # The withdrawals table, searched by the card's owner, lists both with their outcome.
    page.goto(f"/admin/withdrawals?q={confirm_me}")
    expect(page.locator("#records")).to_contain_text("Succeeded")
    page.goto("/admin/withdrawals")
    expect(page.locator("#records")).to_contain_text(fail_me)
    _shot(page, artifacts, "table", width)
    watch.check("the table")
    context.close()

    with committing_engine.connect() as conn:
        rows = dict(
            conn.execute(
                sa.text(
                    "SELECT public_id, status FROM withdrawals"
                    " WHERE public_id = ANY(CAST(:p AS text[]))"
                ),
                {"p": [confirm_me, fail_me]},
            ).all()
        )
    assert rows == {confirm_me: "succeeded", fail_me: "failed"}
    assert reconcile(real_uow()).ok
