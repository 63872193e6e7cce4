"""The money processor at the edge of Portal: the bank that pays withdrawals and merchant payouts
out (and, for top-ups, confirms that funds arrived).

Portal calls it only after marking the record ``processing`` under a row lock in a committed
transaction, always with the record's public id as the idempotency key, so a call repeated after
a crash, a lost lease or a timeout is answered with the first call's outcome and pays nothing
twice. A real processor keeps those keys on its side; the demo processor below does the same in
``demo_processor_requests``, written in a transaction of its own as an outside system would, so
tests can count what "the bank" was asked to do.

Demo rules (documented in the README): a bank account number ending in ``0000`` is declined with
``account_closed``; everything else is paid with a reference derived from the key.
"""

from __future__ import annotations

import hashlib
from typing import Protocol

from portal.services.shared.uow import UnitOfWork


class Declined(Exception):
    """The processor refused the request for good (a retry gets the same answer)."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class KeyReused(Exception):
    """The idempotency key was used before for a different request (a bug on Portal's side)."""


class PayoutProcessor(Protocol):
    def pay_out(
        self, uow: UnitOfWork, *, idempotency_key: str, bank: dict[str, str], amount_minor: int,
        currency: str,
    ) -> str:  # fmt: skip
        """Pay ``amount_minor`` to ``bank``; return the processor's reference or raise
        Declined. Must answer a repeated key with the first outcome."""
        ...


class DemoProcessor:
    """Pays out at once (the job's delay stands in for the bank's), keeping each key's outcome."""

    def pay_out(
        self, uow: UnitOfWork, *, idempotency_key: str, bank: dict[str, str], amount_minor: int,
        currency: str,
    ) -> str:  # fmt: skip
        declined = bank["account_number"].endswith("0000")
        digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:20]

        def record(u: UnitOfWork):  # type: ignore[no-untyped-def]
            u.execute(
                "INSERT INTO demo_processor_requests (idempotency_key, operation, amount_minor,"
                " currency, outcome, reference, decline_code, created_at)"
                " VALUES (:key, 'payout', :amount, :cur, :outcome, :ref, :code, :now)"
                " ON CONFLICT (idempotency_key) DO NOTHING",
                {"key": idempotency_key, "amount": amount_minor, "cur": currency,
                 "outcome": "declined" if declined else "paid",
                 "ref": None if declined else f"bank_{digest}",
                 "code": "account_closed" if declined else None, "now": u.now()},
            )  # fmt: skip
            return u.execute(
                "SELECT operation, amount_minor, currency, outcome, reference, decline_code"
                " FROM demo_processor_requests WHERE idempotency_key = :key",
                {"key": idempotency_key},
            ).one()

        row = uow.run(record)
        if (row.operation, row.amount_minor, row.currency) != ("payout", amount_minor, currency):
            raise KeyReused(f"idempotency key {idempotency_key} was used for another request")
        if row.outcome == "declined":
            raise Declined(row.decline_code)
        return str(row.reference)


def payout_processor(uow: UnitOfWork) -> PayoutProcessor:
    """The configured payout processor (only the demo one exists today)."""
    return DemoProcessor()
