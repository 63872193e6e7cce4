"""Single sign-on through the pages, against a real OpenID Connect provider on 127.0.0.1: the
browser goes Portal -> provider -> Portal (``requests`` plays the browser at the provider, the
Flask test client at Portal), and the callback exchanges the code and validates the ID token."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any
from urllib.parse import urlencode

import pyotp
import pytest
from flask import Flask
from flask.testing import FlaskClient

from portal.services.identity import mfa, sessions, users
from portal.services.identity.accounts import UserView, get_user_view
from portal.services.shared.uow import UnitOfWork
from portal.web.auth import PENDING_KEY as MFA_PENDING_KEY
from tests.conftest import SYSTEM, Clock, Factory
from tests.sso.conftest import come_back, go_to_provider, query, sign_in_flow
from tests.sso.provider import Identity, Provider


# -- helpers -------------------------------------------------------------------------------------
def cookie_session(client: FlaskClient) -> dict[str, Any]:
    with client.session_transaction() as s:
        return dict(s)


def signed_in_user(client: FlaskClient, uow: UnitOfWork) -> sessions.SessionInfo | None:
    """The live server-side session behind the client's cookie, if any."""
    token = cookie_session(client).get("sid")
    return None if token is None else sessions.resolve_web_session(uow, token=token)


def rows(uow: UnitOfWork, sql: str, **params: Any) -> list[Any]:
    return uow.run(lambda u: u.execute(sql, params).all())


def user_by_email(uow: UnitOfWork, email: str) -> Any:
    found = rows(
        uow,
        "SELECT id, password_hash, email_verified_at FROM users WHERE lower(email) = lower(:e)",
        e=email,
    )
    return found[0] if found else None


def links(uow: UnitOfWork, subject: str) -> list[Any]:
    return rows(uow, "SELECT user_id, issuer, email FROM oauth_identities WHERE subject = :s",
                s=subject)  # fmt: skip


def sso_events(uow: UnitOfWork, subject: str) -> list[Any]:
    return rows(
        uow,
        "SELECT action, outcome, subject_id, data FROM audit_events"
        " WHERE action LIKE 'auth.sso%' AND data->>'subject' = :s ORDER BY id",
        s=subject,
    )


def existing(make: Factory, uow: UnitOfWork, email: str, *, verified: bool = True,
             roles: tuple[str, ...] = ("cardholder",)) -> UserView:  # fmt: skip
    actor = make.user(roles, email=email, verified="yes" if verified else "no")
    assert actor.id is not None
    return get_user_view(uow, actor.id)


def assert_refused(flow_response: Any, status: int, code: str, client: FlaskClient,
                   uow: UnitOfWork) -> str:  # fmt: skip
    html = flow_response.get_data(as_text=True)
    assert flow_response.status_code == status, html
    assert "Sign-in with Test ID did not work" in html
    assert f"<code>{code}</code>" in html
    assert 'href="/auth/login"' in html  # the way out: the password sign-in
    assert signed_in_user(client, uow) is None
    assert "sid" not in cookie_session(client)
    return html


# -- configuration -------------------------------------------------------------------------------
def test_both_routes_answer_404_when_single_sign_on_is_not_configured(app: Flask) -> None:
    assert not app.config.get("OIDC_ISSUER")
    client = app.test_client()
    assert client.get("/auth/sso/login").status_code == 404
    assert client.get("/auth/sso/callback?code=x&state=y").status_code == 404


def test_login_redirects_to_the_provider_with_pkce_s256_a_nonce_and_a_state(
    client: FlaskClient, provider: Provider, identity: Identity
) -> None:
    url = go_to_provider(client, provider)

    params = query(url)
    assert params["response_type"] == "code"
    assert params["client_id"] == provider.client_id
    assert params["redirect_uri"] == "http://localhost/auth/sso/callback"
    assert set(params["scope"].split()) == {"openid", "email", "profile"}
    assert params["code_challenge_method"] == "S256"
    assert len(params["code_challenge"]) == 43  # base64url of a SHA-256 digest
    assert len(params["state"]) >= 20 and len(params["nonce"]) >= 20
    # The verifier stays with the browser's session; it never travels in the URL.
    assert "code_verifier" not in params


# -- who signs in --------------------------------------------------------------------------------
def test_a_new_identity_becomes_a_signed_in_cardholder(
    client: FlaskClient, provider: Provider, identity: Identity, uow: UnitOfWork
) -> None:
    flow = sign_in_flow(client, provider)

    assert flow.response.status_code == 302
    assert flow.response.headers["Location"] == "/wallet"  # a cardholder lands on the wallet
    assert flow.response.headers["Cache-Control"] == "no-store"
    info = signed_in_user(client, uow)
    assert info is not None
    assert info.user.email == identity.email
    assert (info.user.first_name, info.user.last_name) == ("Ada", "Lovelace")
    assert info.user.roles == ("cardholder",)
    assert info.user.email_verified is True
    assert info.mfa_verified is False
    row = user_by_email(uow, identity.email)
    assert row.password_hash is None  # no password: SSO (or a password reset) only
    [link] = links(uow, identity.sub)
    assert (link.user_id, link.issuer, link.email) == (info.user.id, provider.url, identity.email)
    # The code was exchanged once, with the client's secret and the PKCE verifier.
    [exchange] = provider.token_requests
    assert exchange["grant_type"] == "authorization_code"
    assert len(exchange["code_verifier"]) >= 43
    events = [(e.action, e.outcome, e.data.get("via")) for e in sso_events(uow, identity.sub)]
    assert events == [
        ("auth.sso_link", "success", None),
        ("auth.sso_sign_in", "success", "new_user"),
    ]


def test_a_new_identity_with_an_unverified_email_is_refused(
    client: FlaskClient, provider: Provider, identity: Identity, uow: UnitOfWork
) -> None:
    identity.email_verified = "false"  # some providers send strings

    flow = sign_in_flow(client, provider)

    assert flow.response.status_code == 409
    assert "not verified" in flow.response.get_data(as_text=True)
    assert signed_in_user(client, uow) is None
    assert links(uow, identity.sub) == []
    assert (
        uow.run(
            lambda u: u.execute(
                "SELECT count(*) FROM users WHERE lower(email) = lower(:e)", {"e": identity.email}
            ).scalar_one()
        )
        == 0
    )


def test_a_verified_user_is_linked_by_a_verified_email_and_the_link_is_used_afterwards(
    client: FlaskClient, provider: Provider, identity: Identity, uow: UnitOfWork, make: Factory
) -> None:
    user = existing(make, uow, identity.email)
    assert identity.email is not None
    identity.email = identity.email.upper()  # emails match case-insensitively

    first = sign_in_flow(client, provider)

    assert first.response.status_code == 302
    info = signed_in_user(client, uow)
    assert info is not None and info.user.id == user.id
    assert [link.user_id for link in links(uow, identity.sub)] == [user.id]

    # Later the address changes at the provider: the link (issuer, subject) still decides.
    client.delete_cookie("portal_session")
    identity.email = "somebody-else@example.test"
    second = sign_in_flow(client, provider)

    assert second.response.status_code == 302
    again = signed_in_user(client, uow)
    assert again is not None and again.user.id == user.id
    assert again.session_id != info.session_id  # a new session at every sign-in
    assert user_by_email(uow, "somebody-else@example.test") is None
    [link] = links(uow, identity.sub)
    assert link.email == "somebody-else@example.test"
    vias = [e.data.get("via") for e in sso_events(uow, identity.sub)
            if e.action == "auth.sso_sign_in"]  # fmt: skip
    assert vias == ["email", "link"]


def test_signing_in_as_someone_else_ends_the_previous_session(
    client: FlaskClient, provider: Provider, identity: Identity, uow: UnitOfWork
) -> None:
    sign_in_flow(client, provider)
    before = cookie_session(client)["sid"]
    provider.reset(
        Identity(sub=f"sub-{uuid.uuid4().hex}", email=f"b-{uuid.uuid4().hex[:8]}@x.test")
    )

    assert sign_in_flow(client, provider).response.status_code == 302

    assert sessions.resolve_web_session(uow, token=before) is None  # revoked, not just dropped
    now = signed_in_user(client, uow)
    assert now is not None and now.user.email == provider.identity.email


def test_a_user_whose_portal_email_is_unverified_is_refused_and_not_linked(
    client: FlaskClient, provider: Provider, identity: Identity, uow: UnitOfWork, make: Factory
) -> None:
    user = existing(make, uow, identity.email or "", verified=False)

    flow = sign_in_flow(client, provider)

    html = assert_refused(flow.response, 409, "sso_email_unverified", client, uow)
    assert "sign in with your password and verify your email" in html
    assert links(uow, identity.sub) == []
    [event] = sso_events(uow, identity.sub)
    assert (event.outcome, event.subject_id, event.data["reason"]) == (
        "failure", user.id, "portal_email_unverified",
    )  # fmt: skip


def test_an_unverified_provider_email_never_links_an_existing_user(
    client: FlaskClient, provider: Provider, identity: Identity, uow: UnitOfWork, make: Factory
) -> None:
    existing(make, uow, identity.email or "")
    identity.email_verified = False

    flow = sign_in_flow(client, provider)

    html = assert_refused(flow.response, 409, "sso_email_unverified", client, uow)
    assert "sign in with your password instead" in html
    assert links(uow, identity.sub) == []
    [event] = sso_events(uow, identity.sub)
    assert event.data["reason"] == "provider_email_unverified"


def test_an_archived_user_is_refused_through_the_link(
    client: FlaskClient, provider: Provider, identity: Identity, uow: UnitOfWork
) -> None:
    assert sign_in_flow(client, provider).response.status_code == 302
    info = signed_in_user(client, uow)
    assert info is not None
    users.archive_user(uow, actor=SYSTEM, user_id=info.user.id)
    client.delete_cookie("portal_session")

    flow = sign_in_flow(client, provider)

    assert_refused(flow.response, 401, "invalid_credentials", client, uow)
    assert sso_events(uow, identity.sub)[-1].data["reason"] == "archived"


def test_an_archived_user_is_refused_by_email_and_nothing_is_created(
    client: FlaskClient, provider: Provider, identity: Identity, uow: UnitOfWork, make: Factory
) -> None:
    user = existing(make, uow, identity.email or "")
    users.archive_user(uow, actor=SYSTEM, user_id=user.id)

    flow = sign_in_flow(client, provider)

    assert_refused(flow.response, 401, "invalid_credentials", client, uow)
    assert links(uow, identity.sub) == []


# -- the second factor ---------------------------------------------------------------------------
def csrf_token(html: str) -> str:
    found = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


def test_a_user_with_totp_is_not_signed_in_by_sso_until_the_second_factor_passes(
    client: FlaskClient, provider: Provider, identity: Identity, uow: UnitOfWork, make: Factory,
    clock: Clock,
) -> None:  # fmt: skip
    user = existing(make, uow, identity.email or "")
    enrolment = mfa.begin_totp_enrolment(uow, actor=user.actor)
    totp = pyotp.TOTP(enrolment.secret)
    mfa.confirm_totp(uow, actor=user.actor, code=totp.at(clock.now))

    flow = sign_in_flow(client, provider, "/auth/sso/login?next=/cards")

    # Handed over to the second-factor step of a password sign-in, with the same marker.
    assert flow.response.status_code == 302
    assert flow.response.headers["Location"] == "/auth/mfa"
    state = cookie_session(client)
    assert "sid" not in state  # no session: nobody is signed in yet
    pending = state[MFA_PENDING_KEY]
    assert pending["user_id"] == user.id
    assert pending["next"] == "/cards"
    assert pending["expires"] > time.time()
    assert rows(uow, "SELECT id FROM web_sessions WHERE user_id = :id", id=user.id) == []
    assert [link.user_id for link in links(uow, identity.sub)] == [user.id]

    # The auth blueprint takes it from there: a wrong code signs nobody in...
    page = client.get("/auth/mfa")
    assert page.status_code == 200, page.get_data(as_text=True)
    token = csrf_token(page.get_data(as_text=True))
    wrong = client.post("/auth/mfa", data={"csrf_token": token, "code": "000000", "next": ""})
    assert wrong.status_code == 401
    assert signed_in_user(client, uow) is None
    # ...the right one does, with a session verified by MFA, and goes where the user wanted.
    right = client.post(
        "/auth/mfa",
        data={"csrf_token": token, "code": totp.at(clock.now, counter_offset=1), "next": ""},
    )
    assert right.status_code == 302
    assert right.headers["Location"] == "/cards"
    info = signed_in_user(client, uow)
    assert info is not None and info.user.id == user.id and info.mfa_verified is True


def test_staff_without_a_second_factor_get_a_session_not_verified_by_mfa(
    client: FlaskClient, provider: Provider, identity: Identity, uow: UnitOfWork, make: Factory
) -> None:
    user = existing(make, uow, identity.email or "", roles=("support",))
    assert mfa.mfa_required(user) and not user.mfa_enabled

    flow = sign_in_flow(client, provider)

    assert flow.response.status_code == 302
    assert flow.response.headers["Location"] == "/auth/mfa/setup"  # straight to enrolment
    info = signed_in_user(client, uow)
    assert info is not None and info.user.id == user.id
    assert info.mfa_verified is False


# -- a hostile or broken answer ------------------------------------------------------------------
def test_a_tampered_state_is_refused_before_the_code_is_exchanged(
    client: FlaskClient, provider: Provider, identity: Identity, uow: UnitOfWork
) -> None:
    callback = come_back(go_to_provider(client, provider))
    state = query(callback)["state"]

    response = client.get(callback.replace(f"state={state}", f"state={state[:-1]}x"))

    assert_refused(response, 400, "sso_state_mismatch", client, uow)
    assert provider.token_requests == []
    assert user_by_email(uow, identity.email or "") is None


def test_a_callback_is_refused_in_another_browser_and_when_replayed(
    client: FlaskClient, portal: Flask, provider: Provider, identity: Identity, uow: UnitOfWork
) -> None:
    callback = come_back(go_to_provider(client, provider))

    other_browser = portal.test_client()
    assert_refused(other_browser.get(callback), 400, "sso_state_mismatch", other_browser, uow)
    assert client.get(callback).status_code == 302  # the browser that started it
    client.delete_cookie("portal_session")
    replay = client.get(callback)
    assert replay.status_code == 400
    assert len(provider.token_requests) == 1


def test_a_callback_without_state_is_refused(client: FlaskClient, uow: UnitOfWork) -> None:
    assert_refused(client.get("/auth/sso/callback?code=abc"), 400, "sso_state_mismatch",
                   client, uow)  # fmt: skip


def test_an_id_token_with_the_wrong_nonce_is_refused(
    client: FlaskClient, provider: Provider, identity: Identity, uow: UnitOfWork
) -> None:
    provider.nonce_override = "a-nonce-from-another-sign-in"

    flow = sign_in_flow(client, provider)

    html = assert_refused(flow.response, 400, "sso_token_invalid", client, uow)
    assert "could not be verified" in html
    assert user_by_email(uow, identity.email or "") is None
    assert links(uow, identity.sub) == []
    failures = rows(
        uow,
        "SELECT data FROM audit_events WHERE action = 'auth.sso_sign_in' AND outcome = 'failure'"
        " AND data->>'reason' = 'id_token_invalid' AND data->>'issuer' = :iss",
        iss=provider.url,
    )
    assert failures


@pytest.mark.parametrize("knob", ["audience_override", "sign_with_unpublished_key"])
def test_an_id_token_for_another_client_or_with_a_foreign_signature_is_refused(
    knob: str, client: FlaskClient, provider: Provider, identity: Identity, uow: UnitOfWork
) -> None:
    setattr(provider, knob, "someone-else" if knob == "audience_override" else True)

    flow = sign_in_flow(client, provider)

    assert_refused(flow.response, 400, "sso_token_invalid", client, uow)
    assert user_by_email(uow, identity.email or "") is None


def test_denied_consent_shows_why_and_changes_nothing(
    client: FlaskClient, provider: Provider, identity: Identity, uow: UnitOfWork
) -> None:
    provider.deny = True

    flow = sign_in_flow(client, provider)

    html = assert_refused(flow.response, 400, "sso_provider_error", client, uow)
    assert "Sign-in was cancelled at Test ID" in html
    assert provider.token_requests == []
    assert user_by_email(uow, identity.email or "") is None


def test_an_unreachable_provider_is_a_502_page_not_a_500(
    portal: Flask, provider: Provider, identity: Identity
) -> None:
    from portal.sso import views

    client = portal.test_client()
    registered = portal.extensions.pop(views._EXTENSION, None)
    portal.config["OIDC_ISSUER"] = "http://127.0.0.1:1"
    try:
        response = client.get("/auth/sso/login")
    finally:
        portal.config["OIDC_ISSUER"] = provider.url
        portal.extensions.pop(views._EXTENSION, None)
        if registered is not None:
            portal.extensions[views._EXTENSION] = registered
    assert response.status_code == 502
    assert "<code>sso_unavailable</code>" in response.get_data(as_text=True)


# -- the details ---------------------------------------------------------------------------------
def test_the_email_comes_from_userinfo_when_the_id_token_has_none(
    client: FlaskClient, provider: Provider, identity: Identity, uow: UnitOfWork
) -> None:
    provider.email_in_id_token = False

    flow = sign_in_flow(client, provider)

    assert flow.response.status_code == 302
    info = signed_in_user(client, uow)
    assert info is not None and info.user.email == identity.email


@pytest.mark.parametrize(
    ("asked", "lands"),
    [
        ("/cards?tab=1", "/cards?tab=1"),
        ("//evil.example/x", "/wallet"),
        ("https://evil.example/", "/wallet"),
        ("/\\evil.example", "/wallet"),
    ],
)
def test_next_is_followed_only_when_it_is_a_local_path(
    asked: str, lands: str, client: FlaskClient, provider: Provider, identity: Identity
) -> None:
    flow = sign_in_flow(client, provider, "/auth/sso/login?" + urlencode({"next": asked}))

    assert flow.response.status_code == 302
    assert flow.response.headers["Location"] == lands


def test_the_sign_in_page_offers_single_sign_on_only_when_configured(
    client: FlaskClient, app: Flask
) -> None:
    page = client.get("/auth/login?next=/auth/account").get_data(as_text=True)
    assert 'href="/auth/sso/login?next=/auth/account"' in page
    assert "Sign in with" in page
    plain = app.test_client().get("/auth/login").get_data(as_text=True)
    assert "/auth/sso/login" not in plain
