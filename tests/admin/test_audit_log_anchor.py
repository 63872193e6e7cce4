"""The audit anchor on the web's /metrics: the latest hash per chain as the last anchor recorded
it, and how long entries have waited for an anchor (what PortalAuditAnchorStale watches)."""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa
from flask import Flask

from portal.services.shared import audit_chain
from portal.services.shared.uow import UnitOfWork
from tests.observability.test_metrics import TOKEN, scraped_app  # noqa: F401 (a fixture)
from tests.services.test_audit_chain import add_events


def scrape(app: Flask) -> str:
    answer = app.test_client().get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200
    return answer.get_data(as_text=True)


def plain(text: str, name: str) -> float:
    """An unlabelled sample's value (the test fails if it is not exported)."""
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    assert found, f"{name} is not exported"
    return float(found.group(1))


def heads_exported(text: str) -> dict[int, tuple[int, str]]:
    found = re.findall(r'^portal_audit_anchored_head\{chain="(\d+)",hash="([0-9a-f]*)"\} (\S+)$',
                       text, re.M)  # fmt: skip
    return {int(chain): (int(float(seq)), digest) for chain, digest, seq in found}


def test_the_web_exports_the_anchor_and_how_long_entries_wait_for_one(
    scraped_app: Flask,  # noqa: F811
    uow: UnitOfWork,
    clock: Any,
    connection: sa.Connection,
) -> None:
    clock.advance(minutes=-20)  # entries written 20 minutes ago, not anchored since
    add_events(uow, 3)
    waiting = scrape(scraped_app)
    age = plain(waiting, "portal_audit_unanchored_oldest_seconds")
    assert 1190 <= age < 3600, age

    clock.advance(minutes=20)
    anchored = audit_chain.anchor(uow)
    assert anchored.entry_id is not None
    text = scrape(scraped_app)

    assert plain(text, "portal_audit_unanchored_oldest_seconds") == 0
    stamp = plain(text, "portal_audit_last_anchor_entry_timestamp_seconds")
    assert stamp == anchored.at.timestamp()
    # The latest hash of every chain, as the anchor recorded it (the heads before the anchor).
    recorded = {h.chain: (h.seq, h.hash) for h in anchored.heads}
    assert heads_exported(text) == recorded
    heads = {
        r.chain: r.hex
        for r in connection.execute(
            sa.text("SELECT chain, encode(hash, 'hex') AS hex FROM audit_chain_heads")
        )
    }
    own = connection.execute(
        sa.text("SELECT chain FROM audit_events WHERE id = :id"), {"id": anchored.entry_id}
    ).scalar_one()
    assert {c: h for c, (_, h) in recorded.items() if c != own} == {
        c: h for c, h in heads.items() if c != own and c in recorded
    }

    # One more entry: waiting again, for as long as it has existed.
    clock.advance(minutes=-16)
    add_events(uow, 1, action="test.later")
    again = plain(scrape(scraped_app), "portal_audit_unanchored_oldest_seconds")
    assert 950 <= again < 3600, again
