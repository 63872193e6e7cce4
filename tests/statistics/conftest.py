"""A known dataset made through the real services over two years, and the statistics computed
again here, independently of the roll-ups and their triggers: from the movements' own rows
(read back with plain SELECTs) and the postings, aggregated in Python."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import pytest

from portal.domain.errors import CardDeclined, InsufficientFunds
from portal.domain.money import Money
from portal.domain.types import Actor, IssuedCard
from portal.services.merchants import payments
from portal.services.shared.uow import UnitOfWork
from portal.services.wallet import wallet
from portal.services.wallet.wallet import BankAccount
from tests.conftest import SYSTEM, Clock, Factory, new_key
from tests.merchants.conftest import Shop, card_details, open_shop

BANK = BankAccount("Bank Central Asia", "1234 5678 90", "Ada Lovelace")
PAYMENT_STATUS = {"requires_payment_method": "failed", "requires_capture": "pending"}


def usd(major: str) -> Money:
    return Money.of_major(major, "USD")


@dataclass
class Dataset:
    staff: Actor
    alice: Actor
    bob: Actor
    a1: IssuedCard
    a2: IssuedCard
    b1: IssuedCard
    shop: Shop
    other: Shop
    #: A payment held for capture, a withdrawal pending: for status changes after the fact.
    held: str
    pending_withdrawal: int


def at(clock: Clock, year: int, month: int, day: int = 10) -> None:
    clock.now = datetime(year, month, day, 12, 0, tzinfo=UTC)


def pay(uow: UnitOfWork, shop: Shop, card: IssuedCard, major: str, **kw: Any) -> Any:
    return payments.create_payment(
        uow, actor=shop.api, merchant=shop.merchant.id, amount=usd(major),
        card=card_details(card, cvc=kw.pop("cvc", None)), idempotency_key=new_key(), **kw,
    )  # fmt: skip


def build(uow: UnitOfWork, make: Factory, clock: Clock) -> Dataset:
    """Movements of every family and status, spread over December 2025 to March 2026."""
    at(clock, 2025, 12, 5)
    staff = make.user(roles=("admin",))
    alice, bob = make.user(), make.user()
    a1 = make.card(alice, balance="900", brand="visa")
    a2 = make.card(alice, balance="50", brand="mastercard")
    b1 = make.card(bob, balance="300", brand="amex")
    shop = open_shop(uow, make, staff)
    other = open_shop(uow, make, staff, name="Other shop")
    # December 2025
    wallet.transfer(uow, actor=alice, from_card_id=a1.card_id, to_card_id=b1.card_id,
                    amount=usd("25"), idempotency_key=new_key())  # fmt: skip
    pay(uow, shop, a1, "40")
    pay(uow, other, b1, "12.50")
    # January 2026
    at(clock, 2026, 1, 3)
    make.fund(a2, "70")
    wallet.top_up(
        uow,
        actor=alice,
        card_id=a1.card_id,
        amount=usd("33"),
        method="cash",
        idempotency_key=new_key(),
    )  # fmt: skip  (stays pending)
    with pytest.raises(InsufficientFunds):
        wallet.transfer(uow, actor=alice, from_card_id=a2.card_id, to_card_id=b1.card_id,
                        amount=usd("5000"), idempotency_key=new_key())  # fmt: skip
    wallet.transfer(uow, actor=bob, from_card_id=b1.card_id, to_card_id=a2.card_id,
                    amount=usd("10"), idempotency_key=new_key())  # fmt: skip
    first = pay(uow, shop, a1, "60")
    pay(uow, shop, b1, "15")
    with pytest.raises(CardDeclined):
        pay(uow, shop, a2, "5", cvc="000" if a2.cvv != "000" else "111")
    payments.create_refund(uow, actor=shop.api, merchant=shop.merchant.id, payment=first.id,
                           idempotency_key=new_key(), amount=1500)  # fmt: skip
    held = pay(uow, shop, a1, "20", capture_method="manual")
    canceled = pay(uow, shop, b1, "7", capture_method="manual")
    payments.cancel_payment(uow, actor=shop.api, merchant=shop.merchant.id, payment=canceled.id,
                            idempotency_key=new_key())  # fmt: skip
    # February 2026
    at(clock, 2026, 2, 14)
    done = wallet.withdraw(uow, actor=alice, card_id=a1.card_id, amount=usd("100"), bank=BANK,
                           idempotency_key=new_key())  # fmt: skip
    wallet.confirm_withdrawal(uow, actor=SYSTEM, withdrawal_id=done.id)
    failed = wallet.withdraw(uow, actor=bob, card_id=b1.card_id, amount=usd("30"), bank=BANK,
                             idempotency_key=new_key())  # fmt: skip
    wallet.fail_withdrawal(uow, actor=SYSTEM, withdrawal_id=failed.id)
    pending = wallet.withdraw(uow, actor=alice, card_id=a2.card_id, amount=usd("20"),
                              bank=BANK, idempotency_key=new_key())  # fmt: skip
    make.fund(b1, "45")
    # March 2026
    at(clock, 2026, 3, 1)
    pay(uow, other, a2, "9.99")
    wallet.top_up(uow, actor=bob, card_id=b1.card_id, amount=usd("5.13"),
                  method="e_wallet", idempotency_key=new_key())  # fmt: skip
    from tests.conftest import confirm_top_ups

    confirm_top_ups(uow)  # the 33.00 cash one succeeds; 5.13 is declined
    return Dataset(staff, alice, bob, a1, a2, b1, shop, other, held.id, pending.id)


# -- the independent computation -------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    family: str
    scope: str  # system, card, card_received, merchant, api_key
    scope_id: int
    currency: str
    status: str
    method: str
    day: date
    amount: int


def _day(moment: datetime) -> date:
    return moment.astimezone(UTC).date()


def cells(uow: UnitOfWork) -> list[Cell]:
    """Every movement's contributions, from its row."""

    def rows(sql: str) -> list[Any]:
        return list(uow.run(lambda u: u.execute(sql).all()))

    out: list[Cell] = []

    def add(family: str, scopes: Iterable[tuple[str, int | None]], r: Any, status: str,
            method: str, amount: int, day: date | None = None) -> None:  # fmt: skip
        for scope, scope_id in scopes:
            if scope_id is not None:
                out.append(Cell(family, scope, scope_id, r.currency.strip(), status, method,
                                day or _day(r.created_at), amount))  # fmt: skip

    for r in rows("SELECT * FROM top_ups"):
        add("top_ups", [("system", 0), ("card", r.card_id)], r, r.status, r.method,
            r.amount_minor)  # fmt: skip
    for r in rows("SELECT * FROM transfers"):
        sides = [("system", 0), ("card", r.from_card_id), ("card_received", r.to_card_id)]
        add("transfers", sides, r, r.status, "", r.amount_minor)
    for r in rows("SELECT * FROM withdrawals"):
        add("withdrawals", [("system", 0), ("card", r.card_id)], r, r.status, "", r.amount_minor)
    for r in rows("SELECT * FROM payments"):
        status = PAYMENT_STATUS.get(r.status, r.status)
        amount = r.received_minor if r.status == "succeeded" else r.amount_minor
        add("payments", [("system", 0), ("merchant", r.merchant_id), ("card", r.card_id),
                         ("api_key", r.api_key_id)], r, status, r.card_brand, amount)  # fmt: skip
    for r in rows("SELECT * FROM refunds"):
        add("refunds", [("system", 0), ("merchant", r.merchant_id), ("card", r.card_id),
                        ("api_key", r.api_key_id)], r, r.status, "", r.amount_minor)  # fmt: skip
    for r in rows(
        "SELECT p.amount_minor, p.currency, p.created_at, a.kind, a.card_id, a.merchant_id"
        " FROM postings p JOIN accounts a ON a.id = p.account_id"
    ):
        if r.kind == "wallet":
            add("balances", [("system", 0), ("card", r.card_id)], r, "succeeded", "",
                r.amount_minor)  # fmt: skip
        elif r.kind == "merchant":
            add("balances", [("merchant", r.merchant_id)], r, "succeeded", "", r.amount_minor)
    return out


def select(
    found: list[Cell], family: str, scope: str, scope_id: int, *, status: str = "succeeded",
    method: str | None = None,
) -> list[Cell]:  # fmt: skip
    return [
        c for c in found
        if c.family == family and c.scope == scope and c.scope_id == scope_id
        and (status == "all" or c.status == status) and (method is None or c.method == method)
    ]  # fmt: skip


def _currencies(found: list[Cell], first: int, last: int, balance: bool) -> list[str]:
    """The currencies with figures in the years asked (balances: up to their end)."""
    return sorted({c.currency for c in found
                   if c.day.year <= last and (balance or c.day.year >= first)})  # fmt: skip


def monthly(
    found: list[Cell], year: int, balance: bool = False
) -> dict[str, list[tuple[int, int]]]:
    """currency -> twelve (amount, count); closing balances when ``balance``."""
    out: dict[str, list[tuple[int, int]]] = {}
    for cur in _currencies(found, year, year, balance):
        mine = [c for c in found if c.currency == cur]
        months = []
        for m in range(1, 13):
            inside = [c for c in mine if c.day.year == year and c.day.month == m]
            amount = sum(c.amount for c in inside)
            if balance:
                amount = sum(c.amount for c in mine if (c.day.year, c.day.month) <= (year, m))
            months.append((amount, len(inside)))
        out[cur] = months
    return out


def yearly(found: list[Cell], year: int, balance: bool = False) -> dict[str, list[tuple[int, int]]]:
    out: dict[str, list[tuple[int, int]]] = {}
    for cur in _currencies(found, year - 4, year, balance):
        mine = [c for c in found if c.currency == cur]
        years = []
        for y in range(year - 4, year + 1):
            inside = [c for c in mine if c.day.year == y]
            amount = sum(c.amount for c in inside)
            if balance:
                amount = sum(c.amount for c in mine if c.day.year <= y)
            years.append((amount, len(inside)))
        out[cur] = years
    return out


def grouped(found: list[Cell], key: Any) -> dict[Any, tuple[int, int]]:
    out: dict[Any, list[int]] = defaultdict(lambda: [0, 0])
    for c in found:
        out[key(c)][0] += c.amount
        out[key(c)][1] += 1
    return {k: (v[0], v[1]) for k, v in out.items()}
