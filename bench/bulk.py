"""The ``--size large`` dataset written in bulk (COPY and set-based SQL), not through the services.

``add_cardholders`` writes cardholders (``holder<i>@bench.test``, verified, role cardholder),
their cards (Luhn-valid numbers sealed by Portal's own vault, bound to their public ids, with
keyed fingerprints, as ``portal.services.wallet.cards.issue_card`` seals them), one wallet
account per card and one succeeded top-up per card (a ``top_up`` journal entry: the funding
account debited, the wallet credited). ``add_transfers`` writes succeeded transfers between
random cards of different cardholders spread over a period, each a balanced ``transfer`` entry
with its two postings; amounts are small against the top-ups, so no wallet can go below zero.
``add_merchants`` writes active merchants owned by one user. ``sync_balances`` sets every wallet's
cached balance to the sum of its postings. Nothing here writes audit events, outbox events or
idempotency keys: the history is what the ledger and the lists read, not a replay of requests.

Everything runs in the caller's transaction as a superuser, with ``session_replication_role =
replica`` for the load (no foreign-key or per-row trigger work for millions of rows: the rows
are consistent by construction), so ``portal ledger verify`` afterwards is the proof that the
entries balance and the cached balances equal the postings (tests/bench/test_bulk.py runs it).
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any

PAN_PURPOSE = "card.pan"  # portal.services.wallet.cards.PAN_PURPOSE
VALID_YEARS = 4


def add_cardholders(
    conn: Any,
    vault: Any,
    *,
    holders: int,
    cards_per_holder: int,
    funds: int,
    at: datetime,
    first: int = 0,
    keep_credentials: int = 0,
    seed: int = 12,
) -> list[list[Any]]:
    """Write ``holders`` cardholders numbered from ``first``, with their cards, wallets and
    one top-up of ``funds`` (USD minor units) per card, dated ``at``. Returns [public id,
    number, expiry month, expiry year, security code] of the first ``keep_credentials`` cards
    (numbers are shown once, as at issue)."""
    from portal.domain import cards as card_numbers
    from portal.domain.ids import new_public_id

    rng = random.Random(seed)  # noqa: S311 (test data, not secrets)
    conn.execute("SET LOCAL session_replication_role = replica")
    conn.execute(
        "INSERT INTO users (email, email_canonical, first_name, last_name, email_verified_at,"
        " created_at, updated_at)"
        " SELECT 'holder' || g || '@bench.test', 'holder' || g || '@bench.test', 'Bench',"
        " 'Holder' || g, %(at)s, %(at)s, %(at)s FROM generate_series(%(lo)s, %(hi)s) AS g",
        {"at": at, "lo": first, "hi": first + holders - 1},
    )
    conn.execute(
        "INSERT INTO user_roles (user_id, role_id, created_at)"
        " SELECT u.id, r.id, %(at)s FROM users u JOIN roles r ON r.name = 'cardholder'"
        " WHERE u.email = ANY(%(emails)s)",
        {"at": at, "emails": [f"holder{i}@bench.test" for i in range(first, first + holders)]},
    )
    user_ids = [
        r[0]
        for r in conn.execute(
            "SELECT id FROM users WHERE email = ANY(%s) ORDER BY id",
            ([f"holder{i}@bench.test" for i in range(first, first + holders)],),
        )
    ]
    month, year = at.month, at.year + VALID_YEARS
    kept: list[list[Any]] = []
    with conn.cursor().copy(
        "COPY cards (public_id, user_id, card_type, brand, last4, pan_ciphertext, key_version,"
        " pan_bound, fingerprint, expiry_month, expiry_year, currency, status, created_at,"
        " updated_at) FROM STDIN"
    ) as copy:
        for user_id in user_ids:
            for _ in range(cards_per_holder):
                number = card_numbers.generate_number("visa", rng)
                public_id = new_public_id("card")
                blob, version = vault.encrypt(
                    number.encode(), purpose=PAN_PURPOSE, record=public_id
                )
                copy.write_row(
                    (public_id, user_id, "debit", "visa", number[-4:], blob, version, True,
                     vault.fingerprint(number), month, year, "USD", "active", at, at)
                )  # fmt: skip
                if len(kept) < keep_credentials:
                    kept.append(
                        [public_id, number, month, year, vault.security_code(number, month, year)]
                    )
    conn.execute(
        "INSERT INTO accounts (kind, card_id, currency, posted_minor, pending_debits_minor,"
        " created_at) SELECT 'wallet', c.id, c.currency, 0, 0, c.created_at FROM cards c"
        " WHERE c.user_id = ANY(%s)",
        (user_ids,),
    )
    conn.execute(
        "CREATE TEMP TABLE bench_top_ups ON COMMIT DROP AS"
        " SELECT nextval(pg_get_serial_sequence('journal_entries', 'id')) AS entry_id,"
        " c.id AS card_id, c.user_id, a.id AS account_id, f.id AS funding_id"
        " FROM cards c JOIN accounts a ON a.card_id = c.id"
        " JOIN accounts f ON f.kind = 'funding' AND f.currency = c.currency"
        " WHERE c.user_id = ANY(%s)",
        (user_ids,),
    )
    for statement in (
        "INSERT INTO journal_entries (id, kind, description, created_at)"
        " SELECT entry_id, 'top_up', 'bench top-up', %(at)s FROM bench_top_ups",
        "INSERT INTO postings (journal_entry_id, account_id, amount_minor, currency, created_at)"
        " SELECT entry_id, funding_id, -%(funds)s, 'USD', %(at)s FROM bench_top_ups UNION ALL"
        " SELECT entry_id, account_id, %(funds)s, 'USD', %(at)s FROM bench_top_ups ORDER BY 1",
        "INSERT INTO top_ups (card_id, user_id, amount_minor, currency, method, status,"
        " journal_entry_id, funding_reference, created_by_kind, created_at, completed_at)"
        " SELECT card_id, user_id, %(funds)s, 'USD', 'bank_transfer', 'succeeded', entry_id,"
        " 'fund_bench_' || entry_id, 'system', %(at)s, %(at)s FROM bench_top_ups",
        "DROP TABLE bench_top_ups",
    ):
        conn.execute(statement, {"at": at, "funds": funds})
    conn.execute("SET LOCAL session_replication_role = DEFAULT")
    return kept


def add_transfers(
    conn: Any, *, count: int, start: datetime, end: datetime, max_amount: int, seed: int = 7
) -> int:
    """Write ``count`` succeeded transfers between random wallet cards of different people
    (1 to ``max_amount`` minor units each), evenly spread from ``start`` to ``end``."""
    conn.execute("SET LOCAL session_replication_role = replica")
    conn.execute("SELECT setseed(%s)", (1 / (seed + 1),))
    conn.execute(
        "CREATE TEMP TABLE bench_wallets ON COMMIT DROP AS SELECT row_number() OVER"
        " (ORDER BY a.id) - 1 AS n, a.id AS account_id, a.card_id, c.user_id, a.currency"
        " FROM accounts a JOIN cards c ON c.id = a.card_id WHERE a.kind = 'wallet'"
        " AND a.currency = 'USD'"
    )
    conn.execute("CREATE UNIQUE INDEX ON bench_wallets (n)")
    wallets = conn.execute("SELECT count(*) FROM bench_wallets").fetchone()[0]
    if wallets < 2:
        raise ValueError("transfers need at least two wallets")
    span = (end - start).total_seconds()
    conn.execute(
        "CREATE TEMP TABLE bench_moves ON COMMIT DROP AS"
        " SELECT g, nextval(pg_get_serial_sequence('journal_entries', 'id')) AS entry_id,"
        " %(start)s::timestamptz + make_interval(secs => %(span)s * g / %(count)s) AS at,"
        " floor(random() * %(w)s)::bigint AS src,"
        " 1 + floor(random() * (%(w)s - 1))::bigint AS step,"
        " 1 + floor(random() * %(max)s)::bigint AS amount"
        " FROM generate_series(0, %(count)s - 1) AS g",
        {"start": start, "span": span, "count": count, "w": wallets, "max": max_amount},
    )
    conn.execute(
        "CREATE TEMP TABLE bench_legs ON COMMIT DROP AS"
        " SELECT m.g, m.entry_id, m.at, m.amount, s.account_id AS from_account,"
        " s.card_id AS from_card, s.user_id, d.account_id AS to_account, d.card_id AS to_card"
        " FROM bench_moves m JOIN bench_wallets s ON s.n = m.src"
        " JOIN bench_wallets d ON d.n = (m.src + m.step) %% %(w)s",
        {"w": wallets},
    )
    for statement in (
        "INSERT INTO journal_entries (id, kind, description, created_at)"
        " SELECT entry_id, 'transfer', '', at FROM bench_legs ORDER BY g",
        "INSERT INTO postings (journal_entry_id, account_id, amount_minor, currency, created_at)"
        " SELECT entry_id, from_account, -amount, 'USD', at FROM bench_legs UNION ALL"
        " SELECT entry_id, to_account, amount, 'USD', at FROM bench_legs ORDER BY 1, 3",
        "INSERT INTO transfers (from_card_id, to_card_id, amount_minor, currency, memo, status,"
        " journal_entry_id, created_by_kind, created_by_id, created_at)"
        " SELECT from_card, to_card, amount, 'USD', '', 'succeeded', entry_id, 'user', user_id,"
        " at FROM bench_legs ORDER BY g",
        "DROP TABLE bench_legs",
        "DROP TABLE bench_moves",
        "DROP TABLE bench_wallets",
    ):
        conn.execute(statement)
    conn.execute("SET LOCAL session_replication_role = DEFAULT")
    return count


def add_merchants(conn: Any, *, count: int, owner_id: int, reviewer_id: int, at: datetime) -> int:
    """Write ``count`` active USD merchants owned by ``owner_id`` (no keys, no history)."""
    conn.execute(
        "INSERT INTO merchants (user_id, name, website, contact_email, settlement_currency,"
        " status, reviewed_by_id, reviewed_at, created_at, updated_at)"
        " SELECT %(owner)s, 'Bench Bulk Shop ' || g, 'https://shop.example',"
        " 'merchant@bench.test', 'USD', 'active', %(reviewer)s, %(at)s, %(at)s, %(at)s"
        " FROM generate_series(1, %(n)s) AS g",
        {"owner": owner_id, "reviewer": reviewer_id, "at": at, "n": count},
    )
    return count


def sync_balances(conn: Any) -> None:
    """Every wallet's cached posted balance := the sum of its postings."""
    conn.execute(
        "UPDATE accounts a SET posted_minor = COALESCE(p.total, 0) FROM accounts w"
        " LEFT JOIN (SELECT account_id, SUM(amount_minor) AS total FROM postings"
        " GROUP BY account_id) p ON p.account_id = w.id"
        " WHERE a.id = w.id AND w.kind = 'wallet' AND a.posted_minor IS DISTINCT FROM"
        " COALESCE(p.total, 0)"
    )


def plan(holders: int, cards_per_holder: int, postings: int) -> int:
    """The transfers that bring the ledger to about ``postings`` postings: each card's top-up
    is two, each transfer two."""
    return max(0, (postings - 2 * holders * cards_per_holder) // 2)


def period(end: datetime, days: int) -> tuple[datetime, datetime]:
    return end - timedelta(days=days), end
