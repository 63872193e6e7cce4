"""The background worker: claims due jobs and runs their handlers.

Run one or more with ``portal worker``. Each loop: run periodic tasks when due, claim jobs with
``FOR UPDATE SKIP LOCKED`` under a lease, run each handler (handlers are idempotent), then mark
the job succeeded, or failed with backoff (dead after ``max_attempts``).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from types import FrameType

from portal.domain.types import Actor
from portal.services import jobs, payouts, wallet
from portal.services.uow import UnitOfWork

log = logging.getLogger("portal.worker")

SYSTEM_ACTOR = Actor.system("worker")

#: Periodic tasks: (name, interval seconds, task).
PERIODIC: list[tuple[str, float, Callable[[UnitOfWork], object]]] = [
    ("expire_holds", 5.0, lambda uow: wallet.expire_holds(uow, actor=SYSTEM_ACTOR)),
    ("purge_idempotency_keys", 3600.0, lambda uow: uow.run(_purge_keys)),
]


def _purge_keys(uow: UnitOfWork) -> int:
    from portal.services.idempotency import purge_expired

    return purge_expired(uow)


class Worker:
    def __init__(
        self,
        make_uow: Callable[[], UnitOfWork],
        *,
        poll_seconds: float = 0.5,
        lease_seconds: float = 60.0,
        batch: int = 10,
        worker_id: str | None = None,
    ) -> None:
        self.make_uow = make_uow
        self.poll_seconds = poll_seconds
        self.lease_seconds = lease_seconds
        self.batch = batch
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.stopping = threading.Event()
        self._next_run: dict[str, float] = {}
        payouts.register()

    def run_periodic(self) -> None:
        now = time.monotonic()
        for name, interval, task in PERIODIC:
            if self._next_run.get(name, 0.0) <= now:
                self._next_run[name] = now + interval
                try:
                    task(self.make_uow())
                except Exception:
                    log.exception("periodic task %s failed", name)

    def run_once(self) -> int:
        """Claim and run one batch of due jobs; returns how many were claimed."""
        uow = self.make_uow()
        claimed = uow.run(
            lambda u: jobs.claim(u, self.worker_id, lease_seconds=self.lease_seconds,
                                 limit=self.batch)
        )  # fmt: skip
        for job in claimed:
            if self.stopping.is_set():
                break  # the lease runs out and another worker takes the rest
            self.run_job(job)
        return len(claimed)

    def run_job(self, job: jobs.ClaimedJob) -> str:
        handler = jobs.HANDLERS.get(job.kind)
        try:
            if handler is None:
                raise LookupError(f"no handler for job kind {job.kind!r}")
            handler(self.make_uow(), job.payload)
        except Exception as exc:
            log.warning("job %s (%s) attempt %d failed: %s", job.id, job.kind, job.attempts, exc)
            error = f"{type(exc).__name__}: {exc}"
            return self.make_uow().run(lambda u: jobs.fail(u, job, self.worker_id, error))
        self.make_uow().run(lambda u: jobs.complete(u, job, self.worker_id))
        return "succeeded"

    def serve(self) -> None:
        log.info("worker %s started", self.worker_id)
        while not self.stopping.is_set():
            self.run_periodic()
            try:
                busy = self.run_once()
            except Exception:
                log.exception("claiming jobs failed")
                busy = 0
            if not busy:
                self.stopping.wait(self.poll_seconds)
        log.info("worker %s stopped", self.worker_id)

    def install_signal_handlers(self) -> None:
        def stop(signum: int, frame: FrameType | None) -> None:
            self.stopping.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
