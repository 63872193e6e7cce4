"""Merchant fixtures: an active merchant with a key, and funded cards to pay it with."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from portal.domain.types import Actor, IssuedCard
from portal.services.merchants import keys, merchants
from portal.services.merchants.payments import CardDetails
from portal.services.shared.uow import UnitOfWork
from tests.conftest import Factory


@dataclass(frozen=True)
class Shop:
    owner: Actor
    merchant: merchants.MerchantView
    key: keys.ApiKeyView
    #: The merchant actor the key authenticates as.
    api: Actor


def card_details(card: IssuedCard, *, cvc: str | None = None) -> CardDetails:
    return CardDetails(card.number, card.expiry_month, card.expiry_year, cvc or card.cvv)


def open_shop(
    uow: UnitOfWork,
    make: Factory,
    staff: Actor,
    *,
    name: str = "Kopi Kenangan",
    currency: str = "USD",
    scopes: tuple[str, ...] | None = None,
) -> Shop:
    owner = make.user()
    applied = merchants.apply(
        uow, actor=owner, name=name, website="https://shop.example",
        contact_email="owner@shop.example", settlement_currency=currency,
    )  # fmt: skip
    merchant = merchants.decide(uow, actor=staff, merchant=applied.public_id, action="approve")
    key = keys.create_api_key(
        uow, actor=owner, merchant=merchant.public_id, name="server", scopes=scopes
    )
    assert key.secret is not None
    api = keys.authenticate_api_key(uow, secret=key.secret).actor
    return Shop(owner, merchant, key, api)


@pytest.fixture
def staff(make: Factory) -> Actor:
    return make.user(roles=("admin",))


@pytest.fixture
def shop(uow: UnitOfWork, make: Factory, staff: Actor) -> Shop:
    return open_shop(uow, make, staff)
