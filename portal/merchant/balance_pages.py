"""The dashboard's balance and payouts pages (``/merchant/<mid>/balance``, ``.../payouts/<po>``).

The balance page shows what is available and pending per currency, where payouts go (owners
change it), "Pay out now" for owners (its idempotency key minted when the page is rendered, so
a double submit pays out once), the payouts and the latest balance transactions. A payout's page
is its report: the header block that ties to the ledger and one row per balance transaction,
with the same as a CSV download. Staff see these pages read-only.
"""

from __future__ import annotations

from flask import flash, redirect, request, url_for
from werkzeug.wrappers import Response

from portal.domain.errors import Forbidden, IdempotencyConflict, NotFound, PortalError
from portal.domain.money import Money
from portal.merchant import bp
from portal.merchant.forms import BankAccountForm, KeyedForm, add_service_error, new_key
from portal.merchant.views import _layout, _membership, _require, _uow
from portal.services.merchants import payouts, settlements
from portal.services.merchants.merchants import Membership
from portal.services.wallet.wallet import BankAccount
from portal.web.auth import current_actor, login_required
from portal.web.render import render_page

PAGE_SIZE = 20
TYPE_LABELS = {
    "payment": "Payment",
    "refund": "Refund",
    "fee": "Fee",
    "adjustment": "Adjustment",
    "payout": "Payout",
    "payout_failure": "Payout returned",
}
PAYOUT_STATUS = {
    "pending": ("Pending", "neutral"),
    "processing": ("In transit", "warning"),
    "paid": ("Paid", "success"),
    "failed": ("Failed", "danger"),
}


def _balance_page(
    membership: Membership,
    status: int = 200,
    *,
    bank_form: BankAccountForm | None = None,
    payout_forms: dict[str, KeyedForm] | None = None,
) -> Response:
    mid = membership.merchant.public_id
    uow, actor = _uow(), current_actor()
    balances = settlements.get_balance(uow, actor=actor, merchant=mid)
    forms = payout_forms or {}
    for b in balances:
        form = forms.setdefault(b.currency, KeyedForm(formdata=None, prefix=f"po-{b.currency}-"))
        form.ensure_key()
    after = request.args.get("after") or None
    listed = payouts.list_payouts(uow, actor=actor, merchant=mid, limit=PAGE_SIZE,
                                  starting_after=after)  # fmt: skip
    history = settlements.list_balance_transactions(uow, actor=actor, merchant=mid,
                                                    limit=PAGE_SIZE)  # fmt: skip
    minimums = {b.currency: payouts.minimum(uow, b.currency) for b in balances}
    return render_page(
        "merchant/balance.html", status, **_layout(membership, "balance"),
        balances=balances, bank=payouts.bank_account(uow, actor=actor, merchant=mid),
        bank_form=bank_form or BankAccountForm(formdata=None), payout_forms=forms,
        payouts=listed, history=history, minimums=minimums,
        delay_days=uow.settings.settlement_delay_days, payout_time=uow.settings.payout_time,
        can_pay_out=membership.can("payouts"), can_set_bank=membership.can("bank"),
        type_labels=TYPE_LABELS, payout_status=PAYOUT_STATUS,
    )  # fmt: skip


@bp.get("/<mid>/balance")
@login_required()
def balance(mid: str) -> Response:
    return _balance_page(_membership(mid))


@bp.post("/<mid>/balance/bank_account")
@login_required()
def set_bank_account(mid: str) -> Response:
    membership = _membership(mid)
    _require(membership, "bank")
    form = BankAccountForm()
    if not form.validate_on_submit():
        return _balance_page(membership, 422, bank_form=form)
    try:
        view = payouts.set_bank_account(
            _uow(), actor=current_actor(), merchant=mid,
            bank=BankAccount(form.bank_name.data or "", form.account_number.data or "",
                             form.account_holder.data or ""),
        )  # fmt: skip
    except (NotFound, Forbidden):
        raise
    except PortalError as error:
        add_service_error(form, error, default="account_number")
        return _balance_page(membership, 422, bank_form=form)
    flash(f"Payouts now go to {view.bank_name} ····{view.last4}.", "success")
    return redirect(url_for(".balance", mid=mid))


@bp.post("/<mid>/payouts")
@login_required()
def pay_out(mid: str) -> Response:
    membership = _membership(mid)
    _require(membership, "payouts")
    currency = (request.form.get("currency") or "").strip().upper()[:3]
    form = KeyedForm(prefix=f"po-{currency}-")
    key = (form.idempotency_key.data or "").strip()
    if not form.validate_on_submit() or not key:
        if not key:
            form.form_errors.append("This form is missing its key; it was filled in again.")
        form.ensure_key()
        return _balance_page(membership, 422, payout_forms={currency: form})
    try:
        made = payouts.create_payout(_uow(), actor=current_actor(), merchant=mid,
                                     idempotency_key=key, currency=currency or None)  # fmt: skip
    except (NotFound, Forbidden):
        raise
    except IdempotencyConflict:
        form.form_errors.append("This form was already used for a different payout.")
        form.idempotency_key.data = new_key()
        return _balance_page(membership, 422, payout_forms={currency: form})
    except PortalError as error:
        add_service_error(form, error)
        form.idempotency_key.data = new_key()  # a refusal is stored under the old key
        return _balance_page(membership, 422, payout_forms={currency: form})
    message = f"Paying out {Money(made.amount, made.currency)} to {made.bank_name} ····" + (
        f"{made.bank_last4}."
    )
    if made.replayed:
        message += " (This was already done when the form was first sent; nothing happened twice.)"
    flash(message, "success")
    return redirect(url_for(".payout", mid=mid, po=made.id))


def _report(mid: str, po: str) -> tuple[Membership, payouts.PayoutReport]:
    membership = _membership(mid)
    return membership, payouts.payout_report(_uow(), actor=current_actor(), merchant=mid,
                                             payout=po)  # fmt: skip


@bp.get("/<mid>/payouts/<po>")
@login_required()
def payout(mid: str, po: str) -> Response:
    membership, report = _report(mid, po)
    return render_page(
        "merchant/payout.html", 200, **_layout(membership, "balance"), report=report,
        p=report.payout, type_labels=TYPE_LABELS, payout_status=PAYOUT_STATUS,
    )  # fmt: skip


@bp.get("/<mid>/payouts/<po>/report.csv")
@login_required()
def payout_csv(mid: str, po: str) -> Response:
    _, report = _report(mid, po)
    return Response(
        payouts.report_csv(report), mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="payout-{report.payout.id}.csv"',
                 "Cache-Control": "private, no-store"},
    )  # fmt: skip
