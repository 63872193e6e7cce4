"""Ledger primitives used inside a unit of work: lock, post, hold, release.

Lock order, everywhere: customer accounts first, in one statement ordered by id; then user rows
(ordered by id). Nothing locks an account after a user row, so no two movements can deadlock.
System accounts (funding, payouts, fees) are never locked nor updated: their balances are sums
of their postings.

Writes go through ``LedgerWrites``, which defers them on the unit of work: the journal entry,
its postings, holds and one UPDATE per account reach the database in the same single statement
as the business record, its audit event and the stored idempotent response.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from portal.domain.errors import CardUnavailable, Forbidden, NotFound
from portal.domain.money import Money
from portal.domain.types import Actor, Balance
from portal.services.shared import idempotency
from portal.services.shared.refs import Ref, ref_key
from portal.services.shared.uow import UnitOfWork


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
    owner_verified: bool
    #: The card's public id (``card_...``); empty when a caller builds one by hand.
    card_public_id: str = ""
    #: What may be shown of the card and its holder (a movement's answer is built from them).
    last4: str = ""
    brand: str = ""
    owner_first_name: str = ""
    owner_last_name: str = ""

    @property
    def available(self) -> int:
        return self.posted - self.pending

    def balance(self, posted: int = 0, pending: int = 0) -> Balance:
        """The balance after adding ``posted`` and ``pending`` deltas."""
        return Balance(
            card_id=self.card_id,
            account_id=self.account_id,
            posted=Money(self.posted + posted, self.currency),
            pending_debits=Money(self.pending + pending, self.currency),
            card_public_id=self.card_public_id,
        )

    def owned_by(self, actor: Actor) -> bool:
        return actor.id == self.user_id and actor.kind == "user"


_LOCK_SQL = """
WITH {claim}locked AS (
    SELECT a.id AS account_id, c.id AS card_id, c.user_id, a.currency,
           a.posted_minor AS posted, a.pending_debits_minor AS pending,
           c.status AS card_status, c.archived_at, c.expiry_month, c.expiry_year,
           u.email_verified_at IS NOT NULL AS owner_verified, c.public_id AS card_public_id,
           c.last4, c.brand, u.first_name AS owner_first_name, u.last_name AS owner_last_name
    FROM accounts a JOIN cards c ON c.id = a.card_id JOIN users u ON u.id = c.user_id
    WHERE ({cards}){claimed} ORDER BY a.id FOR UPDATE OF a
), bumped AS (
    UPDATE users SET change_version = change_version + 1 WHERE id IN (
        SELECT id FROM users WHERE id IN (SELECT user_id FROM locked)
        ORDER BY id FOR NO KEY UPDATE
    )
)
"""
_SELECT_LOCKED = "SELECT * FROM locked"
#: With a claim: one row per wallet, or one of NULLs (none found), each with the new key's
#: id; no row at all when the key existed (then nothing was locked).
_SELECT_CLAIMED = "SELECT k.id AS claim_id, l.* FROM claim k LEFT JOIN locked l ON TRUE"


def _lock(uow: UnitOfWork, cards: str, params: dict[str, Any]) -> list[LockedWallet]:
    sql = _LOCK_SQL.format(claim="", cards=cards, claimed="") + _SELECT_LOCKED
    return [LockedWallet(**row) for row in uow.execute(sql, params).mappings()]


def lock_wallets(uow: UnitOfWork, card_ids: Iterable[int]) -> dict[int, LockedWallet]:
    """Lock the wallet accounts of ``card_ids`` (internal ids) in one statement, in account-id
    order, and mark their owners' money views as changed (live updates poll
    ``users.change_version``), locking those user rows in id order after the accounts."""
    locked = _lock(uow, "a.card_id = ANY(:ids)", {"ids": sorted(set(card_ids))})
    return {wallet.card_id: wallet for wallet in locked}


def _by_ref(cards: Iterable[Ref], owner: Actor | None) -> tuple[str, dict[str, Any]] | None:
    """The locking condition for cards named by public or internal id (None: names none)."""
    ids: set[int] = set()
    public_ids: set[str] = set()
    for ref in cards:
        key = ref_key("card", ref)
        if key is None:
            continue
        if isinstance(key[1], str):
            public_ids.add(key[1])
        else:
            ids.add(key[1])
    if not ids and not public_ids:
        return None
    conditions = []
    if ids:
        conditions.append("c.id = ANY(:ids)")
    params: dict[str, Any] = {"ids": sorted(ids), "public_ids": sorted(public_ids)}
    if public_ids and owner is not None and not owner.can("money:manage"):
        conditions.append("(c.public_id = ANY(:public_ids) AND c.user_id = :owner)")
        params["owner"] = owner.id if owner.kind == "user" else None
    elif public_ids:
        conditions.append("c.public_id = ANY(:public_ids)")
    return " OR ".join(conditions), params


def _keyed(wallets: Iterable[LockedWallet]) -> dict[Ref, LockedWallet]:
    found: dict[Ref, LockedWallet] = {}
    for wallet in wallets:
        found[wallet.card_id] = found[wallet.card_public_id] = wallet
    return found


def lock_wallets_by_ref(
    uow: UnitOfWork, cards: Iterable[Ref], *, owner: Actor | None = None
) -> dict[Ref, LockedWallet]:
    """:func:`lock_wallets` for cards named by public id (``card_...``, as requests name them)
    or internal id, resolved inside the same single locking statement. Each wallet is keyed by
    both its card's internal and public id; a ref that names no card locks nothing. With
    ``owner`` (an actor who may not manage money), a public id names only that actor's own cards:
    someone else's card is neither found nor locked, so naming it cannot hold its wallet up."""
    condition = _by_ref(cards, owner)
    if condition is None:
        return {}
    return _keyed(_lock(uow, *condition))


def claim_and_lock(
    uow: UnitOfWork,
    request: idempotency.Request,
    cards: Sequence[Ref],
    *,
    owner: Actor | None = None,
) -> tuple[idempotency.Claim, dict[Ref, LockedWallet]]:
    """``idempotency.claim`` and :func:`lock_wallets_by_ref` in one statement (one round trip
    where there were two): the claim first, then the wallets, locked only when the key is
    new. A key seen before is settled as ``claim`` settles it (a replay locks nothing; an
    expired key starts afresh and the wallets are then locked by themselves). Raises
    IdempotencyConflict."""
    condition = _by_ref(cards, owner)
    if condition is None:
        return idempotency.claim(uow, request.actor, request.key, request.operation,
                                 request.params), {}  # fmt: skip
    claim_sql, claim_params = idempotency.claim_part(uow, request)
    sql = _LOCK_SQL.format(
        claim=f"claim AS ({claim_sql}), ", cards=condition[0],
        claimed=" AND EXISTS (SELECT 1 FROM claim)",
    ) + _SELECT_CLAIMED  # fmt: skip
    rows = uow.execute(sql, {**condition[1], **claim_params}).mappings().all()
    if not rows:
        claim = idempotency.claim_existing(uow, request)
        return claim, (
            {} if claim.replay is not None else lock_wallets_by_ref(uow, cards, owner=owner)
        )
    claim = idempotency.Claim(rows[0]["claim_id"], None)
    wallets = [
        LockedWallet(**{k: v for k, v in row.items() if k != "claim_id"})
        for row in rows
        if row["account_id"] is not None
    ]
    return claim, _keyed(wallets)


def wallet_for(
    wallets: Mapping[Any, LockedWallet],
    card_id: Ref,
    actor: Actor | None,
    param: str,
    *,
    require_verified: bool = False,
) -> LockedWallet:
    """The locked wallet of ``card_id`` (as ``wallets`` is keyed); NotFound if it does not exist
    or, when ``actor`` is given, belongs to someone else and the actor may not manage money (no
    existence leak); Forbidden when ``require_verified`` and the owner acting has not verified
    their email."""
    wallet = wallets.get(card_id)
    if wallet is None or (
        actor is not None and not wallet.owned_by(actor) and not actor.can("money:manage")
    ):
        raise NotFound("no such card", param=param)
    if (
        require_verified
        and actor is not None
        and wallet.owned_by(actor)
        and not wallet.owner_verified
    ):
        raise Forbidden("verify your email address before moving money", code="email_unverified")
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


class LedgerWrites:
    """Collects one movement's ledger writes on the unit of work.

    ``entry`` and ``hold`` are CTE names other deferred parts may use, e.g.
    ``journal_entry_id = (SELECT id FROM entry)``. Balance changes are summed per account and
    written by ``apply`` as one UPDATE, since a row may change only once per statement.
    """

    def __init__(self, uow: UnitOfWork) -> None:
        self.uow = uow
        self._deltas: dict[int, list[int]] = defaultdict(lambda: [0, 0])
        self.has_entry = False

    def entry(
        self,
        *,
        kind: str,
        currency: str,
        legs: Sequence[tuple[int, int]],
        customer_accounts: Iterable[int],
        description: str = "",
    ) -> None:
        """One journal entry with its postings. ``legs`` are (account id, signed amount) and
        must sum to zero (the database checks it too, with a deferred trigger); the cached
        balances of ``customer_accounts`` (locked by the caller) move with their legs."""
        if self.has_entry:
            raise ValueError("one journal entry per movement")
        if sum(amount for _, amount in legs) != 0 or any(amount == 0 for _, amount in legs):
            raise ValueError(f"unbalanced or empty legs: {legs!r}")
        now = self.uow.now()
        self.uow.defer(
            "INSERT INTO journal_entries (kind, description, created_at)"
            " VALUES (:kind, :description, :now) RETURNING id",
            name="entry", kind=kind, description=description, now=now,
        )  # fmt: skip
        self.uow.defer(
            "INSERT INTO postings (journal_entry_id, account_id, amount_minor, currency,"
            " created_at) SELECT entry.id, l.account_id, l.amount_minor, :currency, :now"
            " FROM entry, unnest(CAST(:accounts AS bigint[]), CAST(:amounts AS bigint[]))"
            " AS l(account_id, amount_minor)",
            name="postings",
            currency=currency,
            now=now,
            accounts=[account for account, _ in legs],
            amounts=[amount for _, amount in legs],
        )
        customers = set(customer_accounts)
        for account, amount in legs:
            if account in customers:
                self._deltas[account][0] += amount
        self.has_entry = True

    def hold(self, wallet: LockedWallet, amount: int, *, kind: str, expires_at: datetime) -> None:
        """Reserve ``amount`` on a locked wallet (CTE ``hold``)."""
        self.uow.defer(
            "INSERT INTO holds (account_id, kind, amount_minor, currency, status, expires_at,"
            " created_at) VALUES (:account, :kind, :amount, :currency, 'pending', :expires, :now)"
            " RETURNING id",
            name="hold", account=wallet.account_id, kind=kind, amount=amount,
            currency=wallet.currency, expires=expires_at, now=self.uow.now(),
        )  # fmt: skip
        self._deltas[wallet.account_id][1] += amount

    def release(self, hold_id: int, account_id: int, amount: int, *, status: str) -> None:
        """Resolve a pending hold (posted, voided or expired) on a locked account. The caller
        has checked, under lock, that the hold is pending: it resolves at most once."""
        entry = "(SELECT id FROM entry)" if self.has_entry else "NULL"
        self.uow.defer(
            f"UPDATE holds SET status = :status, resolved_at = :now, journal_entry_id = {entry}"  # nosec B608
            " WHERE id = :id AND status = 'pending'",
            name="released", status=status, now=self.uow.now(), id=hold_id,
        )  # fmt: skip
        self._deltas[account_id][1] -= amount

    def apply(self) -> None:
        """Write the summed balance changes: one UPDATE for every touched customer account."""
        changed = {a: d for a, d in self._deltas.items() if d != [0, 0]}
        if not changed:
            return
        self.uow.defer(
            "UPDATE accounts a SET posted_minor = a.posted_minor + d.posted,"
            " pending_debits_minor = a.pending_debits_minor + d.pending"
            " FROM unnest(CAST(:ids AS bigint[]), CAST(:posted AS bigint[]),"
            " CAST(:pending AS bigint[])) AS d(id, posted, pending) WHERE a.id = d.id",
            name="balances",
            ids=list(changed),
            posted=[d[0] for d in changed.values()],
            pending=[d[1] for d in changed.values()],
        )
        self._deltas.clear()


def release_expired_hold(uow: UnitOfWork, hold_id: int, card_id: int) -> bool:
    """Expire one pending hold that belongs to no business record. Returns False if it was no
    longer pending."""
    lock_wallets(uow, [card_id])
    hold = uow.execute(
        "SELECT account_id, amount_minor FROM holds WHERE id = :id AND status = 'pending'"
        " FOR UPDATE",
        {"id": hold_id},
    ).first()
    if hold is None:
        return False
    writes = LedgerWrites(uow)
    writes.release(hold_id, hold.account_id, hold.amount_minor, status="expired")
    writes.apply()
    return True
