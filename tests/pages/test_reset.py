"""Forgotten password: the same answer whether or not the email exists, a single-use link,
and every session ended by the reset."""

from __future__ import annotations

import re
from collections import deque
from email.message import EmailMessage

from flask import Flask

from tests.pages.conftest import (
    NEW_PASSWORD,
    PageClient,
    People,
    last_mail,
    link_in,
    new_client,
    page_text,
    sign_in,
    signed_in,
)


def _answer(client: PageClient, email: str) -> tuple[int, str]:
    response = client.post("/auth/forgot", data={"email": email})
    text = re.sub(r'"X-CSRFToken": "[^"]*"', "TOKEN", page_text(response))
    return response.status_code, text.replace(email, "EMAIL")


def test_forgot_answers_the_same_whether_or_not_the_email_exists(
    client: PageClient, people: People, outbox: deque[EmailMessage]
) -> None:
    person = people.make()

    known = _answer(client, person.email)
    unknown = _answer(client, "nobody-here@example.test")
    malformed = _answer(client, "no-at-sign")

    assert known[0] == unknown[0] == malformed[0] == 200
    assert known[1] == unknown[1] == malformed[1]
    assert "Check your email" in known[1]
    assert [m["To"] for m in outbox] == [person.email]


def test_reset_link_sets_a_new_password_once_and_ends_every_session(
    app: Flask, client: PageClient, people: People, outbox: deque[EmailMessage]
) -> None:
    person = people.make()
    elsewhere = new_client(app, "192.0.2.30")
    sign_in(elsewhere, person)
    assert signed_in(elsewhere)

    client.post("/auth/forgot", data={"email": person.email})
    message = last_mail(outbox, person.email)
    assert message["Subject"] == "Reset your Portal password"
    link = link_in(message, "/auth/reset/")
    form = client.get(link)
    assert form.status_code == 200
    assert '<label class="field__label" for="password">' in form.get_data(as_text=True)

    mismatch = client.post(link, data={"password": NEW_PASSWORD, "password_confirmation": "x"})
    assert mismatch.status_code == 422
    assert "The passwords do not match." in page_text(mismatch)

    done = client.post(
        link, data={"password": NEW_PASSWORD, "password_confirmation": NEW_PASSWORD},
        follow_redirects=True,
    )  # fmt: skip
    assert done.request.path == "/auth/login"
    assert "Your password is changed" in page_text(done)
    assert not signed_in(elsewhere)  # every session ended

    again = client.post(
        link, data={"password": NEW_PASSWORD, "password_confirmation": NEW_PASSWORD}
    )
    assert again.status_code == 404
    assert "This link has expired" in page_text(again)

    old = client.post("/auth/login", data={"email": person.email, "password": person.password})
    assert old.status_code == 401
    person.password = NEW_PASSWORD
    assert sign_in(client, person).status_code == 302
    assert "Your Portal password was reset" in [m["Subject"] for m in outbox]


def test_an_invalid_reset_link_gets_a_friendly_page(client: PageClient) -> None:
    response = client.post(
        "/auth/reset/made-up-token",
        data={"password": NEW_PASSWORD, "password_confirmation": NEW_PASSWORD},
    )

    assert response.status_code == 404
    text = page_text(response)
    assert "This link has expired" in text
    assert "Ask for a new link" in text


def test_the_forgot_page_has_a_labelled_email_field(client: PageClient) -> None:
    html = client.get("/auth/forgot").get_data(as_text=True)

    assert '<label class="field__label" for="email">Email address</label>' in html
    assert 'type="email"' in html
