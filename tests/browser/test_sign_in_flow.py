"""Sign up, sign out, sign in, set up TOTP and sign in with it, in a real browser, at a phone's
width and a desktop's; screenshots go to test-artifacts/."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pyotp
import pytest

PASSWORD = "correct horse battery staple"


def _code(secret: str, *, step_offset: int = 0) -> str:
    return pyotp.TOTP(secret).at(time.time() + 30 * step_offset)


def _wrong_code(secret: str) -> str:
    valid = {_code(secret, step_offset=n) for n in (-1, 0, 1)}
    return next(c for c in ("000000", "111111", "222222", "333333") if c not in valid)


class Watch:
    """Collects what must not happen on any page: console errors (CSP violations included) and
    a page wider than the window."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on("console", lambda msg: msg.type == "error" and self.errors.append(msg.text))
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def check(self, where: str) -> None:
        assert self.errors == [], f"{where}: {self.errors}"
        overflow = self.page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"{where}: the page scrolls sideways by {overflow}px"


@pytest.mark.parametrize("width", [390, 1280])
def test_sign_up_sign_out_sign_in_with_totp(
    browser: Any, live_server: str, artifacts: Path, width: int
) -> None:
    context = browser.new_context(viewport={"width": width, "height": 900}, base_url=live_server)
    page = context.new_page()
    watch = Watch(page)
    email = f"browser-{width}-{uuid.uuid4().hex[:8]}@example.test"

    # Sign up: land on the account page, signed in, asked to verify the email.
    page.goto("/auth/register")
    page.get_by_label("First name").fill("Grace")
    page.get_by_label("Last name").fill("Hopper")
    page.get_by_label("Email address").fill(email)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Confirm password").fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()
    page.wait_for_url("**/auth/account")
    assert page.get_by_role("heading", name="Your account").is_visible()
    assert page.get_by_text("Check your email").is_visible()
    assert page.get_by_text("Not verified").is_visible()
    watch.check("account after sign-up")

    # Sign out from the navigation (a POST with its CSRF token).
    page.get_by_role("button", name="Sign out").first.click()
    page.wait_for_url("**/auth/login")
    assert page.get_by_text("You have signed out.").is_visible()
    page.screenshot(path=str(artifacts / f"login-{width}.png"), full_page=True)
    watch.check("login")

    # Sign in with the password.
    page.get_by_label("Email address").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/wallet")  # a cardholder lands on the wallet
    page.goto("/auth/account")
    page.screenshot(path=str(artifacts / f"account-{width}.png"), full_page=True)
    watch.check("account")

    # Set up TOTP: read the key shown on the page, answer with a code from it.
    page.get_by_role("button", name="Set up two-step verification").click()
    page.wait_for_url("**/auth/mfa/setup")
    secret = page.locator("#totp-secret").inner_text().replace(" ", "")  # shown in groups of 4
    assert page.locator(".qr svg").is_visible()
    page.screenshot(path=str(artifacts / f"mfa-setup-{width}.png"), full_page=True)
    watch.check("mfa setup")
    page.get_by_label("Code from your app").fill(_code(secret))
    page.get_by_role("button", name="Turn on two-step verification").click()
    assert page.get_by_role("heading", name="Two-step verification is on").is_visible()
    assert page.locator(".codes__list li").count() == 10
    page.screenshot(path=str(artifacts / f"recovery-codes-{width}.png"), full_page=True)
    page.get_by_role("link", name="I have saved them, continue").click()
    page.wait_for_url("**/auth/account")
    assert page.locator("#mfa .badge", has_text="On").is_visible()

    # Sign out, then sign in with the password and the second factor.
    page.get_by_role("button", name="Sign out").first.click()
    page.wait_for_url("**/auth/login")
    page.get_by_label("Email address").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/auth/mfa")
    watch.check("second factor")

    # A wrong code shows an error next to the field and signs nobody in.
    page.get_by_label("Code").fill(_wrong_code(secret))
    page.get_by_role("button", name="Verify").click()
    assert page.locator("#code-error").is_visible()
    assert "That code is not right" in page.locator("#code-error").inner_text()
    assert page.locator("#code").get_attribute("aria-invalid") == "true"
    page.screenshot(path=str(artifacts / f"mfa-wrong-code-{width}.png"), full_page=True)
    watch.errors.clear()  # the browser logs the 401 answer itself

    # The next step's code (the enrolment used this step's; a code is never accepted twice).
    page.get_by_label("Code").fill(_code(secret, step_offset=1))
    page.get_by_role("button", name="Verify").click()
    page.wait_for_url("**/wallet")
    page.goto("/auth/account")
    assert page.get_by_role("heading", name="Your account").is_visible()
    assert page.get_by_text("Grace Hopper").first.is_visible()
    watch.check("account after the second factor")
    context.close()


def test_htmx_sections_of_the_account_page(browser: Any, live_server: str, artifacts: Path) -> None:
    """The account page's htmx forms in a real browser: a refused form comes back with its
    errors in place (422 is swapped), and revoking another session updates the list and shows
    a message without reloading the page."""
    email = f"browser-htmx-{uuid.uuid4().hex[:8]}@example.test"
    first = browser.new_context(viewport={"width": 1280, "height": 1000}, base_url=live_server)
    page = first.new_page()
    watch = Watch(page)
    page.goto("/auth/register")
    page.get_by_label("First name").fill("Katherine")
    page.get_by_label("Last name").fill("Johnson")
    page.get_by_label("Email address").fill(email)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Confirm password").fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()
    page.wait_for_url("**/auth/account")

    second = browser.new_context(
        base_url=live_server, user_agent="Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"
    )
    other = second.new_page()
    other.goto("/auth/login")
    other.get_by_label("Email address").fill(email)
    other.get_by_label("Password").fill(PASSWORD)
    other.get_by_role("button", name="Sign in").click()
    other.wait_for_url("**/wallet")

    page.reload()
    page.evaluate("window.notReloaded = true")
    sessions = page.locator("#sessions .session")
    assert sessions.count() == 2

    # A refused password change: the form is swapped back with the error next to the field.
    form = page.locator("#password-form")
    form.get_by_label("Current password").fill("not my password")
    form.get_by_label("New password", exact=True).fill("another fine passphrase")
    form.get_by_label("Confirm new password").fill("another fine passphrase")
    form.get_by_role("button", name="Change password").click()
    error = page.locator("#pw-current_password-error")
    error.wait_for()
    assert "The password is not right." in error.inner_text()
    assert page.evaluate("window.notReloaded") is True
    watch.errors.clear()  # the browser logs the 422 answer itself

    # Revoke the other session (htmx post, with the confirm dialog).
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#sessions .session:not(.session--current) button").click()
    page.locator("#flash", has_text="That session is signed out.").wait_for()
    assert sessions.count() == 1
    assert page.evaluate("window.notReloaded") is True
    page.screenshot(path=str(artifacts / "account-htmx-1280.png"), full_page=True)
    watch.check("account after htmx")

    other.reload()
    other.wait_for_url("**/auth/login**")
    first.close()
    second.close()
