"""The console's people pages: roles as a paged table, a role's holders, deleting a role for
good, and the version a user's or role's detail page polls to learn it changed.

Users are listed, archived, restored and deleted by ``identity.users`` and roles changed by
``identity.roles``: this module only adds what those lack.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from portal.domain.errors import Conflict, InvalidInput, NotFound
from portal.domain.types import Actor
from portal.services.identity import roles
from portal.services.identity.users import check_no_escalation, is_printable, require, user_key
from portal.services.shared import audit
from portal.services.shared.pagination import (
    Page,
    check_cursor,
    check_limit,
    like_pattern,
    newest_first,
)
from portal.services.shared.refs import Ref
from portal.services.shared.uow import UnitOfWork

MAX_SEARCH = 100


@dataclass(frozen=True, slots=True)
class Holder:
    """A user holding a role, as the role's page lists them."""

    public_id: str
    email: str
    name: str
    archived: bool


@dataclass(frozen=True, slots=True)
class RoleDeleted:
    id: int
    public_id: str
    name: str


def _require_read(actor: Actor) -> None:
    if not (actor.can("users:read") or actor.can("roles:manage")):
        require(actor, "users:read")


def check_search(search: str | None) -> str | None:
    """A search term, trimmed (None when empty). Raises InvalidInput (param "search")."""
    if search is None:
        return None
    term = search.strip() if isinstance(search, str) else None
    if term is None or len(term) > MAX_SEARCH or not is_printable(term):
        raise InvalidInput(f"search is at most {MAX_SEARCH} characters", param="search")
    return term or None


def list_roles(
    uow: UnitOfWork,
    *,
    actor: Actor,
    search: str | None = None,
    archived: bool = False,
    limit: int | None = 25,
    starting_after: Ref | None = None,
) -> Page[roles.RoleView]:
    """Roles, newest first, live or archived; ``search`` matches name or description. Raises
    Forbidden (needs users:read), InvalidInput (limit, starting_after, search)."""
    _require_read(actor)
    size = check_limit(limit)
    after = check_cursor(starting_after, "role")
    term = check_search(search)
    where = ["r.archived_at IS NOT NULL" if archived else "r.archived_at IS NULL"]
    params: dict[str, Any] = {}
    if term:
        where.append("r.name ILIKE :q ESCAPE '\\' OR r.description ILIKE :q ESCAPE '\\'")
        params["q"] = like_pattern(term)
    select = f"SELECT {roles._ROLE_COLUMNS} FROM roles r"  # nosec B608: a constant column list
    return uow.run(
        lambda u: newest_first(
            u,
            select=select,
            table="roles",
            alias="r",
            convert=roles._view,
            limit=size,
            starting_after=after,
            kind="role",
            where=where,
            params=params,
        )  # fmt: skip
    )


def role_holders(
    uow: UnitOfWork, *, actor: Actor, role: int | str, limit: int = 50
) -> tuple[tuple[Holder, ...], int]:
    """The first ``limit`` users holding a role (newest first) and how many hold it in all,
    archived users included. Raises Forbidden, InvalidInput, NotFound."""
    _require_read(actor)
    found = roles.get_role(uow, actor=actor, role=role)
    rows = uow.read(
        "SELECT u.public_id, u.email, u.first_name || ' ' || u.last_name AS name,"
        " u.archived_at IS NOT NULL AS archived, count(*) OVER () AS total"
        " FROM user_roles ur JOIN users u ON u.id = ur.user_id WHERE ur.role_id = :r"
        " ORDER BY u.created_at DESC, u.id DESC LIMIT :n",
        {"r": found.id, "n": limit},
    )
    total = rows[0].total if rows else 0
    return tuple(Holder(r.public_id, r.email, r.name, r.archived) for r in rows), total


def delete_role(uow: UnitOfWork, *, actor: Actor, role: int | str) -> RoleDeleted:
    """Delete a role for good, with its permission links. Only a custom role nobody holds (an
    archived user counts: a restore would give it back). Raises Forbidden (roles:manage;
    "privilege_escalation"), InvalidInput, NotFound, Conflict ("built_in_role",
    "role_in_use")."""
    require(actor, "roles:manage")
    roles._role_key(role)

    def work(u: UnitOfWork) -> RoleDeleted:
        current = roles._find(u, role, lock=True)
        check_no_escalation(actor, current.permissions)
        if current.built_in:
            raise Conflict("a built-in role cannot be deleted", param="role", code="built_in_role")
        held = u.execute(
            "SELECT count(*) FROM user_roles WHERE role_id = :r", {"r": current.id}
        ).scalar_one()
        if held:
            raise Conflict(
                f"{held} user{'s' if held != 1 else ''} still hold{'s' if held == 1 else ''}"
                " this role: take it from them first", param="role", code="role_in_use",
            )  # fmt: skip
        u.execute("DELETE FROM roles WHERE id = :id", {"id": current.id})
        audit.record(
            u, actor, "role.delete", "role", current.id,
            data={"name": current.name, "permissions": list(current.permissions)},
        )  # fmt: skip
        return RoleDeleted(current.id, current.public_id, current.name)

    return uow.run(work)


def role_version(uow: UnitOfWork, *, actor: Actor, role: int | str) -> str:
    """What changes when a role's console page would: its row (archiving, a rename), its
    permissions and holders, its audit trail. Raises Forbidden, InvalidInput, NotFound."""
    _require_read(actor)
    found = roles.get_role(uow, actor=actor, role=role)
    row = uow.read(
        "SELECT coalesce(max(id), 0) AS last FROM audit_events"
        " WHERE subject_type = 'role' AND subject_id = :i",
        {"i": found.id},
    )[0]
    return f"{row.last}-{int(found.archived)}-{len(found.permissions)}-{found.user_count}"


def user_version(uow: UnitOfWork, *, actor: Actor, user_id: Ref) -> str:
    """What changes when a user's detail page would: their row, their cards (the change
    counter), their live sessions, their audit trail. Raises Forbidden (users:read),
    NotFound."""
    require(actor, "users:read")
    column, value = user_key(user_id)
    rows = uow.read(
        "SELECT u.updated_at, u.change_version,"  # nosec B608: the column is id or public_id (user_key); values bound
        " (SELECT coalesce(max(e.id), 0) FROM audit_events e WHERE e.subject_type = 'user'"
        "  AND e.subject_id = u.id) AS last_event,"
        " (SELECT count(*) FROM web_sessions s WHERE s.user_id = u.id AND s.revoked_at IS NULL)"
        "  AS sessions"
        f" FROM users u WHERE u.{column} = :v",
        {"v": value},
    )
    if not rows:
        raise NotFound("no such user", param="user_id")
    r = rows[0]
    return f"{r.last_event}-{r.change_version}-{r.sessions}-{r.updated_at.timestamp():.0f}"
