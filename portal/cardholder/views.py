"""Routes of the wallet pages.

Every page works as plain form posts (Post/Redirect/Get); with htmx, a money form swaps itself
for its review, then for its receipt (422 with the errors next to the fields), and card buttons
answer the updated tile. Money forms carry an idempotency key minted when the form is first
rendered and kept through the review, so a second submit of the same form replays the first
answer instead of moving money again.

Live updates: pages carry a small poller that asks ``/wallet/changes?v=<version>`` every 1.5 s.
The answer is 204 (htmx swaps nothing) while the user's change version is unchanged, otherwise
a new poller plus the changed fragments out of band. It only reads PostgreSQL, holds no worker
between polls, and so works across processes with or without Redis.

Cards are named by their public ids (``card_...``) in URLs, form fields and links, and movements
by theirs (``tu_...``, ``tr_...``, ``wd_...``) in references and the history; the services take
them as they come. An id of the wrong shape is a 404 before any query.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import urlsplit

from babel.numbers import get_currency_precision
from flask import (
    abort,
    current_app,
    flash,
    g,
    make_response,
    redirect,
    request,
    url_for,
)
from flask_login import current_user
from flask_wtf import FlaskForm
from flask_wtf.csrf import CSRFError
from werkzeug.wrappers import Response
from wtforms.fields.choices import SelectChoice

from portal.cardholder import bp
from portal.cardholder.forms import (
    CARD_TYPE_LABELS,
    METHOD_LABELS,
    ActivityFilterForm,
    IssueCardForm,
    MoneyForm,
    RenameCardForm,
    TopUpForm,
    TransferForm,
    WithdrawForm,
    add_service_error,
    new_key,
    options,
)
from portal.domain.cards import brand_name
from portal.domain.errors import (
    IdempotencyConflict,
    InvalidInput,
    NotFound,
    OutcomeUnknown,
    PortalError,
)
from portal.domain.ids import is_public_id
from portal.domain.locale import (
    AmountError,
    amount_sign,
    format_amount_input,
    format_clock,
    format_date,
    format_moment,
    format_money,
    parse_amount,
)
from portal.domain.money import Money, exponent
from portal.domain.types import CardType, MovementResult
from portal.extensions import limiter
from portal.services.wallet import activity, bank_accounts, cards, wallet
from portal.services.wallet.activity import ActivityItem, CardSummary, MonthTotals, Recipient
from portal.services.wallet.wallet import BankAccount
from portal.web.auth import (
    background,
    current_actor,
    ended_session_reason,
    login_required,
    safe_next,
)
from portal.web.cache import cached
from portal.web.render import render_fragments as _fragments
from portal.web.render import render_page as _render
from portal.web.render import wants_fragment as _is_htmx
from portal.web.uow import make_uow

#: How often pages ask whether anything changed (milliseconds); the issue asks for about 1.5 s.
POLL_MS = 1500
LATEST_ITEMS = 6
PAGE_SIZE = 20
CSV_PAGE = 100

KIND_LABELS = {
    "top_up": "Top-up",
    "transfer": "Transfer",
    "withdrawal": "Withdrawal",
    "payment": "Payment",
    "refund": "Refund",
}
STATUS_LABELS = {"pending": "Pending", "processing": "Processing", "succeeded": "Succeeded",
                 "failed": "Failed"}  # fmt: skip
MOVEMENT_TITLES = {
    "top_up": "Top-up",
    "transfer": "Transfer",
    "withdrawal": "Withdrawal",
    "withdraw": "Withdrawal",
}


# -- helpers -------------------------------------------------------------------------------------
SIGNED_OUT = "You were signed out: sign in to continue."


def _signed_out_text() -> str:
    """ "You were signed out: sign in to continue.", and why when the ended session tells."""
    settings = make_uow().settings
    why = {
        "revoked": "The session was ended from another device or by an administrator.",
        "idle": f"Nothing happened for {settings.session_idle_minutes} minutes.",
        "expired": f"Sessions last at most {settings.session_absolute_hours} hours.",
    }.get(ended_session_reason() or "")
    return f"{SIGNED_OUT} {why}" if why else SIGNED_OUT


#: Forms a signed-out post comes back to after signing in (their own address shows them).
_FORM_ENDPOINTS = frozenset(
    {"cardholder.top_up", "cardholder.transfer", "cardholder.withdraw",
     "cardholder.issue_card"}
)  # fmt: skip


def _back_here() -> str:
    """The page to come back to after signing in: the page an htmx request came from (its
    ``HX-Current-URL``, this site only), a GET's own address, a form's own page; else the
    wallet."""
    current = request.headers.get("HX-Current-URL", "")
    if current:
        parts = urlsplit(current)
        if parts.netloc == request.host:
            target = safe_next(parts.path + (f"?{parts.query}" if parts.query else ""))
            if target:
                return target
    if request.method == "GET" and not _is_htmx():
        return safe_next(request.full_path) or url_for(".index")
    if request.endpoint in _FORM_ENDPOINTS:
        return url_for(request.endpoint)
    return url_for(".index")


def _to_sign_in() -> Response:
    """The session has ended (timed out, revoked, cookies cleared): say so, and come back to
    the same page after signing in. htmx gets a full-page trip, not a sign-in page swapped
    into a tile."""
    flash(_signed_out_text(), "info")
    target = url_for("auth.login", next=_back_here())
    if _is_htmx():
        response = make_response("", 401)
        response.headers["HX-Redirect"] = target
        return response
    return redirect(target)


@bp.before_request
def _signed_out_mid_form() -> Response | None:
    """A post or an htmx request (a poll, a button) without a live session, or any page asked
    for with the cookie of a session that has ended: told so, and back here after signing in."""
    if current_user.is_authenticated:  # (loads the session, noting one that has ended)
        return None
    if _is_htmx() or request.method != "GET" or g.get("portal_session_ended"):
        return _to_sign_in()
    return None


@bp.errorhandler(CSRFError)
def _form_expired(_error: CSRFError) -> Response:
    """A form whose CSRF token no longer matches. Most often the session ended while the form
    was open (its token went with it): that is said plainly, never "The CSRF session token is
    missing". Otherwise the form is shown again, fresh, and nothing was done."""
    if not current_user.is_authenticated:
        return _to_sign_in()
    flash("This form had expired, so nothing was done. Check the details and send it again.",
          "info")  # fmt: skip
    target = _back_here()
    if _is_htmx():
        response = make_response("", 400)
        response.headers["HX-Redirect"] = target
        return response
    return redirect(target)


@bp.after_request
def _no_store(response: Response) -> Response:
    """Balances, histories and (once) a card number: nothing here belongs in a cache."""
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def _locale() -> str:
    """The signed-in user's number, currency and date formats (the pages stay English); read
    once a request (a page formats dozens of amounts)."""
    found = g.get("portal_locale")
    if found is None:
        found = g.portal_locale = (
            current_user.user.locale if current_user.is_authenticated else "en_US"
        )
    return found


def _zone() -> str:
    found = g.get("portal_time_zone")
    if found is None:
        found = g.portal_time_zone = (
            current_user.user.time_zone if current_user.is_authenticated else "UTC"
        )
    return found


def money_text(value: Money) -> str:
    """An amount in the user's locale: ``Rp 13.985.000``, ``$1,234.50``."""
    return format_money(value, _locale())


@bp.app_template_filter("money")
def _money_filter(value: Money | None) -> str:
    return money_text(value) if value is not None else ""


@bp.app_template_filter("when")
def _when_filter(value: datetime | None) -> str:
    """A moment in the user's time zone and format: ``3 Dec 2026, 07:05``."""
    return format_moment(value, _zone(), _locale()) if value is not None else ""


@bp.app_template_global("time_zone_name")
def _time_zone_name() -> str:
    return _zone().replace("_", " ")


@bp.app_template_filter("brand")
def _brand_filter(value: str | None) -> str:
    return brand_name(value)


def _uow() -> Any:
    return make_uow()


def _my_cards(*, include_archived: bool = False) -> tuple[CardSummary, ...]:
    return activity.list_cards(_uow(), actor=current_actor(), include_archived=include_archived)


def _version() -> int:
    return activity.change_version(_uow(), actor=current_actor())


def card_label(card: CardSummary, *, balance: bool = True) -> str:
    """How a card is named in a list: "Visa •••• 4242 · Groceries (1,200.00 USD available)"."""
    text = f"{brand_name(card.brand)} •••• {card.last4}"
    if card.name:
        text += f" · {card.name}"
    if card.status == "frozen":
        text += f" · {card.currency} (frozen)"
    elif balance:
        text += f" ({money_text(card.available)} available)"
    else:
        text += f" · {card.currency}"
    return text


def _poller(view: str, version: int, **params: Any) -> dict[str, Any]:
    return {"live": {"view": view, "version": version, "params": params, "every": POLL_MS}}


# -- dashboard -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChartSeries:
    """One currency's monthly money in and out, for the chart (a ``data-chart`` attribute) and
    its table (the same numbers, readable without JavaScript)."""

    currency: str
    rows: tuple[MonthTotals, ...]

    @property
    def payload(self) -> str:
        return json.dumps(
            {
                "currency": self.currency,
                # The user's format, and the minor digits the currency shows (IDR none).
                "locale": _locale().replace("_", "-"),
                "digits": min(get_currency_precision(self.currency), exponent(self.currency)),
                "labels": [r.month.strftime("%b %Y") for r in self.rows],
                "in": [r.money_in.to_major_str() for r in self.rows],
                "out": [r.money_out.to_major_str() for r in self.rows],
            },
            separators=(",", ":"),
        )

    @property
    def total_in(self) -> Money:
        return Money(sum(r.money_in.amount_minor for r in self.rows), self.currency)

    @property
    def total_out(self) -> Money:
        return Money(sum(r.money_out.amount_minor for r in self.rows), self.currency)

    @property
    def empty(self) -> bool:
        return all(r.money_in.amount_minor == 0 == r.money_out.amount_minor for r in self.rows)


def _chart_series(totals: Sequence[MonthTotals], currencies: Sequence[str]) -> list[ChartSeries]:
    by_currency: dict[str, list[MonthTotals]] = defaultdict(list)
    for row in totals:
        by_currency[row.currency].append(row)
    order = list(dict.fromkeys([*currencies, *by_currency]))
    return [
        ChartSeries(cur, tuple(sorted(by_currency[cur], key=lambda r: r.month)))
        for cur in order
        if by_currency.get(cur)
    ]


def _dump_totals(totals: Sequence[MonthTotals]) -> str:
    return json.dumps(
        [[t.month.isoformat(), t.currency, t.money_in.amount_minor, t.money_out.amount_minor]
         for t in totals]
    )  # fmt: skip


def _load_totals(stored: str) -> tuple[MonthTotals, ...]:
    return tuple(
        MonthTotals(date.fromisoformat(month), cur, Money(money_in, cur), Money(money_out, cur))
        for month, cur, money_in, money_out in json.loads(stored)
    )


def _monthly_totals(version: int) -> tuple[MonthTotals, ...]:
    """The chart's totals, cached under the change version they were read at (any movement
    on the user's cards bumps it) and the month (the window moves when a month begins)."""
    actor = current_actor()
    month = datetime.now(UTC).strftime("%Y-%m")
    return cached(
        "monthly_totals",
        f"{actor.id}:{version}:{month}",
        lambda: activity.monthly_totals(_uow(), actor=actor, months=12),
        dump=_dump_totals,
        load=_load_totals,
    )


def _dashboard_context(version: int) -> dict[str, Any]:
    actor = current_actor()
    my_cards = _my_cards()
    latest = activity.list_activity(_uow(), actor=actor, limit=LATEST_ITEMS)
    totals = _monthly_totals(version)
    return {
        "cards": my_cards,
        "latest": latest.items,
        "latest_more": latest.has_more,
        "charts": _chart_series(totals, [c.currency for c in my_cards]),
    }


@bp.get("")
@login_required("wallet:use")
def index() -> Response:
    version = _version()  # first: a change made while the page renders is caught by the poll
    return _render("cardholder/dashboard.html", **_dashboard_context(version),
                   **_poller("dashboard", version))  # fmt: skip


# -- live updates --------------------------------------------------------------------------------
@bp.get("/changes")
@background  # a poll every 1.5 s is not the person: it never extends the idle timeout
@login_required("wallet:use")
def changes() -> Response:
    """204 while nothing changed; otherwise a new poller and the changed fragments (OOB)."""
    seen = request.args.get("v", type=int)
    version = _version()
    if seen is not None and seen == version:
        response = make_response("", 204)
        response.vary.add("HX-Request")
        return response
    view = request.args.get("view", "dashboard")
    parts: list[tuple[str, Mapping[str, Any]]] = []
    if view == "card":
        card_id = request.args.get("card")
        if card_id is None or not is_public_id("card", card_id):
            abort(404)
        card = activity.get_card(_uow(), actor=current_actor(), card_id=card_id)
        recent = activity.list_activity(
            _uow(), actor=current_actor(), card_id=card_id, limit=LATEST_ITEMS
        )
        parts.append(("cardholder/_live.html", _poller("card", version, card=card_id)))
        parts.append(("cardholder/_card_tile.html", {"card": card, "oob": True, "large": True}))
        parts.append(("cardholder/_card_activity.html",
                      {"card": card, "items": recent.items, "more": recent.has_more,
                       "oob": True}))  # fmt: skip
    elif view == "activity":
        parts.append(("cardholder/_live.html", _poller("activity", version)))
        parts.append(("cardholder/_activity_notice.html", {"changed": True, "oob": True}))
    else:
        parts.append(("cardholder/_live.html", _poller("dashboard", version)))
        context = _dashboard_context(version)
        parts.append(("cardholder/_cards.html", {**context, "oob": True}))
        parts.append(("cardholder/_latest.html", {**context, "oob": True}))
        parts.append(("cardholder/_charts.html", {**context, "oob": True}))
    return _fragments(*parts)


# -- cards ---------------------------------------------------------------------------------------
def _currencies() -> list[str]:
    return sorted(make_uow().settings.limits)


@bp.route("/cards/new", methods=["GET", "POST"])
@login_required("wallet:use")
def issue_card() -> Response:
    form = IssueCardForm()
    form.currency.choices = options((c, c) for c in _currencies())
    form.ensure_key()
    if request.method == "GET":
        mine = _my_cards()
        form.currency.data = mine[0].currency if mine else "USD"
    if form.validate_on_submit():
        try:
            issued = cards.issue_card(
                _uow(),
                actor=current_actor(),
                user_id=current_user.id,
                card_type=form.card_type.data or "",
                brand=form.brand.data or "",
                currency=form.currency.data or "",
                name=form.name.data or "",
                idempotency_key=form.idempotency_key.data,
            )
        except IdempotencyConflict:
            form.form_errors.append(
                "This form already issued a card (see your wallet). Send it again to issue"
                " another one."
            )
            form.idempotency_key.data = new_key()
        except (InvalidInput, PortalError) as error:
            if isinstance(error, (NotFound, OutcomeUnknown)):
                raise
            add_service_error(form, error, default="card_type")
        else:
            label = CARD_TYPE_LABELS.get(issued.card_type, issued.card_type)
            if isinstance(issued, cards.ReissuedCard):
                # The form sent again (a double click, a retry): the card it issued, whose
                # number and code were shown once, to the first answer.
                return _render(
                    "cardholder/card_issued.html", 200, card=issued, number=None,
                    type_label=label,
                )  # fmt: skip
            # The one page that ever shows the full number and security code; no redirect
            # (the number must not sit in a session) and no caching.
            number = " ".join(
                issued.number[i : i + 4] for i in range(0, len(issued.number), 4)
            )  # fmt: skip
            return _render(
                "cardholder/card_issued.html", 201, card=issued, number=number, type_label=label
            )
    status = 422 if request.method == "POST" else 200
    return _render("cardholder/card_new.html", status, form=form)


def _card_or_404(card_id: str) -> CardSummary:
    if not is_public_id("card", card_id):
        abort(404)
    return activity.get_card(_uow(), actor=current_actor(), card_id=card_id)


def _card_page(card: CardSummary, status: int = 200, **overrides: Any) -> Response:
    recent = activity.list_activity(_uow(), actor=current_actor(), card_id=card.public_id,
                                    limit=LATEST_ITEMS)  # fmt: skip
    rename = RenameCardForm(formdata=None)
    rename.name.data = card.name
    context: dict[str, Any] = {
        "card": card,
        "items": recent.items,
        "more": recent.has_more,
        "rename_form": rename,
        "type_label": CARD_TYPE_LABELS.get(CardType(card.card_type), card.card_type),
    }
    context.update(overrides)
    return _render("cardholder/card.html", status, **context, **_poller("card", _version(),
                   card=card.public_id))  # fmt: skip


@bp.get("/cards/<card_id>")
@login_required("wallet:use")
def card(card_id: str) -> Response:
    return _card_page(_card_or_404(card_id))


@bp.post("/cards/<card_id>/name")
@login_required("wallet:use")
def rename_card(card_id: str) -> Response:
    current = _card_or_404(card_id)
    form = RenameCardForm()
    if form.validate_on_submit():
        try:
            updated = activity.rename_card(
                _uow(), actor=current_actor(), card_id=card_id, name=form.name.data or ""
            )
        except NotFound:
            raise
        except PortalError as error:
            add_service_error(form, error, default="name")
        else:
            if _is_htmx():
                return _fragments(
                    ("cardholder/_rename_form.html", {"card": updated, "rename_form": form,
                                                      "saved": True}),
                    ("cardholder/_card_tile.html", {"card": updated, "oob": True,
                                                    "large": True}),
                )  # fmt: skip
            flash("The card's name is saved.", "success")
            return redirect(url_for(".card", card_id=card_id))
    if _is_htmx():
        return _fragments(
            ("cardholder/_rename_form.html", {"card": current, "rename_form": form}), status=422
        )
    return _card_page(current, 422, rename_form=form)


def _set_frozen(card_id: str, frozen: bool) -> Response:
    if not is_public_id("card", card_id):
        abort(404)
    try:
        cards.set_frozen(_uow(), actor=current_actor(), card_id=card_id, frozen=frozen)
    except NotFound:
        raise
    except PortalError as error:
        if _is_htmx():
            raise
        flash(error.message[:1].upper() + error.message[1:] + ".", "error")
        refused = True
    else:
        refused = False
    updated = _card_or_404(card_id)
    large = request.form.get("view") == "card"
    if _is_htmx():
        return _fragments(("cardholder/_card_tile.html", {"card": updated, "large": large}))
    if not refused:
        word = "frozen" if frozen else "unfrozen"
        flash(f"{brand_name(updated.brand)} •••• {updated.last4} is {word}.", "success")
    if large:
        return redirect(url_for(".card", card_id=card_id))
    return redirect(url_for(".index"))


@bp.post("/cards/<card_id>/freeze")
@login_required("wallet:use")
def freeze_card(card_id: str) -> Response:
    return _set_frozen(card_id, True)


@bp.post("/cards/<card_id>/unfreeze")
@login_required("wallet:use")
def unfreeze_card(card_id: str) -> Response:
    return _set_frozen(card_id, False)


# -- money: shared flow --------------------------------------------------------------------------
@dataclass(frozen=True)
class Review:
    """What the review step shows and the confirm step sends."""

    kind: str
    card: CardSummary
    amount: Money
    destination: str
    details: tuple[tuple[str, str], ...]
    #: The destination card's public id (a transfer).
    to_card_id: str | None = None
    bank: BankAccount | None = None

    @property
    def fee(self) -> Money:
        return Money(0, self.amount.currency)


#: The limits' name of each money form.
LIMIT_KINDS = {"top_up": "top_up", "transfer": "transfer", "withdraw": "withdrawal"}
_PER = {"top_up": "top-up", "transfer": "transfer", "withdraw": "withdrawal"}


@dataclass(frozen=True)
class CardFacts:
    """What a money form says about the card chosen in it, in the card's currency and the
    user's format: the sign in the amount input, the available money and the limits."""

    currency: str
    sign: str
    available: str
    limits: str
    #: A placeholder written the way the user writes numbers (the minimum: ``50.000``).
    example: str = ""

    def attributes(self) -> dict[str, str]:
        return {"data-currency": self.currency, "data-sign": self.sign,
                "data-available": self.available, "data-limits": self.limits,
                "data-example": self.example}  # fmt: skip


def card_facts(card: CardSummary, kind: str) -> CardFacts:
    locale = _locale()
    limits = make_uow().settings.limits_for(card.currency, LIMIT_KINDS[kind])
    example = ""
    if limits is None:
        text = f"{MOVEMENT_TITLES[kind]}s in {card.currency} are not supported."
    else:
        example = format_amount_input(Money(limits.minimum, card.currency), locale)
        low = format_money(Money(limits.minimum, card.currency), locale)
        high = format_money(Money(limits.maximum, card.currency), locale)
        text = f"{low} to {high} per {_PER[kind]}"
        if limits.daily is not None:
            text += f", {format_money(Money(limits.daily, card.currency), locale)} a day"
        text += "."
    return CardFacts(card.currency, amount_sign(card.currency, locale),
                     format_money(card.available, locale), text, example)  # fmt: skip


def _card_choices(
    form: MoneyForm, my_cards: Sequence[CardSummary], *, balance: bool, kind: str
) -> None:
    form.card_id.choices = [
        SelectChoice(c.public_id, card_label(c, balance=balance),
                     render_kw=card_facts(c, kind).attributes())
        for c in my_cards
    ]  # fmt: skip


def _chosen(my_cards: Sequence[CardSummary], card_id: str | None) -> CardSummary | None:
    """One of the user's cards by the public id a form or link gave, or None."""
    return next((c for c in my_cards if card_id and c.public_id == card_id), None)


def _check_amount(form: MoneyForm, card: CardSummary, kind: str, *, spend: bool) -> Money | None:
    """The amount in the card's currency, checked against the limits and (when money leaves the
    card) the available balance, with the services' own wording. The service checks again."""
    field = form.amount
    try:
        amount = parse_amount(field.data, card.currency, _locale())
    except AmountError as error:
        field.errors = [*field.errors, error.message]
        return None
    if amount.amount_minor <= 0:
        field.errors = [*field.errors, "Enter an amount above zero."]
        return None
    limits = make_uow().settings.limits_for(card.currency, kind)
    if limits is None:
        label = MOVEMENT_TITLES[kind].lower()
        field.errors = [*field.errors, f"{label.capitalize()}s in {card.currency} are not "
                        "supported."]  # fmt: skip
        return None
    if amount.amount_minor < limits.minimum:
        minimum = Money(limits.minimum, card.currency)
        field.errors = [*field.errors, f"Amount below the minimum of {money_text(minimum)}."]
        return None
    if amount.amount_minor > limits.maximum:
        maximum = Money(limits.maximum, card.currency)
        field.errors = [*field.errors, f"Amount above the maximum of {money_text(maximum)}."]
        return None
    if spend and amount.amount_minor > card.available.amount_minor:
        field.errors = [
            *field.errors,
            f"Not enough available money ({money_text(card.available)} available).",
        ]
        return None
    field.data = format_amount_input(amount, _locale())  # the review and Back show it so
    return amount


def _check_card(form: MoneyForm, card: CardSummary | None) -> bool:
    field = form.card_id
    if card is None:
        field.errors = [*field.errors, "Choose one of your cards."]
        return False
    if card.status == "frozen":
        field.errors = [*field.errors, "Card is frozen. Unfreeze it first."]
        return False
    return True


def _receipt(kind: str, result: MovementResult, review: Review) -> dict[str, Any]:
    return {"kind": kind, "public_id": result.public_id, "amount": result.amount,
            "status": result.status, "failure_code": None,
            "available": result.balance.available, "created_at": result.created_at,
            "details": tuple(review.details), "poll_ms": POLL_MS,
            "replayed": _replayed_text(result) if result.replayed else None,
            "form_url": url_for(f".{kind}")}  # fmt: skip


_RECEIPT_KINDS = {"top_up": "top_up", "transfer": "transfer", "withdrawal": "withdraw"}


@bp.get("/movements/<movement_id>")
@login_required("wallet:use")
def receipt(movement_id: str) -> Response:
    """A movement's receipt, where a confirmed form lands (Post/Redirect/Get): reloading it or
    going Back never sends the form again. Someone else's movement: 404."""
    if not any(is_public_id(k, movement_id) for k in ("top_up", "transfer", "withdrawal")):
        abort(404)
    item = activity.get_activity_item(_uow(), actor=current_actor(), item_id=movement_id)
    if item.kind not in _RECEIPT_KINDS:
        abort(404)
    kind = _RECEIPT_KINDS[item.kind]
    card = activity.get_card(_uow(), actor=current_actor(), card_id=item.card_public_id)
    label = card_label(card, balance=False)
    details: list[tuple[str, str]]
    if item.kind == "top_up":
        details = [("Pay with", item.counterparty), ("To card", label)]
    else:
        details = [("From", label), ("To", item.counterparty)]
        if item.memo:
            details.append(("Note", item.memo))
    context = {"kind": kind, "public_id": item.id, "amount": item.amount, "status": item.status,
               "failure_code": item.failure_code, "available": card.available,
               "created_at": item.created_at, "details": tuple(details), "poll_ms": POLL_MS,
               "replayed": None, "form_url": url_for(f".{kind}")}  # fmt: skip
    return _render("cardholder/receipt.html", 200, **context)


@bp.route("/movements/<movement_id>/status")
@background
@login_required("wallet:use")
def movement_status(movement_id: str) -> Response:
    """A receipt's status block, asked for again while the movement waits for the bank (a
    top-up for the funding processor, a withdrawal for its payout). Not one's own: 404."""
    if not is_public_id("top_up", movement_id) and not is_public_id("withdrawal", movement_id):
        abort(404)
    item = activity.get_activity_item(_uow(), actor=current_actor(), item_id=movement_id)
    balance = wallet.get_balance(_uow(), actor=current_actor(), card_id=item.card_public_id)
    kind = "top_up" if item.kind == "top_up" else "withdraw"
    return _fragments(("cardholder/_receipt_status.html", {
        "kind": kind, "status": item.status, "failure_code": item.failure_code,
        "public_id": item.id, "available": balance.available, "poll_ms": POLL_MS,
    }))  # fmt: skip


def _money_flow(
    kind: str,
    form: MoneyForm,
    my_cards: Sequence[CardSummary],
    plan: Any,
    execute: Any,
) -> Response:
    """The form -> review -> confirm flow every money form shares."""
    template = f"cardholder/{kind}.html"
    fragment = f"cardholder/_{kind}_form.html"

    def show_form(status: int) -> Response:
        chosen = _chosen(my_cards, form.card_id.data) or my_cards[0]
        context = {"form": form, "cards": my_cards, "kind": kind,
                   "facts": card_facts(chosen, kind), "unverified": _unverified()}  # fmt: skip
        if _is_htmx():
            return _fragments((fragment, context), status=status)
        return _render(template, status, **context)

    form.ensure_key()
    if request.method == "GET":
        form.step.data = "review"
        return show_form(200)
    step = form.step.data or "review"
    form.step.data = "review"
    if step == "edit":
        form.validate()  # the values come back; errors are cleared below
        for field in form:
            field.errors = []
        form.form_errors.clear()
        return show_form(200)
    if not form.validate():
        return show_form(422)
    if _unverified():
        # Said before the review, with the way out next to it (the form's notice).
        form.form_errors.append(UNVERIFIED)
        return show_form(403)
    review = plan(form)
    if review is None:
        return show_form(422)
    if step != "confirm":
        context = {"review": review, "form": form, "kind": kind}
        if _is_htmx():
            return _fragments(("cardholder/_review.html", context))
        return _render(template, 200, **context)
    try:
        result = execute(review, form.idempotency_key.data)
    except (NotFound, OutcomeUnknown):
        raise  # a lost connection keeps the form's key: sending it again cannot move money twice
    except IdempotencyConflict:
        form.form_errors.append(
            "This form was already used for a different request. Check the details and send "
            "it again."
        )
        form.idempotency_key.data = new_key()
        return show_form(422)
    except PortalError as error:
        add_service_error(form, error, default="amount")
        form.idempotency_key.data = new_key()  # the refusal is stored under the old key
        return show_form(422)
    # Post/Redirect/Get: the receipt has its own address, so Back or a reload never sends the
    # confirmation again. htmx swaps the receipt in and moves the address bar to it.
    receipt_url = url_for(".receipt", movement_id=result.public_id)
    if _is_htmx():
        response = _fragments(("cardholder/_receipt.html", _receipt(kind, result, review)))
        response.headers["HX-Push-Url"] = receipt_url
        return response
    if result.replayed:
        flash(_replayed_text(result), "info")
    return redirect(receipt_url, 303)


UNVERIFIED = (
    "Verify your email address before moving money: open the link we sent you, or have it sent "
    "again below."
)


def _unverified() -> bool:
    return bool(make_uow().settings.require_verified_email) and not (
        current_user.user.email_verified
    )


def _replayed_text(result: MovementResult) -> str:
    """What a confirmation sent again says: when it was done, and its reference."""
    at = format_clock(result.created_at, _zone(), _locale())
    day = format_date(result.created_at, _zone(), _locale())
    return f"Already done at {at} on {day}, reference {result.public_id}. Nothing happened twice."


def _preselect(form: MoneyForm, my_cards: Sequence[CardSummary]) -> None:
    if request.method == "GET":
        wanted = request.args.get("card")
        usable = [c for c in my_cards if c.status != "frozen"] or list(my_cards)
        if wanted and _chosen(my_cards, wanted):
            form.card_id.data = wanted
        elif usable:
            form.card_id.data = usable[0].public_id


def _need_cards(my_cards: Sequence[CardSummary], kind: str) -> Response | None:
    if my_cards:
        return None
    return _render(f"cardholder/{kind}.html", 200, form=None, cards=(), kind=kind)


# -- top-up --------------------------------------------------------------------------------------
@bp.route("/top-up", methods=["GET", "POST"])
@login_required("wallet:use")
def top_up() -> Response:
    my_cards = _my_cards()
    if (empty := _need_cards(my_cards, "top_up")) is not None:
        return empty
    form = TopUpForm()
    _card_choices(form, my_cards, balance=False, kind="top_up")
    _preselect(form, my_cards)

    def plan(form: TopUpForm) -> Review | None:
        card = _chosen(my_cards, form.card_id.data)
        if not _check_card(form, card):
            return None
        assert card is not None
        amount = _check_amount(form, card, "top_up", spend=False)
        if amount is None:
            return None
        method = METHOD_LABELS.get(form.method.data, form.method.data)
        destination = card_label(card, balance=False)
        return Review("top_up", card, amount, destination,
                      (("Pay with", method), ("To card", destination)))  # fmt: skip

    def execute(review: Review, key: str) -> MovementResult:
        return wallet.top_up(_uow(), actor=current_actor(), card_id=review.card.public_id,
                             amount=review.amount, method=form.method.data or "",
                             idempotency_key=key)  # fmt: skip

    return _money_flow("top_up", form, my_cards, plan, execute)


# -- transfer ------------------------------------------------------------------------------------
def _recipient(form: TransferForm) -> Recipient | None:
    """The other person's card the form names: looked up by the number typed (rate limited),
    or, on the confirm step, by the reference that look-up gave (the review carries it instead
    of the number, so the number never goes back to the browser)."""
    if form.recipient.data and not (form.to_number.data or "").strip():
        try:
            return activity.recipient_by_reference(
                _uow(), actor=current_actor(), reference=form.recipient.data
            )
        except NotFound:
            form.recipient.data = ""
            form.to_number.errors = [*form.to_number.errors, "This check has expired. Enter the"
                                     " card number again."]  # fmt: skip
            return None
    g.recipient_lookup = True
    try:
        found = activity.find_recipient(
            _uow(), actor=current_actor(), number=form.to_number.data or ""
        )
    except (NotFound, InvalidInput) as error:
        message = error.message if isinstance(error, InvalidInput) else (
            "No card with that number. Check the number and try again")  # fmt: skip
        form.to_number.errors = [*form.to_number.errors,
                                 message[:1].upper() + message[1:] + "."]  # fmt: skip
        return None
    form.recipient.data = found.reference
    return found


def _other_cards(my_cards: Sequence[CardSummary], from_id: str | None) -> list[CardSummary]:
    """The user's other cards that can receive from ``from_id``: same currency, not frozen."""
    source = _chosen(my_cards, from_id)
    if source is None:
        return []
    return [c for c in my_cards if c.public_id != source.public_id
            and c.currency == source.currency and c.status != "frozen"]  # fmt: skip


def _own_destinations(form: TransferForm, my_cards: Sequence[CardSummary]) -> None:
    """ "My card" lists only the other cards in the same currency as the card sending. The
    other cards are in the page too (a script shows them when the sending card changes) but
    hidden and disabled unless they fit the card chosen now."""
    fits = {c.public_id for c in _other_cards(my_cards, form.card_id.data)}
    choices = [SelectChoice("", "Choose a card")]
    for c in my_cards:
        if c.status == "frozen":
            continue
        attrs: dict[str, Any] = {"data-currency": c.currency}
        if c.public_id not in fits:
            attrs.update({"hidden": True, "disabled": True})
        choices.append(SelectChoice(c.public_id, card_label(c, balance=False), render_kw=attrs))
    form.to_card_id.choices = choices
    if request.method == "GET":
        if form.to_card_id.data not in fits:
            form.to_card_id.data = ""
        if not form.to_card_id.data and len(fits) == 1:
            form.to_card_id.data = next(iter(fits))
        if not fits:
            # No other card of this currency to send to: someone else's card is the only way.
            form.destination.data = "other"


def _recipient_lookups_limit() -> str:
    return "20 per minute; 200 per day"


def _recipient_key() -> str:
    return f"recipient-lookup:{current_user.id if current_user.is_authenticated else 'anon'}"


@bp.route("/transfer", methods=["GET", "POST"])
@login_required("wallet:use")
@limiter.limit(
    _recipient_lookups_limit,
    key_func=_recipient_key,
    methods=["POST"],
    deduct_when=lambda response: bool(g.get("recipient_lookup")),
)
def transfer() -> Response:
    my_cards = _my_cards()
    if (empty := _need_cards(my_cards, "transfer")) is not None:
        return empty
    form = TransferForm()
    _card_choices(form, my_cards, balance=True, kind="transfer")
    _preselect(form, my_cards)
    _own_destinations(form, my_cards)
    if request.method == "GET" and not _other_cards(my_cards, form.card_id.data):
        form.destination.data = "other"

    def plan(form: TransferForm) -> Review | None:
        card = _chosen(my_cards, form.card_id.data)
        if not _check_card(form, card):
            return None
        assert card is not None
        recipient: Recipient | None = None
        to_card: CardSummary | None = None
        if form.destination.data == "other":
            recipient = _recipient(form)
            if recipient is None:
                return None
            if recipient.card_public_id == card.public_id:
                form.to_number.errors = [*form.to_number.errors,
                                         "That is the card you are sending from."]  # fmt: skip
                return None
            if recipient.currency != card.currency:
                form.to_number.errors = [*form.to_number.errors,
                                         f"That card holds {recipient.currency}; the card you "
                                         f"send from holds {card.currency}."]  # fmt: skip
                return None
        else:
            to_card = _chosen(my_cards, form.to_card_id.data)
            if to_card is None:
                form.to_card_id.errors = [*form.to_card_id.errors, "Choose one of your cards."]
                return None
            if to_card.public_id == card.public_id:
                form.to_card_id.errors = [*form.to_card_id.errors,
                                          "Choose a different card from the one you send "
                                          "from."]  # fmt: skip
                return None
            if to_card.currency != card.currency:
                form.to_card_id.errors = [*form.to_card_id.errors,
                                          f"That card holds {to_card.currency}; the card you "
                                          f"send from holds {card.currency}."]  # fmt: skip
                return None
            if to_card.status == "frozen":
                form.to_card_id.errors = [*form.to_card_id.errors, "Card is frozen."]
                return None
        amount = _check_amount(form, card, "transfer", spend=True)
        if amount is None:
            return None
        if recipient is not None:
            destination = (
                f"{recipient.holder} · {brand_name(recipient.brand)} •••• {recipient.last4}"
            )
            to_id = recipient.reference  # another's card is paid by the look-up's reference
        else:
            assert to_card is not None
            destination = f"Your {card_label(to_card, balance=False)}"
            to_id = to_card.public_id
        details = [("From", card_label(card, balance=False)), ("To", destination)]
        if recipient is not None:
            # A name can be spoofed (look-alike letters); the card and the address tell apart.
            details.append(("Their card", f"{brand_name(recipient.brand)} •••• {recipient.last4}"))
            details.append(("Their email", recipient.email))
        if form.memo.data:
            details.append(("Note", form.memo.data))
        form.to_number.data = ""  # the review and the receipt carry the reference instead
        return Review("transfer", card, amount, destination, tuple(details), to_card_id=to_id)

    def execute(review: Review, key: str) -> MovementResult:
        assert review.to_card_id is not None
        return wallet.transfer(_uow(), actor=current_actor(), from_card_id=review.card.public_id,
                               to_card_id=review.to_card_id, amount=review.amount,
                               idempotency_key=key, memo=form.memo.data or "")  # fmt: skip

    return _money_flow("transfer", form, my_cards, plan, execute)


# -- withdrawal ----------------------------------------------------------------------------------
@bp.route("/withdraw", methods=["GET", "POST"])
@login_required("wallet:use")
def withdraw() -> Response:
    my_cards = _my_cards()
    if (empty := _need_cards(my_cards, "withdraw")) is not None:
        return empty
    form = WithdrawForm()
    _card_choices(form, my_cards, balance=True, kind="withdraw")
    _preselect(form, my_cards)
    saved = bank_accounts.list_saved(_uow(), actor=current_actor())
    form.saved_account.choices = [
        *(SelectChoice(s.reference, f"{s.bank_name} account ending {s.last4}") for s in saved),
        SelectChoice("", "A new bank account"),
    ]
    if request.method == "GET":
        form.saved_account.data = saved[0].reference if saved else ""

    def plan(form: WithdrawForm) -> Review | None:
        card = _chosen(my_cards, form.card_id.data)
        ok = _check_card(form, card)
        try:
            if form.saved_account.data:
                bank = bank_accounts.open_saved(
                    _uow(), actor=current_actor(), reference=form.saved_account.data
                ).validated()
            else:
                bank = BankAccount(form.bank_name.data or "", form.account_number.data or "",
                                   form.account_holder.data or "").validated()  # fmt: skip
        except NotFound:
            message = "Choose one of your bank accounts, or a new one."
            form.saved_account.errors = [*form.saved_account.errors, message]
            return None
        except InvalidInput as error:
            add_service_error(form, error)
            return None
        if not ok:
            return None
        assert card is not None
        amount = _check_amount(form, card, "withdrawal", spend=True)
        if amount is None:
            return None
        destination = f"{bank.bank_name} account ending {bank.account_number[-4:]}"
        details = (
            ("From", card_label(card, balance=False)),
            ("To", f"{destination} ({bank.account_holder})"),
            ("Arrives", "Usually within minutes; pending until the bank confirms"),
        )
        return Review("withdraw", card, amount, destination, details, bank=bank)

    def execute(review: Review, key: str) -> MovementResult:
        assert review.bank is not None
        return wallet.withdraw(_uow(), actor=current_actor(), card_id=review.card.public_id,
                               amount=review.amount, bank=review.bank,
                               idempotency_key=key)  # fmt: skip

    return _money_flow("withdraw", form, my_cards, plan, execute)


# -- history -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Filters:
    card_id: str | None  # a card's public id
    kind: str | None
    status: str | None
    since: date | None
    until: date | None
    search: str | None
    #: What the search text means as an amount in the user's format, per currency they hold.
    amounts: tuple[Money, ...] = ()

    def service_args(self) -> dict[str, Any]:
        return {"card_id": self.card_id, "kind": self.kind, "status": self.status,
                "since": self.since, "until": self.until, "search": self.search,
                "search_amounts": self.amounts}  # fmt: skip


def _search_amounts(text: str | None, currencies: Sequence[str]) -> tuple[Money, ...]:
    """The amounts a search may mean, read as the user writes numbers (``50.000`` is fifty
    thousand rupiah in Indonesian), in each currency of their cards; nothing when it is no
    amount or cannot be told apart."""
    if not text or not any(ch.isdigit() for ch in text):
        return ()
    found = []
    for currency in dict.fromkeys(currencies):
        try:
            found.append(parse_amount(text, currency, _locale()))
        except AmountError:
            continue
    return tuple(found)


def _parse_day(form: FlaskForm, name: str) -> date | None:
    field = getattr(form, name)
    text = (field.data or "").strip()
    if not text:
        return None
    try:
        return activity.parse_day(text, name)
    except InvalidInput:
        first, last = activity.FIRST_DAY.year, activity.LAST_DAY.year
        field.errors = [*field.errors, f"Enter a date like 2025-01-31, from {first} to {last}."]
        return None


def _filters(my_cards: Sequence[CardSummary]) -> tuple[ActivityFilterForm, Filters]:
    form = ActivityFilterForm(request.args)
    form.card.choices = options(
        [("", "All cards"), *((c.public_id, card_label(c, balance=False)) for c in my_cards)]
    )
    form.kind.choices = options([("", "All kinds"), *KIND_LABELS.items()])
    form.status.choices = options([("", "Any status"), *STATUS_LABELS.items()])
    card_id = None
    if form.card.data:
        if not is_public_id("card", form.card.data):
            form.card.errors = ["Choose one of your cards."]
        else:
            card_id = form.card.data
    kind = form.kind.data if form.kind.data in KIND_LABELS else None
    status = form.status.data if form.status.data in STATUS_LABELS else None
    since = _parse_day(form, "since")
    until = _parse_day(form, "until")
    if since and until and since > until:
        # Refused (and nothing listed), never quietly read as something else.
        form.until.errors = [*form.until.errors, "The end date is before the start date."]
    search = (form.q.data or "").strip()[:100] or None
    amounts = _search_amounts(search, [c.currency for c in my_cards])
    return form, Filters(card_id, kind, status, since, until, search, amounts)


def _refused_filter(form: ActivityFilterForm) -> InvalidInput | None:
    """The first filter the history cannot use, as a refusal naming its field."""
    for field in form:
        if field.errors:
            return InvalidInput(f"{field.label.text}: {field.errors[0]}", param=field.name)
    return None


def _query(filters_form: ActivityFilterForm, **extra: Any) -> dict[str, Any]:
    params = {
        "card": filters_form.card.data or None,
        "kind": filters_form.kind.data or None,
        "status": filters_form.status.data or None,
        "since": filters_form.since.data or None,
        "until": filters_form.until.data or None,
        "q": filters_form.q.data or None,
        **extra,
    }
    return {k: v for k, v in params.items() if v}


@bp.get("/activity")
@login_required("wallet:use")
def activity_page() -> Response:
    version = _version()
    my_cards = _my_cards(include_archived=True)
    form, filters = _filters(my_cards)
    after = request.args.get("starting_after") or None
    page = None
    if _refused_filter(form) is None:  # a refused filter lists nothing
        try:
            page = activity.list_activity(
                _uow(), actor=current_actor(), limit=PAGE_SIZE, starting_after=after,
                **filters.service_args(),
            )  # fmt: skip
        except InvalidInput as error:
            add_service_error(form, error, default="q")
    items: tuple[ActivityItem, ...] = page.items if page else ()
    has_more = bool(page and page.has_more)
    next_url = (
        url_for(".activity_page", **_query(form, starting_after=items[-1].id))
        if has_more and items else None
    )  # fmt: skip
    context = {
        "form": form,
        "items": items,
        "next_url": next_url,
        "csv_url": url_for(".activity_csv", **_query(form)),
        "filtered": bool(_query(form)),
        "continued": after is not None,
        "first_url": url_for(".activity_page", **_query(form)),
    }
    # A filter that cannot be used (a date that is no date, out of range, or an end before the
    # start) is a 422, listing nothing.
    refused = _refused_filter(form)
    context["refused"] = refused is not None
    status = 422 if refused else 200
    target = request.headers.get("HX-Target")
    if _is_htmx() and target == "load-more":
        return _fragments(("cardholder/_activity_rows.html", context), status=status)
    if _is_htmx() and target == "activity-results":
        # Only the results are swapped: the refusal shows above them, not next to the field.
        refusal = refused.message if refused else None
        return _fragments(
            ("cardholder/_activity_results.html", {**context, "refusal": refusal}), status=status
        )
    return _render("cardholder/activity.html", status, **context, **_poller("activity", version))


_CSV_FIELDS = (
    "created_at", "id", "kind", "status", "direction", "amount", "currency", "card",
    "counterparty", "method", "failure_code", "memo", "balance_after",
)  # fmt: skip
#: Spreadsheets (Excel above all) read a CSV as UTF-8 only when it starts with a BOM.
_BOM = "\ufeff"
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(text: str | None) -> str:
    """A text cell that a spreadsheet will not run as a formula (OWASP CSV injection)."""
    value = text or ""
    return "'" + value if value.startswith(_FORMULA_START) else value


def _csv_row(item: ActivityItem, after: Money | None) -> list[str]:
    """One movement: UTC, plain decimals in major units (not the page's formats)."""
    amount = item.amount.to_major_str()
    signed = amount if item.direction == "in" else f"-{amount}"
    return [
        item.created_at.astimezone(UTC).isoformat(timespec="seconds"),
        _cell(item.id),
        item.kind,
        item.status,
        item.direction,
        signed,
        item.amount.currency,
        f"•••• {item.card_last4}" if item.card_last4 else "",
        _cell(item.counterparty),
        _cell(item.method),
        _cell(item.failure_code),
        _cell(item.memo),
        after.to_major_str() if after is not None else "",
    ]


@bp.get("/activity.csv")
@login_required("wallet:use")
def activity_csv() -> Response:
    """The history as CSV, with the page's filters, streamed a page of rows at a time."""
    my_cards = _my_cards(include_archived=True)
    form, filters = _filters(my_cards)
    if (refused := _refused_filter(form)) is not None:
        raise refused  # an error page, never a file quietly holding the unfiltered history
    actor = current_actor()
    # The first page is read now, so a refused filter is an error page and not a broken file.
    first = activity.list_activity(_uow(), actor=actor, limit=CSV_PAGE, **filters.service_args())
    first_after = activity.balances_after(_uow(), actor=actor, items=first.items)

    app = current_app._get_current_object()  # type: ignore[attr-defined]

    def rows() -> Iterator[str]:
        # Runs after the request has ended (the response streams): no request context, only
        # the app's, and the actor and filters captured above.
        buffer = io.StringIO()
        writer = csv.writer(buffer)

        def flush() -> str:
            text = buffer.getvalue()
            buffer.seek(0)
            buffer.truncate(0)
            return text

        buffer.write(_BOM)
        writer.writerow(_CSV_FIELDS)
        page, after = first, first_after
        while True:
            for item in page.items:
                writer.writerow(_csv_row(item, after.get(item.id)))
            yield flush()
            if not page.has_more or not page.items:
                return
            with app.app_context():
                page = activity.list_activity(
                    make_uow(app), actor=actor, limit=CSV_PAGE,
                    starting_after=page.items[-1].id, **filters.service_args(),
                )  # fmt: skip
                after = activity.balances_after(make_uow(app), actor=actor, items=page.items)

    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    response = Response(rows(), content_type="text/csv; charset=utf-8")
    response.headers["Content-Disposition"] = f'attachment; filename="portal-activity-{stamp}.csv"'
    return response
