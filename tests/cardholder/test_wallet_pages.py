"""The wallet pages through the Flask test client, inside the test's transaction: every page,
the money rules shown next to their fields, other people's cards out of reach, double submits,
the live-update endpoint and the CSV export."""

from __future__ import annotations

import csv
import io
import re

import pytest
import sqlalchemy as sa

from portal.domain.ids import is_public_id, new_public_id
from portal.services.wallet import wallet
from tests.cardholder.conftest import Wallets
from tests.conftest import confirm_top_ups, new_key
from tests.pages.conftest import PageClient, Person, htmx, new_client, page_text, sign_in


def _key(response) -> str:
    found = re.search(r'name="idempotency_key"[^>]*value="([0-9a-f]+)"', response.get_data(True))
    if not found:
        found = re.search(r'value="([0-9a-f]{32})"[^>]*name="idempotency_key"',
                          response.get_data(True))  # fmt: skip
    assert found, response.get_data(True)
    return found.group(1)


def _version(response) -> int:
    found = re.search(r'data-version="(\d+)"', response.get_data(True))
    assert found
    return int(found.group(1))


# -- access ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path", ["/wallet", "/wallet/activity", "/wallet/top-up", "/wallet/cards/new"]
)
def test_pages_need_sign_in(client: PageClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 302
    assert "/auth/login" in response.headers["Location"]


def test_a_poll_after_the_session_ended_sends_the_page_to_sign_in(client: PageClient) -> None:
    response = client.get("/wallet/changes?v=0", headers=htmx())
    assert response.status_code == 401
    assert response.headers["HX-Redirect"].startswith("/auth/login")


def test_merchants_have_no_wallet(people, client: PageClient) -> None:
    merchant = people.make(roles=("merchant",))
    sign_in(client, merchant)
    assert client.get("/wallet").status_code == 403


def test_other_peoples_cards_are_not_found(
    client: PageClient, alice: Person, bob: Person, wallets: Wallets
) -> None:
    theirs = wallets.card(bob, balance="100")
    before = wallets.balance(theirs)
    for method, path in [
        ("GET", f"/wallet/cards/{theirs.public_id}"),
        ("POST", f"/wallet/cards/{theirs.public_id}/freeze"),
        ("POST", f"/wallet/cards/{theirs.public_id}/unfreeze"),
        ("POST", f"/wallet/cards/{theirs.public_id}/name"),
        ("GET", f"/wallet/changes?view=card&card={theirs.public_id}"),
        ("GET", f"/wallet/activity?card={theirs.public_id}"),
        # Malformed, another kind's shape, well formed but naming nothing: 404 alike.
        ("GET", f"/wallet/cards/{theirs.card_id}"),
        ("GET", f"/wallet/cards/{theirs.public_id.replace('card_', 'usr_')}"),
        ("GET", f"/wallet/cards/{new_public_id('card')}"),
        ("POST", f"/wallet/cards/{theirs.card_id}/freeze"),
        ("GET", f"/wallet/changes?view=card&card={theirs.card_id}"),
    ]:
        response = client.open(path, method=method, data={"name": "mine now"})
        assert response.status_code == 404, (method, path, response.status_code)
    # Spending from someone else's card through the forms is refused, and nothing moves.
    mine = wallets.card(alice, balance="10")
    key = _key(client.get("/wallet/withdraw"))
    response = client.post("/wallet/withdraw", data={
        "idempotency_key": key, "step": "confirm", "card_id": theirs.public_id, "amount": "50",
        "bank_name": "Bank", "account_number": "12345678", "account_holder": "Alice",
    })  # fmt: skip
    assert response.status_code == 422
    assert "Choose one of your cards." in page_text(response)
    assert wallets.balance(theirs) == before
    assert wallets.balance(mine) == (1000, 0)


# -- dashboard ---------------------------------------------------------------------------------
def test_dashboard_empty_state(client: PageClient, alice: Person) -> None:
    text = page_text(client.get("/wallet"))
    assert "You have no cards yet" in text
    assert "Issue your first card" in text
    assert "Nothing here yet" in text
    assert "No money in or out yet" in text


def test_dashboard_shows_tiles_activity_and_chart(
    client: PageClient, alice: Person, wallets: Wallets
) -> None:
    usd = wallets.card(alice, balance="1234.5", name="Everyday")
    wallets.card(alice, currency="IDR", brand="mastercard", balance="750000")
    response = client.get("/wallet")
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    text = page_text(response)
    assert f"Visa •••• {usd.last4}" in text
    assert "Everyday" in text
    assert "$1,234.50" in text
    assert "IDR 750,000" in text
    assert "Pending" in text and "$0.00" in text
    assert "Bank transfer" in text  # the latest activity
    html = response.get_data(as_text=True)
    assert "vendor/chartjs/chart.umd.min.js" in html
    assert html.count("data-chart=") == 2  # one chart per currency
    assert "&#34;currency&#34;:&#34;USD&#34;" in html or '"currency":"USD"' in html
    assert "<script>" not in html  # no inline script
    assert usd.number not in html


def test_pages_name_cards_only_by_their_public_ids(
    client: PageClient, alice: Person, wallets: Wallets
) -> None:
    card, other = wallets.card(alice, balance="50"), wallets.card(alice, balance="5")
    internal = re.compile(
        rf"/wallet/cards/({card.card_id}|{other.card_id})\b|card=({card.card_id}|{other.card_id})\b"
        rf'|id="card-({card.card_id}|{other.card_id})"|value="({card.card_id}|{other.card_id})"'
    )
    pages = {
        "/wallet": f"/wallet/cards/{card.public_id}",
        f"/wallet/cards/{card.public_id}": f"/wallet/top-up?card={card.public_id}",
        "/wallet/top-up": f'value="{card.public_id}"',
        "/wallet/transfer": f'value="{other.public_id}"',
        "/wallet/withdraw": f'value="{card.public_id}"',
        "/wallet/activity": f'value="{card.public_id}"',
        f"/wallet/activity?card={card.public_id}": 'id="item-tu_',  # its funding top-up
    }
    for path, expected in pages.items():
        html = client.get(path).get_data(as_text=True)
        assert expected in html, path
        assert not internal.search(html), (path, internal.search(html))


def test_frozen_badge_and_freeze_buttons(
    client: PageClient, alice: Person, wallets: Wallets
) -> None:
    card = wallets.card(alice)
    response = client.post(f"/wallet/cards/{card.public_id}/freeze", headers=htmx())
    assert response.status_code == 200
    fragment = response.get_data(as_text=True)
    assert fragment.lstrip().startswith('<article class="card-tile card-tile--frozen"')
    assert f'id="card-{card.public_id}"' in fragment
    assert "Unfreeze" in fragment
    assert "Frozen" in page_text(client.get("/wallet"))
    # Without JavaScript: a plain post and a redirect back.
    response = client.post(f"/wallet/cards/{card.public_id}/unfreeze")
    assert response.status_code == 302
    assert "Frozen" not in page_text(client.get("/wallet")).replace("frozen.", "")


# -- cards -------------------------------------------------------------------------------------
def test_issue_card_shows_number_and_code_once(
    client: PageClient, alice: Person, wallets: Wallets
) -> None:
    page = client.get("/wallet/cards/new")
    assert page.status_code == 200
    for label in ("Card type", "Network", "Currency", "Name (optional)"):
        assert label in page_text(page)
    response = client.post("/wallet/cards/new", data={
        "card_type": "prepaid", "brand": "amex", "currency": "EUR", "name": "Travel"})  # fmt: skip
    assert response.status_code == 201
    assert response.headers["Cache-Control"] == "no-store"
    text = page_text(response)
    assert "You won't see this again" in text
    number = re.search(r'id="card-number">([\d ]+)<', response.get_data(True)).group(1)
    cvv = re.search(r'id="card-cvv">(\d+)<', response.get_data(True)).group(1)
    assert len(number.replace(" ", "")) == 15 and len(cvv) == 4
    # Never again: not on the dashboard, the card page or the history.
    card_id = re.search(r"/wallet/top-up\?card=([\w]+)", response.get_data(True)).group(1)
    assert is_public_id("card", card_id)
    for path in ("/wallet", f"/wallet/cards/{card_id}", "/wallet/activity"):
        html = client.get(path).get_data(as_text=True)
        assert number not in html and number.replace(" ", "") not in html
        assert "Travel" in html or path == "/wallet/activity"


def test_issue_card_refusals_are_next_to_the_field(
    client: PageClient, alice: Person, wallets: Wallets
) -> None:
    response = client.post("/wallet/cards/new", data={
        "card_type": "debit", "brand": "visa", "currency": "USD", "name": "x" * 65})  # fmt: skip
    assert response.status_code == 422
    assert 'id="name-error"' in response.get_data(as_text=True)
    for _ in range(5):
        wallets.card(alice)
    response = client.post("/wallet/cards/new", data={
        "card_type": "debit", "brand": "visa", "currency": "USD"})  # fmt: skip
    assert response.status_code == 422
    assert "At most 5 cards per person." in page_text(response)


def test_card_page_and_rename(client: PageClient, alice: Person, wallets: Wallets) -> None:
    card = wallets.card(alice, balance="20")
    page = client.get(f"/wallet/cards/{card.public_id}")
    assert page.status_code == 200
    assert "Activity on this card" in page_text(page)
    response = client.post(f"/wallet/cards/{card.public_id}/name", data={"name": "Groceries"},
                           headers=htmx())  # fmt: skip
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "Saved" in html and 'hx-swap-oob="true"' in html and "Groceries" in html
    response = client.post(f"/wallet/cards/{card.public_id}/name", data={"name": "y" * 70},
                           headers=htmx())  # fmt: skip
    assert response.status_code == 422
    assert "64 characters" in page_text(response)
    response = client.post(f"/wallet/cards/{card.public_id}/name", data={"name": "Food"})
    assert response.status_code == 302
    assert "Food" in page_text(client.get(f"/wallet/cards/{card.public_id}"))


# -- money -------------------------------------------------------------------------------------
def test_top_up_review_then_confirm(client: PageClient, alice: Person, wallets: Wallets) -> None:
    card = wallets.card(alice)
    form = client.get(f"/wallet/top-up?card={card.public_id}")
    key = _key(form)
    data = {"idempotency_key": key, "card_id": card.public_id, "method": "e_wallet",
            "amount": "25.50"}  # fmt: skip
    review = client.post("/wallet/top-up", data={**data, "step": "review"}, headers=htmx())
    assert review.status_code == 200
    text = page_text(review)
    assert "Check and confirm" in text and "$25.50" in text and "Fee" in text
    assert "E-wallet" in text
    assert key in review.get_data(as_text=True)  # the same key goes on to the confirm step
    assert wallets.balance(card) == (0, 0)  # nothing happened yet
    done = client.post("/wallet/top-up", data={**data, "step": "confirm"}, headers=htmx())
    assert done.status_code == 200
    assert "Top-up requested" in page_text(done) and "Pending" in page_text(done)
    assert wallets.balance(card) == (0, 0)  # not before the funding processor confirms it
    # The receipt's reference is the top-up's public id, never its internal number.
    reference = re.search(r"<dt>Reference</dt><dd><code>([^<]+)</code>", done.get_data(True))
    stored = wallets.people.connection.execute(
        sa.text("SELECT id, public_id FROM top_ups WHERE card_id = :c"), {"c": card.card_id}
    ).one()
    assert reference is not None and reference.group(1) == stored.public_id
    assert is_public_id("top_up", reference.group(1))
    assert f"top_up_{stored.id}" not in done.get_data(as_text=True)


def test_a_pending_top_up_receipt_updates_itself(
    client: PageClient, another_client: PageClient, alice: Person, bob: Person,
    wallets: Wallets,
) -> None:  # fmt: skip
    card = wallets.card(alice, balance="10")
    key = _key(client.get(f"/wallet/top-up?card={card.public_id}"))
    data = {"idempotency_key": key, "card_id": card.public_id, "method": "debit_card",
            "step": "confirm"}  # fmt: skip
    done = client.post("/wallet/top-up", data={**data, "amount": "25"}, headers=htmx())
    status_url = re.search(r'hx-get="(/wallet/movements/tu_\w+/status)"', done.get_data(True))
    assert status_url is not None, "a pending receipt asks for its status"
    waiting = client.get(status_url.group(1), headers=htmx())
    assert "Pending" in page_text(waiting) and "$10.00" in page_text(waiting)
    assert 'hx-trigger="every' in waiting.get_data(as_text=True)
    assert confirm_top_ups(wallets.people.uow()) == 1
    settled = client.get(status_url.group(1), headers=htmx())
    assert "Succeeded" in page_text(settled) and "$35.00" in page_text(settled)
    assert "hx-get" not in settled.get_data(as_text=True)  # settled: it stops asking
    # Someone else's receipt is not found.
    sign_in(another_client, bob)
    assert another_client.get(status_url.group(1), headers=htmx()).status_code == 404

    declined = client.post(
        "/wallet/top-up", data={**data, "idempotency_key": new_key(), "amount": "5.13"},
        headers=htmx(),
    )  # fmt: skip
    url = re.search(r'hx-get="(/wallet/movements/tu_\w+/status)"', declined.get_data(True))
    assert url is not None
    confirm_top_ups(wallets.people.uow())
    failed = page_text(client.get(url.group(1), headers=htmx()))
    assert "Failed" in failed and "declined the payment" in failed and "$35.00" in failed


def test_double_submit_moves_money_once(
    client: PageClient, alice: Person, bob: Person, wallets: Wallets
) -> None:
    mine = wallets.card(alice, balance="100")
    theirs = wallets.card(bob)
    key = _key(client.get("/wallet/transfer"))
    data = {"idempotency_key": key, "step": "confirm", "card_id": mine.public_id,
            "destination": "other", "to_number": theirs.number, "amount": "30"}  # fmt: skip
    first = client.post("/wallet/transfer", data=data)
    second = client.post("/wallet/transfer", data=data)
    # Post/Redirect/Get: both land on the same receipt (303), the replay saying so.
    assert first.status_code == second.status_code == 303
    assert first.headers["Location"] == second.headers["Location"]
    assert first.headers["Location"].startswith("/wallet/movements/tr_")
    assert wallets.balance(mine) == (7000, 0)
    assert wallets.balance(theirs) == (3000, 0)
    # With htmx the replay says so.
    third = client.post("/wallet/transfer", data=data, headers=htmx())
    replay = page_text(third)
    reference = first.headers["Location"].rsplit("/", 1)[-1]
    said = (
        rf"Already done at \d{{1,2}}:\d\d( [AP]M)? on \w+ \d+, \d{{4}}, "
        rf"reference {reference}\. Nothing happened twice\."
    )
    assert re.search(said, replay), replay
    assert "_" + str(wallets.count("transfers")) not in replay  # no internal ids
    assert third.headers["HX-Push-Url"] == first.headers["Location"]
    # The receipt page itself is a plain GET: reloading it moves nothing.
    again = client.get(first.headers["Location"])
    assert again.status_code == 200 and reference in page_text(again)
    assert wallets.balance(mine) == (7000, 0)
    assert wallets.balance(mine) == (7000, 0)


def test_transfer_shows_the_masked_recipient_before_sending(
    client: PageClient, alice: Person, bob: Person, wallets: Wallets
) -> None:
    mine = wallets.card(alice, balance="100")
    theirs = wallets.card(bob)
    key = _key(client.get("/wallet/transfer"))
    review = client.post("/wallet/transfer", data={
        "idempotency_key": key, "step": "review", "card_id": mine.public_id,
        "destination": "other", "to_number": theirs.number, "amount": "12", "memo": "lunch"},
        headers=htmx())  # fmt: skip
    text = page_text(review)
    assert review.status_code == 200
    assert f"Ada L. · Visa •••• {theirs.last4}" in text
    # The typed number only travels back in the hidden field the confirm step posts.
    html = review.get_data(as_text=True)
    shown = re.sub(r'<input type="hidden" name="to_number" value="\d+">', "", html)
    assert "Lovelace" not in text and theirs.number not in shown
    assert wallets.balance(theirs) == (0, 0)


def test_transfer_between_own_cards(client: PageClient, alice: Person, wallets: Wallets) -> None:
    a = wallets.card(alice, balance="50")
    b = wallets.card(alice)
    key = _key(client.get("/wallet/transfer"))
    response = client.post("/wallet/transfer", data={
        "idempotency_key": key, "step": "confirm", "card_id": a.public_id, "destination": "own",
        "to_card_id": b.public_id, "amount": "20"}, headers=htmx())  # fmt: skip
    assert "Money sent" in page_text(response)
    assert wallets.balance(a) == (3000, 0) and wallets.balance(b) == (2000, 0)


TOP_UP = "/wallet/top-up"
CASH = {"method": "cash"}
BANK = {"bank_name": "BCA", "account_number": "1234567890", "account_holder": "Ada"}


@pytest.mark.parametrize(
    ("path", "extra", "amount", "message"),
    [
        (TOP_UP, CASH, "49999", "Amount below the minimum of IDR\xa050,000."),
        (TOP_UP, CASH, "200000000", "Amount above the maximum of IDR\xa0100,000,000."),
        ("/wallet/withdraw", BANK, "60000",
         "Not enough available money (IDR\xa050,000 available)."),
        (TOP_UP, CASH, "12.345", "IDR has 2 decimal places; “12.345” has 3. If you meant 12,345,"
         " write 12345 or 12,345."),
        (TOP_UP, CASH, "lots", "Enter an amount in IDR, like 50000 or 50,000."),
    ],
)  # fmt: skip
@pytest.mark.parametrize("step", ["review", "confirm"])
def test_refusals_show_next_to_the_amount_and_move_nothing(
    client: PageClient, alice: Person, wallets: Wallets, path: str, extra: dict[str, str],
    amount: str, message: str, step: str,
) -> None:  # fmt: skip
    card = wallets.card(alice, currency="IDR", balance="50000")
    key = _key(client.get(path))
    response = client.post(path, data={"idempotency_key": key, "step": step,
                                       "card_id": card.public_id, "amount": amount, **extra},
                           headers=htmx())  # fmt: skip
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    error = re.search(r'<p class="field__error" id="amount-error">([^<]*)</p>', html)
    assert error and error.group(1) == message
    assert 'aria-invalid="true"' in html
    assert wallets.balance(card) == (5000000, 0)


def test_a_frozen_card_is_refused_at_review_and_at_confirm(
    client: PageClient, alice: Person, wallets: Wallets
) -> None:
    card = wallets.card(alice, balance="100")
    wallets.freeze(alice, card)
    key = _key(client.get("/wallet/withdraw"))
    data = {"idempotency_key": key, "card_id": card.public_id, "amount": "10", "bank_name": "BCA",
            "account_number": "1234567890", "account_holder": "Ada"}  # fmt: skip
    for step in ("review", "confirm"):
        response = client.post("/wallet/withdraw", data={**data, "step": step})
        assert response.status_code == 422
        assert "Card is frozen" in page_text(response)
    assert wallets.balance(card) == (10000, 0)
    assert wallets.count("withdrawals") == 0


def test_a_refusal_from_the_service_is_shown_and_a_new_key_minted(
    client: PageClient, alice: Person, bob: Person, wallets: Wallets
) -> None:
    """The recipient's card is frozen after the review: the service refuses at confirm."""
    mine = wallets.card(alice, balance="100")
    theirs = wallets.card(bob)
    key = _key(client.get("/wallet/transfer"))
    data = {"idempotency_key": key, "card_id": mine.public_id, "destination": "other",
            "to_number": theirs.number, "amount": "10"}  # fmt: skip
    assert client.post("/wallet/transfer", data={**data, "step": "review"}).status_code == 200
    wallets.freeze(bob, theirs)
    response = client.post("/wallet/transfer", data={**data, "step": "confirm"})
    assert response.status_code == 422
    assert "Card is frozen." in page_text(response)
    assert _key(response) != key
    assert wallets.balance(mine) == (10000, 0)


def test_unknown_recipient_number(client: PageClient, alice: Person, wallets: Wallets) -> None:
    mine = wallets.card(alice, balance="100")
    key = _key(client.get("/wallet/transfer"))
    response = client.post("/wallet/transfer", data={
        "idempotency_key": key, "step": "review", "card_id": mine.public_id,
        "destination": "other", "to_number": "4111 1111 1111 1111", "amount": "10"})  # fmt: skip
    assert response.status_code == 422
    assert 'id="to_number-error"' in response.get_data(as_text=True)


def test_withdrawal_is_pending_then_listed(
    client: PageClient, alice: Person, wallets: Wallets
) -> None:
    card = wallets.card(alice, balance="100")
    key = _key(client.get("/wallet/withdraw"))
    response = client.post("/wallet/withdraw", data={
        "idempotency_key": key, "step": "confirm", "card_id": card.public_id, "amount": "40",
        "bank_name": "BCA", "account_number": "1234-5678-90", "account_holder": "Ada L"},
        headers=htmx())  # fmt: skip
    text = page_text(response)
    assert "Withdrawal requested" in text and "Pending" in text
    assert wallets.balance(card) == (10000, 4000)
    assert "BCA •••• 7890" in page_text(client.get("/wallet/activity"))
    assert "1234567890" not in client.get("/wallet/activity").get_data(as_text=True)


def test_a_processing_withdrawal_is_shown_as_processing(
    client: PageClient, alice: Person, wallets: Wallets
) -> None:
    card = wallets.card(alice, balance="100")
    key = _key(client.get("/wallet/withdraw"))
    client.post("/wallet/withdraw", data={
        "idempotency_key": key, "step": "confirm", "card_id": card.public_id, "amount": "40",
        "bank_name": "BCA", "account_number": "1234-5678-90", "account_holder": "Ada L"},
        headers=htmx())  # fmt: skip
    withdrawal_id = wallets.people.connection.execute(
        sa.text("SELECT id FROM withdrawals WHERE card_id = :c"), {"c": card.card_id}
    ).scalar_one()
    assert wallet.begin_payout(wallets.people.uow(), withdrawal_id=withdrawal_id) is not None
    for path in ("/wallet/activity", "/wallet/activity?status=processing", "/wallet"):
        html = client.get(path).get_data(as_text=True)
        assert 'data-status="processing"' in html and ">Processing</span>" in html, path
    pending = client.get("/wallet/activity?status=pending").get_data(as_text=True)
    assert 'data-status="processing"' not in pending
    assert wallets.balance(card) == (10000, 4000)  # still held, not yet posted


def test_money_pages_without_cards_show_an_empty_state(client: PageClient, alice: Person) -> None:
    for path in ("/wallet/top-up", "/wallet/transfer", "/wallet/withdraw"):
        assert "You need a card first" in page_text(client.get(path))


def test_every_money_input_is_labelled(client: PageClient, alice: Person, wallets: Wallets) -> None:
    wallets.card(alice, balance="10")
    for path in ("/wallet/top-up", "/wallet/transfer", "/wallet/withdraw", "/wallet/activity",
                 "/wallet/cards/new"):  # fmt: skip
        html = client.get(path).get_data(as_text=True)
        for tag in re.finditer(r"<(input|select|textarea)\b([^>]*)>", html):
            attrs = tag.group(2)
            if 'type="hidden"' in attrs:
                continue
            field_id = re.search(r'id="([^"]+)"', attrs)
            assert field_id, (path, attrs)
            assert f'for="{field_id.group(1)}"' in html, (path, field_id.group(1))


# -- live updates ------------------------------------------------------------------------------
def test_changes_answers_204_then_fragments_after_a_movement(
    client: PageClient, alice: Person, bob: Person, wallets: Wallets
) -> None:
    card = wallets.card(alice)
    page = client.get("/wallet")
    version = _version(page)
    unchanged = client.get(f"/wallet/changes?v={version}&view=dashboard", headers=htmx())
    assert unchanged.status_code == 204 and unchanged.get_data() == b""
    # Money arrives from someone else (another tab, the API, another person).
    theirs = wallets.card(bob, balance="80")
    from portal.domain.money import Money
    from portal.services.identity import users
    from portal.services.wallet import wallet
    from tests.conftest import new_key

    wallet.transfer(wallets.people.uow(), actor=users.actor_for(wallets.people.uow(), bob.id),
                    from_card_id=theirs.public_id, to_card_id=card.card_id,
                    amount=Money.of_major("15", "USD"), idempotency_key=new_key())  # fmt: skip
    changed = client.get(f"/wallet/changes?v={version}&view=dashboard", headers=htmx())
    assert changed.status_code == 200
    html = changed.get_data(as_text=True)
    assert _version(changed) > version
    for region in ('id="cards"', 'id="latest-activity"', 'id="charts"'):
        assert re.search(region + r'[^>]*hx-swap-oob="true"', html), region
    assert "$15.00" in html and "Ada L." in html
    again = client.get(f"/wallet/changes?v={_version(changed)}", headers=htmx())
    assert again.status_code == 204
    # The card page's poll answers that card's tile and activity.
    card_view = client.get(f"/wallet/changes?v=0&view=card&card={card.public_id}", headers=htmx())
    assert f'id="card-{card.public_id}"' in card_view.get_data(as_text=True)
    assert 'id="card-activity"' in card_view.get_data(as_text=True)


# -- history -----------------------------------------------------------------------------------
def _movements(client: PageClient, alice: Person, bob: Person, wallets: Wallets):
    usd = wallets.card(alice, balance="100")
    eur = wallets.card(alice, currency="EUR", balance="70")
    theirs = wallets.card(bob)
    key = _key(client.get("/wallet/transfer"))
    client.post("/wallet/transfer", data={
        "idempotency_key": key, "step": "confirm", "card_id": usd.public_id,
        "destination": "other", "to_number": theirs.number, "amount": "12.5",
        "memo": "=HYPERLINK(1)"})  # fmt: skip
    return usd, eur, theirs


def test_history_filters_search_and_pages(
    client: PageClient, alice: Person, bob: Person, wallets: Wallets
) -> None:
    usd, eur, _ = _movements(client, alice, bob, wallets)
    text = page_text(client.get("/wallet/activity"))
    assert "$12.50" in text and "€70.00" in text and "$100.00" in text
    only_eur = page_text(client.get(f"/wallet/activity?card={eur.public_id}"))
    assert "€70.00" in only_eur and "$12.50" not in only_eur
    transfers = page_text(client.get("/wallet/activity?kind=transfer"))
    assert "$12.50" in transfers and "€70.00" not in transfers
    assert "Nothing matches" in page_text(client.get("/wallet/activity?status=pending"))
    assert "$12.50" in page_text(client.get("/wallet/activity?q=Ada"))
    assert "Nothing matches" in page_text(
        client.get("/wallet/activity?since=2001-01-01&until=2001-01-31")
    )
    bad = client.get("/wallet/activity?since=yesterday")
    assert bad.status_code == 422 and "Enter a date like" in page_text(bad)
    # Pages: the next link carries the filters and continues where the page ended.
    for _ in range(21):
        wallets.fund(usd, "5")
    first = client.get("/wallet/activity")
    next_url = re.search(r'href="(/wallet/activity\?[^"]*starting_after=[^"]+)"',
                         first.get_data(True)).group(1).replace("&amp;", "&")  # fmt: skip
    more = client.get(next_url, headers=htmx(**{"HX-Target": "load-more"}))
    assert more.status_code == 200
    assert more.get_data(as_text=True).lstrip().startswith("<li")
    assert "€70.00" in page_text(more)
    # The filter form swaps only the results.
    results = client.get("/wallet/activity?kind=top_up",
                         headers=htmx(**{"HX-Target": "activity-results"}))  # fmt: skip
    assert results.get_data(as_text=True).lstrip().startswith('<div id="activity-results"')


def test_csv_export(client: PageClient, alice: Person, bob: Person, wallets: Wallets) -> None:
    usd, _eur, theirs = _movements(client, alice, bob, wallets)
    response = client.get("/wallet/activity.csv")
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    assert "attachment" in response.headers["Content-Disposition"]
    body = response.get_data(as_text=True)
    rows = list(csv.DictReader(io.StringIO(body)))
    assert len(rows) == 3
    out = next(r for r in rows if r["kind"] == "transfer")
    assert out["amount"] == "-12.50" and out["currency"] == "USD" and out["direction"] == "out"
    assert out["card"] == f"•••• {usd.last4}"
    assert theirs.number not in body and usd.number not in body
    filtered = list(csv.DictReader(io.StringIO(
        client.get("/wallet/activity.csv?kind=top_up").get_data(as_text=True))))  # fmt: skip
    assert {r["kind"] for r in filtered} == {"top_up"} and len(filtered) == 2


def test_csv_cells_cannot_be_formulas() -> None:
    from portal.cardholder.views import _cell

    assert _cell("=HYPERLINK(1)") == "'=HYPERLINK(1)"
    assert _cell("@SUM") == "'@SUM"
    assert _cell("Visa •••• 4242 (Ada L.)") == "Visa •••• 4242 (Ada L.)"


def test_another_person_sees_their_incoming_money(
    app, client: PageClient, alice: Person, bob: Person, wallets: Wallets
) -> None:
    mine = wallets.card(alice, balance="100")
    theirs = wallets.card(bob)
    key = _key(client.get("/wallet/transfer"))
    client.post("/wallet/transfer", data={
        "idempotency_key": key, "step": "confirm", "card_id": mine.public_id,
        "destination": "other", "to_number": theirs.number, "amount": "9"})  # fmt: skip
    bobs = new_client(app)
    sign_in(bobs, bob)
    text = page_text(bobs.get("/wallet"))
    assert "+$9.00" in text and "Ada L." in text


def test_a_double_submitted_new_card_form_issues_one_card(
    client: PageClient, alice: Person, wallets: Wallets
) -> None:
    key = _key(client.get("/wallet/cards/new"))
    held = wallets.count("cards")
    data = {"idempotency_key": key, "card_type": "debit", "brand": "visa", "currency": "USD",
            "name": "Once"}  # fmt: skip
    first = client.post("/wallet/cards/new", data=data)
    again = client.post("/wallet/cards/new", data=data)
    assert (first.status_code, again.status_code) == (201, 200)
    number = re.search(r'id="card-number">([\d ]+)<', first.get_data(True)).group(1)
    cvv = re.search(r'id="card-cvv">(\d+)<', first.get_data(True)).group(1)
    # The number and code were shown once, to the first answer; the retry names the card only.
    html = again.get_data(True)
    assert number not in html and number.replace(" ", "") not in html
    assert 'id="card-cvv"' not in html and f">{cvv}<" not in html
    assert "This card was already issued" in page_text(again)
    assert f"ending in {number[-4:]}" in page_text(again)
    assert again.headers["Cache-Control"] == "no-store"
    assert wallets.count("cards") == held + 1
    changed = client.post("/wallet/cards/new", data={**data, "name": "Twice"})
    assert changed.status_code == 422
    assert "already issued a card" in page_text(changed)
    assert key not in changed.get_data(True)  # a new key: sending it again issues a card
    assert client.post("/wallet/cards/new", data={**data, "name": "Twice",
                       "idempotency_key": _key(changed)}).status_code == 201  # fmt: skip
