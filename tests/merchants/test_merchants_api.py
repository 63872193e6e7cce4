"""Merchant accounts through the API with access tokens: apply, staff decisions, keys (the
secret only in the creating answer), the team; another person's merchant is a 404."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from portal.domain.ids import is_public_id
from portal.extensions import limiter
from portal.services.identity import accounts
from tests.api.test_auth_api import bearer, client_for, token_for

API = "/api/v1"


@pytest.fixture(autouse=True)
def _fresh_limits() -> None:
    limiter.reset()


@pytest.fixture
def api(app, connection) -> FlaskClient:
    return client_for(app)


def as_user(uow, actor) -> dict[str, str]:
    return bearer(token_for(uow, accounts.get_user_view(uow, actor.id)))


APPLICATION = {"name": "Warung Budi", "website": "https://warung.example",
               "contact_email": "budi@warung.example", "settlement_currency": "idr"}  # fmt: skip


def test_apply_approve_and_manage_keys(api, uow, make, staff):
    owner = make.user()
    me, admin = as_user(uow, owner), as_user(uow, staff)
    applied = api.post(f"{API}/merchants", json=APPLICATION, headers=me)
    assert applied.status_code == 201, applied.get_data(as_text=True)
    merchant = applied.get_json()
    assert is_public_id("merchant", merchant["id"])
    assert (merchant["status"], merchant["role"], merchant["settlement_currency"]) == (
        "pending", "owner", "idr",
    )  # fmt: skip
    refused = api.post(f"{API}/merchants/{merchant['id']}/approve", json={}, headers=me)
    assert refused.status_code == 403
    approved = api.post(f"{API}/merchants/{merchant['id']}/approve", json={"reason": "ok"},
                        headers=admin)  # fmt: skip
    assert approved.status_code == 200 and approved.get_json()["status"] == "active"
    again = api.post(f"{API}/merchants/{merchant['id']}/approve", json={}, headers=admin)
    assert again.status_code == 400
    assert again.get_json()["error"]["code"] == "merchant_unexpected_state"

    created = api.post(
        f"{API}/merchants/{merchant['id']}/api_keys",
        json={"name": "server", "scopes": ["payments:read"]},
        headers=me,
    )
    assert created.status_code == 201, created.get_data(as_text=True)
    key = created.get_json()
    assert key["secret"].startswith("sk_live_") and len(key["secret"]) == 40
    listed = api.get(f"{API}/merchants/{merchant['id']}/api_keys", headers=me)
    assert key["secret"] not in listed.get_data(as_text=True)
    (shown,) = listed.get_json()["data"]
    assert (
        shown["secret"] is None
        and shown["redacted"] == f"{key['secret'][:12]}…{key['secret'][-4:]}"
    )
    # The key works for its merchant.
    payments = api.get(f"{API}/payments", headers=bearer(key["secret"]))
    assert payments.status_code == 200
    rolled = api.post(f"{API}/merchants/{merchant['id']}/api_keys/{key['id']}/roll",
                      json={"overlap_hours": 0}, headers=me).get_json()  # fmt: skip
    assert rolled["secret"] != key["secret"]
    assert api.get(f"{API}/payments", headers=bearer(key["secret"])).status_code == 401
    assert api.get(f"{API}/payments", headers=bearer(rolled["secret"])).status_code == 200
    revoked = api.post(f"{API}/merchants/{merchant['id']}/api_keys/{rolled['id']}/revoke",
                       headers=me)  # fmt: skip
    assert revoked.status_code == 200 and revoked.get_json()["revoked"]
    assert api.get(f"{API}/payments", headers=bearer(rolled["secret"])).status_code == 401


def test_another_persons_merchant_is_a_404(api, uow, make, shop):
    stranger = as_user(uow, make.user())
    mid = shop.merchant.public_id
    assert api.get(f"{API}/merchants/{mid}", headers=stranger).status_code == 404
    assert api.get(f"{API}/merchants/{mid}/api_keys", headers=stranger).status_code == 404
    assert api.post(f"{API}/merchants/{mid}/api_keys", json={"name": "x"},
                    headers=stranger).status_code == 404  # fmt: skip
    assert api.get(f"{API}/merchants", headers=stranger).get_json()["data"] == []
    assert api.get(f"{API}/merchants?all=true", headers=stranger).status_code == 403


def test_team_invitations_and_roles(api, uow, make, shop):
    owner = as_user(uow, shop.owner)
    dev_user = make.user(email="dev@shop.example")
    mid = shop.merchant.public_id
    invited = api.post(
        f"{API}/merchants/{mid}/invitations",
        json={"email": "DEV@shop.example", "role": "viewer"},
        headers=owner,
    )
    assert invited.status_code == 201, invited.get_data(as_text=True)
    from portal.services.merchants import merchants

    merchants.accept_invitation(uow, actor=dev_user, token=invited.get_json()["token"])
    members = api.get(f"{API}/merchants/{mid}/members", headers=owner).get_json()["data"]
    viewer = next(m for m in members if m["role"] == "viewer")
    dev = as_user(uow, dev_user)
    # A viewer reads but cannot make keys.
    assert api.get(f"{API}/merchants/{mid}", headers=dev).get_json()["role"] == "viewer"
    assert api.post(f"{API}/merchants/{mid}/api_keys", json={"name": "x"},
                    headers=dev).status_code == 403  # fmt: skip
    changed = api.post(f"{API}/merchants/{mid}/members/{viewer['id']}", json={"role": "developer"},
                       headers=owner)  # fmt: skip
    assert changed.status_code == 204
    assert api.post(f"{API}/merchants/{mid}/api_keys", json={"name": "x"},
                    headers=dev).status_code == 201  # fmt: skip
    me = next(m for m in members if m["role"] == "owner")
    last = api.delete(f"{API}/merchants/{mid}/members/{me['id']}", headers=owner)
    assert last.status_code == 400 and last.get_json()["error"]["code"] == "last_owner"
    assert (
        api.delete(f"{API}/merchants/{mid}/members/{viewer['id']}", headers=owner).status_code
        == 204
    )
    assert api.get(f"{API}/merchants/{mid}", headers=dev).status_code == 404


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"website": "http://warung.example"}, "website"),
        ({"website": "not a url"}, "website"),
        ({"contact_email": "nobody"}, "contact_email"),
        ({"settlement_currency": "xyz"}, "settlement_currency"),
        ({"name": "x"}, "name"),
    ],
)
def test_bad_applications_name_the_field(api, uow, make, change, param):
    response = api.post(f"{API}/merchants", json={**APPLICATION, **change},
                        headers=as_user(uow, make.user()))  # fmt: skip
    assert response.status_code == 422, response.get_data(as_text=True)
    assert response.get_json()["error"]["param"] == param
