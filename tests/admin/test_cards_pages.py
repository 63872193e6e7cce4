"""Console pages for cards and wallets: access, the table's filters and cursor, a card's page
(owner, balance, movements, trail, live), and freeze/archive/restore/delete one by one and in
bulk, where a card with money history is never deleted."""

from __future__ import annotations

import re
import uuid

import pytest
import sqlalchemy as sa

from portal.domain.errors import Conflict, Forbidden
from portal.domain.money import Money
from portal.services.admin import cards as admin_cards
from portal.services.wallet import cards, wallet
from tests.admin.conftest import StaffClient
from tests.admin.test_people_pages import _console_forms, _flashes
from tests.conftest import SYSTEM, Factory, new_key
from tests.pages.conftest import PageClient, People, page_text, sign_in


def _card(connection: sa.Connection, public_id: str) -> sa.Row | None:
    return connection.execute(
        sa.text("SELECT status, archived_at FROM cards WHERE public_id = :p"), {"p": public_id}
    ).first()


def test_cards_pages_for_staff_only_and_support_reads(
    client: PageClient, people: People, as_staff: StaffClient, make: Factory,
    connection: sa.Connection,
) -> None:  # fmt: skip
    card = make.card(make.user(), balance="5.00")
    pages = ("/admin/cards", f"/admin/cards/{card.public_id}",
             f"/admin/cards/{card.public_id}/changes?v=0")  # fmt: skip
    sign_in(client, people.make())
    for page in pages:
        assert client.get(page).status_code == 403, page
    support, _ = as_staff("support")
    admin, _ = as_staff()
    for page in pages[:2]:
        read = support.get(page)
        assert read.status_code == 200 and not _console_forms(read.get_data(as_text=True))
        assert _console_forms(admin.get(page).get_data(as_text=True)), page
    for action in ("freeze", "unfreeze", "archive", "restore", "delete"):
        url = f"/admin/cards/{card.public_id}/{action}"
        assert support.post(url).status_code == 403
        assert client.post(url).status_code == 403
    assert (
        support.post(
            "/admin/cards/bulk", data={"action": "freeze", "ids": [card.public_id]}
        ).status_code
        == 403
    )
    assert _card(connection, card.public_id).status == "active"


def test_a_cards_page_shows_owner_wallet_movements_and_trail_live(
    as_staff: StaffClient, make: Factory, uow, connection: sa.Connection
) -> None:
    admin, _ = as_staff()
    owner = make.user(first_name="Rina", last_name="Wallet")
    card = make.card(owner, balance="40.00")
    wallet.withdraw(uow, actor=owner, card_id=card.card_id, amount=Money.of_major("15.00", "USD"),
                    bank=wallet.BankAccount("Bank", "12345678", "Rina Wallet"),
                    idempotency_key=new_key())  # fmt: skip
    page = admin.get(f"/admin/cards/{card.public_id}")
    text = page_text(page)
    assert 'Available</p> <p class="console-figure__value">$25.00' in text
    assert 'Held</p> <p class="console-figure__value">$15.00' in text
    assert 'Ledger</p> <p class="console-figure__value">$40.00' in text
    assert "Rina Wallet" in text and owner.public_id in text
    assert "Withdrawal" in text and "Top-up" in text and "card.issue" in text
    version = re.search(r'data-version="([^"]+)"', page.get_data(as_text=True)).group(1)
    assert admin.get(f"/admin/cards/{card.public_id}/changes?v={version}").status_code == 204
    cards.set_frozen(uow, actor=SYSTEM, card_id=card.card_id, frozen=True)
    changed = admin.get(f"/admin/cards/{card.public_id}/changes?v={version}")
    assert changed.status_code == 200
    assert "card.freeze" in changed.get_data(as_text=True) and "Frozen" in page_text(changed)
    assert admin.get("/admin/cards/card_nothing").status_code == 404


def test_the_cards_table_filters_and_pages(
    as_staff: StaffClient, make: Factory, connection: sa.Connection
) -> None:
    admin, _ = as_staff()
    tag = uuid.uuid4().hex[:8]
    owner = make.user(email=f"cards-{tag}@example.test")
    made = [make.card(owner).public_id for _ in range(5)]
    cards.set_frozen(make.uow, actor=SYSTEM, card_id=made[0], frozen=True)
    cards.set_archived(make.uow, actor=SYSTEM, card_id=made[1], archived=True)
    html = admin.get(f"/admin/cards?q=cards-{tag}").get_data(as_text=True)
    assert [p for p in made if p in html] == [made[0], *made[2:]]
    frozen = admin.get(f"/admin/cards?q=cards-{tag}&status=frozen").get_data(as_text=True)
    assert made[0] in frozen and made[2] not in frozen
    archived = admin.get(f"/admin/cards?q=cards-{tag}&state=archived").get_data(as_text=True)
    assert made[1] in archived and made[0] not in archived
    by_id = admin.get(f"/admin/cards?q={made[3]}").get_data(as_text=True)
    assert made[3] in by_id and made[2] not in by_id
    # The cursor: page after page, newest first, each card once.
    seen, after = [], None
    while True:
        page = admin_cards.list_cards(make.uow, actor=SYSTEM, search=f"cards-{tag}", limit=2,
                                      starting_after=after)  # fmt: skip
        seen += [c.public_id for c in page.items]
        if not page.has_more:
            break
        after = page.items[-1].public_id
    assert seen == list(reversed([made[0], *made[2:]]))
    bad = admin.get("/admin/cards?currency=XX1")
    assert bad.status_code == 200 and "currency" in page_text(bad).lower()


def test_bulk_card_actions_report_each_and_never_delete_money(
    as_staff: StaffClient, make: Factory, connection: sa.Connection
) -> None:
    admin, _ = as_staff()
    owner = make.user()
    empty, funded = make.card(owner), make.card(owner, balance="10.00")
    ids = [empty.public_id, funded.public_id]
    admin.post("/admin/cards/bulk", data={"action": "freeze", "ids": ids})
    assert {_card(connection, i).status for i in ids} == {"frozen"}
    admin.post("/admin/cards/bulk", data={"action": "archive", "ids": ids})
    assert all(_card(connection, i).archived_at is not None for i in ids)
    admin.post("/admin/cards/bulk", data={"action": "freeze", "ids": [funded.public_id]})
    assert any("card is archived" in n.lower() for n in _flashes(admin))
    sent = admin.post("/admin/cards/bulk", data={
        "action": "delete", "ids": [*ids, "card_none"], "back": "/admin/cards?state=archived"
    })  # fmt: skip
    assert sent.headers["Location"] == "/admin/cards?state=archived"
    notes = _flashes(admin)
    assert any(n.startswith("Deleted for good 1:") and empty.public_id in n for n in notes)
    assert any(funded.public_id in n and "money history" in n for n in notes), notes
    assert any("card_none" in n and "No such card" in n for n in notes), notes
    assert _card(connection, empty.public_id) is None
    assert _card(connection, funded.public_id) is not None
    admin.post("/admin/cards/bulk", data={"action": "restore", "ids": [funded.public_id]})
    assert _card(connection, funded.public_id).archived_at is None


def test_one_card_actions_from_the_card_and_the_user_page(
    as_staff: StaffClient, make: Factory, connection: sa.Connection
) -> None:
    admin, _ = as_staff()
    owner = make.user()
    card = make.card(owner, balance="10.00")
    back = f"/admin/users/{owner.public_id}"
    user_page = admin.get(back).get_data(as_text=True)
    assert f'action="/admin/cards/{card.public_id}/freeze"' in user_page
    frozen = admin.post(f"/admin/cards/{card.public_id}/freeze", data={"back": back})
    assert frozen.headers["Location"] == back
    assert _card(connection, card.public_id).status == "frozen"
    assert f"/admin/cards/{card.public_id}/unfreeze" in admin.get(back).get_data(as_text=True)
    admin.post(f"/admin/cards/{card.public_id}/unfreeze", data={"back": "https://evil.example/"})
    assert _card(connection, card.public_id).status == "active"
    refused = admin.post(f"/admin/cards/{card.public_id}/delete")
    assert refused.headers["Location"] == f"/admin/cards/{card.public_id}"
    assert any("money history" in n for n in _flashes(admin))
    assert admin.post(f"/admin/cards/{card.public_id}/explode").status_code == 404


def test_delete_card_service(uow, make: Factory, connection: sa.Connection) -> None:
    owner = make.user()
    support = make.user(roles=("support",))
    empty = make.card(owner)
    with pytest.raises(Forbidden):
        admin_cards.delete_card(uow, actor=support, card_id=empty.public_id)
    with pytest.raises(Forbidden):
        admin_cards.delete_card(uow, actor=owner, card_id=empty.public_id)
    other = make.card(owner)
    wallet.top_up(
        uow,
        actor=SYSTEM,
        card_id=other.card_id,
        amount=Money(1000, "USD"),
        method="cash",
        idempotency_key=new_key(),
    )  # a pending top-up is history too
    with pytest.raises(Conflict) as history:
        admin_cards.delete_card(uow, actor=SYSTEM, card_id=other.public_id)
    assert history.value.code == "card_has_history"
    gone = admin_cards.delete_card(uow, actor=SYSTEM, card_id=empty.public_id)
    assert gone.last4 == empty.last4
    left = connection.execute(
        sa.text("SELECT count(*) FROM accounts WHERE card_id = :c"), {"c": empty.card_id}
    ).scalar_one()
    assert left == 0
    event = connection.execute(
        sa.text("SELECT data FROM audit_events WHERE action = 'card.delete'"
                " AND subject_id = :c"), {"c": empty.card_id},
    ).scalar_one()  # fmt: skip
    assert event["last4"] == empty.last4
