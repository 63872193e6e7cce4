"""Monthly statements of one card (issue 13): the opening balance, every posting of the month on
the card's wallet account with the balance after it, and the closing balance, all read from the
ledger's postings, so a statement ties to ``portal ledger verify``.

The month is the card owner's calendar month in their time zone (``users.time_zone``, UTC when
unset or unknown): the statement of "March" holds what the pages date in March. Its first instant
is midnight of the 1st there; the opening balance is the sum of the wallet account's postings
before that instant, the closing balance the opening plus the month's postings (those from that
instant up to the next month's first instant), and each line's balance is the opening plus the
month's postings up to and including it, in ledger order (posting id), as the activity CSV's
``balance_after`` counts. Holds (pending withdrawals and authorisations) are not postings and
are not on a statement. A month that has not begun is refused; the current month is a
statement to date.

Owner only: anyone else (staff included) is told NotFound, as for a card out of reach.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from portal.domain import cards as card_numbers
from portal.domain.errors import Forbidden, InvalidInput, NotFound
from portal.domain.locale import DEFAULT_TIME_ZONE, valid_time_zone
from portal.domain.money import Money
from portal.domain.types import Actor, ActorKind
from portal.services.shared.refs import Ref
from portal.services.shared.uow import UnitOfWork
from portal.services.wallet import activity
from portal.services.wallet.activity import METHOD_LABELS, CardSummary, masked_name

MONTH_PATTERN = r"^[0-9]{4}-[0-9]{2}$"
_MONTH = re.compile(MONTH_PATTERN)
FIRST_MONTH = date(1970, 1, 1)
_DOTS = "\u2022\u2022\u2022\u2022"


@dataclass(frozen=True, slots=True)
class StatementLine:
    """One posting on the card's wallet account: ``amount`` is signed (negative: money out)."""

    posting_id: int
    posted_at: datetime
    kind: str  # the journal entry's kind: top_up, transfer, withdrawal, payment, refund, ...
    reference: str  # the movement's public id (tu_..., tr_..., ...), or "" when there is none
    description: str
    amount: Money
    balance_after: Money


@dataclass(frozen=True, slots=True)
class Statement:
    card: CardSummary
    month: date  # the first day of the month
    time_zone: str  # the zone the month's bounds are taken in
    starts_at: datetime  # the month's first instant (UTC)
    ends_at: datetime  # the next month's first instant (UTC), exclusive
    complete: bool  # False while the month is still running (a statement to date)
    generated_at: datetime
    opening: Money
    lines: tuple[StatementLine, ...]
    closing: Money
    money_in: Money
    money_out: Money  # positive


def parse_month(text: object, param: str = "month") -> date:
    """A month written YYYY-MM (from 1970-01) as its first day. Raises InvalidInput naming
    ``param``."""
    if not isinstance(text, str) or not _MONTH.fullmatch(text):
        raise InvalidInput(f"{param} must be a month written YYYY-MM, not {text!r}", param=param)
    year, month = int(text[:4]), int(text[5:])
    if not 1 <= month <= 12:
        raise InvalidInput(f"{param} {text} is not a month of the calendar", param=param)
    first = date(year, month, 1)
    if first < FIRST_MONTH:
        raise InvalidInput(f"{param} must be {FIRST_MONTH:%Y-%m} or later", param=param)
    return first


def _next_month(first: date) -> date:
    return date(first.year + 1, 1, 1) if first.month == 12 else date(first.year, first.month + 1, 1)


def _start(first: date, zone: ZoneInfo) -> datetime:
    return datetime(first.year, first.month, 1, tzinfo=zone).astimezone(UTC)


_LINES_SQL = """
SELECT p.id, p.created_at, p.amount_minor, j.kind AS entry_kind, j.description AS entry_text,
       COALESCE(tu.public_id, tr.public_id, wd.public_id, pay.public_id, rf.public_id)::text
         AS reference,
       tu.method, tr.memo, oc.user_id AS other_owner,
       oc.brand AS other_brand, oc.last4 AS other_last4, ou.first_name AS other_first,
       ou.last_name AS other_last, wd.bank_name, wd.bank_account_last4,
       m.name AS merchant_name, pay.description AS payment_text
  FROM postings p
  JOIN journal_entries j ON j.id = p.journal_entry_id
  LEFT JOIN top_ups tu ON tu.journal_entry_id = p.journal_entry_id AND tu.card_id = :card
  LEFT JOIN transfers tr ON tr.journal_entry_id = p.journal_entry_id
       AND :card IN (tr.from_card_id, tr.to_card_id)
  LEFT JOIN cards oc ON oc.id = CASE WHEN tr.from_card_id = :card THEN tr.to_card_id
                                     ELSE tr.from_card_id END
  LEFT JOIN users ou ON ou.id = oc.user_id
  LEFT JOIN withdrawals wd ON wd.journal_entry_id = p.journal_entry_id AND wd.card_id = :card
  LEFT JOIN payments pay ON pay.capture_entry_id = p.journal_entry_id AND pay.card_id = :card
  LEFT JOIN refunds rf ON rf.journal_entry_id = p.journal_entry_id AND rf.card_id = :card
  LEFT JOIN merchants m ON m.id = COALESCE(pay.merchant_id, rf.merchant_id)
 WHERE p.account_id = :account AND p.created_at >= :start AND p.created_at < :end
 ORDER BY p.id
"""

_OPENING_SQL = (
    "SELECT COALESCE(sum(amount_minor), 0)::bigint FROM postings"
    " WHERE account_id = :account AND created_at < :start"
)


def _description(row: Any, owner: int) -> str:
    kind = row.entry_kind
    if kind == "top_up":
        method = METHOD_LABELS.get(row.method or "", row.method or "")
        return f"Top-up · {method}" if method else "Top-up"
    if kind == "transfer":
        out = row.amount_minor < 0
        if row.other_owner == owner:
            other = f"your card {card_numbers.mask(row.other_last4, row.other_brand)}"
        elif row.other_owner is None:
            other = "a card"
        else:
            other = masked_name(row.other_first, row.other_last)  # a person: not their card
        text = f"Transfer {'to' if out else 'from'} {other}"
        return f"{text} · {row.memo}" if row.memo else text
    if kind == "withdrawal":
        bank = row.bank_name or "bank"
        last4 = f" {_DOTS} {row.bank_account_last4}" if row.bank_account_last4 else ""
        return f"Withdrawal to {bank}{last4}"
    if kind == "payment" and row.merchant_name:
        text = f"Payment to {row.merchant_name}"
        return f"{text} · {row.payment_text}" if row.payment_text else text
    if kind == "refund" and row.merchant_name:
        return f"Refund from {row.merchant_name}"
    return row.entry_text or str(kind).replace("_", " ").capitalize()


def monthly_statement(
    uow: UnitOfWork, *, actor: Actor, card_id: Ref, month: date | str
) -> Statement:
    """The statement of one's own card for a month (a first-of-month ``date`` or ``YYYY-MM``)
    in the owner's time zone, from the ledger's postings. Raises InvalidInput (``month``
    malformed or not begun yet), NotFound (not the actor's card), Forbidden (not a user)."""
    if actor.kind != ActorKind.USER or actor.id is None:
        raise Forbidden("only a signed-in user has statements")
    first = parse_month(month) if isinstance(month, str) else month
    if not isinstance(first, date) or isinstance(first, datetime) or first.day != 1:
        raise InvalidInput("month must be a month written YYYY-MM", param="month")
    if first < FIRST_MONTH:
        raise InvalidInput(f"month must be {FIRST_MONTH:%Y-%m} or later", param="month")
    card = activity.get_card(uow, actor=actor, card_id=card_id)
    if card.user_id != actor.id:
        raise NotFound("no such card", param="card_id")  # staff too: statements are the owner's
    owner = actor.id

    def work(u: UnitOfWork) -> Statement:
        row = u.execute(
            "SELECT u.time_zone, a.id AS account FROM users u JOIN cards c ON c.user_id = u.id"
            " JOIN accounts a ON a.card_id = c.id AND a.kind = 'wallet' WHERE c.id = :card",
            {"card": card.id},
        ).one()
        zone_name = valid_time_zone(row.time_zone) or DEFAULT_TIME_ZONE
        zone = ZoneInfo(zone_name)
        now = u.now()
        starts_at, ends_at = _start(first, zone), _start(_next_month(first), zone)
        if starts_at > now:
            raise InvalidInput(
                f"month {first:%Y-%m} has not begun yet: there is no statement for it",
                param="month",
            )
        params = {"account": row.account, "card": card.id, "start": starts_at, "end": ends_at}
        opening_minor = int(u.execute(_OPENING_SQL, params).scalar_one())
        balance = opening_minor
        money_in = money_out = 0
        lines = []
        for p in u.execute(_LINES_SQL, params).all():
            balance += p.amount_minor
            if p.amount_minor > 0:
                money_in += p.amount_minor
            else:
                money_out -= p.amount_minor
            lines.append(
                StatementLine(
                    posting_id=p.id,
                    posted_at=p.created_at,
                    kind=p.entry_kind,
                    reference=p.reference or "",
                    description=_description(p, owner),
                    amount=Money(p.amount_minor, card.currency),
                    balance_after=Money(balance, card.currency),
                )  # fmt: skip
            )
        cur = card.currency
        return Statement(
            card=card, month=first, time_zone=zone_name, starts_at=starts_at, ends_at=ends_at,
            complete=ends_at <= now, generated_at=now, opening=Money(opening_minor, cur),
            lines=tuple(lines), closing=Money(balance, cur), money_in=Money(money_in, cur),
            money_out=Money(money_out, cur),
        )  # fmt: skip

    return uow.run(work)


__all__ = ["Statement", "StatementLine", "monthly_statement", "parse_month"]
