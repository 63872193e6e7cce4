"""The activity filters' days (issue 11, A10): ``since`` and ``until`` are days written YYYY-MM-DD
from activity.FIRST_DAY to activity.LAST_DAY. ``until=9999-12-31`` was a 500 (the day after it
overflows); ``until=0`` was taken as 1970-01-01 (seconds since the epoch). Both are 422 naming the
parameter now, in the service and on every list of movements of the JSON API."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from flask.testing import FlaskClient

from portal.domain.errors import InvalidInput
from portal.domain.types import Actor
from portal.services.shared.uow import UnitOfWork
from portal.services.wallet import activity
from tests.api import test_cards_api as shared
from tests.api.test_auth_api import API, error_of
from tests.conftest import Factory

_fresh_limits = shared._fresh_limits
api, alice, as_alice = shared.api, shared.alice, shared.as_alice

LISTS = ("/activity", "/top_ups", "/transfers", "/withdrawals")

REFUSED = [
    ("until", "9999-12-31"),  # was a 500: OverflowError on the day after
    ("since", "9999-12-31"),
    ("until", "3000-01-01"),
    ("since", "1969-12-31"),
    ("until", "0"),  # was taken as 1970-01-01
    ("since", "0"),
    ("until", "1735603200"),  # seconds since 1970, as pydantic reads them
    ("until", "20250131"),
    ("until", "2025-W05-5"),
    ("until", "2025-1-31"),
    ("until", "2025-01-31T00:00:00"),
    ("until", "\u0662\u0660\u0662\u0665-01-31"),  # Arabic-Indic digits
    ("since", "2026-02-30"),
]


@pytest.mark.parametrize("path", LISTS)
@pytest.mark.parametrize(("param", "value"), REFUSED)
def test_a_day_that_is_not_yyyy_mm_dd_in_range_is_a_422_naming_it(
    api: FlaskClient, as_alice: dict[str, str], path: str, param: str, value: str
) -> None:
    response = api.get(f"{API}{path}", query_string={param: value}, headers=as_alice)

    error = error_of(response, 422)
    assert (error["code"], error["param"]) == ("parameter_invalid", param)
    assert error["message"].startswith(f"Invalid {param}: ")


@pytest.mark.parametrize("path", LISTS)
def test_the_first_and_last_days_are_taken(
    api: FlaskClient, make: Factory, alice: Actor, as_alice: dict[str, str], path: str
) -> None:
    make.card(alice, balance="10")
    everything = {"since": "1970-01-01", "until": "2999-12-31"}

    response = api.get(f"{API}{path}", query_string=everything, headers=as_alice)

    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert len(body["data"]) == (1 if path in ("/activity", "/top_ups") else 0)


def test_the_document_states_the_form_and_the_range(api: FlaskClient) -> None:
    document = api.get(f"{API}/openapi.json").get_json()
    for path in LISTS:
        parameters = {
            p["name"]: p for p in document["paths"][f"/api/v1{path}"]["get"]["parameters"]
        }
        for name in ("since", "until"):
            parameter = parameters[name]
            assert parameter["schema"]["format"] == "date"
            assert parameter["schema"]["pattern"] == "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
            assert "1970-01-01 to 2999-12-31" in parameter["description"]


# -- the service --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "param"),
    [
        ({"until": date.max}, "until"),  # was OverflowError
        ({"since": date.max}, "since"),
        ({"until": date(3000, 1, 1)}, "until"),
        ({"since": date(1969, 12, 31)}, "since"),
        ({"since": "2025-01-01"}, "since"),
    ],
)
def test_the_service_refuses_days_out_of_range(
    uow: UnitOfWork, make: Factory, args: dict[str, Any], param: str
) -> None:
    holder = make.user()
    with pytest.raises(InvalidInput) as refused:
        activity.list_activity(uow, actor=holder, **args)
    assert refused.value.param == param


@pytest.mark.parametrize(
    ("text", "day"),
    [("1970-01-01", date(1970, 1, 1)), ("2999-12-31", date(2999, 12, 31)),
     ("2024-02-29", date(2024, 2, 29))],
)  # fmt: skip
def test_parse_day_takes_yyyy_mm_dd(text: str, day: date) -> None:
    assert activity.parse_day(text, "since") == day


@pytest.mark.parametrize(
    "text", [value for _, value in REFUSED] + ["", " 2025-01-31", "2025-01-31\n"]
)
def test_parse_day_refuses_anything_else(text: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        activity.parse_day(text, "until")
    assert refused.value.param == "until"
