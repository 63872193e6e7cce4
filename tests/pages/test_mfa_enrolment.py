"""First-time staff enrolment needs a one-time enrolment code: an administrator who knows only
the password gets no enrolment secret from ``/auth/mfa/setup``; a code made by another
administrator (through the JSON API) works once; cardholders enrol as before."""

from __future__ import annotations

import re

import pyotp
import sqlalchemy as sa
from flask import Flask

from portal.services.identity import accounts
from portal.web.uow import make_uow
from tests.api.test_auth_api import API, bearer, client_for, error_of, token_for
from tests.pages.conftest import PageClient, People, page_text, sign_in

SECRET = re.compile(r'id="totp-secret" class="secret__value">([A-Z2-7 ]+)<')


def _secret_in(html: str) -> str | None:
    found = SECRET.search(html)
    return found.group(1).replace(" ", "") if found else None


def _pending(app: Flask, user_id: int) -> object:
    with app.app_context():
        return make_uow(app).run(
            lambda u: u.execute(
                "SELECT totp_pending_ciphertext FROM users WHERE id = :id", {"id": user_id}
            ).scalar_one()
        )


def test_an_admin_with_only_the_password_gets_no_enrolment_secret(
    app: Flask, client: PageClient, people: People
) -> None:
    admin = people.make(roles=("admin",))
    assert sign_in(client, admin).headers["Location"].startswith("/auth/mfa/setup")

    intro = client.get("/auth/mfa/setup")
    assert intro.status_code == 200
    assert "enrolment code" in page_text(intro)
    assert 'name="enrolment_code"' in intro.get_data(as_text=True)
    for data in ({}, {"enrolment_code": ""}, {"enrolment_code": "abcde-fghjk-mnpqr-stvwx-yz012"}):
        refused = client.post("/auth/mfa/setup", data=data)
        html = refused.get_data(as_text=True)
        assert refused.status_code == 422, html
        assert _secret_in(html) is None and "otpauth://" not in html and 'class="qr"' not in html
        assert 'id="enrolment_code-error"' in html  # the refusal is next to the field
    assert _pending(app, admin.id) is None
    # Still no way into a staff page or the account page.
    blocked = client.get("/auth/account")
    assert blocked.status_code == 302 and "/auth/mfa/setup" in blocked.headers["Location"]


def test_a_code_from_another_admin_lets_the_newcomer_enrol_once(
    app: Flask, client: PageClient, another_client: PageClient, people: People, uow
) -> None:
    newcomer = people.make(roles=("support",))
    admin = accounts.get_user_view(uow, people.make(roles=("admin",)).id)
    api = client_for(app)
    public_id = accounts.get_user_view(uow, newcomer.id).public_id
    made = api.post(f"{API}/users/{public_id}/mfa_enrolment_codes",
                    headers=bearer(token_for(uow, admin)))  # fmt: skip
    assert made.status_code == 201, made.get_data(as_text=True)
    body = made.get_json()
    assert (body["object"], body["user"], body["email"]) == (
        "mfa_enrolment_code", public_id, newcomer.email,
    )  # fmt: skip
    code = body["code"]

    sign_in(client, newcomer)
    started = client.post("/auth/mfa/setup", data={"enrolment_code": f"  {code.upper()} "})
    secret = _secret_in(started.get_data(as_text=True))
    assert started.status_code == 200 and secret
    done = client.post("/auth/mfa/setup/confirm",
                       data={"code": pyotp.TOTP(secret).now(), "secret": secret})  # fmt: skip
    assert done.status_code == 200
    assert client.get("/auth/account").status_code == 200

    # The same code again, from a session of someone who learnt the password: refused.
    people.connection.execute(  # forget the second factor, so setup is offered again
        sa.text(
            "UPDATE users SET mfa_enabled_at = NULL, totp_secret_ciphertext = NULL WHERE id = :id"
        ),
        {"id": newcomer.id},
    )
    sign_in(another_client, newcomer)
    again = another_client.post("/auth/mfa/setup", data={"enrolment_code": code})
    assert again.status_code == 422
    assert _secret_in(again.get_data(as_text=True)) is None
    assert "used already" in page_text(again)


def test_the_api_refuses_codes_to_support_for_oneself_and_for_the_enrolled(
    app: Flask, people: People, uow
) -> None:
    api = client_for(app)
    admin = accounts.get_user_view(uow, people.make(roles=("admin",)).id)
    support = accounts.get_user_view(uow, people.make(roles=("support",)).id)
    target = accounts.get_user_view(uow, people.make(roles=("admin",)).id)
    path = f"{API}/users/{{}}/mfa_enrolment_codes"
    admin_token, support_token = token_for(uow, admin), token_for(uow, support)

    forbidden = error_of(api.post(path.format(target.public_id), headers=bearer(support_token)),
                         403)  # fmt: skip
    assert "users:manage" in forbidden["message"]
    own = error_of(api.post(path.format(admin.public_id), headers=bearer(admin_token)), 403)
    assert own["code"] == "cannot_enrol_self"
    enrolled = error_of(api.post(path.format(support.public_id), headers=bearer(admin_token)),
                        400)  # fmt: skip
    assert enrolled["code"] == "mfa_already_enabled"
    unknown = "usr_" + "0" * 24
    error_of(api.post(path.format(unknown), headers=bearer(admin_token)), 404)
    assert error_of(api.post(path.format(target.public_id)), 401)


def test_cardholders_enrol_with_their_password_as_before(
    client: PageClient, people: People
) -> None:
    holder = people.make()
    sign_in(client, holder)
    intro = client.get("/auth/mfa/setup")
    assert 'name="enrolment_code"' not in intro.get_data(as_text=True)
    started = client.post("/auth/mfa/setup")
    assert started.status_code == 200
    assert _secret_in(started.get_data(as_text=True))
