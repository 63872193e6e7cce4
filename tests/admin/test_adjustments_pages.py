"""The adjustments pages per persona: anonymous, cardholder, support, an administrator who
requests and a second one who decides."""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa

from portal.domain.types import IssuedCard
from tests.admin.conftest import StaffClient
from tests.conftest import Factory
from tests.pages.conftest import PageClient, People, page_text, sign_in


def posted(connection: sa.Connection, card: IssuedCard) -> int:
    return int(
        connection.execute(
            sa.text("SELECT posted_minor FROM accounts WHERE card_id = :c"), {"c": card.card_id}
        ).scalar_one()
    )


def form_key(response: Any) -> str:
    found = re.search(r'name="idempotency_key" type="hidden" value="([0-9a-f]+)"',
                      response.get_data(as_text=True))  # fmt: skip
    assert found, "the form carries no idempotency key"
    return found.group(1)


def request_form(target: str, **fields: str) -> dict[str, str]:
    return {"target": target, "direction": "credit", "amount": "12.50", "currency": "USD",
            "reason": "Fee charged twice", "reference": "SUP-1001", **fields}  # fmt: skip


def make_request(admin: PageClient, target: str, **fields: str) -> str:
    key = form_key(admin.get("/admin/adjustments/new"))
    sent = admin.post("/admin/adjustments/new", data={**request_form(target, **fields),
                                                       "idempotency_key": key})  # fmt: skip
    assert sent.status_code == 302, page_text(sent)
    location = sent.headers["Location"]
    found = re.search(r"/admin/adjustments/(adj_[0-9A-Za-z]{24})$", location)
    assert found, location
    return found.group(1)


def test_outsiders_never_see_adjustments(
    client: PageClient, people: People, make: Factory, as_staff: StaffClient
) -> None:
    admin, _ = as_staff()
    card = make.card(make.user(), balance="10.00")
    adj = make_request(admin, card.public_id)
    urls = ("/admin/adjustments", "/admin/adjustments/new", f"/admin/adjustments/{adj}")
    for url in urls:
        answer = client.get(url)
        assert answer.status_code == 302 and "/auth/login" in answer.headers["Location"]
    sign_in(client, people.make())
    for url in urls:
        assert client.get(url).status_code == 403
    for action in ("approve", "reject", "withdraw"):
        assert client.post(f"/admin/adjustments/{adj}/{action}").status_code == 403


def test_support_reads_and_cannot_act(
    make: Factory, as_staff: StaffClient, connection: sa.Connection
) -> None:
    admin, _ = as_staff()
    support, _ = as_staff("support")
    card = make.card(make.user(), balance="10.00")
    adj = make_request(admin, card.public_id)
    listing = page_text(support.get("/admin/adjustments"))
    assert adj in listing and "Request an adjustment" not in listing
    assert re.search(r'href="/admin/adjustments"[^>]*>Adjustments</a>', listing)  # the nav
    detail = support.get(f"/admin/adjustments/{adj}")
    assert detail.status_code == 200
    text = page_text(detail)
    assert "Fee charged twice" in text and "SUP-1001" in text
    assert 'data-action="approve"' not in text and 'data-action="withdraw"' not in text
    assert support.get("/admin/adjustments/new").status_code == 403
    assert (
        support.post("/admin/adjustments/new", data=request_form(card.public_id)).status_code == 403
    )
    for action in ("approve", "withdraw"):
        assert support.post(f"/admin/adjustments/{adj}/{action}").status_code == 403
    refused = support.post(f"/admin/adjustments/{adj}/reject", data={"reason": "no"})
    assert refused.status_code == 403
    assert posted(connection, card) == 1000


def test_a_second_admin_approves_and_the_balance_moves(
    make: Factory, as_staff: StaffClient, connection: sa.Connection
) -> None:
    maker, maker_person = as_staff()
    checker, checker_person = as_staff()
    card = make.card(make.user(), balance="10.00")
    adj = make_request(maker, card.public_id)
    # The requester sees a withdraw button, not approve, and a forced approval is refused.
    own = page_text(maker.get(f"/admin/adjustments/{adj}"))
    assert 'data-action="withdraw"' in own and 'data-action="approve"' not in own
    forced = maker.post(f"/admin/adjustments/{adj}/approve")
    assert forced.status_code == 302
    assert "A second administrator must approve" in page_text(maker.get(forced.headers["Location"]))
    assert posted(connection, card) == 1000
    # Pending first on the list.
    listing = page_text(checker.get("/admin/adjustments"))
    assert listing.index("Waiting for a second administrator") < listing.index(adj)
    page = page_text(checker.get(f"/admin/adjustments/{adj}"))
    assert 'data-action="approve"' in page and 'data-action="reject"' in page
    assert maker_person.email in page

    done = checker.post(f"/admin/adjustments/{adj}/approve")

    assert done.status_code == 302
    assert posted(connection, card) == 2250
    after = page_text(checker.get(f"/admin/adjustments/{adj}"))
    assert "Approved: +12.50 USD posted" in after or "Approved: 12.50 USD posted" in after
    assert "Approved by" in after and checker_person.email in after
    assert "adjustment.approve" in after and "data-entry" in after
    assert 'data-action="approve"' not in after
    # A double submit posts nothing more and says so.
    again = checker.post(f"/admin/adjustments/{adj}/approve")
    assert again.status_code == 302
    assert "it posted once" in page_text(checker.get(again.headers["Location"]))
    assert posted(connection, card) == 2250
    decided = page_text(checker.get("/admin/adjustments"))
    assert "Nothing is waiting for approval" in decided and adj in decided


def test_reject_needs_a_reason_and_the_requester_may_withdraw(
    make: Factory, as_staff: StaffClient, connection: sa.Connection
) -> None:
    maker, _ = as_staff()
    checker, _ = as_staff()
    card = make.card(make.user(), balance="10.00")
    first = make_request(maker, card.public_id)
    empty = checker.post(f"/admin/adjustments/{first}/reject", data={"reason": ""})
    assert empty.status_code == 422 and "Say why it is rejected" in page_text(empty)
    done = checker.post(f"/admin/adjustments/{first}/reject", data={"reason": "Not owed"})
    assert done.status_code == 302
    text = page_text(checker.get(f"/admin/adjustments/{first}"))
    assert "Rejected by" in text and "Not owed" in text
    second = make_request(maker, card.public_id, reference="SUP-1002")
    assert checker.post(f"/admin/adjustments/{second}/withdraw").status_code == 302
    assert "Only its requester may withdraw" in page_text(
        checker.get(f"/admin/adjustments/{second}")
    )
    assert maker.post(f"/admin/adjustments/{second}/withdraw").status_code == 302
    assert "Withdrawn by" in page_text(maker.get(f"/admin/adjustments/{second}"))
    assert posted(connection, card) == 1000


def test_the_request_form_checks_and_acts_once(
    make: Factory, as_staff: StaffClient, connection: sa.Connection
) -> None:
    maker, _ = as_staff()
    checker, _ = as_staff()
    card = make.card(make.user(), balance="10.00")
    form = maker.get(f"/admin/adjustments/new?target={card.public_id}")
    assert f'value="{card.public_id}"' in form.get_data(as_text=True)
    key = form_key(form)
    new = "/admin/adjustments/new"
    bad = maker.post(new, data={**request_form(card.public_id, currency="EUR"),
                                "idempotency_key": key})  # fmt: skip
    assert bad.status_code == 422 and "not EUR" in page_text(bad)
    missing = maker.post(new, data={**request_form(card.public_id, reason=""),
                                    "idempotency_key": key})  # fmt: skip
    assert missing.status_code == 422 and "Say why the balance must change" in page_text(missing)
    nobody = maker.post(new, data={**request_form("card_" + "0" * 24),
                                   "idempotency_key": key})  # fmt: skip
    assert nobody.status_code == 422 and "No such card" in page_text(nobody)
    body = {**request_form(card.public_id, direction="debit", amount="10.01"),
            "idempotency_key": key}  # fmt: skip
    first = maker.post("/admin/adjustments/new", data=body)
    again = maker.post("/admin/adjustments/new", data=body)
    assert first.headers["Location"] == again.headers["Location"]
    count = connection.execute(sa.text("SELECT count(*) FROM adjustment_requests")).scalar_one()
    assert count == 1
    adj = first.headers["Location"].rsplit("/", 1)[1]
    assert "approval will be refused" in page_text(checker.get(f"/admin/adjustments/{adj}"))
    refused = checker.post(f"/admin/adjustments/{adj}/approve")
    assert "exceeds the available balance" in page_text(checker.get(refused.headers["Location"]))
    assert posted(connection, card) == 1000


def test_an_open_pending_request_asks_whether_it_was_decided(
    make: Factory, as_staff: StaffClient
) -> None:
    maker, _ = as_staff()
    checker, _ = as_staff()
    support, _ = as_staff("support")
    card = make.card(make.user(), balance="10.00")
    adj = make_request(maker, card.public_id)
    page = maker.get(f"/admin/adjustments/{adj}").get_data(as_text=True)
    poll = f"/admin/adjustments/{adj}/changes?v=pending"
    assert f'hx-get="{poll}"' in page
    quiet = support.get(poll, headers={"HX-Request": "true"})
    assert quiet.status_code == 204 and "HX-Refresh" not in quiet.headers
    checker.post(f"/admin/adjustments/{adj}/approve")
    changed = support.get(poll, headers={"HX-Request": "true"})
    assert changed.status_code == 200 and changed.headers["HX-Refresh"] == "true"
    assert "/changes" not in maker.get(f"/admin/adjustments/{adj}").get_data(as_text=True)
    assert support.get(f"/admin/adjustments/adj_{'0' * 24}/changes?v=pending").status_code == 404
