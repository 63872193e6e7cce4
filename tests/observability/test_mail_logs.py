"""Emails never reach the logs: a password-reset (or verification) mail is logged as "sent to
whom, with which subject", never with its body, link or token, in development and in tests;
development shows the body on the console (stderr), marked as development only. The masking
formatter hides emailed link tokens in any line. Production refuses to start without SMTP."""

from __future__ import annotations

import io
import logging
import re
from collections import deque
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from portal.config import ConfigError, load_config
from portal.extensions import limiter
from portal.web import logging as log_setup
from tests.observability.test_logging import capture_json, lines
from tests.pages.conftest import People, new_client

TOKEN_LINK = re.compile(r"https?://\S+?(/auth/(?:reset|verify)/([A-Za-z0-9_-]{20,}))")


class RawRecords(logging.Handler):
    """Every record's message as logged, before any masking."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def raw() -> Iterator[RawRecords]:
    handler = RawRecords()
    loggers = [logging.getLogger(), logging.getLogger("portal")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield handler
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


@pytest.fixture
def people(app: Flask, connection: Any) -> People:
    return People(app, connection)


@pytest.fixture
def outbox(app: Flask) -> deque[Any]:
    limiter.reset()
    box = app.extensions.setdefault("portal.outbox", deque(maxlen=100))
    box.clear()
    return box


def _link_of(outbox: deque[Any], to: str) -> tuple[str, str, str]:
    (message,) = [m for m in outbox if m["To"] == to]
    found = TOKEN_LINK.search(message.get_content())
    assert found, message.get_content()
    return found.group(0), found.group(1), found.group(2)


def _assert_not_logged(texts: list[str], link: str, path: str, token: str) -> None:
    for text in texts:
        assert token not in text, text
        assert link not in text and path not in text, text


def _request_reset(app: Flask, people: People) -> tuple[str, Any]:
    person = people.make()
    response = new_client(app).post("/auth/forgot", data={"email": person.email})
    assert response.status_code == 200
    return person.email, response


@pytest.mark.parametrize("mode", ["test", "development"])
def test_a_password_reset_writes_no_link_or_token_to_any_log_line(
    app: Flask, connection: Any, people: People, outbox: deque[Any], raw: RawRecords,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, mode: str,
) -> None:  # fmt: skip
    monkeypatch.setitem(app.config, "PORTAL_ENV", mode)
    with capture_json(app) as json_log:
        email, _ = _request_reset(app, people)
    link, path, token = _link_of(outbox, email)  # the mail was made, with its link
    console = capsys.readouterr().err

    records = lines(json_log)
    _assert_not_logged([json_log.getvalue(), *raw.messages], link, path, token)
    (sent,) = [r for r in records if r["logger"] == "portal.mail"]
    assert email in sent["message"] and "Reset your Portal password" in sent["message"]
    assert "Someone asked" not in json_log.getvalue()  # no part of the body either
    if mode == "development":
        # Shown on the console for `make run` users, and said to be development only.
        assert link in console
        assert "development only" in console
        assert f"To: {email}" in console
    else:
        assert link not in console and token not in console


def test_a_verification_mail_in_development_is_on_the_console_and_not_in_the_logs(
    app: Flask, connection: Any, outbox: deque[Any], raw: RawRecords,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setitem(app.config, "PORTAL_ENV", "development")
    email = "verify-me@example.test"
    with capture_json(app) as json_log:
        response = new_client(app).post(
            "/auth/register",
            data={"first_name": "Vera", "last_name": "Fy", "email": email,
                  "password": "a long enough passphrase 9",
                  "password_confirmation": "a long enough passphrase 9"},
        )  # fmt: skip
    assert response.status_code == 302, response.get_data(as_text=True)
    link, path, token = _link_of(outbox, email)
    _assert_not_logged([json_log.getvalue(), *raw.messages], link, path, token)
    console = capsys.readouterr().err
    assert link in console and "development only" in console


@pytest.mark.parametrize("path", ["/auth/reset/", "/auth/verify/", "/merchant/join/"])
@pytest.mark.parametrize("fmt", ["json", "text"])
def test_the_masking_formatter_hides_emailed_link_tokens(path: str, fmt: str) -> None:
    token = "Zq3_x-9KpL2mN8vR4tY6uW1oA5sD7fG0hJ"
    stream = io.StringIO()
    handler = log_setup.build_handler({}, stream=stream, fmt=fmt)
    logger = logging.getLogger("portal.test.links")
    logger.addHandler(handler)
    try:
        logger.warning("GET %s%s 404", path, token)
        logger.warning("mail body: open https://portal.example.com%s%s?x=1 now", path, token)
        encoded = path.replace("/", "%2F")
        logger.warning("redirect to /auth/login?next=%s%s&y=2", encoded, token)
        logger.warning("route %s<token>", path)
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert token not in text
    assert text.count(f"{path}{log_setup.MASK}") == 2
    assert f"{path}<token>" in text  # a route's placeholder is left readable
    assert "?x=1" in text and "&y=2" in text  # only the token goes


def test_the_development_server_request_lines_are_masked(app: Flask) -> None:
    server_log = logging.getLogger("werkzeug")
    masks = [f for f in server_log.filters if isinstance(f, log_setup.SecretMask)]
    assert len(masks) == 1
    record = logging.LogRecord("werkzeug", logging.INFO, __file__, 1,
                               '127.0.0.1 - - "%s" 200 -', ("GET /auth/reset/AbC123xyz HTTP/1.1",),
                               None)  # fmt: skip
    assert server_log.filter(record)
    assert "AbC123xyz" not in record.getMessage()


PRODUCTION = {
    "PORTAL_ENV": "production",
    "SECRET_KEY": "s" * 48,
    "DATABASE_URL": "postgresql://portal@db.internal/portal",
    "PORTAL_VAULT_KEYS": "1:" + "A" * 43 + "=",
    "PORTAL_FINGERPRINT_KEY": "f" * 32,
    "PORTAL_CVV_KEY": "c" * 32,
    "PORTAL_JWT_KEY": "j" * 48,
    "PORTAL_API_KEY_HASH_KEY": "k" * 32,
    "PORTAL_PUBLIC_URL": "https://portal.example.com",
}


def test_production_refuses_to_load_without_smtp() -> None:
    with pytest.raises(ConfigError) as missing:
        load_config(PRODUCTION)
    assert "PORTAL_SMTP_URL" in str(missing.value)
    assert "missing production settings" in str(missing.value)
    with pytest.raises(ConfigError, match="PORTAL_SMTP_URL"):
        load_config({**PRODUCTION, "PORTAL_SMTP_URL": ""})
    with pytest.raises(ConfigError, match="PORTAL_SMTP_URL must start with"):
        load_config({**PRODUCTION, "PORTAL_SMTP_URL": "http://mail.internal"})
    config = load_config({**PRODUCTION, "PORTAL_SMTP_URL": "smtp+starttls://u:p@mail:587"})
    assert config["SMTP_URL"] == "smtp+starttls://u:p@mail:587"
    # Development and tests still work without one (mail stays in-process).
    assert load_config({"PORTAL_ENV": "test"})["SMTP_URL"] is None
