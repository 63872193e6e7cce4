"""Every metric the dashboards and alert rules query is one the portal really exports.

The names come from live scrapes, not from a list: a test app with a metrics token takes a
scripted set of requests (sign-ins, a top-up and its replay, a transfer, a refused transfer, a
404), the worker runs its periodic tasks (the ledger check among them) and a job, and both the
web's /metrics and the worker's own /metrics endpoint (served on a real port) are scraped.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from flask import Flask

from portal.services.shared import jobs
from portal.services.shared.uow import UnitOfWork
from portal.web.uow import make_uow
from portal.worker import Worker, WorkerMetrics, serve_http
from tests.api.test_auth_api import API, PASSWORD, client_for, person
from tests.api.test_cards_api import recipient_for, token_of
from tests.conftest import Factory, confirm_top_ups
from tests.deploy.promql import (
    dashboard_exprs,
    exported_names,
    metric_names,
    recorded_names,
    rule_exprs,
    sample_names,
)
from tests.observability.test_metrics import TOKEN, scraped_app  # noqa: F401 (a fixture)

#: Series Prometheus itself makes for every target.
SCRAPE_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}


@dataclass(frozen=True)
class Scrapes:
    web: str
    worker: str

    @property
    def names(self) -> set[str]:
        return exported_names(self.web) | exported_names(self.worker) | SCRAPE_SERIES


def scripted_traffic(app: Flask, make: Factory, uow: UnitOfWork) -> None:
    """Requests that make the business counters, histograms and gauges appear: API sign-ins
    (one wrong), a top-up and its replay, a transfer and a refused one, a 404, a health check,
    and a page sign-in with two wallet views."""
    client = client_for(app)
    alice, budi = make.user(), make.user()
    mine, theirs = make.card(alice), make.card(budi)
    as_alice = token_of(uow, alice)

    def post(path: str, body: dict[str, Any], key: str | None = None) -> Any:
        headers = {**as_alice, "Idempotency-Key": key or uuid.uuid4().hex}
        return client.post(f"{API}{path}", json=body, headers=headers)

    signed_up = person(uow, "cardholder")
    ok = client.post(f"{API}/auth/token", json={"email": signed_up.email, "password": PASSWORD})
    assert ok.status_code == 200
    wrong = {"email": signed_up.email, "password": "not-the-password-1"}
    assert client.post(f"{API}/auth/token", json=wrong).status_code == 401
    top_up = {"card": mine.public_id, "amount": 2500, "currency": "USD", "method": "e_wallet"}
    key = uuid.uuid4().hex
    assert post("/top_ups", top_up, key).status_code == 201
    assert post("/top_ups", top_up, key).headers["Idempotent-Replayed"] == "true"
    assert confirm_top_ups(uow) == 1  # the funding job's work, done here
    transfer = {"from_card": mine.public_id, "amount": 350,
                "to_card": recipient_for(client, as_alice, theirs), "currency": "USD"}  # fmt: skip
    assert post("/transfers", transfer).status_code == 201
    assert post("/transfers", {**transfer, "amount": 999_999}).status_code == 402
    assert client.get("/no/such/page").status_code == 404
    assert client.get("/healthz").status_code == 200
    # A page sign-in and the wallet twice: its chart's totals are cached (a miss, then a hit).
    pages = client_for(app)
    signed_in = pages.post("/auth/login", data={"email": signed_up.email, "password": PASSWORD})
    assert signed_in.status_code in (302, 303), signed_in.status_code
    assert [pages.get("/wallet").status_code for _ in range(2)] == [200, 200]


def worker_scrape(app: Flask, uow: UnitOfWork) -> str:
    """The worker's own /metrics after a loop's work: its periodic tasks (the ledger check
    feeds the web's ledger gauges) and a job with no handler (retried)."""
    worker = Worker(lambda: make_uow(app), metrics=WorkerMetrics())
    uow.run(lambda u: jobs.enqueue(u, "deploy-test.no-handler", {}))
    worker.beat()
    worker.run_periodic()
    assert worker.run_once() >= 1
    server = serve_http(worker, 0, host="127.0.0.1", token=TOKEN)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        assert requests.get(f"{url}/healthz", timeout=5).status_code == 200
        assert requests.get(f"{url}/metrics", timeout=5).status_code == 401
        answer = requests.get(f"{url}/metrics", headers=auth(), timeout=5)
        assert answer.status_code == 200
        return answer.text
    finally:
        server.shutdown()
        server.server_close()


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def scrapes(scraped_app: Flask, connection: Any, make: Factory, uow: UnitOfWork) -> Scrapes:  # noqa: F811
    scripted_traffic(scraped_app, make, uow)
    worker = worker_scrape(scraped_app, uow)
    web = scraped_app.test_client().get("/metrics", headers=auth())
    assert web.status_code == 200
    return Scrapes(web.get_data(as_text=True), worker)


def test_the_script_really_exercises_the_metrics(scrapes: Scrapes) -> None:
    """Control: the scripted traffic produced samples, not just declared families, so the names
    below are the ones a running portal shows."""
    web = sample_names(scrapes.web)
    assert {
        "portal_http_request_duration_seconds_bucket",
        "portal_money_moved_minor_units_total",
        "portal_money_movements_total",
        "portal_refusals_total",
        "portal_idempotent_replays_total",
        "portal_sign_ins_total",
        "portal_jobs",
        "portal_job_oldest_due_seconds",
        "portal_holds_pending",
        "portal_cache_requests_total",
        "portal_ledger_imbalance_minor_units",
        "portal_ledger_violations",
        "portal_ledger_last_check_timestamp_seconds",
    } <= web
    worker = sample_names(scrapes.worker)
    assert {"portal_worker_jobs_total", "portal_worker_job_duration_seconds_bucket"} <= worker


def unknown(exprs: list[tuple[str, str]], known: set[str]) -> dict[str, list[str]]:
    missing: dict[str, list[str]] = {}
    for where, expr in exprs:
        for name in sorted(metric_names(expr) - known):
            missing.setdefault(name, []).append(where)
    return missing


def test_dashboards_query_only_exported_metrics(scrapes: Scrapes) -> None:
    exprs = dashboard_exprs()
    assert len(exprs) > 20
    used = set().union(*(metric_names(expr) for _, expr in exprs))
    assert len(used) > 15, used
    assert unknown(exprs, scrapes.names | recorded_names()) == {}


def test_alert_rules_query_only_exported_metrics(scrapes: Scrapes) -> None:
    exprs = rule_exprs()
    assert len(exprs) > 10
    assert unknown(exprs, scrapes.names | recorded_names()) == {}


def test_the_check_catches_a_metric_that_is_not_exported(scrapes: Scrapes) -> None:
    """Control: a misspelt or unexported name is reported, with where it is used."""
    exprs = [("board: panel", "sum(rate(portal_http_requests_totl[5m])) / sum(portal_jobs)")]
    assert unknown(exprs, scrapes.names) == {"portal_http_requests_totl": ["board: panel"]}
    # Counters are exported with _total, never bare.
    assert "portal_money_moved_minor_units_total" in scrapes.names
    assert "portal_money_moved_minor_units" not in scrapes.names
