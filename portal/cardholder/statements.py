"""Monthly statements as PDF (issue 13): ``/wallet/cards/<card_id>/statement/<YYYY-MM>.pdf``.

The numbers come from ``portal.services.wallet.statements`` (the ledger's postings, the month in
the owner's time zone); the page is ``cardholder/statement.html`` made into a PDF by WeasyPrint,
which is given a URL fetcher that refuses everything: the template carries its own CSS and no
image, font or link is ever fetched while rendering. Owner only (404 for anyone else); a month
that is malformed or has not begun is a 400 naming it. Each person may make
:data:`STATEMENTS_PER_USER` (a PDF costs real CPU time).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from flask import abort, render_template
from flask_login import current_user
from werkzeug.wrappers import Response

from portal.cardholder import bp
from portal.domain.cards import mask
from portal.domain.errors import InvalidInput
from portal.domain.ids import is_public_id
from portal.domain.locale import (
    DEFAULT_TIME_ZONE,
    format_clock,
    format_date,
    format_money,
    valid_time_zone,
)
from portal.domain.money import Money
from portal.extensions import limiter
from portal.services.wallet import statements
from portal.services.wallet.statements import Statement
from portal.web.auth import current_actor, login_required
from portal.web.uow import make_uow

#: Rendering a PDF costs a worker real CPU time: a person gets this many a minute.
STATEMENTS_PER_USER = "12 per minute"


def _refusing_fetcher() -> Any:
    """A WeasyPrint URL fetcher that fetches nothing (no network, no files)."""
    from weasyprint.urls import URLFetcher

    class RefuseAll(URLFetcher):
        def fetch(self, url: str, headers: Any = None) -> Any:
            raise ValueError(f"statements fetch no resources ({url[:80]})")

    return RefuseAll()


def statement_html(statement: Statement, locale: str) -> str:
    """The statement as a self-contained HTML page (print CSS inside)."""
    zone = statement.time_zone

    def money(value: Money) -> str:
        return format_money(value, locale)

    def day(value: Any) -> str:
        return format_date(value, zone, locale)

    def clock(value: Any) -> str:
        return format_clock(value, zone, locale)

    # The month's last instant, or now for the month still running.
    last_day = (
        statement.ends_at - timedelta(microseconds=1)
        if statement.complete
        else statement.generated_at
    )
    return render_template(
        "cardholder/statement.html",
        s=statement,
        card_label=mask(statement.card.last4, statement.card.brand),
        money=money,
        day=day,
        clock=clock,
        period_end=last_day,
        month_label=statement.month.strftime("%B %Y"),
    )


def statement_pdf(html: str) -> bytes:
    """``html`` as PDF bytes, fetching nothing."""
    from weasyprint import HTML

    return bytes(HTML(string=html, base_url=None, url_fetcher=_refusing_fetcher()).write_pdf())


@bp.app_template_global("statement_months")
def statement_months() -> tuple[tuple[str, str], ...]:
    """(label, YYYY-MM) of this month and the last, in the user's time zone: the card page's
    statement links."""
    zone = valid_time_zone(current_user.user.time_zone) or DEFAULT_TIME_ZONE
    today = datetime.now(UTC).astimezone(ZoneInfo(zone)).date()
    last = (today.replace(day=1) - timedelta(days=1)).replace(day=1)
    return ((f"{last:%B %Y}", f"{last:%Y-%m}"), (f"{today:%B %Y} to date", f"{today:%Y-%m}"))


def _user_key() -> str:
    return f"statements:user:{current_user.id if current_user.is_authenticated else '-'}"


@bp.get("/cards/<card_id>/statement/<month>.pdf")
@login_required("wallet:use")
@limiter.limit(STATEMENTS_PER_USER, key_func=_user_key)
def card_statement(card_id: str, month: str) -> Response:
    """One's own card's statement for a month, as a PDF."""
    if not is_public_id("card", card_id):
        abort(404)
    actor = current_actor()
    try:
        statement = statements.monthly_statement(
            make_uow(), actor=actor, card_id=card_id, month=month
        )
    except InvalidInput as error:
        abort(400, description=error.message)
    pdf = statement_pdf(statement_html(statement, current_user.user.locale))
    response = Response(pdf, content_type="application/pdf")
    name = f"portal-statement-{statement.card.last4}-{statement.month:%Y-%m}.pdf"
    response.headers["Content-Disposition"] = f'inline; filename="{name}"'
    return response


__all__ = ["card_statement", "statement_html", "statement_pdf"]
