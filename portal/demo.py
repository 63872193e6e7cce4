"""Demo data for ``make run``: staff, cardholders, cards and a year of wallet history.

The demo staff are enrolled in TOTP (through the enrolment-code flow real staff use): their
secrets come back in the summary, which ``seed-demo`` prints in development, so signing in as
them needs the published password and a code from that secret (``oathtool --totp -b SECRET``
or any authenticator app). ``seed-demo`` refuses to run in production.

Everything is written through the services (users, cards, wallet), never by inserting rows, so
the demo ledger obeys the same rules as real traffic and reconciles. Time is a fake clock that
walks from a year ago to ``now``; every choice comes from ``random.Random(seed)`` and every
idempotency key is derived from the seed, so a seed always tells the same story. No Flask here:
the caller passes ``make_uow(clock) -> UnitOfWork``.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from functools import partial
from random import Random

import pyotp

from portal.domain.errors import CardUnavailable, InsufficientFunds
from portal.domain.money import Money
from portal.domain.types import Actor, MovementResult, MovementStatus, TopUpMethod
from portal.services.identity import mfa, users
from portal.services.shared.uow import UnitOfWork
from portal.services.wallet import cards, funding, wallet

DEMO_PASSWORD = "portal-demo-2026"  # noqa: S105 - a published demo login, not a secret
DEMO_ACTOR = Actor.system("demo")
HISTORY_DAYS = 365

#: Refusals the story provokes (each leaves a failed record); anything else is a bug and stops
#: the seeding. Limits are respected up front, so LimitExceeded is not among them.
REFUSALS = (CardUnavailable, InsufficientFunds)

MakeUow = Callable[[Callable[[], datetime]], UnitOfWork]


# -- who and what ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DemoCard:
    name: str
    brand: str
    card_type: str
    currency: str


@dataclass(frozen=True, slots=True)
class DemoPerson:
    email: str
    first_name: str
    last_name: str
    roles: tuple[str, ...]
    bank: str = ""
    #: How busy this person is, relative to the others.
    activity: float = 1.0
    cards: tuple[DemoCard, ...] = ()


STAFF = (
    DemoPerson("admin@portal.test", "Ayu", "Pratama", ("admin",)),
    DemoPerson("support@portal.test", "Sigit", "Rahman", ("support",)),
)
CARDHOLDERS = (
    DemoPerson(
        "alice@portal.test", "Alice", "Wijaya", ("cardholder",), "Bank Central Asia", 1.2,
        (DemoCard("Everyday", "visa", "debit", "IDR"),
         DemoCard("Travel", "amex", "credit", "USD"),
         DemoCard("Savings", "mastercard", "prepaid", "IDR")),
    ),
    DemoPerson(
        "bob@portal.test", "Bob", "Santoso", ("cardholder",), "Bank Mandiri", 0.8,
        (DemoCard("Main", "mastercard", "debit", "IDR"),
         DemoCard("Online shopping", "discover", "prepaid", "USD")),
    ),
    DemoPerson(
        "citra@portal.test", "Citra", "Lestari", ("cardholder",), "Bank Negara Indonesia", 1.0,
        (DemoCard("Daily", "visa", "prepaid", "IDR"),
         DemoCard("Rewards", "amex", "credit", "IDR")),
    ),
    DemoPerson(
        "dewi@portal.test", "Dewi", "Kusuma", ("cardholder",), "Bank Rakyat Indonesia", 1.1,
        (DemoCard("Household", "discover", "debit", "IDR"),
         DemoCard("Business", "visa", "credit", "USD"),
         DemoCard("Groceries", "mastercard", "prepaid", "IDR")),
    ),
)  # fmt: skip

#: Round-ish amounts in major units, per currency and movement kind.
AMOUNTS: dict[str, dict[str, tuple[str, ...]]] = {
    "IDR": {
        "top_up": ("50000", "100000", "150000", "200000", "250000", "300000", "500000",
                   "750000", "1000000", "1500000", "2000000", "2500000", "5000000"),
        "transfer": ("10000", "15000", "20000", "25000", "35000", "50000", "75000", "100000",
                     "125000", "150000", "200000", "250000", "500000", "1000000"),
        "withdrawal": ("50000", "100000", "150000", "200000", "250000", "500000", "750000",
                       "1000000", "1500000", "2000000"),
    },
    "USD": {
        "top_up": ("5", "10", "20", "25", "50", "75", "100", "150", "200", "250", "500"),
        "transfer": ("5", "7.50", "10", "12.50", "15", "20", "25", "30", "40", "50", "75", "100"),
        "withdrawal": ("10", "20", "25", "40", "50", "75", "100", "150", "200"),
    },
}  # fmt: skip
OPENING_BALANCE = {"IDR": ("2000000", "3000000", "5000000"), "USD": ("200", "300", "500")}
TOP_UP_METHODS = tuple(m.value for m in TopUpMethod)
TOP_UP_WEIGHTS = {"bank_transfer": 4, "e_wallet": 3, "debit_card": 2, "credit_card": 2, "cash": 1}
MEMOS = (
    "Dinner",
    "Rent share",
    "Coffee",
    "Groceries",
    "Movie tickets",
    "Birthday gift",
    "Taxi",
    "Concert tickets",
    "Electricity bill",
    "Lunch",
    "Badminton court",
    "Weekend trip",
    "",
)
OWN_MEMOS = ("Move to savings", "Top up travel card", "Monthly budget", "")  # fmt: skip
BANKS_USD = "Citibank N.A."


# -- what it returns ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DemoSecondFactor:
    """A demo staff member's TOTP secret, and its otpauth:// URI for an authenticator app."""

    email: str
    secret: str
    otpauth_uri: str


@dataclass(frozen=True, slots=True)
class DemoSummary:
    users: int
    cards: int
    #: kind (top_up, transfer, withdrawal) -> status -> count, as the records stand at the end.
    movements: dict[str, dict[str, int]]
    first_at: datetime
    last_at: datetime
    #: (email, roles) of every demo login; they all share ``password``.
    logins: tuple[tuple[str, str], ...]
    #: The staff's TOTP secrets (staff need a second factor): development only.
    second_factors: tuple[DemoSecondFactor, ...] = ()
    password: str = DEMO_PASSWORD

    @property
    def total_movements(self) -> int:
        return sum(sum(by_status.values()) for by_status in self.movements.values())


def summary_lines(summary: DemoSummary) -> list[str]:
    """The summary as lines for a terminal."""
    lines = [
        f"demo data: {summary.users} users, {summary.cards} cards, "
        f"{summary.total_movements} movements from {summary.first_at:%Y-%m-%d} "
        f"to {summary.last_at:%Y-%m-%d}"
    ]
    for kind, by_status in summary.movements.items():
        detail = ", ".join(f"{n} {status}" for status, n in sorted(by_status.items()))
        lines.append(f"  {kind}: {detail}")
    lines.append(f"demo logins (password {summary.password}):")
    lines += [f"  {email:<22} {roles}" for email, roles in summary.logins]
    if summary.second_factors:
        lines.append(
            "demo staff second factor (development only): add the secret to an authenticator"
            " app, or get a code with `oathtool --totp -b <secret>`"
        )
        for factor in summary.second_factors:
            lines.append(f"  {factor.email:<22} secret {factor.secret}")
            lines.append(f"  {'':<22} {factor.otpauth_uri}")
    return lines


def has_users(uow: UnitOfWork) -> bool:
    """Whether any user exists (``seed-demo --if-empty`` seeds only an empty portal)."""
    return bool(uow.run(lambda u: u.execute("SELECT EXISTS (SELECT 1 FROM users)").scalar_one()))


# -- the walk ----------------------------------------------------------------------------------
class _Clock:
    """The fake clock the units of work read; the walk moves it forward."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass(slots=True)
class _Card:
    id: int
    owner: int
    currency: str
    available: int = 0


@dataclass(slots=True)
class _Holder:
    person: DemoPerson
    actor: Actor
    bank_account: str
    cards: list[_Card] = field(default_factory=list)


class _Walk:
    def __init__(self, uow: UnitOfWork, clock: _Clock, rng: Random, seed: int, end: datetime):
        self.uow, self.clock, self.rng, self.seed, self.end = uow, clock, rng, seed, end
        self.keys = itertools.count(1)
        self.order = itertools.count()
        self.queue: list[tuple[datetime, int, Callable[[], None]]] = []
        self.holders: list[_Holder] = []
        self.second_factors: list[DemoSecondFactor] = []
        self.by_id: dict[int, _Card] = {}
        self.topped_up: Counter[tuple[int, str, date]] = Counter()
        self.counts: dict[str, Counter[str]] = {
            "top_up": Counter(), "transfer": Counter(), "withdrawal": Counter()
        }  # fmt: skip
        self.first_at: datetime | None = None
        self.last_at: datetime | None = None
        self.methods = itertools.cycle(TOP_UP_METHODS)

    # -- plumbing --------------------------------------------------------------------------
    def key(self) -> str:
        return f"demo-{self.seed}-{next(self.keys):06d}"

    def at(self, when: datetime, action: Callable[[], None]) -> None:
        if when <= self.end:
            heapq.heappush(self.queue, (when, next(self.order), action))

    def run(self) -> None:
        while self.queue:
            when, _, action = heapq.heappop(self.queue)
            self.clock.now = when
            action()

    def amount(self, currency: str, kind: str, cap: int | None = None) -> Money | None:
        """A round amount within the configured limits and ``cap``, small ones likelier."""
        limits = self.uow.settings.limits_for(currency, kind)
        menu = AMOUNTS.get(currency, {}).get(kind, ())
        if limits is None:
            return None
        options = [
            m
            for m in (Money.of_major(a, currency) for a in menu)
            if limits.minimum <= m.amount_minor <= limits.maximum
            and (cap is None or m.amount_minor <= cap)
        ]
        if not options:
            return None
        weights = [len(options) - i for i in range(len(options))]
        return self.rng.choices(options, weights)[0]

    def record(self, kind: str, result: MovementResult | None, status: str) -> None:
        self.counts[kind][status] += 1
        if result is not None and kind == "top_up":
            self.first_at = min(self.first_at or result.created_at, result.created_at)
            self.last_at = max(self.last_at or result.created_at, result.created_at)

    # -- movements -------------------------------------------------------------------------
    def top_up(self, holder: _Holder, card: _Card, amount: Money, method: str) -> None:
        limits = self.uow.settings.limits_for(card.currency, "top_up")
        day_key = (holder.actor.id or 0, card.currency, self.clock.now.date())
        if limits and limits.daily and self.topped_up[day_key] + amount.amount_minor > limits.daily:
            return  # stay within the daily cap
        try:
            result = wallet.top_up(
                self.uow, actor=holder.actor, card_id=card.id, amount=amount, method=method,
                idempotency_key=self.key(),
            )  # fmt: skip
        except REFUSALS:
            self.record("top_up", None, MovementStatus.FAILED)
            return
        # The demo's history has the funding processor answer at once.
        result = funding.settle(self.uow, result.id) or result
        card.available = result.balance.available.amount_minor
        self.topped_up[day_key] += amount.amount_minor
        self.record("top_up", result, result.status)

    def transfer(self, holder: _Holder, source: _Card, dest: _Card, amount: Money) -> None:
        own = dest.owner == source.owner
        memo = self.rng.choice(OWN_MEMOS if own else MEMOS)
        try:
            result = wallet.transfer(
                self.uow, actor=holder.actor, from_card_id=source.id, to_card_id=dest.id,
                amount=amount, idempotency_key=self.key(), memo=memo,
            )  # fmt: skip
        except REFUSALS:
            self.record("transfer", None, MovementStatus.FAILED)
            return
        source.available = result.balance.available.amount_minor
        dest.available += amount.amount_minor
        self.record("transfer", result, result.status)

    def withdraw(self, holder: _Holder, card: _Card, amount: Money, outcome: str | None) -> None:
        """``outcome`` is "confirm" or a failure code, settled about a day later; None leaves
        the withdrawal pending."""
        number = holder.bank_account
        if outcome == "account_closed":  # the demo payout processor refuses these, too
            number = number[:-4] + "0000"
        bank = wallet.BankAccount(
            BANKS_USD if card.currency == "USD" else holder.person.bank,
            number,
            f"{holder.person.first_name} {holder.person.last_name}",
        )
        try:
            result = wallet.withdraw(
                self.uow, actor=holder.actor, card_id=card.id, amount=amount, bank=bank,
                idempotency_key=self.key(),
            )  # fmt: skip
        except REFUSALS:
            self.record("withdrawal", None, MovementStatus.FAILED)
            return
        card.available = result.balance.available.amount_minor
        self.record("withdrawal", result, result.status)
        if outcome is not None:
            later = self.clock.now + timedelta(hours=self.rng.uniform(18, 30))
            self.at(later, lambda: self.settle(card, result, outcome))

    def settle(self, card: _Card, pending: MovementResult, outcome: str) -> None:
        if outcome == "confirm":
            reference = f"po_demo_{self.seed}_{pending.id}"
            result = wallet.confirm_withdrawal(
                self.uow, actor=DEMO_ACTOR, withdrawal_id=pending.id, payout_reference=reference
            )
        else:
            result = wallet.fail_withdrawal(
                self.uow, actor=DEMO_ACTOR, withdrawal_id=pending.id, failure_code=outcome
            )
        card.available = result.balance.available.amount_minor
        self.counts["withdrawal"][MovementStatus.PENDING] -= 1
        self.counts["withdrawal"][result.status] += 1

    # -- a person's day --------------------------------------------------------------------
    def random_top_up(self, holder: _Holder) -> None:
        card = self.rng.choice(holder.cards)
        amount = self.amount(card.currency, "top_up")
        method = self.rng.choices(TOP_UP_METHODS, [TOP_UP_WEIGHTS[m] for m in TOP_UP_METHODS])[0]
        if amount is not None:
            self.top_up(holder, card, amount, method)

    def random_transfer(self, holder: _Holder) -> None:
        source = self.rng.choice(holder.cards)
        own = [c for c in holder.cards if c is not source and c.currency == source.currency]
        others = [
            c
            for h in self.holders
            if h is not holder
            for c in h.cards
            if c.currency == source.currency
        ]
        targets = own if own and (self.rng.random() < 0.3 or not others) else others
        amount = self.amount(source.currency, "transfer", cap=source.available // 2)
        if targets and amount is not None:
            self.transfer(holder, source, self.rng.choice(targets), amount)

    def random_withdrawal(self, holder: _Holder) -> None:
        card = self.rng.choice(holder.cards)
        amount = self.amount(card.currency, "withdrawal", cap=card.available * 2 // 3)
        roll = self.rng.random()
        outcome = "confirm" if roll < 0.82 else "account_closed" if roll < 0.92 else "payout_failed"
        if amount is not None:
            self.withdraw(holder, card, amount, outcome)

    # -- the story ---------------------------------------------------------------------------
    def plan(self, start: datetime) -> None:
        first_day = start.date() + timedelta(days=1)
        last_quiet = self.end - timedelta(days=3)  # random withdrawals settle before the end
        for offset in range(HISTORY_DAYS):
            day = first_day + timedelta(days=offset)
            for holder in self.holders:
                busy = holder.person.activity
                for chance, action, late_ok in (
                    (0.15, self.random_top_up, True),
                    (0.25, self.random_transfer, True),
                    (0.05, self.random_withdrawal, False),
                ):
                    if self.rng.random() < chance * busy:
                        when = self._time_on(day)
                        if late_ok or when < last_quiet:
                            self.at(when, partial(action, holder))
        self.plan_refusals(start)
        self.plan_recent()

    def _time_on(self, day: date) -> datetime:
        seconds = self.rng.randrange(7 * 3600, 22 * 3600)
        return datetime.combine(day, time(), self.end.tzinfo) + timedelta(seconds=seconds)

    def plan_refusals(self, start: datetime) -> None:
        """A few refused movements, so failed records of every kind exist."""
        alice, bob, citra, _dewi = self.holders
        frozen_at = start + timedelta(days=120, hours=2)
        bob_main = bob.cards[0]
        self.at(frozen_at, lambda: self.freeze(bob, bob_main, frozen=True))
        self.at(
            frozen_at + timedelta(hours=2),
            lambda: self.top_up(bob, bob_main, Money.of_major("500000", "IDR"), "e_wallet"),
        )
        self.at(
            frozen_at + timedelta(hours=3),
            lambda: self.transfer(alice, alice.cards[0], bob_main, Money.of_major("75000", "IDR")),
        )
        self.at(frozen_at + timedelta(days=1), lambda: self.freeze(bob, bob_main, frozen=False))

        def overdraw_transfer() -> None:
            card = citra.cards[0]
            amount = Money(card.available + 5_000_000, card.currency)  # 50,000 IDR too much
            self.transfer(citra, card, alice.cards[0], amount)

        def overdraw_withdrawal() -> None:
            card = bob.cards[1]
            limits = self.uow.settings.limits_for(card.currency, "withdrawal")
            floor = limits.minimum if limits else 1
            amount = Money(max(card.available + 10_000, floor), card.currency)
            self.withdraw(bob, card, amount, None)

        self.at(start + timedelta(days=200, hours=5), overdraw_transfer)
        self.at(start + timedelta(days=250, hours=7), overdraw_withdrawal)

    def plan_recent(self) -> None:
        """Something from today: a top-up, and withdrawals still waiting for their payout."""
        alice, _bob, _citra, dewi = self.holders
        self.at(
            self.end - timedelta(hours=4),
            lambda: self.top_up(alice, alice.cards[0], Money.of_major("1000000", "IDR"), "cash"),
        )
        for holder, ago in ((alice, timedelta(hours=3)), (dewi, timedelta(minutes=50))):

            def pending(holder: _Holder = holder) -> None:
                card = holder.cards[0]
                amount = self.amount(card.currency, "withdrawal", cap=card.available // 2)
                if amount is not None:
                    self.withdraw(holder, card, amount, None)

            self.at(self.end - ago, pending)

    def freeze(self, holder: _Holder, card: _Card, *, frozen: bool) -> None:
        cards.set_frozen(self.uow, actor=holder.actor, card_id=card.id, frozen=frozen)

    # -- day zero ----------------------------------------------------------------------------
    def enrol_second_factor(self, user_id: int) -> None:
        """TOTP for a staff member, as real staff get it: an enrolment code, then the secret,
        confirmed with a code of the fake clock's step (long past once the walk ends, so the
        real current code is accepted)."""
        actor = users.actor_for(self.uow, user_id)
        code = mfa.issue_enrolment_code(self.uow, actor=DEMO_ACTOR, user_id=user_id)
        enrolment = mfa.begin_totp_enrolment(self.uow, actor=actor, enrolment_code=code.code)
        totp = pyotp.TOTP(enrolment.secret)
        mfa.confirm_totp(self.uow, actor=actor, code=totp.at(self.clock.now))
        self.second_factors.append(
            DemoSecondFactor(code.email, enrolment.secret, enrolment.otpauth_uri)
        )

    def open_accounts(self) -> list[tuple[str, str]]:
        logins: list[tuple[str, str]] = []
        for person in (*STAFF, *CARDHOLDERS):
            created = users.create_user(
                self.uow, actor=DEMO_ACTOR, email=person.email, first_name=person.first_name,
                last_name=person.last_name, password=DEMO_PASSWORD, roles=person.roles,
                verified=True,
            )  # fmt: skip
            logins.append((created.email, ", ".join(created.roles)))
            if person in STAFF:
                self.enrol_second_factor(created.id)
            if not person.cards:
                continue
            actor = users.actor_for(self.uow, created.id)
            holder = _Holder(person, actor, str(self.rng.randrange(10**9, 10**10)))
            for spec in person.cards:
                self.clock.now += timedelta(minutes=self.rng.randint(1, 20))
                issued = cards.issue_card(
                    self.uow, actor=actor, user_id=created.id, card_type=spec.card_type,
                    brand=spec.brand, currency=spec.currency, name=spec.name,
                )  # fmt: skip
                card = _Card(issued.card_id, created.id, issued.currency)
                holder.cards.append(card)
                self.by_id[card.id] = card
            self.holders.append(holder)
        # Opening balances, cycling through every top-up method.
        for holder in self.holders:
            for card in holder.cards:
                self.clock.now += timedelta(minutes=self.rng.randint(5, 90))
                opening = Money.of_major(self.rng.choice(OPENING_BALANCE[card.currency]),
                                         card.currency)  # fmt: skip
                self.top_up(holder, card, opening, next(self.methods))
        return logins


def seed_demo(make_uow: MakeUow, *, now: datetime, seed: int = 2026) -> DemoSummary:
    """Create the demo staff, cardholders and cards, then a year of top-ups, transfers and
    withdrawals ending at ``now`` (timezone-aware), all through the services. Raises Conflict
    when a demo user exists already."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    start = now - timedelta(days=HISTORY_DAYS)
    clock = _Clock(start)
    uow = make_uow(clock)
    walk = _Walk(uow, clock, Random(seed), seed, now)
    logins = walk.open_accounts()
    walk.plan(start)
    walk.run()
    return DemoSummary(
        users=len(logins),
        cards=len(walk.by_id),
        movements={
            kind: {str(status): n for status, n in sorted(counter.items()) if n}
            for kind, counter in walk.counts.items()
        },
        first_at=walk.first_at or start,
        last_at=walk.last_at or now,
        logins=tuple(logins),
        second_factors=tuple(walk.second_factors),
    )
