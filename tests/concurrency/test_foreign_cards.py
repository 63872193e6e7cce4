"""Naming someone else's card by its id neither finds nor locks it (found by the security
suite): a cardholder's top-up, transfer or withdrawal naming another person's card answers 404
at once, even while that card's wallet is locked by a movement of its own, so card ids cannot
be used to hold other people's wallets up (issue 11 A5)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import sqlalchemy as sa

from portal.domain.errors import NotFound
from portal.domain.money import Money
from portal.services.shared.uow import UnitOfWork
from portal.services.wallet import wallet
from tests.conftest import Factory, new_key

pytestmark = pytest.mark.concurrency

USD = Money.of_major("5", "USD")
BANK = wallet.BankAccount("First Test Bank", "DE89 3704 0044", "Test Holder")


def test_naming_a_locked_foreign_card_is_a_prompt_404(
    real_uow: Callable[[], UnitOfWork], committing_engine: sa.Engine
) -> None:
    make = Factory(real_uow())
    mallory, victim = make.user(), make.user()
    mine, theirs = make.card(mallory, balance="50"), make.card(victim, balance="50")
    attempts = {
        "transfer to": lambda uow: wallet.transfer(
            uow, actor=mallory, from_card_id=mine.public_id, to_card_id=theirs.public_id,
            amount=USD, idempotency_key=new_key(),
        ),
        "transfer from": lambda uow: wallet.transfer(
            uow, actor=mallory, from_card_id=theirs.public_id, to_card_id=mine.public_id,
            amount=USD, idempotency_key=new_key(),
        ),
        "top up": lambda uow: wallet.top_up(
            uow, actor=mallory, card_id=theirs.public_id, amount=USD, method="cash",
            idempotency_key=new_key(),
        ),
        "withdraw": lambda uow: wallet.withdraw(
            uow, actor=mallory, card_id=theirs.public_id, amount=USD, bank=BANK,
            idempotency_key=new_key(),
        ),
    }  # fmt: skip
    version = "SELECT change_version FROM users WHERE id = :u"
    with committing_engine.connect() as conn:
        before = conn.execute(sa.text(version), {"u": victim.id}).scalar_one()
    with committing_engine.connect() as holder:
        holder.execute(sa.text("BEGIN"))
        holder.execute(
            sa.text("SELECT 1 FROM accounts WHERE card_id = :c FOR UPDATE"), {"c": theirs.card_id}
        )  # the victim's own movement, in progress
        for name, attempt in attempts.items():
            # Not blocked behind the victim's lock (that would end in lock_timeout's 503).
            with pytest.raises(NotFound) as refused:
                attempt(real_uow())
            assert refused.value.message == "no such card", name
        holder.execute(sa.text("ROLLBACK"))
    with committing_engine.connect() as conn:
        # Nothing of the victim's was touched: their pages were not even told to look.
        assert conn.execute(sa.text(version), {"u": victim.id}).scalar_one() == before
        assert conn.execute(sa.text("SELECT count(*) FROM transfers")).scalar_one() == 0
