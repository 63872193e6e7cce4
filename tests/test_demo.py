"""The demo data set: made through the services, a year long, every outcome, reconciled."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from flask import Flask

from portal.demo import (
    CARDHOLDERS,
    DEMO_PASSWORD,
    STAFF,
    DemoSummary,
    seed_demo,
)
from portal.demo_merchants import MERCHANTS
from portal.domain.types import TopUpMethod
from portal.services.identity.passwords import verify_password
from portal.services.ledger.reconciliation import reconcile
from portal.services.shared.uow import UnitOfWork

NOW = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
KINDS = ("top_ups", "transfers", "withdrawals")


@pytest.fixture
def make_uow(
    app: Flask, connection: sa.Connection
) -> Callable[[Callable[[], datetime]], UnitOfWork]:
    """Units of work inside the test's outer transaction, on the clock the caller gives."""
    factory = app.extensions["portal.session_factory"]
    settings = app.config["SERVICE_SETTINGS"]
    return lambda clock: UnitOfWork(factory, settings, clock=clock)


@pytest.fixture
def seeded(make_uow: Callable[[Callable[[], datetime]], UnitOfWork]) -> DemoSummary:
    return seed_demo(make_uow, now=NOW, seed=7)


def rows(connection: sa.Connection, sql: str, **params: object) -> list[sa.Row]:
    return list(connection.execute(sa.text(sql), params))


def test_demo_logins_have_their_roles_and_cardholders_a_mix_of_cards(
    seeded: DemoSummary, connection: sa.Connection
) -> None:
    found = {
        r.email: r
        for r in rows(
            connection,
            "SELECT u.email, u.password_hash, u.email_verified_at,"
            " array_agg(r.name ORDER BY r.name) AS roles FROM users u"
            " JOIN user_roles ur ON ur.user_id = u.id JOIN roles r ON r.id = ur.role_id"
            " GROUP BY u.id",
        )
    }
    assert found["admin@portal.test"].roles == ["admin"]
    assert found["support@portal.test"].roles == ["support"]
    cardholders = {p.email for p in CARDHOLDERS}
    assert len(cardholders) >= 4
    assert {"alice@portal.test", "bob@portal.test", "citra@portal.test", "dewi@portal.test"} <= (
        cardholders
    )
    for email in cardholders:
        assert found[email].roles == ["cardholder"]
    assert set(found) == cardholders | {p.email for p in STAFF}
    for user in found.values():
        assert user.email_verified_at is not None
        assert verify_password(user.password_hash, DEMO_PASSWORD)
    assert {email for email, _ in seeded.logins} == set(found)
    assert seeded.users == len(found)

    held = rows(
        connection,
        "SELECT u.email, c.brand, c.card_type, c.currency, c.expiry_year, c.expiry_month,"
        " c.created_at, c.status FROM cards c JOIN users u ON u.id = c.user_id",
    )
    per_holder: dict[str, int] = {}
    for card in held:
        per_holder[card.email] = per_holder.get(card.email, 0) + 1
        assert card.created_at < NOW - timedelta(days=364)  # issued at the start of the year
        assert (card.expiry_year, card.expiry_month) == (
            card.created_at.year + 4,
            card.created_at.month,
        )
        assert card.status == "active"  # the frozen card was unfrozen again
    assert set(per_holder) == {p.email for p in CARDHOLDERS}
    assert all(1 <= n <= 3 for n in per_holder.values())
    assert {c.brand for c in held} == {"visa", "mastercard", "amex", "discover"}
    assert {c.card_type for c in held} == {"debit", "credit", "prepaid"}
    currencies = [c.currency for c in held]
    assert set(currencies) == {"IDR", "USD"}
    assert currencies.count("IDR") > currencies.count("USD")
    assert seeded.cards == len(held)


def test_history_is_a_reconciled_year_of_every_outcome_within_the_limits(
    app: Flask,
    seeded: DemoSummary,
    connection: sa.Connection,
    make_uow: Callable[[Callable[[], datetime]], UnitOfWork],
) -> None:
    counts = {
        kind: {
            r.status: r.n
            for r in rows(connection, f"SELECT status, count(*) AS n FROM {kind} GROUP BY status")
        }
        for kind in KINDS
    }
    # Top-ups and transfers settle at once (no pending state); withdrawals wait for the payout.
    assert set(counts["top_ups"]) == {"succeeded", "failed"}
    assert set(counts["transfers"]) == {"succeeded", "failed"}
    assert set(counts["withdrawals"]) == {"succeeded", "failed", "pending"}
    assert 1 <= counts["withdrawals"]["pending"] <= 2
    total = sum(n for by_status in counts.values() for n in by_status.values())
    assert 300 <= total <= 1500
    assert seeded.movements == {
        kind.removesuffix("s"): counts[kind] for kind in KINDS
    }  # the summary tells the truth

    failures = {
        (r.kind, r.failure_code)
        for r in rows(
            connection,
            "SELECT 'top_up' AS kind, failure_code FROM top_ups WHERE status = 'failed'"
            " UNION SELECT 'transfer', failure_code FROM transfers WHERE status = 'failed'"
            " UNION SELECT 'withdrawal', failure_code FROM withdrawals WHERE status = 'failed'",
        )
    }
    assert ("top_up", "card_frozen") in failures
    assert ("transfer", "insufficient_funds") in failures
    assert ("transfer", "card_frozen") in failures
    assert ("withdrawal", "insufficient_funds") in failures
    assert {("withdrawal", "payout_failed"), ("withdrawal", "account_closed")} <= failures

    methods = {r.method for r in rows(connection, "SELECT DISTINCT method FROM top_ups")}
    assert methods == {m.value for m in TopUpMethod}
    own = rows(
        connection,
        "SELECT count(*) AS n FROM transfers t JOIN cards a ON a.id = t.from_card_id"
        " JOIN cards b ON b.id = t.to_card_id WHERE a.user_id = b.user_id",
    )[0].n
    assert own > 0
    settled = rows(
        connection,
        "SELECT count(*) FILTER (WHERE w.status = 'succeeded') AS confirmed,"
        " count(*) FILTER (WHERE w.completed_at < w.created_at + interval '12 hours'"
        "   AND w.status = 'succeeded') AS too_fast FROM withdrawals w",
    )[0]
    assert settled.confirmed > 0
    assert settled.too_fast == 0  # payouts were confirmed about a day later

    first, last = rows(connection, "SELECT min(created_at), max(created_at) FROM top_ups")[0]
    assert first < NOW - timedelta(days=360)
    assert last > NOW - timedelta(days=2)
    for kind in KINDS:
        latest = rows(connection, f"SELECT max(created_at) FROM {kind}")[0][0]
        assert latest <= NOW
    pending = rows(connection, "SELECT created_at FROM withdrawals WHERE status = 'pending'")
    assert all(p.created_at > NOW - timedelta(days=1) for p in pending)

    settings = app.config["SERVICE_SETTINGS"]
    for table, kind in (("top_ups", "top_up"), ("transfers", "transfer")):
        for r in rows(connection, f"SELECT amount_minor, currency FROM {table}"):
            limits = settings.limits_for(r.currency, kind)
            assert limits is not None
            assert limits.minimum <= r.amount_minor <= limits.maximum
    for r in rows(connection, "SELECT amount_minor, currency FROM withdrawals"):
        limits = settings.limits_for(r.currency, "withdrawal")
        assert limits is not None
        assert limits.minimum <= r.amount_minor <= limits.maximum
    daily = rows(
        connection,
        "SELECT currency, SUM(amount_minor) AS total FROM top_ups WHERE status = 'succeeded'"
        " GROUP BY user_id, currency, date_trunc('day', created_at AT TIME ZONE 'UTC')",
    )
    for d in daily:
        cap = settings.limits_for(d.currency, "top_up").daily
        assert cap is None or d.total <= cap
    # Round amounts: whole thousands of rupiah, multiples of 50 cents.
    amounts = rows(
        connection, "SELECT amount_minor, currency FROM transfers WHERE status = 'succeeded'"
    )
    assert all(r.amount_minor % (100_000 if r.currency == "IDR" else 50) == 0 for r in amounts)

    report = reconcile(make_uow(lambda: NOW))
    assert report.violations == []
    assert report.ok
    # One journal entry per movement that moved money, and none for refusals or pending ones.
    assert report.entries_checked == sum(counts[kind].get("succeeded", 0) for kind in KINDS)
    assert set(report.totals_by_currency) == {"IDR", "USD"}


def test_seed_demo_refuses_a_naive_now(
    make_uow: Callable[[Callable[[], datetime]], UnitOfWork],
) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        seed_demo(make_uow, now=datetime(2026, 3, 1, 12, 30))  # noqa: DTZ001


def test_seed_demo_command_if_empty_seeds_only_once(app: Flask, connection: sa.Connection) -> None:
    runner = app.test_cli_runner()

    first = runner.invoke(args=["seed-demo", "--if-empty"])
    assert first.exit_code == 0, first.output
    assert "admin@portal.test" in first.output
    assert DEMO_PASSWORD in first.output

    def counts() -> tuple[int, ...]:
        return tuple(
            connection.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one()
            for t in ("users", "cards", *KINDS)
        )

    seeded = counts()
    assert seeded[0] == len(STAFF) + len(CARDHOLDERS) + len(MERCHANTS) + 1  # and an applicant
    assert "merchant API keys (shown once, development only)" in first.output
    assert first.output.count("sk_live_") == len(MERCHANTS)
    assert all(n > 0 for n in seeded)

    second = runner.invoke(args=["seed-demo", "--if-empty"])
    assert second.exit_code == 0, second.output
    assert "has users already" in second.output
    assert counts() == seeded

    again = runner.invoke(args=["seed-demo"])  # without the flag: a clear refusal, no change
    assert again.exit_code != 0
    assert "exist already" in again.output
    assert counts() == seeded

    verify = runner.invoke(args=["ledger", "verify"])
    assert verify.exit_code == 0, verify.output
