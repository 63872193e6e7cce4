"""Issue 11 A3 and A4: per-account limits keyed on the account (not on how its address was
typed), canonical emails, and names and emails refused for invisible characters and
mixed-script look-alikes, on the pages and the API."""

from __future__ import annotations

import itertools

import pytest
from flask import Flask

from portal.services.identity import tokens
from tests.pages.conftest import PASSWORD, PageClient, People, new_client, page_text, signed_in

_addresses = (f"198.51.100.{n}" for n in itertools.count(101))


def _fail(app: Flask, email: str) -> int:
    client = new_client(app, next(_addresses))
    return client.post(
        "/auth/login", data={"email": email, "password": "wrong password!"}
    ).status_code


def test_a_dotted_capital_i_is_no_fresh_bucket_for_alice(app: Flask, people: People) -> None:
    alice = people.make(email="alice@portal.test")
    assert [_fail(app, alice.email) for _ in range(10)] == [401] * 10

    # U+0130 folds to "i" + U+0307, not to alice's "i": the variant is another (unknown)
    # address, so even with alice's password it never signs in as her (on the old code it
    # signed in, with fresh attempts).
    variant = new_client(app, next(_addresses))
    answer = variant.post("/auth/login", data={"email": "al\u0130ce@portal.test",
                                                "password": PASSWORD})  # fmt: skip
    assert answer.status_code == 401
    assert not signed_in(variant)


def test_every_spelling_of_one_account_shares_its_bucket(app: Flask, people: People) -> None:
    alice = people.make(email="alice@portal.test")
    spellings = ["ALICE@portal.test", "Alice@Portal.Test", "\uff41lice@portal.test",  # fullwidth
                 " alice@PORTAL.test "]  # fmt: skip
    statuses = [_fail(app, spellings[n % len(spellings)]) for n in range(10)]
    assert statuses == [401] * 10

    stranger = new_client(app, next(_addresses))
    blocked = stranger.post("/auth/login", data={"email": alice.email, "password": PASSWORD})
    assert blocked.status_code == 429
    assert not signed_in(stranger)


def _register(client: PageClient, email: str = "", **overrides: str):  # noqa: ANN202
    data = {"first_name": "Grace", "last_name": "Hopper", "email": email,
            "password": PASSWORD, "password_confirmation": PASSWORD, **overrides}  # fmt: skip
    return client.post("/auth/register", data=data)


def test_registering_a_canonical_duplicate_is_refused(
    client: PageClient, another_client: PageClient, people: People
) -> None:
    people.make(email="taken@portal.test")

    response = _register(another_client, "\uff34aken@PORTAL.test")  # fullwidth T, capitals

    assert response.status_code == 422
    assert 'id="email-error">An account with this email already exists.' in response.get_data(
        as_text=True
    )


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("first_name", "Alice\u200b", "invisible"),  # zero-width space
        ("last_name", "\u202eW", "invisible"),  # right-to-left override
        ("first_name", "\u0410lice", "look-alike"),  # Cyrillic A
        ("email", "alice\u200d@portal.test", "invisible"),
        ("email", "ada@p\u043ertal.test", "look-alike"),  # Cyrillic o
    ],
)
def test_the_registration_page_refuses_invisible_and_look_alike_input(
    client: PageClient, field: str, value: str, words: str
) -> None:
    response = _register(client, **{"email": "new-person@portal.test", field: value})

    assert response.status_code == 422
    error = page_text(response).split(f'id="{field}-error">')[1].split("<")[0]
    assert words in error
    assert not signed_in(client)


@pytest.mark.parametrize(
    ("field", "value"),
    [("first_name", "Alice\u200b"), ("last_name", "\u202eW"), ("first_name", "\u0410lice"),
     ("email", "ada@p\u043ertal.test"), ("email", "\u202eada@portal.test")],
)  # fmt: skip
def test_the_api_refuses_them_naming_the_field(client: PageClient, field: str, value: str) -> None:
    body = {"first_name": "Ada", "last_name": "Lovelace", "email": "api-person@portal.test",
            "password": PASSWORD, "password_confirmation": PASSWORD, field: value}  # fmt: skip

    response = client.post("/api/v1/auth/register", json=body)

    assert response.status_code == 422, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert (error["code"], error["param"]) == ("parameter_invalid", field)


@pytest.mark.parametrize(
    ("field", "value"),
    [("first_name", "Ada\u2060"), ("last_name", "Love\u202elace"), ("last_name", "L\u043evelace")],
)
def test_a_profile_name_change_refuses_them(
    client: PageClient, people: People, field: str, value: str
) -> None:
    person = people.make()
    token = tokens.issue_tokens(people.uow(), user_id=person.id).access_token

    response = client.patch(
        "/api/v1/users/me", json={field: value}, headers={"Authorization": f"Bearer {token}"}
    )

    assert response.status_code == 422, response.get_data(as_text=True)
    assert response.get_json()["error"]["param"] == field
    me = client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token}"})
    assert me.get_json()[field] == {"first_name": "Ada", "last_name": "Lovelace"}[field]
