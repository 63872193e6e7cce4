"""Sign-in: one answer for every failure, a new session id at every sign-in, safe ``next``
targets, the second factor, and staff sent to set one up."""

from __future__ import annotations

import re
import time

import pytest
from flask import Flask

from tests.pages.conftest import (
    PageClient,
    People,
    page_text,
    sign_in,
    signed_in,
)


def _session_cookie(response) -> str:  # noqa: ANN001
    for header in response.headers.getlist("Set-Cookie"):
        if header.startswith("portal_session="):
            return header
    raise AssertionError(response.headers.getlist("Set-Cookie"))


def _failure(client: PageClient, email: str, password: str) -> tuple[int, str]:
    response = client.post("/auth/login", data={"email": email, "password": password})
    alert = re.search(r'<div class="alert alert--error" role="alert">(.*?)</div>',
                      response.get_data(as_text=True))  # fmt: skip
    assert alert, response.get_data(as_text=True)
    body = response.get_data(as_text=True).replace(email, "EMAIL")
    body = re.sub(r'"X-CSRFToken": "[^"]*"', "TOKEN", body)  # signed with a timestamp
    return response.status_code, alert.group(1) + "|" + re.sub(r"\s+", " ", body)


def test_every_sign_in_failure_gets_the_same_answer(client: PageClient, people: People) -> None:
    known = people.make()
    archived = people.make()
    people.archive(archived)

    unknown_email = _failure(client, "nobody@example.test", known.password)
    wrong_password = _failure(client, known.email, "not the password at all")
    archived_user = _failure(client, archived.email, archived.password)
    malformed = _failure(client, "not an email", known.password)

    assert unknown_email[0] == wrong_password[0] == archived_user[0] == malformed[0] == 401
    assert unknown_email[1].startswith("Email or password is incorrect.|")
    assert unknown_email[1] == wrong_password[1] == archived_user[1] == malformed[1]
    assert not signed_in(client)


def test_sign_in_lands_a_cardholder_on_the_wallet(client: PageClient, people: People) -> None:
    person = people.make()

    response = sign_in(client, person)

    assert response.status_code == 302
    assert response.headers["Location"] == "/wallet"
    page = client.get("/wallet")
    assert page.status_code == 200
    text = page_text(page)
    assert "Ada Lovelace" in text
    assert 'action="/auth/logout"' in page.get_data(as_text=True)
    # Signed in already: the sign-in page sends a cardholder to the wallet too.
    assert client.get("/auth/login").headers["Location"] == "/wallet"


def test_sign_in_lands_staff_where_they_did(client: PageClient, people: People) -> None:
    """Staff have no console page yet: they keep landing on the account page."""
    support = people.make(roles=("support",))

    response = sign_in(client, support)

    assert response.status_code == 302
    assert response.headers["Location"] != "/wallet"
    assert response.headers["Location"] in ("/auth/account", "/auth/mfa/setup")


def test_empty_fields_are_named_and_not_counted_as_failures(client: PageClient) -> None:
    response = client.post("/auth/login", data={"email": "", "password": ""})

    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert 'id="email-error">Enter an email address.' in html
    assert 'id="password-error">Enter a password.' in html


def test_session_cookie_is_httponly_lax_and_new_at_every_sign_in(
    app: Flask, client: PageClient, people: People
) -> None:
    person = people.make()
    client.get("/auth/login")  # an anonymous session (CSRF token) exists before signing in
    before = client.get_cookie("portal_session")
    assert before is not None

    first = sign_in(client, person)
    cookie = _session_cookie(first)
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Path=/" in cookie
    first_value = client.get_cookie("portal_session").value

    second = sign_in(client, person)
    second_value = client.get_cookie("portal_session").value
    assert second.status_code == 302
    assert second_value != first_value

    # The old cookies no longer sign anyone in: not the one from before signing in (session
    # fixation), nor the one the second sign-in replaced (that session was ended).
    for stale in (before.value, first_value):
        other = PageClient(app, app.response_class)
        other.set_cookie("portal_session", stale)
        assert not signed_in(other)
    assert signed_in(client)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/auth/account?tab=sessions", "/auth/account?tab=sessions"),
        ("/wallet/activity?kind=transfer", "/wallet/activity?kind=transfer"),
        ("//evil.example/steal", "/wallet"),
        ("https://evil.example/steal", "/wallet"),
        ("/\\evil.example", "/wallet"),
        ("javascript:alert(1)", "/wallet"),
        ("/auth/logout", "/wallet"),
    ],
)
def test_next_is_honoured_only_for_same_site_paths(
    client: PageClient, people: People, target: str, expected: str
) -> None:
    person = people.make()
    page = client.get("/auth/login", query_string={"next": target})

    response = sign_in(client, person, next=target)

    assert response.headers["Location"] == expected
    if expected != "/wallet":
        assert f'value="{target}"' in page.get_data(as_text=True)


def test_a_protected_page_sends_you_back_after_signing_in(
    client: PageClient, people: People
) -> None:
    person = people.make()

    bounce = client.get("/auth/account")
    assert bounce.status_code == 302
    assert bounce.headers["Location"] == "/auth/login?next=%2Fauth%2Faccount"
    response = sign_in(client, person, next="/auth/account")

    assert response.headers["Location"] == "/auth/account"


def test_a_user_with_mfa_needs_the_code_before_being_signed_in(
    client: PageClient, people: People
) -> None:
    person = people.make(with_mfa=True)

    response = sign_in(client, person, next="/auth/account?from=mfa")

    assert response.status_code == 302
    assert response.headers["Location"] == "/auth/mfa"
    assert not signed_in(client)  # the password alone signs nobody in
    page = client.get("/auth/mfa")
    assert page.status_code == 200
    assert '<label class="field__label" for="code">' in page.get_data(as_text=True)

    wrong = client.post("/auth/mfa", data={"code": "000000"})
    assert wrong.status_code == 401
    assert "That code is not right." in page_text(wrong)
    assert not signed_in(client)

    right = client.post("/auth/mfa", data={"code": person.code()})
    assert right.status_code == 302
    assert right.headers["Location"] == "/auth/account?from=mfa"
    assert signed_in(client)


def test_a_recovery_code_works_once(
    client: PageClient, another_client: PageClient, people: People
) -> None:
    person = people.make(with_mfa=True)
    code = person.recovery_codes[0]

    sign_in(client, person)
    response = client.post("/auth/mfa", data={"code": code}, follow_redirects=True)
    assert response.request.path == "/wallet"
    assert "You signed in with a recovery code; 9 left." in page_text(response)

    sign_in(another_client, person)
    reused = another_client.post("/auth/mfa", data={"code": code})
    assert reused.status_code == 401
    assert not signed_in(another_client)


def test_a_stale_pending_sign_in_must_start_again(client: PageClient, people: People) -> None:
    person = people.make(with_mfa=True)
    sign_in(client, person)
    with client.session_transaction() as session:
        session["auth_pending"] = {**session["auth_pending"], "expires": int(time.time()) - 1}

    response = client.post("/auth/mfa", data={"code": person.code()}, follow_redirects=True)

    assert response.request.path == "/auth/login"
    assert "Signing in took too long" in page_text(response)
    assert not signed_in(client)


def test_the_second_factor_page_without_a_pending_sign_in_goes_to_sign_in(
    client: PageClient,
) -> None:
    response = client.get("/auth/mfa")

    assert response.status_code == 302
    assert response.headers["Location"] == "/auth/login"


def test_staff_without_mfa_are_sent_to_set_it_up_before_any_page(
    client: PageClient, people: People
) -> None:
    admin = people.make(roles=("admin",))

    response = sign_in(client, admin, next="/auth/account")

    assert response.status_code == 302
    assert response.headers["Location"] == "/auth/mfa/setup?next=/auth/account"
    # Signed in, but every login_required page (staff pages included) sends them to enrol.
    blocked = client.get("/auth/account")
    assert blocked.status_code == 302
    assert blocked.headers["Location"].startswith("/auth/mfa/setup?next=")
    intro = client.get(response.headers["Location"])
    assert "Your role can reach other people" in page_text(intro)

    # The password alone is not enough: the enrolment code an administrator made is asked for.
    assert 'name="enrolment_code"' in intro.get_data(as_text=True)
    refused = client.post("/auth/mfa/setup", data={"next": "/auth/account"})
    assert refused.status_code == 422 and 'id="totp-secret"' not in refused.get_data(as_text=True)
    code = people.enrolment_code(admin)
    started = client.post("/auth/mfa/setup", data={"next": "/auth/account",
                                                   "enrolment_code": code})  # fmt: skip
    assert started.status_code == 200
    secret = re.search(r'id="totp-secret" class="secret__value">([A-Z2-7 ]+)<',
                       started.get_data(as_text=True)).group(1).replace(" ", "")  # fmt: skip
    assert re.search(r'<div class="qr"[^>]*><svg', started.get_data(as_text=True))  # the QR, inline

    import pyotp

    done = client.post(
        "/auth/mfa/setup/confirm",
        data={"code": pyotp.TOTP(secret).now(), "secret": secret, "next": "/auth/account"},
    )
    assert done.status_code == 200
    assert done.headers["Cache-Control"] == "no-store"  # recovery codes stay out of caches
    codes = re.findall(r"<li><code>([0-9a-z-]{29})</code></li>", done.get_data(as_text=True))
    assert len(codes) == 10
    assert 'href="/auth/account"' in done.get_data(as_text=True)
    assert client.get("/auth/account").status_code == 200  # the session passed its step up


def test_staff_with_mfa_pass_it_at_sign_in(client: PageClient, people: People) -> None:
    support = people.make(roles=("support",), with_mfa=True)

    assert sign_in(client, support).headers["Location"] == "/auth/mfa"
    response = client.post("/auth/mfa", data={"code": support.code()})

    assert response.headers["Location"] == "/auth/account"
    assert signed_in(client)


def test_a_signed_in_visitor_skips_the_sign_in_page(client: PageClient, people: People) -> None:
    person = people.make()
    sign_in(client, person)

    response = client.get("/auth/login", query_string={"next": "/auth/account?x=1"})

    assert response.status_code == 302
    assert response.headers["Location"] == "/auth/account?x=1"
