"""Hosted checkout sessions through the services, on real PostgreSQL: creation rules (URLs,
expiry, fields, idempotency), merchant scoping, paying once from one's own card (captured or
held), declines that leave the session open, expiry on read and by the worker's task, and
several threads confirming one session at once (real commits)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest

from portal.domain.errors import (
    CardDeclined,
    Forbidden,
    IdempotencyConflict,
    InvalidInput,
    LimitExceeded,
    NotFound,
    UnexpectedState,
)
from portal.domain.ids import is_public_id
from portal.domain.money import Money
from portal.services.ledger import reconciliation
from portal.services.merchants import checkout, merchants, payments
from portal.services.shared.uow import UnitOfWork
from portal.services.wallet import cards
from tests.concurrency.helpers import error_kinds, fetch_all, fetch_value, run_together, warm_pool
from tests.conftest import Factory, new_key
from tests.merchants.conftest import open_shop

SUCCESS = "https://shop.example/thanks?order=7"
CANCEL = "https://shop.example/cart"


def usd(major: str) -> Money:
    return Money.of_major(major, "USD")


def create(uow, shop, amount: str = "20.00", **kw):
    kw.setdefault("success_url", SUCCESS)
    kw.setdefault("cancel_url", CANCEL)
    return checkout.create_checkout_session(
        uow, actor=shop.api, merchant=shop.merchant.public_id, amount=usd(amount),
        idempotency_key=kw.pop("key", None) or new_key(), **kw,
    )  # fmt: skip


def pay(uow, payer, session, card, key: str | None = None):
    return checkout.pay_checkout_session(
        uow, actor=payer, session=session.id, card=card.public_id,
        idempotency_key=key or new_key(),
    )  # fmt: skip


def get(uow, shop, session):
    return checkout.get_checkout_session(
        uow, actor=shop.api, merchant=shop.merchant.public_id, session=session.id
    )


def available(uow, card) -> tuple[int, int]:
    """(posted, available) of a card's wallet, in minor units."""
    row = uow.run(
        lambda u: u.execute(
            "SELECT posted_minor, posted_minor - pending_debits_minor AS available FROM accounts"
            " WHERE card_id = :c",
            {"c": card.card_id},
        ).one()
    )
    return row.posted_minor, row.available


def session_payments(uow, session) -> list:
    return uow.run(
        lambda u: u.execute(
            "SELECT p.public_id, p.status FROM payments p JOIN checkout_sessions cs"
            " ON cs.id = p.checkout_session_id WHERE cs.public_id = :id ORDER BY p.id",
            {"id": session.id},
        ).all()
    )


def assert_reconciled(uow) -> None:
    report = reconciliation.reconcile(uow)
    assert report.ok, report.violations


def with_settings(uow: UnitOfWork, **changes) -> UnitOfWork:
    return UnitOfWork(uow._session_factory, replace(uow.settings, **changes), clock=uow.clock)


# -- creating ---------------------------------------------------------------------------------
def test_create_answers_the_hosted_url_with_defaults(uow, shop, clock):
    session = create(uow, shop, "20.00", description="Two lattes", client_reference_id="ord_7",
                     metadata={"cart": "42"})  # fmt: skip
    assert is_public_id("checkout_session", session.id)
    assert session.url == f"{uow.settings.public_url}/checkout/{session.id}"
    assert (session.status, session.payment_status, session.payment) == ("open", "unpaid", None)
    assert (session.amount, session.currency, session.capture_method) == (2000, "USD", "automatic")
    assert session.expires_at - session.created == timedelta(hours=24)
    assert (session.success_url, session.cancel_url) == (SUCCESS, CANCEL)
    assert get(uow, shop, session) == session


@pytest.mark.parametrize("param", ["success_url", "cancel_url"])
@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/thanks",
        "ftp://shop.example/thanks",
        "/thanks",
        "shop.example/thanks",
        "https://user:secret@shop.example/thanks",
        "https://shop.example/with space",
        "https://shop.example:http/thanks",
        "javascript:alert(1)",
        "",
    ],
)
def test_return_urls_must_be_https(uow, shop, param, url):
    with pytest.raises(InvalidInput) as err:
        create(uow, shop, **{param: url})
    assert err.value.param == param
    assert (
        checkout.list_checkout_sessions(uow, actor=shop.api, merchant=shop.merchant.public_id).items
        == ()
    )


def test_http_only_to_loopback_and_only_outside_production(uow, shop):
    assert uow.settings.allow_loopback_http  # the test settings are development's
    local = create(
        uow, shop, success_url="http://127.0.0.1:8000/ok", cancel_url="http://localhost/no"
    )
    assert local.success_url == "http://127.0.0.1:8000/ok"
    strict = with_settings(uow, allow_loopback_http=False)
    with pytest.raises(InvalidInput) as err:
        create(strict, shop, success_url="http://127.0.0.1:8000/ok")
    assert err.value.param == "success_url"


@pytest.mark.parametrize(
    ("seconds", "ok"),
    [(1799, False), (1800, True), (86400, True), (86401, False), (0, False), (True, False)],
)
def test_expiry_is_30_minutes_to_24_hours(uow, shop, seconds, ok):
    if ok:
        session = create(uow, shop, expires_in=seconds)
        assert session.expires_at - session.created == timedelta(seconds=seconds)
        return
    with pytest.raises(InvalidInput) as err:
        create(uow, shop, expires_in=seconds)
    assert err.value.param == "expires_in"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"description": "x" * 256}, "description"),
        ({"client_reference_id": "r" * 201}, "client_reference_id"),
        ({"capture_method": "later"}, "capture_method"),
        ({"metadata": {"bad[key]": "v"}}, "metadata.bad[key]"),
        ({"metadata": {"k": 5}}, "metadata.k"),
    ],
)
def test_bad_fields_are_refused_by_name(uow, shop, fields, param):
    with pytest.raises(InvalidInput) as err:
        create(uow, shop, **fields)
    assert err.value.param == param


def test_amount_must_be_positive_and_within_limits(uow, shop):
    with pytest.raises(InvalidInput) as err:
        create(uow, shop, "0")
    assert err.value.param == "amount"
    maximum = uow.settings.limits_for("USD", "payment").maximum
    with pytest.raises(LimitExceeded):
        checkout.create_checkout_session(
            uow, actor=shop.api, merchant=shop.merchant.public_id,
            amount=Money(maximum + 1, "USD"), success_url=SUCCESS, cancel_url=CANCEL,
            idempotency_key=new_key(),
        )  # fmt: skip


def test_create_is_idempotent(uow, shop):
    key = new_key()
    first = create(uow, shop, key=key)
    again = create(uow, shop, key=key)
    assert again.id == first.id and again.replayed and not first.replayed
    with pytest.raises(IdempotencyConflict):
        create(uow, shop, "21.00", key=key)
    page = checkout.list_checkout_sessions(uow, actor=shop.api, merchant=shop.merchant.public_id)
    assert [s.id for s in page.items] == [first.id]


def test_a_key_without_payments_write_cannot_create(uow, make, staff):
    reader = open_shop(uow, make, staff, name="Read Only", scopes=("payments:read",))
    with pytest.raises(Forbidden):
        create(uow, reader)


def test_a_suspended_merchant_cannot_create_nor_be_paid(uow, make, staff, shop):
    payer = make.user()
    card = make.card(payer, balance="100")
    session = create(uow, shop)
    merchants.decide(uow, actor=staff, merchant=shop.merchant.public_id, action="suspend")
    with pytest.raises(Forbidden):
        pay(uow, payer, session, card)
    assert available(uow, card) == (10000, 10000)
    assert get_as_owner(uow, shop, session).status == "open"


def get_as_owner(uow, shop, session):
    return checkout.get_checkout_session(
        uow, actor=shop.owner, merchant=shop.merchant.public_id, session=session.id
    )


# -- reading ----------------------------------------------------------------------------------
def test_another_merchants_session_is_not_found(uow, make, staff, shop):
    other = open_shop(uow, make, staff, name="Other Shop")
    session = create(uow, shop)
    with pytest.raises(NotFound):
        checkout.get_checkout_session(
            uow, actor=other.api, merchant=other.merchant.public_id, session=session.id
        )
    with pytest.raises(NotFound):
        checkout.get_checkout_session(
            uow, actor=other.api, merchant=shop.merchant.public_id, session=session.id
        )
    listed = checkout.list_checkout_sessions(
        uow, actor=other.api, merchant=other.merchant.public_id
    )
    assert listed.items == ()
    with pytest.raises(NotFound):
        checkout.get_checkout_session(
            uow, actor=shop.api, merchant=shop.merchant.public_id, session="cs_nothing"
        )


def test_list_is_newest_first_by_cursor_with_filters(uow, shop, clock):
    made = []
    for n in range(5):
        made.append(create(uow, shop, client_reference_id=f"order-{n % 2}",
                           expires_in=1800 if n == 0 else 86400))  # fmt: skip
        clock.advance(seconds=1)
    newest = [s.id for s in reversed(made)]
    first = checkout.list_checkout_sessions(
        uow, actor=shop.api, merchant=shop.merchant.public_id, limit=2
    )
    assert [s.id for s in first.items] == newest[:2] and first.has_more
    rest = checkout.list_checkout_sessions(
        uow, actor=shop.api, merchant=shop.merchant.public_id, starting_after=first.items[-1].id
    )
    assert [s.id for s in rest.items] == newest[2:] and not rest.has_more
    odd = checkout.list_checkout_sessions(
        uow, actor=shop.api, merchant=shop.merchant.public_id, client_reference_id="order-1"
    )
    assert [s.id for s in odd.items] == [made[3].id, made[1].id]
    clock.advance(minutes=31)  # the first one is past its 30 minutes: expired on read
    expired = checkout.list_checkout_sessions(
        uow, actor=shop.api, merchant=shop.merchant.public_id, status="expired"
    )
    assert [s.id for s in expired.items] == [made[0].id]
    open_ = checkout.list_checkout_sessions(
        uow, actor=shop.api, merchant=shop.merchant.public_id, status="open"
    )
    assert [s.id for s in open_.items] == newest[:4]
    with pytest.raises(InvalidInput) as err:
        checkout.list_checkout_sessions(
            uow, actor=shop.api, merchant=shop.merchant.public_id, status="paid"
        )
    assert err.value.param == "status"
    with pytest.raises(InvalidInput) as err:
        checkout.list_checkout_sessions(
            uow, actor=shop.api, merchant=shop.merchant.public_id, starting_after="cs_x"
        )
    assert err.value.param == "starting_after"


def test_the_public_view_shows_only_what_the_page_needs(uow, shop):
    session = create(uow, shop, "12.50", description="A cake", client_reference_id="secret-ref",
                     metadata={"internal": "yes"})  # fmt: skip
    view = checkout.get_public_checkout(uow, session=session.id)
    assert (view.id, view.merchant_name, view.amount, view.description, view.status) == (
        session.id, shop.merchant.name, Money(1250, "USD"), "A cake", "open",
    )  # fmt: skip
    assert view.success_origin == "https://shop.example"
    assert "secret-ref" not in repr(view) and "internal" not in repr(view)
    assert "thanks" not in repr(view)
    with pytest.raises(NotFound):
        checkout.get_public_checkout(uow, session="cs_" + "x" * 24)
    assert checkout.cancel_url_of(uow, session=session.id) == CANCEL


def test_success_url_keeps_its_query_and_fragment():
    assert checkout.with_session_id("https://a.example/t?x=1&y=2#done", "cs_1") == (
        "https://a.example/t?x=1&y=2&session_id=cs_1#done"
    )
    assert checkout.with_session_id("https://a.example/t", "cs_1") == (
        "https://a.example/t?session_id=cs_1"
    )


# -- paying -----------------------------------------------------------------------------------
def test_paying_captures_once_and_completes_the_session(uow, make, shop):
    payer = make.user()
    card = make.card(payer, balance="100")
    session = create(uow, shop, "20.00", description="Two lattes", metadata={"cart": "42"})
    paid = pay(uow, payer, session, card)
    assert (paid.session.status, paid.session.payment_status) == ("complete", "paid")
    assert paid.payment.status == "succeeded" and paid.payment.amount_received == 2000
    assert paid.payment.checkout_session == session.id
    assert paid.payment.description == "Two lattes" and paid.payment.metadata == {"cart": "42"}
    target = urlsplit(paid.return_url)
    assert (target.netloc, target.path) == ("shop.example", "/thanks")
    assert parse_qs(target.query) == {"order": ["7"], "session_id": [session.id]}
    assert available(uow, card) == (8000, 8000)
    seen = get(uow, shop, session)
    assert (seen.status, seen.payment_status, seen.payment) == ("complete", "paid", paid.payment.id)
    assert seen.completed_at is not None
    payment = payments.get_payment(
        uow, actor=shop.api, merchant=shop.merchant.public_id, payment=paid.payment.id
    )
    assert payment.checkout_session == session.id
    assert_reconciled(uow)


def test_manual_capture_holds_and_counts_as_paid(uow, make, shop):
    payer = make.user()
    card = make.card(payer, balance="100")
    session = create(uow, shop, "30.00", capture_method="manual")
    paid = pay(uow, payer, session, card)
    assert paid.payment.status == "requires_capture" and paid.payment.amount_capturable == 3000
    assert (paid.session.status, paid.session.payment_status) == ("complete", "paid")
    assert available(uow, card) == (10000, 7000)  # held, not moved
    assert get(uow, shop, session).payment_status == "paid"
    assert_reconciled(uow)
    payments.capture_payment(
        uow, actor=shop.api, merchant=shop.merchant.public_id, payment=paid.payment.id,
        idempotency_key=new_key(),
    )  # fmt: skip
    assert available(uow, card) == (7000, 7000)
    assert get(uow, shop, session).payment_status == "paid"
    assert_reconciled(uow)


def test_an_uncaptured_hold_that_expires_leaves_the_session_unpaid(uow, make, shop, clock):
    payer = make.user()
    card = make.card(payer, balance="100")
    session = create(uow, shop, "30.00", capture_method="manual")
    pay(uow, payer, session, card)
    clock.advance(days=uow.settings.authorization_days, seconds=1)
    assert payments.expire_uncaptured(uow, actor=shop.owner) == 1
    seen = get(uow, shop, session)
    assert (seen.status, seen.payment_status) == ("complete", "unpaid")
    assert available(uow, card) == (10000, 10000)
    assert_reconciled(uow)


def test_a_completed_session_cannot_be_paid_again(uow, make, shop):
    payer = make.user()
    card = make.card(payer, balance="100")
    session = create(uow, shop)
    key = new_key()
    first = pay(uow, payer, session, card, key=key)
    # The same confirmation again (a double submit) answers the same payment.
    again = pay(uow, payer, session, card, key=key)
    assert again.replayed and again.payment.id == first.payment.id
    assert again.return_url == first.return_url
    # A new confirmation (another tab) is refused.
    with pytest.raises(UnexpectedState) as err:
        pay(uow, payer, session, card)
    assert err.value.code == "checkout_session_completed"
    other = make.user()
    with pytest.raises(UnexpectedState) as err:
        pay(uow, other, session, make.card(other, balance="100"))
    assert err.value.code == "checkout_session_completed"
    assert [p.public_id for p in session_payments(uow, session)] == [first.payment.id]
    assert available(uow, card) == (8000, 8000)
    assert_reconciled(uow)


def test_an_expired_session_cannot_be_paid(uow, make, shop, clock):
    payer = make.user()
    card = make.card(payer, balance="100")
    session = create(uow, shop, expires_in=1800)
    clock.advance(seconds=1800)
    assert get(uow, shop, session).status == "expired"  # before the worker ran
    assert checkout.get_public_checkout(uow, session=session.id).status == "expired"
    with pytest.raises(UnexpectedState) as err:
        pay(uow, payer, session, card)
    assert err.value.code == "checkout_session_expired"
    assert checkout.expire_checkout_sessions(uow) == 1
    assert checkout.expire_checkout_sessions(uow) == 0
    stored = uow.run(
        lambda u: u.execute(
            "SELECT status FROM checkout_sessions WHERE public_id = :id", {"id": session.id}
        ).scalar_one()
    )
    assert stored == "expired"
    with pytest.raises(UnexpectedState) as err:
        pay(uow, payer, session, card)
    assert err.value.code == "checkout_session_expired"
    assert session_payments(uow, session) == [] and available(uow, card) == (10000, 10000)
    assert_reconciled(uow)


def test_expiry_leaves_paid_and_unexpired_sessions_alone(uow, make, shop, clock):
    payer = make.user()
    card = make.card(payer, balance="100")
    paid = create(uow, shop, expires_in=1800)
    pay(uow, payer, paid, card)
    later = create(uow, shop)
    clock.advance(hours=1)
    assert checkout.expire_checkout_sessions(uow) == 0
    assert get(uow, shop, paid).status == "complete"
    assert get(uow, shop, later).status == "open"


def test_the_payer_must_own_the_card(uow, make, shop):
    payer, stranger = make.user(), make.user()
    theirs = make.card(stranger, balance="100")
    session = create(uow, shop)
    with pytest.raises(NotFound) as err:
        pay(uow, payer, session, theirs)
    assert err.value.param == "card"
    with pytest.raises(NotFound):
        checkout.pay_checkout_session(
            uow, actor=payer, session=session.id, card="card_" + "0" * 24,
            idempotency_key=new_key(),
        )  # fmt: skip
    with pytest.raises(NotFound):  # an internal id is no way around it
        checkout.pay_checkout_session(
            uow, actor=payer, session=session.id, card=theirs.card_id, idempotency_key=new_key()
        )
    assert session_payments(uow, session) == []
    assert available(uow, theirs) == (10000, 10000)
    assert get(uow, shop, session).status == "open"


def test_only_a_cardholder_pays(uow, make, shop):
    session = create(uow, shop)
    card = make.card(make.user(), balance="100")
    with pytest.raises(Forbidden):
        pay(uow, shop.api, session, card)
    with pytest.raises(NotFound):
        checkout.pay_checkout_session(
            uow, actor=make.user(), session="cs_" + "0" * 24, card=card.public_id,
            idempotency_key=new_key(),
        )  # fmt: skip


@pytest.mark.parametrize(("setup", "decline"), [("poor", "insufficient_funds"),
                                                ("frozen", "card_frozen"),
                                                ("idr", "currency_not_supported")])  # fmt: skip
def test_a_decline_is_recorded_and_the_session_stays_open(uow, make, shop, setup, decline):
    payer = make.user()
    if setup == "idr":
        bad = make.card(payer, balance="100000", currency="IDR")
    else:
        bad = make.card(payer, balance="5" if setup == "poor" else "100")
    if setup == "frozen":
        cards.set_frozen(uow, actor=payer, card_id=bad.card_id, frozen=True)
    good = make.card(payer, balance="100")
    session = create(uow, shop)
    key = new_key()
    with pytest.raises(CardDeclined) as err:
        pay(uow, payer, session, bad, key=key)
    assert err.value.details["decline_code"] == decline
    assert err.value.details["payment"]["checkout_session"] == session.id
    assert [tuple(p) for p in session_payments(uow, session)] == [
        (err.value.details["payment"]["id"], "requires_payment_method")
    ]
    seen = get(uow, shop, session)
    assert (seen.status, seen.payment_status, seen.payment) == ("open", "unpaid", None)
    # The same confirmation again answers the same decline, and records nothing new.
    with pytest.raises(CardDeclined) as again:
        pay(uow, payer, session, bad, key=key)
    assert again.value.replayed and again.value.details["decline_code"] == decline
    assert len(session_payments(uow, session)) == 1
    # Another card pays it.
    paid = pay(uow, payer, session, good)
    assert paid.session.status == "complete"
    assert [p.status for p in session_payments(uow, session)] == [
        "requires_payment_method", "succeeded",
    ]  # fmt: skip
    assert available(uow, good) == (8000, 8000)
    assert_reconciled(uow)


def test_a_pay_key_reused_for_another_card_is_refused(uow, make, shop):
    payer = make.user()
    poor, rich = make.card(payer, balance="5"), make.card(payer, balance="100")
    session = create(uow, shop)
    key = new_key()
    with pytest.raises(CardDeclined):
        pay(uow, payer, session, poor, key=key)
    with pytest.raises(IdempotencyConflict):
        pay(uow, payer, session, rich, key=key)
    assert get(uow, shop, session).status == "open"


# -- several confirmations at once (real commits) -----------------------------------------------
THREADS = 8


@pytest.mark.concurrency
@pytest.mark.parametrize("keys", ["one per tab", "one double-submitted"])
def test_racing_confirmations_pay_once(real_uow, committing_engine, staff_actor_real, keys):
    make = Factory(real_uow())
    shop = open_shop(real_uow(), make, staff_actor_real)
    payer = make.user()
    card = make.card(payer, balance="100")
    session = create(real_uow(), shop, "25.00")
    shared = new_key()
    warm_pool(committing_engine)

    def confirm(i: int):
        return pay(real_uow(), payer, session, card, key=shared if keys != "one per tab" else None)

    outcomes = run_together(THREADS, confirm)
    paid = [o.value for o in outcomes if o.error is None]
    if keys == "one per tab":
        assert len(paid) == 1, error_kinds(outcomes)
        assert error_kinds(outcomes) == {"checkout_session_completed": THREADS - 1}
    else:  # every retry of the one confirmation answers the first's payment
        assert len(paid) == THREADS, error_kinds(outcomes)
        assert sum(not p.replayed for p in paid) == 1
    assert {p.payment.id for p in paid} == {paid[0].payment.id}
    rows = fetch_all(
        committing_engine,
        "SELECT p.public_id, p.status FROM payments p WHERE p.checkout_session_id ="
        " (SELECT id FROM checkout_sessions WHERE public_id = :id)",
        id=session.id,
    )
    assert [(r.public_id, r.status) for r in rows] == [(paid[0].payment.id, "succeeded")]
    debits = fetch_value(
        committing_engine,
        "SELECT count(*) FROM postings p JOIN accounts a ON a.id = p.account_id"
        " WHERE a.card_id = :card AND p.amount_minor < 0",
        card=card.card_id,
    )
    assert debits == 1
    state = fetch_all(
        committing_engine,
        "SELECT cs.status, p.public_id FROM checkout_sessions cs JOIN payments p"
        " ON p.id = cs.payment_id WHERE cs.public_id = :id",
        id=session.id,
    )
    assert [tuple(r) for r in state] == [("complete", paid[0].payment.id)]
    assert available(real_uow(), card) == (7500, 7500)
    assert_reconciled(real_uow())


@pytest.fixture
def staff_actor_real(real_uow):
    return Factory(real_uow()).user(roles=("admin",))
