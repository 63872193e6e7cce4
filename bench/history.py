"""Bulk history for the benchmark's datasets, written with set-based SQL instead of the services.

``add_transfer_history`` gives one cardholder a long, old history: ``count`` succeeded transfers
back and forth between two of their own cards, spread evenly over the ``days`` before ``end``,
each a balanced journal entry (a debit and a credit of the same amount, as the wallet service
writes one) with its two postings and its ``transfers`` row. Consecutive transfers go in
opposite directions with the same amount, so an even count leaves both balances as they were;
the cached balances are set to the sum of the postings afterwards all the same, and
``portal ledger verify`` must pass on the result (tests/bench/test_history.py runs it).

The statements run in the caller's transaction, as the schema's owner (the runtime role may not
insert into the ledger this way, and should not). The deferred trigger that checks each entry
balances still fires at commit, once per posting.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

#: One row per movement to write: its id, time, direction and amount.
_PLAN = """
CREATE TEMP TABLE bench_history ON COMMIT DROP AS
SELECT g,
       nextval(pg_get_serial_sequence('journal_entries', 'id')) AS entry_id,
       %(end)s::timestamptz
         - make_interval(secs => %(days)s * 86400.0 * (%(count)s - g + 1) / %(count)s) AS at,
       CASE WHEN g %% 2 = 1 THEN a.id ELSE b.id END AS from_account,
       CASE WHEN g %% 2 = 1 THEN b.id ELSE a.id END AS to_account,
       CASE WHEN g %% 2 = 1 THEN a.card_id ELSE b.card_id END AS from_card,
       CASE WHEN g %% 2 = 1 THEN b.card_id ELSE a.card_id END AS to_card,
       100 + ((g + 1) / 2) %% 400 AS amount,
       a.currency
FROM generate_series(1, %(count)s) AS g
JOIN accounts a ON a.card_id = %(card_a)s
JOIN accounts b ON b.card_id = %(card_b)s AND b.currency = a.currency
"""

_WRITE = (
    "INSERT INTO journal_entries (id, kind, description, created_at)"
    " SELECT entry_id, 'transfer', 'bench history', at FROM bench_history ORDER BY g",
    "INSERT INTO postings (journal_entry_id, account_id, amount_minor, currency, created_at)"
    " SELECT entry_id, from_account, -amount, currency, at FROM bench_history"
    " UNION ALL SELECT entry_id, to_account, amount, currency, at FROM bench_history"
    " ORDER BY 1, 3",
    "INSERT INTO transfers (from_card_id, to_card_id, amount_minor, currency, memo, status,"
    " journal_entry_id, created_by_kind, created_by_id, created_at)"
    " SELECT h.from_card, h.to_card, h.amount, h.currency, 'bench history', 'succeeded',"
    " h.entry_id, 'user', c.user_id, h.at FROM bench_history h JOIN cards c ON c.id = h.from_card"
    " ORDER BY g",
    # Cached balances equal the postings (the reconciliation's first check).
    "UPDATE accounts a SET posted_minor = p.total FROM (SELECT account_id, SUM(amount_minor)"
    " AS total FROM postings WHERE account_id IN (SELECT from_account FROM bench_history"
    " UNION SELECT to_account FROM bench_history) GROUP BY account_id) p"
    " WHERE a.id = p.account_id",
)


def add_transfer_history(
    conn: Any, *, card_a: int, card_b: int, count: int, days: float, end: datetime
) -> int:
    """Write ``count`` old transfers between two cards of one cardholder (internal card ids) on
    the psycopg connection ``conn``, in its current transaction; returns how many were written.
    Raises ValueError for an odd or non-positive count (the balances would change) or cards
    that are the same or have no wallet account in one currency."""
    if count <= 0 or count % 2:
        raise ValueError("count must be a positive even number (balances stay as they were)")
    if card_a == card_b:
        raise ValueError("a transfer needs two different cards")
    params = {"card_a": card_a, "card_b": card_b, "count": count, "days": days, "end": end}
    conn.execute(_PLAN, params)
    planned = conn.execute("SELECT count(*) FROM bench_history").fetchone()[0]
    if planned != count:
        raise ValueError("both cards need a wallet account in the same currency")
    for statement in _WRITE:
        conn.execute(statement)
    return int(planned)
