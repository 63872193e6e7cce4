"""Card numbers and security codes never reach the logs, whatever the log level."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from portal.extensions import limiter
from tests.api.test_auth_api import API
from tests.api.test_cards_api import token_of
from tests.conftest import Factory


@pytest.fixture
def sql_logged() -> Iterator[None]:
    """SQL statements and their parameters logged, from the test's first connection on."""
    engine_logger = logging.getLogger("sqlalchemy.engine")
    previous = engine_logger.level
    engine_logger.setLevel(logging.INFO)
    yield
    engine_logger.setLevel(previous)


def test_issuing_and_using_a_card_logs_no_number_or_code(
    sql_logged, app, connection, make: Factory, caplog
):
    limiter.reset()
    caplog.set_level(logging.DEBUG)
    alice = make.user()
    headers = token_of(make.uow, alice)
    client = app.test_client()
    issued = client.post(
        f"{API}/cards", json={"card_type": "debit", "brand": "visa", "currency": "USD"},
        headers=headers,
    ).get_json()  # fmt: skip
    number, cvc = issued["number"], issued["cvc"]
    topped = client.post(
        f"{API}/top_ups", headers={**headers, "Idempotency-Key": "log-test-1"},
        json={"card": issued["id"], "amount": 5000, "currency": "usd", "method": "cash"},
    )  # fmt: skip
    found = client.post(f"{API}/cards/lookup", json={"number": number}, headers=headers)
    shown = client.get(f"{API}/cards/{issued['id']}", headers=headers)
    assert (topped.status_code, found.status_code, shown.status_code) == (201, 200, 200)
    assert "INSERT INTO cards" in caplog.text  # the statements really were logged
    assert number not in caplog.text
    assert number[-10:] not in caplog.text
    assert f"'{cvc}'" not in caplog.text and f'"{cvc}"' not in caplog.text
