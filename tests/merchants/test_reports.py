"""The dashboard's figures (portal.services.merchants.reports) against a known dataset made
through the real payment services at set times: every expected number is computed here from
the payments and refunds the services returned, never from the report's own SQL."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta

import pytest

from portal.domain.errors import CardDeclined, NotFound
from portal.domain.money import Money
from portal.domain.types import Actor
from portal.services.merchants import merchants, payments, reports
from portal.services.merchants.payments import PaymentView, RefundView
from portal.services.shared.uow import UnitOfWork
from tests.conftest import Clock, Factory
from tests.merchants.conftest import Shop, card_details, open_shop

NOW = datetime(2026, 3, 31, 12, 0, tzinfo=UTC)


def _key() -> str:
    return uuid.uuid4().hex


class Book:
    """Makes payments and refunds at chosen moments and remembers what the services said."""

    def __init__(self, uow: UnitOfWork, clock: Clock, shop: Shop, make: Factory) -> None:
        self.uow, self.clock, self.shop = uow, clock, shop
        holder = make.user()
        self.usd = make.card(holder, balance="500")
        self.eur = make.card(holder, currency="EUR", balance="100")
        self.payments: dict[str, PaymentView] = {}
        self.refunds: list[RefundView] = []
        self.declined: list[PaymentView] = []

    def at(self, moment: datetime) -> Book:
        self.clock.now = moment
        return self

    def pay(self, major: str, *, currency: str = "USD", manual: bool = False) -> PaymentView:
        card = self.usd if currency == "USD" else self.eur
        view = payments.create_payment(
            self.uow, actor=self.shop.api, merchant=self.shop.merchant.public_id,
            amount=Money.of_major(major, currency), card=card_details(card),
            idempotency_key=_key(), capture_method="manual" if manual else "automatic",
            description=f"order {len(self.payments) + 1}",
        )  # fmt: skip
        self.payments[view.id] = view
        return view

    def decline(self, major: str) -> None:
        with pytest.raises(CardDeclined) as caught:
            self.pay(major)
        view = PaymentView.from_dict(caught.value.details["payment"])
        self.payments[view.id] = view
        self.declined.append(view)

    def capture(self, payment: PaymentView, major: str | None = None) -> PaymentView:
        view = payments.capture_payment(
            self.uow, actor=self.shop.api, merchant=self.shop.merchant.public_id,
            payment=payment.id, idempotency_key=_key(),
            amount_to_capture=Money.of_major(major, payment.currency).amount_minor
            if major else None,
        )  # fmt: skip
        self.payments[view.id] = view
        return view

    def cancel(self, payment: PaymentView) -> PaymentView:
        view = payments.cancel_payment(
            self.uow, actor=self.shop.api, merchant=self.shop.merchant.public_id,
            payment=payment.id, idempotency_key=_key(), reason="requested_by_customer",
        )  # fmt: skip
        self.payments[view.id] = view
        return view

    def refund(self, payment: PaymentView, major: str | None = None) -> RefundView:
        view = payments.create_refund(
            self.uow, actor=self.shop.api, merchant=self.shop.merchant.public_id,
            payment=payment.id, idempotency_key=_key(),
            amount=Money.of_major(major, payment.currency).amount_minor if major else None,
            reason="requested_by_customer",
        )  # fmt: skip
        self.refunds.append(view)
        return view

    # -- the expected figures, from what the services returned ------------------------------
    def expected(self, first: date, last: date, currency: str) -> dict[str, int]:
        def within(moment: datetime) -> bool:
            return first <= moment.astimezone(UTC).date() <= last

        succeeded = [p for p in self.payments.values() if p.status == "succeeded"
                     and p.currency == currency and within(p.created)]  # fmt: skip
        refunds = [r for r in self.refunds if r.currency == currency and within(r.created)]
        gross = sum(p.amount_received for p in succeeded)
        fees = sum(p.fee for p in succeeded)
        refunded = sum(r.amount for r in refunds)
        return {"gross": gross, "count": len(succeeded), "fees": fees, "refunds": refunded,
                "refund_count": len(refunds), "net": gross - fees - refunded}  # fmt: skip

    def attempts(self, first: date, last: date) -> tuple[int, int]:
        made = [p for p in self.payments.values()
                if first <= p.created.astimezone(UTC).date() <= last]  # fmt: skip
        return len(made), sum(1 for p in made if p.last_payment_error)


def _figures(totals: reports.Totals) -> dict[str, int]:
    return {"gross": totals.gross, "count": totals.count, "fees": totals.fees,
            "refunds": totals.refunds, "refund_count": totals.refund_count,
            "net": totals.net}  # fmt: skip


@pytest.fixture
def book(uow: UnitOfWork, clock: Clock, make: Factory, staff: Actor) -> Book:
    shop = open_shop(uow, make, staff)
    b = Book(uow, clock, shop, make)
    b.at(datetime(2025, 3, 15, 10, tzinfo=UTC)).pay("70")  # before the 12-month window
    b.at(datetime(2025, 4, 10, 8, tzinfo=UTC)).pay("100")  # the window's first month
    february = b.at(datetime(2026, 2, 20, 9, tzinfo=UTC)).pay("50")
    b.at(datetime(2026, 3, 5, 14, tzinfo=UTC)).refund(february, "10")  # this month's refund
    b.at(datetime(2026, 3, 1, 0, 0, tzinfo=UTC)).pay("20")  # this month, not in 30 days
    held = b.at(datetime(2026, 3, 30, 23, 59, 59, tzinfo=UTC)).pay("30", manual=True)
    b.at(datetime(2026, 3, 31, 10, tzinfo=UTC)).capture(held, "25")  # counts on March 30
    today = b.at(datetime(2026, 3, 31, 9, tzinfo=UTC)).pay("40")
    b.at(datetime(2026, 3, 31, 10, 30, tzinfo=UTC)).decline("5000")
    b.at(datetime(2026, 3, 31, 10, 45, tzinfo=UTC)).pay("12", manual=True)  # still held
    dropped = b.at(datetime(2026, 3, 31, 10, 50, tzinfo=UTC)).pay("8", manual=True)
    b.at(datetime(2026, 3, 31, 11, tzinfo=UTC)).cancel(dropped)
    b.refund(today, "15")
    b.at(datetime(2026, 3, 31, 11, 30, tzinfo=UTC)).refund(today)  # the rest: 25
    b.at(datetime(2026, 3, 31, 11, 40, tzinfo=UTC)).pay("30", currency="EUR")
    # Another merchant's payment today never counts.
    other = open_shop(uow, make, staff, name="Elsewhere")
    stranger = make.user()
    card = make.card(stranger, balance="100")
    payments.create_payment(
        uow, actor=other.api, merchant=other.merchant.public_id,
        amount=Money.of_major("33", "USD"), card=card_details(card), idempotency_key=_key(),
    )  # fmt: skip
    b.at(NOW)
    return b


def test_today_and_this_month(uow: UnitOfWork, book: Book) -> None:
    shop = book.shop
    view = reports.overview(uow, actor=shop.owner, merchant=shop.merchant.public_id)
    today, first = date(2026, 3, 31), date(2026, 3, 1)
    assert view.currencies == ("USD", "EUR")
    assert [t.currency for t in view.today.totals] == ["USD", "EUR"]

    for currency in ("USD", "EUR"):
        assert _figures(view.today.of(currency)) == book.expected(today, today, currency)
        assert _figures(view.month.of(currency)) == book.expected(first, today, currency)
    # The dataset's known values, so a wrong "expected" cannot hide a wrong report.
    usd_today = view.today.of("USD")
    # Whole minor units (PostgreSQL's sum of a bigint is a numeric: Money refuses Decimals).
    assert all(type(v) is int for v in _figures(usd_today).values())
    Money(usd_today.net, "USD")
    assert (usd_today.gross, usd_today.count, usd_today.refunds) == (4000, 1, 4000)
    assert usd_today.net == -usd_today.fees  # refunded in full, the fee kept
    usd_month = view.month.of("USD")
    assert (usd_month.gross, usd_month.count, usd_month.refunds) == (8500, 3, 5000)
    assert view.today.of("EUR").gross == 3000

    attempts, declined = book.attempts(today, today)
    assert (view.today.attempts, view.today.declined) == (attempts, declined) == (5, 1)
    assert view.today.success_rate == pytest.approx(4 / 5)
    assert (view.month.attempts, view.month.declined) == book.attempts(first, today) == (7, 1)
    assert view.month.start == datetime(2026, 3, 1, tzinfo=UTC)
    assert view.month.end == datetime(2026, 4, 1, tzinfo=UTC)


def test_daily_and_monthly_series(uow: UnitOfWork, book: Book) -> None:
    shop = book.shop
    view = reports.overview(uow, actor=shop.owner, merchant=shop.merchant.public_id)
    usd_daily = next(s for s in view.daily if s.currency == "USD")
    days = [b.start for b in usd_daily.buckets]
    assert days == [date(2026, 3, 2) + timedelta(days=n) for n in range(30)]
    for bucket in usd_daily.buckets:
        assert _figures(bucket.totals) == book.expected(bucket.start, bucket.start, "USD")
    by_day = {b.start: b.totals for b in usd_daily.buckets}
    assert by_day[date(2026, 3, 30)].gross == 2500  # captured the next day, dated when made
    assert by_day[date(2026, 3, 5)].refunds == 1000
    assert date(2026, 3, 1) not in by_day

    usd_monthly = next(s for s in view.monthly if s.currency == "USD")
    months = [b.start for b in usd_monthly.buckets]
    assert months[0] == date(2025, 4, 1) and months[-1] == date(2026, 3, 1)
    assert len(months) == 12
    for bucket in usd_monthly.buckets:
        nxt = reports.add_months(bucket.start, 1) - timedelta(days=1)
        assert _figures(bucket.totals) == book.expected(bucket.start, nxt, "USD")
    assert usd_monthly.buckets[0].totals.gross == 10000  # April 2025; March 2025 is outside
    assert usd_monthly.total.gross == 10000 + 5000 + 8500

    eur_daily = next(s for s in view.daily if s.currency == "EUR")
    assert sum(b.totals.gross for b in eur_daily.buckets) == 3000


def test_period_figures_of_any_days(uow: UnitOfWork, book: Book) -> None:
    shop = book.shop
    first, last = date(2026, 2, 1), date(2026, 3, 30)
    figures = reports.period_figures(uow, actor=shop.owner, merchant=shop.merchant.public_id,
                                     first=first, last=last)  # fmt: skip
    assert _figures(figures.of("USD")) == book.expected(first, last, "USD")
    assert (figures.attempts, figures.declined) == book.attempts(first, last)
    assert figures.of("EUR").gross == 0


def test_an_empty_merchant(uow: UnitOfWork, make: Factory, staff: Actor, clock: Clock) -> None:
    shop = open_shop(uow, make, staff, currency="EUR")
    view = reports.overview(uow, actor=shop.owner, merchant=shop.merchant.public_id)
    assert view.currencies == ("EUR",)
    assert _figures(view.today.of("EUR")) == {
        "gross": 0, "count": 0, "fees": 0, "refunds": 0, "refund_count": 0, "net": 0
    }  # fmt: skip
    assert view.today.success_rate is None
    assert len(view.daily[0].buckets) == 30 and len(view.monthly[0].buckets) == 12


def test_figures_are_the_merchants_own(
    uow: UnitOfWork, book: Book, make: Factory, staff: Actor
) -> None:
    shop = book.shop
    with pytest.raises(NotFound):
        reports.overview(uow, actor=make.user(), merchant=shop.merchant.public_id)
    with pytest.raises(NotFound):
        reports.change_version(uow, actor=make.user(), merchant=shop.merchant.public_id)
    # Staff read any merchant's figures.
    seen = reports.overview(uow, actor=staff, merchant=shop.merchant.public_id)
    assert seen.today.of("USD").gross == 4000


def test_the_version_moves_with_every_visible_change(
    uow: UnitOfWork, book: Book, clock: Clock, staff: Actor
) -> None:
    shop = book.shop
    mid = shop.merchant.public_id

    def version() -> str:
        return reports.change_version(uow, actor=shop.owner, merchant=mid)

    seen = version()
    assert version() == seen  # nothing changed
    held = book.pay("5", manual=True)
    assert version() != seen
    seen = version()
    book.capture(held)
    assert version() != seen
    seen = version()
    book.refund(held, "1")
    assert version() != seen
    seen = version()
    # A declined payment canceled later (one of the latest payments changes status).
    book.decline("9000")
    seen = version()
    book.cancel(book.declined[-1])
    assert version() != seen
    seen = version()
    # An older held payment captured (not among the latest): fewer held payments.
    old = book.at(NOW - timedelta(days=2)).pay("6", manual=True)
    book.at(NOW)
    for _ in range(reports.LATEST):
        book.pay("1")
    seen = version()
    book.capture(old)
    assert version() != seen
    seen = version()
    # The merchant's own state, and a new UTC day.
    merchants.decide(uow, actor=staff, merchant=mid, action="suspend")
    assert version() != seen
    seen = version()
    clock.now = NOW + timedelta(days=1)
    assert version() != seen


def test_timelines(uow: UnitOfWork, book: Book) -> None:
    shop = book.shop
    mid = shop.merchant.public_id

    def kinds(payment: PaymentView) -> list[str]:
        detail = reports.payment_detail(uow, actor=shop.owner, merchant=mid, payment=payment.id)
        assert detail.payment.id == payment.id
        times = [e.at for e in detail.timeline]
        assert times == sorted(times)
        return [e.kind for e in detail.timeline]

    views = list(book.payments.values())
    refunded_in_full = next(p for p in views if p.amount == 4000)
    assert kinds(refunded_in_full) == ["created", "authorised", "captured", "partly_refunded",
                                       "refunded"]  # fmt: skip
    detail = reports.payment_detail(uow, actor=shop.owner, merchant=mid,
                                    payment=refunded_in_full.id)  # fmt: skip
    assert [r.amount for r in detail.refunds] == [1500, 2500]
    assert detail.refundable == 0
    assert "40.00 USD refunded in all" in detail.timeline[-1].detail

    partly = next(p for p in views if p.amount == 3000 and p.currency == "USD")
    assert kinds(partly) == ["created", "authorised", "captured", "released"]
    captured = next(
        e
        for e in reports.payment_detail(
            uow, actor=shop.owner, merchant=mid, payment=partly.id
        ).timeline
        if e.kind == "captured"
    )
    assert captured.amount == 2500 and "25.00 USD received" in captured.detail  # fmt: skip

    assert kinds(next(p for p in views if p.amount == 1200)) == ["created", "authorised"]
    canceled = next(p for p in views if p.amount == 800)
    assert kinds(canceled) == ["created", "authorised", "canceled"]
    declined = book.declined[0]
    assert kinds(declined) == ["created", "declined"]
    declined_detail = reports.payment_detail(uow, actor=shop.owner, merchant=mid,
                                             payment=declined.id)  # fmt: skip
    assert "insufficient_funds" in declined_detail.timeline[1].detail
    february = next(p for p in views if p.amount == 5000)
    assert kinds(february) == ["created", "authorised", "captured", "partly_refunded"]


def test_invitation_preview(uow: UnitOfWork, book: Book, make: Factory) -> None:
    shop = book.shop
    invited = make.user(email=f"dev-{uuid.uuid4().hex[:6]}@example.test")
    address = users_email(uow, invited)
    invitation = merchants.invite_member(uow, actor=shop.owner, merchant=shop.merchant.public_id,
                                         email=address.upper(), role="developer")  # fmt: skip
    assert invitation.token is not None
    preview = reports.invitation_preview(uow, actor=invited, token=invitation.token)
    assert (preview.merchant_name, preview.role, preview.for_actor) == (
        shop.merchant.name, "developer", True)  # fmt: skip
    assert reports.invitation_preview(uow, actor=make.user(), token=invitation.token).for_actor \
        is False  # fmt: skip
    with pytest.raises(NotFound):
        reports.invitation_preview(uow, actor=invited, token="not-a-token")
    merchants.accept_invitation(uow, actor=invited, token=invitation.token)
    with pytest.raises(NotFound):
        reports.invitation_preview(uow, actor=invited, token=invitation.token)


def users_email(uow: UnitOfWork, actor: Actor) -> str:
    return uow.run(lambda u: u.execute("SELECT email FROM users WHERE id = :id",
                                       {"id": actor.id}).scalar_one())  # fmt: skip


def test_the_queries_use_the_merchant_date_indexes(uow: UnitOfWork, book: Book) -> None:
    """With a few years of a merchant's history, the figures read a (merchant_id, created_at)
    range of each table's index, not the merchant's whole history."""
    m = book.shop.merchant.id

    def history(u: UnitOfWork) -> None:
        u.execute(
            "INSERT INTO payments (merchant_id, amount_minor, received_minor, currency, status,"
            " capture_method, card_brand, card_last4, card_fingerprint, created_at, updated_at)"
            " SELECT :m, 100, 100, 'USD', 'succeeded', 'automatic', 'visa', '4242', 'fp',"
            " t, t FROM generate_series(:since, :until, interval '3 hours') t",
            {"m": m, "since": NOW - timedelta(days=1000), "until": NOW - timedelta(days=40)},
        )
        u.execute(
            "INSERT INTO refunds (payment_id, merchant_id, card_id, amount_minor, currency, status,"
            " created_at) SELECT p.id, :m, :card, 1, 'USD', 'succeeded', p.created_at"
            " FROM payments p WHERE p.merchant_id = :m AND p.card_fingerprint = 'fp'",
            {"m": m, "card": book.usd.card_id},
        )
        u.execute("ANALYZE payments")
        u.execute("ANALYZE refunds")

    uow.run(history)
    plans = []
    for sql in (reports._PAYMENT_BUCKETS, reports._REFUND_BUCKETS):
        params = {"unit": "day", "m": m, "start": NOW - timedelta(days=30), "end": NOW}
        rows = uow.run(lambda u, sql=sql, params=params: u.execute("EXPLAIN " + sql, params).all())
        plans.append("\n".join(r[0] for r in rows))
    assert "ix_payments_merchant_created_at_id" in plans[0], plans[0]
    assert "Seq Scan" not in plans[0], plans[0]
    assert "ix_refunds_merchant_created_at_id" in plans[1], plans[1]
    assert "Seq Scan" not in plans[1], plans[1]
