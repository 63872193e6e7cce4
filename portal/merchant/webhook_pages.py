"""The merchant dashboard's webhook pages (``/merchant/<mid>/webhooks...``): the endpoints
with their state and last delivery, adding one, and an endpoint's page with its delivery log and
buttons (resend a delivery, send a test event, replay what failed since a time, rotate the
secret, disable or enable, delete).

Who may: the members who manage webhooks (owners and developers, as
``webhooks._manage`` says); viewers and staff get 403 on every page and post, and the tab is not
shown to them. The signing secret is shown once: the page that answers the POST that made it
(adding an endpoint, rotating its secret) carries it, never a redirect or the session, and no
merchant page is cached (``Cache-Control: no-store``). Those two forms carry a one-time form
token (:mod:`portal.web.once`), so a double submit makes one endpoint or one rotation; the other
buttons are plain CSRF-checked posts answered with a redirect (Post/Redirect/Get).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import abort, flash, redirect, request, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from werkzeug.wrappers import Response

from portal.domain.errors import Forbidden, NotFound, PortalError
from portal.merchant import bp
from portal.merchant.forms import (
    WEBHOOK_OVERLAPS,
    NewEndpointForm,
    ReplayForm,
    RotateSecretForm,
    add_service_error,
    new_key,
)
from portal.merchant.views import _layout, _membership, _sentence, _uow
from portal.services.merchants import webhooks
from portal.services.merchants.merchants import Membership
from portal.services.merchants.webhooks import WebhookEndpointView
from portal.web import once
from portal.web.auth import current_actor, login_required
from portal.web.render import render_page as _render

#: How many of an endpoint's newest deliveries its page shows.
LOG_SIZE = 50
#: Roles that manage webhooks (the service checks again).
MANAGERS = ("owner", "developer")
SENT_TWICE = (
    "This form was sent twice; only the first submission counted. Its page showed the "
    "signing secret: if you did not copy it, rotate the secret below."
)


def _manager(mid: str) -> Membership:
    membership = _membership(mid)
    if membership.role not in MANAGERS:
        raise Forbidden(
            f"your role in {membership.merchant.name} does not allow managing webhooks",
            code="permission_denied",
        )
    return membership


def _claimed(form: NewEndpointForm | RotateSecretForm, kind: str) -> bool:
    token = (form.form_token.data or "").strip()
    return bool(token) and len(token) <= 64 and once.claim(f"{kind}:{current_user.id}", token)


def state_of(e: WebhookEndpointView) -> tuple[str, str]:
    """(label, badge modifier) of an endpoint as its merchant reads it."""
    if e.status == "enabled":
        return "Enabled", "success"
    if e.disabled_reason == "gone":
        return "Turned off by Portal: answered 410 Gone", "danger"
    if e.disabled_reason == "failing":
        return "Turned off by Portal: failing for 5 days", "danger"
    return "Disabled", "neutral"


@bp.app_template_global("webhook_state")
def _webhook_state(e: WebhookEndpointView) -> tuple[str, str]:
    return state_of(e)


DELIVERY_BADGES = {"delivered": "success", "pending": "warning", "failed": "danger"}


def _ctx(membership: Membership) -> dict[str, Any]:
    return {**_layout(membership, "webhooks"), "delivery_badges": DELIVERY_BADGES,
            "overlaps": WEBHOOK_OVERLAPS}  # fmt: skip


# -- the list and adding an endpoint -------------------------------------------------------------
def _list_page(
    membership: Membership, status: int = 200, *, new_form: NewEndpointForm | None = None
) -> Response:
    mid = membership.merchant.public_id
    page = webhooks.list_endpoints(_uow(), actor=current_actor(), merchant=mid,
                                   limit=webhooks.MAX_ENDPOINTS)  # fmt: skip
    if new_form is None:
        new_form = NewEndpointForm(formdata=None)
        new_form.ensure_token()
    return _render(
        "merchant/webhooks.html", status, **_ctx(membership), items=page.items,
        new_form=new_form, full=len(page.items) >= webhooks.MAX_ENDPOINTS,
    )  # fmt: skip


@bp.get("/<mid>/webhooks")
@login_required()
def webhook_list(mid: str) -> Response:
    return _list_page(_manager(mid))


@bp.post("/<mid>/webhooks")
@login_required()
def create_webhook(mid: str) -> Response:
    membership = _manager(mid)
    form = NewEndpointForm()
    if form.validate_on_submit() and not form.events.data:
        form.events.errors = [*form.events.errors, "Choose at least one event, or all events."]
    if form.errors or form.form_errors or not form.url.data:
        form.form_token.data = new_key()
        return _list_page(membership, 422, new_form=form)
    if not _claimed(form, "webhook_endpoint"):
        flash(SENT_TWICE, "info")
        return redirect(url_for(".webhook_list", mid=mid))
    try:
        created = webhooks.create_endpoint(
            _uow(), actor=current_actor(), merchant=mid, url=form.url.data or "",
            enabled_events=list(form.events.data or []),
            description=form.description.data or "",
        )  # fmt: skip
    except (NotFound, Forbidden):
        raise
    except PortalError as error:
        add_service_error(form, error, default="url", aliases={"enabled_events": "events"})
        form.form_token.data = new_key()
        return _list_page(membership, 422, new_form=form)
    # The one answer that shows the secret: no redirect (it must not sit in a session).
    return _endpoint_page(membership, created.id, 201, shown=created)


# -- an endpoint and its delivery log ------------------------------------------------------------
def _endpoint_page(
    membership: Membership,
    endpoint_id: str,
    status: int = 200,
    *,
    shown: WebhookEndpointView | None = None,
    rotated: bool = False,
    replay_form: ReplayForm | None = None,
    rotate_errors: Sequence[str] = (),
) -> Response:
    mid = membership.merchant.public_id
    endpoint = webhooks.get_endpoint(_uow(), actor=current_actor(), merchant=mid,
                                     endpoint=endpoint_id)  # fmt: skip
    log = webhooks.list_deliveries(_uow(), actor=current_actor(), merchant=mid,
                                   endpoint=endpoint_id, limit=LOG_SIZE)  # fmt: skip
    rotate_form = RotateSecretForm(formdata=None)
    rotate_form.ensure_token()
    if replay_form is None:
        replay_form = ReplayForm(formdata=None)
        day_ago = _uow().clock() - timedelta(days=1)
        replay_form.since.data = day_ago.strftime("%Y-%m-%dT%H:%M")
    return _render(
        "merchant/webhooks_endpoint.html", status, **_ctx(membership), e=endpoint, log=log,
        shown=shown, rotated=rotated, rotate_form=rotate_form, replay_form=replay_form,
        rotate_errors=rotate_errors, now=_uow().clock(),
    )  # fmt: skip


@bp.get("/<mid>/webhooks/<endpoint_id>")
@login_required()
def webhook(mid: str, endpoint_id: str) -> Response:
    return _endpoint_page(_manager(mid), endpoint_id)


def _checked(mid: str) -> Membership:
    """The manager posting a plain button form with its CSRF token (else 400)."""
    membership = _manager(mid)
    if not FlaskForm().validate_on_submit():
        abort(400)
    return membership


def _back(mid: str, endpoint_id: str) -> Response:
    return redirect(url_for(".webhook", mid=mid, endpoint_id=endpoint_id) + "#deliveries")


def _refused(error: PortalError, mid: str, endpoint_id: str) -> Response:
    if isinstance(error, (NotFound, Forbidden)):
        raise error
    flash(_sentence(error.message), "error")
    return redirect(url_for(".webhook", mid=mid, endpoint_id=endpoint_id))


@bp.post("/<mid>/webhooks/<endpoint_id>/test")
@login_required()
def webhook_test(mid: str, endpoint_id: str) -> Response:
    _checked(mid)
    try:
        sent = webhooks.send_test_event(_uow(), actor=current_actor(), merchant=mid,
                                        endpoint=endpoint_id)  # fmt: skip
    except PortalError as error:
        return _refused(error, mid, endpoint_id)
    flash(f"A test event ({sent.event_type}, {sent.event}) is on its way; its delivery is at "
          "the top of the log.", "success")  # fmt: skip
    return _back(mid, endpoint_id)


@bp.post("/<mid>/webhooks/<endpoint_id>/deliveries/<delivery_id>/resend")
@login_required()
def webhook_resend(mid: str, endpoint_id: str, delivery_id: str) -> Response:
    _checked(mid)
    try:
        again = webhooks.resend_delivery(_uow(), actor=current_actor(), merchant=mid,
                                         endpoint=endpoint_id, delivery=delivery_id)  # fmt: skip
    except PortalError as error:
        return _refused(error, mid, endpoint_id)
    flash(f"The delivery of {again.event} is being sent again, with the same event id.",
          "success")  # fmt: skip
    return _back(mid, endpoint_id)


def _parse_since(value: str) -> datetime | None:
    for shape in ("%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"):
        try:
            return datetime.strptime(value.strip(), shape).replace(tzinfo=UTC)
        except ValueError:
            continue
    return None


@bp.post("/<mid>/webhooks/<endpoint_id>/replay")
@login_required()
def webhook_replay(mid: str, endpoint_id: str) -> Response:
    membership = _manager(mid)
    form = ReplayForm()
    since = _parse_since(form.since.data or "") if form.validate_on_submit() else None
    if since is None:
        if not form.since.errors:
            form.since.errors = [*form.since.errors, "Enter a date and time, e.g. "
                                 "2026-12-01T09:00."]  # fmt: skip
        return _endpoint_page(membership, endpoint_id, 422, replay_form=form)
    try:
        queued = webhooks.replay_failed(_uow(), actor=current_actor(), merchant=mid,
                                        endpoint=endpoint_id, since=since)  # fmt: skip
    except (NotFound, Forbidden):
        raise
    except PortalError as error:
        form.since.errors = [*form.since.errors, _sentence(error.message)]
        return _endpoint_page(membership, endpoint_id, 422, replay_form=form)
    when = since.strftime("%d %b %Y, %H:%M")
    flash(f"{queued} failed deliver{'y' if queued == 1 else 'ies'} since {when} UTC "
          f"{'is' if queued == 1 else 'are'} being sent again.", "success")  # fmt: skip
    return _back(mid, endpoint_id)


@bp.post("/<mid>/webhooks/<endpoint_id>/rotate")
@login_required()
def webhook_rotate(mid: str, endpoint_id: str) -> Response:
    membership = _manager(mid)
    form = RotateSecretForm()
    overlap = form.overlap.data if form.validate_on_submit() else None
    if overlap is None or not str(overlap).isdigit() or int(overlap) not in WEBHOOK_OVERLAPS:
        needed = ["Choose how long the old secret keeps signing."]
        return _endpoint_page(membership, endpoint_id, 422, rotate_errors=needed)
    if not _claimed(form, "webhook_rotate"):
        flash(SENT_TWICE, "info")
        return redirect(url_for(".webhook", mid=mid, endpoint_id=endpoint_id))
    try:
        rotated = webhooks.rotate_secret(
            _uow(), actor=current_actor(), merchant=mid, endpoint=endpoint_id,
            overlap_hours=int(overlap),
        )  # fmt: skip
    except (NotFound, Forbidden):
        raise
    except PortalError as error:
        return _endpoint_page(membership, endpoint_id, 422,
                              rotate_errors=[_sentence(error.message)])  # fmt: skip
    return _endpoint_page(membership, endpoint_id, 201, shown=rotated, rotated=True)


STATUS_DONE: Mapping[str, str] = {
    "enabled": "is enabled: new events are sent to it again. Replay what it missed below.",
    "disabled": "is disabled: nothing is sent to it until you enable it.",
}


@bp.post("/<mid>/webhooks/<endpoint_id>/status")
@login_required()
def webhook_status(mid: str, endpoint_id: str) -> Response:
    _checked(mid)
    wanted = request.form.get("status", "")
    if wanted not in STATUS_DONE:
        abort(400)
    try:
        changed = webhooks.update_endpoint(_uow(), actor=current_actor(), merchant=mid,
                                           endpoint=endpoint_id, status=wanted)  # fmt: skip
    except PortalError as error:
        return _refused(error, mid, endpoint_id)
    flash(f"The endpoint {changed.url} {STATUS_DONE[wanted]}", "success")
    return redirect(url_for(".webhook", mid=mid, endpoint_id=endpoint_id))


@bp.post("/<mid>/webhooks/<endpoint_id>/delete")
@login_required()
def webhook_delete(mid: str, endpoint_id: str) -> Response:
    _checked(mid)
    deleted = webhooks.delete_endpoint(_uow(), actor=current_actor(), merchant=mid,
                                       endpoint=endpoint_id)  # fmt: skip
    flash(f"The endpoint {deleted.url} is deleted, with its delivery log; nothing more is sent "
          "to it.", "success")  # fmt: skip
    return redirect(url_for(".webhook_list", mid=mid))
