"""Payments, captures, cancels and refunds through the services, on real PostgreSQL."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from portal.domain.errors import (
    CardDeclined,
    Forbidden,
    IdempotencyConflict,
    InvalidInput,
    NotFound,
    RateLimited,
    UnexpectedState,
)
from portal.domain.ids import is_public_id
from portal.domain.money import Money
from portal.services.ledger import reconciliation
from portal.services.merchants import payments
from portal.services.wallet import cards
from tests.conftest import new_key
from tests.merchants.conftest import card_details, open_shop


def usd(major: str) -> Money:
    return Money.of_major(major, "USD")


def balances(uow, card, shop) -> tuple[int, int, int]:
    """(card available, merchant posted, fees account total) in minor units."""

    def read(u):
        wallet = u.execute(
            "SELECT posted_minor - pending_debits_minor FROM accounts WHERE card_id = :c",
            {"c": card.card_id},
        ).scalar_one()
        merchant = u.execute(
            "SELECT COALESCE(SUM(posted_minor), 0) FROM accounts WHERE merchant_id = :m",
            {"m": shop.merchant.id},
        ).scalar_one()
        fees = u.execute(
            "SELECT COALESCE(SUM(p.amount_minor), 0) FROM postings p JOIN accounts a"
            " ON a.id = p.account_id WHERE a.kind = 'fees'"
        ).scalar_one()
        return wallet, merchant, fees

    return uow.run(read)


def assert_reconciled(uow) -> None:
    report = reconciliation.reconcile(uow)
    assert report.ok, report.violations


def pay(uow, shop, card, amount="10.00", **kw):
    return payments.create_payment(
        uow, actor=shop.api, merchant=shop.merchant.public_id, amount=usd(amount),
        card=kw.pop("details", None) or card_details(card),
        idempotency_key=kw.pop("key", new_key()), **kw,
    )  # fmt: skip


def test_automatic_payment_captures_with_fee(uow, make, shop):
    buyer = make.user()
    card = make.card(buyer, balance="100")
    payment = pay(uow, shop, card, "10.00", description="Latte", metadata={"order": "42"})
    assert is_public_id("payment", payment.id)
    assert payment.status == "succeeded"
    # 2.9 % of 1000 = 29, plus 30 fixed.
    assert (payment.amount_received, payment.fee, payment.net) == (1000, 59, 941)
    assert (payment.card_brand, payment.card_last4) == ("visa", card.last4)
    assert balances(uow, card, shop) == (9000, 941, 59)
    assert_reconciled(uow)


def test_manual_payment_holds_then_partial_capture_releases_rest(uow, make, shop):
    card = make.card(make.user(), balance="100")
    payment = pay(uow, shop, card, "50.00", capture_method="manual")
    assert (payment.status, payment.amount_capturable) == ("requires_capture", 5000)
    assert balances(uow, card, shop)[0] == 5000  # held: not spendable
    captured = payments.capture_payment(
        uow, actor=shop.api, merchant=shop.merchant.public_id, payment=payment.id,
        idempotency_key=new_key(), amount_to_capture=3000,
    )  # fmt: skip
    assert (captured.status, captured.amount_received, captured.amount_capturable) == (
        "succeeded", 3000, 0,
    )  # fmt: skip
    fee = 3000 * 290 // 10000 + 30
    assert balances(uow, card, shop) == (7000, 3000 - fee, fee)
    assert_reconciled(uow)


@pytest.mark.parametrize("amount", [0, -5, 5001])
def test_capture_above_capturable_or_not_positive_is_refused(uow, make, shop, amount):
    card = make.card(make.user(), balance="100")
    payment = pay(uow, shop, card, "50.00", capture_method="manual")
    with pytest.raises(InvalidInput) as err:
        payments.capture_payment(
            uow, actor=shop.api, merchant=shop.merchant.public_id, payment=payment.id,
            idempotency_key=new_key(), amount_to_capture=amount,
        )  # fmt: skip
    assert err.value.param == "amount_to_capture"
    assert balances(uow, card, shop)[0] == 5000


def test_wrong_state_actions_are_unexpected_state(uow, make, shop):
    card = make.card(make.user(), balance="100")
    paid = pay(uow, shop, card)
    with pytest.raises(UnexpectedState) as err:
        payments.cancel_payment(
            uow, actor=shop.api, merchant=shop.merchant.public_id, payment=paid.id,
            idempotency_key=new_key(),
        )  # fmt: skip
    assert err.value.code == "payment_unexpected_state"
    assert "succeeded" in err.value.message
    held = pay(uow, shop, card, capture_method="manual")
    canceled = payments.cancel_payment(
        uow, actor=shop.api, merchant=shop.merchant.public_id, payment=held.id,
        idempotency_key=new_key(), reason="requested_by_customer",
    )  # fmt: skip
    assert (canceled.status, canceled.cancellation_reason) == ("canceled", "requested_by_customer")
    with pytest.raises(UnexpectedState, match="canceled"):
        payments.capture_payment(
            uow, actor=shop.api, merchant=shop.merchant.public_id, payment=held.id,
            idempotency_key=new_key(),
        )  # fmt: skip
    assert balances(uow, card, shop)[0] == 10000 - 1000
    assert_reconciled(uow)


@pytest.mark.parametrize(
    ("setup", "decline"),
    [
        ("poor", "insufficient_funds"),
        ("cvc", "incorrect_cvc"),
        ("frozen", "card_frozen"),
        ("idr", "currency_not_supported"),
        ("unknown", "incorrect_number"),
    ],
)
def test_declines_record_the_attempt_and_move_nothing(uow, make, shop, setup, decline):
    owner = make.user()
    balance = {"poor": "5", "idr": "100000"}.get(setup, "100")
    card = make.card(owner, balance=balance, currency="IDR" if setup == "idr" else "USD")
    details = card_details(card)
    if setup == "cvc":
        details = card_details(card, cvc="000" if card.cvv != "000" else "111")
    if setup == "frozen":
        cards.set_frozen(uow, actor=owner, card_id=card.card_id, frozen=True)
    if setup == "unknown":
        details = payments.CardDetails("4242424242424242", 12, 2030, "123")
    before = balances(uow, card, shop)
    with pytest.raises(CardDeclined) as err:
        pay(uow, shop, card, "10.00", details=details)
    assert err.value.details["decline_code"] == decline
    declined = err.value.details["payment"]
    assert declined["status"] == "requires_payment_method"
    assert declined["last_payment_error"]["decline_code"] == decline
    assert balances(uow, card, shop) == before
    stored = payments.get_payment(
        uow, actor=shop.api, merchant=shop.merchant.public_id, payment=declined["id"]
    )
    assert stored.status == "requires_payment_method"
    assert_reconciled(uow)


def test_incorrect_security_codes_are_limited_per_card(uow, make, shop):
    card = make.card(make.user(), balance="100")
    wrong = card_details(card, cvc="000" if card.cvv != "000" else "111")
    for _ in range(uow.settings.cvc_failures_per_card):
        with pytest.raises(CardDeclined):
            pay(uow, shop, card, details=wrong)
    with pytest.raises(RateLimited):
        pay(uow, shop, card)  # even the right code is refused now
    assert balances(uow, card, shop)[0] == 10000


def test_idempotent_replay_moves_money_once(uow, make, shop):
    card = make.card(make.user(), balance="100")
    key = new_key()
    first = pay(uow, shop, card, "10.00", key=key)
    again = pay(uow, shop, card, "10.00", key=key)
    assert again.id == first.id and again.replayed
    assert balances(uow, card, shop)[0] == 9000
    with pytest.raises(IdempotencyConflict):
        pay(uow, shop, card, "11.00", key=key)


def test_another_merchants_payment_is_not_found(uow, make, staff, shop):
    other = open_shop(uow, make, staff, name="Other Shop")
    card = make.card(make.user(), balance="100")
    payment = pay(uow, shop, card)
    with pytest.raises(NotFound):
        payments.get_payment(
            uow, actor=other.api, merchant=other.merchant.public_id, payment=payment.id
        )
    with pytest.raises(NotFound):
        payments.get_payment(
            uow, actor=other.api, merchant=shop.merchant.public_id, payment=payment.id
        )


def test_partial_refunds_until_received_and_fee_is_kept(uow, make, shop):
    card = make.card(make.user(), balance="100")
    payment = pay(uow, shop, card, "10.00")

    def refund(amount=None):
        return payments.create_refund(
            uow, actor=shop.api, merchant=shop.merchant.public_id, payment=payment.id,
            idempotency_key=new_key(), amount=amount, reason="requested_by_customer",
        )  # fmt: skip

    first = refund(400)
    assert is_public_id("refund", first.id) and first.status == "succeeded"
    for bad in (0, -1):
        with pytest.raises(InvalidInput):
            refund(bad)
    with pytest.raises(InvalidInput) as err:
        refund(601)
    assert err.value.code == "amount_too_large"
    # The merchant holds 941 after the fee; 400 went back already: 541 left, 600 still due.
    with pytest.raises(UnexpectedState) as err:
        refund()
    assert err.value.code == "balance_insufficient"
    assert balances(uow, card, shop) == (9400, 541, 59)
    assert_reconciled(uow)


def test_refund_in_full_then_again_is_refused(uow, make, staff, shop):
    card = make.card(make.user(), balance="100")
    # Give the merchant a balance that covers a full refund despite the fee.
    pay(uow, shop, card, "20.00")
    payment = pay(uow, shop, card, "10.00")
    payments.create_refund(
        uow, actor=shop.api, merchant=shop.merchant.public_id, payment=payment.id,
        idempotency_key=new_key(),
    )  # fmt: skip
    view = payments.get_payment(
        uow, actor=shop.api, merchant=shop.merchant.public_id, payment=payment.id
    )
    assert view.refunded and view.amount_refunded == 1000 and view.fee == 59
    with pytest.raises(UnexpectedState) as err:
        payments.create_refund(
            uow, actor=shop.api, merchant=shop.merchant.public_id, payment=payment.id,
            idempotency_key=new_key(),
        )  # fmt: skip
    assert err.value.code == "charge_already_refunded"
    assert_reconciled(uow)


def test_key_without_refund_scope_is_forbidden(uow, make, staff):
    shop = open_shop(uow, make, staff, scopes=("payments:read", "payments:write"))
    card = make.card(make.user(), balance="100")
    payment = pay(uow, shop, card)
    with pytest.raises(Forbidden):
        payments.create_refund(
            uow, actor=shop.api, merchant=shop.merchant.public_id, payment=payment.id,
            idempotency_key=new_key(),
        )  # fmt: skip


def test_uncaptured_payments_expire_and_release(uow, make, shop, clock):
    card = make.card(make.user(), balance="100")
    held = pay(uow, shop, card, "30.00", capture_method="manual")
    clock.advance(days=uow.settings.authorization_days, seconds=1)
    assert payments.expire_uncaptured(uow, actor=shop.owner) == 1
    view = payments.get_payment(
        uow, actor=shop.api, merchant=shop.merchant.public_id, payment=held.id
    )
    assert (view.status, view.cancellation_reason) == ("canceled", "expired")
    assert balances(uow, card, shop)[0] == 10000
    assert_reconciled(uow)


def test_list_filters_and_search(uow, make, shop):
    card = make.card(make.user(), balance="100")
    a = pay(uow, shop, card, "1.00", description="Flat white", metadata={"order": "A-1"})
    b = pay(uow, shop, card, "2.00", capture_method="manual", metadata={"order": "B-2"})
    page = payments.list_payments(uow, actor=shop.api, merchant=shop.merchant.public_id)
    assert [p.id for p in page.items] == [b.id, a.id]
    held = payments.list_payments(
        uow, actor=shop.api, merchant=shop.merchant.public_id, status="requires_capture"
    )
    assert [p.id for p in held.items] == [b.id]
    found = payments.list_payments(
        uow, actor=shop.api, merchant=shop.merchant.public_id, search="b-2"
    )
    assert [p.id for p in found.items] == [b.id]
    found = payments.list_payments(
        uow, actor=shop.api, merchant=shop.merchant.public_id, search="flat"
    )
    assert [p.id for p in found.items] == [a.id]
    by_card = payments.list_payments(
        uow, actor=shop.api, merchant=shop.merchant.public_id,
        card_fingerprint=a.card_fingerprint,
    )  # fmt: skip
    assert len(by_card.items) == 2
    second = payments.list_payments(
        uow, actor=shop.api, merchant=shop.merchant.public_id, limit=1, starting_after=b.id
    )
    assert [p.id for p in second.items] == [a.id] and not second.has_more


def test_fee_never_exceeds_the_capture(uow, make, shop):
    from portal.services.merchants.payments import fee_for

    assert fee_for(shop.merchant, 50, "USD") == 50 * 290 // 10000 + 30
    assert fee_for(shop.merchant, 20, "USD") == 20
    assert fee_for(shop.merchant, 10000, "JPY") == 290 + 30


def test_fingerprints_differ_between_merchants(uow, make, staff, shop):
    other = open_shop(uow, make, staff, name="Other Shop")
    card = make.card(make.user(), balance="100")
    mine = pay(uow, shop, card)
    theirs = payments.create_payment(
        uow, actor=other.api, merchant=other.merchant.public_id, amount=usd("1"),
        card=card_details(card), idempotency_key=new_key(),
    )  # fmt: skip
    assert mine.card_fingerprint and mine.card_fingerprint != theirs.card_fingerprint
    vault_fp = uow.run(
        lambda u: u.execute(
            sa.text("SELECT encode(fingerprint, 'hex') FROM cards WHERE id = :c"),
            {"c": card.card_id},
        ).scalar_one()
    )
    assert vault_fp not in mine.card_fingerprint


def test_ledger_verify_covers_merchant_balances_fees_and_refunds(app, connection, uow, make, shop):
    card = make.card(make.user(), balance="100")
    pay(uow, shop, card, "20.00")
    paid = pay(uow, shop, card, "10.00")
    payments.create_refund(
        uow, actor=shop.api, merchant=shop.merchant.public_id, payment=paid.id,
        idempotency_key=new_key(), amount=300,
    )  # fmt: skip
    runner = app.test_cli_runner()
    result = runner.invoke(args=["ledger", "verify"])
    assert result.exit_code == 0, result.output
    assert "system account fees:USD: 147" in result.output  # (58 + 30) + (29 + 30)

    for tamper, check in (
        ("UPDATE payments SET fee_minor = fee_minor - 1 WHERE public_id = :p", "payment_fee"),
        ("UPDATE payments SET refunded_minor = 200 WHERE public_id = :p", "payment_refunded"),
        ("UPDATE accounts SET posted_minor = posted_minor + 1 WHERE merchant_id = :m",
         "posted_balance"),
    ):  # fmt: skip
        savepoint = connection.begin_nested()
        connection.execute(sa.text(tamper), {"p": paid.id, "m": shop.merchant.id})
        result = runner.invoke(args=["ledger", "verify"])
        assert result.exit_code == 1 and f"VIOLATION {check}" in result.output, result.output
        savepoint.rollback()


def test_guessing_card_numbers_is_limited_per_key(uow, make, shop):
    from portal.domain.cards import generate_number

    limit = uow.settings.cvc_failures_per_key
    for i in range(limit):
        unknown = payments.CardDetails(generate_number("visa"), 12, 2030, "123")
        with pytest.raises(CardDeclined) as err:
            pay(uow, shop, None, details=unknown)
        assert err.value.details["decline_code"] == "incorrect_number", i
    card = make.card(make.user(), balance="100")
    with pytest.raises(RateLimited):
        pay(uow, shop, card)


def test_cardholders_see_payments_and_refunds_in_activity_and_totals(uow, make, shop):
    from portal.services.wallet import activity

    buyer = make.user()
    card = make.card(buyer, balance="100")
    paid = pay(uow, shop, card, "10.00", description="Latte")
    held = pay(uow, shop, card, "5.00", capture_method="manual")
    refund = payments.create_refund(
        uow, actor=shop.api, merchant=shop.merchant.public_id, payment=paid.id,
        idempotency_key=new_key(), amount=250,
    )  # fmt: skip
    wrong = card_details(card, cvc="000" if card.cvv != "000" else "111")
    with pytest.raises(CardDeclined):
        pay(uow, shop, card, "7.00", details=wrong)
    feed = activity.list_activity(uow, actor=buyer, kind=None, limit=10).items
    mine = {i.id: i for i in feed if i.kind in ("payment", "refund")}
    assert mine[paid.id].status == "succeeded" and mine[paid.id].direction == "out"
    assert mine[paid.id].amount.amount_minor == 1000
    assert mine[paid.id].counterparty == shop.merchant.name and mine[paid.id].memo == "Latte"
    assert mine[held.id].status == "pending"
    assert (mine[refund.id].direction, mine[refund.id].amount.amount_minor) == ("in", 250)
    (declined,) = [i for i in mine.values() if i.status == "failed"]
    assert declined.failure_code == "incorrect_cvc"
    # One movement by id, filters, and a keyset walk through a mixed feed.
    assert activity.get_activity_item(uow, actor=buyer, item_id=refund.id).kind == "refund"
    only = activity.list_activity(uow, actor=buyer, kind="payment", status="pending")
    assert [i.id for i in only.items] == [held.id]
    first = activity.list_activity(uow, actor=buyer, limit=2)
    rest = activity.list_activity(uow, actor=buyer, limit=10, starting_after=first.items[-1].id)
    assert [i.id for i in first.items + rest.items] == [i.id for i in feed]
    stranger = make.user()
    with pytest.raises(NotFound):
        activity.get_activity_item(uow, actor=stranger, item_id=paid.id)
    totals = activity.monthly_totals(uow, actor=buyer, months=1)
    (usd,) = [t for t in totals if t.currency == "USD"]
    assert (usd.money_in.amount_minor, usd.money_out.amount_minor) == (10000 + 250, 1000)
