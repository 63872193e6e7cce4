"""The demo merchants: two active merchants with working keys, a pending application, and
four weeks of payments of every outcome, made through the services and reconciled."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

from portal.demo import seed_demo
from portal.demo_merchants import seed_merchants, summary_lines
from portal.services.ledger.reconciliation import reconcile
from portal.services.merchants import keys
from portal.services.shared.uow import UnitOfWork

NOW = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)


def test_demo_merchants_take_payments_of_every_outcome(app, connection):
    factory = app.extensions["portal.session_factory"]
    settings = app.config["SERVICE_SETTINGS"]

    def make_uow(clock):
        return UnitOfWork(factory, settings, clock=clock)

    seed_demo(make_uow, now=NOW, seed=7)
    summary = seed_merchants(make_uow, now=NOW, seed=7)

    states = dict(connection.execute(sa.text("SELECT name, status FROM merchants")).all())
    assert states == {"Kopi Senja": "active", "Gadget Hub": "active", "Batik Lestari": "pending"}
    assert {"succeeded", "canceled", "declined"} <= set(summary.payments)
    assert summary.payments["succeeded"] > 100 and summary.refunds > 0
    statuses = {s for (s,) in connection.execute(sa.text("SELECT DISTINCT status FROM payments"))}
    assert {"succeeded", "canceled", "requires_payment_method"} <= statuses
    assert summary.checkouts == {"complete": 8, "expired": 2, "open": 2}
    paid = connection.execute(
        sa.text("SELECT count(*) FROM payments WHERE checkout_session_id IS NOT NULL")
    ).scalar_one()
    assert paid == 8
    partial = connection.execute(
        sa.text("SELECT count(*) FROM payments WHERE received_minor BETWEEN 1 AND amount_minor - 1")
    ).scalar_one()
    assert partial > 0
    # The printed keys work; the stored rows hold only their HMAC.
    uow = make_uow(lambda: NOW)
    for _, secret in summary.keys:
        assert keys.authenticate_api_key(uow, secret=secret).actor.id is not None
        assert (
            connection.execute(
                sa.text("SELECT count(*) FROM api_keys WHERE prefix = :p"), {"p": secret[:12]}
            ).scalar_one()
            == 1
        )
    lines = summary_lines(summary, show_secrets=False)
    assert not any(secret in line for line in lines for _, secret in summary.keys)
    assert any(summary.keys[0][1] in line for line in summary_lines(summary, show_secrets=True))
    # Daily payouts of what had settled, each paid once; what is left is recent or pending.
    rows = connection.execute(sa.text(
        "SELECT status, count(*) AS n FROM payouts GROUP BY status")).all()  # fmt: skip
    assert dict(rows) == {"paid": summary.payouts} and summary.payouts > 20
    banked = connection.execute(
        sa.text("SELECT count(*) FROM merchants WHERE bank_ciphertext IS NOT NULL")
    ).scalar_one()
    assert banked == 2
    report = reconcile(uow)
    assert report.ok, report.violations
