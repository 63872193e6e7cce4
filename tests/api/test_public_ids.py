"""Public ids in the JSON API: every object and every reference carries its prefixed public id
(never an integer), a path id of the wrong shape is a 404 before any query of its own, another
person's object by its public id is the same 404 as an unknown one, cursors page by public id,
an idempotent replay answers the same id, and the OpenAPI document says all of it."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from portal import create_app
from portal.api.openapi import operations
from portal.config import database_url
from portal.domain.ids import PREFIXES, is_public_id, new_public_id
from portal.domain.types import Actor
from portal.services.identity import sessions
from tests.api import test_cards_api as shared
from tests.api.test_auth_api import API, error_of
from tests.api.test_cards_api import recipient_for
from tests.conftest import Factory

_fresh_limits = shared._fresh_limits
api, alice, budi = shared.api, shared.alice, shared.budi
as_alice, as_budi, as_admin = shared.as_alice, shared.as_budi, shared.as_admin

#: Fields that name an object, and the kinds they may name.
REFERENCES = {"user": ("user",), "card": ("card",)}
#: The kind of each object the cardholder API answers.
OBJECTS = {
    "user": ("user",),
    "role": ("role",),
    "card": ("card",),
    "top_up": ("top_up",),
    "transfer": ("transfer",),
    "withdrawal": ("withdrawal",),
    "activity": ("top_up", "transfer", "withdrawal"),
}


def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, response.get_data(as_text=True)
    return response.get_json()


def post(api: FlaskClient, path: str, body: dict[str, Any], headers: dict[str, str],
         key: str | None = None) -> Any:  # fmt: skip
    headers = {**headers, "Idempotency-Key": key or uuid.uuid4().hex}
    return api.post(f"{API}{path}", json=body, headers=headers)


def objects_in(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        if "object" in value:
            yield value
        for inner in value.values():
            yield from objects_in(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from objects_in(inner)


def check_ids(body: Any) -> int:
    """Every object's id and reference in ``body`` is a public id of its kind; returns how many
    objects were checked."""
    checked = 0
    for obj in objects_in(body):
        kind = obj["object"]
        if kind in OBJECTS and "id" in obj:
            assert any(is_public_id(k, obj["id"]) for k in OBJECTS[kind]), obj
        if kind == "session" and obj["kind"] == "web":
            assert is_public_id("session", obj["id"]), obj
        elif kind == "session":  # an API token family keeps its UUID
            assert uuid.UUID(obj["id"])
        for field, kinds in REFERENCES.items():
            if field in obj and kind != field:
                assert any(is_public_id(k, obj[field]) for k in kinds), (field, obj)
        for field, value in obj.items():
            assert not (field in ("id", *REFERENCES) and isinstance(value, int)), (field, obj)
        checked += 1
    return checked


@contextmanager
def statements(connection: sa.Connection) -> Iterator[list[str]]:
    sent: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        if not statement.lstrip().upper().startswith(("SAVEPOINT", "RELEASE", "ROLLBACK TO")):
            sent.append(statement)

    sa.event.listen(connection, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        sa.event.remove(connection, "before_cursor_execute", record)


# -- what the API answers ---------------------------------------------------------------------
def test_every_object_and_reference_carries_a_public_id_of_its_kind(
    api: FlaskClient, make: Factory, uow: Any, alice: Actor, budi: Actor,
    as_alice: dict[str, str], as_admin: dict[str, str],
) -> None:  # fmt: skip
    mine, theirs = make.card(alice, balance="100.00"), make.card(budi)
    assert alice.id is not None
    sessions.create_web_session(uow, user_id=alice.id, user_agent="", ip="", mfa_verified=True)
    top_up = ok(post(api, "/top_ups", {"card": mine.public_id, "amount": 500, "currency": "usd",
                                       "method": "cash"}, as_alice), 201)  # fmt: skip
    transfer = ok(post(api, "/transfers", {"from_card": mine.public_id,
                                           "to_card": recipient_for(api, as_alice, theirs),
                                           "amount": 300,
                                           "currency": "usd"}, as_alice), 201)  # fmt: skip
    withdrawal = ok(post(api, "/withdrawals", {
        "card": mine.public_id, "amount": 1000, "currency": "usd", "bank_name": "BCA",
        "account_number": "12345678", "account_holder": "Alice"}, as_alice), 201)  # fmt: skip
    new_card = {"card_type": "debit", "brand": "visa", "currency": "usd"}
    issued = ok(api.post(f"{API}/cards", json=new_card, headers=as_alice), 201)
    answers = [
        top_up, transfer, withdrawal, issued,
        ok(api.get(f"{API}/auth/me", headers=as_alice)),
        ok(api.get(f"{API}/auth/sessions", headers=as_alice)),
        ok(api.get(f"{API}/cards", headers=as_alice)),
        ok(api.get(f"{API}/cards/{mine.public_id}/balance", headers=as_alice)),
        ok(api.post(f"{API}/cards/lookup", json={"number": theirs.number}, headers=as_alice)),
        ok(api.get(f"{API}/top_ups", headers=as_alice)),
        ok(api.get(f"{API}/transfers/{transfer['id']}", headers=as_alice)),
        ok(api.get(f"{API}/withdrawals", headers=as_alice)),
        ok(api.get(f"{API}/activity", headers=as_alice)),
        ok(api.get(f"{API}/users", headers=as_admin)),
        ok(api.get(f"{API}/roles", headers=as_admin)),
    ]  # fmt: skip

    assert sum(check_ids(answer) for answer in answers) >= 30
    assert (top_up["card"], transfer["card"], withdrawal["card"]) == (mine.public_id,) * 3
    assert is_public_id("top_up", top_up["id"]) and is_public_id("transfer", transfer["id"])
    assert is_public_id("withdrawal", withdrawal["id"])
    activity_ids = {a["id"] for a in answers[12]["data"]}
    assert {top_up["id"], transfer["id"], withdrawal["id"]} <= activity_ids
    # No internal number of any of these rows shows anywhere.
    numbers = uow.run(
        lambda u: u.execute(
            "SELECT (SELECT id FROM top_ups WHERE public_id = :t) AS top_up,"
            " (SELECT id FROM transfers WHERE public_id = :r) AS transfer",
            {"t": top_up["id"], "r": transfer["id"]},
        ).one()
    )
    for number in (f"top_up_{numbers.top_up}", f"transfer_{numbers.transfer}"):
        assert all(number not in str(answer) for answer in answers)


# -- malformed and other people's ids ---------------------------------------------------------
@pytest.fixture(scope="module")
def real_app() -> Flask:
    """The portal's own application (no test-only routes), for its URL map and document."""
    url = os.environ.get("TEST_DATABASE_URL") or "postgresql://postgres@127.0.0.1:1/unused"
    return create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": database_url(url)})


@pytest.fixture(scope="module")
def id_routes(real_app: Flask) -> list[tuple[str, str, dict[str, str]]]:
    """(method, Flask rule, {path parameter: kind}) of every cardholder-API operation whose
    path holds public ids."""
    real = real_app
    found = []
    for rule in real.url_map.iter_rules():
        spec = getattr(real.view_functions.get(rule.endpoint), "__api_operation__", None)
        if spec is not None and spec.ids and set(spec.tags) & {"auth", "users", "cards", "money"}:
            found.append((spec.method, rule.rule, dict(spec.ids)))
    return found


def test_the_cardholder_api_declares_every_path_id(id_routes) -> None:
    paths = {(method, rule) for method, rule, _ in id_routes}
    assert ("GET", "/api/v1/cards/<card_id>") in paths
    assert ("POST", "/api/v1/withdrawals/<withdrawal_id>/confirm") in paths
    assert ("DELETE", "/api/v1/users/<user_id>/sessions/web/<session_id>") in paths
    # No integer converter is left on these paths.
    for _, rule, ids in id_routes:
        assert "<int:" not in rule
        assert all(f"<{name}>" in rule for name in ids)


@pytest.mark.parametrize("shape", ["integer", "garbage", "other_kind", "too_short", "unknown"])
def test_a_path_id_of_the_wrong_shape_is_a_404_before_any_query_of_its_own(
    api: FlaskClient, connection: sa.Connection, as_admin: dict[str, str], id_routes, shape: str
) -> None:
    def wrong(kind: str) -> str:
        good = new_public_id(kind)
        other = next(k for k in PREFIXES if k != kind)
        return {"integer": "42", "garbage": "x' OR 1=1", "other_kind": new_public_id(other),
                "too_short": good[:-1], "unknown": good}[shape]  # fmt: skip

    # What authenticating the admin costs: a request refused right after it (invalid body).
    with statements(connection) as authentication:
        error_of(api.post(f"{API}/roles", json={}, headers=as_admin), 422)
    assert authentication
    for method, rule, ids in id_routes:
        path = rule
        for name, kind in ids.items():
            path = path.replace(f"<{name}>", wrong(kind))
        path = re.sub(r"<uuid:\w+>", str(uuid.uuid4()), path).replace("<role>", "cardholder")
        with statements(connection) as sent:
            response = api.open(path, method=method, json={}, headers=as_admin)
        assert error_of(response, 404)["code"] == "not_found", (method, rule)
        if shape == "unknown":  # well formed: looked up, and found to name nothing
            assert len(sent) > len(authentication), (method, rule)
        else:  # never looked up: nothing beyond authenticating the caller
            assert len(sent) == len(authentication), (method, rule, sent)


def test_someone_elses_card_by_its_public_id_is_the_same_404_as_an_unknown_one(
    api: FlaskClient, make: Factory, budi: Actor, as_alice: dict[str, str]
) -> None:
    theirs = make.card(budi, balance="10.00")

    def answers(card: str) -> list[tuple[int, str, str, str | None]]:
        found = []
        for method, path, body in (
            ("GET", f"/cards/{card}", None),
            ("GET", f"/cards/{card}/balance", None),
            ("PATCH", f"/cards/{card}", {"name": "mine"}),
            ("POST", f"/cards/{card}/freeze", None),
            ("GET", f"/activity?card={card}", None),
            ("GET", f"/top_ups?card={card}", None),
        ):
            response = api.open(f"{API}{path}", method=method, json=body, headers=as_alice)
            error = error_of(response, 404)
            found.append((response.status_code, error["code"], error["message"], error["param"]))
        for path, body in (
            ("/top_ups", {"card": card, "amount": 600, "currency": "usd", "method": "cash"}),
            ("/withdrawals", {"card": card, "amount": 600, "currency": "usd", "bank_name": "BCA",
                              "account_number": "12345678", "account_holder": "A W"}),
        ):  # fmt: skip
            error = error_of(post(api, path, body, as_alice), 404)
            found.append((404, error["code"], error["message"], error["param"]))
        return found

    assert answers(theirs.public_id) == answers(new_public_id("card"))


# -- cursors and replays ----------------------------------------------------------------------
def test_list_cursors_are_public_ids_and_walk_each_object_once(
    api: FlaskClient, make: Factory, alice: Actor, budi: Actor, as_alice: dict[str, str]
) -> None:
    mine, theirs = make.card(alice, balance="500.00"), make.card(budi)
    to_budi = recipient_for(api, as_alice, theirs)
    sent = [
        ok(post(api, "/transfers", {"from_card": mine.public_id, "to_card": to_budi,
                                    "amount": 100 + i, "currency": "usd"}, as_alice), 201)["id"]
        for i in range(7)
    ]  # fmt: skip

    first = ok(api.get(f"{API}/transfers?limit=3", headers=as_alice))
    assert [t["id"] for t in first["data"]] == sent[::-1][:3] and first["has_more"]
    walked, page = [t["id"] for t in first["data"]], first
    while page["has_more"]:
        cursor = page["data"][-1]["id"]
        assert is_public_id("transfer", cursor)
        page = ok(api.get(f"{API}/transfers?limit=3&starting_after={cursor}", headers=as_alice))
        walked += [t["id"] for t in page["data"]]
    assert walked == sent[::-1]  # newest first, no duplicates, none missing
    assert len(set(walked)) == 7
    # The activity feed pages by the same ids.
    second = ok(api.get(f"{API}/activity?limit=2&starting_after={sent[-2]}", headers=as_alice))
    assert [a["id"] for a in second["data"]] == sent[-3::-1][:2]


def test_an_idempotent_replay_answers_the_same_public_id(
    api: FlaskClient, make: Factory, alice: Actor, budi: Actor, as_alice: dict[str, str]
) -> None:
    mine, theirs = make.card(alice, balance="50.00"), make.card(budi)
    body = {"from_card": mine.public_id, "to_card": recipient_for(api, as_alice, theirs),
            "amount": 250, "currency": "usd"}  # fmt: skip
    key = uuid.uuid4().hex

    first = post(api, "/transfers", body, as_alice, key)
    again = post(api, "/transfers", body, as_alice, key)

    assert (first.status_code, again.status_code) == (201, 201)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json()["id"] == first.get_json()["id"]
    assert is_public_id("transfer", first.get_json()["id"])
    listed = ok(api.get(f"{API}/transfers", headers=as_alice))["data"]
    assert [t["id"] for t in listed] == [first.get_json()["id"]]


# -- the document -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def spec(real_app: Flask) -> dict[str, Any]:
    return real_app.test_client().get("/api/v1/openapi.json").get_json()  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("schema", "field", "prefixes"),
    [
        ("User", "id", ["usr"]),
        ("UserSummary", "id", ["usr"]),
        ("Role", "id", ["rol"]),
        ("WebSession", "id", ["ses"]),
        ("Card", "id", ["card"]),
        ("Card", "user", ["usr"]),
        ("CardBalance", "card", ["card"]),
        ("TopUp", "id", ["tu"]),
        ("Transfer", "id", ["tr"]),
        ("Transfer", "card", ["card"]),
        ("Withdrawal", "id", ["wd"]),
        ("Activity", "id", ["tu", "tr", "wd"]),
        ("Activity", "card", ["card"]),
        ("NewTransfer", "from_card", ["card"]),
        ("NewTransfer", "to_card", ["card"]),
        ("NewTopUp", "card", ["card"]),
        ("NewWithdrawal", "card", ["card"]),
    ],
)
def test_the_document_describes_each_id_with_its_prefix(
    spec: dict[str, Any], schema: str, field: str, prefixes: list[str]
) -> None:
    prop = spec["components"]["schemas"][schema]["properties"][field]
    assert prop["type"] == "string"
    assert prop["description"]
    assert any(p in prop["description"] for p in (f"`{x}_" for x in prefixes))
    pattern = re.compile(prop["pattern"])
    for prefix in prefixes:
        assert pattern.match(f"{prefix}_" + "a1B2" * 6)
        assert not pattern.match(f"{prefix}_" + "a1B2" * 5)
    assert not pattern.match("12")
    assert prop["examples"] and all(pattern.match(e) for e in prop["examples"])


def test_the_document_gives_path_ids_and_cursors_their_patterns(
    spec: dict[str, Any], real_app: Flask
) -> None:
    card = spec["paths"]["/api/v1/cards/{card_id}"]["get"]
    (param,) = [p for p in card["parameters"] if p.get("in") == "path"]
    assert param["schema"]["pattern"] == "^card_[0-9A-Za-z]{24}$"
    assert param["schema"]["examples"][0].startswith("card_") and "`card_`" in param["description"]
    assert "404" in card["responses"]
    cursors = {
        "/api/v1/users": "usr_", "/api/v1/cards": "card_", "/api/v1/top_ups": "tu_",
        "/api/v1/transfers": "tr_", "/api/v1/withdrawals": "wd_", "/api/v1/roles": "rol_",
    }  # fmt: skip
    for path, prefix in cursors.items():
        params = {p["name"]: p for p in spec["paths"][path]["get"]["parameters"]}
        schema = params["starting_after"]["schema"]
        assert schema["type"] == "string" and schema["pattern"].startswith(f"^{prefix}"), path
    activity = {p["name"]: p for p in spec["paths"]["/api/v1/activity"]["get"]["parameters"]}
    assert re.match(activity["starting_after"]["schema"]["pattern"], "wd_" + "0" * 24)
    assert "public id" in spec["info"]["description"]
    for _, params, operation in operations(real_app):
        for name, kind in operation.ids:
            assert params[name]["pattern"] == f"^{PREFIXES[kind]}_[0-9A-Za-z]{{24}}$"
