"""The balance and payouts pages through the Flask test client: available and pending per
currency, the bank account set by owners only, "Pay out now" acting once per form, the payout's
report page and CSV whose rows sum to the payout, read-only for viewers and staff, 404 for
strangers, labelled inputs, and the ledger check after."""

from __future__ import annotations

import csv
import io
import re
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import sqlalchemy as sa

from portal.domain.money import Money
from portal.services.ledger import reconciliation
from tests.merchants import test_dashboard_pages as dashboard
from tests.merchants.test_dashboard_pages import World, _field, _staff

page_config = dashboard.page_config
client = dashboard.client
people = dashboard.people
outbox = dashboard.outbox
world = dashboard.world

BANK = {"bank_name": "Bank Mandiri", "account_number": "1234 5678 9012",
        "account_holder": "Kopi Kenangan Pte"}  # fmt: skip


def visible(response) -> str:
    """The page's text without tags, spaces collapsed."""
    return " ".join(re.sub(r"<[^>]+>", " ", response.get_data(as_text=True)).split())


def settled(world: World, clock, major: str):
    clock.now = datetime.now(UTC) - timedelta(days=3)
    try:
        return world.pay(major, description="Settled")
    finally:
        clock.now = datetime.now(UTC)


def routes(mid: str) -> list[tuple[str, str]]:
    return [
        ("GET", f"/merchant/{mid}/balance"),
        ("POST", f"/merchant/{mid}/balance/bank_account"),
        ("POST", f"/merchant/{mid}/payouts"),
    ]


def test_owner_sets_the_bank_pays_out_once_and_reads_the_report(world: World, clock, connection):
    old = settled(world, clock, "100")
    owner = world.as_client(world.owner)
    page = owner.get(f"/merchant/{world.mid}/balance")
    assert page.status_code == 200
    text = visible(page)
    available = (old.amount - old.fee) / 100
    shown = Money(old.amount - old.fee, "USD").format()
    assert f"Available {shown}" in text
    assert "No bank account yet" in text
    assert re.search(r"<button[^>]*disabled[^>]*>Pay out", page.get_data(as_text=True))

    bad = owner.post(f"/merchant/{world.mid}/balance/bank_account",
                     data=BANK | {"account_number": "12!@#$%"})  # fmt: skip
    assert bad.status_code == 422
    assert "letters or digits" in visible(bad)
    done = owner.post(f"/merchant/{world.mid}/balance/bank_account", data=BANK)
    assert done.status_code == 302
    page = owner.get(f"/merchant/{world.mid}/balance")
    assert "Payouts go to Bank Mandiri ····9012" in visible(page)
    assert "1234 5678 9012" not in page.get_data(as_text=True)

    key = _field(page, "po-USD-idempotency_key")
    form = {"po-USD-idempotency_key": key, "currency": "USD"}
    first = owner.post(f"/merchant/{world.mid}/payouts", data=form)
    assert first.status_code == 302, visible(first)
    again = owner.post(f"/merchant/{world.mid}/payouts", data=form)  # a double submit
    assert again.status_code == 302 and again.headers["Location"] == first.headers["Location"]
    assert connection.execute(sa.text("SELECT count(*) FROM payouts")).scalar_one() == 1
    report = owner.get(first.headers["Location"], follow_redirects=True)
    text = visible(report)
    assert report.status_code == 200
    assert f"Paying out {shown} to Bank Mandiri ····9012." in text
    assert "Transactions in this payout" in text and old.id in text
    po = first.headers["Location"].rsplit("/", 1)[-1]
    csv_answer = owner.get(f"/merchant/{world.mid}/payouts/{po}/report.csv")
    assert csv_answer.mimetype == "text/csv"
    assert po in csv_answer.headers["Content-Disposition"]
    lines = list(csv.reader(io.StringIO(csv_answer.get_data(as_text=True))))
    assert sum(Decimal(line[-1]) for line in lines[10:]) == Decimal(f"{available:.2f}")
    # Nothing is left: the next payout is refused with the reason, and nothing is made.
    page = owner.get(f"/merchant/{world.mid}/balance")
    refused = owner.post(
        f"/merchant/{world.mid}/payouts",
        data={"po-USD-idempotency_key": _field(page, "po-USD-idempotency_key"), "currency": "USD"},
    )
    assert refused.status_code == 422
    assert "below the minimum payout" in visible(refused)
    assert connection.execute(sa.text("SELECT count(*) FROM payouts")).scalar_one() == 1
    result = reconciliation.reconcile(world.uow)
    assert result.ok, result.violations


def test_viewers_and_staff_read_and_strangers_get_404(world: World, client, people, connection):
    viewer = world.as_client(world.viewer)
    page = viewer.get(f"/merchant/{world.mid}/balance")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert '/payouts"' not in html and "/bank_account" not in html
    assert "an owner of Kopi Kenangan adds it" in visible(page)
    for method, path in routes(world.mid):
        if method == "POST":
            data = BANK | {"po-USD-idempotency_key": uuid.uuid4().hex, "currency": "USD"}
            assert viewer.post(path, data=data).status_code == 403, path
    developer = world.as_client(world.developer)
    assert developer.post(f"/merchant/{world.mid}/balance/bank_account",
                          data=BANK).status_code == 403  # fmt: skip
    stranger = world.as_client(world.stranger)
    for method, path in routes(world.mid):
        assert stranger.open(path, method=method, data=BANK).status_code == 404, path
    assert stranger.get(f"/merchant/{world.mid}/payouts/po_x").status_code == 404
    _staff(people, client)
    staff_page = client.get(f"/merchant/{world.mid}/balance")
    assert staff_page.status_code == 200
    assert "/bank_account" not in staff_page.get_data(as_text=True)
    assert (
        connection.execute(
            sa.text("SELECT count(*) FROM merchants WHERE bank_ciphertext IS NOT NULL")
        ).scalar_one()
        == 0
    )


def test_the_pages_label_their_inputs_and_have_unique_ids(world: World, clock):
    settled(world, clock, "60")
    owner = world.as_client(world.owner)
    owner.post(f"/merchant/{world.mid}/balance/bank_account", data=BANK)
    page = owner.get(f"/merchant/{world.mid}/balance")
    made = owner.post(
        f"/merchant/{world.mid}/payouts",
        data={"po-USD-idempotency_key": _field(page, "po-USD-idempotency_key"), "currency": "USD"},
    )
    for path in (f"/merchant/{world.mid}/balance", made.headers["Location"]):
        html = owner.get(path).get_data(as_text=True)
        for tag in re.findall(r"<input\b[^>]*>", html):
            kind = re.search(r'type="([^"]+)"', tag)
            if kind and kind.group(1) in ("hidden", "submit"):
                continue
            field_id = re.search(r'\bid="([^"]+)"', tag)
            assert field_id and f'for="{field_id.group(1)}"' in html, tag
        ids = re.findall(r'\bid="([^"]+)"', html)
        assert len(ids) == len(set(ids)), path
        assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == []
        assert not re.search(r"\sstyle=", html)
