"""Test fixtures: a real PostgreSQL (TEST_DATABASE_URL), migrated once per session.

Two roles, as in production: TEST_DATABASE_URL is the schema owner (it builds the schema with
the migrations and wipes committed data); the app, its workers and every test's connection run
as the runtime role (TEST_RUNTIME_DATABASE_URL, by default the owner's URL with the user
``portal_test_app``, made a member of ``portal_runtime`` here), so a missing grant fails a
test. A test that tampers on purpose with what that role may not touch steps out of it for a
moment with ``as_owner(connection)``.

Per-test isolation: each test runs inside an outer transaction on one connection; the unit of
work's sessions join it with ``join_transaction_mode="create_savepoint"`` so their commits only
release savepoints, and teardown rolls everything back. Concurrency tests (marked
``concurrency``) commit for real through ``committing_engine`` and wipe what they wrote.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.orm import sessionmaker
from sqlalchemy.pool import NullPool

from portal import create_app
from portal.commands import ensure_runtime_role
from portal.config import database_url
from portal.domain.money import Money
from portal.domain.types import Actor, IssuedCard, MovementResult
from portal.extensions import db
from portal.services.identity import users
from portal.services.shared.uow import UnitOfWork
from portal.services.wallet import cards, funding, wallet

os.environ.setdefault("PORTAL_ENV", "test")

SYSTEM = Actor.system("tests")


def _test_url() -> str:
    url = os.environ.get("TEST_DATABASE_URL")
    if not url:
        pytest.exit(
            "TEST_DATABASE_URL is not set: run the suite with `make test`, which starts a "
            "throwaway embedded PostgreSQL (or set TEST_DATABASE_URL to a PostgreSQL 15+ db).",
            returncode=2,
        )
    return database_url(url)


#: The login role the tests' app runs as when TEST_RUNTIME_DATABASE_URL is not set.
TEST_RUNTIME_USER = "portal_test_app"


def _runtime_url(owner_url: str) -> str:
    if url := os.environ.get("TEST_RUNTIME_DATABASE_URL"):
        return database_url(url)
    owner = sa.make_url(owner_url)
    runtime = sa.URL.create(owner.drivername, TEST_RUNTIME_USER, None, owner.host, owner.port,
                            owner.database, owner.query)  # fmt: skip
    return runtime.render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def app() -> Iterator[Flask]:
    url = _test_url()
    runtime_url = _runtime_url(url)
    engine = sa.create_engine(url, poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()
    ensure_runtime_role(url, runtime_url)
    application = create_app(
        # CSRF is proven by its own test (tests/pages); the others post without tokens.
        {
            "TESTING": True,
            "SQLALCHEMY_DATABASE_URI": runtime_url,
            "MIGRATION_DATABASE_URI": url,
            "PORTAL_ENV": "test",
            "WTF_CSRF_ENABLED": False,
        }
    )
    # The test's connection (``connection``): the owner's, switched to the runtime role.
    application.extensions["tests.owner_engine"] = sa.create_engine(
        url, connect_args=application.config["SQLALCHEMY_ENGINE_OPTIONS"]["connect_args"]
    )
    settings = application.config["SERVICE_SETTINGS"]
    application.config["SERVICE_SETTINGS"] = replace(
        settings, payout_delay_seconds=0, funding_delay_seconds=0
    )
    if (client := application.extensions.get("portal.redis")) is not None:
        client.flushdb()  # a new database reuses ids: nothing cached for the old one may stay
    with application.app_context():
        from flask_migrate import upgrade

        upgrade()
    yield application
    application.extensions["tests.owner_engine"].dispose()
    with application.app_context():
        db.engine.dispose()


class Clock:
    """A settable clock for services (``uow.clock``)."""

    def __init__(self, now: datetime | None = None) -> None:
        self.now = now or datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def connection(app: Flask) -> Iterator[sa.Connection]:
    """An outer transaction every session of the test joins, as the runtime role (an owner's
    connection under SET ROLE, so ``as_owner`` can step out of it); rolled back at teardown."""
    with app.app_context():
        engines = db._app_engines[app]  # flask-sqlalchemy's per-app engine map
    conn = app.extensions["tests.owner_engine"].connect()
    outer = conn.begin()
    runtime = sa.make_url(app.config["SQLALCHEMY_DATABASE_URI"]).username
    conn.execute(sa.text(f'SET ROLE "{runtime}"'))  # until the outer transaction ends
    original = engines[None]
    engines[None] = conn  # type: ignore[assignment]
    app.extensions["portal.session_factory"] = sessionmaker(
        bind=conn, expire_on_commit=False, autoflush=False, join_transaction_mode="create_savepoint"
    )
    try:
        yield conn
    finally:
        engines[None] = original
        app.extensions["portal.session_factory"] = None
        outer.rollback()
        conn.close()


@contextmanager
def as_owner(connection: sa.Connection) -> Iterator[sa.Connection]:
    """Within the test's transaction, act as the schema owner (the migrations' role, a
    superuser in CI) for a moment: for tampering no code path of the app's role can do."""
    role = connection.execute(sa.text("SELECT current_user")).scalar_one()
    connection.execute(sa.text("RESET ROLE"))
    try:
        yield connection
    finally:
        connection.execute(sa.text(f'SET ROLE "{role}"'))


@pytest.fixture
def uow(app: Flask, connection: sa.Connection, clock: Clock) -> UnitOfWork:
    return UnitOfWork(
        app.extensions["portal.session_factory"], app.config["SERVICE_SETTINGS"], clock=clock
    )


_seq = itertools.count(1)


def new_key() -> str:
    return uuid.uuid4().hex


class Factory:
    """Builds users, cards and balances through the real services."""

    def __init__(self, uow: UnitOfWork) -> None:
        self.uow = uow

    def user(self, roles: tuple[str, ...] = ("cardholder",), **kw: str) -> Actor:
        n = next(_seq)
        created = users.create_user(
            self.uow,
            actor=SYSTEM,
            email=kw.get("email", f"user{n}-{uuid.uuid4().hex[:6]}@example.test"),
            first_name=kw.get("first_name", "Test"),
            last_name=kw.get("last_name", f"User{n}"),
            roles=roles,
            verified=kw.get("verified", "yes") == "yes",
        )
        return users.actor_for(self.uow, created.id)

    def card(
        self,
        owner: Actor,
        *,
        currency: str = "USD",
        balance: str | None = None,
        brand: str = "visa",
        card_type: str = "debit",
    ) -> IssuedCard:
        assert owner.id is not None
        card = cards.issue_card(
            self.uow, actor=owner, user_id=owner.id, card_type=card_type, brand=brand,
            currency=currency,
        )  # fmt: skip
        if balance is not None:
            self.fund(card, balance)
        return card

    def fund(self, card: IssuedCard, major: str) -> MovementResult:
        """Top up and settle it with the funding processor's answer at once, as the funding
        job would (a top-up alone is only pending)."""
        result = wallet.top_up(
            self.uow, actor=SYSTEM, card_id=card.card_id,
            amount=Money.of_major(major, card.currency), method="bank_transfer",
            idempotency_key=new_key(),
        )  # fmt: skip
        settled = run_funding_job(self.uow, result.id) or result
        assert settled.status == "succeeded" or result.status == "failed", (
            f"the demo funding processor declined {major} (amounts ending in 13 minor units)"
        )
        return settled


def run_funding_job(uow: UnitOfWork, top_up_id: int) -> MovementResult | None:
    """Do a top-up's funding job now, as the worker would once it is due (the job's handler,
    then the job marked done): returns the settled top-up (None if it was refused)."""
    settled = funding.settle(uow, top_up_id)
    uow.run(
        lambda u: u.execute(
            "UPDATE jobs SET status = 'succeeded', finished_at = :now, updated_at = :now,"
            " dedupe_key = NULL WHERE dedupe_key = :key AND status = 'queued'",
            {"now": u.now(), "key": f"funding:{top_up_id}"},
        )
    )
    return settled


def confirm_top_ups(uow: UnitOfWork) -> int:
    """Run the funding job of every pending top-up; returns how many were asked."""
    pending = uow.run(
        lambda u: (
            u.execute("SELECT id FROM top_ups WHERE status = 'pending' ORDER BY id").scalars().all()
        )
    )
    for top_up_id in pending:
        run_funding_job(uow, top_up_id)
    return len(pending)


@pytest.fixture
def make(uow: UnitOfWork) -> Factory:
    return Factory(uow)


@pytest.fixture
def redis_url(app: Flask) -> str:
    """The tests' Redis (``REDIS_URL``). Without one the test is skipped, loudly, except under
    CI=true, where that is a failure."""
    url = app.config.get("REDIS_URL")
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail("REDIS_URL is not set: under CI every Redis test must run")
        pytest.skip("REDIS TESTS SKIPPED: REDIS_URL is not set (e.g. redis://127.0.0.1:6379/15)")
    return str(url)


# -- real commits ---------------------------------------------------------------------------
WIPE = """
TRUNCATE webhook_attempts, webhook_deliveries, webhook_endpoints,
         postings, holds, journal_entries, top_ups, transfers, withdrawals, refunds, events,
         checkout_sessions, payments, merchant_invitations, merchant_members,
         idempotency_keys, jobs, outbox_events, audit_events, api_keys, refresh_tokens,
         ledger_checks, balance_transactions, payouts, demo_processor_requests,
         rate_limit_counters, stat_rollups, stat_checks CASCADE;
DELETE FROM accounts WHERE kind IN ('wallet', 'merchant');
DELETE FROM cards; DELETE FROM merchants; DELETE FROM user_roles; DELETE FROM users;
UPDATE audit_chain_heads SET seq = 0, hash = decode(repeat('00', 32), 'hex');
"""
#: Tables whose BEFORE TRUNCATE trigger (migration 0018) the wipe turns off, in its transaction.
APPEND_ONLY = ("postings", "journal_entries", "audit_events")


def wipe(owner_url: str) -> None:
    """Delete what committing tests wrote, as the schema owner (the runtime role may not
    TRUNCATE); the append-only tables' TRUNCATE triggers are off for this transaction only."""
    engine = sa.create_engine(owner_url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            for table in APPEND_ONLY:
                conn.execute(sa.text(f"ALTER TABLE {table} DISABLE TRIGGER {table}_no_truncate"))
            conn.execute(sa.text(WIPE))
            for table in APPEND_ONLY:
                conn.execute(sa.text(f"ALTER TABLE {table} ENABLE TRIGGER {table}_no_truncate"))
    finally:
        engine.dispose()


@pytest.fixture
def committing_engine(app: Flask) -> Iterator[sa.Engine]:
    """An engine whose sessions commit for real (at most 40 pooled connections); everything it
    wrote is wiped afterwards."""
    engine = sa.create_engine(
        app.config["SQLALCHEMY_DATABASE_URI"],
        pool_size=30,
        max_overflow=10,
        pool_timeout=60,
        connect_args=app.config["SQLALCHEMY_ENGINE_OPTIONS"]["connect_args"],
    )
    try:
        yield engine
    finally:
        engine.dispose()
        wipe(app.config["MIGRATION_DATABASE_URI"])


@pytest.fixture
def real_uow(app: Flask, committing_engine: sa.Engine) -> Callable[[], UnitOfWork]:
    """A factory of units of work that commit for real (one per thread)."""
    factory = sessionmaker(bind=committing_engine, expire_on_commit=False, autoflush=False)
    settings = app.config["SERVICE_SETTINGS"]
    return lambda: UnitOfWork(factory, settings)
