"""The statistics panels on the admin overview and the merchant dashboard (Flask test client,
inside the test's transaction): a chart per family for the year picked, with the same numbers
as the statistics service in its payload and table; the month picked against the month before;
pickers that keep their choice, an unreadable pick falling back to this year; each page shows
only its own figures."""

from __future__ import annotations

import html
import json
import re
from datetime import UTC, datetime

import pytest

from portal.services.identity import users
from portal.services.merchants import keys, merchants
from portal.services.statistics import rollups as stats
from tests.admin import conftest as admin
from tests.pages import conftest as pages
from tests.pages.conftest import new_client, page_text, sign_in
from tests.statistics.conftest import Dataset, at, build, pay

page_config = pages.page_config
client = pages.client
people = pages.people
as_staff = admin.as_staff


@pytest.fixture
def data(uow, make, clock) -> Dataset:
    built = build(uow, make, clock)
    clock.now = datetime.now(UTC)
    return built


def payloads(response) -> dict[str, dict]:
    """family (from the caption id) -> the chart's data-stat-chart payload."""
    text = response.get_data(as_text=True)
    found = {}
    for figure in text.split("<figure")[1:]:
        figure = figure.split("</figure>")[0]
        family = re.search(r'aria-labelledby="stat-(\w+)-caption"', figure)
        raw = re.search(r'data-stat-chart="([^"]*)"', figure)
        if family and raw:
            found[family.group(1)] = json.loads(html.unescape(raw.group(1)))
    return found


def test_the_admin_overview_draws_every_family_for_the_year_picked(uow, data, as_staff):
    c, _ = as_staff("support")
    got = c.get("/admin/?year=2026&month=1")
    assert got.status_code == 200
    charts = payloads(got)
    assert set(charts) == set(stats.FAMILIES)  # balances included; a family with data only
    for family, chart in charts.items():
        want = stats.figures(uow, actor=data.staff, family=family, period="monthly",
                             year=2026, currency="USD").series[0]  # fmt: skip
        assert chart["values"] == [f"{p.amount / 100:.2f}" for p in want.points], family
        assert chart["counts"] == [p.count for p in want.points], family
        assert chart["labels"][0] == "Jan 2026"
    assert charts["balances"]["kind"] == "line" and charts["payments"]["kind"] == "bar"
    text = page_text(got)
    assert "January 2026 against December 2025" in text
    assert re.search(r'<option value="2026" selected>', got.get_data(as_text=True))
    assert re.search(r'<option value="1" selected>January', got.get_data(as_text=True))
    words = " ".join(re.sub(r"<[^>]+>", " ", text).split())
    # January's payments: 60.00 + 15.00 succeeded (the 20.00 held one is pending), 5.00
    # declined; December 2025: 40.00 + 12.50 succeeded.
    assert "Payments 52.50 USD (2) 0.00 USD (0) 75.00 USD (2) 5.00 USD (1)" in words
    # Methods of January: payments by card brand.
    assert "visa" in text and "amex" in text


def test_pickers_fall_back_and_change_the_year(uow, data, as_staff):
    c, _ = as_staff("admin")
    this_year = datetime.now(UTC).year
    for query in ("?year=1999", "?year=abc&month=44", ""):
        got = c.get(f"/admin/{query}")
        assert got.status_code == 200, query
        assert f'<option value="{this_year}" selected>' in got.get_data(as_text=True)
    last = payloads(c.get("/admin/?year=2025"))
    assert set(last) == {"transfers", "payments", "top_ups", "balances"}  # December 2025 only
    assert last["payments"]["values"][11] == "52.50"
    # An htmx pick gets the whole page (hx-select takes the panel out of it).
    swapped = c.get("/admin/?year=2025&month=12", headers={"HX-Request": "true"})
    assert swapped.status_code == 200 and "<html" in swapped.get_data(as_text=True)


def _merchant_owner(uow, people, data: Dataset):
    """A merchant whose owner signs in with a password, with two payments in January 2026."""
    person = people.make(roles=("merchant",))
    owner = users.actor_for(uow, person.id)
    applied = merchants.apply(
        uow, actor=owner, name="Panel shop", website="https://panel.example",
        contact_email="owner@panel.example", settlement_currency="USD",
    )  # fmt: skip
    shop = merchants.decide(uow, actor=data.staff, merchant=applied.public_id, action="approve")
    key = keys.create_api_key(uow, actor=owner, merchant=shop.public_id, name="server")
    assert key.secret is not None
    api = keys.authenticate_api_key(uow, secret=key.secret).actor
    return person, shop, api


def test_the_merchant_dashboard_shows_its_own_figures(uow, people, data, clock):
    person, shop, api = _merchant_owner(uow, people, data)
    from tests.merchants.conftest import Shop

    mine = Shop(users.actor_for(uow, person.id), shop, None, api)  # type: ignore[arg-type]
    at(clock, 2026, 1, 20)
    pay(uow, mine, data.a1, "11")
    pay(uow, mine, data.b1, "4.50")
    clock.now = datetime.now(UTC)
    c = new_client(people.app)
    sign_in(c, person)
    got = c.get(f"/merchant/{shop.public_id}?year=2026&month=1")
    assert got.status_code == 200, got.status_code
    charts = payloads(got)
    assert set(charts) == {"payments", "balances"}  # no refunds: that chart says so instead
    assert charts["payments"]["values"][0] == "15.50"
    assert charts["payments"]["counts"][0] == 2
    text = page_text(got)
    assert "Nothing in 2026." in text  # refunds
    # Other merchants' figures are not there: the dataset's shop took 75.00 in January.
    assert "75.00" not in text
    # Someone else's merchant dashboard stays a 404 with or without the pickers.
    assert c.get(f"/merchant/{data.shop.merchant.public_id}?year=2026").status_code == 404
