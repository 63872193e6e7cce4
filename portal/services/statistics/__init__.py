"""Statistics: the reference's families as figures read from roll-ups kept in the movement's
own transaction (``rollups``), and the check that they equal a recomputation (``checks``).

``statistics.recompute_check(uow, day=None | date | (first, last))`` is what the
reconciliation calls ("the statistics roll-ups equal a recomputation")."""

from portal.services.statistics.checks import (
    CheckResult,
    Difference,
    last_check,
    recompute_check,
    record_check,
)

__all__ = ["CheckResult", "Difference", "last_check", "recompute_check", "record_check"]
