"""Structured logs: JSON lines parse, carry the request id, route, status, duration and user id,
and no secret reaches them after requests that handle card numbers, security codes, tokens and
passwords; the masking filter catches secrets code logs by mistake."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from flask import Flask

from portal.config import TEST_SECRETS, load_config
from portal.services.shared.uow import UnitOfWork
from portal.web import logging as log_setup
from tests.api.test_auth_api import API, PASSWORD, client_for, person, sign_in
from tests.api.test_cards_api import token_of


@contextmanager
def capture_json(app: Flask) -> Iterator[io.StringIO]:
    """Everything the ``portal`` loggers write meanwhile, as JSON lines."""
    stream = io.StringIO()
    handler = log_setup.build_handler(app.config, stream=stream, fmt="json")
    logger = logging.getLogger("portal")
    logger.addHandler(handler)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)


@pytest.fixture
def json_log(app: Flask) -> Iterator[io.StringIO]:
    with capture_json(app) as stream:
        yield stream


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_json_lines_carry_request_context_and_no_secrets(
    app: Flask, connection: Any, uow: UnitOfWork, json_log: io.StringIO
) -> None:
    user = person(uow, "cardholder")
    api = client_for(app)
    signed_in = sign_in(api, user.email)
    assert signed_in.status_code == 200, signed_in.get_data(as_text=True)
    pair = signed_in.get_json()
    headers = token_of(uow, user.actor)
    issued = api.post(
        f"{API}/cards",
        json={"card_type": "debit", "brand": "visa", "currency": "USD", "name": "Logged"},
        headers={**headers, "X-Request-ID": "req-logging-test-1"},
    )
    assert issued.status_code == 201, issued.get_data(as_text=True)
    card = issued.get_json()
    api.post(f"{API}/auth/token", json={"email": user.email, "password": "wrong-" + PASSWORD})
    # Code that logs secrets by mistake, inside a request.
    with app.test_request_context("/x", headers={"X-Request-ID": "req-mistake"}):
        logging.getLogger("portal.test").warning(
            "oops card=%s cvc=%s token=%s refresh=%s password=%s",
            card["number"], card["cvc"], pair["access_token"], pair["refresh_token"], PASSWORD,
        )  # fmt: skip

    records = lines(json_log)
    text = json_log.getvalue()
    for secret in (
        card["number"], pair["access_token"], pair["refresh_token"], headers["Authorization"],
        PASSWORD, app.config["SECRET_KEY"],
    ):  # fmt: skip
        assert secret not in text
    assert f"cvc={card['cvc']}" not in text and f'"cvc": "{card["cvc"]}"' not in text

    access = [r for r in records if r["logger"] == "portal.access"]
    card_line = next(r for r in access if r.get("request_id") == "req-logging-test-1")
    assert card_line["route"] == "/api/v1/cards" and card_line["method"] == "POST"
    assert card_line["status"] == 201 and card_line["duration_ms"] >= 0
    assert card_line["user_id"] == user.id
    assert {"time", "level", "message"} <= set(card_line)
    assert {r["status"] for r in access if r["route"] == "/api/v1/auth/token"} == {200, 401}
    assert all(r["request_id"].startswith("req") for r in access)


@pytest.mark.parametrize(
    ("message", "leaked"),
    [
        ("card 4242 4242 4242 4242 charged", "4242 4242 4242 4242"),
        ("card 4000-0566-5566-5556 charged", "4000-0566-5566-5556"),
        ("card 378282246310005 charged", "378282246310005"),
        ('body {"number": "4111111111111111", "cvc": "123"}', '"cvc": "123"'),
        ("cvv=9876 given", "9876"),
        ("Authorization: Bearer abc.def-ghi", "abc.def-ghi"),
        ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl", "eyJhbGciOiJIUzI1NiJ9"),
        ("refresh prt_AbCdEf0123456789", "prt_AbCdEf0123456789"),
        ("key sk_live_AbC1xyz987", "sk_live_AbC1xyz987"),
        ("form password=hunter2hunter2&x=1", "hunter2hunter2"),
        ('json {"password": "s3cret \\" quoted"}', "s3cret"),
        ("new_password: Tr0ub4dor", "Tr0ub4dor"),
    ],
)
def test_filter_masks_secrets_logged_by_mistake(message: str, leaked: str) -> None:
    stream = io.StringIO()
    handler = log_setup.build_handler({}, stream=stream, fmt="json")
    logger = logging.getLogger("portal.test.mask")
    logger.addHandler(handler)
    try:
        logger.warning(message)
        logger.warning("as argument: %s", message)
    finally:
        logger.removeHandler(handler)
    assert leaked not in stream.getvalue()
    assert len(lines(stream)) == 2


def test_filter_leaves_ordinary_numbers_and_masks_configured_secrets() -> None:
    config = load_config({"PORTAL_ENV": "test"})
    mask = log_setup.SecretMask(log_setup.configured_secrets(config))
    # Not Luhn-valid, too short, or an id: left alone.
    assert mask.mask("order 1234567890123 amount 1000") == "order 1234567890123 amount 1000"
    assert mask.mask("took 12.5 ms, 42 rows") == "took 12.5 ms, 42 rows"
    for name in ("SECRET_KEY", "PORTAL_FINGERPRINT_KEY", "PORTAL_CVV_KEY", "PORTAL_JWT_KEY"):
        secret = TEST_SECRETS[name]
        assert secret not in mask.mask(f"leak {secret} here")
    vault_b64 = TEST_SECRETS["PORTAL_VAULT_KEYS"].partition(":")[2]
    assert vault_b64 not in mask.mask(f"vault {vault_b64}")


def test_exceptions_are_masked() -> None:
    stream = io.StringIO()
    handler = log_setup.build_handler({}, stream=stream, fmt="text")
    logger = logging.getLogger("portal.test.exc")
    logger.addHandler(handler)
    try:
        try:
            raise ValueError("bad card 4242424242424242")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    assert "4242424242424242" not in stream.getvalue() and "ValueError" in stream.getvalue()


def test_log_format_defaults() -> None:
    assert load_config({"PORTAL_ENV": "test"})["LOG_FORMAT"] == "text"
    assert load_config({"PORTAL_ENV": "test", "PORTAL_LOG_FORMAT": "json"})["LOG_FORMAT"] == "json"


def test_filter_masks_records_in_place_for_other_handlers() -> None:
    record = logging.LogRecord(
        "portal.x",
        logging.INFO,
        __file__,
        1,
        "card %s password=%s",
        ("4242424242424242", "pw123456"),
        None,
    )
    assert log_setup.SecretMask().filter(record)
    assert record.getMessage() == "card [card ****4242] password=[REDACTED]"
