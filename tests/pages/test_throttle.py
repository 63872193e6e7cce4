"""Throttling of failed sign-ins: per client address, per account for unknown browsers, and the
device cookie that keeps a real user's own browser signing in while their account is attacked.
"""

from __future__ import annotations

import base64
import itertools
from collections import deque
from email.message import EmailMessage

from flask import Flask

from portal.auth.throttle import DEVICE_COOKIE
from tests.pages.conftest import (
    PageClient,
    People,
    new_client,
    page_text,
    sign_in,
    signed_in,
)

_addresses = (f"198.51.100.{n}" for n in itertools.count(1))


def fail(client: PageClient, email: str) -> int:
    response = client.post("/auth/login", data={"email": email, "password": "wrong password!"})
    return response.status_code


def test_twenty_failures_a_minute_from_one_address_then_429(app: Flask, client: PageClient) -> None:
    statuses = [fail(client, f"guess{n}@example.test") for n in range(20)]
    throttled = client.post(
        "/auth/login", data={"email": "guess21@example.test", "password": "wrong password!"}
    )

    assert statuses == [401] * 20
    assert throttled.status_code == 429
    assert 0 < int(throttled.headers["Retry-After"]) <= 60
    text = page_text(throttled)
    assert "Too many failed sign-in attempts" in text
    assert 'name="email"' in throttled.get_data(as_text=True)  # the form is still there
    # Another address is not affected.
    assert fail(new_client(app, "203.0.113.9"), "guess22@example.test") == 401


def test_successful_sign_ins_are_not_counted(client: PageClient, people: People) -> None:
    person = people.make()
    for n in range(19):
        assert fail(client, f"miss{n}@example.test") == 401
    for _ in range(5):
        response = sign_in(client, person)
        assert response.status_code == 302
        client.post("/auth/logout")

    assert fail(client, "miss19@example.test") == 401  # the 20th failure is still answered
    assert fail(client, "miss20@example.test") == 429


def test_failed_second_factor_codes_count_too(client: PageClient, people: People) -> None:
    person = people.make(with_mfa=True)
    sign_in(client, person)

    statuses = [client.post("/auth/mfa", data={"code": "000000"}).status_code for _ in range(10)]
    throttled = client.post("/auth/mfa", data={"code": person.code()})

    assert statuses == [401] * 10  # 10 per account per 15 minutes, before the address limit
    assert throttled.status_code == 429
    assert "Retry-After" in throttled.headers
    assert not signed_in(client)


def test_an_attacked_account_still_signs_in_from_its_own_browser(
    app: Flask, people: People
) -> None:
    person = people.make()
    own_browser = new_client(app, "192.0.2.10")
    assert sign_in(own_browser, person).status_code == 302
    device = own_browser.get_cookie(DEVICE_COOKIE)
    assert device is not None
    assert device.http_only
    assert device.same_site == "Lax"
    own_browser.post("/auth/logout")

    # An attacker spreads guesses over many addresses: the per-address limit never trips, the
    # per-account limit does.
    for _ in range(10):
        assert fail(new_client(app, next(_addresses)), person.email) == 401
    assert fail(new_client(app, next(_addresses)), person.email) == 429

    # A browser the account was never used from waits, even with the right password...
    stranger = new_client(app, next(_addresses))
    blocked = sign_in(stranger, person)
    assert blocked.status_code == 429
    assert int(blocked.headers["Retry-After"]) > 0
    assert not signed_in(stranger)
    # ...the user's own browser does not.
    assert sign_in(own_browser, person).status_code == 302
    assert signed_in(own_browser)


def test_the_device_cookie_counts_its_own_failures(app: Flask, people: People) -> None:
    person = people.make()
    browser = new_client(app, "192.0.2.20")
    sign_in(browser, person)
    browser.post("/auth/logout")

    for n in range(10):
        assert (
            fail(new_client(app, f"192.0.2.{100 + n}") if n % 2 else browser, person.email) == 401
        )
    # Five of those were the trusted browser's own failures; five were strangers'. Neither
    # bucket is full, so both still get answers.
    assert fail(new_client(app, "192.0.2.200"), person.email) == 401
    for _ in range(5):
        fail(browser, person.email)
    assert fail(browser, person.email) == 429  # ten failures from the trusted browser itself


def test_a_forged_device_cookie_trusts_nothing(app: Flask, people: People) -> None:
    person = people.make()
    for _ in range(10):
        fail(new_client(app, next(_addresses)), person.email)
    forger = new_client(app, next(_addresses))
    forger.set_cookie(DEVICE_COOKIE, '{"d": "x", "a": ["anything"]}')

    assert sign_in(forger, person).status_code == 429


def test_the_device_cookie_names_no_email_address(app: Flask, people: People) -> None:
    person = people.make()
    browser = new_client(app)

    sign_in(browser, person)

    value = browser.get_cookie(DEVICE_COOKIE).value
    payload = value.split(".")[0]
    decoded = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    assert person.email.encode() not in decoded
    assert person.email.split("@")[0].encode() not in decoded


def test_reset_links_are_throttled_alike_for_known_and_unknown_addresses(
    app: Flask, client: PageClient, people: People, outbox: deque[EmailMessage]
) -> None:
    person = people.make()
    another_client = new_client(app, "203.0.113.50")

    known = [
        client.post("/auth/forgot", data={"email": person.email}).status_code for _ in range(6)
    ]
    unknown = [
        another_client.post("/auth/forgot", data={"email": "ghost@example.test"}).status_code
        for _ in range(6)
    ]

    assert known == unknown == [200] * 5 + [429]
    assert sum(1 for m in outbox if m["To"] == person.email) == 5
