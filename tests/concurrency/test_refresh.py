"""Refresh-token rotation under concurrency, with real commits on separate connections: many
clients refreshing with one token at once all get a working pair (the same live refresh token),
no errors and no revoked family; a replay after the grace period revokes the family."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta

import pytest
import sqlalchemy as sa

from portal.domain.errors import Unauthenticated
from portal.domain.types import Actor
from portal.services.identity import sessions, tokens
from portal.services.shared.uow import UnitOfWork, utcnow
from tests.concurrency.helpers import (
    error_kinds,
    fetch_all,
    fetch_value,
    run_together,
    warm_pool,
)
from tests.conftest import Factory

pytestmark = pytest.mark.concurrency

THREADS = 24


def family(engine: sa.Engine, family_id) -> list[sa.Row[object]]:
    return fetch_all(
        engine,
        "SELECT id, parent_id, used_at, revoked_at FROM refresh_tokens WHERE family_id = :f"
        " ORDER BY id",
        f=family_id,
    )


def test_concurrent_refreshes_with_one_token_all_succeed(
    real_uow: Callable[[], UnitOfWork], committing_engine: sa.Engine
):
    user = Factory(real_uow()).user()
    assert user.id is not None
    first = tokens.issue_tokens(real_uow(), user_id=user.id)
    warm_pool(committing_engine)

    outcomes = run_together(
        THREADS, lambda _i: tokens.refresh(real_uow(), refresh_token=first.refresh_token)
    )

    assert error_kinds(outcomes) == {}
    pairs = [o.value for o in outcomes]
    # Exactly one rotation happened; every caller holds the one live refresh token.
    assert {p.refresh_token for p in pairs} == {pairs[0].refresh_token}
    assert pairs[0].refresh_token != first.refresh_token
    assert len({p.access_token for p in pairs}) == THREADS
    settings = real_uow().settings
    for pair in pairs:
        claims = tokens.verify_access_token(settings, pair.access_token)
        actor, _ = tokens.actor_for_access(real_uow(), claims)
        assert actor.id == user.id
    rows = family(committing_engine, first.family_id)
    assert len(rows) == 2 and all(r.revoked_at is None for r in rows)
    assert rows[0].used_at is not None and rows[1].used_at is None

    # The shared token keeps working...
    nxt = tokens.refresh(real_uow(), refresh_token=pairs[0].refresh_token)

    # ...and a replay of the first token after the grace period is theft: family revoked.
    late = real_uow()
    late.clock = lambda: utcnow() + timedelta(seconds=settings.refresh_grace_seconds + 5)
    with pytest.raises(Unauthenticated):
        tokens.refresh(late, refresh_token=first.refresh_token)
    rows = family(committing_engine, first.family_id)
    assert len(rows) == 3 and all(r.revoked_at is not None for r in rows)
    with pytest.raises(Unauthenticated):
        tokens.refresh(real_uow(), refresh_token=nxt.refresh_token)
    events = fetch_all(
        committing_engine,
        "SELECT subject_id, outcome FROM audit_events WHERE action = 'token.reuse_detected'",
    )
    assert [(e.subject_id, e.outcome) for e in events] == [(user.id, "failure")]


def test_concurrent_refreshes_of_different_families_do_not_interfere(
    real_uow: Callable[[], UnitOfWork], committing_engine: sa.Engine
):
    user = Factory(real_uow()).user()
    assert user.id is not None
    starts = [tokens.issue_tokens(real_uow(), user_id=user.id) for _ in range(THREADS)]
    warm_pool(committing_engine)

    outcomes = run_together(
        THREADS, lambda i: tokens.refresh(real_uow(), refresh_token=starts[i].refresh_token)
    )

    assert error_kinds(outcomes) == {}
    assert len({o.value.refresh_token for o in outcomes}) == THREADS
    revoked = fetch_all(
        committing_engine, "SELECT id FROM refresh_tokens WHERE revoked_at IS NOT NULL"
    )
    assert revoked == []


def _lock_waiters(engine: sa.Engine) -> int:
    return fetch_value(
        engine,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock'",
    )


def _wait_for_waiters(engine: sa.Engine, count: int) -> None:
    deadline = time.monotonic() + 20
    while _lock_waiters(engine) < count:
        assert time.monotonic() < deadline, "the call did not queue for the family's lock"
        time.sleep(0.02)


def test_a_revocation_queued_behind_a_refresh_revokes_the_token_it_issued(
    real_uow: Callable[[], UnitOfWork], committing_engine: sa.Engine
):
    """A refresh in flight and a revocation of its family (issue 11 A10): the revocation waits
    for the family's lock as the refresh does, so once the refresh has issued its token the
    revocation sees that token and revokes it too; no live token survives."""
    user = Factory(real_uow()).user()
    assert user.id is not None
    first = tokens.issue_tokens(real_uow(), user_id=user.id)
    outcomes: dict[str, object] = {}
    with committing_engine.connect() as holder:
        # Something else holds the family's lock (as a refresh does) while both calls queue.
        holder.execute(sa.text("SELECT id FROM refresh_tokens WHERE family_id = :f"
                               " AND parent_id IS NULL FOR UPDATE"),
                       {"f": first.family_id})  # fmt: skip

        def call(name: str, fn: Callable[[], object]) -> threading.Thread:
            def body() -> None:
                try:
                    outcomes[name] = fn()
                except Exception as exc:  # recorded, asserted below
                    outcomes[name] = exc

            thread = threading.Thread(target=body, daemon=True)
            thread.start()
            return thread

        before = _lock_waiters(committing_engine)
        refreshing = call(
            "refresh", lambda: tokens.refresh(real_uow(), refresh_token=first.refresh_token)
        )
        _wait_for_waiters(committing_engine, before + 1)  # the refresh is first in the queue
        revoking = call("revoke", lambda: sessions.revoke_family(
            real_uow(), actor=Actor.user(user.id), family_id=first.family_id))  # fmt: skip
        _wait_for_waiters(committing_engine, before + 2)
        holder.commit()
        refreshing.join(30)
        revoking.join(30)
    pair = outcomes["refresh"]
    assert isinstance(pair, tokens.TokenPair), pair  # it went first, and issued a token
    assert outcomes["revoke"] is None, outcomes["revoke"]
    rows = family(committing_engine, first.family_id)
    assert len(rows) == 2 and all(r.revoked_at is not None for r in rows), rows
    with pytest.raises(Unauthenticated):
        tokens.refresh(real_uow(), refresh_token=pair.refresh_token)
