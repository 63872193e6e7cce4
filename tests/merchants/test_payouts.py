"""Balance transactions, the merchant balance and payouts through the services, on real
PostgreSQL: captured funds are pending until their settlement day, a payout takes only what is
available (so a refund after it is covered by what is pending or refused), its rows' net is its
amount, its report ties to the ledger, a decline returns the money, and the ledger check passes
after every step."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from decimal import Decimal

import pytest

from portal.domain.errors import Forbidden, InvalidInput, NotFound, UnexpectedState
from portal.domain.money import Money
from portal.services.ledger import reconciliation
from portal.services.merchants import events, keys, merchants, payments, payouts, settlements
from portal.services.wallet.wallet import BankAccount
from tests.conftest import new_key
from tests.merchants.conftest import card_details, open_shop

BANK = BankAccount("Bank Mandiri", "1234 5678 9012", "Kopi Kenangan Pte")
CLOSED = BankAccount("Bank Mandiri", "9999 0000", "Kopi Kenangan Pte")


def verified(uow) -> None:
    report = reconciliation.reconcile(uow)
    assert report.ok, report.violations


def pay(uow, shop, card, major: str):
    return payments.create_payment(
        uow, actor=shop.api, merchant=shop.merchant.id, amount=Money.of_major(major, "USD"),
        card=card_details(card), idempotency_key=new_key(),
    )  # fmt: skip


def refund(uow, shop, payment, amount: int | None = None):
    return payments.create_refund(
        uow, actor=shop.api, merchant=shop.merchant.id, payment=payment.id,
        idempotency_key=new_key(), amount=amount,
    )  # fmt: skip


def balance(uow, shop) -> tuple[int, int]:
    (b,) = settlements.get_balance(uow, actor=shop.owner, merchant=shop.merchant.id)
    return b.available, b.pending


def ledger_balance(uow, shop) -> int:
    return uow.run(
        lambda u: u.execute(
            "SELECT posted_minor FROM accounts WHERE merchant_id = :m AND kind = 'merchant'",
            {"m": shop.merchant.id},
        ).scalar_one()
    )


def payout_now(uow, shop, **kw):
    return payouts.create_payout(
        uow, actor=shop.owner, merchant=shop.merchant.id, idempotency_key=new_key(), **kw
    )


def event_types(uow, shop) -> list[str]:
    page = events.list_events(uow, actor=shop.api, merchant=shop.merchant.id, limit=100)
    return [e.type for e in reversed(page.items)]


def test_captured_funds_are_pending_until_their_settlement_day(uow, make, shop, clock):
    card = make.card(make.user(), balance="500")
    made = pay(uow, shop, card, "100")
    page = settlements.list_balance_transactions(uow, actor=shop.api, merchant=shop.merchant.id)
    (txn,) = page.items
    assert (txn.type, txn.amount, txn.fee, txn.net) == ("payment", 10000, made.fee,
                                                       10000 - made.fee)  # fmt: skip
    assert txn.status == "pending" and txn.source == made.id and txn.payout is None
    day = clock.now.replace(hour=0, minute=0, second=0, microsecond=0)
    assert txn.available_on == day + timedelta(days=2)
    assert balance(uow, shop) == (0, txn.net) and sum(balance(uow, shop)) == ledger_balance(
        uow, shop
    )
    verified(uow)

    clock.now = day + timedelta(days=2, seconds=1)
    assert balance(uow, shop) == (txn.net, 0)  # reads as available on time anyway
    assert settlements.release_available(uow) == 1
    assert settlements.release_available(uow) == 0
    assert event_types(uow, shop)[-1] == "balance.available"
    (released,) = events.list_events(uow, actor=shop.api, merchant=shop.merchant.id,
                                     types=["balance.available"]).items  # fmt: skip
    assert released.data["object"]["available"] == [{"amount": txn.net, "currency": "usd"}]
    verified(uow)


def test_a_payout_takes_the_available_balance_and_its_rows_sum_to_it(uow, make, shop, clock):
    card = make.card(make.user(), balance="1000")
    first = pay(uow, shop, card, "100")
    second = pay(uow, shop, card, "40")
    refund(uow, shop, first, 2500)
    clock.advance(days=3)
    later = pay(uow, shop, card, "60")  # still pending: not in this payout
    with pytest.raises(UnexpectedState) as missing:
        payout_now(uow, shop)
    assert missing.value.code == "bank_account_missing"

    payouts.set_bank_account(uow, actor=shop.owner, merchant=shop.merchant.id, bank=BANK)
    opening = ledger_balance(uow, shop)
    made = payout_now(uow, shop)
    expected = 10000 - first.fee + 4000 - second.fee - 2500
    assert (made.amount, made.currency, made.status, made.automatic) == (
        expected, "USD", "pending", False)  # fmt: skip
    assert (made.bank_name, made.bank_last4) == ("Bank Mandiri", "9012")
    assert balance(uow, shop) == (0, 6000 - later.fee)
    assert ledger_balance(uow, shop) == opening - expected
    verified(uow)

    rows = settlements.list_balance_transactions(
        uow, actor=shop.api, merchant=shop.merchant.id, payout=made.id
    ).items
    assert sorted(t.type for t in rows) == ["payment", "payment", "refund"]
    assert sum(t.net for t in rows) == made.amount
    report = payouts.payout_report(uow, actor=shop.owner, merchant=shop.merchant.id,
                                   payout=made.id)  # fmt: skip
    assert (report.opening_balance, report.gross, report.refunds, report.fees) == (
        opening, 14000, -2500, -(first.fee + second.fee))  # fmt: skip
    assert report.carried_forward == ledger_balance(uow, shop) == 6000 - later.fee
    assert report.gross + report.refunds + report.fees + report.adjustments == made.amount

    lines = list(csv.reader(io.StringIO(payouts.report_csv(report))))
    header = {line[0]: line[1] for line in lines[:8]}
    assert header["payout_amount"] == Money(made.amount, "USD").to_major_str()
    assert header["opening_balance"] == Money(opening, "USD").to_major_str()
    body = lines[10:]
    assert lines[9][0] == "balance_transaction" and len(body) == 3
    assert sum(Decimal(line[-1]) for line in body) * 100 == made.amount

    # Nothing is left to pay out; the payout's own transaction is in the history.
    with pytest.raises(UnexpectedState) as low:
        payout_now(uow, shop)
    assert low.value.code == "balance_insufficient"
    own = settlements.get_balance_transaction(uow, actor=shop.api, merchant=shop.merchant.id,
                                              transaction=made.balance_transaction)  # fmt: skip
    assert (own.type, own.net, own.source) == ("payout", -made.amount, made.id)
    assert "payout.created" in event_types(uow, shop)


def test_a_refund_after_a_payout_is_covered_by_the_pending_balance_or_refused(
    uow, make, shop, clock
):
    card = make.card(make.user(), balance="1000")
    old = pay(uow, shop, card, "100")
    clock.advance(days=3)
    payouts.set_bank_account(uow, actor=shop.owner, merchant=shop.merchant.id, bank=BANK)
    payout_now(uow, shop)
    new = pay(uow, shop, card, "30")  # pending
    pending = 3000 - new.fee
    assert balance(uow, shop) == (0, pending)

    with pytest.raises(UnexpectedState) as refused:
        refund(uow, shop, old)  # 100 USD: more than the balance holds
    assert refused.value.code == "balance_insufficient"
    assert balance(uow, shop) == (0, pending)

    refund(uow, shop, old, 2000)  # covered by what is pending
    assert balance(uow, shop) == (-2000, pending)
    assert ledger_balance(uow, shop) == pending - 2000 >= 0
    verified(uow)
    clock.advance(days=3)
    with pytest.raises(UnexpectedState):
        payout_now(uow, shop)  # 30 - fee - 20 is below the 10 USD minimum
    assert balance(uow, shop) == (pending - 2000, 0)


def test_the_job_pays_a_payout_once_and_a_decline_returns_the_money(uow, make, shop, clock):
    card = make.card(make.user(), balance="1000")
    pay(uow, shop, card, "100")
    clock.advance(days=3)
    payouts.set_bank_account(uow, actor=shop.owner, merchant=shop.merchant.id, bank=BANK)
    paid = payout_now(uow, shop)
    payload = uow.run(
        lambda u: u.execute(
            "SELECT payload FROM jobs WHERE kind = :k", {"k": payouts.PAY_JOB}
        ).scalar_one()
    )
    payouts.pay(uow, payload)
    payouts.pay(uow, payload)  # a repeated job finds it paid
    got = payouts.get_payout(uow, actor=shop.api, merchant=shop.merchant.id, payout=paid.id)
    assert got.status == "paid" and got.paid_at is not None
    asked = uow.run(
        lambda u: u.execute(
            "SELECT idempotency_key, amount_minor, outcome FROM demo_processor_requests"
            " WHERE operation = 'payout'"
        ).all()
    )
    assert [tuple(r) for r in asked] == [(paid.id, paid.amount, "paid")]
    verified(uow)

    # The bank account changes to a closed one: the next payout fails and its money returns.
    pay(uow, shop, card, "50")
    clock.advance(days=3)
    payouts.set_bank_account(uow, actor=shop.owner, merchant=shop.merchant.id, bank=CLOSED)
    failing = payout_now(uow, shop)
    assert failing.bank_last4 == "0000"
    job = uow.run(
        lambda u: u.execute(
            "SELECT payload FROM jobs WHERE kind = :k AND payload->>'payout_id' <> :first",
            {"k": payouts.PAY_JOB, "first": str(payload["payout_id"])},
        ).scalar_one()
    )
    payouts.pay(uow, job)
    failed = payouts.get_payout(uow, actor=shop.api, merchant=shop.merchant.id,
                                payout=failing.id)  # fmt: skip
    assert (failed.status, failed.failure_code) == ("failed", "account_closed")
    assert balance(uow, shop) == (failing.amount, 0)
    verified(uow)
    types = event_types(uow, shop)
    assert types.count("payout.created") == 2 and "payout.paid" in types
    assert types[-1] == "payout.failed"
    (ev,) = events.list_events(uow, actor=shop.api, merchant=shop.merchant.id,
                               types=["payout.failed"]).items  # fmt: skip
    assert ev.data["previous_attributes"]["status"] == "processing"
    assert ev.data["object"]["failure_message"].startswith("The bank account is closed")

    # With a good account again the returned money is paid out, and the report says why.
    payouts.set_bank_account(uow, actor=shop.owner, merchant=shop.merchant.id, bank=BANK)
    again = payout_now(uow, shop)
    assert again.amount == failing.amount
    report = payouts.payout_report(uow, actor=shop.owner, merchant=shop.merchant.id,
                                   payout=again.id)  # fmt: skip
    assert [t.type for t in report.rows] == ["payout_failure"]
    assert report.returned_payouts == again.amount
    verified(uow)


def test_a_payout_is_idempotent_and_checks_its_input(uow, make, shop, clock):
    card = make.card(make.user(), balance="500")
    pay(uow, shop, card, "100")
    clock.advance(days=3)
    payouts.set_bank_account(uow, actor=shop.owner, merchant=shop.merchant.id, bank=BANK)
    key = new_key()
    first = payouts.create_payout(uow, actor=shop.owner, merchant=shop.merchant.id,
                                  idempotency_key=key)  # fmt: skip
    again = payouts.create_payout(uow, actor=shop.owner, merchant=shop.merchant.id,
                                  idempotency_key=key)  # fmt: skip
    assert again.id == first.id and again.replayed
    page = payouts.list_payouts(uow, actor=shop.api, merchant=shop.merchant.id)
    assert [p.id for p in page.items] == [first.id]

    with pytest.raises(InvalidInput) as bad:
        payout_now(uow, shop, currency="dollars")
    assert bad.value.param == "currency"
    with pytest.raises(InvalidInput) as none:
        payout_now(uow, shop, currency="EUR")
    assert none.value.param == "currency"
    with pytest.raises(InvalidInput) as status:
        payouts.list_payouts(uow, actor=shop.api, merchant=shop.merchant.id, status="lost")
    assert status.value.param == "status"
    with pytest.raises(NotFound):
        payouts.get_payout(uow, actor=shop.api, merchant=shop.merchant.id, payout="po_nope")
    with pytest.raises(InvalidInput) as kind:
        settlements.list_balance_transactions(uow, actor=shop.api, merchant=shop.merchant.id,
                                              type="gift")  # fmt: skip
    assert kind.value.param == "type"
    with pytest.raises(InvalidInput) as bank:
        payouts.set_bank_account(uow, actor=shop.owner, merchant=shop.merchant.id,
                                 bank=BankAccount("B", "12", "X"))  # fmt: skip
    assert bank.value.param == "bank_name"


def test_only_owners_and_payout_keys_pay_out_and_only_owners_set_the_bank(uow, make, shop, staff):
    with pytest.raises(Forbidden):  # the shop's key has no payouts:write
        payouts.create_payout(uow, actor=shop.api, merchant=shop.merchant.id,
                              idempotency_key=new_key())  # fmt: skip
    with pytest.raises(Forbidden):
        payouts.set_bank_account(uow, actor=shop.api, merchant=shop.merchant.id, bank=BANK)
    other = open_shop(uow, make, staff, name="Other Shop")
    with pytest.raises((NotFound, Forbidden)):
        payouts.list_payouts(uow, actor=other.api, merchant=shop.merchant.id)
    with pytest.raises((NotFound, Forbidden)):
        payouts.set_bank_account(uow, actor=other.owner, merchant=shop.merchant.id, bank=BANK)
    # A key with payouts:write may pay out (but never set the bank account).
    keyed = open_shop(uow, make, staff, name="Keyed Shop", scopes=("payouts:write",))
    with pytest.raises(UnexpectedState) as missing:
        payouts.create_payout(uow, actor=keyed.api, merchant=keyed.merchant.id,
                              idempotency_key=new_key())  # fmt: skip
    assert missing.value.code == "bank_account_missing"
    with pytest.raises(Forbidden):
        payouts.set_bank_account(uow, actor=keyed.api, merchant=keyed.merchant.id, bank=BANK)


def test_a_suspended_merchant_is_not_paid_out(uow, make, shop, staff, clock):
    card = make.card(make.user(), balance="500")
    pay(uow, shop, card, "100")
    clock.advance(days=3)
    clock.now = clock.now.replace(hour=3)  # after the daily payout time
    payouts.set_bank_account(uow, actor=shop.owner, merchant=shop.merchant.id, bank=BANK)
    merchants.decide(uow, actor=staff, merchant=shop.merchant.public_id, action="suspend")
    with pytest.raises(Forbidden) as held:
        payout_now(uow, shop)
    assert held.value.code == "merchant_inactive"
    assert payouts.run_schedule(uow) == 0
    merchants.decide(uow, actor=staff, merchant=shop.merchant.public_id, action="reactivate")
    assert payout_now(uow, shop).amount > 0


def test_the_daily_schedule_pays_out_once_per_day(uow, make, shop, clock):
    card = make.card(make.user(), balance="500")
    pay(uow, shop, card, "100")
    payouts.set_bank_account(uow, actor=shop.owner, merchant=shop.merchant.id, bank=BANK)
    day = clock.now.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=3)
    clock.now = day + timedelta(hours=1)  # before 02:00 UTC
    assert payouts.run_schedule(uow) == 0
    clock.now = day + timedelta(hours=2, minutes=5)
    assert payouts.run_schedule(uow) == 1
    assert payouts.run_schedule(uow) == 0
    (made,) = payouts.list_payouts(uow, actor=shop.api, merchant=shop.merchant.id).items
    assert made.automatic and made.description == "Daily payout"
    # Tomorrow there is nothing new: no payout below the minimum.
    clock.advance(days=1)
    assert payouts.run_schedule(uow) == 0
    verified(uow)


def test_only_an_owner_can_make_a_key_that_pays_out(uow, make, shop):
    developer = make.user()
    email = uow.run(
        lambda u: u.execute("SELECT email FROM users WHERE id = :id", {"id": developer.id})
    ).scalar_one()
    invited = merchants.invite_member(uow, actor=shop.owner, merchant=shop.merchant.id,
                                      email=email, role="developer")  # fmt: skip
    assert invited.token is not None
    merchants.accept_invitation(uow, actor=developer, token=invited.token)
    with pytest.raises(Forbidden) as refused:
        keys.create_api_key(uow, actor=developer, merchant=shop.merchant.id, name="payouts",
                            scopes=["payments:read", "payouts:write"])  # fmt: skip
    assert refused.value.param == "scopes"
    made = keys.create_api_key(uow, actor=developer, merchant=shop.merchant.id, name="reads",
                               scopes=["payments:read", "webhooks:manage"])  # fmt: skip
    assert made.scopes == ("payments:read", "webhooks:manage")
    owned = keys.create_api_key(uow, actor=shop.owner, merchant=shop.merchant.id, name="payouts",
                                scopes=["payouts:write"])  # fmt: skip
    assert owned.scopes == ("payouts:write",)
