"""The CLI side of staff enrolment: ``create-admin`` prints the new administrator's one-time
enrolment code, ``mfa-enrolment-code`` makes another, ``seed-demo`` refuses to run in
production, and the demo staff sign in with the TOTP secret ``seed-demo`` prints."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pyotp
import pytest
import sqlalchemy as sa
from flask import Flask

from portal.demo import DEMO_PASSWORD, STAFF
from portal.domain.errors import InvalidInput
from portal.services.identity import accounts, mfa
from tests.api.test_auth_api import API, client_for

CODE = re.compile(r"one-time enrolment code for (\S+) \(shown once, valid until [^)]*\): (\S+)")
ADMIN_ARGS = ["create-admin", "--email", "first@portal.test", "--first-name", "Ada",
              "--last-name", "Root", "--password", "correct horse battery staple"]  # fmt: skip


def _user_id(connection: sa.Connection, email: str) -> int:
    return connection.execute(
        sa.text("SELECT id FROM users WHERE email = :e"), {"e": email}
    ).scalar_one()


def test_create_admin_prints_a_one_time_enrolment_code(app: Flask, connection, uow) -> None:
    result = app.test_cli_runner().invoke(args=ADMIN_ARGS)
    assert result.exit_code == 0, result.output
    found = CODE.search(result.output)
    assert found, result.output
    assert found.group(1) == "first@portal.test"
    code = found.group(2)
    admin = accounts.get_user_view(uow, _user_id(connection, "first@portal.test"))

    stored = connection.execute(
        sa.text("SELECT row_to_json(c)::text FROM mfa_enrolment_codes c WHERE user_id = :id"),
        {"id": admin.id},
    ).scalar_one()
    assert code not in stored and code.replace("-", "") not in stored  # only its hash is kept
    with pytest.raises(InvalidInput):  # the password alone is not enough
        mfa.begin_totp_enrolment(uow, actor=admin.actor)
    assert mfa.begin_totp_enrolment(uow, actor=admin.actor, enrolment_code=code).secret
    with pytest.raises(InvalidInput, match="used already"):
        mfa.begin_totp_enrolment(uow, actor=admin.actor, enrolment_code=code)


def test_mfa_enrolment_code_makes_a_new_code_replacing_the_old(app: Flask, connection, uow):
    runner = app.test_cli_runner()
    first = CODE.search(runner.invoke(args=ADMIN_ARGS).output)
    assert first
    again = runner.invoke(args=["mfa-enrolment-code", "--email", "FIRST@portal.test"])
    assert again.exit_code == 0, again.output
    second = CODE.search(again.output)
    assert second and second.group(2) != first.group(2)
    admin = accounts.get_user_view(uow, _user_id(connection, "first@portal.test"))
    with pytest.raises(InvalidInput):
        mfa.begin_totp_enrolment(uow, actor=admin.actor, enrolment_code=first.group(2))
    assert mfa.begin_totp_enrolment(uow, actor=admin.actor, enrolment_code=second.group(2))

    unknown = runner.invoke(args=["mfa-enrolment-code", "--email", "nobody@portal.test"])
    assert unknown.exit_code == 1 and "no user has the email" in unknown.output


@pytest.mark.parametrize("args", [["seed-demo"], ["seed-demo", "--if-empty"]])
def test_seed_demo_refuses_to_run_in_production(
    app: Flask, connection: sa.Connection, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    monkeypatch.setitem(app.config, "PORTAL_ENV", "production")
    before = connection.execute(sa.text("SELECT count(*) FROM users")).scalar_one()

    result = app.test_cli_runner().invoke(args=args)

    assert result.exit_code != 0
    assert "refuses to run in production" in result.output
    assert "PORTAL_ENV=production" in result.output
    assert connection.execute(sa.text("SELECT count(*) FROM users")).scalar_one() == before
    assert DEMO_PASSWORD not in result.output


def test_the_demo_staff_sign_in_with_the_printed_secret(app: Flask, connection) -> None:
    result = app.test_cli_runner().invoke(args=["seed-demo"])
    assert result.exit_code == 0, result.output
    assert "demo staff second factor (development only)" in result.output
    assert "oathtool --totp -b" in result.output
    api = client_for(app)
    for person in STAFF:
        found = re.search(re.escape(person.email) + r"\s+secret ([A-Z2-7]{32})\n\s+(otpauth://\S+)",
                          result.output)  # fmt: skip
        assert found, result.output
        secret, uri = found.groups()
        assert pyotp.parse_uri(uri).secret == secret
        login = {"email": person.email, "password": DEMO_PASSWORD}
        password_only = api.post(f"{API}/auth/token", json=login)
        assert password_only.status_code == 401
        assert password_only.get_json()["error"]["code"] == "mfa_required"
        signed_in = api.post(
            f"{API}/auth/token",
            json={**login, "totp_code": pyotp.TOTP(secret).at(datetime.now(UTC))},
        )
        assert signed_in.status_code == 200, signed_in.get_data(as_text=True)
        token = signed_in.get_json()["access_token"]
        me = api.get(f"{API}/users/me", headers={"Authorization": f"Bearer {token}"})
        assert me.get_json()["roles"] == list(person.roles)
