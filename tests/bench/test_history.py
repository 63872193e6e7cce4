"""bench/history.py: old transfers written in bulk for the benchmark's heavy cardholder must make
a ledger that reconciles, a feed the activity service pages through, and unchanged balances."""

from __future__ import annotations

import importlib.util
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import pytest
import sqlalchemy as sa

from portal.services.ledger import reconciliation
from portal.services.wallet import activity
from tests.conftest import as_owner

ROOT = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_history", ROOT / "bench" / "history.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_history"] = module
    spec.loader.exec_module(module)
    return module


history = _load()
END = datetime(2026, 11, 1, tzinfo=UTC)


def _balances(connection: sa.Connection, card_ids: list[int]) -> dict[int, int]:
    rows = connection.execute(
        sa.text("SELECT card_id, posted_minor FROM accounts WHERE card_id = ANY(:ids)"),
        {"ids": card_ids},
    )
    return {int(c): int(b) for c, b in rows}


def test_history_reconciles_keeps_balances_and_pages(connection, uow, make) -> None:
    holder = make.user()
    a, b = make.card(holder, balance="50.00"), make.card(holder, balance="20.00")
    before = _balances(connection, [a.card_id, b.card_id])
    with as_owner(connection):
        written = history.add_transfer_history(
            connection.connection.driver_connection,
            card_a=a.card_id,
            card_b=b.card_id,
            count=60,
            days=730,
            end=END,
        )
        connection.execute(sa.text("SET CONSTRAINTS ALL IMMEDIATE"))  # the balance trigger
    assert written == 60
    assert _balances(connection, [a.card_id, b.card_id]) == before
    times = connection.execute(
        sa.text(
            "SELECT min(created_at), max(created_at), count(*) FROM transfers"
            " WHERE memo = 'bench history' AND from_card_id = ANY(:ids)"
        ),
        {"ids": [a.card_id, b.card_id]},
    ).one()
    assert times[2] == 60 and times[1] < END and (END - times[0]).days in (729, 730)
    report = reconciliation.reconcile(uow)
    assert report.ok, report.violations

    # The feed shows them (own-card transfers once each, plus the two top-ups), page by page.
    seen, cursor = [], None
    while True:
        page = activity.list_activity(uow, actor=holder, limit=25, starting_after=cursor)
        seen += page.items
        if not page.has_more:
            break
        cursor = page.items[-1].id
    assert len(seen) == 62 and len({i.id for i in seen}) == 62
    assert sum(1 for i in seen if i.kind == "transfer") == 60


@pytest.mark.parametrize("count", [0, 3, -2])
def test_an_odd_or_empty_history_is_refused(connection, make, count: int) -> None:
    holder = make.user()
    a, b = make.card(holder), make.card(holder)
    with as_owner(connection), pytest.raises(ValueError, match="even"):
        history.add_transfer_history(
            connection.connection.driver_connection,
            card_a=a.card_id,
            card_b=b.card_id,
            count=count,
            days=1,
            end=END,
        )


def test_cards_in_two_currencies_are_refused(connection, make) -> None:
    holder = make.user()
    a, b = make.card(holder), make.card(holder, currency="EUR")
    with as_owner(connection), pytest.raises(ValueError, match="same currency"):
        history.add_transfer_history(
            connection.connection.driver_connection,
            card_a=a.card_id,
            card_b=b.card_id,
            count=2,
            days=1,
            end=END,
        )
