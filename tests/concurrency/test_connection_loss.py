"""A lost database connection (issue 11, A6): the unit of work's backend is killed with
``pg_terminate_backend`` from another connection at a chosen moment (inside the work, as its
COMMIT is sent, or after PostgreSQL committed but before the answer arrived), or the server
cannot be reached at all.

What must hold: a unit of work that sent no write is run once more on a fresh connection and
answers; one that wrote is never run again and raises ``OutcomeUnknown`` (503 ``outcome_unknown``
with ``Retry-After`` in the JSON API, a 503 page with a retry message on the pages); the money
then either moved once, and a retry with the same idempotency key replays it, or not at all,
and the retry moves it once.

These commit for real (a killed connection cannot live inside a test's outer transaction).
"""

from __future__ import annotations

import re
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg.errors
import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import sessionmaker
from sqlalchemy.pool import NullPool

from portal import create_app
from portal.domain.errors import OutcomeUnknown
from portal.domain.money import Money
from portal.domain.types import Actor, IssuedCard
from portal.extensions import db, limiter
from portal.services.identity import tokens, users
from portal.services.shared import uow as uow_module
from portal.services.shared.uow import UnitOfWork, connection_lost
from portal.services.wallet import wallet
from portal.web import uow as web_uow
from portal.web.errors import RETRY_AFTER
from tests.api.test_auth_api import API, bearer, client_for, error_of
from tests.concurrency.helpers import counting_retries, fetch_value
from tests.conftest import Factory, new_key
from tests.pages import conftest as pages
from tests.pages.conftest import People, new_client, sign_in

pytestmark = pytest.mark.concurrency

page_config = pages.page_config  # CSRF off, fresh limits


# -- fault injection ---------------------------------------------------------------------------
def _pid(dbapi_connection: Any) -> int:
    """The backend of a pooled connection (SQLAlchemy's wrapper or psycopg's connection)."""
    raw = getattr(dbapi_connection, "dbapi_connection", dbapi_connection)
    return int(raw.info.backend_pid)


class Faults:
    """Kills the backends of ``engine``'s connections from a connection of its own, and waits
    until each is gone, so the next round trip on the killed connection fails for sure."""

    def __init__(self, engine: sa.Engine, killer: sa.Engine) -> None:
        self.engine = engine
        self.killer = killer
        self.kills = 0

    def kill(self, pid: int) -> None:
        with self.killer.connect() as conn:
            # With a timeout, pg_terminate_backend returns once the backend has exited.
            done = conn.execute(
                sa.text("SELECT pg_terminate_backend(:pid, 10000)"), {"pid": pid}
            ).scalar_one()
        assert done, f"backend {pid} did not terminate"
        self.kills += 1

    def kill_own(self, u: UnitOfWork) -> None:
        """Kill the backend of the unit of work's own connection (from inside its work)."""
        self.kill(u.execute("SELECT pg_backend_pid()").scalar_one())

    @contextmanager
    def _statements(self) -> Iterator[None]:
        """Remember each transaction's statements (``conn.info['statements']``)."""

        def remember(conn: sa.Connection, cursor: Any, statement: str, *_: Any) -> None:
            conn.info.setdefault("statements", []).append(statement)

        def forget(conn: sa.Connection) -> None:
            conn.info.pop("statements", None)

        sa.event.listen(self.engine, "before_cursor_execute", remember)
        sa.event.listen(self.engine, "rollback", forget)
        try:
            yield
        finally:
            sa.event.remove(self.engine, "before_cursor_execute", remember)
            sa.event.remove(self.engine, "rollback", forget)

    @contextmanager
    def before_commit(
        self, when: Callable[[list[str]], bool] = lambda _: True, times: int = 1
    ) -> Iterator[None]:
        """Kill the backend as COMMIT is about to be sent (the writes were sent), for the first
        ``times`` transactions whose statements satisfy ``when``: nothing commits."""
        left = [times]

        def at_commit(conn: sa.Connection) -> None:
            statements = conn.info.pop("statements", [])
            if left[0] > 0 and when(statements):
                left[0] -= 1
                self.kill(_pid(conn.connection))

        with self._statements():
            sa.event.listen(self.engine, "commit", at_commit)
            try:
                yield
            finally:
                sa.event.remove(self.engine, "commit", at_commit)

    @contextmanager
    def after_commit(
        self, monkeypatch: pytest.MonkeyPatch, when: Callable[[list[str]], bool]
    ) -> Iterator[None]:
        """For the first transaction whose statements satisfy ``when``: PostgreSQL commits it,
        then its backend is killed before the client has taken the answer in, so COMMIT ends
        with the driver's own connection error (a lost acknowledgement)."""
        dialect = self.engine.dialect
        real_commit = dialect.do_commit
        left = [1]

        def do_commit(dbapi_connection: Any) -> None:
            real_commit(dbapi_connection)
            statements = self._taken.pop(id(dbapi_connection), [])
            if left[0] > 0 and when(statements):
                left[0] -= 1
                self.kill(_pid(dbapi_connection))
                # The next read on the socket is where a lost answer shows: psycopg's
                # AdminShutdown ("terminating connection due to administrator command").
                raw = dbapi_connection.dbapi_connection
                raw.execute("SELECT 1")

        self._taken: dict[int, list[str]] = {}

        def at_commit(conn: sa.Connection) -> None:
            self._taken[id(conn.connection)] = conn.info.pop("statements", [])

        with self._statements():
            sa.event.listen(self.engine, "commit", at_commit)
            monkeypatch.setattr(dialect, "do_commit", do_commit)
            try:
                yield
            finally:
                sa.event.remove(self.engine, "commit", at_commit)

    @contextmanager
    def after_statement(
        self, monkeypatch: pytest.MonkeyPatch, match: Callable[[str], bool]
    ) -> Iterator[None]:
        """For the first statement ``match`` picks: PostgreSQL runs it (in autocommit: and
        commits it), then its backend is killed before the client has taken the answer in, so
        the statement ends with the driver's own connection error (a lost answer)."""
        dialect = self.engine.dialect
        real_execute = dialect.do_execute
        left = [1]

        def do_execute(cursor: Any, statement: str, parameters: Any, context: Any = None) -> None:
            real_execute(cursor, statement, parameters, context)
            if left[0] > 0 and match(statement):
                left[0] -= 1
                raw = cursor.connection
                self.kill(_pid(raw))
                raw.execute("SELECT 1")  # AdminShutdown, where the answer would have been

        monkeypatch.setattr(dialect, "do_execute", do_execute)
        yield

    @contextmanager
    def before_statement(self, match: Callable[[str], bool], times: int = 1) -> Iterator[None]:
        """Kill the backend just before each of the first ``times`` statements that ``match``
        is sent: that statement fails on the dead connection."""
        left = [times]

        def before(conn: sa.Connection, cursor: Any, statement: str, *_: Any) -> None:
            if left[0] > 0 and match(statement):
                left[0] -= 1
                self.kill(_pid(conn.connection))

        sa.event.listen(self.engine, "before_cursor_execute", before)
        try:
            yield
        finally:
            sa.event.remove(self.engine, "before_cursor_execute", before)


@pytest.fixture
def faults(app: Flask, committing_engine: sa.Engine) -> Iterator[Faults]:
    killer = sa.create_engine(app.config["SQLALCHEMY_DATABASE_URI"], poolclass=NullPool)
    try:
        yield Faults(committing_engine, killer)
    finally:
        killer.dispose()


def sends_transfer(statement: str) -> bool:
    """The one statement a transfer is (``portal_transfer``, migration 0030)."""
    return "portal_transfer(" in statement


def cut_transfer(faults: Faults, monkeypatch: pytest.MonkeyPatch, moment: str) -> Any:
    """A transfer's connection lost before it committed, or after (its answer lost). A
    transfer is one statement in autocommit (issue 12), so there is no moment between its
    writes and its commit: "before" kills the backend as the statement is sent, "after" once
    PostgreSQL has run and committed it, before the client takes the answer in."""
    if moment == "before":
        return faults.before_statement(sends_transfer)
    return faults.after_statement(monkeypatch, sends_transfer)


def wrote_key(statements: list[str]) -> bool:
    return any("INSERT INTO idempotency_keys" in s for s in statements)


# -- the unit of work --------------------------------------------------------------------------
def count_users(u: UnitOfWork) -> int:
    return int(u.execute("SELECT count(*) FROM users").scalar_one())


def insert_key(u: UnitOfWork, key: str, *, deferred: bool) -> None:
    sql = (
        "INSERT INTO idempotency_keys (scope, key, request_hash, created_at, expires_at)"
        " VALUES ('tests', :key, '\\x00', :now, :now)"
    )
    if deferred:
        u.defer(sql, key=key, now=u.now())
    else:
        u.execute(sql, {"key": key, "now": u.now()})


def keys_named(engine: sa.Engine, key: str) -> int:
    return fetch_value(engine, "SELECT count(*) FROM idempotency_keys WHERE key = :k", k=key)


def test_a_read_that_loses_its_connection_in_its_work_runs_again_and_answers(
    real_uow: Callable[[], UnitOfWork], faults: Faults
) -> None:
    Factory(real_uow()).user()
    calls: list[int] = []

    def read(u: UnitOfWork) -> int:
        calls.append(1)
        if len(calls) == 1:
            faults.kill_own(u)
        return count_users(u)

    with counting_retries() as retries:
        assert real_uow().run(read) == 1
    assert len(calls) == 2 and faults.kills == 1
    assert retries.messages == ["retrying after a lost connection (AdminShutdown)"]


def test_a_read_that_loses_its_connection_at_commit_runs_again_and_answers(
    real_uow: Callable[[], UnitOfWork], faults: Faults
) -> None:
    Factory(real_uow()).user()
    calls: list[int] = []

    def read(u: UnitOfWork) -> int:
        calls.append(1)
        return count_users(u)

    reads_users = lambda statements: any("FROM users" in s for s in statements)  # noqa: E731
    with faults.before_commit(reads_users):
        assert real_uow().run(read) == 1
    assert len(calls) == 2 and faults.kills == 1


def test_a_read_that_loses_its_connection_twice_is_outcome_unknown(
    real_uow: Callable[[], UnitOfWork], faults: Faults
) -> None:
    calls: list[int] = []

    def read(u: UnitOfWork) -> int:
        calls.append(1)
        faults.kill_own(u)
        return count_users(u)

    with pytest.raises(OutcomeUnknown) as raised:
        real_uow().run(read)
    assert len(calls) == 2  # one retry, not more
    assert (raised.value.code, raised.value.kind) == ("outcome_unknown", "api_error")
    assert isinstance(raised.value.__cause__, DBAPIError)
    assert isinstance(raised.value.__cause__.orig, psycopg.errors.AdminShutdown)


@pytest.mark.parametrize("deferred", [False, True], ids=["sent", "deferred"])
def test_a_unit_of_work_that_wrote_and_lost_its_connection_is_not_run_again(
    real_uow: Callable[[], UnitOfWork], committing_engine: sa.Engine, faults: Faults,
    deferred: bool,
) -> None:  # fmt: skip
    key = new_key()
    calls: list[int] = []

    def write_then_read(u: UnitOfWork) -> int:
        calls.append(1)
        insert_key(u, key, deferred=deferred)
        u.flush()  # a deferred write is sent before the next read anyway
        faults.kill_own(u)
        return count_users(u)

    with pytest.raises(OutcomeUnknown):
        real_uow().run(write_then_read)
    assert len(calls) == 1
    assert keys_named(committing_engine, key) == 0  # it had not committed


def test_a_pooled_connection_that_died_idle_is_replaced_before_it_is_used(
    real_uow: Callable[[], UnitOfWork], committing_engine: sa.Engine, faults: Faults,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """No ping per checkout (``pool_pre_ping`` is off): a connection that sat idle past
    ``IDLE_PING_SECONDS`` is checked first (``portal.web.uow.ping_when_idle``), so one whose
    backend died meanwhile is replaced, and even a unit of work that writes first runs once."""
    web_uow.ping_when_idle(committing_engine)
    monkeypatch.setattr(web_uow, "IDLE_PING_SECONDS", 0.0)
    with committing_engine.connect() as conn:
        dead = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
    faults.kill(dead)
    key = new_key()

    def write(u: UnitOfWork) -> int:
        insert_key(u, key, deferred=False)
        return int(u.execute("SELECT pg_backend_pid()").scalar_one())

    assert real_uow().run(write) != dead
    assert keys_named(committing_engine, key) == 1


def test_a_write_whose_commit_is_cut_off_is_outcome_unknown_and_nothing_committed(
    real_uow: Callable[[], UnitOfWork], committing_engine: sa.Engine, faults: Faults
) -> None:
    key = new_key()
    calls: list[int] = []

    def write(u: UnitOfWork) -> None:
        calls.append(1)
        insert_key(u, key, deferred=True)

    with faults.before_commit(wrote_key), pytest.raises(OutcomeUnknown):
        real_uow().run(write)
    assert (len(calls), faults.kills) == (1, 1)
    assert keys_named(committing_engine, key) == 0


def test_a_write_whose_commit_answer_is_lost_is_outcome_unknown_though_it_committed(
    real_uow: Callable[[], UnitOfWork], committing_engine: sa.Engine, faults: Faults,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    key = new_key()
    calls: list[int] = []

    def write(u: UnitOfWork) -> None:
        calls.append(1)
        insert_key(u, key, deferred=True)

    with faults.after_commit(monkeypatch, wrote_key), pytest.raises(OutcomeUnknown) as raised:
        real_uow().run(write)
    assert (len(calls), faults.kills) == (1, 1)
    assert keys_named(committing_engine, key) == 1  # committed: that is why nothing is rerun
    assert connection_lost(raised.value.__cause__)  # type: ignore[arg-type]


def test_an_unreachable_database_is_tried_twice_then_outcome_unknown(app: Flask) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    engine = sa.create_engine(
        f"postgresql+psycopg://postgres@127.0.0.1:{port}/nowhere",
        connect_args={"connect_timeout": 3},
    )
    calls: list[int] = []

    def read(u: UnitOfWork) -> int:
        calls.append(1)
        return count_users(u)

    factory = sessionmaker(bind=engine, expire_on_commit=False, autoflush=False)
    try:
        with pytest.raises(OutcomeUnknown) as raised:
            UnitOfWork(factory, app.config["SERVICE_SETTINGS"]).run(read)
    finally:
        engine.dispose()
    assert len(calls) == 2
    assert isinstance(raised.value.__cause__, DBAPIError)
    assert raised.value.__cause__.orig.sqlstate is None  # refused by the client's own socket


def test_a_statement_timeout_is_not_a_lost_connection(
    real_uow: Callable[[], UnitOfWork],
) -> None:
    calls: list[int] = []

    def slow(u: UnitOfWork) -> None:
        calls.append(1)
        u.execute("SET LOCAL statement_timeout = 50")
        u.execute("SELECT pg_sleep(2)")

    with pytest.raises(DBAPIError) as raised:
        real_uow().run(slow)
    assert isinstance(raised.value.orig, psycopg.errors.QueryCanceled)
    assert len(calls) == 1 and not connection_lost(raised.value)


@pytest.mark.parametrize(
    ("sqlstate", "lost"),
    [
        ("57P01", True),  # admin shutdown: pg_terminate_backend, a fast shutdown
        ("57P02", True),  # crash shutdown
        ("57P03", True),  # cannot connect now: starting up or shutting down
        ("08006", True),  # connection failure
        ("08003", True),  # connection does not exist
        ("25P03", True),  # idle-in-transaction timeout ends the session
        ("57014", False),  # statement timeout: the statement failed, the session lives
        ("55P03", False),  # lock timeout: TemporarilyUnavailable, as before
        ("40P01", False),  # deadlock: retried as before
        ("23505", False),  # unique violation
    ],
)
def test_which_server_errors_lose_the_connection(sqlstate: str, lost: bool) -> None:
    error = psycopg.errors.lookup(sqlstate)("from the server")
    assert connection_lost(error) is lost
    wrapped = DBAPIError("SELECT 1", None, error, connection_invalidated=False)
    assert connection_lost(wrapped) is lost
    # Whatever the error, SQLAlchemy's own verdict that the connection is gone wins.
    assert connection_lost(DBAPIError("SELECT 1", None, error, connection_invalidated=True))


@pytest.mark.parametrize(
    ("sql", "writes"),
    [
        ("SELECT id FROM users WHERE id = :id", False),
        ("SELECT id, updated_at, deleted FROM cards WHERE id = :id FOR NO KEY UPDATE", False),
        ("SELECT id FROM accounts ORDER BY id FOR UPDATE", False),
        ("select id from jobs for share skip locked", False),
        ("UPDATE users SET name = :n WHERE id = :id", True),
        ("WITH w AS (INSERT INTO audit_events (x) VALUES (1) RETURNING id) SELECT 1", True),
        ("delete from user_tokens where id = :id", True),
        ("SELECT id FROM t FOR UPDATE; UPDATE t SET x = 1", True),
    ],
)
def test_writes_are_told_from_reads(sql: str, writes: bool) -> None:
    assert uow_module._writes(sql) is writes


# -- the money, through the service ------------------------------------------------------------
def own_cards(real_uow: Callable[[], UnitOfWork]) -> tuple[Actor, IssuedCard, IssuedCard]:
    make = Factory(real_uow())
    alice = make.user()
    return alice, make.card(alice, balance="100"), make.card(alice)


def posted(engine: sa.Engine, card: IssuedCard) -> int:
    sql = "SELECT posted_minor FROM accounts WHERE card_id = :card"
    return int(fetch_value(engine, sql, card=card.card_id))


def transfers(engine: sa.Engine) -> int:
    return int(fetch_value(engine, "SELECT count(*) FROM transfers"))


@pytest.mark.parametrize("moment", ["before", "after"])
def test_a_transfer_cut_off_at_commit_moves_money_once_when_retried_with_its_key(
    real_uow: Callable[[], UnitOfWork], committing_engine: sa.Engine, faults: Faults,
    monkeypatch: pytest.MonkeyPatch, moment: str,
) -> None:  # fmt: skip
    alice, source, dest = own_cards(real_uow)
    key = new_key()

    def send() -> Any:
        return wallet.transfer(
            real_uow(), actor=alice, from_card_id=source.card_id, to_card_id=dest.card_id,
            amount=Money.of_major("25", "USD"), idempotency_key=key,
        )  # fmt: skip

    fault = cut_transfer(faults, monkeypatch, moment)
    with fault, pytest.raises(OutcomeUnknown):
        send()
    committed = moment == "after"
    assert transfers(committing_engine) == int(committed)
    assert posted(committing_engine, dest) == (2500 if committed else 0)

    again = send()

    assert again.replayed is committed  # a committed transfer is replayed, never repeated
    assert transfers(committing_engine) == 1
    assert (posted(committing_engine, source), posted(committing_engine, dest)) == (7500, 2500)


# -- the JSON API and the pages, on real commits -----------------------------------------------
@pytest.fixture
def live(app: Flask, committing_engine: sa.Engine) -> Iterator[Flask]:
    """The app's units of work (and its db.session) on the committing engine."""
    with app.app_context():
        engines = db._app_engines[app]
    original = engines[None]
    engines[None] = committing_engine
    app.extensions["portal.session_factory"] = sessionmaker(
        bind=committing_engine, expire_on_commit=False, autoflush=False
    )
    limiter.reset()
    try:
        yield app
    finally:
        engines[None] = original
        app.extensions["portal.session_factory"] = None
        limiter.reset()


def token_of(real_uow: Callable[[], UnitOfWork], actor: Actor) -> dict[str, str]:
    assert actor.id is not None
    return bearer(tokens.issue_tokens(real_uow(), user_id=actor.id).access_token)


def post_transfer(
    api: FlaskClient, headers: dict[str, str], source: IssuedCard, dest: IssuedCard, key: str
) -> Any:
    body = {"from_card": source.public_id, "to_card": dest.public_id, "amount": 2500,
            "currency": "usd"}  # fmt: skip
    return api.post(f"{API}/transfers", json=body, headers={**headers, "Idempotency-Key": key})


def assert_outcome_unknown(response: Any) -> None:
    error = error_of(response, 503)
    assert (error["type"], error["code"]) == ("api_error", "outcome_unknown")
    assert "the outcome is unknown: retry with the same Idempotency-Key" in error["message"]
    assert error["request_id"] == response.headers["X-Request-ID"]
    assert response.headers["Retry-After"] == str(RETRY_AFTER)


@pytest.mark.parametrize("moment", ["before", "after"])
def test_the_api_answers_503_outcome_unknown_and_a_retry_with_the_key_moves_money_once(
    live: Flask, real_uow: Callable[[], UnitOfWork], committing_engine: sa.Engine,
    faults: Faults, monkeypatch: pytest.MonkeyPatch, moment: str,
) -> None:  # fmt: skip
    alice, source, dest = own_cards(real_uow)
    api, headers, key = client_for(live), token_of(real_uow, alice), new_key()
    fault = cut_transfer(faults, monkeypatch, moment)

    with fault:
        lost = post_transfer(api, headers, source, dest, key)

    assert faults.kills == 1
    assert_outcome_unknown(lost)
    committed = moment == "after"
    assert transfers(committing_engine) == int(committed)
    retried = post_transfer(api, headers, source, dest, key)
    assert retried.status_code == 201, retried.get_data(as_text=True)
    assert (retried.headers.get("Idempotent-Replayed") == "true") is committed
    assert transfers(committing_engine) == 1
    assert (posted(committing_engine, source), posted(committing_engine, dest)) == (7500, 2500)
    assert retried.get_json()["id"] == fetch_value(
        committing_engine, "SELECT public_id FROM transfers"
    )


def test_an_api_read_that_loses_its_connection_is_retried_and_answers(
    live: Flask, real_uow: Callable[[], UnitOfWork], faults: Faults
) -> None:
    alice, source, _ = own_cards(real_uow)
    api, headers = client_for(live), token_of(real_uow, alice)
    balance_read = lambda sql: "pending_debits_minor" in sql and "JOIN cards" in sql  # noqa: E731

    with faults.before_statement(balance_read):
        response = api.get(f"{API}/cards/{source.public_id}/balance", headers=headers)

    assert faults.kills == 1
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["posted"] == 10000


def test_an_api_read_that_loses_its_connection_twice_is_503(
    live: Flask, real_uow: Callable[[], UnitOfWork], faults: Faults
) -> None:
    alice, source, _ = own_cards(real_uow)
    api, headers = client_for(live), token_of(real_uow, alice)
    balance_read = lambda sql: "pending_debits_minor" in sql and "JOIN cards" in sql  # noqa: E731

    with faults.before_statement(balance_read, times=2):
        response = api.get(f"{API}/cards/{source.public_id}/balance", headers=headers)

    assert faults.kills == 2
    assert_outcome_unknown(response)


def page_text(response: Any) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", response.get_data(as_text=True)))


def transfer_form(source: IssuedCard, dest: IssuedCard, key: str) -> dict[str, str]:
    return {"idempotency_key": key, "step": "confirm", "card_id": source.public_id,
            "destination": "own", "to_card_id": dest.public_id, "amount": "25"}  # fmt: skip


RETRY_MESSAGE = "we cannot tell whether it went through"


@pytest.mark.parametrize("htmx", [False, True], ids=["page", "htmx"])
def test_a_page_whose_transfer_lost_its_connection_answers_a_503_retry_page(
    live: Flask, committing_engine: sa.Engine, faults: Faults, htmx: bool
) -> None:
    people = People(live, None)  # type: ignore[arg-type]
    person = people.make()
    client = new_client(live)
    assert sign_in(client, person).status_code == 302
    make = Factory(people.uow())
    actor = users.actor_for(people.uow(), person.id)
    source, dest = make.card(actor, balance="100"), make.card(actor)
    key = uuid.uuid4().hex
    headers = {"HX-Request": "true"} if htmx else {}

    with faults.before_statement(sends_transfer):
        lost = client.post("/wallet/transfer", data=transfer_form(source, dest, key),
                           headers=headers)  # fmt: skip

    assert faults.kills == 1
    assert lost.status_code == 503
    assert lost.mimetype == "text/html"
    assert lost.headers["Retry-After"] == str(RETRY_AFTER)
    text = page_text(lost)
    assert RETRY_MESSAGE in text and "Traceback" not in text
    assert "Idempotency-Key" not in text  # the API's words, not a page's
    if htmx:
        assert 'hx-swap-oob="true"' in lost.get_data(as_text=True)
    else:
        assert "503" in text
    assert transfers(committing_engine) == 0
    # The same form again (its key unchanged) moves the money, once.
    again = client.post("/wallet/transfer", data=transfer_form(source, dest, key))
    assert again.status_code == 303  # see other: the receipt (post/redirect/get)
    client.post("/wallet/transfer", data=transfer_form(source, dest, key))
    assert transfers(committing_engine) == 1
    assert (posted(committing_engine, source), posted(committing_engine, dest)) == (7500, 2500)


def test_a_page_read_that_loses_its_connection_is_retried_and_shows(
    live: Flask, faults: Faults
) -> None:
    people = People(live, None)  # type: ignore[arg-type]
    person = people.make()
    client = new_client(live)
    assert sign_in(client, person).status_code == 302
    cards_read = lambda sql: "pending_debits_minor" in sql and "FROM cards" in sql  # noqa: E731

    with faults.before_statement(cards_read):
        page = client.get("/wallet")

    assert faults.kills == 1
    assert page.status_code == 200


def test_a_connection_lost_outside_a_unit_of_work_is_503_not_500(
    app: Flask, committing_engine: sa.Engine, faults: Faults
) -> None:
    """A view reading through the engine itself (no unit of work, no retry): the page and the
    API both answer 503 ``outcome_unknown`` instead of a 500."""
    probe = create_app({**app.config})
    with probe.app_context():
        probe_engines = db._app_engines[probe]
    probe_engines[None].dispose()
    probe_engines[None] = committing_engine

    def lost() -> str:
        with committing_engine.connect() as conn:
            faults.kill(conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())
            conn.execute(sa.text("SELECT 1"))
        return "unreachable"

    probe.add_url_rule("/_probe/lost", "probe_page", lost)
    probe.add_url_rule(f"{API}/_probe/lost", "probe_api", lost)
    client = probe.test_client()

    page = client.get("/_probe/lost")
    api = client.get(f"{API}/_probe/lost")

    assert page.status_code == 503 and page.mimetype == "text/html"
    assert RETRY_MESSAGE in page_text(page) and page.headers["Retry-After"] == str(RETRY_AFTER)
    assert_outcome_unknown(api)
