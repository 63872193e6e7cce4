"""The withdrawal and payout queues: open items oldest first with their age, confirm and fail
(with a reason) through the owning services, refused while an item is processing, acting once
on a double submit, audited, and the ledger reconciling after every action."""

from __future__ import annotations

import html
import re
from typing import Any

import pytest
import sqlalchemy as sa

from portal.domain.errors import Forbidden, UnexpectedState
from portal.domain.money import Money
from portal.services.ledger import reconciliation
from portal.services.merchants import payouts
from portal.services.wallet import wallet
from tests.admin.conftest import StaffClient
from tests.conftest import Factory, new_key
from tests.pages.conftest import PageClient, People, new_client, page_text, sign_in
from tests.security.test_authorization_matrix import _give_merchant_objects


def _withdraw(uow, holder, card, major: str) -> str:
    return wallet.withdraw(
        uow, actor=holder, card_id=card.card_id, amount=Money.of_major(major, "USD"),
        bank=wallet.BankAccount("Queue Bank", "12345678", "Holder"), idempotency_key=new_key(),
    ).public_id  # fmt: skip


@pytest.fixture
def holder(make: Factory) -> tuple[Any, Any]:
    person = make.user()
    return person, make.card(person, balance="500.00")


def _form(page: str, action: str) -> dict[str, str]:
    """The hidden fields of the form posting to ``action`` on ``page``."""
    start = page.index(f'action="{action}"')
    body = page[start : page.index("</form>", start)]
    return {n: html.unescape(v) for n, v in re.findall(r'name="(\w+)"[^>]*value="([^"]*)"', body)}


def _status(connection: sa.Connection, table: str, public_id: str) -> str:
    return connection.execute(
        sa.text(f"SELECT status FROM {table} WHERE public_id = :p"), {"p": public_id}
    ).scalar_one()


def _audits(connection: sa.Connection, action: str, subject_type: str, public_id: str) -> list:
    return connection.execute(
        sa.text(
            f"SELECT e.actor_id, e.data FROM audit_events e JOIN {subject_type}s s"
            " ON s.id = e.subject_id WHERE e.subject_type = :t AND e.action = :a"
            " AND s.public_id = :p ORDER BY e.id"
        ),
        {"t": subject_type, "a": action, "p": public_id},
    ).all()


def test_who_may_see_and_act_on_the_queues(
    client: PageClient, people: People, as_staff: StaffClient, uow, holder, connection
) -> None:
    person, card = holder
    pending = _withdraw(uow, person, card, "10.00")
    support, _ = as_staff("support")
    admin, _ = as_staff("admin")
    cardholder = new_client(client.application)
    sign_in(cardholder, people.make())
    for url in ("/admin/queues/withdrawals", "/admin/queues/payouts"):
        assert support.get(url).status_code == 200
        assert admin.get(url).status_code == 200
        assert cardholder.get(url).status_code == 403
        assert "/auth/login" in client.get(url).headers["Location"]
    read = support.get("/admin/queues/withdrawals").get_data(as_text=True)
    assert pending in read and "/confirm" not in read and "needs the withdrawals:manage" in read
    acting = admin.get("/admin/queues/withdrawals").get_data(as_text=True)
    assert f"/admin/queues/withdrawals/{pending}/confirm" in acting
    for action in ("confirm", "fail"):
        url = f"/admin/queues/withdrawals/{pending}/{action}"
        sent = {"form_token": new_key(), "reason": "payout_failed"}
        assert support.post(url, data=sent).status_code == 403
        assert cardholder.post(url, data=sent).status_code == 403
        assert "/auth/login" in client.post(url, data=sent).headers["Location"]
    assert _status(connection, "withdrawals", pending) == "pending"
    assert 'href="/admin/queues/withdrawals"' in read  # the "Queues" section in the navigation


def test_the_withdrawal_queue_is_oldest_first_with_ages_and_pages(
    as_staff: StaffClient, uow, holder, clock
) -> None:
    person, card = holder
    made = []
    clock.advance(days=-3)  # made three days ago, a minute apart
    for _n in range(27):
        made.append(_withdraw(uow, person, card, "5.00"))
        clock.advance(minutes=1)
    support, _ = as_staff("support")
    first = support.get("/admin/queues/withdrawals")
    text = page_text(first)
    order = re.findall(r'<tr id="item-(wd_\w+)"', first.get_data(as_text=True))
    ours = [p for p in order if p in made]
    assert ours == made[: len(ours)] and len(order) == 25
    assert 'class="console-age--old">2 d 23 h<' in first.get_data(as_text=True)
    assert "Waiting" in text and "Oldest since" in text
    more = re.search(r'href="([^"]+)" rel="next"', first.get_data(as_text=True))
    assert more
    rest = support.get(html.unescape(more.group(1))).get_data(as_text=True)
    later = re.findall(r'<tr id="item-(wd_\w+)"', rest)
    assert not set(later) & set(order)
    assert [p for p in order + later if p in made] == made


def test_confirm_and_fail_a_withdrawal_once_each_audited_and_reconciled(
    as_staff: StaffClient, uow, holder, connection
) -> None:
    person, card = holder
    confirm_me = _withdraw(uow, person, card, "20.00")
    fail_me = _withdraw(uow, person, card, "30.00")
    admin, staff = as_staff("admin")
    before = wallet.get_balance(uow, actor=person, card_id=card.card_id)
    page = admin.get("/admin/queues/withdrawals").get_data(as_text=True)
    url = f"/admin/queues/withdrawals/{confirm_me}/confirm"
    fields = _form(page, url)
    done = admin.post(url, data=fields)
    assert done.status_code == 303 and done.headers["Location"].endswith(
        "/admin/queues/withdrawals"
    )
    shown = page_text(admin.get("/admin/queues/withdrawals"))
    assert f"Withdrawal {confirm_me} confirmed: 20.00 USD left the card." in shown
    assert confirm_me not in shown.replace(f"Withdrawal {confirm_me} confirmed", "")
    assert _status(connection, "withdrawals", confirm_me) == "succeeded"
    # The same form again (a double click): nothing happens twice, and the page says so.
    again = admin.post(url, data=fields)
    assert again.status_code == 303
    assert "was acted on once and nothing happened twice" in page_text(
        admin.get(again.headers["Location"])
    )
    assert len(_audits(connection, "withdrawal.confirm", "withdrawal", confirm_me)) == 1
    (confirmed,) = _audits(connection, "withdrawal.confirm", "withdrawal", confirm_me)
    assert confirmed.actor_id == staff.id
    # Fail the other with a reason and a note.
    url = f"/admin/queues/withdrawals/{fail_me}/fail"
    fields = {**_form(page, url), "reason": "account_closed", "note": "Bank says closed"}
    assert admin.post(url, data={**fields, "reason": ""}).status_code == 422  # a reason first
    assert _status(connection, "withdrawals", fail_me) == "pending"
    page = admin.get("/admin/queues/withdrawals").get_data(as_text=True)
    fields = {**_form(page, url), "reason": "account_closed", "note": "Bank says closed"}
    failed = admin.post(url, data=fields)
    assert failed.status_code == 303
    shown = page_text(admin.get("/admin/queues/withdrawals"))
    assert (f"Withdrawal {fail_me} failed (the bank account is closed): its 30.00 USD is"
            " available on the card again.") in shown  # fmt: skip
    assert admin.post(url, data=fields).status_code == 303  # the double submit acts once
    row = connection.execute(
        sa.text("SELECT status, failure_code FROM withdrawals WHERE public_id = :p"),
        {"p": fail_me},
    ).one()
    assert (row.status, row.failure_code) == ("failed", "account_closed")
    (audit,) = _audits(connection, "withdrawal.fail", "withdrawal", fail_me)
    assert audit.data["note"] == "Bank says closed" and audit.actor_id == staff.id
    after = wallet.get_balance(uow, actor=person, card_id=card.card_id)
    assert after.posted.amount_minor == before.posted.amount_minor - 2000
    assert after.available.amount_minor == before.available.amount_minor + 3000
    # Confirming the failed one now: already settled, nothing changes, and the page says so.
    late = admin.post(f"/admin/queues/withdrawals/{fail_me}/confirm",
                      data={"form_token": new_key()})  # fmt: skip
    assert "was already failed; nothing changed." in page_text(admin.get(late.headers["Location"]))
    assert reconciliation.reconcile(uow).ok


def test_a_processing_withdrawal_is_refused_with_a_clear_message(
    as_staff: StaffClient, uow, holder, connection
) -> None:
    person, card = holder
    busy = _withdraw(uow, person, card, "15.00")
    internal = connection.execute(
        sa.text("SELECT id FROM withdrawals WHERE public_id = :p"), {"p": busy}
    ).scalar_one()
    assert wallet.begin_payout(uow, withdrawal_id=internal) is not None  # with the processor
    admin, _ = as_staff("admin")
    page = admin.get("/admin/queues/withdrawals")
    row = page.get_data(as_text=True).split(f'id="item-{busy}"')[1].split("</tr>")[0]
    assert "Processing" in row and "With the processor" in row and "/confirm" not in row
    for action in ("confirm", "fail"):
        refused = admin.post(f"/admin/queues/withdrawals/{busy}/{action}",
                             data={"form_token": new_key(), "reason": "payout_failed"})  # fmt: skip
        assert refused.status_code == 422
        assert f"Withdrawal {busy} is processing: its payout is with the processor" in page_text(
            refused
        )
    assert _status(connection, "withdrawals", busy) == "processing"
    assert reconciliation.reconcile(uow).ok


@pytest.fixture
def shop(uow, make: Factory) -> dict[str, Any]:
    owner = make.user(roles=("merchant",))
    made = _give_merchant_objects(uow, make, owner, make.user(roles=("admin",)))
    return {**made, "owner": owner}


def _merchant_balance(connection: sa.Connection, merchant: str) -> int:
    return connection.execute(
        sa.text(
            "SELECT a.posted_minor FROM accounts a JOIN merchants m ON m.id = a.merchant_id"
            " WHERE m.public_id = :m"
        ),
        {"m": merchant},
    ).scalar_one()


def test_confirm_a_payout_from_the_queue(
    as_staff: StaffClient, uow, shop: dict[str, Any], connection
) -> None:
    payout = shop["payout_id"]
    support, _ = as_staff("support")
    admin, staff = as_staff("admin")
    read = support.get("/admin/queues/payouts").get_data(as_text=True)
    assert payout in read and "/confirm" not in read and "needs the money:manage" in read
    url = f"/admin/queues/payouts/{payout}/confirm"
    assert support.post(url, data={"form_token": new_key()}).status_code == 403
    fields = {**_form(admin.get("/admin/queues/payouts").get_data(as_text=True), url),
              "reference": "BANK-REF-1"}  # fmt: skip
    done = admin.post(url, data=fields)
    assert done.status_code == 303
    amount = connection.execute(
        sa.text("SELECT amount_minor FROM payouts WHERE public_id = :p"), {"p": payout}
    ).scalar_one()
    paid = f"Payout {payout} confirmed: {Money(amount, 'USD')} was paid to the bank account."
    assert paid in page_text(admin.get("/admin/queues/payouts"))
    assert admin.post(url, data=fields).status_code == 303  # once
    row = connection.execute(
        sa.text("SELECT status, processor_reference FROM payouts WHERE public_id = :p"),
        {"p": payout},
    ).one()
    assert (row.status, row.processor_reference) == ("paid", "BANK-REF-1")
    (audit,) = _audits(connection, "payout.confirm", "payout", payout)
    assert audit.actor_id == staff.id
    # Its queued job now finds it paid and pays nothing more.
    internal = connection.execute(
        sa.text("SELECT id FROM payouts WHERE public_id = :p"), {"p": payout}
    ).scalar_one()
    payouts.pay(uow, {"payout_id": internal})
    assert _status(connection, "payouts", payout) == "paid"
    assert reconciliation.reconcile(uow).ok


def test_fail_a_payout_returns_its_money_and_processing_is_refused(
    as_staff: StaffClient, uow, shop: dict[str, Any], connection, make: Factory
) -> None:
    payout = shop["payout_id"]
    admin, _ = as_staff("admin")
    balance = _merchant_balance(connection, shop["merchant_id"])
    amount = connection.execute(
        sa.text("SELECT amount_minor FROM payouts WHERE public_id = :p"), {"p": payout}
    ).scalar_one()
    url = f"/admin/queues/payouts/{payout}/fail"
    page = admin.get("/admin/queues/payouts").get_data(as_text=True)
    fields = {**_form(page, url), "reason": "bank_details_invalid", "note": "Wrong IBAN"}
    assert admin.post(url, data=fields).status_code == 303
    assert admin.post(url, data=fields).status_code == 303  # a double submit acts once
    assert _status(connection, "payouts", payout) == "failed"
    assert _merchant_balance(connection, shop["merchant_id"]) == balance + amount
    (audit,) = _audits(connection, "payout.fail", "payout", payout)
    assert (
        audit.data["note"] == "Wrong IBAN" and audit.data["failure_code"] == "bank_details_invalid"
    )
    detail = page_text(admin.get(f"/admin/payouts/{payout}"))
    assert "payout_failure" in detail and "payout.fail" in detail
    assert reconciliation.reconcile(uow).ok
    # A processing payout (the job marked it and is asking the processor) is refused.
    again = payouts.create_payout(uow, actor=shop["owner"], merchant=shop["merchant_id"],
                                  idempotency_key=new_key())  # fmt: skip
    connection.execute(
        sa.text("UPDATE payouts SET status = 'processing', processing_started_at = now()"
                " WHERE public_id = :p"), {"p": again.id},
    )  # fmt: skip
    page = admin.get("/admin/queues/payouts").get_data(as_text=True)
    assert f"/admin/queues/payouts/{again.id}/confirm" not in page
    refused = admin.post(f"/admin/queues/payouts/{again.id}/confirm",
                         data={"form_token": new_key()})  # fmt: skip
    assert refused.status_code == 422
    assert f"Payout {again.id} is processing" in page_text(refused)
    with pytest.raises(UnexpectedState):
        payouts.fail_payout(uow, actor=make.user(roles=("admin",)), payout=again.id,
                            failure_code="payout_failed")  # fmt: skip
    with pytest.raises(Forbidden):
        payouts.confirm_payout(uow, actor=make.user(roles=("support",)), payout=again.id)
    assert _status(connection, "payouts", again.id) == "processing"
    assert reconciliation.reconcile(uow).ok


def test_an_open_withdrawal_page_links_to_its_queue_item(
    as_staff: StaffClient, uow, holder
) -> None:
    person, card = holder
    pending = _withdraw(uow, person, card, "12.00")
    support, _ = as_staff("support")
    page = support.get(f"/admin/withdrawals/{pending}").get_data(as_text=True)
    assert f'href="/admin/queues/withdrawals#item-{pending}"' in page


def test_the_queue_page_notices_a_change_without_sweeping_its_forms_away(
    as_staff: StaffClient, uow, holder
) -> None:
    person, card = holder
    _withdraw(uow, person, card, "11.00")
    admin, _ = as_staff("admin")
    page = admin.get("/admin/queues/withdrawals").get_data(as_text=True)
    poll = re.search(r'id="queue-live" hx-get="([^"]+)" hx-trigger="every', page)
    assert poll
    changes = html.unescape(poll.group(1))
    assert admin.get(changes, headers={"HX-Request": "true"}).status_code == 204
    joined = _withdraw(uow, person, card, "12.00")
    changed = admin.get(changes, headers={"HX-Request": "true"})
    assert changed.status_code == 200
    text = page_text(changed)
    assert "The queue has changed" in text and "hx-trigger" not in text and joined not in text
    # A version that is not the queue's answers with the notice too (the payout queue's poll).
    assert "The queue has changed" in page_text(admin.get("/admin/queues/payouts/changes?v=x"))
    support, _ = as_staff("support")
    assert support.get(changes).status_code in (200, 204)
