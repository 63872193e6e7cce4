"""A worker process killed with SIGKILL in the middle of a batch of payouts, after the
processor paid one and before the worker wrote that down: another worker, once the leases have
run out, finishes the batch. Every payout is paid exactly once (one request per payout at the
processor, one ``payout.paid`` each, the clearing account holds each amount once) and the ledger
check passes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

from portal.domain.money import Money
from portal.services.ledger.reconciliation import reconcile
from portal.services.merchants import payments, payouts
from portal.services.shared.uow import UnitOfWork
from portal.worker import Worker
from tests.conftest import Factory, new_key
from tests.merchants.conftest import card_details, open_shop
from tests.merchants.test_payouts import BANK

pytestmark = pytest.mark.concurrency

SHOPS = 5
#: The doomed worker: the real worker and demo processor, except that the processor's third
#: answer is never written down (the process is killed while it "thinks").
WORKER_SCRIPT = textwrap.dedent(
    """
    import time
    from portal import create_app
    from portal.services.shared import processor
    from portal.web.uow import make_uow
    from portal.worker import Worker

    calls = []

    class Slow(processor.DemoProcessor):
        def pay_out(self, uow, **kw):
            reference = super().pay_out(uow, **kw)
            calls.append(kw["idempotency_key"])
            if len(calls) == 3:
                print("paid", kw["idempotency_key"], flush=True)
                time.sleep(600)
            return reference

    processor.payout_processor = lambda uow: Slow()
    app = create_app()
    Worker(lambda: make_uow(app), lease_seconds=2.0, batch=10, worker_id="doomed").run_once()
    """
)


def test_a_worker_killed_mid_batch_pays_every_payout_once(app, committing_engine):
    factory = sessionmaker(bind=committing_engine, expire_on_commit=False, autoflush=False)
    settings = replace(app.config["SERVICE_SETTINGS"], settlement_delay_days=0)

    def new_uow() -> UnitOfWork:
        return UnitOfWork(factory, settings)

    make = Factory(new_uow())
    staff = make.user(roles=("admin",))
    card = make.card(make.user(), balance="1000")
    made = []
    for n in range(SHOPS):
        shop = open_shop(new_uow(), make, staff, name=f"Shop {n}")
        payments.create_payment(new_uow(), actor=shop.api, merchant=shop.merchant.id,
                                amount=Money.of_major(str(20 + n), "USD"),
                                card=card_details(card), idempotency_key=new_key())  # fmt: skip
        payouts.set_bank_account(new_uow(), actor=shop.owner, merchant=shop.merchant.id,
                                 bank=BANK)  # fmt: skip
        made.append(payouts.create_payout(new_uow(), actor=shop.owner,
                                          merchant=shop.merchant.id,
                                          idempotency_key=new_key()))  # fmt: skip

    env = {**os.environ, "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
           "PORTAL_ENV": "test", "PORTAL_LOG_FORMAT": "off"}  # fmt: skip
    with subprocess.Popen(
        [sys.executable, "-c", WORKER_SCRIPT], env=env, stdout=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().split()
            assert line[:1] == ["paid"], line
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
    with committing_engine.connect() as conn:
        states = dict(conn.execute(sa.text(
            "SELECT status, count(*) FROM payouts GROUP BY status")).all())  # fmt: skip
        (stuck,) = conn.execute(sa.text("SELECT status FROM payouts WHERE public_id = :p"),
                                {"p": line[1]}).scalars()  # fmt: skip
    assert states.get("paid") == 2 and stuck == "processing"  # paid at the bank, not here

    survivor = Worker(new_uow, worker_id="survivor", lease_seconds=30.0)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        survivor.run_once()
        with committing_engine.connect() as conn:
            done = conn.execute(sa.text(
                "SELECT count(*) FROM payouts WHERE status = 'paid'")).scalar_one()  # fmt: skip
        if done == SHOPS:
            break
        time.sleep(0.3)

    with committing_engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT p.public_id, p.status, p.amount_minor,"
            " (SELECT count(*) FROM demo_processor_requests r"
            "  WHERE r.idempotency_key = p.public_id) AS asked,"
            " (SELECT count(*) FROM events e WHERE e.type = 'payout.paid'"
            "  AND e.data->'object'->>'id' = p.public_id) AS told"
            " FROM payouts p ORDER BY p.id")).all()  # fmt: skip
        cleared = conn.execute(sa.text(
            "SELECT sum(p.amount_minor) FROM postings p JOIN accounts a ON a.id = p.account_id"
            " WHERE a.kind = 'payouts' AND a.currency = 'USD'")).scalar_one()  # fmt: skip
    assert [(r.public_id, r.status, r.asked, r.told) for r in rows] == [
        (p.id, "paid", 1, 1) for p in made
    ]
    assert cleared == sum(p.amount for p in made)
    report = reconcile(new_uow())
    assert report.ok, report.violations
