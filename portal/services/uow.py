"""The unit of work: the only place that commits.

A ``UnitOfWork`` owns one SQLAlchemy session and one transaction. ``run(fn)`` executes a use
case inside a fresh transaction, commits it, runs the on-commit hooks, and retries the whole
thing a bounded number of times on deadlock or serialization failure (and only then).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg.errors
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from portal.domain.errors import PortalError, TemporarilyUnavailable
from portal.services.settings import ServiceSettings

T = TypeVar("T")
log = logging.getLogger(__name__)

RETRYABLE = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UnitOfWork:
    def __init__(
        self,
        session_factory: Callable[[], Session],
        settings: ServiceSettings,
        *,
        clock: Callable[[], datetime] = utcnow,
        lock_timeout_ms: int = 3000,
        max_attempts: int = 4,
    ) -> None:
        self._session_factory = session_factory
        self.settings = settings
        self.clock = clock
        self.lock_timeout_ms = lock_timeout_ms
        self.max_attempts = max_attempts
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
        stmt = sa.text(statement) if isinstance(statement, str) else statement
        return self.session.execute(stmt, params)

    def on_commit(self, hook: Callable[[], Any]) -> None:
        """Run ``hook`` after a successful commit (side effects never precede the commit)."""
        self._hooks.append(hook)

    def refuse_after_commit(self, error: PortalError) -> None:
        """Commit what was written (a failed record, its audit event, the stored response),
        then raise ``error`` to the caller."""
        self._refusal = error

    # -- lifecycle --------------------------------------------------------------------------
    def __enter__(self) -> UnitOfWork:
        if self._session is not None:
            raise RuntimeError("unit of work is already open")
        self._session = self._session_factory()
        self._session.begin()
        self._hooks, self._refusal, self._now = [], None, None
        self._session.execute(sa.text(f"SET LOCAL lock_timeout = {int(self.lock_timeout_ms)}"))
        return self

    def __exit__(self, *exc: object) -> None:
        session, self._session = self._session, None
        if session is not None:
            if session.in_transaction():
                session.rollback()
            session.close()

    def commit(self) -> None:
        # Deferred constraint triggers (ledger balance) fire here even when the transaction
        # is really a savepoint inside a test's outer transaction.
        self.session.execute(sa.text("SET CONSTRAINTS ALL IMMEDIATE"))
        self.session.commit()
        hooks, self._hooks = self._hooks, []
        for hook in hooks:
            try:
                hook()
            except Exception:  # a failed side effect must not undo a committed movement
                log.exception("on-commit hook failed")

    def run(self, fn: Callable[[UnitOfWork], T]) -> T:
        """Run ``fn`` in a transaction and commit; retry on deadlock or serialization failure."""
        for attempt in range(1, self.max_attempts + 1):
            try:
                with self:
                    result = fn(self)
                    refusal = self._refusal
                    self.commit()
                if refusal is not None:
                    raise refusal
                return result
            except DBAPIError as exc:
                if isinstance(exc.orig, RETRYABLE) and attempt < self.max_attempts:
                    log.warning("retrying after %s (attempt %d)", type(exc.orig).__name__, attempt)
                    time.sleep(0.005 * 2**attempt)
                    continue
                if isinstance(exc.orig, (psycopg.errors.LockNotAvailable, *RETRYABLE)):
                    raise TemporarilyUnavailable(
                        "the account is busy; try again with the same idempotency key"
                    ) from exc
                raise
        raise AssertionError("unreachable")  # pragma: no cover
