"""Console tables and detail pages of the money records (top-ups, transfers, withdrawals,
payments, refunds, payouts) and of webhook deliveries.

Each kind has a table (``/admin/<kind>``: search, filters, cursor pager), a detail page
(``/admin/<kind>/<id>``: the journal entries and postings, holds, the cards, people and merchant
involved, related records and the audit trail) and, for the detail page of a record whose
status may still change, a poll (``/admin/<kind>/<id>/changes?v=``) answering 204 while the
record is unchanged and the record's part anew when it changed. Money records are never deleted
or archived: these pages only read; the queues (:mod:`portal.admin.queues`) act.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

from flask import abort, current_app, make_response, request, url_for
from flask_wtf import FlaskForm
from werkzeug.wrappers import Response
from wtforms import DateField, SelectField, StringField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import Optional

from portal.admin import bp
from portal.admin.views import PAGE_SIZE, next_page_url, trail_of
from portal.domain.errors import Forbidden, InvalidInput, NotFound
from portal.domain.money import Money, MoneyError, normalize_currency
from portal.services.admin import movements
from portal.services.admin.movements import Filters, Kind, Link
from portal.web.auth import current_actor
from portal.web.render import render_fragments, render_page
from portal.web.uow import make_uow

#: How often an open record's page asks whether it changed (milliseconds).
POLL_MS = 2000
#: Kind -> (URL segment, path parameter): the parameters are the ones every other route uses
#: for these objects (the security suite fills them).
ROUTES: dict[str, tuple[str, str]] = {
    "top_ups": ("top-ups", "top_up_id"),
    "transfers": ("transfers", "transfer_id"),
    "withdrawals": ("withdrawals", "withdrawal_id"),
    "payments": ("payments", "payment_id"),
    "refunds": ("refunds", "refund_id"),
    "payouts": ("payouts", "payout_id"),
    "deliveries": ("deliveries", "delivery_id"),
}
#: A linked record's kind -> the console segment that shows it (other sections' pages too,
#: linked once they exist).
LINK_SEGMENTS = {
    **{movements.KINDS[k].object: seg for k, (seg, _p) in ROUTES.items()},
    "user": "users",
    "card": "cards",
    "merchant": "merchants",
}
#: Kinds with a queue page (endpoint), linked from an open record's page.
QUEUES = {"withdrawals": "admin.queues", "payouts": "admin.queues_payouts"}
STATUS_LABELS = {
    "requires_payment_method": "Declined (requires payment method)",
    "requires_capture": "Authorised (requires capture)",
}


class MovementFilterForm(FlaskForm):
    class Meta:
        csrf = False

    q = StringField("Search", render_kw={"type": "search", "maxlength": 200})
    status = SelectField(
        "Status", choices=[SelectChoice("", "Every status")], validate_choice=False
    )
    currency = StringField("Currency", render_kw={"maxlength": 3, "placeholder": "USD",
                                                  "autocomplete": "off"})  # fmt: skip
    created_from = DateField("From day", validators=[Optional()])
    created_to = DateField("To day", validators=[Optional()])
    amount_min = StringField("Amount at least", render_kw={"inputmode": "decimal"})
    amount_max = StringField("Amount at most", render_kw={"inputmode": "decimal"})


def _hint(spec: Kind) -> str:
    s = spec.search
    what = [f"a {spec.singular.lower()} id"]
    if s.cards:
        what.append("a card id or its last four digits")
    if s.emails:
        what.append("an email")
    if s.merchants:
        what.append("a merchant id or name")
    return "Search by " + ", ".join(what[:-1]) + (" or " if len(what) > 1 else "") + what[-1]


def _form(spec: Kind) -> MovementFilterForm:
    form = MovementFilterForm(request.args)
    form.status.choices = [SelectChoice("", "Every status")] + [
        SelectChoice(s, STATUS_LABELS.get(s, s.replace("_", " ").capitalize()))
        for s in spec.statuses
    ]
    return form


def _minor(text: str | None, currency: str, field: Any) -> int | None:
    text = (text or "").strip()
    if not text:
        return None
    if not currency:
        field.errors = [*field.errors, "Choose a currency to filter by amount."]
        return None
    try:
        Decimal(text)
        amount = Money.of_major(text, currency)
    except (InvalidOperation, MoneyError):
        field.errors = [*field.errors, f"Enter an amount in {currency}, like 25 or 25.50."]
        return None
    return amount.amount_minor


def _filters(spec: Kind, form: MovementFilterForm) -> Filters | None:
    """The form's filters, or None with the errors on its fields."""
    form.validate()
    currency = (form.currency.data or "").strip()
    if currency:
        try:
            currency = normalize_currency(currency)
        except ValueError:
            form.currency.errors = [*form.currency.errors, "Enter a three-letter currency code."]
            currency = ""
    low = _minor(form.amount_min.data, currency, form.amount_min) if spec.money else None
    high = _minor(form.amount_max.data, currency, form.amount_max) if spec.money else None
    if any(f.errors for f in form):
        return None
    created_from: date | None = form.created_from.data
    created_to: date | None = form.created_to.data
    return Filters(
        q=(form.q.data or "").strip()[:200], status=form.status.data or "", currency=currency,
        created_from=created_from, created_to=created_to, amount_min=low, amount_max=high,
    )  # fmt: skip


_FILTER_FIELDS = {"status": "status", "currency": "currency", "created_from": "created_from",
                  "amount_min": "amount_min", "q": "q"}  # fmt: skip


def _list(kind: str) -> Response:
    spec = movements.kind_of(kind)
    actor = current_actor()
    if not actor.can(spec.permission):
        abort(403)
    form = _form(spec)
    filters = _filters(spec, form)
    after = request.args.get("starting_after") or None
    page = None
    status = 200
    if filters is not None:
        try:
            page = movements.list_records(make_uow(), actor=actor, kind=kind, filters=filters,
                                          starting_after=after, limit=PAGE_SIZE)  # fmt: skip
        except InvalidInput as error:
            target = getattr(form, _FILTER_FIELDS.get(error.param or "", ""), None)
            message = error.message[0].upper() + error.message[1:] + "."
            if error.param == "starting_after":
                message = "That page no longer exists; this is the first page."
                page = movements.list_records(make_uow(), actor=actor, kind=kind,
                                              filters=filters, limit=PAGE_SIZE)  # fmt: skip
                form.form_errors.append(message)
            elif target is not None:
                target.errors = [*target.errors, message]
            else:
                form.form_errors.append(message)
    if page is None:
        status = 400
    items = page.items if page else ()
    args = request.args.to_dict()
    filtered = any(v for k, v in args.items() if k != "starting_after")
    _segment, _param = ROUTES[kind]
    kept: dict[str, Any] = {k: v for k, v in args.items() if v and k != "starting_after"}
    return render_page(
        "admin/movements.html", status, spec=spec, kind=kind, form=form, items=items,
        filtered=filtered, continued=bool(after) and page is not None,
        next_url=next_page_url(f"admin.{kind}", args, items, bool(page and page.has_more)),
        first_url=url_for(f"admin.{kind}", **kept),
        show=f"admin.{kind}_show", param=_param, section=kind, search_hint=_hint(spec) + ".",
    )  # fmt: skip


def _record(kind: str, public_id: str) -> movements.Record:
    try:
        return movements.get_record(make_uow(), actor=current_actor(), kind=kind,
                                    public_id=public_id)  # fmt: skip
    except NotFound:
        abort(404)
    except Forbidden:
        abort(403)


def _live(kind: str, record: movements.Record) -> dict[str, Any]:
    _segment, param = ROUTES[kind]
    values: dict[str, Any] = {param: record.public_id, "v": record.version}
    url = url_for(f"admin.{kind}_changes", **values)
    queue = QUEUES.get(kind) if record.live else None
    return {
        "live": {"url": url, "every": POLL_MS} if record.live else None,
        "queue_url": url_for(queue, _anchor=f"item-{record.public_id}") if queue else None,
    }


def _show(kind: str, public_id: str) -> Response:
    record = _record(kind, public_id)
    spec = movements.kind_of(kind)
    return render_page(
        "admin/movements_detail.html", spec=spec, kind=kind, record=record,
        trail=trail_of(spec.object, record.id), section=kind, **_live(kind, record),
    )  # fmt: skip


def _changes(kind: str, public_id: str) -> Response:
    """204 while the record is unchanged; else its part anew (with a new poller while open)."""
    try:
        now = movements.version(make_uow(), actor=current_actor(), kind=kind,
                                public_id=public_id)  # fmt: skip
    except NotFound:
        abort(404)
    except Forbidden:
        abort(403)
    if request.args.get("v") == now:
        response = make_response("", 204)
        response.vary.add("HX-Request")
        return response
    record = _record(kind, public_id)
    spec = movements.kind_of(kind)
    return render_fragments(
        ("admin/movements_record.html",
         {"spec": spec, "kind": kind, "record": record, **_live(kind, record)}),
    )  # fmt: skip


def _register(kind: str) -> None:
    segment, param = ROUTES[kind]

    def listing() -> Response:
        return _list(kind)

    def show(**values: str) -> Response:
        return _show(kind, values[param])

    def changes(**values: str) -> Response:
        return _changes(kind, values[param])

    bp.add_url_rule(f"/{segment}", kind, listing, methods=["GET"])
    bp.add_url_rule(f"/{segment}/<{param}>", f"{kind}_show", show, methods=["GET"])
    bp.add_url_rule(f"/{segment}/<{param}>/changes", f"{kind}_changes", changes,
                    methods=["GET"])  # fmt: skip


for _kind in ROUTES:
    _register(_kind)


def _link_targets() -> dict[str, tuple[str, str]]:
    """Console segment -> (endpoint, its one parameter) of each ``/admin/<segment>/<id>`` page
    the application has."""
    cached: dict[str, tuple[str, str]] | None = current_app.extensions.get("admin.link_targets")
    if cached is None:
        cached = {}
        for rule in current_app.url_map.iter_rules():
            parts = rule.rule.strip("/").split("/")
            args = list(rule.arguments)
            if (len(parts) == 3 and parts[0] == "admin" and len(args) == 1
                    and parts[2] == f"<{args[0]}>" and "GET" in (rule.methods or ())):  # fmt: skip
                cached.setdefault(parts[1], (rule.endpoint, args[0]))
        current_app.extensions["admin.link_targets"] = cached
    return cached


@bp.app_template_global()
def console_link(link: Link | None) -> str | None:
    """The console page of a linked record, if the console has one."""
    if link is None or not link.public_id:
        return None
    target = _link_targets().get(LINK_SEGMENTS.get(link.kind, ""))
    if target is None:
        return None
    endpoint, param = target
    values: dict[str, Any] = {param: link.public_id}
    return url_for(endpoint, **values)
