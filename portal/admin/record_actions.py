"""What the record pages (users, roles, cards, merchants) share: the permission a route needs,
one action on one record or on a checked selection (each item reported: done, or why it was
refused), where to go back to, and the live poll of a detail page."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import wraps
from typing import Any, TypeVar

from flask import abort, flash, make_response, redirect, request, url_for
from werkzeug.wrappers import Response

from portal.domain.errors import NotFound, PortalError
from portal.web.auth import current_actor, safe_next

F = TypeVar("F", bound=Callable[..., Any])

#: How often a detail page asks whether its record changed.
POLL_MS = 3000
#: The most records one bulk action takes (a page of the table is 25).
MAX_BULK = 100


def needs(permission: str) -> Callable[[F], F]:
    """403 unless the signed-in staff member holds ``permission`` (the services check again)."""

    def decorate(view: F) -> F:
        @wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if not current_actor().can(permission):
                abort(403)
            return view(*args, **kwargs)

        return wrapped  # type: ignore[return-value]

    return decorate


def back_to(default: str, prefix: str) -> Response:
    """Redirect to the form's ``back`` when it is a console page under ``prefix``, else to
    ``default`` (no open redirects)."""
    back = safe_next(request.form.get("back"))
    return redirect(back if back and back.startswith(prefix) else default)


def sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


@dataclass(frozen=True, slots=True)
class Outcome:
    ref: str
    done: bool
    message: str


def run_one(label: str, act: Callable[[], Any], done: str) -> bool:
    """Run one action, flashing what happened (``done``) or why it was refused. A record the
    staff member may not see raises on (404); every other refusal is said."""
    try:
        act()
    except NotFound:
        raise
    except PortalError as error:
        flash(f"{label}: not {done}. {sentence(error.message)}", "error")
        return False
    flash(f"{label}: {done}.", "success")
    return True


def run_bulk(
    ids: Iterable[str], act: Callable[[str], Any], done: str, noun: str = "records"
) -> list[Outcome]:
    """Run one action on each checked record, in order, each in its own transaction; flash
    one line for what was done and one per refusal (with the reason)."""
    outcomes: list[Outcome] = []
    seen: set[str] = set()
    for ref in ids:
        if ref in seen:
            continue
        seen.add(ref)
        try:
            act(ref)
        except PortalError as error:
            outcomes.append(Outcome(ref, False, sentence(error.message)))
        else:
            outcomes.append(Outcome(ref, True, done))
    made = [o.ref for o in outcomes if o.done]
    if not outcomes:
        flash(f"Tick the {noun} to act on first.", "error")
    if made:
        flash(f"{done.capitalize()} {len(made)}: {', '.join(made)}.", "success")
    for o in outcomes:
        if not o.done:
            flash(f"{o.ref}: not {done}. {o.message}", "error")
    return outcomes


def checked_ids() -> list[str]:
    """The records ticked in a bulk form (at most MAX_BULK; 400 beyond)."""
    ids = [i.strip() for i in request.form.getlist("ids") if i.strip()]
    if len(ids) > MAX_BULK:
        abort(400, f"at most {MAX_BULK} records at once")
    return ids


def poller(endpoint: str, version: str, **values: Any) -> dict[str, Any]:
    return {"live": {"url": url_for(endpoint, **values, v=version), "version": version,
                     "every": POLL_MS}}  # fmt: skip


def unchanged(version: str) -> Response | None:
    """204 (swap nothing) when the poll's version is the current one."""
    if request.args.get("v") != version:
        return None
    response = make_response("", 204)
    response.vary.add("HX-Request")
    return response


def kept_query(query: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in query.items() if v not in (None, "")}
