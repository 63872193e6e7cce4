"""The recomputation: roll-ups of a known dataset equal a recomputation from the movements and
postings; an edited roll-up row (day or month), a movement written with the triggers off and a
deleted roll-up are each found and named; the nightly task records its result; the runtime role
cannot edit a roll-up."""

from __future__ import annotations

from datetime import date

import pytest
import sqlalchemy as sa

from portal.services import statistics
from portal.services.statistics import checks
from tests.conftest import as_owner
from tests.statistics.conftest import Dataset, at, build

WHOLE = (date(2025, 12, 1), date(2026, 3, 31))


@pytest.fixture
def data(uow, make, clock) -> Dataset:
    return build(uow, make, clock)


def test_the_dataset_recomputes_equal(uow, data):
    result = statistics.recompute_check(uow, WHOLE)
    assert result.ok, result.differences
    assert result.by_family == dict.fromkeys(
        ("top_ups", "transfers", "withdrawals", "payments", "refunds", "balances"), 0
    )


def test_an_edited_day_roll_up_is_found(uow, connection, data):
    with as_owner(connection):
        connection.execute(sa.text(
            "UPDATE stat_rollups SET amount_minor = amount_minor + 1 WHERE ctid = (SELECT ctid"
            " FROM stat_rollups WHERE family = 'payments' AND scope_kind = 'merchant'"
            " AND grain = 'day' AND period = '2026-01-03' AND status = 'succeeded' LIMIT 1)"
        ))  # fmt: skip
    result = statistics.recompute_check(uow, date(2026, 1, 3))
    assert not result.ok
    assert result.by_family["payments"] == 2  # the day against the movements, the month
    day = next(d for d in result.differences if d.grain == "day")
    assert (day.family, day.scope_kind, day.period, day.status) == (
        "payments", "merchant", date(2026, 1, 3), "succeeded")  # fmt: skip
    assert day.actual_amount == day.expected_amount + 1
    month = next(d for d in result.differences if d.grain == "month")
    assert month.period == date(2026, 1, 1)
    # Another day of the same month agrees with its movements; the month still does not.
    other = statistics.recompute_check(uow, date(2026, 1, 4))
    assert [d.grain for d in other.differences] == ["month"]


def test_an_edited_month_roll_up_is_found(uow, connection, data):
    with as_owner(connection):
        connection.execute(sa.text(
            "UPDATE stat_rollups SET count = count + 3 WHERE ctid = (SELECT ctid"
            " FROM stat_rollups WHERE family = 'top_ups' AND scope_kind = 'system'"
            " AND grain = 'month' AND period = '2026-03-01' LIMIT 1)"
        ))  # fmt: skip
    result = statistics.recompute_check(uow, date(2026, 3, 1))
    assert [(d.grain, d.family, d.actual_count - d.expected_count)
            for d in result.differences] == [("month", "top_ups", 3)]  # fmt: skip


def test_a_deleted_roll_up_and_a_movement_behind_the_triggers_back_are_found(uow, connection, data):
    with as_owner(connection):
        connection.execute(sa.text(
            "DELETE FROM stat_rollups WHERE family = 'withdrawals' AND grain = 'day'"
            " AND period = '2026-02-14' AND scope_kind = 'card'"
        ))  # fmt: skip
        connection.execute(sa.text("ALTER TABLE transfers DISABLE TRIGGER transfers_stat_update"))
        connection.execute(sa.text(
            "UPDATE transfers SET status = 'failed' WHERE id = (SELECT min(id) FROM transfers"
            " WHERE status = 'succeeded')"
        ))  # fmt: skip
        connection.execute(sa.text("ALTER TABLE transfers ENABLE TRIGGER transfers_stat_update"))
    result = statistics.recompute_check(uow, WHOLE)
    families = result.by_family
    assert families["withdrawals"] >= 3  # every status of that day's card rows, and the months
    assert families["transfers"] >= 6  # succeeded and failed of three scopes
    assert families["payments"] == families["balances"] == 0


def test_the_nightly_task_records_yesterday(uow, connection, clock, data):
    at(clock, 2026, 1, 4)
    first = checks.record_check(uow)
    assert (first.first_day, first.ok) == (date(2026, 1, 3), True)
    summary = checks.last_check(uow)
    assert summary is not None
    assert (summary.first_day, summary.differences) == (date(2026, 1, 3), 0)
    with as_owner(connection):
        connection.execute(sa.text(
            "UPDATE stat_rollups SET amount_minor = amount_minor - 5 WHERE ctid = (SELECT ctid"
            " FROM stat_rollups WHERE family = 'refunds' AND grain = 'day'"
            " AND period = '2026-01-03' LIMIT 1)"
        ))  # fmt: skip
    again = checks.record_check(uow)
    assert not again.ok
    summary = checks.last_check(uow)
    assert summary is not None and summary.differences == len(again.differences) == 2
    details = uow.run(lambda u: u.execute(
        "SELECT details FROM stat_checks ORDER BY id DESC LIMIT 1").scalar_one())  # fmt: skip
    assert {d["family"] for d in details} == {"refunds"}


def test_the_runtime_role_cannot_write_roll_ups(uow, data):
    for sql in ("UPDATE stat_rollups SET amount_minor = 0",
                "DELETE FROM stat_rollups",
                "INSERT INTO stat_rollups (family, scope_kind, scope_id, grain, period,"
                " currency, status, method, slot) VALUES ('payments', 'system', 0, 'day',"
                " '2026-01-01', 'USD', 'succeeded', '', 0)"):  # fmt: skip
        with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
            uow.run(lambda u, sql=sql: u.execute(sql))
