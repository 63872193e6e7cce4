"""The money processor at the edge of Portal: the bank that pays withdrawals and merchant payouts
out and, for top-ups, confirms that the money arrived from the cardholder's bank, card or
e-wallet (funding).

Portal calls it only after marking the record ``processing`` under a row lock in a committed
transaction, always with the record's public id as the idempotency key, so a call repeated after
a crash, a lost lease or a timeout is answered with the first call's outcome and pays nothing
twice. A real processor keeps those keys on its side; the demo processor below does the same in
``demo_processor_requests``, written in a transaction of its own as an outside system would, so
tests can count what "the bank" was asked to do.

Demo rules (documented in the README): a payout to a bank account number ending in ``0000`` is
declined with ``account_closed``; a top-up whose amount in minor units ends in ``13`` (10.13 USD,
513 JPY) is declined with ``funding_declined``; everything else is paid or received with a
reference derived from the key.

A real funding provider answers asynchronously: the cardholder is sent to it (a card form, a
bank's page, a transfer reference) and it calls Portal back with a signed notification naming the
top-up's public id. An adapter for it would verify that signature (as Portal's own webhooks are
signed: ``portal.services.merchants.webhooks``), then settle the top-up exactly as the funding
job does with the demo's answer (``portal.services.wallet.funding``); its ``collect`` asks the
provider for the status of the key, so a lost callback is settled by the job all the same.
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


class FundingProcessor(Protocol):
    def collect(
        self, uow: UnitOfWork, *, idempotency_key: str, method: str, amount_minor: int,
        currency: str,
    ) -> str:  # fmt: skip
        """Whether ``amount_minor`` arrived by ``method`` for this key: return the processor's
        reference or raise Declined. Must answer a repeated key with the first outcome."""
        ...


class DemoProcessor:
    """Pays out and confirms funding at once (the jobs' delays stand in for the bank's),
    keeping each key's outcome."""

    def pay_out(
        self, uow: UnitOfWork, *, idempotency_key: str, bank: dict[str, str], amount_minor: int,
        currency: str,
    ) -> str:  # fmt: skip
        decline = "account_closed" if bank["account_number"].endswith("0000") else None
        return self._answer(uow, "payout", idempotency_key, amount_minor, currency, decline)

    def collect(
        self, uow: UnitOfWork, *, idempotency_key: str, method: str, amount_minor: int,
        currency: str,
    ) -> str:  # fmt: skip
        decline = "funding_declined" if str(amount_minor).endswith("13") else None
        return self._answer(uow, "funding", idempotency_key, amount_minor, currency, decline)

    @staticmethod
    def _answer(
        uow: UnitOfWork, operation: str, key: str, amount_minor: int, currency: str,
        decline: str | None,
    ) -> str:  # fmt: skip
        """Record the first answer for ``key`` in a transaction of its own and return it (the
        reference, or Declined); a key used for another request is KeyReused."""
        prefix = "bank" if operation == "payout" else "fund"
        reference = f"{prefix}_{hashlib.sha256(key.encode()).hexdigest()[:20]}"

        def record(u: UnitOfWork):  # type: ignore[no-untyped-def]
            u.execute(
                "INSERT INTO demo_processor_requests (idempotency_key, operation, amount_minor,"
                " currency, outcome, reference, decline_code, created_at)"
                " VALUES (:key, :operation, :amount, :cur, :outcome, :ref, :code, :now)"
                " ON CONFLICT (idempotency_key) DO NOTHING",
                {"key": key, "operation": operation, "amount": amount_minor, "cur": currency,
                 "outcome": "declined" if decline else "paid",
                 "ref": None if decline else reference, "code": decline, "now": u.now()},
            )  # fmt: skip
            return u.execute(
                "SELECT operation, amount_minor, currency, outcome, reference, decline_code"
                " FROM demo_processor_requests WHERE idempotency_key = :key",
                {"key": key},
            ).one()

        row = uow.run(record)
        if (row.operation, row.amount_minor, row.currency) != (operation, amount_minor, currency):
            raise KeyReused(f"idempotency key {key} was used for another request")
        if row.outcome == "declined":
            raise Declined(row.decline_code)
        return str(row.reference)


def payout_processor(uow: UnitOfWork) -> PayoutProcessor:
    """The configured payout processor (only the demo one exists today)."""
    return DemoProcessor()


def funding_processor(uow: UnitOfWork) -> FundingProcessor:
    """The configured funding processor (only the demo one exists today)."""
    return DemoProcessor()
