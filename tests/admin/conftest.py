"""Console fixtures: the page tests' client and people (requests run inside the test's
transaction; CSRF off), and staff signed in with the second factor done."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask

from tests.pages import conftest as pages
from tests.pages.conftest import PageClient, People, Person, new_client, sign_in

page_config = pages.page_config
client = pages.client
another_client = pages.another_client
people = pages.people

StaffClient = Callable[..., tuple[PageClient, Person]]


def staff_client(app: Flask, people: People, *roles: str) -> tuple[PageClient, Person]:
    """A new client signed in as a new member of staff holding ``roles`` (admin when none),
    second factor done."""
    person = people.make(roles=roles or ("admin",), with_mfa=True)
    c = new_client(app)
    sign_in(c, person)
    assert c.post("/auth/mfa", data={"code": person.code()}).status_code == 302
    return c, person


@pytest.fixture
def as_staff(app: Flask, people: People) -> StaffClient:
    """``as_staff("support")``: a client of a new staff member with those roles."""
    return lambda *roles: staff_client(app, people, *roles)
