"""The console's money tables and webhook deliveries: who may open them, search and filters,
deep cursor pages over the keyset indexes, and the detail pages with their related records,
audit trail and live updates."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from portal.domain.money import Money
from portal.services.admin import movements
from portal.services.ledger import reconciliation
from portal.services.wallet import wallet
from tests.admin.conftest import StaffClient
from tests.conftest import SYSTEM, Factory, new_key
from tests.pages.conftest import PageClient, People, htmx, new_client, page_text, sign_in
from tests.security.test_authorization_matrix import _give_merchant_objects

SEGMENTS = {"top_ups": "top-ups", "transfers": "transfers", "withdrawals": "withdrawals",
            "payments": "payments", "refunds": "refunds", "payouts": "payouts",
            "deliveries": "deliveries"}  # fmt: skip


@pytest.fixture
def world(uow, make: Factory) -> dict[str, str]:
    """One record of every kind: a cardholder's top-up, transfer and pending withdrawal, and
    a merchant's payment, refund, payout and webhook delivery."""
    holder = make.user(email=f"holder-{new_key()[:6]}@example.test")
    card, spare = make.card(holder, balance="100.00"), make.card(holder)
    moved = wallet.transfer(uow, actor=holder, from_card_id=card.card_id,
                            to_card_id=spare.card_id, amount=Money(500, "USD"),
                            idempotency_key=new_key())  # fmt: skip
    held = wallet.withdraw(uow, actor=holder, card_id=card.card_id, amount=Money(1000, "USD"),
                           bank=wallet.BankAccount("Bank", "12345678", "Holder"),
                           idempotency_key=new_key())  # fmt: skip
    top_up = uow.run(
        lambda u: u.execute(
            "SELECT public_id FROM top_ups WHERE card_id = :c", {"c": card.card_id}
        ).scalar_one()
    )
    shop = _give_merchant_objects(uow, make, make.user(roles=("merchant",)),
                                  make.user(roles=("admin",)))  # fmt: skip
    return {"top_ups": top_up, "transfers": moved.public_id, "withdrawals": held.public_id,
            "payments": shop["payment_id"], "refunds": shop["refund_id"],
            "payouts": shop["payout_id"], "deliveries": shop["delivery_id"],
            "card": card.public_id, "last4": card.last4, "holder": holder.public_id,
            "merchant": shop["merchant_id"]}  # fmt: skip


def test_support_and_admin_read_every_table_and_record_others_do_not(
    client: PageClient, people: People, as_staff: StaffClient, world: dict[str, str]
) -> None:
    support, _ = as_staff("support")
    admin, _ = as_staff("admin")
    cardholder = new_client(client.application)
    sign_in(cardholder, people.make())
    for kind, segment in SEGMENTS.items():
        pid = world[kind]
        for url in (f"/admin/{segment}", f"/admin/{segment}/{pid}",
                    f"/admin/{segment}/{pid}/changes?v=x"):  # fmt: skip
            assert support.get(url).status_code == 200, url
            assert admin.get(url).status_code == 200, url
            assert cardholder.get(url).status_code == 403, url
            anonymous = client.get(url)
            assert anonymous.status_code == 302 and "/auth/login" in anonymous.headers["Location"]
        listed = page_text(support.get(f"/admin/{segment}"))
        assert pid in listed, kind
        # An id of another kind, or one that names nothing, is a 404.
        other = world["payments" if kind != "payments" else "refunds"]
        assert support.get(f"/admin/{segment}/{other}").status_code == 404
        unknown = pid[:-1] + ("0" if pid[-1] != "0" else "1")  # the same shape, naming nothing
        assert support.get(f"/admin/{segment}/{unknown}").status_code == 404
    nav = support.get("/admin/").get_data(as_text=True)
    for segment in SEGMENTS.values():
        assert f'href="/admin/{segment}"' in nav
    # A person who is not staff sees no console navigation at all.
    assert 'href="/admin/top-ups"' not in cardholder.get("/auth/account").get_data(as_text=True)
    # Money records have no delete or archive action anywhere in the console.
    rules = [r for r in client.application.url_map.iter_rules()
             if r.rule.startswith(tuple(f"/admin/{s}" for s in SEGMENTS.values()))]  # fmt: skip
    assert rules and all(r.methods <= {"GET", "HEAD", "OPTIONS"} for r in rules)


def _ids(response) -> list[str]:
    return re.findall(
        r'<td data-label="[^"]*"><a href="/admin/[a-z-]+/([a-zA-Z]+_[0-9A-Za-z]{24})">',
        response.get_data(as_text=True),
    )


def test_search_and_filters_narrow_the_table(
    as_staff: StaffClient, make: Factory, uow, world: dict[str, str]
) -> None:
    support, _ = as_staff("support")
    someone = make.user(email=f"findme-{new_key()[:6]}@example.test")
    card = make.card(someone, currency="EUR")
    make.fund(card, "12.50")
    make.fund(card, "80.00")
    email = uow.run(lambda u: u.execute(
        "SELECT email FROM users WHERE id = :i", {"i": someone.id}).scalar_one())  # fmt: skip
    theirs = set(
        uow.run(
            lambda u: u.execute(
                "SELECT public_id FROM top_ups WHERE card_id = :c", {"c": card.card_id}
            ).scalars()
        )
    )
    assert len(theirs) == 2
    for q in (email, email.split("@")[0].upper(), card.public_id, someone.public_id):
        assert set(_ids(support.get("/admin/top-ups", query_string={"q": q}))) == theirs, q
    by_last4 = set(_ids(support.get("/admin/top-ups", query_string={"q": card.last4})))
    assert theirs <= by_last4
    one = sorted(theirs)[0]
    assert _ids(support.get("/admin/top-ups", query_string={"q": one})) == [one]
    # Currency and an amount range (in major units of that currency).
    eur = set(_ids(support.get("/admin/top-ups", query_string={"currency": "eur", "q": email})))
    assert eur == theirs
    big = _ids(support.get("/admin/top-ups", query_string={
        "currency": "EUR", "amount_min": "50", "q": email}))  # fmt: skip
    small = _ids(support.get("/admin/top-ups", query_string={
        "currency": "EUR", "amount_max": "12.50", "q": email}))  # fmt: skip
    assert len(big) == len(small) == 1 and big != small
    refused = support.get("/admin/top-ups", query_string={"amount_min": "5"})
    assert refused.status_code == 400
    assert "Choose a currency to filter by amount." in page_text(refused)
    assert support.get("/admin/top-ups", query_string={"currency": "EUR", "amount_min": "x"}
                       ).status_code == 400  # fmt: skip
    # Status, and a date range of whole UTC days.
    pending = _ids(support.get("/admin/withdrawals", query_string={"status": "pending"}))
    assert world["withdrawals"] in pending
    assert world["withdrawals"] not in _ids(
        support.get("/admin/withdrawals", query_string={"status": "succeeded"})
    )
    assert support.get("/admin/withdrawals", query_string={"status": "nonsense"}).status_code == 400
    today = datetime.now(UTC).date()
    assert world["transfers"] in _ids(support.get("/admin/transfers", query_string={
        "created_from": today.isoformat(), "created_to": today.isoformat()}))  # fmt: skip
    yesterday = (today - timedelta(days=1)).isoformat()
    before = _ids(support.get("/admin/transfers", query_string={"created_to": yesterday}))
    assert world["transfers"] not in before
    backwards = support.get("/admin/transfers", query_string={
        "created_from": today.isoformat(), "created_to": yesterday})  # fmt: skip
    assert backwards.status_code == 400
    # Merchant records: by merchant id and by name; payments by card last four.
    for segment in ("payments", "refunds", "payouts", "deliveries"):
        kind = "deliveries" if segment == "deliveries" else segment
        found = _ids(support.get(f"/admin/{segment}", query_string={"q": world["merchant"]}))
        assert world[kind] in found, segment
        assert world[kind] in _ids(
            support.get(f"/admin/{segment}", query_string={"q": "matrix sh"})
        )
    assert world["refunds"] in _ids(
        support.get("/admin/refunds", query_string={"q": world["payments"]})
    )
    assert _ids(support.get("/admin/payments", query_string={"q": "no such merchant at all"})) == []


def test_deep_pages_follow_the_cursor_and_use_the_keyset_index(
    as_staff: StaffClient, make: Factory, uow, connection: sa.Connection
) -> None:
    support, _ = as_staff("support")
    someone = make.user()
    card = make.card(someone)
    made = []
    for n in range(60):
        made.append(wallet.top_up(uow, actor=SYSTEM, card_id=card.card_id,
                                  amount=Money(1000 + 100 * n, "USD"), method="cash",
                                  idempotency_key=new_key()).public_id)  # fmt: skip
    seen: list[str] = []
    url: str | None = f"/admin/top-ups?q={card.public_id}"
    pages = 0
    while url:
        response = support.get(url)
        assert response.status_code == 200
        seen += _ids(response)
        found = re.search(r'href="([^"]+)" rel="next"', response.get_data(as_text=True))
        url = found.group(1).replace("&amp;", "&") if found else None
        pages += 1
    assert pages == 3 and seen == list(reversed(made))
    assert "First page" in page_text(
        support.get(f"/admin/top-ups?q={card.public_id}&starting_after={made[30]}")
    )
    # A cursor naming nothing falls back to the first page, saying so.
    gone = support.get("/admin/top-ups?starting_after=tu_" + "0" * 24)
    assert "That page no longer exists" in page_text(gone)
    # Every table pages by an index scan on (created_at, id) from the cursor: the plan names
    # the index and starts at the cursor, so a deep page reads as many rows as the first.
    # (Scans that need a sort are off: on these tiny test tables the planner would rather sort,
    # and with them off a plan still sorts unless an index gives the order.)
    for setting in ("enable_seqscan", "enable_bitmapscan", "enable_sort"):
        connection.execute(sa.text(f"SET LOCAL {setting} = off"))
    for kind, spec in movements.KINDS.items():
        a = spec.alias
        plan = "\n".join(connection.execute(sa.text(
            f"EXPLAIN {spec.select} WHERE ({a}.created_at, {a}.id) < (now(), 9223372036854775807)"
            f" ORDER BY {a}.created_at DESC, {a}.id DESC LIMIT 26")).scalars())  # fmt: skip
        assert f"Index Scan Backward using ix_{spec.table}_created_at_id" in plan, (kind, plan)
        assert "Sort" not in plan.split("Index Scan Backward")[0], (kind, plan)
        assert "ROW(created_at, id) < ROW(" in plan, (kind, plan)
    for setting in ("enable_seqscan", "enable_bitmapscan", "enable_sort"):
        connection.execute(sa.text(f"SET LOCAL {setting} = on"))
    assert reconciliation.reconcile(uow).ok


def test_detail_pages_show_the_money_and_what_it_touches(
    as_staff: StaffClient, world: dict[str, str], uow
) -> None:
    admin, _ = as_staff("admin")
    support, _ = as_staff("support")
    transfer = page_text(admin.get(f"/admin/transfers/{world['transfers']}"))
    assert "Journal entries" in transfer and "Wallet of card" in transfer and "5.00 USD" in transfer
    assert "Audit trail" in transfer and "transfer.create" in transfer
    # The people, cards and merchant involved link to their own console pages.
    assert f'href="/admin/cards/{world["card"]}"' in transfer
    assert f'href="/admin/users/{world["holder"]}"' in transfer
    withdrawal = page_text(admin.get(f"/admin/withdrawals/{world['withdrawals']}"))
    assert "Holds" in withdrawal and "Pending" in withdrawal and "10.00 USD" in withdrawal
    assert "withdrawal.create" in withdrawal and "Bank ·· 5678" in withdrawal
    payment = page_text(admin.get(f"/admin/payments/{world['payments']}"))
    assert "Refunds of this payment" in payment and world["refunds"] in payment
    assert "Balance of Matrix Shop" in payment and "Balance transactions of this payment" in payment
    assert f'href="/admin/merchants/{world["merchant"]}"' in payment
    refund = page_text(admin.get(f"/admin/refunds/{world['refunds']}"))
    assert world["payments"] in refund and f'href="/admin/payments/{world["payments"]}"' in refund
    payout = page_text(admin.get(f"/admin/payouts/{world['payouts']}"))
    assert "Balance transactions it pays out" in payout and "Matrix Bank" in payout
    assert "payout.create" in payout
    delivery = page_text(admin.get(f"/admin/deliveries/{world['deliveries']}"))
    assert "Attempts" in delivery and "hooks.matrix.example" in delivery
    assert "Journal entries" not in delivery
    # Support reads the records; the audit trail needs audit:read, which support holds too.
    assert "withdrawal.create" in page_text(
        support.get(f"/admin/withdrawals/{world['withdrawals']}")
    )


def test_an_open_record_updates_itself_and_a_settled_one_does_not_poll(
    as_staff: StaffClient, world: dict[str, str], uow, make: Factory
) -> None:
    admin, person = as_staff("admin")
    url = f"/admin/withdrawals/{world['withdrawals']}"
    page = admin.get(url).get_data(as_text=True)
    poll = re.search(r'hx-get="([^"]+)" hx-trigger="every', page)
    assert poll, "a pending withdrawal's page polls"
    changes = poll.group(1).replace("&amp;", "&")
    assert admin.get(changes, headers=htmx()).status_code == 204
    staff = make.user(roles=("admin",))
    wallet.confirm_withdrawal(uow, actor=staff, withdrawal_id=world["withdrawals"])
    fresh = admin.get(changes, headers=htmx())
    assert fresh.status_code == 200
    text = page_text(fresh)
    assert "Succeeded" in text and "hx-trigger" not in text and 'id="record"' in text
    assert "Journal entries" in text and "Wallet of card" in text
    assert "hx-trigger" not in admin.get(f"/admin/transfers/{world['transfers']}").get_data(
        as_text=True
    )
    assert reconciliation.reconcile(uow).ok


def test_a_pending_payout_and_delivery_poll_and_answer_204_while_unchanged(
    as_staff: StaffClient, world: dict[str, str], connection: sa.Connection
) -> None:
    support, _ = as_staff("support")
    for kind, table in (("payouts", "payouts"), ("deliveries", "webhook_deliveries")):
        pid = world[kind]
        assert _status_of(connection, table, pid) == "pending"
        page = support.get(f"/admin/{SEGMENTS[kind]}/{pid}").get_data(as_text=True)
        poll = re.search(r'hx-get="([^"]+)" hx-trigger="every', page)
        assert poll, kind
        changes = poll.group(1).replace("&amp;", "&")
        assert support.get(changes, headers=htmx()).status_code == 204
        # A change the poll must notice: the worker takes the payout, or tries the delivery.
        connection.execute(
            sa.text(
                "UPDATE payouts SET status = 'processing', updated_at = now() + interval '1 s'"
                " WHERE public_id = :p"
                if kind == "payouts"
                else "UPDATE webhook_deliveries SET attempts = attempts + 1,"
                " last_attempt_at = now() WHERE public_id = :p"
            ),
            {"p": pid},
        )
        changed = support.get(changes, headers=htmx())
        assert changed.status_code == 200 and 'id="record"' in changed.get_data(as_text=True)


def _status_of(connection: sa.Connection, table: str, public_id: str) -> str:
    return connection.execute(
        sa.text(f"SELECT status FROM {table} WHERE public_id = :p"), {"p": public_id}
    ).scalar_one()
