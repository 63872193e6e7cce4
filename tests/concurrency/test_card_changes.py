"""Freezing and unfreezing a card while money moves from it: no deadlock, no lost state."""

from __future__ import annotations

import pytest

from portal.domain.errors import CardUnavailable
from portal.domain.money import Money
from portal.services.ledger import reconciliation
from portal.services.wallet import cards, wallet
from tests.concurrency.helpers import counting_retries, error_kinds, run_together, warm_pool
from tests.conftest import Factory, new_key

pytestmark = pytest.mark.concurrency

ROUNDS = 60


def test_freezes_racing_transfers_never_deadlock(real_uow, committing_engine):
    make = Factory(real_uow())
    alice, bob = make.user(), make.user()
    source, dest = make.card(alice, balance="1000"), make.card(bob)
    warm_pool(committing_engine)

    def work(i: int) -> int:
        uow = real_uow()
        moved = 0
        for n in range(ROUNDS):
            if i == 0:  # one thread keeps freezing and unfreezing the source card
                cards.set_frozen(uow, actor=alice, card_id=source.card_id, frozen=n % 2 == 0)
                continue
            try:
                wallet.transfer(
                    uow, actor=alice, from_card_id=source.card_id, to_card_id=dest.card_id,
                    amount=Money(100, "USD"), idempotency_key=new_key(),
                )  # fmt: skip
                moved += 1
            except CardUnavailable:
                pass  # frozen at that moment: refused, as it should be
        return moved

    with counting_retries() as retries:
        outcomes = run_together(4, work)
    assert error_kinds(outcomes) == {}, [o.error for o in outcomes if o.error]
    moved = sum(o.value for o in outcomes[1:])
    balance = wallet.get_balance(real_uow(), actor=alice, card_id=source.card_id)
    assert balance.posted.amount_minor == 100_000 - 100 * moved
    assert reconciliation.reconcile(real_uow()).ok
    print(f"transfers moved={moved} deadlock retries={retries.count}")
    assert retries.count == 0
