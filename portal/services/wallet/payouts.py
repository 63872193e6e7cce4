"""The demo payout processor and the job that pays withdrawals out through it.

The demo processor stands in for a bank: it answers after the job's delay, succeeding unless the
destination account number ends in ``0000`` (a documented way to see a failed payout). A real
processor would be called here with the decrypted bank details and return its reference.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from portal.domain.types import Actor
from portal.services.shared import jobs
from portal.services.shared.uow import UnitOfWork
from portal.services.shared.vault import Vault
from portal.services.wallet.wallet import PAYOUT_JOB, confirm_withdrawal, fail_withdrawal

ACTOR = Actor.system("payout-processor")


class PayoutDeclined(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def demo_processor(withdrawal_id: int, bank: dict[str, str], amount_minor: int) -> str:
    """Returns a payout reference, or raises PayoutDeclined."""
    if bank["account_number"].endswith("0000"):
        raise PayoutDeclined("account_closed")
    digest = hashlib.sha256(f"{withdrawal_id}:{amount_minor}".encode()).hexdigest()[:16]
    return f"po_demo_{digest}"


def pay_out(uow: UnitOfWork, payload: dict[str, Any]) -> None:
    withdrawal_id = int(payload["withdrawal_id"])
    row = uow.run(
        lambda u: u.execute(
            "SELECT status, amount_minor, bank_ciphertext, bank_key_version FROM withdrawals"
            " WHERE id = :id",
            {"id": withdrawal_id},
        ).one()
    )
    if row.status != "pending":
        return  # settled already (by hand, or by an earlier attempt of this job)
    bank = json.loads(
        Vault.from_settings(uow.settings).decrypt(
            bytes(row.bank_ciphertext), row.bank_key_version, purpose="withdrawal.bank"
        )
    )
    try:
        reference = demo_processor(withdrawal_id, bank, row.amount_minor)
    except PayoutDeclined as declined:
        fail_withdrawal(uow, actor=ACTOR, withdrawal_id=withdrawal_id, failure_code=declined.code)
        return
    confirm_withdrawal(uow, actor=ACTOR, withdrawal_id=withdrawal_id, payout_reference=reference)


def register() -> None:
    jobs.HANDLERS[PAYOUT_JOB] = pay_out
