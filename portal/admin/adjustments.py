"""Console: four-eyes balance adjustments (``portal.services.admin.adjustments``).

The list shows what waits for a second administrator first, then every decided request, newest
first. The request form carries an idempotency key minted when it is drawn (a double submit
makes one request). The detail page shows the approve and reject buttons only to another
administrator (``ledger:adjust``) and the withdraw button only to the requester; the services
refuse anyone else anyway. Support (``money:read``) reads everything and acts on nothing.
"""

from __future__ import annotations

import uuid
from typing import Any

from flask import abort, flash, make_response, redirect, request, url_for
from flask_wtf import FlaskForm
from werkzeug.wrappers import Response
from wtforms import HiddenField, SelectField, StringField, TextAreaField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Length

from portal.admin import bp
from portal.admin.views import PAGE_SIZE, SECTIONS, next_page_url, trail_of
from portal.domain.errors import Forbidden, IdempotencyConflict, InvalidInput, NotFound, PortalError
from portal.domain.ids import is_public_id
from portal.domain.money import CURRENCY_EXPONENTS, Money
from portal.services.admin import adjustments
from portal.services.admin.adjustments import AdjustmentView
from portal.web.auth import current_actor
from portal.web.render import render_page
from portal.web.uow import make_uow

SECTIONS.append(("admin.adjustments", "Adjustments", adjustments.READ_PERMISSION))

#: How often an open pending request's page asks whether it was decided (milliseconds).
POLL_MS = 3000
#: How many pending requests the list shows above the decided ones.
PENDING_SHOWN = 100
STATUS_LABELS = {
    "pending": "Waiting for approval",
    "approved": "Approved and posted",
    "rejected": "Rejected",
    "withdrawn": "Withdrawn",
}
#: Service ``param`` -> the field that shows its refusal.
FIELDS = {"target": "target", "direction": "direction", "amount": "amount",
          "currency": "currency", "reason": "reason", "reference": "reference"}  # fmt: skip


def _key() -> str:
    return uuid.uuid4().hex


class AdjustmentForm(FlaskForm):
    target = StringField(
        "Card or merchant",
        validators=[DataRequired("Enter the card's or the merchant's id.")],
        render_kw={"maxlength": 40, "autocomplete": "off", "spellcheck": "false",
                   "placeholder": "card_… or mch_…"},
    )  # fmt: skip
    direction = SelectField(
        "Credit or debit",
        choices=[
            SelectChoice("credit", "Credit: add money"),
            SelectChoice("debit", "Debit: take money"),
        ],
    )
    amount = StringField(
        "Amount",
        validators=[DataRequired("Enter the amount.")],
        render_kw={"inputmode": "decimal", "autocomplete": "off", "maxlength": 20},
    )
    currency = SelectField(
        "Currency", choices=[SelectChoice(c, c) for c in sorted(CURRENCY_EXPONENTS)]
    )
    reason = TextAreaField(
        "Reason",
        validators=[DataRequired("Say why the balance must change."),
                    Length(max=adjustments.MAX_REASON,
                           message=f"Keep it to {adjustments.MAX_REASON} characters.")],
        render_kw={"maxlength": adjustments.MAX_REASON, "rows": 3},
    )  # fmt: skip
    reference = StringField(
        "Reference",
        validators=[DataRequired("Enter a reference (a ticket, a statement line)."),
                    Length(max=adjustments.MAX_REFERENCE,
                           message=f"Keep it to {adjustments.MAX_REFERENCE} characters.")],
        render_kw={"maxlength": adjustments.MAX_REFERENCE, "autocomplete": "off"},
    )  # fmt: skip
    idempotency_key = HiddenField()


class RejectForm(FlaskForm):
    reason = StringField(
        "Why it is rejected",
        validators=[DataRequired("Say why it is rejected."),
                    Length(max=adjustments.MAX_REASON,
                           message=f"Keep it to {adjustments.MAX_REASON} characters.")],
        render_kw={"maxlength": adjustments.MAX_REASON, "autocomplete": "off"},
    )  # fmt: skip


class DecisionForm(FlaskForm):
    """Approve and withdraw carry nothing but the CSRF token."""


def _sentence(text: str) -> str:
    text = text.strip()
    return (text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")) if text else text


def _show_error(form: FlaskForm, error: PortalError, default: str | None = None) -> None:
    name = FIELDS.get(error.param or "") or default
    field = getattr(form, name, None) if name else None
    if field is not None and not isinstance(field, HiddenField):
        field.errors = [*field.errors, _sentence(error.message)]
    else:
        form.form_errors.append(_sentence(error.message))


@bp.get("/adjustments", endpoint="adjustments")
def adjustments_list() -> Response:
    actor = current_actor()
    status = request.args.get("status") or None
    after = request.args.get("starting_after") or None
    if status is not None and status not in STATUS_LABELS:
        status = None
    if after is not None and not is_public_id("adjustment", after):
        after = None
    uow = make_uow()
    pending: tuple[AdjustmentView, ...] = ()
    more_pending = False
    if status is None and after is None:
        first = adjustments.list_adjustments(
            uow, actor=actor, status="pending", limit=PENDING_SHOWN
        )
        pending, more_pending = first.items, first.has_more
    try:
        page = adjustments.list_adjustments(
            uow, actor=actor, status=status or "decided", limit=PAGE_SIZE, starting_after=after
        )
    except InvalidInput:
        return redirect(url_for(".adjustments", status=status))
    query = {"status": status}
    return render_page(
        "admin/adjustments.html", section="adjustments", pending=pending,
        more_pending=more_pending, items=page.items, status=status,
        status_labels=STATUS_LABELS, continued=after is not None,
        first_url=url_for(".adjustments", status=status),
        next_url=next_page_url(".adjustments", query, page.items, page.has_more),
        may_request=actor.can(adjustments.PERMISSION),
    )  # fmt: skip


def _require_adjust() -> None:
    if not current_actor().can(adjustments.PERMISSION):
        abort(403)


def _new_page(form: AdjustmentForm, status: int = 200) -> Response:
    return render_page("admin/adjustment_new.html", status, section="adjustments", form=form)


@bp.get("/adjustments/new")
def adjustments_new() -> Response:
    _require_adjust()
    form = AdjustmentForm(formdata=None)
    form.idempotency_key.data = _key()
    target = (request.args.get("target") or "").strip()
    if is_public_id("card", target) or is_public_id("merchant", target):
        form.target.data = target
    currency = (request.args.get("currency") or "").strip().upper()
    form.currency.data = currency if currency in CURRENCY_EXPONENTS else "USD"
    return _new_page(form)


@bp.post("/adjustments/new")
def adjustments_create() -> Response:
    _require_adjust()
    form = AdjustmentForm()
    key = (form.idempotency_key.data or "").strip()
    if not form.validate_on_submit() or not key:
        if not key:
            form.form_errors.append("This form is missing its key; it was filled in again.")
        form.idempotency_key.data = key or _key()
        return _new_page(form, 422)
    try:
        amount = adjustments.parse_amount(form.amount.data or "", form.currency.data or "")
        made = adjustments.request_adjustment(
            make_uow(), actor=current_actor(), target=(form.target.data or "").strip(),
            direction=form.direction.data or "", amount=amount, reason=form.reason.data or "",
            reference=form.reference.data or "", idempotency_key=key,
        )  # fmt: skip
    except IdempotencyConflict:
        form.form_errors.append("This form was already sent with other details. Check them"
                                " and send it again.")  # fmt: skip
        form.idempotency_key.data = _key()
        return _new_page(form, 422)
    except PortalError as error:
        if isinstance(error, Forbidden):
            raise
        _show_error(form, error)
        return _new_page(form, 422)
    message = (f"Requested a {made.direction} of {made.amount.format()} to {made.target_label}."
               " It posts once another administrator approves it.")  # fmt: skip
    if made.replayed:
        message = "This request was already made when the form was first sent; nothing twice."
    flash(message, "success")
    return redirect(url_for(".adjustments_detail", adjustment_id=made.public_id))


def _detail(adjustment_id: str, status: int = 200, reject: RejectForm | None = None) -> Response:
    actor = current_actor()
    view = adjustments.get_adjustment(make_uow(), actor=actor, adjustment=adjustment_id)
    may_adjust = actor.can(adjustments.PERMISSION)
    mine = view.requested_by_id == actor.id
    return render_page(
        "admin/adjustment.html", status, section="adjustments", a=view,
        status_labels=STATUS_LABELS, trail=trail_of("adjustment_request", view.id),
        may_decide=view.pending and may_adjust and not mine,
        may_withdraw=view.pending and may_adjust and mine,
        decision=DecisionForm(formdata=None), reject=reject or RejectForm(formdata=None),
        after=Money(view.available_minor + view.signed_minor, view.amount.currency),
        live_url=url_for(".adjustments_changes", adjustment_id=view.public_id, v=view.status)
        if view.pending else None, poll_ms=POLL_MS,
    )  # fmt: skip


@bp.get("/adjustments/<adjustment_id>")
def adjustments_detail(adjustment_id: str) -> Response:
    return _detail(adjustment_id)


@bp.get("/adjustments/<adjustment_id>/changes")
def adjustments_changes(adjustment_id: str) -> Response:
    """The open page's poll: 204 while the request's status is ``v``; once it was decided, an
    ``HX-Refresh`` so the page is drawn anew (its buttons and their tokens with it)."""
    now = adjustments.status_of(make_uow(), actor=current_actor(), adjustment=adjustment_id)
    response = make_response("", 204 if request.args.get("v") == now else 200)
    if response.status_code == 200:
        response.headers["HX-Refresh"] = "true"
    response.vary.add("HX-Request")
    return response


def _decided(adjustment_id: str, message: str, result: Any) -> Response:
    if getattr(result, "replayed", False):
        message = "This was already approved when the form was first sent; it posted once."
    flash(message, "success")
    return redirect(url_for(".adjustments_detail", adjustment_id=adjustment_id))


def _refused(adjustment_id: str, error: PortalError, reject: RejectForm | None = None) -> Response:
    if isinstance(error, NotFound) or (isinstance(error, Forbidden) and error.code == "forbidden"):
        raise error  # a 404 or a 403 page: the four-eyes refusal is explained on the page
    if reject is not None and error.param == "reason":
        reject.reason.errors = [*reject.reason.errors, _sentence(error.message)]
        return _detail(adjustment_id, 422, reject)
    flash(_sentence(error.message), "error")
    return redirect(url_for(".adjustments_detail", adjustment_id=adjustment_id))


@bp.post("/adjustments/<adjustment_id>/approve")
def adjustments_approve(adjustment_id: str) -> Response:
    try:
        done = adjustments.approve_adjustment(
            make_uow(), actor=current_actor(), adjustment=adjustment_id
        )
    except PortalError as error:
        return _refused(adjustment_id, error)
    return _decided(
        adjustment_id,
        f"Approved: {Money(done.signed_minor, done.amount.currency).format()} posted to"
        f" {done.target_label}.",
        done,
    )


@bp.post("/adjustments/<adjustment_id>/reject")
def adjustments_reject(adjustment_id: str) -> Response:
    _require_adjust()  # before the form is read: support is refused, not told what to fill in
    form = RejectForm()
    if not form.validate_on_submit():
        adjustments.get_adjustment(make_uow(), actor=current_actor(), adjustment=adjustment_id)
        return _detail(adjustment_id, 422, form)
    try:
        done = adjustments.reject_adjustment(
            make_uow(), actor=current_actor(), adjustment=adjustment_id,
            reason=form.reason.data or "",
        )  # fmt: skip
    except PortalError as error:
        return _refused(adjustment_id, error, form)
    return _decided(adjustment_id, "Rejected: nothing was posted.", done)


@bp.post("/adjustments/<adjustment_id>/withdraw")
def adjustments_withdraw(adjustment_id: str) -> Response:
    try:
        done = adjustments.withdraw_adjustment(
            make_uow(), actor=current_actor(), adjustment=adjustment_id
        )
    except PortalError as error:
        return _refused(adjustment_id, error)
    return _decided(adjustment_id, "Withdrawn: nothing was posted.", done)
