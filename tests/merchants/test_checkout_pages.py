"""The hosted checkout page through the Flask test client (the test's transaction): what a
signed-out visitor sees, signing in (with a second factor) and coming back, the payer's own
payable cards, Pay as a plain form post (303 to the success URL with session_id, never a URL
from the request), declines shown on the page with the session still payable, complete and
expired sessions, Cancel, CSRF, and the page's Content-Security-Policy."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa
from flask import Flask

from portal.domain.money import Money
from portal.extensions import limiter
from portal.services.identity import users
from portal.services.ledger import reconciliation
from portal.services.merchants import checkout
from portal.services.wallet import cards
from tests.conftest import new_key
from tests.pages.conftest import PageClient, People, Person, new_client, page_text, sign_in

SUCCESS = "https://shop.example/thanks?order=7"
CANCEL = "https://shop.example/cart?back=1"


@pytest.fixture(autouse=True)
def _fresh_limits() -> None:
    limiter.reset()


@pytest.fixture
def client(app: Flask, connection: sa.Connection) -> PageClient:
    return new_client(app)


@pytest.fixture
def people(app: Flask, connection: sa.Connection) -> People:
    return People(app, connection)


def actor_of(uow, person: Person):
    return users.actor_for(uow, person.id)


def new_session(uow, shop, amount: str = "20.00", **kw):
    kw.setdefault("success_url", SUCCESS)
    kw.setdefault("cancel_url", CANCEL)
    return checkout.create_checkout_session(
        uow, actor=shop.api, merchant=shop.merchant.public_id,
        amount=Money.of_major(amount, "USD"), idempotency_key=new_key(), **kw,
    )  # fmt: skip


def hidden_key(response: Any) -> str:
    found = re.search(r'name="idempotency_key" type="hidden" value="([0-9a-f]{32})"',
                      response.get_data(as_text=True))  # fmt: skip
    assert found, response.get_data(as_text=True)
    return found.group(1)


def radio_values(response: Any) -> list[str]:
    tags = re.findall(r'<input[^>]*name="card"[^>]*>', response.get_data(as_text=True))
    return [re.search(r'value="(card_[0-9A-Za-z]+)"', tag).group(1) for tag in tags]


def merchant_view(uow, shop, session):
    return checkout.get_checkout_session(
        uow, actor=shop.api, merchant=shop.merchant.public_id, session=session.id
    )


def count_payments(connection: sa.Connection, session) -> int:
    return connection.execute(
        sa.text(
            "SELECT count(*) FROM payments WHERE checkout_session_id ="
            " (SELECT id FROM checkout_sessions WHERE public_id = :id)"
        ),
        {"id": session.id},
    ).scalar_one()


def test_signed_out_visitors_see_the_payment_and_sign_in_to_pay(client, uow, shop):
    session = new_session(uow, shop, "1234.50", description="A very good bicycle")
    page = client.get(f"/checkout/{session.id}")
    assert page.status_code == 200
    text = page_text(page)
    assert shop.merchant.name in text and "1,234.50 USD" in text
    assert "A very good bicycle" in text
    assert "Sign in to pay" in text and 'type="radio"' not in text
    assert f'href="/auth/login?next=/checkout/{session.id}"' in page.get_data(as_text=True)
    assert "thanks" not in text and "order=7" not in text  # the success URL is not shown
    policy = page.headers["Content-Security-Policy"]
    assert "form-action 'self' https://shop.example;" in policy
    assert "script-src 'self';" in policy and "frame-ancestors 'none'" in policy
    assert page.headers["Cache-Control"] == "no-store"
    assert client.get("/checkout/cs_" + "0" * 24).status_code == 404
    assert client.get("/checkout/not-an-id").status_code == 404


def test_sign_in_comes_back_and_pay_redirects_to_the_success_url(
    client, uow, make, shop, people, connection
):
    person = people.make()
    payer = actor_of(uow, person)
    usd = make.card(payer, balance="100")
    other_usd = make.card(payer, balance="50")
    make.card(payer, balance="1000000", currency="IDR")  # not this session's currency
    frozen = make.card(payer, balance="100")
    cards.set_frozen(uow, actor=payer, card_id=frozen.card_id, frozen=True)
    stranger = make.card(make.user(), balance="100")
    session = new_session(uow, shop)

    signed = sign_in(client, person, next=f"/checkout/{session.id}")
    assert signed.status_code == 302 and signed.headers["Location"] == f"/checkout/{session.id}"
    page = client.get(f"/checkout/{session.id}")
    assert radio_values(page) == [usd.public_id, other_usd.public_id]
    text = page_text(page)
    assert "100.00 USD available" in text and "50.00 USD available" in text
    assert stranger.public_id not in page.get_data(as_text=True)
    assert frozen.public_id not in page.get_data(as_text=True)
    assert "Pay 20.00 USD" in text
    key = hidden_key(page)

    # The query string names another success URL: it is never read.
    paid = client.post(
        f"/checkout/{session.id}?success_url=https://evil.example/&next=https://evil.example/",
        data={"card": usd.public_id, "idempotency_key": key},
    )
    assert paid.status_code == 303, page_text(paid)
    target = urlsplit(paid.headers["Location"])
    assert (target.scheme, target.netloc, target.path) == ("https", "shop.example", "/thanks")
    assert parse_qs(target.query) == {"order": ["7"], "session_id": [session.id]}
    seen = merchant_view(uow, shop, session)
    assert (seen.status, seen.payment_status) == ("complete", "paid")

    # The same form posted again (a double submit) lands on the same page, pays nothing more.
    again = client.post(f"/checkout/{session.id}",
                        data={"card": usd.public_id, "idempotency_key": key})  # fmt: skip
    assert again.status_code == 303 and again.headers["Location"] == paid.headers["Location"]
    assert count_payments(connection, session) == 1

    # Another tab's form (its own key) is refused: the page says it is complete.
    later = client.post(
        f"/checkout/{session.id}", data={"card": other_usd.public_id, "idempotency_key": new_key()}
    )
    assert later.status_code == 400
    assert "This payment is complete" in page_text(later) and "Pay 20.00" not in page_text(later)
    done = client.get(f"/checkout/{session.id}")
    assert "This payment is complete" in page_text(done) and 'type="radio"' not in page_text(done)
    assert count_payments(connection, session) == 1
    assert reconciliation.reconcile(uow).ok


def test_each_rendering_mints_a_new_key(client, uow, make, shop, people):
    person = people.make()
    make.card(actor_of(uow, person), balance="100")
    session = new_session(uow, shop)
    sign_in(client, person)
    first = hidden_key(client.get(f"/checkout/{session.id}"))
    second = hidden_key(client.get(f"/checkout/{session.id}"))
    assert first != second


def test_a_decline_shows_the_reason_and_the_session_stays_payable(client, uow, make, shop, people):
    person = people.make()
    payer = actor_of(uow, person)
    poor = make.card(payer, balance="5")
    rich = make.card(payer, balance="100")
    session = new_session(uow, shop)
    sign_in(client, person)
    page = client.get(f"/checkout/{session.id}")
    # The card that can cover the amount is preselected; the other says it cannot.
    assert re.search(rf'<input checked[^>]*value="{rich.public_id}"', page.get_data(True))
    assert "5.00 USD available · not enough for this payment" in page_text(page)
    assert "100.00 USD available · not enough" not in page_text(page)
    declined = client.post(
        f"/checkout/{session.id}",
        data={"card": poor.public_id, "idempotency_key": hidden_key(page)},
    )
    assert declined.status_code == 402
    text = page_text(declined)
    assert "Your card was declined: The card has insufficient funds." in text
    assert "Pay 20.00 USD" in text and radio_values(declined) == [poor.public_id, rich.public_id]
    assert re.search(rf'<input checked[^>]*value="{poor.public_id}"', declined.get_data(True))
    assert hidden_key(declined) != hidden_key(page)  # a new attempt gets a new key
    assert merchant_view(uow, shop, session).status == "open"
    paid = client.post(
        f"/checkout/{session.id}",
        data={"card": rich.public_id, "idempotency_key": hidden_key(declined)},
    )
    assert paid.status_code == 303 and "session_id=" in paid.headers["Location"]
    assert reconciliation.reconcile(uow).ok


def test_another_persons_card_or_no_card_is_refused_on_the_page(
    client, uow, make, shop, people, connection
):
    person = people.make()
    make.card(actor_of(uow, person), balance="100")
    theirs = make.card(make.user(), balance="100")
    session = new_session(uow, shop)
    sign_in(client, person)
    stolen = client.post(
        f"/checkout/{session.id}", data={"card": theirs.public_id, "idempotency_key": new_key()}
    )
    assert stolen.status_code == 422
    assert "Choose one of your own cards." in page_text(stolen)
    nothing = client.post(f"/checkout/{session.id}", data={"idempotency_key": new_key()})
    assert nothing.status_code == 422 and "Choose a card to pay with." in page_text(nothing)
    assert count_payments(connection, session) == 0
    assert merchant_view(uow, shop, session).status == "open"


def test_a_payer_without_a_card_in_the_currency_is_told_so(client, uow, make, shop, people):
    person = people.make()
    make.card(actor_of(uow, person), balance="100000", currency="IDR")
    session = new_session(uow, shop)
    sign_in(client, person)
    text = page_text(client.get(f"/checkout/{session.id}"))
    assert "You have no active card in USD" in text and "Pay 20.00" not in text


def test_signed_out_posts_go_to_sign_in(client, uow, make, shop, connection):
    session = new_session(uow, shop)
    card = make.card(make.user(), balance="100")
    response = client.post(
        f"/checkout/{session.id}", data={"card": card.public_id, "idempotency_key": new_key()}
    )
    assert response.status_code == 303
    assert response.headers["Location"] == f"/auth/login?next=/checkout/{session.id}"
    assert count_payments(connection, session) == 0


def test_second_factor_is_asked_at_sign_in_and_comes_back(client, uow, make, shop, people):
    person = people.make(with_mfa=True)
    make.card(actor_of(uow, person), balance="100")
    session = new_session(uow, shop)
    first = sign_in(client, person, next=f"/checkout/{session.id}")
    assert first.status_code == 302 and first.headers["Location"] == "/auth/mfa"
    assert "Sign in to pay" in page_text(client.get(f"/checkout/{session.id}"))  # not yet
    second = client.post("/auth/mfa", data={"code": person.code()})
    assert second.status_code == 302 and second.headers["Location"] == f"/checkout/{session.id}"
    assert "Pay 20.00 USD" in page_text(client.get(f"/checkout/{session.id}"))


def test_a_second_factor_enrolled_after_sign_in_is_asked_before_paying(
    client, uow, make, shop, people, connection
):
    person = people.make()
    card = make.card(actor_of(uow, person), balance="100")
    session = new_session(uow, shop)
    sign_in(client, person)
    people.enrol(person)  # enrolled now; this session has not passed it
    page = client.get(f"/checkout/{session.id}")
    assert "Confirm it's you" in page_text(page) and 'type="radio"' not in page_text(page)
    refused = client.post(
        f"/checkout/{session.id}", data={"card": card.public_id, "idempotency_key": new_key()}
    )
    assert refused.status_code == 303
    assert refused.headers["Location"] == f"/auth/mfa?next=/checkout/{session.id}"
    assert count_payments(connection, session) == 0


def test_expired_session_page(client, uow, make, shop, people, connection):
    person = people.make()
    card = make.card(actor_of(uow, person), balance="100")
    session = new_session(uow, shop, expires_in=1800)
    connection.execute(
        sa.text("UPDATE checkout_sessions SET expires_at = :t WHERE public_id = :id"),
        {"t": datetime.now(UTC) - timedelta(seconds=1), "id": session.id},
    )
    text = page_text(client.get(f"/checkout/{session.id}"))
    assert "This checkout has expired" in text and "Sign in to pay" not in text
    sign_in(client, person)
    late = client.post(
        f"/checkout/{session.id}", data={"card": card.public_id, "idempotency_key": new_key()}
    )
    assert late.status_code == 400 and "This checkout has expired" in page_text(late)
    assert count_payments(connection, session) == 0


def test_cancel_goes_to_the_cancel_url_only(client, uow, shop):
    session = new_session(uow, shop)
    page = client.get(f"/checkout/{session.id}")
    assert f'href="/checkout/{session.id}/cancel"' in page.get_data(as_text=True)
    response = client.get(f"/checkout/{session.id}/cancel?cancel_url=https://evil.example/")
    assert response.status_code == 303 and response.headers["Location"] == CANCEL
    assert merchant_view(uow, shop, session).status == "open"
    assert client.get("/checkout/cs_" + "0" * 24 + "/cancel").status_code == 404


def test_pay_needs_the_csrf_token(app, client, uow, make, shop, people, connection):
    person = people.make()
    card = make.card(actor_of(uow, person), balance="100")
    session = new_session(uow, shop)
    sign_in(client, person)
    app.config["WTF_CSRF_ENABLED"] = True
    try:
        forged = client.post(
            f"/checkout/{session.id}", data={"card": card.public_id, "idempotency_key": new_key()}
        )
        assert forged.status_code == 400
        assert "nothing was paid" in page_text(forged)
        assert count_payments(connection, session) == 0
        page = client.get(f"/checkout/{session.id}")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True))
        assert token
        paid = client.post(f"/checkout/{session.id}", data={
            "csrf_token": token.group(1), "card": card.public_id,
            "idempotency_key": hidden_key(page),
        })  # fmt: skip
        assert paid.status_code == 303
    finally:
        app.config["WTF_CSRF_ENABLED"] = False
    assert count_payments(connection, session) == 1


def test_the_policy_allows_only_the_success_origin(client, uow, shop):
    session = new_session(uow, shop, success_url="http://127.0.0.1:8123/done?x=1",
                          cancel_url="https://other.example/back")  # fmt: skip
    policy = client.get(f"/checkout/{session.id}").headers["Content-Security-Policy"]
    assert "form-action 'self' http://127.0.0.1:8123;" in policy
    assert "other.example" not in policy


def test_the_pages_markup(app, client, uow, make, shop, people, connection):
    """Every input labelled, ids unique, no inline script or style (the CSP forbids them), in
    each state of the page; a forged post to an unknown session is a 404, not a 500."""
    person = people.make()
    payer = actor_of(uow, person)
    make.card(payer, balance="5")
    make.card(payer, balance="100")
    session = new_session(uow, shop)
    pages = {"signed out": client.get(f"/checkout/{session.id}").get_data(as_text=True)}
    sign_in(client, person)
    pages["cards"] = client.get(f"/checkout/{session.id}").get_data(as_text=True)
    pages["errors"] = client.post(f"/checkout/{session.id}", data={}).get_data(as_text=True)
    for name, html in pages.items():
        for tag in re.findall(r"<input\b[^>]*>", html):
            if re.search(r'type="hidden"', tag):
                continue
            field_id = re.search(r'\bid="([^"]+)"', tag)
            assert field_id and f'for="{field_id.group(1)}"' in html, f"{name}: {tag}"
        ids = re.findall(r'\bid="([^"]+)"', html)
        assert len(ids) == len(set(ids)), f"{name}: duplicate ids"
        assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == [], name
        assert "<style" not in html and not re.search(r"\sstyle=", html), name
        assert not re.search(r"\son[a-z]+=", html), name
        assert '<meta name="viewport"' in html, name
    app.config["WTF_CSRF_ENABLED"] = True
    try:
        assert client.post("/checkout/cs_" + "0" * 24, data={}).status_code == 404
    finally:
        app.config["WTF_CSRF_ENABLED"] = False
