"""Signing out: POST only, with the CSRF token; the session ends on the server."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from flask import Flask

from tests.pages.conftest import PageClient, People, htmx, page_text, sign_in, signed_in


def test_sign_out_ends_the_session_on_the_server(
    app: Flask, client: PageClient, people: People
) -> None:
    person = people.make()
    sign_in(client, person)
    cookie = client.get_cookie("portal_session").value

    response = client.post("/auth/logout", follow_redirects=True)

    assert response.request.path == "/auth/login"
    assert "You have signed out." in page_text(response)
    assert not signed_in(client)
    replay = PageClient(app, app.response_class)
    replay.set_cookie("portal_session", cookie)
    assert not signed_in(replay)  # the old cookie is dead, not just forgotten


def test_a_get_does_not_sign_out(client: PageClient, people: People) -> None:
    sign_in(client, people.make())

    response = client.get("/auth/logout")

    assert response.status_code == 405
    assert signed_in(client)


def test_htmx_sign_out_redirects_the_whole_page(client: PageClient, people: People) -> None:
    sign_in(client, people.make())

    response = client.post("/auth/logout", headers=htmx())

    assert response.headers["HX-Redirect"] == "/auth/login"
    assert not signed_in(client)


@pytest.fixture
def csrf_on(app: Flask) -> Iterator[None]:
    app.config["WTF_CSRF_ENABLED"] = True
    try:
        yield
    finally:
        app.config["WTF_CSRF_ENABLED"] = False


def test_a_post_without_the_csrf_token_is_refused(
    client: PageClient, people: People, csrf_on: None
) -> None:
    """The one test with CSRF protection on: a state change without the token is a 400."""
    person = people.make()
    login_page = client.get("/auth/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', login_page).group(1)
    no_token = client.post("/auth/login", data={"email": person.email, "password": person.password})
    assert no_token.status_code == 400
    assert "This form had expired, so nothing was done." in page_text(no_token)
    assert 'name="csrf_token"' in no_token.get_data(as_text=True)  # a fresh token to retry
    signed = client.post(
        "/auth/login",
        data={"email": person.email, "password": person.password, "csrf_token": token},
    )
    assert signed.status_code == 302

    account = client.get("/auth/account").get_data(as_text=True)
    header_token = re.search(r'"X-CSRFToken": "([^"]+)"', account).group(1)
    refused = client.post("/auth/logout")
    assert refused.status_code == 400
    assert "nothing was done" in page_text(refused)
    refused_htmx = client.post("/auth/logout", headers=htmx())
    assert refused_htmx.status_code == 400
    assert 'id="flash" hx-swap-oob="true"' in refused_htmx.get_data(as_text=True)
    assert "<html" not in refused_htmx.get_data(as_text=True)
    assert client.get("/auth/account").status_code == 200  # still signed in

    # htmx buttons send the token from <body hx-headers>; plain forms carry the hidden field.
    accepted = client.post("/auth/logout", headers={"X-CSRFToken": header_token})
    assert accepted.status_code == 302
    assert client.get("/auth/account").status_code == 302
