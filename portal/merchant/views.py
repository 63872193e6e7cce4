"""Routes of the merchant dashboard (the staff merchants page is the console's now:
``/merchant/staff`` sends there).

Every page works as plain form posts (Post/Redirect/Get), except the two that show a new API
key's secret: that page is the answer to the POST itself (the secret never sits in a session or
a redirect) and is never cached. The merchant's public id is in every URL
(``/merchant/mch_.../payments``); who may see and do what is the services' answer
(``merchants.access``): a member by role, staff (``merchants:read``) read-only, anyone else a
404. Pages hide the buttons a role may not press, and the services refuse them anyway (403).

Payment actions (capture, cancel, refund) carry an idempotency key minted when the page is
rendered, so a double submit acts once and shows the first answer. Key and team forms carry a
one-time form token (:mod:`portal.web.once`).

Live updates: the overview carries a poller that asks ``changes?v=<version>`` every 1.5 s; the
version is :func:`reports.change_version` (a few index look-ups). The answer is 204 while it is
unchanged, else a new poller and the figures, charts and latest payments out of band.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

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
from werkzeug.wrappers import Response

from portal.domain.cards import brand_name
from portal.domain.errors import (
    Forbidden,
    IdempotencyConflict,
    InvalidInput,
    NotFound,
    PortalError,
)
from portal.domain.ids import is_public_id
from portal.domain.money import Money, MoneyError, exponent
from portal.merchant import bp
from portal.merchant.forms import (
    CANCEL_LABELS,
    MERCHANT_STATES,
    OVERLAPS,
    PAYMENT_STATUS_LABELS,
    REFUND_LABELS,
    ROLE_NAMES,
    SCOPE_LABELS,
    ApplyForm,
    CancelForm,
    CaptureForm,
    InviteForm,
    NewKeyForm,
    PaymentFilterForm,
    RefundForm,
    RoleForm,
    RollKeyForm,
    add_service_error,
    new_key,
    options,
)
from portal.services.merchants import keys, merchants, payments, reports, webhooks
from portal.services.merchants.keys import ApiKeyView
from portal.services.merchants.merchants import Membership, MerchantView
from portal.services.merchants.payments import PaymentView
from portal.services.merchants.reports import Series
from portal.web import mail, once
from portal.web.auth import current_actor, login_required
from portal.web.render import render_fragments as _fragments
from portal.web.render import render_page as _render
from portal.web.render import wants_fragment as _is_htmx
from portal.web.uow import make_uow

log = logging.getLogger(__name__)

#: How often the overview asks whether anything changed (milliseconds).
POLL_MS = 1500
LATEST_ITEMS = reports.LATEST
PAGE_SIZE = 20


# -- helpers -------------------------------------------------------------------------------------
@bp.before_request
def _htmx_needs_sign_in() -> Response | None:
    """A poll whose session has ended sends the whole page to the sign-in page."""
    if _is_htmx() and not current_user.is_authenticated:
        response = make_response("", 401)
        response.headers["HX-Redirect"] = url_for("auth.login", next=url_for(".index"))
        return response
    return None


@bp.after_request
def _finish(response: Response) -> Response:
    """Nothing here belongs in a cache (figures, payments, once a key's secret); then send the
    queued mail once the response has gone."""
    response.headers.setdefault("Cache-Control", "no-store")
    queued = g.pop("merchant_mail", None)
    if queued:
        app = current_app._get_current_object()  # type: ignore[attr-defined]

        def deliver() -> None:
            with app.app_context():
                for to, subject, body in queued:
                    try:
                        mail.send(to, subject, body)
                    except Exception:  # a mail server outage must not break the page
                        log.exception("could not send %r", subject)

        response.call_on_close(deliver)
    return response


@bp.app_template_filter("minor")
def _minor_filter(amount: int | None, currency: str) -> str:
    """Minor units as money: ``2000 | minor("USD")`` is ``20.00 USD``."""
    return Money(amount or 0, currency).format() if currency else ""


@bp.app_template_filter("percent")
def _percent_filter(rate: float | None) -> str:
    return "—" if rate is None else f"{rate * 100:.1f} %".replace(".0 %", " %")


@bp.app_context_processor
def _navigation() -> dict[str, Any]:
    """``merchant_nav()`` for the site navigation: whether to show "Merchant" (a member of a
    merchant, or ``merchant:use``). One query, at most once per request, and only when the
    navigation asks (staff reach merchants through the console)."""

    def merchant_nav() -> dict[str, bool]:
        found = g.get("merchant_nav")
        if found is not None:
            return found
        found = {"merchant": False}
        if current_user.is_authenticated:
            actor = current_user.actor
            member = actor.can("merchant:use")
            if not member:
                try:
                    member = bool(merchants.merchants_of(make_uow(), actor=actor))
                except Exception:  # the navigation never breaks a page (an error page, say)
                    log.exception("could not read the user's merchants for the navigation")
            found["merchant"] = member
        g.merchant_nav = found
        return found

    return {"merchant_nav": merchant_nav}


def _uow() -> Any:
    return make_uow()


def _membership(mid: str) -> Membership:
    return merchants.get_merchant(_uow(), actor=current_actor(), merchant=mid)


def _require(membership: Membership, ability: str) -> None:
    if not membership.can(ability):
        raise Forbidden(
            f"your role in {membership.merchant.name} does not allow this",
            code="permission_denied",
        )


def _mine() -> list[Membership]:
    return merchants.merchants_of(_uow(), actor=current_actor())


def _layout(membership: Membership, tab: str) -> dict[str, Any]:
    """What every dashboard page shows around its content: the merchant, the switcher, tabs."""
    mine = _mine() if current_user.is_authenticated else []
    return {
        "membership": membership,
        "merchant": membership.merchant,
        "mid": membership.merchant.public_id,
        "tab": tab,
        "switch_to": [m for m in mine if m.merchant.public_id != membership.merchant.public_id],
        "role_names": ROLE_NAMES,
        "webhook_alerts": _webhook_alerts(membership),
    }


def _webhook_alerts(membership: Membership) -> list[webhooks.WebhookEndpointView]:
    """Endpoints Portal turned off (a 410, or days of failures): their managers are told."""
    if membership.role not in ("owner", "developer"):
        return []
    page = webhooks.list_endpoints(
        _uow(), actor=current_actor(), merchant=membership.merchant.id, limit=100
    )
    return [e for e in page.items if e.needs_attention]


def _sentence(text: str) -> str:
    text = text.strip()
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "!", "?", ")")) else text + "."


def _public_url(endpoint: str, **values: Any) -> str:
    return str(current_app.config["PUBLIC_URL"]).rstrip("/") + url_for(endpoint, **values)


def _queue_mail(to: str, subject: str, body: str) -> None:
    g.setdefault("merchant_mail", []).append((to, subject, body))


def card_label(payment: PaymentView) -> str:
    """All a merchant sees of a card: ``Visa •••• 4242``."""
    if not payment.card_last4:
        return "Unknown card"
    return f"{brand_name(payment.card_brand)} •••• {payment.card_last4}"


def status_of(payment: PaymentView) -> tuple[str, str]:
    """(label, badge modifier) of a payment as the merchant reads it."""
    if payment.status == "succeeded":
        if payment.amount_refunded and payment.refunded:
            return "Refunded", "neutral"
        if payment.amount_refunded:
            return "Partly refunded", "warning"
        return "Succeeded", "success"
    if payment.status == "requires_capture":
        return "Uncaptured", "warning"
    if payment.status == "canceled":
        return ("Expired" if payment.cancellation_reason == "expired" else "Canceled"), "neutral"
    return "Declined", "danger"


def fee_rule(merchant: MerchantView, currency: str) -> str:
    """The merchant's fee in words: "2.9 % + 0.30 USD per captured payment"."""
    percent = f"{merchant.fee_bps / 100:.2f}".rstrip("0").rstrip(".")
    fixed = merchant.fee_fixed.get(currency, 0)
    text = f"{percent} %"
    if fixed:
        text += f" + {Money(fixed, currency).format()}"
    return text + " of each captured payment"


@bp.app_template_global("payment_status")
def _payment_status(payment: PaymentView) -> tuple[str, str]:
    return status_of(payment)


@bp.app_template_global("payment_card")
def _payment_card(payment: PaymentView) -> str:
    return card_label(payment)


# -- applying and choosing a merchant ------------------------------------------------------------
@bp.get("")
@login_required()
def index() -> Response:
    """The user's merchant: straight to it when there is one, a chooser when several, the
    application form when none."""
    mine = _mine()
    if not mine:
        return redirect(url_for(".apply"))
    if len(mine) == 1:
        return redirect(url_for(".overview", mid=mine[0].merchant.public_id))
    return _render("merchant/choose.html", memberships=mine, role_names=ROLE_NAMES,
                   states=MERCHANT_STATES)  # fmt: skip


def _currencies() -> list[str]:
    settings = _uow().settings
    return sorted(c for c in settings.limits if settings.limits_for(c, "payment") is not None)


@bp.route("/apply", methods=["GET", "POST"])
@login_required()
def apply() -> Response:
    form = ApplyForm()
    form.settlement_currency.choices = options((c, c) for c in _currencies())
    if request.method == "GET":
        form.settlement_currency.data = "USD" if "USD" in _currencies() else None
        form.contact_email.data = current_user.user.email
    if form.validate_on_submit():
        try:
            applied = merchants.apply(
                _uow(), actor=current_actor(), name=form.name.data or "",
                website=form.website.data or "", contact_email=form.contact_email.data or "",
                settlement_currency=form.settlement_currency.data or "",
            )  # fmt: skip
        except PortalError as error:
            if isinstance(error, NotFound):
                raise
            add_service_error(form, error, aliases={"email": "contact_email"})
        else:
            flash(f"Thank you. We have your application for {applied.name}; staff review it "
                  "shortly.", "success")  # fmt: skip
            return redirect(url_for(".overview", mid=applied.public_id))
    status = 422 if request.method == "POST" else 200
    return _render("merchant/apply.html", status, form=form, mine=_mine())


# -- overview ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Chart:
    """One currency's chart (a ``data-chart`` attribute for app.js) and its table (the same
    numbers, readable without JavaScript): money in is what payments received, money out
    what was refunded."""

    series: Series

    @property
    def currency(self) -> str:
        return self.series.currency

    @property
    def payload(self) -> str:
        s = self.series
        label = "%d %b" if s.unit == "day" else "%b %Y"

        def major(value: int) -> str:
            return Money(value, s.currency).to_major_str()

        return json.dumps(
            {
                "currency": s.currency,
                "digits": exponent(s.currency),
                "labels": [b.start.strftime(label) for b in s.buckets],
                "in": [major(b.totals.gross) for b in s.buckets],
                "out": [major(b.totals.refunds) for b in s.buckets],
            },
            separators=(",", ":"),
        )

    @property
    def empty(self) -> bool:
        return all(b.totals.gross == 0 == b.totals.refunds for b in self.series.buckets)


def _overview_context(membership: Membership) -> dict[str, Any]:
    mid = membership.merchant.public_id
    actor = current_actor()
    figures = reports.overview(_uow(), actor=actor, merchant=mid)
    latest = payments.list_payments(_uow(), actor=actor, merchant=mid, limit=LATEST_ITEMS)
    return {
        "figures": figures,
        "daily": [Chart(s) for s in figures.daily],
        "monthly": [Chart(s) for s in figures.monthly],
        "latest": latest.items,
        "latest_more": latest.has_more,
    }


def _poller(mid: str, version: str) -> dict[str, Any]:
    return {"live": {"url": url_for(".changes", mid=mid, v=version), "version": version,
                     "every": POLL_MS}}  # fmt: skip


@bp.get("/<mid>")
@login_required()
def overview(mid: str) -> Response:
    membership = _membership(mid)
    merchant = membership.merchant
    if merchant.status in ("pending", "rejected") and merchant.archived_at is None:
        return _render("merchant/application.html", **_layout(membership, "overview"))
    # The version first: a change made while the page renders is caught by the next poll.
    version = reports.change_version(_uow(), actor=current_actor(), merchant=mid)
    return _render("merchant/overview.html", **_layout(membership, "overview"),
                   **_overview_context(membership), **_poller(mid, version),
                   statistics=_statistics(mid))  # fmt: skip


def _statistics(mid: str) -> Any:
    """The merchant's statistics panel (payments, refunds, balance by month; the pickers'
    year, month and currency from the query string)."""
    from portal.web.statistics_charts import panel

    return panel(_uow(), actor=current_actor(), args=request.args, scope="merchant", id=mid,
                 families=("payments", "refunds", "balances"))  # fmt: skip


@bp.get("/<mid>/changes")
@login_required()
def changes(mid: str) -> Response:
    """204 while nothing changed; otherwise a new poller and the changed parts (OOB)."""
    membership = _membership(mid)
    version = reports.change_version(_uow(), actor=current_actor(), merchant=mid)
    if request.args.get("v") == version:
        response = make_response("", 204)
        response.vary.add("HX-Request")
        return response
    context = {**_layout(membership, "overview"), **_overview_context(membership), "oob": True}
    return _fragments(
        ("merchant/_live.html", _poller(mid, version)),
        ("merchant/_status.html", context),
        ("merchant/_figures.html", context),
        ("merchant/_latest.html", context),
        ("merchant/_charts.html", context),
    )


# -- payments ------------------------------------------------------------------------------------
def _parse_day(form: FlaskForm, name: str) -> date | None:
    field = getattr(form, name)
    text = (field.data or "").strip()
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        field.errors = [*field.errors, "Enter a date like 2025-01-31."]
        return None


def _query(form: PaymentFilterForm, **extra: Any) -> dict[str, Any]:
    params = {
        "q": form.q.data or None,
        "status": form.status.data or None,
        "since": form.since.data or None,
        "until": form.until.data or None,
        **extra,
    }
    return {k: v for k, v in params.items() if v}


@bp.get("/<mid>/payments")
@login_required()
def payment_list(mid: str) -> Response:
    membership = _membership(mid)
    form = PaymentFilterForm(request.args)
    status = form.status.data if form.status.data in PAYMENT_STATUS_LABELS else None
    if form.status.data and status is None:
        form.status.errors = ["Choose a status from the list."]
    since = _parse_day(form, "since")
    until = _parse_day(form, "until")
    if since and until and since > until:
        form.until.errors = [*form.until.errors, "The end date is before the start date."]
        until = None
    search = (form.q.data or "").strip()[:100] or None
    if search and is_public_id("payment", search):
        try:
            found = payments.get_payment(_uow(), actor=current_actor(), merchant=mid,
                                         payment=search)  # fmt: skip
        except NotFound:
            pass
        else:
            return redirect(url_for(".payment", mid=mid, pid=found.id))
    after = request.args.get("starting_after") or None
    items: tuple[PaymentView, ...] = ()
    has_more = False
    try:
        page = payments.list_payments(
            _uow(), actor=current_actor(), merchant=mid, limit=PAGE_SIZE, starting_after=after,
            status=status,
            created_gte=datetime.combine(since, time.min, tzinfo=UTC) if since else None,
            created_lte=datetime.combine(until, time.max, tzinfo=UTC) if until else None,
            search=search,
        )  # fmt: skip
    except InvalidInput as error:
        add_service_error(form, error, default="q", aliases={"starting_after": "q"})
    else:
        items, has_more = page.items, page.has_more
    next_url = (
        url_for(".payment_list", mid=mid, **_query(form, starting_after=items[-1].id))
        if has_more and items else None
    )  # fmt: skip
    return _render(
        "merchant/payments.html",
        **_layout(membership, "payments"),
        form=form, items=items, next_url=next_url, filtered=bool(_query(form)),
        continued=after is not None, first_url=url_for(".payment_list", mid=mid, **_query(form)),
    )  # fmt: skip


@dataclass
class ActionForms:
    capture: CaptureForm
    cancel: CancelForm
    refund: RefundForm

    @classmethod
    def fresh(cls) -> ActionForms:
        # Prefixed: the three forms share a page, and their fields need distinct names and ids.
        forms = cls(CaptureForm(formdata=None, prefix="capture-"),
                    CancelForm(formdata=None, prefix="cancel-"),
                    RefundForm(formdata=None, prefix="refund-"))  # fmt: skip
        for form in (forms.capture, forms.cancel, forms.refund):
            form.ensure_key()
        return forms


def _payment_page(
    membership: Membership, pid: str, status: int = 200, forms: ActionForms | None = None
) -> Response:
    detail = reports.payment_detail(
        _uow(), actor=current_actor(), merchant=membership.merchant.public_id, payment=pid
    )
    p = detail.payment
    return _render(
        "merchant/payment.html", status,
        **_layout(membership, "payments"),
        detail=detail, p=p, forms=forms or ActionForms.fresh(),
        can_capture=membership.can("payments:write") and p.status == "requires_capture",
        can_cancel=membership.can("payments:write")
        and p.status in ("requires_capture", "requires_payment_method"),
        can_refund=membership.can("refunds:write") and p.status == "succeeded"
        and detail.refundable > 0,
        fee_rule=fee_rule(membership.merchant, p.currency),
        cancel_labels=CANCEL_LABELS, refund_labels=REFUND_LABELS,
    )  # fmt: skip


@bp.get("/<mid>/payments/<pid>")
@login_required()
def payment(mid: str, pid: str) -> Response:
    return _payment_page(_membership(mid), pid)


def _amount(form: CaptureForm | RefundForm, currency: str) -> tuple[bool, int | None]:
    """(ok, minor units or None when left empty) of the form's optional amount."""
    text = (form.amount.data or "").strip()
    if not text:
        return True, None
    try:
        amount = Money.of_major(text, currency)
    except MoneyError as exc:
        message = str(exc)
        if "is not an amount" in message:
            message = f"Enter an amount in {currency}, like 25 or 25.50"
        form.amount.errors = [*form.amount.errors, _sentence(message)]
        return False, None
    if amount.amount_minor <= 0:
        form.amount.errors = [*form.amount.errors, "Enter an amount above zero."]
        return False, None
    return True, amount.amount_minor


def _act(
    mid: str, pid: str, ability: str, which: str, call: Any, done: Any
) -> Response:  # fmt: skip
    """The shared shape of a payment action: check the role, validate, call the service with
    the form's key, then redirect with a message, or show the page again with the refusal."""
    membership = _membership(mid)
    _require(membership, ability)
    forms = ActionForms.fresh()
    form = {"capture": CaptureForm, "cancel": CancelForm, "refund": RefundForm}[which](
        prefix=f"{which}-"
    )
    setattr(forms, which, form)
    key = (form.idempotency_key.data or "").strip()
    current = payments.get_payment(_uow(), actor=current_actor(), merchant=mid, payment=pid)
    if not form.validate_on_submit() or not key:
        if not key:
            form.form_errors.append("This form is missing its key; it was filled in again.")
        form.ensure_key()
        return _payment_page(membership, pid, 422, forms)
    ok, amount = _amount(form, current.currency) if hasattr(form, "amount") else (True, None)
    if not ok:
        return _payment_page(membership, pid, 422, forms)
    try:
        result = call(form, key, amount)
    except NotFound:
        raise
    except Forbidden:
        raise
    except IdempotencyConflict:
        form.form_errors.append("This form was already used for a different request. Check "
                                "the details and send it again.")  # fmt: skip
        form.idempotency_key.data = new_key()
        return _payment_page(membership, pid, 422, forms)
    except PortalError as error:
        add_service_error(form, error, default="amount" if hasattr(form, "amount") else None)
        form.idempotency_key.data = new_key()  # a refusal is stored under the old key
        return _payment_page(membership, pid, 422, forms)
    message = done(result)
    if getattr(result, "replayed", False):
        message += " (This was already done when the form was first sent; nothing happened twice.)"
    flash(message, "success")
    return redirect(url_for(".payment", mid=mid, pid=pid))


@bp.post("/<mid>/payments/<pid>/capture")
@login_required()
def capture(mid: str, pid: str) -> Response:
    def call(form: CaptureForm, key: str, amount: int | None) -> PaymentView:
        return payments.capture_payment(_uow(), actor=current_actor(), merchant=mid,
                                        payment=pid, idempotency_key=key,
                                        amount_to_capture=amount)  # fmt: skip

    def done(result: PaymentView) -> str:
        return f"Captured {Money(result.amount_received, result.currency)}."

    return _act(mid, pid, "payments:write", "capture", call, done)


@bp.post("/<mid>/payments/<pid>/cancel")
@login_required()
def cancel(mid: str, pid: str) -> Response:
    def call(form: CancelForm, key: str, _amount: int | None) -> PaymentView:
        reason = form.reason.data or None
        if reason is not None and reason not in CANCEL_LABELS:
            raise InvalidInput("choose a reason from the list", param="reason")
        return payments.cancel_payment(_uow(), actor=current_actor(), merchant=mid,
                                       payment=pid, idempotency_key=key, reason=reason)  # fmt: skip

    def done(result: PaymentView) -> str:
        return "The payment is canceled" + (
            "; the hold on the card is released." if result.capture_method == "manual"
            and result.last_payment_error is None else "."
        )  # fmt: skip

    return _act(mid, pid, "payments:write", "cancel", call, done)


@bp.post("/<mid>/payments/<pid>/refund")
@login_required()
def refund(mid: str, pid: str) -> Response:
    def call(form: RefundForm, key: str, amount: int | None) -> payments.RefundView:
        reason = form.reason.data or None
        if reason is not None and reason not in REFUND_LABELS:
            raise InvalidInput("choose a reason from the list", param="reason")
        return payments.create_refund(
            _uow(), actor=current_actor(), merchant=mid, payment=pid, idempotency_key=key,
            amount=amount, reason=reason,
        )  # fmt: skip

    def done(result: payments.RefundView) -> str:
        if result.status == "failed":
            return (f"The refund of {Money(result.amount, result.currency)} failed: the card is"
                    f" closed, so nothing went back to it and nothing left your balance"
                    f" ({result.id}).")  # fmt: skip
        return f"Refunded {Money(result.amount, result.currency)} to the card ({result.id})."

    return _act(mid, pid, "refunds:write", "refund", call, done)


# -- API keys ------------------------------------------------------------------------------------
def _keys_page(
    membership: Membership,
    status: int = 200,
    *,
    new_form: NewKeyForm | None = None,
    shown: ApiKeyView | None = None,
    rolled_from: str | None = None,
    roll_errors: Mapping[str, Sequence[str]] | None = None,
) -> Response:
    mid = membership.merchant.public_id
    items = keys.list_api_keys(_uow(), actor=current_actor(), merchant=mid)
    if new_form is None:
        new_form = NewKeyForm(formdata=None)
        new_form.ensure_token()
    roll_forms = {}
    for key in items:
        roll = RollKeyForm(formdata=None, prefix=f"{key.public_id}-")
        roll.ensure_token()
        roll_forms[key.public_id] = roll
    now = _uow().clock()
    return _render(
        "merchant/keys.html", status, **_layout(membership, "keys"),
        items=items, new_form=new_form, roll_forms=roll_forms, shown=shown,
        rolled_from=rolled_from, roll_errors=roll_errors or {}, now=now,
        scope_labels=SCOPE_LABELS, overlaps=OVERLAPS,
    )  # fmt: skip


@bp.get("/<mid>/keys")
@login_required()
def key_list(mid: str) -> Response:
    membership = _membership(mid)
    _require(membership, "keys")
    return _keys_page(membership)


def _claimed(form: NewKeyForm | RollKeyForm | InviteForm, kind: str) -> bool:
    token = (form.form_token.data or "").strip()
    return bool(token) and len(token) <= 64 and once.claim(f"{kind}:{current_user.id}", token)


SENT_TWICE = (
    "This form was sent twice; only the first submission counted. Its page showed the new "
    "secret: if you did not copy it, roll or revoke that key below."
)


@bp.post("/<mid>/keys")
@login_required()
def create_key(mid: str) -> Response:
    membership = _membership(mid)
    _require(membership, "keys")
    form = NewKeyForm()
    expires_at = None
    if form.validate_on_submit():
        day = _parse_day(form, "expires")
        if day is not None:
            expires_at = datetime.combine(day + timedelta(days=1), time.min, tzinfo=UTC)
        if not form.scopes.data:
            form.scopes.errors = [*form.scopes.errors, "Choose at least one scope."]
    if form.errors or form.form_errors or request.method != "POST" or not form.name.data:
        form.form_token.data = new_key()
        return _keys_page(membership, 422, new_form=form)
    if not _claimed(form, "api_key"):
        flash(SENT_TWICE, "info")
        return redirect(url_for(".key_list", mid=mid))
    try:
        created = keys.create_api_key(
            _uow(), actor=current_actor(), merchant=mid, name=form.name.data or "",
            scopes=list(form.scopes.data or []), expires_at=expires_at,
        )  # fmt: skip
    except (NotFound, Forbidden):
        raise
    except PortalError as error:
        add_service_error(form, error, default="name")
        form.form_token.data = new_key()
        return _keys_page(membership, 422, new_form=form)
    # The one answer that shows the secret: no redirect (it must not sit in a session).
    return _keys_page(membership, 201, shown=created)


@bp.post("/<mid>/keys/<kid>/roll")
@login_required()
def roll_key(mid: str, kid: str) -> Response:
    membership = _membership(mid)
    _require(membership, "keys")
    form = RollKeyForm(prefix=f"{kid}-")
    overlap = form.overlap.data if form.validate_on_submit() else None
    if overlap is None or not str(overlap).isdigit() or int(overlap) not in OVERLAPS:
        return _keys_page(membership, 422, roll_errors={kid: ["Choose how long the old key "
                                                              "keeps working."]})  # fmt: skip
    if not _claimed(form, "api_key_roll"):
        flash(SENT_TWICE, "info")
        return redirect(url_for(".key_list", mid=mid))
    try:
        rolled = keys.roll_api_key(_uow(), actor=current_actor(), merchant=mid, key=kid,
                                   overlap_hours=int(overlap))  # fmt: skip
    except (NotFound, Forbidden):
        raise
    except PortalError as error:
        return _keys_page(membership, 422, roll_errors={kid: [_sentence(error.message)]})
    return _keys_page(membership, 201, shown=rolled, rolled_from=kid)


@bp.post("/<mid>/keys/<kid>/revoke")
@login_required()
def revoke_key(mid: str, kid: str) -> Response:
    membership = _membership(mid)
    _require(membership, "keys")
    if not FlaskForm().validate_on_submit():
        abort(400)
    revoked = keys.revoke_api_key(_uow(), actor=current_actor(), merchant=mid, key=kid)
    flash(f"The key {revoked.name} ({revoked.redacted}) is revoked; it works no more.", "success")
    return redirect(url_for(".key_list", mid=mid))


# -- team ----------------------------------------------------------------------------------------
def _team_page(
    membership: Membership, status: int = 200, *, invite_form: InviteForm | None = None,
    role_errors: Mapping[str, str] | None = None,
) -> Response:  # fmt: skip
    mid = membership.merchant.public_id
    members = merchants.list_members(_uow(), actor=current_actor(), merchant=mid)
    owner = membership.can("team")
    invitations = merchants.list_invitations(_uow(), actor=current_actor(), merchant=mid) \
        if owner else []  # fmt: skip
    if invite_form is None:
        invite_form = InviteForm(formdata=None)
        invite_form.ensure_token()
    role_forms = {}
    for member in members:
        role_form = RoleForm(formdata=None, prefix=f"{member.public_id}-")
        role_form.role.data = member.role
        role_forms[member.public_id] = role_form
    return _render(
        "merchant/team.html", status, **_layout(membership, "team"),
        members=members, invitations=invitations, invite_form=invite_form,
        role_forms=role_forms, owner=owner, role_errors=role_errors or {},
        me=current_user.id,
    )  # fmt: skip


@bp.get("/<mid>/team")
@login_required()
def team(mid: str) -> Response:
    return _team_page(_membership(mid))


@bp.post("/<mid>/team/invitations")
@login_required()
def invite(mid: str) -> Response:
    membership = _membership(mid)
    _require(membership, "team")
    form = InviteForm()
    if not form.validate_on_submit():
        form.form_token.data = new_key()
        return _team_page(membership, 422, invite_form=form)
    if not _claimed(form, "invitation"):
        flash("This invitation was sent already (the form was sent twice).", "info")
        return redirect(url_for(".team", mid=mid))
    try:
        invitation = merchants.invite_member(_uow(), actor=current_actor(), merchant=mid,
                                             email=form.email.data or "",
                                             role=form.role.data or "")  # fmt: skip
    except (NotFound, Forbidden):
        raise
    except PortalError as error:
        add_service_error(form, error, default="email")
        form.form_token.data = new_key()
        return _team_page(membership, 422, invite_form=form)
    assert invitation.token is not None
    link = _public_url(".join", token=invitation.token)
    inviter = current_user.user.full_name
    role = ROLE_NAMES.get(invitation.role, invitation.role)
    days = merchants.INVITATION_DAYS
    _queue_mail(
        invitation.email,
        f"{inviter} invited you to {membership.merchant.name} on Portal",
        f"Hello,\n\n{inviter} invited you to join {membership.merchant.name} on Portal as "
        f"{role.lower()}.\n\nSign in (or create an account) with this address, "
        f"{invitation.email}, and open this link to accept:\n\n{link}\n\n"
        f"The link works once and expires in {days} days. If you did not expect this, you can "
        "ignore this message.\n",
    )
    flash(f"Invitation sent to {invitation.email} ({role.lower()}). The link expires in "
          f"{days} days.", "success")  # fmt: skip
    return redirect(url_for(".team", mid=mid))


@bp.post("/<mid>/team/invitations/<iid>/revoke")
@login_required()
def revoke_invitation(mid: str, iid: str) -> Response:
    membership = _membership(mid)
    _require(membership, "team")
    if not FlaskForm().validate_on_submit():
        abort(400)
    merchants.revoke_invitation(_uow(), actor=current_actor(), merchant=mid, invitation=iid)
    flash("The invitation is withdrawn; its link works no more.", "success")
    return redirect(url_for(".team", mid=mid))


@bp.post("/<mid>/team/members/<member>/role")
@login_required()
def change_role(mid: str, member: str) -> Response:
    membership = _membership(mid)
    _require(membership, "team")
    form = RoleForm(prefix=f"{member}-")
    if not form.validate_on_submit():
        abort(400)
    try:
        merchants.change_member_role(_uow(), actor=current_actor(), merchant=mid,
                                     member=member, role=form.role.data or "")  # fmt: skip
    except (NotFound, Forbidden):
        raise
    except PortalError as error:
        return _team_page(membership, 422, role_errors={member: _sentence(error.message)})
    flash(f"The role is now {ROLE_NAMES.get(form.role.data or '', form.role.data)}.", "success")
    if not _still_member(mid):
        return redirect(url_for(".index"))
    return redirect(url_for(".team", mid=mid))


def _still_member(mid: str) -> bool:
    return any(m.merchant.public_id == mid for m in _mine())


@bp.post("/<mid>/team/members/<member>/remove")
@login_required()
def remove_member(mid: str, member: str) -> Response:
    membership = _membership(mid)
    _require(membership, "team")
    if not FlaskForm().validate_on_submit():
        abort(400)
    try:
        merchants.remove_member(_uow(), actor=current_actor(), merchant=mid, member=member)
    except (NotFound, Forbidden):
        raise
    except PortalError as error:
        return _team_page(membership, 422, role_errors={member: _sentence(error.message)})
    flash("The member is removed from the team.", "success")
    if not _still_member(mid):
        return redirect(url_for(".index"))
    return redirect(url_for(".team", mid=mid))


@bp.route("/join/<token>", methods=["GET", "POST"])
@login_required()
def join(token: str) -> Response:
    """An invitation link: the invited person, signed in with the invited address, joins."""
    try:
        preview = reports.invitation_preview(_uow(), actor=current_actor(), token=token)
    except NotFound:
        return _render("merchant/join.html", 404, preview=None)
    form = FlaskForm()
    if request.method == "POST" and preview.for_actor and form.validate_on_submit():
        joined = merchants.accept_invitation(_uow(), actor=current_actor(), token=token)
        role = ROLE_NAMES.get(joined.role or "", joined.role)
        flash(f"Welcome to {joined.merchant.name}: you joined as {(role or '').lower()}.",
              "success")  # fmt: skip
        return redirect(url_for(".overview", mid=joined.merchant.public_id))
    status = 403 if request.method == "POST" else 200
    return _render("merchant/join.html", status, preview=preview, form=form,
                   role_names=ROLE_NAMES)  # fmt: skip


# -- first payment guide -------------------------------------------------------------------------
@bp.get("/<mid>/start")
@login_required()
def start(mid: str) -> Response:
    membership = _membership(mid)
    merchant = membership.merchant
    shown_key = None
    if membership.can("keys"):
        now = _uow().clock()
        active = [k for k in keys.list_api_keys(_uow(), actor=current_actor(), merchant=mid)
                  if k.active(now) and "payments:write" in k.scopes]  # fmt: skip
        shown_key = active[0] if active else None
    base = str(current_app.config["PUBLIC_URL"]).rstrip("/")
    currency = merchant.settlement_currency
    limits = _uow().settings.limits_for(currency, "payment")
    amount = max(2000, limits.minimum if limits else 0)
    return _render(
        "merchant/start.html", **_layout(membership, "start"),
        base=base, key=shown_key, currency=currency.lower(), amount=amount,
        amount_text=Money(amount, currency).format(), year=datetime.now(UTC).year + 3,
    )  # fmt: skip


# -- staff ---------------------------------------------------------------------------------------
@bp.get("/staff")
@login_required("merchants:read")
def staff() -> Response:
    """The staff merchants page moved into the console: old links land there, with their
    filters (``state``, ``q``)."""
    kept: dict[str, Any] = {k: v for k in ("state", "q") if (v := request.args.get(k))}
    return redirect(url_for("admin.merchants", **kept))
