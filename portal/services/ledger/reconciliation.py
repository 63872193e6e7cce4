"""Reconciliation: prove the cached balances and the ledger agree.

Checks, for every customer account, that the cached posted balance equals the sum of its
postings and the cached pending debits equal the sum of its pending holds; and that the whole
ledger sums to zero per currency (and each journal entry does); and, for every captured
payment, that its capture entry paid the merchant ``received - fee`` and fee revenue ``fee``,
and that its succeeded refunds add up to ``amount_refunded``. For merchant balances, that each
balance transaction's net is its entry's posting on the account and every such posting has
one, so the balance's history equals the ledger's; and for every payout, that the transactions
it paid out sum to its amount, its own transaction takes exactly that, and its opening balance
is the account's ledger balance before its entry. For top-ups, that each succeeded one's entry
put exactly its amount on its card's wallet, an unsettled or failed one posted nothing, and no
top-up entry exists without its succeeded top-up (money from nothing). System account balances
(funding, payouts, fees) are reported as derived from postings.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

from portal.services.shared.uow import UnitOfWork

#: Violations kept with each recorded check (the count is always complete).
KEPT_VIOLATIONS = 50
#: How long recorded checks are kept.
CHECK_RETENTION = timedelta(days=30)


@dataclass(frozen=True, slots=True)
class Violation:
    check: str
    subject: str
    expected: int
    actual: int


@dataclass(frozen=True, slots=True)
class ReconciliationReport:
    accounts_checked: int
    entries_checked: int
    postings_checked: int
    totals_by_currency: dict[str, int]
    system_balances: dict[str, int]
    violations: list[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


RECONCILE_SQL = """
WITH per_account AS (
    SELECT a.id, a.kind, a.currency, a.posted_minor, a.pending_debits_minor,
           COALESCE(p.total, 0) AS postings_total, COALESCE(h.total, 0) AS holds_total
    FROM accounts a
    LEFT JOIN (SELECT account_id, SUM(amount_minor) AS total FROM postings
               GROUP BY account_id) p ON p.account_id = a.id
    LEFT JOIN (SELECT account_id, SUM(amount_minor) AS total FROM holds
               WHERE status = 'pending' GROUP BY account_id) h ON h.account_id = a.id
), mismatched AS (
    SELECT * FROM per_account
    WHERE kind IN ('wallet', 'merchant')
      AND (posted_minor <> postings_total OR pending_debits_minor <> holds_total
           OR posted_minor - pending_debits_minor < 0)
), unbalanced AS (
    SELECT journal_entry_id, currency, SUM(amount_minor) AS total FROM postings
    GROUP BY journal_entry_id, currency HAVING SUM(amount_minor) <> 0
), payment_money AS (
    -- Each captured payment's entry: the merchant got received - fee and fee revenue the fee;
    -- its succeeded refunds add up to amount_refunded.
    SELECT pay.public_id, pay.received_minor - pay.fee_minor AS net, pay.fee_minor AS fee,
           pay.refunded_minor AS refunded,
           COALESCE((SELECT SUM(p.amount_minor) FROM postings p JOIN accounts a
                     ON a.id = p.account_id WHERE p.journal_entry_id = pay.capture_entry_id
                     AND a.kind = 'merchant'), 0) AS posted_net,
           COALESCE((SELECT SUM(p.amount_minor) FROM postings p JOIN accounts a
                     ON a.id = p.account_id WHERE p.journal_entry_id = pay.capture_entry_id
                     AND a.kind = 'fees'), 0) AS posted_fee,
           COALESCE((SELECT SUM(r.amount_minor) FROM refunds r WHERE r.payment_id = pay.id
                     AND r.status = 'succeeded'), 0) AS refunds_total
    FROM payments pay WHERE pay.status = 'succeeded'
), payments_off AS (
    SELECT * FROM payment_money
    WHERE net <> posted_net OR fee <> posted_fee OR refunded <> refunds_total
), merchant_postings AS (
    SELECT p.journal_entry_id, p.account_id, SUM(p.amount_minor) AS amount
    FROM postings p JOIN accounts a ON a.id = p.account_id AND a.kind = 'merchant'
    GROUP BY p.journal_entry_id, p.account_id
), history_off AS (
    -- A posting on a merchant balance without its balance transaction, or a transaction whose
    -- net is not its entry's posting on its account.
    SELECT COALESCE(t.public_id, 'entry ' || mp.journal_entry_id) AS subject,
           COALESCE(mp.amount, 0) AS posted, COALESCE(t.net_minor, 0) AS net
    FROM merchant_postings mp
    FULL JOIN balance_transactions t
      ON t.journal_entry_id = mp.journal_entry_id AND t.account_id = mp.account_id
    WHERE t.id IS NULL OR mp.journal_entry_id IS NULL OR t.net_minor <> mp.amount
), payouts_off AS (
    SELECT po.public_id, po.amount_minor AS amount,
           COALESCE((SELECT SUM(t.net_minor) FROM balance_transactions t
                     WHERE t.payout_id = po.id AND t.type <> 'payout'), 0) AS rows_net,
           COALESCE((SELECT SUM(t.net_minor) FROM balance_transactions t
                     WHERE t.source_payout_id = po.id AND t.type = 'payout'), 0) AS own_net,
           po.opening_balance_minor AS opening,
           COALESCE((SELECT SUM(p.amount_minor) FROM postings p
                     WHERE p.account_id = po.account_id
                       AND p.journal_entry_id < po.journal_entry_id), 0) AS ledger_opening
    FROM payouts po
), payouts_wrong AS (
    SELECT * FROM payouts_off
    WHERE rows_net <> amount OR own_net <> -amount OR opening <> ledger_opening
), top_up_money AS (
    -- Each top-up entry with its top-up (either may be missing): what its card's wallet got.
    SELECT COALESCE(t.public_id, 'entry ' || e.id) AS subject,
           CASE WHEN t.status = 'succeeded' THEN t.amount_minor ELSE 0 END AS expected,
           COALESCE((SELECT SUM(p.amount_minor) FROM postings p JOIN accounts a
                     ON a.id = p.account_id WHERE p.journal_entry_id = e.id
                     AND a.kind = 'wallet' AND (t.id IS NULL OR a.card_id = t.card_id)), 0)
             AS posted
    FROM (SELECT id FROM journal_entries WHERE kind = 'top_up') e
    FULL JOIN top_ups t ON t.journal_entry_id = e.id
), top_ups_off AS (
    SELECT * FROM top_up_money WHERE expected <> posted
)
SELECT
    (SELECT count(*) FROM per_account) AS accounts,
    (SELECT count(*) FROM journal_entries) AS entries,
    (SELECT count(*) FROM postings) AS postings,
    (SELECT COALESCE(jsonb_agg(to_jsonb(m)), '[]') FROM mismatched m) AS mismatched,
    (SELECT COALESCE(jsonb_agg(to_jsonb(u)), '[]') FROM unbalanced u) AS unbalanced,
    (SELECT COALESCE(jsonb_agg(to_jsonb(o)), '[]') FROM payments_off o) AS payments_off,
    (SELECT COALESCE(jsonb_agg(to_jsonb(h)), '[]') FROM history_off h) AS history_off,
    (SELECT COALESCE(jsonb_agg(to_jsonb(w)), '[]') FROM payouts_wrong w) AS payouts_wrong,
    (SELECT COALESCE(jsonb_agg(to_jsonb(t)), '[]') FROM top_ups_off t) AS top_ups_off,
    (SELECT COALESCE(jsonb_object_agg(currency, total), '{}')
       FROM (SELECT currency, SUM(amount_minor) AS total FROM postings GROUP BY currency) t)
       AS totals,
    (SELECT COALESCE(jsonb_object_agg(kind || ':' || currency, postings_total), '{}')
       FROM per_account WHERE kind IN ('funding', 'payouts', 'fees', 'adjustments')
         AND postings_total <> 0)
       AS system
"""


def reconcile(uow: UnitOfWork) -> ReconciliationReport:
    """Run every check in one statement, so it reads one consistent snapshot even while money
    moves."""

    def work(u: UnitOfWork) -> ReconciliationReport:
        row = u.execute(RECONCILE_SQL).one()
        violations: list[Violation] = []
        for a in row.mismatched:
            subject = f"account {a['id']}"
            if a["posted_minor"] != a["postings_total"]:
                violations.append(
                    Violation("posted_balance", subject, a["postings_total"], a["posted_minor"])
                )
            if a["pending_debits_minor"] != a["holds_total"]:
                violations.append(
                    Violation(
                        "pending_debits", subject, a["holds_total"], a["pending_debits_minor"]
                    )
                )
            available = a["posted_minor"] - a["pending_debits_minor"]
            if available < 0:
                violations.append(Violation("available_non_negative", subject, 0, available))
        totals = {cur: int(total) for cur, total in row.totals.items()}
        violations += [Violation("ledger_sum", cur, 0, t) for cur, t in totals.items() if t]
        violations += [
            Violation("entry_sum", f"entry {e['journal_entry_id']} {e['currency']}", 0, e["total"])
            for e in row.unbalanced
        ]
        for pay in row.payments_off:
            subject = f"payment {pay['public_id']}"
            for check, expected, actual in (
                ("payment_net", pay["posted_net"], pay["net"]),
                ("payment_fee", pay["posted_fee"], pay["fee"]),
                ("payment_refunded", pay["refunds_total"], pay["refunded"]),
            ):
                if expected != actual:
                    violations.append(Violation(check, subject, expected, actual))
        violations += [
            Violation("balance_transaction", h["subject"], h["posted"], h["net"])
            for h in row.history_off
        ]
        for po in row.payouts_wrong:
            subject = f"payout {po['public_id']}"
            for check, expected, actual in (
                ("payout_rows", po["amount"], po["rows_net"]),
                ("payout_entry", -po["amount"], po["own_net"]),
                ("payout_opening", po["ledger_opening"], po["opening"]),
            ):
                if expected != actual:
                    violations.append(Violation(check, subject, expected, actual))
        violations += [
            Violation("top_up_posted", t["subject"], t["expected"], t["posted"])
            for t in row.top_ups_off
        ]
        return ReconciliationReport(
            accounts_checked=row.accounts,
            entries_checked=row.entries,
            postings_checked=row.postings,
            totals_by_currency=totals,
            system_balances={k: int(v) for k, v in row.system.items()},
            violations=violations,
        )

    return uow.run(work)


@dataclass(frozen=True, slots=True)
class LedgerCheckSummary:
    checked_at: datetime
    #: Sum of all postings per currency (zero when balanced).
    totals_by_currency: dict[str, int]
    violation_count: int


def record_check(uow: UnitOfWork) -> ReconciliationReport:
    """Reconcile and store the result (the periodic task behind the ledger-imbalance gauge and
    alert), pruning checks older than :data:`CHECK_RETENTION`."""
    started = time.monotonic()
    report = reconcile(uow)
    elapsed_ms = int((time.monotonic() - started) * 1000)

    def work(u: UnitOfWork) -> None:
        u.defer(
            "INSERT INTO ledger_checks (checked_at, duration_ms, accounts_checked,"
            " entries_checked, postings_checked, totals, violation_count, violations)"
            " VALUES (:now, :ms, :accounts, :entries, :postings, CAST(:totals AS jsonb),"
            " :count, CAST(:violations AS jsonb))",
            now=u.now(), ms=elapsed_ms, accounts=report.accounts_checked,
            entries=report.entries_checked, postings=report.postings_checked,
            totals=json.dumps(report.totals_by_currency), count=len(report.violations),
            violations=json.dumps([asdict(v) for v in report.violations[:KEPT_VIOLATIONS]]),
        )  # fmt: skip
        u.defer(
            "DELETE FROM ledger_checks WHERE checked_at < :cutoff",
            cutoff=u.now() - CHECK_RETENTION,
        )

    uow.run(work)
    return report


def last_check(uow: UnitOfWork) -> LedgerCheckSummary | None:
    """The most recent recorded check, or None when none has run."""
    row = uow.run(
        lambda u: u.execute(
            "SELECT checked_at, totals, violation_count FROM ledger_checks"
            " ORDER BY checked_at DESC, id DESC LIMIT 1"
        ).one_or_none()
    )
    if row is None:
        return None
    totals = {currency: int(total) for currency, total in row.totals.items()}
    return LedgerCheckSummary(row.checked_at, totals, row.violation_count)
