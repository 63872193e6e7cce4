"""bench/bulk.py (the ``--size large`` generator) on a tiny size: what it writes must be a ledger
that reconciles, cards the vault opens and the wallet finds, and feeds the service pages."""

from __future__ import annotations

import importlib.util
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa

from portal.services.identity import users
from portal.services.ledger import reconciliation
from portal.services.shared.vault import Vault
from portal.services.wallet import activity
from tests.conftest import as_owner

ROOT = Path(__file__).resolve().parents[2]
AT = datetime(2024, 11, 1, tzinfo=UTC)
END = datetime(2026, 11, 1, tzinfo=UTC)
FIRST = 900_000  # holder numbers no other test uses


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_bulk", ROOT / "bench" / "bulk.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_bulk"] = module
    spec.loader.exec_module(module)
    return module


bulk = _load()


def test_a_tiny_bulk_dataset_reconciles_and_reads_back(app, connection, uow) -> None:
    vault = Vault.from_settings(app.config["SERVICE_SETTINGS"])
    with as_owner(connection):
        raw = connection.connection.driver_connection
        kept = bulk.add_cardholders(
            raw, vault, holders=6, cards_per_holder=2, funds=100_000, at=AT, first=FIRST,
            keep_credentials=3,
        )  # fmt: skip
        transfers = bulk.plan(6, 2, 124)  # 12 top-ups (24 postings) + 50 transfers
        bulk.add_transfers(raw, count=transfers, start=AT, end=END, max_amount=5_000)
        bulk.sync_balances(raw)
        holder = connection.execute(
            sa.text("SELECT id FROM users WHERE email = :e"), {"e": f"holder{FIRST}@bench.test"}
        ).scalar_one()
        bulk.add_merchants(raw, count=4, owner_id=holder, reviewer_id=holder, at=AT)
        assert raw.execute("SHOW session_replication_role").fetchone()[0] == "origin"
        connection.execute(sa.text("SET CONSTRAINTS ALL IMMEDIATE"))  # the balance trigger

    assert transfers == 50
    emails = [f"holder{FIRST + i}@bench.test" for i in range(6)]
    counts = connection.execute(
        sa.text(
            "SELECT (SELECT count(*) FROM users WHERE email = ANY(:e)),"
            " (SELECT count(*) FROM cards c JOIN users u ON u.id = c.user_id"
            "  WHERE u.email = ANY(:e)),"
            " (SELECT count(*) FROM top_ups t JOIN users u ON u.id = t.user_id"
            "  WHERE u.email = ANY(:e) AND t.status = 'succeeded'),"
            " (SELECT count(*) FROM transfers WHERE journal_entry_id IS NOT NULL"
            "  AND created_at BETWEEN :start AND :end),"
            " (SELECT count(*) FROM merchants WHERE name LIKE 'Bench Bulk Shop %'),"
            " (SELECT min(a.posted_minor) FROM accounts a JOIN cards c ON c.id = a.card_id"
            "  JOIN users u ON u.id = c.user_id WHERE u.email = ANY(:e))"
        ),
        {"e": emails, "start": AT, "end": END},
    ).one()
    assert tuple(counts[:5]) == (6, 12, 12, 50, 4)
    assert counts[5] >= 0
    report = reconciliation.reconcile(uow)
    assert report.ok, report.violations

    # The cards are sealed bound to their rows and found by their fingerprints.
    public_id, number, month, year, cvc = kept[0]
    row = connection.execute(
        sa.text("SELECT pan_ciphertext, key_version, fingerprint FROM cards WHERE public_id = :p"),
        {"p": public_id},
    ).one()
    opened = vault.decrypt(row[0], row[1], purpose=bulk.PAN_PURPOSE, record=public_id)
    assert opened.decode() == number and bytes(row[2]) == vault.fingerprint(number)
    assert len(kept) == 3 and cvc == vault.security_code(number, month, year)

    # A bulk cardholder signs in as any user would and reads their feed through the service.
    actor = users.actor_for(uow, holder)
    page = activity.list_activity(uow, actor=actor, limit=100)
    kinds = {item.kind for item in page.items}
    assert "top_up" in kinds and not page.has_more
