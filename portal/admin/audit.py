"""Console: the audit log (``audit:read``). Every event, filtered by action, actor, subject,
outcome and UTC date range, newest first and cursor-paged, with its before/after values and its
place on its hash chain; and "Verify the chains", which runs ``audit_chain.verify`` (what
``portal audit verify`` runs) and names where a chain breaks."""

from __future__ import annotations

from datetime import date
from typing import Any

from flask import request, url_for
from flask_wtf import FlaskForm
from werkzeug.wrappers import Response

from portal.admin import bp
from portal.admin.views import PAGE_SIZE, SECTIONS
from portal.domain.errors import InvalidInput
from portal.services.admin import audit_log
from portal.services.admin.audit_log import Filters
from portal.web.auth import current_actor
from portal.web.render import render_page
from portal.web.uow import make_uow

SECTIONS.append(("admin.audit", "Audit log", audit_log.PERMISSION))

FILTER_NAMES = ("action", "actor", "subject_type", "subject", "outcome", "since", "until")


class VerifyForm(FlaskForm):
    """Nothing but the CSRF token."""


def _day(value: str, name: str, errors: dict[str, str]) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        errors[name] = "Enter a date like 2026-12-04."
        return None


def _filters(args: Any) -> tuple[dict[str, str], Filters, dict[str, str]]:
    raw = {name: (args.get(name) or "").strip() for name in FILTER_NAMES}
    errors: dict[str, str] = {}
    since, until = _day(raw["since"], "since", errors), _day(raw["until"], "until", errors)
    filters = Filters(
        action=raw["action"] or None, actor=raw["actor"] or None,
        subject_type=raw["subject_type"] or None, subject=raw["subject"] or None,
        outcome=raw["outcome"] or None, since=since, until=until,
    )  # fmt: skip
    return raw, filters, errors


@bp.get("/audit", endpoint="audit")
def audit_page() -> Response:
    actor = current_actor()
    raw, filters, errors = _filters(request.args)
    after_text = (request.args.get("starting_after") or "").strip()
    after = int(after_text) if after_text.isdigit() and len(after_text) < 19 else None
    uow = make_uow()
    actions, subjects = audit_log.choices(uow, actor=actor)
    items: tuple[audit_log.AuditRow, ...] = ()
    has_more = False
    status = 200
    if not errors:
        try:
            page = audit_log.list_events(
                uow, actor=actor, filters=filters, limit=PAGE_SIZE, starting_after=after
            )
            items, has_more = page.items, page.has_more
        except InvalidInput as error:
            errors[error.param or "action"] = error.message[:1].upper() + error.message[1:] + "."
    if errors:
        status = 422
    kept: dict[str, Any] = {k: v for k, v in raw.items() if v}
    return render_page(
        "admin/audit.html", status, section="audit", items=items, raw=raw, errors=errors,
        actions=actions, subjects=subjects, outcomes=audit_log.OUTCOMES, filtered=bool(kept),
        continued=after is not None, first_url=url_for(".audit", **kept),
        next_url=url_for(".audit", **kept, starting_after=items[-1].id)
        if has_more and items else None,
        form=VerifyForm(formdata=None), prefixes=audit_log.known_prefixes(),
    )  # fmt: skip


@bp.post("/audit/verify")
def audit_verify() -> Response:
    report = audit_log.verify(make_uow(), actor=current_actor())
    return render_page(
        "admin/audit_verify.html", section="audit", report=report, form=VerifyForm(formdata=None)
    )
