"""Top-up, transfer and withdrawal rules, on real PostgreSQL inside a rolled-back transaction."""

from __future__ import annotations

from dataclasses import replace

import pytest
import sqlalchemy as sa

from portal.domain.errors import (
    CardUnavailable,
    CurrencyMismatch,
    Forbidden,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidInput,
    LimitExceeded,
    NotFound,
)
from portal.domain.money import Money
from portal.domain.types import MovementStatus
from portal.services.ledger import reconciliation
from portal.services.shared import processor
from portal.services.shared.settings import parse_limits
from portal.services.wallet import activity, cards, funding, wallet
from portal.services.wallet.wallet import BankAccount
from tests.conftest import SYSTEM, new_key

BANK = BankAccount("Bank Central Asia", "1234 5678 90", "Alice Example")


def usd(major: str) -> Money:
    return Money.of_major(major, "USD")


def idr(major: str) -> Money:
    return Money.of_major(major, "IDR")


def count(uow, table: str) -> int:
    return uow.run(lambda u: u.execute(f"SELECT count(*) FROM {table}").scalar_one())


def balances(uow, card) -> tuple[int, int]:
    b = wallet.get_balance(uow, actor=SYSTEM, card_id=card.card_id)
    return b.posted.amount_minor, b.pending_debits.amount_minor


@pytest.fixture
def alice(make):
    return make.user(first_name="Alice")


@pytest.fixture
def bob(make):
    return make.user(first_name="Bob")


def assert_clean(uow) -> None:
    report = reconciliation.reconcile(uow)
    assert report.ok, report.violations


# -- top-up ----------------------------------------------------------------------------------
class TestTopUp:
    def test_a_top_up_is_pending_until_the_funding_processor_confirms_it(self, uow, make, alice):
        card = make.card(alice, currency="IDR")
        pending = wallet.top_up(
            uow, actor=alice, card_id=card.card_id, amount=idr("50000"), method="e_wallet",
            idempotency_key=new_key(),
        )  # fmt: skip
        # Issue 11 A1: nothing is posted, so nothing can be spent or withdrawn yet.
        assert pending.status == MovementStatus.PENDING and pending.journal_entry_id is None
        assert pending.balance.available == idr("0")
        assert balances(uow, card) == (0, 0)
        with pytest.raises(InsufficientFunds):
            wallet.withdraw(uow, actor=alice, card_id=card.card_id, amount=idr("50000"),
                            bank=BANK, idempotency_key=new_key())  # fmt: skip
        job = uow.run(
            lambda u: u.execute(
                "SELECT kind, payload->>'top_up_id' AS top_up FROM jobs WHERE dedupe_key = :k",
                {"k": f"funding:{pending.id}"},
            ).one()
        )
        assert (job.kind, job.top_up) == (wallet.FUNDING_JOB, str(pending.id))
        assert_clean(uow)

        result = funding.settle(uow, pending.id)
        assert result is not None and result.status == MovementStatus.SUCCEEDED
        assert result.balance.available == idr("50000")
        assert balances(uow, card) == (5_000_000, 0)
        legs = uow.run(
            lambda u: u.execute(
                "SELECT a.kind, p.amount_minor FROM postings p"
                " JOIN accounts a ON a.id = p.account_id"
                " WHERE p.journal_entry_id = :e ORDER BY p.amount_minor",
                {"e": result.journal_entry_id},
            ).all()
        )
        assert [(r.kind, r.amount_minor) for r in legs] == [("funding", -5_000_000),
                                                             ("wallet", 5_000_000)]  # fmt: skip
        row = uow.run(
            lambda u: u.execute(
                "SELECT status, funding_reference, completed_at IS NOT NULL AS done,"
                " processing_started_at IS NOT NULL AS asked FROM top_ups WHERE id = :id",
                {"id": pending.id},
            ).one()
        )
        assert row.status == "succeeded" and row.funding_reference.startswith("fund_")
        assert row.done and row.asked
        actions = uow.run(
            lambda u: u.execute(
                "SELECT action, outcome FROM audit_events WHERE subject_type = 'top_up'"
                " AND subject_id = :id ORDER BY id", {"id": pending.id},
            ).all()
        )  # fmt: skip
        assert [tuple(a) for a in actions] == [("top_up.create", "success"),
                                               ("top_up.confirm", "success")]  # fmt: skip
        # Settling again (a retried job) changes nothing and asks nobody.
        assert funding.settle(uow, pending.id) is None
        assert balances(uow, card) == (5_000_000, 0)
        assert_clean(uow)

    def test_a_declined_top_up_fails_and_moves_nothing(self, uow, make, alice):
        card = make.card(alice, balance="20")
        entries = count(uow, "journal_entries")
        pending = wallet.top_up(
            uow, actor=alice, card_id=card.card_id, amount=usd("10.13"), method="debit_card",
            idempotency_key=new_key(),
        )  # fmt: skip
        failed = funding.settle(uow, pending.id)
        assert failed is not None and failed.status == MovementStatus.FAILED
        assert failed.journal_entry_id is None and failed.balance.available == usd("20")
        row = uow.run(
            lambda u: u.execute(
                "SELECT status, failure_code, journal_entry_id, funding_reference FROM top_ups"
                " WHERE id = :id", {"id": pending.id},
            ).one()
        )  # fmt: skip
        assert tuple(row) == ("failed", "funding_declined", None, None)
        assert count(uow, "journal_entries") == entries
        assert balances(uow, card) == (2000, 0)
        assert_clean(uow)

    def test_a_processing_top_up_is_asked_again_with_the_same_key_and_posts_once(
        self, uow, make, alice
    ):
        """A worker that died after marking the top-up ``processing`` (or after the processor
        answered) leaves it to the next attempt, which asks again with the same key."""
        card = make.card(alice)
        pending = wallet.top_up(uow, actor=alice, card_id=card.card_id, amount=usd("30"),
                                method="bank_transfer", idempotency_key=new_key())  # fmt: skip
        order = wallet.begin_funding(uow, top_up_id=pending.id)
        assert order is not None and order.public_id == pending.public_id
        processor.funding_processor(uow).collect(
            uow,
            idempotency_key=order.public_id,
            method=order.method,
            amount_minor=order.amount.amount_minor,
            currency="USD",
        )  # fmt: skip  (the answer is lost with the worker)
        settled = funding.settle(uow, pending.id)
        assert settled is not None and settled.status == MovementStatus.SUCCEEDED
        asked = uow.run(
            lambda u: u.execute(
                "SELECT count(*) FROM demo_processor_requests WHERE idempotency_key = :k",
                {"k": pending.public_id},
            ).scalar_one()
        )
        assert asked == 1 and balances(uow, card) == (3000, 0)
        with pytest.raises(processor.KeyReused):
            processor.funding_processor(uow).collect(
                uow, idempotency_key=pending.public_id, method="bank_transfer",
                amount_minor=3001, currency="USD",
            )  # fmt: skip
        assert_clean(uow)

    def test_the_ledger_check_catches_top_up_money_that_was_not_confirmed(self, uow, make, alice):
        card = make.card(alice)
        settled = make.fund(card, "40")
        pending = wallet.top_up(uow, actor=alice, card_id=card.card_id, amount=usd("5"),
                                method="cash", idempotency_key=new_key())  # fmt: skip
        assert_clean(uow)

        def violations(sql: str, **params) -> list[tuple[str, str, int, int]]:
            uow.run(lambda u: u.execute(sql, params))
            report = reconciliation.reconcile(uow)
            return [(v.check, v.subject, v.expected, v.actual) for v in report.violations]

        # A confirmed top-up shown as failed: its money came from nowhere.
        assert violations("UPDATE top_ups SET status = 'failed' WHERE id = :id", id=settled.id) == [
            ("top_up_posted", settled.public_id, 0, 4000)
        ]
        # A pending top-up pointing at that entry instead: the same money, never confirmed.
        assert ("top_up_posted", pending.public_id, 0, 4000) in violations(
            "UPDATE top_ups SET journal_entry_id = (SELECT journal_entry_id FROM top_ups"
            " WHERE id = :a), status = 'pending' WHERE id = :b", a=settled.id, b=pending.id
        )  # fmt: skip

    def test_only_the_funding_side_may_settle_a_top_up(self, uow, make, alice):
        card = make.card(alice)
        pending = wallet.top_up(uow, actor=alice, card_id=card.card_id, amount=usd("30"),
                                method="cash", idempotency_key=new_key())  # fmt: skip
        wallet.begin_funding(uow, top_up_id=pending.id)
        with pytest.raises(Forbidden):
            wallet.settle_funding(uow, actor=alice, top_up_id=pending.id, funding_reference="x")
        assert balances(uow, card) == (0, 0)

    @pytest.mark.parametrize(
        ("amount", "message"),
        [("49999.99", "amount below the minimum of 50,000.00 IDR"),
         ("100000000.01", "amount above the maximum of 100,000,000.00 IDR")],
    )  # fmt: skip
    def test_limits_refused_before_anything_is_written(self, uow, make, alice, amount, message):
        card = make.card(alice, currency="IDR")
        before = count(uow, "top_ups"), count(uow, "idempotency_keys"), count(uow, "audit_events")
        with pytest.raises(LimitExceeded, match=message) as exc:
            wallet.top_up(
                uow, actor=alice, card_id=card.card_id, amount=idr(amount),
                method="cash", idempotency_key=new_key(),
            )  # fmt: skip
        assert exc.value.param == "amount"
        after = count(uow, "top_ups"), count(uow, "idempotency_keys"), count(uow, "audit_events")
        assert after == before

    def test_amounts_exactly_at_the_limits_are_accepted(self, uow, make, alice):
        card = make.card(alice, currency="IDR")
        for amount in ("50000", "100000000"):
            result = wallet.top_up(
                uow, actor=alice, card_id=card.card_id, amount=idr(amount), method="cash",
                idempotency_key=new_key(),
            )  # fmt: skip
            assert result.status == MovementStatus.PENDING
            settled = funding.settle(uow, result.id)
            assert settled is not None and settled.status == MovementStatus.SUCCEEDED
        assert balances(uow, card) == (10_005_000_000, 0)

    def test_unknown_method_and_unsupported_currency_are_invalid(self, uow, make, alice):
        card = make.card(alice, currency="USD")
        with pytest.raises(InvalidInput) as exc:
            wallet.top_up(uow, actor=alice, card_id=card.card_id, amount=usd("10"),
                          method="bitcoin", idempotency_key=new_key())  # fmt: skip
        assert exc.value.param == "method"
        with pytest.raises(InvalidInput) as exc:
            wallet.top_up(uow, actor=alice, card_id=card.card_id,
                          amount=Money.of_major("10", "CHF"), method="cash",
                          idempotency_key=new_key())  # fmt: skip
        assert exc.value.param == "currency"

    def test_daily_cap_is_per_user_and_resets_next_day(self, uow, make, alice, clock):
        uow.settings = replace(
            uow.settings,
            limits=parse_limits({"USD": {"top_up": {"min": "1", "max": "100", "daily": "150"}}}),
        )
        a, b = make.card(alice), make.card(alice)
        # Still pending, it counts toward the cap all the same.
        wallet.top_up(uow, actor=alice, card_id=a.card_id, amount=usd("100"), method="cash",
                      idempotency_key=new_key())  # fmt: skip
        with pytest.raises(LimitExceeded) as exc:
            wallet.top_up(uow, actor=alice, card_id=b.card_id, amount=usd("60"),
                          method="cash", idempotency_key=new_key())  # fmt: skip
        assert exc.value.code == "daily_limit_exceeded"
        assert "50.00 USD left today" in exc.value.message
        failed = uow.run(
            lambda u: u.execute(
                "SELECT status, failure_code, journal_entry_id FROM top_ups WHERE card_id = :c",
                {"c": b.card_id},
            ).one()
        )
        assert tuple(failed) == ("failed", "daily_limit_exceeded", None)
        assert balances(uow, b) == (0, 0)
        fifty = wallet.top_up(uow, actor=alice, card_id=b.card_id, amount=usd("50"),
                              method="cash", idempotency_key=new_key())  # fmt: skip
        clock.advance(days=1)
        hundred = wallet.top_up(uow, actor=alice, card_id=b.card_id, amount=usd("100"),
                                method="cash", idempotency_key=new_key())  # fmt: skip
        for pending in (fifty, hundred):
            funding.settle(uow, pending.id)
        assert balances(uow, b) == (15_000, 0)

    def test_a_declined_top_up_frees_its_part_of_the_daily_cap(self, uow, make, alice):
        uow.settings = replace(
            uow.settings,
            limits=parse_limits({"USD": {"top_up": {"min": "1", "max": "100", "daily": "150"}}}),
        )
        card = make.card(alice)
        declined = wallet.top_up(uow, actor=alice, card_id=card.card_id, amount=usd("99.13"),
                                 method="cash", idempotency_key=new_key())  # fmt: skip
        funding.settle(uow, declined.id)
        accepted = wallet.top_up(uow, actor=alice, card_id=card.card_id, amount=usd("100"),
                                 method="cash", idempotency_key=new_key())  # fmt: skip
        assert accepted.status == MovementStatus.PENDING


# -- cards that cannot move money -----------------------------------------------------------
class TestUnavailableCards:
    def test_frozen_card_refusal_commits_a_failed_record_only(self, uow, make, alice):
        card = make.card(alice, balance="10")
        cards.set_frozen(uow, actor=alice, card_id=card.card_id, frozen=True)
        entries = count(uow, "journal_entries")
        with pytest.raises(CardUnavailable, match="card is frozen") as exc:
            wallet.top_up(uow, actor=alice, card_id=card.card_id, amount=usd("10"),
                          method="cash", idempotency_key=new_key())  # fmt: skip
        assert exc.value.code == "card_frozen"
        assert count(uow, "journal_entries") == entries
        assert balances(uow, card) == (1000, 0)
        outcome = uow.run(
            lambda u: u.execute(
                "SELECT outcome FROM audit_events WHERE action = 'top_up.create'"
                " ORDER BY id DESC LIMIT 1"
            ).scalar_one()
        )
        assert outcome == "failure"
        cards.set_frozen(uow, actor=alice, card_id=card.card_id, frozen=False)
        make.fund(card, "10")
        assert balances(uow, card) == (2000, 0)

    def test_frozen_destination_refuses_transfer(self, uow, make, alice, bob):
        src, dst = make.card(alice, balance="50"), make.card(bob)
        cards.set_frozen(uow, actor=bob, card_id=dst.card_id, frozen=True)
        with pytest.raises(CardUnavailable, match="frozen"):
            wallet.transfer(uow, actor=alice, from_card_id=src.card_id, to_card_id=dst.card_id,
                            amount=usd("5"), idempotency_key=new_key())  # fmt: skip
        assert balances(uow, src) == (5000, 0)
        assert balances(uow, dst) == (0, 0)

    def test_archived_card_cannot_send_or_receive(self, uow, make, alice, bob):
        src, dst = make.card(alice, balance="50"), make.card(bob, balance="5")
        cards.set_archived(uow, actor=SYSTEM, card_id=dst.card_id, archived=True)
        with pytest.raises(CardUnavailable) as exc:
            wallet.transfer(uow, actor=alice, from_card_id=src.card_id, to_card_id=dst.card_id,
                            amount=usd("5"), idempotency_key=new_key())  # fmt: skip
        assert exc.value.code == "card_archived"
        with pytest.raises(CardUnavailable):
            wallet.withdraw(uow, actor=bob, card_id=dst.card_id, amount=usd("5"), bank=BANK,
                            idempotency_key=new_key())  # fmt: skip
        cards.set_archived(uow, actor=SYSTEM, card_id=dst.card_id, archived=False)
        wallet.transfer(uow, actor=alice, from_card_id=src.card_id, to_card_id=dst.card_id,
                        amount=usd("5"), idempotency_key=new_key())  # fmt: skip
        assert balances(uow, dst) == (1000, 0)

    def test_only_staff_archive_cards(self, uow, make, alice):
        card = make.card(alice)
        with pytest.raises(Forbidden):
            cards.set_archived(uow, actor=alice, card_id=card.card_id, archived=True)

    def test_expired_card_is_refused(self, uow, make, alice, clock):
        card = make.card(alice, balance="20")
        clock.advance(days=366 * cards.VALID_YEARS + 31)
        with pytest.raises(CardUnavailable) as exc:
            wallet.withdraw(uow, actor=alice, card_id=card.card_id, amount=usd("10"), bank=BANK,
                            idempotency_key=new_key())  # fmt: skip
        assert exc.value.code == "card_expired"
        assert balances(uow, card) == (2000, 0)


# -- transfer --------------------------------------------------------------------------------
class TestTransfer:
    def test_moves_money_between_users(self, uow, make, alice, bob):
        src, dst = make.card(alice, balance="100"), make.card(bob)
        result = wallet.transfer(
            uow, actor=alice, from_card_id=src.card_id, to_card_id=dst.card_id,
            amount=usd("30.25"), idempotency_key=new_key(), memo="rent",
        )  # fmt: skip
        assert result.status == MovementStatus.SUCCEEDED
        assert result.balance.available == usd("69.75")
        assert balances(uow, src) == (6975, 0)
        assert balances(uow, dst) == (3025, 0)
        assert_clean(uow)

    def test_same_card_is_refused_and_writes_nothing(self, uow, make, alice):
        card = make.card(alice, balance="10")
        before = count(uow, "transfers")
        with pytest.raises(InvalidInput, match="same card") as exc:
            wallet.transfer(uow, actor=alice, from_card_id=card.card_id,
                            to_card_id=card.card_id, amount=usd("1"),
                            idempotency_key=new_key())  # fmt: skip
        assert exc.value.param == "to_card_id"
        assert count(uow, "transfers") == before
        assert balances(uow, card) == (1000, 0)

    def test_not_enough_money_commits_failed_record_with_balances_unchanged(
        self, uow, make, alice, bob
    ):
        src, dst = make.card(alice, balance="10"), make.card(bob, balance="5")
        with pytest.raises(InsufficientFunds, match=r"10\.00 USD available") as exc:
            wallet.transfer(uow, actor=alice, from_card_id=src.card_id, to_card_id=dst.card_id,
                            amount=usd("10.01"), idempotency_key=new_key())  # fmt: skip
        assert exc.value.code == "insufficient_funds"
        assert balances(uow, src) == (1000, 0)
        assert balances(uow, dst) == (500, 0)
        row = uow.run(
            lambda u: u.execute(
                "SELECT status, failure_code, journal_entry_id FROM transfers"
                " WHERE from_card_id = :c", {"c": src.card_id},
            ).one()
        )  # fmt: skip
        assert tuple(row) == ("failed", "insufficient_funds", None)
        # Exactly the whole balance is fine.
        wallet.transfer(uow, actor=alice, from_card_id=src.card_id, to_card_id=dst.card_id,
                        amount=usd("10"), idempotency_key=new_key())  # fmt: skip
        assert balances(uow, src) == (0, 0)

    def test_currency_mismatch_writes_nothing(self, uow, make, alice, bob):
        src, dst = make.card(alice, balance="10"), make.card(bob, currency="IDR")
        before = count(uow, "transfers")
        with pytest.raises(CurrencyMismatch) as exc:
            wallet.transfer(uow, actor=alice, from_card_id=src.card_id, to_card_id=dst.card_id,
                            amount=usd("1"), idempotency_key=new_key())  # fmt: skip
        assert exc.value.param == "to_card_id"
        with pytest.raises(CurrencyMismatch):
            wallet.transfer(uow, actor=alice, from_card_id=src.card_id, to_card_id=dst.card_id,
                            amount=idr("1000"), idempotency_key=new_key())  # fmt: skip
        assert count(uow, "transfers") == before

    def test_unknown_cards_and_other_peoples_cards_are_not_found(self, uow, make, alice, bob):
        mine, theirs = make.card(alice, balance="10"), make.card(bob, balance="10")
        with pytest.raises(NotFound) as exc:
            wallet.transfer(uow, actor=alice, from_card_id=theirs.card_id,
                            to_card_id=mine.card_id, amount=usd("1"),
                            idempotency_key=new_key())  # fmt: skip
        assert exc.value.param == "from_card_id"
        with pytest.raises(NotFound) as exc:
            wallet.transfer(uow, actor=alice, from_card_id=mine.card_id, to_card_id=999_999,
                            amount=usd("1"), idempotency_key=new_key())  # fmt: skip
        assert exc.value.param == "to_card_id"
        with pytest.raises(NotFound):
            wallet.top_up(uow, actor=alice, card_id=theirs.card_id, amount=usd("10"),
                          method="cash", idempotency_key=new_key())  # fmt: skip
        with pytest.raises(NotFound):
            wallet.withdraw(uow, actor=alice, card_id=theirs.card_id, amount=usd("5"),
                            bank=BANK, idempotency_key=new_key())  # fmt: skip
        with pytest.raises(NotFound):
            wallet.get_balance(uow, actor=alice, card_id=theirs.card_id)
        assert balances(uow, theirs) == (1000, 0)

    def test_non_positive_amounts_are_invalid(self, uow, make, alice, bob):
        src, dst = make.card(alice, balance="10"), make.card(bob)
        for minor in (0, -100):
            with pytest.raises(InvalidInput):
                wallet.transfer(uow, actor=alice, from_card_id=src.card_id,
                                to_card_id=dst.card_id, amount=Money(minor, "USD"),
                                idempotency_key=new_key())  # fmt: skip


class TestRecipientReferences:
    """Issue 11 A5: another person's card is paid only by the look-up's reference."""

    def test_another_persons_card_id_is_not_found_like_no_card(self, uow, make, alice, bob):
        mine, theirs = make.card(alice, balance="50"), make.card(bob, currency="IDR")
        answers = []
        for to in (theirs.public_id, "card_" + "0" * 24):
            with pytest.raises(NotFound) as exc:
                wallet.transfer(uow, actor=alice, from_card_id=mine.public_id, to_card_id=to,
                                amount=usd("5"), idempotency_key=new_key())  # fmt: skip
            answers.append((exc.value.code, exc.value.param, exc.value.message))
        assert answers[0] == answers[1] == ("not_found", "to_card_id", "no such card")
        assert count(uow, "transfers") == 0 and balances(uow, mine) == (5000, 0)

    def test_the_lookups_reference_pays_the_card_for_its_sender_until_it_expires(
        self, uow, make, alice, bob, clock
    ):
        mine, theirs = make.card(alice, balance="50"), make.card(bob)
        found = activity.find_recipient(uow, actor=alice, number=theirs.number)
        key = new_key()
        sent = wallet.transfer(uow, actor=alice, from_card_id=mine.public_id,
                               to_card_id=found.reference, amount=usd("5"),
                               idempotency_key=key)  # fmt: skip
        assert sent.status == MovementStatus.SUCCEEDED and balances(uow, theirs) == (500, 0)
        # A retry after a fresh look-up names the same card: it replays.
        again = activity.find_recipient(uow, actor=alice, number=theirs.number)
        assert again.reference != found.reference
        replay = wallet.transfer(uow, actor=alice, from_card_id=mine.public_id,
                                 to_card_id=again.reference, amount=usd("5"),
                                 idempotency_key=key)  # fmt: skip
        assert replay.replayed and replay.public_id == sent.public_id
        # Someone else's reference, a forged one and an expired one name nothing.
        carol = make.user()
        carols = make.card(carol, balance="50")
        middle = len(found.reference) // 2
        forged = (found.reference[:middle] + ("A" if found.reference[middle] != "A" else "B")
                  + found.reference[middle + 1 :])  # fmt: skip
        for actor, source, ref in ((carol, carols, found.reference), (alice, mine, forged)):
            with pytest.raises(NotFound) as exc:
                wallet.transfer(uow, actor=actor, from_card_id=source.public_id, to_card_id=ref,
                                amount=usd("1"), idempotency_key=new_key())  # fmt: skip
            assert (exc.value.param, exc.value.message) == ("to_card_id", "no such card")
        clock.advance(minutes=15)
        with pytest.raises(NotFound):
            wallet.transfer(uow, actor=alice, from_card_id=mine.public_id,
                            to_card_id=again.reference, amount=usd("1"),
                            idempotency_key=new_key())  # fmt: skip
        assert balances(uow, theirs) == (500, 0)
        assert_clean(uow)

    def test_staff_may_name_any_card(self, uow, make, alice, bob):
        mine, theirs = make.card(alice, balance="50"), make.card(bob)
        staff = make.user(roles=("admin",))
        moved = wallet.transfer(uow, actor=staff, from_card_id=mine.public_id,
                                to_card_id=theirs.public_id, amount=usd("5"),
                                idempotency_key=new_key())  # fmt: skip
        assert moved.status == MovementStatus.SUCCEEDED


# -- idempotency -----------------------------------------------------------------------------
class TestIdempotency:
    def test_same_key_same_request_replays_the_first_result(self, uow, make, alice, bob):
        src, dst = make.card(alice, balance="100"), make.card(bob)
        key = new_key()
        first = wallet.transfer(
            uow,
            actor=alice,
            from_card_id=src.card_id,
            to_card_id=dst.card_id,
            amount=usd("10"),
            idempotency_key=key,
        )
        again = wallet.transfer(
            uow,
            actor=alice,
            from_card_id=src.card_id,
            to_card_id=dst.card_id,
            amount=usd("10"),
            idempotency_key=key,
        )
        assert again.replayed and not first.replayed
        assert replace(again, replayed=False) == first
        assert balances(uow, src) == (9000, 0)
        assert count(uow, "transfers") == 1

    def test_same_key_different_request_is_refused(self, uow, make, alice, bob):
        src, dst = make.card(alice, balance="100"), make.card(bob)
        key = new_key()
        wallet.transfer(
            uow,
            actor=alice,
            from_card_id=src.card_id,
            to_card_id=dst.card_id,
            amount=usd("10"),
            idempotency_key=key,
        )
        with pytest.raises(IdempotencyConflict) as exc:
            wallet.transfer(
                uow,
                actor=alice,
                from_card_id=src.card_id,
                to_card_id=dst.card_id,
                amount=usd("11"),
                idempotency_key=key,
            )
        assert exc.value.kind == "idempotency_error"
        with pytest.raises(IdempotencyConflict):  # another operation under the same key
            wallet.top_up(
                uow,
                actor=alice,
                card_id=src.card_id,
                amount=usd("10"),
                method="cash",
                idempotency_key=key,
            )
        assert balances(uow, src) == (9000, 0)

    def test_keys_are_scoped_per_user(self, uow, make, alice, bob):
        a, b = make.card(alice, balance="20"), make.card(bob, balance="20")
        key = new_key()
        wallet.transfer(
            uow,
            actor=alice,
            from_card_id=a.card_id,
            to_card_id=b.card_id,
            amount=usd("5"),
            idempotency_key=key,
        )
        result = wallet.transfer(
            uow,
            actor=bob,
            from_card_id=b.card_id,
            to_card_id=a.card_id,
            amount=usd("7"),
            idempotency_key=key,
        )
        assert not result.replayed
        assert balances(uow, a) == (2200, 0)

    def test_a_refusal_is_replayed_as_the_same_refusal(self, uow, make, alice, bob):
        src, dst = make.card(alice, balance="5"), make.card(bob)
        key = new_key()
        with pytest.raises(InsufficientFunds) as first:
            wallet.transfer(
                uow,
                actor=alice,
                from_card_id=src.card_id,
                to_card_id=dst.card_id,
                amount=usd("6"),
                idempotency_key=key,
            )
        assert not first.value.replayed
        make.fund(src, "10")  # even with money now, the key answers as it first did
        with pytest.raises(InsufficientFunds, match=r"5\.00 USD available") as again:
            wallet.transfer(
                uow,
                actor=alice,
                from_card_id=src.card_id,
                to_card_id=dst.card_id,
                amount=usd("6"),
                idempotency_key=key,
            )
        assert again.value.replayed
        assert count(uow, "transfers") == 1

    def test_invalid_input_does_not_burn_the_key(self, uow, make, alice, bob):
        src, dst = make.card(alice, balance="10"), make.card(bob)
        key = new_key()
        with pytest.raises(NotFound):
            wallet.transfer(
                uow,
                actor=alice,
                from_card_id=src.card_id,
                to_card_id=424242,
                amount=usd("1"),
                idempotency_key=key,
            )
        result = wallet.transfer(
            uow,
            actor=alice,
            from_card_id=src.card_id,
            to_card_id=dst.card_id,
            amount=usd("1"),
            idempotency_key=key,
        )
        assert result.status == MovementStatus.SUCCEEDED and not result.replayed

    def test_expired_key_starts_afresh(self, uow, make, alice, bob, clock):
        src, dst = make.card(alice, balance="10"), make.card(bob)
        key = new_key()
        wallet.transfer(
            uow,
            actor=alice,
            from_card_id=src.card_id,
            to_card_id=dst.card_id,
            amount=usd("1"),
            idempotency_key=key,
        )
        clock.advance(hours=uow.settings.idempotency_ttl_hours - 1)
        assert wallet.transfer(uow, actor=alice, from_card_id=src.card_id,
                               to_card_id=dst.card_id, amount=usd("1"),
                               idempotency_key=key).replayed  # fmt: skip
        clock.advance(hours=2)
        assert not wallet.transfer(uow, actor=alice, from_card_id=src.card_id,
                                   to_card_id=dst.card_id, amount=usd("1"),
                                   idempotency_key=key).replayed  # fmt: skip
        assert balances(uow, src) == (800, 0)

    @pytest.mark.parametrize("key", ["", "   ", "x" * 256, "bad\nkey"])
    def test_bad_keys_are_invalid(self, uow, make, alice, key):
        card = make.card(alice)
        with pytest.raises(InvalidInput) as exc:
            wallet.top_up(
                uow,
                actor=alice,
                card_id=card.card_id,
                amount=usd("10"),
                method="cash",
                idempotency_key=key,
            )
        assert exc.value.param == "idempotency_key"


# -- withdrawal ------------------------------------------------------------------------------
class TestWithdrawal:
    def test_places_a_hold_then_posts_it_on_confirmation(self, uow, make, alice):
        card = make.card(alice, balance="100")
        w = wallet.withdraw(uow, actor=alice, card_id=card.card_id, amount=usd("80"), bank=BANK,
                            idempotency_key=new_key())  # fmt: skip
        assert w.status == MovementStatus.PENDING
        assert w.balance.available == usd("20")
        assert balances(uow, card) == (10_000, 8_000)
        with pytest.raises(InsufficientFunds):  # the hold counts against what is available
            wallet.transfer(uow, actor=alice, from_card_id=card.card_id,
                            to_card_id=make.card(alice).card_id, amount=usd("20.01"),
                            idempotency_key=new_key())  # fmt: skip
        done = wallet.confirm_withdrawal(uow, actor=SYSTEM, withdrawal_id=w.id,
                                         payout_reference="po_1")  # fmt: skip
        assert done.status == MovementStatus.SUCCEEDED
        assert balances(uow, card) == (2_000, 0)
        again = wallet.confirm_withdrawal(uow, actor=SYSTEM, withdrawal_id=w.id)
        assert (
            again.status == MovementStatus.SUCCEEDED
            and again.journal_entry_id == done.journal_entry_id
        )
        hold = uow.run(lambda u: u.execute("SELECT status, journal_entry_id FROM holds").one())
        assert hold.status == "posted" and hold.journal_entry_id == done.journal_entry_id
        assert_clean(uow)

    def test_failure_voids_the_hold_and_releases_the_money(self, uow, make, alice):
        card = make.card(alice, balance="100")
        w = wallet.withdraw(uow, actor=alice, card_id=card.card_id, amount=usd("80"), bank=BANK,
                            idempotency_key=new_key())  # fmt: skip
        failed = wallet.fail_withdrawal(uow, actor=SYSTEM, withdrawal_id=w.id,
                                        failure_code="account_closed")  # fmt: skip
        assert failed.status == MovementStatus.FAILED
        assert balances(uow, card) == (10_000, 0)
        # Once failed, a late confirmation changes nothing.
        late = wallet.confirm_withdrawal(uow, actor=SYSTEM, withdrawal_id=w.id)
        assert late.status == MovementStatus.FAILED
        assert balances(uow, card) == (10_000, 0)
        assert_clean(uow)

    def test_cardholders_cannot_confirm_their_own_withdrawal(self, uow, make, alice):
        card = make.card(alice, balance="100")
        w = wallet.withdraw(uow, actor=alice, card_id=card.card_id, amount=usd("80"), bank=BANK,
                            idempotency_key=new_key())  # fmt: skip
        with pytest.raises(Forbidden):
            wallet.confirm_withdrawal(uow, actor=alice, withdrawal_id=w.id)

    def test_bank_details_are_encrypted_and_only_last4_shown(self, uow, make, alice, connection):
        card = make.card(alice, balance="100")
        wallet.withdraw(uow, actor=alice, card_id=card.card_id, amount=usd("10"), bank=BANK,
                        idempotency_key=new_key())  # fmt: skip
        row = connection.execute(sa.text("SELECT * FROM withdrawals")).mappings().one()
        assert row["bank_account_last4"] == "7890"
        assert b"1234567890" not in bytes(row["bank_ciphertext"])
        assert b"Alice" not in bytes(row["bank_ciphertext"])

    @pytest.mark.parametrize(
        ("bank", "param"),
        [(BankAccount("B", "1234567890", "Alice"), "bank_name"),
         (BankAccount("Bank", "12345", "Alice"), "account_number"),
         (BankAccount("Bank", "1234567890", ""), "account_holder")],
    )  # fmt: skip
    def test_bad_bank_details_are_invalid(self, uow, make, alice, bank, param):
        card = make.card(alice, balance="10")
        with pytest.raises(InvalidInput) as exc:
            wallet.withdraw(uow, actor=alice, card_id=card.card_id, amount=usd("5"), bank=bank,
                            idempotency_key=new_key())  # fmt: skip
        assert exc.value.param == param

    def test_withdrawal_below_minimum_is_refused(self, uow, make, alice):
        card = make.card(alice, balance="10")
        with pytest.raises(LimitExceeded, match="minimum of 5.00 USD"):
            wallet.withdraw(uow, actor=alice, card_id=card.card_id, amount=usd("4.99"),
                            bank=BANK, idempotency_key=new_key())  # fmt: skip

    def test_expired_hold_fails_the_withdrawal(self, uow, make, alice, clock):
        card = make.card(alice, balance="100")
        w = wallet.withdraw(uow, actor=alice, card_id=card.card_id, amount=usd("50"), bank=BANK,
                            idempotency_key=new_key())  # fmt: skip
        assert wallet.expire_holds(uow, actor=SYSTEM) == 0
        clock.advance(hours=uow.settings.withdrawal_hold_hours, seconds=1)
        assert wallet.expire_holds(uow, actor=SYSTEM) == 1
        state = uow.run(
            lambda u: u.execute(
                "SELECT w.status, w.failure_code, h.status AS hold FROM withdrawals w"
                " JOIN holds h ON h.id = w.hold_id WHERE w.id = :id", {"id": w.id},
            ).one()
        )  # fmt: skip
        assert tuple(state) == ("failed", "hold_expired", "expired")
        assert balances(uow, card) == (10_000, 0)
        assert wallet.expire_holds(uow, actor=SYSTEM) == 0
        assert_clean(uow)


class TestEmailVerification:
    def test_unverified_owner_cannot_move_money_until_verified(self, uow, make, connection):
        newcomer = make.user(verified="no")
        card = make.card(newcomer)
        make.fund(card, "50")  # money may arrive (staff top-up, incoming transfer)
        before = count(uow, "top_ups"), count(uow, "transfers"), count(uow, "withdrawals")
        other = make.card(make.user())
        for attempt in (
            lambda: wallet.top_up(uow, actor=newcomer, card_id=card.card_id, amount=usd("10"),
                                  method="cash", idempotency_key=new_key()),
            lambda: wallet.transfer(uow, actor=newcomer, from_card_id=card.card_id,
                                    to_card_id=other.card_id, amount=usd("1"),
                                    idempotency_key=new_key()),
            lambda: wallet.withdraw(uow, actor=newcomer, card_id=card.card_id, amount=usd("10"),
                                    bank=BANK, idempotency_key=new_key()),
        ):  # fmt: skip
            with pytest.raises(Forbidden) as exc:
                attempt()
            assert exc.value.code == "email_unverified"
        assert (count(uow, "top_ups"), count(uow, "transfers"), count(uow, "withdrawals")) == before
        connection.execute(
            sa.text("UPDATE users SET email_verified_at = now() WHERE id = :id"),
            {"id": newcomer.id},
        )
        wallet.transfer(uow, actor=newcomer, from_card_id=card.card_id, to_card_id=other.card_id,
                        amount=usd("1"), idempotency_key=new_key())  # fmt: skip
        assert balances(uow, card) == (4900, 0)

    def test_the_rule_can_be_switched_off(self, uow, make):
        uow.settings = replace(uow.settings, require_verified_email=False)
        newcomer = make.user(verified="no")
        card = make.card(newcomer)
        pending = wallet.top_up(uow, actor=newcomer, card_id=card.card_id, amount=usd("10"),
                                method="cash", idempotency_key=new_key())  # fmt: skip
        funding.settle(uow, pending.id)
        assert balances(uow, card) == (1000, 0)


def test_a_transfer_claims_and_locks_in_one_statement_and_a_replay_locks_nothing(
    uow, make, alice, connection
):
    """The hot path's round trips (issue 12): the idempotency claim, the wallet locks and the
    writes are one call of ``portal_transfer`` (migration 0030); a replay is one statement too,
    and locks no wallet (the lock bumps the owner's change_version: a replay leaves it)."""
    src, dst = make.card(alice, balance="10"), make.card(alice)
    sent: list[str] = []

    def capture(conn, cursor, statement, *args) -> None:
        if not statement.startswith(("SAVEPOINT", "RELEASE", "SET CONSTRAINTS")):
            sent.append(statement)

    def version() -> int:
        sql = "SELECT change_version FROM users WHERE id = :id"
        return uow.run(lambda u: u.execute(sql, {"id": alice.id}).scalar_one())

    key = new_key()
    send = lambda: wallet.transfer(  # noqa: E731
        uow, actor=alice, from_card_id=src.public_id, to_card_id=dst.public_id, amount=usd("1"),
        idempotency_key=key,
    )  # fmt: skip
    before = version()
    sa.event.listen(connection, "before_cursor_execute", capture)
    try:
        first = send()
        moved, sent[:] = list(sent), []
        locked = version()
        sent[:] = []
        again = send()
    finally:
        sa.event.remove(connection, "before_cursor_execute", capture)
    assert len(moved) == 1 and "portal_transfer(" in moved[0]
    assert len(sent) == 1 and "portal_transfer(" in sent[0]
    assert again.replayed and again.public_id == first.public_id
    assert locked == before + 1 and version() == locked
    assert balances(uow, src) == (900, 0)
