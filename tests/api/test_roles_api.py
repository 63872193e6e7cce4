"""The roles API: the catalogue of roles and permissions, who may read and change it, the guard
rails the services keep, and what an archived role stops granting."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from portal.domain.ids import is_public_id
from portal.domain.permissions import PERMISSIONS
from portal.services.identity import roles
from portal.services.shared.uow import UnitOfWork
from tests.api.test_auth_api import API, bearer, cardholder, client_for, error_of, person, token_for
from tests.conftest import SYSTEM


@pytest.fixture
def api(app: Flask, connection: Any) -> FlaskClient:
    return client_for(app)


@pytest.fixture
def as_admin(uow: UnitOfWork) -> dict[str, str]:
    return bearer(token_for(uow, person(uow, "admin")))


@pytest.fixture
def as_support(uow: UnitOfWork) -> dict[str, str]:
    return bearer(token_for(uow, person(uow, "support")))


@pytest.fixture
def as_holder(uow: UnitOfWork) -> dict[str, str]:
    return bearer(token_for(uow, cardholder(uow)))


def role_name() -> str:
    return f"r-{uuid.uuid4().hex[:10]}"


def create(api: FlaskClient, auth: dict[str, str], **body: Any) -> dict[str, Any]:
    response = api.post(f"{API}/roles", json={"name": role_name(), **body}, headers=auth)
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()  # type: ignore[no-any-return]


# -- reading ------------------------------------------------------------------------------------
def test_list_roles(
    api: FlaskClient, as_support: dict[str, str], as_holder: dict[str, str], uow: UnitOfWork
) -> None:
    archived = roles.create_role(uow, actor=SYSTEM, name=role_name())
    roles.archive_role(uow, actor=SYSTEM, role=archived.id)

    response = api.get(f"{API}/roles?limit=100", headers=as_support)
    everything = api.get(f"{API}/roles?limit=100&include_archived=true", headers=as_support)
    refused = error_of(api.get(f"{API}/roles", headers=as_holder), 403)

    assert response.status_code == 200
    body = response.get_json()
    assert (body["object"], body["url"], body["has_more"]) == ("list", f"{API}/roles", False)
    names = [r["name"] for r in body["data"]]
    assert names == sorted(names)
    assert {"admin", "support", "merchant", "cardholder"} <= set(names)
    assert archived.name not in names
    assert archived.name in [r["name"] for r in everything.get_json()["data"]]
    support = next(r for r in body["data"] if r["name"] == "support")
    assert (support["object"], support["built_in"], support["archived"]) == ("role", True, False)
    assert all(p.endswith(":read") for p in support["permissions"])
    assert isinstance(support["user_count"], int) and support["user_count"] >= 1
    assert refused["code"] == "forbidden"


def test_list_roles_pages_by_role_id(api: FlaskClient, as_support: dict[str, str]) -> None:
    everything = api.get(f"{API}/roles?limit=100", headers=as_support).get_json()["data"]
    seen: list[str] = []
    cursor = ""
    while True:
        page = api.get(f"{API}/roles?limit=2{cursor}", headers=as_support).get_json()
        seen += [r["name"] for r in page["data"]]
        if not page["has_more"]:
            break
        cursor = f"&starting_after={page['data'][-1]['id']}"

    assert seen == [r["name"] for r in everything]
    for cursor in ("987654321", "usr_" + "0" * 24, "rol_" + "0" * 24):
        error = error_of(api.get(f"{API}/roles?starting_after={cursor}", headers=as_support), 422)
        assert error["param"] == "starting_after"


def test_read_a_role_by_name_or_id(
    api: FlaskClient, as_support: dict[str, str], as_holder: dict[str, str]
) -> None:
    by_name = api.get(f"{API}/roles/admin", headers=as_support)
    by_id = api.get(f"{API}/roles/{by_name.get_json()['id']}", headers=as_support)

    assert by_name.status_code == 200
    assert is_public_id("role", by_name.get_json()["id"])
    assert by_id.get_json() == by_name.get_json()
    assert set(by_name.get_json()["permissions"]) == set(PERMISSIONS)
    for missing in ("no-such-role", "Bad%20Name", "0", "99999999999999999999", "987654321", "x",
                    "rol_" + "0" * 24):  # fmt: skip
        error = error_of(api.get(f"{API}/roles/{missing}", headers=as_support), 404)
        assert error["param"] == "role"
    error_of(api.get(f"{API}/roles/admin", headers=as_holder), 403)


def test_list_permissions(
    api: FlaskClient, as_support: dict[str, str], as_holder: dict[str, str]
) -> None:
    response = api.get(f"{API}/permissions", headers=as_support)

    assert response.status_code == 200
    body = response.get_json()
    assert (body["object"], body["has_more"]) == ("list", False)
    assert {p["name"]: p["description"] for p in body["data"]} == PERMISSIONS
    assert {p["object"] for p in body["data"]} == {"permission"}
    assert error_of(api.get(f"{API}/permissions", headers=as_holder), 403)["code"] == "forbidden"


# -- changing the catalogue ---------------------------------------------------------------------
def test_create_a_role(
    api: FlaskClient, as_admin: dict[str, str], as_support: dict[str, str]
) -> None:
    name = role_name()
    body = {"name": name, "description": " Reads the audit log ", "permissions": ["audit:read"]}

    forbidden = error_of(api.post(f"{API}/roles", json=body, headers=as_support), 403)
    response = api.post(f"{API}/roles", json=body, headers=as_admin)
    duplicate = error_of(api.post(f"{API}/roles", json=body, headers=as_admin), 409)

    assert forbidden["code"] == "permission_denied"
    assert response.status_code == 201
    role = response.get_json()
    assert (role["object"], role["name"], role["description"]) == (
        "role",
        name,
        "Reads the audit log",
    )
    assert (role["permissions"], role["built_in"], role["user_count"]) == (["audit:read"], False, 0)
    assert (duplicate["code"], duplicate["param"]) == ("role_exists", "name")


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"name": "Has Spaces"}, "parameter_invalid", "name"),
        ({"name": "x"}, "parameter_invalid", "name"),
        ({"name": "x" * 33}, "parameter_invalid", "name"),
        ({"permissions": ["no:such"]}, "unknown_permission", "permissions"),
        ({"permissions": "audit:read"}, "parameter_invalid", "permissions"),
        ({"description": "a\x00b"}, "parameter_invalid", "description"),
        ({}, "parameter_missing", "name"),
    ],
)
def test_create_refusals_name_the_parameter(
    api: FlaskClient, as_admin: dict[str, str], body: dict[str, Any], code: str, param: str
) -> None:
    payload = {"name": role_name(), **body} if body else {}

    error = error_of(api.post(f"{API}/roles", json=payload, headers=as_admin), 422)

    assert (error["code"], error["param"]) == (code, param)


def test_rename_and_describe(api: FlaskClient, as_admin: dict[str, str]) -> None:
    role = create(api, as_admin)
    new_name = role_name()

    renamed = api.patch(
        f"{API}/roles/{role['name']}", json={"name": new_name, "description": "new"},
        headers=as_admin,
    )  # fmt: skip
    built_in = error_of(
        api.patch(f"{API}/roles/support", json={"name": "helpdesk"}, headers=as_admin), 409
    )
    description_only = api.patch(
        f"{API}/roles/support", json={"description": "Help desk"}, headers=as_admin
    )
    clash = error_of(
        api.patch(f"{API}/roles/{role['id']}", json={"name": "admin"}, headers=as_admin), 409
    )

    assert renamed.status_code == 200
    assert (renamed.get_json()["id"], renamed.get_json()["name"]) == (role["id"], new_name)
    assert renamed.get_json()["description"] == "new"
    error_of(api.get(f"{API}/roles/{role['name']}", headers=as_admin), 404)
    assert (built_in["code"], built_in["param"]) == ("built_in_role", "name")
    assert description_only.get_json()["description"] == "Help desk"
    assert clash["code"] == "role_exists"


def test_an_archived_role_grants_nothing_until_restored(
    api: FlaskClient, app: Flask, as_admin: dict[str, str], uow: UnitOfWork
) -> None:
    role = create(api, as_admin, permissions=["audit:read"])
    holder = person(uow, "cardholder", role["name"])
    as_holder = bearer(token_for(uow, holder))

    def permissions() -> Any:
        return api.get(f"{API}/auth/me", headers=as_holder).get_json()["permissions"]

    before = permissions()
    archived = api.post(f"{API}/roles/{role['name']}/archive", headers=as_admin)
    during = permissions()
    restored = api.post(f"{API}/roles/{role['id']}/restore", headers=as_admin)
    after = permissions()
    built_in = error_of(api.post(f"{API}/roles/cardholder/archive", headers=as_admin), 409)

    assert before == ["audit:read", "wallet:use"]
    assert archived.status_code == 200 and archived.get_json()["archived"] is True
    assert during == ["wallet:use"]
    assert restored.get_json()["archived"] is False
    assert after == before
    assert built_in["code"] == "built_in_role"
    error_of(api.post(f"{API}/roles/no-such-role/archive", headers=as_admin), 404)


def test_grant_and_revoke_permissions(
    api: FlaskClient, as_admin: dict[str, str], as_support: dict[str, str]
) -> None:
    role = create(api, as_admin)
    path = f"{API}/roles/{role['name']}/permissions"

    forbidden = error_of(api.put(f"{path}/audit:read", headers=as_support), 403)
    granted = api.put(f"{path}/audit:read", headers=as_admin)
    again = api.put(f"{path}/audit:read", headers=as_admin)
    unknown = error_of(api.put(f"{path}/no:such", headers=as_admin), 422)
    malformed = error_of(api.put(f"{path}/NOT%20ONE", headers=as_admin), 422)
    support_write = error_of(
        api.put(f"{API}/roles/support/permissions/users:manage", headers=as_admin), 409
    )
    revoked = api.delete(f"{path}/audit:read", headers=as_admin)
    from_admin = error_of(
        api.delete(f"{API}/roles/admin/permissions/audit:read", headers=as_admin), 409
    )

    assert forbidden["code"] == "permission_denied"
    assert granted.status_code == 200
    assert granted.get_json()["permissions"] == again.get_json()["permissions"] == ["audit:read"]
    assert (unknown["code"], unknown["param"]) == ("unknown_permission", "permission")
    assert (malformed["code"], malformed["param"]) == ("unknown_permission", "permission")
    assert support_write["code"] == "built_in_role"
    assert revoked.get_json()["permissions"] == []
    assert from_admin["code"] == "built_in_role"
    error_of(api.put(f"{API}/roles/no-such-role/permissions/audit:read", headers=as_admin), 404)


def test_nobody_grants_a_permission_they_lack(api: FlaskClient, uow: UnitOfWork) -> None:
    manager_role = roles.create_role(
        uow, actor=SYSTEM, name=role_name(), permissions=["roles:manage", "users:read"]
    )
    manager = person(uow, manager_role.name)
    auth = bearer(token_for(uow, manager))
    role = roles.create_role(uow, actor=SYSTEM, name=role_name())

    error = error_of(
        api.put(f"{API}/roles/{role.name}/permissions/ledger:adjust", headers=auth), 403
    )
    allowed = api.put(f"{API}/roles/{role.name}/permissions/users:read", headers=auth)

    assert error["code"] == "privilege_escalation"
    assert allowed.status_code == 200


def test_anonymous_requests_are_401_before_anything_else(api: FlaskClient) -> None:
    for response in (
        api.get(f"{API}/roles"),
        api.post(f"{API}/roles", json={"name": 7}),
        api.patch(f"{API}/roles/admin", data="{", content_type="application/json"),
        api.put(f"{API}/roles/admin/permissions/audit:read"),
        api.get(f"{API}/permissions"),
    ):
        assert error_of(response, 401)["type"] == "authentication_error"
