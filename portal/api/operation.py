"""``@operation``: how every JSON API endpoint is declared.

One decorator gives each endpoint the same order of checks, the same errors and its entry in the
OpenAPI document::

    authenticate (401) -> permission (403) -> path ids (404) -> parse JSON (400)
        -> validate (422) -> view

and serialises what the view returns. The declaration is kept on the view
(``__api_operation__``), where :mod:`portal.api.openapi` finds it through the app's URL map.

Example (in an endpoint module listed in ``portal.api.ENDPOINT_MODULES``)::

    class NewRole(RequestBody):
        name: str = Field(min_length=1, max_length=40)

    class RoleObject(ApiModel):
        id: RoleId                        # the public id, "rol_..."
        object: Literal["role"] = "role"
        name: str

    @operation(bp, "POST", "/roles", summary="Create a role", tags=["roles"],
               permission="roles:manage", body=NewRole, response=RoleObject, status=201,
               errors=(Conflict,))
    def create_role(body: NewRole, actor: Actor) -> RoleObject:
        role = roles.create_role(make_uow(), actor=actor, name=body.name)
        return RoleObject(id=role.public_id, name=role.name)

Objects are named by their public ids everywhere (``portal.domain.ids``): a path parameter that
holds one is declared with ``ids={"card_id": "card"}``, which checks its shape (anything else is
a 404 at once, before any query) and documents its pattern; the view passes the string on to the
service, which resolves it (``portal.services.shared.refs``).
"""

from __future__ import annotations

import inspect
import json
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import wraps
from typing import Any, TypeVar, Union

from flask import Blueprint, Response, after_this_request, current_app, request
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from portal.api.schemas import ServiceCodes
from portal.api.security import authenticate
from portal.domain.errors import Forbidden, InvalidInput, NotFound, PortalError
from portal.domain.ids import is_public_id
from portal.extensions import csrf, limiter
from portal.web.errors import http_status

F = TypeVar("F", bound=Callable[..., Any])

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})

IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"

#: Largest request body an operation reads (``API_MAX_BODY_BYTES`` overrides it); larger is 413.
MAX_BODY_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Operation:
    """What ``@operation`` declared: enough to run the checks and to document the endpoint."""

    method: str
    path: str
    operation_id: str
    summary: str
    description: str
    tags: tuple[str, ...]
    auth: tuple[str, ...]  # scheme names; empty: anonymous
    permission: str | None
    body: type[BaseModel] | None
    query: type[BaseModel] | None
    response: type[BaseModel] | None
    status: int
    errors: tuple[int, ...]  # statuses documented on top of those every operation has
    deprecated: bool
    idempotency: str | None = None  # "required", "optional" or None: the Idempotency-Key header
    #: Path parameters that hold public ids: (parameter name, object kind).
    ids: tuple[tuple[str, str], ...] = ()


def operation(
    bp: Blueprint,
    method: str,
    path: str,
    *,
    summary: str,
    tags: Sequence[str] = (),
    auth: str | Sequence[str] = "bearer",
    permission: str | None = None,
    body: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    response: type[BaseModel] | None = None,
    status: int = 200,
    errors: Iterable[int | type[PortalError]] = (),
    rate_limit: str | Callable[[Callable[..., Any]], Callable[..., Any]] | None = None,
    operation_id: str | None = None,
    description: str | None = None,
    deprecated: bool = False,
    idempotency: str | None = None,
    ids: Mapping[str, str] | None = None,
) -> Callable[[F], F]:
    """Declare a JSON API endpoint ``method path`` (Flask rule syntax, relative to ``bp``).

    - ``auth``: ``"none"``, a scheme name (``"bearer"``) or several; the authenticated actor is
      in ``flask.g.actor`` and passed as ``actor=`` when the view takes that parameter.
    - ``permission``: a permission the actor must hold (``Actor.can``), else 403.
    - ``body`` / ``query``: pydantic models; the validated instances are passed as ``body=`` and
      ``query=``. Path parameters are passed by name, as Flask does.
    - ``response``: the model the view returns (serialised with ``status``); None answers an
      empty body (use ``status=204``). A view may also return a ``flask.Response`` as is.
    - ``errors``: further statuses (or PortalError classes) the endpoint can answer, for the
      OpenAPI document; 400, 401 (authenticated operations), 403, 422 and 429 are always listed,
      404 when the path has parameters and 413 when there is a body.
    - ``rate_limit``: a flask-limiter limit string, or a ``limiter.limit(...)`` decorator; it is
      checked before authentication.
    - ``idempotency``: ``"required"`` or ``"optional"``: the operation reads the
      ``Idempotency-Key`` header (400 ``idempotency_key_missing`` when required and absent) and
      passes it as ``idempotency_key=`` (None when optional and absent); documented as a header
      parameter, with ``Idempotent-Replayed`` on the success response.
    - ``ids``: path parameter name -> object kind (``{"card_id": "card"}``) for parameters that
      hold public ids: a value without that kind's shape is a 404 (NotFound, as for an unknown
      object) before the body is read or any query runs; the document gives the pattern.
    - ``operation_id`` defaults to the view's name; ``description`` to its docstring.
    """
    method = method.upper()
    if method not in METHODS:
        raise ValueError(f"unsupported method {method}")
    schemes = () if auth == "none" else ((auth,) if isinstance(auth, str) else tuple(auth))
    if "none" in schemes:
        raise ValueError('auth="none" cannot be combined with other schemes')
    if permission and not schemes:
        raise ValueError("an operation with a permission must authenticate")
    if response is None and status != 204:
        raise ValueError("an operation without a response model answers 204")
    if idempotency not in (None, "required", "optional"):
        raise ValueError('idempotency is "required", "optional" or None')
    extra = tuple(sorted({_status_of(e) for e in errors}))
    path_ids = tuple((ids or {}).items())
    unknown = [name for name, _ in path_ids if f"<{name}>" not in path and f":{name}>" not in path]
    if unknown:
        raise ValueError(f"ids names no path parameter: {', '.join(unknown)}")

    def decorate(view: F) -> F:
        parameters = inspect.signature(view).parameters
        for name, model in (("body", body), ("query", query)):
            if model is not None and name not in parameters:
                raise TypeError(f"{view.__name__} must take a {name!r} parameter")
        if idempotency and "idempotency_key" not in parameters:
            raise TypeError(f"{view.__name__} must take an 'idempotency_key' parameter")
        wants_actor = "actor" in parameters
        if wants_actor and not schemes:
            raise TypeError(f"{view.__name__} takes an actor but its operation is anonymous")
        spec = Operation(
            method=method,
            path=path,
            operation_id=operation_id or view.__name__,
            summary=summary,
            description=description or inspect.getdoc(view) or "",
            tags=tuple(tags),
            auth=schemes,
            permission=permission,
            body=body,
            query=query,
            response=response,
            status=status,
            errors=extra,
            deprecated=deprecated,
            idempotency=idempotency,
            ids=path_ids,
        )

        @wraps(view)
        def run(**path_args: Any) -> Response:
            kwargs: dict[str, Any] = dict(path_args)
            if spec.auth:
                actor = authenticate(spec.auth)
                if spec.permission and not actor.can(spec.permission):
                    raise Forbidden(
                        f"You need the {spec.permission} permission for this request.",
                        code="permission_denied",
                    )
                if wants_actor:
                    kwargs["actor"] = actor
            for name, kind in spec.ids:
                if not is_public_id(kind, kwargs.get(name)):
                    raise NotFound(f"no such {kind.replace('_', '-')}", param=name)
            # Malformed JSON (400) is reported before any invalid parameter (422).
            raw = _read_json_object() if spec.body is not None else b"{}"
            if spec.query is not None:
                kwargs["query"] = _validate(spec.query, _query_input(spec.query))
            if spec.body is not None:
                kwargs["body"] = _validate(spec.body, raw)
            if spec.idempotency:
                kwargs["idempotency_key"] = _idempotency_key(
                    required=spec.idempotency == "required"
                )
            return _respond(spec, view(**kwargs))

        run.__api_operation__ = spec  # type: ignore[attr-defined]
        # The API never authenticates by cookie, so a cross-site request forges nothing.
        csrf.exempt(run)
        registered: Callable[..., Any] = run
        if rate_limit is not None:
            limit = limiter.limit(rate_limit) if isinstance(rate_limit, str) else rate_limit
            registered = limit(run)
        bp.add_url_rule(path, endpoint=view.__name__, view_func=registered, methods=[method])
        return view

    return decorate


# -- request ------------------------------------------------------------------------------------
def mark_replayed() -> None:
    """Say on this request's answer (a result or a stored refusal) that it is the stored first
    answer to an earlier request with the same idempotency key."""

    def mark(response: Response) -> Response:
        response.headers[REPLAYED_HEADER] = "true"
        return response

    after_this_request(mark)


def _idempotency_key(*, required: bool) -> str | None:
    key = request.headers.get(IDEMPOTENCY_HEADER, "")
    if key.strip():
        return key
    if required:
        raise PortalError(
            f"Send an {IDEMPOTENCY_HEADER} header: this request is only taken with one.",
            param=IDEMPOTENCY_HEADER,
            code="idempotency_key_missing",
        )
    return None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _read_json_object() -> bytes:
    """The request body: a JSON object (an empty body counts as ``{}``). Raises PortalError
    (400, ``invalid_json``); a body over the limit is a 413."""
    request.max_content_length = current_app.config.get("API_MAX_BODY_BYTES", MAX_BODY_BYTES)
    raw = request.get_data(cache=True)
    if not raw.strip():
        return b"{}"
    if not request.is_json:
        raise PortalError(
            "Send the request body as JSON, with Content-Type: application/json.",
            code="invalid_json",
        )
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise PortalError("The request body is not valid JSON.", code="invalid_json") from None
    if not isinstance(data, dict):
        raise PortalError("The request body must be a JSON object.", code="invalid_json")
    return raw


def _is_sequence(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _is_sequence(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return any(_is_sequence(a) for a in typing.get_args(annotation) if a is not type(None))
    return origin in (list, tuple, set, frozenset, Sequence)


def _query_input(model: type[BaseModel]) -> dict[str, Any]:
    """The query string as the model's input: lists for list fields, text otherwise. A scalar
    parameter given twice is refused (422) rather than guessed at."""
    lists = {f.alias or n for n, f in model.model_fields.items() if _is_sequence(f.annotation)}
    data: dict[str, Any] = {}
    for key in request.args:
        values = request.args.getlist(key)
        if key in lists:
            data[key] = values
        elif len(values) > 1:
            raise InvalidInput(f"Give {key} only once.", param=key, code="parameter_invalid")
        else:
            data[key] = values[0]
    return data


def _validate(model: type[BaseModel], data: bytes | Mapping[str, Any]) -> BaseModel:
    try:
        if isinstance(data, bytes):
            return model.model_validate_json(data)
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        if first["type"] == "json_invalid":
            raise PortalError("The request body is not valid JSON.", code="invalid_json") from None
        raise validation_error(model, first) from None


def validation_error(model: type[BaseModel], error: ErrorDetails) -> InvalidInput:
    """A readable 422 naming the failing field's dotted path (``address.city``, ``items.0``)."""
    names = field_names(model)
    kind = error["type"]
    loc = list(error["loc"])
    unknown = [str(loc.pop())] if kind == "extra_forbidden" and loc else []
    # pydantic's location also holds union branches ("int", "str") and tags: keep field names
    # and list indexes only (and, for an unknown parameter, its name).
    path = [str(p) for p in loc if isinstance(p, int) or p in names] + unknown
    param = ".".join(path) or None
    if kind == "missing":
        return InvalidInput(
            f"Missing required parameter: {param}.", param=param, code="parameter_missing"
        )
    if kind == "extra_forbidden":
        return InvalidInput(
            f"Received unknown parameter: {param}.", param=param, code="parameter_unknown"
        )
    code = _service_code(model, loc, kind) or "parameter_invalid"
    message = error["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    text = f"Invalid {param}: {message}" if param else message
    return InvalidInput(text if text.endswith(".") else text + ".", param=param, code=code)


def _service_code(model: type[BaseModel], loc: list[Any], kind: str) -> str | None:
    """The service's own code for a length bound of a top-level field declared with
    :class:`~portal.api.schemas.ServiceCodes`, if any."""
    if kind not in ("string_too_short", "string_too_long") or len(loc) != 1:
        return None
    info = model.model_fields.get(str(loc[0]))
    if info is None:
        return None
    for meta in info.metadata:
        if isinstance(meta, ServiceCodes):
            return meta.too_short if kind == "string_too_short" else meta.too_long
    return None


def field_names(model: type[BaseModel], seen: set[type[BaseModel]] | None = None) -> set[str]:
    """Every field name and alias of ``model`` and the models nested in it."""
    seen = seen if seen is not None else set()
    if model in seen:
        return set()
    seen.add(model)
    names: set[str] = set()
    for name, info in model.model_fields.items():
        names.add(name)
        if info.alias:
            names.add(info.alias)
        for nested in _models_in(info.annotation):
            names |= field_names(nested, seen)
    return names


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


# -- response -----------------------------------------------------------------------------------
def _respond(spec: Operation, result: Any) -> Response:
    if isinstance(result, Response):
        response = result
    elif spec.response is None:
        if result is not None:
            raise TypeError(f"{spec.operation_id} answers no body but returned {result!r}")
        response = Response(status=spec.status)
    else:
        if not isinstance(result, spec.response):
            raise TypeError(
                f"{spec.operation_id} must return {spec.response.__name__}, not "
                f"{type(result).__name__}"
            )
        response = Response(
            result.model_dump_json(by_alias=True), status=spec.status, mimetype="application/json"
        )
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def _status_of(error: int | type[PortalError]) -> int:
    if isinstance(error, int):
        return error
    return http_status(error.__new__(error))  # the status depends on the class only
