"""Money movements on card wallets: top-up, transfer, withdrawal (hold, then post or void).

Every movement follows one shape inside ``uow.run``: pure checks (invalid input writes nothing),
claim the idempotency key, lock the wallets in account-id order, check ownership and currency
(refusals that write nothing), then either refuse after locking (a failed record, its audit
event and the stored response are committed, no journal entry, no balance change) or move the
money (journal entry, postings, cached balances, business record, audit event, stored response).

Cards and withdrawals are named by :data:`~portal.services.shared.refs.Ref`: a public id from a
request (``card_...``), resolved inside the locking statement the movement runs anyway, or an
internal id from inside the system. A movement's own public id (``tu_``, ``tr_``, ``wd_``) is made
here before its row is written, so the stored idempotent response carries it too.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import DBAPIError

from portal.domain import cards as card_numbers
from portal.domain.errors import (
    CurrencyMismatch,
    Forbidden,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidInput,
    LimitExceeded,
    NotFound,
    PortalError,
    UnexpectedState,
    error_from_dict,
    error_to_dict,
)
from portal.domain.ids import new_public_id
from portal.domain.money import Money
from portal.domain.money import exponent as money_exponent
from portal.domain.types import Actor, Balance, MovementResult, MovementStatus, TopUpMethod
from portal.services.ledger.ledger import (
    LedgerWrites,
    LockedWallet,
    card_refusal,
    claim_and_lock,
    lock_wallets,
    release_expired_hold,
    system_account_id,
    wallet_for,
)
from portal.services.shared import audit, idempotency, jobs
from portal.services.shared.refs import Ref, ref_key
from portal.services.shared.uow import UnitOfWork
from portal.services.shared.vault import Vault
from portal.services.wallet import recipients
from portal.services.wallet.activity import masked_name

PAYOUT_JOB = "withdrawal.payout"
FUNDING_JOB = "top_up.funding"

#: Movement kind -> its table.
TABLES = {"top_up": "top_ups", "transfer": "transfers", "withdrawal": "withdrawals"}


# -- results and replays ---------------------------------------------------------------------
def _result_to_dict(result: MovementResult) -> dict[str, Any]:
    data = asdict(result)
    data["created_at"] = result.created_at.isoformat()
    return data


def _result_from_dict(data: dict[str, Any]) -> MovementResult:
    def money(m: dict[str, Any]) -> Money:
        return Money(m["amount_minor"], m["currency"])

    bal = data["balance"]
    # Responses stored before movements had public ids lack them ("").
    return MovementResult(
        kind=data["kind"],
        id=data["id"],
        public_id=data.get("public_id", ""),
        status=MovementStatus(data["status"]),
        amount=money(data["amount"]),
        card_id=data["card_id"],
        card_public_id=data.get("card_public_id", ""),
        balance=Balance(
            bal["card_id"],
            bal["account_id"],
            money(bal["posted"]),
            money(bal["pending_debits"]),
            bal.get("card_public_id", ""),
        ),
        created_at=datetime.fromisoformat(data["created_at"]),
        counterparty_card_id=data["counterparty_card_id"],
        counterparty_card_public_id=data.get("counterparty_card_public_id"),
        method=data["method"],
        journal_entry_id=data["journal_entry_id"],
        replayed=True,
        card_last4=data.get("card_last4", ""),
        counterparty=data.get("counterparty", ""),
        memo=data.get("memo", ""),
    )


def _with_public_ids(uow: UnitOfWork, result: MovementResult) -> MovementResult:
    """A replayed result stored before movements had public ids, with them read back."""
    row = uow.execute(
        f"SELECT (SELECT public_id FROM {TABLES[result.kind]} WHERE id = :id) AS public_id,"  # nosec B608: table from the constant TABLES
        " (SELECT public_id FROM cards WHERE id = :card) AS card,"
        " (SELECT public_id FROM cards WHERE id = :other) AS other",
        {"id": result.id, "card": result.card_id, "other": result.counterparty_card_id},
    ).one()
    return replace(
        result, public_id=row.public_id, card_public_id=row.card,
        counterparty_card_public_id=row.other,
        balance=replace(result.balance, card_public_id=row.card),
    )  # fmt: skip


def _observe(uow: UnitOfWork, result: MovementResult) -> None:
    """Business metrics for a movement that was recorded (counted once the commit is done)."""
    labels = {"kind": result.kind, "currency": result.amount.currency, "outcome": result.status}
    uow.observe("money_movements", 1, **labels)
    uow.observe("money_moved_minor_units", result.amount.amount_minor, **labels)


def _replay(uow: UnitOfWork, kind: str, stored: dict[str, Any]) -> MovementResult:
    uow.observe("idempotent_replays", kind=kind)
    if "error" in stored:
        error = error_from_dict(stored["error"])
        error.replayed = True
        raise error
    result = _result_from_dict(stored["result"])
    return result if result.public_id else _with_public_ids(uow, result)


def card_label(wallet: LockedWallet, *, person: bool = False) -> str:
    """How a movement's other card is shown (as the activity feed shows it): "Visa •••• 4242
    (Budi S.)", or only "Budi S." when it was paid as a person."""
    name = masked_name(wallet.owner_first_name, wallet.owner_last_name)
    return name if person else f"{card_numbers.mask(wallet.last4, wallet.brand)} ({name})"


def _check_card(card_id: Ref, param: str) -> None:
    """A card ref that cannot name a card names none: NotFound, without a query."""
    if ref_key("card", card_id) is None:
        raise NotFound("no such card", param=param)


def _record(
    uow: UnitOfWork,
    claim: idempotency.Claim,
    actor: Actor,
    *,
    insert: str,
    params: dict[str, Any],
    audit_data: dict[str, Any],
    result: MovementResult,
    refusal: PortalError | None,
    with_entry: bool,
) -> MovementResult:
    """Write the business record (CTE ``record``), its audit event and the stored response in
    the statement that carries the ledger writes; a refusal is raised after the commit."""
    uow.defer(insert + " RETURNING id", name="record", public_id=result.public_id, **params)
    audit.record(
        uow, actor, f"{result.kind}.create", result.kind, None, subject_from="record",
        outcome="failure" if refusal else "success",
        data={**audit_data, "failure_code": refusal.code if refusal else None},
    )  # fmt: skip
    if refusal is not None:
        idempotency.store(uow, claim, {"error": error_to_dict(refusal)})
        uow.refuse_after_commit(refusal)
        uow.observe("refusals", kind=result.kind, code=refusal.code)
    else:
        _observe(uow, result)
        fill: dict[tuple[str, ...], str] = {("result", "id"): "record"}
        if with_entry:
            fill[("result", "journal_entry_id")] = "entry"
        idempotency.store(uow, claim, {"result": _result_to_dict(result)}, fill=fill)
    entry = "(SELECT id FROM entry)" if with_entry else "NULL::bigint"
    row = uow.flush(f"SELECT (SELECT id FROM record) AS id, {entry} AS entry_id")  # nosec B608: entry is a constant fragment
    return replace(result, id=row.id, journal_entry_id=row.entry_id)


# -- pure checks -----------------------------------------------------------------------------
def check_amount(uow: UnitOfWork, amount: Money, kind: str, label: str) -> None:
    """Positive and within the currency's configured limits for ``kind`` (``label`` names it
    in messages). Raises InvalidInput, LimitExceeded."""
    if amount.amount_minor <= 0:
        raise InvalidInput("amount must be positive", param="amount")
    limits = uow.settings.limits_for(amount.currency, kind)
    if limits is None:
        raise InvalidInput(f"{label}s in {amount.currency} are not supported", param="currency")
    if amount.amount_minor < limits.minimum:
        minimum = Money(limits.minimum, amount.currency)
        raise LimitExceeded(f"amount below the minimum of {minimum}", param="amount")
    if amount.amount_minor > limits.maximum:
        maximum = Money(limits.maximum, amount.currency)
        raise LimitExceeded(f"amount above the maximum of {maximum}", param="amount")


def _check_currency(wallet: LockedWallet, amount: Money, param: str) -> None:
    if wallet.currency != amount.currency:
        raise CurrencyMismatch(
            f"the card holds {wallet.currency}, not {amount.currency}", param=param
        )


def _require(actor: Actor, permission: str) -> None:
    if not actor.can(permission) and not actor.can("money:manage"):
        raise Forbidden(f"missing permission {permission}")


def _insufficient(wallet: LockedWallet, amount: Money) -> InsufficientFunds | None:
    if wallet.available >= amount.amount_minor:
        return None
    available = Money(wallet.available, wallet.currency)
    return InsufficientFunds(f"not enough available money ({available} available)", param="amount")


def _entry(writes: LedgerWrites) -> str:
    """SQL for the journal entry id of this movement's deferred writes, if it has one."""
    return "(SELECT id FROM entry)" if writes.has_entry else "NULL"


def _queue_processor_job(
    uow: UnitOfWork, kind: str, field: str, record_id: int, delay_seconds: float
) -> None:
    """The job that takes a movement to its processor, ``delay_seconds`` from now (one per
    record: its dedupe key is ``<kind's prefix>:<id>``, as tests and staff find it)."""
    prefix = {FUNDING_JOB: "funding", PAYOUT_JOB: "payout"}[kind]
    jobs.enqueue(
        uow, kind, {field: record_id}, run_at=uow.now() + timedelta(seconds=delay_seconds),
        dedupe_key=f"{prefix}:{record_id}",
    )  # fmt: skip


def _day_start(now: datetime) -> datetime:
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


# -- top-up ----------------------------------------------------------------------------------
def top_up(
    uow: UnitOfWork,
    *,
    actor: Actor,
    card_id: Ref,
    amount: Money,
    method: str,
    idempotency_key: str,
) -> MovementResult:
    """Ask for money to be added to a card's wallet from an outside method: a ``pending``
    top-up that moves no money until the funding processor confirms it arrived (the funding
    job, ``portal.services.wallet.funding``, then posts it, or fails it on a decline). Pending
    and processing top-ups count toward the daily cap. Raises InvalidInput, LimitExceeded,
    NotFound, CurrencyMismatch, CardUnavailable, IdempotencyConflict."""
    _require(actor, "wallet:use")
    key = idempotency.check_key(idempotency_key)
    _check_card(card_id, "card_id")
    if method not in TopUpMethod.__members__.values():
        allowed = ", ".join(m.value for m in TopUpMethod)
        raise InvalidInput(f"method must be one of {allowed}", param="method")
    check_amount(uow, amount, "top_up", "top-up")
    params = {"card_id": card_id, "amount": amount.amount_minor, "currency": amount.currency,
              "method": method}  # fmt: skip

    def work(uow: UnitOfWork) -> MovementResult:
        request = idempotency.Request(actor, key, "top_up", params)
        claim, wallets = claim_and_lock(uow, request, [card_id], owner=actor)
        if claim.replay is not None:
            return _replay(uow, "top_up", claim.replay)
        # Locking the wallet also locks its owner's row, which serialises the daily cap.
        wallet = wallet_for(
            wallets, card_id, actor, "card_id", require_verified=uow.settings.require_verified_email
        )
        _check_currency(wallet, amount, "currency")
        now = uow.now()
        refusal: PortalError | None = card_refusal(wallet, now)
        limits = uow.settings.limits_for(amount.currency, "top_up")
        if refusal is None and limits is not None and limits.daily is not None:
            today = uow.execute(
                "SELECT COALESCE(SUM(amount_minor), 0)::bigint FROM top_ups WHERE user_id = :user"
                " AND currency = :cur AND status IN ('pending', 'processing', 'succeeded')"
                " AND created_at >= :since",
                {"user": wallet.user_id, "cur": amount.currency, "since": _day_start(now)},
            ).scalar_one()
            if today + amount.amount_minor > limits.daily:
                left = Money(max(limits.daily - today, 0), amount.currency)
                refusal = LimitExceeded(
                    f"daily top-up limit of {Money(limits.daily, amount.currency)} reached"
                    f" ({left} left today)",
                    param="amount",
                    code="daily_limit_exceeded",
                )
        status = MovementStatus.FAILED if refusal else MovementStatus.PENDING
        result = _record(
            uow, claim, actor,
            insert="INSERT INTO top_ups (public_id, card_id, user_id, amount_minor, currency,"
            " method, status, failure_code, created_by_kind, created_by_id, created_at,"
            " completed_at) VALUES (:public_id, :card, :user, :amount, :cur, :method, :status,"
            " :failure, :actor_kind, :actor_id, :now, :completed)",
            params={"card": wallet.card_id, "user": wallet.user_id,
                    "amount": amount.amount_minor, "cur": amount.currency, "method": method,
                    "status": status, "failure": refusal.code if refusal else None,
                    "actor_kind": str(actor.kind), "actor_id": actor.id, "now": now,
                    "completed": now if refusal else None},
            audit_data={"card_id": wallet.card_id, "amount_minor": amount.amount_minor,
                        "currency": amount.currency, "method": method},
            result=MovementResult(
                kind="top_up", id=0, public_id=new_public_id("top_up"), status=status,
                amount=amount, card_id=wallet.card_id, card_public_id=wallet.card_public_id,
                balance=wallet.balance(), created_at=now, method=method,
            ),
            refusal=refusal,
            with_entry=False,
        )  # fmt: skip
        if refusal is None:
            _queue_processor_job(uow, FUNDING_JOB, "top_up_id", result.id,
                                 uow.settings.funding_delay_seconds)  # fmt: skip
        return result

    return uow.run(work)


# -- the funding job's side (portal.services.wallet.funding) --------------------------------
@dataclass(frozen=True, slots=True)
class FundingOrder:
    """A processing top-up as the funding job asks the processor about it."""

    top_up_id: int
    public_id: str
    amount: Money
    method: str


def _lock_top_up(u: UnitOfWork, top_up_id: int) -> tuple[LockedWallet, Any]:
    """The top-up's wallet, then the top-up's row, locked in that order (as every movement
    locks accounts before records)."""
    card_id = u.execute(
        "SELECT card_id FROM top_ups WHERE id = :id", {"id": top_up_id}
    ).scalar_one()
    wallet = lock_wallets(u, [card_id])[card_id]
    row = u.execute(
        "SELECT id, public_id, amount_minor, currency, method, status, created_at"
        " FROM top_ups WHERE id = :id FOR UPDATE",
        {"id": top_up_id},
    ).one()
    return wallet, row


def begin_funding(uow: UnitOfWork, *, top_up_id: int) -> FundingOrder | None:
    """Mark a pending top-up ``processing`` under its row lock and commit, before anyone asks
    the processor; a ``processing`` one (an earlier attempt died or lost its lease) is answered
    as it is, to be asked again with the same key. None when it is settled already."""

    def work(u: UnitOfWork) -> FundingOrder | None:
        _, t = _lock_top_up(u, top_up_id)
        if t.status == MovementStatus.PENDING:
            u.execute(
                "UPDATE top_ups SET status = 'processing', processing_started_at = :now"
                " WHERE id = :id",
                {"now": u.now(), "id": top_up_id},
            )
        elif t.status != MovementStatus.PROCESSING:
            return None
        return FundingOrder(top_up_id, t.public_id, Money(t.amount_minor, t.currency), t.method)

    return uow.run(work)


def settle_funding(
    uow: UnitOfWork, *, actor: Actor, top_up_id: int, funding_reference: str | None = None,
    failure_code: str | None = None,
) -> MovementResult:  # fmt: skip
    """Settle a ``processing`` top-up with the funding processor's answer: posted from the
    funding account with its reference, or, with ``failure_code`` (a decline), failed with
    nothing posted. The money is posted whatever the card's state now (it arrived for its
    holder; a frozen card still cannot spend it). A top-up in any other state is returned
    unchanged (another attempt settled it with the same answer). Raises Forbidden."""
    if not actor.can("money:manage"):
        raise Forbidden("missing permission money:manage")

    def work(uow: UnitOfWork) -> MovementResult:
        wallet, t = _lock_top_up(uow, top_up_id)
        result = MovementResult(
            kind="top_up", id=t.id, public_id=t.public_id, status=MovementStatus(t.status),
            amount=Money(t.amount_minor, t.currency), card_id=wallet.card_id,
            card_public_id=wallet.card_public_id, balance=wallet.balance(),
            created_at=t.created_at, method=t.method,
        )  # fmt: skip
        if t.status != MovementStatus.PROCESSING:
            return result  # settled already: settling is idempotent
        succeeded = failure_code is None
        writes = LedgerWrites(uow)
        if succeeded:
            writes.entry(
                kind="top_up",
                currency=t.currency,
                legs=[(system_account_id(uow, "funding", t.currency), -t.amount_minor),
                      (wallet.account_id, t.amount_minor)],
                customer_accounts=[wallet.account_id],
                description=f"top-up via {t.method} {funding_reference or ''}".strip(),
            )  # fmt: skip
            writes.apply()
        status = MovementStatus.SUCCEEDED if succeeded else MovementStatus.FAILED
        uow.defer(
            "UPDATE top_ups SET status = :status, failure_code = :failure,"  # nosec B608: _entry() is a constant fragment
            f" journal_entry_id = {_entry(writes)}, funding_reference = :ref,"
            " completed_at = :now WHERE id = :id",
            status=status, failure=failure_code, ref=funding_reference, now=uow.now(), id=t.id,
        )  # fmt: skip
        audit.record(
            uow, actor, "top_up.confirm" if succeeded else "top_up.fail", "top_up", t.id,
            data={"failure_code": failure_code, "funding_reference": funding_reference},
        )  # fmt: skip
        entry = "(SELECT id FROM entry)" if writes.has_entry else "NULL::bigint"
        entry_id = uow.flush(f"SELECT {entry} AS entry_id").entry_id  # nosec B608: constant SQL
        settled = replace(
            result, status=status, journal_entry_id=entry_id,
            balance=wallet.balance(posted=t.amount_minor if succeeded else 0),
        )  # fmt: skip
        _observe(uow, settled)
        return settled

    return uow.run(work)


# -- transfer --------------------------------------------------------------------------------
def transfer(
    uow: UnitOfWork,
    *,
    actor: Actor,
    from_card_id: Ref,
    to_card_id: Ref,
    amount: Money,
    idempotency_key: str,
    memo: str = "",
) -> MovementResult:
    """Move money between two cards of one currency. ``to_card_id`` names one of the actor's
    own cards, or someone else's through the recipient reference (``rcp_...``) the look-up by
    card number issued to this actor (``portal.services.wallet.recipients``); another person's
    card named by its public id is not found, exactly as a card that does not exist (staff with
    money:manage and internal ids from inside the system may name any card). Raises
    InvalidInput, LimitExceeded, NotFound, CurrencyMismatch, CardUnavailable, InsufficientFunds,
    IdempotencyConflict."""
    _require(actor, "wallet:use")
    key = idempotency.check_key(idempotency_key)
    _check_card(from_card_id, "from_card_id")
    sealed: recipients.Sealed | None = None
    if recipients.is_reference(to_card_id):
        sealed = recipients.open_reference(uow.settings, str(to_card_id), "to_card_id")
        to_card: Ref = sealed.card_id
    else:
        _check_card(to_card_id, "to_card_id")
        to_card = to_card_id
    if from_card_id == to_card:
        raise InvalidInput("cannot transfer to the same card", param="to_card_id")
    memo = (memo or "").strip()
    if len(memo) > 140:
        raise InvalidInput("memo is at most 140 characters", param="memo")
    check_amount(uow, amount, "transfer", "transfer")
    # The card a reference names, not the reference: a retry after a fresh look-up replays.
    params = {"from": from_card_id, "to": to_card, "amount": amount.amount_minor,
              "currency": amount.currency, "memo": memo}  # fmt: skip

    def work(uow: UnitOfWork) -> MovementResult | None:
        now = uow.now()
        if sealed is not None:
            try:
                recipients.check(sealed, sender_id=actor.id, now=now, param="to_card_id")
            except NotFound:  # a reference past its time or not this sender's: nothing locked
                claim = idempotency.claim(uow, actor, key, "transfer", params)
                if claim.replay is not None:  # though a retry of what it did still answers
                    return _replay(uow, "transfer", claim.replay)
                raise
        return _transfer_call(
            uow, actor, key, params, from_card_id, to_card, sealed=sealed, amount=amount,
            memo=memo,
        )  # fmt: skip

    result = uow.run(work)
    assert result is not None  # a refusal after the commit was raised by run
    return result


#: One transfer, whole: claim, locks, refusals, writes, stored response (migration 0030).
_TRANSFER_SQL = (
    "SELECT outcome, response FROM portal_transfer(p_scope => :scope, p_key => :key,"
    " p_hash => :hash, p_now => :now, p_expires => :expires, p_from_public => :from_public,"
    " p_from_id => :from_id, p_to_public => :to_public, p_to_id => :to_id, p_owner => :owner,"
    " p_manage => :manage, p_dest_by_owner => :dest_by_owner,"
    " p_require_verified => :require_verified, p_amount => :amount, p_currency => :currency,"
    " p_exponent => :exponent, p_memo => :memo, p_person => :person, p_public_id => :public_id,"
    " p_actor_kind => :actor_kind, p_actor_id => :actor_id, p_address => CAST(:address AS inet),"
    " p_month => :month, p_created_at => :created_at, p_brands => CAST(:brands AS jsonb))"
)
#: Brand id -> display name, for the counterparty label the function writes.
_BRAND_NAMES = json.dumps({brand.id: brand.name for brand in card_numbers.BRANDS.values()})
#: SQLSTATE of the function's refusals that write nothing (the statement is undone).
_UNWRITTEN = "PTREF"


def _unwritten_refusal(name: str, detail: str | None, amount: Money) -> PortalError:
    """The refusal ``portal_transfer`` raised before writing (its MESSAGE names it)."""
    if name == "from_not_found":
        return NotFound("no such card", param="from_card_id")
    if name == "to_not_found":
        return NotFound("no such card", param="to_card_id")
    if name == "email_unverified":
        return Forbidden("verify your email address before moving money", code="email_unverified")
    if name == "same_card":
        return InvalidInput("cannot transfer to the same card", param="to_card_id")
    param = {"source_currency": "currency", "dest_currency": "to_card_id"}[name]
    return CurrencyMismatch(f"the card holds {detail}, not {amount.currency}", param=param)


def _card_param(ref: Ref) -> tuple[str | None, int | None]:
    """(public id, internal id) of a card ref checked by ``_check_card``: one of them set."""
    return (ref, None) if isinstance(ref, str) else (None, ref)


def _transfer_call(
    uow: UnitOfWork,
    actor: Actor,
    key: str,
    params: dict[str, Any],
    from_card: Ref,
    to_card: Ref,
    *,
    sealed: recipients.Sealed | None,
    amount: Money,
    memo: str,
) -> MovementResult | None:
    """The transfer as one call of ``portal_transfer``: the same claim, locks, refusals and
    writes as the movement's shape in the module docstring, in one round trip, on its own in
    autocommit (no BEGIN, no COMMIT: see ``UnitOfWork.call``)."""
    now = uow.now()
    from_public, from_id = _card_param(from_card)
    to_public, to_id = _card_param(to_card)
    person = sealed is not None and sealed.person
    try:
        row = uow.call(
            _TRANSFER_SQL,
            {
                "scope": actor.scope, "key": key,
                "hash": idempotency.request_hash("transfer", params), "now": now,
                "expires": now + timedelta(hours=uow.settings.idempotency_ttl_hours),
                "from_public": from_public, "from_id": from_id,
                "to_public": to_public, "to_id": to_id,
                "owner": actor.id if actor.kind == "user" else None,
                "manage": actor.can("money:manage"),
                # A public card id names only one's own cards; another's needs a reference.
                "dest_by_owner": sealed is None and not isinstance(to_card, int),
                "require_verified": uow.settings.require_verified_email,
                "amount": amount.amount_minor, "currency": amount.currency,
                "exponent": money_exponent(amount.currency), "memo": memo, "person": person,
                "public_id": new_public_id("transfer"), "actor_kind": str(actor.kind),
                "actor_id": actor.id, "address": audit.current_address(),
                "month": now.year * 12 + now.month, "created_at": now.isoformat(),
                "brands": _BRAND_NAMES,
            },
            alone=True,
        ).one()  # fmt: skip
    except DBAPIError as exc:
        state = getattr(exc.orig, "sqlstate", None)
        if state != _UNWRITTEN:
            raise
        diag = exc.orig.diag  # type: ignore[union-attr]
        raise _unwritten_refusal(diag.message_primary or "", diag.message_detail, amount) from None
    if row.outcome == "replay":
        return _replay(uow, "transfer", row.response)
    if row.outcome == "conflict":
        raise IdempotencyConflict(
            "this idempotency key was already used for a different request",
            param="idempotency_key",
        )
    if row.outcome == "refused":
        refusal = error_from_dict(row.response["error"])
        uow.refuse_after_commit(refusal)
        uow.observe("refusals", kind="transfer", code=refusal.code)
        return None
    result = replace(_result_from_dict(row.response["result"]), replayed=False)
    _observe(uow, result)
    return result


# -- withdrawal ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class BankAccount:
    """Where a withdrawal is paid out. Stored encrypted; only the bank and last four shown."""

    bank_name: str
    account_number: str
    account_holder: str

    def validated(self) -> BankAccount:
        name = self.bank_name.strip()
        number = self.account_number.replace(" ", "").replace("-", "").upper()
        holder = self.account_holder.strip()
        if not 2 <= len(name) <= 100:
            raise InvalidInput("bank name is 2 to 100 characters", param="bank_name")
        if not (6 <= len(number) <= 34 and number.isalnum() and number.isascii()):
            raise InvalidInput(
                "account number is 6 to 34 letters or digits", param="account_number"
            )
        if not 2 <= len(holder) <= 100:
            raise InvalidInput("account holder is 2 to 100 characters", param="account_holder")
        return BankAccount(name, number, holder)


def withdraw(
    uow: UnitOfWork,
    *,
    actor: Actor,
    card_id: Ref,
    amount: Money,
    bank: BankAccount,
    idempotency_key: str,
) -> MovementResult:
    """Reserve money for a payout to a bank account (a hold, posted when the payout is confirmed,
    voided when it fails). Raises InvalidInput, LimitExceeded, NotFound, CurrencyMismatch,
    CardUnavailable, InsufficientFunds, IdempotencyConflict."""
    _require(actor, "wallet:use")
    key = idempotency.check_key(idempotency_key)
    _check_card(card_id, "card_id")
    bank = bank.validated()
    check_amount(uow, amount, "withdrawal", "withdrawal")
    params = {"card_id": card_id, "amount": amount.amount_minor, "currency": amount.currency,
              "bank": [bank.bank_name, bank.account_number, bank.account_holder]}  # fmt: skip

    def work(uow: UnitOfWork) -> MovementResult:
        request = idempotency.Request(actor, key, "withdraw", params)
        claim, wallets = claim_and_lock(uow, request, [card_id], owner=actor)
        if claim.replay is not None:
            return _replay(uow, "withdrawal", claim.replay)
        wallet = wallet_for(
            wallets, card_id, actor, "card_id", require_verified=uow.settings.require_verified_email
        )
        _check_currency(wallet, amount, "currency")
        now = uow.now()
        refusal: PortalError | None = card_refusal(wallet, now) or _insufficient(wallet, amount)
        writes = LedgerWrites(uow)
        if refusal is None:
            writes.hold(
                wallet,
                amount.amount_minor,
                kind="withdrawal",
                expires_at=now + timedelta(hours=uow.settings.withdrawal_hold_hours),
            )
            writes.apply()
        # Sealed bound to the withdrawal's row, so it cannot be copied into another's.
        public_id = new_public_id("withdrawal")
        blob, version = Vault.from_settings(uow.settings).encrypt(
            json.dumps(asdict(bank)).encode(), purpose="withdrawal.bank", record=public_id
        )
        status = MovementStatus.FAILED if refusal else MovementStatus.PENDING
        hold = "NULL" if refusal else "(SELECT id FROM hold)"
        result = _record(
            uow, claim, actor,
            insert="INSERT INTO withdrawals (public_id, card_id, amount_minor, currency, status,"  # nosec B608: hold is a constant fragment
            " failure_code, hold_id, bank_ciphertext, bank_key_version, bank_bound, bank_name,"
            " bank_account_last4, created_by_kind, created_by_id, created_at, completed_at)"
            f" VALUES (:public_id, :card, :amount, :cur, :status, :failure, {hold}, :blob,"
            " :version, true, :bank_name, :last4, :actor_kind, :actor_id, :now, :completed)",
            params={"card": wallet.card_id, "amount": amount.amount_minor,
                    "cur": amount.currency,
                    "status": status, "failure": refusal.code if refusal else None,
                    "blob": blob, "version": version, "bank_name": bank.bank_name,
                    "last4": bank.account_number[-4:], "actor_kind": str(actor.kind),
                    "actor_id": actor.id, "now": now, "completed": now if refusal else None},
            audit_data={"card_id": wallet.card_id, "amount_minor": amount.amount_minor,
                        "currency": amount.currency},
            result=MovementResult(
                kind="withdrawal", id=0, public_id=public_id, status=status,
                amount=amount, card_id=wallet.card_id, card_public_id=wallet.card_public_id,
                balance=wallet.balance(pending=0 if refusal else amount.amount_minor),
                created_at=now,
            ),
            refusal=refusal,
            with_entry=False,
        )  # fmt: skip
        if refusal is None:
            _queue_processor_job(uow, PAYOUT_JOB, "withdrawal_id", result.id,
                                 uow.settings.payout_delay_seconds)  # fmt: skip
        return result

    return uow.run(work)


def _settle_withdrawal(
    uow: UnitOfWork,
    actor: Actor,
    withdrawal_id: Ref,
    *,
    succeeded: bool,
    failure_code: str | None = None,
    hold_status: str = "voided",
    payout_reference: str | None = None,
    by_processor: bool = False,
    note: str | None = None,
) -> MovementResult:
    """Post or void a withdrawal's hold. By hand (staff, hold expiry) only a ``pending`` one: a
    ``processing`` one is with the processor and is refused. The payout job (``by_processor``)
    settles only a ``processing`` one, with the processor's answer. Anything else is settled
    already and returned unchanged."""
    key = ref_key("withdrawal", withdrawal_id)
    if key is None:
        raise NotFound("no such withdrawal", param="withdrawal_id")
    column, value = key

    def work(uow: UnitOfWork) -> MovementResult:
        found = uow.execute(
            f"SELECT id, card_id FROM withdrawals WHERE {column} = :ref",  # nosec B608: column from ref_key
            {"ref": value},
        ).first()
        if found is None:
            raise NotFound("no such withdrawal", param="withdrawal_id")
        card_id = found.card_id
        wallet = lock_wallets(uow, [card_id])[card_id]  # accounts first, then the record
        w = uow.execute(
            "SELECT id, public_id, amount_minor, currency, status, hold_id, created_at,"
            " journal_entry_id FROM withdrawals WHERE id = :id FOR UPDATE",
            {"id": found.id},
        ).one()
        result = MovementResult(
            kind="withdrawal", id=w.id, public_id=w.public_id, status=MovementStatus(w.status),
            amount=Money(w.amount_minor, w.currency), card_id=card_id,
            card_public_id=wallet.card_public_id, balance=wallet.balance(),
            created_at=w.created_at, journal_entry_id=w.journal_entry_id,
        )  # fmt: skip
        if w.status == MovementStatus.PROCESSING and not by_processor:
            raise UnexpectedState(
                f"Withdrawal {w.public_id} is processing: its payout is with the processor and it"
                " settles with the processor's answer, so it cannot be confirmed or failed by"
                " hand.",
                param="withdrawal_id",
            )
        settles = MovementStatus.PROCESSING if by_processor else MovementStatus.PENDING
        if w.status != settles:
            return result  # already settled: settling is idempotent
        writes = LedgerWrites(uow)
        if succeeded:
            writes.entry(
                kind="withdrawal",
                currency=w.currency,
                legs=[(wallet.account_id, -w.amount_minor),
                      (system_account_id(uow, "payouts", w.currency), w.amount_minor)],
                customer_accounts=[wallet.account_id],
                description=f"payout {payout_reference or ''}".strip(),
            )  # fmt: skip
        writes.release(
            w.hold_id, wallet.account_id, w.amount_minor,
            status="posted" if succeeded else hold_status,
        )  # fmt: skip
        writes.apply()
        status = MovementStatus.SUCCEEDED if succeeded else MovementStatus.FAILED
        uow.defer(
            "UPDATE withdrawals SET status = :status, failure_code = :failure,"  # nosec B608: _entry() is a constant fragment
            f" journal_entry_id = {_entry(writes)}, payout_reference = :ref,"
            " completed_at = :now WHERE id = :id",
            status=status, failure=failure_code, ref=payout_reference, now=uow.now(), id=w.id,
        )  # fmt: skip
        audit.record(
            uow, actor, "withdrawal.confirm" if succeeded else "withdrawal.fail", "withdrawal",
            w.id, data={"failure_code": failure_code, "payout_reference": payout_reference,
                        **({"note": note} if note else {})},
        )  # fmt: skip
        entry = "(SELECT id FROM entry)" if writes.has_entry else "NULL::bigint"
        entry_id = uow.flush(f"SELECT {entry} AS entry_id").entry_id
        posted = -w.amount_minor if succeeded else 0
        settled = replace(
            result,
            status=status,
            journal_entry_id=entry_id,
            balance=wallet.balance(posted=posted, pending=-w.amount_minor),
        )
        _observe(uow, settled)
        return settled

    return uow.run(work)


def confirm_withdrawal(
    uow: UnitOfWork, *, actor: Actor, withdrawal_id: Ref, payout_reference: str | None = None
) -> MovementResult:
    """Post a pending withdrawal's hold: the money leaves the wallet for the payouts account.
    A settled withdrawal is returned unchanged. Raises NotFound, Forbidden, UnexpectedState (it
    is ``processing``: the payout job settles it)."""
    _require_staff(actor)
    return _settle_withdrawal(
        uow, actor, withdrawal_id, succeeded=True, payout_reference=payout_reference
    )


def fail_withdrawal(
    uow: UnitOfWork,
    *,
    actor: Actor,
    withdrawal_id: Ref,
    failure_code: str = "payout_failed",
    hold_status: str = "voided",
    note: str | None = None,
) -> MovementResult:
    """Void a pending withdrawal's hold: the money becomes available again (``note``, staff's
    words on why, goes to the audit event). A settled withdrawal is returned unchanged. Raises
    NotFound, Forbidden, UnexpectedState (it is ``processing``: the payout job settles it)."""
    _require_staff(actor)
    return _settle_withdrawal(
        uow, actor, withdrawal_id, succeeded=False, failure_code=failure_code,
        hold_status=hold_status, note=note,
    )  # fmt: skip


# -- the payout job's side (portal.services.wallet.payouts) ---------------------------------
@dataclass(frozen=True, slots=True)
class PayoutOrder:
    """A processing withdrawal as the payout job sends it to the processor."""

    withdrawal_id: int
    public_id: str
    amount: Money
    bank_ciphertext: bytes
    bank_key_version: int
    #: Sealed bound to the withdrawal's public id (false: a legacy, purpose-only ciphertext).
    bank_bound: bool


def begin_payout(uow: UnitOfWork, *, withdrawal_id: int) -> PayoutOrder | None:
    """Mark a pending withdrawal ``processing`` under its row lock and commit, before anyone
    calls the processor; a ``processing`` one (an earlier attempt died or lost its lease) is
    answered as it is, to be sent again with the same key. None when it is settled already."""

    def work(u: UnitOfWork) -> PayoutOrder | None:
        card_id = u.execute(
            "SELECT card_id FROM withdrawals WHERE id = :id", {"id": withdrawal_id}
        ).scalar_one()
        lock_wallets(u, [card_id])  # accounts first, then the record (as settling does)
        w = u.execute(
            "SELECT public_id, status, amount_minor, currency, bank_ciphertext, bank_key_version,"
            " bank_bound FROM withdrawals WHERE id = :id FOR UPDATE",
            {"id": withdrawal_id},
        ).one()
        if w.status == MovementStatus.PENDING:
            u.execute(
                "UPDATE withdrawals SET status = 'processing', processing_started_at = :now"
                " WHERE id = :id",
                {"now": u.now(), "id": withdrawal_id},
            )
        elif w.status != MovementStatus.PROCESSING:
            return None
        return PayoutOrder(
            withdrawal_id, w.public_id, Money(w.amount_minor, w.currency),
            bytes(w.bank_ciphertext), w.bank_key_version, w.bank_bound,
        )  # fmt: skip

    return uow.run(work)


def settle_payout(
    uow: UnitOfWork, *, actor: Actor, withdrawal_id: int, payout_reference: str | None = None,
    failure_code: str | None = None,
) -> MovementResult:  # fmt: skip
    """Settle a ``processing`` withdrawal with the processor's answer: posted with its
    reference, or, with ``failure_code`` (a decline), its hold voided. A withdrawal in any other
    state is returned unchanged (another attempt settled it with the same answer). Raises
    Forbidden."""
    _require_staff(actor)
    return _settle_withdrawal(
        uow, actor, withdrawal_id, succeeded=failure_code is None, failure_code=failure_code,
        payout_reference=payout_reference, by_processor=True,
    )  # fmt: skip


def _require_staff(actor: Actor) -> None:
    if not actor.can("withdrawals:manage"):
        raise Forbidden("missing permission withdrawals:manage")


def expire_holds(uow: UnitOfWork, *, actor: Actor, limit: int = 500) -> int:
    """Expire pending holds past their expiry, each in its own short transaction. A withdrawal
    whose hold expires fails with ``hold_expired``, unless it is ``processing``: the processor
    has its payout, so its hold stays until the payout job settles it. Returns how many holds
    expired."""
    expired = uow.run(
        lambda u: u.execute(
            "SELECT h.id, h.kind, a.card_id, w.id AS withdrawal_id FROM holds h"
            " JOIN accounts a ON a.id = h.account_id"
            " LEFT JOIN withdrawals w ON w.hold_id = h.id"
            # A payment's hold is released through its payment (payments.expire_uncaptured).
            " WHERE h.status = 'pending' AND h.kind <> 'payment' AND h.expires_at <= :now"
            " AND (w.id IS NULL OR w.status <> 'processing')"
            " ORDER BY h.expires_at LIMIT :n",
            {"now": u.now(), "n": limit},
        ).all()
    )
    count = 0
    for hold in expired:
        if hold.withdrawal_id is not None:
            try:
                result = fail_withdrawal(
                    uow, actor=actor, withdrawal_id=hold.withdrawal_id,
                    failure_code="hold_expired", hold_status="expired",
                )  # fmt: skip
            except UnexpectedState:
                continue  # the payout job took it since the query: it settles it
            count += result.status == MovementStatus.FAILED
        else:
            count += uow.run(
                lambda u, h=hold: release_expired_hold(u, h.id, h.card_id)  # type: ignore[misc]
            )
    return count


def get_balance(uow: UnitOfWork, *, actor: Actor, card_id: Ref) -> Balance:
    """A card's posted and pending balances. Raises NotFound."""
    key = ref_key("card", card_id)
    if key is None:
        raise NotFound("no such card", param="card_id")
    column, value = key

    rows = uow.read(  # one statement: no transaction of its own
        "SELECT a.id, a.currency, a.posted_minor, a.pending_debits_minor, c.user_id,"  # nosec B608: column is id or public_id (ref_key)
        " c.id AS card_id, c.public_id AS card_public_id"
        f" FROM accounts a JOIN cards c ON c.id = a.card_id WHERE c.{column} = :card",
        {"card": value},
    )
    row = rows[0] if rows else None
    if row is None or (row.user_id != actor.id and not actor.can("money:read")):
        raise NotFound("no such card", param="card_id")
    return Balance(
        row.card_id, row.id, Money(row.posted_minor, row.currency),
        Money(row.pending_debits_minor, row.currency), row.card_public_id,
    )  # fmt: skip


__all__ = [
    "PAYOUT_JOB",
    "BankAccount",
    "PayoutOrder",
    "begin_payout",
    "check_amount",
    "confirm_withdrawal",
    "expire_holds",
    "fail_withdrawal",
    "get_balance",
    "settle_payout",
    "top_up",
    "transfer",
    "withdraw",
]
