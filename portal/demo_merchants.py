"""Demo merchants for ``make run``: two active merchants with API keys, a pending application,
four weeks of payments, captures, cancellations, declines and refunds, hosted checkouts
(paid, expired and open), and the daily payouts of their settled balance to their bank
accounts.

Runs after ``portal.demo.seed_demo`` (it needs the demo staff and cardholders) and, like it,
writes everything through the services with a fake clock and a seeded ``Random``. Each demo
cardholder gets a "Shopping" card per merchant currency, topped up, to pay with. The keys'
secrets are returned once so ``seed-demo`` can print them in development; they are never stored.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from random import Random

from portal.demo import CARDHOLDERS, DEMO_ACTOR, DEMO_PASSWORD, STAFF
from portal.domain.errors import CardDeclined, InvalidInput, UnexpectedState
from portal.domain.money import Money
from portal.domain.types import Actor, IssuedCard
from portal.services.identity import users
from portal.services.merchants import checkout, keys, merchants, payments, payouts, settlements
from portal.services.shared.uow import UnitOfWork
from portal.services.wallet import cards, funding, wallet

DAYS = 28
MakeUow = Callable[[Callable[[], datetime]], UnitOfWork]


@dataclass(frozen=True, slots=True)
class DemoMerchant:
    name: str
    website: str
    owner_email: str
    owner_first: str
    owner_last: str
    currency: str
    #: Typical basket sizes, major units.
    baskets: tuple[str, ...]
    per_day: int


MERCHANTS = (
    DemoMerchant("Kopi Senja", "https://kopisenja.example", "kopi@portal.test", "Rina", "Hartono",
                 "IDR", ("25000", "32000", "45000", "58000", "76000", "120000"), 6),
    DemoMerchant("Gadget Hub", "https://gadgethub.example", "gadget@portal.test", "Tom", "Lee",
                 "USD", ("9.99", "14.50", "24.00", "39.90", "79.00", "129.00"), 4),
)  # fmt: skip
APPLICANT = DemoMerchant("Batik Lestari", "https://batiklestari.example", "batik@portal.test",
                         "Sari", "Wulandari", "IDR", (), 0)  # fmt: skip
SHOPPING_FUNDS = {"IDR": "5000000", "USD": "1500"}


@dataclass(frozen=True, slots=True)
class MerchantSummary:
    merchants: tuple[str, ...]
    #: (merchant name, key secret): printed once by seed-demo in development.
    keys: tuple[tuple[str, str], ...]
    payments: dict[str, int]
    refunds: int
    #: Checkout sessions by status (complete, expired, open) at the end.
    checkouts: dict[str, int]
    logins: tuple[tuple[str, str], ...]
    #: Payouts made by the daily schedule, all paid.
    payouts: int = 0


class _Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _person(uow: UnitOfWork, email: str, first: str, last: str) -> Actor:
    created = users.create_user(
        uow, actor=DEMO_ACTOR, email=email, first_name=first, last_name=last,
        password=DEMO_PASSWORD, roles=("cardholder", "merchant"), verified=True,
    )  # fmt: skip
    return users.actor_for(uow, created.id)


def _actor_by_email(uow: UnitOfWork, email: str) -> Actor:
    user_id = uow.run(
        lambda u: u.execute("SELECT id FROM users WHERE lower(email) = :e", {"e": email}).scalar()
    )
    if user_id is None:
        raise LookupError(f"{email} is not seeded: run portal.demo.seed_demo first")
    return users.actor_for(uow, user_id)


def _pay_out_daily(uow: UnitOfWork) -> None:
    settlements.release_available(uow)
    if payouts.run_schedule(uow):
        for payout_id in uow.run(
            lambda u: u.execute("SELECT id FROM payouts WHERE status = 'pending'").scalars().all()
        ):
            payouts.pay(uow, {"payout_id": payout_id})


def seed_merchants(make_uow: MakeUow, *, now: datetime, seed: int = 2026) -> MerchantSummary:
    """Create the demo merchants (approved by the demo admin), their keys, a pending
    application and four weeks of payment history ending at ``now``."""
    rng = Random(seed)
    clock = _Clock(now - timedelta(days=DAYS + 1))
    uow = make_uow(clock)
    admin = _actor_by_email(uow, STAFF[0].email)
    counter = itertools.count(1)

    def key() -> str:
        return f"demo-merchant-{seed}-{next(counter):06d}"

    shops: list[tuple[DemoMerchant, merchants.MerchantView, Actor]] = []
    secrets: list[tuple[str, str]] = []
    logins: list[tuple[str, str]] = []
    for spec in (*MERCHANTS, APPLICANT):
        owner = _person(uow, spec.owner_email, spec.owner_first, spec.owner_last)
        logins.append((spec.owner_email, f"owner of {spec.name}"))
        applied = merchants.apply(
            uow, actor=owner, name=spec.name, website=spec.website,
            contact_email=spec.owner_email, settlement_currency=spec.currency,
        )  # fmt: skip
        if spec is APPLICANT:
            continue
        clock.now += timedelta(hours=2)
        view = merchants.decide(uow, actor=admin, merchant=applied.public_id, action="approve",
                                reason="demo: documents checked")  # fmt: skip
        created = keys.create_api_key(uow, actor=owner, merchant=view.public_id, name="Server")
        assert created.secret is not None
        secrets.append((spec.name, created.secret))
        api = keys.authenticate_api_key(uow, secret=created.secret).actor
        payouts.set_bank_account(
            uow, actor=owner, merchant=view.id,
            bank=wallet.BankAccount("Bank Central Asia", f"88{len(shops) + 1:02d} 4021 7731",
                                    spec.name),
        )  # fmt: skip
        shops.append((spec, view, api))

    # Each cardholder gets a shopping card per merchant currency.
    wallets: dict[str, list[IssuedCard]] = {}
    holders: dict[int, Actor] = {}
    for person in CARDHOLDERS:
        holder = _actor_by_email(uow, person.email)
        assert holder.id is not None
        for currency in sorted({spec.currency for spec, _, _ in shops}):
            card = cards.issue_card(
                uow, actor=holder, user_id=holder.id, card_type="debit", brand="visa",
                currency=currency, name="Shopping",
            )  # fmt: skip
            top_up = wallet.top_up(
                uow, actor=holder, card_id=card.card_id,
                amount=Money.of_major(SHOPPING_FUNDS[currency], currency),
                method="bank_transfer", idempotency_key=key(),
            )  # fmt: skip
            funding.settle(uow, top_up.id)  # the funding processor answers at once here
            wallets.setdefault(currency, []).append(card)
            holders[card.card_id] = holder

    statuses: Counter[str] = Counter()
    refunds = 0
    start = now - timedelta(days=DAYS)
    for day in range(DAYS + 1):
        # The daily payout of what became available, paid as the worker would.
        clock.now = start + timedelta(days=day, hours=2, minutes=5)
        _pay_out_daily(uow)
        for spec, view, api in shops:
            for _ in range(rng.randint(max(1, spec.per_day - 3), spec.per_day + 2)):
                clock.now = min(now, start + timedelta(days=day, seconds=rng.randint(8, 22) * 3600
                                                       + rng.randint(0, 3599)))  # fmt: skip
                card = rng.choice(wallets[spec.currency])
                manual = rng.random() < 0.25
                details = payments.CardDetails(card.number, card.expiry_month, card.expiry_year,
                                               card.cvv)  # fmt: skip
                if rng.random() < 0.04:  # a mistyped security code now and then
                    details = payments.CardDetails(card.number, card.expiry_month,
                                                   card.expiry_year, "000" if card.cvv != "000"
                                                   else "111")  # fmt: skip
                try:
                    paid = payments.create_payment(
                        uow, actor=api, merchant=view.id,
                        amount=Money.of_major(rng.choice(spec.baskets), spec.currency),
                        card=details, idempotency_key=key(),
                        capture_method="manual" if manual else "automatic",
                        description=f"Order {rng.randint(1000, 9999)}",
                        metadata={"channel": rng.choice(("web", "app", "store"))},
                    )  # fmt: skip
                except CardDeclined:
                    statuses["declined"] += 1
                    continue
                if manual and clock.now < now - timedelta(hours=6):
                    clock.now += timedelta(hours=rng.randint(1, 5))
                    if rng.random() < 0.15:
                        paid = payments.cancel_payment(
                            uow, actor=api, merchant=view.id, payment=paid.id,
                            idempotency_key=key(), reason="requested_by_customer",
                        )  # fmt: skip
                    else:
                        partial = rng.random() < 0.2
                        paid = payments.capture_payment(
                            uow, actor=api, merchant=view.id, payment=paid.id,
                            idempotency_key=key(),
                            amount_to_capture=paid.amount * 3 // 4 if partial else None,
                        )  # fmt: skip
                statuses[paid.status] += 1
                if paid.status == "succeeded" and rng.random() < 0.08:
                    clock.now += timedelta(hours=rng.randint(1, 30))
                    clock.now = min(clock.now, now)
                    try:
                        payments.create_refund(
                            uow, actor=api, merchant=view.id, payment=paid.id,
                            idempotency_key=key(), reason="requested_by_customer",
                            amount=None if rng.random() < 0.5 else paid.amount_received // 2,
                        )  # fmt: skip
                        refunds += 1
                    except (InvalidInput, UnexpectedState):
                        pass  # the balance could not cover it yet: a real refusal, kept out
    checkouts: Counter[str] = Counter()
    for spec, view, api in shops:
        for n in range(6):  # hosted checkouts: most paid by a cardholder, one left open
            clock.now = now - timedelta(days=5 - n, hours=rng.randint(1, 10) if n < 5 else 1)
            session = checkout.create_checkout_session(
                uow, actor=api, merchant=view.id,
                amount=Money.of_major(rng.choice(spec.baskets), spec.currency),
                success_url=f"{spec.website}/thanks", cancel_url=f"{spec.website}/cart",
                idempotency_key=key(), description=f"Web order {rng.randint(1000, 9999)}",
                client_reference_id=f"cart-{n + 1}", expires_in=3600 if n == 0 else 86400,
            )  # fmt: skip
            if n in (0, 5):
                continue  # one that expires unpaid, one still open
            clock.now += timedelta(minutes=rng.randint(2, 20))
            card = rng.choice(wallets[spec.currency])
            checkout.pay_checkout_session(
                uow, actor=holders[card.card_id], session=session.id, card=card.card_id,
                idempotency_key=key(),
            )  # fmt: skip
    clock.now = now
    checkout.expire_checkout_sessions(uow)
    settlements.release_available(uow)
    rows = uow.run(
        lambda u: u.execute("SELECT status, count(*) AS n FROM checkout_sessions GROUP BY 1").all()
    )
    checkouts.update({row.status: row.n for row in rows})
    return MerchantSummary(
        merchants=tuple(spec.name for spec, _, _ in shops) + (f"{APPLICANT.name} (pending)",),
        keys=tuple(secrets),
        payments=dict(statuses),
        refunds=refunds,
        checkouts=dict(checkouts),
        logins=tuple(logins),
        payouts=uow.run(lambda u: u.execute("SELECT count(*) FROM payouts").scalar_one()),
    )


def summary_lines(summary: MerchantSummary, *, show_secrets: bool) -> list[str]:
    detail = ", ".join(f"{n} {s}" for s, n in sorted(summary.payments.items()))
    lines = [
        f"demo merchants: {', '.join(summary.merchants)}",
        f"  payments: {detail}; refunds: {summary.refunds}; payouts: {summary.payouts}",
        "  checkout sessions: "
        + ", ".join(f"{n} {s}" for s, n in sorted(summary.checkouts.items())),
        "merchant logins (same password):",
        *(f"  {email:<22} {what}" for email, what in summary.logins),
    ]
    if show_secrets:
        lines.append("merchant API keys (shown once, development only):")
        lines += [f"  {name:<12} {secret}" for name, secret in summary.keys]
    return lines
