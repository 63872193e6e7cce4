"""The OpenAPI 3.1 document, generated from the app's URL map and the same pydantic models that
validate requests and serialise responses."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

from flask import Flask
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from portal.api.operation import IDEMPOTENCY_HEADER, REPLAYED_HEADER, Operation
from portal.api.schemas import Error, example_id, id_description, id_pattern
from portal.api.security import schemes
from portal.domain.ids import MAX_LENGTH, PREFIXES

REF = "#/components/schemas/{model}"
TITLE = "Portal API"
VERSION = "v1"

#: Every operation may answer these (401 only when it authenticates).
ALWAYS = (400, 403, 422, 429)

#: One shared response per error status: (component name, description).
ERROR_RESPONSES: dict[int, tuple[str, str]] = {
    400: ("BadRequest", "The request is malformed (for example, the body is not a JSON object)."),
    401: ("Unauthorized", "Credentials are missing, invalid or expired."),
    402: ("PaymentRequired", "The request was valid but the card or balance refused it."),
    403: ("Forbidden", "The credentials are valid but lack the permission for this request."),
    404: ("NotFound", "No such object, or it is not yours."),
    409: ("Conflict", "The request conflicts with the object's current state."),
    413: ("PayloadTooLarge", "The request body is too large."),
    422: ("UnprocessableContent", "A parameter is missing or invalid: `param` names it."),
    429: ("TooManyRequests", "Too many requests: retry after `Retry-After` seconds."),
    503: (
        "ServiceUnavailable",
        "Temporarily unable to proceed: `try_again` (nothing changed) or `outcome_unknown` (the"
        " connection was lost; it may have been done). Retry with the same Idempotency-Key.",
    ),
}

_RULE_PART = re.compile(
    r"<(?:(?P<converter>[a-zA-Z_][a-zA-Z0-9_]*)(?:\((?P<args>.*?)\))?:)?"
    r"(?P<name>[a-zA-Z_][a-zA-Z0-9_]*)>"
)

_CONVERTER_SCHEMAS: dict[str, dict[str, Any]] = {
    "int": {"type": "integer", "minimum": 0},
    "float": {"type": "number"},
    "uuid": {"type": "string", "format": "uuid"},
    "path": {"type": "string"},
    "string": {"type": "string"},
    "default": {"type": "string"},
}


def operations(app: Flask) -> Iterator[tuple[str, dict[str, dict[str, Any]], Operation]]:
    """(OpenAPI path, path parameter schemas, operation) for every ``@operation`` route of
    ``app``, in URL-map order."""
    for rule in app.url_map.iter_rules():
        view = app.view_functions.get(rule.endpoint)
        spec: Operation | None = getattr(view, "__api_operation__", None)
        if spec is None:
            continue
        params = {
            m["name"]: dict(_CONVERTER_SCHEMAS.get(m["converter"] or "default", {"type": "string"}))
            for m in _RULE_PART.finditer(rule.rule)
        }
        for name, kind in spec.ids:
            params[name] = {
                "type": "string",
                "pattern": id_pattern(kind),
                "maxLength": MAX_LENGTH,
                "examples": [example_id(kind)],
                "description": id_description(kind),
            }
        yield _RULE_PART.sub(lambda m: "{" + m["name"] + "}", rule.rule), params, spec


def build(app: Flask) -> dict[str, Any]:
    """The document for ``app``. Raises ValueError on a duplicate operation id or an operation
    naming an auth scheme the app lacks."""
    found = list(operations(app))
    wanted: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {(Error, "serialization"): None}
    for _, _, spec in found:
        for model in (spec.body, spec.query):
            if model is not None:
                wanted[(model, "validation")] = None
        if spec.response is not None:
            wanted[(spec.response, "serialization")] = None
    refs, top = models_json_schema(list(wanted), ref_template=REF)
    components: dict[str, Any] = top.get("$defs", {})

    def schema_of(model: type[BaseModel], mode: JsonSchemaMode) -> dict[str, Any]:
        return dict(refs[(model, mode)])

    known = schemes(app)
    paths: dict[str, dict[str, Any]] = {}
    seen_ids: set[str] = set()
    tags: dict[str, None] = {}
    for path, path_params, spec in found:
        if spec.operation_id in seen_ids:
            raise ValueError(f"duplicate operationId {spec.operation_id!r}")
        seen_ids.add(spec.operation_id)
        for name in spec.auth:
            if name not in known:
                raise ValueError(f"{spec.operation_id}: unknown auth scheme {name!r}")
        tags.update(dict.fromkeys(spec.tags))
        paths.setdefault(path, {})[spec.method.lower()] = _operation(
            spec, path_params, components, schema_of
        )

    return {
        "openapi": "3.1.0",
        "info": {
            "title": TITLE,
            "version": VERSION,
            "description": (
                "Portal's JSON API. Every object has an opaque public id with a prefix naming "
                "its kind (`usr_`, `rol_`, `ses_`, `card_`, `tu_`, `tr_`, `wd_`, ...) and 24 "
                "random letters and digits; paths, references, request bodies and cursors use "
                'it. Errors answer `{"error": {type, code, message, param, request_id}}`; lists '
                "paginate with `limit` and `starting_after` (the last id of the previous page) "
                'and answer `{object: "list", url, has_more, data}`; every response carries '
                "`X-Request-ID`."
            ),
        },
        "tags": [{"name": t} for t in tags],
        "paths": paths,
        "components": {
            "schemas": components,
            "responses": {
                name: _error_response(status, description)
                for status, (name, description) in ERROR_RESPONSES.items()
            },
            "headers": {
                "X-Request-ID": {
                    "description": "Identifies the request: the caller's own X-Request-ID "
                    "when it is well-formed, otherwise a new one.",
                    "schema": {"type": "string"},
                },
                "Retry-After": {
                    "description": "Seconds to wait before retrying.",
                    "schema": {"type": "integer"},
                },
                "WWW-Authenticate": {
                    "description": "The authentication scheme to use (Bearer).",
                    "schema": {"type": "string"},
                },
                REPLAYED_HEADER: {
                    "description": "`true` when this answer is the stored first answer to an "
                    "earlier request with the same idempotency key.",
                    "schema": {"type": "string", "enum": ["true"]},
                },
            },
            "parameters": {
                IDEMPOTENCY_HEADER: _idempotency_parameter(required=True),
                f"{IDEMPOTENCY_HEADER}-optional": _idempotency_parameter(required=False),
            },
            "securitySchemes": {name: dict(s.openapi) for name, s in known.items()},
        },
    }


def _operation(
    spec: Operation,
    path_params: dict[str, dict[str, Any]],
    components: dict[str, Any],
    schema_of: Callable[[type[BaseModel], JsonSchemaMode], dict[str, Any]],
) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = []
    for name, schema in path_params.items():
        parameter: dict[str, Any] = {"name": name, "in": "path", "required": True, "schema": schema}
        if "description" in schema:
            parameter["description"] = schema["description"]
        parameters.append(parameter)
    if spec.query is not None:
        parameters.extend(_query_parameters(schema_of(spec.query, "validation"), components))
    if spec.idempotency:
        suffix = "" if spec.idempotency == "required" else "-optional"
        parameters.append({"$ref": f"#/components/parameters/{IDEMPOTENCY_HEADER}{suffix}"})
    doc: dict[str, Any] = {
        "operationId": spec.operation_id,
        "summary": spec.summary,
        "tags": list(spec.tags),
        "security": [{name: []} for name in spec.auth],
    }
    if spec.description:
        doc["description"] = spec.description
    if spec.deprecated:
        doc["deprecated"] = True
    if spec.permission:
        doc["x-permission"] = spec.permission
        doc["description"] = (
            doc.get("description", "") + f"\n\nNeeds the `{spec.permission}` permission."
        ).strip()
    if parameters:
        doc["parameters"] = parameters
    if spec.body is not None:
        body_schema = components[_ref_name(schema_of(spec.body, "validation"))]
        doc["requestBody"] = {
            "required": bool(body_schema.get("required")),
            "content": {"application/json": {"schema": schema_of(spec.body, "validation")}},
        }
    success: dict[str, Any] = {
        "description": spec.summary,
        "headers": {"X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"}},
    }
    if spec.idempotency:
        success["headers"][REPLAYED_HEADER] = {"$ref": f"#/components/headers/{REPLAYED_HEADER}"}
    if spec.response is not None:
        success["content"] = {
            "application/json": {"schema": schema_of(spec.response, "serialization")}
        }
    statuses = set(ALWAYS) | set(spec.errors)
    if spec.auth:
        statuses.add(401)
    body_fields = (
        components[_ref_name(schema_of(spec.body, "validation"))].get("properties", {})
        if spec.body is not None
        else {}
    )
    query_fields = {p["name"]: p["schema"] for p in parameters if p.get("in") == "query"}
    if path_params or _names_an_object(query_fields) or _names_an_object(body_fields):
        statuses.add(404)
    if spec.body is not None:
        statuses.add(413)
    responses: dict[str, Any] = {str(spec.status): success}
    for status in sorted(statuses):
        if status in ERROR_RESPONSES:
            responses[str(status)] = {
                "$ref": f"#/components/responses/{ERROR_RESPONSES[status][0]}"
            }
        else:
            responses[str(status)] = _error_response(status, f"Error {status}.")
    doc["responses"] = responses
    return doc


def _idempotency_parameter(*, required: bool) -> dict[str, Any]:
    return {
        "name": IDEMPOTENCY_HEADER,
        "in": "header",
        "required": required,
        "description": "Makes the request safe to retry: the same request with the same key "
        "answers the first response (with `Idempotent-Replayed: true`) and changes nothing "
        "more; the key with another request is a 422 `idempotency_error`. Keys are kept at "
        "least 24 hours, per caller."
        + ("" if required else " Without a key, a retried request is a new request."),
        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    }


def _ref_name(schema: dict[str, Any]) -> str:
    return str(schema["$ref"]).rsplit("/", 1)[-1]


#: The page cursor holds an id too, but an unknown one is a 422 naming it, not a 404.
_CURSORS = ("starting_after", "ending_before")


def _names_an_object(fields: dict[str, Any]) -> bool:
    """Whether a query parameter or body field (besides the page cursor) holds a public id: an
    id that names no object the caller may see is a 404, as in a path."""
    patterns = {id_pattern(kind) for kind in PREFIXES}

    def holds_id(schema: dict[str, Any]) -> bool:
        return schema.get("pattern") in patterns or any(
            holds_id(option) for option in schema.get("anyOf", ()) if isinstance(option, dict)
        )

    return any(holds_id(schema) for name, schema in fields.items() if name not in _CURSORS)


def _query_parameters(ref: dict[str, Any], components: dict[str, Any]) -> list[dict[str, Any]]:
    model = components[_ref_name(ref)]
    required = set(model.get("required", ()))
    parameters = []
    for name, prop in model.get("properties", {}).items():
        schema = dict(prop)
        # An optional parameter is simply left out: "null" cannot be written in a query string.
        options = schema.get("anyOf")
        if isinstance(options, list) and {"type": "null"} in options and len(options) == 2:
            del schema["anyOf"]
            schema.update(next(o for o in options if o != {"type": "null"}))
            if schema.get("default", 0) is None:
                del schema["default"]
        parameter: dict[str, Any] = {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": schema,
        }
        if "description" in schema:
            parameter["description"] = schema["description"]
        if schema.get("type") == "array":
            parameter["style"] = "form"
            parameter["explode"] = True
        parameters.append(parameter)
    return parameters


def _error_response(status: int, description: str) -> dict[str, Any]:
    headers: dict[str, Any] = {"X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"}}
    if status in (429, 503):
        headers["Retry-After"] = {"$ref": "#/components/headers/Retry-After"}
    if status == 401:
        headers["WWW-Authenticate"] = {"$ref": "#/components/headers/WWW-Authenticate"}
    return {
        "description": description,
        "headers": headers,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
