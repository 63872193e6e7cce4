"""Reconciliation: prove the cached balances and the ledger agree.

Checks, for every customer account, that the cached posted balance equals the sum of its
postings and the cached pending debits equal the sum of its pending holds; and that the whole
ledger sums to zero per currency (and each journal entry does). System account balances are
reported as derived from postings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from portal.services.uow import UnitOfWork


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


def reconcile(uow: UnitOfWork) -> ReconciliationReport:
    """Run every check in one REPEATABLE READ snapshot (consistent while money moves)."""

    def work(u: UnitOfWork) -> ReconciliationReport:
        u.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        violations: list[Violation] = []
        accounts = u.execute(
            """
            SELECT a.id, a.kind, a.currency, a.posted_minor, a.pending_debits_minor,
                   COALESCE(p.total, 0) AS postings_total, COALESCE(h.total, 0) AS holds_total
            FROM accounts a
            LEFT JOIN (SELECT account_id, SUM(amount_minor) AS total FROM postings
                       GROUP BY account_id) p ON p.account_id = a.id
            LEFT JOIN (SELECT account_id, SUM(amount_minor) AS total FROM holds
                       WHERE status = 'pending' GROUP BY account_id) h ON h.account_id = a.id
            ORDER BY a.id
            """
        ).all()
        system: dict[str, int] = {}
        for a in accounts:
            if a.kind in ("wallet", "merchant"):
                if a.posted_minor != a.postings_total:
                    violations.append(
                        Violation("posted_balance", f"account {a.id}", a.postings_total,
                                  a.posted_minor)
                    )  # fmt: skip
                if a.pending_debits_minor != a.holds_total:
                    violations.append(
                        Violation("pending_debits", f"account {a.id}", a.holds_total,
                                  a.pending_debits_minor)
                    )  # fmt: skip
                if a.posted_minor - a.pending_debits_minor < 0:
                    violations.append(
                        Violation("available_non_negative", f"account {a.id}", 0,
                                  a.posted_minor - a.pending_debits_minor)
                    )  # fmt: skip
            elif a.postings_total:
                system[f"{a.kind}:{a.currency}"] = int(a.postings_total)
        totals = {
            row.currency: int(row.total)
            for row in u.execute(
                "SELECT currency, SUM(amount_minor) AS total FROM postings GROUP BY currency"
            )
        }
        for cur, total in totals.items():
            if total != 0:
                violations.append(Violation("ledger_sum", cur, 0, total))
        for row in u.execute(
            "SELECT journal_entry_id, currency, SUM(amount_minor) AS total FROM postings"
            " GROUP BY journal_entry_id, currency HAVING SUM(amount_minor) <> 0"
        ):
            violations.append(
                Violation("entry_sum", f"entry {row.journal_entry_id} {row.currency}", 0,
                          int(row.total))
            )  # fmt: skip
        counts = u.execute(
            "SELECT (SELECT count(*) FROM journal_entries) AS entries,"
            " (SELECT count(*) FROM postings) AS postings"
        ).one()
        return ReconciliationReport(
            accounts_checked=len(accounts),
            entries_checked=counts.entries,
            postings_checked=counts.postings,
            totals_by_currency=totals,
            system_balances=system,
            violations=violations,
        )

    return uow.run(work)
