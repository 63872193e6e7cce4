"""The job that pays withdrawals out through the payout processor, exactly once.

It follows the rule for every call to a processor (see ``portal.services.shared.processor``):
mark the withdrawal ``processing`` under its row lock and commit, renew the job's lease, call
the processor with the withdrawal's public id (``wd_...``) as the idempotency key, then settle
from ``processing`` only: post the hold with the processor's reference, or void it on a decline.
A job that finds the withdrawal ``processing`` (its worker died mid-call or after it, or its
lease ran out and another worker took the job) calls again with the same key, gets the first
answer, and settles once. Staff cannot confirm or fail a ``processing`` withdrawal, and its
hold does not expire meanwhile.

The demo processor declines a bank account number ending in ``0000`` (``account_closed``).
"""

from __future__ import annotations

import json
from typing import Any

from portal.domain.types import Actor
from portal.services.shared import jobs, processor
from portal.services.shared.uow import UnitOfWork
from portal.services.shared.vault import Vault, binding
from portal.services.wallet.wallet import PAYOUT_JOB, begin_payout, settle_payout

ACTOR = Actor.system("payout-processor")


def pay_out(uow: UnitOfWork, payload: dict[str, Any]) -> None:
    """The job: pay one withdrawal through the processor, exactly once (see the module
    docstring). Raises LeaseLost when another worker holds the job (it carries on)."""
    withdrawal_id = int(payload["withdrawal_id"])
    order = begin_payout(uow, withdrawal_id=withdrawal_id)
    if order is None:
        return  # settled by hand before it went out, or by an earlier attempt of this job
    jobs.renew_lease(uow)
    # Opened for this withdrawal's row only (bound to its public id, or to the purpose alone
    # for a legacy row): details copied from another row raise VaultError, and the job fails.
    bank = json.loads(
        Vault.from_settings(uow.settings).decrypt(
            order.bank_ciphertext, order.bank_key_version, purpose="withdrawal.bank",
            record=binding(order.public_id, order.bank_bound),
        )
    )  # fmt: skip
    try:
        reference = processor.payout_processor(uow).pay_out(
            uow, idempotency_key=order.public_id, bank=bank,
            amount_minor=order.amount.amount_minor, currency=order.amount.currency,
        )  # fmt: skip
    except processor.Declined as declined:
        settle_payout(uow, actor=ACTOR, withdrawal_id=withdrawal_id, failure_code=declined.code)
        return
    settle_payout(uow, actor=ACTOR, withdrawal_id=withdrawal_id, payout_reference=reference)


def register() -> None:
    jobs.HANDLERS[PAYOUT_JOB] = pay_out
