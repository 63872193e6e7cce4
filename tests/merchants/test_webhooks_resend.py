"""Resending a delivery and replaying an endpoint's failed deliveries: the same event id goes
out again, signed for both libraries; a delivery still being retried is refused."""

from __future__ import annotations

from datetime import timedelta

import pytest

from portal.domain.errors import InvalidInput
from portal.extensions import limiter
from portal.services.merchants import webhooks
from tests.api.test_auth_api import client_for
from tests.merchants.test_webhooks import (
    Answer,
    deliveries,
    endpoint,
    hooks_shop,  # noqa: F401 (a fixture)
    pay,
    receiver,  # noqa: F401 (a fixture)
    run_worker,
    verify_both,
)


def test_resend_sends_the_same_event_again(uow, make, hooks_shop, receiver):  # noqa: F811
    we = endpoint(uow, hooks_shop, receiver.url, ("payment.succeeded",))
    pay(uow, hooks_shop, make.card(make.user(), balance="100"))
    run_worker(lambda: uow)
    (first,) = receiver.received
    (done,) = deliveries(uow, hooks_shop, we)
    assert done.status == "delivered"
    again = webhooks.resend_delivery(uow, actor=hooks_shop.api, merchant=hooks_shop.merchant.id,
                                     endpoint=we.id, delivery=done.id)  # fmt: skip
    assert again.status == "pending"
    assert run_worker(lambda: uow) == 1
    second = receiver.received[1]
    assert second.headers["webhook-id"] == first.headers["webhook-id"]
    assert verify_both(we.secret, second)["id"] == done.event
    (after,) = deliveries(uow, hooks_shop, we)
    assert (after.status, after.attempts) == ("delivered", 2)


def test_a_pending_delivery_is_not_resent(uow, make, hooks_shop, receiver):  # noqa: F811
    we = endpoint(uow, hooks_shop, receiver.url, ("payment.succeeded",))
    receiver.answer(Answer(500))
    pay(uow, hooks_shop, make.card(make.user(), balance="100"))
    run_worker(lambda: uow)
    (pending,) = deliveries(uow, hooks_shop, we)
    with pytest.raises(InvalidInput) as err:
        webhooks.resend_delivery(uow, actor=hooks_shop.api, merchant=hooks_shop.merchant.id,
                                 endpoint=we.id, delivery=pending.id)  # fmt: skip
    assert err.value.code == "delivery_pending"


def test_replay_failed_since_through_the_api(app, connection, uow, make, hooks_shop, receiver,  # noqa: F811
                                             clock):  # fmt: skip
    we = endpoint(uow, hooks_shop, receiver.url, ("payment.succeeded",))
    receiver.default = Answer(500)
    pay(uow, hooks_shop, make.card(make.user(), balance="100"))
    started = clock.now
    for _ in range(len(webhooks.RETRY_SCHEDULE) + 1):  # every attempt answered 500
        run_worker(lambda: uow)
        clock.advance(hours=14)
    (failed,) = deliveries(uow, hooks_shop, we)
    assert failed.status == "failed"
    tried = len(receiver.received)
    receiver.default = Answer(200)  # the receiver is fixed; its owner turns the endpoint back on
    webhooks.update_endpoint(uow, actor=hooks_shop.api, merchant=hooks_shop.merchant.id,
                             endpoint=we.id, status="enabled")  # fmt: skip
    limiter.reset()
    api = client_for(app)
    headers = {"Authorization": f"Bearer {hooks_shop.key.secret}"}
    log = api.get(f"/api/v1/webhook_endpoints/{we.id}/deliveries", headers=headers).get_json()
    assert log["data"][0]["status"] == "failed" and len(log["data"][0]["log"]) == tried
    since = int((started - timedelta(minutes=1)).timestamp())
    replayed = api.post(f"/api/v1/webhook_endpoints/{we.id}/replay_failed", headers=headers,
                        json={"since": since})  # fmt: skip
    assert replayed.status_code == 200, replayed.get_data(as_text=True)
    assert replayed.get_json()["queued"] == 1
    run_worker(lambda: uow)
    assert len(receiver.received) == tried + 1
    (done,) = deliveries(uow, hooks_shop, we)
    assert done.status == "delivered"
    later = int((clock.now + timedelta(minutes=1)).timestamp())
    none = api.post(f"/api/v1/webhook_endpoints/{we.id}/replay_failed", headers=headers,
                    json={"since": later}).get_json()  # fmt: skip
    assert none["queued"] == 0
