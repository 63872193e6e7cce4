"""Fixtures for the page tests: a test client whose requests run inside the test's
transaction, users with passwords (and optionally a second factor), the outbox of sent mail,
and a fresh rate-limiter state per test.

CSRF is off here (as in every page test) except where a test turns it on to prove it works.
"""

from __future__ import annotations

import re
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

import pyotp
import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from portal.extensions import limiter
from portal.services.identity import mfa, users
from portal.services.shared.uow import UnitOfWork
from portal.web.uow import make_uow
from tests.conftest import SYSTEM

PASSWORD = "correct horse battery staple"
NEW_PASSWORD = "a brand new passphrase 42"


class PageClient(FlaskClient):
    """Buffers every response, so what runs when a response closes (mail is sent after the
    response) has run by the time a test reads it."""

    def open(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("buffered", True)
        return super().open(*args, **kwargs)


@pytest.fixture(autouse=True)
def page_config(app: Flask) -> Iterator[None]:
    """CSRF off, a fresh limiter state and an empty outbox for every page test."""
    saved = app.config.get("WTF_CSRF_ENABLED", True)
    app.config["WTF_CSRF_ENABLED"] = False
    limiter.reset()
    app.extensions.setdefault("portal.outbox", deque(maxlen=100)).clear()
    try:
        yield
    finally:
        app.config["WTF_CSRF_ENABLED"] = saved
        limiter.reset()


def new_client(app: Flask, address: str = "127.0.0.1") -> PageClient:
    client = PageClient(app, app.response_class, use_cookies=True)
    client.environ_base["REMOTE_ADDR"] = address
    return client


@pytest.fixture
def client(app: Flask, connection: sa.Connection) -> PageClient:
    return new_client(app)


@pytest.fixture
def another_client(app: Flask, connection: sa.Connection) -> PageClient:
    return new_client(app)


@pytest.fixture
def outbox(app: Flask) -> deque[EmailMessage]:
    return app.extensions["portal.outbox"]


def last_mail(outbox: deque[EmailMessage], to: str) -> EmailMessage:
    for message in reversed(outbox):
        if message["To"].lower() == to.lower():
            return message
    raise AssertionError(f"no mail to {to}: {[m['To'] for m in outbox]}")


def link_in(message: EmailMessage, path: str) -> str:
    """The path of the first link in a mail that starts with ``path`` (e.g. /auth/verify/)."""
    body = message.get_content()
    found = re.search(r"https?://[^/\s]+(" + re.escape(path) + r"[A-Za-z0-9_\-]+)", body)
    assert found, body
    return found.group(1)


@dataclass
class Person:
    id: int
    email: str
    password: str
    totp_secret: str | None = None
    recovery_codes: tuple[str, ...] = ()

    def code(self, *, offset: int = 0) -> str:
        assert self.totp_secret is not None
        return pyotp.TOTP(self.totp_secret).at(time.time() + offset * 30)


class People:
    """Users with passwords, made through the real services inside the test transaction."""

    def __init__(self, app: Flask, connection: sa.Connection) -> None:
        self.app = app
        self.connection = connection

    def uow(self) -> UnitOfWork:
        with self.app.app_context():
            return make_uow(self.app)

    def make(
        self,
        *,
        roles: tuple[str, ...] = ("cardholder",),
        verified: bool = True,
        with_mfa: bool = False,
        email: str | None = None,
        password: str = PASSWORD,
    ) -> Person:
        email = email or f"{roles[0]}-{uuid.uuid4().hex[:8]}@example.test"
        created = users.create_user(
            self.uow(), actor=SYSTEM, email=email, first_name="Ada", last_name="Lovelace",
            password=password, roles=roles, verified=verified,
        )  # fmt: skip
        person = Person(created.id, email, password)
        if with_mfa:
            self.enrol(person)
        return person

    def enrolment_code(self, person: Person) -> str:
        """A one-time enrolment code for the person, as ``portal create-admin`` makes one."""
        return mfa.issue_enrolment_code(self.uow(), actor=SYSTEM, user_id=person.id).code

    def enrol(self, person: Person) -> None:
        actor = users.actor_for(self.uow(), person.id)
        # Staff need an enrolment code besides the password (given to anyone, it is checked).
        code = self.enrolment_code(person)
        enrolment = mfa.begin_totp_enrolment(self.uow(), actor=actor, enrolment_code=code)
        codes = mfa.confirm_totp(self.uow(), actor=actor, code=pyotp.TOTP(enrolment.secret).now())
        person.totp_secret = enrolment.secret
        person.recovery_codes = tuple(codes)
        self.forget_last_code(person)

    def forget_last_code(self, person: Person) -> None:
        """Let the current TOTP code be used again (the service refuses a replayed step; a
        test signs in several times within one 30-second step)."""
        self.connection.execute(
            sa.text("UPDATE users SET totp_last_step = NULL WHERE id = :id"), {"id": person.id}
        )

    def archive(self, person: Person) -> None:
        users.archive_user(self.uow(), actor=SYSTEM, user_id=person.id)


@pytest.fixture
def people(app: Flask, connection: sa.Connection) -> People:
    return People(app, connection)


def sign_in(client: FlaskClient, person: Person, **extra: str) -> Any:
    return client.post(
        "/auth/login", data={"email": person.email, "password": person.password, **extra}
    )


def signed_in(client: FlaskClient) -> bool:
    """Whether the client's cookie is a live, fully signed-in session."""
    response = client.get("/auth/account")
    return response.status_code == 200


def htmx(**headers: str) -> dict[str, str]:
    return {"HX-Request": "true", **headers}


def page_text(response: Any) -> str:
    return re.sub(r"\s+", " ", response.get_data(as_text=True))
