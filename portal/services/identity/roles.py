"""Roles and permissions: the catalogue administrators edit, and who holds which role.

Reading needs ``users:read`` (or ``roles:manage``); every change needs ``roles:manage``. Guard
rails: the built-in roles keep their names and are never archived; ``admin`` always holds every
permission, ``support`` only ``:read`` ones, ``merchant`` and ``cardholder`` only self-service
ones (anyone can sign up as a cardholder); nobody changes their own roles; nobody grants, or
manages a role that grants, a permission they do not hold; the last active administrator keeps
the admin role. A role is named by its name, its public id (``rol_...``, what requests give)
or its internal id; a user by :data:`~portal.services.shared.refs.Ref`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from portal.domain.errors import Conflict, Forbidden, InvalidInput, NotFound
from portal.domain.ids import is_public_id
from portal.domain.permissions import ADMIN_ROLE, BUILT_IN_ROLES, ROLE_NAME, built_in_may_hold
from portal.domain.types import Actor
from portal.services.identity.users import (
    UserDetail,
    check_no_escalation,
    check_not_last_admin,
    is_printable,
    is_self,
    load_user,
    require,
    require_for_other,
    user_key,
)
from portal.services.shared import audit
from portal.services.shared.pagination import check_id
from portal.services.shared.refs import Ref
from portal.services.shared.uow import UnitOfWork

MAX_DESCRIPTION = 255


@dataclass(frozen=True, slots=True)
class RoleView:
    id: int
    public_id: str
    name: str
    description: str
    permissions: tuple[str, ...]
    archived: bool
    #: Active (not archived) users holding the role.
    user_count: int
    built_in: bool


@dataclass(frozen=True, slots=True)
class PermissionView:
    name: str
    description: str


_ROLE_COLUMNS = (
    "r.id, r.public_id, r.name, r.description, r.archived_at IS NOT NULL AS archived,"
    " ARRAY(SELECT p.name FROM role_permissions rp JOIN permissions p ON p.id = rp.permission_id"
    "  WHERE rp.role_id = r.id ORDER BY p.name) AS permissions,"
    " (SELECT count(*) FROM user_roles ur JOIN users usr ON usr.id = ur.user_id"
    "  AND usr.archived_at IS NULL WHERE ur.role_id = r.id) AS user_count"
)


def _view(row: sa.Row[Any]) -> RoleView:
    m = row._mapping
    return RoleView(
        id=m["id"], public_id=m["public_id"], name=m["name"], description=m["description"],
        permissions=tuple(m["permissions"]), archived=m["archived"], user_count=m["user_count"],
        built_in=m["name"] in BUILT_IN_ROLES,
    )  # fmt: skip


def _require_read(actor: Actor) -> None:
    if not (actor.can("users:read") or actor.can("roles:manage")):
        raise Forbidden("missing permission users:read")


def _role_key(role: int | str) -> tuple[str, int | str]:
    """A role's name, public id (``rol_...``; no name has that shape) or internal id."""
    if isinstance(role, str):
        return ("public_id" if is_public_id("role", role) else "name"), role
    return "id", check_id(role, "role")


def _find(u: UnitOfWork, role: int | str, *, lock: bool = False) -> RoleView:
    column, value = _role_key(role)
    # Lock first, then read in a new statement: under READ COMMITTED it sees (permissions,
    # holders) what a transaction we waited for committed.
    if lock:
        found = u.execute(
            f"SELECT id FROM roles WHERE {column} = :v FOR NO KEY UPDATE",  # nosec B608: the column is id, public_id or name (_role_key); values bound
            {"v": value},
        ).first()
        if found is None:
            raise NotFound("no such role", param="role")
        column, value = "id", found.id
    row = u.execute(f"SELECT {_ROLE_COLUMNS} FROM roles r WHERE r.{column} = :v", {"v": value})  # nosec B608: a constant column list; the column from _role_key; values bound
    found_row = row.first()
    if found_row is None:
        raise NotFound("no such role", param="role")
    return _view(found_row)


def _permission_id(u: UnitOfWork, permission: str, param: str = "permission") -> int:
    found = None
    if isinstance(permission, str):
        found = u.execute("SELECT id FROM permissions WHERE name = :n", {"n": permission}).scalar()
    if found is None:
        raise InvalidInput("unknown permission", param=param, code="unknown_permission")
    return int(found)


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not ROLE_NAME.fullmatch(name):
        raise InvalidInput(
            "a role name is 2 to 32 characters: a lowercase letter, then lowercase letters,"
            " digits, '_' or '-'", param="name",
        )  # fmt: skip
    if is_public_id("role", name):  # a role named in a path by such a name would be ambiguous
        raise InvalidInput("a role name cannot look like a role id (rol_...)", param="name")
    return name


def _check_description(description: str) -> str:
    text = description.strip() if isinstance(description, str) else None
    if text is None or len(text) > MAX_DESCRIPTION or not is_printable(text):
        raise InvalidInput(
            f"a description is at most {MAX_DESCRIPTION} characters", param="description"
        )
    return text


# -- reading ---------------------------------------------------------------------------------
def list_roles(
    uow: UnitOfWork, *, actor: Actor, include_archived: bool = False
) -> tuple[RoleView, ...]:
    """Every role by name (a short catalogue, not paged). Raises Forbidden (needs users:read)."""
    _require_read(actor)
    where = "" if include_archived else " WHERE r.archived_at IS NULL"
    return uow.run(
        lambda u: tuple(
            _view(r)
            for r in u.execute(f"SELECT {_ROLE_COLUMNS} FROM roles r{where} ORDER BY r.name")  # nosec B608: a constant column list and condition
        )
    )


def get_role(uow: UnitOfWork, *, actor: Actor, role: int | str) -> RoleView:
    """One role by name or id. Raises Forbidden (needs users:read), InvalidInput, NotFound."""
    _require_read(actor)
    _role_key(role)
    return uow.run(lambda u: _find(u, role))


def list_permissions(uow: UnitOfWork, *, actor: Actor) -> tuple[PermissionView, ...]:
    """Every permission by name. Raises Forbidden (needs users:read)."""
    _require_read(actor)
    return uow.run(
        lambda u: tuple(
            PermissionView(r.name, r.description)
            for r in u.execute("SELECT name, description FROM permissions ORDER BY name")
        )
    )


# -- the catalogue ---------------------------------------------------------------------------
def create_role(
    uow: UnitOfWork,
    *,
    actor: Actor,
    name: str,
    description: str = "",
    permissions: Sequence[str] = (),
) -> RoleView:
    """Create a role. Raises Forbidden (roles:manage; "privilege_escalation"), InvalidInput
    (name, description; "unknown_permission"), Conflict ("role_exists")."""
    require(actor, "roles:manage")
    name = _check_name(name)
    description = _check_description(description)
    if isinstance(permissions, str) or not all(isinstance(p, str) for p in permissions):
        raise InvalidInput("permissions is a list of names", param="permissions")
    wanted = sorted(set(permissions))

    def work(u: UnitOfWork) -> RoleView:
        ids = [_permission_id(u, p, "permissions") for p in wanted]
        check_no_escalation(actor, wanted)
        try:
            with u.session.begin_nested():
                role_id = u.execute(
                    "INSERT INTO roles (name, description, created_at)"
                    " VALUES (:name, :description, :now) RETURNING id",
                    {"name": name, "description": description, "now": u.now()},
                ).scalar_one()
        except IntegrityError as exc:
            raise Conflict(
                "a role with this name exists already", param="name", code="role_exists"
            ) from exc
        if ids:
            u.execute(
                sa.text("INSERT INTO role_permissions (role_id, permission_id) VALUES (:r, :p)"),
                [{"r": role_id, "p": p} for p in ids],
            )
        audit.record(
            u, actor, "role.create", "role", role_id,
            data={"name": name, "permissions": wanted},
        )  # fmt: skip
        return _find(u, role_id)

    return uow.run(work)


def rename_role(
    uow: UnitOfWork,
    *,
    actor: Actor,
    role: int | str,
    name: str | None = None,
    description: str | None = None,
) -> RoleView:
    """Rename a role or change its description (built-in roles keep their names). Raises
    Forbidden (roles:manage; "privilege_escalation"), InvalidInput, NotFound, Conflict
    ("built_in_role", "role_exists")."""
    require(actor, "roles:manage")
    _role_key(role)
    new_name = None if name is None else _check_name(name)
    new_description = None if description is None else _check_description(description)

    def work(u: UnitOfWork) -> RoleView:
        current = _find(u, role, lock=True)
        check_no_escalation(actor, current.permissions)
        changes: dict[str, str] = {}
        if new_name is not None and new_name != current.name:
            if current.built_in:
                raise Conflict(
                    "a built-in role cannot be renamed", param="name", code="built_in_role"
                )
            changes["name"] = new_name
        if new_description is not None and new_description != current.description:
            changes["description"] = new_description
        if not changes:
            return current
        try:
            with u.session.begin_nested():
                # One constant statement: a field not changed is bound as NULL and kept.
                u.execute(
                    "UPDATE roles SET name = COALESCE(CAST(:name AS text), name),"
                    " description = COALESCE(CAST(:description AS text), description)"
                    " WHERE id = :id",
                    {"name": changes.get("name"), "description": changes.get("description"),
                     "id": current.id},
                )  # fmt: skip
        except IntegrityError as exc:
            raise Conflict(
                "a role with this name exists already", param="name", code="role_exists"
            ) from exc
        data: dict[str, Any] = {"fields": sorted(changes)}
        before = {"name": current.name, "description": current.description}
        data.update(audit.diff({k: before[k] for k in changes}, changes))
        audit.record(u, actor, "role.update", "role", current.id, data=data)
        return _find(u, current.id)

    return uow.run(work)


def _set_archived(uow: UnitOfWork, actor: Actor, role: int | str, archived: bool) -> RoleView:
    require(actor, "roles:manage")
    _role_key(role)

    def work(u: UnitOfWork) -> RoleView:
        current = _find(u, role, lock=True)
        check_no_escalation(actor, current.permissions)
        if current.archived == archived:
            return current
        if current.built_in:
            raise Conflict("a built-in role cannot be archived", param="role", code="built_in_role")
        u.execute(
            "UPDATE roles SET archived_at = :at WHERE id = :id",
            {"at": u.now() if archived else None, "id": current.id},
        )
        action = "role.archive" if archived else "role.restore"
        audit.record(u, actor, action, "role", current.id, data={"name": current.name})
        return _find(u, current.id)

    return uow.run(work)


def archive_role(uow: UnitOfWork, *, actor: Actor, role: int | str) -> RoleView:
    """Archive a role: it grants nothing from now on, to anyone holding it. Raises Forbidden
    (roles:manage; "privilege_escalation"), InvalidInput, NotFound, Conflict ("built_in_role")."""
    return _set_archived(uow, actor, role, True)


def restore_role(uow: UnitOfWork, *, actor: Actor, role: int | str) -> RoleView:
    """Restore an archived role (its holders get its permissions back). Raises Forbidden
    (roles:manage; "privilege_escalation"), InvalidInput, NotFound."""
    return _set_archived(uow, actor, role, False)


def grant_permission(
    uow: UnitOfWork, *, actor: Actor, role: int | str, permission: str
) -> RoleView:
    """Give a role a permission. Raises Forbidden (roles:manage; "privilege_escalation"),
    InvalidInput ("unknown_permission"), NotFound, Conflict ("built_in_role": outside what a
    built-in role may hold)."""
    require(actor, "roles:manage")
    _role_key(role)

    def work(u: UnitOfWork) -> RoleView:
        current = _find(u, role, lock=True)
        permission_id = _permission_id(u, permission)
        check_no_escalation(actor, (permission,))
        if current.built_in and not built_in_may_hold(current.name, permission):
            raise Conflict(
                f"the built-in role {current.name} may not hold {permission}",
                param="permission", code="built_in_role",
            )  # fmt: skip
        added = u.execute(
            "INSERT INTO role_permissions (role_id, permission_id) VALUES (:r, :p)"
            " ON CONFLICT DO NOTHING RETURNING role_id",
            {"r": current.id, "p": permission_id},
        ).first()
        if added is None:
            return current
        had = sorted(current.permissions)
        audit.record(
            u, actor, "role.grant_permission", "role", current.id,
            data={"name": current.name, "permission": permission,
                  "permissions": {"from": had, "to": sorted(set(had) | {permission})}},
        )  # fmt: skip
        return _find(u, current.id)

    return uow.run(work)


def revoke_permission(
    uow: UnitOfWork, *, actor: Actor, role: int | str, permission: str
) -> RoleView:
    """Take a permission from a role (never from admin). Raises Forbidden (roles:manage;
    "privilege_escalation"), InvalidInput ("unknown_permission"), NotFound, Conflict
    ("built_in_role")."""
    require(actor, "roles:manage")
    _role_key(role)

    def work(u: UnitOfWork) -> RoleView:
        current = _find(u, role, lock=True)
        permission_id = _permission_id(u, permission)
        check_no_escalation(actor, (permission,))
        if current.name == ADMIN_ROLE:
            raise Conflict(
                "the admin role holds every permission", param="permission", code="built_in_role"
            )
        removed = u.execute(
            "DELETE FROM role_permissions WHERE role_id = :r AND permission_id = :p"
            " RETURNING role_id",
            {"r": current.id, "p": permission_id},
        ).first()
        if removed is None:
            return current
        had = sorted(current.permissions)
        audit.record(
            u, actor, "role.revoke_permission", "role", current.id,
            data={"name": current.name, "permission": permission,
                  "permissions": {"from": had, "to": sorted(set(had) - {permission})}},
        )  # fmt: skip
        return _find(u, current.id)

    return uow.run(work)


# -- who holds what --------------------------------------------------------------------------
def _check_assignment(actor: Actor, user_id: Ref) -> None:
    if is_self(actor, user_id):
        require(actor, "roles:manage")
    else:
        require_for_other(actor, "roles:manage")  # 404 to a caller who may not read users
    user_key(user_id)
    if is_self(actor, user_id):
        raise Forbidden(
            "you cannot change your own roles", param="user_id", code="cannot_change_own_roles"
        )


def _lock_user(u: UnitOfWork, actor: Actor, user_id: Ref) -> int:
    """Lock the user ``user_id`` names; their internal id. Raises NotFound, Forbidden (oneself,
    named by an id form the actor does not carry)."""
    column, value = user_key(user_id)
    found = u.execute(
        f"SELECT id FROM users WHERE {column} = :v FOR NO KEY UPDATE",  # nosec B608: the column is id or public_id (user_key); values bound
        {"v": value},
    ).first()
    if found is None:
        raise NotFound("no such user", param="user_id")
    if is_self(actor, found.id):
        raise Forbidden(
            "you cannot change your own roles", param="user_id", code="cannot_change_own_roles"
        )
    return int(found.id)


def _user(u: UnitOfWork, user_id: int) -> UserDetail:
    detail = load_user(u, user_id)
    assert detail is not None  # locked by this transaction
    return detail


def assign_role(uow: UnitOfWork, *, actor: Actor, user_id: Ref, role: int | str) -> UserDetail:
    """Give a user a role. Raises Forbidden (roles:manage; "cannot_change_own_roles",
    "privilege_escalation"), InvalidInput, NotFound (user or role), Conflict ("role_archived")."""
    _check_assignment(actor, user_id)
    _role_key(role)

    def work(u: UnitOfWork) -> UserDetail:
        uid = _lock_user(u, actor, user_id)
        current = _find(u, role)
        check_no_escalation(actor, current.permissions)
        if current.archived:
            raise Conflict("this role is archived", param="role", code="role_archived")
        added = u.execute(
            "INSERT INTO user_roles (user_id, role_id, created_at) VALUES (:u, :r, :now)"
            " ON CONFLICT DO NOTHING RETURNING role_id",
            {"u": uid, "r": current.id, "now": u.now()},
        ).first()
        detail = _user(u, uid)
        if added is not None:
            after = sorted(detail.roles)
            audit.record(
                u, actor, "user.assign_role", "user", uid,
                data={"role": current.name,
                      "roles": {"from": sorted(set(after) - {current.name}), "to": after}},
            )  # fmt: skip
        return detail

    return uow.run(work)


def remove_role(uow: UnitOfWork, *, actor: Actor, user_id: Ref, role: int | str) -> UserDetail:
    """Take a role from a user. Raises Forbidden (roles:manage; "cannot_change_own_roles",
    "privilege_escalation"), InvalidInput, NotFound (user or role), Conflict ("last_admin")."""
    _check_assignment(actor, user_id)
    _role_key(role)

    def work(u: UnitOfWork) -> UserDetail:
        uid = _lock_user(u, actor, user_id)
        current = _find(u, role)
        check_no_escalation(actor, current.permissions)
        if current.name == ADMIN_ROLE:
            check_not_last_admin(u, uid)
        removed = u.execute(
            "DELETE FROM user_roles WHERE user_id = :u AND role_id = :r RETURNING role_id",
            {"u": uid, "r": current.id},
        ).first()
        detail = _user(u, uid)
        if removed is not None:
            after = sorted(detail.roles)
            audit.record(
                u, actor, "user.remove_role", "user", uid,
                data={"role": current.name,
                      "roles": {"from": sorted(set(after) | {current.name}), "to": after}},
            )  # fmt: skip
        return detail

    return uow.run(work)
