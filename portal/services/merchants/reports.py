"""Read-only figures for the merchant dashboard: today's and this month's totals, the daily and
monthly series behind its charts, a cheap change version for its live updates, a payment's
timeline, and the look-up behind an invitation link's page.

Dating (UTC): a payment counts on the day it was made (``created_at``), with what it has
received so far; a refund counts on the day it was made. So a held payment captured a day
later adds to the day it was authorised, and refunding last month's payment lowers this month's
net. Every query is a range of ``(merchant_id, created_at)`` over the ``payments`` and
``refunds`` indexes of that shape; nothing scans a merchant's whole history.

Figures per currency: ``gross`` is what succeeded payments received (captured), ``fees`` the fees
taken at capture (kept when a payment is refunded), ``refunds`` the refunds made, ``net``
``gross - fees - refunds``. The success rate is authorised attempts over all attempts, where a
declined attempt is one recorded with ``last_payment_error``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from portal.domain.errors import NotFound
from portal.domain.money import Money
from portal.domain.types import Actor
from portal.services.merchants.merchants import MerchantView, access
from portal.services.merchants.payments import PaymentView, RefundView, get_payment
from portal.services.shared.uow import UnitOfWork

DAYS = 30
MONTHS = 12
#: Payments whose latest change the live version watches (the overview lists this many).
LATEST = 8


# -- results ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Totals:
    """One currency's money over a period or a chart bucket, in minor units."""

    currency: str
    gross: int = 0
    count: int = 0
    fees: int = 0
    refunds: int = 0
    refund_count: int = 0

    @property
    def net(self) -> int:
        return self.gross - self.fees - self.refunds

    def __add__(self, other: Totals) -> Totals:
        assert other.currency == self.currency
        return Totals(
            self.currency, self.gross + other.gross, self.count + other.count,
            self.fees + other.fees, self.refunds + other.refunds,
            self.refund_count + other.refund_count,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Bucket:
    """A day or a month of one currency: ``start`` is its first day."""

    start: date
    totals: Totals
    attempts: int = 0
    declined: int = 0


@dataclass(frozen=True, slots=True)
class PeriodFigures:
    """A period's money per currency (the merchant's settlement currency first) and its
    payment attempts."""

    start: datetime
    end: datetime
    totals: tuple[Totals, ...]
    attempts: int
    declined: int

    @property
    def authorised(self) -> int:
        return self.attempts - self.declined

    @property
    def success_rate(self) -> float | None:
        """Authorised attempts over all attempts (0 to 1), None without attempts."""
        return self.authorised / self.attempts if self.attempts else None

    def of(self, currency: str) -> Totals:
        return next((t for t in self.totals if t.currency == currency), Totals(currency))


@dataclass(frozen=True, slots=True)
class Series:
    """One currency's chart: a bucket per day (or month), oldest first, gaps filled with
    zeros."""

    currency: str
    unit: str
    buckets: tuple[Bucket, ...]

    @property
    def total(self) -> Totals:
        out = Totals(self.currency)
        for bucket in self.buckets:
            out = out + bucket.totals
        return out


@dataclass(frozen=True, slots=True)
class Overview:
    merchant: MerchantView
    today: PeriodFigures
    month: PeriodFigures
    daily: tuple[Series, ...]
    monthly: tuple[Series, ...]
    as_of: datetime

    @property
    def currencies(self) -> tuple[str, ...]:
        return tuple(s.currency for s in self.monthly)


@dataclass(frozen=True, slots=True)
class TimelineEvent:
    """One step of a payment's history, oldest first."""

    kind: str  # created, authorised, declined, captured, released, partly_refunded, refunded,
    #            refund_failed, canceled, expired
    at: datetime
    title: str
    detail: str = ""
    amount: int | None = None


@dataclass(frozen=True, slots=True)
class PaymentDetail:
    payment: PaymentView
    refunds: tuple[RefundView, ...]
    timeline: tuple[TimelineEvent, ...]

    @property
    def refundable(self) -> int:
        return self.payment.amount_received - self.payment.amount_refunded


@dataclass(frozen=True, slots=True)
class InvitationPreview:
    """What an invitation link's page may show before it is accepted."""

    merchant_name: str
    role: str
    email: str
    expires_at: datetime
    #: Whether the signed-in user's address is the one invited.
    for_actor: bool


# -- periods ----------------------------------------------------------------------------------
def day_start(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def month_start(day: date) -> date:
    return day.replace(day=1)


def add_months(day: date, months: int) -> date:
    index = day.year * 12 + day.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def _days(first: date, last: date) -> list[date]:
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def _months(first: date, last: date) -> list[date]:
    out = [month_start(first)]
    while out[-1] < month_start(last):
        out.append(add_months(out[-1], 1))
    return out


# -- queries ----------------------------------------------------------------------------------
# Both read one range of the (merchant_id, created_at, id) index of their table. The bucket is
# the UTC day or month of created_at.
_PAYMENT_BUCKETS = """
    SELECT date_trunc(:unit, p.created_at AT TIME ZONE 'UTC')::date AS bucket, p.currency,
           count(*) AS attempts,
           count(*) FILTER (WHERE p.last_payment_error IS NOT NULL) AS declined,
           count(*) FILTER (WHERE p.status = 'succeeded') AS succeeded,
           coalesce(sum(p.received_minor) FILTER (WHERE p.status = 'succeeded'), 0)::bigint
             AS gross,
           coalesce(sum(p.fee_minor) FILTER (WHERE p.status = 'succeeded'), 0)::bigint AS fees
    FROM payments p
    WHERE p.merchant_id = :m AND p.created_at >= :start AND p.created_at < :end
    GROUP BY 1, 2
"""
_REFUND_BUCKETS = """
    SELECT date_trunc(:unit, r.created_at AT TIME ZONE 'UTC')::date AS bucket, r.currency,
           count(*) AS refund_count, coalesce(sum(r.amount_minor), 0)::bigint AS refunds
    FROM refunds r
    WHERE r.merchant_id = :m AND r.created_at >= :start AND r.created_at < :end
      AND r.status = 'succeeded'
    GROUP BY 1, 2
"""


def _buckets(
    uow: UnitOfWork, merchant_id: int, unit: str, first: date, end: datetime
) -> dict[tuple[date, str], Bucket]:
    params = {"unit": unit, "m": merchant_id, "start": day_start(first), "end": end}
    found: dict[tuple[date, str], Bucket] = {}
    for row in uow.execute(_PAYMENT_BUCKETS, params):
        found[(row.bucket, row.currency)] = Bucket(
            row.bucket,
            Totals(row.currency, gross=row.gross, count=row.succeeded, fees=row.fees),
            attempts=row.attempts, declined=row.declined,
        )  # fmt: skip
    for row in uow.execute(_REFUND_BUCKETS, params):
        key = (row.bucket, row.currency)
        had = found.get(key, Bucket(row.bucket, Totals(row.currency)))
        totals = had.totals + Totals(
            row.currency, refunds=row.refunds, refund_count=row.refund_count
        )
        found[key] = Bucket(had.start, totals, had.attempts, had.declined)
    return found


def _order(currencies: Iterable[str], first: str) -> tuple[str, ...]:
    rest = sorted(set(currencies) - {first})
    return (first, *rest)


def _series(
    found: dict[tuple[date, str], Bucket], unit: str, starts: Sequence[date],
    currencies: Sequence[str],
) -> tuple[Series, ...]:  # fmt: skip
    return tuple(
        Series(cur, unit, tuple(found.get((s, cur), Bucket(s, Totals(cur))) for s in starts))
        for cur in currencies
    )


def _period(
    found: dict[tuple[date, str], Bucket], first: date, last: date, currencies: Sequence[str]
) -> PeriodFigures:
    totals = {cur: Totals(cur) for cur in currencies}
    attempts = declined = 0
    for (start, cur), bucket in found.items():
        if first <= start <= last:
            totals[cur] = totals[cur] + bucket.totals
            attempts += bucket.attempts
            declined += bucket.declined
    return PeriodFigures(
        day_start(first), day_start(last + timedelta(days=1)),
        tuple(totals[c] for c in currencies), attempts, declined,
    )  # fmt: skip


def overview(
    uow: UnitOfWork, *, actor: Actor, merchant: str | int, days: int = DAYS, months: int = MONTHS
) -> Overview:
    """Today's and this month's figures, a chart of the last ``days`` days and one of the last
    ``months`` months (the current ones included), per currency. Raises NotFound, Forbidden."""

    def work(u: UnitOfWork) -> Overview:
        m = access(u, actor, merchant, "read").merchant
        now = u.now().astimezone(UTC)
        today = now.date()
        end = day_start(today + timedelta(days=1))
        first_day = min(today - timedelta(days=days - 1), month_start(today))
        daily = _buckets(u, m.id, "day", first_day, end)
        first_month = add_months(month_start(today), -(months - 1))
        monthly = _buckets(u, m.id, "month", first_month, end)
        currencies = _order((c for _, c in monthly), m.settlement_currency)
        chart_days = _days(today - timedelta(days=days - 1), today)
        return Overview(
            merchant=m,
            today=_period(daily, today, today, currencies),
            month=_period(daily, month_start(today), today, currencies),
            daily=_series(daily, "day", chart_days, currencies),
            monthly=_series(monthly, "month", _months(first_month, today), currencies),
            as_of=now,
        )

    return uow.run(work)


def period_figures(
    uow: UnitOfWork, *, actor: Actor, merchant: str | int, first: date, last: date
) -> PeriodFigures:
    """The figures of the UTC days ``first`` to ``last`` (both included). Raises NotFound,
    Forbidden."""

    def work(u: UnitOfWork) -> PeriodFigures:
        m = access(u, actor, merchant, "read").merchant
        found = _buckets(u, m.id, "day", first, day_start(last + timedelta(days=1)))
        return _period(found, first, last, _order((c for _, c in found), m.settlement_currency))

    return uow.run(work)


_VERSION = """
    SELECT m.status, m.archived_at IS NOT NULL AS archived, m.updated_at AS merchant_at,
      (SELECT p.public_id FROM payments p WHERE p.merchant_id = m.id
        ORDER BY p.created_at DESC, p.id DESC LIMIT 1) AS last_payment,
      (SELECT string_agg(concat_ws(':', l.status, l.received_minor, l.refunded_minor,
         l.updated_at), ',') FROM (SELECT p.status, p.received_minor, p.refunded_minor,
         p.updated_at FROM payments p WHERE p.merchant_id = m.id
         ORDER BY p.created_at DESC, p.id DESC LIMIT :latest) l) AS latest_state,
      (SELECT count(*) FROM payments p WHERE p.merchant_id = m.id
        AND p.status = 'requires_capture') AS held,
      (SELECT r.public_id FROM refunds r WHERE r.merchant_id = m.id
        ORDER BY r.created_at DESC, r.id DESC LIMIT 1) AS last_refund
    FROM merchants m WHERE m.id = :m
"""


def change_version(uow: UnitOfWork, *, actor: Actor, merchant: str | int) -> str:
    """A short string that changes whenever anything the overview shows may have changed: a new
    payment (the newest one), a change to one of the latest payments, a held payment captured,
    canceled or expired (fewer held; a new one is also a new newest payment), a new refund, the
    merchant's own status, and the UTC day. Index look-ups only. Raises NotFound, Forbidden."""

    def work(u: UnitOfWork) -> str:
        m = access(u, actor, merchant, "read").merchant
        row = u.execute(_VERSION, {"m": m.id, "latest": LATEST}).one()
        parts = (
            u.now().astimezone(UTC).date().isoformat(), row.status, str(row.archived),
            row.merchant_at.isoformat(), row.last_payment or "",
            row.latest_state or "", str(row.held),
            row.last_refund or "",
        )  # fmt: skip
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]

    return uow.run(work)


# -- a payment's history ----------------------------------------------------------------------
_REFUNDS_OF = (
    "SELECT r.public_id, r.amount_minor, r.currency, r.reason, r.status, r.failure_reason,"
    " r.metadata, r.created_at FROM refunds r JOIN payments p ON p.id = r.payment_id"
    " WHERE p.public_id = :payment AND p.merchant_id = :m ORDER BY r.created_at, r.id"
)

CANCEL_REASONS = {
    "duplicate": "duplicate",
    "fraudulent": "fraudulent",
    "requested_by_customer": "requested by the customer",
    "abandoned": "abandoned",
    "expired": "the hold expired before it was captured",
}
REFUND_REASONS = {
    "duplicate": "duplicate",
    "fraudulent": "fraudulent",
    "requested_by_customer": "requested by the customer",
}


def _money_text(amount: int, currency: str) -> str:
    return Money(amount, currency).format()


def timeline(payment: PaymentView, refunds: Sequence[RefundView]) -> tuple[TimelineEvent, ...]:
    """A payment's history from the payment and its refunds, oldest first."""
    p = payment
    cur = p.currency
    events = [TimelineEvent("created", p.created, "Payment created",
                            f"{_money_text(p.amount, cur)} by {p.capture_method} capture",
                            p.amount)]  # fmt: skip
    error = p.last_payment_error
    if error:
        code = str(error.get("decline_code") or error.get("code") or "declined")
        events.append(TimelineEvent("declined", p.created, "Declined", f"{code}: "
                                    f"{error.get('message', '')}".strip(), p.amount))  # fmt: skip
    else:
        held = p.capture_method == "manual"
        events.append(TimelineEvent(
            "authorised", p.created, "Authorised",
            f"{_money_text(p.amount, cur)} held on the card until captured" if held
            else "The card approved the payment", p.amount,
        ))  # fmt: skip
    if p.captured_at is not None:
        events.append(TimelineEvent("captured", p.captured_at, "Captured",
                                    f"{_money_text(p.amount_received, cur)} received, fee "
                                    f"{_money_text(p.fee, cur)}", p.amount_received))  # fmt: skip
        released = p.amount - p.amount_received
        if released > 0:
            events.append(TimelineEvent("released", p.captured_at, "Rest released",
                                        f"{_money_text(released, cur)} went back to the card "
                                        "(partial capture)", released))  # fmt: skip
    refunded = 0
    for refund in sorted(refunds, key=lambda r: r.created):
        if refund.status == "failed":
            events.append(TimelineEvent(
                "refund_failed", refund.created, "Refund failed",
                f"{_money_text(refund.amount, cur)} could not go back: the card is closed"
                f" · {refund.id}",
                refund.amount,
            ))  # fmt: skip
            continue
        if refund.status != "succeeded":
            continue
        refunded += refund.amount
        full = refunded >= p.amount_received > 0
        reason = REFUND_REASONS.get(refund.reason or "", "")
        events.append(TimelineEvent(
            "refunded" if full else "partly_refunded", refund.created,
            "Refunded" if full else "Partly refunded",
            f"{_money_text(refund.amount, cur)} returned to the card"
            + (f" ({reason})" if reason else "")
            + (f"; {_money_text(refunded, cur)} refunded in all" if refunded != refund.amount
               else "") + f" · {refund.id}",
            refund.amount,
        ))  # fmt: skip
    if p.status == "canceled" and p.canceled_at is not None:
        reason = p.cancellation_reason or ""
        expired = reason == "expired"
        detail = CANCEL_REASONS.get(reason, "")
        if p.last_payment_error is None and p.capture_method == "manual" and not expired:
            detail = (detail + "; " if detail else "") + "the hold was released"
        events.append(TimelineEvent("expired" if expired else "canceled", p.canceled_at,
                                    "Expired" if expired else "Canceled",
                                    detail[:1].upper() + detail[1:]))  # fmt: skip
    order = {"created": 0, "declined": 1, "authorised": 1, "captured": 2, "released": 3}
    return tuple(sorted(events, key=lambda e: (e.at, order.get(e.kind, 4))))


def payment_detail(
    uow: UnitOfWork, *, actor: Actor, merchant: str | int, payment: str
) -> PaymentDetail:
    """One of the merchant's payments with all its refunds and its timeline. Raises NotFound,
    Forbidden."""
    # Two reads: a refund made between them shows in the list a moment before the payment's
    # refunded amount, never the other way round and never for long.
    view = get_payment(uow, actor=actor, merchant=merchant, payment=payment)

    def work(u: UnitOfWork) -> PaymentDetail:
        m = access(u, actor, merchant, "read").merchant
        rows = u.execute(_REFUNDS_OF, {"payment": view.id, "m": m.id}).all()
        refunds = tuple(
            RefundView(
                id=r.public_id,
                payment=view.id,
                amount=r.amount_minor,
                currency=r.currency,
                reason=r.reason,
                status=r.status,
                failure_reason=r.failure_reason,
                metadata=r.metadata or {},
                created=r.created_at,
            )  # fmt: skip
            for r in rows
        )
        return PaymentDetail(view, refunds, timeline(view, refunds))

    return uow.run(work)


# -- invitations ------------------------------------------------------------------------------
def _invitation_hash(token: str) -> bytes:
    # The same digest merchants.invite_member stores (SHA-256 of the link's token); the test
    # previews a real invitation, so a change there fails here.
    return hashlib.sha256(token.encode()).digest()


def invitation_preview(uow: UnitOfWork, *, actor: Actor, token: str) -> InvitationPreview:
    """The merchant and role an open invitation link offers, for its page. Raises NotFound
    (unknown, used, withdrawn or expired link)."""

    def work(u: UnitOfWork) -> InvitationPreview:
        row: Any = u.execute(
            "SELECT m.name, i.role, i.email, i.expires_at,"
            " (SELECT lower(email) FROM users WHERE id = :u) AS mine"
            " FROM merchant_invitations i JOIN merchants m ON m.id = i.merchant_id"
            " WHERE i.token_hash = :hash AND i.accepted_at IS NULL AND i.revoked_at IS NULL"
            " AND i.expires_at > :now",
            {"hash": _invitation_hash(token or ""), "now": u.now(), "u": actor.id},
        ).first()
        if row is None:
            raise NotFound("this invitation is not valid (used, withdrawn or expired)",
                           param="token")  # fmt: skip
        return InvitationPreview(row.name, row.role, row.email, row.expires_at,
                                 row.mine == row.email)  # fmt: skip

    return uow.run(work)


__all__ = [
    "Bucket",
    "InvitationPreview",
    "Overview",
    "PaymentDetail",
    "PeriodFigures",
    "Series",
    "TimelineEvent",
    "Totals",
    "change_version",
    "invitation_preview",
    "overview",
    "payment_detail",
    "period_figures",
    "timeline",
]
