"""The JSON API's conventions, through a test-only blueprint (``conftest.py``): the order of
checks (401 -> 403 -> 400 -> 422), the error object for every status, request ids, rate limits
and cursor pagination."""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import pytest
from flask import Blueprint, Flask
from flask.testing import FlaskClient
from pydantic import BaseModel
from werkzeug.test import TestResponse

from portal.api import operation
from tests.api.conftest import MERCHANT_KEY, NOBODY, READER, WRITER, auth

THINGS = "/api/v1/sample/things"
GOOD_THING = {"name": "lamp", "colour": "red", "amount": 1200}
REQUEST_ID = re.compile(r"^req_[0-9a-f]{32}$")


def error_of(response: TestResponse, status: int) -> dict[str, Any]:
    """The error object, after checking the status, the media type and the envelope's keys."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"type", "code", "message", "param", "request_id"}
    assert error["request_id"] == response.headers["X-Request-ID"]
    assert isinstance(error["message"], str) and error["message"]
    return error  # type: ignore[no-any-return]


# -- authentication first --------------------------------------------------------------------
def test_anonymous_request_with_a_bad_body_is_401_not_422(client: FlaskClient) -> None:
    response = client.post(THINGS, json={"name": ""})

    error = error_of(response, 401)
    assert error["type"] == "authentication_error"
    assert error["code"] == "unauthenticated"
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="portal"'


def test_anonymous_request_with_malformed_json_is_401_not_400(client: FlaskClient) -> None:
    response = client.post(THINGS, data="{not json", content_type="application/json")

    assert error_of(response, 401)["type"] == "authentication_error"


@pytest.mark.parametrize(
    "header", ["", "Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "Bearer two words", "tok_writer"]
)
def test_missing_or_malformed_authorization_header_is_401(client: FlaskClient, header: str) -> None:
    response = client.get(THINGS, headers={"Authorization": header} if header else {})

    assert error_of(response, 401)["code"] == "unauthenticated"
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="portal"'


def test_rejected_token_is_401_invalid_token(client: FlaskClient) -> None:
    response = client.get(THINGS, headers=auth("tok_forged"))

    error = error_of(response, 401)
    assert error["code"] == "token_invalid"  # the authenticator's own code
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="portal", error="invalid_token"'


def test_without_a_registered_authenticator_every_token_is_refused(
    client: FlaskClient, api_app: Flask, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    monkeypatch.delitem(api_app.extensions, "portal.api_authenticator")

    with caplog.at_level(logging.ERROR, logger="portal.api"):
        response = client.get(THINGS, headers=auth(READER))

    assert error_of(response, 401)["code"] == "unauthenticated"
    assert "no authenticator registered" in caplog.text


def test_actor_reaches_the_view(client: FlaskClient) -> None:
    response = client.post(THINGS, json=GOOD_THING, headers=auth(WRITER))

    assert response.status_code == 201
    assert response.get_json() == {"id": 1002, "object": "thing", "name": "lamp", "colour": "red"}


def test_a_second_scheme_authenticates_by_its_prefix(client: FlaskClient) -> None:
    """``get_thing`` accepts bearer tokens and test keys; ``list_things`` bearer tokens only."""
    assert client.get(f"{THINGS}/3", headers=auth(MERCHANT_KEY)).status_code == 200
    assert client.get(f"{THINGS}/3", headers=auth(READER)).status_code == 200
    error_of(client.get(f"{THINGS}/3", headers=auth("tk_forged")), 401)
    error_of(client.get(THINGS, headers=auth(MERCHANT_KEY)), 401)


# -- permission before the body ----------------------------------------------------------------
def test_forbidden_comes_before_validation(client: FlaskClient) -> None:
    for response in (
        client.post(THINGS, json={"name": ""}, headers=auth(READER)),
        client.post(
            THINGS, data="{not json", content_type="application/json", headers=auth(NOBODY)
        ),
        client.post(THINGS, json=GOOD_THING, headers=auth(READER)),
    ):
        error = error_of(response, 403)
        assert error["type"] == "invalid_request_error"
        assert error["code"] == "permission_denied"
        assert "things:write" in error["message"]


# -- JSON parsing: 400 ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        ("{not json", "application/json"),
        ('{"name": "lamp",}', "application/json"),
        ("[1, 2]", "application/json"),
        ('"a string"', "application/json"),
        ("null", "application/json"),
        ('{"name": "lamp", "amount": NaN}', "application/json"),
        (b'{"name": "\xff\xfe"}', "application/json"),
        ("[" * 100_000, "application/json"),
        ('{"name": "lamp", "colour": "red", "amount": 1}', "text/plain"),
        ("name=lamp&colour=red&amount=1", "application/x-www-form-urlencoded"),
    ],
)
def test_malformed_json_is_400_invalid_json(
    client: FlaskClient, data: str | bytes, content_type: str
) -> None:
    response = client.post(THINGS, data=data, content_type=content_type, headers=auth(WRITER))

    error = error_of(response, 400)
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "invalid_json"
    assert error["param"] is None


def test_an_empty_body_is_an_empty_object(client: FlaskClient) -> None:
    response = client.post(THINGS, headers=auth(WRITER))

    error = error_of(response, 422)
    assert (error["code"], error["param"]) == ("parameter_missing", "name")


def test_json_media_type_with_charset_is_accepted(client: FlaskClient) -> None:
    response = client.post(
        THINGS,
        data='{"name": "lamp", "colour": "red", "amount": 1200}',
        content_type="application/json; charset=utf-8",
        headers=auth(WRITER),
    )

    assert response.status_code == 201


def test_too_large_a_body_is_413(client: FlaskClient) -> None:
    big = '{"message": "' + "x" * (1024 * 1024) + '"}'
    response = client.post("/api/v1/sample/echo", data=big, content_type="application/json")

    assert error_of(response, 413)["code"] == "request_too_large"


# -- validation: 422 with the field named -------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"colour": "red", "amount": 1}, "parameter_missing", "name"),
        ({**GOOD_THING, "amount": "1200"}, "parameter_invalid", "amount"),  # strict: no strings
        ({**GOOD_THING, "amount": 12.5}, "parameter_invalid", "amount"),
        ({**GOOD_THING, "amount": 0}, "parameter_invalid", "amount"),
        ({**GOOD_THING, "colour": "pink"}, "parameter_invalid", "colour"),
        ({**GOOD_THING, "name": ""}, "parameter_invalid", "name"),
        ({**GOOD_THING, "address": {"city": ""}}, "parameter_invalid", "address.city"),
        ({**GOOD_THING, "address": {}}, "parameter_missing", "address.city"),
        ({**GOOD_THING, "address": {"city": "Oslo", "zip": 1}}, "parameter_unknown", "address.zip"),
        ({**GOOD_THING, "tags": ["a", 2]}, "parameter_invalid", "tags.1"),
        ({**GOOD_THING, "code": [1]}, "parameter_invalid", "code"),  # union branches left out
        ({**GOOD_THING, "admin": True}, "parameter_unknown", "admin"),
    ],
)
def test_invalid_body_is_422_naming_the_first_failing_field(
    client: FlaskClient, body: dict[str, Any], code: str, param: str
) -> None:
    response = client.post(THINGS, json=body, headers=auth(WRITER))

    error = error_of(response, 422)
    assert error["type"] == "invalid_request_error"
    assert (error["code"], error["param"]) == (code, param)
    assert param in error["message"]
    assert error["message"].endswith(".")


def test_validation_messages_read_as_sentences(client: FlaskClient) -> None:
    missing = error_of(client.post(THINGS, json={}, headers=auth(WRITER)), 422)
    unknown = error_of(client.post(THINGS, json={**GOOD_THING, "x": 1}, headers=auth(WRITER)), 422)
    invalid = error_of(
        client.post(THINGS, json={**GOOD_THING, "amount": 0}, headers=auth(WRITER)), 422
    )

    assert missing["message"] == "Missing required parameter: name."
    assert unknown["message"] == "Received unknown parameter: x."
    assert invalid["message"] == "Invalid amount: Input should be greater than or equal to 1."


@pytest.mark.parametrize(
    ("query", "code", "param"),
    [
        ("limit=0", "parameter_invalid", "limit"),
        ("limit=101", "parameter_invalid", "limit"),
        ("limit=ten", "parameter_invalid", "limit"),
        ("limit=5&limit=6", "parameter_invalid", "limit"),
        ("starting_after=0", "parameter_invalid", "starting_after"),
        ("starting_after=9223372036854775808", "parameter_invalid", "starting_after"),
        ("starting_after=999", "parameter_invalid", "starting_after"),  # the service's refusal
        ("colour=red&colour=pink", "parameter_invalid", "colour.1"),
        ("sort=name", "parameter_unknown", "sort"),
    ],
)
def test_invalid_query_is_422_naming_the_parameter(
    client: FlaskClient, query: str, code: str, param: str
) -> None:
    error = error_of(client.get(f"{THINGS}?{query}", headers=auth(READER)), 422)

    assert (error["code"], error["param"]) == (code, param)


# -- each domain error, and the rest of the status table -----------------------------------------
@pytest.mark.parametrize(
    ("kind", "status", "type_", "code", "param"),
    [
        ("invalid_input", 422, "invalid_request_error", "parameter_invalid", "amount"),
        ("unauthenticated", 401, "authentication_error", "token_expired", None),
        ("forbidden", 403, "invalid_request_error", "forbidden", None),
        ("not_found", 404, "invalid_request_error", "not_found", "card_id"),
        ("conflict", 409, "invalid_request_error", "already_archived", None),
        ("card_error", 402, "card_error", "insufficient_funds", None),
        ("card_unavailable", 402, "card_error", "card_frozen", None),
        ("rate_limited", 429, "rate_limit_error", "rate_limited", None),
        ("idempotency", 422, "idempotency_error", "idempotency_key_reused", None),
        ("try_again", 503, "api_error", "try_again", None),
        ("plain", 400, "invalid_request_error", "odd", None),
    ],
)
def test_domain_errors_answer_the_error_object_with_the_mapped_status(
    client: FlaskClient, kind: str, status: int, type_: str, code: str, param: str | None
) -> None:
    error = error_of(client.post(f"/api/v1/sample/errors/{kind}"), status)

    assert (error["type"], error["code"], error["param"]) == (type_, code, param)


def test_domain_rate_limit_and_unavailable_say_when_to_retry(client: FlaskClient) -> None:
    assert client.post("/api/v1/sample/errors/rate_limited").headers["Retry-After"] == "42"
    assert client.post("/api/v1/sample/errors/try_again").headers["Retry-After"] == "1"


def test_a_401_from_a_view_also_names_the_scheme(client: FlaskClient) -> None:
    response = client.post("/api/v1/sample/errors/unauthenticated")

    assert response.headers["WWW-Authenticate"] == 'Bearer realm="portal"'


def test_unexpected_exception_is_a_500_without_internals(client: FlaskClient, caplog: Any) -> None:
    with caplog.at_level(logging.ERROR, logger="portal.web"):
        response = client.post("/api/v1/sample/errors/boom")

    error = error_of(response, 500)
    assert (error["type"], error["code"]) == ("api_error", "internal_error")
    text = response.get_data(as_text=True)
    for leak in ("hunter2", "secret", "RuntimeError", "Traceback", "conftest", ".py"):
        assert leak not in text
    assert "hunter2" in caplog.text  # logged for the operators, with the request id at hand


def test_unknown_route_under_api_is_a_json_404(client: FlaskClient) -> None:
    for path in ("/api/v1/nope", "/api/v2/things", "/api/nope", "/api/v1/sample/things/x"):
        error = error_of(client.get(path, headers=auth(READER)), 404)
        assert (error["type"], error["code"]) == ("invalid_request_error", "not_found")


def test_wrong_method_under_api_is_a_json_405_with_allow(client: FlaskClient) -> None:
    response = client.put(THINGS, json={}, headers=auth(WRITER))

    error = error_of(response, 405)
    assert error["code"] == "method_not_allowed"
    assert set(response.headers["Allow"].split(", ")) >= {"GET", "POST"}


def test_outside_api_errors_stay_html_pages(client: FlaskClient) -> None:
    response = client.get("/nope")

    assert response.status_code == 404
    assert response.mimetype == "text/html"
    assert "<html" in response.get_data(as_text=True).lower()


def test_no_content_answers_an_empty_204(client: FlaskClient) -> None:
    response = client.delete(f"{THINGS}/3", headers=auth(WRITER))

    assert response.status_code == 204
    assert response.get_data() == b""
    error_of(client.delete(f"{THINGS}/999", headers=auth(WRITER)), 404)


def test_api_responses_are_not_cached(client: FlaskClient) -> None:
    assert client.get(THINGS, headers=auth(READER)).headers["Cache-Control"] == "no-store"
    assert client.get(THINGS).headers["Cache-Control"] == "no-store"


def test_csrf_does_not_apply_to_the_api(client: FlaskClient, api_app: Flask) -> None:
    """The pages' CSRF protection is on, yet an API POST needs no CSRF token (no cookies)."""
    assert api_app.config["WTF_CSRF_ENABLED"] is True

    assert client.post("/api/v1/sample/echo", json={"message": "hi"}).status_code == 200
    assert client.post(THINGS, json=GOOD_THING, headers=auth(WRITER)).status_code == 201


# -- request ids --------------------------------------------------------------------------------
def test_request_id_is_echoed_when_well_formed(client: FlaskClient) -> None:
    ok = client.get(THINGS, headers={**auth(READER), "X-Request-ID": "client-42.a:b"})
    failed = client.get(THINGS, headers={"X-Request-ID": "client-43"})

    assert ok.headers["X-Request-ID"] == "client-42.a:b"
    assert error_of(failed, 401)["request_id"] == "client-43"


def test_request_id_is_generated_otherwise(client: FlaskClient) -> None:
    plain = client.get(THINGS, headers=auth(READER))
    bad = client.get("/api/v1/nope", headers={"X-Request-ID": "has spaces\tand tabs"})
    other = client.get("/api/v1/nope")

    assert REQUEST_ID.match(plain.headers["X-Request-ID"])
    assert REQUEST_ID.match(error_of(bad, 404)["request_id"])
    assert error_of(other, 404)["request_id"] != bad.headers["X-Request-ID"]


# -- rate limits --------------------------------------------------------------------------------
def test_rate_limit_is_429_with_retry_after_and_limiter_headers(client: FlaskClient) -> None:
    statuses = [client.get("/api/v1/sample/limited", headers=auth(READER)) for _ in range(3)]

    assert [r.status_code for r in statuses[:2]] == [200, 200]
    assert [r.headers["X-RateLimit-Remaining"] for r in statuses[:2]] == ["1", "0"]
    assert 0 < int(statuses[0].headers["X-RateLimit-Reset"]) - time.time() <= 61
    response = statuses[2]
    error = error_of(response, 429)
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limited")
    assert 0 < int(response.headers["Retry-After"]) <= 60
    assert response.headers["X-RateLimit-Limit"] == "2"
    assert response.headers["X-RateLimit-Remaining"] == "0"
    # The limit is checked before authentication: an anonymous caller is throttled too.
    assert client.get("/api/v1/sample/limited").status_code == 429


# -- pagination ---------------------------------------------------------------------------------
def test_list_defaults_to_ten_newest_first(client: FlaskClient) -> None:
    body = client.get(THINGS, headers=auth(READER)).get_json()

    assert body["object"] == "list"
    assert body["url"] == THINGS
    assert body["has_more"] is True
    assert [t["id"] for t in body["data"]] == list(range(25, 15, -1))


def test_starting_after_walks_every_page_once(client: FlaskClient) -> None:
    seen: list[int] = []
    cursor = ""
    pages = 0
    while True:
        body = client.get(f"{THINGS}?limit=7{cursor}", headers=auth(READER)).get_json()
        pages += 1
        seen += [t["id"] for t in body["data"]]
        if not body["has_more"]:
            break
        cursor = f"&starting_after={body['data'][-1]['id']}"

    assert pages == 4
    assert seen == list(range(25, 0, -1))


def test_limit_bounds_and_exact_last_page(client: FlaskClient) -> None:
    everything = client.get(f"{THINGS}?limit=100", headers=auth(READER)).get_json()
    exact = client.get(f"{THINGS}?limit=25", headers=auth(READER)).get_json()
    one = client.get(f"{THINGS}?limit=1", headers=auth(READER)).get_json()

    assert (len(everything["data"]), everything["has_more"]) == (25, False)
    assert (len(exact["data"]), exact["has_more"]) == (25, False)
    assert (len(one["data"]), one["has_more"]) == (1, True)


def test_list_filters_combine_with_the_cursor(client: FlaskClient) -> None:
    body = client.get(
        f"{THINGS}?colour=red&colour=blue&starting_after=24&limit=3", headers=auth(READER)
    ).get_json()

    assert [(t["id"], t["colour"]) for t in body["data"]] == [
        (23, "blue"),
        (21, "red"),
        (20, "blue"),
    ]
    assert body["has_more"] is True


# -- declaration-time checks -----------------------------------------------------------------
class _Body(BaseModel):
    x: int


def test_declaration_mistakes_fail_at_import_time() -> None:
    bp = Blueprint("mistakes", __name__)

    with pytest.raises(ValueError, match="must authenticate"):
        operation(bp, "GET", "/a", summary="a", auth="none", permission="x:read", status=204)
    with pytest.raises(ValueError, match="answers 204"):
        operation(bp, "GET", "/a", summary="a")
    with pytest.raises(TypeError, match="'body' parameter"):
        operation(bp, "POST", "/a", summary="a", body=_Body, status=204)(lambda: None)
    with pytest.raises(TypeError, match="takes an actor"):
        operation(bp, "POST", "/a", summary="a", auth="none", status=204)(lambda actor: None)
