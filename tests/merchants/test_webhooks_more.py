"""More webhook delivery: "send test event" (one endpoint only, signed for both libraries,
through the usual pipeline and log, never listed by the events API, limited per minute); a
receiver that hangs past the per-attempt timeout gets the event on a later attempt; at most one
attempt per endpoint is in flight, so a slow receiver gets two due deliveries one after the
other; a worker killed mid-batch loses no event and sends nothing twice but the one it was
sending (the same event id, the documented at-least-once rule)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import sqlalchemy as sa

from portal.domain.errors import Forbidden, InvalidInput, RateLimited
from portal.domain.money import Money
from portal.extensions import limiter
from portal.services.merchants import events, keys, payments, webhooks
from portal.worker import Worker
from tests.api.test_auth_api import client_for
from tests.conftest import Factory, new_key
from tests.merchants import test_webhooks as base
from tests.merchants.conftest import card_details, open_shop
from tests.merchants.test_webhooks import (
    ALL_SCOPES,
    Answer,
    Receiver,
    deliveries,
    endpoint,
    pay,
    run_worker,
    verify_both,
)

hooks_shop = base.hooks_shop
receiver = base.receiver

API = "/api/v1/webhook_endpoints"


@pytest.fixture(autouse=True)
def _fresh_limits() -> None:
    limiter.reset()


# -- send test event -----------------------------------------------------------------------------
def test_a_test_event_reaches_only_its_endpoint_signed_for_both(
    app,
    uow,
    make,
    hooks_shop,
    receiver,
    clock,
):
    shop = hooks_shop
    # It is sent even to an endpoint that takes other types: it is what the merchant asked for.
    we = endpoint(uow, shop, receiver.url, ("refund.created",))
    other = Receiver()
    try:
        endpoint(uow, shop, other.url)
        api = client_for(app)
        auth = {"Authorization": f"Bearer {shop.key.secret}"}
        sent = api.post(f"{API}/{we.id}/test", headers=auth)
        assert sent.status_code == 201, sent.get_json()
        body = sent.get_json()
        assert body["object"] == "webhook_delivery" and body["test"] is True
        assert (body["status"], body["endpoint"], body["event_type"]) == (
            "pending", we.id, "payment.succeeded")  # fmt: skip
        assert receiver.received == []  # the worker sends it, not the request
        clock.advance(seconds=5)  # the request ran on the real clock, the worker on the test's
        assert run_worker(lambda: uow) == 1
        (got,) = receiver.received
        event = verify_both(we.secret, got)
        assert event["id"] == body["event"] == got.headers["webhook-id"]
        assert event["object"] == "event" and event["type"] == "payment.succeeded"
        assert event["api_version"] == events.API_VERSION
        sample = event["data"]["object"]
        assert sample["object"] == "payment" and sample["id"] == "pay_" + "0" * 24
        assert sample["metadata"] == {"portal_test": "true"} and sample["status"] == "succeeded"
        assert sample["currency"] == "usd" and sample["net"] == sample["amount"] - sample["fee"]
        assert other.received == []  # only that endpoint
        # Logged like any delivery, marked as a test.
        (logged,) = deliveries(uow, shop, we)
        assert (logged.id, logged.status, logged.test) == (body["id"], "delivered", True)
        assert logged.log[0].status_code == 200
        listed = api.get(f"{API}/{we.id}/deliveries", headers=auth).get_json()["data"]
        assert [(d["id"], d["status"], d["test"]) for d in listed] == [
            (body["id"], "delivered", True)]  # fmt: skip
        # Not an event for reconciliation: neither listed nor readable through the events API.
        pay(uow, shop, make.card(make.user(), balance="100"))
        ids = [e["id"] for e in api.get("/api/v1/events?limit=100", headers=auth)
               .get_json()["data"]]  # fmt: skip
        assert ids and event["id"] not in ids
        assert api.get(f"/api/v1/events/{event['id']}", headers=auth).status_code == 404
        run_worker(lambda: uow)
        assert len(receiver.received) == 1  # the payment's events went to the other endpoint
        assert {json.loads(r.body)["type"] for r in other.received} == {
            "payment.created", "payment.succeeded"}  # fmt: skip
    finally:
        other.close()


def test_a_test_event_is_retried_like_any_delivery(uow, hooks_shop, receiver, clock):
    shop = hooks_shop
    we = endpoint(uow, shop, receiver.url)
    receiver.answer(Answer(503, b"not now"))
    sent = webhooks.send_test_event(uow, actor=shop.api, merchant=shop.merchant.id,
                                    endpoint=we.id)  # fmt: skip
    run_worker(lambda: uow)
    (pending,) = deliveries(uow, shop, we)
    assert (pending.id, pending.status, pending.log[0].status_code) == (sent.id, "pending", 503)
    clock.advance(minutes=2)
    run_worker(lambda: uow)
    first, again = receiver.received
    assert first.headers["webhook-id"] == again.headers["webhook-id"] == sent.event
    verify_both(we.secret, again)
    (done,) = deliveries(uow, shop, we)
    assert (done.status, done.attempts) == ("delivered", 2)


def test_test_events_need_a_manager_an_enabled_endpoint_and_are_limited(
    uow,
    make,
    staff,
    hooks_shop,
    receiver,
    clock,
):
    shop = hooks_shop
    we = endpoint(uow, shop, receiver.url)
    plain = keys.create_api_key(uow, actor=shop.owner, merchant=shop.merchant.public_id,
                                name="payments only")  # fmt: skip
    assert plain.secret is not None
    payments_key = keys.authenticate_api_key(uow, secret=plain.secret).actor
    for who in (payments_key, staff):
        with pytest.raises(Forbidden):
            webhooks.send_test_event(uow, actor=who, merchant=shop.merchant.id, endpoint=we.id)
    for _ in range(webhooks.TEST_EVENTS_PER_MINUTE):
        webhooks.send_test_event(uow, actor=shop.owner, merchant=shop.merchant.id,
                                 endpoint=we.id)  # fmt: skip
    with pytest.raises(RateLimited):
        webhooks.send_test_event(uow, actor=shop.api, merchant=shop.merchant.id, endpoint=we.id)
    assert len(deliveries(uow, shop, we)) == webhooks.TEST_EVENTS_PER_MINUTE
    clock.advance(minutes=1, seconds=1)  # a minute later it takes test events again
    webhooks.send_test_event(uow, actor=shop.api, merchant=shop.merchant.id, endpoint=we.id)
    webhooks.update_endpoint(uow, actor=shop.api, merchant=shop.merchant.id, endpoint=we.id,
                             status="disabled")  # fmt: skip
    with pytest.raises(InvalidInput) as disabled:
        webhooks.send_test_event(uow, actor=shop.api, merchant=shop.merchant.id, endpoint=we.id)
    assert disabled.value.code == "endpoint_disabled"


def test_the_test_event_call_through_the_api_refuses_what_it_should(
    app,
    uow,
    make,
    staff,
    hooks_shop,
):
    shop = hooks_shop
    we = endpoint(uow, shop, "https://hooks.example.com/portal")
    api = client_for(app)
    auth = {"Authorization": f"Bearer {shop.key.secret}"}
    assert api.post(f"{API}/we_000000000000000000000000/test", headers=auth).status_code == 404
    assert api.post(f"{API}/not-an-id/test", headers=auth).status_code == 404
    other = open_shop(uow, make, staff, name="Other", scopes=ALL_SCOPES)
    theirs = {"Authorization": f"Bearer {other.key.secret}"}
    assert api.post(f"{API}/{we.id}/test", headers=theirs).status_code == 404
    plain = open_shop(uow, make, staff, name="Plain", scopes=("payments:read",))
    forbidden = api.post(f"{API}/{we.id}/test",
                         headers={"Authorization": f"Bearer {plain.key.secret}"})  # fmt: skip
    assert forbidden.status_code == 403
    for _ in range(webhooks.TEST_EVENTS_PER_MINUTE):
        assert api.post(f"{API}/{we.id}/test", headers=auth).status_code == 201
    limited = api.post(f"{API}/{we.id}/test", headers=auth)
    assert limited.status_code == 429 and limited.get_json()["error"]["code"] == "rate_limited"
    api.post(f"{API}/{we.id}", headers=auth, json={"status": "disabled"})
    refused = api.post(f"{API}/{we.id}/test", headers=auth)
    assert refused.status_code == 422
    assert refused.get_json()["error"]["code"] == "endpoint_disabled"
    document = api.get("/api/v1/openapi.json").get_json()
    operation = document["paths"]["/api/v1/webhook_endpoints/{endpoint_id}/test"]["post"]
    assert operation["operationId"] == "send_webhook_test_event"
    assert {"201", "401", "403", "404", "422", "429"} <= set(operation["responses"])


# -- a hanging receiver ----------------------------------------------------------------------------
def test_a_receiver_that_hangs_gets_the_event_on_a_later_attempt(uow, hooks_shop, receiver,
                                                                 clock, monkeypatch):  # fmt: skip
    monkeypatch.setattr(webhooks, "READ_TIMEOUT", 0.5)  # the per-attempt wait, shortened
    shop = hooks_shop
    we = endpoint(uow, shop, receiver.url)
    receiver.answer(Answer(200, b"too late", delay=3.0))  # answers long after the timeout
    sent = webhooks.send_test_event(uow, actor=shop.api, merchant=shop.merchant.id,
                                    endpoint=we.id)  # fmt: skip
    started = time.monotonic()
    run_worker(lambda: uow)
    assert time.monotonic() - started < 2.5  # the worker gave up at the timeout
    (pending,) = deliveries(uow, shop, we)
    assert pending.status == "pending" and pending.log[0].status_code is None
    assert (pending.log[0].error or "").startswith("timed out")
    assert run_worker(lambda: uow) == 0  # not before its retry is due
    clock.advance(minutes=2)
    run_worker(lambda: uow)
    hung, later = receiver.received
    assert hung.headers["webhook-id"] == later.headers["webhook-id"] == sent.event
    verify_both(we.secret, later)
    (done,) = deliveries(uow, shop, we)
    assert (done.status, [a.status_code for a in done.log]) == ("delivered", [None, 200])


def test_a_receiver_that_drips_its_answer_cannot_hold_the_attempt_past_its_deadline(
    uow, hooks_shop, monkeypatch
):
    """Found by the fault suite: a dead worker's delivery kept its endpoint waiting a fixed
    60 s. The lease is now the attempt's bound, and the bound holds: an answer whose body comes
    a byte at a time is read until the deadline (connect + two reads), not to its end."""
    monkeypatch.setattr(webhooks, "CONNECT_TIMEOUT", 0.5)
    monkeypatch.setattr(webhooks, "READ_TIMEOUT", 0.5)
    assert webhooks.LEASE_SECONDS < 60

    class Drip(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.send_response(200)
            self.send_header("Content-Length", "40")
            self.end_headers()
            for _ in range(40):  # 40 bytes over about 12 s, each within a read's timeout
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.3)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Drip)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        shop = hooks_shop
        url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
        we = endpoint(uow, shop, url)
        webhooks.send_test_event(uow, actor=shop.api, merchant=shop.merchant.id, endpoint=we.id)
        started = time.monotonic()
        run_worker(lambda: uow)
        assert time.monotonic() - started < 8.0  # the 1.5 s deadline and one read, not 12 s
        (done,) = deliveries(uow, shop, we)
        assert done.status == "delivered" and done.log[0].status_code == 200
    finally:
        server.shutdown()
        server.server_close()


# -- one attempt in flight per endpoint, and a worker killed mid-batch ---------------------------
def _shop_paying(real_uow, receiver_url: str, count: int):
    make = Factory(real_uow())
    staff = make.user(roles=("admin",))
    shop = open_shop(real_uow(), make, staff, scopes=ALL_SCOPES)
    we = webhooks.create_endpoint(
        real_uow(), actor=shop.api, merchant=shop.merchant.id, url=receiver_url,
        enabled_events=["payment.succeeded"],
    )  # fmt: skip
    card = make.card(make.user(), balance="500")
    made = [
        payments.create_payment(
            real_uow(),
            actor=shop.api,
            merchant=shop.merchant.id,
            amount=Money(1000, "USD"),
            card=card_details(card),
            idempotency_key=new_key(),
        )  # fmt: skip
        for _ in range(count)
    ]
    return shop, we, made


def _rows(engine: sa.Engine, sql: str) -> list:
    with engine.connect() as conn:
        return list(conn.execute(sa.text(sql)))


@pytest.mark.concurrency
def test_two_due_deliveries_to_a_slow_endpoint_go_one_after_the_other(real_uow, committing_engine):
    slow = Receiver()
    slow.default = Answer(200, b"ok", delay=0.8)  # slow: each answer takes 0.8 s
    arrived: list[float] = []
    original = slow.server.RequestHandlerClass.do_POST  # type: ignore[attr-defined]

    def timed(handler) -> None:  # the slow notes when each request arrives
        arrived.append(time.monotonic())
        original(handler)

    slow.server.RequestHandlerClass.do_POST = timed  # type: ignore[attr-defined]
    stop = threading.Event()
    try:
        _shop, _we, _ = _shop_paying(real_uow, slow.url, 2)
        assert len(_rows(committing_engine, "SELECT id FROM jobs WHERE kind = 'webhook.deliver'"
                         " AND status = 'queued'")) == 2  # fmt: skip
        # Two workers, one job each: both due at once, both try to send at once.
        workers = [Worker(real_uow, batch=1, worker_id=f"w{i}") for i in range(2)]

        def loop(w: Worker) -> None:
            while not stop.is_set():
                if not w.run_once():
                    stop.wait(0.05)

        threads = [threading.Thread(target=loop, args=(w,), daemon=True) for w in workers]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            states = _rows(committing_engine, "SELECT status FROM webhook_deliveries")
            if [s.status for s in states] == ["delivered", "delivered"]:
                break
            time.sleep(0.1)
        stop.set()
        for t in threads:
            t.join(timeout=10)
        assert len(slow.received) == 2
        assert len({r.headers["webhook-id"] for r in slow.received}) == 2
        first, second = sorted(arrived)
        assert second - first >= 0.75, "the second was sent while the first was in flight"
        # The second one found the endpoint busy and waited for its turn.
        waited = _rows(committing_engine, "SELECT payload FROM jobs WHERE kind ="
                       " 'webhook.deliver' AND payload ? 'waits'")  # fmt: skip
        assert waited and all(r.payload["waits"] >= 1 for r in waited)
        jobs_left = _rows(committing_engine, "SELECT status, attempts FROM jobs"
                          " WHERE kind = 'webhook.deliver'")  # fmt: skip
        assert [(j.status, j.attempts) for j in jobs_left] == [("succeeded", 1)] * 2
    finally:
        stop.set()
        slow.close()


@pytest.mark.concurrency
def test_the_handler_refuses_to_send_while_the_endpoint_is_busy(real_uow, committing_engine):
    slow = Receiver()
    slow.default = Answer(200, b"ok", delay=1.0)
    try:
        _shop, _we, _ = _shop_paying(real_uow, slow.url, 2)
        payloads = [r.payload for r in _rows(committing_engine, "SELECT payload FROM jobs"
                    " WHERE kind = 'webhook.deliver' ORDER BY id")]  # fmt: skip
        from tests.concurrency.helpers import run_together

        outcomes = run_together(2, lambda i: webhooks.deliver(real_uow(), payloads[i]))
        assert all(o.error is None for o in outcomes), [o.error for o in outcomes]
        assert sorted(str(o.value) for o in outcomes) == ["busy", "delivered"]
        assert len(slow.received) == 1
        (waiting,) = _rows(committing_engine, "SELECT status, run_at > updated_at AS later, payload"
                           " FROM jobs WHERE payload ? 'waits'")  # fmt: skip
        assert waiting.status == "queued" and waiting.later and waiting.payload["waits"] == 1
    finally:
        slow.close()


WORKER_SCRIPT = textwrap.dedent(
    """
    from portal import create_app
    from portal.services.merchants import webhooks
    from portal.web.uow import make_uow
    from portal.worker import Worker

    webhooks.LEASE_SECONDS = 2.0  # a delivery's lease, short so the test need not wait long
    app = create_app()
    Worker(lambda: make_uow(app), lease_seconds=2.0, batch=10, worker_id="doomed").run_once()
    """
)


@pytest.mark.concurrency
def test_a_worker_killed_mid_batch_loses_nothing_and_resends_only_what_was_in_flight(
    app, real_uow, committing_engine
):
    slow = Receiver()
    slow.default = Answer(200, b"ok", delay=0.4)
    count = 5
    try:
        _shop, _we, _ = _shop_paying(real_uow, slow.url, count)
        sent = {r.public_id for r in _rows(committing_engine, "SELECT public_id FROM events"
                                           " WHERE type = 'payment.succeeded'")}  # fmt: skip
        assert len(sent) == count
        env = {**os.environ, "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
               "PORTAL_ENV": "test"}  # fmt: skip
        with subprocess.Popen([sys.executable, "-c", WORKER_SCRIPT], env=env) as proc:
            try:
                deadline = time.monotonic() + 60
                while len(slow.received) < 3 and time.monotonic() < deadline:
                    assert proc.poll() is None, "the worker ended before it was killed"
                    time.sleep(0.02)
                assert len(slow.received) == 3
                proc.send_signal(signal.SIGKILL)  # mid-batch, waiting for the third answer
                proc.wait(timeout=10)
            finally:
                if proc.poll() is None:
                    proc.kill()
        orphaned = _rows(committing_engine, "SELECT status FROM jobs WHERE kind ="
                         " 'webhook.deliver' AND status = 'running'")  # fmt: skip
        assert len(orphaned) >= 3  # the third and those not yet begun, held by the dead worker
        survivor = Worker(real_uow, worker_id="survivor")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            survivor.run_once()
            states = {r.status for r in _rows(committing_engine,
                                              "SELECT status FROM webhook_deliveries")}  # fmt: skip
            if states == {"delivered"}:
                break
            time.sleep(0.2)
        got = Counter(r.headers["webhook-id"] for r in slow.received)
        assert set(got) == sent  # no event lost
        twice = [evt for evt, n in got.items() if n > 1]
        assert len(twice) <= 1 and all(got[e] == 2 for e in twice)  # only the one in flight
        if twice:
            copies = [r.body for r in slow.received if r.headers["webhook-id"] == twice[0]]
            assert copies[0] == copies[1]  # the same event, the same id: receivers dedupe by it
            assert twice[0] == slow.received[2].headers["webhook-id"]
        rows = _rows(committing_engine, "SELECT d.status, d.attempts, count(a.id) AS logged"
                     " FROM webhook_deliveries d LEFT JOIN webhook_attempts a"
                     " ON a.delivery_id = d.id GROUP BY d.id")  # fmt: skip
        assert {(r.status, r.attempts, r.logged) for r in rows} == {("delivered", 1, 1)}
        jobs_left = _rows(committing_engine, "SELECT status FROM jobs"
                          " WHERE kind = 'webhook.deliver'")  # fmt: skip
        assert {j.status for j in jobs_left} == {"succeeded"}
    finally:
        slow.close()
