"""``portal_transfer`` (migration 0030) builds in SQL what the Python path built: the stored
response's money text, masked name and card label, and each recorded refusal's error. Each is
checked here against the Python functions it replaces, so the 201, the replay and the refusal
read exactly as before."""

from __future__ import annotations

from dataclasses import replace

import pytest
import sqlalchemy as sa

from portal.domain import cards as card_numbers
from portal.domain.errors import CardUnavailable, InsufficientFunds, PortalError, error_to_dict
from portal.domain.money import CURRENCY_EXPONENTS, Money
from portal.domain.types import Actor
from portal.services.ledger.ledger import LockedWallet, card_refusal
from portal.services.wallet import cards, wallet
from portal.services.wallet.activity import masked_name
from tests.conftest import new_key


@pytest.mark.parametrize("currency", ["USD", "JPY", "KWD", "IDR"])
@pytest.mark.parametrize(
    "minor", [0, 1, 9, 10, 99, 100, 999, 1000, 12345, 999999, 1000000, 123456789012, -1, -123456]
)
def test_money_text_is_money_format(connection: sa.Connection, minor: int, currency: str) -> None:
    text = connection.execute(
        sa.text("SELECT portal_money_text(:m, :e, :c)"),
        {"m": minor, "e": CURRENCY_EXPONENTS[currency], "c": currency},
    ).scalar_one()
    assert text == Money(minor, currency).format()


@pytest.mark.parametrize(
    ("first", "last"),
    [("Budi", "Santoso"), ("Budi", ""), ("", "santoso"), ("", ""), (None, None),
     (" Élodie ", " ørsted "), ("Zoë", "çelik"), ("李", "王"), ("Ana", "d'Souza")],
)  # fmt: skip
def test_masked_name_is_the_activity_feeds(
    connection: sa.Connection, first: str | None, last: str | None
) -> None:
    sql = sa.text("SELECT portal_masked_name(:f, :l)")
    assert connection.execute(sql, {"f": first, "l": last}).scalar_one() == masked_name(first, last)


WALLET = (
    "SELECT a.id AS account_id, c.id AS card_id, c.user_id, a.currency,"
    " a.posted_minor AS posted, a.pending_debits_minor AS pending, c.status AS card_status,"
    " c.archived_at, c.expiry_month, c.expiry_year,"
    " u.email_verified_at IS NOT NULL AS owner_verified, c.public_id AS card_public_id,"
    " c.last4, c.brand, u.first_name AS owner_first_name, u.last_name AS owner_last_name"
    " FROM accounts a JOIN cards c ON c.id = a.card_id JOIN users u ON u.id = c.user_id"
    " WHERE c.id = :id"
)


def _wallet(uow, card_id: int) -> LockedWallet:
    """A card's wallet as the Python path's lock read it."""
    row = uow.run(lambda u: u.execute(WALLET, {"id": card_id}).mappings().one())
    return LockedWallet(**row)


@pytest.mark.parametrize("brand", sorted(card_numbers.BRANDS))
def test_the_answer_is_what_the_python_path_built_and_its_replay_the_same(
    uow, make, brand: str
) -> None:
    staff = make.user(roles=("admin",))
    alice = make.user(first_name="Alice", last_name="ärnström")
    bob = make.user(first_name="Bob", last_name="Marley")
    src, dst = make.card(alice, balance="10"), make.card(bob, brand=brand)
    before = _wallet(uow, src.card_id)
    key = new_key()

    def send() -> object:
        return wallet.transfer(
            uow, actor=staff, from_card_id=src.card_id, to_card_id=dst.card_id,
            amount=Money(250, "USD"), idempotency_key=key, memo="lunch",
        )  # fmt: skip

    first, again = send(), send()

    dest = _wallet(uow, dst.card_id)
    assert first.counterparty == wallet.card_label(dest)
    assert first.balance == before.balance(posted=-250)
    assert (first.card_last4, first.memo, first.kind) == (before.last4, "lunch", "transfer")
    assert first.replayed is False and again.replayed is True
    assert replace(again, replayed=False) == first


def _refusal(uow, actor: Actor, src_id: int, dst_id: int, key: str, amount: int) -> PortalError:
    with pytest.raises(PortalError) as raised:
        wallet.transfer(
            uow, actor=actor, from_card_id=src_id, to_card_id=dst_id,
            amount=Money(amount, "USD"), idempotency_key=key,
        )  # fmt: skip
    return raised.value


@pytest.mark.parametrize("case", ["archived", "frozen", "expired", "funds", "dest_frozen"])
def test_each_recorded_refusal_is_the_python_paths_and_replays_the_same(
    uow, make, clock, case: str
) -> None:
    staff = make.user(roles=("admin",))
    alice = make.user()
    src, dst = make.card(alice, balance="1234.56"), make.card(alice)
    amount = 100
    if case == "archived":
        cards.set_archived(uow, actor=staff, card_id=src.card_id, archived=True)
    elif case in ("frozen", "dest_frozen"):
        target = src if case == "frozen" else dst
        cards.set_frozen(uow, actor=alice, card_id=target.card_id, frozen=True)
    elif case == "expired":
        clock.advance(days=366 * cards.VALID_YEARS + 31)
    else:
        amount = 123_457
    now = clock()
    source, dest = _wallet(uow, src.card_id), _wallet(uow, dst.card_id)
    expected = (
        card_refusal(source, now)
        or card_refusal(dest, now)
        or InsufficientFunds(
            f"not enough available money ({Money(source.available, 'USD')} available)",
            param="amount",
        )
    )
    key = new_key()

    first = _refusal(uow, alice, src.card_id, dst.card_id, key, amount)
    again = _refusal(uow, alice, src.card_id, dst.card_id, key, amount)

    assert isinstance(first, (CardUnavailable, InsufficientFunds))
    assert error_to_dict(first) == error_to_dict(expected)
    assert error_to_dict(again) == error_to_dict(expected) and again.replayed
