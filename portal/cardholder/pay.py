"""Pay people, not card numbers (issue 13): the pages to pay a person by email address or
@handle (or a saved payee) with a confirmation showing their masked name and email, the receipt
with a star for the payee, "How people pay you" (one's handle and receiving card per currency),
and revealing one's own card's number and security code after re-entering the password or a
second-factor code.

Plain form posts (Post/Redirect/Get after the payment), so every step works without
JavaScript. A look-up is counted in the same per-user and per-address buckets as the API's
(``payees.LOOKUPS_PER_*``, scopes ``person-lookup``), and only when the page looks someone up.
The confirmation carries the look-up's recipient reference (``rcp_...``), never the address
typed, and the transfer is the usual ``wallet.transfer`` to that reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flask import abort, flash, g, redirect, request, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from werkzeug.wrappers import Response
from wtforms import HiddenField, PasswordField, SelectField, StringField
from wtforms.validators import DataRequired, InputRequired, Length, Optional

from portal.cardholder import bp
from portal.cardholder.forms import MoneyForm, add_service_error, new_key, options
from portal.cardholder.views import _check_amount, _check_card, _chosen, card_label
from portal.domain.errors import (
    IdempotencyConflict,
    InvalidInput,
    InvalidState,
    NotFound,
    OutcomeUnknown,
    PortalError,
)
from portal.domain.ids import is_public_id
from portal.extensions import limiter
from portal.services.identity import handles
from portal.services.identity.accounts import load_user_view
from portal.services.wallet import activity, payees, reveal, wallet
from portal.services.wallet.activity import CardSummary
from portal.services.wallet.payees import PersonRecipient
from portal.web.auth import current_actor, login_required
from portal.web.render import render_page
from portal.web.uow import make_uow


# -- forms ---------------------------------------------------------------------------------------
class PayPersonForm(MoneyForm):
    card_id = SelectField(
        "From", validate_choice=False, validators=[InputRequired("Choose a card.")]
    )
    to = StringField(
        "Email address or @handle",
        validators=[Length(max=payees.MAX_TO, message="That is too long for an address.")],
        render_kw={"autocomplete": "off", "spellcheck": "false", "autocapitalize": "none",
                   "maxlength": payees.MAX_TO, "placeholder": "budi@example.com or @budi"},
    )  # fmt: skip
    #: A saved payee (``pye_...``), chosen from the list instead of typing.
    payee = HiddenField()
    #: The look-up's recipient reference, from the confirmation to the payment.
    recipient = HiddenField()
    amount = StringField(
        "Amount",
        validators=[DataRequired("Enter an amount.")],
        render_kw={"inputmode": "decimal", "autocomplete": "off", "maxlength": 20,
                   "placeholder": "0.00", "class_": "input input--amount"},
    )  # fmt: skip
    memo = StringField(
        "Note for them (optional)",
        validators=[Optional(), Length(max=140, message="Keep the note to 140 characters.")],
        render_kw={"maxlength": 140, "autocomplete": "off"},
    )

    def validate(self, extra_validators: object = None) -> bool:
        ok = super().validate(extra_validators)
        if not (self.to.data or "").strip() and not self.payee.data and not self.recipient.data:
            self.to.errors = [*self.to.errors, "Enter their email address or @handle."]
            ok = False
        return ok


class HandleForm(FlaskForm):
    handle = StringField(
        "Your @handle",
        validators=[Length(max=64, message="A handle is at most 30 characters.")],
        render_kw={"autocomplete": "off", "spellcheck": "false", "autocapitalize": "none",
                   "maxlength": 31, "placeholder": "e.g. budi_s"},
    )  # fmt: skip


class RevealForm(FlaskForm):
    password = PasswordField("Your password", render_kw={"autocomplete": "current-password"})
    code = StringField(
        "Or a code from your authenticator app",
        render_kw={"autocomplete": "one-time-code", "inputmode": "numeric", "maxlength": 32,
                   "spellcheck": "false"},
    )  # fmt: skip


# -- helpers -------------------------------------------------------------------------------------
def _uow() -> Any:
    return make_uow()


def _user_key() -> str:
    """The per-user bucket the API counts in too (``portal.api.cards.caller_key``'s form)."""
    return f"user:{current_user.id if current_user.is_authenticated else '-'}"


def _address_key() -> str:
    return f"person-lookup-address:{request.remote_addr or 'unknown'}"


def _looked_up(response: Response) -> bool:
    return bool(g.get("person_lookup"))


def _usable(my_cards: Sequence[CardSummary]) -> list[CardSummary]:
    return [c for c in my_cards if c.status == "active"]


def _show_form(form: PayPersonForm, my_cards: Sequence[CardSummary], status: int,
               **extra: Any) -> Response:  # fmt: skip
    starred_and_recent = payees.list_payees(_uow(), actor=current_actor())
    chosen_payee = next((p for p in starred_and_recent if p.public_id == form.payee.data), None)
    return render_page("cardholder/pay/pay.html", status, form=form, cards=my_cards,
                       payees=starred_and_recent, chosen_payee=chosen_payee,
                       **extra)  # fmt: skip


def _look_up(form: PayPersonForm, card: CardSummary) -> PersonRecipient | None:
    """The person the form names, for the card's currency: a saved payee, or the address or
    handle typed (both counted as look-ups)."""
    g.person_lookup = True
    actor = current_actor()
    try:
        if form.payee.data and not (form.to.data or "").strip():
            return payees.recipient_for_payee(
                _uow(), actor=actor, payee_id=form.payee.data, currency=card.currency
            )
        return payees.find_person(
            _uow(), actor=actor, to=form.to.data or "", currency=card.currency
        )
    except (NotFound, InvalidInput) as error:
        if error.param == "payee" and error.code == "not_found":
            form.payee.data = ""
            form.to.errors = [*form.to.errors, "Choose one of your payees, or enter an address."]
        elif error.param in ("to", "payee"):  # shown where the person is named, either way
            form.to.errors = [*form.to.errors, error.message[:1].upper() + error.message[1:]]
        else:
            add_service_error(form, error, default="to")
        return None


def _details(card: CardSummary, person: PersonRecipient, memo: str) -> list[tuple[str, str]]:
    # Who it is (name, handle, email) heads the confirmation; the details say the rest.
    details = [("From", card_label(card, balance=False))]
    if memo:
        details.append(("Note", memo))
    return details


# -- pay a person --------------------------------------------------------------------------------
@bp.route("/pay", methods=["GET", "POST"])
@login_required("wallet:use")
@limiter.shared_limit(payees.LOOKUPS_PER_USER, "person-lookup", key_func=_user_key,
                      methods=["POST"], deduct_when=_looked_up)  # fmt: skip
@limiter.shared_limit(payees.LOOKUPS_PER_ADDRESS, "person-lookup-ip", key_func=_address_key,
                      methods=["POST"], deduct_when=_looked_up)  # fmt: skip
def pay() -> Response:
    """Form -> confirmation (their masked name and email) -> payment -> receipt."""
    my_cards = activity.list_cards(_uow(), actor=current_actor())
    usable = _usable(my_cards)
    form = PayPersonForm()
    form.card_id.choices = options((c.public_id, card_label(c)) for c in usable)
    form.ensure_key()
    if not usable:
        return render_page("cardholder/pay/pay.html", 200, form=None, cards=my_cards,
                           payees=(), chosen_payee=None)  # fmt: skip
    if request.method == "GET":
        form.step.data = "review"
        wanted = request.args.get("card")
        form.card_id.data = wanted if _chosen(usable, wanted) else usable[0].public_id
        payee = request.args.get("payee", "")
        form.payee.data = payee if is_public_id("payee", payee) else ""
        return _show_form(form, my_cards, 200)
    step = form.step.data or "review"
    form.step.data = "review"
    if step == "edit":
        form.validate()
        for field in form:
            field.errors = []
        form.recipient.data = ""
        return _show_form(form, my_cards, 200)
    if not form.validate():
        return _show_form(form, my_cards, 422)
    card = _chosen(usable, form.card_id.data)
    if not _check_card(form, card):
        return _show_form(form, my_cards, 422)
    assert card is not None
    amount = _check_amount(form, card, "transfer", spend=True)
    if amount is None:
        return _show_form(form, my_cards, 422)
    if step != "confirm" or not form.recipient.data:
        person = _look_up(form, card)
        if person is None:
            return _show_form(form, my_cards, 422)
        form.recipient.data = person.reference
        return render_page("cardholder/pay/pay.html", 200, form=form, cards=my_cards,
                           review={"amount": amount, "person": person, "card": card,
                                   "details": _details(card, person, form.memo.data or "")},
                           payees=(), chosen_payee=None)  # fmt: skip
    try:
        person = payees.person_by_reference(
            _uow(), actor=current_actor(), reference=form.recipient.data
        )
    except NotFound:
        form.recipient.data = ""
        form.form_errors.append("This check has expired. Review the payment again.")
        return _show_form(form, my_cards, 422)
    if person.currency != card.currency:
        form.recipient.data = ""
        form.card_id.errors = [*form.card_id.errors, f"They are paid in {person.currency} on this"
                               f" check; your card holds {card.currency}."]  # fmt: skip
        return _show_form(form, my_cards, 422)
    try:
        result = wallet.transfer(
            _uow(), actor=current_actor(), from_card_id=card.public_id,
            to_card_id=person.reference, amount=amount, idempotency_key=form.idempotency_key.data,
            memo=form.memo.data or "",
        )  # fmt: skip
    except OutcomeUnknown:
        raise  # the form keeps its key: sending it again cannot move money twice
    except IdempotencyConflict:
        form.form_errors.append("This form was already used for a different payment. Check the"
                                " details and send it again.")  # fmt: skip
        form.idempotency_key.data = new_key()
        return _show_form(form, my_cards, 422)
    except PortalError as error:
        add_service_error(form, error, default="amount")
        form.idempotency_key.data = new_key()
        form.recipient.data = ""
        return _show_form(form, my_cards, 422)
    if result.replayed:
        flash("This payment was already made when you first pressed the button; nothing"
              " happened twice.", "info")  # fmt: skip
    return redirect(url_for(".paid", transfer_id=result.public_id))


@bp.get("/pay/sent/<transfer_id>")
@login_required("wallet:use")
def paid(transfer_id: str) -> Response:
    """The receipt of a payment to a person, with a star to save them as a payee."""
    if not is_public_id("transfer", transfer_id):
        abort(404)
    actor = current_actor()
    item = activity.get_activity_item(_uow(), actor=actor, item_id=transfer_id)
    if item.direction != "out":
        abort(404)
    try:
        payee = payees.payee_for_transfer(_uow(), actor=actor, transfer_id=transfer_id)
    except NotFound:
        abort(404)  # one's own card: that is a transfer's receipt, not a payment to a person
    return render_page("cardholder/pay/sent.html", 200, item=item, payee=payee)


def _star(payee_id: str, starred: bool) -> Response:
    try:
        changed = payees.set_starred(_uow(), actor=current_actor(), payee_id=payee_id,
                                     starred=starred)  # fmt: skip
    except NotFound:
        abort(404)
    flash(f"{changed.holder} {'starred' if starred else 'unstarred'}.", "success")
    back = request.form.get("back", "")
    if is_public_id("transfer", back):
        return redirect(url_for(".paid", transfer_id=back))
    return redirect(url_for(".pay"))


@bp.post("/payees/<payee_id>/star")
@login_required("wallet:use")
def star_payee(payee_id: str) -> Response:
    return _star(payee_id, True)


@bp.post("/payees/<payee_id>/unstar")
@login_required("wallet:use")
def unstar_payee(payee_id: str) -> Response:
    return _star(payee_id, False)


# -- how people pay you --------------------------------------------------------------------------
@bp.route("/receiving", methods=["GET", "POST"])
@login_required("wallet:use")
@limiter.shared_limit(handles.CHANGES_PER_USER, "handle-change", key_func=_user_key,
                      methods=["POST"],
                      deduct_when=lambda response: bool(g.get("handle_change")))  # fmt: skip
def receiving() -> Response:
    """One's @handle and, per currency, the card money paid to one arrives on."""
    actor = current_actor()
    form = HandleForm()
    status = 200
    if request.method == "POST" and request.form.get("action") == "handle":
        g.handle_change = True
        if form.validate():
            try:
                saved = handles.set_handle(_uow(), actor=actor, handle=form.handle.data or "")
            except InvalidInput as error:
                add_service_error(form, error, default="handle")
                status = 422
            else:
                flash(f"Your handle is now @{saved}." if saved else "Your handle is removed.",
                      "success")  # fmt: skip
                return redirect(url_for(".receiving"))
        else:
            status = 422
    elif request.method == "POST" and request.form.get("action") == "card":
        card_id = request.form.get("card_id", "")
        try:
            chosen = payees.set_receiving_card(_uow(), actor=actor, card_id=card_id)
        except NotFound:
            abort(404)
        except InvalidState as error:
            flash(error.message[:1].upper() + error.message[1:] + ".", "danger")
            return redirect(url_for(".receiving"))
        flash(f"Money paid to you in {chosen.currency} now arrives on that card.", "success")
        return redirect(url_for(".receiving"))
    elif request.method == "POST":
        abort(400)
    if request.method == "GET" or not form.handle.data:
        form.handle.data = form.handle.data or handles.get_handle(_uow(), actor=actor) or ""
    my_cards = [c for c in activity.list_cards(_uow(), actor=actor) if c.status == "active"]
    choices = {r.currency: r for r in payees.receiving_cards(_uow(), actor=actor)}
    by_currency = {cur: [c for c in my_cards if c.currency == cur] for cur in sorted(choices)}
    return render_page("cardholder/pay/receiving.html", status, form=form, choices=choices,
                       by_currency=by_currency, card_label=card_label)  # fmt: skip


# -- reveal one's own card -----------------------------------------------------------------------
@bp.route("/cards/<card_id>/reveal", methods=["GET", "POST"])
@login_required("wallet:use")
@limiter.shared_limit(reveal.REVEALS_PER_USER, "card-reveal", key_func=_user_key,
                      methods=["POST"])  # fmt: skip
def reveal_card(card_id: str) -> Response:
    """Re-enter the password (or a second-factor code) to see the card's full number and
    security code; every attempt is audited and counted."""
    if not is_public_id("card", card_id):
        abort(404)
    actor = current_actor()
    try:
        card = activity.get_card(_uow(), actor=actor, card_id=card_id)
    except NotFound:
        abort(404)
    if card.user_id != actor.id:
        abort(404)  # staff may see a card, never its number
    view = _uow().run(lambda u: load_user_view(u, actor.id or 0))
    has_mfa = bool(view is not None and view.mfa_enabled)
    form = RevealForm()
    if request.method == "GET":
        return render_page("cardholder/pay/reveal.html", 200, form=form, card=card,
                           has_mfa=has_mfa, shown=None)  # fmt: skip
    if not form.validate():
        return render_page("cardholder/pay/reveal.html", 422, form=form, card=card,
                           has_mfa=has_mfa, shown=None)  # fmt: skip
    try:
        shown = reveal.reveal_card(
            _uow(), actor=actor, card_id=card.public_id, password=form.password.data or None,
            code=(form.code.data or "").strip() or None,
        )  # fmt: skip
    except (InvalidInput, InvalidState) as error:
        add_service_error(form, error, default="password")
        form.password.data = ""
        return render_page("cardholder/pay/reveal.html", 422, form=form, card=card,
                           has_mfa=has_mfa, shown=None)  # fmt: skip
    return render_page("cardholder/pay/reveal.html", 200, form=None, card=card,
                       has_mfa=has_mfa, shown=shown)  # fmt: skip
