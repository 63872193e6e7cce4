"""The wallet pages count in the business metrics like the API, and the dashboard's monthly
totals come from the cache until a movement changes them."""

from __future__ import annotations

from flask import Flask
from prometheus_client import CollectorRegistry

from portal.web.metrics import business_metrics
from tests.cardholder.conftest import Wallets
from tests.cardholder.test_wallet_pages import _key
from tests.conftest import confirm_top_ups
from tests.pages.conftest import PageClient, Person, htmx


def registry_of(app: Flask) -> CollectorRegistry:
    registry: CollectorRegistry = app.extensions["portal.metrics"].registry
    return registry


def sample(app: Flask, name: str, **labels: str) -> float:
    return registry_of(app).get_sample_value(name, labels) or 0.0


def test_a_top_up_on_the_pages_is_counted(
    app: Flask, client: PageClient, alice: Person, wallets: Wallets
) -> None:
    card = wallets.card(alice)
    labels = {"kind": "top_up", "currency": "USD", "outcome": "succeeded"}
    moved_before = sample(app, "portal_money_moved_minor_units_total", **labels)
    count_before = sample(app, "portal_money_movements_total", **labels)
    key = _key(client.get(f"/wallet/top-up?card={card.public_id}"))
    data = {"idempotency_key": key, "card_id": card.public_id, "method": "e_wallet",
            "amount": "25.50", "step": "confirm"}  # fmt: skip
    assert client.post("/wallet/top-up", data=data, headers=htmx()).status_code == 200
    assert client.post("/wallet/top-up", data=data, headers=htmx()).status_code == 200  # again
    pending = {**labels, "outcome": "pending"}
    assert sample(app, "portal_money_movements_total", **labels) - count_before == 0
    assert sample(app, "portal_money_movements_total", **pending) >= 1
    assert confirm_top_ups(wallets.people.uow()) == 1
    assert sample(app, "portal_money_moved_minor_units_total", **labels) - moved_before == 2550
    assert sample(app, "portal_money_movements_total", **labels) - count_before == 1


def test_monthly_totals_are_cached_until_money_moves(
    app: Flask, client: PageClient, alice: Person, wallets: Wallets
) -> None:
    card = wallets.card(alice, balance="40")
    metrics = business_metrics(app)
    assert metrics is not None

    def looked_up() -> tuple[float, float]:
        return (
            sample(app, "portal_cache_requests_total", cache="monthly_totals", result="hit"),
            sample(app, "portal_cache_requests_total", cache="monthly_totals", result="miss"),
        )

    hits, misses = looked_up()
    first = client.get("/wallet").get_data(as_text=True)
    assert looked_up() == (hits, misses + 1)
    second = client.get("/wallet").get_data(as_text=True)
    assert looked_up() == (hits + 1, misses + 1)
    assert 'data-chart="' in first and _chart(first) == _chart(second)  # the same chart
    wallets.fund(card, "7.50")
    third = client.get("/wallet").get_data(as_text=True)
    assert looked_up() == (hits + 1, misses + 2)
    assert _chart(third) != _chart(first)  # the new money is in the chart


def _chart(page: str) -> str:
    start = page.index('data-chart="')
    return page[start : page.index('"', start + len('data-chart="'))]
