"""Sign-up: the form, the service's refusals next to their fields, signing in unverified and
the verification link."""

from __future__ import annotations

from collections import deque
from email.message import EmailMessage

from flask import Flask

from tests.pages.conftest import (
    PASSWORD,
    PageClient,
    last_mail,
    link_in,
    page_text,
    signed_in,
)


def register(client: PageClient, email: str, **overrides: str):  # noqa: ANN201
    data = {
        "first_name": "Grace",
        "last_name": "Hopper",
        "email": email,
        "password": PASSWORD,
        "password_confirmation": PASSWORD,
    }
    data.update(overrides)
    return client.post("/auth/register", data=data)


def test_register_page_labels_every_input(client: PageClient) -> None:
    response = client.get("/auth/register")

    assert response.status_code == 200
    html = response.get_data(as_text=True)
    for name in ("first_name", "last_name", "email", "password", "password_confirmation"):
        assert f'<label class="field__label" for="{name}">' in html
        assert f'id="{name}"' in html
    assert 'autocomplete="new-password"' in html


def test_sign_up_signs_in_unverified_and_mails_a_verification_link(
    app: Flask, client: PageClient, outbox: deque[EmailMessage]
) -> None:
    response = register(client, "grace@example.test")

    assert response.status_code == 302
    assert response.headers["Location"] == "/auth/account"
    account = client.get("/auth/account")
    assert account.status_code == 200
    text = page_text(account)
    assert "Check your email" in text
    assert "Not verified" in text
    assert "Grace Hopper" in text  # the nav names the signed-in user

    message = last_mail(outbox, "grace@example.test")
    assert "Confirm your email address" in message["Subject"]
    assert message.get_content().count(app.config["PUBLIC_URL"].rstrip("/") + "/auth/verify/") == 1
    link = link_in(message, "/auth/verify/")

    verified = client.get(link)
    assert verified.status_code == 302
    assert "Verified" in page_text(client.get("/auth/account"))

    again = client.get(link)  # single use
    assert again.status_code == 404
    assert "This link has expired" in page_text(again)


def test_verification_link_works_without_being_signed_in(
    client: PageClient, another_client: PageClient, outbox: deque[EmailMessage]
) -> None:
    register(client, "lin@example.test")
    link = link_in(last_mail(outbox, "lin@example.test"), "/auth/verify/")

    response = another_client.get(link, follow_redirects=True)

    assert response.status_code == 200
    assert "lin@example.test is verified" in page_text(response)
    assert response.request.path == "/auth/login"


def test_an_invalid_verification_link_gets_a_friendly_page(client: PageClient) -> None:
    response = client.get("/auth/verify/not-a-real-token")

    assert response.status_code == 404
    text = page_text(response)
    assert "This link has expired" in text
    assert "Sign in to send a new link" in text


def test_refusals_are_shown_next_to_their_field(client: PageClient) -> None:
    mismatch = register(client, "x@example.test", password_confirmation="something else 123")
    common = register(
        client, "y@example.test", password="password1", password_confirmation="password1"
    )
    bad_email = register(client, "not-an-email")

    assert mismatch.status_code == 422
    assert 'id="password_confirmation-error">The passwords do not match.' in mismatch.get_data(
        as_text=True
    )
    assert 'aria-invalid="true"' in mismatch.get_data(as_text=True)
    assert common.status_code == 422
    assert 'id="password-error">This password is too common' in common.get_data(as_text=True)
    assert bad_email.status_code == 422
    assert 'id="email-error">Enter a valid email address.' in bad_email.get_data(as_text=True)
    assert not signed_in(client)


def test_missing_fields_are_named(client: PageClient) -> None:
    response = client.post("/auth/register", data={"email": "z@example.test"})

    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert 'id="first_name-error">Enter your first name.' in html
    assert 'id="password-error">Choose a password.' in html
    assert 'value="z@example.test"' in html  # what was typed is kept (but never a password)


def test_an_email_already_registered_is_refused_on_the_email_field(
    client: PageClient, another_client: PageClient
) -> None:
    register(client, "taken@example.test")

    response = register(another_client, "TAKEN@example.test")

    assert response.status_code == 422
    assert 'id="email-error">An account with this email already exists.' in response.get_data(
        as_text=True
    )
    assert not signed_in(another_client)


def test_a_signed_in_visitor_is_sent_to_the_account_page(client: PageClient) -> None:
    register(client, "again@example.test")

    response = client.get("/auth/register")

    assert response.status_code == 302
    assert response.headers["Location"] == "/auth/account"
