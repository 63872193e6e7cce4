"""Honest money forms (issue 13): amounts read in the user's format, the chosen card's money and
limits in its currency, own-card transfers offering only cards in the same currency, an
unverified user told before the review, a session that ended mid-form sent to sign in and back,
a live poll that never extends the idle timeout, and the history's filters and CSV."""

from __future__ import annotations

import csv
import io
import re

import pytest
import sqlalchemy as sa
from flask import Flask

from portal.services.ledger import reconciliation
from tests.cardholder.conftest import Wallets
from tests.pages.conftest import PageClient, People, Person, htmx, page_text, sign_in
from tests.pages.conftest import new_client as make_client


def _key(response) -> str:
    found = re.search(r'name="idempotency_key"[^>]*value="([0-9a-f]+)"', response.get_data(True))
    assert found, response.get_data(True)
    return found.group(1)


def _choose(client: PageClient, locale: str, zone: str = "UTC") -> None:
    saved = client.post("/auth/account/preferences",
                        data={"pref-locale": locale, "pref-time_zone": zone})  # fmt: skip
    assert saved.status_code == 302


def _review(client: PageClient, path: str, **data: str):
    return client.post(path, data={"idempotency_key": _key(client.get(path)), "step": "review",
                                   **data})  # fmt: skip


def _ledger_ok(people: People) -> None:
    report = reconciliation.reconcile(people.uow())
    assert report.ok, report


# -- amounts in the user's format --------------------------------------------------------------
@pytest.mark.parametrize(
    ("locale", "currency", "typed", "minor"),
    [
        ("id_ID", "IDR", "50.000", 5_000_000),
        ("id_ID", "IDR", "150.000,00", 15_000_000),
        ("de_DE", "EUR", "1.000,50", 100_050),
        ("en_US", "USD", "1,000.50", 100_050),
    ],
)
def test_a_top_up_reads_the_amount_as_the_user_writes_it(
    client: PageClient, people: People, alice: Person, wallets: Wallets, locale: str,
    currency: str, typed: str, minor: int,
) -> None:  # fmt: skip
    _choose(client, locale)
    card = wallets.card(alice, currency=currency)
    path = "/wallet/top-up"
    key = _key(client.get(path))
    data = {"idempotency_key": key, "card_id": card.public_id, "method": "cash", "amount": typed}
    review = client.post(path, data={**data, "step": "review"})
    assert review.status_code == 200 and "Check and confirm" in page_text(review)
    done = client.post(path, data={**data, "step": "confirm"})
    assert done.status_code == 303
    amount = people.connection.execute(
        sa.text("SELECT amount_minor FROM top_ups WHERE card_id = :c"), {"c": card.card_id}
    ).scalar_one()
    assert amount == minor
    _ledger_ok(people)


@pytest.mark.parametrize(
    ("locale", "currency", "typed", "message"),
    [
        ("en_US", "EUR", "1.000,50",
         "We cannot tell which amount “1.000,50” is: write 1000.50 or 1,000.50."),
        ("de_DE", "EUR", "1,000.50",
         "We cannot tell which amount “1,000.50” is: write 1000,50 or 1.000,50."),
        ("en_US", "USD", "1.00050", "USD has 2 decimal places; “1.00050” has 5."),
        ("en_US", "JPY", "1500.5", "JPY has no decimal places; “1500.5” has 1."),
    ],
)  # fmt: skip
def test_an_amount_that_cannot_be_told_is_refused_in_the_users_terms(
    client: PageClient, alice: Person, wallets: Wallets, locale: str, currency: str, typed: str,
    message: str,
) -> None:  # fmt: skip
    _choose(client, locale)
    card = wallets.card(alice, currency=currency)
    refused = _review(client, "/wallet/top-up", card_id=card.public_id, method="cash",
                      amount=typed)  # fmt: skip
    assert refused.status_code == 422
    error = re.search(r'<p class="field__error" id="amount-error">([^<]*)</p>',
                      refused.get_data(True))  # fmt: skip
    assert error and error.group(1) == message
    assert wallets.count("top_ups") == 0


def test_the_form_shows_the_chosen_cards_money_and_limits_in_its_currency(
    client: PageClient, alice: Person, wallets: Wallets
) -> None:
    usd = wallets.card(alice, currency="USD", balance="20")
    idr = wallets.card(alice, currency="IDR", balance="13985000")
    _choose(client, "id_ID")
    page = client.get(f"/wallet/withdraw?card={idr.public_id}")
    html = page.get_data(as_text=True)
    facts = re.search(r'id="amount-facts"[^>]*>(.*?)</p>', html, re.S)
    assert facts, html
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", facts.group(1)))
    assert "Rp 13.985.000" in text and "Rp 50.000 to Rp" in text and "USD" not in text
    assert re.search(r"data-amount-sign[^>]*>Rp<", html)
    assert re.search(r'<input[^>]*autofocus[^>]*name="amount"|<input[^>]*name="amount"'
                     r'[^>]*autofocus', html)  # fmt: skip
    # Every card option carries its own facts, for the script to follow the select.
    option = re.search(rf'<option[^>]*value="{usd.public_id}"[^>]*>', html)
    assert option and 'data-currency="USD"' in option.group(0)
    assert 'data-available="US$20,00"' in option.group(0)
    assert 'src="/static/js/money-form.js"' in html


def test_own_card_transfers_list_only_other_cards_in_the_same_currency(
    client: PageClient, alice: Person, wallets: Wallets
) -> None:
    usd = wallets.card(alice, currency="USD", balance="50")
    usd_two = wallets.card(alice, currency="USD", brand="mastercard")
    eur = wallets.card(alice, currency="EUR")
    html = client.get(f"/wallet/transfer?card={usd.public_id}").get_data(as_text=True)
    mine = re.search(r'<select[^>]*name="to_card_id"[^>]*>(.*?)</select>', html, re.S)
    assert mine
    shown = re.findall(r'<option(?![^>]*hidden)[^>]*value="(card_[^"]+)"', mine.group(1))
    assert shown == [usd_two.public_id]  # not the sending card, not the EUR one
    assert f'value="{eur.public_id}"' in mine.group(1)  # in the page, hidden and disabled
    assert re.search(rf'<option[^>]*disabled[^>]*value="{eur.public_id}"|<option[^>]*value='
                     rf'"{eur.public_id}"[^>]*disabled', mine.group(1))  # fmt: skip
    # The only same-currency card is chosen already; the server refuses another currency.
    refused = _review(client, "/wallet/transfer", card_id=usd.public_id, destination="own",
                      to_card_id=eur.public_id, amount="5")  # fmt: skip
    assert refused.status_code == 422 and "That card holds EUR" in page_text(refused)


# -- unverified --------------------------------------------------------------------------------
def test_an_unverified_user_learns_it_before_the_review(
    client: PageClient, people: People, wallets: Wallets
) -> None:
    person = people.make(verified=False)
    sign_in(client, person)
    card = wallets.card(person, balance=None)
    form = client.get("/wallet/top-up")
    assert "Verify your email address first" in page_text(form)
    assert 'action="/auth/account/verify-email"' in form.get_data(True)
    review = _review(client, "/wallet/top-up", card_id=card.public_id, method="cash",
                     amount="25")  # fmt: skip
    assert review.status_code == 403
    assert "Check and confirm" not in page_text(review)
    assert "Resend the link" in page_text(review)
    assert wallets.count("top_ups") == 0


# -- sessions ----------------------------------------------------------------------------------
def _idle(people: People, person: Person, minutes: int) -> None:
    people.connection.execute(
        sa.text("UPDATE web_sessions SET last_seen_at = now() - make_interval(mins => :m)"
                " WHERE user_id = :id AND revoked_at IS NULL"),
        {"m": minutes, "id": person.id},
    )  # fmt: skip


def _last_seen(people: People, person: Person):
    return people.connection.execute(
        sa.text("SELECT last_seen_at FROM web_sessions WHERE user_id = :id AND revoked_at IS NULL"),
        {"id": person.id},
    ).scalar_one()


def test_the_live_poll_does_not_extend_the_idle_timeout(
    client: PageClient, people: People, alice: Person, wallets: Wallets, app: Flask
) -> None:
    wallets.card(alice)
    idle = app.config["SERVICE_SETTINGS"].session_idle_minutes
    _idle(people, alice, 5)
    before = _last_seen(people, alice)
    for _ in range(3):
        assert client.get("/wallet/changes?v=0", headers=htmx()).status_code == 200
    assert _last_seen(people, alice) == before  # polls are not the person
    assert client.get("/wallet").status_code == 200
    assert _last_seen(people, alice) > before  # a page the person opened is
    # Polling all along, the session still ends once the person has been away long enough.
    _idle(people, alice, idle + 1)
    bounced = client.get("/wallet/changes?v=0", headers=htmx())
    assert bounced.status_code == 401
    assert bounced.headers["HX-Redirect"].startswith("/auth/login?next=")
    login = client.get(bounced.headers["HX-Redirect"])
    assert f"You were signed out: sign in to continue. Nothing happened for {idle} minutes." in (
        page_text(login))  # fmt: skip


def test_reloading_a_page_after_the_timeout_says_so_and_comes_back(
    client: PageClient, people: People, alice: Person, wallets: Wallets, app: Flask
) -> None:
    card = wallets.card(alice)
    _idle(people, alice, app.config["SERVICE_SETTINGS"].session_idle_minutes + 1)
    page = client.get(f"/wallet/cards/{card.public_id}")
    assert page.status_code == 302
    assert page.headers["Location"] == f"/auth/login?next=/wallet/cards/{card.public_id}"
    assert "You were signed out: sign in to continue." in page_text(client.get(page.headers[
        "Location"]))  # fmt: skip


def test_a_poll_from_a_revoked_session_says_why(
    client: PageClient, another_client: PageClient, people: People, alice: Person,
    wallets: Wallets,
) -> None:  # fmt: skip
    wallets.card(alice)
    sign_in(another_client, alice)
    # From the other browser: "sign out everywhere else".
    assert another_client.post("/auth/sessions/revoke-others").status_code in (302, 303)
    bounced = client.get("/wallet/changes?v=0", headers=htmx(
        **{"HX-Current-URL": "http://localhost/wallet/activity?kind=transfer"}))  # fmt: skip
    assert bounced.status_code == 401
    assert bounced.headers["HX-Redirect"] == (
        "/auth/login?next=/wallet/activity?kind%3Dtransfer")  # fmt: skip
    text = page_text(client.get(bounced.headers["HX-Redirect"]))
    assert ("You were signed out: sign in to continue. The session was ended from another "
            "device or by an administrator.") in text  # fmt: skip


def test_a_session_that_ended_mid_form_returns_to_the_form(
    client: PageClient, people: People, alice: Person, wallets: Wallets, app: Flask,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    card = wallets.card(alice, balance="10")
    monkeypatch.setitem(app.config, "WTF_CSRF_ENABLED", True)
    form = client.get("/wallet/withdraw").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', form)
    assert token
    idle = app.config["SERVICE_SETTINGS"].session_idle_minutes
    _idle(people, alice, idle + 1)  # the session times out while the form is open
    data = {"csrf_token": token.group(1), "idempotency_key": "k" * 32, "step": "review",
            "card_id": card.public_id, "amount": "5", "bank_name": "BCA",
            "account_number": "1234567890", "account_holder": "Ada"}  # fmt: skip
    sent = client.post("/wallet/withdraw", data=data)
    assert sent.status_code == 302
    assert sent.headers["Location"] == "/auth/login?next=/wallet/withdraw"
    login = client.get(sent.headers["Location"])
    text = page_text(login)
    assert "You were signed out: sign in to continue." in text
    assert "CSRF session token" not in text and "Sign out" not in text
    # Signing in again lands on the same form.
    monkeypatch.setitem(app.config, "WTF_CSRF_ENABLED", False)  # the sign-in form's own token
    again = sign_in(client, alice, next="/wallet/withdraw")
    assert again.headers["Location"] == "/wallet/withdraw"
    # Cookies cleared: the same (htmx) post is sent to sign in, and nothing moved.
    fresh = make_client(app)
    came_from = {"HX-Current-URL": "http://localhost/wallet/withdraw"}
    bounced = fresh.post("/wallet/withdraw", data=data, headers=htmx(**came_from))
    assert bounced.status_code == 401
    assert bounced.headers["HX-Redirect"] == "/auth/login?next=/wallet/withdraw"
    assert wallets.count("withdrawals") == 0


# -- history -----------------------------------------------------------------------------------
def test_reversed_dates_are_refused_and_list_nothing(
    client: PageClient, alice: Person, wallets: Wallets
) -> None:
    wallets.card(alice, balance="10")
    page = client.get("/wallet/activity?since=2026-02-01&until=2026-01-01")
    assert page.status_code == 422
    text = page_text(page)
    assert "The end date is before the start date." in text
    assert "Nothing is listed until the filters are fixed" in text
    assert 'class="activity__item' not in page.get_data(True)
    assert client.get("/wallet/activity.csv?since=2026-02-01&until=2026-01-01").status_code == 422


def test_search_finds_amounts_typed_in_the_users_format(
    client: PageClient, alice: Person, wallets: Wallets
) -> None:
    wallets.card(alice, currency="IDR", balance="150000")
    wallets.card(alice, currency="EUR", balance="1000.50")
    _choose(client, "id_ID")
    found = page_text(client.get("/wallet/activity", query_string={"q": "150.000"}))
    assert "Rp 150.000" in found and "€1.000,50" not in found
    found = page_text(client.get("/wallet/activity", query_string={"q": "1.000,50"}))
    assert "€1.000,50" in found and "Rp 150.000" not in found
    none = page_text(client.get("/wallet/activity", query_string={"q": "150.001"}))
    assert "Nothing matches these filters" in none


def test_the_csv_has_memo_and_balance_after_and_a_bom(
    client: PageClient, people: People, alice: Person, wallets: Wallets
) -> None:
    card = wallets.card(alice, balance="100")
    other = wallets.card(alice, brand="mastercard")
    key = _key(client.get("/wallet/transfer"))
    sent = client.post("/wallet/transfer", data={
        "idempotency_key": key, "step": "confirm", "card_id": card.public_id,
        "destination": "own", "to_card_id": other.public_id, "amount": "30",
        "memo": "=rent, March"})  # fmt: skip
    assert sent.status_code == 303
    response = client.get("/wallet/activity.csv")
    assert response.headers["Content-Type"] == "text/csv; charset=utf-8"
    raw = response.get_data()
    assert raw.startswith(b"\xef\xbb\xbf")
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"))))
    assert list(rows[0])[-2:] == ["memo", "balance_after"]
    transfer = next(r for r in rows if r["kind"] == "transfer")
    top_up = next(r for r in rows if r["kind"] == "top_up")
    assert transfer["memo"] == "'=rent, March"  # never a formula
    assert transfer["amount"] == "-30.00" and transfer["balance_after"] == "70.00"
    assert top_up["balance_after"] == "100.00"
    assert transfer["created_at"].endswith("+00:00")
    _ledger_ok(people)


def test_the_receipt_page_is_the_users_only(
    client: PageClient, another_client: PageClient, alice: Person, bob: Person,
    wallets: Wallets,
) -> None:  # fmt: skip
    card = wallets.card(alice)
    key = _key(client.get("/wallet/top-up"))
    done = client.post("/wallet/top-up", data={"idempotency_key": key, "step": "confirm",
                                                "card_id": card.public_id, "method": "cash",
                                                "amount": "25"})  # fmt: skip
    receipt = done.headers["Location"]
    assert client.get(receipt).status_code == 200
    sign_in(another_client, bob)
    assert another_client.get(receipt).status_code == 404
    assert client.get("/wallet/movements/top_up_220").status_code == 404


def test_times_show_in_the_users_zone(
    client: PageClient, people: People, alice: Person, wallets: Wallets
) -> None:
    wallets.card(alice, balance="10")
    people.connection.execute(sa.text("UPDATE top_ups SET created_at = '2026-12-03 00:05:00+00'"))
    _choose(client, "en_GB", "Asia/Jakarta")
    text = page_text(client.get("/wallet/activity"))
    assert "3 Dec 2026, 07:05" in text and "Times are in Asia/Jakarta" in text


# -- saved bank accounts -----------------------------------------------------------------------
BANK = {"bank_name": "BCA", "account_number": "1234 5678 90", "account_holder": "Ada Lovelace"}


def _withdraw(client: PageClient, **data: str):
    key = _key(client.get("/wallet/withdraw"))
    return client.post("/wallet/withdraw", data={"idempotency_key": key, "step": "confirm",
                                                  **data})  # fmt: skip


def test_a_withdrawal_offers_the_bank_accounts_withdrawn_to_before(
    client: PageClient, another_client: PageClient, people: People, alice: Person, bob: Person,
    wallets: Wallets,
) -> None:  # fmt: skip
    card = wallets.card(alice, balance="100")
    first = _withdraw(client, card_id=card.public_id, amount="10", saved_account="", **BANK)
    assert first.status_code == 303
    reference = first.headers["Location"].rsplit("/", 1)[-1]
    form = client.get("/wallet/withdraw")
    html = form.get_data(as_text=True)
    assert "BCA account ending 7890" in html and "1234567890" not in html
    assert re.search(rf'<input[^>]*checked[^>]*value="{reference}"|<input[^>]*value='
                     rf'"{reference}"[^>]*checked', html)  # the latest, chosen already  # fmt: skip
    # Paying to it again needs none of the account's fields.
    again = _withdraw(client, card_id=card.public_id, amount="5", saved_account=reference)
    assert again.status_code == 303
    rows = people.connection.execute(
        sa.text("SELECT bank_name, bank_account_last4 FROM withdrawals ORDER BY id")
    ).all()
    assert [tuple(r) for r in rows] == [("BCA", "7890"), ("BCA", "7890")]
    # Someone else's withdrawal is no saved account of theirs: refused, nothing moves.
    bobs = wallets.card(bob, balance="20")
    sign_in(another_client, bob)
    assert "BCA account ending" not in page_text(another_client.get("/wallet/withdraw"))
    refused = _withdraw(another_client, card_id=bobs.public_id, amount="5",
                        saved_account=reference)  # fmt: skip
    assert refused.status_code == 422
    assert "Choose one of your bank accounts, or a new one." in page_text(refused)
    assert wallets.count("withdrawals") == 2
    _ledger_ok(people)
