"""Console pages for merchants: applications waiting, every merchant by state, and a merchant's
page with its API keys' metadata (never a secret), team, balance, decisions with their reason
and audit trail. Reading needs ``merchants:read``; decisions, archiving and deleting (a
merchant that never took money) need ``merchants:manage`` (``merchants.decide`` checks the
state again). The old staff page, ``/merchant/staff``, sends here."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import abort, redirect, request, url_for
from werkzeug.wrappers import Response

from portal.admin import bp
from portal.admin.record_actions import (
    back_to,
    checked_ids,
    kept_query,
    needs,
    poller,
    run_bulk,
    run_one,
    sentence,
    unchanged,
)
from portal.admin.views import PAGE_SIZE, SECTIONS, next_page_url, trail_of
from portal.domain.errors import InvalidInput, NotFound
from portal.domain.money import Money
from portal.services.admin import merchants as admin_merchants
from portal.services.merchants import keys, merchants
from portal.services.merchants.merchants import MerchantView
from portal.web.auth import current_actor
from portal.web.render import render_fragments, render_page
from portal.web.uow import make_uow

SECTIONS.append(("admin.merchants", "Merchants", "merchants:read"))

#: Action -> what it did, as said afterwards.
MERCHANT_ACTIONS = {
    "approve": "approved", "reject": "rejected", "suspend": "suspended",
    "reactivate": "reactivated", "archive": "archived", "restore": "restored",
    "delete": "deleted for good",
}  # fmt: skip
BULK_ACTIONS = ("archive", "restore", "delete")
STATE_TABS = (
    (None, "Live"), ("pending", "Applications waiting"), ("active", "Active"),
    ("suspended", "Suspended"), ("rejected", "Rejected"), ("archived", "Archived"),
)  # fmt: skip


def available_actions(m: MerchantView) -> list[str]:
    """The decisions a merchant's state allows (``merchants.decide`` checks again)."""
    if m.archived_at is not None:
        return ["restore"]
    return {
        "pending": ["approve", "reject", "archive"],
        "active": ["suspend", "archive"],
        "suspended": ["reactivate", "archive"],
        "rejected": ["archive"],
    }.get(m.status, [])


def _tabs(state: str | None, waiting: admin_merchants.Waiting) -> list[tuple[str, str, bool]]:
    """(label, url, current) of each state's tab; the waiting applications counted."""
    return [
        (f"{label} ({waiting.count})" if value == "pending" and waiting.count else label,
         url_for("admin.merchants", state=value), state == value)
        for value, label in STATE_TABS
    ]  # fmt: skip


def _merchant_action(action: str, ref: str, reason: str = "") -> Any:
    uow, actor = make_uow(), current_actor()
    if action == "delete":
        return admin_merchants.delete_merchant(uow, actor=actor, merchant=ref)
    return merchants.decide(uow, actor=actor, merchant=ref, action=action, reason=reason)


@bp.get("/merchants", endpoint="merchants")
@needs("merchants:read")
def merchants_list() -> Response:
    actor = current_actor()
    state = request.args.get("state") or None
    q = (request.args.get("q") or "").strip()
    after = request.args.get("starting_after") or None
    error = None
    try:
        page = admin_merchants.list_merchants(make_uow(), actor=actor, state=state,
                                              search=q or None, limit=PAGE_SIZE,
                                              starting_after=after)  # fmt: skip
        items, has_more = page.items, page.has_more
    except InvalidInput as exc:
        error, items, has_more = sentence(exc.message), (), False
    query = kept_query({"q": q, "state": state})
    waiting = admin_merchants.waiting(make_uow(), actor=actor)
    return render_page(
        "admin/merchants.html", items=items, query=query, error=error, state=state,
        next_url=next_page_url("admin.merchants", query, items, has_more),
        first_url=url_for("admin.merchants", **query), continued=after is not None,
        manage=actor.can("merchants:manage"), tabs=_tabs(state, waiting),
        waiting=waiting,
    )  # fmt: skip


def _merchant_context(mid: str) -> dict[str, Any]:
    actor, uow = current_actor(), make_uow()
    # The version first: a change made while the page renders is caught by the next poll.
    version = admin_merchants.merchant_version(uow, actor=actor, merchant=mid)
    merchant = merchants.get_merchant(uow, actor=actor, merchant=mid).merchant
    return {
        "merchant": merchant,
        "keys": keys.list_api_keys(uow, actor=actor, merchant=merchant.public_id),
        "members": merchants.list_members(uow, actor=actor, merchant=merchant.public_id),
        "balances": admin_merchants.balances(uow, actor=actor, merchant_id=merchant.id),
        "entries": trail_of("merchant", merchant.id),
        "manage": actor.can("merchants:manage"), "acts": available_actions(merchant),
        "labels": {"approve": "Approve", "reject": "Reject", "suspend": "Suspend",
                   "reactivate": "Reactivate", "archive": "Archive", "restore": "Restore"},
        "see_users": actor.can("users:read"), "now": datetime.now(UTC),
        "fixed_fee": Money(merchant.fee_fixed.get(merchant.settlement_currency, 0),
                           merchant.settlement_currency),
        **poller("admin.merchants_changes", version, mid=merchant.public_id),
    }  # fmt: skip


@bp.get("/merchants/<mid>")
@needs("merchants:read")
def merchants_detail(mid: str) -> Response:
    return render_page("admin/merchants_detail.html", **_merchant_context(mid))


@bp.get("/merchants/<mid>/changes")
@needs("merchants:read")
def merchants_changes(mid: str) -> Response:
    """204 while nothing changed; else a new poller and the record, out of band."""
    version = admin_merchants.merchant_version(make_uow(), actor=current_actor(), merchant=mid)
    if (same := unchanged(version)) is not None:
        return same
    context = {**_merchant_context(mid), "oob": True}
    return render_fragments(
        ("merchant/_live.html", context), ("admin/merchants_record.html", context)
    )


@bp.post("/merchants/<mid>/<action>")
@needs("merchants:manage")
def merchants_action(mid: str, action: str) -> Response:
    if action not in MERCHANT_ACTIONS:
        abort(404)
    reason = (request.form.get("reason") or "").strip()
    try:
        done = run_one(mid, lambda: _merchant_action(action, mid, reason),
                       MERCHANT_ACTIONS[action])  # fmt: skip
    except NotFound:
        abort(404)
    if done and action == "delete":
        return redirect(url_for("admin.merchants"))
    return back_to(url_for("admin.merchants_detail", mid=mid), "/admin/merchants")


@bp.post("/merchants/bulk")
@needs("merchants:manage")
def merchants_bulk() -> Response:
    action = request.form.get("action")
    if action not in BULK_ACTIONS:
        abort(400, "choose archive, restore or delete")
    run_bulk(checked_ids(), lambda ref: _merchant_action(action, ref), MERCHANT_ACTIONS[action],
             "merchants")  # fmt: skip
    return back_to(url_for("admin.merchants"), "/admin/merchants")
