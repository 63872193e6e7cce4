"""The account page: profile, password and email changes, the second factor, and "sessions
and devices" (plain posts and htmx fragments)."""

from __future__ import annotations

import re
from collections import deque
from email.message import EmailMessage

import sqlalchemy as sa
from flask import Flask

from portal.domain.ids import is_public_id, new_public_id
from portal.services.identity import tokens
from tests.pages.conftest import (
    NEW_PASSWORD,
    PageClient,
    People,
    htmx,
    last_mail,
    link_in,
    new_client,
    page_text,
    sign_in,
    signed_in,
)


def _session_ids(html: str) -> list[str]:
    return re.findall(r'action="/auth/sessions/web/(ses_\w+)/revoke"', html)


def _current_id(html: str) -> str:
    """The id of the session marked as this one (its button asks "Sign out of this device?")."""
    found = re.search(
        r'action="/auth/sessions/web/(ses_\w+)/revoke"[^>]*hx-confirm="Sign out of this device\?"',
        html,
    )
    assert found, html
    return found.group(1)


def test_the_account_page_needs_a_signed_in_user(client: PageClient) -> None:
    response = client.get("/auth/account")

    assert response.status_code == 302
    assert response.headers["Location"].startswith("/auth/login?next=")


def test_an_htmx_request_without_a_session_redirects_the_whole_page(client: PageClient) -> None:
    response = client.post("/auth/sessions/revoke-others", headers=htmx())

    assert response.status_code == 401
    assert response.headers["HX-Redirect"].startswith("/auth/login?next=")


def test_the_account_page_shows_the_profile_and_every_section(
    client: PageClient, people: People
) -> None:
    person = people.make()
    sign_in(client, person)

    response = client.get("/auth/account")

    assert response.status_code == 200
    assert "HX-Request" in response.headers["Vary"]
    text = page_text(response)
    for heading in ("Profile", "Two-step verification", "Change password",
                    "Change email address", "Sessions and devices"):  # fmt: skip
        assert f">{heading}</h2>" in text
    assert person.email in text
    assert "Verified" in text
    assert "This device" in text


def test_change_password_needs_the_current_one(client: PageClient, people: People) -> None:
    person = people.make()
    sign_in(client, person)

    response = client.post(
        "/auth/account/password",
        data={"pw-current_password": "not it at all", "pw-password": NEW_PASSWORD,
              "pw-password_confirmation": NEW_PASSWORD},
    )  # fmt: skip

    assert response.status_code == 422
    assert 'id="pw-current_password-error">The password is not right.' in response.get_data(
        as_text=True
    )
    assert "<html" in response.get_data(as_text=True)  # the whole page without htmx


def test_wrong_current_passwords_on_account_forms_count_as_failed_sign_ins(
    client: PageClient, people: People
) -> None:
    """A stolen session cannot guess the password through the account page: a wrong current
    password on the password and email forms (and the recovery-code and second-factor ones)
    counts against the sign-in limits (10 per 15 minutes per account by default), then 429
    with Retry-After."""
    person = people.make()
    sign_in(client, person)
    wrong = [
        ("/auth/account/password", {"pw-current_password": "not it at all",
                                    "pw-password": NEW_PASSWORD,
                                    "pw-password_confirmation": NEW_PASSWORD}),
        ("/auth/account/email", {"em-password": "not it at all",
                                 "em-new_email": "other-address@example.test"}),
    ]  # fmt: skip
    statuses = [client.post(wrong[i % 2][0], data=wrong[i % 2][1]).status_code for i in range(11)]
    assert statuses == [422] * 10 + [429], statuses
    limited = client.post(wrong[0][0], data=wrong[0][1])
    assert limited.status_code == 429 and "Retry-After" in limited.headers
    # The right password is still refused while the limit lasts (nothing to guess with).
    right = {"pw-current_password": person.password, "pw-password": NEW_PASSWORD,
             "pw-password_confirmation": NEW_PASSWORD}  # fmt: skip
    assert client.post("/auth/account/password", data=right).status_code == 429


def test_change_password_signs_out_every_other_session(
    app: Flask, client: PageClient, people: People, outbox: deque[EmailMessage]
) -> None:
    person = people.make()
    other = new_client(app, "192.0.2.40")
    sign_in(other, person)
    sign_in(client, person)

    response = client.post(
        "/auth/account/password",
        data={"pw-current_password": person.password, "pw-password": NEW_PASSWORD,
              "pw-password_confirmation": NEW_PASSWORD},
        follow_redirects=True,
    )  # fmt: skip

    assert response.request.path == "/auth/account"
    assert "Every other session and device is signed out" in page_text(response)
    assert signed_in(client)
    assert not signed_in(other)
    assert last_mail(outbox, person.email)["Subject"] == "Your Portal password was changed"
    person.password = NEW_PASSWORD
    assert sign_in(new_client(app), person).status_code == 302


def test_change_password_with_htmx_answers_fragments(
    app: Flask, client: PageClient, people: People
) -> None:
    person = people.make()
    sign_in(new_client(app, "192.0.2.41"), person)
    sign_in(client, person)

    bad = client.post(
        "/auth/account/password", headers=htmx(),
        data={"pw-current_password": person.password, "pw-password": "short",
              "pw-password_confirmation": "short"},
    )  # fmt: skip
    good = client.post(
        "/auth/account/password", headers=htmx(),
        data={"pw-current_password": person.password, "pw-password": NEW_PASSWORD,
              "pw-password_confirmation": NEW_PASSWORD},
    )  # fmt: skip

    assert bad.status_code == 422
    bad_html = bad.get_data(as_text=True)
    assert "<html" not in bad_html
    assert bad_html.lstrip().startswith('<form class="form" id="password-form"')
    assert 'id="pw-password-error">Use at least 8 characters.' in bad_html
    assert good.status_code == 200
    good_html = good.get_data(as_text=True)
    assert "<html" not in good_html
    assert "HX-Request" in good.headers["Vary"]
    assert (
        '<div id="flash" class="flash-region" aria-live="polite" hx-swap-oob="true">' in good_html
    )
    assert 'id="sessions" aria-labelledby="sessions-title" hx-swap-oob="true"' in good_html
    assert len(_session_ids(good_html)) == 1  # only this session is left


def test_change_email_takes_effect_only_once_the_new_address_is_verified(
    client: PageClient, people: People, outbox: deque[EmailMessage]
) -> None:
    person = people.make()
    sign_in(client, person)

    wrong = client.post(
        "/auth/account/email", data={"em-new_email": "new@example.test", "em-password": "nope!"}
    )
    assert wrong.status_code == 422
    assert 'id="em-password-error">The password is not right.' in wrong.get_data(as_text=True)

    response = client.post(
        "/auth/account/email",
        data={"em-new_email": "new@example.test", "em-password": person.password},
        follow_redirects=True,
    )
    assert "we sent a link to new@example.test" in page_text(response)
    assert person.email in page_text(response)  # unchanged until verified
    link = link_in(last_mail(outbox, "new@example.test"), "/auth/verify/")
    assert "is changing" in last_mail(outbox, person.email)["Subject"]

    client.get(link)

    text = page_text(client.get("/auth/account"))
    assert "new@example.test" in text
    assert person.email not in text


def test_change_email_refuses_an_address_in_use(client: PageClient, people: People) -> None:
    person = people.make()
    other = people.make()
    sign_in(client, person)

    response = client.post(
        "/auth/account/email", headers=htmx(),
        data={"em-new_email": other.email, "em-password": person.password},
    )  # fmt: skip

    assert response.status_code == 422
    assert 'id="em-new_email-error">An account with this email already exists.' in (
        response.get_data(as_text=True)
    )


def test_resend_verification_email(
    client: PageClient, people: People, outbox: deque[EmailMessage]
) -> None:
    person = people.make(verified=False)
    sign_in(client, person)
    assert "Resend verification email" in page_text(client.get("/auth/account"))

    response = client.post("/auth/account/verify-email", headers=htmx())

    assert response.status_code == 200
    assert f"We sent a new verification link to {person.email}" in page_text(response)
    link = link_in(last_mail(outbox, person.email), "/auth/verify/")
    client.get(link)
    assert "Resend verification email" not in page_text(client.get("/auth/account"))


def test_sessions_list_marks_this_one_and_revokes_another(
    app: Flask, client: PageClient, people: People
) -> None:
    person = people.make()
    other = new_client(app, "192.0.2.50")
    sign_in(other, person)
    sign_in(client, person)
    page = client.get("/auth/account").get_data(as_text=True)
    ids = _session_ids(page)
    assert len(ids) == 2
    assert page.count("This device") == 1
    assert "hx-confirm=" in page
    current = _current_id(page)
    theirs = next(i for i in ids if i != current)

    response = client.post(f"/auth/sessions/web/{theirs}/revoke", headers=htmx())

    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert html.lstrip().startswith('<section class="panel panel--wide" id="sessions"')
    assert _session_ids(html) == [current]
    assert "That session is signed out." in html
    assert not signed_in(other)
    assert signed_in(client)


def test_revoking_without_javascript_redirects_back(
    app: Flask, client: PageClient, people: People
) -> None:
    person = people.make()
    other = new_client(app, "192.0.2.51")
    sign_in(other, person)
    sign_in(client, person)
    page = client.get("/auth/account").get_data(as_text=True)
    current = _current_id(page)
    (theirs,) = [i for i in _session_ids(page) if i != current]

    revoke_theirs = client.post(f"/auth/sessions/web/{theirs}/revoke")
    assert revoke_theirs.headers["Location"] == "/auth/account#sessions"
    assert not signed_in(other)
    assert signed_in(client)

    revoke_mine = client.post(f"/auth/sessions/web/{current}/revoke")
    assert revoke_mine.headers["Location"] == "/auth/login"  # revoking this one signs out
    assert not signed_in(client)


def test_revoking_the_current_session_with_htmx_signs_out(
    client: PageClient, people: People
) -> None:
    sign_in(client, people.make())
    (current,) = _session_ids(client.get("/auth/account").get_data(as_text=True))

    response = client.post(f"/auth/sessions/web/{current}/revoke", headers=htmx())

    assert response.headers["HX-Redirect"] == "/auth/login"
    assert not signed_in(client)


def test_someone_elses_session_cannot_be_revoked(
    app: Flask, client: PageClient, people: People
) -> None:
    victim = people.make()
    theirs = new_client(app, "192.0.2.52")
    sign_in(theirs, victim)
    (their_id,) = _session_ids(theirs.get("/auth/account").get_data(as_text=True))
    sign_in(client, people.make())

    response = client.post(f"/auth/sessions/web/{their_id}/revoke")
    internal = people.connection.execute(
        sa.text("SELECT id FROM web_sessions WHERE public_id = :p"), {"p": their_id}
    ).scalar_one()
    by_number = client.post(f"/auth/sessions/web/{internal}/revoke")  # an internal id names none
    unknown = client.post(f"/auth/sessions/web/{new_public_id('session')}/revoke")

    assert is_public_id("session", their_id)
    assert response.status_code == by_number.status_code == unknown.status_code == 404
    assert signed_in(theirs)


def test_api_token_families_are_listed_and_revocable(client: PageClient, people: People) -> None:
    person = people.make()
    pair = tokens.issue_tokens(people.uow(), user_id=person.id, user_agent="curl/8.5.0")
    sign_in(client, person)
    page = client.get("/auth/account").get_data(as_text=True)
    family = re.search(r'action="/auth/sessions/api/([0-9a-f-]{36})/revoke"', page).group(1)
    assert "API access · curl" in page

    response = client.post(f"/auth/sessions/api/{family}/revoke", headers=htmx())

    assert response.status_code == 200
    assert "/auth/sessions/api/" not in response.get_data(as_text=True)
    from portal.domain.errors import Unauthenticated

    try:
        tokens.refresh(people.uow(), refresh_token=pair.refresh_token)
    except Unauthenticated:
        pass
    else:
        raise AssertionError("the revoked family still refreshes")


def test_sign_out_everywhere_else(app: Flask, client: PageClient, people: People) -> None:
    person = people.make()
    others = [new_client(app, f"192.0.2.{60 + n}") for n in range(2)]
    for other in others:
        sign_in(other, person)
    sign_in(client, person)

    response = client.post("/auth/sessions/revoke-others", follow_redirects=True)

    assert "Every other session and device is signed out." in page_text(response)
    assert len(_session_ids(response.get_data(as_text=True))) == 1
    assert signed_in(client)
    assert not any(signed_in(other) for other in others)


def test_set_up_mfa_from_the_account_page_then_regenerate_and_turn_off(
    client: PageClient, people: People, outbox: deque[EmailMessage]
) -> None:
    import pyotp

    person = people.make()
    sign_in(client, person)
    assert "Set up two-step verification" in page_text(client.get("/auth/account"))

    started = client.post("/auth/mfa/setup").get_data(as_text=True)
    secret = (
        re.search(r'id="totp-secret" class="secret__value">([A-Z2-7 ]+)<', started)
        .group(1)
        .replace(" ", "")
    )
    wrong = client.post("/auth/mfa/setup/confirm", data={"code": "123456", "secret": secret})
    assert wrong.status_code == 422
    assert "That code is not right" in page_text(wrong)
    assert secret in wrong.get_data(as_text=True)  # the same key is shown again, with its QR
    assert re.search(r'<div class="qr"[^>]*><svg', wrong.get_data(as_text=True))
    done = client.post(
        "/auth/mfa/setup/confirm", data={"code": pyotp.TOTP(secret).now(), "secret": secret}
    )
    assert done.status_code == 200
    assert len(re.findall(r"<li><code>", done.get_data(as_text=True))) == 10
    assert "Two-step verification is on" in [m["Subject"] for m in outbox]

    account = page_text(client.get("/auth/account"))
    assert "You have 10 unused recovery codes." in account

    bad = client.post("/auth/mfa/recovery-codes", headers=htmx(), data={"rc-password": "no"})
    assert bad.status_code == 422
    assert 'id="rc-password-error">The password is not right.' in bad.get_data(as_text=True)
    fresh = client.post(
        "/auth/mfa/recovery-codes", headers=htmx(), data={"rc-password": person.password}
    )
    assert fresh.status_code == 200
    assert fresh.get_data(as_text=True).lstrip().startswith('<section class="panel" id="mfa"')
    assert len(re.findall(r"<li><code>", fresh.get_data(as_text=True))) == 10

    off = client.post("/auth/mfa/disable", data={"off-password": person.password},
                      follow_redirects=True)  # fmt: skip
    assert "Two-step verification is off." in page_text(off)
    assert "Set up two-step verification" in page_text(off)


def test_the_setup_page_without_a_session_goes_to_sign_in(client: PageClient) -> None:
    response = client.get("/auth/mfa/setup")

    assert response.status_code == 302
    assert response.headers["Location"].startswith("/auth/login")
