"""Roles and permissions: the seeded RBAC, the catalogue (create, rename, archive, restore,
grant, revoke), assignments, and the guard rails (built-ins, last admin, own roles,
privilege escalation), each with its audit event."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from portal.domain import permissions as domain
from portal.domain.errors import Conflict, Forbidden, InvalidInput, NotFound
from portal.domain.types import Actor
from portal.services.identity import roles, users
from portal.services.shared.pagination import MAX_ID
from portal.services.shared.uow import UnitOfWork
from tests.concurrency.helpers import run_together
from tests.conftest import SYSTEM, Factory


def sql(uow, statement: str, **params):
    return uow.run(lambda u: u.execute(statement, params).all())


def events(uow, action: str, subject_type: str, subject_id: int) -> list:
    return sql(
        uow,
        "SELECT actor_kind, actor_id, data FROM audit_events WHERE action = :action"
        " AND subject_type = :type AND subject_id = :id ORDER BY id",
        action=action,
        type=subject_type,
        id=subject_id,
    )


def seeded(uow) -> dict[str, set[str]]:
    rows = sql(
        uow,
        "SELECT r.name AS role, p.name AS permission FROM roles r"
        " JOIN role_permissions rp ON rp.role_id = r.id"
        " JOIN permissions p ON p.id = rp.permission_id",
    )
    found: dict[str, set[str]] = {}
    for row in rows:
        found.setdefault(row.role, set()).add(row.permission)
    return found


@pytest.fixture
def admin(make) -> Actor:
    return make.user(roles=("admin",))


@pytest.fixture
def support(make) -> Actor:
    return make.user(roles=("support",))


@pytest.fixture
def alice(make) -> Actor:
    return make.user(first_name="Alice")


@pytest.fixture
def auditor(uow) -> roles.RoleView:
    return roles.create_role(
        uow, actor=SYSTEM, name="auditor", description="Reads the audit log",
        permissions=("audit:read", "users:read"),
    )  # fmt: skip


@pytest.fixture
def role_manager(uow, make) -> Actor:
    """Can manage roles, but holds few permissions of its own."""
    roles.create_role(
        uow, actor=SYSTEM, name="role-manager", permissions=("roles:manage", "users:read")
    )
    return make.user(roles=("role-manager",))


# -- the seeded RBAC -------------------------------------------------------------------------
def test_admin_holds_everything_support_has_and_indeed_every_permission(uow):
    found = seeded(uow)
    everything = {r.name for r in sql(uow, "SELECT name FROM permissions")}
    assert found["admin"] >= found["support"]
    assert found["admin"] == everything
    assert "ledger:adjust" in everything


def test_support_has_only_read_permissions(uow):
    support = seeded(uow)["support"]
    assert support
    assert all(p.endswith(":read") for p in support)
    assert {"users:read", "cards:read", "money:read", "audit:read"} <= support


def test_self_registration_gives_only_wallet_use(uow):
    found = seeded(uow)
    assert domain.SELF_REGISTRATION_ROLE == "cardholder"
    assert found["cardholder"] == {"wallet:use"}
    assert found["merchant"] == {"merchant:use"}


def test_the_domain_catalogue_mirrors_the_database(uow):
    rows = sql(uow, "SELECT name, description FROM permissions")
    assert {r.name: r.description for r in rows} == domain.PERMISSIONS
    found = seeded(uow)
    assert {role: set(perms) for role, (_, perms) in domain.ROLES.items()} == {
        role: found[role] for role in domain.ROLES
    }


# -- reading ---------------------------------------------------------------------------------
def test_staff_list_roles_with_permissions_and_holders(uow, support, admin, make):
    make.user(roles=("merchant",))
    archived_holder = make.user(roles=("merchant",))
    users.archive_user(uow, actor=admin, user_id=archived_holder.id)
    listed = {r.name: r for r in roles.list_roles(uow, actor=support)}
    assert set(listed) >= domain.BUILT_IN_ROLES
    assert listed["merchant"].permissions == ("merchant:use",)
    assert listed["merchant"].user_count == 1  # the archived holder is not counted
    assert listed["admin"].built_in and listed["admin"].user_count == 1
    assert not listed["support"].archived
    assert roles.get_role(uow, actor=support, role="merchant") == listed["merchant"]
    assert roles.get_role(uow, actor=support, role=listed["merchant"].id) == listed["merchant"]


def test_list_permissions(uow, support):
    listed = roles.list_permissions(uow, actor=support)
    assert [p.name for p in listed] == sorted(domain.PERMISSIONS)
    assert {p.name: p.description for p in listed} == domain.PERMISSIONS


@pytest.mark.parametrize("role", [("cardholder",), ("merchant",)])
def test_non_staff_cannot_read_roles_or_permissions(uow, make, role):
    actor = make.user(roles=role)
    for read in (roles.list_roles, roles.list_permissions):
        with pytest.raises(Forbidden):
            read(uow, actor=actor)
    with pytest.raises(Forbidden):
        roles.get_role(uow, actor=actor, role="admin")


def test_get_role_missing_or_malformed(uow, support):
    with pytest.raises(NotFound) as err:
        roles.get_role(uow, actor=support, role="nope")
    assert err.value.param == "role"
    with pytest.raises(InvalidInput):
        roles.get_role(uow, actor=support, role=0)
    with pytest.raises(NotFound):
        roles.get_role(uow, actor=support, role=MAX_ID)


# -- create ----------------------------------------------------------------------------------
def test_create_role(uow, admin):
    view = roles.create_role(
        uow, actor=admin, name="fraud-team_2", description="  Freezes cards  ",
        permissions=("cards:manage", "cards:read", "cards:read"),
    )  # fmt: skip
    assert (view.name, view.description) == ("fraud-team_2", "Freezes cards")
    assert view.permissions == ("cards:manage", "cards:read")
    assert (view.archived, view.user_count, view.built_in) == (False, 0, False)
    [event] = events(uow, "role.create", "role", view.id)
    assert event.actor_id == admin.id
    assert event.data == {"name": "fraud-team_2", "permissions": ["cards:manage", "cards:read"]}
    assert roles.create_role(uow, actor=admin, name="ab").permissions == ()
    assert roles.create_role(uow, actor=admin, name="a" + "b" * 31).name == "a" + "b" * 31


@pytest.mark.parametrize(
    "name", ["a", "Admin", "1team", "_team", "team name", "team.x", "a" + "b" * 32, "", "tëam"]
)
def test_role_names_are_lowercase_identifiers(uow, admin, name):
    with pytest.raises(InvalidInput) as err:
        roles.create_role(uow, actor=admin, name=name)
    assert err.value.param == "name"


def test_create_role_refusals(uow, admin, support, auditor):
    with pytest.raises(Conflict) as err:
        roles.create_role(uow, actor=admin, name="auditor")
    assert (err.value.code, err.value.param) == ("role_exists", "name")
    with pytest.raises(InvalidInput) as err:
        roles.create_role(uow, actor=admin, name="newrole", permissions=("users:write",))
    assert (err.value.code, err.value.param) == ("unknown_permission", "permissions")
    with pytest.raises(InvalidInput) as err:
        roles.create_role(uow, actor=admin, name="newrole", description="x" * 256)
    assert err.value.param == "description"
    with pytest.raises(Forbidden):
        roles.create_role(uow, actor=support, name="newrole")
    assert [r.name for r in roles.list_roles(uow, actor=admin)].count("newrole") == 0


# -- rename ----------------------------------------------------------------------------------
def test_rename_role_and_change_its_description(uow, admin, auditor):
    view = roles.rename_role(uow, actor=admin, role="auditor", name="auditors")
    assert (view.id, view.name) == (auditor.id, "auditors")
    view = roles.rename_role(uow, actor=admin, role=auditor.id, description="Reads the log")
    assert view.description == "Reads the log"
    roles.rename_role(uow, actor=admin, role=auditor.id, name="auditors")  # no change
    changes = [e.data for e in events(uow, "role.update", "role", auditor.id)]
    assert changes == [
        {"fields": ["name"], "name": {"from": "auditor", "to": "auditors"}},
        {
            "fields": ["description"],
            "description": {"from": "Reads the audit log", "to": "Reads the log"},
        },
    ]


def test_built_in_roles_keep_their_names_but_may_change_descriptions(uow, admin):
    for name in domain.BUILT_IN_ROLES:
        with pytest.raises(Conflict) as err:
            roles.rename_role(uow, actor=admin, role=name, name=f"{name}-x")
        assert err.value.code == "built_in_role"
    view = roles.rename_role(uow, actor=admin, role="support", description="Help desk")
    assert (view.name, view.description) == ("support", "Help desk")


def test_rename_refusals(uow, admin, support, auditor):
    with pytest.raises(Conflict) as err:
        roles.rename_role(uow, actor=admin, role="auditor", name="support")
    assert err.value.code == "role_exists"
    with pytest.raises(NotFound):
        roles.rename_role(uow, actor=admin, role="ghost", name="ghosts")
    with pytest.raises(Forbidden):
        roles.rename_role(uow, actor=support, role="auditor", name="watchers")
    assert roles.get_role(uow, actor=admin, role=auditor.id).name == "auditor"


# -- archive and restore ---------------------------------------------------------------------
def test_an_archived_role_grants_nothing_at_once(uow, admin, make, auditor):
    holder = make.user(roles=("auditor", "cardholder"))
    assert users.actor_for(uow, holder.id).can("audit:read")
    view = roles.archive_role(uow, actor=admin, role="auditor")
    assert view.archived
    actor = users.actor_for(uow, holder.id)
    assert not actor.can("audit:read") and not actor.can("users:read")
    assert actor.can("wallet:use")  # other roles still grant
    detail = users.get_user(uow, actor=admin, user_id=holder.id)
    assert detail.permissions == ("wallet:use",)
    assert "auditor" in detail.roles  # still assigned, granting nothing
    with pytest.raises(Forbidden):
        users.list_users(uow, actor=actor)
    assert "auditor" not in [r.name for r in roles.list_roles(uow, actor=admin)]
    assert "auditor" in [r.name for r in roles.list_roles(uow, actor=admin, include_archived=True)]
    roles.archive_role(uow, actor=admin, role="auditor")  # again: no change, no event
    restored = roles.restore_role(uow, actor=admin, role=auditor.id)
    assert not restored.archived
    assert users.actor_for(uow, holder.id).can("audit:read")
    assert len(events(uow, "role.archive", "role", auditor.id)) == 1
    assert len(events(uow, "role.restore", "role", auditor.id)) == 1


def test_built_in_roles_cannot_be_archived(uow, admin):
    for name in domain.BUILT_IN_ROLES:
        with pytest.raises(Conflict) as err:
            roles.archive_role(uow, actor=admin, role=name)
        assert err.value.code == "built_in_role"


def test_an_archived_role_cannot_be_assigned(uow, admin, alice, auditor):
    roles.archive_role(uow, actor=admin, role="auditor")
    with pytest.raises(Conflict) as err:
        roles.assign_role(uow, actor=admin, user_id=alice.id, role="auditor")
    assert err.value.code == "role_archived"


def test_archive_and_restore_need_roles_manage(uow, support, auditor):
    with pytest.raises(Forbidden):
        roles.archive_role(uow, actor=support, role="auditor")
    with pytest.raises(Forbidden):
        roles.restore_role(uow, actor=support, role="auditor")


# -- grant and revoke ------------------------------------------------------------------------
def test_grant_and_revoke_permissions(uow, admin, make, auditor):
    holder = make.user(roles=("auditor",))
    view = roles.grant_permission(uow, actor=admin, role="auditor", permission="stats:read")
    assert "stats:read" in view.permissions
    assert users.actor_for(uow, holder.id).can("stats:read")
    roles.grant_permission(uow, actor=admin, role="auditor", permission="stats:read")  # no-op
    view = roles.revoke_permission(uow, actor=admin, role=auditor.id, permission="audit:read")
    assert view.permissions == ("stats:read", "users:read")
    assert not users.actor_for(uow, holder.id).can("audit:read")
    roles.revoke_permission(uow, actor=admin, role=auditor.id, permission="audit:read")  # no-op
    [grant] = events(uow, "role.grant_permission", "role", auditor.id)
    [revoke] = events(uow, "role.revoke_permission", "role", auditor.id)
    assert grant.data == {
        "name": "auditor", "permission": "stats:read",
        "permissions": {"from": ["audit:read", "users:read"],
                        "to": ["audit:read", "stats:read", "users:read"]},
    }  # fmt: skip
    assert revoke.data == {
        "name": "auditor", "permission": "audit:read",
        "permissions": {"from": ["audit:read", "stats:read", "users:read"],
                        "to": ["stats:read", "users:read"]},
    }  # fmt: skip


def test_permission_names_must_exist(uow, admin, auditor):
    for change in (roles.grant_permission, roles.revoke_permission):
        with pytest.raises(InvalidInput) as err:
            change(uow, actor=admin, role="auditor", permission="ledger:rewrite")
        assert (err.value.code, err.value.param) == ("unknown_permission", "permission")
    with pytest.raises(NotFound):
        roles.grant_permission(uow, actor=admin, role="ghost", permission="audit:read")


def test_built_in_roles_stay_within_their_bounds(uow, admin):
    refused = [
        ("support", "users:manage"),
        ("support", "ledger:adjust"),
        ("cardholder", "users:read"),
        ("cardholder", "money:manage"),
        ("merchant", "merchants:manage"),
    ]
    for role, permission in refused:
        with pytest.raises(Conflict) as err:
            roles.grant_permission(uow, actor=admin, role=role, permission=permission)
        assert err.value.code == "built_in_role"
    with pytest.raises(Conflict) as err:
        roles.revoke_permission(uow, actor=admin, role="admin", permission="roles:manage")
    assert err.value.code == "built_in_role"
    # Within bounds, built-in roles are editable (and support stays a subset of admin).
    roles.grant_permission(uow, actor=admin, role="merchant", permission="wallet:use")
    roles.revoke_permission(uow, actor=admin, role="support", permission="stats:read")
    roles.grant_permission(uow, actor=admin, role="support", permission="stats:read")
    found = seeded(uow)
    assert found["admin"] >= found["support"]
    assert found["merchant"] == {"merchant:use", "wallet:use"}


def test_grant_and_revoke_need_roles_manage(uow, support, auditor):
    for change in (roles.grant_permission, roles.revoke_permission):
        with pytest.raises(Forbidden):
            change(uow, actor=support, role="auditor", permission="audit:read")


# -- assignments -----------------------------------------------------------------------------
def test_assign_and_remove_a_role(uow, admin, alice, auditor):
    detail = roles.assign_role(uow, actor=admin, user_id=alice.id, role="auditor")
    assert detail.roles == ("auditor", "cardholder")
    assert "audit:read" in detail.permissions
    assert users.actor_for(uow, alice.id).can("audit:read")
    roles.assign_role(uow, actor=admin, user_id=alice.id, role=auditor.id)  # no-op
    detail = roles.remove_role(uow, actor=admin, user_id=alice.id, role="auditor")
    assert detail.roles == ("cardholder",)
    assert not users.actor_for(uow, alice.id).can("audit:read")
    roles.remove_role(uow, actor=admin, user_id=alice.id, role="auditor")  # no-op
    [assigned] = events(uow, "user.assign_role", "user", alice.id)
    [removed] = events(uow, "user.remove_role", "user", alice.id)
    assert (assigned.actor_id, assigned.data) == (admin.id, {
        "role": "auditor", "roles": {"from": ["cardholder"], "to": ["auditor", "cardholder"]},
    })  # fmt: skip
    assert removed.data == {
        "role": "auditor", "roles": {"from": ["auditor", "cardholder"], "to": ["cardholder"]},
    }  # fmt: skip


def test_nobody_changes_their_own_roles(uow, admin):
    for change in (roles.assign_role, roles.remove_role):
        with pytest.raises(Forbidden) as err:
            change(uow, actor=admin, user_id=admin.id, role="support")
        assert err.value.code == "cannot_change_own_roles"


@pytest.mark.parametrize("actor_name", ["support", "alice"])
def test_assignments_need_roles_manage(uow, request, make, actor_name):
    actor = request.getfixturevalue(actor_name)
    target = make.user()
    for change in (roles.assign_role, roles.remove_role):
        # Support may read users (403); a cardholder may not know the target exists (404).
        with pytest.raises(Forbidden if actor_name == "support" else NotFound):
            change(uow, actor=actor, user_id=target.id, role="support")
    assert users.actor_for(uow, target.id).permissions == {"wallet:use"}


def test_assignment_to_missing_user_or_role(uow, admin, alice):
    with pytest.raises(NotFound) as err:
        roles.assign_role(uow, actor=admin, user_id=MAX_ID, role="support")
    assert err.value.param == "user_id"
    with pytest.raises(NotFound) as err:
        roles.assign_role(uow, actor=admin, user_id=alice.id, role="ghost")
    assert err.value.param == "role"
    with pytest.raises(InvalidInput):
        roles.remove_role(uow, actor=admin, user_id=0, role="support")


# -- the last administrator ------------------------------------------------------------------
def test_the_last_active_administrator_keeps_the_admin_role(uow, admin, make):
    assert seeded(uow)["admin"]  # sanity: the role exists
    with pytest.raises(Conflict) as err:
        roles.remove_role(uow, actor=SYSTEM, user_id=admin.id, role="admin")
    assert err.value.code == "last_admin"
    second = make.user(roles=("admin",))
    roles.remove_role(uow, actor=admin, user_id=second.id, role="admin")  # one may go
    roles.assign_role(uow, actor=admin, user_id=second.id, role="admin")
    users.archive_user(uow, actor=second, user_id=admin.id)
    with pytest.raises(Conflict) as err:  # the archived admin does not count
        roles.remove_role(uow, actor=SYSTEM, user_id=second.id, role="admin")
    assert err.value.code == "last_admin"
    assert "admin" in users.get_user(uow, actor=SYSTEM, user_id=second.id).roles


# -- privilege escalation --------------------------------------------------------------------
def test_a_role_manager_grants_and_assigns_only_what_they_hold(uow, role_manager, admin, alice):
    with pytest.raises(Forbidden) as err:
        roles.create_role(uow, actor=role_manager, name="mighty", permissions=("users:manage",))
    assert err.value.code == "privilege_escalation"
    mine = roles.create_role(uow, actor=role_manager, name="viewers", permissions=("users:read",))
    with pytest.raises(Forbidden) as err:
        roles.grant_permission(uow, actor=role_manager, role=mine.id, permission="money:manage")
    assert err.value.code == "privilege_escalation"
    with pytest.raises(Forbidden) as err:
        roles.grant_permission(
            uow, actor=role_manager, role="role-manager", permission="users:manage"
        )
    assert err.value.code == "privilege_escalation"
    for change in (roles.assign_role, roles.remove_role):
        with pytest.raises(Forbidden) as err:
            change(uow, actor=role_manager, user_id=admin.id, role="admin")
        assert err.value.code == "privilege_escalation"
    with pytest.raises(Forbidden) as err:
        roles.assign_role(uow, actor=role_manager, user_id=alice.id, role="support")
    assert err.value.code == "privilege_escalation"
    # Within its reach it works; self-service permissions give no power over others.
    roles.assign_role(uow, actor=role_manager, user_id=alice.id, role="viewers")
    roles.assign_role(uow, actor=role_manager, user_id=alice.id, role="merchant")
    assert set(users.get_user(uow, actor=admin, user_id=alice.id).roles) == {
        "cardholder",
        "merchant",
        "viewers",
    }


def test_admin_and_the_system_act_on_every_role(uow, admin, alice, auditor):
    roles.assign_role(uow, actor=admin, user_id=alice.id, role="support")
    roles.assign_role(uow, actor=SYSTEM, user_id=alice.id, role="auditor")
    assert {"support", "auditor"} <= set(users.get_user(uow, actor=admin, user_id=alice.id).roles)


# -- concurrency: two administrators demoting each other at once -----------------------------
@pytest.mark.concurrency
def test_two_admins_demoting_each_other_at_once_leave_one_admin(
    real_uow: Callable[[], UnitOfWork], committing_engine: sa.Engine
) -> None:
    make = Factory(real_uow())
    for _ in range(10):
        first, second = make.user(roles=("admin",)), make.user(roles=("admin",))
        with committing_engine.begin() as conn:  # only these two are administrators
            conn.execute(
                sa.text(
                    "DELETE FROM user_roles WHERE user_id <> ALL(:ids) AND role_id ="
                    " (SELECT id FROM roles WHERE name = 'admin')"
                ),
                {"ids": [first.id, second.id]},
            )
        pairs = [(first, second), (second, first)]

        def demote(i: int, pairs=pairs) -> object:
            actor, target = pairs[i]
            return roles.remove_role(real_uow(), actor=actor, user_id=target.id, role="admin")

        outcomes = run_together(2, demote)
        kinds = Counter(
            "ok" if o.error is None else getattr(o.error, "code", repr(o.error)) for o in outcomes
        )
        assert kinds == Counter({"ok": 1, "last_admin": 1})
        with committing_engine.connect() as conn:
            left = conn.execute(
                sa.text(
                    "SELECT count(*) FROM user_roles ur JOIN roles r ON r.id = ur.role_id"
                    " WHERE r.name = 'admin' AND ur.user_id = ANY(:ids)"
                ),
                {"ids": [first.id, second.id]},
            ).scalar_one()
        assert left == 1
