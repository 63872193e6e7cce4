"""The OpenAPI 3.1 document: valid, generated from the validating models, and documenting the
error answers of every operation."""

from __future__ import annotations

import os
from typing import Any

import pytest
from flask import Blueprint, Flask
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from portal import create_app
from portal.api import openapi, operation
from portal.api.schemas import ApiModel
from portal.config import database_url
from tests.api.conftest import NewThing, Thing

HTTP_METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}


#: The test blueprint's operations; the portal's own API is in the test app too.
SAMPLE = "/api/v1/sample/"


def operations_of(
    doc: dict[str, Any], prefix: str = SAMPLE
) -> dict[str, tuple[str, str, dict[str, Any]]]:
    return {
        op["operationId"]: (path, method, op)
        for path, item in doc["paths"].items()
        if path.startswith(prefix)
        for method, op in item.items()
        if method in HTTP_METHODS
    }


@pytest.fixture(scope="module")
def doc(api_app: Flask) -> dict[str, Any]:
    response = api_app.test_client().get("/api/v1/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    return response.get_json()  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def real_app() -> Flask:
    """The real application: only the API the portal itself declares."""
    url = os.environ.get("TEST_DATABASE_URL") or "postgresql://postgres@127.0.0.1:1/unused"
    return create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": database_url(url)})


def test_real_app_document_is_valid_openapi_3_1(real_app: Flask) -> None:
    response = real_app.test_client().get("/api/v1/openapi.json")

    assert response.status_code == 200
    spec = response.get_json()
    assert spec["openapi"] == "3.1.0"
    validate(spec, cls=OpenAPIV31SpecValidator)
    assert spec["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": spec["components"]["securitySchemes"]["bearer"]["description"],
    }
    assert "Error" in spec["components"]["schemas"]


def test_document_with_zero_operations_is_valid() -> None:
    app = Flask(__name__)
    from portal.api.security import BEARER, add_scheme

    add_scheme(app, BEARER)
    spec = openapi.build(app)

    assert spec["paths"] == {}
    validate(spec, cls=OpenAPIV31SpecValidator)


def test_test_app_document_is_valid_openapi_3_1(doc: dict[str, Any]) -> None:
    validate(doc, cls=OpenAPIV31SpecValidator)
    assert set(doc["components"]["securitySchemes"]) == {"bearer", "api_key", "test_key"}


def test_every_operation_documents_the_common_errors(doc: dict[str, Any]) -> None:
    ops = operations_of(doc, prefix="/api/")
    assert ops, "the test blueprint declares operations"
    for op_id, (_, _, op) in ops.items():
        responses = op["responses"]
        must = {"400", "403", "422", "429"} | ({"401"} if op["security"] else set())
        assert must <= set(responses), op_id
        for status in must:
            ref = responses[status]["$ref"]
            shared = doc["components"]["responses"][ref.rsplit("/", 1)[-1]]
            assert shared["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/Error"
            }
        retry = doc["components"]["responses"]["TooManyRequests"]["headers"]
        assert "Retry-After" in retry


def test_operation_ids_security_and_statuses(doc: dict[str, Any]) -> None:
    ops = operations_of(doc)

    assert set(ops) == {
        "list_things_view",
        "create_thing",
        "get_thing",
        "delete_thing",
        "echo",
        "raise_error",
        "limited",
    }
    assert ops["create_thing"][:2] == ("/api/v1/sample/things", "post")
    assert ops["create_thing"][2]["security"] == [{"bearer": []}]
    assert "201" in ops["create_thing"][2]["responses"]
    assert "413" in ops["create_thing"][2]["responses"]
    assert ops["get_thing"][2]["security"] == [{"bearer": []}, {"test_key": []}]
    assert "404" in ops["get_thing"][2]["responses"]
    assert ops["echo"][2]["security"] == []
    assert "401" not in ops["echo"][2]["responses"]
    assert "content" not in ops["delete_thing"][2]["responses"]["204"]
    assert {"401", "402", "404", "409", "503"} <= set(ops["raise_error"][2]["responses"])
    assert ops["create_thing"][2]["x-permission"] == "things:write"


def test_models_are_components_generated_from_the_validating_models(
    doc: dict[str, Any],
) -> None:
    schemas = doc["components"]["schemas"]
    ops = operations_of(doc)

    body = ops["create_thing"][2]["requestBody"]
    assert body["required"] is True
    assert body["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/NewThing"
    }
    new_thing = NewThing.model_json_schema(ref_template="#/components/schemas/{model}")
    hoisted = new_thing.pop("$defs")
    assert schemas["NewThing"] == new_thing
    for name, schema in hoisted.items():
        assert schemas[name] == schema  # Address, Colour: hoisted from $defs
    assert schemas["NewThing"]["additionalProperties"] is False
    assert schemas["NewThing"]["properties"]["address"]["anyOf"][0] == {
        "$ref": "#/components/schemas/Address"
    }
    ok = ops["create_thing"][2]["responses"]["201"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/Thing"}
    assert set(schemas["Thing"]["required"]) == set(Thing.model_fields)  # responses always carry
    page = ops["list_things_view"][2]["responses"]["200"]["content"]["application/json"]
    listing = schemas[page["schema"]["$ref"].rsplit("/", 1)[-1]]
    assert set(listing["required"]) == {"object", "url", "has_more", "data"}
    assert listing["properties"]["object"]["const"] == "list"
    assert listing["properties"]["data"]["items"] == {"$ref": "#/components/schemas/Thing"}
    error = schemas["ErrorDetail"]
    assert set(error["required"]) == {"type", "code", "message", "param", "request_id"}


def test_query_and_path_parameters(doc: dict[str, Any]) -> None:
    ops = operations_of(doc)
    params = {p["name"]: p for p in ops["list_things_view"][2]["parameters"]}

    assert set(params) == {"limit", "starting_after", "colour", "q"}
    assert all(p["in"] == "query" and p["required"] is False for p in params.values())
    limit = params["limit"]["schema"]
    assert (limit["type"], limit["minimum"], limit["maximum"]) == ("integer", 1, 100)
    assert params["limit"]["schema"]["default"] == 10
    assert params["starting_after"]["schema"]["type"] == "integer"  # no "null" in a query
    assert params["colour"]["schema"]["type"] == "array"
    assert params["colour"]["explode"] is True
    (thing_id,) = ops["get_thing"][2]["parameters"]
    assert thing_id == {
        "name": "thing_id",
        "in": "path",
        "required": True,
        "schema": {"type": "integer", "minimum": 0},
    }


def test_served_document_is_the_built_one(api_app: Flask, doc: dict[str, Any]) -> None:
    with api_app.app_context():
        assert openapi.build(api_app) == doc


def test_duplicate_operation_ids_are_refused() -> None:
    class Out(ApiModel):
        ok: bool

    app = Flask(__name__)
    one, two = Blueprint("one", __name__), Blueprint("two", __name__, url_prefix="/two")
    for bp in (one, two):

        @operation(bp, "GET", "/x", summary="x", auth="none", response=Out, operation_id="same")
        def view() -> Out:
            return Out(ok=True)

        app.register_blueprint(bp)

    with pytest.raises(ValueError, match="duplicate operationId 'same'"):
        openapi.build(app)


def test_unknown_auth_scheme_is_refused() -> None:
    class Out(ApiModel):
        ok: bool

    app = Flask(__name__)
    bp = Blueprint("unknown_scheme", __name__)

    @operation(bp, "GET", "/x", summary="x", auth="nope", response=Out)
    def view() -> Out:
        return Out(ok=True)

    app.register_blueprint(bp)
    with pytest.raises(ValueError, match="unknown auth scheme 'nope'"):
        openapi.build(app)


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_schemathesis_finds_every_answer_documented(api_app: Flask, mode: str) -> None:
    """A seeded, bounded schemathesis run: every response's status, media type, headers and body
    conform to the document, and (negative mode) schema-invalid requests are refused with a 4xx.

    ``positive_data_acceptance`` is left out: it expects every schema-valid request to succeed,
    while a valid-looking request may still be refused by the service (an unknown
    ``starting_after`` is a 422 naming the parameter). ``raise_error`` exists to fail, and
    ``limited`` would spend its rate limit.
    """
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, seed, settings
    from schemathesis.checks import positive_data_acceptance
    from schemathesis.generation import GenerationMode

    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", api_app)
    generation = GenerationMode.POSITIVE if mode == "positive" else GenerationMode.NEGATIVE
    tested = []
    for result in schema.get_all_operations():
        op = result.ok()
        op_id = op.definition.raw["operationId"]
        # Only the test blueprint: the portal's own operations need the database (and a
        # transaction to roll back); tests/api/test_schemathesis_identity.py runs them.
        if op_id in ("raise_error", "limited") or not op.path.startswith(SAMPLE):
            continue

        @seed(1234)
        @settings(
            max_examples=30,
            deadline=None,
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=op.as_strategy(generation_mode=generation))
        def run(case: Any) -> None:
            # A negative case may leave the required Authorization header out on purpose:
            # then it goes without one (and must be refused), instead of being made valid.
            dropped = mode == "negative" and "Authorization" not in (case.headers or {})
            case.call_and_validate(
                headers=None if dropped else {"Authorization": "Bearer tok_writer"},
                excluded_checks=[positive_data_acceptance],
            )

        run()
        tested.append(op_id)
    assert sorted(tested) == [
        "create_thing",
        "delete_thing",
        "echo",
        "get_thing",
        "list_things_view",
    ]


def test_money_operations_declare_the_idempotency_key_header(real_app: Flask) -> None:
    spec = real_app.test_client().get("/api/v1/openapi.json").get_json()
    components = spec["components"]
    for path in ("/api/v1/top_ups", "/api/v1/transfers", "/api/v1/withdrawals"):
        post = spec["paths"][path]["post"]
        (header,) = [
            components["parameters"][p["$ref"].rsplit("/", 1)[-1]]
            for p in post["parameters"]
            if "$ref" in p
        ]
        assert (header["name"], header["in"], header["required"]) == (
            "Idempotency-Key", "header", True,
        )  # fmt: skip
        assert "Idempotent-Replayed" in post["responses"]["201"]["headers"]
    listing = spec["paths"]["/api/v1/top_ups"]["get"]
    assert all("$ref" not in p for p in listing.get("parameters", []))
