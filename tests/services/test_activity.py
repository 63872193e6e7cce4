"""The cardholder's read services: cards with balances, the activity feed (ownership, incoming
transfers, filters, search, cursor), monthly totals, the change version, recipient look-ups
and renaming a card. Real PostgreSQL inside a rolled-back transaction."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from portal.domain.errors import (
    Forbidden,
    InsufficientFunds,
    InvalidInput,
    InvalidState,
    NotFound,
)
from portal.domain.ids import is_public_id, new_public_id
from portal.domain.money import Money
from portal.services.wallet import activity, cards, wallet
from portal.services.wallet.wallet import BankAccount
from tests.conftest import SYSTEM, new_key

BANK = BankAccount("Bank Central Asia", "1234 5678 90", "Alice Wong")


def usd(major: str) -> Money:
    return Money.of_major(major, "USD")


@pytest.fixture
def alice(make):
    return make.user(first_name="Alice", last_name="wong")


@pytest.fixture
def budi(make):
    return make.user(first_name="Budi", last_name="Santoso")


@pytest.fixture
def carol(make):
    return make.user(first_name="Carol", last_name="Quist")


def send(uow, actor, source, dest, major: str, memo: str = ""):
    return wallet.transfer(
        uow, actor=actor, from_card_id=source.card_id, to_card_id=dest.card_id,
        amount=Money.of_major(major, source.currency), idempotency_key=new_key(), memo=memo,
    )  # fmt: skip


def withdraw(uow, actor, card, major: str):
    return wallet.withdraw(
        uow, actor=actor, card_id=card.card_id, amount=Money.of_major(major, card.currency),
        bank=BANK, idempotency_key=new_key(),
    )  # fmt: skip


def feed(uow, actor, **kw) -> list[activity.ActivityItem]:
    return list(activity.list_activity(uow, actor=actor, limit=100, **kw).items)


# -- cards -----------------------------------------------------------------------------------
def test_list_cards_shows_own_cards_with_balances(uow, make, alice, budi):
    first = make.card(alice, balance="100.00")
    second = make.card(alice, currency="IDR", brand="mastercard", card_type="prepaid")
    make.card(budi, balance="5.00")
    withdraw(uow, alice, first, "30.25")

    listed = activity.list_cards(uow, actor=alice)

    assert [c.id for c in listed] == [first.card_id, second.card_id]
    assert [c.public_id for c in listed] == [first.public_id, second.public_id]
    assert all(is_public_id("card", c.public_id) for c in listed)
    one = listed[0]
    assert one.user_public_id == alice.public_id
    assert (one.user_id, one.brand, one.last4, one.currency, one.status, one.archived) == (
        alice.id, "visa", first.number[-4:], "USD", "active", False
    )  # fmt: skip
    assert (one.posted, one.pending, one.available) == (usd("100"), usd("30.25"), usd("69.75"))
    assert listed[1].available == Money(0, "IDR")
    assert (listed[1].card_type, listed[1].brand) == ("prepaid", "mastercard")
    assert not any(hasattr(c, "number") or hasattr(c, "cvv") for c in listed)


def test_archived_cards_only_on_request(uow, make, alice):
    kept = make.card(alice)
    gone = make.card(alice)
    cards.set_archived(uow, actor=SYSTEM, card_id=gone.card_id, archived=True)

    assert [c.id for c in activity.list_cards(uow, actor=alice)] == [kept.card_id]
    both = activity.list_cards(uow, actor=alice, include_archived=True)
    assert [(c.id, c.archived) for c in both] == [(kept.card_id, False), (gone.card_id, True)]


def test_another_persons_cards_are_unreachable(uow, make, alice, budi):
    card = make.card(budi)
    support = make.user(roles=("support",))

    with pytest.raises(NotFound):  # another's cards: as if there were no such user
        activity.list_cards(uow, actor=alice, user_id=budi.id)
    with pytest.raises(NotFound):
        activity.get_card(uow, actor=alice, card_id=card.card_id)
    with pytest.raises(NotFound):
        activity.get_card(uow, actor=alice, card_id=10**12)
    # Staff with cards:read reach anyone's.
    assert [c.id for c in activity.list_cards(uow, actor=support, user_id=budi.id)] == [
        card.card_id
    ]
    assert activity.get_card(uow, actor=support, card_id=card.card_id).user_id == budi.id
    assert activity.get_card(uow, actor=budi, card_id=card.card_id).id == card.card_id


def test_rename_card_is_for_its_owner_only(uow, make, alice, budi):
    card = make.card(alice)
    admin = make.user(roles=("admin",))

    renamed = activity.rename_card(uow, actor=alice, card_id=card.card_id, name="  Groceries ")

    assert renamed.name == "Groceries"
    assert activity.get_card(uow, actor=alice, card_id=card.card_id).name == "Groceries"
    for stranger in (budi, admin):
        with pytest.raises(NotFound):
            activity.rename_card(uow, actor=stranger, card_id=card.card_id, name="Mine")
    with pytest.raises(InvalidInput) as too_long:
        activity.rename_card(uow, actor=alice, card_id=card.card_id, name="x" * 65)
    assert too_long.value.param == "name"
    with pytest.raises(InvalidInput):
        activity.rename_card(uow, actor=alice, card_id=card.card_id, name="a\x00b")
    cards.set_archived(uow, actor=SYSTEM, card_id=card.card_id, archived=True)
    with pytest.raises(InvalidState):
        activity.rename_card(uow, actor=alice, card_id=card.card_id, name="Old")
    assert activity.get_card(uow, actor=alice, card_id=card.card_id).name == "Groceries"


# -- the feed --------------------------------------------------------------------------------
def test_feed_covers_every_kind_and_incoming_transfers(uow, make, alice, budi, clock):
    mine = make.card(alice, balance="100.00")
    theirs = make.card(budi, balance="50.00")
    clock.advance(seconds=1)
    out = send(uow, alice, mine, theirs, "12.34", memo="lunch")
    clock.advance(seconds=1)
    incoming = send(uow, budi, theirs, mine, "5.00")
    clock.advance(seconds=1)
    pending = withdraw(uow, alice, mine, "20.00")

    items = feed(uow, alice)

    assert [i.id for i in items] == [
        pending.public_id, incoming.public_id, out.public_id,
        items[-1].id,
    ]  # fmt: skip
    w, t_in, t_out, top = items
    assert (w.kind, w.status, w.direction, w.amount) == ("withdrawal", "pending", "out", usd("20"))
    assert w.counterparty == "Bank Central Asia \u2022\u2022\u2022\u2022 7890"
    assert (t_in.direction, t_in.card_id, t_in.amount) == ("in", mine.card_id, usd("5"))
    assert t_in.counterparty == f"Visa \u2022\u2022\u2022\u2022 {theirs.number[-4:]} (Budi S.)"
    assert (t_out.direction, t_out.memo, t_out.card_last4) == ("out", "lunch", mine.number[-4:])
    assert t_out.amount.amount_minor == 1234
    assert (top.kind, top.direction, top.method, top.counterparty) == (
        "top_up", "in", "bank_transfer", "Bank transfer"
    )  # fmt: skip
    # The recipient sees the transfer as incoming, masked the other way.
    budi_items = feed(uow, budi)
    seen = next(i for i in budi_items if i.id == out.public_id)
    assert (seen.direction, seen.card_id) == ("in", theirs.card_id)
    assert seen.counterparty == f"Visa \u2022\u2022\u2022\u2022 {mine.number[-4:]} (Alice W.)"
    # No item shows a full card number.
    for item in items + budi_items:
        assert mine.number not in repr(item) and theirs.number not in repr(item)


def test_another_persons_records_are_unreachable(uow, make, alice, budi, carol):
    mine = make.card(alice, balance="100.00")
    theirs = make.card(budi, balance="10.00")
    send(uow, alice, mine, theirs, "1.00")
    withdraw(uow, alice, mine, "10.00")

    assert feed(uow, carol) == []
    with pytest.raises(NotFound):
        activity.list_activity(uow, actor=carol, card_id=mine.card_id)
    with pytest.raises(NotFound):
        activity.list_activity(uow, actor=budi, card_id=mine.card_id)  # a counterparty too
    for item in feed(uow, alice):
        with pytest.raises(NotFound):
            activity.get_activity_item(uow, actor=carol, item_id=item.id)
    # A cursor naming someone else's record is unknown, not a way in.
    with pytest.raises(InvalidInput) as cursor:
        activity.list_activity(uow, actor=carol, starting_after=feed(uow, alice)[0].id)
    assert cursor.value.param == "starting_after"


def test_failed_incoming_transfer_is_the_senders_business(uow, make, alice, budi):
    mine = make.card(alice, balance="5.00")
    theirs = make.card(budi)
    with pytest.raises(InsufficientFunds):
        send(uow, alice, mine, theirs, "9.00")

    failed = [i for i in feed(uow, alice) if i.kind == "transfer"]
    assert [(i.status, i.failure_code) for i in failed] == [("failed", "insufficient_funds")]
    assert feed(uow, budi) == []
    with pytest.raises(NotFound):
        activity.get_activity_item(uow, actor=budi, item_id=failed[0].id)


def test_transfer_between_own_cards_shows_once(uow, make, alice):
    a = make.card(alice, balance="10.00")
    b = make.card(alice)
    moved = send(uow, alice, a, b, "4.00")
    tid = moved.public_id

    everything = [i for i in feed(uow, alice) if i.kind == "transfer"]
    assert [(i.id, i.direction, i.card_id) for i in everything] == [(tid, "out", a.card_id)]
    into_b = feed(uow, alice, card_id=b.card_id)
    assert [(i.id, i.direction, i.card_id) for i in into_b] == [(tid, "in", b.card_id)]
    assert [i.id for i in feed(uow, alice, card_id=a.card_id) if i.kind == "transfer"] == [tid]


def test_filters_and_search(uow, make, alice, budi, clock):
    start = datetime(2026, 3, 10, 12, tzinfo=UTC)
    clock.now = start
    mine = make.card(alice, balance="100.00")
    other = make.card(alice, balance="7.00")
    theirs = make.card(budi)
    clock.now = start + timedelta(days=2)
    out = send(uow, alice, mine, theirs, "3.00", memo="Rent 100%")
    with pytest.raises(InsufficientFunds):
        send(uow, alice, other, theirs, "50.00")
    clock.now = start + timedelta(days=5)
    w = withdraw(uow, alice, mine, "10.00")

    def ids(**kw) -> list[str]:
        return [i.id for i in feed(uow, alice, **kw)]

    assert ids(kind="withdrawal") == [w.public_id]
    assert ids(kind="transfer", status="succeeded") == [out.public_id]
    assert [i.status for i in feed(uow, alice, status="failed")] == ["failed"]
    assert len(ids(kind="top_up")) == 2
    assert ids(card_id=other.card_id, kind="top_up") == [
        i.id for i in feed(uow, alice, kind="top_up") if i.card_id == other.card_id
    ]
    assert ids(since=date(2026, 3, 12), until=date(2026, 3, 12)) == [
        i.id for i in feed(uow, alice, kind="transfer")
    ]
    assert ids(since=date(2026, 3, 15)) == [w.public_id]
    assert len(ids(until=date(2026, 3, 10))) == 2  # the two top-ups, on the 10th
    assert ids(search="budi", status="succeeded") == [out.public_id]
    assert ids(search="rent 100%") == [out.public_id]
    assert ids(search="100%25") == []  # literal, not a wildcard
    assert ids(search="central asia") == [w.public_id]
    assert len(ids(search="bank transfer")) == 2
    assert ids(search="Santoso") == []  # the hidden last name is not searchable
    for bad in ({"kind": "payout"}, {"status": "done"}, {"search": "x" * 101},
                {"since": date(2026, 3, 2), "until": date(2026, 3, 1)}, {"limit": 0},
                {"starting_after": "transfer_abc"}, {"starting_after": "12"},
                {"starting_after": "transfer_12"},
                {"starting_after": new_public_id("card")}):  # fmt: skip
        with pytest.raises(InvalidInput):
            activity.list_activity(uow, actor=alice, **bad)


def test_cursor_walk_has_no_duplicates_or_gaps(uow, make, alice, budi, clock):
    mine = make.card(alice, balance="1000.00")
    theirs = make.card(budi, balance="1000.00")
    # Several movements share one instant: the walk must order them by kind and id.
    for round_ in range(4):
        send(uow, alice, mine, theirs, "1.00")
        send(uow, budi, theirs, mine, "2.00")
        withdraw(uow, alice, mine, "5.00")
        make.fund(mine, "5.00")
        if round_ % 2:
            clock.advance(seconds=1)
    everything = [i.id for i in feed(uow, alice)]
    assert len(everything) == len(set(everything)) == 17

    walked: list[str] = []
    cursor = None
    while True:
        page = activity.list_activity(uow, actor=alice, limit=3, starting_after=cursor)
        walked += [i.id for i in page.items]
        if not page.has_more:
            break
        cursor = page.last_id
    assert walked == everything
    keys = [(i.created_at, i.kind, i.record_id) for i in feed(uow, alice)]
    assert keys == sorted(keys, reverse=True)


def test_get_activity_item(uow, make, alice, budi):
    mine = make.card(alice, balance="20.00")
    theirs = make.card(budi)
    moved = send(uow, alice, mine, theirs, "2.50")
    support = make.user(roles=("support",))

    sender = activity.get_activity_item(uow, actor=alice, item_id=moved.public_id)
    recipient = activity.get_activity_item(uow, actor=budi, item_id=moved.public_id)
    staff = activity.get_activity_item(uow, actor=support, item_id=moved.public_id)

    assert (sender.direction, recipient.direction, staff.direction) == ("out", "in", "out")
    assert sender.amount == recipient.amount == usd("2.50")
    with pytest.raises(NotFound):
        activity.get_activity_item(uow, actor=alice, item_id=new_public_id("transfer"))
    with pytest.raises(InvalidInput):
        activity.get_activity_item(uow, actor=alice, item_id="transfer-1")


# -- monthly totals --------------------------------------------------------------------------
def test_monthly_totals_are_exact_per_currency_with_zero_months(uow, make, alice, budi, clock):
    clock.now = datetime(2025, 12, 20, tzinfo=UTC)  # before the window
    mine = make.card(alice, balance="1000.00")
    spare = make.card(alice)
    rupiah = make.card(alice, currency="IDR")
    theirs = make.card(budi, balance="500.00")
    clock.now = datetime(2026, 2, 3, tzinfo=UTC)
    make.fund(mine, "10.01")
    send(uow, alice, mine, theirs, "0.99")
    send(uow, alice, mine, spare, "100.00")  # between own cards: neither way
    with pytest.raises(InsufficientFunds):
        send(uow, alice, spare, theirs, "999.00")  # failed: not counted
    clock.now = datetime(2026, 4, 30, 23, 59, 59, tzinfo=UTC)
    send(uow, budi, theirs, mine, "123.45")
    done = withdraw(uow, alice, mine, "50.00")
    wallet.confirm_withdrawal(uow, actor=SYSTEM, withdrawal_id=done.id)
    withdraw(uow, alice, mine, "7.00")  # pending: not counted
    clock.now = datetime(2026, 5, 1, tzinfo=UTC)
    make.fund(rupiah, "75000")

    totals = activity.monthly_totals(uow, actor=alice, months=4)

    got = [(t.currency, t.month, t.money_in.amount_minor, t.money_out.amount_minor)
           for t in totals]  # fmt: skip
    assert got == [
        ("IDR", date(2026, 2, 1), 0, 0),
        ("IDR", date(2026, 3, 1), 0, 0),
        ("IDR", date(2026, 4, 1), 0, 0),
        ("IDR", date(2026, 5, 1), 7_500_000, 0),
        ("USD", date(2026, 2, 1), 1001, 99),
        ("USD", date(2026, 3, 1), 0, 0),
        ("USD", date(2026, 4, 1), 12345, 5000),
        ("USD", date(2026, 5, 1), 0, 0),
    ]
    assert all(t.money_in.currency == t.currency for t in totals)
    assert len(activity.monthly_totals(uow, actor=alice)) == 2 * 12
    with pytest.raises(InvalidInput):
        activity.monthly_totals(uow, actor=alice, months=0)


def test_monthly_totals_of_someone_without_cards_is_empty(uow, carol):
    assert activity.monthly_totals(uow, actor=carol) == ()


# -- change version and recipients -----------------------------------------------------------
def test_change_version_moves_with_money_touching_the_user(uow, make, alice, budi, carol):
    mine = make.card(alice)
    theirs = make.card(budi, balance="10.00")
    before = activity.change_version(uow, actor=alice)
    untouched = activity.change_version(uow, actor=carol)

    send(uow, budi, theirs, mine, "1.00")

    assert activity.change_version(uow, actor=alice) > before
    assert activity.change_version(uow, actor=carol) == untouched
    with pytest.raises(Forbidden):
        activity.change_version(uow, actor=SYSTEM)


def test_find_recipient_reveals_only_the_masked_card(uow, make, alice, budi):
    theirs = make.card(budi, currency="IDR", brand="mastercard")
    spaced = " ".join(theirs.number[i : i + 4] for i in range(0, 16, 4))

    found = activity.find_recipient(uow, actor=alice, number=spaced)

    assert found == activity.Recipient(
        card_id=theirs.card_id, card_public_id=theirs.public_id, brand="mastercard",
        last4=theirs.number[-4:], currency="IDR", holder="Budi S.", email=found.email,
        reference=found.reference, reference_expires_at=uow.now() + timedelta(minutes=15),
    )  # fmt: skip
    assert found.email.endswith("@example.test") and "\u2022" in found.email
    assert found.reference.startswith("rcp_") and theirs.public_id not in found.reference
    assert theirs.number not in repr(found) and "Santoso" not in repr(found)
    with pytest.raises(InvalidInput) as bad:
        activity.find_recipient(uow, actor=alice, number="4111 1111 1111 1112")
    assert (bad.value.code, bad.value.param) == ("invalid_card_number", "number")
    with pytest.raises(NotFound):
        activity.find_recipient(uow, actor=alice, number="4111 1111 1111 1111")
    cards.set_archived(uow, actor=SYSTEM, card_id=theirs.card_id, archived=True)
    with pytest.raises(NotFound):
        activity.find_recipient(uow, actor=alice, number=theirs.number)
    merchant = make.user(roles=("merchant",))
    with pytest.raises(Forbidden):
        activity.find_recipient(uow, actor=merchant, number=theirs.number)


def test_masked_name():
    assert activity.masked_name("Budi", "santoso") == "Budi S."
    assert activity.masked_name(" Ada ", "") == "Ada"
    assert activity.masked_name("", "") == "Cardholder"


def test_card_changes_bump_the_owners_change_version(uow, make):
    from portal.services.wallet import activity, cards

    owner = make.user()
    before = activity.change_version(uow, actor=owner)
    card = make.card(owner)
    issued = activity.change_version(uow, actor=owner)
    cards.set_frozen(uow, actor=owner, card_id=card.card_id, frozen=True)
    frozen = activity.change_version(uow, actor=owner)
    activity.rename_card(uow, actor=owner, card_id=card.card_id, name="Groceries")
    renamed = activity.change_version(uow, actor=owner)
    cards.set_archived(uow, actor=SYSTEM, card_id=card.card_id, archived=True)
    archived = activity.change_version(uow, actor=owner)
    assert before < issued < frozen < renamed < archived
