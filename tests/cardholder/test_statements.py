"""Monthly statements (issue 13): a card with top-ups, transfers in and out, a withdrawal and a
payment across two months; the statement's opening and closing tie to sums of postings computed
here, month to month and to the activity CSV's balance after; the PDF route is the owner's only
and refuses bad and future months."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import pytest
import sqlalchemy as sa
from flask import Flask

from portal.cardholder.statements import _refusing_fetcher, statement_html
from portal.domain.errors import InvalidInput, NotFound
from portal.domain.money import Money
from portal.domain.types import Actor, IssuedCard
from portal.services.identity import users
from portal.services.ledger import reconciliation
from portal.services.merchants import payments
from portal.services.shared.uow import UnitOfWork
from portal.services.wallet import activity, cards, statements, wallet
from portal.services.wallet.wallet import BankAccount
from tests.conftest import SYSTEM, Clock, Factory, new_key
from tests.merchants.conftest import card_details, open_shop
from tests.pages.conftest import PageClient, People, Person, page_text, sign_in

BANK = BankAccount("Bank Central Asia", "1234 5678 90", "Ada Lovelace")


def usd(major: str) -> Money:
    return Money.of_major(major, "USD")


def _month_before(first: date) -> date:
    return (first - timedelta(days=1)).replace(day=1)


THIS_MONTH = datetime.now(UTC).date().replace(day=1)
MONTH_2 = _month_before(THIS_MONTH)  # last month
MONTH_1 = _month_before(MONTH_2)  # the month before


def at(first: date, day: int, hour: int = 12) -> datetime:
    return datetime(first.year, first.month, day, hour, tzinfo=UTC)


def last_day(first: date) -> int:
    following = (first.replace(day=28) + timedelta(days=4)).replace(day=1)
    return (following - timedelta(days=1)).day


@dataclass
class Story:
    alice: Person
    actor: Actor
    mine: IssuedCard
    theirs: IssuedCard


@pytest.fixture
def story(uow: UnitOfWork, clock: Clock, make: Factory, people: People,
          client: PageClient) -> Story:  # fmt: skip
    """Alice's USD card over two months, every kind of movement, through the real services."""
    clock.now = at(MONTH_1, 1, 8)
    alice = people.make()
    assert sign_in(client, alice).status_code == 302
    actor = users.actor_for(uow, alice.id)
    mine = cards.issue_card(uow, actor=actor, user_id=alice.id, card_type="debit", brand="visa",
                            currency="USD")  # fmt: skip
    bob = make.user()
    theirs = make.card(bob)
    shop = open_shop(uow, make, make.user(roles=("admin",)))

    def transfer(src: IssuedCard, dst: IssuedCard, major: str, memo: str = "") -> None:
        wallet.transfer(uow, actor=SYSTEM, from_card_id=src.card_id, to_card_id=dst.card_id,
                        amount=usd(major), idempotency_key=new_key(), memo=memo)  # fmt: skip

    clock.now = at(MONTH_1, 3)
    make.fund(mine, "500")
    clock.now = at(MONTH_1, 5)
    make.fund(theirs, "200")
    clock.now = at(MONTH_1, 10)
    transfer(mine, theirs, "120.50", "rent share")
    clock.now = at(MONTH_1, 12)
    transfer(theirs, mine, "40")
    # Asked for at the end of month 1, paid out (posted) in month 2: a hold is no posting.
    clock.now = at(MONTH_1, last_day(MONTH_1), 10)
    w = wallet.withdraw(uow, actor=actor, card_id=mine.card_id, amount=usd("50"), bank=BANK,
                        idempotency_key=new_key())  # fmt: skip
    clock.now = at(MONTH_2, 2)
    wallet.confirm_withdrawal(uow, actor=SYSTEM, withdrawal_id=w.id, payout_reference="po_st")
    clock.now = at(MONTH_2, 8)
    payments.create_payment(
        uow, actor=shop.api, merchant=shop.merchant.id, amount=usd("30"),
        card=card_details(mine), idempotency_key=new_key(), description="Coffee beans",
    )  # fmt: skip
    clock.now = at(MONTH_2, 15)
    transfer(theirs, mine, "10", "thanks")
    clock.now = at(MONTH_2, 20)
    make.fund(mine, "25")
    clock.now = datetime.now(UTC)
    return Story(alice, actor, mine, theirs)


def posted_sum(uow: UnitOfWork, card: IssuedCard, start: datetime | None,
               end: datetime | None) -> tuple[int, int]:  # fmt: skip
    """(sum, count) of the card's wallet postings in [start, end), straight from the ledger."""
    row = uow.run(
        lambda u: u.execute(
            sa.text(
                "SELECT COALESCE(sum(p.amount_minor), 0) AS total, count(*) AS n FROM postings p"
                " JOIN accounts a ON a.id = p.account_id AND a.kind = 'wallet'"
                " WHERE a.card_id = :card"
                " AND (CAST(:start AS timestamptz) IS NULL OR p.created_at >= :start)"
                " AND (CAST(:end AS timestamptz) IS NULL OR p.created_at < :end)"
            ),
            {"card": card.card_id, "start": start, "end": end},
        ).one()
    )
    return int(row.total), int(row.n)


def month_start(first: date) -> datetime:
    return datetime(first.year, first.month, 1, tzinfo=UTC)


def test_opening_and_closing_tie_to_the_postings(uow: UnitOfWork, story: Story) -> None:
    one = statements.monthly_statement(uow, actor=story.actor, card_id=story.mine.public_id,
                                       month=f"{MONTH_1:%Y-%m}")  # fmt: skip
    two = statements.monthly_statement(uow, actor=story.actor, card_id=story.mine.public_id,
                                       month=f"{MONTH_2:%Y-%m}")  # fmt: skip
    for st in (one, two):
        start, end = (
            month_start(st.month),
            month_start((st.month.replace(day=28) + timedelta(days=4)).replace(day=1)),
        )
        before, _ = posted_sum(uow, story.mine, None, start)
        during, n = posted_sum(uow, story.mine, start, end)
        assert st.opening.amount_minor == before
        assert st.closing.amount_minor == before + during
        assert len(st.lines) == n
        assert sum(line.amount.amount_minor for line in st.lines) == (
            st.closing.amount_minor - st.opening.amount_minor
        )
        assert st.lines[-1].balance_after == st.closing
        assert st.complete and st.time_zone == "UTC"
    # The numbers themselves: 500 - 120.50 + 40; then -50 (withdrawal) - 30 + 10 + 25.
    assert (one.opening, one.closing) == (usd("0"), usd("419.50"))
    assert one.closing == two.opening
    assert two.closing == usd("374.50")
    assert [line.kind for line in one.lines] == ["top_up", "transfer", "transfer"]
    assert [line.kind for line in two.lines] == ["withdrawal", "payment", "transfer", "top_up"]
    assert [line.amount for line in two.lines] == [
        Money(-5000, "USD"), Money(-3000, "USD"), usd("10"), usd("25")]  # fmt: skip
    assert [line.balance_after for line in two.lines] == [
        usd("369.50"), usd("339.50"), usd("349.50"), usd("374.50")]  # fmt: skip
    assert two.lines[1].description == "Payment to Kopi Kenangan · Coffee beans"
    assert one.lines[1].description.startswith("Transfer to ") and "rent share" in (
        one.lines[1].description
    )
    assert (two.money_in, two.money_out) == (usd("35"), usd("80"))
    # This month so far: nothing moved, and it closes on the account's posted balance.
    now = statements.monthly_statement(uow, actor=story.actor, card_id=story.mine.public_id,
                                       month=f"{THIS_MONTH:%Y-%m}")  # fmt: skip
    assert now.opening == now.closing == two.closing and not now.complete and now.lines == ()
    posted = uow.run(lambda u: u.execute(sa.text(
        "SELECT posted_minor FROM accounts WHERE card_id = :c"), {"c": story.mine.card_id}
    ).scalar_one())  # fmt: skip
    assert now.closing.amount_minor == posted
    # Each line's balance is the activity CSV's balance after for the same movement.
    feed = activity.list_activity(uow, actor=story.actor, card_id=story.mine.public_id, limit=50)
    after = activity.balances_after(uow, actor=story.actor, items=feed.items)
    for line in (*one.lines, *two.lines):
        assert after[line.reference] == line.balance_after, line
    report = reconciliation.reconcile(uow)
    assert report.ok, report.violations


def test_the_month_is_the_owners_time_zone(uow: UnitOfWork, clock: Clock, make: Factory,
                                           connection: sa.Connection) -> None:  # fmt: skip
    owner = make.user()
    card = make.card(owner)
    # 20:00 UTC on the last day of month 1 is 03:00 on the 1st of month 2 in Jakarta (UTC+7).
    clock.now = at(MONTH_1, last_day(MONTH_1), 20)
    make.fund(card, "7")
    clock.now = datetime.now(UTC)
    month_1, month_2 = f"{MONTH_1:%Y-%m}", f"{MONTH_2:%Y-%m}"

    def statement(month: str) -> statements.Statement:
        return statements.monthly_statement(uow, actor=owner, card_id=card.card_id, month=month)

    assert [len(statement(m).lines) for m in (month_1, month_2)] == [1, 0]
    connection.execute(sa.text("UPDATE users SET time_zone = 'Asia/Jakarta' WHERE id = :id"),
                       {"id": owner.id})  # fmt: skip
    one, two = statement(month_1), statement(month_2)
    assert (len(one.lines), len(two.lines)) == (0, 1)
    assert one.closing == two.opening == usd("0") and two.closing == usd("7")
    assert two.time_zone == "Asia/Jakarta"
    assert two.starts_at == datetime(MONTH_2.year, MONTH_2.month, 1, tzinfo=UTC) - timedelta(
        hours=7
    )


def test_bad_future_and_foreign_statements_are_refused(uow: UnitOfWork, make: Factory) -> None:
    owner, other = make.user(), make.user()
    card = make.card(owner, balance="5")
    for bad in ("2026-13", "2026-1", "26-01", "2026-00", "1969-12", "", "2026-01-01"):
        with pytest.raises(InvalidInput) as refused:
            statements.monthly_statement(uow, actor=owner, card_id=card.card_id, month=bad)
        assert refused.value.param == "month"
    following = (THIS_MONTH + timedelta(days=32)).replace(day=1)
    with pytest.raises(InvalidInput, match="has not begun"):
        statements.monthly_statement(uow, actor=owner, card_id=card.card_id,
                                     month=f"{following:%Y-%m}")  # fmt: skip
    for stranger in (other, make.user(roles=("admin",))):  # staff too: the owner's only
        with pytest.raises(NotFound):
            statements.monthly_statement(uow, actor=stranger, card_id=card.card_id,
                                         month=f"{THIS_MONTH:%Y-%m}")  # fmt: skip


# -- the PDF route -------------------------------------------------------------------------------
def test_the_pdf_shows_the_closing_balance(app: Flask, uow: UnitOfWork, client: PageClient,
                                           story: Story) -> None:  # fmt: skip
    path = f"/wallet/cards/{story.mine.public_id}/statement/{MONTH_2:%Y-%m}.pdf"
    page = client.get(f"/wallet/cards/{story.mine.public_id}")
    assert page.status_code == 200
    assert "Monthly statement (PDF)" in page_text(page) and path in page.get_data(as_text=True)

    response = client.get(path)
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    assert response.mimetype == "application/pdf"
    assert response.data.startswith(b"%PDF")
    assert f"{MONTH_2:%Y-%m}.pdf" in response.headers["Content-Disposition"]

    # What the PDF is made of: the HTML, and the text WeasyPrint laid out on its pages.
    two = statements.monthly_statement(uow, actor=story.actor, card_id=story.mine.public_id,
                                       month=MONTH_2)  # fmt: skip
    with app.test_request_context():
        html = statement_html(two, "en_US")
    assert "$374.50" in html and "$419.50" in html and "Coffee beans" in html
    from weasyprint import HTML

    document = HTML(string=html, url_fetcher=_refusing_fetcher()).render()
    laid_out = " ".join(
        box.text
        for pg in document.pages
        for box in pg._page_box.descendants()
        if hasattr(box, "text")
    )
    assert "Closing balance" in laid_out and "$374.50" in laid_out
    with app.test_request_context():
        indonesian = statement_html(two, "id_ID")
    assert "US$374,50" in indonesian or "$374,50" in indonesian


def test_the_fetcher_fetches_nothing() -> None:
    with pytest.raises(ValueError, match="fetch no resources"):
        _refusing_fetcher().fetch("https://example.com/logo.png")
    with pytest.raises(ValueError, match="fetch no resources"):
        _refusing_fetcher().fetch("file:///etc/passwd")


def test_the_route_is_the_owners_and_checks_the_month(client: PageClient, people: People,
                                                      story: Story) -> None:  # fmt: skip
    base = f"/wallet/cards/{story.mine.public_id}/statement"
    for bad in ("2026-13", "abcd-ef", "2026-1"):
        response = client.get(f"{base}/{bad}.pdf")
        assert response.status_code == 400, bad
        assert bad in page_text(response)
    following = (THIS_MONTH + timedelta(days=32)).replace(day=1)
    response = client.get(f"{base}/{following:%Y-%m}.pdf")
    assert response.status_code == 400 and "has not begun" in page_text(response)
    # Someone else's card, a malformed id, an internal id: not found.
    month = f"{MONTH_2:%Y-%m}"
    for card_ref in (story.theirs.public_id, "card_nope", str(story.mine.card_id)):
        response = client.get(f"/wallet/cards/{card_ref}/statement/{month}.pdf")
        assert response.status_code == 404, card_ref
    # Signed out: to sign-in, no PDF.
    from tests.pages.conftest import new_client

    stranger = new_client(client.application)
    assert stranger.get(f"{base}/{month}.pdf").status_code == 302


def test_statements_are_rate_limited_per_person(client: PageClient, story: Story) -> None:
    from portal.cardholder.statements import STATEMENTS_PER_USER

    allowed = int(STATEMENTS_PER_USER.split()[0])
    path = f"/wallet/cards/{story.mine.public_id}/statement/{MONTH_1:%Y-%m}.pdf"
    codes = [client.get(path).status_code for _ in range(allowed + 1)]
    assert codes == [200] * allowed + [429]
