"""The unit of work: the only place that commits.

A ``UnitOfWork`` owns one SQLAlchemy session and one transaction. ``run(fn)`` executes a use
case inside a fresh transaction, commits it, runs the on-commit hooks, and retries the whole
thing a bounded number of times on deadlock or serialization failure (and only then).

Writes can be deferred (``defer``): they are sent together as one statement of data-modifying
CTEs before the next read and at commit, so a money movement costs one round trip for all its
inserts and updates. PostgreSQL gives no order between the parts of one statement, so a row may
be changed by at most one deferred part; parts refer to each other's rows by CTE name.

Business metrics are observed inside the transaction (``observe``) and published to the unit of
work's ``metrics`` sink only when it commits, or when it ends with a domain refusal (a refusal is
an outcome too); a transaction that fails otherwise, or is retried, publishes nothing. Conflicts
(deadlocks, serialization failures, lock timeouts) are counted at once, retried or not.

The row-lock timeout is a connection setting (``lock_timeout`` in the engine's connect
options, see ``portal.config``): a lock wait past it becomes ``TemporarilyUnavailable``.

A lost connection (the backend killed, PostgreSQL shut down or restarting, the server
unreachable; see ``connection_lost``) leaves the outcome unknown once a write was sent: the
transaction may have committed (the loss came with the COMMIT) or not. Such a unit of work is
never retried blindly; it raises ``OutcomeUnknown`` and the caller retries with the same
idempotency key, which replays what committed. A unit of work that sent no write (a read, or
one that lost its connection before its first write) is retried once, on a fresh connection.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg.errors
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from portal.domain.errors import OutcomeUnknown, PortalError, TemporarilyUnavailable
from portal.services.shared.settings import ServiceSettings

T = TypeVar("T")

#: Receives ``(name, value, labels)`` for each observation of a finished unit of work.
MetricsSink = Callable[[str, float, dict[str, str]], None]
log = logging.getLogger(__name__)

RETRYABLE = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)
_PARAM = re.compile(r"(?<![:\w]):(\w+)")

#: SQLSTATEs that end the session rather than the statement: administrator or crash shutdown,
#: the server starting up or shutting down, the database dropped, idle timeouts.
_LOST_STATES = frozenset({"57P01", "57P02", "57P03", "57P04", "57P05", "25P03"})
#: The message of the ``OutcomeUnknown`` a lost connection becomes.
LOST_MESSAGE = (
    "the database connection was lost, so the outcome is unknown: retry the same request with"
    " the same idempotency key"
)
#: How long to wait before the one retry of a unit of work that lost its connection unwritten.
RECONNECT_PAUSE = 0.05

# What makes a statement a write: row locks (FOR UPDATE, FOR SHARE) are removed first, since
# they change no data and retrying them is harmless.
_ROW_LOCK = re.compile(r"\bFOR\s+(?:NO\s+KEY\s+|KEY\s+)?(?:UPDATE|SHARE)\b", re.IGNORECASE)
_WRITE = re.compile(
    r"\b(?:INSERT|UPDATE|DELETE|MERGE|TRUNCATE|COPY|CALL|DO|CREATE|ALTER|DROP|GRANT|REVOKE)\b",
    re.IGNORECASE,
)


@functools.lru_cache(maxsize=1024)
def _text(sql: str) -> sa.TextClause:
    """Parsed text() constructs, reused across calls (services run the same SQL again and again)."""
    return sa.text(sql)


@functools.lru_cache(maxsize=1024)
def _writes(sql: str) -> bool:
    """Whether ``sql`` may change data. Errs towards yes: a read taken for a write only costs
    the retry after a lost connection, a write taken for a read could be repeated."""
    return _WRITE.search(_ROW_LOCK.sub(" ", sql)) is not None


def _statement_writes(statement: str | sa.Executable) -> bool:
    if isinstance(statement, str):
        return _writes(statement)
    if isinstance(statement, sa.TextClause):
        return _writes(statement.text)
    return not getattr(statement, "is_select", False)


def connection_lost(error: BaseException) -> bool:
    """Whether ``error`` (a SQLAlchemy or psycopg error) means the database connection was lost
    or could not be made: the session is gone, whatever the statement was."""
    if isinstance(error, DBAPIError):
        if error.connection_invalidated:
            return True
        error = error.orig  # type: ignore[assignment]
    if isinstance(error, psycopg.errors.Error):
        state = error.sqlstate
        if state is None:  # raised by the client: the socket closed, no server to connect to
            return isinstance(error, (psycopg.OperationalError, psycopg.InterfaceError))
        return state.startswith("08") or state in _LOST_STATES
    return False


def utcnow() -> datetime:
    return datetime.now(UTC)


class UnitOfWork:
    def __init__(
        self,
        session_factory: Callable[[], Session],
        settings: ServiceSettings,
        *,
        clock: Callable[[], datetime] = utcnow,
        max_attempts: int = 4,
        metrics: MetricsSink | None = None,
    ) -> None:
        self._session_factory = session_factory
        self.settings = settings
        self.clock = clock
        self.max_attempts = max_attempts
        self.metrics = metrics
        self._observed: list[tuple[str, float, dict[str, str]]] = []
        #: Whether deferred writes were sent (then the deferred ledger triggers fire at commit).
        self._wrote = False
        #: Whether any write (deferred or not) was sent: then a lost connection leaves the
        #: outcome unknown, and the unit of work is not retried.
        self._sent_writes = False
        #: Whether COMMIT was sent: an error from it leaves the outcome unknown.
        self._committing = False
        #: Whether any statement was sent in this transaction (see ``call``'s ``alone``).
        self._sent_any = False
        self._deferred: list[tuple[str, str]] = []
        self._deferred_params: dict[str, Any] = {}
        self._session: Session | None = None
        self._hooks: list[Callable[[], Any]] = []
        self._refusal: PortalError | None = None
        self._now: datetime | None = None

    # -- inside a transaction -------------------------------------------------------------
    @property
    def session(self) -> Session:
        if self._session is None:
            raise RuntimeError("the unit of work is not open")
        return self._session

    def now(self) -> datetime:
        """The transaction's clock reading: one instant for every row a use case writes."""
        if self._now is None:
            self._now = self.clock()
        return self._now

    def execute(self, statement: str | sa.Executable, params: Any = None) -> sa.Result[Any]:
        if self._deferred:
            self.flush()
        if not self._sent_writes and _statement_writes(statement):
            self._sent_writes = True
        self._sent_any = True
        stmt = _text(statement) if isinstance(statement, str) else statement
        return self.session.execute(stmt, params)

    def call(
        self, sql: str, params: dict[str, Any] | None = None, *, alone: bool = False
    ) -> sa.Result[Any]:
        """Run a statement that writes though it reads as a query (``SELECT ... FROM fn(...)``:
        a PL/pgSQL movement): taken as a write, for the deferred ledger checks and for a lost
        connection (the outcome is then unknown). ``alone``: the statement is the whole unit of
        work (nothing before it, nothing after it but reads of its answer); on an engine it then
        runs in autocommit, as its own transaction: no BEGIN, and a COMMIT that sends nothing.
        Its errors undo all of it, a retry runs it again, and a lost connection once it was sent
        is OutcomeUnknown, as for any unit of work that wrote. On the connection a test holds,
        it runs in the test's savepoint like any other statement."""
        if self._deferred:
            self.flush()
        if alone and not self._sent_any and isinstance(self._bind(), sa.Engine):
            # Only before the session has a connection (the option applies as it is taken).
            self.session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        self._wrote = self._sent_writes = self._sent_any = True
        return self.session.execute(_text(sql), params)

    def defer(self, sql: str, *, name: str | None = None, **params: Any) -> None:
        """Queue a data-modifying statement (INSERT/UPDATE/DELETE, optionally RETURNING) to be
        sent with the others as one statement. ``name`` lets later parts refer to its rows."""
        n = len(self._deferred)
        name = name or f"w{n}"
        if any(existing == name for existing, _ in self._deferred):
            raise ValueError(f"deferred part {name!r} exists already")
        # Give each part's parameters a unique prefix (``::type`` casts are left alone).
        sql = _PARAM.sub(
            lambda m: f":{name}__{m.group(1)}" if m.group(1) in params else m.group(0), sql
        )
        self._deferred.append((name, sql))
        self._deferred_params.update({f"{name}__{k}": v for k, v in params.items()})

    def flush(self, select: str = "SELECT 1") -> sa.Row[Any]:
        """Send the deferred writes as one statement; ``select`` may read their RETURNING rows,
        e.g. ``"SELECT (SELECT id FROM record) AS id"``."""
        parts, params = self._deferred, self._deferred_params
        self._deferred, self._deferred_params = [], {}
        self._wrote = self._wrote or bool(parts)
        self._sent_writes = self._sent_writes or bool(parts)
        self._sent_any = True
        ctes = ",\n".join(f"{name} AS ({sql})" for name, sql in parts)
        statement = f"WITH {ctes}\n{select}" if parts else select
        return self.session.execute(_text(statement), params).one()

    def on_commit(self, hook: Callable[[], Any]) -> None:
        """Run ``hook`` after a successful commit (side effects never precede the commit)."""
        self._hooks.append(hook)

    def observe(self, name: str, value: float = 1.0, **labels: str) -> None:
        """Count ``value`` on the business metric ``name`` once this transaction has ended with
        a commit or a domain refusal (see the module docstring)."""
        if self.metrics is not None:
            self._observed.append((name, value, labels))

    def _publish(self) -> None:
        observed, self._observed = self._observed, []
        for name, value, labels in observed:
            try:
                self.metrics(name, value, labels)  # type: ignore[misc]
            except Exception:  # metrics never undo or fail a use case
                log.exception("metrics sink failed for %s", name)

    def _count_now(self, name: str, **labels: str) -> None:
        """An operational count (a conflict, a retry): published at once, commit or not."""
        self._observed = [(name, 1.0, labels)] if self.metrics is not None else []
        self._publish()

    def refuse_after_commit(self, error: PortalError) -> None:
        """Commit what was written (a failed record, its audit event, the stored response),
        then raise ``error`` to the caller."""
        self._refusal = error

    def _bind(self) -> object:
        """What the sessions are bound to: an engine, or a connection whose transaction they
        join through savepoints (a test's), or None when the factory is not a sessionmaker."""
        return getattr(self._session_factory, "kw", {}).get("bind")

    def read(self, statement: str, params: dict[str, Any] | None = None) -> Sequence[sa.Row[Any]]:
        """Run one read-only statement as a transaction of its own, outside ``run``: on an
        engine, in autocommit on a pooled connection (one round trip: no BEGIN, no COMMIT); on
        the connection a test holds, inside the test's transaction. A lost connection is
        retried once, on a fresh one (a read is safe to repeat); lost twice, OutcomeUnknown."""
        bind = self._bind()
        if not isinstance(bind, (sa.Engine, sa.Connection)):
            return self.run(lambda u: u.execute(statement, params).all())
        for attempt in (1, 2):
            try:
                if isinstance(bind, sa.Connection):
                    return bind.execute(_text(statement), params).all()
                with bind.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                    return conn.execute(_text(statement), params).all()
            except DBAPIError as exc:
                if not connection_lost(exc):
                    raise
                error = type(exc.orig).__name__
                if attempt == 2:
                    log.warning("database connection lost (%s): outcome unknown", error)
                    raise OutcomeUnknown(LOST_MESSAGE) from exc
                log.warning("retrying a read after a lost connection (%s)", error)
                time.sleep(RECONNECT_PAUSE)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- lifecycle --------------------------------------------------------------------------
    def __enter__(self) -> UnitOfWork:
        if self._session is not None:
            raise RuntimeError("unit of work is already open")
        self._session = self._session_factory()
        self._session.begin()
        self._hooks, self._refusal, self._now, self._observed = [], None, None, []
        self._wrote = self._sent_writes = self._committing = self._sent_any = False
        self._deferred, self._deferred_params = [], {}
        return self

    def __exit__(self, *exc: object) -> None:
        session, self._session = self._session, None
        if session is not None:
            try:
                if session.in_transaction():
                    session.rollback()
            except DBAPIError as exc:
                # A lost connection has rolled back already; the error that lost it is the
                # one to report.
                if not connection_lost(exc):
                    raise
            finally:
                session.close()

    def commit(self) -> None:
        if self._deferred:
            self.flush()
        # Deferred constraint triggers (ledger balance) fire at COMMIT; inside a savepoint
        # (the unit of work joined a caller's transaction, as a test's) they would wait for the
        # caller's commit, so they are fired here. Postings are only ever written by deferred
        # parts, so a transaction that sent none (a read) never needs it.
        if self._wrote and isinstance(self._bind(), sa.Connection):
            self.session.execute(sa.text("SET CONSTRAINTS ALL IMMEDIATE"))
        self._committing = True
        self.session.commit()
        self._publish()
        hooks, self._hooks = self._hooks, []
        for hook in hooks:
            try:
                hook()
            except Exception:  # a failed side effect must not undo a committed movement
                log.exception("on-commit hook failed")

    def run(self, fn: Callable[[UnitOfWork], T]) -> T:
        """Run ``fn`` in a transaction and commit; retry on deadlock or serialization failure,
        and once on a lost connection if nothing was written. Raises TemporarilyUnavailable
        (a lock wait or conflicts past the retries) and OutcomeUnknown (the connection was lost
        after a write was sent: it may have committed)."""
        reconnected = False
        attempt = 0
        while attempt < self.max_attempts:
            attempt += 1
            try:
                with self:
                    try:
                        result = fn(self)
                    except PortalError:
                        self._publish()  # a refusal raised before any write is an outcome too
                        raise
                    refusal = self._refusal
                    self.commit()
                if refusal is not None:
                    raise refusal
                return result
            except DBAPIError as exc:
                error = type(exc.orig).__name__
                # An error the server answered COMMIT with (a deferred check) rolled it back.
                answered = getattr(exc.orig, "sqlstate", None) is not None
                lost = connection_lost(exc) or (self._committing and not answered)
                if lost and not isinstance(exc.orig, RETRYABLE):
                    if not self._sent_writes and not reconnected:
                        # Nothing was written: running it again on a new connection is safe.
                        log.warning("retrying after a lost connection (%s)", error)
                        reconnected = True
                        attempt -= 1
                        time.sleep(RECONNECT_PAUSE)
                        continue
                    log.warning("database connection lost (%s): outcome unknown", error)
                    raise OutcomeUnknown(LOST_MESSAGE) from exc
                if isinstance(exc.orig, RETRYABLE) and attempt < self.max_attempts:
                    log.warning("retrying after %s (attempt %d)", error, attempt)
                    self._count_now("db_conflicts", error=error, outcome="retried")
                    time.sleep(0.005 * 2**attempt)
                    continue
                if isinstance(exc.orig, (psycopg.errors.LockNotAvailable, *RETRYABLE)):
                    self._count_now("db_conflicts", error=error, outcome="gave_up")
                    raise TemporarilyUnavailable(
                        "the account is busy; try again with the same idempotency key"
                    ) from exc
                raise
        raise AssertionError("unreachable")  # pragma: no cover
