"""Database backstops, tested directly (Alembic's drift check ignores triggers and CHECKs)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import sessionmaker

from portal.domain.money import Money
from portal.extensions import db
from portal.services.identity import users
from portal.services.shared.uow import UnitOfWork
from portal.services.wallet import wallet
from tests.conftest import as_owner, new_key


def run(connection: sa.Connection, sql: str, **params) -> sa.Result:
    return connection.execute(sa.text(sql), params)


@pytest.fixture
def funded(make, uow):
    alice = make.user()
    card = make.card(alice, balance="100")
    other = make.card(make.user(), balance="5")
    result = wallet.transfer(
        uow, actor=alice, from_card_id=card.card_id, to_card_id=other.card_id,
        amount=Money(1000, "USD"), idempotency_key=new_key(),
    )  # fmt: skip
    return card, other, result


def savepoint_error(connection: sa.Connection, *statements: str, **params) -> DBAPIError:
    """Run statements in a savepoint that must fail; return the error, keep the test going."""
    nested = connection.begin_nested()

    def run_all() -> None:
        for statement in statements:
            run(connection, statement, **params)

    with pytest.raises(DBAPIError) as exc:
        run_all()
    nested.rollback()
    return exc.value


def test_unbalanced_journal_entry_is_refused_at_commit(connection, funded):
    card, _, _ = funded
    account = run(connection, "SELECT id FROM accounts WHERE card_id = :c", c=card.card_id).scalar()
    error = savepoint_error(
        connection,
        "INSERT INTO journal_entries (kind) VALUES ('manual')",
        "INSERT INTO postings (journal_entry_id, account_id, amount_minor, currency)"
        " VALUES (currval('journal_entries_id_seq'), :a, 500, 'USD')",
        "SET CONSTRAINTS ALL IMMEDIATE",
        a=account,
    )
    assert "does not balance" in str(error)


def test_check_is_deferred_to_commit_so_legs_may_arrive_one_by_one(app):
    """On its own connection (the test transaction has already switched to IMMEDIATE): a
    half-written entry is allowed mid-transaction and refused when constraints are checked."""
    with app.app_context():
        engine = db.engine
    with engine.connect() as conn, conn.begin() as tx:
        funding, payouts = conn.execute(
            sa.text(
                "SELECT id FROM accounts WHERE currency = 'USD' AND kind IN ('funding', 'payouts')"
                " ORDER BY kind"
            )
        ).scalars()
        leg = (
            "INSERT INTO postings (journal_entry_id, account_id, amount_minor, currency)"
            " VALUES (currval('journal_entries_id_seq'), :a, :m, 'USD')"
        )
        run(conn, "INSERT INTO journal_entries (kind) VALUES ('manual')")
        run(conn, leg, a=funding, m=-7)  # unbalanced for now: no error yet
        run(conn, leg, a=payouts, m=7)
        run(conn, "INSERT INTO journal_entries (kind) VALUES ('manual')")
        run(conn, leg, a=payouts, m=1)  # a second entry that never balances
        with pytest.raises(IntegrityError, match="does not balance"):
            run(conn, "SET CONSTRAINTS ALL IMMEDIATE")
        tx.rollback()
    with engine.connect() as conn, conn.begin() as tx:
        run(conn, "INSERT INTO journal_entries (kind) VALUES ('manual')")
        run(conn, leg, a=funding, m=-7)
        run(conn, leg, a=payouts, m=7)
        run(conn, "SET CONSTRAINTS ALL IMMEDIATE")  # balanced: accepted
        tx.rollback()


@pytest.mark.parametrize(
    "statement",
    ["UPDATE postings SET amount_minor = amount_minor * 2", "DELETE FROM postings",
     "UPDATE journal_entries SET description = 'rewritten'", "DELETE FROM journal_entries",
     "UPDATE audit_events SET action = 'nothing'", "DELETE FROM audit_events"],
)  # fmt: skip
def test_history_is_append_only(connection, funded, statement):
    """Even for the schema owner (the app's role may not even try: test_runtime_role.py)."""
    with as_owner(connection):
        error = savepoint_error(connection, statement)
    assert "append-only" in str(error)


def test_available_balance_can_never_go_negative(connection, funded):
    card, _, _ = funded
    error = savepoint_error(
        connection,
        "UPDATE accounts SET pending_debits_minor = posted_minor + 1 WHERE card_id = :c",
        c=card.card_id,
    )
    assert isinstance(error, IntegrityError) and "ck_accounts_balances" in str(error)
    error = savepoint_error(
        connection, "UPDATE accounts SET posted_minor = -1 WHERE card_id = :c", c=card.card_id
    )
    assert "ck_accounts_balances" in str(error)


def test_system_accounts_carry_no_cached_balance(connection):
    rows = run(
        connection,
        "SELECT count(*) AS n, count(posted_minor) AS cached FROM accounts"
        " WHERE kind IN ('funding', 'payouts', 'fees', 'adjustments')",
    ).one()
    assert rows.n == 4 * 41 and rows.cached == 0
    error = savepoint_error(
        connection, "UPDATE accounts SET posted_minor = 0, pending_debits_minor = 0"
        " WHERE kind = 'funding' AND currency = 'USD'",
    )  # fmt: skip
    assert "ck_accounts_balances" in str(error)


@pytest.mark.parametrize(
    ("table", "statement"),
    [("top_ups", "UPDATE top_ups SET amount_minor = 0"),
     ("transfers", "UPDATE transfers SET amount_minor = -1"),
     ("holds", "INSERT INTO holds (account_id, kind, amount_minor, currency, expires_at)"
               " SELECT id, 'x', 0, currency, now() FROM accounts WHERE kind = 'wallet' LIMIT 1"),
     ("postings", "INSERT INTO postings (journal_entry_id, account_id, amount_minor, currency)"
                  " SELECT 1, id, 0, currency FROM accounts WHERE kind = 'wallet' LIMIT 1")],
)  # fmt: skip
def test_amounts_are_positive(connection, funded, table, statement):
    error = savepoint_error(connection, statement)
    assert isinstance(error, IntegrityError), table


def test_only_withdrawals_and_top_ups_take_the_processing_state(connection, funded, uow):
    card, _, transfer = funded
    owner = run(connection, "SELECT user_id FROM cards WHERE id = :c", c=card.card_id).scalar()
    made = wallet.withdraw(
        uow, actor=users.actor_for(uow, owner), card_id=card.card_id,
        amount=Money(1000, "USD"), bank=wallet.BankAccount("Bank", "12345678", "Holder"),
        idempotency_key=new_key(),
    )  # fmt: skip
    run(connection, "UPDATE withdrawals SET status = 'processing' WHERE id = :id", id=made.id)
    error = savepoint_error(
        connection, "UPDATE withdrawals SET status = 'queued' WHERE id = :id", id=made.id
    )
    assert "ck_withdrawals_status" in str(error)
    error = savepoint_error(
        connection, "UPDATE transfers SET status = 'processing' WHERE id = :id", id=transfer.id
    )
    assert "ck_transfers_status" in str(error)
    top_up = run(connection, "SELECT id FROM top_ups WHERE card_id = :c", c=card.card_id).scalar()
    run(connection, "UPDATE top_ups SET status = 'processing' WHERE id = :id", id=top_up)
    error = savepoint_error(
        connection, "UPDATE top_ups SET status = 'queued' WHERE id = :id", id=top_up
    )
    assert "ck_top_ups_status" in str(error)


def test_posting_currency_must_match_its_account(connection, funded):
    card, _, _ = funded
    error = savepoint_error(
        connection,
        "INSERT INTO journal_entries (kind) VALUES ('manual')",
        "INSERT INTO postings (journal_entry_id, account_id, amount_minor, currency)"
        " SELECT currval('journal_entries_id_seq'), id, 5, 'EUR' FROM accounts"
        " WHERE card_id = :c",
        c=card.card_id,
    )
    assert "fk_postings_account_currency" in str(error)


def test_card_numbers_are_never_stored_in_clear(connection, funded):
    card, _, _ = funded
    rows = run(connection, "SELECT row_to_json(c) FROM cards c").scalars().all()
    assert rows
    for row in rows:
        for value in row.values():
            text = str(value)
            assert card.number not in text and card.number[-8:] not in text
            assert text != card.cvv  # no column holds a security code


def test_the_unit_of_work_checks_the_ledger_before_it_commits(connection, uow):
    """Even inside a test's savepoint, the deferred balance check runs at the unit of work's
    commit when it wrote; a read sends no SET CONSTRAINTS at all."""
    sent: list[str] = []

    def capture(conn, cursor, statement, *args) -> None:
        sent.append(statement)

    sa.event.listen(connection, "before_cursor_execute", capture)
    try:
        uow.run(lambda u: u.execute("SELECT 1").scalar())
        assert not any("SET CONSTRAINTS" in s for s in sent)

        with pytest.raises(DBAPIError, match="does not balance"):
            uow.run(unbalanced_entry)
    finally:
        sa.event.remove(connection, "before_cursor_execute", capture)


def unbalanced_entry(u) -> None:
    funding = u.execute(
        "SELECT id FROM accounts WHERE kind = 'funding' AND currency = 'USD'"
    ).scalar_one()
    u.defer("INSERT INTO journal_entries (kind) VALUES ('manual') RETURNING id", name="entry")
    u.defer(
        "INSERT INTO postings (journal_entry_id, account_id, amount_minor, currency)"
        " SELECT id, :account, 500, 'USD' FROM entry",
        name="legs", account=funding,
    )  # fmt: skip


def test_on_an_engine_the_ledger_is_checked_by_commit_itself(app) -> None:
    """Bound to an engine (as in production), a unit of work sends no SET CONSTRAINTS: the
    deferred balance check fires at COMMIT, and its refusal is an error the server answered
    (the transaction rolled back), not an unknown outcome."""
    with app.app_context():
        engine = db.engine
    factory = sessionmaker(bind=engine, expire_on_commit=False, autoflush=False)
    sent: list[str] = []

    def capture(conn, cursor, statement, *args) -> None:
        sent.append(statement)

    sa.event.listen(engine, "before_cursor_execute", capture)
    try:
        with pytest.raises(DBAPIError, match="does not balance"):
            UnitOfWork(factory, app.config["SERVICE_SETTINGS"]).run(unbalanced_entry)
    finally:
        sa.event.remove(engine, "before_cursor_execute", capture)
    assert sent and not any("SET CONSTRAINTS" in s for s in sent)
