"""Four-eyes balance adjustments: one administrator requests, a second approves, and only then
one journal entry posts against the adjustments system account; the ledger still reconciles."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from portal.domain.errors import (
    CurrencyMismatch,
    Forbidden,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidInput,
    NotFound,
    UnexpectedState,
)
from portal.domain.money import Money
from portal.domain.types import Actor
from portal.services.admin import adjustments
from portal.services.ledger.reconciliation import reconcile
from portal.services.merchants import settlements
from portal.services.shared.uow import UnitOfWork
from tests.conftest import Factory, new_key
from tests.merchants.conftest import open_shop


@pytest.fixture
def admins(make: Factory) -> tuple[Actor, Actor]:
    return make.user(roles=("admin",)), make.user(roles=("admin",))


def ask(uow: UnitOfWork, actor: Actor, target: str, direction: str = "credit",
        major: str = "25.00", currency: str = "USD",
        **kw: Any) -> adjustments.AdjustmentView:  # fmt: skip
    return adjustments.request_adjustment(
        uow, actor=actor, target=target, direction=direction,
        amount=Money.of_major(major, currency), reason=kw.get("reason", "Refund of a lost fee"),
        reference=kw.get("reference", "TICKET-42"), idempotency_key=kw.get("key", new_key()),
    )  # fmt: skip


def posted(connection: sa.Connection, card_id: int) -> int:
    return int(
        connection.execute(
            sa.text("SELECT posted_minor FROM accounts WHERE card_id = :c"), {"c": card_id}
        ).scalar_one()
    )


def assert_reconciled(uow: UnitOfWork) -> None:
    report = reconcile(uow)
    assert report.ok, report.violations


def test_a_credit_posts_only_when_a_second_admin_approves(
    uow: UnitOfWork, make: Factory, admins: tuple[Actor, Actor], connection: sa.Connection
) -> None:
    maker, checker = admins
    card = make.card(make.user(), balance="10.00")
    made = ask(uow, maker, card.public_id)
    assert (made.status, made.direction, made.amount) == ("pending", "credit", Money(2500, "USD"))
    assert made.public_id.startswith("adj_") and made.target_type == "card"
    assert posted(connection, card.card_id) == 1000  # nothing moved yet
    assert_reconciled(uow)

    approved = adjustments.approve_adjustment(uow, actor=checker, adjustment=made.public_id)

    assert approved.status == "approved" and approved.decided_by_id == checker.id
    assert posted(connection, card.card_id) == 3500
    entry = approved.journal_entry_id
    assert entry is not None
    legs = connection.execute(
        sa.text(
            "SELECT a.kind, p.amount_minor, p.currency FROM postings p"
            " JOIN accounts a ON a.id = p.account_id WHERE p.journal_entry_id = :e ORDER BY a.kind"
        ),
        {"e": entry},
    ).all()
    assert [tuple(r) for r in legs] == [("adjustments", -2500, "USD"), ("wallet", 2500, "USD")]
    kind = connection.execute(
        sa.text("SELECT kind FROM journal_entries WHERE id = :e"), {"e": entry}
    ).scalar_one()
    assert kind == "adjustment"
    # Request, decision and entry are linked: the audit events name the request and the entry.
    events = connection.execute(
        sa.text(
            "SELECT action, actor_id, data FROM audit_events WHERE subject_type ="
            " 'adjustment_request' AND subject_id = :id ORDER BY id"
        ),
        {"id": made.id},
    ).all()
    assert [(e.action, e.actor_id) for e in events] == [
        ("adjustment.request", maker.id), ("adjustment.approve", checker.id),
    ]  # fmt: skip
    assert events[1].data["journal_entry_id"] == entry
    assert events[1].data["posted_balance"] == {"from": 1000, "to": 3500}
    assert events[0].data["reason"] == "Refund of a lost fee"
    report = reconcile(uow)
    assert report.ok, report.violations
    assert report.system_balances["adjustments:USD"] == -2500


def test_the_requester_cannot_approve_or_reject(
    uow: UnitOfWork, make: Factory, admins: tuple[Actor, Actor], connection: sa.Connection
) -> None:
    maker, _ = admins
    card = make.card(make.user(), balance="10.00")
    made = ask(uow, maker, card.public_id)
    with pytest.raises(Forbidden) as refused:
        adjustments.approve_adjustment(uow, actor=maker, adjustment=made.public_id)
    assert refused.value.code == "four_eyes_required"
    with pytest.raises(Forbidden) as refused:
        adjustments.reject_adjustment(uow, actor=maker, adjustment=made.public_id, reason="no")
    assert refused.value.code == "four_eyes_required"
    assert adjustments.get_adjustment(uow, actor=maker, adjustment=made.public_id).pending
    assert posted(connection, card.card_id) == 1000


def test_the_database_refuses_an_approval_by_the_requester(
    uow: UnitOfWork, make: Factory, admins: tuple[Actor, Actor], connection: sa.Connection
) -> None:
    """The CHECK is the backstop should any code path skip the service's rule."""
    maker, _ = admins
    made = ask(uow, maker, make.card(make.user(), balance="5.00").public_id)
    with pytest.raises(sa.exc.IntegrityError, match="four_eyes"), connection.begin_nested():
        connection.execute(
            sa.text(
                "UPDATE adjustment_requests SET status = 'approved', decided_by = requested_by,"
                " decided_at = now(), journal_entry_id = (SELECT max(id) FROM journal_entries)"
                " WHERE id = :id"
            ),
            {"id": made.id},
        )


def test_staff_who_may_not_adjust_cannot_request_nor_decide(
    uow: UnitOfWork, make: Factory, admins: tuple[Actor, Actor]
) -> None:
    maker, _ = admins
    support = make.user(roles=("support",))
    holder = make.user()
    card = make.card(holder, balance="5.00")
    for who in (support, holder):
        with pytest.raises(Forbidden):
            ask(uow, who, card.public_id)
    made = ask(uow, maker, card.public_id)
    for who in (support, holder):
        with pytest.raises(Forbidden):
            adjustments.approve_adjustment(uow, actor=who, adjustment=made.public_id)
        with pytest.raises(Forbidden):
            adjustments.withdraw_adjustment(uow, actor=who, adjustment=made.public_id)
    # Support reads them; a cardholder does not.
    assert adjustments.get_adjustment(uow, actor=support, adjustment=made.public_id).id == made.id
    assert [a.id for a in adjustments.list_adjustments(uow, actor=support).items] == [made.id]
    with pytest.raises(Forbidden):
        adjustments.get_adjustment(uow, actor=holder, adjustment=made.public_id)


def test_a_debit_beyond_the_available_balance_is_refused_at_approval(
    uow: UnitOfWork, make: Factory, admins: tuple[Actor, Actor], connection: sa.Connection
) -> None:
    maker, checker = admins
    card = make.card(make.user(), balance="10.00")
    too_much = ask(uow, maker, card.public_id, "debit", "10.01")
    with pytest.raises(InsufficientFunds):
        adjustments.approve_adjustment(uow, actor=checker, adjustment=too_much.public_id)
    assert adjustments.get_adjustment(uow, actor=checker, adjustment=too_much.public_id).pending
    exact = ask(uow, maker, card.public_id, "debit", "10.00")
    done = adjustments.approve_adjustment(uow, actor=checker, adjustment=exact.public_id)
    assert done.status == "approved" and posted(connection, card.card_id) == 0
    assert_reconciled(uow)
    # Now even the first one's smaller cousin is refused: the balance is what counts.
    with pytest.raises(InsufficientFunds):
        adjustments.approve_adjustment(uow, actor=checker, adjustment=too_much.public_id)


def test_the_accounts_check_backstops_a_negative_wallet(
    uow: UnitOfWork, make: Factory, connection: sa.Connection
) -> None:
    card = make.card(make.user(), balance="5.00")
    with (
        pytest.raises(sa.exc.IntegrityError, match="ck_accounts_balances"),
        connection.begin_nested(),
    ):
        connection.execute(
            sa.text("UPDATE accounts SET posted_minor = posted_minor - 501 WHERE card_id = :c"),
            {"c": card.card_id},
        )


def test_approving_twice_posts_once_and_deciding_a_decided_request_is_refused(
    uow: UnitOfWork, make: Factory, admins: tuple[Actor, Actor], connection: sa.Connection
) -> None:
    maker, checker = admins
    third = make.user(roles=("admin",))
    card = make.card(make.user(), balance="5.00")
    made = ask(uow, maker, card.public_id)
    first = adjustments.approve_adjustment(uow, actor=checker, adjustment=made.public_id)
    again = adjustments.approve_adjustment(uow, actor=checker, adjustment=made.public_id)
    assert again.replayed and again.journal_entry_id == first.journal_entry_id
    assert posted(connection, card.card_id) == 3000
    for decide in (
        lambda: adjustments.approve_adjustment(uow, actor=third, adjustment=made.public_id),
        lambda: adjustments.reject_adjustment(
            uow, actor=third, adjustment=made.public_id, reason="late"
        ),  # fmt: skip
        lambda: adjustments.withdraw_adjustment(uow, actor=maker, adjustment=made.public_id),
    ):
        with pytest.raises(UnexpectedState) as refused:
            decide()
        assert refused.value.code == "adjustment_decided"
    entries = connection.execute(
        sa.text("SELECT count(*) FROM journal_entries WHERE kind = 'adjustment'")
    ).scalar_one()
    assert entries == 1
    assert_reconciled(uow)


def test_reject_needs_a_reason_and_withdraw_is_the_requesters(
    uow: UnitOfWork, make: Factory, admins: tuple[Actor, Actor], connection: sa.Connection
) -> None:
    maker, checker = admins
    card = make.card(make.user(), balance="5.00")
    rejected = ask(uow, maker, card.public_id)
    with pytest.raises(InvalidInput) as missing:
        adjustments.reject_adjustment(uow, actor=checker, adjustment=rejected.public_id, reason=" ")
    assert missing.value.param == "reason"
    done = adjustments.reject_adjustment(
        uow, actor=checker, adjustment=rejected.public_id, reason="Duplicate of TICKET-41"
    )
    assert (done.status, done.decision_reason, done.decided_by_id) == (
        "rejected", "Duplicate of TICKET-41", checker.id,
    )  # fmt: skip
    withdrawn = ask(uow, maker, card.public_id)
    with pytest.raises(Forbidden) as refused:
        adjustments.withdraw_adjustment(uow, actor=checker, adjustment=withdrawn.public_id)
    assert refused.value.code == "not_requester"
    back = adjustments.withdraw_adjustment(uow, actor=maker, adjustment=withdrawn.public_id)
    assert back.status == "withdrawn" and back.decided_by_id == maker.id
    with pytest.raises(UnexpectedState):
        adjustments.approve_adjustment(uow, actor=checker, adjustment=withdrawn.public_id)
    assert posted(connection, card.card_id) == 500
    actions = (
        connection.execute(
            sa.text(
                "SELECT action FROM audit_events WHERE subject_type = 'adjustment_request'"
                " AND subject_id IN (:a, :b) ORDER BY id"
            ),
            {"a": rejected.id, "b": withdrawn.id},
        )
        .scalars()
        .all()
    )
    assert actions == ["adjustment.request", "adjustment.reject", "adjustment.request",
                       "adjustment.withdraw"]  # fmt: skip
    assert_reconciled(uow)


def test_requests_are_checked(uow: UnitOfWork, make: Factory, admins: tuple[Actor, Actor]) -> None:
    maker, _ = admins
    card = make.card(make.user(), currency="USD")
    with pytest.raises(CurrencyMismatch):
        ask(uow, maker, card.public_id, currency="EUR")
    with pytest.raises(NotFound):
        ask(uow, maker, "card_" + "0" * 24)
    with pytest.raises(InvalidInput) as bad:
        ask(uow, maker, "usr_" + "0" * 24)
    assert bad.value.param == "target"
    with pytest.raises(InvalidInput) as bad:
        ask(uow, maker, card.public_id, direction="sideways")
    assert bad.value.param == "direction"
    with pytest.raises(InvalidInput) as bad:
        ask(uow, maker, card.public_id, major="0")
    assert bad.value.param == "amount"
    for field in ("reason", "reference"):
        with pytest.raises(InvalidInput) as bad:
            ask(uow, maker, card.public_id, **{field: "   "})
        assert bad.value.param == field
    with pytest.raises(InvalidInput) as bad:
        ask(uow, maker, card.public_id, reason="x" * 501)
    assert bad.value.param == "reason"
    with pytest.raises(NotFound):
        adjustments.approve_adjustment(uow, actor=maker, adjustment="adj_" + "0" * 24)
    with pytest.raises(NotFound):
        adjustments.get_adjustment(uow, actor=maker, adjustment="nonsense")


def test_a_repeated_request_key_makes_one_request(
    uow: UnitOfWork, make: Factory, admins: tuple[Actor, Actor], connection: sa.Connection
) -> None:
    maker, _ = admins
    card = make.card(make.user())
    key = new_key()
    first = ask(uow, maker, card.public_id, key=key)
    again = ask(uow, maker, card.public_id, key=key)
    assert again.id == first.id and again.replayed
    with pytest.raises(IdempotencyConflict):
        ask(uow, maker, card.public_id, major="26.00", key=key)
    count = connection.execute(sa.text("SELECT count(*) FROM adjustment_requests")).scalar_one()
    assert count == 1


def test_a_merchant_balance_is_adjusted_with_its_balance_transaction(
    uow: UnitOfWork, make: Factory, admins: tuple[Actor, Actor], connection: sa.Connection
) -> None:
    maker, checker = admins
    shop = open_shop(uow, make, checker)
    target = shop.merchant.public_id
    with pytest.raises(InvalidInput) as bad:
        ask(uow, maker, target, currency="EUR")  # it has no EUR balance
    assert bad.value.param == "currency"
    credit = ask(uow, maker, target, "credit", "40.00")
    adjustments.approve_adjustment(uow, actor=checker, adjustment=credit.public_id)
    debit = ask(uow, maker, target, "debit", "40.01")
    with pytest.raises(InsufficientFunds):
        adjustments.approve_adjustment(uow, actor=checker, adjustment=debit.public_id)
    smaller = ask(uow, maker, target, "debit", "15.00")
    view = adjustments.approve_adjustment(uow, actor=checker, adjustment=smaller.public_id)
    assert view.target_type == "merchant" and view.target_label == shop.merchant.name
    assert view.available_minor == 2500
    rows = connection.execute(
        sa.text(
            "SELECT t.type, t.net_minor, t.status FROM balance_transactions t JOIN merchants m"
            " ON m.id = t.merchant_id WHERE m.public_id = :m ORDER BY t.id"
        ),
        {"m": target},
    ).all()
    assert [tuple(r) for r in rows] == [("adjustment", 4000, "available"),
                                        ("adjustment", -1500, "available")]  # fmt: skip
    balance = uow.run(lambda u: settlements._balances(u, shop.merchant.id))
    assert [(b.currency, b.available) for b in balance] == [("USD", 2500)]
    assert_reconciled(uow)


def test_the_list_is_newest_first_and_filters_by_status(
    uow: UnitOfWork, make: Factory, admins: tuple[Actor, Actor], clock: Any
) -> None:
    maker, checker = admins
    card = make.card(make.user(), balance="5.00")
    made = []
    for _ in range(3):
        made.append(ask(uow, maker, card.public_id))
        clock.advance(seconds=1)
    adjustments.approve_adjustment(uow, actor=checker, adjustment=made[0].public_id)
    everything = adjustments.list_adjustments(uow, actor=checker)
    assert [a.id for a in everything.items] == [m.id for m in reversed(made)]
    pending = adjustments.list_adjustments(uow, actor=checker, status="pending", limit=1)
    assert [a.id for a in pending.items] == [made[2].id] and pending.has_more
    after = adjustments.list_adjustments(
        uow, actor=checker, status="pending", limit=1, starting_after=made[2].public_id
    )
    assert [a.id for a in after.items] == [made[1].id] and not after.has_more
    with pytest.raises(InvalidInput):
        adjustments.list_adjustments(uow, actor=checker, status="maybe")
