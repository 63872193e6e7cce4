"""Every event type Portal writes reaches a real HTTP receiver on 127.0.0.1 through the worker,
each delivery verified by the `standardwebhooks` package and by `stripe.Webhook.construct_event`:
payments of every outcome, a refund and a failed one, a checkout paid and one expired, funds
becoming available, a payout paid and one failed, with the ledger check passing at the end."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from portal.domain.errors import CardDeclined
from portal.domain.money import Money
from portal.services.ledger import reconciliation
from portal.services.merchants import checkout, events, payments, payouts, settlements
from portal.services.wallet import cards
from portal.services.wallet.wallet import BankAccount
from tests.conftest import new_key
from tests.merchants.conftest import open_shop
from tests.merchants.test_webhooks import (
    ALL_SCOPES,
    endpoint,
    pay,
    receiver,  # noqa: F401  (the fixture)
    run_worker,
    verify_both,
)


def test_every_event_type_arrives_signed_for_both_libraries(uow, make, staff, clock, receiver):  # noqa: F811
    clock.now = datetime.now(UTC) - timedelta(days=8)
    shop = open_shop(uow, make, staff, scopes=ALL_SCOPES)
    we = endpoint(uow, shop, receiver.url)
    assert we.secret is not None
    payer = make.user()
    card = make.card(payer, balance="1000")
    closing = make.card(make.user(), balance="100")

    pay(uow, shop, card, 50_000)
    held = pay(uow, shop, card, 5000, capture_method="manual")
    payments.capture_payment(uow, actor=shop.api, merchant=shop.merchant.id, payment=held.id,
                             idempotency_key=new_key())  # fmt: skip
    dropped = pay(uow, shop, card, 3000, capture_method="manual")
    payments.cancel_payment(uow, actor=shop.api, merchant=shop.merchant.id, payment=dropped.id,
                            idempotency_key=new_key())  # fmt: skip
    with pytest.raises(CardDeclined):
        pay(uow, shop, card, 999_999)
    payments.create_refund(uow, actor=shop.api, merchant=shop.merchant.id, payment=held.id,
                           idempotency_key=new_key(), amount=1000)  # fmt: skip
    lost = pay(uow, shop, closing, 2000)
    cards.set_archived(uow, actor=staff, card_id=closing.card_id, archived=True)
    failed = payments.create_refund(uow, actor=shop.api, merchant=shop.merchant.id,
                                    payment=lost.id, idempotency_key=new_key())  # fmt: skip
    assert failed.status == "failed"

    paid_session = checkout.create_checkout_session(
        uow, actor=shop.api, merchant=shop.merchant.id, amount=Money(1500, "USD"),
        success_url="https://shop.example/ok", cancel_url="https://shop.example/back",
        idempotency_key=new_key(),
    )  # fmt: skip
    checkout.pay_checkout_session(uow, actor=payer, session=paid_session.id, card=card.card_id,
                                  idempotency_key=new_key())  # fmt: skip
    checkout.create_checkout_session(
        uow, actor=shop.api, merchant=shop.merchant.id, amount=Money(900, "USD"),
        success_url="https://shop.example/ok", cancel_url="https://shop.example/back",
        idempotency_key=new_key(), expires_in=1800,
    )  # fmt: skip
    clock.advance(hours=1)
    assert checkout.expire_checkout_sessions(uow) == 1

    # Three days on, the funds are available and paid out; then the account is changed to a
    # closed one, and the next payout fails (the first keeps the account it was made for).
    clock.advance(days=3)
    assert settlements.release_available(uow) > 0
    payouts.set_bank_account(
        uow,
        actor=shop.owner,
        merchant=shop.merchant.id,
        bank=BankAccount("Bank Mandiri", "1234 5678 9012", "Shop"),
    )
    payouts.create_payout(uow, actor=shop.owner, merchant=shop.merchant.id,
                          idempotency_key=new_key())  # fmt: skip
    pay(uow, shop, card, 20_000)
    payouts.set_bank_account(
        uow,
        actor=shop.owner,
        merchant=shop.merchant.id,
        bank=BankAccount("Bank Mandiri", "9999 0000", "Shop"),
    )
    clock.now = datetime.now(UTC)  # deliveries signed now, inside the receivers' window
    payouts.create_payout(uow, actor=shop.owner, merchant=shop.merchant.id,
                          idempotency_key=new_key())  # fmt: skip
    clock.advance(seconds=10)  # the payout jobs are due
    while run_worker(lambda: uow):  # pays both payouts (the first to its own account)
        pass

    got = [verify_both(we.secret, r) for r in receiver.received]
    assert {e["type"] for e in got} == set(events.TYPES)
    assert len({e["id"] for e in got}) == len(got)  # each event once
    statuses = [e["data"]["object"]["status"] for e in got if e["type"].startswith("payout.")]
    assert sorted(statuses) == ["failed", "paid", "pending", "pending"]
    report = reconciliation.reconcile(uow)
    assert report.ok, report.violations
