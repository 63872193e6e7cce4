"""Issuing a card under an idempotency key: a retry answers the card issued first without its
number and code (shown once, to the first answer; never stored with the key), another request
under the key is refused, and racing retries issue one card."""

from __future__ import annotations

import threading

import pytest

from portal.domain.errors import IdempotencyConflict
from portal.domain.types import IssuedCard
from portal.services.shared.uow import UnitOfWork
from portal.services.wallet import cards
from tests.conftest import Factory, new_key


def issue(uow: UnitOfWork, person, key: str | None, **changes: str):
    args = {"card_type": "debit", "brand": "visa", "currency": "USD", "name": "Daily"} | changes
    return cards.issue_card(uow, actor=person, user_id=person.id, idempotency_key=key, **args)


def cards_of(uow: UnitOfWork, user_id: int) -> int:
    return uow.run(
        lambda u: u.execute("SELECT count(*) FROM cards WHERE user_id = :u", {"u": user_id})
    ).scalar_one()


def test_a_retry_answers_the_first_card(uow: UnitOfWork, make: Factory) -> None:
    alice = make.user()
    key = new_key()
    first = issue(uow, alice, key)
    again = issue(uow, alice, key)
    assert isinstance(first, IssuedCard) and isinstance(again, cards.ReissuedCard)
    assert (again.card_id, again.public_id, again.account_id, again.last4) == (
        first.card_id, first.public_id, first.account_id, first.last4
    )  # fmt: skip
    assert (again.brand, again.expiry_month, again.expiry_year, again.name) == (
        first.brand, first.expiry_month, first.expiry_year, first.name
    )  # fmt: skip
    # Shown once: the retry carries neither the number nor the code, anywhere.
    assert first.number not in repr(again) and first.cvv not in repr(again)
    assert not hasattr(again, "number") and not hasattr(again, "cvv")
    assert (first.replayed, again.replayed) == (False, True)
    assert cards_of(uow, alice.id) == 1
    stored = uow.run(
        lambda u: u.execute(
            "SELECT response::text FROM idempotency_keys WHERE key = :k", {"k": key}
        ).scalar_one()
    )
    assert first.number not in stored and first.cvv not in stored
    assert stored == f'{{"result": {{"card_id": {first.card_id}}}}}'


def test_the_key_with_another_request_or_without_a_key(uow: UnitOfWork, make: Factory) -> None:
    alice = make.user()
    key = new_key()
    issue(uow, alice, key)
    with pytest.raises(IdempotencyConflict):
        issue(uow, alice, key, brand="mastercard")
    issue(uow, alice, None)
    issue(uow, alice, None)
    assert cards_of(uow, alice.id) == 3  # without a key every request is a new card


def test_keys_belong_to_their_caller(uow: UnitOfWork, make: Factory) -> None:
    alice, budi = make.user(), make.user()
    key = new_key()
    mine = issue(uow, alice, key)
    theirs = issue(uow, budi, key)
    assert theirs.card_id != mine.card_id and not theirs.replayed


@pytest.mark.concurrency
def test_racing_retries_issue_one_card(real_uow) -> None:
    alice = Factory(real_uow()).user()
    key = new_key()
    results, errors = [], []
    start = threading.Barrier(12)

    def attempt() -> None:
        start.wait()
        try:
            results.append(issue(real_uow(), alice, key))
        except Exception as exc:  # pragma: no cover - shown by the assertion
            errors.append(exc)

    threads = [threading.Thread(target=attempt) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len({r.card_id for r in results}) == 1 and len(results) == 12
    assert sum(not r.replayed for r in results) == 1
    assert cards_of(real_uow(), alice.id) == 1
