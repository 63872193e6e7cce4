"""Oversized and malformed bodies against every JSON API operation that takes one, and hostile
form fields against every page form, on the real application.

Generated from ``app.url_map`` and the OpenAPI document's request schemas: each operation is
called as a caller the access table lets through (its path objects the matrix's), with, in
turn: broken JSON, a JSON array, a body over the size limit, nesting thousands deep, numbers
of 400 digits in its number fields (and, for a sample of operations, a bare string, invalid
UTF-8, the wrong media type, a form, ``NaN``, ``Infinity``, 400-digit literals, a NUL byte
outside strings), and, field by field with the other fields holding real values, a lone
surrogate or a NUL character (which PostgreSQL cannot store) in every free-text field. Each
must be answered with a 4xx, never a 5xx, and change no row. Page forms get NUL characters,
lone surrogates and a field over the form size limit in every field they might read: never a
5xx.

The API machinery's own answers (400 ``invalid_json``, 413, 422 naming the field) are proven on
a sample blueprint in ``tests/api/test_conventions.py``; this module proves every real
operation sits behind them.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from portal.extensions import limiter
from portal.web.auth import SESSION_KEY
from tests.security.test_authorization_matrix import (  # noqa: F401 (personas: a fixture)
    EXPECTED,
    KEY_ROUTES,
    PERSONAS,
    Persona,
    _normalise,
    personas,
)
from tests.security.test_object_ownership import BOOKKEEPING, _fill, changed_by

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
#: Who calls an operation: the first of these the access table allows.
PREFERENCE = ("cardholder", "merchant", "admin", "support", "other", "anonymous")
LIMIT = 1024 * 1024  # portal.api.operation.MAX_BODY_BYTES


def _caller(method: str, rule: str) -> str:
    allowed = EXPECTED.get((method, rule))
    if not allowed:
        return "cardholder"
    return next(p for p in PREFERENCE if p in allowed)


def _openapi_path(rule: str) -> str:
    return re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule)


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            options = [o for o in schema[key] if o.get("type") != "null"]
            if options:
                return {**_resolve(doc, options[0]), **{k: v for k, v in schema.items()
                                                        if k not in (key,)}}  # fmt: skip
    return schema


def _values(persona: Persona) -> dict[str, Any]:
    """Real values for the fields operations name, from the persona's objects."""
    shop = persona.merchant or {}
    return {
        "card": persona.card_id, "from_card": persona.card_id, "to_card": persona.card_id,
        "payment": shop.get("payment_id"), "amount": 500, "currency": "usd",
        "url": "https://hooks.example.com/portal", "enabled_events": ["*"],
        "success_url": "https://shop.example/ok", "cancel_url": "https://shop.example/back",
        "email": f"hostile-{uuid.uuid4().hex[:6]}@example.test", "role": "viewer",
        "account_number": "12345678", "settlement_currency": "usd",
        "website": "https://shop.example", "contact_email": "shop@example.test",
    }  # fmt: skip


def _sample(doc: dict[str, Any], schema: dict[str, Any], name: str, known: dict[str, Any]) -> Any:
    schema = _resolve(doc, schema)
    if name in known and known[name] is not None:
        return known[name]
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    if "examples" in schema and schema["examples"]:
        return schema["examples"][0]
    if "default" in schema and schema["default"] not in (None, ""):
        return schema["default"]
    kind = schema.get("type")
    if kind == "integer":
        return max(int(schema.get("minimum", 1)), 1)
    if kind == "boolean":
        return False
    if kind == "array":
        return []
    if kind == "object":
        return {}
    return "Hostile text"


def _free_text(doc: dict[str, Any], schema: dict[str, Any], name: str) -> bool:
    """A string field any text may go into (no pattern, choice or known meaning)."""
    schema = _resolve(doc, schema)
    return (
        schema.get("type") == "string"
        and "pattern" not in schema
        and "enum" not in schema
        and schema.get("format") is None
        and name not in {"currency", "email", "url", "success_url", "cancel_url", "website"}
    )


def _operations(app: Flask, doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(method, rule, request schema) of every API operation that reads a JSON body."""
    for rule in app.url_map.iter_rules():
        normal = _normalise(rule.rule)
        if not normal.startswith("/api/"):
            continue
        for method in sorted((rule.methods or set()) & BODY_METHODS):
            operation = doc["paths"].get(_openapi_path(normal), {}).get(method.lower(), {})
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if body:  # an operation without a body model never reads one
                yield method, normal, _resolve(doc, body["schema"])


def _headers(persona: Persona, url: str, content_type: str | None) -> dict[str, str]:
    headers = {"Idempotency-Key": uuid.uuid4().hex}
    if content_type:
        headers["Content-Type"] = content_type
    if persona.access_token:
        headers["Authorization"] = f"Bearer {persona.access_token}"
    if url.startswith(KEY_ROUTES) and persona.name == "merchant":
        headers["Authorization"] = f"Bearer {(persona.merchant or {})['secret']}"
    return headers


def _deep(levels: int) -> bytes:
    return b'{"a":' + b"[" * levels + b"]" * levels + b"}"


#: Whole-body attacks sent to every operation: (name, body bytes, content type).
SHAPES: list[tuple[str, bytes, str | None]] = [
    ("broken JSON", b'{"amount": 5', "application/json"),
    ("a JSON array", b"[1, 2, 3]", "application/json"),
    ("over the size limit", b'{"memo": "' + b"x" * (LIMIT + 10) + b'"}', "application/json"),
    ("nested 50,000 deep", _deep(50_000), "application/json"),
]
#: More of them, sent to a few operations of each kind (the same reader parses every body).
MORE_SHAPES: list[tuple[str, bytes, str | None]] = [
    ("a bare string", b'"hello"', "application/json"),
    ("invalid UTF-8", b'{"name": "\xff\xfe\xfa"}', "application/json"),
    ("the wrong media type", b'{"amount": 500}', "text/plain"),
    ("form-encoded", b"amount=500&currency=usd", "application/x-www-form-urlencoded"),
    ("NaN", b'{"amount": NaN}', "application/json"),
    ("Infinity", b'{"amount": Infinity}', "application/json"),
    ("a 400-digit number", b'{"amount": ' + b"9" * 400 + b"}", "application/json"),
    ("a 400-digit exponent", b'{"amount": 1e400}', "application/json"),
    ("a NUL byte outside strings", b'{"amount": 5\x00}', "application/json"),
]
#: The operations that also get MORE_SHAPES: a token's, a money movement's, a key's, a PATCH.
SAMPLED = {("POST", "/api/v1/auth/token"), ("POST", "/api/v1/transfers"),
           ("POST", "/api/v1/payments"), ("PATCH", "/api/v1/users/me"),
           ("POST", "/api/v1/webhook_endpoints/<endpoint_id>")}  # fmt: skip


@pytest.fixture
def api_doc(app: Flask) -> dict[str, Any]:
    return app.test_client().get("/api/v1/openapi.json").get_json()


def _api_attempts(
    app: Flask, doc: dict[str, Any], people: dict[str, Persona], hostile: dict[str, str] | None
) -> Iterator[tuple[str, str, str, Persona, list[tuple[str, bytes, str | None]]]]:
    """(method, rule, url, caller, attempts) per operation: the whole-body shapes, or with
    ``hostile`` ({label: value}) that value in each free-text field, the rest real."""
    for method, rule, schema in _operations(app, doc):
        persona = people[_caller(method, rule)]
        url = _fill(rule, people["cardholder"])
        properties = schema.get("properties", {})
        good = {n: _sample(doc, s, n, _values(people["cardholder"]))
                for n, s in properties.items()}  # fmt: skip
        attempts: list[tuple[str, bytes, str | None]] = []
        if hostile is None:
            attempts += SHAPES + (MORE_SHAPES if (method, rule) in SAMPLED else [])
            numbers = [n for n, v in good.items() if type(v) is int]
            if numbers:
                huge = {**good, **{n: 10**400 for n in numbers}}
                attempts.append(("400-digit integers in " + ", ".join(numbers),
                                 json.dumps(huge).encode(), "application/json"))  # fmt: skip
        else:
            for name, field_schema in properties.items():
                if _free_text(doc, field_schema, name):
                    for label, value in hostile.items():
                        body = json.dumps({**good, name: value}).encode()  # JSON-escaped
                        attempts.append((f"{label} in {name}", body, "application/json"))
        yield method, rule, url, persona, attempts


def _refusals(app: Flask, connection: sa.Connection, operations) -> tuple[int, list[str]]:
    client = app.test_client()
    wrong: list[str] = []
    count = 0
    for method, rule, url, persona, attempts in operations:
        keep = BOOKKEEPING | {"api_keys"} if url.startswith(KEY_ROUTES) else BOOKKEEPING
        limiter.reset()  # per operation: a limited route's refusals may count, as a 4xx
        for label, body, content_type in attempts:
            count += 1
            send = partial(client.open, url, method=method, data=body,
                           headers=_headers(persona, url, content_type))  # fmt: skip
            response, changed = changed_by(connection, send, keep=keep, fresh_limits=False)
            if not 400 <= response.status_code < 500 or changed:
                wrong.append(f"{method} {rule} as {persona.name}, {label}: "
                             f"{response.status_code} changed {changed} "
                             f"{response.get_data(as_text=True)[:160]}")  # fmt: skip
    return count, wrong


def test_every_api_body_refuses_hostile_input_with_a_4xx_and_changes_nothing(
    app: Flask,
    connection: sa.Connection,
    personas: dict[str, Persona],  # noqa: F811
    api_doc: dict[str, Any],
) -> None:
    assert len(list(_operations(app, api_doc))) > 35
    surrogate = {"a lone surrogate": "te\ud800xt"}
    count, wrong = _refusals(app, connection, [
        *_api_attempts(app, api_doc, personas, None),
        *_api_attempts(app, api_doc, personas, surrogate),
    ])  # fmt: skip
    assert count > 35 * len(SHAPES) + len(SAMPLED) * len(MORE_SHAPES)
    assert not wrong, "\n".join(wrong)


def test_a_nul_character_in_any_api_text_field_is_a_4xx(
    app: Flask,
    connection: sa.Connection,
    personas: dict[str, Persona],  # noqa: F811
    api_doc: dict[str, Any],
) -> None:
    count, wrong = _refusals(
        app, connection, _api_attempts(app, api_doc, personas, {"a NUL character": "te\x00xt"})
    )
    assert count > 20  # free-text fields were found in the schemas
    assert not wrong, "\n".join(wrong)


#: Field names the page forms use, each sent with a hostile value (unknown fields are ignored).
FORM_FIELDS = ("email", "password", "password_confirmation", "first_name", "last_name", "name",
               "memo", "amount", "currency", "card", "from_card", "to_card", "recipient",
               "bank_name", "account_number", "account_holder", "url", "description", "reason",
               "website", "contact_email", "code", "next", "q", "status", "role")  # fmt: skip


def test_every_page_form_refuses_hostile_fields_without_a_5xx(
    app: Flask,
    connection: sa.Connection,
    personas: dict[str, Persona],  # noqa: F811
) -> None:
    client: FlaskClient = app.test_client()
    routes = sorted(
        {
            (method, _normalise(rule.rule))
            for rule in app.url_map.iter_rules()
            if rule.endpoint != "static" and not rule.rule.startswith("/api/")
            for method in (rule.methods or set()) & {"POST", "PUT", "PATCH", "DELETE"}
        }
    )
    attempts = {
        "NUL characters": {f: "te\x00xt" for f in FORM_FIELDS},
        "lone surrogates (as UTF-8 of U+D800)": "surrogate",
        "a field over the form size limit": {"memo": "x" * (520 * 1024)},  # Flask: 500 KB
    }
    wrong: list[str] = []
    for method, rule in routes:
        persona = personas[_caller(method, rule)]
        url = _fill(rule, personas["cardholder"])
        limiter.reset()
        for label, form in attempts.items():

            def send(form: Any = form, persona: Persona = persona, url: str = url,
                     method: str = method) -> Any:  # fmt: skip
                with client.session_transaction() as flask_session:
                    flask_session.clear()
                    if persona.web_token:
                        flask_session[SESSION_KEY] = persona.web_token
                if form == "surrogate":  # %ED%A0%80: not valid UTF-8
                    data = "&".join(f"{f}=te%ED%A0%80xt" for f in FORM_FIELDS)
                    kind = "application/x-www-form-urlencoded"
                    return client.open(url, method=method, data=data, content_type=kind)
                return client.open(url, method=method, data=form)

            # A page may answer a refusal with the form again (4xx) or a redirect with a
            # message; a form without text fields (freeze a card) may act: only no 5xx here.
            response, _ = changed_by(connection, send, fresh_limits=False)
            if response.status_code >= 500:
                wrong.append(f"{method} {rule} as {persona.name}, {label}: "
                             f"{response.status_code}")  # fmt: skip
    assert not wrong, "\n".join(wrong)


def test_an_empty_list_field_is_taken_or_refused_never_a_5xx(
    app: Flask,
    connection: sa.Connection,
    personas: dict[str, Persona],  # noqa: F811
) -> None:
    admin = personas["admin"]
    body = {"email": f"empty-{uuid.uuid4().hex[:6]}@example.test", "first_name": "Nora",
            "last_name": "Roles", "roles": []}  # fmt: skip
    response, _ = changed_by(
        connection,
        partial(app.test_client().post, "/api/v1/users", json=body,
                headers=_headers(admin, "/api/v1/users", None)),
    )  # fmt: skip
    assert response.status_code < 500, response.get_data(as_text=True)
