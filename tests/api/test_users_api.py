"""The users API: one's own profile, staff administration of users (list, search, create,
read, update, archive, restore, delete), their roles and their sessions; with the permission
each needs and the error each refusal answers."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from portal.services.identity import accounts, roles, sessions, tokens, users
from portal.services.shared.uow import UnitOfWork
from tests.api.test_auth_api import (
    API,
    bearer,
    cardholder,
    client_for,
    error_of,
    new_email,
    person,
    token_for,
)
from tests.conftest import SYSTEM, Factory


@pytest.fixture
def api(app: Flask, connection: Any) -> FlaskClient:
    return client_for(app)


@pytest.fixture
def admin(uow: UnitOfWork) -> accounts.UserView:
    return person(uow, "admin")


@pytest.fixture
def as_admin(uow: UnitOfWork, admin: accounts.UserView) -> dict[str, str]:
    return bearer(token_for(uow, admin))


@pytest.fixture
def as_support(uow: UnitOfWork) -> dict[str, str]:
    return bearer(token_for(uow, person(uow, "support")))


@pytest.fixture
def holder(uow: UnitOfWork) -> accounts.UserView:
    return cardholder(uow)


@pytest.fixture
def as_holder(uow: UnitOfWork, holder: accounts.UserView) -> dict[str, str]:
    return bearer(token_for(uow, holder))


# -- one's own profile --------------------------------------------------------------------------
def test_my_profile_is_the_user_object_of_auth_me(
    api: FlaskClient, as_holder: dict[str, str], holder: accounts.UserView
) -> None:
    profile = api.get(f"{API}/users/me", headers=as_holder)
    me = api.get(f"{API}/auth/me", headers=as_holder)

    assert profile.status_code == 200
    assert profile.get_json() == me.get_json()
    assert profile.get_json()["id"] == holder.public_id
    assert set(profile.get_json()) == {
        "id", "object", "email", "first_name", "last_name", "email_verified", "mfa_enabled",
        "roles", "permissions", "archived", "archived_at", "created_at", "updated_at",
    }  # fmt: skip


def test_change_my_names_but_not_my_email(
    api: FlaskClient, as_holder: dict[str, str], holder: accounts.UserView
) -> None:
    changed = api.patch(f"{API}/users/me", json={"first_name": " Augusta "}, headers=as_holder)
    email = error_of(
        api.patch(f"{API}/users/me", json={"email": new_email()}, headers=as_holder), 422
    )
    empty = error_of(api.patch(f"{API}/users/me", json={"last_name": ""}, headers=as_holder), 422)

    assert changed.status_code == 200
    assert (changed.get_json()["first_name"], changed.get_json()["last_name"]) == (
        "Augusta", "Lovelace"
    )  # fmt: skip
    assert (email["code"], email["param"]) == ("parameter_unknown", "email")
    assert empty["param"] == "last_name"
    # Through the staff route, one's own email is refused too: it must be verified.
    own = error_of(
        api.patch(
            f"{API}/users/{holder.public_id}", json={"email": new_email()}, headers=as_holder
        ),
        403,
    )
    assert own["code"] == "email_change_requires_verification"


# -- listing ------------------------------------------------------------------------------------
def test_listing_users_needs_users_read(
    api: FlaskClient, as_holder: dict[str, str], as_support: dict[str, str]
) -> None:
    refused = error_of(api.get(f"{API}/users", headers=as_holder), 403)

    assert refused["code"] == "permission_denied"
    assert "users:read" in refused["message"]
    assert api.get(f"{API}/users", headers=as_support).status_code == 200
    error_of(api.get(f"{API}/users"), 401)


def test_list_search_filters_and_cursor(
    api: FlaskClient, as_support: dict[str, str], uow: UnitOfWork
) -> None:
    marker = f"Zq{uuid.uuid4().hex[:8]}"
    made = [person(uow, "cardholder", last_name=marker) for _ in range(3)]
    staffer = person(uow, "support", last_name=marker)
    users.archive_user(uow, actor=SYSTEM, user_id=made[0].id)

    def ids(query: str) -> list[str]:
        response = api.get(f"{API}/users?{query}", headers=as_support)
        assert response.status_code == 200, response.get_data(as_text=True)
        return [u["id"] for u in response.get_json()["data"]]

    # Archived users are hidden unless asked for (issue 11 B).
    newest_first = [staffer.public_id, made[2].public_id, made[1].public_id]
    assert ids(f"q={marker.lower()}") == newest_first
    assert ids(f"q=grace+{marker}") == newest_first  # the full name
    assert ids(f"q={marker}&role=support") == [staffer.public_id]
    assert ids(f"q={marker}&archived=true") == [made[0].public_id]
    assert ids(f"q={marker}&archived=false") == newest_first
    assert ids(f"q={marker}%25") == []  # a literal %, not a wildcard
    first = api.get(f"{API}/users?q={marker}&limit=2", headers=as_support).get_json()
    assert (first["object"], first["url"], first["has_more"]) == ("list", f"{API}/users", True)
    assert [u["id"] for u in first["data"]] == newest_first[:2]
    assert set(first["data"][0]) == {
        "id", "object", "email", "first_name", "last_name", "email_verified", "mfa_enabled",
        "roles", "archived", "created_at",
    }  # fmt: skip
    rest = api.get(
        f"{API}/users?q={marker}&limit=2&starting_after={newest_first[1]}", headers=as_support
    ).get_json()
    assert ([u["id"] for u in rest["data"]], rest["has_more"]) == (newest_first[2:], False)


@pytest.mark.parametrize(
    ("query", "code", "param"),
    [
        ("limit=0", "parameter_invalid", "limit"),
        ("limit=101", "parameter_invalid", "limit"),
        ("starting_after=abc", "parameter_invalid", "starting_after"),
        ("starting_after=987654321987", "parameter_invalid", "starting_after"),
        ("starting_after=card_" + "0" * 24, "parameter_invalid", "starting_after"),
        ("starting_after=usr_" + "0" * 24, "parameter_invalid", "starting_after"),
        ("role=no-such-role", "unknown_role", "role"),
        ("role=Bad%20Role", "unknown_role", "role"),
        ("archived=maybe", "parameter_invalid", "archived"),
        ("q=" + "x" * 255, "parameter_invalid", "q"),
        ("q=a%00b", "parameter_invalid", "q"),
        ("sort=email", "parameter_unknown", "sort"),
    ],
)
def test_list_refusals_name_the_parameter(
    api: FlaskClient, as_support: dict[str, str], query: str, code: str, param: str
) -> None:
    error = error_of(api.get(f"{API}/users?{query}", headers=as_support), 422)

    assert (error["code"], error["param"]) == (code, param)


# -- creating -----------------------------------------------------------------------------------
def test_create_a_user_with_roles(
    api: FlaskClient, app: Flask, as_admin: dict[str, str], as_support: dict[str, str]
) -> None:
    email = new_email()
    body = {"email": email, "first_name": "Grace", "last_name": "Hopper", "roles": ["support"]}

    forbidden = error_of(api.post(f"{API}/users", json=body, headers=as_support), 403)
    response = api.post(f"{API}/users", json=body, headers=as_admin)
    taken = error_of(api.post(f"{API}/users", json=body, headers=as_admin), 409)
    default = api.post(
        f"{API}/users",
        json={"email": new_email(), "first_name": "A", "last_name": "B"},
        headers=as_admin,
    )

    assert forbidden["code"] == "permission_denied"
    assert response.status_code == 201, response.get_data(as_text=True)
    created = response.get_json()
    assert (created["object"], created["email"], created["roles"]) == ("user", email, ["support"])
    assert created["email_verified"] is False
    assert "users:read" in created["permissions"]
    mailed = [m for m in app.extensions["portal.outbox"] if m["To"] == email]
    assert len(mailed) == 1 and "/auth/verify/" in mailed[0].get_content()
    assert (taken["code"], taken["param"]) == ("email_taken", "email")
    assert default.get_json()["roles"] == ["cardholder"]


@pytest.mark.parametrize(
    ("change", "code", "param"),
    [
        ({"roles": ["no-such-role"]}, "parameter_invalid", "roles"),
        ({"roles": "admin"}, "parameter_invalid", "roles"),
        ({"email": "nope"}, "parameter_invalid", "email"),
        ({"first_name": None}, "parameter_invalid", "first_name"),
        ({"password": "secret-secret"}, "parameter_unknown", "password"),
    ],
)
def test_create_refusals_name_the_parameter(
    api: FlaskClient, as_admin: dict[str, str], change: dict[str, Any], code: str, param: str
) -> None:
    body = {"email": new_email(), "first_name": "A", "last_name": "B", **change}

    error = error_of(api.post(f"{API}/users", json=body, headers=as_admin), 422)

    assert (error["code"], error["param"]) == (code, param)


def test_nobody_creates_a_user_more_powerful_than_themselves(
    api: FlaskClient, uow: UnitOfWork
) -> None:
    hr_role = roles.create_role(
        uow, actor=SYSTEM, name=f"hr-{uuid.uuid4().hex[:6]}",
        permissions=["users:manage", "users:read"],
    )  # fmt: skip
    hr = person(uow, hr_role.name)
    auth = bearer(token_for(uow, hr))

    error = error_of(
        api.post(f"{API}/users", json={"email": new_email(), "first_name": "A",
                                       "last_name": "B", "roles": ["admin"]}, headers=auth),
        403,
    )  # fmt: skip

    assert error["code"] == "privilege_escalation"


# -- reading and changing one user --------------------------------------------------------------
def test_read_a_user(
    api: FlaskClient,
    as_holder: dict[str, str],
    as_support: dict[str, str],
    holder: accounts.UserView,
    admin: accounts.UserView,
) -> None:
    own = api.get(f"{API}/users/{holder.public_id}", headers=as_holder)
    others = error_of(api.get(f"{API}/users/{admin.public_id}", headers=as_holder), 404)
    staff = api.get(f"{API}/users/{admin.public_id}", headers=as_support)

    assert own.status_code == 200 and own.get_json()["id"] == holder.public_id
    assert others["message"] == "no such user"  # not "missing permission": existence hidden
    assert staff.get_json()["roles"] == ["admin"]
    for missing in ("987654321987", "0", "99999999999999999999", "abc", "usr_" + "0" * 24,
                    holder.public_id.replace("usr_", "card_")):  # fmt: skip
        error_of(api.get(f"{API}/users/{missing}", headers=as_support), 404)


def test_update_a_user(
    api: FlaskClient,
    as_admin: dict[str, str],
    as_support: dict[str, str],
    holder: accounts.UserView,
    admin: accounts.UserView,
    uow: UnitOfWork,
) -> None:
    verified = person(uow, "cardholder")
    new = new_email()

    forbidden = error_of(
        api.patch(
            f"{API}/users/{verified.public_id}", json={"first_name": "X"}, headers=as_support
        ),
        403,
    )
    changed = api.patch(
        f"{API}/users/{verified.public_id}",
        json={"email": new, "last_name": "Hopper"},
        headers=as_admin,
    )
    taken = error_of(
        api.patch(
            f"{API}/users/{verified.public_id}", json={"email": holder.email}, headers=as_admin
        ),
        409,
    )
    missing = error_of(
        api.patch(f"{API}/users/987654321987", json={"first_name": "X"}, headers=as_admin), 404
    )

    assert forbidden["code"] == "forbidden"
    assert changed.status_code == 200
    body = changed.get_json()
    assert (body["email"], body["email_verified"], body["last_name"]) == (new, False, "Hopper")
    assert (taken["code"], taken["param"]) == ("email_taken", "email")
    assert missing["param"] == "user_id"


def test_archive_and_restore(
    api: FlaskClient,
    as_admin: dict[str, str],
    as_support: dict[str, str],
    admin: accounts.UserView,
    holder: accounts.UserView,
    uow: UnitOfWork,
) -> None:
    holder_token = bearer(token_for(uow, holder))

    forbidden = error_of(
        api.post(f"{API}/users/{holder.public_id}/archive", headers=as_support), 403
    )
    archived = api.post(f"{API}/users/{holder.public_id}/archive", headers=as_admin)
    again = api.post(f"{API}/users/{holder.public_id}/archive", headers=as_admin)
    token_after = error_of(api.get(f"{API}/auth/me", headers=holder_token), 401)
    restored = api.post(f"{API}/users/{holder.public_id}/restore", headers=as_admin)
    myself = error_of(api.post(f"{API}/users/{admin.public_id}/archive", headers=as_admin), 403)

    assert forbidden["code"] == "permission_denied"
    assert archived.status_code == 200
    body = archived.get_json()
    assert (body["archived"], body["permissions"]) == (True, [])
    assert body["archived_at"].endswith("Z")
    assert again.get_json()["archived_at"] == body["archived_at"]
    assert token_after["code"] == "invalid_token"
    assert (restored.get_json()["archived"], restored.get_json()["archived_at"]) == (False, None)
    error_of(api.get(f"{API}/auth/me", headers=holder_token), 401)  # old tokens stay dead
    assert myself["code"] == "cannot_archive_self"


def test_delete_a_user_without_money_history_only(
    api: FlaskClient,
    as_admin: dict[str, str],
    as_support: dict[str, str],
    admin: accounts.UserView,
    uow: UnitOfWork,
    make: Factory,
) -> None:
    plain = cardholder(uow)
    with_card = make.user()
    make.card(with_card)

    forbidden = error_of(api.delete(f"{API}/users/{plain.public_id}", headers=as_support), 403)
    deleted = api.delete(f"{API}/users/{plain.public_id}", headers=as_admin)
    history = error_of(api.delete(f"{API}/users/{with_card.public_id}", headers=as_admin), 409)
    myself = error_of(api.delete(f"{API}/users/{admin.public_id}", headers=as_admin), 403)

    assert forbidden["code"] == "permission_denied"
    assert deleted.status_code == 200
    assert deleted.get_json() == {"id": plain.public_id, "object": "user", "deleted": True}
    error_of(api.get(f"{API}/users/{plain.public_id}", headers=as_admin), 404)
    error_of(api.delete(f"{API}/users/{plain.public_id}", headers=as_admin), 404)
    assert (history["code"], history["param"]) == ("user_has_history", "user_id")
    assert myself["code"] == "cannot_delete_self"


# -- roles of a user ----------------------------------------------------------------------------
def test_assign_and_remove_roles(
    api: FlaskClient,
    as_admin: dict[str, str],
    as_support: dict[str, str],
    admin: accounts.UserView,
    holder: accounts.UserView,
    uow: UnitOfWork,
) -> None:
    support_id = roles.get_role(uow, actor=SYSTEM, role="support").public_id
    archived_role = roles.create_role(uow, actor=SYSTEM, name=f"old-{uuid.uuid4().hex[:6]}")
    roles.archive_role(uow, actor=SYSTEM, role=archived_role.id)
    path = f"{API}/users/{holder.public_id}/roles"

    forbidden = error_of(api.put(f"{path}/support", headers=as_support), 403)
    by_name = api.put(f"{path}/support", headers=as_admin)
    twice = api.put(f"{path}/{support_id}", headers=as_admin)
    archived = error_of(api.put(f"{path}/{archived_role.name}", headers=as_admin), 409)
    unknown = error_of(api.put(f"{path}/no-such-role", headers=as_admin), 404)
    malformed = error_of(api.put(f"{path}/Not%20A%20Role", headers=as_admin), 404)
    own = error_of(api.delete(f"{API}/users/{admin.public_id}/roles/admin", headers=as_admin), 403)
    removed = api.delete(f"{path}/{support_id}", headers=as_admin)

    assert forbidden["code"] == "permission_denied"
    assert by_name.status_code == 200
    assert by_name.get_json()["roles"] == ["cardholder", "support"]
    assert "users:read" in by_name.get_json()["permissions"]
    assert twice.get_json()["roles"] == ["cardholder", "support"]
    assert archived["code"] == "role_archived"
    assert unknown["param"] == malformed["param"] == "role"
    assert own["code"] == "cannot_change_own_roles"
    assert removed.get_json()["roles"] == ["cardholder"]
    assert removed.get_json()["permissions"] == ["wallet:use"]


# -- a user's sessions --------------------------------------------------------------------------
def test_staff_see_and_revoke_a_users_sessions(
    api: FlaskClient,
    as_admin: dict[str, str],
    as_support: dict[str, str],
    as_holder: dict[str, str],
    holder: accounts.UserView,
    uow: UnitOfWork,
) -> None:
    pair = tokens.issue_tokens(uow, user_id=holder.id)
    web = sessions.create_web_session(
        uow, user_id=holder.id, user_agent="Safari", ip="198.51.100.7", mfa_verified=False
    )
    stranger = cardholder(uow)
    stranger_web = sessions.create_web_session(
        uow, user_id=stranger.id, user_agent="", ip="", mfa_verified=False
    )
    path = f"{API}/users/{holder.public_id}/sessions"

    listed = api.get(path, headers=as_support)
    by_holder = error_of(
        api.get(f"{API}/users/{stranger.public_id}/sessions", headers=as_holder), 404
    )
    support_revoke = error_of(api.delete(f"{path}/api/{pair.family_id}", headers=as_support), 403)
    wrong_user = error_of(api.delete(f"{path}/web/{stranger_web.public_id}", headers=as_admin), 404)
    unknown = error_of(api.delete(f"{path}/api/{uuid.uuid4()}", headers=as_admin), 404)
    revoked = api.delete(f"{path}/api/{pair.family_id}", headers=as_admin)
    revoked_web = api.delete(f"{path}/web/{web.public_id}", headers=as_admin)

    assert listed.status_code == 200
    kinds = {(s["kind"], s["id"]) for s in listed.get_json()["data"]}
    assert ("web", web.public_id) in kinds and ("api", str(pair.family_id)) in kinds
    assert by_holder["code"] == "not_found"
    assert support_revoke["code"] == "permission_denied"
    assert wrong_user["param"] == "session_id"
    assert unknown["param"] == "family_id"
    assert revoked.status_code == revoked_web.status_code == 204
    error_of(api.get(f"{API}/auth/me", headers=bearer(pair.access_token)), 401)
    assert sessions.resolve_web_session(uow, token=web.token) is None
    assert sessions.resolve_web_session(uow, token=stranger_web.token) is not None


def test_staff_sign_a_user_out_everywhere(
    api: FlaskClient,
    as_admin: dict[str, str],
    as_support: dict[str, str],
    holder: accounts.UserView,
    uow: UnitOfWork,
) -> None:
    pair = tokens.issue_tokens(uow, user_id=holder.id)
    path = f"{API}/users/{holder.public_id}/sessions/revoke-all"

    forbidden = error_of(api.post(path, headers=as_support), 403)
    assert api.get(f"{API}/auth/me", headers=bearer(pair.access_token)).status_code == 200
    response = api.post(path, headers=as_admin)

    assert forbidden["code"] == "permission_denied"
    assert response.status_code == 204
    error_of(api.get(f"{API}/auth/me", headers=bearer(pair.access_token)), 401)
    assert api.get(f"{API}/auth/me", headers=as_admin).status_code == 200  # not the admin's
    error_of(api.post(f"{API}/users/987654321987/sessions/revoke-all", headers=as_admin), 404)
    unknown = f"{API}/users/usr_{'0' * 24}/sessions/revoke-all"  # well formed, names nobody
    assert error_of(api.post(unknown, headers=as_admin), 404)["param"] == "user_id"
