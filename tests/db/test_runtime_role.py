"""Two database roles (migration 0018, issue 11 A9): the app's runtime role may read and append
to the ledger and the audit trail but never rewrite or erase them, and even the schema owner's
TRUNCATE of them is refused by a trigger. The suite's app runs as that role (tests/conftest.py),
so a grant a feature needs and lacks fails its tests; here the rules themselves are tested."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.exc import DBAPIError, ProgrammingError
from sqlalchemy.pool import NullPool

from portal import create_app
from portal.commands import RUNTIME_GROUP, RuntimeRoleError, ensure_runtime_role
from portal.domain.money import Money
from portal.domain.types import MovementStatus
from portal.extensions import db
from portal.services.ledger.reconciliation import reconcile
from portal.services.shared.uow import UnitOfWork
from portal.services.wallet import wallet
from portal.worker import Worker
from tests.conftest import SYSTEM, Factory, as_owner, new_key

APPEND_ONLY = ("postings", "journal_entries", "audit_events")
BANK = wallet.BankAccount("First Test Bank", "DE89 3704 0044", "Test Holder")
#: What the issue found the app's role could do.
ERASE_ALL = "TRUNCATE postings, journal_entries, audit_events CASCADE"


def refused(connection: sa.Connection, statement: str) -> DBAPIError:
    """Run ``statement`` in a savepoint that must fail; return the error."""
    nested = connection.begin_nested()
    with pytest.raises(DBAPIError) as exc:
        connection.execute(sa.text(statement))
    nested.rollback()
    return exc.value


def sqlstate(error: DBAPIError) -> str | None:
    return getattr(error.orig, "sqlstate", None)


def test_the_app_connects_as_an_ordinary_member_of_the_runtime_group(connection, app):
    row = connection.execute(
        sa.text(
            "SELECT current_user AS name, r.rolsuper, r.rolcreaterole, r.rolcreatedb,"
            " r.rolbypassrls, pg_has_role(current_user, :group, 'MEMBER') AS member,"
            " (SELECT tableowner FROM pg_tables WHERE tablename = 'postings') AS owner"
            " FROM pg_roles r WHERE r.rolname = current_user"
        ),
        {"group": RUNTIME_GROUP},
    ).one()
    assert row.member, row
    assert not (row.rolsuper or row.rolcreaterole or row.rolcreatedb or row.rolbypassrls), row
    owner = sa.make_url(app.config["MIGRATION_DATABASE_URI"]).username
    assert row.owner == owner and owner != row.name


@pytest.mark.parametrize("table", APPEND_ONLY)
@pytest.mark.parametrize(
    "statement",
    ["TRUNCATE {table}", "TRUNCATE {table} CASCADE", "UPDATE {table} SET id = id",
     "DELETE FROM {table}"],
)  # fmt: skip
def test_the_runtime_role_may_not_rewrite_or_erase_history(connection, table, statement):
    error = refused(connection, statement.format(table=table))
    assert sqlstate(error) == "42501", error  # insufficient_privilege: before any trigger
    assert f"permission denied for table {table}" in str(error)


def test_the_runtime_role_may_not_erase_the_ledger_as_the_issue_found(connection):
    error = refused(connection, ERASE_ALL)
    assert "permission denied for table" in str(error)
    # Nor by a cascade from a table it may write: TRUNCATE is granted on nothing.
    assert "permission denied for table accounts" in str(
        refused(connection, "TRUNCATE accounts CASCADE")
    )


def test_the_runtime_role_may_not_change_the_schema(connection):
    for statement in (
        "DROP TABLE postings",
        "ALTER TABLE postings DISABLE TRIGGER postings_no_truncate",
        "CREATE TABLE scratch (id int)",
        "SET LOCAL session_replication_role = replica",
        "DELETE FROM alembic_version",
    ):
        error = refused(connection, statement)
        assert sqlstate(error) == "42501", (statement, error)


def test_runtime_grants_are_read_and_append_on_history_and_read_write_elsewhere(connection):
    rows = connection.execute(
        sa.text(
            "SELECT c.relname AS name,"
            " has_table_privilege(c.oid, 'SELECT') AS may_select,"
            " has_table_privilege(c.oid, 'INSERT') AS may_insert,"
            " has_table_privilege(c.oid, 'UPDATE') AS may_update,"
            " has_table_privilege(c.oid, 'DELETE') AS may_delete,"
            " has_table_privilege(c.oid, 'TRUNCATE, TRIGGER, REFERENCES') AS may_more"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')"
        )
    ).all()
    grants = {
        row.name: (row.may_select, row.may_insert, row.may_update, row.may_delete) for row in rows
    }
    assert len(grants) > 30
    for name in APPEND_ONLY:
        assert grants.pop(name) == (True, True, False, False), name
    assert grants.pop("alembic_version") == (True, False, False, False)
    # Only the audit_events trigger (the owner's rights) advances the audit chains' heads.
    assert grants.pop("audit_chain_heads") == (True, False, False, False)
    # Only the movements' triggers (the owner's rights) write the statistics roll-ups.
    assert grants.pop("stat_rollups") == (True, False, False, False)
    assert {name for name, g in grants.items() if g != (True, True, True, True)} == set()
    assert [row.name for row in rows if row.may_more] == []
    sequences = connection.execute(
        sa.text(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND CASE WHEN c.relkind = 'S'"
            " THEN NOT has_sequence_privilege(c.oid, 'USAGE') ELSE false END"
        )
    ).scalars()
    assert list(sequences) == []


def test_tables_a_later_migration_makes_are_granted_by_default(connection):
    """ALTER DEFAULT PRIVILEGES: a table the owner creates later is read-write for the group
    (an append-only one must revoke UPDATE and DELETE itself)."""
    with as_owner(connection):
        connection.execute(sa.text("CREATE TABLE later_feature (id bigserial PRIMARY KEY)"))
    rows = connection.execute(
        sa.text(
            "SELECT has_table_privilege(:g, 'later_feature', 'SELECT, INSERT, UPDATE, DELETE'),"
            " has_table_privilege(:g, 'later_feature', 'TRUNCATE'),"
            " has_sequence_privilege(:g, 'later_feature_id_seq', 'USAGE')"
        ),
        {"g": RUNTIME_GROUP},
    ).one()
    assert tuple(rows) == (True, False, True)


@pytest.mark.parametrize("statement", [*(f"TRUNCATE {t} CASCADE" for t in APPEND_ONLY), ERASE_ALL,
                                       "TRUNCATE accounts CASCADE"])  # fmt: skip
def test_even_the_owner_may_not_truncate_history(app, connection, make, statement):
    make.card(make.user(), balance="10")  # something to lose
    owner = sa.make_url(app.config["MIGRATION_DATABASE_URI"]).username
    with as_owner(connection):
        assert connection.execute(sa.text("SELECT current_user")).scalar() == owner
        error = refused(connection, statement)
    assert "is append-only: TRUNCATE refused" in str(error)


def test_a_money_flow_works_as_the_runtime_role(connection, uow, make):
    """Top-up, transfer, withdrawal and its payout, all in the test's runtime-role connection."""
    assert (
        connection.execute(
            sa.text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        ).scalar()
        is False
    )
    alice, bob = make.user(), make.user()
    card, other = make.card(alice, balance="100"), make.card(bob)
    sent = wallet.transfer(
        uow, actor=alice, from_card_id=card.card_id, to_card_id=other.card_id,
        amount=Money.of_major("30", "USD"), idempotency_key=new_key(),
    )  # fmt: skip
    assert sent.status == MovementStatus.SUCCEEDED
    w = wallet.withdraw(
        uow, actor=alice, card_id=card.card_id, amount=Money.of_major("50", "USD"), bank=BANK,
        idempotency_key=new_key(),
    )  # fmt: skip
    done = wallet.confirm_withdrawal(uow, actor=SYSTEM, withdrawal_id=w.id)
    assert done.status == MovementStatus.SUCCEEDED
    assert wallet.get_balance(uow, actor=alice, card_id=card.card_id).available.amount_minor == 2000
    assert wallet.get_balance(uow, actor=bob, card_id=other.card_id).available.amount_minor == 3000
    report = reconcile(uow)
    assert report.ok, report.violations


@pytest.mark.concurrency
def test_committed_money_and_every_worker_task_work_as_the_runtime_role(
    app: Flask, real_uow: Callable[[], UnitOfWork], committing_engine: sa.Engine
) -> None:
    """Real commits, then the worker's jobs (the payout) and every periodic task (purges of
    idempotency keys, rate-limit counters, events and ledger checks, hold expiry, the ledger
    check): none fails for want of a grant."""
    with committing_engine.connect() as conn:
        assert (
            conn.execute(sa.text("SELECT current_user")).scalar()
            != sa.make_url(app.config["MIGRATION_DATABASE_URI"]).username
        )
        conn.execute(
            sa.text(
                "INSERT INTO rate_limit_counters (key, count, expires_at)"
                " VALUES ('runtime-role-test', 1, now() - interval '1 day')"
            )
        )
        conn.commit()
    make = Factory(real_uow())
    alice = make.user()
    card, other = make.card(alice, balance="100"), make.card(make.user())
    wallet.transfer(
        real_uow(), actor=alice, from_card_id=card.card_id, to_card_id=other.card_id,
        amount=Money.of_major("10", "USD"), idempotency_key=new_key(),
    )  # fmt: skip
    w = wallet.withdraw(
        real_uow(), actor=alice, card_id=card.card_id, amount=Money.of_major("20", "USD"),
        bank=BANK, idempotency_key=new_key(),
    )  # fmt: skip
    worker = Worker(real_uow, worker_id="runtime-role-test")
    for _ in range(20):
        if not worker.run_once():
            break
    worker.run_periodic()
    failures = {
        sample.labels["task"]: sample.value
        for metric in worker.metrics.periodic_failures.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    }
    assert failures == {}
    with committing_engine.connect() as conn:
        status = conn.execute(
            sa.text("SELECT status FROM withdrawals WHERE id = :id"), {"id": w.id}
        ).scalar()
        dead = conn.execute(sa.text("SELECT count(*) FROM jobs WHERE status = 'dead'")).scalar()
        left = conn.execute(
            sa.text("SELECT count(*) FROM rate_limit_counters WHERE key = 'runtime-role-test'")
        ).scalar()
    assert (status, dead, left) == ("succeeded", 0, 0)
    assert reconcile(real_uow()).ok


# -- setting the role up ------------------------------------------------------------------------
@pytest.fixture
def owner_url(app: Flask) -> str:
    return str(app.config["MIGRATION_DATABASE_URI"])


def with_user(url: str, user: str | None, password: str | None = None) -> str:
    u = sa.make_url(url)
    other = sa.URL.create(u.drivername, user, password, u.host, u.port, u.database, u.query)
    return other.render_as_string(hide_password=False)


@pytest.fixture
def scratch_role(owner_url: str) -> Iterator[str]:
    """A login role name nobody uses, dropped afterwards (roles outlive the database)."""
    name = f"portal_scratch_{uuid.uuid4().hex[:8]}"
    yield name
    engine = sa.create_engine(owner_url, poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP ROLE IF EXISTS "{name}"'))
    engine.dispose()


def role_row(owner_url: str, name: str) -> sa.Row | None:
    engine = sa.create_engine(owner_url, poolclass=NullPool)
    with engine.connect() as conn:
        row = conn.execute(
            sa.text(
                "SELECT rolcanlogin, rolsuper, rolpassword IS NOT NULL AS has_password,"
                " EXISTS (SELECT FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid"
                "  WHERE m.member = a.oid AND g.rolname = :g) AS member"
                " FROM pg_authid a WHERE rolname = :n"
            ),
            {"g": RUNTIME_GROUP, "n": name},
        ).one_or_none()
    engine.dispose()
    return row


def test_ensure_runtime_role_creates_a_login_member_and_is_idempotent(owner_url, scratch_role):
    url = with_user(owner_url, scratch_role, "s3cret-for-a-scratch-role")
    assert (
        ensure_runtime_role(owner_url, url)
        == f"created login role {scratch_role} in {RUNTIME_GROUP}"
    )
    assert tuple(role_row(owner_url, scratch_role)) == (True, False, True, True)
    again = ensure_runtime_role(owner_url, with_user(owner_url, scratch_role))
    assert again == f"login role {scratch_role}: already a member of {RUNTIME_GROUP}"
    # It can sign in and read, and may not erase the ledger.
    engine = sa.create_engine(url, poolclass=NullPool)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM accounts")).scalar() == 4 * 41
        with pytest.raises(ProgrammingError, match="permission denied"):
            conn.execute(sa.text(ERASE_ALL))
    engine.dispose()


def test_ensure_runtime_role_adds_an_existing_role_to_the_group(owner_url, scratch_role):
    engine = sa.create_engine(owner_url, poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE ROLE "{scratch_role}" NOLOGIN'))
    engine.dispose()
    done = ensure_runtime_role(owner_url, with_user(owner_url, scratch_role))
    assert done == f"login role {scratch_role}: login allowed, made a member of {RUNTIME_GROUP}"
    assert tuple(role_row(owner_url, scratch_role)) == (True, False, False, True)


def test_ensure_runtime_role_refuses_the_owner_and_superusers(owner_url, scratch_role):
    with pytest.raises(
        RuntimeRoleError, match="the role MIGRATION_DATABASE_URL runs the migrations as"
    ):
        ensure_runtime_role(owner_url, owner_url)
    with pytest.raises(RuntimeRoleError, match="names no user"):
        ensure_runtime_role(owner_url, with_user(owner_url, None))
    engine = sa.create_engine(owner_url, poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE ROLE "{scratch_role}" SUPERUSER NOLOGIN'))
    engine.dispose()
    with pytest.raises(RuntimeRoleError, match="is a superuser"):
        ensure_runtime_role(owner_url, with_user(owner_url, scratch_role))
    assert role_row(owner_url, scratch_role).member is False  # nothing was changed


def test_the_cli_command_needs_two_urls(app: Flask, owner_url: str) -> None:
    runtime = app.config["SQLALCHEMY_DATABASE_URI"]
    one_role = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": runtime,
                           "MIGRATION_DATABASE_URI": runtime, "PORTAL_ENV": "test"})  # fmt: skip
    result = one_role.test_cli_runner().invoke(args=["runtime-role"])
    assert result.exit_code == 1 and "MIGRATION_DATABASE_URL is not set" in result.output
    two_roles = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": runtime,
                            "MIGRATION_DATABASE_URI": owner_url, "PORTAL_ENV": "test"})  # fmt: skip
    result = two_roles.test_cli_runner().invoke(args=["runtime-role"])
    assert result.exit_code == 0, result.output
    assert "already a member of portal_runtime" in result.output
    with one_role.app_context():
        db.engine.dispose()
    with two_roles.app_context():
        db.engine.dispose()


def test_migrations_run_as_the_owner_and_the_app_as_the_runtime_role(app: Flask) -> None:
    migrate = app.extensions["migrate"]
    with app.app_context():
        with migrate.db.engine.connect() as conn:
            as_migrations = conn.execute(sa.text("SELECT current_user")).scalar()
        with db.engine.connect() as conn:
            as_app = conn.execute(sa.text("SELECT current_user")).scalar()
    assert as_migrations == sa.make_url(app.config["MIGRATION_DATABASE_URI"]).username
    assert as_app == sa.make_url(app.config["SQLALCHEMY_DATABASE_URI"]).username
    assert as_app != as_migrations
    assert migrate.metadata is db.metadata
    with app.app_context():  # Flask-Migrate's stock env.py asks get_engine() first
        assert migrate.db.get_engine() is migrate.db.engine


# -- configuration and make run -----------------------------------------------------------------
def test_the_migration_url_defaults_to_the_app_url() -> None:
    from portal.config import load_config

    base = {"PORTAL_ENV": "test", "DATABASE_URL": "postgres://portal_app:pw@db/portal"}
    one = load_config(base)
    assert one["MIGRATION_DATABASE_URI"] == one["SQLALCHEMY_DATABASE_URI"]
    assert one["SQLALCHEMY_DATABASE_URI"] == "postgresql+psycopg://portal_app:pw@db/portal"
    two = load_config({**base, "MIGRATION_DATABASE_URL": "postgresql://portal:pw2@db/portal"})
    assert two["MIGRATION_DATABASE_URI"] == "postgresql+psycopg://portal:pw2@db/portal"
    assert two["SQLALCHEMY_DATABASE_URI"] == one["SQLALCHEMY_DATABASE_URI"]


def test_make_run_migrates_and_sets_the_role_up_before_anything_runs_as_it() -> None:
    from portal.supervise import commands

    def steps(env: dict[str, str]) -> list[list[str]]:
        setup, _ = commands("run", [], env)
        return [argv[1:] for argv in setup]

    two_roles = {"MIGRATION_DATABASE_URL": "postgresql://postgres@/portal"}
    assert steps(two_roles) == [["db", "upgrade"], ["runtime-role"], ["seed-demo", "--if-empty"]]
    assert steps({**two_roles, "PORTAL_ENV": "production"}) == [["db", "upgrade"], ["runtime-role"]]
    assert steps({}) == [["db", "upgrade"], ["seed-demo", "--if-empty"]]  # one role, as given
