"""Money and times in the user's locale on the pages (issue 13): the account's formats and time
zone (the browser's zone adopted at sign-in only while none is chosen), balances and limits
formatted by currency and locale, amounts read as the user writes them, times in their zone,
and the API and CSV unchanged (minor units, UTC)."""

from __future__ import annotations

import re

import pyotp
import sqlalchemy as sa

from tests.cardholder.conftest import Wallets
from tests.pages.conftest import PageClient, People, Person, page_text, sign_in


def _prefs(people: People, person: Person) -> tuple[str, str | None]:
    row = people.connection.execute(
        sa.text("SELECT locale, time_zone FROM users WHERE id = :id"), {"id": person.id}
    ).one()
    return row.locale, row.time_zone


def _choose(client: PageClient, locale: str, zone: str):
    return client.post("/auth/account/preferences",
                       data={"pref-locale": locale, "pref-time_zone": zone})  # fmt: skip


# -- the account's formats ---------------------------------------------------------------------
def test_the_account_page_chooses_formats_and_zone(
    client: PageClient, people: People, alice: Person
) -> None:
    page = client.get("/auth/account")
    text = page.get_data(as_text=True)
    assert 'id="preferences"' in text and "Indonesian (Indonesia): 1.000,50" in text
    assert 'src="/static/js/time-zone.js"' in text and "<script>" not in text  # CSP: no inline
    saved = _choose(client, "id_ID", "Asia/Jakarta")
    assert saved.status_code == 302 and saved.headers["Location"].endswith("#preferences")
    assert _prefs(people, alice) == ("id_ID", "Asia/Jakarta")


def test_an_unknown_zone_or_format_is_refused_and_changes_nothing(
    client: PageClient, people: People, alice: Person
) -> None:
    before = _prefs(people, alice)
    refused = _choose(client, "en_US", "Mars/Olympus")
    assert refused.status_code == 422
    assert "Choose a time zone from the list" in page_text(refused)
    refused = _choose(client, "xx_XX", "UTC")
    assert refused.status_code == 422 and "Choose one of the formats listed" in page_text(refused)
    assert _prefs(people, alice) == before


def test_sign_in_brings_the_browsers_zone_only_while_none_is_chosen(
    client: PageClient, people: People
) -> None:
    person = people.make()
    assert _prefs(people, person)[1] is None
    assert sign_in(client, person, time_zone="Asia/Jakarta").status_code == 302
    assert _prefs(people, person)[1] == "Asia/Jakarta"
    _choose(client, "en_GB", "Europe/London")
    client.post("/auth/logout")
    assert sign_in(client, person, time_zone="America/New_York").status_code == 302
    assert _prefs(people, person) == ("en_GB", "Europe/London")  # the choice stays
    client.post("/auth/logout")
    sign_in(client, person, time_zone="<script>")  # no zone: ignored
    assert _prefs(people, person)[1] == "Europe/London"


def test_a_second_factor_sign_in_brings_the_zone_too(client: PageClient, people: People) -> None:
    person = people.make(with_mfa=True)
    assert sign_in(client, person).status_code == 302
    assert person.totp_secret is not None
    code = pyotp.TOTP(person.totp_secret).now()
    done = client.post("/auth/mfa", data={"code": code, "time_zone": "Europe/Berlin"})
    assert done.status_code == 302, page_text(done)
    assert _prefs(people, person)[1] == "Europe/Berlin"


def test_sign_up_takes_the_browsers_languages_and_zone(client: PageClient, people: People) -> None:
    response = client.post(
        "/auth/register",
        data={"first_name": "Sari", "last_name": "Dewi", "email": "sari@example.com",
              "password": "correct horse battery staple", "password_confirmation":
              "correct horse battery staple", "time_zone": "Asia/Jakarta"},
        headers={"Accept-Language": "id-ID,id;q=0.9,en;q=0.5"},
    )  # fmt: skip
    assert response.status_code == 302, page_text(response)
    row = people.connection.execute(
        sa.text("SELECT locale, time_zone FROM users WHERE email = 'sari@example.com'")
    ).one()
    assert (row.locale, row.time_zone) == ("id_ID", "Asia/Jakarta")


# -- money on the pages ------------------------------------------------------------------------
def test_balances_are_formatted_by_currency_and_locale(
    client: PageClient, alice: Person, wallets: Wallets
) -> None:
    wallets.card(alice, currency="IDR", balance="13985000")
    wallets.card(alice, currency="USD", balance="1234.50")
    english = page_text(client.get("/wallet"))
    assert "IDR 13,985,000" in english and "$1,234.50" in english
    _choose(client, "id_ID", "Asia/Jakarta")
    indonesian = page_text(client.get("/wallet"))
    assert "Rp 13.985.000" in indonesian and "US$1.234,50" in indonesian
    assert "13,985,000.00 IDR" not in indonesian


def test_the_api_keeps_minor_units_whatever_the_locale(
    client: PageClient, people: People, alice: Person, wallets: Wallets
) -> None:
    card = wallets.card(alice, currency="IDR", balance="50000")
    _choose(client, "id_ID", "Asia/Jakarta")
    row = people.connection.execute(
        sa.text("SELECT posted_minor FROM accounts WHERE card_id = :c"), {"c": card.card_id}
    ).one()
    assert row.posted_minor == 5_000_000
    csv_text = client.get("/wallet/activity.csv").get_data(as_text=True)
    # The CSV: plain decimals in major units and UTC times, not the page's formats.
    assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", csv_text)
    assert ",50000.00,IDR," in csv_text
