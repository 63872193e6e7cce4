"""Console pages for people: users (with their roles, cards and sessions) and roles with their
permissions. Reading needs ``users:read``; archiving, restoring and deleting users needs
``users:manage``; roles and role assignment need ``roles:manage`` (the services check again,
with their guard rails: never oneself, never beyond one's own permissions, never the last
administrator)."""

from __future__ import annotations

from typing import Any

from flask import abort, current_app, flash, redirect, request, url_for
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
from portal.domain.errors import InvalidInput, NotFound, PortalError
from portal.domain.permissions import PERMISSIONS
from portal.services.admin import people
from portal.services.identity import roles, sessions, users
from portal.services.wallet import activity
from portal.web.auth import current_actor
from portal.web.render import render_fragments, render_page
from portal.web.uow import make_uow

SECTIONS.append(("admin.users", "Users", "users:read"))
SECTIONS.append(("admin.roles", "Roles", "users:read"))

USER_ACTIONS = {"archive": "archived", "restore": "restored", "delete": "deleted for good"}
ROLE_ACTIONS = USER_ACTIONS


def _user_action(action: str, ref: str) -> Any:
    uow, actor = make_uow(), current_actor()
    if action == "archive":
        return users.archive_user(uow, actor=actor, user_id=ref)
    if action == "restore":
        return users.restore_user(uow, actor=actor, user_id=ref)
    return users.delete_user(uow, actor=actor, user_id=ref)


def _role_action(action: str, ref: str) -> Any:
    uow, actor = make_uow(), current_actor()
    if action == "archive":
        return roles.archive_role(uow, actor=actor, role=ref)
    if action == "restore":
        return roles.restore_role(uow, actor=actor, role=ref)
    return people.delete_role(uow, actor=actor, role=ref)


# -- users -----------------------------------------------------------------------------------
@bp.get("/users", endpoint="users")
@needs("users:read")
def users_list() -> Response:
    actor = current_actor()
    archived = request.args.get("state") == "archived"
    q = (request.args.get("q") or "").strip()
    role = request.args.get("role") or None
    after = request.args.get("starting_after") or None
    error = None
    try:
        page = users.list_users(make_uow(), actor=actor, limit=PAGE_SIZE, starting_after=after,
                                search=q or None, role=role, archived=archived)  # fmt: skip
        items, has_more = page.items, page.has_more
    except InvalidInput as exc:
        error, items, has_more = sentence(exc.message), (), False
    query = kept_query({"q": q, "role": role, "state": "archived" if archived else None})
    return render_page(
        "admin/users.html", items=items, query=query, error=error, archived=archived,
        next_url=next_page_url("admin.users", query, items, has_more),
        first_url=url_for("admin.users", **query), continued=after is not None,
        role_names=[r.name for r in roles.list_roles(make_uow(), actor=actor,
                                                     include_archived=True)],
        manage=actor.can("users:manage"), actions=USER_ACTIONS,
    )  # fmt: skip


def _user_context(user_id: str) -> dict[str, Any]:
    actor, uow = current_actor(), make_uow()
    # The version first: a change made while the page renders is caught by the next poll.
    version = people.user_version(uow, actor=actor, user_id=user_id)
    user = users.get_user(uow, actor=actor, user_id=user_id)
    cards = (
        activity.list_cards(uow, actor=actor, user_id=user.public_id, include_archived=True)
        if actor.can("cards:read") else None
    )  # fmt: skip
    live_roles = roles.list_roles(uow, actor=actor)
    return {
        "user": user, "cards": cards,
        "sessions": sessions.list_sessions(uow, actor=actor, user_id=user.public_id),
        "assignable": [r for r in live_roles if r.name not in user.roles],
        "entries": trail_of("user", user.id), "manage": actor.can("users:manage"),
        "manage_roles": actor.can("roles:manage"), "manage_cards": actor.can("cards:manage"),
        "is_self": users.is_self(actor, user.id), "actions": USER_ACTIONS,
        "card_pages": current_app.view_functions,
        **poller("admin.users_changes", version, user_id=user.public_id),
    }  # fmt: skip


@bp.get("/users/<user_id>")
@needs("users:read")
def users_detail(user_id: str) -> Response:
    return render_page("admin/users_detail.html", **_user_context(user_id))


@bp.get("/users/<user_id>/changes")
@needs("users:read")
def users_changes(user_id: str) -> Response:
    """204 while nothing changed; else a new poller and the record, out of band."""
    version = people.user_version(make_uow(), actor=current_actor(), user_id=user_id)
    if (same := unchanged(version)) is not None:
        return same
    context = {**_user_context(user_id), "oob": True}
    return render_fragments(("merchant/_live.html", context), ("admin/users_record.html", context))


@bp.post("/users/<user_id>/<action>")
@needs("users:manage")
def users_action(user_id: str, action: str) -> Response:
    if action not in USER_ACTIONS:
        abort(404)
    detail = url_for("admin.users_detail", user_id=user_id)
    done = run_one(user_id, lambda: _user_action(action, user_id), USER_ACTIONS[action])
    if done and action == "delete":
        return redirect(url_for("admin.users"))
    return back_to(detail, "/admin/users")


@bp.post("/users/<user_id>/roles")
@needs("roles:manage")
def users_roles(user_id: str) -> Response:
    role = (request.form.get("role") or "").strip()
    op = request.form.get("op")
    if op not in ("add", "remove") or not role:
        abort(400, "name a role and add or remove")
    uow, actor = make_uow(), current_actor()
    try:
        if op == "add":
            users_changed = roles.assign_role(uow, actor=actor, user_id=user_id, role=role)
            flash(f"{users_changed.email} now holds {role}.", "success")
        else:
            users_changed = roles.remove_role(uow, actor=actor, user_id=user_id, role=role)
            flash(f"{users_changed.email} no longer holds {role}.", "success")
    except NotFound as error:
        if error.param == "role":
            flash(f"No role is named {role}.", "error")
        else:
            raise
    except PortalError as error:
        flash(f"Roles not changed. {sentence(error.message)}", "error")
    return redirect(url_for("admin.users_detail", user_id=user_id))


@bp.post("/users/bulk")
@needs("users:manage")
def users_bulk() -> Response:
    action = request.form.get("action")
    if action not in USER_ACTIONS:
        abort(400, "choose archive, restore or delete")
    run_bulk(checked_ids(), lambda ref: _user_action(action, ref), USER_ACTIONS[action], "users")
    return back_to(url_for("admin.users"), "/admin/users")


# -- roles -----------------------------------------------------------------------------------
@bp.get("/roles", endpoint="roles")
@needs("users:read")
def roles_list() -> Response:
    actor = current_actor()
    archived = request.args.get("state") == "archived"
    q = (request.args.get("q") or "").strip()
    after = request.args.get("starting_after") or None
    error = None
    try:
        page = people.list_roles(make_uow(), actor=actor, search=q or None, archived=archived,
                                 limit=PAGE_SIZE, starting_after=after)  # fmt: skip
        items, has_more = page.items, page.has_more
    except InvalidInput as exc:
        error, items, has_more = sentence(exc.message), (), False
    query = kept_query({"q": q, "state": "archived" if archived else None})
    return render_page(
        "admin/roles.html", items=items, query=query, error=error, archived=archived,
        next_url=next_page_url("admin.roles", query, items, has_more),
        first_url=url_for("admin.roles", **query), continued=after is not None,
        manage=actor.can("roles:manage"), actions=ROLE_ACTIONS, permissions=PERMISSIONS,
    )  # fmt: skip


@bp.post("/roles")
@needs("roles:manage")
def roles_create() -> Response:
    name = (request.form.get("name") or "").strip()
    try:
        made = roles.create_role(make_uow(), actor=current_actor(), name=name,
                                 description=request.form.get("description") or "",
                                 permissions=request.form.getlist("permissions"))  # fmt: skip
    except PortalError as error:
        flash(f"Role not created. {sentence(error.message)}", "error")
        return redirect(url_for("admin.roles"))
    flash(f"Role {made.name} created.", "success")
    return redirect(url_for("admin.roles_detail", role=made.public_id))


def _role_context(role: str) -> dict[str, Any]:
    actor, uow = current_actor(), make_uow()
    # The version first: a change made while the page renders is caught by the next poll.
    version = people.role_version(uow, actor=actor, role=role)
    found = roles.get_role(uow, actor=actor, role=role)
    holders, total = people.role_holders(uow, actor=actor, role=found.id)
    return {
        "role": found, "holders": holders, "holder_total": total,
        "permissions": PERMISSIONS, "entries": trail_of("role", found.id),
        "manage": actor.can("roles:manage"), "actions": ROLE_ACTIONS,
        **poller("admin.roles_changes", version, role=found.public_id),
    }  # fmt: skip


@bp.get("/roles/<role>")
@needs("users:read")
def roles_detail(role: str) -> Response:
    return render_page("admin/roles_detail.html", **_role_context(role))


@bp.get("/roles/<role>/changes")
@needs("users:read")
def roles_changes(role: str) -> Response:
    """204 while nothing changed; else a new poller and the record, out of band."""
    version = people.role_version(make_uow(), actor=current_actor(), role=role)
    if (same := unchanged(version)) is not None:
        return same
    context = {**_role_context(role), "oob": True}
    return render_fragments(("merchant/_live.html", context), ("admin/roles_record.html", context))


@bp.post("/roles/<role>/permissions")
@needs("roles:manage")
def roles_permissions(role: str) -> Response:
    permission = request.form.get("permission") or ""
    op = request.form.get("op")
    if op not in ("grant", "revoke") or permission not in PERMISSIONS:
        abort(400, "name a permission and grant or revoke")
    uow, actor = make_uow(), current_actor()
    try:
        if op == "grant":
            changed = roles.grant_permission(uow, actor=actor, role=role, permission=permission)
            flash(f"{changed.name} now grants {permission}.", "success")
        else:
            changed = roles.revoke_permission(uow, actor=actor, role=role, permission=permission)
            flash(f"{changed.name} no longer grants {permission}.", "success")
    except NotFound:
        raise
    except PortalError as error:
        flash(f"Permissions not changed. {sentence(error.message)}", "error")
    return redirect(url_for("admin.roles_detail", role=role))


@bp.post("/roles/<role>/<action>")
@needs("roles:manage")
def roles_action(role: str, action: str) -> Response:
    if action not in ROLE_ACTIONS:
        abort(404)
    done = run_one(role, lambda: _role_action(action, role), ROLE_ACTIONS[action])
    if done and action == "delete":
        return redirect(url_for("admin.roles"))
    return back_to(url_for("admin.roles_detail", role=role), "/admin/roles")


@bp.post("/roles/bulk")
@needs("roles:manage")
def roles_bulk() -> Response:
    action = request.form.get("action")
    if action not in ROLE_ACTIONS:
        abort(400, "choose archive, restore or delete")
    run_bulk(checked_ids(), lambda ref: _role_action(action, ref), ROLE_ACTIONS[action], "roles")
    return back_to(url_for("admin.roles"), "/admin/roles")
