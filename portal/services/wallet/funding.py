"""The job that settles top-ups with the funding processor's answer, exactly once.

A top-up is ``pending`` until this job runs (``PORTAL_FUNDING_DELAY_SECONDS`` after it was made).
It follows the rule for every call to a processor (see ``portal.services.shared.processor``):
mark the top-up ``processing`` under its row lock and commit, renew the job's lease, ask the
processor with the top-up's public id (``tu_...``) as the idempotency key, then settle from
``processing`` only: post it from the funding account with the processor's reference, or fail
it on a decline with nothing posted. A job that finds the top-up ``processing`` (its worker died
mid-call or after it, or its lease ran out and another worker took the job) asks again with the
same key, gets the first answer, and settles once.

The demo processor declines a top-up whose amount in minor units ends in ``13``
(``funding_declined``).
"""

from __future__ import annotations

from typing import Any

from portal.domain.types import Actor, MovementResult
from portal.services.shared import jobs, processor
from portal.services.shared.uow import UnitOfWork
from portal.services.wallet.wallet import FUNDING_JOB, begin_funding, settle_funding

ACTOR = Actor.system("funding-processor")


def collect(uow: UnitOfWork, payload: dict[str, Any]) -> None:
    """The job: settle one top-up with the processor's answer, exactly once (see the module
    docstring). Raises LeaseLost when another worker holds the job (it carries on)."""
    settle(uow, int(payload["top_up_id"]))


def settle(uow: UnitOfWork, top_up_id: int) -> MovementResult | None:
    """Ask the processor about one top-up and settle it (the job's work, also what the demo's
    history and the tests' factory call to have a top-up's money at once). Returns the settled
    top-up, or None when it was settled (or refused) before."""
    order = begin_funding(uow, top_up_id=top_up_id)
    if order is None:
        return None  # settled by an earlier attempt of this job
    jobs.renew_lease(uow)
    try:
        reference = processor.funding_processor(uow).collect(
            uow, idempotency_key=order.public_id, method=order.method,
            amount_minor=order.amount.amount_minor, currency=order.amount.currency,
        )  # fmt: skip
    except processor.Declined as declined:
        return settle_funding(uow, actor=ACTOR, top_up_id=top_up_id, failure_code=declined.code)
    return settle_funding(uow, actor=ACTOR, top_up_id=top_up_id, funding_reference=reference)


def register() -> None:
    jobs.HANDLERS[FUNDING_JOB] = collect
