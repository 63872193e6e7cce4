"""Roles and permissions: the catalogue administrators edit. A role in a path is named by its
name (``support``) or its public id (``rol_...``). Reading needs ``users:read`` or
``roles:manage`` (the services check it); every change needs ``roles:manage``, within the
services' guard rails (built-in roles keep their names and are never archived; nobody grants
more than they hold)."""

from __future__ import annotations

from typing import Annotated, Literal

from flask import request
from pydantic import Field

from portal.api import bp
from portal.api.operation import operation
from portal.api.pagination import ListQuery, ListResponse, cursor_field
from portal.api.schemas import ApiModel, RequestBody, RoleId
from portal.api.users import permission_ref, role_ref
from portal.domain.errors import Conflict, InvalidInput
from portal.domain.types import Actor
from portal.services.identity import roles as role_service
from portal.web.uow import make_uow


class Role(ApiModel):
    """A named set of permissions."""

    id: RoleId
    object: Literal["role"] = "role"
    name: str
    description: str
    permissions: list[str]
    archived: bool = Field(description="An archived role grants nothing to anyone holding it.")
    built_in: bool = Field(description="admin, support, merchant and cardholder.")
    user_count: int = Field(description="Active users holding the role.")

    @classmethod
    def of(cls, role: role_service.RoleView) -> Role:
        return cls(
            id=role.public_id,
            name=role.name,
            description=role.description,
            permissions=list(role.permissions),
            archived=role.archived,
            built_in=role.built_in,
            user_count=role.user_count,
        )


class RoleList(ListResponse[Role]):
    """Roles by name."""


class Permission(ApiModel):
    """Something a role lets its holders do, named ``<area>:<action>``."""

    object: Literal["permission"] = "permission"
    name: str = Field(examples=["users:read"])
    description: str


class PermissionList(ListResponse[Permission]):
    """Every permission by name (not paged)."""


class RoleListQuery(ListQuery):
    starting_after: str | None = cursor_field("role")
    include_archived: bool = Field(False, description="Also list archived roles.")


class NewRole(RequestBody):
    name: str = Field(
        max_length=32,
        description="2 to 32 characters: a lowercase letter, then lowercase letters, digits, "
        "'_' or '-'.",
        examples=["auditor"],
    )
    description: str = Field("", max_length=255)
    permissions: list[Annotated[str, Field(max_length=65)]] = Field(
        default_factory=list, max_length=100, examples=[["audit:read"]]
    )


class RoleUpdate(RequestBody):
    name: str | None = Field(None, max_length=32, description="Built-in roles keep their names.")
    description: str | None = Field(None, max_length=255)


@operation(
    bp,
    "GET",
    "/roles",
    summary="List roles",
    tags=["roles"],
    query=RoleListQuery,
    response=RoleList,
    operation_id="list_roles",
)
def list_roles(query: RoleListQuery, actor: Actor) -> RoleList:
    """Roles ordered by name (archived ones only with `include_archived`); `starting_after`
    takes a role's `rol_` id. Needs `users:read` or `roles:manage`."""
    found = role_service.list_roles(
        make_uow(), actor=actor, include_archived=query.include_archived
    )
    start = 0
    if query.starting_after is not None:
        ids = [r.public_id for r in found]
        if query.starting_after not in ids:
            raise InvalidInput("starting_after is not a known object id", param="starting_after")
        start = ids.index(query.starting_after) + 1
    page = found[start : start + query.limit]
    return RoleList(
        url=request.path,
        has_more=len(found) > start + query.limit,
        data=[Role.of(r) for r in page],
    )


@operation(
    bp,
    "POST",
    "/roles",
    summary="Create a role",
    tags=["roles"],
    permission="roles:manage",
    body=NewRole,
    response=Role,
    status=201,
    errors=(Conflict,),
    operation_id="create_role",
)
def create_role(body: NewRole, actor: Actor) -> Role:
    """A new role with these permissions (each of which the caller must hold). 409
    `role_exists`; 422 `unknown_permission`."""
    role = role_service.create_role(
        make_uow(), actor=actor, name=body.name, description=body.description,
        permissions=body.permissions,
    )  # fmt: skip
    return Role.of(role)


@operation(
    bp,
    "GET",
    "/roles/<role>",
    summary="Retrieve a role",
    tags=["roles"],
    response=Role,
    operation_id="get_role",
)
def get_role(role: str, actor: Actor) -> Role:
    """One role, by name or by its `rol_` id. Needs `users:read` or `roles:manage`."""
    return Role.of(role_service.get_role(make_uow(), actor=actor, role=role_ref(role)))


@operation(
    bp,
    "PATCH",
    "/roles/<role>",
    summary="Rename a role or change its description",
    tags=["roles"],
    permission="roles:manage",
    body=RoleUpdate,
    response=Role,
    errors=(Conflict,),
    operation_id="update_role",
)
def update_role(role: str, body: RoleUpdate, actor: Actor) -> Role:
    """A field left out stays as it is. 409 `built_in_role` (renaming a built-in role),
    `role_exists`."""
    updated = role_service.rename_role(
        make_uow(), actor=actor, role=role_ref(role), name=body.name, description=body.description
    )
    return Role.of(updated)


@operation(
    bp,
    "POST",
    "/roles/<role>/archive",
    summary="Archive a role",
    tags=["roles"],
    permission="roles:manage",
    response=Role,
    errors=(Conflict,),
    operation_id="archive_role",
)
def archive_role(role: str, actor: Actor) -> Role:
    """From now on the role grants nothing, to anyone holding it. 409 `built_in_role`."""
    return Role.of(role_service.archive_role(make_uow(), actor=actor, role=role_ref(role)))


@operation(
    bp,
    "POST",
    "/roles/<role>/restore",
    summary="Restore an archived role",
    tags=["roles"],
    permission="roles:manage",
    response=Role,
    operation_id="restore_role",
)
def restore_role(role: str, actor: Actor) -> Role:
    """Its holders get its permissions back."""
    return Role.of(role_service.restore_role(make_uow(), actor=actor, role=role_ref(role)))


@operation(
    bp,
    "PUT",
    "/roles/<role>/permissions/<permission>",
    summary="Give a role a permission",
    tags=["roles"],
    permission="roles:manage",
    response=Role,
    errors=(Conflict,),
    operation_id="grant_permission",
)
def grant_permission(role: str, permission: str, actor: Actor) -> Role:
    """Giving one it has changes nothing. 422 `unknown_permission`; 409 `built_in_role` (support
    stays read-only; merchant and cardholder hold only self-service permissions)."""
    updated = role_service.grant_permission(
        make_uow(), actor=actor, role=role_ref(role), permission=permission_ref(permission)
    )
    return Role.of(updated)


@operation(
    bp,
    "DELETE",
    "/roles/<role>/permissions/<permission>",
    summary="Take a permission from a role",
    tags=["roles"],
    permission="roles:manage",
    response=Role,
    errors=(Conflict,),
    operation_id="revoke_permission",
)
def revoke_permission(role: str, permission: str, actor: Actor) -> Role:
    """Taking one it lacks changes nothing. 422 `unknown_permission`; 409 `built_in_role` (admin
    holds every permission)."""
    updated = role_service.revoke_permission(
        make_uow(), actor=actor, role=role_ref(role), permission=permission_ref(permission)
    )
    return Role.of(updated)


@operation(
    bp,
    "GET",
    "/permissions",
    summary="List permissions",
    tags=["roles"],
    response=PermissionList,
    operation_id="list_permissions",
)
def list_permissions(actor: Actor) -> PermissionList:
    """Every permission there is. Needs `users:read` or `roles:manage`."""
    found = role_service.list_permissions(make_uow(), actor=actor)
    return PermissionList(
        url=request.path,
        has_more=False,
        data=[Permission(name=p.name, description=p.description) for p in found],
    )
