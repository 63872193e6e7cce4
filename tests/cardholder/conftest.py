"""Fixtures for the wallet page tests: signed-in cardholders with cards, through the page client
of tests/pages (requests run inside the test's transaction; CSRF off)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from flask import Flask

from portal.domain.types import IssuedCard
from portal.services.identity import users
from portal.services.wallet import cards
from tests.conftest import Factory
from tests.pages import conftest as pages
from tests.pages.conftest import PageClient, People, Person, sign_in

# The page tests' fixtures: a client inside the test transaction, people, CSRF off.
page_config = pages.page_config
client = pages.client
another_client = pages.another_client
people = pages.people


class Wallets:
    """Cards and money for page-test people, through the real services."""

    def __init__(self, people: People) -> None:
        self.people = people

    def card(self, person: Person, *, currency: str = "USD", balance: str | None = None,
             brand: str = "visa", name: str = "") -> IssuedCard:  # fmt: skip
        actor = users.actor_for(self.people.uow(), person.id)
        issued = cards.issue_card(
            self.people.uow(), actor=actor, user_id=person.id, card_type="debit", brand=brand,
            currency=currency, name=name,
        )  # fmt: skip
        if balance is not None:
            self.fund(issued, balance)
        return issued

    def fund(self, card: IssuedCard, major: str) -> None:
        Factory(self.people.uow()).fund(card, major)

    def balance(self, card: IssuedCard) -> tuple[int, int]:
        """(posted, pending) in minor units, read straight from the wallet account."""
        row = self.people.connection.execute(
            sa.text("SELECT posted_minor, pending_debits_minor FROM accounts WHERE card_id = :c"),
            {"c": card.card_id},
        ).one()
        return row.posted_minor, row.pending_debits_minor

    def freeze(self, person: Person, card: IssuedCard) -> None:
        actor = users.actor_for(self.people.uow(), person.id)
        cards.set_frozen(self.people.uow(), actor=actor, card_id=card.card_id, frozen=True)

    def count(self, table: str) -> int:
        return self.people.connection.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()


@pytest.fixture
def wallets(people: People) -> Wallets:
    return Wallets(people)


@pytest.fixture
def alice(people: People, client: PageClient) -> Person:
    """A verified cardholder, signed in on ``client``."""
    person = people.make()
    response = sign_in(client, person)
    assert response.status_code == 302, response.get_data(as_text=True)
    return person


@pytest.fixture
def bob(people: People, app: Flask, connection: sa.Connection) -> Person:
    return people.make()
