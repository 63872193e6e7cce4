"""Object ownership for every object type, generated from ``app.url_map``, and idempotency keys
scoped per caller.

Two worlds: A (the access matrix's cardholder and merchant, with one object of every kind:
cards, top-ups, transfers, withdrawals, web sessions and token families, the user, the
merchant with its key, payments, a refund, a checkout session, an event, a webhook endpoint and
a delivery, a payout and its balance transaction, a member and an invitation) and B (another
cardholder with the same kinds of money objects, another merchant with the same objects and its
own key). Every route with a path parameter that only an object's owner (and staff) may use is
called as B's cardholder, B's merchant owner or B's secret key with A's objects in the path,
also with B's own container (B's merchant, user or endpoint) around A's object: each must be a
404 that writes nothing. GET routes are also called as A, which must not be a 404: the path
really names something. A route whose parameters this module cannot fill fails the test.

Objects named in a body or a filter rather than the path (a top-up to A's card, a refund of A's
payment, listing A's cards) are tried as well. Idempotency keys belong to their caller: the same
key from two callers makes two objects, and from one caller replays one.

Already covered elsewhere, not repeated here: each service's own not-found rules
(``tests/services/test_activity.py``, ``test_public_ids.py``, ``test_wallet.py``), and per
route which roles may call it at all (``test_authorization_matrix.py``).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from portal.extensions import limiter
from portal.services.identity import sessions, tokens, users
from portal.web.auth import SESSION_KEY
from tests.conftest import Factory
from tests.security.test_authorization_matrix import (  # noqa: F401 (personas: a fixture)
    EXPECTED,
    KEY_ROUTES,
    Persona,
    _give_merchant_objects,
    _give_money_objects,
    _normalise,
    _request,
    _url,
    personas,
)

API = "/api/v1"
#: Path parameters that name a container of other objects: replaced by B's own in the mixed
#: attempt (B's merchant around A's payment, B's endpoint around A's delivery...).
CONTAINERS = ("merchant_id", "mid", "user_id", "endpoint_id")
#: Path parameters every route may take without naming anyone's object.
NOT_OBJECTS = {"role", "permission", "kind", "action", "token", "month", "family"}
#: Every path parameter the matrix's ``_url`` fills with the path owner's object.
OBJECTS = {
    "user_id", "session_id", "family_id", "ident", "card_id", "top_up_id", "transfer_id",
    "withdrawal_id", "merchant_id", "mid", "key_id", "kid", "payment_id", "pid", "refund_id",
    "member_id", "member", "iid", "event_id", "endpoint_id", "delivery_id", "payout_id", "po",
    "transaction_id", "public_id", "movement_id", "payee_id", "adjustment_id",
}  # fmt: skip


#: Tables a refused request may write to without changing anything: the idempotency record of
#: its answer (replayed on retry), the audit trail of the refusal, rate-limit counters, and a
#: session's or token's last use (a key's last use too, for requests made with a key).
BOOKKEEPING = {"idempotency_keys", "audit_events", "rate_limit_counters", "web_sessions",
               "refresh_tokens"}  # fmt: skip


def contents(connection: sa.Connection, skip: set[str]) -> dict[str, str]:
    """A digest of every table's rows but ``skip``'s, per table, in one statement. (Counting
    writes would also count what a refused request wrote and rolled back: a refused transfer
    locks, and bumps then rolls back, the card owner's change counter.)"""
    tables = connection.execute(
        sa.text("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
    ).scalars()
    parts = [
        f"SELECT '{t}' AS t, md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), ''))"
        f' FROM "{t}" x'
        for t in tables
        if t not in skip and t != "alembic_version"
    ]
    return dict(connection.execute(sa.text(" UNION ALL ".join(parts))).all())  # type: ignore[arg-type]


def _fill(rule: str, persona: Persona) -> str:
    """The matrix's URL for the rule, also filling a movement's ``<public_id>`` (A's top-up)."""
    for name in ("<public_id>", "<movement_id>"):
        rule = rule.replace(name, persona.top_up_id or "")
    return _url(rule, persona)


#: Valid page forms, so a refusal is about whose object it is and not about the input (a
#: fresh one-time token each time), and the table the owner's own request with it changes (None
#: where the owner may not do it to this object either: the matrix's member is the sole owner).
PAGE_FORMS: dict[tuple[str, str], tuple[Callable[[str], dict[str, str]], str | None]] = {
    ("POST", "/merchant/<mid>/keys/<kid>/roll"): (
        lambda url: {f"{url.split('/')[-2]}-form_token": uuid.uuid4().hex,
                     f"{url.split('/')[-2]}-overlap": "0"}, "api_keys"),
    ("POST", "/merchant/<mid>/team/members/<member>/role"): (
        lambda url: {f"{url.split('/')[-2]}-role": "viewer"}, None),
    ("POST", "/merchant/<mid>/webhooks/<endpoint_id>/rotate"): (
        lambda url: {"form_token": uuid.uuid4().hex, "overlap": "0"}, "webhook_endpoints"),
    ("POST", "/merchant/<mid>/webhooks/<endpoint_id>/status"): (
        lambda url: {"status": "disabled"}, "webhook_endpoints"),
}  # fmt: skip


def _send(client: FlaskClient, persona: Persona, method: str, url: str, rule: str) -> Any:
    """The matrix's request, with a valid form where the page needs one."""
    if (method, rule) not in PAGE_FORMS:
        return _request(client, persona, method, url, rule)
    with client.session_transaction() as flask_session:
        flask_session.clear()
        flask_session[SESSION_KEY] = persona.web_token
    return client.open(url, method=method, data=PAGE_FORMS[(method, rule)][0](url))


def _params(rule: str) -> list[str]:
    return re.findall(r"<(?:\w+:)?(\w+)>", rule)


def _persona(uow, make: Factory, name: str, roles: tuple[str, ...]) -> Persona:
    actor = make.user(roles=roles, first_name="Bee")
    assert actor.id is not None
    web = sessions.create_web_session(uow, user_id=actor.id, user_agent="b", ip="127.0.0.3",
                                      mfa_verified=True)  # fmt: skip
    other_web = sessions.create_web_session(uow, user_id=actor.id, user_agent="b2",
                                            ip="127.0.0.4", mfa_verified=True)  # fmt: skip
    pair = tokens.issue_tokens(uow, user_id=actor.id, user_agent="b")
    other_pair = tokens.issue_tokens(uow, user_id=actor.id, user_agent="b2")
    return Persona(name, actor.id, actor.public_id, web.token, pair.access_token,
                   other_web.public_id, str(other_pair.family_id))  # fmt: skip


@pytest.fixture
def world_b(uow, make: Factory, personas: dict[str, Persona]) -> dict[str, Persona]:  # noqa: F811
    """B: another cardholder with money objects, another merchant with every merchant object."""
    holder = _persona(uow, make, "cardholder", ("cardholder",))
    _give_money_objects(uow, make, users.actor_for(uow, holder.user_id), holder)
    shop = _persona(uow, make, "merchant", ("merchant",))
    admin = users.actor_for(uow, personas["admin"].user_id)
    shop.merchant = _give_merchant_objects(uow, make, users.actor_for(uow, shop.user_id), admin)
    holder.merchant = shop.merchant
    return {"holder": holder, "shop": shop}


def _owner_only_routes(app: Flask) -> list[tuple[str, str, str]]:
    """(method, rule, who in B tries it) for every route with an object in its path that only
    the object's owner and staff may use."""
    found: list[tuple[str, str, str]] = []
    unknown: list[str] = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        normal = _normalise(rule.rule)
        names = [p for p in _params(normal) if p not in NOT_OBJECTS]
        if not names:
            continue
        unknown += [f"{normal}: <{p}>" for p in names if p not in OBJECTS]
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            allowed = EXPECTED.get((method, normal))
            if allowed is None:  # new: the matrix will say who; meanwhile both try it
                found += [(method, normal, "holder?"), (method, normal, "shop?")]
                continue
            if "other" in allowed or "anonymous" in allowed:
                continue  # not owner-only (a public checkout link, say)
            if "cardholder" in allowed:
                found.append((method, normal, "holder"))
            if "merchant" in allowed:
                found.append((method, normal, "shop"))
    assert not unknown, "path parameters this test cannot fill:\n" + "\n".join(unknown)
    return sorted(found, key=lambda r: (r[1], r[0], r[2]))


def _swappable(rule: str) -> list[str]:
    """The containers around the rule's last object: what the mixed attempt makes B's own."""
    names = [p for p in _params(rule) if p not in NOT_OBJECTS]
    return [p for p in names[:-1] if p in CONTAINERS]


def _mixed(owner: Persona, intruder: Persona, swap: list[str]) -> Persona:
    """A's objects inside B's own containers (those named in ``swap``)."""
    merchant = dict(owner.merchant or {})
    theirs = intruder.merchant or {}
    for key in swap:
        if key in ("mid", "merchant_id"):
            merchant["mid"] = merchant["merchant_id"] = theirs["merchant_id"]
        elif key == "endpoint_id":
            merchant["endpoint_id"] = theirs["endpoint_id"]
    user = intruder.user_public_id if "user_id" in swap else owner.user_public_id
    return replace(owner, user_public_id=user, merchant=merchant)


_UNCHANGED: dict[tuple[int, frozenset[str]], dict[str, str]] = {}


@pytest.fixture(autouse=True)
def _fresh_baseline() -> None:
    _UNCHANGED.clear()  # one test's state is not the next one's


def _counters(connection: sa.Connection) -> tuple[int, ...]:
    return tuple(
        connection.execute(
            sa.text(
                "SELECT coalesce(sum(n_tup_ins), 0), coalesce(sum(n_tup_upd), 0),"
                " coalesce(sum(n_tup_del), 0) FROM pg_stat_xact_user_tables"
            )
        ).one()
    )


def changed_by(
    connection: sa.Connection,
    send: Callable[[], Any],
    *,
    keep: set[str] = BOOKKEEPING,
    fresh_limits: bool = True,
) -> tuple[Any, list[str]]:
    """Send in a savepoint rolled back afterwards: the response, and the tables (but ``keep``)
    whose rows it changed. Every request starts from the same state, so the tables are digested
    once per test, and again only after a request that wrote (or tried to write) something."""
    if fresh_limits:
        limiter.reset()
    key = (id(connection), frozenset(keep))
    before = _UNCHANGED.get(key) or _UNCHANGED.setdefault(key, contents(connection, keep))
    counted = _counters(connection)
    savepoint = connection.begin_nested()
    try:
        response = send()
        if _counters(connection) == counted:
            return response, []
        after = contents(connection, keep)
        return response, sorted(t for t, digest in after.items() if digest != before.get(t))
    finally:
        savepoint.rollback()


_in_savepoint = changed_by


def test_another_callers_objects_are_not_found_on_every_route(
    app: Flask,
    connection: sa.Connection,
    personas: dict[str, Persona],  # noqa: F811
    world_b: dict[str, Persona],
) -> None:
    owner = personas["cardholder"]  # the matrix's path objects: A's cardholder and merchant
    a_shop = personas["merchant"]
    routes = _owner_only_routes(app)
    assert len(routes) > 60
    client = app.test_client()
    wrong: list[str] = []
    for method, rule, who in routes:
        intruder = world_b[who.rstrip("?")]
        refused = (404, 403) if who.endswith("?") else (404,)  # not in the table yet: refused
        urls = {"A's objects": _fill(rule, owner)}
        if swap := _swappable(rule):
            urls["A's objects in B's containers"] = _fill(rule, _mixed(owner, intruder, swap))
        for label, url in urls.items():
            keep = BOOKKEEPING | {"api_keys"} if url.startswith(KEY_ROUTES) else BOOKKEEPING
            response, written = _in_savepoint(
                connection, partial(_send, client, intruder, method, url, rule), keep=keep
            )
            if response.status_code not in refused or written:
                wrong.append(f"{method} {rule} as B's {who} ({label}): {response.status_code}"
                             f" wrote {written}")  # fmt: skip
        if (table := PAGE_FORMS.get((method, rule), (None, None))[1]) is not None:
            mine = a_shop if who.startswith("shop") else owner  # the form is good: it acts
            response, written = _in_savepoint(
                connection,
                partial(_send, client, mine, method, urls["A's objects"], rule),
                keep=set(),
            )
            if table not in written:
                wrong.append(f"{method} {rule}: its owner's request did not change {table}"
                             f" ({response.status_code})")  # fmt: skip
        if method == "GET":  # the same path as its owner names a real object
            mine = a_shop if who.startswith("shop") else owner
            response, _ = _in_savepoint(
                connection, partial(_request, client, mine, method, urls["A's objects"], rule)
            )
            if response.status_code == 404:
                wrong.append(f"GET {rule}: 404 for its owner too (the path names nothing)")
    assert not wrong, "\n".join(wrong)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Idempotency-Key": uuid.uuid4().hex}


def test_objects_named_in_a_body_or_a_filter_are_not_found_either(
    app: Flask,
    connection: sa.Connection,
    personas: dict[str, Persona],  # noqa: F811
    world_b: dict[str, Persona],
) -> None:
    a, a_shop = personas["cardholder"], personas["merchant"].merchant or {}
    b, b_shop = world_b["holder"], world_b["shop"]
    b_key = (b_shop.merchant or {})["secret"]
    holder, shop = _bearer(b.access_token or ""), _bearer(b_key)
    bank = {"bank_name": "BCA", "account_number": "12345678", "account_holder": "Bee Two"}
    attempts: list[tuple[str, str, dict[str, str], dict[str, Any] | None]] = [
        ("POST", "/top_ups", holder, {"card": a.card_id, "amount": 500, "currency": "usd",
                                      "method": "cash"}),
        ("POST", "/withdrawals", holder, {"card": a.card_id, "amount": 500, "currency": "usd",
                                          **bank}),
        ("POST", "/transfers", holder, {"from_card": a.card_id, "to_card": b.card_id,
                                        "amount": 100, "currency": "usd"}),
        ("GET", f"/cards?user={a.user_public_id}", holder, None),
        ("GET", f"/top_ups?card={a.card_id}", holder, None),
        ("GET", f"/activity?card={a.card_id}", holder, None),
        ("POST", "/refunds", shop, {"payment": a_shop["payment_id"], "amount": 1}),
        ("GET", f"/refunds?payment={a_shop['payment_id']}", shop, None),
        ("POST", f"/payments/{a_shop['payment_id']}/capture", shop, {}),
        # Statistics of A's card, merchant and key.
        ("GET", f"/statistics/top_ups/monthly?scope=card&id={a.card_id}", holder, None),
        ("GET", f"/statistics/dashboard?scope=card&id={a.card_id}", holder, None),
        ("GET", f"/statistics/payments/yearly?scope=merchant&id={a_shop['merchant_id']}", shop,
         None),
        ("GET", f"/statistics/payments/methods?scope=api_key&id={a_shop['key_id']}", shop, None),
        ("GET", f"/statistics/dashboard?scope=merchant&id={a_shop['merchant_id']}",
         _bearer(b_shop.access_token or ""), None),
    ]  # fmt: skip
    client = app.test_client()
    wrong: list[str] = []
    for method, path, headers, body in attempts:
        response, written = _in_savepoint(
            connection,
            partial(client.open, f"{API}{path}", method=method, headers=headers, json=body),
            keep=BOOKKEEPING | {"api_keys"} if headers is shop else BOOKKEEPING,
        )
        text = response.get_data(as_text=True)
        leaked = any(
            ident and ident in text.replace(path, "")
            for ident in (a.card_id, a.top_up_id, a_shop["payment_id"], a_shop["refund_id"])
        )
        # A filter naming someone else's object finds nothing: a 404, or an empty list.
        empty = method == "GET" and response.status_code == 200 and not response.get_json()["data"]
        if (response.status_code != 404 and not empty) or written or leaked:
            wrong.append(f"{method} {path}: {response.status_code} wrote {written} {text[:200]}")
    assert not wrong, "\n".join(wrong)


# -- idempotency keys are per caller ------------------------------------------------------------
def _post(client: FlaskClient, path: str, token: str, key: str, body: dict[str, Any]) -> Any:
    response = client.post(
        f"{API}{path}", json=body, headers={"Authorization": f"Bearer {token}",
                                            "Idempotency-Key": key},
    )  # fmt: skip
    assert response.status_code in (200, 201), f"{path}: {response.get_data(as_text=True)}"
    return response.get_json()


def test_one_idempotency_key_from_two_callers_makes_two_objects(
    app: Flask,
    connection: sa.Connection,
    make: Factory,
    personas: dict[str, Persona],  # noqa: F811
    world_b: dict[str, Persona],
) -> None:
    limiter.reset()
    a, b = personas["cardholder"], world_b["holder"]
    a_card, b_card = (
        make.card(users.actor_for(make.uow, a.user_id), balance="20.00"),
        make.card(users.actor_for(make.uow, b.user_id), balance="20.00"),
    )
    a_key = (personas["merchant"].merchant or {})["secret"]
    b_key = (world_b["shop"].merchant or {})["secret"]
    payer = make.card(make.user(), balance="100.00")
    card = {"number": payer.number, "exp_month": payer.expiry_month,
            "exp_year": payer.expiry_year, "cvc": payer.cvv}  # fmt: skip
    bank = {"bank_name": "BCA", "account_number": "12345678", "account_holder": "A B"}
    kinds = {
        "cards": lambda own: {"card_type": "debit", "brand": "visa", "currency": "usd"},
        "top_ups": lambda own: {"card": own.public_id, "amount": 500, "currency": "usd",
                                "method": "cash"},
        "transfers": lambda own: {"from_card": own.public_id, "to_card": own.public_id,
                                  "amount": 100, "currency": "usd"},
        "withdrawals": lambda own: {"card": own.public_id, "amount": 500, "currency": "usd",
                                    **bank},
    }  # fmt: skip
    client = app.test_client()
    made: dict[str, tuple[str, str]] = {}
    for path, body in kinds.items():
        key = f"shared-{path}-{uuid.uuid4().hex[:8]}"
        if path == "transfers":  # to one's own other card
            a_to, b_to = (
                make.card(users.actor_for(make.uow, a.user_id)),
                make.card(users.actor_for(make.uow, b.user_id)),
            )
            first = _post(client, f"/{path}", a.access_token or "", key,
                          {**body(a_card), "to_card": a_to.public_id})  # fmt: skip
            second = _post(client, f"/{path}", b.access_token or "", key,
                           {**body(b_card), "to_card": b_to.public_id})  # fmt: skip
        else:
            first = _post(client, f"/{path}", a.access_token or "", key, body(a_card))
            second = _post(client, f"/{path}", b.access_token or "", key, body(b_card))
        made[path] = (first["id"], second["id"])
    for path, body in {
        "payments": {"amount": 300, "currency": "usd", "card": card},
        "checkout/sessions": {"amount": 300, "currency": "usd",
                              "success_url": "https://shop.example/ok",
                              "cancel_url": "https://shop.example/back"},
    }.items():  # fmt: skip
        key = f"shared-{path}-{uuid.uuid4().hex[:8]}"
        first = _post(client, f"/{path}", a_key, key, body)
        second = _post(client, f"/{path}", b_key, key, body)
        replayed = _post(client, f"/{path}", a_key, key, body)
        assert replayed["id"] == first["id"], f"{path}: the same caller's retry replays"
        made[path] = (first["id"], second["id"])
    same = {path: ids for path, ids in made.items() if ids[0] == ids[1]}
    assert not same, f"one key, two callers, one object: {same}"
    # Refunds of each merchant's own payment under one key.
    key = f"shared-refunds-{uuid.uuid4().hex[:8]}"
    first = _post(client, "/refunds", a_key, key, {"payment": made["payments"][0], "amount": 1})
    second = _post(client, "/refunds", b_key, key, {"payment": made["payments"][1], "amount": 1})
    assert first["id"] != second["id"]
