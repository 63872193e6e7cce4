"""The console overview: what waits for staff, and the last ledger check."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from portal.domain.errors import Forbidden
from portal.domain.permissions import SELF_SERVICE_PERMISSIONS
from portal.domain.types import Actor
from portal.services.ledger import reconciliation
from portal.services.ledger.reconciliation import LedgerCheckSummary
from portal.services.shared.uow import UnitOfWork


def is_staff(actor: Actor) -> bool:
    """Whether ``actor`` holds any permission reaching other people's things."""
    return "*" in actor.permissions or bool(actor.permissions - SELF_SERVICE_PERMISSIONS)


def require_staff(actor: Actor) -> None:
    if not is_staff(actor):
        raise Forbidden("the console is for staff")


@dataclass(frozen=True, slots=True)
class Waiting:
    count: int
    oldest_at: datetime | None


@dataclass(frozen=True, slots=True)
class Overview:
    users: int
    cards: int
    merchants: int
    withdrawals: Waiting
    payouts: Waiting
    applications: Waiting
    last_check: LedgerCheckSummary | None


_OVERVIEW = """
SELECT
  (SELECT count(*) FROM users WHERE archived_at IS NULL) AS users,
  (SELECT count(*) FROM cards WHERE archived_at IS NULL) AS cards,
  (SELECT count(*) FROM merchants WHERE archived_at IS NULL AND status = 'active') AS merchants,
  (SELECT count(*) FROM withdrawals WHERE status IN ('pending', 'processing')) AS w_count,
  (SELECT min(created_at) FROM withdrawals WHERE status IN ('pending', 'processing')) AS w_oldest,
  (SELECT count(*) FROM payouts WHERE status IN ('pending', 'processing')) AS p_count,
  (SELECT min(created_at) FROM payouts WHERE status IN ('pending', 'processing')) AS p_oldest,
  (SELECT count(*) FROM merchants WHERE status = 'pending' AND archived_at IS NULL) AS a_count,
  (SELECT min(created_at) FROM merchants WHERE status = 'pending' AND archived_at IS NULL)
    AS a_oldest
"""


def overview(uow: UnitOfWork, *, actor: Actor) -> Overview:
    """Counts of live records and of what waits for staff. Raises Forbidden (not staff)."""
    require_staff(actor)
    row = uow.read(_OVERVIEW)[0]
    return Overview(
        users=row.users, cards=row.cards, merchants=row.merchants,
        withdrawals=Waiting(row.w_count, row.w_oldest),
        payouts=Waiting(row.p_count, row.p_oldest),
        applications=Waiting(row.a_count, row.a_oldest),
        last_check=reconciliation.last_check(uow),
    )  # fmt: skip
