"""Concurrent writers of the audit log (issue 14), committing for real: they spread over the
chains instead of queueing on one head, each transaction's entries stay consecutive on one
chain, anchors taken meanwhile land on the chains, and ``portal audit verify`` finds every
chain intact."""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from portal.services.shared import audit, audit_chain
from portal.services.shared.uow import UnitOfWork
from tests.concurrency.helpers import run_together
from tests.conftest import SYSTEM

pytestmark = pytest.mark.concurrency

THREADS = 12
ROUNDS = 15


def test_concurrent_writers_make_valid_chains(
    app, real_uow: Callable[[], UnitOfWork], committing_engine: sa.Engine
) -> None:
    def write(i: int) -> list[tuple[int, int]]:
        uow = real_uow()
        made: list[tuple[int, int]] = []
        for r in range(ROUNDS):
            events = 1 + (i + r) % 3

            def work(u: UnitOfWork, r: int = r, events: int = events) -> int:
                for k in range(events):
                    audit.record(u, SYSTEM, "test.concurrent", "thread", i,
                                 data={"round": r, "k": k})  # fmt: skip
                u.flush()
                time.sleep(random.uniform(0, 0.003))  # hold the head a while, as real work does
                return events

            made.append((r, uow.run(work)))
            if i == 0 and r % 5 == 0:
                audit_chain.anchor(uow)
        return made

    outcomes = run_together(THREADS, write)
    assert [o.error for o in outcomes] == [None] * THREADS
    expected = sum(n for o in outcomes for _, n in o.value)

    with committing_engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT chain, seq, subject_id, data FROM audit_events"
                " WHERE action = 'test.concurrent' ORDER BY chain, seq"
            )
        ).all()
        anchors = conn.execute(
            sa.text("SELECT count(*) FROM audit_events WHERE action = 'audit.anchor'")
        ).scalar_one()
    assert len(rows) == expected
    assert anchors >= 1
    # The writers did not all queue on one chain.
    assert len({r.chain for r in rows}) >= 3
    # Each transaction's entries are consecutive on one chain.
    positions: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
    for r in rows:
        positions[(r.subject_id, r.data["round"])].append((r.chain, r.seq))
    for (thread, rnd), spots in positions.items():
        assert len({c for c, _ in spots}) == 1, (thread, rnd, spots)
        seqs = sorted(s for _, s in spots)
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), (thread, rnd, spots)

    report = audit_chain.verify(real_uow())
    assert report.ok, report.breaks
    assert report.entries == expected + anchors
    result = app.test_cli_runner().invoke(args=["audit", "verify"])
    assert result.exit_code == 0, result.output


def test_a_writer_skips_a_held_head_and_waits_only_when_all_are_held(
    app, committing_engine: sa.Engine
) -> None:
    """Another transaction holds the writer's preferred head: the writer takes the next free
    one at once; with every head held it waits for its own (here until its lock timeout)."""
    holder = app.extensions["tests.owner_engine"].connect()
    writer = committing_engine.connect()
    insert = sa.text(
        "INSERT INTO audit_events (actor_kind, action, subject_type)"
        " VALUES ('system', 'test.skip', 'test') RETURNING chain"
    )
    try:
        chains = holder.execute(sa.text("SELECT count(*) FROM audit_chain_heads")).scalar_one()
        preferred = writer.execute(sa.text("SELECT pg_backend_pid()")).scalar_one() % chains
        holder.execute(
            sa.text("SELECT 1 FROM audit_chain_heads WHERE chain = :c FOR UPDATE"),
            {"c": preferred},
        )
        writer.execute(sa.text("SET lock_timeout = '2s'"))
        started = time.monotonic()
        assert writer.execute(insert).scalar_one() == (preferred + 1) % chains
        assert time.monotonic() - started < 1.0
        writer.rollback()

        holder.execute(sa.text("SELECT 1 FROM audit_chain_heads FOR UPDATE"))
        writer.execute(sa.text("SET lock_timeout = '300ms'"))
        with pytest.raises(sa.exc.OperationalError) as err:
            writer.execute(insert)
        assert getattr(err.value.orig, "sqlstate", None) == "55P03"  # lock_not_available
        writer.rollback()
    finally:
        holder.rollback()
        holder.close()
        writer.close()
