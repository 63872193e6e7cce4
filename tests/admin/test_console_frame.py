"""The console's frame: who gets in (staff with the second factor only), the navigation, and
the overview's figures from real records."""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa

from tests.admin.conftest import StaffClient
from tests.pages.conftest import PageClient, People, new_client, page_text, sign_in


def test_only_staff_past_the_second_factor_open_the_console(
    client: PageClient, people: People, as_staff: StaffClient
) -> None:
    anonymous = client.get("/admin/")
    assert anonymous.status_code == 302 and "/auth/login" in anonymous.headers["Location"]
    cardholder = people.make()
    sign_in(client, cardholder)
    assert client.get("/admin/").status_code == 403
    assert 'href="/admin/"' not in client.get("/auth/account").get_data(as_text=True)
    # Staff who have not enrolled a second factor enrol first, and come back.
    unenrolled = people.make(roles=("support",))
    c = new_client(client.application)
    sign_in(c, unenrolled)
    sent = c.get("/admin/")
    assert sent.status_code == 302 and "/auth/mfa/setup" in sent.headers["Location"]
    assert "next=/admin/" in sent.headers["Location"]
    support, _ = as_staff("support")
    page = support.get("/admin/")
    assert page.status_code == 200
    assert 'href="/admin/">Console</a>' in page.get_data(as_text=True)


def _figure(response: Any, label: str) -> int:
    value = r'(?:</a>)?</p> <p class="console-figure__value">(\d+)<'
    found = re.search(re.escape(label) + value, page_text(response))
    assert found, f"no {label} on the overview"
    return int(found.group(1))


def test_the_overview_counts_what_waits(
    as_staff: StaffClient, people: People, connection: sa.Connection
) -> None:
    admin, _ = as_staff()
    live = connection.execute(
        sa.text("SELECT count(*) FROM users WHERE archived_at IS NULL")
    ).scalar_one()
    assert _figure(admin.get("/admin/"), "Users") == live
    people.make()
    text = page_text(admin.get("/admin/"))
    assert _figure(admin.get("/admin/"), "Users") == live + 1
    waiting = connection.execute(
        sa.text("SELECT count(*) FROM withdrawals WHERE status IN ('pending', 'processing')")
    ).scalar_one()
    assert _figure(admin.get("/admin/"), "Withdrawals waiting") == waiting
    # Each waiting figure opens its queue.
    html = admin.get("/admin/").get_data(as_text=True)
    assert '<a href="/admin/queues/withdrawals">Withdrawals waiting</a>' in html
    assert '<a href="/admin/merchants?state=pending">Merchant applications</a>' in html
    assert "has not been checked yet" in text
