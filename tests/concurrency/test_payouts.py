"""Merchant payouts under concurrency, on connections that commit for real: payouts made at
the same moment take each balance transaction once; a refund racing a payout never overdraws
the balance; two workers, a lease lost mid-call and a worker killed between the processor's
answer and the settle all pay a payout exactly once (one request at the processor, one
``payout.paid``), and the ledger check passes after each."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import replace

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

from portal.domain.money import Money
from portal.services.ledger.reconciliation import reconcile
from portal.services.merchants import payments, payouts
from portal.services.shared import jobs, processor
from portal.services.shared.uow import UnitOfWork
from tests.concurrency.helpers import error_kinds, run_together
from tests.conftest import Factory, new_key
from tests.merchants.conftest import card_details, open_shop
from tests.merchants.test_payouts import BANK

pytestmark = pytest.mark.concurrency


@pytest.fixture
def now_uow(app, committing_engine) -> Callable[[], UnitOfWork]:
    """Committing units of work where captured funds are available at once."""
    factory = sessionmaker(bind=committing_engine, expire_on_commit=False, autoflush=False)
    settings = replace(app.config["SERVICE_SETTINGS"], settlement_delay_days=0)
    return lambda: UnitOfWork(factory, settings)


def fetch(engine: sa.Engine, sql: str, **params) -> list[sa.Row]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text(sql), params))


def assert_reconciled(uow: UnitOfWork) -> None:
    report = reconcile(uow)
    assert report.ok, report.violations


def funded_shop(now_uow, *, payments_of: tuple[str, ...] = ("100",)):
    make = Factory(now_uow())
    staff = make.user(roles=("admin",))
    shop = open_shop(now_uow(), make, staff)
    card = make.card(make.user(), balance="1000")
    made = [
        payments.create_payment(
            now_uow(), actor=shop.api, merchant=shop.merchant.id,
            amount=Money.of_major(major, "USD"), card=card_details(card),
            idempotency_key=new_key(),
        )
        for major in payments_of
    ]  # fmt: skip
    payouts.set_bank_account(now_uow(), actor=shop.owner, merchant=shop.merchant.id, bank=BANK)
    return shop, made


def payout_job(engine: sa.Engine) -> dict:
    (row,) = fetch(engine, "SELECT payload FROM jobs WHERE kind = :k", k=payouts.PAY_JOB)
    return row.payload


def test_payouts_made_at_once_take_each_transaction_once(now_uow, committing_engine):
    shop, made = funded_shop(now_uow, payments_of=("100", "50", "25"))

    def pay_out(_: int) -> payouts.PayoutView:
        return payouts.create_payout(now_uow(), actor=shop.owner, merchant=shop.merchant.id,
                                     idempotency_key=new_key())  # fmt: skip

    outcomes = run_together(8, pay_out)
    assert error_kinds(outcomes) == Counter({"balance_insufficient": 7})
    (won,) = [o.value for o in outcomes if o.error is None]
    assert won.amount == sum(p.amount - p.fee for p in made)
    rows = fetch(committing_engine, "SELECT payout_id FROM balance_transactions"
                 " WHERE type = 'payment'")  # fmt: skip
    assert len({r.payout_id for r in rows}) == 1 and rows[0].payout_id is not None
    assert_reconciled(now_uow())


def test_a_refund_racing_a_payout_never_overdraws_the_balance(now_uow, committing_engine):
    for _ in range(5):
        race_refund_and_payout(now_uow, committing_engine)


def race_refund_and_payout(now_uow, engine: sa.Engine) -> None:
    shop, (paid,) = funded_shop(now_uow)

    def act(i: int):
        if i == 0:
            return payouts.create_payout(now_uow(), actor=shop.owner, merchant=shop.merchant.id,
                                         idempotency_key=new_key())  # fmt: skip
        return payments.create_refund(now_uow(), actor=shop.api, merchant=shop.merchant.id,
                                      payment=paid.id, idempotency_key=new_key(),
                                      amount=paid.amount - paid.fee)  # fmt: skip

    outcomes = run_together(2, act)
    # One of the two wins; the other finds the money gone.
    assert error_kinds(outcomes) == Counter({"balance_insufficient": 1}), outcomes
    (balance,) = fetch(engine, "SELECT posted_minor FROM accounts WHERE merchant_id = :m",
                       m=shop.merchant.id)  # fmt: skip
    assert balance.posted_minor == 0
    assert_reconciled(now_uow())


def processor_rows(engine: sa.Engine) -> list[sa.Row]:
    return fetch(engine, "SELECT idempotency_key, amount_minor, outcome"
                 " FROM demo_processor_requests WHERE operation = 'payout'")  # fmt: skip


def settled_once(now_uow, engine: sa.Engine, shop, payout: payouts.PayoutView) -> None:
    got = payouts.get_payout(now_uow(), actor=shop.owner, merchant=shop.merchant.id,
                             payout=payout.id)  # fmt: skip
    assert got.status == "paid"
    assert [tuple(r) for r in processor_rows(engine)] == [(payout.id, payout.amount, "paid")]
    events = fetch(engine, "SELECT type FROM events WHERE type LIKE 'payout.%' ORDER BY id")
    assert [e.type for e in events] == ["payout.created", "payout.paid"]
    (cleared,) = fetch(engine, "SELECT sum(p.amount_minor) AS total FROM postings p"
                       " JOIN accounts a ON a.id = p.account_id AND a.kind = 'payouts'"
                       " AND a.currency = 'USD'")  # fmt: skip
    assert cleared.total == payout.amount
    assert_reconciled(now_uow())


def test_two_workers_pay_a_payout_once(now_uow, committing_engine):
    shop, _ = funded_shop(now_uow)
    made = payouts.create_payout(now_uow(), actor=shop.owner, merchant=shop.merchant.id,
                                 idempotency_key=new_key())  # fmt: skip
    payload = payout_job(committing_engine)
    outcomes = run_together(2, lambda i: payouts.pay(now_uow(), payload))
    assert all(o.error is None for o in outcomes), outcomes
    settled_once(now_uow, committing_engine, shop, made)


class Blocking:
    """The demo processor, held up inside the call until released (a slow bank)."""

    def __init__(self) -> None:
        self.inside = threading.Event()
        self.release = threading.Event()

    def pay_out(self, uow: UnitOfWork, **kw) -> str:
        reference = processor.DemoProcessor().pay_out(uow, **kw)
        self.inside.set()
        assert self.release.wait(30)
        return reference


def test_a_lease_lost_mid_call_pays_once(now_uow, committing_engine, monkeypatch):
    shop, _ = funded_shop(now_uow)
    made = payouts.create_payout(now_uow(), actor=shop.owner, merchant=shop.merchant.id,
                                 idempotency_key=new_key())  # fmt: skip
    (job,) = fetch(committing_engine, "SELECT id, payload FROM jobs WHERE kind = :k",
                   k=payouts.PAY_JOB)  # fmt: skip
    slow = Blocking()
    monkeypatch.setattr(processor, "payout_processor", lambda uow: slow)
    # Worker A holds the job and is inside the processor call when its lease runs out ...
    with committing_engine.begin() as conn:
        conn.execute(sa.text("UPDATE jobs SET status = 'running', locked_by = 'A',"
                             " locked_until = now() + interval '1 minute' WHERE id = :id"),
                     {"id": job.id})  # fmt: skip

    def worker_a() -> None:
        with jobs.running(job.id, "A", 60):
            payouts.pay(now_uow(), job.payload)

    a = threading.Thread(target=worker_a, daemon=True)
    a.start()
    assert slow.inside.wait(30)
    (row,) = fetch(committing_engine, "SELECT status FROM payouts")
    assert row.status == "processing"  # committed before the call
    # ... worker B takes the job over and runs it to the end with the same idempotency key.
    with committing_engine.begin() as conn:
        conn.execute(sa.text("UPDATE jobs SET locked_by = 'B' WHERE id = :id"), {"id": job.id})
    monkeypatch.setattr(processor, "payout_processor", lambda uow: processor.DemoProcessor())
    with jobs.running(job.id, "B", 60):
        payouts.pay(now_uow(), job.payload)
    slow.release.set()
    a.join(30)
    assert not a.is_alive()
    settled_once(now_uow, committing_engine, shop, made)
    # A worker that finds its lease gone before calling out stops without calling.
    with pytest.raises(jobs.LeaseLost), jobs.running(job.id, "A", 60):
        jobs.renew_lease(now_uow())


def test_a_worker_killed_between_the_answer_and_the_settle_pays_once(
    now_uow, committing_engine, monkeypatch
):
    shop, _ = funded_shop(now_uow)
    made = payouts.create_payout(now_uow(), actor=shop.owner, merchant=shop.merchant.id,
                                 idempotency_key=new_key())  # fmt: skip
    payload = payout_job(committing_engine)

    class Killed(BaseException):
        pass

    class DiesAfterTheCall:
        def pay_out(self, uow: UnitOfWork, **kw) -> str:
            processor.DemoProcessor().pay_out(uow, **kw)
            raise Killed  # the process is gone before it writes the answer down

    monkeypatch.setattr(processor, "payout_processor", lambda uow: DiesAfterTheCall())
    with pytest.raises(Killed):
        payouts.pay(now_uow(), payload)
    (row,) = fetch(committing_engine, "SELECT status FROM payouts")
    assert row.status == "processing"
    monkeypatch.setattr(processor, "payout_processor", lambda uow: processor.DemoProcessor())
    payouts.pay(now_uow(), payload)  # the job runs again after its lease expired
    settled_once(now_uow, committing_engine, shop, made)
