"""The console's audit log: who may read it, filters, cursor pages, before/after values, and
"Verify the chains" naming an edited, a deleted and an inserted entry where it breaks."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from portal.domain.errors import Forbidden, InvalidInput
from portal.services.admin import audit_log
from portal.services.admin.audit_log import Filters
from portal.services.identity import roles
from portal.services.shared import audit_chain
from portal.services.shared.uow import UnitOfWork
from tests.admin.conftest import StaffClient
from tests.conftest import Factory
from tests.pages.conftest import PageClient, People, page_text, sign_in
from tests.services.test_audit_chain import _bypassing, add_events, changed, content_of, entry


def events_on(text: str) -> list[int]:
    return [int(i) for i in re.findall(r'data-event="(\d+)"', text)]


def test_only_audit_readers_open_it(
    client: PageClient, people: People, as_staff: StaffClient, make: Factory, uow: UnitOfWork
) -> None:
    answer = client.get("/admin/audit")
    assert answer.status_code == 302 and "/auth/login" in answer.headers["Location"]
    sign_in(client, people.make())
    assert client.get("/admin/audit").status_code == 403
    assert client.post("/admin/audit/verify").status_code == 403
    holder = make.user()
    with pytest.raises(Forbidden):
        audit_log.list_events(uow, actor=holder)
    support, _ = as_staff("support")
    page = support.get("/admin/audit")
    assert page.status_code == 200 and re.search(
        r'href="/admin/audit"[^>]*>Audit log</a>', page_text(page)
    )
    assert support.post("/admin/audit/verify").status_code == 200


def test_filters_and_pages_with_before_and_after_values(
    as_staff: StaffClient, make: Factory, uow: UnitOfWork, clock: Any
) -> None:
    support, _ = as_staff("support")
    admin = make.user(roles=("admin",))
    someone = make.user()
    clock.advance(days=1)
    roles.assign_role(uow, actor=admin, user_id=someone.id, role="support")
    mine = add_events(uow, 30, action="test.page")

    text = page_text(support.get("/admin/audit?action=user.assign_role"))
    assert events_on(text)
    q = "&#39;"
    change = f"<code>roles</code>: [{q}cardholder{q}] &rarr; [{q}cardholder{q}, {q}support{q}]"
    assert change in text and "<code>role</code>: support" in text
    assert "<code>user.assign_role</code>" in text and "<code>test.page</code>" not in text
    # By actor: the admin's email finds the role change, system finds our own events.
    email = uow.run(lambda u: u.execute("SELECT email FROM users WHERE id = :i", {"i": admin.id}))
    by_admin = audit_log.list_events(uow, actor=admin, filters=Filters(actor=email.scalar_one()))
    assert {e.action for e in by_admin.items} >= {"user.assign_role"}
    assert all(e.actor_id == admin.id for e in by_admin.items)
    by_public = audit_log.list_events(uow, actor=admin, filters=Filters(actor=admin.public_id))
    assert [e.id for e in by_public.items] == [e.id for e in by_admin.items]
    nobody = audit_log.list_events(uow, actor=admin, filters=Filters(actor="ghost@example.test"))
    assert nobody.items == ()
    # By subject: the user's public id, with its type.
    about = audit_log.list_events(
        uow, actor=admin, filters=Filters(subject_type="user", subject=someone.public_id)
    )
    assert about.items and all(e.subject_id == someone.id for e in about.items)
    with pytest.raises(InvalidInput):
        audit_log.list_events(uow, actor=admin, filters=Filters(subject=someone.public_id))
    # Date range: the day before holds none of our events.
    day = clock.now.date()
    before = audit_log.list_events(
        uow, actor=admin, filters=Filters(action="test.page", until=day - timedelta(days=1))
    )
    assert before.items == ()
    # Pages: newest first, no repeats, no gaps, through the page's "More" link.
    seen: list[int] = []
    url = "/admin/audit?action=test.page"
    while url:
        page = support.get(url)
        assert page.status_code == 200
        seen += events_on(page.get_data(as_text=True))
        more = re.search(r'href="([^"]+)" rel="next"', page.get_data(as_text=True))
        url = more.group(1).replace("&amp;", "&") if more else ""
    assert seen == sorted(mine, reverse=True)
    # A prefix filter, and bad filters answered with the field named.
    prefix = audit_log.list_events(uow, actor=admin, filters=Filters(action="test.*"), limit=5)
    assert {e.action for e in prefix.items} == {"test.page"}
    bad = support.get("/admin/audit?since=yesterday")
    assert bad.status_code == 422 and "Enter a date like" in page_text(bad)
    backwards = support.get("/admin/audit?since=2026-02-02&until=2026-02-01")
    assert backwards.status_code == 422 and "The range ends before it starts" in page_text(
        backwards
    )


def test_verify_says_intact_and_is_recorded(
    as_staff: StaffClient, uow: UnitOfWork, connection: sa.Connection
) -> None:
    support, person = as_staff("support")
    add_events(uow, 3)
    answer = support.post("/admin/audit/verify")
    assert answer.status_code == 200
    text = page_text(answer)
    assert 'data-verdict="intact"' in text and "Every audit chain is intact" in text
    recorded = connection.execute(
        sa.text("SELECT actor_id, outcome, data FROM audit_events WHERE action = 'audit.verify'")
    ).one()
    assert (recorded.actor_id, recorded.outcome) == (person.id, "success")


@pytest.fixture
def trail(uow: UnitOfWork, make: Factory) -> list[int]:
    admin = make.user(roles=("admin",))
    someone = make.user()
    roles.assign_role(uow, actor=admin, user_id=someone.id, role="support")
    return add_events(uow, 10)


def breaks_on(text: str) -> list[str]:
    return re.findall(r'data-break="(\w+)"', text)


def test_verify_names_an_edited_entry(
    as_staff: StaffClient, connection: sa.Connection, trail: list[int]
) -> None:
    support, _ = as_staff("support")
    edited = entry(connection, trail[4])
    edit = "UPDATE audit_events SET data = '{\"i\": 40}' WHERE id = :id"
    _bypassing(connection, "audit_events_append_only", edit, id=edited.id)
    text = page_text(support.post("/admin/audit/verify"))
    assert 'data-verdict="broken"' in text and breaks_on(text) == ["edited"]
    assert f"entry {edited.id} (seq {edited.seq}) does not follow" in text
    assert f"entry {edited.id} was edited or forged" in text
    assert f"<td>{edited.chain}</td> <td>{edited.seq}</td> <td>#{edited.id}</td>" in text


def test_verify_names_a_deleted_entry(
    as_staff: StaffClient, connection: sa.Connection, trail: list[int]
) -> None:
    support, _ = as_staff("support")
    gone = entry(connection, trail[6])
    _bypassing(connection, "audit_events_append_only",
               "DELETE FROM audit_events WHERE id = :id", id=gone.id)  # fmt: skip
    text = page_text(support.post("/admin/audit/verify"))
    assert breaks_on(text) == ["deleted"]
    assert f"the entry at seq {gone.seq} is missing before entry {trail[7]}" in text


def test_verify_names_an_inserted_entry(
    as_staff: StaffClient, connection: sa.Connection, trail: list[int]
) -> None:
    support, _ = as_staff("support")  # its sign-in is chained too: forge after the chain's end
    chain = entry(connection, trail[-1]).chain
    last_id = connection.execute(
        sa.text("SELECT id FROM audit_events WHERE chain = :c ORDER BY seq DESC LIMIT 1"),
        {"c": chain},
    ).scalar_one()
    last = entry(connection, last_id)
    forged_id = connection.execute(sa.text("SELECT nextval('audit_events_id_seq')")).scalar_one()
    forged = changed(last, id=forged_id, seq=last.seq + 1, action="user.assign_role",
                     data='{"role": "admin"}')  # fmt: skip
    digest = audit_chain.link(bytes(last.hash), content_of(forged))
    _bypassing(
        connection, "audit_events_chain",
        "INSERT INTO audit_events (id, occurred_at, actor_kind, actor_id, action, subject_type,"
        " subject_id, outcome, data, chain, seq, hash) VALUES (:id, :at, :kind, :actor,"
        " :action, :type, :subject, :outcome, CAST(:data AS jsonb), :chain, :seq, :hash)",
        id=forged.id, at=forged.occurred_at, kind=forged.actor_kind, actor=forged.actor_id,
        action=forged.action, type=forged.subject_type, subject=forged.subject_id,
        outcome=forged.outcome, data=forged.data, chain=forged.chain, seq=forged.seq,
        hash=digest,
    )  # fmt: skip
    answer = support.post("/admin/audit/verify")
    text = page_text(answer)
    assert "inserted" in breaks_on(text), (answer.status_code, text[-3000:])
    assert f"entry {forged_id} (seq {last.seq + 1}) is past the chain&#39;s head" in text


def test_the_event_shows_the_address_and_chain_position(
    as_staff: StaffClient, connection: sa.Connection, trail: list[int]
) -> None:
    support, _ = as_staff("support")
    row = entry(connection, trail[0])
    text = page_text(support.get("/admin/audit?action=test.event"))
    assert f'data-event="{row.id}"' in text
    assert f"{row.chain}/{row.seq}" in text and bytes(row.hash).hex()[:12] in text
    assert "<td>system</td>" in text  # the events' actor
