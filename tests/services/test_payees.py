"""Paying people, not card numbers (issue 13), through the services on a real PostgreSQL: person
look-ups by email and handle, one answer for every person who cannot be paid (no enumeration),
default receiving cards, handles, payees, and revealing one's own card after re-authentication.
"""

from __future__ import annotations

import uuid
from typing import Any

import pyotp
import pytest
import sqlalchemy as sa

from portal.domain.errors import Forbidden, InvalidInput, InvalidState, NotFound, PortalError
from portal.domain.money import Money
from portal.domain.types import Actor
from portal.services.identity import handles, mfa, users
from portal.services.ledger import reconciliation
from portal.services.shared.uow import UnitOfWork
from portal.services.wallet import activity, cards, payees, reveal, wallet
from tests.conftest import SYSTEM, Clock, Factory, new_key

PASSWORD = "Tr0ub4dor&3-purple"


def person(
    uow: UnitOfWork,
    first: str = "Budi",
    last: str = "Santoso",
    email: str | None = None,
    roles: tuple[str, ...] = ("cardholder",),
) -> Actor:
    created = users.create_user(
        uow, actor=SYSTEM, email=email or f"{first.lower()}-{uuid.uuid4().hex[:8]}@example.test",
        first_name=first, last_name=last, password=PASSWORD, roles=roles, verified=True,
    )  # fmt: skip
    return users.actor_for(uow, created.id)


def email_of(connection: sa.Connection, actor: Actor) -> str:
    return str(
        connection.execute(sa.text("SELECT email FROM users WHERE id = :i"), {"i": actor.id})
        .scalar_one()
    )  # fmt: skip


def refusal(call: Any) -> tuple[type[PortalError], str, str, str | None]:
    with pytest.raises(PortalError) as caught:
        call()
    error = caught.value
    return type(error), error.code, error.message, error.param


def assert_clean(uow: UnitOfWork) -> None:
    report = reconciliation.reconcile(uow)
    assert report.ok, report.violations


@pytest.fixture
def alice(uow: UnitOfWork) -> Actor:
    return person(uow, "Alice", "Wong")


@pytest.fixture
def budi(uow: UnitOfWork) -> Actor:
    return person(uow, "Budi", "Santoso", email="Budi.Santoso@Example.test")


# -- look-ups ----------------------------------------------------------------------------------
def test_a_person_is_found_by_email_in_any_case_and_paid_at_their_receiving_card(
    uow: UnitOfWork, make: Factory, alice: Actor, budi: Actor, connection: sa.Connection
) -> None:
    mine = make.card(alice, balance="100")
    first = make.card(budi)
    make.card(budi)  # a second USD card: the first receives by default
    make.card(budi, currency="IDR")

    found = payees.find_person(uow, actor=alice, to="  BUDI.santoso@example.TEST ", currency="usd")

    assert (found.holder, found.email, found.currency) == ("Budi S.", "B•••o@Example.test", "USD")
    assert found.reference.startswith("rcp_") and first.public_id not in found.reference
    moved = wallet.transfer(
        uow, actor=alice, from_card_id=mine.public_id, to_card_id=found.reference,
        amount=Money(2500, "USD"), idempotency_key=new_key(),
    )  # fmt: skip
    assert moved.status == "succeeded"
    received = connection.execute(
        sa.text("SELECT posted_minor FROM accounts WHERE card_id = :c"), {"c": first.card_id}
    ).scalar_one()
    assert received == 2500
    assert_clean(uow)


def test_paying_a_person_shows_the_sender_the_person_and_nothing_of_their_card(
    uow: UnitOfWork, make: Factory, alice: Actor, budi: Actor
) -> None:
    """Found as a person, the card that receives stays theirs to know: the sender's answer,
    history and search show "Budi S.", never its brand or last four; Budi sees Alice's card as
    for any transfer; a transfer to a typed card number still shows that card."""
    mine, theirs = make.card(alice, balance="100"), make.card(budi)
    found = payees.find_person(uow, actor=alice, to="budi.santoso@example.test", currency="usd")
    moved = wallet.transfer(
        uow, actor=alice, from_card_id=mine.public_id, to_card_id=found.reference,
        amount=Money(2500, "USD"), idempotency_key=new_key(),
    )  # fmt: skip
    by_number = activity.find_recipient(uow, actor=alice, number=theirs.number)
    typed = wallet.transfer(
        uow, actor=alice, from_card_id=mine.public_id, to_card_id=by_number.reference,
        amount=Money(100, "USD"), idempotency_key=new_key(),
    )  # fmt: skip

    sent = activity.get_activity_item(uow, actor=alice, item_id=moved.public_id)
    assert moved.counterparty == sent.counterparty == "Budi S."
    assert theirs.number[-4:] not in moved.counterparty
    hits = activity.list_activity(uow, actor=alice, search=theirs.number[-4:]).items
    assert [h.id for h in hits] == [typed.public_id]  # only the card whose number was typed
    assert typed.counterparty.endswith(f"{theirs.number[-4:]} (Budi S.)")
    got = activity.get_activity_item(uow, actor=budi, item_id=moved.public_id)
    assert got.counterparty.endswith(f"{mine.number[-4:]} (Alice W.)")
    assert_clean(uow)


def test_a_person_is_found_by_handle_with_or_without_at_and_in_any_case(
    uow: UnitOfWork, make: Factory, alice: Actor, budi: Actor
) -> None:
    make.card(budi, currency="IDR")
    assert handles.set_handle(uow, actor=budi, handle="@Budi_S") == "Budi_S"

    for typed in ("@budi_s", "BUDI_S", "@Ｂｕｄｉ_s"):  # fullwidth letters are NFKC-folded
        found = payees.find_person(uow, actor=alice, to=typed, currency="IDR")
        assert (found.holder, found.handle, found.currency) == ("Budi S.", "Budi_S", "IDR")


def test_no_such_person_and_cannot_receive_this_currency_answer_alike(
    uow: UnitOfWork, make: Factory, alice: Actor, budi: Actor, connection: sa.Connection
) -> None:
    make.card(budi, currency="IDR")
    frozen_only = person(uow, "Citra", "Dewi")
    frozen = make.card(frozen_only)
    cards.set_frozen(uow, actor=frozen_only, card_id=frozen.public_id, frozen=True)
    gone = person(uow, "Dian", "Sastro")
    make.card(gone)
    users.archive_user(uow, actor=SYSTEM, user_id=gone.id or 0)
    handles.set_handle(uow, actor=budi, handle="budi")

    answers = {
        refusal(lambda to=to: payees.find_person(uow, actor=alice, to=to, currency="USD"))
        for to in (
            "nobody-here@example.test",  # no such person
            email_of(connection, budi),  # holds IDR only
            "@budi",  # by handle, the same
            email_of(connection, frozen_only),  # a frozen USD card only
            email_of(connection, gone),  # archived
            "@nobody_here",  # no such handle
        )
    }
    assert answers == {
        (NotFound, "recipient_not_found", "No one can receive USD at that email address or handle.",
         "to"),
    }  # fmt: skip


def test_bad_input_is_refused_naming_the_field(uow: UnitOfWork, alice: Actor) -> None:
    assert refusal(lambda: payees.find_person(uow, actor=alice, to="", currency="USD"))[3] == "to"
    assert refusal(lambda: payees.find_person(uow, actor=alice, to="a b@c.d", currency="USD"))[
        1:4:2
    ] == ("invalid_recipient", "to")
    assert refusal(lambda: payees.find_person(uow, actor=alice, to="@x", currency="XXX"))[3] == (
        "currency"
    )


def test_paying_oneself_by_email_is_refused_as_such(
    uow: UnitOfWork, make: Factory, alice: Actor, connection: sa.Connection
) -> None:
    make.card(alice)
    kind, code, _message, param = refusal(
        lambda: payees.find_person(uow, actor=alice, to=email_of(connection, alice), currency="USD")
    )
    assert (kind, code, param) == (InvalidInput, "recipient_is_self", "to")


def test_a_merchant_without_wallet_use_cannot_look_people_up(uow: UnitOfWork, budi: Actor) -> None:
    shop = person(uow, "Shop", "Owner", roles=("merchant",))
    with pytest.raises(Forbidden):
        payees.find_person(uow, actor=shop, to="@budi", currency="USD")


def test_a_reference_is_for_its_sender_only_and_expires(
    uow: UnitOfWork, make: Factory, alice: Actor, budi: Actor, clock: Clock,
    connection: sa.Connection,
) -> None:  # fmt: skip
    make.card(budi)
    found = payees.find_person(uow, actor=alice, to=email_of(connection, budi), currency="USD")
    again = payees.person_by_reference(uow, actor=alice, reference=found.reference)
    assert (again.holder, again.email, again.currency) == (found.holder, found.email, "USD")
    carol = person(uow, "Carol", "Lim")
    with pytest.raises(NotFound):
        payees.person_by_reference(uow, actor=carol, reference=found.reference)
    clock.advance(minutes=16)
    with pytest.raises(NotFound):
        payees.person_by_reference(uow, actor=alice, reference=found.reference)


# -- receiving cards ---------------------------------------------------------------------------
def test_each_person_chooses_a_receiving_card_per_currency(
    uow: UnitOfWork, make: Factory, alice: Actor, budi: Actor, connection: sa.Connection
) -> None:
    first, second = make.card(budi), make.card(budi)
    idr = make.card(budi, currency="IDR")
    mine = make.card(alice, balance="50")

    assert payees.receiving_cards(uow, actor=budi) == (
        payees.ReceivingCard("IDR", idr.public_id, False),
        payees.ReceivingCard("USD", first.public_id, False),
    )
    chosen = payees.set_receiving_card(uow, actor=budi, card_id=second.public_id)
    assert chosen == payees.ReceivingCard("USD", second.public_id, True)
    assert payees.receiving_cards(uow, actor=budi)[1] == chosen

    found = payees.find_person(uow, actor=alice, to=email_of(connection, budi), currency="USD")
    wallet.transfer(uow, actor=alice, from_card_id=mine.public_id, to_card_id=found.reference,
                    amount=Money(1000, "USD"), idempotency_key=new_key())  # fmt: skip
    balances = dict(
        connection.execute(
            sa.text("SELECT card_id, posted_minor FROM accounts WHERE card_id IN (:a, :b)"),
            {"a": first.card_id, "b": second.card_id},
        ).all()
    )
    assert balances == {first.card_id: 0, second.card_id: 1000}
    assert_clean(uow)

    # A frozen choice is skipped (money arrives on a card that can take it), not refused.
    cards.set_frozen(uow, actor=budi, card_id=second.public_id, frozen=True)
    assert payees.receiving_cards(uow, actor=budi)[1] == payees.ReceivingCard(
        "USD", first.public_id, False
    )
    with pytest.raises(InvalidState):
        payees.set_receiving_card(uow, actor=budi, card_id=second.public_id)
    with pytest.raises(NotFound):
        payees.set_receiving_card(uow, actor=alice, card_id=first.public_id)  # not hers


# -- handles -----------------------------------------------------------------------------------
def test_handles_are_canonical_unique_and_refuse_look_alikes_and_bidi(
    uow: UnitOfWork, alice: Actor, budi: Actor
) -> None:
    assert handles.set_handle(uow, actor=alice, handle="Alice.W") == "Alice.W"
    assert handles.get_handle(uow, actor=alice) == "Alice.W"
    for taken in ("alice.w", "@ALICE.W", "Ａｌｉｃｅ.W", "admin"):
        assert refusal(lambda t=taken: handles.set_handle(uow, actor=budi, handle=t))[1] == (
            "handle_taken"
        )
    refused = {
        "\u0430lice": "invalid_handle",  # Cyrillic а in a Latin handle
        "budi\u202egnp": "invalid_handle",  # right-to-left override
        "bu\u200bdi": "invalid_handle",  # zero-width space
        "ab": "invalid_handle",
        "budi..s": "invalid_handle",
        "_budi": "invalid_handle",
        "budi s": "invalid_handle",
        "x" * 31: "invalid_handle",
    }
    for handle, code in refused.items():
        kind, got, _message, param = refusal(
            lambda h=handle: handles.set_handle(uow, actor=budi, handle=h)
        )
        assert (kind, got, param) == (InvalidInput, code, "handle"), handle
    assert handles.set_handle(uow, actor=budi, handle="Будь") == "Будь"  # one script is fine
    assert handles.set_handle(uow, actor=alice, handle="") is None  # removed
    assert handles.set_handle(uow, actor=budi, handle="alice.w") == "alice.w"  # free again


# -- payees ------------------------------------------------------------------------------------
def test_people_paid_recently_and_starred_are_payees(
    uow: UnitOfWork, make: Factory, alice: Actor, budi: Actor, clock: Clock,
    connection: sa.Connection,
) -> None:  # fmt: skip
    mine = make.card(alice, balance="100")
    make.card(budi)
    carol = person(uow, "Carol", "Lim")
    theirs = make.card(carol)
    dewi = person(uow, "Dewi", "Lestari")
    make.card(dewi)
    assert payees.list_payees(uow, actor=alice) == ()

    for who in (budi, carol):
        clock.advance(minutes=1)
        found = payees.find_person(uow, actor=alice, to=email_of(connection, who), currency="USD")
        wallet.transfer(uow, actor=alice, from_card_id=mine.public_id, to_card_id=found.reference,
                        amount=Money(100, "USD"), idempotency_key=new_key())  # fmt: skip
    recent = payees.list_payees(uow, actor=alice)
    assert [(p.holder, p.starred) for p in recent] == [("Carol L.", False), ("Budi S.", False)]
    assert recent[0].last_paid_at == clock.now
    assert payees.list_payees(uow, actor=alice) == recent  # the same ids the second time

    # Star Dewi from a look-up (not paid yet), and Budi from the list.
    found = payees.find_person(uow, actor=alice, to=email_of(connection, dewi), currency="USD")
    dewi_payee = payees.save_payee(uow, actor=alice, reference=found.reference)
    assert (dewi_payee.holder, dewi_payee.starred, dewi_payee.last_paid_at) == (
        "Dewi L.", True, None,
    )  # fmt: skip
    payees.set_starred(uow, actor=alice, payee_id=recent[1].public_id, starred=True)
    listed = payees.list_payees(uow, actor=alice)
    assert [(p.holder, p.starred) for p in listed] == [
        ("Budi S.", True), ("Dewi L.", True), ("Carol L.", False),
    ]  # fmt: skip

    # Paying a payee: the same look-up, by payee id.
    again = payees.recipient_for_payee(
        uow, actor=alice, payee_id=listed[2].public_id, currency="usd"
    )
    wallet.transfer(uow, actor=alice, from_card_id=mine.public_id, to_card_id=again.reference,
                    amount=Money(300, "USD"), idempotency_key=new_key())  # fmt: skip
    assert (
        connection.execute(
            sa.text("SELECT posted_minor FROM accounts WHERE card_id = :c"), {"c": theirs.card_id}
        ).scalar_one()
        == 400
    )
    assert_clean(uow)
    # A payee who cannot receive the currency answers as a look-up does.
    assert refusal(
        lambda: payees.recipient_for_payee(
            uow, actor=alice, payee_id=listed[2].public_id, currency="IDR"
        )
    )[1:3] == ("recipient_not_found", "No one can receive IDR at that email address or handle.")
    # Someone else's payee id is not found.
    with pytest.raises(NotFound):
        payees.recipient_for_payee(uow, actor=budi, payee_id=listed[2].public_id, currency="USD")
    with pytest.raises(NotFound):
        payees.set_starred(uow, actor=budi, payee_id=listed[2].public_id, starred=True)
    # Unstarred and not paid recently: off the list.
    payees.set_starred(uow, actor=alice, payee_id=dewi_payee.public_id, starred=False)
    assert [p.holder for p in payees.list_payees(uow, actor=alice)] == ["Budi S.", "Carol L."]


# -- reveal ------------------------------------------------------------------------------------
def audits(connection: sa.Connection, card_id: int) -> list[tuple[str, str]]:
    rows = connection.execute(
        sa.text(
            "SELECT outcome, coalesce(data->>'reason', data->>'method') FROM audit_events"
            " WHERE action = 'card.reveal' AND subject_id = :c ORDER BY id"
        ),
        {"c": card_id},
    ).all()
    return [(r[0], r[1]) for r in rows]


def test_a_card_is_revealed_to_its_holder_after_their_password_only(
    uow: UnitOfWork, make: Factory, alice: Actor, budi: Actor, connection: sa.Connection
) -> None:
    card = make.card(alice, brand="amex")
    for given in ({}, {"password": "not my password"}):
        with pytest.raises(InvalidInput) as caught:
            reveal.reveal_card(uow, actor=alice, card_id=card.public_id, **given)
        assert caught.value.code in ("reauthentication_required", "wrong_password")
    shown = reveal.reveal_card(uow, actor=alice, card_id=card.public_id, password=PASSWORD)
    assert (shown.number, shown.cvv, shown.last4) == (card.number, card.cvv, card.last4)
    assert len(shown.cvv) == 4  # American Express
    assert audits(connection, card.card_id) == [
        ("failure", "no_reauthentication"), ("failure", "wrong_password"), ("success", "password"),
    ]  # fmt: skip
    # Not to anyone else, staff included, whatever password they give.
    with pytest.raises(NotFound):
        reveal.reveal_card(uow, actor=budi, card_id=card.public_id, password=PASSWORD)
    staff = person(uow, "Staff", "Member", roles=("admin",))
    with pytest.raises((Forbidden, NotFound)):
        reveal.reveal_card(uow, actor=staff, card_id=card.public_id, password=PASSWORD)


def test_a_card_is_revealed_after_a_second_factor_code_once(
    uow: UnitOfWork, make: Factory, alice: Actor, connection: sa.Connection
) -> None:
    card = make.card(alice)
    enrolment = mfa.begin_totp_enrolment(uow, actor=alice)
    mfa.confirm_totp(
        uow, actor=alice, code=pyotp.TOTP(enrolment.secret).at(uow.now(), counter_offset=-1)
    )
    code = pyotp.TOTP(enrolment.secret).at(uow.now())
    assert reveal.reveal_card(uow, actor=alice, card_id=card.public_id, code=code).number == (
        card.number
    )
    with pytest.raises(InvalidInput) as caught:  # a code works once
        reveal.reveal_card(uow, actor=alice, card_id=card.public_id, code=code)
    assert (caught.value.code, caught.value.param) == ("wrong_code", "code")
    assert audits(connection, card.card_id) == [
        ("success", "second_factor"), ("failure", "wrong_code"),
    ]  # fmt: skip


def test_a_legacy_card_number_sealed_to_its_purpose_only_is_revealed_too(
    uow: UnitOfWork, make: Factory, alice: Actor, connection: sa.Connection
) -> None:
    from portal.services.shared.vault import Vault

    card = make.card(alice)
    blob, version = Vault.from_settings(uow.settings).encrypt(
        card.number.encode(), purpose=cards.PAN_PURPOSE
    )
    connection.execute(
        sa.text("UPDATE cards SET pan_ciphertext = :b, key_version = :v, pan_bound = false"
                " WHERE id = :id"), {"b": blob, "v": version, "id": card.card_id},
    )  # fmt: skip
    shown = reveal.reveal_card(uow, actor=alice, card_id=card.public_id, password=PASSWORD)
    assert shown.number == card.number


def test_an_archived_card_is_not_revealed(uow: UnitOfWork, make: Factory, alice: Actor) -> None:
    card = make.card(alice)
    cards.set_archived(uow, actor=SYSTEM, card_id=card.public_id, archived=True)
    with pytest.raises(InvalidState):
        reveal.reveal_card(uow, actor=alice, card_id=card.public_id, password=PASSWORD)
