"""Issue 11 A4: the transfer confirmation names the recipient by card brand, last four and
masked email, not by a name alone (names can be look-alikes)."""

from __future__ import annotations

import re

from tests.cardholder.conftest import Wallets
from tests.pages.conftest import PageClient, People, Person, htmx, page_text


def test_the_confirmation_shows_brand_last_four_and_masked_email(
    client: PageClient, alice: Person, people: People, wallets: Wallets
) -> None:
    bob = people.make(email="bobby.tables@portal.test")
    mine = wallets.card(alice, balance="100")
    theirs = wallets.card(bob)
    page = client.get("/wallet/transfer").get_data(as_text=True)
    key = re.search(r'name="idempotency_key"[^>]*value="([0-9a-f]+)"', page) or re.search(
        r'value="([0-9a-f]{32})"[^>]*name="idempotency_key"', page
    )
    assert key is not None

    review = client.post("/wallet/transfer", data={
        "idempotency_key": key.group(1), "step": "review", "card_id": mine.public_id,
        "destination": "other", "to_number": theirs.number, "amount": "12"},
        headers=htmx())  # fmt: skip

    assert review.status_code == 200
    text = page_text(review)
    assert f"Their card</dt><dd>Visa •••• {theirs.last4}</dd>" in text
    assert "Their email</dt><dd>b•••s@portal.test</dd>" in text
    assert "bobby.tables" not in text
