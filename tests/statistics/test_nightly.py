"""The worker's statistics check: a periodic task that recomputes the previous UTC day, records
it, logs each difference as an error and exports the count (the alert's gauge)."""

from __future__ import annotations

import logging

import sqlalchemy as sa

from portal.worker import Worker, WorkerMetrics
from tests.conftest import as_owner
from tests.statistics.conftest import at, build


def gauge(metrics: WorkerMetrics, name: str) -> float:
    return metrics.registry.get_sample_value(name) or 0.0


def test_the_worker_checks_yesterday_and_exports_the_differences(
    uow, make, clock, connection, caplog
):
    build(uow, make, clock)
    metrics = WorkerMetrics()
    worker = Worker(lambda: uow, metrics=metrics)
    assert "statistics_check" in [name for name, _, _ in worker.periodic]
    at(clock, 2026, 2, 15)  # the day after the February withdrawals
    result = worker.check_statistics(uow)
    assert result.first_day.isoformat() == "2026-02-14" and result.ok
    assert gauge(metrics, "portal_statistics_rollup_differences") == 0
    assert gauge(metrics, "portal_statistics_last_check_timestamp_seconds") > 0
    with as_owner(connection):
        connection.execute(sa.text(
            "UPDATE stat_rollups SET amount_minor = amount_minor + 7 WHERE ctid = (SELECT ctid"
            " FROM stat_rollups WHERE family = 'withdrawals' AND scope_kind = 'system'"
            " AND grain = 'day' AND period = '2026-02-14' AND status = 'failed' LIMIT 1)"
        ))  # fmt: skip
    with caplog.at_level(logging.ERROR, logger="portal.statistics"):
        again = worker.check_statistics(uow)
    assert not again.ok
    assert gauge(metrics, "portal_statistics_rollup_differences") == 2  # the day, the month
    logged = [r.getMessage() for r in caplog.records if r.name == "portal.statistics"]
    assert len(logged) == 2
    assert (
        "withdrawals system:0 USD failed - 2026-02-14 expected 3000 (1) found 3007 (1)"
        in (logged[0])
    )
    rows = uow.run(lambda u: u.execute(
        "SELECT first_day::text, differences FROM stat_checks ORDER BY id").all())  # fmt: skip
    assert [tuple(r) for r in rows] == [("2026-02-14", 0), ("2026-02-14", 2)]
