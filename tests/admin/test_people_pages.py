"""Console pages for users and roles: who may read and act, one by one and in bulk (each item
done or refused with its reason), archived views, the cursor pager, and what archiving does at
once (an archived user's session and token stop; an archived role grants nothing)."""

from __future__ import annotations

import re
import uuid

import pytest
import sqlalchemy as sa

from portal.domain.errors import Conflict, Forbidden
from portal.services.admin import people as admin_people
from portal.services.identity import roles, tokens, users
from tests.admin.conftest import StaffClient
from tests.conftest import SYSTEM, Factory
from tests.pages.conftest import PageClient, People, new_client, page_text, sign_in

PAGES = ("/admin/users", "/admin/roles", "/admin/roles/cardholder")


def _flashes(client: PageClient) -> list[str]:
    with client.session_transaction() as s:
        return [m for _, m in s.get("_flashes", [])]


def _archived_at(connection: sa.Connection, table: str, public_id: str) -> object:
    return connection.execute(
        sa.text(f"SELECT archived_at FROM {table} WHERE public_id = :p"),  # noqa: S608
        {"p": public_id},
    ).scalar_one()


def _public_id(connection: sa.Connection, user_id: int) -> str:
    return connection.execute(
        sa.text("SELECT public_id FROM users WHERE id = :i"), {"i": user_id}
    ).scalar_one()


def _console_forms(html: str) -> list[str]:
    """The console action forms of a page (not the header's sign-out)."""
    return re.findall(r'<form[^>]*method="post"[^>]*action="(/admin/[^"]*)"', html)


def test_only_staff_read_and_support_sees_no_actions(
    client: PageClient, people: People, as_staff: StaffClient, connection: sa.Connection
) -> None:
    target = _public_id(connection, people.make().id)
    pages = (*PAGES, f"/admin/users/{target}", f"/admin/users/{target}/changes?v=0",
             "/admin/roles/cardholder/changes?v=0")  # fmt: skip
    cardholder = people.make()
    sign_in(client, cardholder)
    for page in pages:
        assert client.get(page).status_code == 403, page
    support, _ = as_staff("support")
    admin, _ = as_staff("admin")
    for page in pages:
        read = support.get(page)
        assert read.status_code == 200, page
        html = read.get_data(as_text=True)
        assert not _console_forms(html), f"{page} shows support an action"
        acted = admin.get(page).get_data(as_text=True)
        if "/changes" not in page:
            assert _console_forms(acted), f"{page} shows the admin no action"
    posts = [
        f"/admin/users/{target}/archive", f"/admin/users/{target}/restore",
        f"/admin/users/{target}/delete", f"/admin/users/{target}/roles", "/admin/users/bulk",
        "/admin/roles", "/admin/roles/cardholder/archive", "/admin/roles/cardholder/delete",
        "/admin/roles/cardholder/permissions", "/admin/roles/bulk",
    ]  # fmt: skip
    for url in posts:
        assert support.post(url, data={"ids": [target], "action": "archive", "op": "add",
                                       "role": "support"}).status_code == 403, url  # fmt: skip
        assert client.post(url).status_code == 403, url
    assert _archived_at(connection, "users", target) is None


def test_admin_archives_restores_and_deletes_one_user(
    as_staff: StaffClient, people: People, connection: sa.Connection
) -> None:
    admin, _ = as_staff()
    target = _public_id(connection, people.make().id)
    done = admin.post(f"/admin/users/{target}/archive")
    assert done.status_code == 302 and done.headers["Location"] == f"/admin/users/{target}"
    assert _archived_at(connection, "users", target) is not None
    archived = page_text(admin.get("/admin/users?state=archived"))
    assert target in archived and target not in page_text(admin.get("/admin/users"))
    admin.post(f"/admin/users/{target}/restore")
    assert _archived_at(connection, "users", target) is None
    gone = admin.post(f"/admin/users/{target}/delete")
    assert gone.headers["Location"] == "/admin/users"
    assert admin.get(f"/admin/users/{target}").status_code == 404
    actions = (
        connection.execute(
            sa.text(
                "SELECT action FROM audit_events WHERE subject_type = 'user' AND subject_id ="
                " (SELECT max(subject_id) FROM audit_events WHERE action = 'user.delete')"
                " ORDER BY id"
            )  # fmt: skip
        )
        .scalars()
        .all()
    )
    assert actions[-3:] == ["user.archive", "user.restore", "user.delete"]


def test_bulk_archive_and_delete_report_each_user(
    as_staff: StaffClient, people: People, make: Factory, connection: sa.Connection
) -> None:
    admin, me = as_staff()
    plain = [_public_id(connection, people.make().id) for _ in range(2)]
    holder = make.user()
    make.card(holder)  # money history: never deleted
    mine = _public_id(connection, me.id)
    sent = admin.post("/admin/users/bulk", data={
        "action": "archive", "ids": [*plain, mine], "back": "/admin/users?q=x",
    })  # fmt: skip
    assert sent.status_code == 302 and sent.headers["Location"] == "/admin/users?q=x"
    notes = _flashes(admin)
    assert any(n.startswith("Archived 2:") and all(p in n for p in plain) for n in notes)
    assert any(mine in n and "cannot archive yourself" in n for n in notes), notes
    assert all(_archived_at(connection, "users", p) is not None for p in plain)
    assert _archived_at(connection, "users", mine) is None

    deleted = admin.post("/admin/users/bulk", data={
        "action": "delete", "ids": [plain[0], holder.public_id, "usr_nobody"],
    })  # fmt: skip
    assert deleted.status_code == 302
    notes = _flashes(admin)
    assert any(n.startswith("Deleted for good 1:") and plain[0] in n for n in notes), notes
    assert any(holder.public_id in n and "money history" in n for n in notes), notes
    assert any("usr_nobody" in n and "No such user" in n for n in notes), notes
    left = (
        connection.execute(
            sa.text("SELECT public_id FROM users WHERE public_id = ANY(:p)"),
            {"p": [plain[0], holder.public_id]},
        )
        .scalars()
        .all()
    )
    assert left == [holder.public_id]
    restored = admin.post("/admin/users/bulk", data={"action": "restore", "ids": [plain[1]]})
    assert restored.status_code == 302
    assert _archived_at(connection, "users", plain[1]) is None
    assert admin.post("/admin/users/bulk", data={"action": "explode", "ids": [plain[1]]}
                      ).status_code == 400  # fmt: skip


def test_an_archived_users_session_and_token_stop_at_once(
    as_staff: StaffClient, people: People, app, connection: sa.Connection
) -> None:
    admin, _ = as_staff()
    person = people.make()
    theirs = new_client(app)
    sign_in(theirs, person)
    assert theirs.get("/auth/account").status_code == 200
    pair = tokens.issue_tokens(people.uow(), user_id=person.id, user_agent="test")
    bearer = {"Authorization": f"Bearer {pair.access_token}"}
    assert theirs.get("/api/v1/users/me", headers=bearer).status_code == 200
    detail = page_text(admin.get(f"/admin/users/{_public_id(connection, person.id)}"))
    assert "Web" in detail and "API" in detail  # their session and token family are listed

    admin.post(f"/admin/users/{_public_id(connection, person.id)}/archive")
    after = theirs.get("/auth/account")
    assert after.status_code == 302 and "/auth/login" in after.headers["Location"]
    assert new_client(app).get("/api/v1/users/me", headers=bearer).status_code == 401
    refreshed = new_client(app).post("/api/v1/auth/refresh",
                                     json={"refresh_token": pair.refresh_token})  # fmt: skip
    assert refreshed.status_code == 401
    detail = page_text(admin.get(f"/admin/users/{_public_id(connection, person.id)}"))
    assert "archiving ended them all" in detail


def test_an_archived_role_grants_nothing_at_once(
    as_staff: StaffClient, people: People, app, connection: sa.Connection
) -> None:
    admin, _ = as_staff()
    name = f"reader-{uuid.uuid4().hex[:6]}"
    made = admin.post("/admin/roles", data={"name": name, "description": "reads users",
                                            "permissions": ["users:read"]})  # fmt: skip
    role_id = made.headers["Location"].rsplit("/", 1)[1]
    assert role_id.startswith("rol_")
    reader = people.make(roles=(name,), with_mfa=True)
    pair = tokens.issue_tokens(people.uow(), user_id=reader.id, user_agent="test")
    bearer = {"Authorization": f"Bearer {pair.access_token}"}
    api = new_client(app)
    assert api.get("/api/v1/users", headers=bearer).status_code == 200
    console = new_client(app)
    sign_in(console, reader)
    assert console.post("/auth/mfa", data={"code": reader.code()}).status_code == 302
    assert console.get("/admin/users").status_code == 200

    assert admin.post(f"/admin/roles/{role_id}/archive").status_code == 302
    assert _archived_at(connection, "roles", role_id) is not None
    assert api.get("/api/v1/users", headers=bearer).status_code == 403
    assert console.get("/admin/users").status_code == 403
    archived = page_text(admin.get("/admin/roles?state=archived"))
    assert name in archived and name not in page_text(admin.get("/admin/roles"))
    assert "grants nothing" in page_text(admin.get(f"/admin/roles/{role_id}"))

    admin.post(f"/admin/roles/{role_id}/restore")
    assert api.get("/api/v1/users", headers=bearer).status_code == 200


def test_bulk_roles_and_delete_guard_rails(
    as_staff: StaffClient, people: People, connection: sa.Connection
) -> None:
    admin, _ = as_staff()
    free = roles.create_role(people.uow(), actor=SYSTEM, name=f"free-{uuid.uuid4().hex[:6]}")
    held = roles.create_role(people.uow(), actor=SYSTEM, name=f"held-{uuid.uuid4().hex[:6]}")
    people.make(roles=("cardholder", held.name))
    builtin = connection.execute(
        sa.text("SELECT public_id FROM roles WHERE name = 'support'")
    ).scalar_one()
    admin.post("/admin/roles/bulk", data={
        "action": "archive", "ids": [free.public_id, held.public_id, builtin],
    })  # fmt: skip
    notes = _flashes(admin)
    assert any(n.startswith("Archived 2:") for n in notes), notes
    assert any(builtin in n and "built-in role cannot be archived" in n for n in notes), notes
    admin.post("/admin/roles/bulk", data={
        "action": "delete", "ids": [free.public_id, held.public_id, builtin],
    })  # fmt: skip
    notes = _flashes(admin)
    assert any(n.startswith("Deleted for good 1:") and free.public_id in n for n in notes)
    assert any(held.public_id in n and "still holds this role" in n for n in notes), notes
    assert any(builtin in n and "cannot be deleted" in n for n in notes), notes
    left = (
        connection.execute(
            sa.text("SELECT name FROM roles WHERE public_id = ANY(:p)"),
            {"p": [free.public_id, held.public_id]},
        )
        .scalars()
        .all()
    )
    assert left == [held.name]
    event = (
        connection.execute(
            sa.text("SELECT data FROM audit_events WHERE action = 'role.delete' ORDER BY id DESC")
        )
        .scalars()
        .first()
    )
    assert event["name"] == free.name


def test_delete_role_service_rules(uow, make: Factory) -> None:
    support = make.user(roles=("support",))
    custom = roles.create_role(uow, actor=SYSTEM, name=f"gone-{uuid.uuid4().hex[:6]}",
                               permissions=["money:read"])  # fmt: skip
    with pytest.raises(Forbidden):
        admin_people.delete_role(uow, actor=support, role=custom.public_id)
    with pytest.raises(Conflict) as built_in:
        admin_people.delete_role(uow, actor=SYSTEM, role="admin")
    assert built_in.value.code == "built_in_role"
    holder = make.user()
    roles.assign_role(uow, actor=SYSTEM, user_id=holder.id, role=custom.name)
    users.archive_user(uow, actor=SYSTEM, user_id=holder.id)  # an archived holder counts
    with pytest.raises(Conflict) as in_use:
        admin_people.delete_role(uow, actor=SYSTEM, role=custom.public_id)
    assert in_use.value.code == "role_in_use"
    roles.remove_role(uow, actor=SYSTEM, user_id=holder.id, role=custom.name)
    gone = admin_people.delete_role(uow, actor=SYSTEM, role=custom.public_id)
    assert gone.name == custom.name
    assert custom.name not in [
        r.name for r in roles.list_roles(uow, actor=SYSTEM, include_archived=True)
    ]


def test_role_assignment_from_the_user_page(
    as_staff: StaffClient, people: People, connection: sa.Connection
) -> None:
    admin, me = as_staff()
    target = _public_id(connection, people.make().id)
    admin.post(f"/admin/users/{target}/roles", data={"role": "support", "op": "add"})
    assert "support" in users.get_user(people.uow(), actor=SYSTEM, user_id=target).roles
    admin.post(f"/admin/users/{target}/roles", data={"role": "support", "op": "remove"})
    assert "support" not in users.get_user(people.uow(), actor=SYSTEM, user_id=target).roles
    mine = _public_id(connection, me.id)
    admin.post(f"/admin/users/{mine}/roles", data={"role": "admin", "op": "remove"})
    assert any("cannot change your own roles" in n for n in _flashes(admin))
    admin.post(f"/admin/users/{target}/roles", data={"role": "no-such", "op": "add"})
    assert any("No role is named no-such" in n for n in _flashes(admin))


def test_the_users_table_pages_by_cursor_to_the_last_row(
    as_staff: StaffClient, people: People
) -> None:
    admin, _ = as_staff()
    tag = uuid.uuid4().hex[:8]
    made = [people.make(email=f"deep-{tag}-{n:02}@example.test").email for n in range(53)]
    url, seen, pages = f"/admin/users?q=deep-{tag}", [], 0
    while url:
        html = admin.get(url).get_data(as_text=True)
        seen += re.findall(rf'console-sub">(deep-{tag}-\d\d@example.test)<', html)
        found = re.search(r'href="([^"]+)" rel="next"', html)
        url = found.group(1).replace("&amp;", "&") if found else ""
        pages += 1
        if pages > 1:
            assert "First page" in html
    assert pages == 3
    assert seen == list(reversed(made))  # newest first, no row twice, none skipped
    bad = admin.get(f"/admin/users?starting_after=usr_{'x' * 22}")
    assert bad.status_code == 200 and "starting_after" in page_text(bad)


def test_the_user_page_shows_cards_roles_and_the_trail_live(
    as_staff: StaffClient, people: People, make: Factory, connection: sa.Connection
) -> None:
    admin, _ = as_staff()
    holder = make.user()
    card = make.card(holder, balance="12.00")
    page = admin.get(f"/admin/users/{holder.public_id}")
    text = page_text(page)
    assert f"•••• {card.last4}" in text and "cardholder" in text and "$12.00" in text
    assert "user.create" in text  # the audit trail
    version = re.search(r'data-version="([^"]+)"', page.get_data(as_text=True)).group(1)
    quiet = admin.get(f"/admin/users/{holder.public_id}/changes?v={version}")
    assert quiet.status_code == 204
    users.archive_user(people.uow(), actor=SYSTEM, user_id=holder.id)
    changed = admin.get(f"/admin/users/{holder.public_id}/changes?v={version}")
    assert changed.status_code == 200
    html = changed.get_data(as_text=True)
    assert 'hx-swap-oob="true"' in html and "user.archive" in html
    assert admin.get("/admin/users/usr_nobody").status_code == 404


def test_the_role_page_is_live(as_staff: StaffClient, people: People) -> None:
    admin, _ = as_staff("support")
    custom = roles.create_role(people.uow(), actor=SYSTEM, name=f"live-{uuid.uuid4().hex[:6]}")
    page = admin.get(f"/admin/roles/{custom.public_id}")
    version = re.search(r'data-version="([^"]+)"', page.get_data(as_text=True)).group(1)
    quiet = admin.get(f"/admin/roles/{custom.public_id}/changes?v={version}")
    assert quiet.status_code == 204
    roles.archive_role(people.uow(), actor=SYSTEM, role=custom.public_id)
    changed = admin.get(f"/admin/roles/{custom.public_id}/changes?v={version}")
    assert changed.status_code == 200
    html = changed.get_data(as_text=True)
    assert 'hx-swap-oob="true"' in html and "role.archive" in html and "grants nothing" in html


@pytest.mark.parametrize("table", ["users", "cards"])
def test_a_deep_page_reads_the_keyset_index(
    connection: sa.Connection, make: Factory, table: str
) -> None:
    """The tables' pages are ``(created_at, id) < (cursor) ORDER BY created_at DESC, id DESC
    LIMIT n`` (pagination.newest_first): with the index (migration 0025) that is an index
    range scan from the cursor, whatever the page's depth; without it, a sort of the table."""
    make.card(make.user())
    # A test table is tiny: the planner would read it whole. Off, the plan shows what the
    # index allows on a big one (as bench/ measures): an ordered range scan, no sort.
    connection.execute(sa.text("SET LOCAL enable_seqscan = off"))
    connection.execute(sa.text("SET LOCAL enable_bitmapscan = off"))
    plan = "\n".join(
        connection.execute(
            sa.text(
                f"EXPLAIN SELECT t.* FROM {table} t"  # noqa: S608
                " WHERE (t.created_at, t.id) < (now(), 9223372036854775807)"
                " ORDER BY t.created_at DESC, t.id DESC LIMIT 26"
            )
        ).scalars()
    )
    assert f"Index Scan Backward using ix_{table}_created_at_id" in plan, plan
    assert "Sort" not in plan, plan
