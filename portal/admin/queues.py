"""The withdrawal and payout queues: open items oldest first with their age, and confirm / fail.

Support reads the queues; acting needs ``withdrawals:manage`` (withdrawals) or ``money:manage``
(payouts, as ``payouts.confirm_payout`` requires), checked here and again by the services. Each
action form carries a one-time token made when the page is drawn (:mod:`portal.web.once`): the
first submission acts, a second (a double click, a reload that posts again) acts on nothing and
says so. The services refuse an item that is ``processing`` at the processor (it settles with
the processor's answer); the page then says why and nothing changes. Every action is written to
the audit log by the service, in the same transaction.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import abort, flash, make_response, redirect, request, url_for
from flask_wtf import FlaskForm
from werkzeug.wrappers import Response
from wtforms import HiddenField, SelectField, StringField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Length, Optional

from portal.admin import bp
from portal.admin.views import PAGE_SIZE
from portal.domain.errors import Forbidden, InvalidInput, NotFound, PortalError
from portal.domain.money import Money
from portal.services.admin import queues as queue_service
from portal.services.admin.queues import FAILURE_REASONS
from portal.services.merchants import payouts
from portal.services.wallet import wallet
from portal.web import once
from portal.web.auth import current_actor
from portal.web.render import render_fragments, render_page
from portal.web.uow import make_uow

#: Queue -> (permission to act, object label, path parameter).
ACT = {
    "withdrawals": ("withdrawals:manage", "Withdrawal", "withdrawal_id"),
    "payouts": ("money:manage", "Payout", "payout_id"),
}
TITLES = {"withdrawals": "Withdrawal queue", "payouts": "Payout queue"}
#: How often a queue's first page asks whether the queue changed (milliseconds).
POLL_MS = 3000


def _new_token() -> str:
    return uuid.uuid4().hex


class ConfirmForm(FlaskForm):
    """CSRF is checked app-wide (CSRFProtect); the token makes a double submit act once."""

    class Meta:
        csrf = False

    form_token = HiddenField()
    reference = StringField(
        "Bank reference (optional)", validators=[Optional(), Length(max=64)],
        render_kw={"maxlength": 64, "autocomplete": "off"},
    )  # fmt: skip


class FailForm(FlaskForm):
    class Meta:
        csrf = False

    form_token = HiddenField()
    reason = SelectField(
        "Reason",
        choices=[SelectChoice("", "Choose a reason")]
        + [SelectChoice(code, label) for code, label in FAILURE_REASONS.items()],
        validators=[DataRequired(message="Choose why it failed.")],
        validate_choice=False,
    )
    note = StringField(
        "Note (optional)",
        validators=[Optional(), Length(max=255, message="Keep the note to 255 characters.")],
        render_kw={"maxlength": 255, "autocomplete": "off"},
    )


def _page(kind: str, status: int = 200, errors: dict[str, str] | None = None) -> Response:
    actor = current_actor()
    if not actor.can("money:read"):
        abort(403)
    after = request.args.get("starting_after") or None
    notice = None
    # The version first: a change made while the page renders is caught by the next poll.
    seen = queue_service.version(make_uow(), actor=actor, kind=kind)
    try:
        found = queue_service.queue(make_uow(), actor=actor, kind=kind, starting_after=after,
                             limit=PAGE_SIZE)  # fmt: skip
    except InvalidInput:
        found = queue_service.queue(make_uow(), actor=actor, kind=kind, limit=PAGE_SIZE)
        notice = "That page of the queue no longer exists; this is the start of the queue."
        after = None
    items = found.page.items
    permission, label, param = ACT[kind]
    endpoint = "admin.queues" if kind == "withdrawals" else "admin.queues_payouts"
    next_url = (url_for(endpoint, starting_after=items[-1].public_id)
                if found.page.has_more and items else None)  # fmt: skip
    forms = {
        i.public_id: (ConfirmForm(formdata=None, form_token=_new_token()),
                      FailForm(formdata=None, form_token=_new_token()))
        for i in items
    }  # fmt: skip
    return render_page(
        "admin/queue.html", status, kind=kind, title=TITLES[kind], queue=found, items=items,
        forms=forms, errors=errors or {}, can_act=actor.can(permission), permission=permission,
        label=label, param=param, next_url=next_url, continued=bool(after),
        first_url=url_for(endpoint), notice=notice, reasons=FAILURE_REASONS,
        detail=f"admin.{kind}_show", section="queues",
        live=None if after else {"url": url_for(f"{endpoint}_changes", v=seen), "every": POLL_MS},
    )  # fmt: skip


def _changes(kind: str) -> Response:
    """204 while the queue holds the same items in the same states; else a notice that it
    changed (not the rows themselves: a reason being typed into a form is not swept away)."""
    now = queue_service.version(make_uow(), actor=current_actor(), kind=kind)
    if request.args.get("v") == now:
        response = make_response("", 204)
        response.vary.add("HX-Request")
        return response
    endpoint = "admin.queues" if kind == "withdrawals" else "admin.queues_payouts"
    return render_fragments(("admin/queue_changed.html", {"url": url_for(endpoint)}))


def withdrawal_queue() -> Response:
    return _page("withdrawals")


# Endpoint "admin.queues": the console's "Queues" section opens on the withdrawal queue.
bp.add_url_rule("/queues/withdrawals", "queues", withdrawal_queue, methods=["GET"])


@bp.get("/queues/payouts")
def queues_payouts() -> Response:
    return _page("payouts")


@bp.get("/queues/withdrawals/changes")
def queues_changes() -> Response:
    return _changes("withdrawals")


@bp.get("/queues/payouts/changes")
def queues_payouts_changes() -> Response:
    return _changes("payouts")


def _done(kind: str, action: str, result: Any, reason: str | None) -> tuple[str, str]:
    """The flash message and its category for what the service returned."""
    label = ACT[kind][1]
    pid = result.public_id if kind == "withdrawals" else result.id
    status = str(result.status)
    amount = (result.amount if kind == "withdrawals"
              else Money(result.amount, result.currency))  # fmt: skip
    wanted = {"confirm": ("succeeded", "paid"), "fail": ("failed",)}[action]
    if status not in wanted:
        return (f"{label} {pid} was already {status.replace('_', ' ')}; nothing changed.",
                "warning")  # fmt: skip
    if action == "confirm":
        gone = "left the card" if kind == "withdrawals" else "was paid to the bank account"
        return f"{label} {pid} confirmed: {amount} {gone}.", "success"
    back = ("is available on the card again" if kind == "withdrawals"
            else "is back on the merchant's balance")  # fmt: skip
    why = FAILURE_REASONS.get(reason or "", reason or "").lower()
    return f"{label} {pid} failed ({why}): its {amount} {back}.", "success"


def _act(kind: str, action: str, public_id: str) -> Response:
    actor = current_actor()
    permission, label, _param = ACT[kind]
    if not actor.can(permission):
        abort(403)
    form: ConfirmForm | FailForm = ConfirmForm() if action == "confirm" else FailForm()
    token = (form.form_token.data or "").strip()
    if not form.validate() or not token or len(token) > 64:
        problems = [e for errs in form.errors.values() for e in errs]
        if not token:
            problems.append("This form is missing its token; it was filled in again.")
        return _page(kind, 422, errors={public_id: " ".join(problems)})
    back = url_for("admin.queues" if kind == "withdrawals" else "admin.queues_payouts")
    if not once.claim(f"admin_queue:{actor.id}", token):
        flash(f"That form was already sent: {label.lower()} {public_id} was acted on once and"
              " nothing happened twice.", "warning")  # fmt: skip
        return redirect(back, 303)
    code = note = reference = None
    if isinstance(form, FailForm):
        code = form.reason.data
        note = (form.note.data or "").strip() or None
    else:
        reference = (form.reference.data or "").strip() or None
    try:
        if kind == "withdrawals" and action == "confirm":
            result: Any = wallet.confirm_withdrawal(
                make_uow(), actor=actor, withdrawal_id=public_id, payout_reference=reference
            )
        elif kind == "withdrawals":
            result = wallet.fail_withdrawal(
                make_uow(), actor=actor, withdrawal_id=public_id,
                failure_code=code or "payout_failed", note=note,
            )  # fmt: skip
        elif action == "confirm":
            result = payouts.confirm_payout(make_uow(), actor=actor, payout=public_id,
                                            reference=reference)  # fmt: skip
        else:
            result = payouts.fail_payout(
                make_uow(), actor=actor, payout=public_id, failure_code=code or "payout_failed",
                note=note,
            )  # fmt: skip
    except NotFound:
        abort(404)
    except Forbidden:
        abort(403)
    except PortalError as error:
        return _page(kind, 422, errors={public_id: error.message})
    message, category = _done(kind, action, result, code)
    flash(message, category)
    return redirect(back, 303)


def _register() -> None:
    for kind, (_perm, _label, param) in ACT.items():
        segment = "withdrawals" if kind == "withdrawals" else "payouts"
        for action in ("confirm", "fail"):

            def view(_k: str = kind, _a: str = action, _p: str = param, **values: str) -> Response:
                return _act(_k, _a, values[_p])

            bp.add_url_rule(f"/queues/{segment}/<{param}>/{action}",
                            f"queues_{kind}_{action}", view, methods=["POST"])  # fmt: skip


_register()


def _age(at: datetime) -> timedelta:
    return max(datetime.now(UTC) - at, timedelta(0))


@bp.app_template_filter("console_age")
def console_age(at: datetime) -> str:
    """How long an item has waited, in its two largest units ("3 d 4 h", "12 min")."""
    seconds = int(_age(at).total_seconds())
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min" if minutes else "under a minute"


@bp.app_template_filter("console_age_days")
def console_age_days(at: datetime) -> int:
    return _age(at).days
