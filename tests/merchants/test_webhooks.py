"""Webhooks against a real HTTP receiver on 127.0.0.1: every payment event arrives, signed so
that both the ``standardwebhooks`` package and ``stripe.Webhook.construct_event`` verify it (and
refuse a tampered body or a stale timestamp); failures are retried later with the same event id;
a 410 disables the endpoint, as do five days of failures; redirects are not followed; a
rolled-back change delivers nothing; private addresses are refused in production, at
registration and again at delivery (DNS rebinding)."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import stripe
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from portal.domain.errors import Forbidden, InvalidInput, NotFound
from portal.domain.money import Money
from portal.services.merchants import events, keys, merchants, payments, webhooks
from portal.services.shared.uow import UnitOfWork
from portal.worker import Worker
from tests.api.test_auth_api import client_for
from tests.conftest import new_key
from tests.merchants.conftest import card_details, open_shop

ALL_SCOPES = ("payments:read", "payments:write", "refunds:write", "webhooks:manage")


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Answer:
    status: int = 200
    body: bytes = b"ok"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


class Receiver:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.script: deque[Answer] = deque()
        self.default = Answer()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver.received.append(Received(self.path, dict(self.headers), body))
                    answer = receiver.script.popleft() if receiver.script else receiver.default
                if answer.delay:
                    time.sleep(answer.delay)
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hooks/portal"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, *answers: Answer) -> None:
        self.script.extend(answers)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def hooks_shop(uow, make, staff):
    return open_shop(uow, make, staff, scopes=ALL_SCOPES)


def endpoint(uow, shop, url, events_=("*",)):
    return webhooks.create_endpoint(uow, actor=shop.api, merchant=shop.merchant.id, url=url,
                                    enabled_events=list(events_))  # fmt: skip


def pay(uow, shop, card, amount=1000, **kw):
    return payments.create_payment(
        uow, actor=shop.api, merchant=shop.merchant.id, amount=Money(amount, "USD"),
        card=card_details(card), idempotency_key=new_key(), **kw,
    )  # fmt: skip


def run_worker(make_uow) -> int:
    """One batch of due jobs, through the real worker."""
    return Worker(make_uow, worker_id="test-worker").run_once()


def verify_both(secret: str, r: Received) -> dict:
    """The delivery as both libraries verify it (each raises when it does not)."""
    standard = Webhook(secret).verify(r.body, r.headers)
    stripe_event = stripe.Webhook.construct_event(
        r.body.decode(), r.headers["Portal-Signature"], secret
    )
    assert standard == json.loads(r.body) and stripe_event["id"] == standard["id"]
    return standard


def refused_by_both(secret: str, body: bytes, headers: dict[str, str]) -> None:
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, headers)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body.decode(), headers["Portal-Signature"], secret)


def deliveries(uow, shop, we):
    return webhooks.list_deliveries(uow, actor=shop.api, merchant=shop.merchant.id,
                                    endpoint=we.id, limit=100)  # fmt: skip


def test_every_payment_event_arrives_signed_for_both_libraries(app, uow, make, hooks_shop,
                                                               receiver):  # fmt: skip
    shop = hooks_shop
    we = endpoint(uow, shop, receiver.url)
    assert we.secret is not None and we.secret.startswith("whsec_")
    assert len(base64.b64decode(we.secret.removeprefix("whsec_"))) == 32
    card = make.card(make.user(), balance="100")
    pay(uow, shop, card)
    held = pay(uow, shop, card, 500, capture_method="manual")
    payments.capture_payment(uow, actor=shop.api, merchant=shop.merchant.id, payment=held.id,
                             idempotency_key=new_key(), amount_to_capture=400)  # fmt: skip
    other = pay(uow, shop, card, 300, capture_method="manual")
    payments.cancel_payment(uow, actor=shop.api, merchant=shop.merchant.id, payment=other.id,
                            idempotency_key=new_key(), reason="abandoned")  # fmt: skip
    with pytest.raises(payments.CardDeclined):
        pay(uow, shop, card, 999_999)
    payments.create_refund(uow, actor=shop.api, merchant=shop.merchant.id, payment=held.id,
                           idempotency_key=new_key(), amount=100)  # fmt: skip
    assert receiver.received == []  # nothing is sent by the request itself: the worker sends

    while run_worker(lambda: uow):
        pass
    got = [verify_both(we.secret, r) for r in receiver.received]
    assert sorted(e["type"] for e in got) == sorted([
        "payment.created", "payment.succeeded",
        "payment.created", "payment.requires_capture", "payment.succeeded",
        "payment.created", "payment.requires_capture", "payment.canceled",
        "payment.created", "payment.failed",
        "refund.created", "refund.succeeded",
    ])  # fmt: skip
    assert {e["type"] for e in got} >= {t for t in events.TYPES if t.startswith("payment.")}
    for r, e in zip(receiver.received, got, strict=True):
        assert r.path == "/hooks/portal" and r.headers["webhook-id"] == e["id"]
        assert r.headers["Content-Type"] == "application/json"
    # The body is the event exactly as the events API answers it.
    api = client_for(app)
    answered = api.get(f"/api/v1/events/{got[0]['id']}",
                       headers={"Authorization": f"Bearer {shop.key.secret}"})  # fmt: skip
    assert answered.get_json() == got[0]
    assert {d.status for d in deliveries(uow, shop, we)} == {"delivered"}
    # Endpoints only receive the types they chose.
    receiver.received.clear()
    refunds_only = endpoint(uow, shop, receiver.url, ("refund.created",))
    paid = pay(uow, shop, card, 700)
    payments.create_refund(uow, actor=shop.api, merchant=shop.merchant.id, payment=paid.id,
                           idempotency_key=new_key(), amount=100)  # fmt: skip
    while run_worker(lambda: uow):
        pass
    to_refunds_only = [r for r in receiver.received
                       if webhooks.sign([refunds_only.secret], r.headers["webhook-id"],
                                        int(r.headers["webhook-timestamp"]), r.body)
                       ["webhook-signature"] == r.headers["webhook-signature"]]  # fmt: skip
    assert [json.loads(r.body)["type"] for r in to_refunds_only] == ["refund.created"]
    assert len(receiver.received) == 4 + 1


def test_a_tampered_body_or_a_stale_timestamp_fails_both(uow, make, hooks_shop, receiver, clock):
    we = endpoint(uow, hooks_shop, receiver.url)
    pay(uow, hooks_shop, make.card(make.user(), balance="100"))
    run_worker(lambda: uow)
    good = receiver.received[0]
    verify_both(we.secret, good)
    tampered = good.body.replace(b'"amount":1000', b'"amount":9000')
    assert tampered != good.body
    refused_by_both(we.secret, tampered, good.headers)
    refused_by_both(webhooks.new_secret(), good.body, good.headers)  # another secret
    # A delivery signed ten minutes ago (the worker's clock) is refused by both.
    receiver.received.clear()
    clock.advance(minutes=-10)
    pay(uow, hooks_shop, make.card(make.user(), balance="100"))
    run_worker(lambda: uow)
    stale = receiver.received[0]
    assert int(stale.headers["webhook-timestamp"]) < time.time() - 500
    refused_by_both(we.secret, stale.body, stale.headers)


def test_rotation_signs_with_both_secrets_during_the_overlap(uow, make, hooks_shop, receiver,
                                                             clock):  # fmt: skip
    shop = hooks_shop
    we = endpoint(uow, shop, receiver.url)
    rotated = webhooks.rotate_secret(uow, actor=shop.api, merchant=shop.merchant.id,
                                     endpoint=we.id, overlap_hours=24)  # fmt: skip
    assert rotated.secret and rotated.secret != we.secret
    assert rotated.previous_secret_expires_at is not None
    assert webhooks.get_endpoint(uow, actor=shop.api, merchant=shop.merchant.id,
                                 endpoint=we.id).secret is None  # fmt: skip
    card = make.card(make.user(), balance="100")
    pay(uow, shop, card)
    run_worker(lambda: uow)
    both = receiver.received[0]
    assert len(both.headers["webhook-signature"].split(" ")) == 2
    assert both.headers["Portal-Signature"].count("v1=") == 2
    verify_both(we.secret, both)
    verify_both(rotated.secret, both)
    # After the overlap only the new secret signs (stripe's tolerance is the clock's concern:
    # pass a long one, since the worker's clock moved a day on).
    receiver.received.clear()
    clock.advance(hours=25)
    pay(uow, shop, card)
    run_worker(lambda: uow)
    later = receiver.received[0]
    assert later.headers["Portal-Signature"].count("v1=") == 1
    stripe.Webhook.construct_event(later.body.decode(), later.headers["Portal-Signature"],
                                   rotated.secret, tolerance=10**6)  # fmt: skip
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(later.body.decode(), later.headers["Portal-Signature"],
                                       we.secret, tolerance=10**6)  # fmt: skip
    with pytest.raises(InvalidInput) as too_long:
        webhooks.rotate_secret(uow, actor=shop.api, merchant=shop.merchant.id, endpoint=we.id,
                               overlap_hours=24 * 7 + 1)  # fmt: skip
    assert too_long.value.param == "overlap_hours"


def test_a_failed_delivery_is_retried_later_with_the_same_event_id(uow, make, hooks_shop,
                                                                   receiver, clock):  # fmt: skip
    we = endpoint(uow, hooks_shop, receiver.url)
    receiver.answer(Answer(500, b"x" * 5000), Answer(200), Answer(200, b"thanks"))
    pay(uow, hooks_shop, make.card(make.user(), balance="100"))
    run_worker(lambda: uow)
    assert len(receiver.received) == 2  # payment.created answered 500, payment.succeeded 200
    failed_id = receiver.received[0].headers["webhook-id"]
    (pending,) = [d for d in deliveries(uow, hooks_shop, we) if d.status == "pending"]
    assert pending.event == failed_id and pending.attempts == 1
    (attempt,) = pending.log
    assert attempt.status_code == 500 and attempt.error == "answered 500"
    assert len(attempt.response_body) == webhooks.RESPONSE_LIMIT
    assert pending.next_attempt_at is not None
    assert 54 <= (pending.next_attempt_at - attempt.attempted_at).total_seconds() <= 66
    assert run_worker(lambda: uow) == 0  # not due yet
    clock.advance(minutes=2)
    assert run_worker(lambda: uow) == 1
    assert len(receiver.received) == 3
    again = receiver.received[2]
    assert again.headers["webhook-id"] == failed_id and again.body == receiver.received[0].body
    verify_both(we.secret, again)
    (done,) = [d for d in deliveries(uow, hooks_shop, we) if d.event == failed_id]
    assert done.status == "delivered" and done.attempts == 2
    assert [a.status_code for a in done.log] == [500, 200] and done.log[1].response_body == "thanks"


def test_a_receiver_that_is_down_gets_the_event_later(uow, make, hooks_shop, clock):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    we = endpoint(uow, hooks_shop, f"http://127.0.0.1:{port}/hooks")
    webhooks.update_endpoint(uow, actor=hooks_shop.api, merchant=hooks_shop.merchant.id,
                             endpoint=we.id, enabled_events=["payment.created"])  # fmt: skip
    pay(uow, hooks_shop, make.card(make.user(), balance="100"))
    run_worker(lambda: uow)
    (pending,) = deliveries(uow, hooks_shop, we)
    assert pending.status == "pending" and pending.log[0].status_code is None
    assert "ConnectionError" in (pending.log[0].error or "")
    server_up = Receiver()
    try:
        webhooks.update_endpoint(uow, actor=hooks_shop.api, merchant=hooks_shop.merchant.id,
                                 endpoint=we.id, url=server_up.url)  # fmt: skip
        clock.advance(minutes=2)
        run_worker(lambda: uow)
        assert [json.loads(r.body)["id"] for r in server_up.received] == [pending.event]
    finally:
        server_up.close()


def test_a_410_disables_the_endpoint_for_its_owner_to_see(uow, make, hooks_shop, receiver):
    we = endpoint(uow, hooks_shop, receiver.url)
    receiver.default = Answer(410, b"gone")
    pay(uow, hooks_shop, make.card(make.user(), balance="100"))
    run_worker(lambda: uow)
    assert len(receiver.received) == 1  # the second event is not sent to a disabled endpoint
    now = webhooks.get_endpoint(uow, actor=hooks_shop.api, merchant=hooks_shop.merchant.id,
                                endpoint=we.id)  # fmt: skip
    assert (now.status, now.disabled_reason, now.needs_attention) == ("disabled", "gone", True)
    assert {d.status for d in deliveries(uow, hooks_shop, we)} == {"failed"}
    pay(uow, hooks_shop, make.card(make.user(), balance="100"))
    assert len(deliveries(uow, hooks_shop, we)) == 2  # no delivery for a disabled endpoint
    enabled = webhooks.update_endpoint(uow, actor=hooks_shop.owner, merchant=hooks_shop.merchant.id,
                                       endpoint=we.id, status="enabled")  # fmt: skip
    assert (enabled.status, enabled.disabled_reason, enabled.needs_attention) == (
        "enabled", None, False)  # fmt: skip


def test_five_days_of_failures_disable_the_endpoint(uow, make, hooks_shop, receiver, clock):
    we = endpoint(uow, hooks_shop, receiver.url, ("payment.created",))
    receiver.default = Answer(503, b"down")
    card = make.card(make.user(), balance="100")
    pay(uow, hooks_shop, card)
    run_worker(lambda: uow)
    started = clock.now
    while (d := deliveries(uow, hooks_shop, we)[0]).status == "pending":
        assert d.next_attempt_at is not None
        clock.now = d.next_attempt_at + timedelta(seconds=1)
        assert run_worker(lambda: uow) == 1
    # The retries ran out after about three days (the schedule with its jitter).
    assert timedelta(hours=69) < clock.now - started < timedelta(hours=86)
    (first,) = deliveries(uow, hooks_shop, we)
    assert first.status == "failed" and first.attempts == len(webhooks.RETRY_SCHEDULE) + 1
    state = webhooks.get_endpoint(uow, actor=hooks_shop.api, merchant=hooks_shop.merchant.id,
                                  endpoint=we.id)  # fmt: skip
    assert state.status == "enabled" and state.failing_since is not None
    clock.advance(days=5)
    pay(uow, hooks_shop, card)
    run_worker(lambda: uow)
    state = webhooks.get_endpoint(uow, actor=hooks_shop.api, merchant=hooks_shop.merchant.id,
                                  endpoint=we.id)  # fmt: skip
    assert (state.status, state.disabled_reason, state.needs_attention) == (
        "disabled", "failing", True)  # fmt: skip


def test_a_redirect_is_not_followed(uow, make, hooks_shop, receiver):
    we = endpoint(uow, hooks_shop, receiver.url, ("payment.created",))
    receiver.default = Answer(307, b"", {"Location": f"http://127.0.0.1:{receiver.port}/else"})
    pay(uow, hooks_shop, make.card(make.user(), balance="100"))
    run_worker(lambda: uow)
    assert [r.path for r in receiver.received] == ["/hooks/portal"]
    (d,) = deliveries(uow, hooks_shop, we)
    assert d.status == "pending" and d.log[0].status_code == 307
    assert d.log[0].error == "redirect not followed"


def test_nothing_is_delivered_for_a_change_that_was_rolled_back(uow, hooks_shop, receiver):
    we = endpoint(uow, hooks_shop, receiver.url)

    def rolled_back(u):
        events.record(u, hooks_shop.merchant.id, ("payment.created", {"id": "pay_x"}, None))
        u.flush()  # the event, its delivery and its job reach the database, then it fails
        raise RuntimeError("the change fails after its event was written")

    with pytest.raises(RuntimeError):
        uow.run(rolled_back)
    assert run_worker(lambda: uow) == 0
    assert receiver.received == [] and deliveries(uow, hooks_shop, we) == []


def production(uow: UnitOfWork) -> UnitOfWork:
    settings = replace(uow.settings, webhook_allow_private=False, allow_loopback_http=False)
    return UnitOfWork(uow._session_factory, settings, clock=uow.clock)


@pytest.mark.parametrize("url", [
    "https://10.1.2.3/hooks", "https://192.168.0.10/hooks", "https://172.16.5.4/hooks",
    "https://127.0.0.1/hooks", "https://localhost/hooks", "https://[::1]/hooks",
    "https://169.254.169.254/latest/meta-data", "https://[fd00:ec2::254]/hooks",
    "https://100.64.0.1/hooks", "https://0.0.0.0/hooks", "https://[::ffff:10.0.0.1]/hooks",
    "http://127.0.0.1:8080/hooks", "http://hooks.example.com/", "ftp://hooks.example.com/",
    "https://user:pw@hooks.example.com/", "https:///nohost",
])  # fmt: skip
def test_private_or_plain_urls_are_refused_in_production(uow, hooks_shop, url):
    prod = production(uow)
    with pytest.raises(InvalidInput) as refused:
        endpoint(prod, hooks_shop, url)
    assert refused.value.param == "url"
    assert webhooks.list_endpoints(uow, actor=hooks_shop.api,
                                   merchant=hooks_shop.merchant.id).items == ()  # fmt: skip


@pytest.fixture
def fake_dns(monkeypatch):
    """``hooks.example.test`` resolves to what the test says (other names as usual)."""
    answers = {"hooks.example.test": "93.184.215.14"}
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host in answers:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers[host], port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers


def test_the_address_is_checked_again_at_delivery(uow, make, hooks_shop, receiver, fake_dns,
                                                 clock):  # fmt: skip
    prod = production(uow)
    url = f"https://hooks.example.test:{receiver.port}/hooks/portal"
    we = endpoint(prod, hooks_shop, url, ("payment.created",))  # public when registered
    fake_dns["hooks.example.test"] = "127.0.0.1"  # then the name is pointed at the inside
    pay(prod, hooks_shop, make.card(make.user(), balance="100"))
    run_worker(lambda: prod)
    assert receiver.received == []  # never connected
    (d,) = deliveries(uow, hooks_shop, we)
    assert d.status == "pending" and d.log[0].status_code is None
    assert "127.0.0.1 (loopback)" in (d.log[0].error or "")
    fake_dns["hooks.example.test"] = "169.254.169.254"
    clock.advance(minutes=2)
    run_worker(lambda: prod)
    (d,) = deliveries(uow, hooks_shop, we)
    assert d.attempts == 2 and "169.254.169.254 (link-local)" in (d.log[1].error or "")
    assert receiver.received == []


def test_only_managers_reach_endpoints_and_secrets_are_sealed(uow, make, staff, hooks_shop,
                                                             connection):  # fmt: skip
    shop = hooks_shop
    we = endpoint(uow, shop, "https://hooks.example.com/portal")
    stored = connection.exec_driver_sql(
        "SELECT secret_ciphertext FROM webhook_endpoints WHERE public_id = %s", (we.id,)
    ).scalar_one()
    assert we.secret.encode() not in bytes(stored)
    # An owner manages them; a viewer, staff and a key without webhooks:manage do not.
    mine = webhooks.get_endpoint(uow, actor=shop.owner, merchant=shop.merchant.public_id,
                                 endpoint=we.id)  # fmt: skip
    assert mine.url == "https://hooks.example.com/portal"
    viewer = make.user()
    invite = merchants.invite_member(uow, actor=shop.owner, merchant=shop.merchant.public_id,
                                     email="viewer@example.test", role="viewer")  # fmt: skip
    assert invite is not None
    plain = keys.create_api_key(uow, actor=shop.owner, merchant=shop.merchant.public_id,
                                name="payments only")  # fmt: skip
    assert plain.secret is not None
    payments_key = keys.authenticate_api_key(uow, secret=plain.secret).actor
    for who in (payments_key, staff):
        with pytest.raises(Forbidden):
            webhooks.list_endpoints(uow, actor=who, merchant=shop.merchant.id)
    with pytest.raises(NotFound):
        webhooks.list_endpoints(uow, actor=viewer, merchant=shop.merchant.id)
    other = open_shop(uow, make, staff, name="Other", scopes=ALL_SCOPES)
    with pytest.raises(NotFound):
        webhooks.get_endpoint(uow, actor=other.api, merchant=other.merchant.id, endpoint=we.id)
    with pytest.raises(InvalidInput) as unknown:
        endpoint(uow, shop, "https://hooks.example.com/", ("payment.exploded",))
    assert unknown.value.param == "enabled_events"
    deleted = webhooks.delete_endpoint(uow, actor=shop.api, merchant=shop.merchant.id,
                                       endpoint=we.id)  # fmt: skip
    assert deleted.id == we.id
    with pytest.raises(NotFound):
        webhooks.get_endpoint(uow, actor=shop.api, merchant=shop.merchant.id, endpoint=we.id)
