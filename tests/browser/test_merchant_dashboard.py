"""The merchant dashboard in a real browser against a live server (real commits, wiped
afterwards): a cardholder applies for a merchant account; staff, signed in with a second factor
in another browser, approve it; the owner creates an API key whose secret is shown once; a
payment made with that key through the JSON API appears on the open overview without a reload;
the guide's curl command works as written with the real key; the payment is refunded from its
page. Screenshots of every page at a desktop's and a phone's width."""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyotp
import pytest
import sqlalchemy as sa
from flask import Flask
from playwright.sync_api import expect

from portal.services.identity import mfa, users
from portal.services.shared.uow import UnitOfWork
from portal.services.wallet import cards
from tests.browser.test_sign_in_flow import Watch
from tests.conftest import SYSTEM, Factory

PASSWORD = "correct horse battery staple"


def _person(real_uow: Callable[[], UnitOfWork], first: str, roles: tuple[str, ...]) -> str:
    email = f"{first.lower()}-{uuid.uuid4().hex[:8]}@example.test"
    users.create_user(real_uow(), actor=SYSTEM, email=email, first_name=first,
                      last_name="Tester", password=PASSWORD, roles=roles,
                      verified=True)  # fmt: skip
    return email


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


def _shot(page: Any, artifacts: Path, name: str) -> None:
    page.wait_for_timeout(300)
    page.screenshot(path=str(artifacts / f"merchant-{name}.png"), full_page=True)


def test_apply_approve_key_live_payment_and_refund(
    browser: Any,
    live_server: str,
    artifacts: Path,
    real_uow: Callable[[], UnitOfWork],
    committing_engine: sa.Engine,
    app: Flask,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The guide writes its commands for PUBLIC_URL: here, the live server.
    monkeypatch.setitem(app.config, "PUBLIC_URL", live_server)
    owner_email = _person(real_uow, "Olivia", ("cardholder",))
    staff_email = _person(real_uow, "Sam", ("admin",))
    staff = users.actor_for(real_uow(), users_id(committing_engine, staff_email))
    issued = mfa.issue_enrolment_code(real_uow(), actor=SYSTEM, user_id=staff.id).code
    enrolment = mfa.begin_totp_enrolment(real_uow(), actor=staff, enrolment_code=issued)
    mfa.confirm_totp(real_uow(), actor=staff, code=pyotp.TOTP(enrolment.secret).now())
    with committing_engine.begin() as conn:  # the enrolment used this step's code
        conn.execute(sa.text("UPDATE users SET totp_last_step = NULL WHERE email = :e"),
                     {"e": staff_email})  # fmt: skip
    holder_email = _person(real_uow, "Hana", ("cardholder",))
    holder = users.actor_for(real_uow(), users_id(committing_engine, holder_email))
    card = cards.issue_card(real_uow(), actor=holder, user_id=holder.id, card_type="debit",
                            brand="visa", currency="USD")  # fmt: skip
    Factory(real_uow()).fund(card, "500")

    # The owner applies.
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=live_server)
    page = _sign_in(context, owner_email, "/merchant")
    watch = Watch(page)
    page.wait_for_url("**/merchant/apply")
    page.get_by_label("Business name").fill("Kopi Kenangan")
    page.get_by_label("Website").fill("https://kopi.example")
    page.get_by_label("Settlement currency").select_option("USD")
    page.get_by_role("button", name="Send application").click()
    expect(page.get_by_role("heading", name="Your application is being reviewed")).to_be_visible()
    mid = page.url.rstrip("/").rsplit("/", 1)[1]
    assert mid.startswith("mch_")
    watch.check("pending application")

    # Staff approve it in their own browser, after their second factor.
    staff_context = browser.new_context(viewport={"width": 1280, "height": 900},
                                        base_url=live_server)  # fmt: skip
    # (the old staff page, /merchant/staff, sends to the console's merchants)
    staff_page = _sign_in(staff_context, staff_email, "/admin/merchants", enrolment.secret)
    staff_watch = Watch(staff_page)
    staff_page.goto("/merchant/staff?state=pending")
    staff_page.wait_for_url("**/admin/merchants?state=pending")
    row = staff_page.locator(f"#{mid}")
    expect(row).to_contain_text("Kopi Kenangan")
    _shot(staff_page, artifacts, "staff-1280")
    staff_watch.check("staff page")
    row.get_by_role("link", name="Kopi Kenangan").click()
    staff_page.get_by_label("Reason").fill("documents checked")
    staff_page.get_by_role("button", name="Approve").click()
    expect(staff_page.get_by_text(f"{mid}: approved.")).to_be_visible()
    expect(staff_page.locator("h1 [data-state]")).to_have_text("Active")
    expect(staff_page.get_by_text("documents checked").first).to_be_visible()

    # The owner lands on the dashboard and creates a key: its secret is shown once.
    page.reload()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    page.get_by_role("link", name="API keys").click()
    page.get_by_label("Name", exact=True).fill("Web shop")
    page.get_by_role("button", name="Create key").click()
    expect(page.get_by_text("You won't see this secret again.")).to_be_visible()
    secret = page.locator("#new-secret").input_value()
    assert re.fullmatch(r"sk_live_[0-9A-Za-z]{32}", secret)
    _shot(page, artifacts, "keys-secret-1280")
    watch.check("key created")
    page.goto(f"/merchant/{mid}/keys")
    assert secret not in page.content()
    expect(page.get_by_text(f"{secret[:12]}…{secret[-4:]}")).to_be_visible()

    # With the overview open, a payment through the JSON API shows up without a reload.
    page.goto(f"/merchant/{mid}")
    expect(page.locator("#latest-payments")).to_contain_text("No payments yet")
    api = browser.new_context(base_url=live_server).request
    answer = api.post("/api/v1/payments", headers={
        "Authorization": f"Bearer {secret}", "Idempotency-Key": uuid.uuid4().hex,
    }, data={"amount": 2000, "currency": "usd", "description": "Flat white x2", "card": {
        "number": card.number, "exp_month": card.expiry_month, "exp_year": card.expiry_year,
        "cvc": card.cvv}})  # fmt: skip
    assert answer.status == 201, answer.text()
    paid = answer.json()
    assert paid["status"] == "succeeded"
    row = page.locator(f"#payment-{paid['id']}")
    expect(row).to_be_visible(timeout=5000)  # the poll asks every 1.5 s
    expect(row).to_contain_text("20.00 USD")
    expect(page.locator('[data-period="today"] [data-figure="gross"]').first).to_have_text(
        "20.00 USD")  # fmt: skip
    expect(page.locator('[data-period="today"] [data-figure="count"]').first).to_have_text("1")
    assert card.number not in page.content()
    watch.check("live overview")

    # The guide's curl, as the page shows it, with the real key and card: it works.
    page.locator(".merchant-tabs").get_by_role("link", name="Get started").click()
    command = page.locator("#curl-payment").inner_text()
    assert "sk_live_..." in command and secret not in page.content()
    real_card = json.dumps({"number": card.number, "exp_month": card.expiry_month,
                            "exp_year": card.expiry_year, "cvc": card.cvv},
                           separators=(",", ":"))  # fmt: skip
    command = command.replace("sk_live_...", secret)
    command, swapped = re.subn(r'"card": \{[^}]*\}', '"card": ' + real_card, command)
    assert swapped == 1, command
    command = command.replace("curl ", "curl -sS -w '\\n%{http_code}' ", 1)
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30,
                          check=False)  # fmt: skip
    body, _, status = done.stdout.strip().rpartition("\n")
    assert status == "201", (done.stdout, done.stderr)
    by_curl = json.loads(body)
    assert by_curl["status"] == "succeeded" and by_curl["description"] == "Order 1001"
    _shot(page, artifacts, "start-1280")
    watch.check("guide")
    page.locator(".merchant-tabs").get_by_role("link", name="Team").click()
    expect(page.get_by_role("heading", name="Invite someone")).to_be_visible()
    _shot(page, artifacts, "team-1280")
    watch.check("team")

    # Refund the first payment from its page.
    page.locator(".merchant-tabs").get_by_role("link", name="Overview").click()
    expect(page.locator(f"#payment-{by_curl['id']}")).to_be_visible()
    page.wait_for_timeout(700)  # the charts' first animation
    _shot(page, artifacts, "overview-1280")
    page.locator(f"#payment-{paid['id']} a").click()
    expect(page.locator("[data-money=received]")).to_have_text("20.00 USD")
    _shot(page, artifacts, "payment-1280")
    page.get_by_label("Reason").select_option("requested_by_customer")
    page.get_by_role("button", name="Refund").click()
    expect(page.get_by_text("Refunded 20.00 USD to the card")).to_be_visible()
    expect(page.locator(".payment-head [data-status]")).to_have_text("Refunded")
    expect(page.locator('[data-event="refunded"]')).to_contain_text("requested by the customer")
    assert refunded_minor(committing_engine, paid["id"]) == 2000
    watch.check("refunded")
    page.goto(f"/merchant/{mid}/payments")
    _shot(page, artifacts, "payments-1280")
    watch.check("payments")

    # The same pages at a phone's width.
    page.set_viewport_size({"width": 390, "height": 844})
    phone_pages = {
        "overview": f"/merchant/{mid}",
        "payments": f"/merchant/{mid}/payments",
        "payment": f"/merchant/{mid}/payments/{paid['id']}",
        "start": f"/merchant/{mid}/start",
        "team": f"/merchant/{mid}/team",
    }
    for name, path in phone_pages.items():
        page.goto(path)
        page.wait_for_timeout(400)
        _shot(page, artifacts, f"{name}-390")
        watch.check(f"{name} at 390")
    page.goto(f"/merchant/{mid}/keys")
    page.get_by_label("Name", exact=True).fill("Phone test")
    page.get_by_role("button", name="Create key").click()
    expect(page.get_by_text("You won't see this secret again.")).to_be_visible()
    _shot(page, artifacts, "keys-secret-390")
    watch.check("keys at 390")
    staff_page.set_viewport_size({"width": 390, "height": 844})
    staff_page.goto("/admin/merchants")
    _shot(staff_page, artifacts, "staff-390")
    staff_watch.check("staff at 390")
    context.close()
    staff_context.close()


def users_id(engine: sa.Engine, email: str) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT id FROM users WHERE email = :e"),
                            {"e": email}).scalar_one()  # fmt: skip


def refunded_minor(engine: sa.Engine, payment: str) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT refunded_minor FROM payments WHERE public_id = :p"),
                            {"p": payment}).scalar_one()  # fmt: skip
