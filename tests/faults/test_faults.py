"""Faults under traffic against the app as it is deployed: gunicorn (the shipped configuration,
2 processes x 4 threads) and ``portal worker``, over their own PostgreSQL and Redis
(``conftest.py``). Careful clients (``traffic.py``) move money through the JSON API with
Idempotency-Keys and retry 503s and lost connections with the same key, while one fault at a
time is injected, a fixed number of times, at fixed points of the traffic's progress:

- ``redis_restart``: Redis stopped and started again, three times;
- ``backends_killed``: every database session of the web app and the worker ended with
  ``pg_terminate_backend``, thirty times;
- ``backends_killed_at_commit``: web sessions ended while their COMMIT is in flight, fifteen
  times;
- ``postgres_restart``: PostgreSQL stopped (fast shutdown) and started with ``pg_ctl``, twice;
- ``lock_timeout``: the wallet rows of two people's cards locked for longer than the app's
  ``lock_timeout`` (3 s), twice;
- ``worker_killed``: the worker SIGKILLed and started again, six times, while withdrawals are
  being paid out.

After each: every acknowledged (201) movement exists exactly once and as asked; nothing exists
that was not acknowledged (a movement committed while its answer was lost is acknowledged by
its retry, as a replay); balances are the top-ups plus and minus what was acknowledged;
``portal ledger verify`` exits 0; no answer was a 500 (a 503 is the only error allowed); and the
same processes answer new requests normally. The figures go to
``test-artifacts/faults/<scenario>.json`` (and into docs/RELIABILITY.md).
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.faults.conftest import ARTIFACTS, WEB_APP_NAME, WORKER_APP_NAME, Stack
from tests.faults.traffic import Answer, Person, Tally, fund, people, run_threads, sign_in

SEED = 11  # issue 11


@dataclass
class Intended:
    """One movement a client meant to make, and the last answer it got."""

    key: str
    card: str  # the card the money leaves
    to_card: str | None
    amount: int
    answer: Answer | None = None


class Progress:
    """Acknowledged requests so far, for faults that wait for the traffic to reach a point."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.running = 0  # traffic threads not yet finished
        self.finished = False
        self.cond = threading.Condition()

    def tick(self) -> None:
        with self.cond:
            self.done += 1
            self.cond.notify_all()

    def thread_done(self) -> None:
        with self.cond:
            self.running -= 1
            if self.running == 0:
                self.finished = True
                self.cond.notify_all()

    def wait_for(self, fraction: float, timeout: float = 60.0) -> bool:
        """Wait until ``fraction`` of the traffic is acknowledged; False if it ended first."""
        with self.cond:
            self.cond.wait_for(
                lambda: self.finished or self.done >= fraction * self.total, timeout=timeout
            )
            return not self.finished


def rows_by_first(rows: list[Any]) -> dict[Any, tuple[Any, ...]]:
    """{first column: the other columns} of a query's rows."""
    return {row[0]: tuple(row[1:]) for row in rows}


def make_people(stack: Stack, label: str, *, count: int, cards: int, funding: int) -> list[Person]:
    return people(stack.url, stack.database_url("portal-faults-setup"), stack.env["REDIS_URL"],
                  count=count, cards=cards, funding=funding, seed=SEED, label=label)  # fmt: skip


def with_faults(
    traffic: list[Callable[[], None]], progress: Progress, faults: Callable[[], None]
) -> None:
    """Run the traffic threads and the fault thread together; the faults run to their end
    (they are few and bounded) even if the traffic finished first."""

    def traffic_then_finish(call: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                call()
            finally:
                progress.thread_done()

        return run

    progress.running = len(traffic)
    run_threads([*map(traffic_then_finish, traffic), faults])


# -- transfers ---------------------------------------------------------------------------------
#: Something a person does after their n-th transfer (besides reading every 4th one back).
Between = Callable[[Person, int], None]


def read_back(person: Person, item: Intended) -> None:
    """GET the transfer just made: it is there, as acknowledged."""
    assert item.answer is not None
    got = person.client.call("GET", f"/transfers/{item.answer.body['id']}")
    assert (got.status, got.body.get("amount")) == (200, item.amount), got


def transfer_traffic(
    everyone: list[Person], per_person: int, progress: Progress, between: Between | None = None
) -> tuple[list[Callable[[], None]], list[Intended]]:
    """Per person, ``per_person`` transfers between their own two cards, one at a time, with
    seeded directions and amounts (small enough that no card can run dry); every 4th is read
    back, and ``between`` runs after each."""
    intended: list[Intended] = []
    work = []
    for n, person in enumerate(everyone):
        rng = random.Random(SEED * 7919 + n)
        mine = [
            Intended(
                person.client.new_key(),
                *(person.cards if rng.random() < 0.5 else person.cards[::-1]),
                amount=rng.randint(1, 500),
            )  # fmt: skip
            for _ in range(per_person)
        ]
        intended.extend(mine)

        def send(person: Person = person, mine: list[Intended] = mine) -> None:
            for n, item in enumerate(mine):
                item.answer = person.client.call(
                    "POST", "/transfers",
                    {"from_card": item.card, "to_card": item.to_card, "amount": item.amount,
                     "currency": "usd", "memo": "fault suite"}, key=item.key,
                )  # fmt: skip
                progress.tick()
                if item.answer.status == 201 and n % 4 == 3:
                    read_back(person, item)
                if between is not None:
                    between(person, n)

        work.append(send)
    return work, intended


def check_transfers(stack: Stack, everyone: list[Person], intended: list[Intended]) -> None:
    """Every intended transfer was acknowledged (201), once, as asked; the database holds
    exactly those; each card's balance is its top-up plus and minus them."""
    answers = [i.answer for i in intended]
    assert all(a is not None for a in answers)
    refused = [(i.key, i.answer.status, i.answer.body) for i in intended
               if i.answer is not None and i.answer.status != 201]  # fmt: skip
    assert refused == [], refused[:5]
    acked = {i.answer.body["id"]: i for i in intended if i.answer is not None}
    assert len(acked) == len(intended), "two intended transfers were answered with one id"
    cards = [card for person in everyone for card in person.cards]
    with stack.connect() as conn:
        rows = conn.execute(
            "SELECT t.public_id, f.public_id, d.public_id, t.amount_minor, t.status"
            " FROM transfers t JOIN cards f ON f.id = t.from_card_id"
            " JOIN cards d ON d.id = t.to_card_id"
            " WHERE f.public_id = ANY(%s) OR d.public_id = ANY(%s)",
            (cards, cards),
        ).fetchall()
        balances = rows_by_first(
            conn.execute(
                "SELECT c.public_id, a.posted_minor, a.pending_debits_minor FROM accounts a"
                " JOIN cards c ON c.id = a.card_id WHERE c.public_id = ANY(%s)",
                (cards,),
            ).fetchall()
        )
    stored = {row[0]: row[1:] for row in rows}
    assert len(stored) == len(rows)
    extra = sorted(set(stored) - set(acked))
    missing = sorted(set(acked) - set(stored))
    assert (extra, missing) == ([], []), "movements not acknowledged / acknowledged but absent"
    for public_id, item in acked.items():
        assert stored[public_id] == (item.card, item.to_card, item.amount, "succeeded")
    expected = {card: funded for person in everyone for card, funded in person.funded.items()}
    for item in intended:
        assert item.to_card is not None
        expected[item.card] -= item.amount
        expected[item.to_card] += item.amount
    assert balances == {card: (total, 0) for card, total in expected.items()}


# -- the checks every scenario shares ----------------------------------------------------------
def a_new_transfer(person: Person) -> Answer:
    return person.client.call("POST", "/transfers",
                              {"from_card": person.cards[0], "to_card": person.cards[1],
                               "amount": 1, "currency": "usd", "memo": "after the faults"},
                              key=person.client.new_key())  # fmt: skip


def check_after(stack: Stack, everyone: list[Person], tally: Tally, name: str,
                faults: dict[str, Any], web: tuple[int, frozenset[int]],
                after: Callable[[Person], Answer] = a_new_transfer) -> dict[str, Any]:  # fmt: skip
    """Ledger, statuses and recovery; then the figures, printed and written as JSON. ``web``
    is ``stack.web_processes()`` from before the faults."""
    verify = stack.ledger_verify()
    # The app answers normally afterwards, on the same processes (the same gunicorn master and
    # workers): a new movement goes through at the first attempt.
    stack_healthy = stack.gunicorn_alive() and stack.web_processes() == web
    person = everyone[0]
    client, tally_of_traffic = person.client, person.client.tally
    client.tally = Tally()
    try:
        fresh = after(person)
    finally:
        client.tally = tally_of_traffic
    figures = {
        "scenario": name,
        "seed": SEED,
        "people": len(everyone),
        **tally.as_dict(),
        "faults": faults,
        "ledger_verify_exit": verify.returncode,
        "web_processes_restarted": not stack_healthy,
        "first_request_after": {"status": fresh.status, "attempts": fresh.attempts},
    }
    write_figures(figures)

    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert stack_healthy, stack.log_tail("gunicorn")
    assert (fresh.status, fresh.attempts) == (201, ["201"]), fresh
    # Only a 503 may say "something went wrong" (and then the retry settles it): no 500 or
    # other 5xx, and no client error either, for these well-formed requests.
    unexpected = {s: n for s, n in tally.statuses.items() if s.startswith(("4", "5"))
                  and s not in ("503 outcome_unknown", "503 try_again")}  # fmt: skip
    assert unexpected == {}, (unexpected, stack.log_tail("gunicorn"))
    return figures


def write_figures(figures: dict[str, Any]) -> None:
    """Print the figures and write them to test-artifacts/faults/<scenario>.json."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    name = figures["scenario"]
    (ARTIFACTS / f"{name}.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(f"\n[faults] {name}: {json.dumps(figures)}")


def share(everyone: list[Person]) -> Tally:
    """One tally for the traffic of every person of a scenario."""
    tally = Tally()
    for person in everyone:
        person.client.tally = tally
    return tally


# -- scenarios ---------------------------------------------------------------------------------
def transfer_then_top_up(person: Person) -> Answer:
    """A new transfer at the first attempt, then a top-up the worker confirms."""
    made = a_new_transfer(person)
    fund(person.client, [person.cards[0]], 500, deadline=30.0)
    return made


def run_transfer_scenario(stack: Stack, name: str, inject: Callable[[Progress], dict[str, Any]],
                          *, count: int = 6, per_person: int = 30, between: Between | None = None,
                          after: Callable[[Person], Answer] = a_new_transfer,
                          ) -> dict[str, Any]:  # fmt: skip
    everyone = make_people(stack, name, count=count, cards=2, funding=50_000)
    tally = share(everyone)
    progress = Progress(count * per_person)
    work, intended = transfer_traffic(everyone, per_person, progress, between)
    web = stack.web_processes()
    injected: dict[str, Any] = {}

    def faults() -> None:
        injected.update(inject(progress))

    started = time.monotonic()
    with_faults(work, progress, faults)
    injected["traffic_seconds"] = round(time.monotonic() - started, 1)
    check_transfers(stack, everyone, intended)
    return check_after(stack, everyone, tally, name, injected, web, after=after)


def test_redis_stopped_and_restarted_during_transfers(stack: Stack) -> None:
    """Transfers do not use Redis; sign-ins do (their rate limits count there, and in
    PostgreSQL while Redis is down), so every 3rd transfer is followed by a sign-in."""
    cycles, least_down = 3, 2.0
    signed_in_while_down = [0]

    def sign_in_now(person: Person, n: int) -> None:
        if n % 3 == 2:
            down = stack.redis is None
            sign_in(person.client, person.email)
            if down:
                with person.client.tally.lock:
                    signed_in_while_down[0] += 1

    def inject(progress: Progress) -> dict[str, Any]:
        down = 0.0
        for k in range(cycles):
            progress.wait_for((2 * k + 1) / (2 * cycles + 1))
            stopped = time.monotonic()
            stack.stop_redis()
            try:
                progress.wait_for((2 * k + 2) / (2 * cycles + 1))
                time.sleep(max(0.0, least_down - (time.monotonic() - stopped)))
            finally:
                stack.start_redis()
            down += time.monotonic() - stopped
        return {"redis_stops": cycles, "redis_restarts": cycles, "seconds_down": round(down, 1)}

    figures = run_transfer_scenario(stack, "redis_restart", inject, between=sign_in_now)
    figures["faults"]["sign_ins_while_redis_down"] = signed_in_while_down[0]
    write_figures(figures)
    assert figures["faults"]["redis_stops"] == cycles
    assert signed_in_while_down[0] > 0, "no sign-in while Redis was down"


def test_database_backends_killed_repeatedly_during_transfers(stack: Stack) -> None:
    """The web app's sessions, and the worker's (it polls for jobs meanwhile): afterwards the
    worker, not restarted, still confirms a top-up."""
    rounds = 30

    def inject(progress: Progress) -> dict[str, Any]:
        killed = worker = 0
        for k in range(rounds):
            progress.wait_for((k + 1) / (rounds + 1))
            killed += stack.terminate_backends(WEB_APP_NAME)
            worker += stack.terminate_backends(WORKER_APP_NAME)
        return {"kill_rounds": rounds, "backends_terminated": killed,
                "worker_backends_terminated": worker}  # fmt: skip

    worker = stack.worker
    figures = run_transfer_scenario(stack, "backends_killed", inject, per_person=40,
                                    after=transfer_then_top_up)  # fmt: skip
    assert stack.worker is worker and worker is not None and worker.poll() is None
    assert figures["faults"]["backends_terminated"] >= rounds  # each round ended sessions
    assert figures["statuses"].get("503 outcome_unknown", 0) > 0, "no request lost its connection"


def test_database_backends_killed_at_commit_during_transfers(stack: Stack) -> None:
    """The worst moment to lose a connection: while COMMIT is in flight, so the outcome is
    unknown to the app too. A retry must replay a commit that happened and make one that did
    not, never both."""
    rounds = 15

    def inject(progress: Progress) -> dict[str, Any]:
        killed = seen = 0
        for k in range(rounds):
            if not progress.wait_for((k + 1) / (rounds + 1)):
                break
            ended = stack.terminate_at_commit(within=1.0)
            killed += ended
            seen += ended > 0
        return {"rounds": rounds, "rounds_that_caught_a_commit": seen,
                "backends_terminated_in_commit": killed}  # fmt: skip

    figures = run_transfer_scenario(stack, "backends_killed_at_commit", inject)
    assert figures["faults"]["backends_terminated_in_commit"] > 0, "no COMMIT was caught"


def test_postgres_stopped_and_started_during_transfers(stack: Stack) -> None:
    restarts = 2

    def inject(progress: Progress) -> dict[str, Any]:
        down = 0.0
        for k in range(restarts):
            progress.wait_for((k + 1) / (restarts + 1))
            stopped = time.monotonic()
            stack.stop_postgres()
            try:
                time.sleep(1.5)  # clients keep sending meanwhile
            finally:
                stack.start_postgres()
            down += time.monotonic() - stopped
        return {"postgres_restarts": restarts, "seconds_down": round(down, 1)}

    figures = run_transfer_scenario(stack, "postgres_restart", inject)
    assert figures["retries"] > 0, "the restarts were not seen by any request"


def test_a_lock_held_past_lock_timeout_during_transfers(stack: Stack) -> None:
    holds, seconds = 2, 4.5  # the app's lock_timeout is 3 s

    def inject(progress: Progress) -> dict[str, Any]:
        for k in range(holds):
            progress.wait_for((k + 1) / (holds + 1))
            with stack.connect() as conn, conn.transaction():
                conn.execute(
                    "SELECT a.id FROM accounts a JOIN cards c ON c.id = a.card_id"
                    " JOIN users u ON u.id = c.user_id WHERE u.email LIKE %s OR u.email LIKE %s"
                    " ORDER BY a.id FOR UPDATE OF a",
                    ("lock_timeout-0-%", "lock_timeout-1-%"),
                ).fetchall()
                time.sleep(seconds)
        return {"locks_held": holds, "seconds_each": seconds, "lock_timeout_seconds": 3}

    figures = run_transfer_scenario(stack, "lock_timeout", inject)
    assert figures["statuses"].get("503 try_again", 0) > 0, "no request waited past lock_timeout"


# -- withdrawals and the worker ----------------------------------------------------------------
def payout_jobs(conn: Any, locked_by: str, *, processing: bool = False) -> int:
    """Payout jobs the worker ``locked_by`` (a LIKE pattern) holds now; with ``processing``,
    only those whose withdrawal is ``processing`` (its payout is with the bank)."""
    row = conn.execute(
        "SELECT count(*) FROM jobs j JOIN withdrawals w"
        " ON w.id = (j.payload->>'withdrawal_id')::bigint"
        " WHERE j.kind = 'withdrawal.payout' AND j.status = 'running' AND j.locked_by LIKE %s"
        " AND (w.status = 'processing' OR NOT %s)",
        (locked_by, processing),
    ).fetchone()
    return int(row[0]) if row else 0


BANK = {"bank_name": "Fault Bank", "account_number": "000123456789",
        "account_holder": "Fault Tester"}  # fmt: skip


def test_worker_killed_repeatedly_during_payouts(stack: Stack) -> None:
    name, count, per_person, kills = "worker_killed", 6, 8, 6
    everyone = make_people(stack, name, count=count, cards=1, funding=50_000)
    tally = share(everyone)
    progress = Progress(count * per_person)
    intended: list[Intended] = []
    work = []
    for n, person in enumerate(everyone):
        rng = random.Random(SEED * 104729 + n)
        mine = [Intended(person.client.new_key(), person.cards[0], None,
                         amount=rng.randint(500, 1500)) for _ in range(per_person)]  # fmt: skip
        intended.extend(mine)

        def send(person: Person = person, mine: list[Intended] = mine) -> None:
            for item in mine:
                item.answer = person.client.call(
                    "POST", "/withdrawals",
                    {"card": item.card, "amount": item.amount, "currency": "usd", **BANK},
                    key=item.key,
                )  # fmt: skip
                progress.tick()
                time.sleep(0.6)  # spread over the kills (a worker takes a second to start)

        work.append(send)
    web = stack.web_processes()
    injected: dict[str, Any] = {}

    def faults() -> None:
        mid_call = mid_batch = idle = 0
        with stack.connect(autocommit=True) as watch:
            progress.wait_for(0.1)
            for _ in range(kills):
                assert stack.worker is not None
                mine = f"%:{stack.worker.pid}:%"  # the worker id holds its pid
                # Kill it mid-call if it comes to that within 4 s (a withdrawal it holds the
                # job of is `processing`: with the bank, or paid and not yet settled), else
                # wherever it is.
                until = time.monotonic() + 4
                while payout_jobs(watch, mine, processing=True) == 0:
                    if time.monotonic() > until:
                        break
                    time.sleep(0.001)
                stack.kill_worker()
                if payout_jobs(watch, mine, processing=True):
                    mid_call += 1
                elif payout_jobs(watch, mine):
                    mid_batch += 1
                else:
                    idle += 1
                time.sleep(0.3)
                stack.start_worker()
        injected.update({"worker_sigkills": kills, "kills_mid_call": mid_call,
                         "kills_mid_batch": mid_batch, "kills_idle": idle})  # fmt: skip

    with_faults(work, progress, faults)

    refused = [(i.key, i.answer.status, i.answer.body) for i in intended
               if i.answer is None or i.answer.status != 201]  # fmt: skip
    assert refused == [], refused[:5]
    ids = [i.answer.body["id"] for i in intended if i.answer is not None]
    assert len(set(ids)) == len(intended)
    deadline = time.monotonic() + 60  # leases of killed workers run out after 2 s
    while True:
        with stack.connect() as conn:
            states = dict(conn.execute(
                "SELECT public_id, status FROM withdrawals WHERE public_id = ANY(%s)", (ids,)
            ).fetchall())  # fmt: skip
        if all(s in ("succeeded", "failed") for s in states.values()) or (
            time.monotonic() > deadline
        ):
            break
        time.sleep(0.3)
    with stack.connect() as conn:
        rows = conn.execute(
            "SELECT w.public_id, c.public_id, w.amount_minor, w.status, h.status,"
            " (SELECT count(*) FROM demo_processor_requests r"
            "  WHERE r.idempotency_key = w.public_id) AS asked,"
            " (SELECT count(*) FROM postings p WHERE p.journal_entry_id = w.journal_entry_id)"
            " FROM withdrawals w JOIN cards c ON c.id = w.card_id"
            " LEFT JOIN holds h ON h.id = w.hold_id WHERE c.public_id = ANY(%s)",
            ([p.cards[0] for p in everyone],),
        ).fetchall()
        jobs = conn.execute(
            "SELECT status, count(*), count(*) FILTER (WHERE attempts > 1) FROM jobs"
            " WHERE kind = 'withdrawal.payout' AND (payload->>'withdrawal_id')::bigint IN"
            " (SELECT id FROM withdrawals WHERE public_id = ANY(%s)) GROUP BY status",
            (ids,),
        ).fetchall()
        balances = rows_by_first(conn.execute(
            "SELECT c.public_id, a.posted_minor, a.pending_debits_minor FROM accounts a"
            " JOIN cards c ON c.id = a.card_id WHERE c.public_id = ANY(%s)",
            ([p.cards[0] for p in everyone],),
        ).fetchall())  # fmt: skip
    injected["payout_jobs_run_again"] = sum(row[2] for row in jobs)
    by_id = {i.answer.body["id"]: i for i in intended if i.answer is not None}
    assert sorted(row[0] for row in rows) == sorted(ids), "withdrawals not acknowledged"
    for public_id, card, amount, status, hold, asked, postings in rows:
        item = by_id[public_id]
        # Paid exactly once: asked of the bank once, the hold posted once (two postings).
        assert (card, amount, status, hold, asked, postings) == (
            item.card,
            item.amount,
            "succeeded",
            "posted",
            1,
            2,
        ), public_id
    assert {row[0]: row[1] for row in jobs} == {"succeeded": len(ids)}
    paid: dict[str, int] = {}
    for item in intended:
        paid[item.card] = paid.get(item.card, 0) + item.amount
    assert balances == {p.cards[0]: (50_000 - paid[p.cards[0]], 0) for p in everyone}
    assert stack.worker is not None and stack.worker.poll() is None, stack.log_tail("worker")

    def a_new_withdrawal_paid_out(person: Person) -> Answer:
        """The worker that was started again pays a new withdrawal out."""
        made = person.client.call("POST", "/withdrawals",
                                  {"card": person.cards[0], "amount": 500, "currency": "usd",
                                   **BANK}, key=person.client.new_key())  # fmt: skip
        assert made.status == 201, made
        until = time.monotonic() + 30
        status = made.body["status"]
        while status != "succeeded" and time.monotonic() < until:
            time.sleep(0.2)
            status = person.client.call("GET", f"/withdrawals/{made.body['id']}").body["status"]
        assert status == "succeeded", made.body
        return made

    figures = check_after(stack, everyone, tally, name, injected, web,
                          after=a_new_withdrawal_paid_out)  # fmt: skip
    assert figures["faults"]["worker_sigkills"] == kills
    assert kills - figures["faults"]["kills_idle"] > 0, "no kill came during a payout"
