"""A new administrator in a real browser: signed in with the password, sent to set up two-step
verification, refused without the one-time enrolment code (no secret shown), then with the
code given the QR code and key, and in once a code from the app confirms it. Screenshots at a
desktop's and a phone's width."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyotp
import pytest

from portal.services.identity import mfa, users
from portal.services.shared.uow import UnitOfWork
from tests.browser.test_sign_in_flow import Watch
from tests.conftest import SYSTEM

PASSWORD = "correct horse battery staple"


@pytest.mark.parametrize("width", [390, 1280])
def test_a_new_admin_enrols_only_with_the_enrolment_code(
    browser: Any, live_server: str, artifacts: Path, real_uow: Callable[[], UnitOfWork],
    width: int,
) -> None:  # fmt: skip
    email = f"newadmin-{width}-{uuid.uuid4().hex[:8]}@example.test"
    created = users.create_user(real_uow(), actor=SYSTEM, email=email, first_name="Nia",
                                last_name="Admin", password=PASSWORD, roles=("admin",),
                                verified=True)  # fmt: skip
    code = mfa.issue_enrolment_code(real_uow(), actor=SYSTEM, user_id=created.id).code
    context = browser.new_context(viewport={"width": width, "height": 900}, base_url=live_server)
    page = context.new_page()
    watch = Watch(page)

    page.goto("/auth/login")
    page.get_by_label("Email address").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/auth/mfa/setup**")
    assert page.get_by_label("Enrolment code").is_visible()
    page.screenshot(path=str(artifacts / f"mfa-enrolment-code-{width}.png"), full_page=True)
    watch.check("setup asks for the code")

    # The password alone: refused next to the field, and no secret on the page.
    page.get_by_role("button", name="Set up an authenticator app").click()
    assert page.locator("#enrolment_code-error").is_visible()
    assert page.locator("#totp-secret").count() == 0
    page.screenshot(path=str(artifacts / f"mfa-enrolment-refused-{width}.png"), full_page=True)
    # The refusal is a 422 page, which the browser reports as a failed load; nothing else.
    assert watch.errors == [
        "Failed to load resource: the server responded with a status of 422 (UNPROCESSABLE ENTITY)"
    ]
    watch.errors.clear()
    watch.check("refused without a code")

    page.get_by_label("Enrolment code").fill(code)
    page.get_by_role("button", name="Set up an authenticator app").click()
    secret = page.locator("#totp-secret").inner_text().replace(" ", "")
    assert page.locator(".qr svg").is_visible()
    page.get_by_label("Code from your app").fill(pyotp.TOTP(secret).now())
    page.get_by_role("button", name="Turn on two-step verification").click()
    assert page.locator("code").count() >= 10  # the recovery codes, shown once
    watch.check("recovery codes")
    page.goto("/auth/account")
    assert page.get_by_role("heading", name="Your account").is_visible()
    context.close()
