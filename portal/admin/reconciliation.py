"""Console: reconciliation. The newest ledger check (the worker's periodic one or one run here)
with each invariant's result, and a button that runs it now (``reconciliation:run``; support
reads the result). The statistics roll-ups are checked against a recomputation with it when the
statistics capability offers one (``portal.services.statistics.recompute_check``); until then
that row says it is not available yet. The on-demand run recomputes yesterday and today (UTC);
the worker's nightly statistics check covers each previous day."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, timedelta
from typing import Any

from flask import abort, flash, redirect, url_for
from flask_wtf import FlaskForm
from werkzeug.wrappers import Response

from portal.admin import bp
from portal.admin.views import SECTIONS
from portal.services import statistics as statistics_service
from portal.services.admin import reconciliation
from portal.services.admin.reconciliation import StatisticsResult
from portal.services.ledger.reconciliation import KEPT_VIOLATIONS
from portal.web.auth import current_actor
from portal.web.render import render_page
from portal.web.uow import make_uow

log = logging.getLogger(__name__)

SECTIONS.append(("admin.reconciliation", "Reconciliation", reconciliation.READ_PERMISSION))
#: Roll-up differences named on the page (the count is complete).
SHOWN_DIFFERENCES = 5


class RunForm(FlaskForm):
    """Nothing but the CSRF token."""


def _recompute() -> Callable[..., Any] | None:
    check = getattr(statistics_service, "recompute_check", None)
    return check if callable(check) else None


def _statistics() -> StatisticsResult | None:
    """Recompute yesterday's and today's statistics roll-ups (UTC) from the movements and
    compare (``recompute_check``), if the statistics capability offers it: its outcome in a
    sentence naming the first differences."""
    check = _recompute()
    if check is None:
        return None
    uow = make_uow()
    today = uow.clock().astimezone(UTC).date()
    first = today - timedelta(days=1)
    try:
        outcome = check(uow, (first, today))
    except Exception as exc:  # the ledger check is still worth running and showing
        log.exception("statistics recompute_check failed")
        return StatisticsResult(False, f"The recomputation failed ({type(exc).__name__}).")
    span = f"{first.isoformat()} to {today.isoformat()}"
    if getattr(outcome, "ok", False):
        return StatisticsResult(True, f"Every roll-up of {span} (UTC) equals its recomputation.")
    differences = list(getattr(outcome, "differences", ()))
    shown = "; ".join(
        f"{d.grain} {d.family} {d.scope_kind} {d.scope_id} {d.currency} {d.status}"
        f" {d.period.isoformat()}: expected {d.expected_amount} ({d.expected_count}),"
        f" found {d.actual_amount} ({d.actual_count})"
        for d in differences[:SHOWN_DIFFERENCES]
    )
    return StatisticsResult(
        False, f"{len(differences)} roll-up cell(s) of {span} differ from a recomputation: {shown}."
    )


@bp.get("/reconciliation", endpoint="reconciliation")
def reconciliation_page() -> Response:
    actor = current_actor()
    last = reconciliation.last_result(make_uow(), actor=actor)
    return render_page(
        "admin/reconciliation.html", section="reconciliation", last=last,
        may_run=actor.can(reconciliation.RUN_PERMISSION), form=RunForm(formdata=None),
        statistics_available=_recompute() is not None, kept=KEPT_VIOLATIONS,
    )  # fmt: skip


@bp.post("/reconciliation/run")
def reconciliation_run() -> Response:
    actor = current_actor()
    if not actor.can(reconciliation.RUN_PERMISSION):
        abort(403)
    result = reconciliation.run_check(make_uow(), actor=actor, statistics=_statistics())
    if result.ok and (result.statistics is None or result.statistics.ok):
        flash("Checked now: every invariant holds.", "success")
    else:
        flash(f"Checked now: {result.violation_count} problem(s) in the ledger"
              + ("" if result.statistics is None or result.statistics.ok
                 else "; the statistics roll-ups differ") + ".", "error")  # fmt: skip
    return redirect(url_for(".reconciliation"))
