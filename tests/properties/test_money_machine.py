"""The money rules as a hypothesis state machine over the services, on real PostgreSQL.

Every movement kind that exists runs in random order against a model of what each account
should hold: top-ups, transfers (between a cardholder's own cards and to another person's),
withdrawals (confirmed or failed by staff, paid or declined by their payout job, a job that dies
after marking one ``processing``, holds that expire), merchant payments (automatic, or held and
then captured in full or in part, or cancelled; declines; paid by a signed-in cardholder at a
hosted checkout, once), refunds (full and partial, to a closed card), merchant payouts on request
or by the daily schedule and their job (paid, or declined and returned; its lease lost after it
marked the payout ``processing``), the settlement day that makes captured funds available, and
cards frozen or closed. Each money-moving request may be replayed with its idempotency key (the
same answer, nothing moves again) or its key reused for another request (refused), and invalid
requests are sent (refused with the field named, nothing changes).

After every step: each wallet's posted balance, pending debits and available balance equal the
model and available is never negative; each merchant balance (ledger and available/pending)
and each system account (funding, payouts clearing, fee revenue) equals the model; the ledger
sums to zero per currency; and the reconciliation behind ``portal ledger verify`` passes.

Each example runs inside a savepoint of the test's outer transaction, rolled back at its end,
on a clock of its own that starts at a fixed instant. Seeded (derandomized) and bounded.

A top-up is ``pending`` until its funding job (``portal.services.wallet.funding``) hears from the
funding processor (issue 11 A1): then posted, or declined (the demo declines an amount ending in
13) with nothing posted; a job may also die after marking it ``processing``.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from portal.domain.errors import (
    CardDeclined,
    CardUnavailable,
    CurrencyMismatch,
    Forbidden,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidInput,
    InvalidState,
    LimitExceeded,
    NotFound,
    PortalError,
    RateLimited,
    UnexpectedState,
)
from portal.domain.ids import new_public_id
from portal.domain.money import Money
from portal.domain.types import Actor, IssuedCard, MovementStatus
from portal.services.ledger import reconciliation
from portal.services.merchants import checkout, payments, payouts, settlements
from portal.services.merchants.payments import CardDetails
from portal.services.shared import jobs
from portal.services.shared.uow import UnitOfWork
from portal.services.wallet import activity, cards, funding, recipients, wallet
from portal.services.wallet.payouts import pay_out
from portal.services.wallet.wallet import BankAccount
from tests.conftest import Clock, Factory
from tests.merchants.conftest import open_shop

START = datetime(2026, 12, 3, 9, 30, tzinfo=UTC)
GOOD_BANK = BankAccount("Bank Central Asia", "1234 5678 90", "Account Holder")
#: The demo processor declines an account number ending in 0000 (``account_closed``).
CLOSED_BANK = BankAccount("Bank Central Asia", "9999 0000", "Account Holder")
#: A Luhn-valid number no card has (the demo issuer draws random ones).
UNKNOWN_NUMBER = "4000056655665556"
#: The tables whose row counts a refused or replayed request must leave unchanged.
COUNTED = (
    "journal_entries", "postings", "holds", "balance_transactions", "top_ups", "transfers",
    "withdrawals", "payments", "refunds", "payouts", "jobs",
)  # fmt: skip
#: What each card holds when an example starts (minor units).
STARTING_BALANCE = "300"
#: Replays and key reuse only within the idempotency keys' retention (24 h by default).
REPLAY_WINDOW = timedelta(hours=23)

PENDING, PROCESSING = MovementStatus.PENDING, MovementStatus.PROCESSING
SUCCEEDED, FAILED = MovementStatus.SUCCEEDED, MovementStatus.FAILED


def key() -> str:
    return uuid.uuid4().hex


def attempt(call: Callable[[], Any]) -> Any:
    """The call's result, or the domain error it raised."""
    try:
        return call()
    except PortalError as error:
        return error


def attempt_lease(call: Callable[[], Any]) -> Any:
    """The call's result, or the LeaseLost it raised."""
    try:
        return call()
    except jobs.LeaseLost as lost:
        return lost


def refused(outcome: Any, cls: type[PortalError], code: str | None = None) -> None:
    assert type(outcome) is cls, f"expected {cls.__name__}({code}), got {outcome!r}"
    if code is not None:
        assert outcome.code == code, (outcome.code, code)


# -- the model --------------------------------------------------------------------------------
@dataclass
class CardModel:
    issued: IssuedCard
    owner: Actor
    posted: int = 0
    pending: int = 0
    frozen: bool = False
    archived: bool = False

    @property
    def currency(self) -> str:
        return self.issued.currency

    @property
    def available(self) -> int:
        return self.posted - self.pending

    @property
    def ref(self) -> str:
        return self.issued.public_id

    def refusal(self) -> str | None:
        """Why the card can neither send nor receive (``card_refusal``'s code), or None."""
        return "card_archived" if self.archived else "card_frozen" if self.frozen else None

    def details(self, cvc: str | None = None) -> CardDetails:
        i = self.issued
        return CardDetails(i.number, i.expiry_month, i.expiry_year, cvc or i.cvv)


@dataclass
class TopUpModel:
    id: int
    card: CardModel
    amount: int
    created: datetime
    status: str


@dataclass
class WithdrawalModel:
    id: int
    public_id: str
    card: CardModel
    amount: int
    created: datetime
    closed_bank: bool
    status: str = PENDING


@dataclass
class PaymentModel:
    id: str
    card: CardModel | None
    amount: int
    currency: str
    status: str
    created: datetime
    received: int = 0
    refunded: int = 0


@dataclass
class Txn:
    """A merchant balance transaction as the model expects it."""

    net: int
    currency: str
    available_on: datetime
    status: str  # pending | available
    payout: str | None = None


@dataclass
class PayoutModel:
    id: str
    pk: int
    amount: int
    currency: str
    closed_bank: bool
    status: str = "pending"


@dataclass
class Keyed:
    """A request made with an idempotency key: ``call`` sends it again, ``check`` judges the
    answer to a replay, ``conflict`` sends another request with the same key."""

    label: str
    at: datetime
    call: Callable[[], Any]
    check: Callable[[Any], None]
    conflict: Callable[[], Any]


def same_error(first: PortalError) -> Callable[[Any], None]:
    def check(again: Any) -> None:
        assert type(again) is type(first) and again.code == first.code, (again, first)
        assert again.replayed

    return check


def same_movement(first: Any) -> Callable[[Any], None]:
    def check(again: Any) -> None:
        assert not isinstance(again, PortalError), again
        assert again.replayed
        fields_ = ("kind", "id", "public_id", "status", "amount", "card_id",
                   "counterparty_card_id", "journal_entry_id")  # fmt: skip
        assert [getattr(again, f) for f in fields_] == [getattr(first, f) for f in fields_]
        assert again.balance.posted == first.balance.posted
        assert again.balance.pending_debits == first.balance.pending_debits

    return check


def same_object(first: Any) -> Callable[[Any], None]:
    def check(again: Any) -> None:
        assert not isinstance(again, PortalError), again
        assert again.replayed and again.to_dict() == first.to_dict()

    return check


def payments_minimum(uow: UnitOfWork, currency: str) -> int:
    limits = uow.settings.limits_for(currency, "payment")
    assert limits is not None
    return limits.minimum


def fee_for(bps: int, fixed: dict[str, int], amount: int, currency: str) -> int:
    """The fee rule as the README states it: basis points rounded half up, plus the fixed part,
    never more than the capture."""
    return min(amount, (amount * bps + 5000) // 10000 + fixed.get(currency, 0))


# -- the machine ------------------------------------------------------------------------------
CARD = st.integers(min_value=0, max_value=5)
PICK = st.integers(min_value=0, max_value=10_000)


class MoneyMachine(RuleBasedStateMachine):
    app: Flask
    connection: sa.Connection

    def __init__(self) -> None:
        super().__init__()
        self.savepoint = self.connection.begin_nested()
        self.clock = Clock(START)
        self.uow = UnitOfWork(
            self.app.extensions["portal.session_factory"], self.app.config["SERVICE_SETTINGS"],
            clock=self.clock,
        )  # fmt: skip
        self.make = Factory(self.uow)
        self.staff = self.make.user(roles=("admin",))
        alice, bob, carol = (self.make.user(first_name=n) for n in ("Alice", "Bob", "Carol"))
        self.cards = [
            CardModel(self.make.card(owner, currency=cur), owner)
            for owner, cur in ((alice, "USD"), (alice, "USD"), (alice, "EUR"), (bob, "USD"),
                               (bob, "EUR"), (carol, "USD"))
        ]  # fmt: skip
        self.shop = open_shop(self.uow, self.make, self.staff)
        payouts.set_bank_account(
            self.uow, actor=self.shop.owner, merchant=self.shop.merchant.id, bank=GOOD_BANK
        )
        self.bank_closed = False
        self.withdrawals: list[WithdrawalModel] = []
        self.payments: list[PaymentModel] = []
        self.txns: list[Txn] = []
        self.payouts: list[PayoutModel] = []
        #: (currency, day) the daily schedule paid out (once a day, whatever the amount).
        self.scheduled_days: set[tuple[str, Any]] = set()
        self.keyed: list[Keyed] = []
        self.top_ups: list[TopUpModel] = []
        self.guesses: list[tuple[int | None, datetime]] = []  # wrong codes/numbers: card, at
        self.merchant: dict[str, int] = defaultdict(int)
        self.merchant_accounts = set(self._merchant_rows())
        self.system: dict[tuple[str, str], int] = defaultdict(int)
        self.system_baseline = self._system_rows()
        for card in self.cards:  # every card starts with some money, so movements get going
            made = self.make.fund(card.issued, STARTING_BALANCE)
            assert made.status == SUCCEEDED, made
            self.top_ups.append(TopUpModel(made.id, card, made.amount.amount_minor, START, PENDING))
            self._funded(self.top_ups[-1])

    def teardown(self) -> None:
        self.savepoint.rollback()

    # -- reading the database -------------------------------------------------------------
    def _rows(self, sql: str, **params: Any) -> list[Any]:
        return list(self.connection.execute(sa.text(sql), params).all())

    def _merchant_rows(self) -> dict[str, tuple[int, int]]:
        rows = self._rows(
            "SELECT currency, posted_minor, pending_debits_minor FROM accounts"
            " WHERE merchant_id = :m AND kind = 'merchant'",
            m=self.shop.merchant.id,
        )
        return {r.currency: (r.posted_minor, r.pending_debits_minor) for r in rows}

    def _system_rows(self) -> dict[tuple[str, str], int]:
        rows = self._rows(
            "SELECT a.kind, a.currency, COALESCE(SUM(p.amount_minor), 0) AS total"
            " FROM accounts a LEFT JOIN postings p ON p.account_id = a.id"
            " WHERE a.kind IN ('funding', 'payouts', 'fees') GROUP BY a.kind, a.currency"
        )
        return {(r.kind, r.currency): int(r.total) for r in rows}

    def _counts(self) -> dict[str, int]:
        sql = " UNION ALL ".join(f"SELECT '{t}', count(*) FROM {t}" for t in COUNTED)
        return {name: n for name, n in self._rows(sql)}

    def _unchanged(self, call: Callable[[], Any]) -> Any:
        """Run ``call`` and prove it wrote no money, record or job."""
        before = self._counts()
        outcome = attempt(call)
        assert self._counts() == before, (outcome, before, self._counts())
        return outcome

    def _fresh(self) -> list[Keyed]:
        return [k for k in self.keyed if k.at > self.clock.now - REPLAY_WINDOW]

    def _pick(self, items: list[Any], n: int, eligible: Callable[[Any], bool] | None = None) -> Any:
        """One of ``items`` (by ``n``); with ``eligible``, one it holds for, most of the time and
        when there is one, so that sequences reach deep states as often as refusals."""
        if eligible is not None and n % 4:
            chosen = [x for x in items if eligible(x)]
            if chosen:
                return chosen[n % len(chosen)]
        return items[n % len(items)]

    # -- top-ups ----------------------------------------------------------------------------
    @rule(i=CARD, amount=st.sampled_from([500, 1013, 2000, 7550, 20_000, 50_000]),
          confirmed_at_once=st.booleans())  # fmt: skip
    def top_up(self, i: int, amount: int, confirmed_at_once: bool) -> None:
        card = self.cards[i]
        k = key()

        def call(amount: int = amount) -> Any:
            return wallet.top_up(
                self.uow, actor=card.owner, card_id=card.ref,
                amount=Money(amount, card.currency), method="bank_transfer", idempotency_key=k,
            )  # fmt: skip

        counted = (PENDING, PROCESSING, SUCCEEDED)  # what counts toward the daily cap
        day = self.clock.now.replace(hour=0, minute=0, second=0, microsecond=0)
        today = sum(
            t.amount for t in self.top_ups
            if t.card.owner.id == card.owner.id and t.card.currency == card.currency
            and t.created >= day and t.status in counted
        )  # fmt: skip
        limits = self.uow.settings.limits_for(card.currency, "top_up")
        assert limits is not None and limits.daily is not None
        outcome = attempt(call)
        if card.refusal() or today + amount > limits.daily:
            if card.refusal():
                refused(outcome, CardUnavailable, card.refusal())
            else:
                refused(outcome, LimitExceeded, "daily_limit_exceeded")
            check = same_error(outcome)
        else:
            assert not isinstance(outcome, PortalError), outcome
            assert outcome.status == PENDING, outcome  # nothing posted until the job runs
            made = TopUpModel(outcome.id, card, amount, self.clock.now, PENDING)
            self.top_ups.append(made)
            (queued,) = self._rows(
                "SELECT count(*) FROM jobs WHERE dedupe_key = :k", k=f"funding:{made.id}"
            )
            assert queued[0] == 1
            if confirmed_at_once:
                self._settle_top_up(made)
            check = same_movement(outcome)
        self.keyed.append(
            Keyed("top_up", self.clock.now, call, check, lambda: call(amount=amount + 100))
        )

    def _settle_top_up(self, t: TopUpModel) -> None:
        """Run ``t``'s funding job: posted, or declined for an amount ending in 13."""
        funding.collect(self.uow, {"top_up_id": t.id})
        if t.status in (PENDING, PROCESSING):
            if str(t.amount).endswith("13"):
                t.status = FAILED
            else:
                self._funded(t)
        (row,) = self._rows("SELECT status FROM top_ups WHERE id = :i", i=t.id)
        assert row.status == t.status

    def _funded(self, t: TopUpModel) -> None:
        t.status = SUCCEEDED
        t.card.posted += t.amount
        self.system["funding", t.card.currency] -= t.amount

    @precondition(lambda self: self.top_ups)
    @rule(n=PICK, dies=st.sampled_from([False, False, True]))
    def funding_job(self, n: int, dies: bool) -> None:
        """The funding processor answers: the money arrived (posted, whatever the card's state
        now) or, for an amount ending in 13, the demo declines it (failed, nothing posted). Or
        the job marks the top-up ``processing`` and its worker dies before asking."""
        if not dies:
            t = self._pick(self.top_ups, n, lambda t: t.status in (PENDING, PROCESSING))
            self._settle_top_up(t)
            return
        t = self._pick(self.top_ups, n, lambda t: t.status == PENDING)
        order = wallet.begin_funding(self.uow, top_up_id=t.id)
        if t.status in (PENDING, PROCESSING):
            assert order is not None and order.amount.amount_minor == t.amount
            t.status = PROCESSING
        else:
            assert order is None

    # -- transfers --------------------------------------------------------------------------
    @rule(src=CARD, dst=PICK, amount=st.integers(min_value=1, max_value=15_000),
          memo=st.sampled_from(["", "rent"]))  # fmt: skip
    def transfer(self, src: int, dst: int, amount: int, memo: str) -> None:
        """Between one's own cards or to another person's."""
        s = self.cards[src]
        # Another card (the same card is an invalid request, below), mostly of the currency.
        others = [c for c in self.cards if c is not s]
        alike = [c for c in others if c.currency == s.currency]
        d = alike[dst % len(alike)] if dst % 4 else others[dst % len(others)]
        k = key()
        to = d.ref
        if d.owner.id != s.owner.id:
            # Another person's card is named by the reference (``rcp_``) its look-up by number
            # issues to this sender (issue 11 A5), never by its card id.
            found = attempt(
                lambda: activity.find_recipient(self.uow, actor=s.owner, number=d.issued.number)
            )
            if d.archived:
                refused(found, NotFound)
                return
            assert found.card_public_id == d.ref and found.reference.startswith("rcp_")
            to = found.reference

        def call(amount: int = amount, memo: str = memo) -> Any:
            return wallet.transfer(
                self.uow, actor=s.owner, from_card_id=s.ref, to_card_id=to,
                amount=Money(amount, s.currency), idempotency_key=k, memo=memo,
            )  # fmt: skip

        outcome = attempt(call)
        if d.currency != s.currency:
            refused(outcome, CurrencyMismatch)  # refused before anything is recorded
            return
        code = s.refusal() or d.refusal()
        if code or s.available < amount:
            if code:
                refused(outcome, CardUnavailable, code)
            else:
                refused(outcome, InsufficientFunds)
            check = same_error(outcome)
        else:
            assert outcome.status == SUCCEEDED, outcome
            s.posted -= amount
            d.posted += amount
            assert outcome.balance.posted.amount_minor == s.posted
            check = same_movement(outcome)
        self.keyed.append(Keyed("transfer", self.clock.now, call, check,
                                lambda: call(amount=amount + 1)))  # fmt: skip

    # -- withdrawals ------------------------------------------------------------------------
    @rule(i=CARD, amount=st.integers(min_value=450, max_value=15_000), closed=st.booleans())
    def withdraw(self, i: int, amount: int, closed: bool) -> None:
        card = self.cards[i]
        k = key()
        bank = CLOSED_BANK if closed else GOOD_BANK

        def call(amount: int = amount) -> Any:
            return wallet.withdraw(
                self.uow, actor=card.owner, card_id=card.ref,
                amount=Money(amount, card.currency), bank=bank, idempotency_key=k,
            )  # fmt: skip

        outcome = self._unchanged(call) if amount < 500 else attempt(call)
        if amount < 500:
            refused(outcome, LimitExceeded)
            return
        code = card.refusal()
        if code or card.available < amount:
            if code:
                refused(outcome, CardUnavailable, code)
            else:
                refused(outcome, InsufficientFunds)
            check = same_error(outcome)
        else:
            assert outcome.status == PENDING, outcome
            card.pending += amount
            self.withdrawals.append(
                WithdrawalModel(
                    outcome.id, outcome.public_id, card, amount, self.clock.now, closed
                )  # fmt: skip
            )
            (queued,) = self._rows(
                "SELECT count(*) FROM jobs WHERE dedupe_key = :k", k=f"payout:{outcome.id}"
            )
            assert queued[0] == 1
            check = same_movement(outcome)
        self.keyed.append(
            Keyed("withdraw", self.clock.now, call, check, lambda: call(amount=amount + 1))
        )

    def _settled(self, w: WithdrawalModel, succeeded: bool) -> None:
        w.card.pending -= w.amount
        if succeeded:
            w.card.posted -= w.amount
            self.system["payouts", w.card.currency] += w.amount
            w.status = SUCCEEDED
        else:
            w.status = FAILED

    @precondition(lambda self: self.withdrawals)
    @rule(n=PICK, how=st.sampled_from(["staff_confirms", "staff_fails", "job", "job", "job_dies"]))
    def settle_withdrawal(self, n: int, how: str) -> None:
        """Staff confirm or fail a withdrawal by hand, or its payout job runs (paid, or declined
        for a closed account), or the job marks it ``processing`` and its worker dies."""
        if how == "job":
            self._withdrawal_payout_job(n)
            return
        if how == "job_dies":
            self._withdrawal_payout_job_dies(n)
            return
        confirm = how == "staff_confirms"
        w = self._pick(self.withdrawals, n, lambda w: w.status == PENDING)
        settle = wallet.confirm_withdrawal if confirm else wallet.fail_withdrawal
        outcome = attempt(lambda: settle(self.uow, actor=self.staff, withdrawal_id=w.public_id))
        if w.status == PROCESSING:
            refused(outcome, UnexpectedState)  # with the processor: only its job settles
            return
        if w.status == PENDING:
            self._settled(w, confirm)
        assert outcome.status == w.status, (outcome, w)

    def _withdrawal_payout_job(self, n: int) -> None:
        w = self._pick(self.withdrawals, n, lambda w: w.status in (PENDING, PROCESSING))
        pay_out(self.uow, {"withdrawal_id": w.id})
        if w.status in (PENDING, PROCESSING):
            self._settled(w, succeeded=not w.closed_bank)
        (row,) = self._rows("SELECT status, failure_code FROM withdrawals WHERE id = :i", i=w.id)
        assert row.status == w.status
        if w.status == FAILED and w.closed_bank and row.failure_code != "payout_failed":
            assert row.failure_code in ("account_closed", "hold_expired"), row

    def _withdrawal_payout_job_dies(self, n: int) -> None:
        w = self._pick(self.withdrawals, n, lambda w: w.status == PENDING)
        order = wallet.begin_payout(self.uow, withdrawal_id=w.id)
        if w.status in (PENDING, PROCESSING):
            assert order is not None and order.amount.amount_minor == w.amount
            w.status = PROCESSING
        else:
            assert order is None

    # -- time, holds and settlement days -----------------------------------------------------
    @rule(hours=st.sampled_from([0, 1, 7, 25, 49, 73]))
    def time_passes(self, hours: int) -> None:
        """Time passes and the worker's periodic tasks run: withdrawal holds and uncaptured
        payments expire, captured funds whose settlement day came become available."""
        self.clock.advance(hours=hours)
        now = self.clock.now
        hold = timedelta(hours=self.uow.settings.withdrawal_hold_hours)
        due = [w for w in self.withdrawals if w.status == PENDING and w.created + hold <= now]
        assert wallet.expire_holds(self.uow, actor=self.staff) == len(due)
        for w in due:
            self._settled(w, succeeded=False)
        cutoff = now - timedelta(days=self.uow.settings.authorization_days)
        old = [p for p in self.payments if p.status == "requires_capture" and p.created <= cutoff]
        assert payments.expire_uncaptured(self.uow, actor=self.staff) == len(old)
        for p in old:
            self._released(p)
            p.status = "canceled"
        ripe = [t for t in self.txns if t.status == "pending" and t.available_on <= now]
        assert settlements.release_available(self.uow) == len(ripe)
        for t in ripe:
            t.status = "available"

    # -- cards ------------------------------------------------------------------------------
    @rule(i=CARD, change=st.sampled_from(["freeze", "unfreeze", "unfreeze", "close", "restore",
                                          "restore", "restore"]))  # fmt: skip
    def card_state(self, i: int, change: str) -> None:
        """The holder freezes or unfreezes a card; staff close (archive) or restore it."""
        card = self.cards[i]
        if change in ("close", "restore"):
            archived = change == "close"
            cards.set_archived(self.uow, actor=self.staff, card_id=card.ref, archived=archived)
            card.archived = archived
            return
        frozen = change == "freeze"
        outcome = attempt(
            lambda: cards.set_frozen(self.uow, actor=card.owner, card_id=card.ref, frozen=frozen)
        )
        if card.archived:
            refused(outcome, InvalidState)
            return
        card.frozen = frozen

    # -- merchant payments ------------------------------------------------------------------
    def _guess_limits_reached(self, card: CardModel | None) -> bool:
        since = self.clock.now - payments.CVC_WINDOW
        recent = [(c, at) for c, at in self.guesses if at > since]
        per_card = sum(1 for c, _ in recent if card is not None and c == card.issued.card_id)
        s = self.uow.settings
        return per_card >= s.cvc_failures_per_card or len(recent) >= s.cvc_failures_per_key

    @rule(i=CARD, amount=st.integers(min_value=40, max_value=15_000), manual=st.booleans(),
          variant=st.sampled_from(["ok"] * 8 + ["wrong_cvc", "other_currency",
                                                 "unknown_number"]))  # fmt: skip
    def pay_merchant(self, i: int, amount: int, manual: bool, variant: str) -> None:
        card: CardModel | None = self.cards[i]
        assert card is not None
        currency = card.currency
        details = card.details()
        if variant == "wrong_cvc":
            details = card.details(cvc="000" if card.issued.cvv != "000" else "001")
        elif variant == "other_currency":
            currency = "EUR" if card.currency == "USD" else "USD"
        elif variant == "unknown_number":
            details = CardDetails(UNKNOWN_NUMBER, 12, 2030, "123")
            card = None
        k = key()

        def call(amount: int = amount) -> Any:
            return payments.create_payment(
                self.uow, actor=self.shop.api, merchant=self.shop.merchant.id,
                amount=Money(amount, currency), card=details, idempotency_key=k,
                capture_method="manual" if manual else "automatic",
            )  # fmt: skip

        if amount < 50:
            refused(self._unchanged(call), LimitExceeded)
            return
        if self._guess_limits_reached(card):
            refused(self._unchanged(call), RateLimited, "too_many_card_attempts")
            return
        outcome = attempt(call)
        self.merchant_accounts.add(currency)  # opened on the first payment in a currency
        decline = None
        if card is None:
            decline = "incorrect_number"
        elif variant == "wrong_cvc":
            decline = "incorrect_cvc"
        elif card.refusal():
            decline = card.refusal()
        elif currency != card.currency:
            decline = "currency_not_supported"
        elif card.available < amount:
            decline = "insufficient_funds"
        if decline is not None:
            refused(outcome, CardDeclined)
            assert outcome.details["decline_code"] == decline, outcome.details
            if decline in ("incorrect_number", "incorrect_cvc"):
                self.guesses.append((card.issued.card_id if card else None, self.clock.now))
            made = outcome.details["payment"]
            assert made["status"] == "requires_payment_method"
            failed = PaymentModel(
                made["id"], card, amount, currency, "requires_payment_method", self.clock.now
            )
            self.payments.append(failed)
            check = same_error(outcome)
        else:
            assert card is not None
            p = PaymentModel(outcome.id, card, amount, currency, outcome.status, self.clock.now)
            self.payments.append(p)
            if manual:
                assert outcome.status == "requires_capture", outcome
                card.pending += amount
            else:
                assert outcome.status == "succeeded", outcome
                self._captured(p, amount, release=0)
            assert outcome.fee == (p.received and self._fee(amount, currency))
            check = same_object(outcome)
        self.keyed.append(
            Keyed("payment", self.clock.now, call, check, lambda: call(amount=amount + 1))
        )

    @rule(i=CARD, amount=st.integers(min_value=50, max_value=15_000), manual=st.booleans(),
          other_currency=st.sampled_from([False, False, False, True]))  # fmt: skip
    def pay_at_checkout(self, i: int, amount: int, manual: bool, other_currency: bool) -> None:
        """The merchant opens a hosted checkout session; the cardholder pays it from their own
        card (signed in: no card details), once."""
        card = self.cards[i]
        currency = ("EUR" if card.currency == "USD" else "USD") if other_currency else card.currency
        session = checkout.create_checkout_session(
            self.uow, actor=self.shop.api, merchant=self.shop.merchant.id,
            amount=Money(amount, currency), success_url="https://shop.example/thanks",
            cancel_url="https://shop.example/cart", idempotency_key=key(),
            capture_method="manual" if manual else "automatic",
        )  # fmt: skip
        k = key()

        def call(session_id: str = session.id) -> Any:
            return checkout.pay_checkout_session(
                self.uow, actor=card.owner, session=session_id, card=card.ref, idempotency_key=k
            )

        outcome = attempt(call)
        self.merchant_accounts.add(currency)
        decline = card.refusal() or (
            "currency_not_supported" if currency != card.currency
            else "insufficient_funds" if card.available < amount else None
        )  # fmt: skip
        if decline is not None:
            refused(outcome, CardDeclined)
            assert outcome.details["decline_code"] == decline, outcome.details
            made = outcome.details["payment"]
            failed = PaymentModel(
                made["id"], card, amount, currency, "requires_payment_method", self.clock.now
            )
            self.payments.append(failed)
            check = same_error(outcome)
        else:
            assert not isinstance(outcome, PortalError), outcome
            paid = outcome.payment
            assert (outcome.session.status, paid.amount) == ("complete", amount)
            p = PaymentModel(paid.id, card, amount, currency, paid.status, self.clock.now)
            self.payments.append(p)
            if manual:
                assert paid.status == "requires_capture", paid
                card.pending += amount
            else:
                assert paid.status == "succeeded", paid
                self._captured(p, amount, release=0)

            def check(again: Any, first: Any = outcome) -> None:
                assert not isinstance(again, PortalError), again
                assert again.replayed and again.payment.to_dict() == first.payment.to_dict()

            # A paid session is paid once: another confirmation is refused, nothing moves.
            again = self._unchanged(
                lambda: checkout.pay_checkout_session(
                    self.uow,
                    actor=card.owner,
                    session=session.id,
                    card=card.ref,
                    idempotency_key=key(),
                )  # fmt: skip
            )
            refused(again, UnexpectedState, "checkout_session_completed")
        other = new_public_id("checkout_session")
        self.keyed.append(
            Keyed("checkout", self.clock.now, call, check, lambda: call(session_id=other))
        )

    def _fee(self, amount: int, currency: str) -> int:
        m = self.shop.merchant
        return fee_for(m.fee_bps, m.fee_fixed, amount, currency)

    def _captured(self, p: PaymentModel, amount: int, *, release: int) -> None:
        assert p.card is not None
        fee = self._fee(amount, p.currency)
        p.card.pending -= release
        p.card.posted -= amount
        p.received, p.status = amount, "succeeded"
        self.merchant[p.currency] += amount - fee
        self.system["fees", p.currency] += fee
        days = self.uow.settings.settlement_delay_days
        day = self.clock.now.replace(hour=0, minute=0, second=0, microsecond=0)
        on = day + timedelta(days=days) if days > 0 else self.clock.now
        self.txns.append(Txn(amount - fee, p.currency, on,
                             "available" if on <= self.clock.now else "pending"))  # fmt: skip

    def _released(self, p: PaymentModel) -> None:
        assert p.card is not None
        p.card.pending -= p.amount

    @precondition(lambda self: self.payments)
    @rule(n=PICK, portion=st.sampled_from([None, 1.0, 0.5, 0.01, 1.01]))
    def capture(self, n: int, portion: float | None) -> None:
        p = self._pick(self.payments, n, lambda p: p.status == "requires_capture")
        # Below the payment minimum a capture is refused (amount_too_small; the fee could take
        # it whole): test_a_capture_the_fee_would_take_whole_is_refused, below.
        least = payments_minimum(self.uow, p.currency)
        part = None if portion is None else max(least, int(p.amount * portion))
        k = key()

        def call(part: int | None = part) -> Any:
            return payments.capture_payment(
                self.uow, actor=self.shop.api, merchant=self.shop.merchant.id, payment=p.id,
                idempotency_key=k, amount_to_capture=part,
            )  # fmt: skip

        if p.status != "requires_capture":
            refused(self._unchanged(call), UnexpectedState, "payment_unexpected_state")
            return
        if part is not None and part > p.amount:
            refused(self._unchanged(call), InvalidInput, "amount_too_large")
            return
        outcome = attempt(call)
        assert not isinstance(outcome, PortalError), outcome
        self._captured(p, p.amount if part is None else part, release=p.amount)
        assert (outcome.status, outcome.amount_received) == ("succeeded", p.received)
        self.keyed.append(Keyed("capture", self.clock.now, call, same_object(outcome),
                                lambda: call(part=1 if part is None else None)))  # fmt: skip

    @precondition(lambda self: self.payments)
    @rule(n=PICK)
    def cancel(self, n: int) -> None:
        p = self._pick(self.payments, n, lambda p: p.status == "requires_capture")
        k = key()

        def call(reason: str = "requested_by_customer") -> Any:
            return payments.cancel_payment(
                self.uow, actor=self.shop.api, merchant=self.shop.merchant.id, payment=p.id,
                idempotency_key=k, reason=reason,
            )  # fmt: skip

        if p.status not in ("requires_capture", "requires_payment_method"):
            refused(self._unchanged(call), UnexpectedState, "payment_unexpected_state")
            return
        outcome = attempt(call)
        assert not isinstance(outcome, PortalError), outcome
        if p.status == "requires_capture":
            self._released(p)
        p.status = "canceled"
        assert outcome.status == "canceled"
        self.keyed.append(Keyed("cancel", self.clock.now, call, same_object(outcome),
                                lambda: call(reason="duplicate")))  # fmt: skip

    @precondition(lambda self: self.payments)
    @rule(n=PICK, portion=st.sampled_from([None, 0.5, 0.0, 1.01]))
    def refund(self, n: int, portion: float | None) -> None:
        p = self._pick(self.payments, n, lambda p: p.received > p.refunded)
        left = p.received - p.refunded
        value = None if portion is None else max(1, int(left * portion) + (portion > 1))
        k = key()

        def call(value: int | None = value) -> Any:
            return payments.create_refund(
                self.uow, actor=self.shop.api, merchant=self.shop.merchant.id, payment=p.id,
                idempotency_key=k, amount=value,
            )  # fmt: skip

        if p.status != "succeeded":
            refused(self._unchanged(call), UnexpectedState, "payment_unexpected_state")
            return
        if left == 0:
            refused(self._unchanged(call), UnexpectedState, "charge_already_refunded")
            return
        amount = left if value is None else value
        if amount > left:
            refused(self._unchanged(call), InvalidInput, "amount_too_large")
            return
        assert p.card is not None
        if not p.card.archived and self.merchant[p.currency] < amount:
            refused(self._unchanged(call), UnexpectedState, "balance_insufficient")
            return
        outcome = attempt(call)
        assert not isinstance(outcome, PortalError), outcome
        assert outcome.amount == amount
        if p.card.archived:  # nothing can go back to a closed card: recorded as failed
            assert (outcome.status, outcome.failure_reason) == (
                "failed",
                payments.REFUND_CARD_CLOSED,
            )
        else:
            assert outcome.status == "succeeded"
            p.refunded += amount
            p.card.posted += amount
            self.merchant[p.currency] -= amount
            self.txns.append(Txn(-amount, p.currency, self.clock.now, "available"))
        self.keyed.append(Keyed("refund", self.clock.now, call, same_object(outcome),
                                lambda: call(value=1 if value is None else None)))  # fmt: skip

    # -- merchant payouts -------------------------------------------------------------------
    @rule(currency=st.sampled_from(["USD", "USD", "EUR"]),
          bank=st.sampled_from([None, None, "good", "closed"]),
          scheduled=st.sampled_from([False, False, True]))  # fmt: skip
    def merchant_payout(self, currency: str, bank: str | None, scheduled: bool) -> None:
        """The owner pays out the available balance (after setting another bank account: a
        closed one declines the payout when its job runs); or the daily schedule runs, paying
        out every currency's available balance once a day after ``payout_time``."""
        if bank is not None:
            payouts.set_bank_account(
                self.uow, actor=self.shop.owner, merchant=self.shop.merchant.id,
                bank=CLOSED_BANK if bank == "closed" else GOOD_BANK,
            )  # fmt: skip
            self.bank_closed = bank == "closed"
        if scheduled:
            self._daily_payouts()
            return
        k = key()

        def call(currency: str = currency) -> Any:
            return payouts.create_payout(
                self.uow, actor=self.shop.owner, merchant=self.shop.merchant.id,
                idempotency_key=k, currency=currency,
            )  # fmt: skip

        due = self._due(currency)
        total = sum(t.net for t in due)
        if currency not in self.merchant_accounts:
            refused(self._unchanged(call), InvalidInput)
            return
        if total < payouts.minimum(self.uow, currency):
            refused(self._unchanged(call), UnexpectedState, "balance_insufficient")
            return
        outcome = attempt(call)
        assert not isinstance(outcome, PortalError), outcome
        assert (outcome.amount, outcome.status, outcome.automatic) == (total, "pending", False)
        self._paid_out(outcome.id, due)
        other = "EUR" if currency == "USD" else "USD"
        self.keyed.append(Keyed("payout", self.clock.now, call, same_object(outcome),
                                lambda: call(currency=other)))  # fmt: skip

    def _due(self, currency: str) -> list[Txn]:
        """The balance transactions a payout in ``currency`` would take now."""
        now = self.clock.now
        return [t for t in self.txns if t.currency == currency and t.payout is None
                and (t.status == "available" or t.available_on <= now)]  # fmt: skip

    def _paid_out(self, payout_id: str, due: list[Txn]) -> None:
        (row,) = self._rows(
            "SELECT id, amount_minor, currency FROM payouts WHERE public_id = :p", p=payout_id
        )
        total, currency = sum(t.net for t in due), row.currency
        assert row.amount_minor == total
        self.payouts.append(PayoutModel(payout_id, row.id, total, currency, self.bank_closed))
        for t in due:
            t.payout, t.status = payout_id, "available"
        self.txns.append(Txn(-total, currency, self.clock.now, "available", payout=payout_id))
        self.merchant[currency] -= total
        self.system["payouts", currency] += total
        (queued,) = self._rows(
            "SELECT count(*) FROM jobs WHERE dedupe_key = :k", k=f"{payouts.PAY_JOB}:{row.id}"
        )
        assert queued[0] == 1

    def _daily_payouts(self) -> None:
        now = self.clock.now
        at = self.uow.settings.payout_time
        today = now.date()
        expected = []
        if at is not None and (now.hour, now.minute) >= at:
            for currency in sorted(self.merchant_accounts):
                due = self._due(currency)
                if (currency, today) in self.scheduled_days:
                    continue
                if sum(t.net for t in due) >= payouts.minimum(self.uow, currency):
                    expected.append((currency, due))
        assert payouts.run_schedule(self.uow) == len(expected)
        made = self._rows(
            "SELECT public_id, currency FROM payouts WHERE merchant_id = :m AND automatic"
            " AND scheduled_for = :day ORDER BY currency",
            m=self.shop.merchant.id, day=today,
        )  # fmt: skip
        made = [r for r in made if (r.currency, today) not in self.scheduled_days]
        assert [r.currency for r in made] == [cur for cur, _ in expected]
        for row, (currency, due) in zip(made, expected, strict=True):
            self._paid_out(row.public_id, due)
            self.scheduled_days.add((currency, today))

    @precondition(lambda self: self.payouts)
    @rule(n=PICK, lease_lost=st.sampled_from([False, False, True]))
    def merchant_payout_job(self, n: int, lease_lost: bool) -> None:
        """The payout's job runs: paid, or declined for a closed account (the money returns to
        the balance, available at once). Or another worker holds the job now: this one marks
        the payout ``processing``, finds its lease lost and stops before calling the bank."""
        po = self._pick(self.payouts, n, lambda po: po.status in ("pending", "processing"))
        if lease_lost:
            (job,) = self._rows(
                "SELECT id FROM jobs WHERE dedupe_key = :k OR payload->>'payout_id' = :pk"
                " ORDER BY id LIMIT 1",
                k=f"{payouts.PAY_JOB}:{po.pk}", pk=str(po.pk),
            )  # fmt: skip
            before = self._counts()
            with jobs.running(job.id, "a-worker-that-lost-the-lease", lease_seconds=60):
                outcome = attempt_lease(lambda: payouts.pay(self.uow, {"payout_id": po.pk}))
            assert self._counts() == before  # nothing moved, the bank was not asked
            if po.status in ("pending", "processing"):
                assert isinstance(outcome, jobs.LeaseLost), outcome
                po.status = "processing"
        else:
            payouts.pay(self.uow, {"payout_id": po.pk})
            if po.status in ("pending", "processing"):
                if po.closed_bank:
                    po.status = "failed"
                    self.system["payouts", po.currency] -= po.amount
                    self.merchant[po.currency] += po.amount
                    self.txns.append(Txn(po.amount, po.currency, self.clock.now, "available"))
                else:
                    po.status = "paid"
        got = payouts.get_payout(
            self.uow, actor=self.shop.api, merchant=self.shop.merchant.id, payout=po.id
        )
        assert got.status == po.status
        (asked,) = self._rows(
            "SELECT count(*) FROM demo_processor_requests WHERE idempotency_key = :k", k=po.id
        )
        assert asked[0] == (po.status in ("paid", "failed"))  # the bank was asked once, if at all

    # -- replays, reused keys and invalid requests ------------------------------------------
    @precondition(lambda self: self.keyed)
    @rule(n=PICK, same_request=st.booleans())
    def replay(self, n: int, same_request: bool) -> None:
        """A request sent again with its key: the same answer, nothing moves again. Or its key
        reused for another request: refused, nothing changes."""
        fresh = self._fresh()
        if not fresh:
            return
        made = self._pick(fresh, n)
        if same_request:
            made.check(self._unchanged(made.call))
        else:
            refused(self._unchanged(made.conflict), IdempotencyConflict)

    @rule(kind=st.sampled_from(sorted(
        ["transfer_zero", "transfer_negative", "transfer_over_max", "transfer_same_card",
         "transfer_from_others_card", "transfer_unsupported_currency", "transfer_to_no_card",
         "transfer_no_key", "withdraw_bad_account", "withdraw_over_max", "top_up_bad_method",
         "confirm_by_cardholder", "confirm_no_withdrawal", "pay_bad_number",
         "pay_bad_capture_method", "pay_bad_expiry", "capture_zero", "capture_no_payment",
         "refund_negative", "refund_bad_reason", "payout_bad_currency", "payout_by_cardholder",
         "transfer_to_others_card_by_id", "transfer_stale_reference", "transfer_others_reference"]
    )), i=CARD)  # fmt: skip
    def invalid_request(self, kind: str, i: int) -> None:
        card = self.cards[i]
        other = next(c for c in self.cards if c.owner.id != card.owner.id)
        mine = next(c for c in self.cards if c is not card and c.currency == card.currency
                    and c.owner.id == card.owner.id) if i in (0, 1) else other  # fmt: skip
        usd = lambda n: Money(n, card.currency)  # noqa: E731
        uow, api, m = self.uow, self.shop.api, self.shop.merchant.id

        def transfer(amount: Money, *, src: CardModel = card, dst: str = mine.ref,
                     k: str = "k") -> Any:  # fmt: skip
            return wallet.transfer(uow, actor=card.owner, from_card_id=src.ref, to_card_id=dst,
                                   amount=amount, idempotency_key=k and key())  # fmt: skip

        payment = self.payments[0].id if self.payments else new_public_id("payment")

        def reference(sender: Actor, minutes_ago: int = 0) -> str:
            return recipients.issue(
                uow.settings, sender_id=sender.id, card_id=other.issued.card_id,
                now=self.clock.now - timedelta(minutes=minutes_ago),
            )  # fmt: skip

        cases: dict[str, tuple[Callable[[], Any], type[PortalError], str | None]] = {
            "transfer_zero": (lambda: transfer(usd(0)), InvalidInput, "amount"),
            "transfer_negative": (lambda: transfer(usd(-100)), InvalidInput, "amount"),
            "transfer_over_max": (lambda: transfer(usd(1_000_001)), LimitExceeded, "amount"),
            "transfer_same_card": (lambda: transfer(usd(100), dst=card.ref), InvalidInput,
                                   "to_card_id"),
            "transfer_from_others_card": (lambda: transfer(usd(100), src=other, dst=card.ref),
                                          NotFound, "from_card_id"),
            "transfer_unsupported_currency": (lambda: transfer(Money(100, "GBP")), InvalidInput,
                                              "currency"),
            "transfer_to_no_card": (lambda: transfer(usd(100), dst=new_public_id("card")),
                                    NotFound, "to_card_id"),
            "transfer_to_others_card_by_id": (lambda: transfer(usd(100), dst=other.ref),
                                              NotFound, "to_card_id"),
            "transfer_stale_reference": (lambda: transfer(
                usd(100), dst=reference(card.owner, minutes_ago=16)), NotFound, "to_card_id"),
            "transfer_others_reference": (lambda: transfer(
                usd(100), dst=reference(other.owner)), NotFound, "to_card_id"),
            "transfer_no_key": (lambda: transfer(usd(100), k=""), InvalidInput,
                                "idempotency_key"),
            "withdraw_bad_account": (lambda: wallet.withdraw(
                uow, actor=card.owner, card_id=card.ref, amount=usd(1000),
                bank=BankAccount("Bank", "12", "Holder"), idempotency_key=key()),
                InvalidInput, "account_number"),
            "withdraw_over_max": (lambda: wallet.withdraw(
                uow, actor=card.owner, card_id=card.ref, amount=usd(1_000_001), bank=GOOD_BANK,
                idempotency_key=key()), LimitExceeded, "amount"),
            "top_up_bad_method": (lambda: wallet.top_up(
                uow, actor=card.owner, card_id=card.ref, amount=usd(1000), method="cheque",
                idempotency_key=key()), InvalidInput, "method"),
            "confirm_by_cardholder": (lambda: wallet.confirm_withdrawal(
                uow, actor=card.owner,
                withdrawal_id=self.withdrawals[0].public_id if self.withdrawals
                else new_public_id("withdrawal")), Forbidden, None),
            "confirm_no_withdrawal": (lambda: wallet.confirm_withdrawal(
                uow, actor=self.staff, withdrawal_id=new_public_id("withdrawal")), NotFound,
                "withdrawal_id"),
            "pay_bad_number": (lambda: payments.create_payment(
                uow, actor=api, merchant=m, amount=usd(1000),
                card=CardDetails("4242424242424241", 12, 2030, "123"), idempotency_key=key()),
                InvalidInput, "card.number"),
            "pay_bad_capture_method": (lambda: payments.create_payment(
                uow, actor=api, merchant=m, amount=usd(1000), card=card.details(),
                idempotency_key=key(), capture_method="later"), InvalidInput, "capture_method"),
            "pay_bad_expiry": (lambda: payments.create_payment(
                uow, actor=api, merchant=m, amount=usd(1000),
                card=CardDetails(card.issued.number, 13, card.issued.expiry_year,
                                 card.issued.cvv),
                idempotency_key=key()), InvalidInput, "card.exp_month"),
            "capture_zero": (lambda: payments.capture_payment(
                uow, actor=api, merchant=m, payment=payment, idempotency_key=key(),
                amount_to_capture=0), InvalidInput, "amount_to_capture"),
            "capture_no_payment": (lambda: payments.capture_payment(
                uow, actor=api, merchant=m, payment=new_public_id("payment"),
                idempotency_key=key()), NotFound, "payment"),
            "refund_negative": (lambda: payments.create_refund(
                uow, actor=api, merchant=m, payment=payment, idempotency_key=key(), amount=-5),
                InvalidInput, "amount"),
            "refund_bad_reason": (lambda: payments.create_refund(
                uow, actor=api, merchant=m, payment=payment, idempotency_key=key(),
                reason="because"), InvalidInput, "reason"),
            "payout_bad_currency": (lambda: payouts.create_payout(
                uow, actor=self.shop.owner, merchant=m, idempotency_key=key(), currency="US"),
                InvalidInput, "currency"),
            "payout_by_cardholder": (lambda: payouts.create_payout(
                uow, actor=card.owner, merchant=m, idempotency_key=key()), NotFound, None),
        }  # fmt: skip
        call, cls, param = cases[kind]
        outcome = self._unchanged(call)
        assert isinstance(outcome, cls), (kind, outcome)
        if param is not None:
            assert outcome.param == param, (kind, outcome.param)

    # -- invariants -------------------------------------------------------------------------
    @invariant()
    def wallets_match_the_model(self) -> None:
        rows = self._rows(
            "SELECT card_id, posted_minor, pending_debits_minor FROM accounts"
            " WHERE card_id = ANY(:ids)",
            ids=[c.issued.card_id for c in self.cards],
        )
        got = {r.card_id: (r.posted_minor, r.pending_debits_minor) for r in rows}
        for c in self.cards:
            assert got[c.issued.card_id] == (c.posted, c.pending), (c.ref, got, c)
            assert c.available >= 0, c

    @invariant()
    def merchant_balance_matches_the_model(self) -> None:
        rows = self._merchant_rows()
        assert set(rows) == self.merchant_accounts, (rows, self.merchant_accounts)
        for cur, (posted, pending) in rows.items():
            assert (posted, pending) == (self.merchant[cur], 0), (cur, posted, self.merchant)
        now = self.clock.now
        expected = {
            cur: (sum(t.net for t in self.txns if t.currency == cur and (
                      t.status == "available" or t.available_on <= now)),
                  sum(t.net for t in self.txns if t.currency == cur and t.status == "pending"
                      and t.available_on > now))
            for cur in rows
        }  # fmt: skip
        got = {b.currency: (b.available, b.pending) for b in settlements.get_balance(
            self.uow, actor=self.shop.owner, merchant=self.shop.merchant.id)}  # fmt: skip
        assert got == expected

    @invariant()
    def system_accounts_match_the_model(self) -> None:
        got = self._system_rows()
        for k, base in self.system_baseline.items():
            assert got[k] - base == self.system.get(k, 0), (k, got[k] - base, self.system)

    @invariant()
    def the_ledger_sums_to_zero_and_reconciles(self) -> None:
        totals = self._rows("SELECT currency, SUM(amount_minor) FROM postings GROUP BY currency")
        assert all(total == 0 for _, total in totals), totals
        report = reconciliation.reconcile(self.uow)
        assert report.ok, report.violations


@pytest.fixture
def money_machine(app: Flask, connection: sa.Connection) -> type[MoneyMachine]:
    return type("MoneyMachineOnTestDb", (MoneyMachine,), {"app": app, "connection": connection})


def test_money_rules_hold_over_every_movement(money_machine: type[MoneyMachine]) -> None:
    run_state_machine_as_test(
        money_machine,
        settings=settings(
            max_examples=15,
            stateful_step_count=100,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            print_blob=False,
        ),  # fmt: skip
    )


def test_a_capture_the_fee_would_take_whole_is_refused(uow: UnitOfWork, make: Factory) -> None:
    """Found by the machine above: capturing 0.26 USD of a held payment (the fee, 0.01 + 0.30,
    capped at the capture, took all of it) wrote a zero-net balance transaction with no posting,
    which reconciliation flagged. A capture below the payment minimum is refused now."""
    staff = make.user(roles=("admin",))
    shop = open_shop(uow, make, staff)
    card = make.card(make.user(), balance="100")
    held = payments.create_payment(
        uow, actor=shop.api, merchant=shop.merchant.id, amount=Money(2697, "USD"),
        card=CardDetails(card.number, card.expiry_month, card.expiry_year, card.cvv),
        idempotency_key=key(), capture_method="manual",
    )  # fmt: skip
    captured = attempt(
        lambda: payments.capture_payment(
            uow,
            actor=shop.api,
            merchant=shop.merchant.id,
            payment=held.id,
            idempotency_key=key(),
            amount_to_capture=payments_minimum(uow, "USD") - 1,
        )  # fmt: skip
    )
    assert isinstance(captured, InvalidInput), captured
    assert (captured.code, captured.param) == ("amount_too_small", "amount_to_capture")
    again = payments.get_payment(uow, actor=shop.api, merchant=shop.merchant.id, payment=held.id)
    assert again.status == "requires_capture"
    report = reconciliation.reconcile(uow)
    assert report.ok, report.violations
