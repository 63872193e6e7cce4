"""Console pages for cards and their wallets: every card with its balance (available, held,
ledger), a card's owner and latest movements, and freezing, archiving, restoring and deleting
(a card that never held money) one by one and in bulk. Reading needs ``cards:read``, acting
``cards:manage``; the movements need ``money:read``."""

from __future__ import annotations

from typing import Any

from flask import abort, current_app, redirect, request, url_for
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
from portal.services.admin import cards as admin_cards
from portal.services.wallet import activity, cards
from portal.web.auth import current_actor
from portal.web.render import render_fragments, render_page
from portal.web.uow import make_uow

SECTIONS.append(("admin.cards", "Cards and wallets", "cards:read"))

CARD_ACTIONS = {
    "freeze": "frozen", "unfreeze": "unfrozen", "archive": "archived", "restore": "restored",
    "delete": "deleted for good",
}  # fmt: skip
LATEST_MOVEMENTS = 10
#: Where a movement kind's console page lives, once one does (the money pages are another
#: section's): the first of these rule prefixes the app serves.
MOVEMENT_PAGES = {
    "top_up": ("/admin/top-ups/", "/admin/top_ups/", "/admin/topups/"),
    "transfer": ("/admin/transfers/",),
    "withdrawal": ("/admin/withdrawals/",),
    "payment": ("/admin/payments/",),
    "refund": ("/admin/refunds/",),
}


def _card_action(action: str, ref: str) -> Any:
    uow, actor = make_uow(), current_actor()
    if action in ("freeze", "unfreeze"):
        return cards.set_frozen(uow, actor=actor, card_id=ref, frozen=action == "freeze")
    if action in ("archive", "restore"):
        return cards.set_archived(uow, actor=actor, card_id=ref, archived=action == "archive")
    return admin_cards.delete_card(uow, actor=actor, card_id=ref)


def movement_pages() -> dict[str, str]:
    """kind -> the URL prefix of its console page, for the kinds that have one."""
    rules = [r.rule for r in current_app.url_map.iter_rules()]
    found: dict[str, str] = {}
    for kind, prefixes in MOVEMENT_PAGES.items():
        for prefix in prefixes:
            if any(r.startswith(prefix) and r.count("/") == 3 for r in rules):
                found[kind] = prefix
                break
    return found


@bp.get("/cards", endpoint="cards")
@needs("cards:read")
def cards_list() -> Response:
    actor = current_actor()
    archived = request.args.get("state") == "archived"
    q = (request.args.get("q") or "").strip()
    status = request.args.get("status") or None
    currency = (request.args.get("currency") or "").strip() or None
    after = request.args.get("starting_after") or None
    error = None
    try:
        page = admin_cards.list_cards(
            make_uow(), actor=actor, search=q or None, status=status, currency=currency,
            archived=archived, limit=PAGE_SIZE, starting_after=after,
        )  # fmt: skip
        items, has_more = page.items, page.has_more
    except InvalidInput as exc:
        error, items, has_more = sentence(exc.message), (), False
    query = kept_query({"q": q, "status": status, "currency": currency,
                        "state": "archived" if archived else None})  # fmt: skip
    return render_page(
        "admin/cards.html", items=items, query=query, error=error, archived=archived,
        next_url=next_page_url("admin.cards", query, items, has_more),
        first_url=url_for("admin.cards", **query), continued=after is not None,
        manage=actor.can("cards:manage"), see_users=actor.can("users:read"),
    )  # fmt: skip


def _card_context(card_id: str) -> dict[str, Any]:
    actor, uow = current_actor(), make_uow()
    # The version first: a change made while the page renders is caught by the next poll.
    version = admin_cards.card_version(uow, actor=actor, card_id=card_id)
    card = admin_cards.get_card(uow, actor=actor, card_id=card_id)
    movements = None
    if actor.can("money:read"):
        movements = activity.list_activity(
            uow, actor=actor, card_id=card.public_id, limit=LATEST_MOVEMENTS
        )
    return {
        "card": card, "movements": movements, "pages": movement_pages(),
        "entries": trail_of("card", card.id), "manage": actor.can("cards:manage"),
        "see_users": actor.can("users:read"),
        **poller("admin.cards_changes", version, card_id=card.public_id),
    }  # fmt: skip


@bp.get("/cards/<card_id>")
@needs("cards:read")
def cards_detail(card_id: str) -> Response:
    return render_page("admin/cards_detail.html", **_card_context(card_id))


@bp.get("/cards/<card_id>/changes")
@needs("cards:read")
def cards_changes(card_id: str) -> Response:
    """204 while nothing changed; else a new poller and the record, out of band."""
    version = admin_cards.card_version(make_uow(), actor=current_actor(), card_id=card_id)
    if (same := unchanged(version)) is not None:
        return same
    context = {**_card_context(card_id), "oob": True}
    return render_fragments(("merchant/_live.html", context), ("admin/cards_record.html", context))


@bp.post("/cards/<card_id>/<action>")
@needs("cards:manage")
def cards_action(card_id: str, action: str) -> Response:
    if action not in CARD_ACTIONS:
        abort(404)
    try:
        done = run_one(card_id, lambda: _card_action(action, card_id), CARD_ACTIONS[action])
    except NotFound:
        abort(404)
    if done and action == "delete":
        return redirect(url_for("admin.cards"))
    return back_to(url_for("admin.cards_detail", card_id=card_id), "/admin/")


@bp.post("/cards/bulk")
@needs("cards:manage")
def cards_bulk() -> Response:
    action = request.form.get("action")
    if action not in CARD_ACTIONS:
        abort(400, "choose freeze, unfreeze, archive, restore or delete")
    run_bulk(checked_ids(), lambda ref: _card_action(action, ref), CARD_ACTIONS[action], "cards")
    return back_to(url_for("admin.cards"), "/admin/cards")
