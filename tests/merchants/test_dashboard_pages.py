"""The merchant dashboard and the staff merchants page through the Flask test client, inside
the test's transaction: every route, who may see and do what (a viewer acts on nothing, a
stranger gets 404s, staff need merchants:read and a second factor), the payment actions taken
once per form, API keys shown once, the team and its invitations, the live poll, CSRF, the
navigation, and never a full card number on any page."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from portal.domain.errors import CardDeclined, Unauthenticated
from portal.domain.money import Money
from portal.domain.types import Actor, IssuedCard
from portal.services.identity import users
from portal.services.merchants import keys, merchants, payments
from portal.services.merchants.payments import PaymentView
from portal.services.shared.uow import UnitOfWork
from tests.conftest import Factory
from tests.merchants.conftest import card_details
from tests.pages import conftest as pages
from tests.pages.conftest import (
    PageClient,
    People,
    Person,
    htmx,
    last_mail,
    link_in,
    new_client,
    page_text,
    sign_in,
)

page_config = pages.page_config
client = pages.client
another_client = pages.another_client
people = pages.people
outbox = pages.outbox


# -- the world --------------------------------------------------------------------------------
def actor_of(uow: UnitOfWork, person: Person) -> Actor:
    return users.actor_for(uow, person.id)


@dataclass
class World:
    uow: UnitOfWork
    people: People
    owner: Person
    developer: Person
    viewer: Person
    stranger: Person
    mid: str
    merchant_id: int
    secret: str
    api: Actor
    card: IssuedCard
    paid: PaymentView
    held: PaymentView
    declined: PaymentView

    def pay(self, major: str, *, manual: bool = False, description: str = "") -> PaymentView:
        return payments.create_payment(
            self.uow,
            actor=self.api,
            merchant=self.mid,
            amount=Money.of_major(major, "USD"),
            card=card_details(self.card),
            idempotency_key=uuid.uuid4().hex,
            capture_method="manual" if manual else "automatic",
            description=description,
        )

    def payment(self, pid: str) -> PaymentView:
        return payments.get_payment(self.uow, actor=self.api, merchant=self.mid, payment=pid)

    def as_client(self, person: Person) -> PageClient:
        c = new_client(self.people.app)
        response = sign_in(c, person)
        assert response.status_code == 302, page_text(response)
        return c


def _member(uow: UnitOfWork, people: People, owner: Actor, mid: str, role: str) -> Person:
    person = people.make()
    invitation = merchants.invite_member(
        uow, actor=owner, merchant=mid, email=person.email, role=role
    )
    assert invitation.token is not None
    merchants.accept_invitation(uow, actor=actor_of(uow, person), token=invitation.token)
    return person


@pytest.fixture
def world(uow: UnitOfWork, people: People, make: Factory, staff: Actor) -> World:
    owner = people.make()
    owner_actor = actor_of(uow, owner)
    applied = merchants.apply(
        uow,
        actor=owner_actor,
        name="Kopi Kenangan",
        website="https://kopi.example",
        contact_email="hello@kopi.example",
        settlement_currency="USD",
    )
    merchants.decide(uow, actor=staff, merchant=applied.public_id, action="approve")
    key = keys.create_api_key(uow, actor=owner_actor, merchant=applied.public_id, name="server")
    assert key.secret is not None
    api = keys.authenticate_api_key(uow, secret=key.secret).actor
    card = make.card(make.user(), balance="1000")
    w = World(
        uow,
        people,
        owner,
        _member(uow, people, owner_actor, applied.public_id, "developer"),
        _member(uow, people, owner_actor, applied.public_id, "viewer"),
        people.make(),
        applied.public_id,
        applied.id,
        key.secret,
        api,
        card,
        None,
        None,
        None,  # type: ignore[arg-type]
    )
    w.paid = w.pay("40", description="Flat white x2")
    w.held = w.pay("30", manual=True, description="Table booking")
    with pytest.raises(CardDeclined) as caught:
        w.pay("5000", description="Too much")
    w.declined = PaymentView.from_dict(caught.value.details["payment"])
    return w


def _signed_in(client: PageClient, person: Person) -> PageClient:
    response = sign_in(client, person)
    assert response.status_code == 302, page_text(response)
    return client


def _staff(people: People, client: PageClient, *, roles: tuple[str, ...] = ("admin",)) -> Person:
    person = people.make(roles=roles, with_mfa=True)
    sign_in(client, person)
    assert client.post("/auth/mfa", data={"code": person.code()}).status_code == 302
    return person


def _field(response: Any, name: str) -> str:
    html = response.get_data(as_text=True)
    found = re.search(rf'name="{re.escape(name)}"[^>]*value="([^"]*)"', html) or re.search(
        rf'value="([^"]*)"[^>]*name="{re.escape(name)}"', html
    )
    assert found, f"no {name} in the page"
    return found.group(1)


def _count(connection: sa.Connection, sql: str, **params: Any) -> int:
    return connection.execute(sa.text(sql), params).scalar_one()


# -- sign-in and access ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path", ["/merchant", "/merchant/apply", "/merchant/staff", "/merchant/join/abc"]
)
def test_pages_need_sign_in(client: PageClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 302
    assert "/auth/login" in response.headers["Location"]


def test_a_poll_after_the_session_ended_sends_the_page_to_sign_in(
    client: PageClient, world: World
) -> None:
    response = client.get(f"/merchant/{world.mid}/changes?v=x", headers=htmx())
    assert response.status_code == 401
    assert response.headers["HX-Redirect"].startswith("/auth/login")


def _every_route(w: World) -> list[tuple[str, str]]:
    mid, pid = w.mid, w.held.id
    key = keys.list_api_keys(w.uow, actor=actor_of(w.uow, w.owner), merchant=mid)[0].public_id
    member = merchants.list_members(w.uow, actor=actor_of(w.uow, w.owner), merchant=mid)[-1]
    return [
        ("GET", f"/merchant/{mid}"),
        ("GET", f"/merchant/{mid}/changes?v=0"),
        ("GET", f"/merchant/{mid}/payments"),
        ("GET", f"/merchant/{mid}/payments/{pid}"),
        ("POST", f"/merchant/{mid}/payments/{pid}/capture"),
        ("POST", f"/merchant/{mid}/payments/{pid}/cancel"),
        ("POST", f"/merchant/{mid}/payments/{w.paid.id}/refund"),
        ("GET", f"/merchant/{mid}/keys"),
        ("POST", f"/merchant/{mid}/keys"),
        ("POST", f"/merchant/{mid}/keys/{key}/roll"),
        ("POST", f"/merchant/{mid}/keys/{key}/revoke"),
        ("GET", f"/merchant/{mid}/team"),
        ("POST", f"/merchant/{mid}/team/invitations"),
        ("POST", f"/merchant/{mid}/team/invitations/inv_000000000000000000000000/revoke"),
        ("POST", f"/merchant/{mid}/team/members/{member.public_id}/role"),
        ("POST", f"/merchant/{mid}/team/members/{member.public_id}/remove"),
        ("GET", f"/merchant/{mid}/start"),
    ]


def test_a_stranger_gets_404_on_every_route_and_changes_nothing(
    world: World, connection: sa.Connection
) -> None:
    c = world.as_client(world.stranger)
    before = _count(connection, "SELECT count(*) FROM api_keys")
    for method, path in _every_route(world):
        response = c.open(
            path,
            method=method,
            data={
                "capture-idempotency_key": uuid.uuid4().hex,
                "refund-idempotency_key": "k" * 10,
                "cancel-idempotency_key": uuid.uuid4().hex,
                "name": "mine",
                "email": "x@y.example",
            },
        )
        assert response.status_code == 404, (method, path, response.status_code)
    assert world.payment(world.held.id).status == "requires_capture"
    assert world.payment(world.paid.id).amount_refunded == 0
    assert _count(connection, "SELECT count(*) FROM api_keys") == before
    assert c.get("/merchant/mch_000000000000000000000000").status_code == 404
    assert c.get("/merchant/not-an-id/payments").status_code == 404


def test_a_viewer_sees_no_buttons_and_acting_is_403(
    world: World, connection: sa.Connection
) -> None:
    c = world.as_client(world.viewer)
    detail = c.get(f"/merchant/{world.mid}/payments/{world.held.id}")
    assert detail.status_code == 200
    html = detail.get_data(as_text=True)
    for action in ("capture", "cancel", "refund"):
        assert f"/payments/{world.held.id}/{action}" not in html
    assert "can see payments but not capture, cancel or refund them" in page_text(detail)
    paid = c.get(f"/merchant/{world.mid}/payments/{world.paid.id}").get_data(as_text=True)
    assert "/refund" not in paid
    assert "API keys" not in page_text(c.get(f"/merchant/{world.mid}"))  # no keys tab
    keys_before = _count(connection, "SELECT count(*) FROM api_keys")
    for method, path in _every_route(world):
        if method == "POST":
            response = c.post(
                path,
                data={
                    "capture-idempotency_key": uuid.uuid4().hex,
                    "refund-idempotency_key": uuid.uuid4().hex,
                    "cancel-idempotency_key": uuid.uuid4().hex,
                    "name": "mine",
                    "scopes": "payments:read",
                    "email": "x@y.example",
                    "role": "owner",
                },
            )
            assert response.status_code == 403, (path, response.status_code)
    assert c.get(f"/merchant/{world.mid}/keys").status_code == 403
    team = c.get(f"/merchant/{world.mid}/team")
    assert team.status_code == 200 and "Invite someone" not in page_text(team)
    assert world.payment(world.held.id).status == "requires_capture"
    assert world.payment(world.paid.id).amount_refunded == 0
    assert _count(connection, "SELECT count(*) FROM api_keys") == keys_before
    roles = {m.role for m in merchants.list_members(world.uow, actor=world.api, merchant=world.mid)}
    assert roles == {"owner", "developer", "viewer"}


# -- applying ----------------------------------------------------------------------------------
def test_apply_wait_and_land_on_the_dashboard(
    client: PageClient, people: People, uow: UnitOfWork, staff: Actor
) -> None:
    person = people.make()
    _signed_in(client, person)
    first = client.get("/merchant")
    assert first.status_code == 302 and first.headers["Location"] == "/merchant/apply"
    form = client.get("/merchant/apply")
    assert person.email in form.get_data(as_text=True)  # the contact email is suggested
    bad = client.post(
        "/merchant/apply",
        data={
            "name": "Toko Buku",
            "website": "ftp://books.example",
            "contact_email": "nope",
            "settlement_currency": "USD",
        },
    )
    assert bad.status_code == 422
    text = page_text(bad)
    assert "Website must be an absolute https URL." in text
    assert _count(people.connection, "SELECT count(*) FROM merchants WHERE name = 'Toko Buku'") == 0
    bad_email = client.post(
        "/merchant/apply",
        data={
            "name": "Toko Buku",
            "website": "https://books.example",
            "contact_email": "nope",
            "settlement_currency": "USD",
        },
    )
    assert bad_email.status_code == 422
    assert re.search(
        r'id="contact_email-error">Enter a valid email address\.', bad_email.get_data(True)
    )
    done = client.post(
        "/merchant/apply",
        data={
            "name": "Toko Buku",
            "website": "https://books.example",
            "contact_email": "books@books.example",
            "settlement_currency": "EUR",
        },
    )
    assert done.status_code == 302
    mid = done.headers["Location"].rsplit("/", 1)[1]
    assert mid.startswith("mch_")
    pending = client.get(done.headers["Location"])
    assert "Your application is being reviewed" in page_text(pending)
    assert "Thank you. We have your application for Toko Buku" in page_text(pending)
    assert 'href="/merchant"' in pending.get_data(as_text=True)  # the nav shows "Merchant"
    merchants.decide(uow, actor=staff, merchant=mid, action="approve")
    assert client.get("/merchant").headers["Location"] == f"/merchant/{mid}"
    overview = client.get(f"/merchant/{mid}")
    text = page_text(overview)
    assert "Overview" in text and "Today" in text and "This month" in text
    assert "0.00 EUR" in text and "No payments yet" in text


def test_a_rejected_application_says_so(
    client: PageClient, people: People, uow: UnitOfWork, staff: Actor
) -> None:
    person = people.make()
    applied = merchants.apply(
        uow,
        actor=actor_of(uow, person),
        name="Grey Goods",
        website="https://grey.example",
        contact_email="g@grey.example",
        settlement_currency="USD",
    )
    merchants.decide(
        uow,
        actor=staff,
        merchant=applied.public_id,
        action="reject",
        reason="website does not work",
    )
    _signed_in(client, person)
    text = page_text(client.get(f"/merchant/{applied.public_id}"))
    assert "Your application was not approved" in text
    assert "website does not work" in text


def test_several_merchants_get_a_chooser_and_a_switcher(
    client: PageClient, world: World, uow: UnitOfWork, staff: Actor
) -> None:
    second = merchants.apply(
        uow,
        actor=actor_of(uow, world.owner),
        name="Kopi Dua",
        website="https://dua.example",
        contact_email="d@dua.example",
        settlement_currency="SGD",
    )
    merchants.decide(uow, actor=staff, merchant=second.public_id, action="approve")
    _signed_in(client, world.owner)
    chooser = client.get("/merchant")
    assert chooser.status_code == 200
    html = chooser.get_data(as_text=True)
    assert (
        f'href="/merchant/{world.mid}"' in html and f'href="/merchant/{second.public_id}"' in html
    )
    overview = client.get(f"/merchant/{world.mid}").get_data(as_text=True)
    assert "Switch merchant" in overview
    assert f'href="/merchant/{second.public_id}"' in overview
    # One merchant: no switcher.
    solo = world.as_client(world.developer).get(f"/merchant/{world.mid}").get_data(as_text=True)
    assert "Switch merchant" not in solo


# -- overview and live updates -----------------------------------------------------------------
def test_overview_figures_latest_and_charts(world: World) -> None:
    c = world.as_client(world.owner)
    response = c.get(f"/merchant/{world.mid}")
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    html = response.get_data(as_text=True)
    text = page_text(response)
    fee = world.paid.fee
    assert re.search(r'data-period="today".*?data-figure="gross">40\.00 USD', html, re.S)
    assert re.search(r'data-period="today".*?data-figure="count">1<', html, re.S)
    assert Money(4000 - fee, "USD").format() in text  # net
    assert "66.7 %" in text and "2 of 3 attempts authorised" in text
    for p in (world.paid, world.held, world.declined):
        assert f'id="payment-{p.id}"' in html
    assert "Declined" in text and "Uncaptured" in text and "Succeeded" in text
    assert html.count("data-chart=") == 2  # 30 days and 12 months, one currency
    assert "vendor/chartjs/chart.umd.min.js" in html
    assert 'hx-trigger="every 1500ms"' in html


def test_the_live_poll_answers_204_until_something_changes(world: World) -> None:
    c = world.as_client(world.owner)
    page = c.get(f"/merchant/{world.mid}")
    version = re.search(r'data-version="([0-9a-f]+)"', page.get_data(as_text=True)).group(1)
    same = c.get(f"/merchant/{world.mid}/changes?v={version}", headers=htmx())
    assert same.status_code == 204 and same.get_data() == b""
    new = world.pay("12.34", description="Kaya toast")
    changed = c.get(f"/merchant/{world.mid}/changes?v={version}", headers=htmx())
    assert changed.status_code == 200
    html = changed.get_data(as_text=True)
    assert f'id="payment-{new.id}"' in html
    assert 'id="figures" aria-label="Figures" hx-swap-oob="true"' in html
    assert 'id="latest-payments"' in html and 'hx-swap-oob="true"' in html
    new_version = re.search(r'data-version="([0-9a-f]+)"', html).group(1)
    assert new_version != version
    assert c.get(f"/merchant/{world.mid}/changes?v={new_version}").status_code == 204
    # A capture of an older held payment changes the version too.
    payments.capture_payment(
        world.uow,
        actor=world.api,
        merchant=world.mid,
        payment=world.held.id,
        idempotency_key=uuid.uuid4().hex,
    )
    assert c.get(f"/merchant/{world.mid}/changes?v={new_version}").status_code == 200


def test_a_suspended_or_archived_merchant_says_so_and_its_keys_stop(
    world: World, uow: UnitOfWork, staff: Actor
) -> None:
    c = world.as_client(world.owner)
    merchants.decide(uow, actor=staff, merchant=world.mid, action="suspend", reason="chargebacks")
    text = page_text(c.get(f"/merchant/{world.mid}"))
    assert "This merchant is suspended." in text and "chargebacks" in text
    with pytest.raises(Unauthenticated):
        keys.authenticate_api_key(uow, secret=world.secret)
    assert "the API refuses its keys" in page_text(c.get(f"/merchant/{world.mid}/start"))
    merchants.decide(uow, actor=staff, merchant=world.mid, action="reactivate")
    merchants.decide(uow, actor=staff, merchant=world.mid, action="archive")
    assert "This merchant is archived." in page_text(c.get(f"/merchant/{world.mid}/payments"))
    with pytest.raises(Unauthenticated):
        keys.authenticate_api_key(uow, secret=world.secret)


# -- payments ----------------------------------------------------------------------------------
def test_payment_list_filters_search_and_pages(world: World) -> None:
    for n in range(22):
        world.pay("1", description=f"Croissant {n}", manual=n % 2 == 1)
    c = world.as_client(world.viewer)
    first = c.get(f"/merchant/{world.mid}/payments")
    html = first.get_data(as_text=True)
    assert html.count('class="pay-list__item"') == 20
    following = re.search(r'href="([^"]+starting_after=pay_[^"]+)" rel="next"', html).group(1)
    second = c.get(following.replace("&amp;", "&"))
    assert second.get_data(as_text=True).count('class="pay-list__item"') == 5
    assert "Newest" in page_text(second) and 'rel="next"' not in second.get_data(as_text=True)

    held = c.get(f"/merchant/{world.mid}/payments?status=requires_capture")
    assert held.get_data(as_text=True).count('class="pay-list__item"') == 12
    assert (
        "Uncaptured" in page_text(held) and "Succeeded" not in page_text(held).split("Results")[-1]
    )
    declined = c.get(f"/merchant/{world.mid}/payments?status=requires_payment_method")
    assert f'id="payment-{world.declined.id}"' in declined.get_data(as_text=True)
    found = c.get(f"/merchant/{world.mid}/payments?q=flat+white")
    assert page_text(found).count("Flat white") == 1
    assert found.get_data(as_text=True).count('class="pay-list__item"') == 1
    jump = c.get(f"/merchant/{world.mid}/payments?q={world.paid.id}")
    assert jump.status_code == 302
    assert jump.headers["Location"] == f"/merchant/{world.mid}/payments/{world.paid.id}"
    today = world.paid.created.date().isoformat()
    tomorrow = (world.paid.created.date() + timedelta(days=1)).isoformat()
    dated = c.get(f"/merchant/{world.mid}/payments?since={today}&until={today}")
    assert dated.get_data(as_text=True).count('class="pay-list__item"') == 20
    later = c.get(f"/merchant/{world.mid}/payments?since={tomorrow}")
    assert "No payment matches these filters" in page_text(later)
    bad = c.get(f"/merchant/{world.mid}/payments?since=31-12-2025&until={today}")
    assert "Enter a date like 2025-01-31." in page_text(bad)
    backwards = c.get(f"/merchant/{world.mid}/payments?since={tomorrow}&until={today}")
    assert "The end date is before the start date." in page_text(backwards)
    unknown = c.get(f"/merchant/{world.mid}/payments?starting_after=pay_000000000000000000000000")
    assert unknown.status_code == 200
    assert "Starting_after is not a known object id." in page_text(unknown)


def test_payment_detail_timeline_fee_and_net(world: World) -> None:
    c = world.as_client(world.owner)
    response = c.get(f"/merchant/{world.mid}/payments/{world.paid.id}")
    html = response.get_data(as_text=True)
    text = page_text(response)
    assert "Flat white x2" in text and f"Visa •••• {world.card.last4}" in text
    assert f'data-money="fee">{Money(world.paid.fee, "USD").format()}' in html
    assert f'data-money="net">{Money(world.paid.net, "USD").format()}' in html
    assert "The fee is kept when a payment is refunded" in text
    assert "2.9 % + 0.30 USD of each captured payment" in text
    assert re.findall(r'data-event="(\w+)"', html) == ["created", "authorised", "captured"]
    declined = c.get(f"/merchant/{world.mid}/payments/{world.declined.id}")
    assert re.findall(r'data-event="(\w+)"', declined.get_data(True)) == ["created", "declined"]
    assert "insufficient_funds" in page_text(declined)
    assert c.get(f"/merchant/{world.mid}/payments/pay_000000000000000000000000").status_code == 404


def test_capture_refund_and_cancel_act_once_per_form(world: World) -> None:
    c = world.as_client(world.developer)
    page = c.get(f"/merchant/{world.mid}/payments/{world.held.id}")
    key = _field(page, "capture-idempotency_key")
    assert _field(page, "cancel-idempotency_key") != key
    too_much = c.post(
        f"/merchant/{world.mid}/payments/{world.held.id}/capture",
        data={"capture-idempotency_key": key, "capture-amount": "31"},
    )
    assert too_much.status_code == 422
    assert re.search(
        r'id="capture-amount-error">Amount_to_capture is at most amount_capturable',
        too_much.get_data(True),
    )
    key = _field(too_much, "capture-idempotency_key")
    data = {"capture-idempotency_key": key, "capture-amount": "25.50"}
    done = c.post(f"/merchant/{world.mid}/payments/{world.held.id}/capture", data=data)
    assert done.status_code == 302
    again = c.post(f"/merchant/{world.mid}/payments/{world.held.id}/capture", data=data)
    assert again.status_code == 302  # the same key: the first answer again
    captured = world.payment(world.held.id)
    assert (captured.status, captured.amount_received) == ("succeeded", 2550)
    shown = page_text(c.get(again.headers["Location"]))
    assert "Captured 25.50 USD." in shown and "nothing happened twice" in shown
    detail = c.get(f"/merchant/{world.mid}/payments/{world.held.id}")
    assert re.findall(r'data-event="(\w+)"', detail.get_data(True)) == [
        "created",
        "authorised",
        "captured",
        "released",
    ]

    # Refund part, then the rest; a refund beyond what is left is refused next to the amount.
    key = _field(detail, "refund-idempotency_key")
    part = {
        "refund-idempotency_key": key,
        "refund-amount": "5",
        "refund-reason": "requested_by_customer",
    }
    assert (
        c.post(f"/merchant/{world.mid}/payments/{world.held.id}/refund", data=part).status_code
        == 302
    )
    assert (
        c.post(f"/merchant/{world.mid}/payments/{world.held.id}/refund", data=part).status_code
        == 302
    )
    assert world.payment(world.held.id).amount_refunded == 500  # once
    page = c.get(f"/merchant/{world.mid}/payments/{world.held.id}")
    over = c.post(
        f"/merchant/{world.mid}/payments/{world.held.id}/refund",
        data={
            "refund-idempotency_key": _field(page, "refund-idempotency_key"),
            "refund-amount": "21",
        },
    )
    assert over.status_code == 422
    assert re.search(
        r'id="refund-amount-error">Amount is at most what is left to refund', over.get_data(True)
    )
    rest = c.post(
        f"/merchant/{world.mid}/payments/{world.held.id}/refund",
        data={
            "refund-idempotency_key": _field(over, "refund-idempotency_key"),
            "refund-amount": "",
        },
    )
    assert rest.status_code == 302
    final = c.get(f"/merchant/{world.mid}/payments/{world.held.id}")
    assert world.payment(world.held.id).amount_refunded == 2550
    assert re.findall(r'data-event="(\w+)"', final.get_data(True))[-2:] == [
        "partly_refunded",
        "refunded",
    ]
    assert "Refunded" in page_text(final) and "/refund" not in final.get_data(as_text=True)
    fee = world.payment(world.held.id).fee
    net_after = Money(2550 - fee - 2550, "USD").format()
    assert f'data-money="net_after_refunds">{net_after}' in final.get_data(as_text=True)

    # Cancel a held payment with a reason.
    other = world.pay("9", manual=True)
    page = c.get(f"/merchant/{world.mid}/payments/{other.id}")
    canceled = c.post(
        f"/merchant/{world.mid}/payments/{other.id}/cancel",
        data={
            "cancel-idempotency_key": _field(page, "cancel-idempotency_key"),
            "cancel-reason": "duplicate",
        },
    )
    assert canceled.status_code == 302
    view = world.payment(other.id)
    assert (view.status, view.cancellation_reason) == ("canceled", "duplicate")
    after = c.get(f"/merchant/{world.mid}/payments/{other.id}")
    assert re.findall(r'data-event="(\w+)"', after.get_data(True))[-1] == "canceled"
    assert "Duplicate" in page_text(after)
    # A form without its key is refused and acts on nothing.
    missing = c.post(
        f"/merchant/{world.mid}/payments/{world.paid.id}/refund", data={"refund-amount": "1"}
    )
    assert missing.status_code == 422 and world.payment(world.paid.id).amount_refunded == 0
    bad_amount = c.post(
        f"/merchant/{world.mid}/payments/{world.paid.id}/refund",
        data={"refund-idempotency_key": uuid.uuid4().hex, "refund-amount": "1.234"},
    )
    assert bad_amount.status_code == 422
    assert "USD has 2 decimal places; 1.234 has more." in page_text(bad_amount)


# -- API keys ----------------------------------------------------------------------------------
def test_keys_are_shown_once_rolled_and_revoked(
    world: World, connection: sa.Connection, uow: UnitOfWork
) -> None:
    c = world.as_client(world.developer)
    page = c.get(f"/merchant/{world.mid}/keys")
    assert page.status_code == 200
    token = _field(page, "form_token")
    empty = c.post(f"/merchant/{world.mid}/keys", data={"name": "", "form_token": token})
    assert empty.status_code == 422
    assert "Give the key a name" in page_text(empty)
    no_scope = c.post(
        f"/merchant/{world.mid}/keys",
        data={"name": "Shop", "form_token": _field(empty, "form_token")},
    )
    assert no_scope.status_code == 422 and "Choose at least one scope." in page_text(no_scope)
    form = {
        "name": "Web shop",
        "scopes": ["payments:read", "payments:write"],
        "expires": "",
        "form_token": _field(no_scope, "form_token"),
    }
    created = c.post(f"/merchant/{world.mid}/keys", data=form)
    assert created.status_code == 201
    assert created.headers["Cache-Control"] == "no-store"
    secret = re.search(
        r'id="new-secret" type="text" value="(sk_live_[0-9A-Za-z]{32})" readonly',
        created.get_data(True),
    ).group(1)
    assert "You won't see this secret again." in page_text(created)
    principal = keys.authenticate_api_key(uow, secret=secret, address="203.0.113.9")
    assert principal.actor.permissions == frozenset({"payments:read", "payments:write"})
    # A second submission of the same form makes no second key.
    count = _count(connection, "SELECT count(*) FROM api_keys WHERE name = 'Web shop'")
    twice = c.post(f"/merchant/{world.mid}/keys", data=form)
    assert twice.status_code == 302
    assert _count(connection, "SELECT count(*) FROM api_keys WHERE name = 'Web shop'") == count == 1
    listing = c.get(f"/merchant/{world.mid}/keys")
    html = listing.get_data(as_text=True)
    assert secret not in html  # never again
    assert f"{secret[:12]}…{secret[-4:]}" in html
    assert "from 203.0.113.9" in page_text(listing)
    assert "sent twice" in page_text(listing)

    kid = principal.key_public_id
    roll = c.post(
        f"/merchant/{world.mid}/keys/{kid}/roll",
        data={f"{kid}-overlap": "24", f"{kid}-form_token": _field(listing, f"{kid}-form_token")},
    )
    assert roll.status_code == 201
    new_secret = re.search(r'value="(sk_live_[0-9A-Za-z]{32})" readonly', roll.get_data(True))
    assert new_secret and new_secret.group(1) != secret
    assert "keeps working until" in page_text(roll)
    keys.authenticate_api_key(uow, secret=secret)  # the overlap: the old key still works
    keys.authenticate_api_key(uow, secret=new_secret.group(1))
    ends = connection.execute(
        sa.text("SELECT expires_at - now() FROM api_keys WHERE public_id = :k"), {"k": kid}
    ).scalar_one()
    assert timedelta(hours=23) < ends <= timedelta(hours=24, minutes=1)
    bad_overlap = c.post(f"/merchant/{world.mid}/keys/{kid}/roll", data={f"{kid}-overlap": "5"})
    assert bad_overlap.status_code == 422

    revoked = c.post(f"/merchant/{world.mid}/keys/{kid}/revoke")
    assert revoked.status_code == 302
    with pytest.raises(Unauthenticated):
        keys.authenticate_api_key(uow, secret=secret)
    after = page_text(c.get(f"/merchant/{world.mid}/keys"))
    assert "Revoked" in after and "is revoked; it works no more." in after
    # Expiry from the form: the end of that day.
    dated = c.post(
        f"/merchant/{world.mid}/keys",
        data={
            "name": "Temp",
            "scopes": "payments:read",
            "expires": "2099-01-31",
            "form_token": uuid.uuid4().hex,
        },
    )
    assert dated.status_code == 201
    assert "expires 01 Feb 2099" in page_text(dated)
    past = c.post(
        f"/merchant/{world.mid}/keys",
        data={
            "name": "Old",
            "scopes": "payments:read",
            "expires": "2001-01-01",
            "form_token": uuid.uuid4().hex,
        },
    )
    assert past.status_code == 422 and "Expires_at must be in the future." in page_text(past)


# -- team --------------------------------------------------------------------------------------
def test_invite_accept_change_role_and_remove(
    world: World, people: People, outbox: Any, uow: UnitOfWork
) -> None:
    owner = world.as_client(world.owner)
    page = owner.get(f"/merchant/{world.mid}/team")
    assert page.status_code == 200 and "Invite someone" in page_text(page)
    newcomer = people.make()
    sent = owner.post(
        f"/merchant/{world.mid}/team/invitations",
        data={
            "email": newcomer.email.upper(),
            "role": "developer",
            "form_token": _field(page, "form_token"),
        },
    )
    assert sent.status_code == 302
    mail = last_mail(outbox, newcomer.email)
    assert "Kopi Kenangan" in mail["Subject"]
    path = link_in(mail, "/merchant/join/")
    team = page_text(owner.get(f"/merchant/{world.mid}/team"))
    assert "Open invitations" in team and newcomer.email in team

    # Someone else signed in with the link sees it is not theirs and cannot use it.
    wrong = world.as_client(world.stranger)
    assert "was sent to another email address" in page_text(wrong.get(path))
    assert wrong.post(path).status_code == 403
    joiner = world.as_client(newcomer)
    invite_page = joiner.get(path)
    assert "Join Kopi Kenangan" in page_text(invite_page)
    joined = joiner.post(path)
    assert joined.status_code == 302 and joined.headers["Location"] == f"/merchant/{world.mid}"
    assert "you joined as developer" in page_text(joiner.get(joined.headers["Location"]))
    assert "This invitation is not valid" in page_text(joiner.get(path))  # used

    member = next(
        m
        for m in merchants.list_members(uow, actor=world.api, merchant=world.mid)
        if m.email == newcomer.email.lower()
    )
    changed = owner.post(
        f"/merchant/{world.mid}/team/members/{member.public_id}/role",
        data={f"{member.public_id}-role": "viewer"},
    )
    assert changed.status_code == 302
    assert joiner.get(f"/merchant/{world.mid}/keys").status_code == 403  # a viewer now
    removed = owner.post(f"/merchant/{world.mid}/team/members/{member.public_id}/remove")
    assert removed.status_code == 302
    assert joiner.get(f"/merchant/{world.mid}").status_code == 404

    # The last owner stays, with the reason next to them.
    me = next(
        m
        for m in merchants.list_members(uow, actor=world.api, merchant=world.mid)
        if m.role == "owner"
    )
    last = owner.post(
        f"/merchant/{world.mid}/team/members/{me.public_id}/role",
        data={f"{me.public_id}-role": "viewer"},
    )
    assert last.status_code == 422 and "A merchant keeps at least one owner." in page_text(last)

    # Withdraw an invitation: its link stops working.
    other = f"later-{uuid.uuid4().hex[:6]}@example.test"
    page = owner.get(f"/merchant/{world.mid}/team")
    owner.post(
        f"/merchant/{world.mid}/team/invitations",
        data={"email": other, "role": "viewer", "form_token": _field(page, "form_token")},
    )
    invitation = merchants.list_invitations(
        uow, actor=actor_of(uow, world.owner), merchant=world.mid
    )[0]
    assert (
        owner.post(
            f"/merchant/{world.mid}/team/invitations/{invitation.public_id}/revoke"
        ).status_code
        == 302
    )
    assert (
        merchants.list_invitations(uow, actor=actor_of(uow, world.owner), merchant=world.mid) == []
    )
    bad = owner.post(
        f"/merchant/{world.mid}/team/invitations",
        data={"email": "not an address", "role": "viewer", "form_token": uuid.uuid4().hex},
    )
    assert bad.status_code == 422 and "Enter a valid email address." in page_text(bad)
    # Developers see the team but cannot invite.
    dev = world.as_client(world.developer)
    assert "Invite someone" not in page_text(dev.get(f"/merchant/{world.mid}/team"))
    assert (
        dev.post(
            f"/merchant/{world.mid}/team/invitations",
            data={"email": other, "role": "owner", "form_token": uuid.uuid4().hex},
        ).status_code
        == 403
    )


# -- the guide ---------------------------------------------------------------------------------
def test_the_first_payment_guide(world: World, app: Flask) -> None:
    c = world.as_client(world.developer)
    response = c.get(f"/merchant/{world.mid}/start")
    text = page_text(response)
    html = response.get_data(as_text=True)
    base = app.config["PUBLIC_URL"].rstrip("/")
    assert f"curl -X POST {base}/api/v1/payments" in text
    assert f"curl -X POST {base}/api/v1/checkout/sessions" in text
    assert 'Authorization: Bearer sk_live_..."' in html.replace("&#34;", '"')
    assert "success_url" in text and "cancel_url" in text
    assert f"{world.secret[:12]}…{world.secret[-4:]}" in text
    assert world.secret not in html
    assert 'href="/api/docs"' in html
    viewer = world.as_client(world.viewer).get(f"/merchant/{world.mid}/start")
    assert "Ask an owner or developer" in page_text(viewer)


# -- staff -------------------------------------------------------------------------------------
def test_the_staff_page_needs_merchants_read_and_a_second_factor(
    client: PageClient, world: World, people: People
) -> None:
    _signed_in(client, world.owner)
    assert client.get("/merchant/staff").status_code == 403
    # Staff who have not enrolled a second factor are sent to enrol first.
    admin = people.make(roles=("admin",))
    c = world.as_client(admin)
    response = c.get("/merchant/staff")
    assert response.status_code == 302 and "/auth/mfa/setup" in response.headers["Location"]
    # The page moved into the console (tests/admin/test_merchants_pages.py): old links land
    # there. Support staff read it but have no buttons, and a decision is refused.
    support = new_client(world.people.app)
    _staff(people, support, roles=("support",))
    sent = support.get("/merchant/staff?state=active")
    assert sent.status_code == 302 and sent.headers["Location"] == "/admin/merchants?state=active"
    page = support.get(sent.headers["Location"])
    assert page.status_code == 200 and "Kopi Kenangan" in page_text(page)
    assert "formaction=" not in page.get_data(as_text=True)
    assert support.post(f"/admin/merchants/{world.mid}/suspend").status_code == 403
    assert 'href="/admin/">Console</a>' in page.get_data(as_text=True)
    # Staff read a merchant's dashboard, read only.
    seen = support.get(f"/merchant/{world.mid}/payments/{world.held.id}")
    assert seen.status_code == 200 and "/capture" not in seen.get_data(as_text=True)


# -- site-wide ---------------------------------------------------------------------------------
def test_navigation_links(client: PageClient, world: World, people: People) -> None:
    cardholder = people.make()
    _signed_in(client, cardholder)
    html = client.get("/").get_data(as_text=True).split("</header>")[0]
    assert 'href="/merchant"' not in html and 'href="/admin/merchants"' not in html
    assert 'href="/wallet">Wallet</a>' in html
    member = world.as_client(world.viewer).get("/").get_data(as_text=True).split("</header>")[0]
    assert 'href="/merchant">Merchant</a>' in member
    merchant_role = people.make(roles=("merchant",))
    shown = world.as_client(merchant_role).get("/").get_data(as_text=True).split("</header>")[0]
    assert 'href="/merchant">Merchant</a>' in shown


@pytest.fixture
def csrf_on(app: Flask) -> Iterator[None]:
    app.config["WTF_CSRF_ENABLED"] = True
    try:
        yield
    finally:
        app.config["WTF_CSRF_ENABLED"] = False


def test_forms_need_the_csrf_token(world: World, csrf_on: None) -> None:
    c = new_client(world.people.app)
    login = c.get("/auth/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', login).group(1)
    assert (
        c.post(
            "/auth/login",
            data={
                "email": world.developer.email,
                "password": world.developer.password,
                "csrf_token": token,
            },
        ).status_code
        == 302
    )
    page = c.get(f"/merchant/{world.mid}/payments/{world.held.id}")
    key = _field(page, "capture-idempotency_key")
    refused = c.post(
        f"/merchant/{world.mid}/payments/{world.held.id}/capture",
        data={"capture-idempotency_key": key},
    )
    assert refused.status_code == 400
    assert world.payment(world.held.id).status == "requires_capture"
    assert (
        c.post(
            f"/merchant/{world.mid}/keys",
            data={"name": "x", "scopes": "payments:read", "form_token": "t"},
        ).status_code
        == 400
    )
    form_token = _field(page, "capture-csrf_token")
    accepted = c.post(
        f"/merchant/{world.mid}/payments/{world.held.id}/capture",
        data={"capture-idempotency_key": key, "capture-csrf_token": form_token},
    )
    assert accepted.status_code == 302
    assert world.payment(world.held.id).status == "succeeded"
    keys_page = c.get(f"/merchant/{world.mid}/keys")
    header = re.search(r'"X-CSRFToken": "([^"]+)"', keys_page.get_data(True)).group(1)
    made = c.post(
        f"/merchant/{world.mid}/keys",
        data={
            "name": "csrf",
            "scopes": "payments:read",
            "form_token": _field(keys_page, "form_token"),
            "csrf_token": _field(keys_page, "csrf_token"),
        },
    )
    assert made.status_code == 201 and header


def _all_pages(world: World, staff_client: PageClient) -> dict[str, str]:
    owner = world.as_client(world.owner)
    mid = world.mid
    refunded = world.pay("15", description="Refund me")
    payments.create_refund(
        world.uow,
        actor=world.api,
        merchant=mid,
        payment=refunded.id,
        idempotency_key=uuid.uuid4().hex,
        amount=500,
    )
    found: dict[str, str] = {}
    for path in (
        f"/merchant/{mid}",
        f"/merchant/{mid}/payments",
        f"/merchant/{mid}/keys",
        f"/merchant/{mid}/team",
        f"/merchant/{mid}/start",
        f"/merchant/{mid}/payments?status=succeeded",
        f"/merchant/{mid}/changes?v=0",
        "/merchant/apply",
        *(
            f"/merchant/{mid}/payments/{p.id}"
            for p in (world.paid, world.held, world.declined, refunded)
        ),
    ):
        response = owner.get(path)
        assert response.status_code == 200, path
        found[path] = response.get_data(as_text=True)
    found["key created"] = owner.post(
        f"/merchant/{mid}/keys",
        data={
            "name": "Another",
            "scopes": "payments:read",
            "form_token": uuid.uuid4().hex,
        },
    ).get_data(as_text=True)
    found["staff"] = staff_client.get("/admin/merchants").get_data(as_text=True)
    found["join (unknown link)"] = (
        world.as_client(world.viewer).get("/merchant/join/nothing").get_data(True)
    )
    return found


def test_no_full_card_number_on_any_page(client: PageClient, world: World, people: People) -> None:
    _staff(people, client)
    number = world.card.number
    spaced = " ".join(number[i : i + 4] for i in range(0, len(number), 4))
    for name, html in _all_pages(world, client).items():
        assert number not in html and spaced not in html, name
        assert number not in re.sub(r"[\s-]", "", html), name
        assert f"•••• {world.card.last4}" in html or name in (
            "/merchant/apply",
            f"/merchant/{world.mid}/keys",
            f"/merchant/{world.mid}/team",
            f"/merchant/{world.mid}/start",
            "key created",
            "staff",
            "join (unknown link)",
        ), name


def test_every_page_labels_its_inputs_and_has_no_inline_script(
    client: PageClient, world: World, people: People
) -> None:
    _staff(people, client)
    for name, html in _all_pages(world, client).items():
        if name.endswith("/changes?v=0"):
            continue  # fragments
        for tag in re.findall(r"<input\b[^>]*>", html):
            kind = re.search(r'type="([^"]+)"', tag)
            if kind and kind.group(1) in ("hidden", "submit"):
                continue
            field_id = re.search(r'\bid="([^"]+)"', tag)
            assert field_id, f"{name}: input without id: {tag}"
            assert f'for="{field_id.group(1)}"' in html, f"{name}: no label for {tag}"
        for tag in re.findall(r"<select\b[^>]*>", html):
            field_id = re.search(r'\bid="([^"]+)"', tag)
            assert field_id and f'for="{field_id.group(1)}"' in html, f"{name}: {tag}"
        ids = re.findall(r'\bid="([^"]+)"', html)
        assert len(ids) == len(set(ids)), f"{name}: duplicate ids"
        assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == [], name
        assert "<style" not in html and not re.search(r"\sstyle=", html), name
        assert not re.search(r"\son[a-z]+=", html), name


def test_an_endpoint_portal_turned_off_is_shown_to_its_managers(world: World) -> None:
    from portal.services.merchants import webhooks
    from tests.merchants.test_webhooks import Answer, Receiver, run_worker

    receiver = Receiver()
    try:
        receiver.default = Answer(410)
        webhooks.create_endpoint(
            world.uow,
            actor=actor_of(world.uow, world.owner),
            merchant=world.mid,
            url=receiver.url,
            enabled_events=["*"],
        )
        world.pay("12")
        run_worker(lambda: world.uow)
    finally:
        receiver.close()
    owner = page_text(world.as_client(world.owner).get(f"/merchant/{world.mid}"))
    assert "A webhook endpoint was turned off." in owner and "410 Gone" in owner
    assert receiver.url in owner
    (endpoint,) = webhooks.list_endpoints(world.uow, actor=actor_of(world.uow, world.owner),
                                          merchant=world.mid).items  # fmt: skip
    assert f'href="/merchant/{world.mid}/webhooks/{endpoint.id}"' in owner  # enable and replay
    viewer = page_text(world.as_client(world.viewer).get(f"/merchant/{world.mid}"))
    assert "webhook endpoint was turned off" not in viewer
