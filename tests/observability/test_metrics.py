"""Prometheus request metrics: counts by url_rule and real status (404 and 429 included), and
/metrics answers only the bearer token."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from portal import create_app
from portal.extensions import db, limiter
from portal.services.shared.uow import UnitOfWork
from portal.web.uow import make_uow
from tests.api.test_auth_api import API, client_for, new_email, person, sign_in
from tests.api.test_cards_api import recipient_for, token_of
from tests.conftest import Factory, as_owner, confirm_top_ups

TOKEN = "metrics-test-token-0123456789"


@pytest.fixture
def scraped_app(app: Flask, connection: sa.Connection) -> Iterator[Flask]:
    """An app of its own with /metrics open to TOKEN (and its own registry), on the test's
    connection like the session app."""
    scraped = create_app({**app.config, "METRICS_TOKEN": TOKEN})
    with scraped.app_context():
        engines = db._app_engines[scraped]
    engines[None] = connection  # type: ignore[assignment]
    scraped.extensions["portal.session_factory"] = app.extensions["portal.session_factory"]
    limiter.reset()
    yield scraped
    limiter.reset()


def sample(text: str, rule: str, status: int, method: str) -> float:
    pattern = re.compile(
        r"^portal_http_request_duration_seconds_count\{(?P<labels>[^}]*)\} (?P<value>\S+)$", re.M
    )
    for found in pattern.finditer(text):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', found["labels"]))
        if labels == {"method": method, "status": str(status), "url_rule": rule}:
            return float(found["value"])
    return 0.0


def test_requests_are_counted_by_route_and_status(scraped_app: Flask, connection: Any) -> None:
    client = client_for(scraped_app)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    before = client.get("/metrics", headers=auth).get_data(as_text=True)

    email = new_email()
    failures_before = value(before, "portal_sign_ins_total", outcome="failure")
    limited_before = value(before, "portal_sign_ins_total", outcome="limited")
    answers = [
        client.post(f"{API}/auth/token", json={"email": email, "password": "wrong-pass-123"})
        for _ in range(6)
    ]
    client.get("/no/such/page")
    client.get("/no/such/page")

    assert [a.status_code for a in answers] == [401] * 5 + [429]
    after = client.get("/metrics", headers=auth).get_data(as_text=True)
    rule = "/api/v1/auth/token"
    assert sample(after, rule, 401, "POST") - sample(before, rule, 401, "POST") == 5
    assert sample(after, rule, 429, "POST") - sample(before, rule, 429, "POST") == 1
    assert sample(after, "None", 404, "GET") - sample(before, "None", 404, "GET") == 2
    assert value(after, "portal_sign_ins_total", outcome="failure") - failures_before == 5
    assert value(after, "portal_sign_ins_total", outcome="limited") - limited_before == 1
    assert "/metrics" not in re.findall(r'url_rule="([^"]*)"', after)


def test_metrics_need_the_token(scraped_app: Flask, connection: Any) -> None:
    client = client_for(scraped_app)
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_metrics_are_off_without_a_token(app: Flask, connection: Any) -> None:
    assert not app.config.get("METRICS_TOKEN")
    assert client_for(app).get("/metrics").status_code == 404


def value(text: str, name: str, **labels: str) -> float:
    for found in re.finditer(rf"^{name}\{{([^}}]*)\}} (\S+)$", text, re.M):
        if dict(re.findall(r'(\w+)="([^"]*)"', found[1])) == labels:
            return float(found[2])
    return 0.0


def test_business_counters_move_by_exactly_what_moved(
    scraped_app: Flask, connection: Any, make: Factory, uow: UnitOfWork
) -> None:
    alice, budi = make.user(), make.user()
    mine, theirs = make.card(alice), make.card(budi)
    as_alice = token_of(uow, alice)
    client = client_for(scraped_app)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    before = client.get("/metrics", headers=auth).get_data(as_text=True)

    def post(path: str, body: dict[str, Any], idem: str | None = None) -> Any:
        headers = {**as_alice, "Idempotency-Key": idem or uuid.uuid4().hex}
        return client.post(f"{API}{path}", json=body, headers=headers)

    top_up = {"card": mine.public_id, "amount": 2500, "currency": "USD", "method": "e_wallet"}
    same = uuid.uuid4().hex
    assert post("/top_ups", top_up, same).status_code == 201
    assert post("/top_ups", top_up, same).headers["Idempotent-Replayed"] == "true"
    assert post("/top_ups", {**top_up, "amount": 1700}).status_code == 201
    assert confirm_top_ups(make_uow(scraped_app)) == 2  # the funding jobs, counted by the app
    transfer = {"from_card": mine.public_id, "amount": 350,
                "to_card": recipient_for(client, as_alice, theirs), "currency": "usd"}  # fmt: skip
    assert post("/transfers", transfer).status_code == 201
    assert post("/transfers", {**transfer, "amount": 999_999}).status_code == 402
    person_ = person(uow, "cardholder")
    assert sign_in(client, person_.email).status_code == 200

    after = client.get("/metrics", headers=auth).get_data(as_text=True)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    money = "portal_money_moved_minor_units_total"
    assert moved(money, kind="top_up", currency="USD", outcome="succeeded") == 4200
    assert moved(money, kind="transfer", currency="USD", outcome="succeeded") == 350
    assert moved("portal_money_movements_total", kind="top_up", currency="USD",
                 outcome="succeeded") == 2  # fmt: skip
    assert moved("portal_idempotent_replays_total", kind="top_up") == 1
    assert moved("portal_refusals_total", kind="transfer", code="insufficient_funds") == 1
    assert moved("portal_sign_ins_total", outcome="success") == 1


def test_queue_and_holds_are_read_from_the_database_at_scrape_time(
    scraped_app: Flask, connection: Any, make: Factory, uow: Any, clock: Any
) -> None:
    from datetime import timedelta

    from portal.domain.money import Money
    from portal.services.shared import jobs
    from portal.services.wallet import wallet
    from tests.conftest import new_key

    client = scraped_app.test_client()
    before = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).get_data(
        as_text=True
    )
    alice = make.user()
    card = make.card(alice, balance="100")
    wallet.withdraw(uow, actor=alice, card_id=card.card_id, amount=Money(2000, "USD"),
                    bank=wallet.BankAccount("Bank", "1234567890", "Alice"),
                    idempotency_key=new_key())  # fmt: skip
    clock.now -= timedelta(minutes=5)  # a job that has been due for five minutes
    uow.run(lambda u: jobs.enqueue(u, "test.waiting", {}))
    after = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).get_data(
        as_text=True
    )
    assert value(after, "portal_jobs", status="queued") == (
        value(before, "portal_jobs", status="queued") + 2  # the payout and the waiting job
    )
    assert re.search(r"^portal_holds_pending (\S+)$", after, re.M)[1] == "1.0"
    oldest = float(re.search(r"^portal_job_oldest_due_seconds (\S+)$", after, re.M)[1])
    assert 290 <= oldest <= 400


def test_token_reuse_is_counted(
    scraped_app: Flask, connection: Any, uow: UnitOfWork, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dataclasses import replace

    from tests.api.test_auth_api import pair_of

    monkeypatch.setitem(
        scraped_app.config,
        "SERVICE_SETTINGS",
        replace(scraped_app.config["SERVICE_SETTINGS"], refresh_grace_seconds=0),
    )
    client = client_for(scraped_app)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    name = "portal_token_reuse_detections_total"
    before = client.get("/metrics", headers=auth).get_data(as_text=True)
    first = pair_of(sign_in(client, person(uow, "cardholder").email))
    client.post(f"{API}/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert client.post(
        f"{API}/auth/refresh", json={"refresh_token": first["refresh_token"]}
    ).status_code == 401  # fmt: skip
    after = client.get("/metrics", headers=auth).get_data(as_text=True)
    assert value(after, name, reason="used_after_grace") - value(
        before, name, reason="used_after_grace"
    ) == 1  # fmt: skip


def test_ledger_gauges_come_from_the_last_recorded_check(
    scraped_app: Flask, connection: sa.Connection, make: Factory, uow: UnitOfWork
) -> None:
    """The scrape reads the last periodic check (never sums the ledger itself): balanced, then
    a posting without its other half and a cached balance that drifted both show."""
    from portal.services.ledger import reconciliation

    client = scraped_app.test_client()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    card = make.card(make.user(), balance="10")
    reconciliation.record_check(uow)
    text = client.get("/metrics", headers=auth).get_data(as_text=True)
    assert value(text, "portal_ledger_imbalance_minor_units", currency="USD") == 0
    assert re.search(r"^portal_ledger_violations (\S+)$", text, re.M)[1] == "0.0"
    checked = float(re.search(r"^portal_ledger_last_check_timestamp_seconds (\S+)$", text, re.M)[1])
    assert checked > 0

    # Corruption no code path can make: as the schema owner (the app's role may not turn
    # triggers off), triggers off for this (rolled back) transaction only.
    with as_owner(connection):
        connection.execute(sa.text("SET LOCAL session_replication_role = replica"))
        entry = connection.execute(
            sa.text("INSERT INTO journal_entries (kind) VALUES ('test') RETURNING id")
        ).scalar_one()
        account = connection.execute(
            sa.text("SELECT id FROM accounts WHERE card_id = :c"), {"c": card.card_id}
        ).scalar_one()
        connection.execute(
            sa.text("INSERT INTO postings (journal_entry_id, account_id, amount_minor, currency)"
                    " VALUES (:e, :a, 7, 'USD')"),
            {"e": entry, "a": account},
        )  # fmt: skip
        connection.execute(sa.text("SET LOCAL session_replication_role = origin"))
    before_second_check = client.get("/metrics", headers=auth).get_data(as_text=True)
    assert value(before_second_check, "portal_ledger_imbalance_minor_units", currency="USD") == 0
    reconciliation.record_check(uow)
    text = client.get("/metrics", headers=auth).get_data(as_text=True)
    assert value(text, "portal_ledger_imbalance_minor_units", currency="USD") == 7
    # The ledger sum, the entry's sum and the wallet's cached balance (1000, postings say 1007).
    assert re.search(r"^portal_ledger_violations (\S+)$", text, re.M)[1] == "3.0"


def test_database_connections_are_gauged(app: Flask) -> None:
    """In use while checked out, open while pooled, none after the pool is disposed."""
    own = create_app({**app.config, "METRICS_TOKEN": TOKEN})
    registry = own.extensions["portal.metrics"].registry

    def gauges() -> tuple[float | None, float | None]:
        return (
            registry.get_sample_value("portal_db_connections_in_use"),
            registry.get_sample_value("portal_db_connections_open"),
        )

    with own.app_context():
        engine = db.engines[None]
        assert gauges() == (0, 0)
        with engine.connect() as first, engine.connect() as second:
            first.execute(sa.text("SELECT 1"))
            second.execute(sa.text("SELECT 1"))
            assert gauges() == (2, 2)
        assert gauges() == (0, 2)  # back in the pool, still open
        engine.dispose()
        assert gauges() == (0, 0)


def test_conflicts_are_counted_whether_retried_or_given_up(app: Flask) -> None:
    import psycopg.errors
    from sqlalchemy.exc import DBAPIError

    from portal.domain.errors import TemporarilyUnavailable
    from portal.web.uow import session_factory

    seen: list[tuple[str, float, dict[str, str]]] = []
    uow = UnitOfWork(
        session_factory(app), app.config["SERVICE_SETTINGS"],
        metrics=lambda name, value, labels: seen.append((name, value, labels)),
    )  # fmt: skip
    attempts = []

    def deadlocks_once(u: UnitOfWork) -> str:
        attempts.append(1)
        u.observe("money_movements", kind="x", currency="USD", outcome="succeeded")
        if len(attempts) == 1:
            raise DBAPIError("UPDATE", {}, psycopg.errors.DeadlockDetected("deadlock"))
        return "done"

    assert uow.run(deadlocks_once) == "done"
    assert seen == [
        ("db_conflicts", 1.0, {"error": "DeadlockDetected", "outcome": "retried"}),
        ("money_movements", 1.0, {"kind": "x", "currency": "USD", "outcome": "succeeded"}),
    ]  # the failed attempt's observation is dropped, the committed one counted once
    seen.clear()

    def always_locked(u: UnitOfWork) -> None:
        raise DBAPIError("SELECT", {}, psycopg.errors.LockNotAvailable("lock timeout"))

    with pytest.raises(TemporarilyUnavailable):
        uow.run(always_locked)
    assert seen == [("db_conflicts", 1.0, {"error": "LockNotAvailable", "outcome": "gave_up"})]
