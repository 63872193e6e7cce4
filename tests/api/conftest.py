"""A test app carrying a test-only API blueprint that exercises every convention: bearer and
key authentication (real callables checking fixed credentials), permissions, bodies, queries,
pagination, each PortalError, an unexpected exception and a rate limit.

The test app never touches the database: the API machinery under test needs none.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

import pytest
from flask import Blueprint, Flask, Request
from flask.testing import FlaskClient
from pydantic import BaseModel, Field

from portal import create_app
from portal.api import operation
from portal.api.pagination import ListQuery, ListResponse
from portal.api.schemas import ApiModel, RequestBody
from portal.api.security import Scheme, add_scheme, bearer_credential
from portal.config import database_url
from portal.domain.errors import (
    CardUnavailable,
    Conflict,
    Forbidden,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidInput,
    NotFound,
    PortalError,
    RateLimited,
    TemporarilyUnavailable,
    Unauthenticated,
)
from portal.domain.types import Actor, ActorKind
from portal.extensions import limiter
from portal.services.shared.pagination import MAX_ID, Page, page_of

# -- credentials --------------------------------------------------------------------------------
READER = "tok_reader"  # things:read
WRITER = "tok_writer"  # things:read, things:write
NOBODY = "tok_nobody"  # no permission
MERCHANT_KEY = "tk_merchant"  # the second scheme

ACTORS = {
    READER: Actor.user(1, {"things:read"}),
    WRITER: Actor.user(2, {"things:read", "things:write"}),
    NOBODY: Actor.user(3),
}


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass(frozen=True)
class Principal:
    actor: Actor


def authenticate_test_bearer(req: Request) -> Principal:
    actor = ACTORS.get(bearer_credential(req) or "")
    if actor is None:
        raise Unauthenticated("That access token is not valid.", code="token_invalid")
    return Principal(actor)


def authenticate_test_key(req: Request) -> Principal:
    if bearer_credential(req) != MERCHANT_KEY:
        raise Unauthenticated("That key is not valid.", code="key_invalid")
    return Principal(Actor(ActorKind.MERCHANT, 7, frozenset({"things:read"})))


TEST_KEY = Scheme(
    name="test_key",
    authenticator_key="tests.api_key_authenticator",
    openapi={"type": "http", "scheme": "bearer", "description": "A test key, tk_..."},
    prefixes=("tk_",),
)

# -- models -------------------------------------------------------------------------------------


class Colour(StrEnum):
    RED = "red"
    GREEN = "green"
    BLUE = "blue"


class Thing(ApiModel):
    """A thing."""

    id: int
    object: Literal["thing"] = "thing"
    name: str
    colour: Colour


class Address(RequestBody):
    city: str = Field(min_length=1)
    postcode: str | None = None


class NewThing(RequestBody):
    """What creating a thing takes."""

    name: str = Field(min_length=1, max_length=40)
    colour: Colour
    amount: int = Field(ge=1, description="In minor units.")
    address: Address | None = None
    tags: list[str] = Field(default_factory=list, max_length=5)
    code: int | str | None = None


class ThingListQuery(ListQuery):
    # The sample's things keep integer ids: these tests are about the list machinery (limit,
    # has_more, url, walking); real lists take public ids (tests/api/test_public_ids.py).
    starting_after: int | None = Field(None, ge=1, le=MAX_ID)  # type: ignore[assignment]
    colour: list[Colour] = Field(default_factory=list, description="Only these colours.")
    q: str | None = Field(None, max_length=100, description="Search in names.")


class Echo(RequestBody):
    message: str = Field(max_length=200)


class Echoed(ApiModel):
    message: str
    actor: str | None


# -- a fake "service": 25 things, newest (highest id) first -------------------------------------
THINGS = tuple(Thing(id=i, name=f"thing {i}", colour=list(Colour)[i % 3]) for i in range(25, 0, -1))


def list_things(
    *, limit: int, starting_after: int | None, colours: list[Colour], q: str | None
) -> Page[Thing]:
    rows = [t for t in THINGS if (not colours or t.colour in colours) and (not q or q in t.name)]
    if starting_after is not None:
        ids = [t.id for t in rows]
        if starting_after not in ids:
            raise InvalidInput("starting_after is not a known object id", param="starting_after")
        rows = rows[ids.index(starting_after) + 1 :]
    return page_of(rows[: limit + 1], limit)


# -- the test-only blueprint --------------------------------------------------------------------
bp = Blueprint("api_sample", __name__, url_prefix="/api/v1/sample")

#: A fresh key per run: a rate-limit count left in Redis by an earlier run cannot leak in.
RUN_KEY = uuid.uuid4().hex


@operation(
    bp,
    "GET",
    "/things",
    summary="List things",
    tags=["things"],
    permission="things:read",
    query=ThingListQuery,
    response=ListResponse[Thing],
)
def list_things_view(query: ThingListQuery) -> ListResponse[Thing]:
    page = list_things(
        limit=query.limit, starting_after=query.starting_after, colours=query.colour, q=query.q
    )
    return ListResponse[Thing].of(page, lambda t: t)


@operation(
    bp,
    "POST",
    "/things",
    summary="Create a thing",
    tags=["things"],
    permission="things:write",
    body=NewThing,
    response=Thing,
    status=201,
    operation_id="create_thing",
)
def create_thing(body: NewThing, actor: Actor) -> Thing:
    return Thing(id=1000 + (actor.id or 0), name=body.name, colour=body.colour)


@operation(
    bp,
    "GET",
    "/things/<int:thing_id>",
    summary="Get a thing",
    tags=["things"],
    auth=("bearer", "test_key"),
    permission="things:read",
    response=Thing,
)
def get_thing(thing_id: int) -> Thing:
    for thing in THINGS:
        if thing.id == thing_id:
            return thing
    raise NotFound("No such thing.", param="thing_id")


@operation(
    bp,
    "DELETE",
    "/things/<int:thing_id>",
    summary="Delete a thing",
    tags=["things"],
    permission="things:write",
    status=204,
)
def delete_thing(thing_id: int) -> None:
    if thing_id not in {t.id for t in THINGS}:
        raise NotFound("No such thing.", param="thing_id")


@operation(
    bp,
    "POST",
    "/echo",
    summary="Echo a message, anonymously",
    tags=["misc"],
    auth="none",
    body=Echo,
    response=Echoed,
)
def echo(body: Echo) -> Echoed:
    return Echoed(message=body.message, actor=None)


ERRORS: dict[str, PortalError] = {
    "invalid_input": InvalidInput("amount must be positive", param="amount"),
    "unauthenticated": Unauthenticated("token expired", code="token_expired"),
    "forbidden": Forbidden("not yours"),
    "not_found": NotFound("no such card", param="card_id"),
    "conflict": Conflict("already archived", code="already_archived"),
    "card_error": InsufficientFunds("insufficient funds"),
    "card_unavailable": CardUnavailable("card frozen", code="card_frozen"),
    "rate_limited": RateLimited("slow down", retry_after=42),
    "idempotency": IdempotencyConflict("key reused with other parameters"),
    "try_again": TemporarilyUnavailable("busy, retry"),
    "plain": PortalError("something odd", code="odd"),
}


class Kind(BaseModel):
    kind: str


@operation(
    bp,
    "POST",
    "/errors/<kind>",
    summary="Raise a domain error",
    tags=["misc"],
    auth="none",
    response=Kind,
    errors=(Unauthenticated, InsufficientFunds, NotFound, 409, 503),
)
def raise_error(kind: str) -> Kind:
    if kind == "boom":
        raise RuntimeError("secret internal detail: password=hunter2")
    raise ERRORS[kind]


@operation(
    bp,
    "GET",
    "/limited",
    summary="Rate limited at 2 a minute",
    tags=["misc"],
    response=Kind,
    rate_limit=limiter.limit("2/minute", key_func=lambda: RUN_KEY),
)
def limited() -> Kind:
    return Kind(kind="ok")


def make_api_app() -> Flask:
    url = os.environ.get("TEST_DATABASE_URL") or "postgresql://postgres@127.0.0.1:1/unused"
    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": database_url(url)})
    app.register_blueprint(bp)
    add_scheme(app, TEST_KEY)
    app.extensions["portal.api_authenticator"] = authenticate_test_bearer
    app.extensions[TEST_KEY.authenticator_key] = authenticate_test_key
    return app


@pytest.fixture(scope="session")
def api_app() -> Flask:
    return make_api_app()


@pytest.fixture
def client(api_app: Flask) -> FlaskClient:
    return api_app.test_client()
