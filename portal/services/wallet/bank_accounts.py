"""The bank accounts a cardholder has withdrawn to before, offered again on the withdrawal form.

Nothing new is stored: each withdrawal keeps its destination sealed by the vault (bound to the
withdrawal's public id), with the bank's name and the account's last four in the clear. The
list shows those; choosing one names that earlier withdrawal (``wd_...``), and only then are its
details opened, for its owner, to pay the new withdrawal to the same account.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from portal.domain.errors import NotFound
from portal.domain.ids import is_public_id
from portal.domain.types import Actor
from portal.services.identity.accounts import require_user
from portal.services.shared.uow import UnitOfWork
from portal.services.shared.vault import Vault, binding
from portal.services.wallet.wallet import BankAccount

#: How many saved accounts the form offers (the most recently used first).
SAVED_LIMIT = 5


@dataclass(frozen=True, slots=True)
class SavedBankAccount:
    """An account withdrawn to before: ``reference`` is the latest withdrawal paid to it."""

    reference: str
    bank_name: str
    last4: str


def list_saved(uow: UnitOfWork, *, actor: Actor) -> tuple[SavedBankAccount, ...]:
    """The actor's bank accounts from their earlier withdrawals (one per bank and last four,
    the most recent first). Raises Unauthenticated."""
    owner = require_user(actor)

    def work(u: UnitOfWork) -> tuple[SavedBankAccount, ...]:
        rows = u.execute(
            "SELECT public_id, bank_name, bank_account_last4 FROM ("
            " SELECT DISTINCT ON (w.bank_name, w.bank_account_last4) w.public_id, w.bank_name,"
            " w.bank_account_last4, w.created_at FROM withdrawals w"
            " JOIN cards c ON c.id = w.card_id"
            " WHERE c.user_id = :owner AND w.bank_ciphertext IS NOT NULL"
            " ORDER BY w.bank_name, w.bank_account_last4, w.created_at DESC, w.id DESC) latest"
            " ORDER BY created_at DESC LIMIT :lim",
            {"owner": owner, "lim": SAVED_LIMIT},
        ).all()
        return tuple(SavedBankAccount(r.public_id, r.bank_name, r.bank_account_last4) for r in rows)

    return uow.run(work)


def open_saved(uow: UnitOfWork, *, actor: Actor, reference: str) -> BankAccount:
    """The bank account an earlier withdrawal of the actor's (``wd_...``) was paid to. Raises
    Unauthenticated, NotFound (not a withdrawal of theirs)."""
    owner = require_user(actor)
    if not isinstance(reference, str) or not is_public_id("withdrawal", reference):
        raise NotFound("no such saved bank account", param="saved_account")

    def work(u: UnitOfWork) -> BankAccount:
        row = u.execute(
            "SELECT w.public_id, w.bank_ciphertext, w.bank_key_version, w.bank_bound"
            " FROM withdrawals w JOIN cards c ON c.id = w.card_id"
            " WHERE w.public_id = :ref AND c.user_id = :owner AND w.bank_ciphertext IS NOT NULL",
            {"ref": reference, "owner": owner},
        ).one_or_none()
        if row is None:
            raise NotFound("no such saved bank account", param="saved_account")
        opened = Vault.from_settings(u.settings).decrypt(
            bytes(row.bank_ciphertext), row.bank_key_version, purpose="withdrawal.bank",
            record=binding(row.public_id, row.bank_bound),
        )  # fmt: skip
        bank = json.loads(opened)
        return BankAccount(bank["bank_name"], bank["account_number"], bank["account_holder"])

    return uow.run(work)
