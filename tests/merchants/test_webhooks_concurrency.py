"""Two workers running the delivery handler for the same event at the same moment, on
connections that commit for real: the receiver gets it once."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from portal.domain.money import Money
from portal.services.merchants import payments, webhooks
from tests.concurrency.helpers import run_together
from tests.conftest import Factory, new_key
from tests.merchants.conftest import card_details, open_shop
from tests.merchants.test_webhooks import ALL_SCOPES, Answer, Receiver

pytestmark = pytest.mark.concurrency


def test_two_workers_deliver_an_event_once(real_uow, committing_engine):
    receiver = Receiver()
    receiver.default = Answer(200, b"ok", delay=0.5)  # both are running while one is sending
    try:
        make = Factory(real_uow())
        staff = make.user(roles=("admin",))
        shop = open_shop(real_uow(), make, staff, scopes=ALL_SCOPES)
        webhooks.create_endpoint(real_uow(), actor=shop.api, merchant=shop.merchant.id,
                                 url=receiver.url, enabled_events=["payment.created"])  # fmt: skip
        payments.create_payment(
            real_uow(), actor=shop.api, merchant=shop.merchant.id, amount=Money(1000, "USD"),
            card=card_details(make.card(make.user(), balance="100")), idempotency_key=new_key(),
        )  # fmt: skip
        with committing_engine.connect() as conn:
            (payload,) = conn.execute(
                sa.text("SELECT payload FROM jobs WHERE kind = :k"), {"k": webhooks.JOB_KIND}
            ).scalars()
        outcomes = run_together(2, lambda i: webhooks.deliver(real_uow(), payload))
        assert all(o.error is None for o in outcomes), [o.error for o in outcomes]
        assert sorted(str(o.value) for o in outcomes) == ["None", "delivered"]
        assert len(receiver.received) == 1
        # And once more, later, it is not sent again.
        assert webhooks.deliver(real_uow(), payload) is None
        assert len(receiver.received) == 1
        with committing_engine.connect() as conn:
            row = conn.execute(sa.text(
                "SELECT status, attempts, (SELECT count(*) FROM webhook_attempts) AS logged"
                " FROM webhook_deliveries")).one()  # fmt: skip
        assert (row.status, row.attempts, row.logged) == ("delivered", 1, 1)
    finally:
        receiver.close()
