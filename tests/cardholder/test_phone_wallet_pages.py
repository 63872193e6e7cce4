"""The phone-first wallet through the Flask test client (issue 13): totals per currency at the
top, the navigation (Activity everywhere, a tab bar with aria-current), what the live update
brings for the highlight and the announcement, icons drawn as SVG rather than symbol
characters, and the chart's table for pages without JavaScript. The layout itself (what shows
at 390 and 1280 px) is checked in a real browser in tests/browser/test_wallet.py."""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa

from portal.domain.money import Money
from portal.services.identity import users
from portal.services.wallet import wallet
from tests.cardholder.conftest import Wallets
from tests.conftest import new_key
from tests.pages.conftest import PageClient, Person, htmx, page_text, sign_in

# Characters once used as icons, and the blocks they come from (arrows, technical symbols,
# geometric shapes, dingbats, emoji): Debian's default fonts draw some of them as empty boxes.
_SYMBOL_ICONS = re.compile("[\u2196-\u2199\u2300-\u2bff\U0001f000-\U0001faff]")
_ICON_SPAN = re.compile(
    r'<span class="(?:quick-action__icon|activity__icon[^"]*|receipt__icon[^"]*)">(.*?)</span>',
    re.S,
)


def _transfer(wallets: Wallets, sender: Person, from_card: str, to_card: int, major: str) -> None:
    uow = wallets.people.uow
    wallet.transfer(uow(), actor=users.actor_for(uow(), sender.id), from_card_id=from_card,
                    to_card_id=to_card, amount=Money.of_major(major, "USD"),
                    idempotency_key=new_key())  # fmt: skip


def _version(html: str) -> int:
    found = re.search(r'data-version="(\d+)"', html)
    assert found
    return int(found.group(1))


def test_the_wallet_starts_with_a_total_per_currency(
    client: PageClient, alice: Person, wallets: Wallets
) -> None:
    wallets.card(alice, balance="100.25")
    wallets.card(alice, balance="20", brand="mastercard")
    wallets.card(alice, currency="IDR", balance="750000")
    html = client.get("/wallet").get_data(as_text=True)

    totals = html[html.index('id="wallet-totals"') : html.index('id="cards"')]
    assert "Total balance" in totals
    usd = re.search(r'data-total="USD">\s*<span[^>]*>([^<]+)</span>\s*<span[^>]*>([^<]+)<', totals)
    idr = re.search(r'data-total="IDR">\s*<span[^>]*>([^<]+)</span>\s*<span[^>]*>([^<]+)<', totals)
    assert usd and idr, totals
    assert usd.group(1) == "$120.25" and "2 cards" in usd.group(2)
    assert idr.group(1) == "IDR\xa0750,000" and "1 card" in idr.group(2)
    # The totals come before the cards and the activity in the page.
    assert (
        html.index('id="wallet-totals"')
        < html.index('id="cards"')
        < html.index('id="latest-activity"')
    )


def test_no_cards_no_totals(client: PageClient, alice: Person) -> None:
    text = page_text(client.get("/wallet"))
    assert "No money yet: issue a card to get started." in text
    assert "data-total=" not in text


def test_activity_is_in_the_main_navigation_and_tabs_mark_the_current_page(
    client: PageClient, alice: Person, wallets: Wallets
) -> None:
    card = wallets.card(alice, balance="5")
    pages = {
        "/wallet": "Wallet",
        "/wallet/activity": "Activity",
        "/wallet/transfer": "Pay",
        "/auth/account": "Account",
    }
    for path, current in pages.items():
        html = client.get(path).get_data(as_text=True)
        header = html.split("</header>")[0]
        assert 'href="/wallet/activity">Activity</a>' in header, path
        tabs = html[html.index('<nav class="tab-bar" aria-label="Sections">') :]
        tabs = tabs[: tabs.index("</nav>")]
        labels = re.findall(r"<span>(\w+)</span></a>", tabs)
        assert labels == ["Wallet", "Activity", "Pay", "Account"], path
        marked = re.findall(r'aria-current="page" href="[^"]+">(?:<svg.*?</svg>)?(?:<span>)?(\w+)',
                            html, re.S)  # fmt: skip
        assert set(marked) == {"Pay" if current == "Pay" else current}, (path, marked)
    # A page inside a section marks its tab as the current section, not the current page.
    card_page = client.get(f"/wallet/cards/{card.public_id}").get_data(as_text=True)
    assert 'aria-current="true" href="/wallet"' in card_page
    assert 'aria-current="page"' not in card_page


def test_people_without_a_wallet_get_no_tab_bar(client: PageClient, people) -> None:
    sign_in(client, people.make(roles=("merchant",)))
    html = client.get("/").get_data(as_text=True)
    assert 'class="tab-bar"' not in html
    assert 'href="/wallet/activity"' not in html
    assert 'href="/auth/account">Account</a>' in html


def test_a_live_update_brings_the_totals_and_what_to_announce(
    client: PageClient, alice: Person, bob: Person, wallets: Wallets
) -> None:
    mine = wallets.card(alice, balance="10")
    page = client.get("/wallet").get_data(as_text=True)
    assert re.search(r'id="live-announcer"[^>]*aria-live="polite"', page)
    assert f'data-minor="{1000}"' in page  # the tile's available balance, for the highlight

    theirs = wallets.card(bob, balance="80")
    _transfer(wallets, bob, theirs.public_id, mine.card_id, "15")
    changed = client.get(f"/wallet/changes?v={_version(page)}&view=dashboard", headers=htmx())

    html = changed.get_data(as_text=True)
    assert re.search(r'id="wallet-totals"[^>]*hx-swap-oob="true"', html)
    assert "$25.00" in html[html.index('id="wallet-totals"') : html.index('id="cards"')]
    assert 'data-minor="2500"' in html
    incoming = re.search(r'<li class="activity__item activity__item--in"[^>]*>', html)
    assert incoming, html
    assert 'data-item-status="succeeded"' in incoming.group(0)
    announce = re.search(r'data-announce="([^"]+)"', incoming.group(0))
    assert announce, incoming.group(0)
    assert announce.group(1).startswith("$15.00 received from ")
    assert "(Ada L.)" in announce.group(1)
    assert announce.group(1).endswith(f"on card •••• {mine.last4}")
    # Money out is not announced.
    _transfer(wallets, alice, mine.public_id, theirs.card_id, "1")
    later = client.get(f"/wallet/changes?v={_version(html)}&view=dashboard", headers=htmx())
    out = re.search(r'<li class="activity__item activity__item--out"[^>]*>', later.get_data(True))
    assert out and "data-announce" not in out.group(0)


@pytest.mark.parametrize("status", ["pending", "settled"])
def test_icons_are_svg_not_symbol_characters(
    client: PageClient, alice: Person, bob: Person, wallets: Wallets, status: str
) -> None:
    mine = wallets.card(alice, balance="100")
    theirs = wallets.card(bob, balance="50")
    _transfer(wallets, bob, theirs.public_id, mine.card_id, "5")
    _transfer(wallets, alice, mine.public_id, theirs.card_id, "3")
    key = re.search(r'name="idempotency_key"[^>]*value="(\w+)"|value="(\w{32})"[^>]*name="idem',
                    client.get("/wallet/top-up").get_data(True))  # fmt: skip
    assert key
    amount = "5.13" if status == "pending" else "7"
    receipt = client.post("/wallet/top-up", headers=htmx(), data={
        "idempotency_key": key.group(1) or key.group(2), "card_id": mine.public_id,
        "method": "debit_card", "step": "confirm", "amount": amount})  # fmt: skip
    if status == "settled":
        _transfer(wallets, alice, mine.public_id, theirs.card_id, "1")
    pages = {
        "dashboard": client.get("/wallet").get_data(as_text=True),
        "card": client.get(f"/wallet/cards/{mine.public_id}").get_data(as_text=True),
        "activity": client.get("/wallet/activity").get_data(as_text=True),
        "receipt": receipt.get_data(as_text=True),
    }
    for name, html in pages.items():
        assert not _SYMBOL_ICONS.findall(html), (name, _SYMBOL_ICONS.findall(html))
        icons = _ICON_SPAN.findall(html)
        assert icons, name
        for inner in icons:
            assert inner.startswith("<svg") and inner.endswith("</svg>"), (name, inner)
            assert 'aria-hidden="true"' in inner
    assert pages["receipt"].count("<svg") >= 1


def test_without_javascript_the_chart_table_is_shown(
    client: PageClient, alice: Person, wallets: Wallets
) -> None:
    wallets.card(alice, balance="42")
    html = client.get("/wallet").get_data(as_text=True)
    head = html.split("</head>")[0]
    assert re.search(r'<noscript><link rel="stylesheet" href="/static/css/no-js\.css"></noscript>',
                     head)  # fmt: skip
    plain = re.search(r'<noscript><div class="chart__table chart__table--no-js">(.*?)</noscript>',
                      html, re.S)  # fmt: skip
    assert plain, "a table for browsers without JavaScript"
    assert "<table" in plain.group(1) and "$42.00" in plain.group(1)
    css = client.get("/static/css/no-js.css").get_data(as_text=True)
    rule = css[css.index(".chart__canvas") : css.index("}")]
    assert "details.chart__table" in rule and "display: none" in rule


def test_an_unchanged_poll_is_two_reads_and_no_transaction(
    client: PageClient, alice: Person, wallets: Wallets, connection
) -> None:
    """Issue 12: the 1.5 s poll that finds nothing new answers 204 after the session check and
    the version read, each one statement with no transaction of its own (no BEGIN; here, in
    the test's transaction, no SAVEPOINT), and renders nothing."""
    wallets.card(alice, balance="10")
    page = client.get("/wallet").get_data(as_text=True)
    sent: list[str] = []

    def capture(conn, cursor, statement, *args) -> None:
        sent.append(statement)

    sa.event.listen(connection, "before_cursor_execute", capture)
    try:
        unchanged = client.get(f"/wallet/changes?v={_version(page)}", headers=htmx())
    finally:
        sa.event.remove(connection, "before_cursor_execute", capture)
    assert unchanged.status_code == 204 and unchanged.get_data() == b""
    assert len(sent) == 2, sent
    assert "FROM web_sessions" in sent[0] and "change_version FROM users" in sent[1]
