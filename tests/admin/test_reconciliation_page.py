"""The reconciliation page: who may read it and run the check, each invariant's result, and a
planted difference shown where it breaks."""

from __future__ import annotations

import re

import sqlalchemy as sa

from portal.services.ledger import reconciliation
from portal.services.shared.uow import UnitOfWork
from tests.admin.conftest import StaffClient
from tests.conftest import Factory, as_owner
from tests.pages.conftest import PageClient, People, page_text, sign_in

INVARIANTS = ("ledger_sum", "balances", "holds", "payouts", "payments", "merchant_history",
              "top_ups")  # fmt: skip


def results(text: str) -> dict[str, str]:
    return dict(re.findall(r'data-invariant="(\w+)" data-ok="([\w/]+)"', text))


def test_outsiders_and_support_cannot_run_it(
    client: PageClient, people: People, as_staff: StaffClient, connection: sa.Connection
) -> None:
    answer = client.get("/admin/reconciliation")
    assert answer.status_code == 302 and "/auth/login" in answer.headers["Location"]
    assert client.post("/admin/reconciliation/run").status_code in (302, 400)
    sign_in(client, people.make())
    assert client.get("/admin/reconciliation").status_code == 403
    assert client.post("/admin/reconciliation/run").status_code == 403
    support, _ = as_staff("support")
    page = support.get("/admin/reconciliation")
    assert page.status_code == 200
    text = page_text(page)
    assert "has not been checked yet" in text and 'data-action="run"' not in text
    assert support.post("/admin/reconciliation/run").status_code == 403
    checks = connection.execute(sa.text("SELECT count(*) FROM ledger_checks")).scalar_one()
    assert checks == 0


def test_an_admin_runs_it_and_support_reads_the_result(
    as_staff: StaffClient, make: Factory, connection: sa.Connection
) -> None:
    make.card(make.user(), balance="20.00")
    admin, person = as_staff()
    support, _ = as_staff("support")
    assert 'data-action="run"' in page_text(admin.get("/admin/reconciliation"))

    ran = admin.post("/admin/reconciliation/run")

    assert ran.status_code == 302
    text = page_text(admin.get(ran.headers["Location"]))
    assert "Checked now: every invariant holds" in text
    assert f"run from the console by {person.email}" in text
    found = results(text)
    assert {k: found[k] for k in INVARIANTS} == dict.fromkeys(INVARIANTS, "yes")
    assert found["statistics"] in ("n/a", "yes")
    assert results(page_text(support.get("/admin/reconciliation"))) == found
    event = connection.execute(
        sa.text(
            "SELECT e.actor_id, e.outcome, e.subject_id, c.id FROM audit_events e"
            " JOIN ledger_checks c ON c.id = e.subject_id WHERE e.action = 'reconciliation.run'"
        )
    ).one()
    assert (event.actor_id, event.outcome) == (person.id, "success")


def test_a_planted_difference_shows_where_the_ledger_breaks(
    as_staff: StaffClient, make: Factory, connection: sa.Connection, uow: UnitOfWork
) -> None:
    card = make.card(make.user(), balance="20.00")
    admin, _ = as_staff()
    support, _ = as_staff("support")
    # A cached balance one cent off its postings, and pending debits without a hold.
    connection.execute(
        sa.text(
            "UPDATE accounts SET posted_minor = posted_minor + 1,"
            " pending_debits_minor = pending_debits_minor + 5 WHERE card_id = :c"
        ),
        {"c": card.card_id},
    )
    account = connection.execute(
        sa.text("SELECT id FROM accounts WHERE card_id = :c"), {"c": card.card_id}
    ).scalar_one()

    admin.post("/admin/reconciliation/run")

    text = page_text(support.get("/admin/reconciliation"))
    found = results(text)
    assert found["balances"] == "no" and found["holds"] == "no"
    assert found["ledger_sum"] == "yes" and found["payouts"] == "yes"
    assert f"<code>posted_balance</code> account {account}: expected 2000, found 2001" in text
    assert f"<code>pending_debits</code> account {account}: expected 0, found 5" in text
    assert "2 problems found" in text


def test_the_periodic_check_is_shown_as_the_workers(as_staff: StaffClient, uow: UnitOfWork) -> None:
    support, _ = as_staff("support")
    admin, _ = as_staff()
    reconciliation.record_check(uow)
    text = page_text(support.get("/admin/reconciliation"))
    assert "the worker's periodic check" in text and "every invariant held" in text
    assert "data-periodic" not in text  # the newest check is the worker's itself
    periodic = uow.read("SELECT checked_at FROM ledger_checks")[0].checked_at
    admin.post("/admin/reconciliation/run")
    text = page_text(support.get("/admin/reconciliation"))
    assert "run from the console by" in text
    assert f'The worker\'s last periodic check: <time datetime="{periodic.isoformat()}">' in text


def test_the_statistics_roll_ups_are_recomputed_with_the_check(
    as_staff: StaffClient, make: Factory, connection: sa.Connection
) -> None:
    make.card(make.user(), balance="20.00")  # a top-up today: roll-ups to recompute
    admin, _ = as_staff()
    admin.post("/admin/reconciliation/run")
    text = page_text(admin.get("/admin/reconciliation"))
    assert results(text)["statistics"] == "yes"
    assert "(UTC) equals its recomputation" in text
    with as_owner(connection):
        edited = connection.execute(
            sa.text(
                "UPDATE stat_rollups SET amount_minor = amount_minor + 7 WHERE ctid = (SELECT"
                " ctid FROM stat_rollups WHERE family = 'top_ups' AND grain = 'day'"
                " AND scope_kind = 'system' AND status = 'succeeded' LIMIT 1)"
            )
        ).rowcount
    assert edited == 1

    admin.post("/admin/reconciliation/run")

    text = page_text(admin.get("/admin/reconciliation"))
    assert results(text)["statistics"] == "no"
    assert "differ from a recomputation: day top_ups system 0 USD succeeded" in text
    assert "expected 2000 (1), found 2007 (1)" in text
    assert "the statistics roll-ups differ" in text  # the notice after the run
    assert results(text)["ledger_sum"] == "yes"  # the ledger itself is fine
