"""Shared helpers for the concurrency tests: start threads together, join them against a
deadline, name what each thread got, count the unit of work's retries, read rows on a plain
connection of the committing engine."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa

from portal.domain.errors import PortalError, TemporarilyUnavailable

#: How long a group of threads may run before the test fails (see ``join_all``).
JOIN_TIMEOUT = 120.0
#: How long threads told to stop (after the deadline) get to finish what they are doing.
STOP_GRACE = 30.0


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one thread got: a value or an exception (never both)."""

    value: Any = None
    error: BaseException | None = None


def run_together(
    count: int,
    work: Callable[[int], Any],
    *,
    timeout: float = JOIN_TIMEOUT,
    stop: threading.Event | None = None,
) -> list[Outcome]:
    """Run ``work(i)`` for i in range(count) on ``count`` threads released together by a
    barrier; join them all against one deadline (failing the test if any is still alive, after
    setting ``stop`` for work that loops) and return each thread's outcome, in index order."""
    barrier = threading.Barrier(count)
    outcomes: list[Outcome | None] = [None] * count

    def body(i: int) -> None:
        try:
            barrier.wait(timeout=timeout)
            outcomes[i] = Outcome(value=work(i))
        except BaseException as exc:  # recorded, asserted by the test
            outcomes[i] = Outcome(error=exc)

    threads = [
        threading.Thread(target=body, args=(i,), name=f"conc-{i}", daemon=True)
        for i in range(count)
    ]
    for thread in threads:
        thread.start()
    join_all(threads, timeout, stop=stop)
    assert all(o is not None for o in outcomes)
    return outcomes  # type: ignore[return-value]


def join_all(
    threads: Iterable[threading.Thread],
    timeout: float = JOIN_TIMEOUT,
    *,
    stop: threading.Event | None = None,
) -> None:
    """Join every thread before one deadline; fail the test naming those still alive. With
    ``stop``, late threads are first told to stop and given a grace period to finish, so the
    database is quiet again before the fixtures wipe it."""
    threads = list(threads)
    _join(threads, timeout)
    late = [t.name for t in threads if t.is_alive()]
    if late:
        if stop is not None:
            stop.set()
            _join(threads, STOP_GRACE)
        pytest.fail(f"{len(late)} thread(s) still running after {timeout:.0f}s: {late[:10]}")


def _join(threads: list[threading.Thread], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))


def error_kind(error: BaseException) -> str:
    """A short name for an exception: the portal error code, with the database error behind a
    ``try_again`` (lock timeout or deadlock) in brackets, or the driver error's class name."""
    if isinstance(error, TemporarilyUnavailable):
        cause = getattr(error.__cause__, "orig", error.__cause__)
        return f"{error.code}({type(cause).__name__})"
    if isinstance(error, PortalError):
        return error.code
    orig = getattr(error, "orig", None)
    return type(orig if orig is not None else error).__name__


def error_kinds(outcomes: Iterable[Outcome]) -> Counter[str]:
    return Counter(error_kind(o.error) for o in outcomes if o.error is not None)


class RetryLog(logging.Handler):
    """Collects the unit of work's "retrying after <error>" warnings, from every thread."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("retrying after"):
            self.messages.append(message)

    @property
    def count(self) -> int:
        return len(self.messages)


@contextmanager
def counting_retries() -> Iterator[RetryLog]:
    logger = logging.getLogger("portal.services.shared.uow")
    # A disabled or muted logger would make the count silently zero.
    assert not logger.disabled
    assert logger.isEnabledFor(logging.WARNING)
    handler = RetryLog()
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def warm_pool(engine: sa.Engine) -> None:
    """Open the pool's connections before a race. A cold pool connects one thread at a time,
    which lets the first racer finish before the others even start: no race at all."""
    size = engine.pool.size()  # type: ignore[attr-defined]
    with ExitStack() as stack:
        for _ in range(size):
            stack.enter_context(engine.connect()).exec_driver_sql("SELECT 1")


# -- reading the database on a plain connection ------------------------------------------------
def fetch_all(engine: sa.Engine, sql: str, **params: Any) -> list[sa.Row[Any]]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text(sql), params))


def fetch_one(engine: sa.Engine, sql: str, **params: Any) -> sa.Row[Any]:
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).one()


def fetch_value(engine: sa.Engine, sql: str, **params: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).scalar_one()


def wallet_account(engine: sa.Engine, card_id: int) -> sa.Row[Any]:
    """The wallet account row of a card: id, posted_minor, pending_debits_minor."""
    return fetch_one(
        engine,
        "SELECT id, posted_minor, pending_debits_minor FROM accounts WHERE card_id = :card",
        card=card_id,
    )


def negative_customer_balances(engine: sa.Engine) -> list[sa.Row[Any]]:
    """Customer accounts with a negative posted, pending or available balance (none, ever)."""
    return fetch_all(
        engine,
        "SELECT id, posted_minor, pending_debits_minor FROM accounts"
        " WHERE kind IN ('wallet', 'merchant') AND (posted_minor < 0 OR pending_debits_minor < 0"
        " OR posted_minor - pending_debits_minor < 0)",
    )
