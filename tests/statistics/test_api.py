"""The statistics API over the known dataset: each endpoint answers the service's figures (the
service's own tests tie those to the movements), as staff, a cardholder, a merchant key and a
merchant member; 400 naming year or month out of range, 422 for a bad parameter, 404 for an
unknown family or someone else's object, 403 for system figures; documented in OpenAPI."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from portal.extensions import limiter
from portal.services.identity import accounts
from portal.services.statistics import rollups as stats
from tests.api.test_auth_api import bearer, client_for, error_of, token_for
from tests.statistics.conftest import Dataset, build

API = "/api/v1/statistics"


@pytest.fixture(autouse=True)
def _fresh_limits() -> None:
    limiter.reset()


@pytest.fixture
def data(uow, make, clock) -> Dataset:
    built = build(uow, make, clock)
    clock.now = datetime.now(UTC)  # tokens are issued and checked at the real time
    return built


@pytest.fixture
def api(app, connection):
    return client_for(app)


def token(uow, actor) -> dict[str, str]:
    return bearer(token_for(uow, accounts.get_user_view(uow, actor.id)))


def card_id(uow, card) -> str:
    return uow.run(lambda u: u.execute(
        "SELECT public_id FROM cards WHERE id = :i", {"i": card.card_id}).scalar_one())  # fmt: skip


def test_monthly_and_yearly_answer_the_service_figures(uow, api, data):
    staff = token(uow, data.staff)
    got = api.get(f"{API}/payments/monthly?year=2026&scope=merchant&id="
                  f"{data.shop.merchant.public_id}", headers=staff)  # fmt: skip
    assert got.status_code == 200, got.get_data(as_text=True)
    body = got.get_json()
    want = stats.figures(uow, actor=data.staff, family="payments", period="monthly", year=2026,
                         scope="merchant", id=data.shop.merchant.public_id)  # fmt: skip
    assert body["object"] == "statistics.series"
    assert body["scope"] == {"kind": "merchant", "id": data.shop.merchant.public_id, "side": None}
    assert [(s["currency"], [(p["month"], p["amount"], p["count"]) for p in s["points"]])
            for s in body["series"]] == [
        (s.currency.lower(), [(p.month, p.amount, p.count) for p in s.points])
        for s in want.series]  # fmt: skip
    assert len(body["series"][0]["points"]) == 12
    assert body["series"][0]["points"][0]["amount"] > 0  # January's payments
    yearly = api.get(f"{API}/transfers/yearly?year=2026&status=all", headers=staff).get_json()
    assert [p["year"] for p in yearly["series"][0]["points"]] == [2022, 2023, 2024, 2025, 2026]
    assert [p["count"] for p in yearly["series"][0]["points"]][-2:] == [1, 2]


def test_methods_statuses_and_dashboards(uow, api, data):
    staff = token(uow, data.staff)
    methods = api.get(f"{API}/payments/methods?year=2026&month=1", headers=staff).get_json()
    assert {(r["method"], r["count"]) for r in methods["data"]} == {("visa", 1), ("amex", 1)}
    statuses = api.get(f"{API}/withdrawals/statuses?year=2026&month=2", headers=staff)
    rows = statuses.get_json()["data"]
    assert [(r["month"], r["status"], r["amount"]) for r in rows] == [
        (1, "succeeded", 0), (1, "failed", 0),
        (2, "succeeded", 10000), (2, "failed", 3000),
    ]  # fmt: skip
    system = api.get(f"{API}/dashboard", headers=staff).get_json()
    totals = system["totals"][0]
    assert totals["currency"] == "usd"
    want = stats.dashboard(uow, actor=data.staff).totals[0]
    assert {n: f["amount"] for n, f in totals["figures"].items()} == want.amounts
    mine = api.get(f"{API}/dashboard?scope=card&id={card_id(uow, data.a1)}",
                   headers=token(uow, data.alice)).get_json()  # fmt: skip
    assert set(mine["totals"][0]["figures"]) >= {"transfers_sent", "transfers_received"}


def test_out_of_range_year_and_month_are_400_naming_them(uow, api, data):
    staff = token(uow, data.staff)
    for path, param in (("/payments/monthly?year=1999", "year"),
                        ("/payments/yearly?year=2101", "year"),
                        ("/payments/methods?year=2026&month=13", "month"),
                        ("/top_ups/statuses?year=2026&month=0", "month")):  # fmt: skip
        error = error_of(api.get(API + path, headers=staff), 400)
        assert error["param"] == param, path
    assert error_of(api.get(f"{API}/payments/monthly?year=abc", headers=staff), 422)["param"] == (
        "year")  # fmt: skip
    error_of(api.get(f"{API}/payments/monthly?scope=galaxy", headers=staff), 422)
    error_of(api.get(f"{API}/withdrawals/methods", headers=staff), 422)
    assert error_of(api.get(f"{API}/loans/monthly", headers=staff), 404)["param"] == "family"


def test_who_sees_what(uow, api, data):
    alice, bob = token(uow, data.alice), token(uow, data.bob)
    a1 = card_id(uow, data.a1)
    assert api.get(f"{API}/top_ups/monthly?scope=card&id={a1}", headers=alice).status_code == 200
    error_of(api.get(f"{API}/top_ups/monthly?scope=card&id={a1}", headers=bob), 404)
    error_of(api.get(f"{API}/top_ups/monthly", headers=alice), 403)
    error_of(api.get(f"{API}/dashboard", headers=alice), 403)
    error_of(api.get(f"{API}/payments/monthly", headers={}), 401)
    # A merchant key: its own merchant, with or without the id; not the other merchant's.
    assert data.shop.key.secret is not None
    key = bearer(data.shop.key.secret)
    own = api.get(f"{API}/payments/yearly?scope=merchant", headers=key)
    assert own.status_code == 200, own.get_data(as_text=True)
    assert own.get_json()["scope"]["id"] == data.shop.merchant.public_id
    error_of(api.get(f"{API}/payments/yearly?scope=merchant&id={data.other.merchant.public_id}",
                     headers=key), 404)  # fmt: skip
    error_of(api.get(f"{API}/payments/yearly?scope=card&id={a1}", headers=key), 404)
    # The merchant's owner, by token.
    owner = token(uow, data.shop.owner)
    assert api.get(f"{API}/dashboard?scope=merchant&id={data.shop.merchant.public_id}",
                   headers=owner).status_code == 200  # fmt: skip
    error_of(api.get(f"{API}/dashboard?scope=merchant&id={data.other.merchant.public_id}",
                     headers=owner), 404)  # fmt: skip


def test_documented_in_openapi(app):
    doc = app.test_client().get("/api/v1/openapi.json").get_json()
    paths = {p for p in doc["paths"] if p.startswith("/api/v1/statistics") or
             p.startswith("/statistics")}  # fmt: skip
    assert len(paths) == 5, paths
    monthly = next(v["get"] for p, v in doc["paths"].items() if p.endswith("/monthly"))
    assert monthly["tags"] == ["statistics"]
    params = {p["name"]: p for p in monthly["parameters"]}
    assert {"family", "year", "scope", "id", "status", "method", "side", "currency"} <= set(params)
    assert {"400", "403", "404"} <= set(monthly["responses"])
