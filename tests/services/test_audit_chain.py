"""The tamper-evident audit log (issue 14): every audit_events row is chained by the database,
``portal audit verify`` recomputes the chains in Python and names the entry where one breaks
(edited, deleted, inserted), and anchors record every head so that a rewrite which recomputed
the later hashes is caught too. Tampering is done as the table's owner (``as_owner``), who
alone can step round the append-only and chaining triggers."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from prometheus_client import CollectorRegistry

from portal.domain.types import Actor
from portal.services.identity import roles, users
from portal.services.shared import audit, audit_chain
from portal.services.shared.uow import UnitOfWork
from portal.worker import Worker, WorkerMetrics
from tests.conftest import SYSTEM, Factory, as_owner

ENTRY = (
    "SELECT id, chain, seq, occurred_at, actor_kind, actor_id, action, subject_type,"
    " subject_id, outcome, address::text AS address, data::text AS data, hash"
    " FROM audit_events WHERE id = :id"
)


def verify(app: Flask) -> tuple[int, str]:
    result = app.test_cli_runner().invoke(args=["audit", "verify"])
    return result.exit_code, result.output


def entry(connection: sa.Connection, entry_id: int) -> Any:
    return connection.execute(sa.text(ENTRY), {"id": entry_id}).one()


def add_events(uow: UnitOfWork, n: int, action: str = "test.event") -> list[int]:
    """``n`` events in one transaction; their ids."""

    def work(u: UnitOfWork) -> list[int]:
        for i in range(n):
            audit.record(u, SYSTEM, action, "test", i, data={"i": i})
        u.flush()
        rows = u.execute(
            "SELECT id FROM audit_events WHERE action = :a ORDER BY id DESC LIMIT :n",
            {"a": action, "n": n},
        )
        return sorted(r.id for r in rows)

    return uow.run(work)


def changed(row: Any, **values: Any) -> SimpleNamespace:
    """A copy of an entry's row with some values changed (what a forger writes)."""
    return SimpleNamespace(**{**row._asdict(), **values})


def content_of(row: Any) -> str:
    return audit_chain.content(
        id=row.id, chain=row.chain, seq=row.seq, occurred_at=row.occurred_at,
        actor_kind=row.actor_kind, actor_id=row.actor_id, action=row.action,
        subject_type=row.subject_type, subject_id=row.subject_id, outcome=row.outcome,
        address=row.address, data=row.data,
    )  # fmt: skip


@pytest.fixture
def trail(uow: UnitOfWork, make: Factory) -> list[int]:
    """Some real events (a user made, a role changed) and ten of our own, on one chain."""
    admin = make.user(roles=("admin",))
    someone = make.user()
    roles.assign_role(uow, actor=admin, user_id=someone.id, role="support")
    return add_events(uow, 10)


def test_every_insert_is_chained_and_verifies(app, connection, uow, trail) -> None:
    # Written by hand, as a PL/pgSQL movement function or psql would: the trigger chains it
    # too, and overrides any chain position the inserter made up.
    connection.execute(
        sa.text(
            "INSERT INTO audit_events (actor_kind, action, subject_type, data, address, chain,"
            " seq, hash) VALUES ('system', 'test.raw', 'test', CAST(:data AS jsonb),"
            " '2001:db8::1', 9, 999, 'x')"
        ),
        {"data": json.dumps({"é": 'line\nbreak "quoted" | 3:x', "n": 1.50, "z": None})},
    )
    raw = connection.execute(
        sa.text("SELECT id, seq, octet_length(hash) AS n FROM audit_events"
                " WHERE action = 'test.raw'")
    ).one()  # fmt: skip
    assert raw.seq != 999 and raw.n == 32
    # Python's canonical content is the database's, to the byte.
    for entry_id in (*trail, raw.id):
        row = entry(connection, entry_id)
        sql = connection.execute(
            sa.text(
                "SELECT audit_event_content(id, chain, seq, occurred_at, actor_kind, actor_id,"
                " action, subject_type, subject_id, outcome, address, data) FROM audit_events"
                " WHERE id = :id"
            ),
            {"id": entry_id},
        ).scalar_one()
        assert content_of(row) == sql
    # One transaction's entries are consecutive on one chain.
    mine = [entry(connection, i) for i in trail]
    assert len({r.chain for r in mine}) == 1
    assert [r.seq for r in mine] == list(range(mine[0].seq, mine[0].seq + 10))

    code, output = verify(app)
    assert code == 0, output
    assert "OK: every audit chain is intact" in output


def _bypassing(connection: sa.Connection, trigger: str, statement: str, **params: Any) -> None:
    """Run ``statement`` as the table's owner with ``trigger`` off (this transaction only)."""
    with as_owner(connection):
        connection.execute(sa.text(f"ALTER TABLE audit_events DISABLE TRIGGER {trigger}"))
        connection.execute(sa.text(statement), params)
        connection.execute(sa.text(f"ALTER TABLE audit_events ENABLE TRIGGER {trigger}"))


def test_an_edited_entry_is_named(app, connection, trail) -> None:
    edited = trail[4]
    edit = "UPDATE audit_events SET data = '{\"i\": 40}' WHERE id = :id"
    _bypassing(connection, "audit_events_append_only", edit, id=edited)

    code, output = verify(app)
    assert code == 1
    assert "BROKEN (edited)" in output
    assert f"entry {edited} (seq" in output and f"entry {edited} was edited or forged" in output
    assert output.count("BROKEN") == 1, output  # the next entry still follows its stored hash


def test_an_edited_entry_whose_hash_was_recomputed_is_named_at_the_next_link(
    app, connection, trail
) -> None:
    edited = entry(connection, trail[4])
    forged = changed(edited, data='{"i": 40}')
    before = entry(connection, trail[3])
    new_hash = audit_chain.link(bytes(before.hash), content_of(forged))
    _bypassing(connection, "audit_events_append_only",
               "UPDATE audit_events SET data = '{\"i\": 40}', hash = :h WHERE id = :id",
               h=new_hash, id=edited.id)  # fmt: skip

    code, output = verify(app)
    assert code == 1
    assert f"entry {trail[5]} (seq {edited.seq + 1}) does not follow from entry {edited.id}" in (
        output
    )


def test_a_deleted_entry_is_named(app, connection, trail) -> None:
    gone = entry(connection, trail[6])
    _bypassing(connection, "audit_events_append_only",
               "DELETE FROM audit_events WHERE id = :id", id=gone.id)  # fmt: skip

    code, output = verify(app)
    assert code == 1
    assert f"BROKEN (deleted) at chain {gone.chain} seq {gone.seq} entry {trail[7]}" in output
    assert f"the entry at seq {gone.seq} is missing before entry {trail[7]}" in output


def test_deleted_last_entries_are_named_against_the_head(app, connection, trail) -> None:
    last = entry(connection, trail[-1])
    _bypassing(connection, "audit_events_append_only",
               "DELETE FROM audit_events WHERE id = ANY(:ids)", ids=trail[-2:])  # fmt: skip

    code, output = verify(app)
    assert code == 1
    assert (f"chain {last.chain}: entries seq {last.seq - 1}..{last.seq} (2) are missing at its"
            f" end (after entry {trail[-3]}") in output  # fmt: skip


def test_an_inserted_forged_entry_is_named(app, connection, trail) -> None:
    """A forger who knows the algorithm writes a well-formed entry with the chaining trigger
    off: its hash is right, but it is past the chain's head."""
    last = entry(connection, trail[-1])
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

    code, output = verify(app)
    assert code == 1
    assert (f"BROKEN (inserted) at chain {last.chain} seq {last.seq + 1} entry {forged_id}:"
            f" chain {last.chain}: entry {forged_id} (seq {last.seq + 1}) is past the chain's"
            f" head (seq {last.seq})") in output  # fmt: skip


def test_an_inserted_entry_with_a_made_up_hash_is_named(app, connection, trail) -> None:
    """Without the unique (chain, seq) constraint a forger can put an entry at a taken
    position: named as inserted."""
    at = entry(connection, trail[2])
    with as_owner(connection):
        connection.execute(
            sa.text("ALTER TABLE audit_events DROP CONSTRAINT uq_audit_events_chain")
        )
    _bypassing(
        connection, "audit_events_chain",
        "INSERT INTO audit_events (actor_kind, action, subject_type, chain, seq, hash)"
        " VALUES ('system', 'test.forged', 'test', :chain, :seq, :hash)",
        chain=at.chain, seq=at.seq, hash=bytes(32),
    )  # fmt: skip
    forged = connection.execute(
        sa.text("SELECT id FROM audit_events WHERE action = 'test.forged'")
    ).scalar_one()

    code, output = verify(app)
    assert code == 1
    assert f"entry {forged} has the position of entry {at.id} (seq {at.seq}): inserted" in output


def test_anchors_record_every_head_and_verify(app, connection, uow, trail) -> None:
    registry = CollectorRegistry()
    worker = Worker(lambda: uow, metrics=WorkerMetrics(registry))
    first = worker.anchor_audit(uow)
    assert first.entry_id is not None
    heads = {
        r.chain: (r.seq, bytes(r.hash).hex())
        for r in connection.execute(sa.text("SELECT * FROM audit_chain_heads"))
    }
    anchor_row = entry(connection, first.entry_id)
    assert anchor_row.action == "audit.anchor"
    recorded = json.loads(anchor_row.data)["chains"]
    # The anchor's own chain moved on by the anchor itself.
    heads[anchor_row.chain] = (anchor_row.seq - 1, recorded[str(anchor_row.chain)]["hash"])
    assert {int(c): (v["seq"], v["hash"]) for c, v in recorded.items()} == heads
    last = entry(connection, trail[-1])
    assert (
        registry.get_sample_value(
            "portal_audit_chain_head", {"chain": str(last.chain), "hash": bytes(last.hash).hex()}
        )
        == last.seq
    )
    assert registry.get_sample_value("portal_audit_anchor_timestamp_seconds") > 0

    # Nothing new but the anchor itself: no second anchor.
    assert worker.anchor_audit(uow).entry_id is None
    add_events(uow, 1)
    second = worker.anchor_audit(uow)
    assert second.entry_id is not None and second.entry_id != first.entry_id

    code, output = verify(app)
    assert code == 0, output
    assert "2 anchor(s)" in output


def test_a_rewritten_chain_is_caught_by_its_anchor(app, connection, uow, trail) -> None:
    """Edit an entry and recompute every later hash and the head, as an owner who knows the
    algorithm could: each link holds, but the anchor taken before no longer matches."""
    anchored = audit_chain.anchor(uow)
    assert anchored.entry_id is not None
    victim = entry(connection, trail[3])
    rows = connection.execute(
        sa.text(ENTRY.replace("WHERE id = :id", "WHERE chain = :c AND seq >= :s ORDER BY seq")),
        {"c": victim.chain, "s": victim.seq},
    ).all()
    previous = bytes(
        connection.execute(
            sa.text("SELECT hash FROM audit_events WHERE chain = :c AND seq = :s"),
            {"c": victim.chain, "s": victim.seq - 1},
        ).scalar_one()
    )
    with as_owner(connection):
        connection.execute(
            sa.text("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only")
        )
        for row in rows:
            if row.id == victim.id:
                row = changed(row, data='{"i": 30}')
            previous = audit_chain.link(previous, content_of(row))
            connection.execute(
                sa.text(
                    "UPDATE audit_events SET data = CAST(:d AS jsonb), hash = :h WHERE id = :id"
                ),
                {"d": row.data, "h": previous, "id": row.id},
            )
        connection.execute(
            sa.text("ALTER TABLE audit_events ENABLE TRIGGER audit_events_append_only")
        )
        connection.execute(
            sa.text("UPDATE audit_chain_heads SET hash = :h WHERE chain = :c"),
            {"h": previous, "c": victim.chain},
        )

    code, output = verify(app)
    assert code == 1
    assert "BROKEN (edited)" not in output  # every link was recomputed
    claimed = {h.chain: h for h in anchored.heads}[victim.chain]
    assert f"BROKEN (anchor) at chain {victim.chain} seq {claimed.seq}" in output
    assert f"anchor entry {anchored.entry_id} recorded seq {claimed.seq}" in output


def test_security_and_staff_events_carry_before_after_values(uow, make, connection) -> None:
    admin = make.user(roles=("admin",))
    someone = make.user()
    roles.assign_role(uow, actor=admin, user_id=someone.id, role="support")
    users.update_user(uow, actor=admin, user_id=someone.id, first_name="Renamed")
    role = roles.create_role(uow, actor=admin, name="auditors", permissions=[])
    roles.grant_permission(uow, actor=admin, role=role.id, permission="users:read")
    rows = {
        r.action: r.data
        for r in connection.execute(
            sa.text("SELECT action, data FROM audit_events WHERE actor_id = :a ORDER BY id"),
            {"a": admin.id},
        )
    }
    assert rows["user.assign_role"]["roles"] == {
        "from": ["cardholder"], "to": ["cardholder", "support"]
    }  # fmt: skip
    assert rows["user.update"]["first_name"]["to"] == "Renamed"
    assert rows["role.grant_permission"]["permissions"] == {"from": [], "to": ["users:read"]}


def test_request_events_carry_the_client_address(app, connection, make) -> None:
    someone = make.user()
    email = connection.execute(
        sa.text("SELECT email FROM users WHERE id = :id"), {"id": someone.id}
    ).scalar_one()
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = "203.0.113.9"
    answer = client.post("/api/v1/auth/token", json={"email": email, "password": "wrong-1234567"})
    assert answer.status_code == 401
    row = connection.execute(
        sa.text("SELECT outcome, address::text AS address, data FROM audit_events"
                " WHERE action = 'auth.sign_in' AND subject_id = :id"),
        {"id": someone.id},
    ).one()  # fmt: skip
    assert (row.outcome, row.address, row.data["reason"]) == (
        "failure", "203.0.113.9/32", "wrong_password"
    )  # fmt: skip
    # Outside a request (the worker, the CLI) there is none.
    assert audit.current_address() is None


def test_addresses_are_checked_not_trusted(uow, connection) -> None:
    actor = Actor.system("tests")
    uow.run(lambda u: audit.record(u, actor, "test.addr", "test", None, address="not an ip"))
    uow.run(lambda u: audit.record(u, actor, "test.addr", "test", None, address="fe80::1%eth0"))
    found = connection.execute(
        sa.text("SELECT address::text FROM audit_events WHERE action = 'test.addr' ORDER BY id")
    ).scalars().all()  # fmt: skip
    assert found == [None, "fe80::1/128"]


def test_entries_on_no_chain_or_on_a_chain_without_a_head_are_named(app, connection, trail):
    with as_owner(connection):
        connection.execute(sa.text("ALTER TABLE audit_events ALTER COLUMN chain DROP NOT NULL"))
    for chain, seq in ((None, None), (99, 1)):
        _bypassing(
            connection, "audit_events_chain",
            "INSERT INTO audit_events (actor_kind, action, subject_type, chain, seq, hash)"
            " VALUES ('system', 'test.forged', 'test', :chain, coalesce(:seq, 0), :hash)",
            chain=chain, seq=seq, hash=bytes(32),
        )  # fmt: skip
    unchained, headless = connection.execute(
        sa.text("SELECT id FROM audit_events WHERE action = 'test.forged' ORDER BY id")
    ).scalars()  # fmt: skip

    code, output = verify(app)
    assert code == 1
    assert f"entry {unchained} is on no chain" in output
    assert f"chain 99: entry {headless} (seq 1) is on a chain that has no head" in output


def test_a_chain_read_again_after_a_retry_is_counted_once() -> None:
    """verify() starts a chain again when its read is retried: the state goes back."""
    walk = audit_chain._Walk([(50, {0: (1, "ab")})])
    mark = walk.mark(0)
    walk.feed(SimpleNamespace(kind="h", chain=0, seq=0, hash=bytes(32)))
    walk.end()
    walk.restore(mark)
    walk.feed(SimpleNamespace(kind="h", chain=0, seq=0, hash=bytes(32)))
    report = walk.report()
    assert len(report.chains) == 1
    assert [b.kind for b in report.breaks] == ["anchor"]  # seq 1 was anchored, never seen
