"""The history page's day filters (issue 11, A10): a day that is not YYYY-MM-DD within the range
(``until=9999-12-31`` was a 500, ``until=0`` a date) is a 422 with the error next to its field;
the CSV refuses it with an error page instead of a file; the date inputs carry the range."""

from __future__ import annotations

import re

import pytest

from tests.cardholder.conftest import Wallets
from tests.pages.conftest import PageClient, Person

REFUSED = [
    ("until", "9999-12-31"),
    ("since", "9999-12-31"),
    ("until", "0"),
    ("since", "0"),
    ("until", "20250131"),
    ("since", "1969-12-31"),
    ("until", "3000-01-01"),
]


def text_of(response) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", response.get_data(as_text=True)))


@pytest.mark.parametrize(("param", "value"), REFUSED)
def test_a_refused_day_is_a_422_with_the_error_next_to_its_field(
    client: PageClient, alice: Person, wallets: Wallets, param: str, value: str
) -> None:
    wallets.card(alice, balance="10")

    page = client.get("/wallet/activity", query_string={param: value})

    assert page.status_code == 422
    html = page.get_data(as_text=True)
    error = re.search(rf'<p class="field__error" id="{param}-error">([^<]+)</p>', html)
    assert error, html
    assert error.group(1) == "Enter a date like 2025-01-31, from 1970 to 2999."
    assert f'id="{param}"' in html and 'aria-invalid="true"' in html


@pytest.mark.parametrize(("param", "value"), REFUSED[:3])
def test_the_results_fragment_says_why_too(
    client: PageClient, alice: Person, param: str, value: str
) -> None:
    headers = {"HX-Request": "true", "HX-Target": "activity-results"}

    fragment = client.get("/wallet/activity", query_string={param: value}, headers=headers)

    assert fragment.status_code == 422
    html = fragment.get_data(as_text=True)
    assert html.lstrip().startswith('<div id="activity-results"')
    label = "From" if param == "since" else "To"
    assert f"{label}: Enter a date like 2025-01-31, from 1970 to 2999." in text_of(fragment)


@pytest.mark.parametrize(("param", "value"), REFUSED)
def test_the_csv_refuses_the_day_instead_of_sending_everything(
    client: PageClient, alice: Person, wallets: Wallets, param: str, value: str
) -> None:
    wallets.card(alice, balance="10")

    response = client.get("/wallet/activity.csv", query_string={param: value})

    assert response.status_code == 422
    assert response.mimetype == "text/html"
    assert "Enter a date like 2025-01-31" in text_of(response)


def test_the_first_and_last_days_are_taken_and_the_inputs_carry_them(
    client: PageClient, alice: Person, wallets: Wallets
) -> None:
    wallets.card(alice, balance="10")

    page = client.get("/wallet/activity?since=1970-01-01&until=2999-12-31")
    csv = client.get("/wallet/activity.csv?since=1970-01-01&until=2999-12-31")

    assert page.status_code == 200 and "$10.00" in text_of(page)
    assert csv.status_code == 200 and "10.00" in csv.get_data(as_text=True)
    html = page.get_data(as_text=True)
    for name in ("since", "until"):
        tag = re.search(rf'<input[^>]*id="{name}"[^>]*>', html).group(0)
        assert 'type="date"' in tag and 'min="1970-01-01"' in tag and 'max="2999-12-31"' in tag
