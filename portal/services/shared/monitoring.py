"""State that monitoring reads from the database at scrape time (custom collectors are ignored
by prometheus_client's multiprocess mode, and this state is the database's anyway)."""

from __future__ import annotations

from dataclasses import dataclass

from portal.services.shared.uow import UnitOfWork


@dataclass(frozen=True, slots=True)
class QueueState:
    jobs_by_status: dict[str, int]
    #: Seconds since the oldest due job (queued, run_at passed) became due; 0 when none is due.
    oldest_due_job_seconds: float
    holds_pending: int


def queue_state(uow: UnitOfWork) -> QueueState:
    """Job counts by status, the age of the oldest due job and the pending holds, in one
    statement served by the partial indexes on jobs and holds."""
    row = uow.run(
        lambda u: u.execute(
            """
            SELECT
                (SELECT COALESCE(jsonb_object_agg(status, n), '{}')
                   FROM (SELECT status, count(*) AS n FROM jobs GROUP BY status) s) AS jobs,
                (SELECT COALESCE(EXTRACT(EPOCH FROM (:now - min(run_at))), 0) FROM jobs
                   WHERE status = 'queued' AND run_at <= :now) AS oldest,
                (SELECT count(*) FROM holds WHERE status = 'pending') AS holds
            """,
            {"now": u.now()},
        ).one()
    )
    jobs = {status: 0 for status in ("queued", "running", "succeeded", "dead")}
    jobs.update({status: int(n) for status, n in row.jobs.items()})
    return QueueState(jobs, max(float(row.oldest), 0.0), int(row.holds))
