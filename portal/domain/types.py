"""Actors and the frozen results services return (never ORM rows)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

from portal.domain.money import Money


class ActorKind(enum.StrEnum):
    USER = "user"
    MERCHANT = "merchant"
    SYSTEM = "system"


@dataclass(frozen=True, slots=True)
class Actor:
    """Who is acting. Services receive it explicitly; they never read a request."""

    kind: ActorKind
    id: int | None
    permissions: frozenset[str] = field(default_factory=frozenset)
    label: str = ""
    #: The merchant API key acting (internal id), for a merchant actor.
    key_id: int | None = None
    #: A user's public id (``usr_...``) when known: lets a service tell "me" from a public id
    #: a request gave, without a query.
    public_id: str | None = None

    @classmethod
    def user(
        cls,
        user_id: int,
        permissions: frozenset[str] | set[str] = frozenset(),
        public_id: str | None = None,
    ) -> Actor:
        return cls(ActorKind.USER, user_id, frozenset(permissions), public_id=public_id)

    @classmethod
    def system(cls, label: str = "system") -> Actor:
        return cls(ActorKind.SYSTEM, None, frozenset({"*"}), label)

    def can(self, permission: str) -> bool:
        return "*" in self.permissions or permission in self.permissions

    @property
    def scope(self) -> str:
        """Namespace for idempotency keys: one per principal."""
        return f"{self.kind}:{self.id if self.id is not None else self.label}"


class MovementStatus(enum.StrEnum):
    PENDING = "pending"
    #: A top-up or withdrawal that is with the processor now (the funding processor is asked
    #: whether the money arrived; the payout is being paid): it settles when the processor
    #: answers, and nobody may settle it by hand meanwhile.
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class CardStatus(enum.StrEnum):
    ACTIVE = "active"
    FROZEN = "frozen"


class CardType(enum.StrEnum):
    DEBIT = "debit"
    CREDIT = "credit"
    PREPAID = "prepaid"


class TopUpMethod(enum.StrEnum):
    BANK_TRANSFER = "bank_transfer"
    CREDIT_CARD = "credit_card"
    DEBIT_CARD = "debit_card"
    E_WALLET = "e_wallet"
    CASH = "cash"


@dataclass(frozen=True, slots=True)
class Balance:
    card_id: int
    account_id: int
    posted: Money
    pending_debits: Money
    #: The card's public id (``card_...``).
    card_public_id: str

    @property
    def available(self) -> Money:
        return self.posted - self.pending_debits


@dataclass(frozen=True, slots=True)
class IssuedCard:
    """A card at issue, with its full number and security code (shown once there; its holder
    can see them again after re-authentication: ``services.wallet.reveal``)."""

    card_id: int
    #: The card's public id (``card_...``): what the API and the pages call it.
    public_id: str
    account_id: int
    brand: str
    card_type: str
    last4: str
    number: str
    cvv: str
    expiry_month: int
    expiry_year: int
    currency: str
    name: str
    #: False: a fresh issue (a replay answers a ``ReissuedCard``, without number or code).
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class MovementResult:
    """Outcome of a top-up, transfer or withdrawal. ``id`` and ``card_id`` are internal;
    ``public_id`` (``tu_...``, ``tr_...``, ``wd_...``) and ``card_public_id`` are what the API and
    the pages show."""

    kind: str
    id: int
    public_id: str
    status: MovementStatus
    amount: Money
    card_id: int
    card_public_id: str
    balance: Balance
    created_at: datetime
    counterparty_card_id: int | None = None
    counterparty_card_public_id: str | None = None
    method: str | None = None
    journal_entry_id: int | None = None
    replayed: bool = False
    #: What the sender's side shows, as the activity feed does: the card's last four, the
    #: masked counterparty and the memo ("" when not known: the answer is then read back).
    card_last4: str = ""
    counterparty: str = ""
    memo: str = ""
