"""The money API: top-ups, transfers and withdrawals (Idempotency-Key required, replays
answered with Idempotent-Replayed, conflicting reuse 422, not enough money 402), retrieving and
listing each with filters and cursor, staff settlement of withdrawals, and the activity feed;
another cardholder's records are 404."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient

from portal.domain.ids import is_public_id
from portal.domain.types import Actor
from portal.services.shared.uow import UnitOfWork
from portal.services.wallet import cards, wallet
from tests.api import test_cards_api as shared
from tests.api.test_auth_api import API, error_of
from tests.api.test_cards_api import recipient_for
from tests.conftest import SYSTEM, Factory, confirm_top_ups

# Fixtures shared with the cards API tests.
_fresh_limits = shared._fresh_limits
api, alice, budi = shared.api, shared.alice, shared.budi
as_alice, as_budi, as_admin, as_support = (
    shared.as_alice, shared.as_budi, shared.as_admin, shared.as_support
)  # fmt: skip
no_secrets = shared.no_secrets


def key() -> dict[str, str]:
    return {"Idempotency-Key": uuid.uuid4().hex}


def post(api: FlaskClient, path: str, body: dict[str, Any], headers: dict[str, str],
         idem: dict[str, str] | None = None) -> Any:  # fmt: skip
    return api.post(f"{API}{path}", json=body, headers={**headers, **(idem or key())})


def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, response.get_data(as_text=True)
    return response.get_json()


# -- idempotency --------------------------------------------------------------------------------
def test_top_up_needs_a_key_and_replays_the_first_response(
    api: FlaskClient, make: Factory, alice: Actor, as_alice: dict[str, str], uow: UnitOfWork
) -> None:
    card = make.card(alice)
    body = {"card": card.public_id, "amount": 2500, "currency": "USD", "method": "e_wallet"}

    missing = error_of(api.post(f"{API}/top_ups", json=body, headers=as_alice), 400)
    blank = error_of(
        api.post(f"{API}/top_ups", json=body, headers={**as_alice, "Idempotency-Key": " "}), 400
    )
    same = key()
    first = post(api, "/top_ups", body, as_alice, same)
    replay = post(api, "/top_ups", body, as_alice, same)
    reused = error_of(post(api, "/top_ups", {**body, "amount": 2600}, as_alice, same), 422)

    assert (missing["code"], missing["param"]) == ("idempotency_key_missing", "Idempotency-Key")
    assert blank["code"] == "idempotency_key_missing"
    assert first.status_code == 201 and "Idempotent-Replayed" not in first.headers
    created = first.get_json()
    assert (created["object"], created["amount"], created["currency"], created["status"]) == (
        "top_up", 2500, "usd", "pending"
    )  # fmt: skip
    assert (created["card"], created["direction"], created["method"]) == (
        card.public_id, "in", "e_wallet"
    )  # fmt: skip
    assert is_public_id("top_up", created["id"])
    assert replay.status_code == 201
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.get_json() == created
    assert (reused["type"], reused["code"]) == ("idempotency_error", "idempotency_key_reused")
    balance = ok(api.get(f"{API}/cards/{card.public_id}/balance", headers=as_alice))
    assert balance["posted"] == 0  # pending: nothing is posted until the funding processor says
    assert confirm_top_ups(uow) == 1  # one top-up, not two
    balance = ok(api.get(f"{API}/cards/{card.public_id}/balance", headers=as_alice))
    assert balance["posted"] == 2500
    settled = ok(api.get(f"{API}/top_ups/{created['id']}", headers=as_alice))
    assert (settled["status"], settled["failure_code"]) == ("succeeded", None)


def test_a_declined_top_up_shows_as_failed_and_moves_nothing(
    api: FlaskClient, make: Factory, alice: Actor, as_alice: dict[str, str], uow: UnitOfWork
) -> None:
    card = make.card(alice)
    body = {"card": card.public_id, "amount": 2513, "currency": "usd", "method": "debit_card"}
    created = ok(post(api, "/top_ups", body, as_alice), 201)
    listed = ok(api.get(f"{API}/top_ups?status=pending", headers=as_alice))["data"]
    assert [t["id"] for t in listed] == [created["id"]]
    confirm_top_ups(uow)
    failed = ok(api.get(f"{API}/top_ups/{created['id']}", headers=as_alice))
    assert (failed["status"], failed["failure_code"]) == ("failed", "funding_declined")
    balance = ok(api.get(f"{API}/cards/{card.public_id}/balance", headers=as_alice))
    assert (balance["posted"], balance["available"]) == (0, 0)


@pytest.mark.parametrize(
    ("change", "status", "code", "param"),
    [
        ({"amount": 0}, 422, "parameter_invalid", "amount"),
        ({"amount": 12.5}, 422, "parameter_invalid", "amount"),
        ({"amount": "2500"}, 422, "parameter_invalid", "amount"),
        ({"amount": 100}, 422, "limit_exceeded", "amount"),
        ({"currency": "xyz"}, 422, "parameter_invalid", "currency"),
        ({"currency": "eur"}, 422, "currency_mismatch", "currency"),
        ({"method": "cheque"}, 422, "parameter_invalid", "method"),
        ({"card": "card_" + "0" * 24}, 404, "not_found", "card"),  # well formed, names nothing
        ({"card": "usr_" + "0" * 24}, 422, "parameter_invalid", "card"),
        ({"card": 10**15}, 422, "parameter_invalid", "card"),
    ],
)
def test_top_up_refusals_name_the_field(
    api: FlaskClient, make: Factory, alice: Actor, as_alice: dict[str, str],
    change: dict[str, Any], status: int, code: str, param: str,
) -> None:  # fmt: skip
    card = make.card(alice)
    body = {"card": card.public_id, "amount": 2500, "currency": "usd", "method": "cash", **change}

    error = error_of(post(api, "/top_ups", body, as_alice), status)

    assert (error["code"], error["param"]) == (code, param)
    assert ok(api.get(f"{API}/cards/{card.public_id}/balance", headers=as_alice))["posted"] == 0


# -- transfers ----------------------------------------------------------------------------------
def test_transfer_to_someone_else_and_its_refusals(
    api: FlaskClient, make: Factory, alice: Actor, budi: Actor, as_alice: dict[str, str],
    as_budi: dict[str, str],
) -> None:  # fmt: skip
    mine = make.card(alice, balance="10.00")
    theirs = make.card(budi)
    recipient = ok(api.post(f"{API}/cards/lookup", json={"number": theirs.number},
                            headers=as_alice))  # fmt: skip
    body = {"from_card": mine.public_id, "to_card": recipient["recipient"], "amount": 350,
            "currency": "usd", "memo": "coffee"}  # fmt: skip

    same = key()
    sent = ok(post(api, "/transfers", body, as_alice, same), 201)
    replay = post(api, "/transfers", body, as_alice, same)
    assert replay.headers["Idempotent-Replayed"] == "true" and replay.get_json() == sent
    poor = error_of(post(api, "/transfers", {**body, "amount": 5000}, as_alice), 402)
    swapped = {**body, "from_card": theirs.public_id, "to_card": mine.public_id}
    stolen = error_of(post(api, "/transfers", swapped, as_alice), 404)

    assert (sent["object"], sent["status"], sent["direction"], sent["memo"]) == (
        "transfer", "succeeded", "out", "coffee"
    )  # fmt: skip
    assert sent["counterparty"] == f"Visa \u2022\u2022\u2022\u2022 {theirs.number[-4:]} (Budi S.)"
    # The 201 is built from the movement itself: it says what reading it back says.
    assert ok(api.get(f"{API}/transfers/{sent['id']}", headers=as_alice)) == sent
    assert (poor["type"], poor["code"], poor["param"]) == (
        "card_error", "insufficient_funds", "amount"
    )  # fmt: skip
    assert stolen["param"] == "from_card"
    # The recipient sees it arrive; the balance moved exactly once.
    received = ok(api.get(f"{API}/transfers/{sent['id']}", headers=as_budi))
    assert (received["direction"], received["card"], received["amount"]) == (
        "in", theirs.public_id, 350
    )  # fmt: skip
    assert received["counterparty"].endswith("(Alice W.)")
    feed = ok(api.get(f"{API}/activity", headers=as_budi))["data"]
    assert [(a["id"], a["direction"]) for a in feed] == [(sent["id"], "in")]
    assert is_public_id("transfer", sent["id"]) and sent["card"] == mine.public_id
    assert ok(api.get(f"{API}/cards/{theirs.public_id}/balance", headers=as_budi))["posted"] == 350
    # The refused one is in the sender's history, failed, showing nothing of the other card,
    # and nowhere in the recipient's.
    failed = ok(api.get(f"{API}/transfers?status=failed", headers=as_alice))["data"]
    assert [(t["status"], t["failure_code"]) for t in failed] == [("failed", "insufficient_funds")]
    assert failed[0]["counterparty"] == "Card transfer"
    assert ok(api.get(f"{API}/activity?q=Budi&status=failed", headers=as_alice))["data"] == []
    error_of(api.get(f"{API}/transfers/{failed[0]['id']}", headers=as_budi), 404)
    no_secrets(api.get(f"{API}/transfers", headers=as_alice), mine, theirs)
    no_secrets(api.get(f"{API}/activity", headers=as_budi), mine, theirs)


def tampered(reference: str) -> str:
    """The reference with one character in its middle changed (not in the padding bits)."""
    i = len(reference) // 2
    return reference[:i] + ("A" if reference[i] != "A" else "B") + reference[i + 1 :]


def test_cards_cannot_be_enumerated_through_transfers(
    api: FlaskClient, make: Factory, alice: Actor, budi: Actor, as_alice: dict[str, str],
    as_budi: dict[str, str],
) -> None:  # fmt: skip
    """Issue 11 A5: another person's card id, a card that does not exist, a reference issued
    to someone else and a tampered one all answer the same 404 on `to_card` (no currency, no
    402), and move nothing."""
    mine = make.card(alice, balance="10.00")
    theirs_usd, theirs_idr = make.card(budi), make.card(budi, currency="IDR")
    body = {"from_card": mine.public_id, "amount": 100, "currency": "usd"}
    budi_ref = ok(api.post(f"{API}/cards/lookup", json={"number": make.card(alice).number},
                           headers=as_budi))["recipient"]  # fmt: skip
    alice_ref = ok(api.post(f"{API}/cards/lookup", json={"number": theirs_usd.number},
                            headers=as_alice))["recipient"]  # fmt: skip
    answers = [
        error_of(post(api, "/transfers", {**body, "to_card": to}, as_alice), 404)
        for to in (theirs_usd.public_id, theirs_idr.public_id, "card_" + "0" * 24, budi_ref,
                   tampered(alice_ref))
    ]  # fmt: skip
    assert {(a["code"], a["param"], a["message"]) for a in answers} == {
        ("not_found", "to_card", "no such card")
    }
    big = {**body, "amount": 999_999, "to_card": theirs_idr.public_id}
    assert error_of(post(api, "/transfers", big, as_alice), 404)["param"] == "to_card"
    assert ok(api.get(f"{API}/transfers", headers=as_alice))["data"] == []
    # (Expiry is the service tests' part: this app's clock is the real one.) The reference
    # itself pays the card.
    sent = ok(post(api, "/transfers", {**body, "to_card": alice_ref}, as_alice), 201)
    assert sent["status"] == "succeeded" and sent["counterparty"].endswith("(Budi S.)")
    assert ok(api.get(f"{API}/cards/{mine.public_id}/balance", headers=as_alice))["posted"] == 900


def test_transfers_are_rate_limited_per_sender(
    app: Any, api: FlaskClient, make: Factory, alice: Actor, as_alice: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setitem(app.config, "PORTAL_TRANSFER_LIMITS", "3 per minute")
    mine, other = make.card(alice, balance="10.00"), make.card(alice)
    body = {"from_card": mine.public_id, "to_card": other.public_id, "amount": 100,
            "currency": "usd"}  # fmt: skip
    statuses = [post(api, "/transfers", body, as_alice).status_code for _ in range(4)]
    assert statuses == [201, 201, 201, 429]
    limited = post(api, "/transfers", body, as_alice)
    assert limited.status_code == 429 and "Retry-After" in limited.headers
    assert ok(api.get(f"{API}/cards/{mine.public_id}/balance", headers=as_alice))["posted"] == 700


def test_frozen_card_is_a_card_error(
    api: FlaskClient, make: Factory, alice: Actor, as_alice: dict[str, str]
) -> None:
    card = make.card(alice, balance="10.00")
    cards.set_frozen(make.uow, actor=SYSTEM, card_id=card.public_id, frozen=True)
    body = {"card": card.public_id, "amount": 600, "currency": "usd", "method": "cash"}

    error = error_of(post(api, "/top_ups", body, as_alice), 402)

    assert (error["type"], error["code"]) == ("card_error", "card_frozen")


# -- withdrawals --------------------------------------------------------------------------------
def test_withdrawal_pending_then_settled_by_staff(
    api: FlaskClient, make: Factory, alice: Actor, as_alice: dict[str, str],
    as_admin: dict[str, str], as_support: dict[str, str],
) -> None:  # fmt: skip
    card = make.card(alice, balance="100.00")
    body = {"card": card.public_id, "amount": 2000, "currency": "usd", "bank_name": "BCA",
            "account_number": "0012-3456-7890", "account_holder": "Alice Wong"}  # fmt: skip

    first = ok(post(api, "/withdrawals", body, as_alice), 201)
    second = ok(post(api, "/withdrawals", body, as_alice), 201)

    assert (first["object"], first["status"], first["direction"]) == (
        "withdrawal", "pending", "out"
    )  # fmt: skip
    assert first["counterparty"] == "BCA \u2022\u2022\u2022\u2022 7890"
    assert "0012" not in str(first) and "34567890" not in str(first)
    held = ok(api.get(f"{API}/cards/{card.public_id}/balance", headers=as_alice))
    assert (held["posted"], held["pending"], held["available"]) == (10000, 4000, 6000)
    too_much = error_of(post(api, "/withdrawals", {**body, "amount": 6001}, as_alice), 402)
    assert too_much["code"] == "insufficient_funds"

    for who in (as_alice, as_support):
        assert error_of(api.post(f"{API}/withdrawals/{first['id']}/confirm", json={},
                                 headers=who), 403)["code"] == "permission_denied"  # fmt: skip
    confirmed = ok(api.post(f"{API}/withdrawals/{first['id']}/confirm",
                            json={"payout_reference": "PO-1"}, headers=as_admin))  # fmt: skip
    failed = ok(api.post(f"{API}/withdrawals/{second['id']}/fail", json={}, headers=as_admin))
    again = ok(api.post(f"{API}/withdrawals/{second['id']}/confirm", json={}, headers=as_admin))
    missing = api.post(f"{API}/withdrawals/{10**15}/confirm", json={}, headers=as_admin)
    unknown = api.post(f"{API}/withdrawals/wd_{'0' * 24}/confirm", json={}, headers=as_admin)
    a_transfer = api.post(f"{API}/withdrawals/tr_{first['id'][3:]}/fail", json={}, headers=as_admin)

    assert confirmed["status"] == "succeeded"
    assert (failed["status"], failed["failure_code"]) == ("failed", "payout_failed")
    assert again["status"] == "failed"  # settled already: unchanged
    error_of(missing, 404)
    error_of(unknown, 404)
    error_of(a_transfer, 404)
    settled = ok(api.get(f"{API}/cards/{card.public_id}/balance", headers=as_alice))
    assert (settled["posted"], settled["pending"], settled["available"]) == (8000, 0, 8000)
    assert ok(api.get(f"{API}/withdrawals/{first['id']}", headers=as_alice))["status"] == (
        "succeeded"
    )


def test_a_processing_withdrawal_shows_so_and_staff_cannot_settle_it(
    api: FlaskClient, make: Factory, uow: UnitOfWork, alice: Actor, as_alice: dict[str, str],
    as_admin: dict[str, str],
) -> None:  # fmt: skip
    card = make.card(alice, balance="100.00")
    body = {"card": card.public_id, "amount": 2000, "currency": "usd", "bank_name": "BCA",
            "account_number": "0012-3456-7890", "account_holder": "Alice Wong"}  # fmt: skip
    made = ok(post(api, "/withdrawals", body, as_alice), 201)
    internal = uow.run(
        lambda u: u.execute(
            sa.text("SELECT id FROM withdrawals WHERE public_id = :p"), {"p": made["id"]}
        ).scalar_one()
    )
    # The payout job has marked it processing and is calling the processor.
    assert wallet.begin_payout(uow, withdrawal_id=internal) is not None

    got = ok(api.get(f"{API}/withdrawals/{made['id']}", headers=as_alice))
    assert got["status"] == "processing"
    listed = ok(api.get(f"{API}/withdrawals?status=processing", headers=as_alice))["data"]
    assert [w["id"] for w in listed] == [made["id"]]
    for action in ("confirm", "fail"):
        refused = error_of(api.post(f"{API}/withdrawals/{made['id']}/{action}", json={},
                                    headers=as_admin), 400)  # fmt: skip
        assert (refused["code"], refused["param"]) == ("unexpected_state", "withdrawal_id")
        assert f"{made['id']} is processing" in refused["message"]
    held = ok(api.get(f"{API}/cards/{card.public_id}/balance", headers=as_alice))
    assert (held["posted"], held["pending"]) == (10000, 2000)  # nothing moved


# -- reading and listing ------------------------------------------------------------------------
def test_records_of_others_are_404(
    api: FlaskClient, make: Factory, alice: Actor, budi: Actor, as_alice: dict[str, str],
    as_budi: dict[str, str], as_support: dict[str, str],
) -> None:  # fmt: skip
    card = make.card(alice, balance="50.00")
    top_up = ok(api.get(f"{API}/top_ups", headers=as_alice))["data"][0]
    withdrawal = ok(post(api, "/withdrawals", {
        "card": card.public_id, "amount": 500, "currency": "usd", "bank_name": "BCA",
        "account_number": "12345678", "account_holder": "A W"}, as_alice), 201)  # fmt: skip

    for path in (f"/top_ups/{top_up['id']}", f"/withdrawals/{withdrawal['id']}",
                 f"/activity?card={card.public_id}",
                 f"/top_ups?card={card.public_id}"):  # fmt: skip
        assert error_of(api.get(f"{API}{path}", headers=as_budi), 404)["code"] == "not_found"
    assert ok(api.get(f"{API}/activity", headers=as_budi))["data"] == []
    assert ok(api.get(f"{API}/top_ups", headers=as_budi))["data"] == []
    error_of(api.get(f"{API}/top_ups/{top_up['id']}"), 401)
    # Staff with money:read see any record.
    assert ok(api.get(f"{API}/top_ups/{top_up['id']}", headers=as_support))["id"] == top_up["id"]


def test_lists_filter_and_walk_the_cursor(
    api: FlaskClient, make: Factory, alice: Actor, budi: Actor, as_alice: dict[str, str]
) -> None:
    mine = make.card(alice, balance="500.00")
    spare = make.card(alice, balance="5.00")
    theirs = make.card(budi, balance="20.00")
    for amount in (500, 600, 700):
        ok(post(api, "/top_ups", {"card": mine.public_id, "amount": amount, "currency": "usd",
                                  "method": "cash"}, as_alice), 201)  # fmt: skip
    to_budi = recipient_for(api, as_alice, theirs)
    for amount in (101, 102):
        body = {"from_card": mine.public_id, "to_card": to_budi, "amount": amount,
                "currency": "usd"}  # fmt: skip
        ok(post(api, "/transfers", body, as_alice), 201)
    ok(post(api, "/transfers", {"from_card": mine.public_id, "to_card": spare.public_id,
                                "amount": 103, "currency": "usd", "memo": "to self"},
            as_alice), 201)  # fmt: skip

    everything = ok(api.get(f"{API}/activity?limit=100", headers=as_alice))["data"]
    assert len(everything) == 2 + 3 + 3  # two funding top-ups, three top-ups, three transfers
    walked, cursor = [], ""
    while True:
        page = ok(api.get(f"{API}/activity?limit=3{cursor}", headers=as_alice))
        walked += [a["id"] for a in page["data"]]
        if not page["has_more"]:
            break
        cursor = f"&starting_after={page['data'][-1]['id']}"
    assert walked == [a["id"] for a in everything]
    assert len(set(walked)) == len(walked)

    top_ups = ok(api.get(f"{API}/top_ups?card={mine.public_id}&limit=2", headers=as_alice))
    assert [t["amount"] for t in top_ups["data"]] == [700, 600] and top_ups["has_more"]
    after = top_ups["data"][-1]["id"]
    rest = ok(api.get(f"{API}/top_ups?card={mine.public_id}&limit=2&starting_after={after}",
                      headers=as_alice))  # fmt: skip
    assert [t["amount"] for t in rest["data"]] == [500, 50000]
    assert not rest["has_more"]
    assert [t["amount"] for t in ok(api.get(f"{API}/transfers?q=budi",
                                            headers=as_alice))["data"]] == [102, 101]  # fmt: skip
    assert [t["memo"] for t in ok(api.get(f"{API}/transfers?q=self",
                                          headers=as_alice))["data"]] == ["to self"]  # fmt: skip
    kinds = {a["type"] for a in ok(api.get(f"{API}/activity?type=transfer&status=succeeded",
                                           headers=as_alice))["data"]}  # fmt: skip
    assert kinds == {"transfer"}
    spare_feed = ok(api.get(f"{API}/activity?card={spare.public_id}", headers=as_alice))["data"]
    assert [(a["type"], a["direction"]) for a in spare_feed] == [
        ("transfer", "in"), ("top_up", "in")
    ]  # fmt: skip
    assert ok(api.get(f"{API}/withdrawals?since=2000-01-01&until=2000-01-31",
                      headers=as_alice))["data"] == []  # fmt: skip


@pytest.mark.parametrize(
    ("query", "code", "param"),
    [
        ("/activity?starting_after=nope", "parameter_invalid", "starting_after"),
        ("/activity?starting_after=transfer_999999999999", "parameter_invalid", "starting_after"),
        ("/activity?starting_after=card_" + "0" * 24, "parameter_invalid", "starting_after"),
        ("/activity?starting_after=tr_" + "0" * 24, "parameter_invalid", "starting_after"),
        ("/activity?type=payout", "parameter_invalid", "type"),
        ("/activity?status=done", "parameter_invalid", "status"),
        ("/activity?since=2026-02-30", "parameter_invalid", "since"),
        ("/activity?since=2026-03-02&until=2026-03-01", "parameter_invalid", "since"),
        ("/activity?limit=101", "parameter_invalid", "limit"),
        ("/top_ups?starting_after=abc", "parameter_invalid", "starting_after"),
        ("/top_ups?starting_after=999999999999", "parameter_invalid", "starting_after"),
        ("/top_ups?starting_after=tr_" + "0" * 24, "parameter_invalid", "starting_after"),
        ("/top_ups?starting_after=tu_" + "0" * 24, "parameter_invalid", "starting_after"),
        ("/top_ups?card=12", "parameter_invalid", "card"),
        ("/transfers?q=" + "x" * 101, "parameter_invalid", "q"),
        ("/transfers?q=a%00b", "parameter_invalid", "q"),
        ("/withdrawals?sort=amount", "parameter_unknown", "sort"),
    ],
)
def test_list_refusals_name_the_parameter(
    api: FlaskClient, as_alice: dict[str, str], query: str, code: str, param: str
) -> None:
    error = error_of(api.get(f"{API}{query}", headers=as_alice), 422)

    assert (error["code"], error["param"]) == (code, param)


def test_the_activity_feed_lists_and_pages_past_payments_and_refunds(
    api: FlaskClient, make: Factory, alice: Actor, as_alice: dict[str, str], uow: UnitOfWork
) -> None:
    """Found by the benchmark: a card that had paid a merchant made GET /activity a 500 (the
    feed's ids and cursor took only top-ups, transfers and withdrawals)."""
    from portal.domain.money import Money
    from portal.services.merchants import payments
    from tests.merchants.conftest import card_details, open_shop

    card = make.card(alice, balance="50.00")
    shop = open_shop(uow, make, make.user(roles=("admin",)))
    paid = payments.create_payment(
        uow, actor=shop.api, merchant=shop.merchant.id, amount=Money(1500, "USD"),
        card=card_details(card), idempotency_key=uuid.uuid4().hex,
    )  # fmt: skip
    payments.create_refund(uow, actor=shop.api, merchant=shop.merchant.id, payment=paid.id,
                          amount=500, idempotency_key=uuid.uuid4().hex)  # fmt: skip
    feed = ok(api.get(f"{API}/activity?limit=1", headers=as_alice))
    kinds = [feed["data"][0]["type"]]
    while feed["has_more"]:
        after = feed["data"][-1]["id"]
        feed = ok(api.get(f"{API}/activity?limit=1&starting_after={after}", headers=as_alice))
        kinds += [a["type"] for a in feed["data"]]
    # One transaction's clock: the three share a time, so only each being walked once counts.
    assert sorted(kinds) == ["payment", "refund", "top_up"]
    payment_only = ok(api.get(f"{API}/activity?type=payment", headers=as_alice))["data"]
    assert [(a["id"], a["direction"]) for a in payment_only] == [(paid.id, "out")]
