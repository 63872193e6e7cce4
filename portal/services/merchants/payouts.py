"""Payouts: a merchant's available balance paid to its bank account, exactly once.

``create_payout`` (on demand, or daily by ``run_schedule`` at ``payout_time`` UTC) locks the
merchant's balance account, gathers the available balance transactions no payout has taken yet,
and, if their sum reaches the currency's minimum (the ``payout`` limit), moves that sum from the
balance to the payouts clearing account in one journal entry, with the payout's own ``payout``
transaction, and queues the job that pays it. The bank details are re-sealed onto the payout
(opened for the merchant's row, sealed bound to the payout's), so a later change of account does
not redirect money already on its way, and neither sealed copy opens in another row.

The job (``pay``) follows the rule for every call to a processor: mark the payout
``processing`` under its row lock and commit, renew the job's lease, call the processor with the
payout's public id as the idempotency key, then settle from ``processing`` only. A job that
finds the payout ``processing`` (its worker died mid-call, or its lease ran out) calls again
with the same key and gets the first answer, so nothing is paid twice. A decline returns the
money to the balance (a ``payout_failure`` transaction, available at once) and a later payout
pays it again.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta
from typing import Any

from portal.domain.errors import Forbidden, InvalidInput, NotFound, UnexpectedState
from portal.domain.ids import is_public_id, new_public_id
from portal.domain.money import Money, normalize_currency
from portal.domain.types import Actor
from portal.services.ledger.ledger import LedgerWrites, system_account_id
from portal.services.merchants import events, settlements
from portal.services.merchants.merchants import (
    MerchantView,
    access,
    merchant_ref,
    merchant_view,
    page_after,
)
from portal.services.merchants.objects import Stored, unix
from portal.services.shared import audit, idempotency, jobs, processor
from portal.services.shared.pagination import Page, check_limit, page_of
from portal.services.shared.uow import UnitOfWork
from portal.services.shared.vault import Vault, binding
from portal.services.wallet.wallet import BankAccount

PAY_JOB = "merchant_payout"
STATUSES = ("pending", "processing", "paid", "failed")
BANK_PURPOSE = "merchant.bank"
SCHEDULE_ACTOR = Actor.system("payout-schedule")
PROCESSOR_ACTOR = Actor.system("payout-processor")
FAILURE_MESSAGES = {
    "account_closed": "The bank account is closed; set another bank account.",
}


@dataclass(frozen=True, slots=True)
class PayoutView(Stored):
    id: str
    amount: int
    currency: str
    status: str
    automatic: bool
    bank_name: str
    bank_last4: str
    balance_transaction: str
    failure_code: str | None
    description: str
    created: datetime
    paid_at: datetime | None
    failed_at: datetime | None
    replayed: bool = False


def payout_object(p: PayoutView) -> dict[str, Any]:
    return {
        "id": p.id, "object": "payout", "amount": p.amount, "currency": p.currency.lower(),
        "status": p.status, "automatic": p.automatic, "method": "standard",
        "destination": {"bank_name": p.bank_name, "last4": p.bank_last4},
        "balance_transaction": p.balance_transaction, "failure_code": p.failure_code,
        "failure_message": FAILURE_MESSAGES.get(p.failure_code or "", p.failure_code),
        "description": p.description, "created": unix(p.created) or 0,
        "arrival_date": unix(p.paid_at), "failed_at": unix(p.failed_at),
    }  # fmt: skip


_SELECT = (
    "SELECT po.id AS pk, po.public_id, po.amount_minor, po.currency, po.status, po.automatic,"
    " po.bank_name, po.bank_account_last4, po.failure_code, po.description, po.created_at,"
    " po.paid_at, po.failed_at, po.opening_balance_minor, po.account_id, po.merchant_id,"
    " (SELECT t.public_id FROM balance_transactions t WHERE t.source_payout_id = po.id"
    "  AND t.type = 'payout') AS txn"
    " FROM payouts po"
)


def _view(row: Any) -> PayoutView:
    return PayoutView(
        id=row.public_id, amount=row.amount_minor, currency=row.currency, status=row.status,
        automatic=row.automatic, bank_name=row.bank_name, bank_last4=row.bank_account_last4,
        balance_transaction=row.txn, failure_code=row.failure_code,
        description=row.description, created=row.created_at, paid_at=row.paid_at,
        failed_at=row.failed_at,
    )  # fmt: skip


# -- the bank account -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class BankAccountView:
    bank_name: str
    last4: str


def set_bank_account(
    uow: UnitOfWork, *, actor: Actor, merchant: str | int, bank: BankAccount
) -> BankAccountView:
    """Where the merchant's payouts go from now on (owners only, never an API key): sealed by
    the vault; only the bank's name and the last four are shown again. Raises NotFound,
    Forbidden, InvalidInput."""
    clean = bank.validated()

    def work(u: UnitOfWork) -> BankAccountView:
        m = access(u, actor, merchant, "bank").merchant
        blob, version = Vault.from_settings(u.settings).encrypt(
            json.dumps(asdict(clean)).encode(), purpose=BANK_PURPOSE, record=m.public_id
        )
        u.execute(
            "UPDATE merchants SET bank_ciphertext = :blob, bank_key_version = :version,"
            " bank_bound = true, bank_name = :name, bank_account_last4 = :last4,"
            " updated_at = :now WHERE id = :m",
            {"blob": blob, "version": version, "name": clean.bank_name,
             "last4": clean.account_number[-4:], "now": u.now(), "m": m.id},
        )  # fmt: skip
        audit.record(
            u, actor, "merchant.bank_account", "merchant", m.id,
            data={"bank_name": clean.bank_name, "last4": clean.account_number[-4:]},
        )  # fmt: skip
        return BankAccountView(clean.bank_name, clean.account_number[-4:])

    return uow.run(work)


def bank_account(uow: UnitOfWork, *, actor: Actor, merchant: str | int) -> BankAccountView | None:
    """Where the merchant's payouts go (the bank's name and last four), or None. Raises
    NotFound, Forbidden."""

    def work(u: UnitOfWork) -> BankAccountView | None:
        m = access(u, actor, merchant, "read").merchant
        row = u.execute(
            "SELECT bank_name, bank_account_last4 FROM merchants WHERE id = :m"
            " AND bank_ciphertext IS NOT NULL",
            {"m": m.id},
        ).first()
        return None if row is None else BankAccountView(row.bank_name, row.bank_account_last4)

    return uow.run(work)


# -- making a payout --------------------------------------------------------------------------
def minimum(uow: UnitOfWork, currency: str) -> int:
    """The smallest payout in ``currency`` (the ``payout`` limit's minimum)."""
    limits = uow.settings.limits_for(currency, "payout")
    return limits.minimum if limits else 1


def _create(
    u: UnitOfWork, actor: Actor, m: MerchantView, currency: str, *,
    scheduled_for: date | None = None,
) -> PayoutView | None:  # fmt: skip
    """Pay out the merchant's available, unpaid balance in ``currency``. Returns None for a
    scheduled payout that another worker made already or that is below the minimum."""
    automatic = scheduled_for is not None
    if not m.can_take_payments:  # a suspended merchant's money waits until it is reactivated
        raise Forbidden(f"{m.name} cannot be paid out while it is {m.state}",
                        code="merchant_inactive")  # fmt: skip
    account = u.execute(
        "SELECT id, posted_minor, pending_debits_minor FROM accounts"
        " WHERE merchant_id = :m AND currency = :cur AND kind = 'merchant' FOR UPDATE",
        {"m": m.id, "cur": currency},
    ).first()
    if account is None:
        raise InvalidInput(f"{m.name} has no {currency} balance", param="currency")
    if (
        automatic
        and u.execute(
            "SELECT 1 FROM payouts WHERE merchant_id = :m AND currency = :cur"
            " AND scheduled_for = :day",
            {"m": m.id, "cur": currency, "day": scheduled_for},
        ).first()
    ):
        return None
    bank = u.execute(
        "SELECT bank_ciphertext, bank_key_version, bank_bound, bank_name, bank_account_last4"
        " FROM merchants WHERE id = :m",
        {"m": m.id},
    ).one()
    if bank.bank_ciphertext is None:
        raise UnexpectedState(
            "Set a bank account for payouts first.", param="bank_account",
            code="bank_account_missing",
        )  # fmt: skip
    now = u.now()
    rows = u.execute(
        "SELECT id, net_minor FROM balance_transactions WHERE account_id = :a"
        " AND payout_id IS NULL AND (status = 'available' OR available_on <= :now)"
        " ORDER BY id FOR UPDATE",
        {"a": account.id, "now": now},
    ).all()
    total = sum(r.net_minor for r in rows)
    least = minimum(u, currency)
    if total < least:
        if automatic:
            return None
        raise UnexpectedState(
            f"The available balance ({Money(max(total, 0), currency).format()}) is below the"
            f" minimum payout ({Money(least, currency).format()}).",
            param="currency", code="balance_insufficient",
        )  # fmt: skip
    if account.posted_minor - account.pending_debits_minor < total:  # the ledger says otherwise
        raise RuntimeError(f"merchant account {account.id} cannot cover its available balance")
    public_id = new_public_id("payout")
    vault = Vault.from_settings(u.settings)
    details = vault.decrypt(
        bytes(bank.bank_ciphertext), bank.bank_key_version, purpose=BANK_PURPOSE,
        record=binding(m.public_id, bank.bank_bound),
    )  # fmt: skip
    blob, version = vault.encrypt(details, purpose=BANK_PURPOSE, record=public_id)
    writes = LedgerWrites(u)
    writes.entry(
        kind="payout", currency=currency,
        legs=[(account.id, -total), (system_account_id(u, "payouts", currency), total)],
        customer_accounts=[account.id], description=f"payout {public_id}",
    )  # fmt: skip
    writes.apply()
    description = "Daily payout" if automatic else "Payout on request"
    u.defer(
        "INSERT INTO payouts (public_id, merchant_id, account_id, currency, amount_minor, status,"
        " automatic, scheduled_for, opening_balance_minor, bank_ciphertext, bank_key_version,"
        " bank_bound, bank_name, bank_account_last4, journal_entry_id, description,"
        " created_by_kind, created_by_id, created_at, updated_at)"
        " VALUES (:pid, :m, :account, :cur, :amount, 'pending', :automatic, :day, :opening,"
        " :blob, :version, true, :bank_name, :last4, (SELECT id FROM entry), :description, :kind,"
        " :by, :now, :now) RETURNING id",
        name="payout", pid=public_id, m=m.id, account=account.id, cur=currency, amount=total,
        automatic=automatic, day=scheduled_for, opening=account.posted_minor,
        blob=blob, version=version, bank_name=bank.bank_name, last4=bank.bank_account_last4,
        description=description,
        kind=str(actor.kind), by=actor.id, now=now,
    )  # fmt: skip
    settlements.record(
        u, merchant_id=m.id, account_id=account.id, currency=currency, type="payout",
        amount=-total, payout="payout", paid_out_by="payout", description=f"payout {public_id}",
    )  # fmt: skip
    u.defer(
        "UPDATE balance_transactions SET payout_id = (SELECT id FROM payout),"
        " status = 'available' WHERE id = ANY(CAST(:ids AS bigint[]))",
        ids=[r.id for r in rows],
    )  # fmt: skip
    audit.record(
        u, actor, "payout.create", "payout", None, subject_from="payout",
        data={"merchant_id": m.id, "amount_minor": total, "currency": currency,
              "transactions": len(rows), "automatic": automatic},
    )  # fmt: skip
    payout_id = u.flush("SELECT (SELECT id FROM payout) AS id").id
    jobs.enqueue(
        u, PAY_JOB, {"payout_id": payout_id},
        run_at=now + timedelta(seconds=u.settings.payout_delay_seconds),
        dedupe_key=f"{PAY_JOB}:{payout_id}",
    )  # fmt: skip
    view = _view(u.execute(_SELECT + " WHERE po.id = :id", {"id": payout_id}).one())
    events.record(u, m.id, ("payout.created", payout_object(view), None))
    u.flush()
    u.observe("money_movements", 1, kind="payout", currency=currency, outcome="pending")
    u.observe("money_moved_minor_units", total, kind="payout", currency=currency,
              outcome="pending")  # fmt: skip
    return view


def create_payout(
    uow: UnitOfWork, *, actor: Actor, merchant: str | int, idempotency_key: str,
    currency: str | None = None,
) -> PayoutView:  # fmt: skip
    """Pay out the merchant's available balance in ``currency`` (default: its settlement
    currency) now. Raises NotFound, Forbidden, InvalidInput, UnexpectedState
    (``bank_account_missing``, ``balance_insufficient`` below the minimum)."""
    key = idempotency.check_key(idempotency_key)
    if currency is not None:
        try:
            currency = normalize_currency(currency)
        except ValueError as exc:
            raise InvalidInput("currency is a three-letter code", param="currency") from exc

    def work(u: UnitOfWork) -> PayoutView:
        m = access(u, actor, merchant, "payouts").merchant
        cur = currency or m.settlement_currency
        claim = idempotency.claim(u, actor, key, "create_payout", {"currency": cur})
        if claim.replay is not None:
            u.observe("idempotent_replays", kind="create_payout")
            return PayoutView.from_dict(claim.replay["result"], replayed=True)
        made = _create(u, actor, m, cur)
        assert made is not None
        idempotency.store(u, claim, {"result": made.to_dict()})
        return made

    return uow.run(work)


def run_schedule(uow: UnitOfWork) -> int:
    """The daily payout: once ``payout_time`` (UTC) has passed today, pay out every active
    merchant that takes automatic payouts, has a bank account and an available balance at the
    minimum, once per currency and day (two workers make one payout). Returns how many."""
    at = uow.settings.payout_time
    now = uow.now()
    if at is None or (now.hour, now.minute) < at:
        return 0
    today = now.date()
    due = uow.run(
        lambda u: u.execute(
            "SELECT a.merchant_id, a.currency, sum(t.net_minor) AS total FROM accounts a"
            " JOIN merchants m ON m.id = a.merchant_id"
            " JOIN balance_transactions t ON t.account_id = a.id AND t.payout_id IS NULL"
            "  AND (t.status = 'available' OR t.available_on <= :now)"
            " WHERE a.kind = 'merchant' AND m.status = 'active' AND m.archived_at IS NULL"
            " AND m.payouts_automatic AND m.bank_ciphertext IS NOT NULL"
            " AND NOT EXISTS (SELECT 1 FROM payouts p WHERE p.merchant_id = a.merchant_id"
            "  AND p.currency = a.currency AND p.scheduled_for = :day)"
            " GROUP BY a.merchant_id, a.currency ORDER BY a.merchant_id, a.currency",
            {"now": now, "day": today},
        ).all()
    )
    made = 0
    for row in due:
        if row.total < minimum(uow, row.currency):
            continue

        def one(u: UnitOfWork, r: Any = row) -> PayoutView | None:
            m = merchant_view(u, merchant_ref(u, r.merchant_id))
            return _create(u, SCHEDULE_ACTOR, m, r.currency, scheduled_for=today)

        made += uow.run(one) is not None
    return made


# -- paying it --------------------------------------------------------------------------------
def pay(uow: UnitOfWork, payload: dict[str, Any]) -> None:
    """The job: pay one payout through the processor, exactly once (see the module docstring)."""
    payout_id = int(payload["payout_id"])

    def start(u: UnitOfWork) -> Any:
        row = u.execute(
            "SELECT public_id, status, amount_minor, currency, bank_ciphertext, bank_key_version,"
            " bank_bound FROM payouts WHERE id = :id FOR UPDATE",
            {"id": payout_id},
        ).one()
        if row.status == "pending":
            u.execute(
                "UPDATE payouts SET status = 'processing', processing_started_at = :now,"
                " updated_at = :now WHERE id = :id",
                {"now": u.now(), "id": payout_id},
            )
        return row

    row = uow.run(start)
    if row.status in ("paid", "failed"):
        return  # settled by an earlier attempt of this job
    jobs.renew_lease(uow)
    sealed_for = binding(row.public_id, row.bank_bound)
    bank = json.loads(
        Vault.from_settings(uow.settings).decrypt(
            bytes(row.bank_ciphertext),
            row.bank_key_version,
            purpose=BANK_PURPOSE,
            record=sealed_for,
        )
    )
    try:
        reference = processor.payout_processor(uow).pay_out(
            uow, idempotency_key=row.public_id, bank=bank, amount_minor=row.amount_minor,
            currency=row.currency,
        )  # fmt: skip
    except processor.Declined as declined:
        code = declined.code
        uow.run(lambda u: _settle(u, payout_id, failure_code=code))
        return
    uow.run(lambda u: _settle(u, payout_id, reference=reference))


def _settle(
    u: UnitOfWork, payout_id: int, *, reference: str | None = None,
    failure_code: str | None = None, staff: Actor | None = None, note: str | None = None,
) -> PayoutView:  # fmt: skip
    """Mark a processing payout paid, or failed with its money returned to the balance. By
    ``staff``, only a pending one: a processing one is with the processor and is refused; a
    settled one is returned unchanged."""
    account_id = u.execute(
        "SELECT account_id FROM payouts WHERE id = :id", {"id": payout_id}
    ).scalar_one()
    u.execute("SELECT 1 FROM accounts WHERE id = :a FOR UPDATE", {"a": account_id})
    row = u.execute(_SELECT + " WHERE po.id = :id FOR UPDATE OF po", {"id": payout_id}).one()
    if staff is not None and row.status == "processing":
        raise UnexpectedState(
            f"Payout {row.public_id} is processing: it is with the processor and settles with"
            " the processor's answer, so it cannot be confirmed or failed by hand.",
            param="payout", code="payout_processing",
        )  # fmt: skip
    if row.status != ("pending" if staff is not None else "processing"):
        return _view(row)  # settled already (by another worker with the same answer, or staff)
    before = _view(row)
    now = u.now()
    if failure_code is None:
        u.execute(
            "UPDATE payouts SET status = 'paid', processor_reference = :ref, paid_at = :now,"
            " updated_at = :now WHERE id = :id",
            {"ref": reference, "now": now, "id": payout_id},
        )
        after = PayoutView(**{**asdict(before), "status": "paid", "paid_at": now})
        event = "payout.paid"
    else:
        writes = LedgerWrites(u)
        writes.entry(
            kind="payout_failure", currency=row.currency,
            legs=[(system_account_id(u, "payouts", row.currency), -row.amount_minor),
                  (account_id, row.amount_minor)],
            customer_accounts=[account_id], description=f"failed payout {row.public_id}",
        )  # fmt: skip
        writes.apply()
        settlements.record(
            u, merchant_id=row.merchant_id, account_id=account_id, currency=row.currency,
            type="payout_failure", amount=row.amount_minor, payout=payout_id,
            description=f"payout {row.public_id} failed: {failure_code}",
        )  # fmt: skip
        u.defer(
            "UPDATE payouts SET status = 'failed', failure_code = :code,"
            " failure_entry_id = (SELECT id FROM entry), failed_at = :now, updated_at = :now"
            " WHERE id = :id",
            code=failure_code, now=now, id=payout_id,
        )  # fmt: skip
        after = PayoutView(
            **{**asdict(before), "status": "failed", "failure_code": failure_code,
               "failed_at": now}
        )  # fmt: skip
        event = "payout.failed"
    if staff is None:
        audit.record(
            u, PROCESSOR_ACTOR, event, "payout", payout_id,
            data={"reference": reference, "failure_code": failure_code},
        )  # fmt: skip
    else:
        audit.record(
            u, staff, "payout.confirm" if failure_code is None else "payout.fail", "payout",
            payout_id, data={"reference": reference, "failure_code": failure_code,
                             **({"note": note} if note else {})},
        )  # fmt: skip
    obj = payout_object(after)
    previous = {k: v for k, v in payout_object(before).items() if obj.get(k) != v}
    events.record(u, row.merchant_id, (event, obj, previous))
    u.flush()
    outcome = "succeeded" if failure_code is None else "failed"
    u.observe("money_movements", 1, kind="payout", currency=row.currency, outcome=outcome)
    return after


def _staff_settle(
    uow: UnitOfWork, actor: Actor, payout: str, *, reference: str | None = None,
    failure_code: str | None = None, note: str | None = None,
) -> PayoutView:  # fmt: skip
    if not actor.can("money:manage"):
        raise Forbidden("missing permission money:manage")
    if not is_public_id("payout", payout):
        raise NotFound("no such payout", param="payout")

    def work(u: UnitOfWork) -> PayoutView:
        found = u.execute("SELECT id FROM payouts WHERE public_id = :p", {"p": payout}).scalar()
        if found is None:
            raise NotFound("no such payout", param="payout")
        return _settle(u, found, reference=reference, failure_code=failure_code, staff=actor,
                       note=note)  # fmt: skip

    return uow.run(work)


def confirm_payout(
    uow: UnitOfWork, *, actor: Actor, payout: str, reference: str | None = None
) -> PayoutView:
    """Staff (money:manage) mark a pending payout paid by hand, as the processor's answer
    would; its queued job then finds it settled and pays nothing. A settled payout is returned
    unchanged. Raises NotFound, Forbidden, UnexpectedState (``payout_processing``: it is with
    the processor)."""
    return _staff_settle(uow, actor, payout, reference=reference)


def fail_payout(
    uow: UnitOfWork, *, actor: Actor, payout: str, failure_code: str, note: str | None = None
) -> PayoutView:
    """Staff (money:manage) fail a pending payout: its money goes back to the merchant's
    balance (a ``payout_failure`` transaction, available at once) and its job pays nothing.
    A settled payout is returned unchanged. Raises NotFound, Forbidden, InvalidInput,
    UnexpectedState (``payout_processing``)."""
    if not failure_code or len(failure_code) > 64:
        raise InvalidInput("a failure code is required", param="failure_code")
    return _staff_settle(uow, actor, payout, failure_code=failure_code, note=note)


def register() -> None:
    jobs.HANDLERS[PAY_JOB] = pay


# -- reading ----------------------------------------------------------------------------------
def _find(u: UnitOfWork, m: MerchantView, payout: str) -> Any:
    row = None
    if is_public_id("payout", payout):
        row = u.execute(
            _SELECT + " WHERE po.public_id = :id AND po.merchant_id = :m",
            {"id": payout, "m": m.id},
        ).first()
    if row is None:
        raise NotFound("no such payout", param="payout")
    return row


def get_payout(uow: UnitOfWork, *, actor: Actor, merchant: str | int, payout: str) -> PayoutView:
    """One of the merchant's payouts. Raises NotFound, Forbidden."""

    def work(u: UnitOfWork) -> PayoutView:
        return _view(_find(u, access(u, actor, merchant, "read").merchant, payout))

    return uow.run(work)


def list_payouts(
    uow: UnitOfWork,
    *,
    actor: Actor,
    merchant: str | int,
    status: str | None = None,
    limit: int | None = None,
    starting_after: str | None = None,
) -> Page[PayoutView]:
    """The merchant's payouts, newest first by cursor. Raises NotFound, Forbidden,
    InvalidInput."""
    size = check_limit(limit)
    if status is not None and status not in STATUSES:
        raise InvalidInput(f"status is one of {', '.join(STATUSES)}", param="status")

    def work(u: UnitOfWork) -> Page[PayoutView]:
        m = access(u, actor, merchant, "read").merchant
        where = ["po.merchant_id = :m"]
        params: dict[str, Any] = {"m": m.id, "limit": size + 1}
        if status is not None:
            where.append("po.status = :status")
            params["status"] = status
        page_after(u, table="payouts", alias="po", kind="payout", starting_after=starting_after,
                   merchant_id=m.id, where=where, params=params)  # fmt: skip
        rows = u.execute(
            _SELECT + " WHERE " + " AND ".join(where)
            + " ORDER BY po.created_at DESC, po.id DESC LIMIT :limit",
            params,
        ).all()  # fmt: skip
        return page_of([_view(r) for r in rows], size)

    return uow.run(work)


@dataclass(frozen=True, slots=True)
class PayoutReport:
    """A payout's reconciliation: the header ties to the ledger (``opening_balance`` is the
    balance account's ledger balance before the payout's entry, ``carried_forward`` after it)
    and the rows' net sums to ``amount``."""

    payout: PayoutView
    opening_balance: int
    gross: int
    refunds: int
    fees: int
    adjustments: int
    returned_payouts: int
    carried_forward: int
    rows: list[settlements.BalanceTransactionView]


def payout_report(
    uow: UnitOfWork, *, actor: Actor, merchant: str | int, payout: str
) -> PayoutReport:
    """A payout's report: header and one row per balance transaction it paid out."""

    def work(u: UnitOfWork) -> PayoutReport:
        row = _find(u, access(u, actor, merchant, "read").merchant, payout)
        rows = settlements.payout_rows(u, row.pk)

        def net(*types: str) -> int:
            return sum(t.net for t in rows if t.type in types)

        report = PayoutReport(
            payout=_view(row), opening_balance=row.opening_balance_minor,
            gross=sum(t.amount for t in rows if t.type == "payment"),
            refunds=net("refund"), fees=-sum(t.fee for t in rows),
            adjustments=net("adjustment", "fee"), returned_payouts=net("payout_failure"),
            carried_forward=row.opening_balance_minor - row.amount_minor, rows=rows,
        )  # fmt: skip
        total = report.gross + report.refunds + report.fees + report.adjustments
        if total + report.returned_payouts != row.amount_minor:
            raise RuntimeError(f"payout {row.public_id}: rows sum to {total}, not its amount")
        return report

    return uow.run(work)


def report_csv(report: PayoutReport) -> str:
    """The report as CSV: the header block, a blank line, then one line per transaction, in
    major units of the payout's currency and UTC times."""
    cur = report.payout.currency

    def major(value: int) -> str:
        return Money(value, cur).to_major_str()

    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    for label, value in (
        ("opening_balance", report.opening_balance), ("gross", report.gross),
        ("refunds", report.refunds), ("fees", report.fees),
        ("adjustments", report.adjustments), ("returned_payouts", report.returned_payouts),
        ("payout_amount", report.payout.amount), ("carried_forward", report.carried_forward),
    ):  # fmt: skip
        w.writerow([label, major(value), cur])
    w.writerow([])
    w.writerow(["balance_transaction", "type", "created_utc", "available_on_utc", "source",
                "description", "currency", "amount", "fee", "net"])  # fmt: skip
    for t in report.rows:
        w.writerow([
            t.id, t.type, t.created.isoformat(), t.available_on.isoformat(), t.source or "",
            t.description, cur, major(t.amount), major(t.fee), major(t.net),
        ])  # fmt: skip
    return out.getvalue()
