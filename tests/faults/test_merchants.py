"""The worker SIGKILLed repeatedly while it settles merchants: pays their payouts out through the
processor and delivers their webhooks (``conftest.py`` has the stack, ``test_faults.py`` the
cardholder scenarios and the checks they share).

Shops (approved merchants with a secret key, a bank account and a webhook endpoint on a receiver
in this process) take card payments through the merchant API, then ask for payouts, while the
worker is killed mid-call (a payout it holds is ``processing``: with the bank, or paid and not
yet settled) and started again. Afterwards: every acknowledged payment and payout exists once,
every payout was paid exactly once (one request at the processor, one ``payout.paid``), the
ledger verifies, no 500; every event is delivered or still due (never dropped), every delivery
the receiver got is signed with the endpoint's secret.

The delivery the worker died in keeps its lease (``webhooks.LEASE_SECONDS``, the bound of one
attempt, 40 s; not the worker's lease) and the endpoint's later deliveries wait behind it: the
suite does not wait that long; it checks each is still due (a queued job) and reports how many
wait and for how long.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.faults.conftest import Stack
from tests.faults.test_faults import SEED, Progress, check_after, make_people, share, with_faults
from tests.faults.traffic import SUITE, Answer, Client, Person, Tally, service_app

SHOPS, PAYMENTS, PAYOUTS, KILLS = 4, 4, 2, 5
BANK = ("Fault Bank", "1234 5678 9012", "Fault Shop Pte")


@dataclass
class Shop:
    merchant: str  # mer_...
    client: Client  # with the shop's secret key
    secret: str  # whsec_...
    payer: Person


class Receiver:
    """The shops' webhook endpoint: records every delivery and whether its Portal-Signature
    was made with the secret of the endpoint it came to (``/hook/<n>``)."""

    def __init__(self) -> None:
        self.secrets: dict[str, str] = {}
        self.got: list[tuple[str, str, bool]] = []  # (endpoint, event id, signature ok)
        self.lock = threading.Lock()
        #: hold_next() makes the next delivery wait for release() before it is answered.
        self._hold = False
        self.held = threading.Event()
        self._released = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                endpoint = self.path.rsplit("/", 1)[-1]
                receiver.record(endpoint, body, self.headers.get("Portal-Signature", ""))
                receiver.maybe_hold()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, endpoint: int) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook/{endpoint}"

    def record(self, endpoint: str, body: bytes, header: str) -> None:
        parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
        secret = self.secrets.get(endpoint, "")
        expected = hmac.new(secret.encode(), f"{parts.get('t')}.".encode() + body,
                            hashlib.sha256).hexdigest()  # fmt: skip
        ok = bool(secret) and hmac.compare_digest(expected, parts.get("v1", ""))
        event = json.loads(body).get("id", "?")
        with self.lock:
            self.got.append((endpoint, event, ok))

    def hold_next(self) -> None:
        with self.lock:
            self._hold, self._released = True, threading.Event()
            self.held.clear()

    def maybe_hold(self) -> None:
        with self.lock:
            hold, self._hold = self._hold, False
            released = self._released
        if hold:
            self.held.set()
            released.wait(15)

    def release(self) -> None:
        self._released.set()

    def stop(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    try:
        yield running
    finally:
        running.stop()


def open_shops(stack: Stack, payers: list[Person], receiver: Receiver) -> list[Shop]:
    """Approved merchants (staff approval has no API without a second factor: the services),
    each with a secret key, a bank account and a webhook endpoint for every event."""
    from portal.services.identity import users
    from portal.services.merchants import keys, merchants, payouts, webhooks
    from portal.services.wallet.wallet import BankAccount
    from portal.web.uow import make_uow

    rng = random.Random(SEED)
    shops = []
    with service_app(stack.database_url("portal-faults-setup"), stack.env["REDIS_URL"]) as app:
        tag = f"{rng.getrandbits(32):08x}"
        staff = users.create_user(make_uow(app), actor=SUITE, email=f"staff-{tag}@faults.test",
                                  first_name="Fault", last_name="Staff", roles=("admin",),
                                  verified=True)  # fmt: skip
        staff_actor = users.actor_for(make_uow(app), staff.id)
        for n, payer in enumerate(payers):
            made = users.create_user(make_uow(app), actor=SUITE,
                                     email=f"shop-{n}-{tag}@faults.test", first_name="Fault",
                                     last_name=f"Shop{n}", verified=True)  # fmt: skip
            owner = users.actor_for(make_uow(app), made.id)
            applied = merchants.apply(make_uow(app), actor=owner, name=f"Fault Shop {n}",
                                      website="https://shop.example",
                                      contact_email=f"shop-{n}-{tag}@faults.test",
                                      settlement_currency="USD")  # fmt: skip
            merchant = merchants.decide(make_uow(app), actor=staff_actor,
                                        merchant=applied.public_id, action="approve")  # fmt: skip
            key = keys.create_api_key(make_uow(app), actor=owner, merchant=merchant.public_id,
                                      name="server",
                                      scopes=(*keys.DEFAULT_SCOPES, "payouts:write"))  # fmt: skip
            payouts.set_bank_account(make_uow(app), actor=owner, merchant=merchant.public_id,
                                     bank=BankAccount(*BANK))  # fmt: skip
            endpoint = webhooks.create_endpoint(make_uow(app), actor=owner,
                                                merchant=merchant.public_id,
                                                url=receiver.url(n),
                                                enabled_events=["*"])  # fmt: skip
            assert key.secret is not None and endpoint.secret is not None
            receiver.secrets[str(n)] = endpoint.secret
            client = Client(stack.url, Tally(), random.Random(SEED * 31 + n), token=key.secret)
            shops.append(Shop(merchant.public_id, client, endpoint.secret, payer))
    return shops


def mid_call(conn: Any, locked_by: str) -> int:
    """Merchant payouts the worker ``locked_by`` (a LIKE pattern) holds while ``processing``."""
    row = conn.execute(
        "SELECT count(*) FROM jobs j JOIN payouts p ON p.id = (j.payload->>'payout_id')::bigint"
        " WHERE j.kind = 'merchant_payout' AND j.status = 'running' AND j.locked_by LIKE %s"
        " AND p.status = 'processing'",
        (locked_by,),
    ).fetchone()
    return int(row[0]) if row else 0


def test_worker_killed_repeatedly_during_merchant_payouts_and_webhooks(
    stack: Stack, receiver: Receiver
) -> None:
    name = "worker_killed_merchants"
    payers = make_people(stack, name, count=SHOPS, cards=1, funding=100_000)
    shops = open_shops(stack, payers, receiver)
    tally = share(payers)
    for shop in shops:
        shop.client.tally = tally
    progress = Progress(SHOPS * PAYOUTS * (PAYMENTS + 1))
    paid: list[tuple[Shop, int, Answer]] = []
    asked: list[tuple[Shop, Answer]] = []
    lock = threading.Lock()

    def trade(shop: Shop, n: int) -> None:
        rng = random.Random(SEED * 613 + n)
        card = shop.payer.issued[0]
        for _ in range(PAYOUTS):
            for _ in range(PAYMENTS):
                amount = rng.randint(1000, 3000)
                got = shop.client.call(
                    "POST", "/payments",
                    {"amount": amount, "currency": "usd", "description": "fault suite",
                     "card": {"number": card["number"], "exp_month": card["exp_month"],
                              "exp_year": card["exp_year"], "cvc": card["cvc"]}},
                    key=shop.client.new_key(),
                )  # fmt: skip
                with lock:
                    paid.append((shop, amount, got))
                progress.tick()
            payout = shop.client.call("POST", "/payouts", {"currency": "usd"},
                                      key=shop.client.new_key())  # fmt: skip
            with lock:
                asked.append((shop, payout))
            progress.tick()
            time.sleep(0.8)  # spread over the kills (a worker takes a second to start)

    injected: dict[str, Any] = {}

    def faults() -> None:
        caught = idle = mid_delivery = 0
        with stack.connect(autocommit=True) as watch:
            progress.wait_for(0.2)
            for k in range(KILLS):
                assert stack.worker is not None
                mine = f"%:{stack.worker.pid}:%"
                if k == KILLS - 1:
                    # The last one mid-delivery: the receiver has the event and has not
                    # answered yet when the worker dies.
                    receiver.hold_next()
                    if receiver.held.wait(5):
                        mid_delivery += 1
                    stack.kill_worker()
                    receiver.release()
                else:
                    until = time.monotonic() + 4
                    while mid_call(watch, mine) == 0 and time.monotonic() < until:
                        time.sleep(0.001)
                    stack.kill_worker()
                    if mid_call(watch, mine):
                        caught += 1
                    else:
                        idle += 1
                time.sleep(0.3)
                stack.start_worker()
        injected.update({"worker_sigkills": KILLS, "kills_mid_payout_call": caught,
                         "kills_mid_webhook_delivery": mid_delivery,
                         "kills_elsewhere": idle})  # fmt: skip

    web = stack.web_processes()
    with_faults([lambda s=s, n=n: trade(s, n) for n, s in enumerate(shops)], progress, faults)

    refused = [(a.status, a.body) for _, _, a in paid if a.status != 201]
    refused += [(a.status, a.body) for _, a in asked if a.status != 201]
    assert refused == [], refused[:5]
    payment_ids = [a.body["id"] for _, _, a in paid]
    payout_ids = [a.body["id"] for _, a in asked]
    assert len(set(payment_ids)) == len(paid) and len(set(payout_ids)) == len(asked)
    merchants = [shop.merchant for shop in shops]

    deadline = time.monotonic() + 60  # killed workers' leases run out after 2 s
    while True:
        with stack.connect() as conn:
            row = conn.execute(
                "SELECT count(*) FROM payouts WHERE public_id = ANY(%s) AND status <> 'paid'",
                (payout_ids,),
            ).fetchone()
        if (row is not None and row[0] == 0) or time.monotonic() > deadline:
            break
        time.sleep(0.3)

    with stack.connect() as conn:
        payments = dict(conn.execute(
            "SELECT p.public_id, p.amount_minor FROM payments p JOIN merchants m"
            " ON m.id = p.merchant_id WHERE m.public_id = ANY(%s)", (merchants,)
        ).fetchall())  # fmt: skip
        payouts = conn.execute(
            "SELECT po.public_id, po.status, po.amount_minor,"
            " (SELECT count(*) FROM demo_processor_requests r"
            "  WHERE r.idempotency_key = po.public_id),"
            " (SELECT count(*) FROM events e WHERE e.type = 'payout.paid'"
            "  AND e.data->'object'->>'id' = po.public_id),"
            " (SELECT coalesce(sum(net_minor), 0) FROM balance_transactions bt"
            "  WHERE bt.payout_id = po.id AND bt.type = 'payment')"
            " FROM payouts po JOIN merchants m ON m.id = po.merchant_id"
            " WHERE m.public_id = ANY(%s)",
            (merchants,),
        ).fetchall()
        deliveries = Counter(
            dict(conn.execute(
                "SELECT d.status, count(*) FROM webhook_deliveries d"
                " JOIN webhook_endpoints we ON we.id = d.endpoint_id"
                " JOIN merchants m ON m.id = we.merchant_id WHERE m.public_id = ANY(%s)"
                " GROUP BY d.status", (merchants,)
            ).fetchall())
        )  # fmt: skip
        stuck = conn.execute(
            "SELECT count(*), coalesce(max(extract(epoch FROM d.locked_until - now())), 0)"
            " FROM webhook_deliveries d JOIN webhook_endpoints we ON we.id = d.endpoint_id"
            " JOIN merchants m ON m.id = we.merchant_id WHERE m.public_id = ANY(%s)"
            " AND d.status = 'pending' AND d.locked_until > now()",
            (merchants,),
        ).fetchone()
        orphans = conn.execute(
            "SELECT count(*) FROM webhook_deliveries d"
            " JOIN webhook_endpoints we ON we.id = d.endpoint_id"
            " JOIN merchants m ON m.id = we.merchant_id WHERE m.public_id = ANY(%s)"
            " AND d.status = 'pending' AND NOT EXISTS (SELECT 1 FROM jobs j"
            "  WHERE j.kind = 'webhook.deliver' AND j.status IN ('queued', 'running')"
            "  AND j.dedupe_key = 'webhook:' || d.id || ':' || (d.attempts + 1))",
            (merchants,),
        ).fetchone()
        delivered_events = {
            row[0]
            for row in conn.execute(
                "SELECT e.public_id FROM webhook_deliveries d JOIN events e ON e.id = d.event_id"
                " JOIN webhook_endpoints we ON we.id = d.endpoint_id"
                " JOIN merchants m ON m.id = we.merchant_id"
                " WHERE m.public_id = ANY(%s) AND d.status = 'delivered'",
                (merchants,),
            ).fetchall()
        }

    # Payments: each acknowledged one exists, as asked, and no other.
    assert payments == {a.body["id"]: amount for _, amount, a in paid}
    # Payouts: each acknowledged one exists and no other, paid exactly once, of what it covers.
    assert sorted(row[0] for row in payouts) == sorted(payout_ids)
    for public_id, status, amount, at_bank, told, covered in payouts:
        assert (status, at_bank, told) == ("paid", 1, 1), public_id
        assert amount == covered, public_id
    # Webhooks: at least once. Nothing dropped or given up; what arrived was signed right.
    assert deliveries.get("failed", 0) == 0, deliveries
    assert orphans is not None and orphans[0] == 0, "a pending delivery with no job to send it"
    received = Counter(event for _, event, _ in receiver.got)
    assert all(ok for _, _, ok in receiver.got), "a delivery with a wrong signature"
    assert delivered_events <= set(received), "recorded delivered, never received"
    injected.update({
        "payments": len(paid), "payouts": len(asked),
        "webhook_deliveries": dict(deliveries),
        "webhooks_received": sum(received.values()),
        "webhooks_received_twice_or_more": sum(1 for n in received.values() if n > 1),
        "webhook_deliveries_locked_by_a_dead_worker": int(stuck[0]) if stuck else 0,
        "seconds_until_that_lock_expires": round(float(stuck[1]), 1) if stuck else 0,
    })  # fmt: skip
    figures = check_after(stack, payers, tally, name, injected, web,
                          after=lambda person: a_payment(shops[0]))  # fmt: skip
    assert figures["faults"]["worker_sigkills"] == KILLS


def a_payment(shop: Shop) -> Answer:
    """A new payment to the shop, tallied apart from the traffic."""
    card = shop.payer.issued[0]
    traffic, shop.client.tally = shop.client.tally, Tally()
    try:
        return shop.client.call(
            "POST", "/payments",
            {"amount": 1000, "currency": "usd", "card": {
                "number": card["number"], "exp_month": card["exp_month"],
                "exp_year": card["exp_year"], "cvc": card["cvc"]}},
            key=shop.client.new_key(),
        )  # fmt: skip
    finally:
        shop.client.tally = traffic
