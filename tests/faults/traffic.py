"""Traffic for the fault scenarios: a careful API client and the people who use it.

The client is what a careful integrator writes: every money-moving request carries an
``Idempotency-Key`` chosen once per intended movement; a 503 (waiting ``Retry-After``), a 429, a
500 or a connection error or timeout is retried with the same key, a bounded number of times.
Every attempt is counted (statuses, errors, retries); what matters afterwards is the last answer
of each intended movement and whether it was a replay of one that had committed unseen.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import requests
from flask import Flask

from portal.domain.types import Actor

API = "/api/v1"
#: Attempts per request before the client gives up (bounded: the suite is bounded).
MAX_ATTEMPTS = 60
#: How long one request may take before the client treats it as lost and retries.
REQUEST_TIMEOUT = 20.0
PASSWORD = "fault-suite correct horse battery"  # noqa: S105 (a test account's)
RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})
SUITE = Actor.system("fault-suite")


@dataclass
class Tally:
    """Counts across every thread of a scenario."""

    sent: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    #: 201s after failed attempts: a replay (the first attempt had committed unseen), or a
    #: movement made by the retry (nothing had committed).
    replayed_after_failure: int = 0
    made_by_retry: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def attempt(self, outcome: str, *, retry: bool) -> None:
        with self.lock:
            self.sent += 1
            self.statuses[outcome] += 1
            self.retries += int(retry)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests_sent": self.sent,
            "statuses": dict(sorted(self.statuses.items())),
            "retries": self.retries,
            "replayed_after_failure": self.replayed_after_failure,
            "made_by_retry": self.made_by_retry,
        }


@dataclass
class Answer:
    """The last answer to one intended request, and what its attempts got."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str]
    attempts: list[str]

    @property
    def replayed(self) -> bool:
        return self.headers.get("Idempotent-Replayed") == "true"


class Client:
    """One person's API client (one HTTP session, one bearer token)."""

    def __init__(self, base: str, tally: Tally, rng: random.Random, token: str | None = None
                 ) -> None:  # fmt: skip
        self.base = base
        self.tally = tally
        self.rng = rng
        self.http = requests.Session()
        self.token = token  # a bearer token, or a merchant's secret key

    def new_key(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, *,
             key: str | None = None) -> Answer:  # fmt: skip
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        if key is not None:
            headers["Idempotency-Key"] = key
        attempts: list[str] = []
        for n in range(MAX_ATTEMPTS):
            try:
                got = self.http.request(method, f"{self.base}{API}{path}", json=body,
                                        headers=headers, timeout=REQUEST_TIMEOUT)  # fmt: skip
            except requests.RequestException as exc:
                attempts.append(type(exc).__name__)
                self.tally.attempt(type(exc).__name__, retry=True)
                self.http.close()  # a fresh connection next time
                time.sleep(self._backoff(n, None))
                continue
            outcome = str(got.status_code)
            if got.status_code >= 400:  # "503 outcome_unknown", "503 try_again", ...
                outcome += f" {_json(got).get('error', {}).get('code', '?')}"
                if got.status_code == 503 and "Retry-After" not in got.headers:
                    outcome += " (no Retry-After)"
            retry = got.status_code in RETRIED_STATUSES
            attempts.append(outcome)
            self.tally.attempt(outcome, retry=retry)
            if retry:
                time.sleep(self._backoff(n, got.headers.get("Retry-After")))
                continue
            answer = Answer(got.status_code, _json(got), dict(got.headers), attempts)
            if len(attempts) > 1 and got.status_code == 201:
                with self.tally.lock:
                    if answer.replayed:  # it had committed: only its answer was lost
                        self.tally.replayed_after_failure += 1
                    else:  # nothing had committed: the retry made it
                        self.tally.made_by_retry += 1
            return answer
        raise AssertionError(f"{method} {path}: no answer in {MAX_ATTEMPTS} attempts: {attempts}")

    def _backoff(self, n: int, retry_after: str | None) -> float:
        if retry_after and retry_after.isdigit():
            return min(float(retry_after), 1.0) * (0.5 + self.rng.random() / 2)
        return min(0.1 * 2**n, 1.0) * (0.5 + self.rng.random() / 2)


def _json(response: requests.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {"raw": response.text[:500]}
    return data if isinstance(data, dict) else {"data": data}


# -- people ------------------------------------------------------------------------------------
@dataclass
class Person:
    client: Client
    email: str
    cards: list[str]  # card public ids
    funded: dict[str, int]  # minor units each card was topped up with
    issued: list[dict[str, Any]]  # POST /cards answers: number, exp_month, exp_year, cvc


@contextmanager
def service_app(database_url: str, redis_url: str) -> Iterator[Flask]:
    """An app of our own against the suite's database, for what the API cannot do without
    staff: verified accounts, approved merchants."""
    from portal import create_app
    from portal.extensions import db, limiter

    # flask-limiter keeps one storage per Limiter, not per app: creating this app points the
    # shared limiter at the suite's database (its counters' PostgreSQL fallback), which stops
    # with the suite. Give the process's own app its limiter back afterwards.
    saved = {**vars(limiter), "_storage_options": dict(limiter._storage_options)}
    app = create_app({"SQLALCHEMY_DATABASE_URI": database_url, "REDIS_URL": redis_url,
                      "PORTAL_ENV": "test", "METRICS_ENABLED": False})  # fmt: skip
    try:
        yield app
    finally:
        with app.app_context():
            db.engine.dispose()
        vars(limiter).clear()
        vars(limiter).update(saved)


def create_accounts(database_url: str, redis_url: str, emails: list[str]) -> None:
    """Verified users made through the identity service (the API has no staff-free way)."""
    from portal.services.identity import users
    from portal.web.uow import make_uow

    with service_app(database_url, redis_url) as app:
        for n, email in enumerate(emails):
            users.create_user(make_uow(app), actor=SUITE, email=email, first_name="Fault",
                              last_name=f"Tester{n}", password=PASSWORD,
                              verified=True)  # fmt: skip


def sign_in(client: Client, email: str) -> None:
    answer = client.call("POST", "/auth/token", {"email": email, "password": PASSWORD})
    assert answer.status == 200, answer
    client.token = answer.body["access_token"]


def open_card(client: Client) -> dict[str, Any]:
    """A new USD card: its id, and (shown once) its number, expiry and security code."""
    body = {"card_type": "debit", "brand": "visa", "currency": "usd"}
    answer = client.call("POST", "/cards", body, key=client.new_key())
    assert answer.status == 201 and answer.body["number"], answer
    return answer.body


def fund(client: Client, cards: list[str], amount: int, *, deadline: float = 60.0) -> None:
    """Top each card up through the API and wait until every top-up has succeeded (each stays
    pending until the worker's funding job confirms it)."""
    pending = []
    for card in cards:
        answer = client.call("POST", "/top_ups",
                             {"card": card, "amount": amount, "currency": "usd",
                              "method": "bank_transfer"}, key=client.new_key())  # fmt: skip
        assert answer.status == 201, answer
        pending.append(answer.body)
    until = time.monotonic() + deadline
    while pending:
        top_up = pending[0]
        if top_up["status"] == "succeeded":
            pending.pop(0)
            continue
        assert top_up["status"] in ("pending", "processing"), top_up
        assert time.monotonic() < until, f"top-up {top_up['id']} still {top_up['status']}"
        time.sleep(0.1)
        pending[0] = client.call("GET", f"/top_ups/{top_up['id']}").body


def people(base: str, database_url: str, redis_url: str, *, count: int, cards: int,
           funding: int, seed: int, label: str) -> list[Person]:  # fmt: skip
    """``count`` people with ``cards`` funded USD cards each, made through the API (the
    accounts themselves through the service), side by side. Their setup requests are tallied
    apart from the traffic's."""
    rng = random.Random(seed)
    emails = [f"{label}-{n}-{rng.getrandbits(32):08x}@faults.test" for n in range(count)]
    create_accounts(database_url, redis_url, emails)
    made: list[Person | None] = [None] * count

    def setup(n: int) -> None:
        client = Client(base, Tally(), random.Random(seed * 1000 + n))
        sign_in(client, emails[n])
        issued = [open_card(client) for _ in range(cards)]
        own = [card["id"] for card in issued]
        fund(client, own, funding)
        client.tally = Tally()  # the traffic's figures start from zero
        made[n] = Person(client, emails[n], own, dict.fromkeys(own, funding), issued)

    run_threads([lambda n=n: setup(n) for n in range(count)], timeout=120.0)
    return [person for person in made if person is not None]


def run_threads(work: list[Callable[[], None]], *, timeout: float = 150.0) -> None:
    """Run each callable on its own thread; re-raise the first failure; bounded in time."""
    errors: list[BaseException] = []

    def body(call: Callable[[], None]) -> None:
        try:
            call()
        except BaseException as exc:  # re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(w,), daemon=True) for w in work]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    late = [t.name for t in threads if t.is_alive()]
    assert not late, f"{len(late)} thread(s) still running after {timeout:.0f}s"
    if errors:
        raise errors[0]
