"""The identity API: sign-up, tokens (access, rotating refresh, sign-out), the second factor,
throttled sign-in, the caller's identity and their sessions and devices.

Through the real application on real PostgreSQL, each test inside the ``connection`` fixture's
rolled-back transaction (the app's units of work join it). Every test client has its own
client address, so rate-limit counts never mix between tests. Also holds the helpers the other
identity API tests use.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pyotp
import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from portal.api import auth as auth_api
from portal.domain.ids import is_public_id, new_public_id
from portal.services.identity import accounts, mfa, sessions, tokens, users
from portal.services.shared.uow import UnitOfWork
from tests.conftest import SYSTEM

API = "/api/v1"
PASSWORD = "Tr0ub4dor&3-purple"


# -- helpers (also used by test_users_api, test_roles_api and test_schemathesis_identity) -------
def new_email() -> str:
    return f"api-{uuid.uuid4().hex[:12]}@example.test"


def new_address() -> str:
    return f"10.{secrets.randbelow(256)}.{secrets.randbelow(256)}.{secrets.randbelow(254) + 1}"


def client_for(app: Flask, address: str | None = None) -> FlaskClient:
    """A test client calling from its own client address (rate limits count per address)."""
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = address or new_address()
    return client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def error_of(response: TestResponse, status: int) -> dict[str, Any]:
    """The error object, after checking the status and the envelope's shape."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"type", "code", "message", "param", "request_id"}
    assert error["request_id"] == response.headers["X-Request-ID"]
    assert isinstance(error["message"], str) and error["message"]
    return error  # type: ignore[no-any-return]


def cardholder(uow: UnitOfWork, *, email: str | None = None) -> accounts.UserView:
    """A signed-up cardholder with PASSWORD (email not verified)."""
    return accounts.register(
        uow, email=email or new_email(), first_name="Ada", last_name="Lovelace",
        password=PASSWORD, password_confirmation=PASSWORD,
    )  # fmt: skip


def person(uow: UnitOfWork, *roles: str, last_name: str = "Hopper") -> accounts.UserView:
    """A verified user with PASSWORD and these roles, made by the system."""
    created = users.create_user(
        uow, actor=SYSTEM, email=new_email(), first_name="Grace", last_name=last_name,
        password=PASSWORD, roles=roles, verified=True,
    )  # fmt: skip
    return accounts.get_user_view(uow, created.id)


def totp_code(secret: str, steps: int = 0) -> str:
    return pyotp.TOTP(secret).at(datetime.now(UTC), counter_offset=steps)


def enrol_totp(uow: UnitOfWork, user: accounts.UserView) -> tuple[str, list[str]]:
    """Set up TOTP through the services; returns the secret and the recovery codes. Confirmed
    with the previous step's code, so the current and the next step's codes stay usable."""
    issued = mfa.issue_enrolment_code(uow, actor=SYSTEM, user_id=user.id).code  # staff need one
    enrolment = mfa.begin_totp_enrolment(uow, actor=user.actor, enrolment_code=issued)
    code = pyotp.TOTP(enrolment.secret).at(uow.now(), counter_offset=-1)
    return enrolment.secret, mfa.confirm_totp(uow, actor=user.actor, code=code)


def token_for(uow: UnitOfWork, user: accounts.UserView) -> str:
    """An access token for the user, issued by the service (staff get TOTP set up first)."""
    user = accounts.get_user_view(uow, user.id)  # the caller's view may be stale
    if mfa.mfa_required(user) and not user.mfa_enabled:
        enrol_totp(uow, user)
    return tokens.issue_tokens(uow, user_id=user.id).access_token


def sign_in(client: FlaskClient, email: str, **extra: str) -> TestResponse:
    return client.post(f"{API}/auth/token", json={"email": email, "password": PASSWORD, **extra})


def pair_of(response: TestResponse) -> dict[str, Any]:
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()  # type: ignore[no-any-return]


def last_mail(app: Flask) -> Any:
    outbox = app.extensions.get("portal.outbox")
    assert outbox, "no email was sent"
    return outbox[-1]


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture
def api(app: Flask, connection: Any) -> FlaskClient:
    return client_for(app)


@pytest.fixture
def holder(uow: UnitOfWork) -> accounts.UserView:
    return cardholder(uow)


# -- sign-up ------------------------------------------------------------------------------------
def test_register_creates_an_unverified_cardholder_and_mails_a_verification_link(
    api: FlaskClient, app: Flask, uow: UnitOfWork
) -> None:
    email = new_email()
    response = api.post(
        f"{API}/auth/register",
        json={"first_name": " Ada ", "last_name": "Lovelace", "email": email,
              "password": PASSWORD, "password_confirmation": PASSWORD},
    )  # fmt: skip

    assert response.status_code == 201, response.get_data(as_text=True)
    user = response.get_json()
    assert (user["object"], user["email"], user["first_name"]) == ("user", email, "Ada")
    assert is_public_id("user", user["id"])
    assert user["roles"] == ["cardholder"]
    assert user["permissions"] == ["wallet:use"]
    assert (user["email_verified"], user["mfa_enabled"], user["archived"]) == (False, False, False)
    assert user["created_at"].endswith("Z") and user["archived_at"] is None
    assert "password" not in response.get_data(as_text=True).lower()

    message = last_mail(app)
    assert message["To"] == email
    link_prefix = app.config["PUBLIC_URL"].rstrip("/") + "/auth/verify/"
    (line,) = [w for w in message.get_content().split() if w.startswith(link_prefix)]
    verified = accounts.verify_email(uow, token=line.removeprefix(link_prefix))
    assert (verified.public_id, verified.email_verified) == (user["id"], True)


@pytest.mark.parametrize(
    ("change", "code", "param"),
    [
        ({"password_confirmation": "something-else-entirely"}, "password_mismatch",
         "password_confirmation"),
        ({"password": "short", "password_confirmation": "short"}, "password_too_short",
         "password"),
        ({"password": "password1", "password_confirmation": "password1"}, "password_too_common",
         "password"),
        ({"password": "x" * 129, "password_confirmation": "x" * 129}, "password_too_long",
         "password"),
        ({"email": "not-an-email"}, "parameter_invalid", "email"),
        ({"first_name": "  "}, "parameter_invalid", "first_name"),
        ({"email": None}, "parameter_invalid", "email"),
        ({"password": 12345678}, "parameter_invalid", "password"),
        ({"role": "admin"}, "parameter_unknown", "role"),
    ],
)  # fmt: skip
def test_register_refusals_name_the_parameter(
    api: FlaskClient, change: dict[str, Any], code: str, param: str
) -> None:
    body = {"first_name": "Ada", "last_name": "Lovelace", "email": new_email(),
            "password": PASSWORD, "password_confirmation": PASSWORD, **change}  # fmt: skip

    error = error_of(api.post(f"{API}/auth/register", json=body), 422)

    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", code, param)


def test_register_missing_field_malformed_json_and_taken_email(
    api: FlaskClient, holder: accounts.UserView
) -> None:
    missing = error_of(api.post(f"{API}/auth/register", json={"first_name": "Ada"}), 422)
    malformed = error_of(
        api.post(f"{API}/auth/register", data="{nope", content_type="application/json"), 400
    )
    taken = error_of(
        api.post(
            f"{API}/auth/register",
            json={
                "first_name": "Ada",
                "last_name": "L",
                "email": holder.email.upper(),
                "password": PASSWORD,
                "password_confirmation": PASSWORD,
            },
        ),  # fmt: skip
        409,
    )

    assert (missing["code"], missing["param"]) == ("parameter_missing", "last_name")
    assert malformed["code"] == "invalid_json"
    assert (taken["code"], taken["param"]) == ("email_taken", "email")


def test_sign_ups_are_limited_per_address_counting_only_accounts_and_taken_emails(
    app: Flask, connection: Any, holder: accounts.UserView
) -> None:
    client = client_for(app)
    limit = int(auth_api.SIGN_UPS_PER_ADDRESS.split()[0])

    def sign_up(email: str) -> TestResponse:
        return client.post(
            f"{API}/auth/register",
            json={"first_name": "Ada", "last_name": "L", "email": email, "password": PASSWORD,
                  "password_confirmation": PASSWORD},
        )  # fmt: skip

    for _ in range(3):  # refused by validation: not counted
        error_of(client.post(f"{API}/auth/register", json={"email": new_email()}), 422)
    statuses = [sign_up(new_email()).status_code for _ in range(limit - 1)]
    statuses.append(sign_up(holder.email).status_code)
    refused = sign_up(new_email())

    assert statuses == [201] * (limit - 1) + [409]
    error = error_of(refused, 429)
    assert error["type"] == "rate_limit_error"
    assert int(refused.headers["Retry-After"]) > 0
    assert sign_up_from_elsewhere(app).status_code == 201


def sign_up_from_elsewhere(app: Flask) -> TestResponse:
    return client_for(app).post(
        f"{API}/auth/register",
        json={"first_name": "Ada", "last_name": "L", "email": new_email(), "password": PASSWORD,
              "password_confirmation": PASSWORD},
    )  # fmt: skip


# -- tokens -------------------------------------------------------------------------------------
def test_sign_in_returns_a_token_pair_whose_access_token_works_on_me(
    api: FlaskClient, holder: accounts.UserView, uow: UnitOfWork
) -> None:
    pair = pair_of(sign_in(api, f"  {holder.email.upper()} "))

    assert set(pair) == {"object", "access_token", "token_type", "expires_in", "refresh_token"}
    assert (pair["object"], pair["token_type"]) == ("token", "Bearer")
    assert pair["expires_in"] == uow.settings.access_token_seconds
    assert pair["refresh_token"].startswith("prt_")
    me = api.get(f"{API}/auth/me", headers=bearer(pair["access_token"]))
    assert me.status_code == 200
    body = me.get_json()
    assert (body["object"], body["id"], body["email"]) == ("user", holder.public_id, holder.email)
    assert (body["roles"], body["permissions"]) == (["cardholder"], ["wallet:use"])
    assert me.headers["Cache-Control"] == "no-store"


def test_failed_sign_in_says_the_same_for_every_reason(
    api: FlaskClient, holder: accounts.UserView, uow: UnitOfWork
) -> None:
    archived = cardholder(uow)
    users.archive_user(uow, actor=SYSTEM, user_id=archived.id)

    answers = [
        error_of(api.post(f"{API}/auth/token", json={"email": e, "password": p}), 401)
        for e, p in (
            (holder.email, "wrong-password-123"),
            (new_email(), PASSWORD),
            ("not an email", PASSWORD),
            (archived.email, PASSWORD),
        )
    ]

    assert {(a["type"], a["code"], a["message"], a["param"]) for a in answers} == {
        ("authentication_error", "invalid_credentials", accounts.SIGN_IN_FAILED, None)
    }


def test_token_request_validation(api: FlaskClient) -> None:
    missing = error_of(api.post(f"{API}/auth/token", json={"email": new_email()}), 422)
    wrong_type = error_of(
        api.post(f"{API}/auth/token", json={"email": new_email(), "password": 1}), 422
    )
    not_json = error_of(
        api.post(f"{API}/auth/token", data="email=a&password=b",
                 content_type="application/x-www-form-urlencoded"),
        400,
    )  # fmt: skip

    assert (missing["code"], missing["param"]) == ("parameter_missing", "password")
    assert (wrong_type["code"], wrong_type["param"]) == ("parameter_invalid", "password")
    assert not_json["code"] == "invalid_json"


def test_authentication_comes_before_the_body(api: FlaskClient) -> None:
    """An anonymous request with a bad body is a 401, not a 400 or a 422."""
    for response in (
        api.patch(f"{API}/users/me", json={"first_name": 7}),
        api.patch(f"{API}/users/me", data="{oops", content_type="application/json"),
        api.post(f"{API}/users", json={"email": ""}),
        api.post(f"{API}/roles", json={}),
        api.delete(f"{API}/auth/sessions/web/{new_public_id('session')}"),
        api.delete(f"{API}/auth/sessions/web/1"),
    ):
        error = error_of(response, 401)
        assert (error["type"], error["code"]) == ("authentication_error", "unauthenticated")
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="portal"'


def test_a_refresh_token_is_not_an_access_token_nor_the_reverse(
    api: FlaskClient, holder: accounts.UserView
) -> None:
    pair = pair_of(sign_in(api, holder.email))

    as_access = error_of(api.get(f"{API}/auth/me", headers=bearer(pair["refresh_token"])), 401)
    as_refresh = error_of(
        api.post(f"{API}/auth/refresh", json={"refresh_token": pair["access_token"]}), 401
    )
    forged = error_of(api.get(f"{API}/auth/me", headers=bearer(pair["access_token"] + "x")), 401)

    assert as_access["code"] == "invalid_token"
    assert as_refresh["type"] == "authentication_error"
    assert forged["code"] == "invalid_token"
    assert api.get(f"{API}/auth/me", headers=bearer(pair["access_token"])).status_code == 200


def test_refresh_rotates_and_reuse_revokes_the_whole_family(
    api: FlaskClient, app: Flask, holder: accounts.UserView, uow: UnitOfWork,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setitem(
        app.config,
        "SERVICE_SETTINGS",
        replace(app.config["SERVICE_SETTINGS"], refresh_grace_seconds=0),
    )
    first = pair_of(sign_in(api, holder.email))

    second = pair_of(
        api.post(f"{API}/auth/refresh", json={"refresh_token": first["refresh_token"]})
    )
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert api.get(f"{API}/auth/me", headers=bearer(second["access_token"])).status_code == 200

    # The spent token, presented again after the (zero) grace period: theft.
    reuse = api.post(f"{API}/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert error_of(reuse, 401)["type"] == "authentication_error"
    # The whole family is revoked: the live refresh token and its access token stop working.
    error_of(api.post(f"{API}/auth/refresh", json={"refresh_token": second["refresh_token"]}), 401)
    error_of(api.get(f"{API}/auth/me", headers=bearer(second["access_token"])), 401)
    reuse_events = uow.run(
        lambda u: u.execute(
            "SELECT outcome FROM audit_events WHERE action = 'token.reuse_detected'"
            " AND subject_id = :id",
            {"id": holder.id},
        ).all()
    )
    assert [e.outcome for e in reuse_events] == ["failure"]


def test_refresh_within_the_grace_period_answers_the_current_token(
    api: FlaskClient, holder: accounts.UserView
) -> None:
    """Two refreshes racing with the same token both succeed and end up holding the same single
    live refresh token (the default grace period is 10 seconds)."""
    first = pair_of(sign_in(api, holder.email))

    a = pair_of(api.post(f"{API}/auth/refresh", json={"refresh_token": first["refresh_token"]}))
    b = pair_of(api.post(f"{API}/auth/refresh", json={"refresh_token": first["refresh_token"]}))

    assert a["refresh_token"] == b["refresh_token"] != first["refresh_token"]
    assert pair_of(api.post(f"{API}/auth/refresh", json={"refresh_token": b["refresh_token"]}))


def test_logout_revokes_the_family(api: FlaskClient, holder: accounts.UserView) -> None:
    pair = pair_of(sign_in(api, holder.email))
    other = pair_of(sign_in(api, holder.email))

    response = api.post(f"{API}/auth/logout", json={"refresh_token": pair["refresh_token"]})

    assert response.status_code == 204
    assert response.get_data() == b""
    error_of(api.get(f"{API}/auth/me", headers=bearer(pair["access_token"])), 401)
    error_of(api.post(f"{API}/auth/refresh", json={"refresh_token": pair["refresh_token"]}), 401)
    # Again: nothing more to do. Unknown or malformed: 401.
    assert (
        api.post(f"{API}/auth/logout", json={"refresh_token": pair["refresh_token"]}).status_code
        == 204
    )
    unknown = "prt_" + "A" * 43
    error_of(api.post(f"{API}/auth/logout", json={"refresh_token": unknown}), 401)
    error_of(api.post(f"{API}/auth/logout", json={"refresh_token": "nope"}), 401)
    error_of(api.post(f"{API}/auth/logout", json={}), 422)
    # Another sign-in of the same user is another family: untouched.
    assert api.get(f"{API}/auth/me", headers=bearer(other["access_token"])).status_code == 200


def test_an_archived_users_access_token_stops_working_at_the_next_request(
    api: FlaskClient, holder: accounts.UserView, uow: UnitOfWork
) -> None:
    pair = pair_of(sign_in(api, holder.email))
    assert api.get(f"{API}/auth/me", headers=bearer(pair["access_token"])).status_code == 200

    users.archive_user(uow, actor=SYSTEM, user_id=holder.id)

    assert error_of(api.get(f"{API}/auth/me", headers=bearer(pair["access_token"])), 401)[
        "code"
    ] == ("invalid_token")
    error_of(api.post(f"{API}/auth/refresh", json={"refresh_token": pair["refresh_token"]}), 401)


# -- the second factor --------------------------------------------------------------------------
def test_sign_in_with_a_second_factor(
    api: FlaskClient, holder: accounts.UserView, uow: UnitOfWork
) -> None:
    secret, recovery = enrol_totp(uow, holder)

    missing = error_of(sign_in(api, holder.email), 401)
    wrong = error_of(sign_in(api, holder.email, totp_code="000000"), 401)
    bad_password = error_of(
        api.post(f"{API}/auth/token",
                 json={"email": holder.email, "password": "nope-nope-9", "totp_code": "1"}),
        401,
    )  # fmt: skip
    code = totp_code(secret)
    ok = pair_of(sign_in(api, holder.email, totp_code=code))
    replayed = error_of(sign_in(api, holder.email, totp_code=code), 401)
    with_recovery = pair_of(sign_in(api, holder.email, totp_code=recovery[0].upper()))
    recovery_again = error_of(sign_in(api, holder.email, totp_code=recovery[0]), 401)

    assert (missing["code"], missing["param"]) == ("mfa_required", "totp_code")
    assert (wrong["code"], wrong["param"]) == ("mfa_code_invalid", "totp_code")
    assert bad_password["code"] == "invalid_credentials"  # the password is checked first
    assert replayed["code"] == recovery_again["code"] == "mfa_code_invalid"
    for pair in (ok, with_recovery):
        me = api.get(f"{API}/auth/me", headers=bearer(pair["access_token"]))
        assert me.get_json()["mfa_enabled"] is True


def test_staff_without_a_second_factor_get_no_token(api: FlaskClient, uow: UnitOfWork) -> None:
    for role in ("admin", "support"):
        staff = person(uow, role)

        error = error_of(sign_in(api, staff.email), 403)

        assert error["code"] == "mfa_enrolment_required"


def test_staff_with_a_second_factor_sign_in(api: FlaskClient, uow: UnitOfWork) -> None:
    admin = person(uow, "admin")
    secret, _ = enrol_totp(uow, admin)

    error_of(sign_in(api, admin.email), 401)
    pair = pair_of(sign_in(api, admin.email, totp_code=totp_code(secret)))

    me = api.get(f"{API}/auth/me", headers=bearer(pair["access_token"])).get_json()
    assert me["roles"] == ["admin"]
    assert {"users:manage", "roles:manage", "audit:read"} <= set(me["permissions"])


# -- throttling ---------------------------------------------------------------------------------
def limit_of(spec: str) -> int:
    return int(spec.split()[0])


def test_failed_sign_ins_are_limited_per_account_and_address_and_successes_are_free(
    app: Flask, holder: accounts.UserView, uow: UnitOfWork
) -> None:
    client = client_for(app)
    limit = limit_of(auth_api.SIGN_IN_FAILURES_PER_ACCOUNT_AND_ADDRESS)

    def fail() -> TestResponse:
        return client.post(
            f"{API}/auth/token", json={"email": holder.email, "password": "wrong-password-1"}
        )

    failures = [fail().status_code for _ in range(limit - 1)]
    successes = [sign_in(client, holder.email).status_code for _ in range(3)]
    last_failure = fail().status_code
    refused = sign_in(client, holder.email)  # right password, but the limit is spent

    assert failures == [401] * (limit - 1)
    assert successes == [200, 200, 200]  # not counted: the limit is reached only now
    assert last_failure == 401
    error = error_of(refused, 429)
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limited")
    assert 0 < int(refused.headers["Retry-After"]) <= 60
    # The real user, at another address, is not locked out; nor is anyone else at this one.
    assert sign_in(client_for(app), holder.email).status_code == 200
    assert sign_in(client, cardholder(uow).email).status_code == 200


def test_failed_sign_ins_are_limited_per_address(
    app: Flask, connection: Any, holder: accounts.UserView
) -> None:
    client = client_for(app)
    limit = limit_of(auth_api.SIGN_IN_FAILURES_PER_ADDRESS)

    statuses = {
        client.post(
            f"{API}/auth/token", json={"email": new_email(), "password": "wrong-password-1"}
        ).status_code
        for _ in range(limit)
    }
    refused = sign_in(client, holder.email)

    assert statuses == {401}
    assert error_of(refused, 429)["type"] == "rate_limit_error"
    assert int(refused.headers["Retry-After"]) > 0
    assert sign_in(client_for(app), holder.email).status_code == 200


def test_wrong_second_factor_codes_are_limited_per_account_from_any_address(
    app: Flask, connection: Any, holder: accounts.UserView, uow: UnitOfWork
) -> None:
    secret, _ = enrol_totp(uow, holder)
    limit = limit_of(auth_api.SECOND_FACTOR_FAILURES_PER_ACCOUNT)

    # Wrong passwords, from many addresses, do not touch this limit ...
    for _ in range(limit):
        client_for(app).post(
            f"{API}/auth/token",
            json={"email": holder.email, "password": "wrong-password-1", "totp_code": "1"},
        )
    assert pair_of(sign_in(client_for(app), holder.email, totp_code=totp_code(secret)))
    # ... wrong codes (which need the password) do, wherever they come from.
    codes = [
        sign_in(client_for(app), holder.email, totp_code="000000").status_code for _ in range(limit)
    ]
    refused = sign_in(client_for(app), holder.email, totp_code=totp_code(secret, 1))

    assert codes == [401] * limit
    assert error_of(refused, 429)["type"] == "rate_limit_error"
    assert int(refused.headers["Retry-After"]) > 0


# -- sessions and devices -----------------------------------------------------------------------
def web_session(uow: UnitOfWork, user: accounts.UserView) -> str:
    """A new web session of ``user``: its public id."""
    return sessions.create_web_session(
        uow, user_id=user.id, user_agent="Firefox", ip="192.0.2.1", mfa_verified=False
    ).public_id


def family_of(access_token: str, uow: UnitOfWork) -> str:
    return str(tokens.verify_access_token(uow.settings, access_token).family_id)


def test_list_sessions_shows_web_sessions_and_families_and_marks_the_current_one(
    api: FlaskClient, holder: accounts.UserView, uow: UnitOfWork
) -> None:
    mine = pair_of(sign_in(api, holder.email))
    other = pair_of(api.post(f"{API}/auth/token", json={"email": holder.email,
                                                        "password": PASSWORD},
                             headers={"User-Agent": "cli/1.0"}))  # fmt: skip
    web_id = web_session(uow, holder)
    stranger = cardholder(uow)
    web_session(uow, stranger)

    response = api.get(f"{API}/auth/sessions", headers=bearer(mine["access_token"]))

    assert response.status_code == 200
    body = response.get_json()
    assert (body["object"], body["url"], body["has_more"]) == (
        "list",
        f"{API}/auth/sessions",
        False,
    )
    by_id = {s["id"]: s for s in body["data"]}
    assert set(by_id) == {web_id, family_of(mine["access_token"], uow),
                          family_of(other["access_token"], uow)}  # fmt: skip
    web = by_id[web_id]
    assert (web["object"], web["kind"], web["ip"], web["user_agent"]) == (
        "session", "web", "192.0.2.1", "Firefox"
    )  # fmt: skip
    assert web["current"] is False
    current = by_id[family_of(mine["access_token"], uow)]
    assert (current["kind"], current["current"]) == ("api", True)
    assert "ip" not in current
    assert by_id[family_of(other["access_token"], uow)]["user_agent"] == "cli/1.0"
    assert by_id[family_of(other["access_token"], uow)]["current"] is False
    for s in body["data"]:
        assert s["created_at"].endswith("Z") and s["expires_at"].endswith("Z")


def test_revoke_one_family_and_one_web_session(
    api: FlaskClient, holder: accounts.UserView, uow: UnitOfWork
) -> None:
    mine = pair_of(sign_in(api, holder.email))
    other = pair_of(sign_in(api, holder.email))
    web_id = web_session(uow, holder)
    auth = bearer(mine["access_token"])

    gone_family = api.delete(
        f"{API}/auth/sessions/api/{family_of(other['access_token'], uow)}", headers=auth
    )
    gone_web = api.delete(f"{API}/auth/sessions/web/{web_id}", headers=auth)

    assert (gone_family.status_code, gone_family.get_data()) == (204, b"")
    assert gone_web.status_code == 204
    error_of(api.get(f"{API}/auth/me", headers=bearer(other["access_token"])), 401)
    error_of(api.post(f"{API}/auth/refresh", json={"refresh_token": other["refresh_token"]}), 401)
    listed = api.get(f"{API}/auth/sessions", headers=auth).get_json()["data"]
    assert [(s["kind"], s["current"]) for s in listed] == [("api", True)]
    # Revoking an ended web session again changes nothing.
    assert api.delete(f"{API}/auth/sessions/web/{web_id}", headers=auth).status_code == 204


def test_other_users_sessions_are_not_found_even_for_staff(
    api: FlaskClient, holder: accounts.UserView, uow: UnitOfWork
) -> None:
    stranger = cardholder(uow)
    stranger_web = web_session(uow, stranger)
    stranger_family = family_of(tokens.issue_tokens(uow, user_id=stranger.id).access_token, uow)
    admin = person(uow, "admin")

    for caller in (holder, admin):
        auth = bearer(token_for(uow, caller))
        for path in (
            f"/auth/sessions/web/{stranger_web}",
            f"/auth/sessions/api/{stranger_family}",
            f"/auth/sessions/api/{uuid.uuid4()}",
            f"/auth/sessions/web/{new_public_id('session')}",  # well formed, names nothing
            f"/auth/sessions/web/{stranger_web.replace('ses_', 'card_')}",
            "/auth/sessions/web/99999999999",
            "/auth/sessions/web/0",
            "/auth/sessions/web/99999999999999999999",
            "/auth/sessions/api/not-a-uuid",
        ):
            error = error_of(api.delete(f"{API}{path}", headers=auth), 404)
            assert error["code"] == "not_found"
    # Still alive.
    listed = api.get(
        f"{API}/users/{stranger.public_id}/sessions", headers=bearer(token_for(uow, admin))
    ).get_json()["data"]
    assert {s["id"] for s in listed} == {stranger_web, stranger_family}


def test_revoke_all_ends_every_session_and_family_including_the_callers(
    api: FlaskClient, holder: accounts.UserView, uow: UnitOfWork
) -> None:
    mine = pair_of(sign_in(api, holder.email))
    other = pair_of(sign_in(api, holder.email))
    cookie = sessions.create_web_session(
        uow, user_id=holder.id, user_agent="", ip="", mfa_verified=False
    )

    response = api.post(f"{API}/auth/sessions/revoke-all", headers=bearer(mine["access_token"]))

    assert response.status_code == 204
    for pair in (mine, other):
        error_of(api.get(f"{API}/auth/me", headers=bearer(pair["access_token"])), 401)
    assert sessions.resolve_web_session(uow, token=cookie.token) is None
    assert pair_of(sign_in(api, holder.email))  # signing in again works


def test_credentials_of_a_user_who_no_longer_exists_are_401_not_404(
    api: FlaskClient, app: Flask, uow: UnitOfWork, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user deleted between the token check and the read (a race; here an authenticator
    that vouches for a deleted user) identifies nobody."""
    gone = cardholder(uow)
    users.delete_user(uow, actor=SYSTEM, user_id=gone.id)
    monkeypatch.setitem(
        app.extensions, "portal.api_authenticator", lambda _req: gone
    )  # a UserView has .actor

    for response in (
        api.get(f"{API}/auth/me", headers=bearer("anything")),
        api.get(f"{API}/users/me", headers=bearer("anything")),
        api.patch(f"{API}/users/me", json={"first_name": "X"}, headers=bearer("anything")),
    ):
        assert error_of(response, 401)["code"] == "invalid_token"


def test_only_a_429_carries_retry_after(api: FlaskClient, holder: accounts.UserView) -> None:
    """A failed sign-in is a plain 401: no Retry-After (issue 11 B); the limit's 429 has one."""
    wrong = api.post(f"{API}/auth/token", json={"email": holder.email, "password": "nope"})
    assert wrong.status_code == 401 and "Retry-After" not in wrong.headers
    ok = api.post(f"{API}/auth/token", json={"email": holder.email, "password": PASSWORD})
    assert ok.status_code == 200 and "Retry-After" not in ok.headers
