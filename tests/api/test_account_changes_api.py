"""Changing one's own password and email over the API (issue 11 B): POST /users/me/password and
POST /users/me/email, with the account page's rules: the current password, the password policy,
the sign-up email rules (canonical form, look-alikes), the verification flow, revocation of the
other sessions, a limit on wrong passwords, audit events and notices by mail.

Through the real application on real PostgreSQL, inside the ``connection`` fixture's rolled-back
transaction; every user is new, so the per-user limits never mix between tests.
"""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from portal.api import users as users_api
from portal.services.identity import accounts, sessions, tokens
from portal.services.identity.passwords import MAX_LENGTH, verify_password
from portal.services.shared.uow import UnitOfWork
from tests.api.test_auth_api import (
    API,
    PASSWORD,
    bearer,
    cardholder,
    client_for,
    error_of,
    new_email,
    sign_in,
)

NEW_PASSWORD = "correct-horse-battery-staple-9"


# -- helpers ------------------------------------------------------------------------------------
def outbox(app: Flask) -> list[Any]:
    return list(app.extensions.get("portal.outbox", ()))


def password_hash(uow: UnitOfWork, user_id: int) -> str:
    return uow.run(  # type: ignore[no-any-return]
        lambda u: u.execute(
            "SELECT password_hash FROM users WHERE id = :id", {"id": user_id}
        ).scalar_one()
    )


def events(uow: UnitOfWork, action: str, user_id: int) -> list[Any]:
    return uow.run(
        lambda u: u.execute(
            "SELECT outcome, data FROM audit_events WHERE action = :a AND subject_id = :s"
            " ORDER BY id",
            {"a": action, "s": user_id},
        ).all()
    )


def change_password(client: FlaskClient, token: str, **body: Any) -> TestResponse:
    payload = {
        "current_password": PASSWORD,
        "password": NEW_PASSWORD,
        "password_confirmation": NEW_PASSWORD,
        **body,
    }
    return client.post(f"{API}/users/me/password", json=payload, headers=bearer(token))


def change_email(client: FlaskClient, token: str, **body: Any) -> TestResponse:
    payload = {"current_password": PASSWORD, "new_email": new_email(), **body}
    return client.post(f"{API}/users/me/email", json=payload, headers=bearer(token))


def link_token(message: Any, app: Flask) -> str:
    prefix = app.config["PUBLIC_URL"].rstrip("/") + "/auth/verify/"
    (link,) = [w for w in message.get_content().split() if w.startswith(prefix)]
    return link.removeprefix(prefix)


@pytest.fixture
def api(app: Flask, connection: Any) -> FlaskClient:
    return client_for(app)


@pytest.fixture
def holder(uow: UnitOfWork) -> accounts.UserView:
    return cardholder(uow)


@pytest.fixture
def pair(uow: UnitOfWork, holder: accounts.UserView) -> tokens.TokenPair:
    return tokens.issue_tokens(uow, user_id=holder.id, user_agent="api-test")


# -- the password -------------------------------------------------------------------------------
def test_change_password_sets_the_new_one_audits_and_mails_a_notice(
    api: FlaskClient, app: Flask, uow: UnitOfWork, holder: accounts.UserView,
    pair: tokens.TokenPair,
) -> None:  # fmt: skip
    response = change_password(api, pair.access_token)

    assert response.status_code == 204, response.get_data(as_text=True)
    assert response.get_data() == b""
    stored = password_hash(uow, holder.id)
    assert verify_password(stored, NEW_PASSWORD) and not verify_password(stored, PASSWORD)
    error_of(sign_in(client_for(app), holder.email), 401)
    other = client_for(app)
    signed_in = other.post(
        f"{API}/auth/token", json={"email": holder.email, "password": NEW_PASSWORD}
    )
    assert signed_in.status_code == 200
    (event,) = events(uow, "user.password_change", holder.id)
    assert event.outcome == "success"
    assert event.data["kept_family_id"] == str(pair.family_id)
    notice = outbox(app)[-1]
    assert notice["To"] == holder.email
    assert notice["Subject"] == "Your Portal password was changed"
    assert NEW_PASSWORD not in notice.get_content()


def test_change_password_revokes_the_other_sessions_and_token_families_only(
    api: FlaskClient, app: Flask, uow: UnitOfWork, holder: accounts.UserView,
    pair: tokens.TokenPair,
) -> None:  # fmt: skip
    web = sessions.create_web_session(
        uow, user_id=holder.id, user_agent="Firefox", ip="192.0.2.1", mfa_verified=False
    )
    other = tokens.issue_tokens(uow, user_id=holder.id, user_agent="another client")
    assert sessions.resolve_web_session(uow, token=web.token) is not None

    assert change_password(api, pair.access_token).status_code == 204

    assert sessions.resolve_web_session(uow, token=web.token) is None
    error_of(api.get(f"{API}/auth/me", headers=bearer(other.access_token)), 401)
    error_of(api.post(f"{API}/auth/refresh", json={"refresh_token": other.refresh_token}), 401)
    # The calling family stays signed in: its access token works and its refresh token renews.
    assert api.get(f"{API}/auth/me", headers=bearer(pair.access_token)).status_code == 200
    renewed = api.post(f"{API}/auth/refresh", json={"refresh_token": pair.refresh_token})
    assert renewed.status_code == 200, renewed.get_data(as_text=True)
    listed = api.get(f"{API}/auth/sessions", headers=bearer(renewed.get_json()["access_token"]))
    assert [(s["kind"], s["current"]) for s in listed.get_json()["data"]] == [("api", True)]


def test_change_password_refuses_a_wrong_current_password_and_changes_nothing(
    api: FlaskClient, app: Flask, uow: UnitOfWork, holder: accounts.UserView,
    pair: tokens.TokenPair,
) -> None:  # fmt: skip
    before = password_hash(uow, holder.id)
    web = sessions.create_web_session(
        uow, user_id=holder.id, user_agent="Firefox", ip="192.0.2.1", mfa_verified=False
    )
    mails = len(outbox(app))

    error = error_of(change_password(api, pair.access_token, current_password="not-it-at-all"), 422)

    assert (error["code"], error["param"]) == ("wrong_password", "current_password")
    assert password_hash(uow, holder.id) == before
    assert sessions.resolve_web_session(uow, token=web.token) is not None
    assert len(outbox(app)) == mails
    assert [e.outcome for e in events(uow, "user.password_change", holder.id)] == ["failure"]


@pytest.mark.parametrize(
    ("password", "confirmation", "code", "param"),
    [
        ("short", None, "password_too_short", "password"),
        ("x" * (MAX_LENGTH + 1), None, "password_too_long", "password"),
        ("password1", None, "password_too_common", "password"),
        ("<email local part>", None, "password_too_personal", "password"),
        (NEW_PASSWORD, "something-else-entirely", "password_mismatch", "password_confirmation"),
    ],
)
def test_change_password_refuses_a_weak_password_naming_the_field(
    api: FlaskClient, uow: UnitOfWork, holder: accounts.UserView, pair: tokens.TokenPair,
    password: str, confirmation: str | None, code: str, param: str,
) -> None:  # fmt: skip
    before = password_hash(uow, holder.id)
    if password == "<email local part>":
        password = holder.email.partition("@")[0]

    response = change_password(
        api, pair.access_token, password=password, password_confirmation=confirmation or password
    )

    error = error_of(response, 422)
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", code, param)
    assert password_hash(uow, holder.id) == before
    assert events(uow, "user.password_change", holder.id) == []


def test_change_password_needs_every_field(
    api: FlaskClient, holder: accounts.UserView, pair: tokens.TokenPair
) -> None:
    body = {"password": NEW_PASSWORD}
    response = api.post(f"{API}/users/me/password", json=body, headers=bearer(pair.access_token))
    error = error_of(response, 422)
    assert (error["code"], error["param"]) == ("parameter_missing", "current_password")


def test_wrong_current_passwords_are_limited_per_user_across_both_operations(
    app: Flask, connection: Any, uow: UnitOfWork, holder: accounts.UserView,
    pair: tokens.TokenPair,
) -> None:  # fmt: skip
    limit = int(users_api.REAUTH_FAILURES_PER_USER.split()[0])
    before = password_hash(uow, holder.id)
    # From several client addresses: the limit follows the user, not the address.
    statuses = [
        change_password(
            client_for(app), pair.access_token, current_password=f"wrong-{i}"
        ).status_code
        for i in range(limit - 1)
    ]
    statuses.append(
        change_email(client_for(app), pair.access_token, current_password="wrong").status_code
    )
    refused = change_password(client_for(app), pair.access_token)  # the right password

    assert statuses == [422] * limit
    error = error_of(refused, 429)
    assert error["type"] == "rate_limit_error"
    assert int(refused.headers["Retry-After"]) > 0
    assert password_hash(uow, holder.id) == before
    # Another user is not limited.
    someone = cardholder(uow)
    theirs = tokens.issue_tokens(uow, user_id=someone.id).access_token
    assert change_password(client_for(app), theirs).status_code == 204


@pytest.mark.parametrize("operation", ["password", "email"])
def test_changes_need_an_access_token(
    api: FlaskClient, uow: UnitOfWork, holder: accounts.UserView, operation: str
) -> None:
    before = password_hash(uow, holder.id)
    body = {"current_password": PASSWORD, "password": NEW_PASSWORD,
            "password_confirmation": NEW_PASSWORD, "new_email": new_email()}  # fmt: skip
    body = {k: v for k, v in body.items() if (k == "new_email") == (operation == "email")
            or k == "current_password"}  # fmt: skip

    missing = api.post(f"{API}/users/me/{operation}", json=body)
    forged = api.post(f"{API}/users/me/{operation}", json=body, headers=bearer("not-a-token"))

    assert error_of(missing, 401)["type"] == "authentication_error"
    assert error_of(forged, 401)["type"] == "authentication_error"
    assert "Bearer" in missing.headers["WWW-Authenticate"]
    assert password_hash(uow, holder.id) == before


# -- the email ----------------------------------------------------------------------------------
def test_change_email_mails_a_link_and_changes_only_once_it_is_opened(
    api: FlaskClient, app: Flask, uow: UnitOfWork, holder: accounts.UserView,
    pair: tokens.TokenPair,
) -> None:  # fmt: skip
    wanted = new_email()

    response = change_email(api, pair.access_token, new_email=f"  {wanted.upper()} ")

    assert response.status_code == 202, response.get_data(as_text=True)
    minutes = app.config["SERVICE_SETTINGS"].email_token_minutes
    assert response.get_json() == {"object": "email_change", "email": holder.email,
                                   "new_email": wanted.upper(), "status": "pending_verification",
                                   "expires_in": minutes * 60}  # fmt: skip
    # Nothing changes yet: the account keeps its address.
    me = api.get(f"{API}/users/me", headers=bearer(pair.access_token)).get_json()
    assert (me["email"], me["email_verified"]) == (holder.email, False)
    link, notice = outbox(app)[-2:]
    assert (link["To"], notice["To"]) == (wanted.upper(), holder.email)
    assert wanted.upper() in notice.get_content()
    (event,) = events(uow, "user.email_change_request", holder.id)
    assert (event.outcome, event.data["new_email"]) == ("success", wanted.upper())

    # Opening the link (the verification page) makes the change.
    opened = client_for(app).get(f"/auth/verify/{link_token(link, app)}")

    assert opened.status_code == 302, opened.get_data(as_text=True)
    me = api.get(f"{API}/users/me", headers=bearer(pair.access_token)).get_json()
    assert (me["email"], me["email_verified"]) == (wanted.upper(), True)
    assert [e.outcome for e in events(uow, "user.email_change", holder.id)] == ["success"]
    # The link works once.
    assert client_for(app).get(f"/auth/verify/{link_token(link, app)}").status_code == 404


def test_change_email_refuses_a_wrong_current_password(
    api: FlaskClient, app: Flask, uow: UnitOfWork, holder: accounts.UserView,
    pair: tokens.TokenPair,
) -> None:  # fmt: skip
    mails = len(outbox(app))

    error = error_of(change_email(api, pair.access_token, current_password="not-it-at-all"), 422)

    assert (error["code"], error["param"]) == ("wrong_password", "current_password")
    assert len(outbox(app)) == mails
    assert [e.outcome for e in events(uow, "user.email_change_request", holder.id)] == ["failure"]


@pytest.mark.parametrize("spelling", [str.upper, lambda e: e.replace("a", "\uff41", 1)])
def test_change_email_refuses_a_taken_address_in_any_spelling(
    api: FlaskClient, app: Flask, uow: UnitOfWork, pair: tokens.TokenPair, spelling: Any
) -> None:
    other = cardholder(uow, email=new_email())
    mails = len(outbox(app))

    response = change_email(api, pair.access_token, new_email=spelling(other.email))

    error = error_of(response, 409)
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error", "email_taken", "new_email",
    )  # fmt: skip
    assert len(outbox(app)) == mails


@pytest.mark.parametrize(
    "address",
    [
        "p\u043ertal-user@example.test",  # a Cyrillic o in a Latin address
        "ada@p\u043ertal.test",  # ... in the domain
        "ada\u200b@example.test",  # a zero-width space
        "\u202eada@example.test",  # a right-to-left override
        "not-an-email",
    ],
)
def test_change_email_refuses_look_alike_invisible_and_malformed_addresses(
    api: FlaskClient, app: Flask, uow: UnitOfWork, holder: accounts.UserView,
    pair: tokens.TokenPair, address: str,
) -> None:  # fmt: skip
    mails = len(outbox(app))

    error = error_of(change_email(api, pair.access_token, new_email=address), 422)

    assert (error["code"], error["param"]) == ("parameter_invalid", "new_email")
    assert len(outbox(app)) == mails
    assert events(uow, "user.email_change_request", holder.id) == []


def test_change_email_to_ones_own_address_is_refused(
    api: FlaskClient, holder: accounts.UserView, pair: tokens.TokenPair
) -> None:
    error = error_of(change_email(api, pair.access_token, new_email=holder.email.upper()), 422)

    assert (error["code"], error["param"]) == ("email_unchanged", "new_email")


def test_email_change_links_are_limited_per_user(
    app: Flask, connection: Any, holder: accounts.UserView, pair: tokens.TokenPair
) -> None:
    limit = int(users_api.EMAIL_CHANGE_MAILS_PER_USER.split()[0])

    statuses = [change_email(client_for(app), pair.access_token).status_code for _ in range(limit)]
    refused = change_email(client_for(app), pair.access_token)

    assert statuses == [202] * limit
    assert error_of(refused, 429)["type"] == "rate_limit_error"
