"""Ledger primitives used inside a unit of work: lock, post, hold, release.

Lock order, everywhere: customer accounts first, in one statement ordered by id; then user rows
(ordered by id). Nothing locks an account after a user row, so no two movements can deadlock.
System accounts (funding, payouts, fees) are never locked nor updated: their balances are sums
of their postings.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from portal.domain.errors import CardUnavailable, NotFound
from portal.domain.money import Money
from portal.domain.types import Actor, Balance
from portal.services.uow import UnitOfWork


@dataclass(frozen=True, slots=True)
class LockedWallet:
    """A card's wallet account, locked FOR UPDATE, with what the checks need from the card."""

    account_id: int
    card_id: int
    user_id: int
    currency: str
    posted: int
    pending: int
    card_status: str
    archived_at: datetime | None
    expiry_month: int
    expiry_year: int

    @property
    def available(self) -> int:
        return self.posted - self.pending

    def balance(self, posted: int | None = None, pending: int | None = None) -> Balance:
        return Balance(
            card_id=self.card_id,
            account_id=self.account_id,
            posted=Money(self.posted if posted is None else posted, self.currency),
            pending_debits=Money(self.pending if pending is None else pending, self.currency),
        )

    def owned_by(self, actor: Actor) -> bool:
        return actor.id == self.user_id and actor.kind == "user"


def lock_wallets(uow: UnitOfWork, card_ids: Iterable[int]) -> dict[int, LockedWallet]:
    """Lock the wallet accounts of ``card_ids`` in one statement, in account-id order."""
    rows = uow.execute(
        "SELECT a.id AS account_id, c.id AS card_id, c.user_id, a.currency,"
        " a.posted_minor AS posted, a.pending_debits_minor AS pending, c.status AS card_status,"
        " c.archived_at, c.expiry_month, c.expiry_year"
        " FROM accounts a JOIN cards c ON c.id = a.card_id"
        " WHERE a.card_id = ANY(:ids) ORDER BY a.id FOR UPDATE OF a",
        {"ids": sorted(set(card_ids))},
    ).mappings()
    return {row["card_id"]: LockedWallet(**row) for row in rows}


def wallet_for(
    wallets: dict[int, LockedWallet], card_id: int, actor: Actor | None, param: str
) -> LockedWallet:
    """The locked wallet of ``card_id``; NotFound if it does not exist or, when ``actor`` is
    given, belongs to someone else and the actor may not manage money (no existence leak)."""
    wallet = wallets.get(card_id)
    if wallet is None or (
        actor is not None and not wallet.owned_by(actor) and not actor.can("money:manage")
    ):
        raise NotFound("no such card", param=param)
    return wallet


def card_refusal(wallet: LockedWallet, now: datetime) -> CardUnavailable | None:
    """Why this card can neither send nor receive money right now, if it cannot."""
    if wallet.archived_at is not None:
        return CardUnavailable("card is archived", code="card_archived")
    if wallet.card_status == "frozen":
        return CardUnavailable("card is frozen", code="card_frozen")
    if (now.year, now.month) > (wallet.expiry_year, wallet.expiry_month):
        return CardUnavailable("card has expired", code="card_expired")
    return None


_system_ids: dict[tuple[str, str, str], int] = {}


def system_account_id(uow: UnitOfWork, kind: str, currency: str) -> int:
    """Id of the system account ``kind`` for ``currency`` (seeded by migration; cached)."""
    bind = uow.session.get_bind()
    cache_key = (str(bind.engine.url), kind, currency)
    if cache_key not in _system_ids:
        _system_ids[cache_key] = uow.execute(
            "SELECT id FROM accounts WHERE kind = :kind AND currency = :cur",
            {"kind": kind, "cur": currency},
        ).scalar_one()
    return _system_ids[cache_key]


def post_entry(
    uow: UnitOfWork,
    *,
    kind: str,
    currency: str,
    legs: Sequence[tuple[int, int]],
    description: str = "",
) -> tuple[int, dict[int, int]]:
    """Write one journal entry with its postings and update the cached balances of the customer
    accounts among ``legs`` (already locked by the caller), in a single statement.

    ``legs`` are (account_id, signed amount); they must sum to zero (the database checks it
    too, with a deferred trigger). Returns the entry id and the new posted balances.
    """
    if sum(amount for _, amount in legs) != 0 or any(amount == 0 for _, amount in legs):
        raise ValueError(f"unbalanced or empty legs: {legs!r}")
    row = uow.execute(
        """
        WITH entry AS (
            INSERT INTO journal_entries (kind, description, created_at)
            VALUES (:kind, :description, :now) RETURNING id
        ), legs AS (
            SELECT * FROM unnest(CAST(:accounts AS bigint[]), CAST(:amounts AS bigint[]))
                AS l(account_id, amount_minor)
        ), posted AS (
            INSERT INTO postings (journal_entry_id, account_id, amount_minor, currency, created_at)
            SELECT entry.id, legs.account_id, legs.amount_minor, :currency, :now
            FROM entry, legs
        ), updated AS (
            UPDATE accounts a SET posted_minor = a.posted_minor + d.delta
            FROM (SELECT account_id, sum(amount_minor) AS delta FROM legs GROUP BY account_id) d
            WHERE a.id = d.account_id AND a.kind IN ('wallet', 'merchant')
            RETURNING a.id, a.posted_minor
        )
        SELECT (SELECT id FROM entry) AS entry_id,
               COALESCE((SELECT jsonb_object_agg(id, posted_minor) FROM updated), '{}') AS posted
        """,
        {
            "kind": kind,
            "description": description,
            "now": uow.now(),
            "currency": currency,
            "accounts": [account for account, _ in legs],
            "amounts": [amount for _, amount in legs],
        },
    ).one()
    return row.entry_id, {int(k): v for k, v in row.posted.items()}


def place_hold(
    uow: UnitOfWork, wallet: LockedWallet, amount: int, *, kind: str, expires_at: datetime
) -> tuple[int, int]:
    """Reserve ``amount`` on a locked wallet. Returns (hold id, new pending debits)."""
    row = uow.execute(
        """
        WITH hold AS (
            INSERT INTO holds (account_id, kind, amount_minor, currency, status, expires_at,
                               created_at)
            VALUES (:account, :kind, :amount, :currency, 'pending', :expires, :now)
            RETURNING id
        ), updated AS (
            UPDATE accounts SET pending_debits_minor = pending_debits_minor + :amount
            WHERE id = :account RETURNING pending_debits_minor
        )
        SELECT (SELECT id FROM hold) AS hold_id,
               (SELECT pending_debits_minor FROM updated) AS pending
        """,
        {
            "account": wallet.account_id,
            "kind": kind,
            "amount": amount,
            "currency": wallet.currency,
            "expires": expires_at,
            "now": uow.now(),
        },
    ).one()
    return row.hold_id, row.pending


def release_hold(
    uow: UnitOfWork, hold_id: int, *, status: str, journal_entry_id: int | None = None
) -> int | None:
    """Resolve a pending hold (posted, voided or expired) and drop it from its account's pending
    debits. The account must be locked by the caller. Returns the new pending debits, or None
    if the hold was no longer pending (it resolves at most once)."""
    row = uow.execute(
        """
        WITH resolved AS (
            UPDATE holds SET status = :status, resolved_at = :now,
                             journal_entry_id = :entry
            WHERE id = :id AND status = 'pending'
            RETURNING account_id, amount_minor
        )
        UPDATE accounts a SET pending_debits_minor = a.pending_debits_minor - r.amount_minor
        FROM resolved r WHERE a.id = r.account_id
        RETURNING a.pending_debits_minor
        """,
        {"status": status, "now": uow.now(), "entry": journal_entry_id, "id": hold_id},
    ).first()
    return None if row is None else row.pending_debits_minor


def bump_change_versions(uow: UnitOfWork, user_ids: Iterable[int]) -> None:
    """Mark these users' money views as changed (live updates poll this), locking the user rows
    in id order, after the accounts."""
    uow.execute(
        "UPDATE users SET change_version = change_version + 1 WHERE id IN"
        " (SELECT id FROM users WHERE id = ANY(:ids) ORDER BY id FOR NO KEY UPDATE)",
        {"ids": sorted(set(user_ids))},
    )
