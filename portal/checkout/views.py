"""Routes of the hosted checkout page (``/checkout/<cs_id>``).

Anyone holding the URL sees the merchant, the amount and the description. A payer who is not
signed in goes through the usual sign-in (and second factor when enrolled) and comes back here;
signed in, they pick one of their own active cards in the session's currency and press Pay
(a plain form post with its CSRF token and an idempotency key minted when the page was
rendered). Paid: a 303 to the merchant's success URL with ``session_id`` added; declined: this
page again with the reason, still payable; Cancel: a 303 to the cancel URL. Both URLs come from
the session as the merchant created it, never from the request.

The site's Content-Security-Policy allows forms to post only to Portal (``form-action
'self'``), and browsers apply that to the redirect after a post too, so this page's policy adds
the success URL's origin, and nothing else, to ``form-action``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from flask import make_response, redirect, render_template, request, url_for
from flask_login import current_user
from flask_wtf.csrf import CSRFError
from werkzeug.wrappers import Response

from portal.checkout import bp
from portal.checkout.forms import PayForm
from portal.domain.cards import brand_name
from portal.domain.errors import CardDeclined, NotFound, PortalError, UnexpectedState
from portal.services.merchants import checkout
from portal.services.wallet import activity
from portal.services.wallet.activity import CardSummary
from portal.web.auth import current_actor, safe_next
from portal.web.errors import http_status
from portal.web.requests import CSP
from portal.web.uow import make_uow

#: A CSP source the success origin may become: scheme, host (or bracketed IPv6) and port only.
_SOURCE = re.compile(r"^https?://(?:[a-z0-9.-]+|\[[0-9a-f:.]+\])(?::\d{1,5})?$")


def _policy(view: checkout.PublicCheckout) -> str:
    origin = view.success_origin
    extra = f" {origin}" if _SOURCE.match(origin) else ""
    return CSP.replace("form-action 'self'", f"form-action 'self'{extra}")


def _here(session_id: str) -> str:
    # Built from the route, never from the request; safe_next is the same check sign-in applies.
    return safe_next(url_for(".page", session_id=session_id)) or "/"


def _needs_second_factor() -> bool:
    """Signed in without the second factor this session, though one is enrolled (it was
    enrolled after signing in): pay only after confirming it."""
    return bool(current_user.user.mfa_enabled and not current_user.mfa_verified)


def _payable_cards(view: checkout.PublicCheckout) -> list[CardSummary]:
    """The payer's cards that can pay this session: active, unexpired, in its currency."""
    actor = current_actor()
    if not actor.can("wallet:use"):
        return []
    now = datetime.now(UTC)
    return [
        card
        for card in activity.list_cards(make_uow(), actor=actor)
        if card.currency == view.amount.currency
        and card.status == "active"
        and not card.archived
        and (card.expiry_year, card.expiry_month) >= (now.year, now.month)
    ]


def _card_label(card: CardSummary) -> str:
    name = f" · {card.name}" if card.name else ""
    return f"{brand_name(card.brand)} •••• {card.last4}{name}"


def _page(
    view: checkout.PublicCheckout,
    status: int = 200,
    /,
    *,
    form: PayForm | None = None,
    cards: list[CardSummary] | None = None,
    problem: str | None = None,
) -> Response:
    signed_in = bool(current_user.is_authenticated)
    step_up = signed_in and view.status == "open" and _needs_second_factor()
    if signed_in and view.status == "open" and not step_up and cards is None:
        cards = _payable_cards(view)
    form = form or PayForm(formdata=None)
    form.card.choices = [(c.public_id, _card_label(c)) for c in cards or []]
    if cards and not form.card.data:
        # Preselect the first card that can cover the amount (else the first).
        enough = [c for c in cards if c.available.amount_minor >= view.amount.amount_minor]
        form.card.data = (enough or cards)[0].public_id
    form.fresh_key()
    context: dict[str, Any] = {
        "view": view,
        "form": form,
        "cards": {c.public_id: c for c in cards or []},
        "signed_in": signed_in,
        "step_up": step_up,
        "problem": problem,
        "here": _here(view.id),
    }
    response = make_response(render_template("checkout/page.html", **context), status)
    response.headers["Content-Security-Policy"] = _policy(view)
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/<session_id>")
def page(session_id: str) -> Response:
    return _page(checkout.get_public_checkout(make_uow(), session=session_id))


@bp.post("/<session_id>")
def pay(session_id: str) -> Response:
    view = checkout.get_public_checkout(make_uow(), session=session_id)
    if not current_user.is_authenticated:
        return redirect(url_for("auth.login", next=_here(view.id)), 303)
    if _needs_second_factor():
        return redirect(url_for("auth.mfa", next=_here(view.id)), 303)
    form = PayForm()
    if not form.validate_on_submit():
        return _page(view, 422 if view.status == "open" else 400, form=form)
    # Even a session that reads complete goes to the service: the same form posted twice
    # (same key) is answered with its first payment; any other is refused there.
    try:
        paid = checkout.pay_checkout_session(
            make_uow(), actor=current_actor(), session=view.id, card=form.card.data or "",
            idempotency_key=form.idempotency_key.data or "",
        )  # fmt: skip
    except CardDeclined as exc:
        return _page(view, 402, form=form, problem=exc.message)
    except UnexpectedState:
        # Paid in another tab, or expired, meanwhile: the page now says which.
        fresh = checkout.get_public_checkout(make_uow(), session=view.id)
        return _page(fresh, 400, form=form, cards=[])
    except NotFound as exc:
        if exc.param != "card":
            raise
        form.card.errors = [*form.card.errors, "Choose one of your own cards."]
        return _page(view, 422, form=form)
    except PortalError as exc:
        return _page(view, http_status(exc), form=form, problem=exc.message)
    return redirect(paid.return_url, 303)


@bp.get("/<session_id>/cancel")
def cancel(session_id: str) -> Response:
    """Back to the merchant's cancel URL; the session stays as it is."""
    return redirect(checkout.cancel_url_of(make_uow(), session=session_id), 303)


@bp.errorhandler(CSRFError)
def _form_expired(_error: CSRFError) -> Response:
    """A pay form left open past its token (or posted from elsewhere): nothing was paid; the
    page again with a fresh form."""
    session_id = (request.view_args or {}).get("session_id", "")
    try:
        view = checkout.get_public_checkout(make_uow(), session=session_id)
    except NotFound as exc:
        page = render_template("errors/error.html", status=404, title="Not Found",
                               message=exc.message)  # fmt: skip
        return make_response(page, 404)
    return _page(view, 400, problem="This form had expired, so nothing was paid. Please try again.")
