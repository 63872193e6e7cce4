"""The console's frame: the staff guard every page passes, the navigation, the overview, and
the helpers list and detail pages share (cursor pager, audit trail)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import abort, redirect, request, url_for
from flask_login import current_user
from werkzeug.wrappers import Response

from portal.admin import bp
from portal.services.admin import audit_trail, overview
from portal.services.admin.audit_trail import TrailEntry
from portal.web.auth import current_actor, login_manager
from portal.web.render import render_page
from portal.web.uow import make_uow

#: Rows per page of every console table.
PAGE_SIZE = 25

#: The console's sections: (endpoint, label, permission that shows it). Pages add theirs here
#: as they land; the navigation shows the ones the signed-in staff member may open.
SECTIONS: list[tuple[str, str, str | None]] = [("admin.index", "Overview", None)]
SECTIONS += [
    ("admin.top_ups", "Top-ups", "money:read"),
    ("admin.transfers", "Transfers", "money:read"),
    ("admin.withdrawals", "Withdrawals", "money:read"),
    ("admin.payments", "Payments", "money:read"),
    ("admin.refunds", "Refunds", "money:read"),
    ("admin.payouts", "Payouts", "money:read"),
    ("admin.deliveries", "Webhook deliveries", "merchants:read"),
    ("admin.queues", "Queues", "money:read"),
]


@bp.before_request
def staff_only() -> Response | None:
    """Signed in, staff, second factor done (enrolling first): else sign-in, MFA, or 403."""
    if not current_user.is_authenticated:
        return login_manager.unauthorized()
    if not overview.is_staff(current_user.actor):
        abort(403)
    if not current_user.mfa_satisfied:
        endpoint = "auth.mfa_setup" if not current_user.user.mfa_enabled else "auth.mfa"
        return redirect(url_for(endpoint, next=request.full_path))
    return None


@bp.app_context_processor
def console_nav() -> dict[str, Any]:
    """``console_sections()``: the sections the signed-in user may open (empty for non-staff)."""

    def console_sections() -> list[tuple[str, str]]:
        if not current_user.is_authenticated or not overview.is_staff(current_user.actor):
            return []
        actor = current_user.actor
        return [(e, label) for e, label, p in SECTIONS if p is None or actor.can(p)]

    return {"console_sections": console_sections}


def next_page_url(endpoint: str, query: Mapping[str, Any], items: Any, has_more: bool,
                  **values: Any) -> str | None:  # fmt: skip
    """The "More" link of a cursor-paginated table: the same filters, after the last row."""
    if not has_more or not items:
        return None
    kept = {k: v for k, v in query.items() if v not in (None, "") and k != "starting_after"}
    return url_for(endpoint, **values, **kept, starting_after=items[-1].public_id)


def trail_of(subject_type: str, subject_id: int) -> tuple[TrailEntry, ...] | None:
    """The audit trail of a record for its detail page; None when the reader may not see the
    audit log (the page then says so instead of showing it)."""
    actor = current_actor()
    if not actor.can("audit:read"):
        return None
    return audit_trail.trail(
        make_uow(), actor=actor, subject_type=subject_type, subject_id=subject_id
    )


@bp.get("/")
def index() -> Response:
    figures = overview.overview(make_uow(), actor=current_actor())
    return render_page("admin/overview.html", figures=figures, section="overview",
                       statistics=statistics_panel())  # fmt: skip


def statistics_panel() -> Any:
    """The overview's statistics (year, month and currency from the query string), for staff
    who may read statistics; None for the others."""
    from portal.web.statistics_charts import panel

    actor = current_actor()
    if not actor.can("stats:read"):
        return None
    return panel(make_uow(), actor=actor, args=request.args)
