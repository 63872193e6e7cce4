"""Four-eyes balance adjustments (maker-checker).

One administrator (``ledger:adjust``) requests a credit or debit of a card's wallet or of a
merchant's balance in one currency, with a reason and a reference (a ticket, a bank statement
line). Nothing moves until a second, different administrator (``ledger:adjust``) approves it:
the approval posts exactly one journal entry (``kind = 'adjustment'``) between the account and
the system account ``adjustments`` of that currency, in one unit of work with the decision and
its audit event, and the request row keeps the entry (``journal_entry_id``). A pending request
may instead be rejected, with a reason, by another administrator, or withdrawn by its requester.
Staff who read money (``money:read``, so support too) see every request.

Concurrency: the approval locks the request row first (so two approvers queue and the second
finds it decided), then the account as every movement does (customer accounts, then the user
rows: ``ledger.lock_wallets``), so an approval racing a transfer on the same card waits for it
and checks the balance the transfer left. A debit that would leave a negative available balance
is refused at approval (the accounts' CHECK is the backstop). Approving twice (a double submit)
answers the same approved request and posts nothing more.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from portal.domain.errors import (
    CurrencyMismatch,
    Forbidden,
    InsufficientFunds,
    InvalidInput,
    NotFound,
    UnexpectedState,
)
from portal.domain.ids import is_public_id
from portal.domain.money import Money, MoneyError, normalize_currency
from portal.domain.types import Actor, ActorKind
from portal.services.ledger.ledger import LedgerWrites, lock_wallets, system_account_id
from portal.services.merchants import settlements
from portal.services.shared import audit, idempotency
from portal.services.shared.pagination import Page, newest_first
from portal.services.shared.uow import UnitOfWork

PERMISSION = "ledger:adjust"
READ_PERMISSION = "money:read"
DIRECTIONS = ("credit", "debit")
STATUSES = ("pending", "approved", "rejected", "withdrawn")
SYSTEM_ACCOUNT = "adjustments"
MAX_REASON = 500
MAX_REFERENCE = 100
#: The largest single adjustment in minor units (a typo guard well inside BIGINT).
MAX_AMOUNT_MINOR = 10**15


@dataclass(frozen=True, slots=True)
class AdjustmentView:
    id: int
    public_id: str
    #: "card" or "merchant"
    target_type: str
    target_public_id: str
    #: What staff call the target: "Visa •••• 4242 (Ada Lovelace)" or the merchant's name.
    target_label: str
    account_id: int
    direction: str
    amount: Money
    reason: str
    reference: str
    status: str
    requested_by_id: int
    requested_by: str
    created_at: datetime
    decided_by_id: int | None
    decided_by: str | None
    decided_at: datetime | None
    decision_reason: str | None
    journal_entry_id: int | None
    #: The account's available balance now (minor units, as of reading the request).
    available_minor: int
    replayed: bool = False

    @property
    def signed_minor(self) -> int:
        """What the account gets: positive for a credit, negative for a debit."""
        return self.amount.amount_minor * (1 if self.direction == "credit" else -1)

    @property
    def pending(self) -> bool:
        return self.status == "pending"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "public_id": self.public_id}


_SELECT = """
SELECT r.id, r.public_id, r.card_id, r.merchant_id, r.account_id, r.direction, r.amount_minor,
       r.currency, r.reason, r.reference, r.status, r.requested_by, r.created_at, r.decided_by,
       r.decided_at, r.decision_reason, r.journal_entry_id,
       COALESCE(c.public_id, m.public_id) AS target_public_id,
       c.brand, c.last4, o.first_name, o.last_name, m.name AS merchant_name,
       req.email AS requested_by_email, dec.email AS decided_by_email,
       CASE WHEN a.kind = 'wallet' THEN a.posted_minor - a.pending_debits_minor
            ELSE COALESCE((SELECT sum(t.net_minor) FROM balance_transactions t
                           WHERE t.account_id = a.id
                             AND (t.status = 'available' OR t.available_on <= :now)), 0)
       END AS available_minor
  FROM adjustment_requests r
  JOIN accounts a ON a.id = r.account_id
  LEFT JOIN cards c ON c.id = r.card_id
  LEFT JOIN users o ON o.id = c.user_id
  LEFT JOIN merchants m ON m.id = r.merchant_id
  JOIN users req ON req.id = r.requested_by
  LEFT JOIN users dec ON dec.id = r.decided_by
"""


def _label(row: Any) -> str:
    if row.card_id is not None:
        owner = f"{row.first_name} {row.last_name}".strip()
        return f"{str(row.brand).capitalize()} •••• {row.last4}" + (f" ({owner})" if owner else "")
    return str(row.merchant_name)


def _view(row: Any, *, replayed: bool = False) -> AdjustmentView:
    return AdjustmentView(
        id=row.id, public_id=row.public_id,
        target_type="card" if row.card_id is not None else "merchant",
        target_public_id=row.target_public_id, target_label=_label(row),
        account_id=row.account_id, direction=row.direction,
        amount=Money(int(row.amount_minor), row.currency), reason=row.reason,
        reference=row.reference, status=row.status, requested_by_id=row.requested_by,
        requested_by=row.requested_by_email, created_at=row.created_at,
        decided_by_id=row.decided_by, decided_by=row.decided_by_email, decided_at=row.decided_at,
        decision_reason=row.decision_reason, journal_entry_id=row.journal_entry_id,
        available_minor=int(row.available_minor), replayed=replayed,
    )  # fmt: skip


def _require(actor: Actor, permission: str) -> None:
    if not actor.can(permission):
        raise Forbidden(f"missing permission {permission}")
    if permission == PERMISSION and (actor.kind != ActorKind.USER or actor.id is None):
        # Four eyes are a person's: the request and the decision name who made them.
        raise Forbidden("adjustments are requested and decided by a signed-in administrator")


def _text(value: str | None, param: str, limit: int) -> str:
    text = " ".join((value or "").split())
    if not text:
        raise InvalidInput(f"{param} is required", param=param)
    if len(text) > limit or not text.isprintable():
        raise InvalidInput(f"{param} is at most {limit} printable characters", param=param)
    return text


def _load(u: UnitOfWork, adjustment: str | int, *, replayed: bool = False) -> AdjustmentView:
    value: int | str = adjustment
    if isinstance(adjustment, int) and not isinstance(adjustment, bool):
        where = "r.id = :ref"
    elif is_public_id("adjustment", adjustment):
        where = "r.public_id = :ref"
    else:
        raise NotFound("no such adjustment", param="adjustment")
    row = u.execute(_SELECT + f" WHERE {where}", {"ref": value, "now": u.now()}).first()  # nosec B608
    if row is None:
        raise NotFound("no such adjustment", param="adjustment")
    return _view(row, replayed=replayed)


def _target(u: UnitOfWork, target: str, currency: str) -> tuple[int | None, int | None, int]:
    """(card id, merchant id, account id) of ``target`` (a card's or a merchant's public id)
    in ``currency``. Raises NotFound, CurrencyMismatch, InvalidInput."""
    if is_public_id("card", target):
        row = u.execute(
            "SELECT c.id, a.id AS account_id, a.currency FROM cards c"
            " JOIN accounts a ON a.card_id = c.id AND a.kind = 'wallet' WHERE c.public_id = :p",
            {"p": target},
        ).first()
        if row is None:
            raise NotFound("no such card", param="target")
        if row.currency != currency:
            raise CurrencyMismatch(
                f"the card's wallet is in {row.currency}, not {currency}", param="currency"
            )
        return row.id, None, row.account_id
    if is_public_id("merchant", target):
        merchant = u.execute("SELECT id, name FROM merchants WHERE public_id = :p", {"p": target})
        found = merchant.first()
        if found is None:
            raise NotFound("no such merchant", param="target")
        account = u.execute(
            "SELECT id FROM accounts WHERE merchant_id = :m AND currency = :cur"
            " AND kind = 'merchant'",
            {"m": found.id, "cur": currency},
        ).first()
        if account is None:
            raise InvalidInput(f"{found.name} has no {currency} balance", param="currency")
        return None, found.id, account.id
    raise InvalidInput("target is a card (card_...) or a merchant (mch_...) id", param="target")


def request_adjustment(
    uow: UnitOfWork,
    *,
    actor: Actor,
    target: str,
    direction: str,
    amount: Money,
    reason: str,
    reference: str,
    idempotency_key: str,
) -> AdjustmentView:
    """Ask for a credit or debit of ``target`` (``card_...`` or ``mch_...``) by ``amount``; it
    posts nothing until another administrator approves. Raises Forbidden (needs ledger:adjust),
    InvalidInput, CurrencyMismatch, NotFound, IdempotencyConflict."""
    _require(actor, PERMISSION)
    key = idempotency.check_key(idempotency_key)
    if direction not in DIRECTIONS:
        raise InvalidInput("direction is credit or debit", param="direction")
    if not 0 < amount.amount_minor <= MAX_AMOUNT_MINOR:
        raise InvalidInput("amount must be positive (and not absurdly large)", param="amount")
    why = _text(reason, "reason", MAX_REASON)
    ref = _text(reference, "reference", MAX_REFERENCE)
    name = (target or "").strip()
    params = {"target": name, "direction": direction, "amount": amount.amount_minor,
              "currency": amount.currency, "reason": why, "reference": ref}  # fmt: skip

    def work(u: UnitOfWork) -> AdjustmentView:
        claim = idempotency.claim(u, actor, key, "request_adjustment", params)
        if claim.replay is not None:
            return _load(u, int(claim.replay["id"]), replayed=True)
        card_id, merchant_id, account_id = _target(u, name, amount.currency)
        u.defer(
            "INSERT INTO adjustment_requests (card_id, merchant_id, account_id, direction,"
            " amount_minor, currency, reason, reference, status, requested_by, created_at)"
            " VALUES (:card, :merchant, :account, :direction, :amount, :cur, :reason, :ref,"
            " 'pending', :by, :now) RETURNING id, public_id",
            name="adjustment", card=card_id, merchant=merchant_id, account=account_id,
            direction=direction, amount=amount.amount_minor, cur=amount.currency, reason=why,
            ref=ref, by=actor.id, now=u.now(),
        )  # fmt: skip
        audit.record(
            u, actor, "adjustment.request", "adjustment_request", None,
            subject_from="adjustment",
            data={"target": name, "account_id": account_id, "direction": direction,
                  "amount_minor": amount.amount_minor, "currency": amount.currency,
                  "reason": why, "reference": ref,
                  "status": {"from": None, "to": "pending"}},
        )  # fmt: skip
        idempotency.store(u, claim, {"id": 0}, fill={("id",): "adjustment"})
        made = u.flush("SELECT (SELECT id FROM adjustment) AS id").id
        return _load(u, int(made))

    return uow.run(work)


def _lock_request(u: UnitOfWork, adjustment: str) -> Any:
    if not is_public_id("adjustment", adjustment):
        raise NotFound("no such adjustment", param="adjustment")
    row = u.execute(
        "SELECT id, card_id, merchant_id, account_id, direction, amount_minor, currency,"
        " status, requested_by, decided_by FROM adjustment_requests WHERE public_id = :p"
        " FOR UPDATE",
        {"p": adjustment},
    ).first()
    if row is None:
        raise NotFound("no such adjustment", param="adjustment")
    return row


def _decided(row: Any) -> UnexpectedState:
    return UnexpectedState(f"this adjustment was {row.status} already", code="adjustment_decided")


def _merchant_available(u: UnitOfWork, account_id: int) -> int:
    return int(
        u.execute(
            "SELECT COALESCE(sum(net_minor), 0) FROM balance_transactions WHERE account_id = :a"
            " AND (status = 'available' OR available_on <= :now)",
            {"a": account_id, "now": u.now()},
        ).scalar_one()
    )


def approve_adjustment(uow: UnitOfWork, *, actor: Actor, adjustment: str) -> AdjustmentView:
    """Approve a pending request and post it: one journal entry between the account and the
    ``adjustments`` system account. Approving again what one approved already answers it again
    (``replayed``) and posts nothing. Raises Forbidden (needs ledger:adjust;
    ``four_eyes_required`` for the requester), NotFound, UnexpectedState
    (``adjustment_decided``), InsufficientFunds (a debit beyond the available balance)."""
    _require(actor, PERMISSION)

    def work(u: UnitOfWork) -> AdjustmentView:
        row = _lock_request(u, adjustment)
        if row.status == "approved" and row.decided_by == actor.id:
            return _load(u, row.id, replayed=True)
        if row.status != "pending":
            raise _decided(row)
        if row.requested_by == actor.id:
            raise Forbidden(
                "a second administrator must approve this adjustment: its requester cannot",
                code="four_eyes_required",
            )
        signed = row.amount_minor if row.direction == "credit" else -row.amount_minor
        if row.card_id is not None:
            wallet = lock_wallets(u, [row.card_id])[row.card_id]
            before, available = wallet.posted, wallet.available
        else:
            account = u.execute(
                "SELECT posted_minor, pending_debits_minor FROM accounts WHERE id = :a FOR UPDATE",
                {"a": row.account_id},
            ).one()
            before = account.posted_minor
            available = min(account.posted_minor - account.pending_debits_minor,
                            _merchant_available(u, row.account_id))  # fmt: skip
        if signed < 0 and available + signed < 0:
            raise InsufficientFunds(
                f"the debit of {Money(row.amount_minor, row.currency).format()} exceeds the"
                f" available balance ({Money(available, row.currency).format()})",
                param="amount",
            )
        writes = LedgerWrites(u)
        system = system_account_id(u, SYSTEM_ACCOUNT, row.currency)
        writes.entry(
            kind="adjustment", currency=row.currency,
            legs=[(row.account_id, signed), (system, -signed)],
            customer_accounts=[row.account_id], description=f"Balance adjustment {adjustment}",
        )  # fmt: skip
        writes.apply()
        if row.merchant_id is not None:
            settlements.record(
                u, merchant_id=row.merchant_id, account_id=row.account_id,
                currency=row.currency, type="adjustment", amount=signed,
                description=f"Balance adjustment {adjustment}",
            )  # fmt: skip
        now = u.now()
        u.defer(
            "UPDATE adjustment_requests SET status = 'approved', decided_by = :by,"
            " decided_at = :now, journal_entry_id = (SELECT id FROM entry) WHERE id = :id",
            name="decision", by=actor.id, now=now, id=row.id,
        )  # fmt: skip
        entry = int(u.flush("SELECT (SELECT id FROM entry) AS id").id)
        audit.record(
            u, actor, "adjustment.approve", "adjustment_request", row.id,
            data={"status": {"from": "pending", "to": "approved"},
                  "posted_balance": {"from": before, "to": before + signed},
                  "account_id": row.account_id, "journal_entry_id": entry,
                  "amount_minor": signed, "currency": row.currency,
                  "requested_by": row.requested_by},
        )  # fmt: skip
        u.observe("money_movements", 1, kind="adjustment", currency=row.currency,
                  outcome="succeeded")  # fmt: skip
        return _load(u, row.id)

    return uow.run(work)


def reject_adjustment(
    uow: UnitOfWork, *, actor: Actor, adjustment: str, reason: str
) -> AdjustmentView:
    """Refuse a pending request, with a reason (by another administrator: its requester
    withdraws it instead). Raises Forbidden (needs ledger:adjust; ``four_eyes_required`` for
    the requester), NotFound, InvalidInput (no reason), UnexpectedState (``adjustment_decided``)."""
    _require(actor, PERMISSION)
    why = _text(reason, "reason", MAX_REASON)

    def work(u: UnitOfWork) -> AdjustmentView:
        row = _lock_request(u, adjustment)
        if row.status != "pending":
            raise _decided(row)
        if row.requested_by == actor.id:
            raise Forbidden(
                "another administrator decides on this adjustment: withdraw it instead",
                code="four_eyes_required",
            )
        _close(u, actor, row, "rejected", why)
        return _load(u, row.id)

    return uow.run(work)


def withdraw_adjustment(uow: UnitOfWork, *, actor: Actor, adjustment: str) -> AdjustmentView:
    """The requester takes back a pending request. Raises Forbidden (needs ledger:adjust;
    ``not_requester`` for anyone else), NotFound, UnexpectedState (``adjustment_decided``)."""
    _require(actor, PERMISSION)

    def work(u: UnitOfWork) -> AdjustmentView:
        row = _lock_request(u, adjustment)
        if row.status != "pending":
            raise _decided(row)
        if row.requested_by != actor.id:
            raise Forbidden("only its requester may withdraw an adjustment", code="not_requester")
        _close(u, actor, row, "withdrawn", None)
        return _load(u, row.id)

    return uow.run(work)


def _close(u: UnitOfWork, actor: Actor, row: Any, status: str, reason: str | None) -> None:
    u.defer(
        "UPDATE adjustment_requests SET status = :status, decided_by = :by, decided_at = :now,"
        " decision_reason = :reason WHERE id = :id AND status = 'pending'",
        status=status, by=actor.id, now=u.now(), reason=reason, id=row.id,
    )  # fmt: skip
    action = "adjustment.reject" if status == "rejected" else "adjustment.withdraw"
    audit.record(
        u, actor, action, "adjustment_request", row.id,
        data={"status": {"from": "pending", "to": status}, "reason": reason,
              "requested_by": row.requested_by},
    )  # fmt: skip


def get_adjustment(uow: UnitOfWork, *, actor: Actor, adjustment: str) -> AdjustmentView:
    """One request with its decision. Raises Forbidden (needs money:read), NotFound."""
    _require(actor, READ_PERMISSION)
    if not is_public_id("adjustment", adjustment):
        raise NotFound("no such adjustment", param="adjustment")
    return uow.run(lambda u: _load(u, adjustment))


def list_adjustments(
    uow: UnitOfWork,
    *,
    actor: Actor,
    status: str | None = None,
    limit: int | None = None,
    starting_after: str | None = None,
) -> Page[AdjustmentView]:
    """Requests newest first, optionally of one status (or ``decided``: every status but
    pending). Raises Forbidden (needs money:read), InvalidInput (status, limit,
    starting_after)."""
    _require(actor, READ_PERMISSION)
    if status is not None and status not in (*STATUSES, "decided"):
        raise InvalidInput(f"status is one of {', '.join(STATUSES)} or decided", param="status")
    where = {None: [], "decided": ["r.status <> 'pending'"]}.get(status, ["r.status = :status"])

    def work(u: UnitOfWork) -> Page[AdjustmentView]:
        return newest_first(
            u, select=_SELECT, table="adjustment_requests", alias="r", convert=_view,
            limit=limit, starting_after=starting_after, kind="adjustment",
            where=where,
            params={"status": status, "now": u.now()},
        )  # fmt: skip

    return uow.run(work)


def parse_amount(major: str, currency: str) -> Money:
    """A form's or request's amount in major units. Raises InvalidInput (amount, currency)."""
    try:
        return Money.of_major(major, normalize_currency(currency))
    except MoneyError as exc:
        raise InvalidInput(str(exc), param=exc.param) from exc


def status_of(uow: UnitOfWork, *, actor: Actor, adjustment: str) -> str:
    """A request's status, in one autocommit read (what its open page polls). Raises Forbidden
    (needs money:read), NotFound."""
    _require(actor, READ_PERMISSION)
    if not is_public_id("adjustment", adjustment):
        raise NotFound("no such adjustment", param="adjustment")
    rows = uow.read(
        "SELECT status FROM adjustment_requests WHERE public_id = :p", {"p": adjustment}
    )
    if not rows:
        raise NotFound("no such adjustment", param="adjustment")
    return str(rows[0].status)
