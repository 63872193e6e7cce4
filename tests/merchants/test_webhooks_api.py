"""The webhook endpoints API: a key with webhooks:manage creates (the secret once), lists,
reads, updates, rotates and deletes; bad input is a 4xx naming the field; other keys and other
merchants get 403 and 404."""

from __future__ import annotations

import pytest

from portal.extensions import limiter
from tests.api.test_auth_api import client_for
from tests.merchants.conftest import open_shop
from tests.merchants.test_webhooks import ALL_SCOPES

API = "/api/v1/webhook_endpoints"


@pytest.fixture(autouse=True)
def _fresh_limits() -> None:
    limiter.reset()


def test_endpoints_through_the_api(app, connection, uow, make, staff):
    api = client_for(app)
    shop = open_shop(uow, make, staff, scopes=ALL_SCOPES)
    auth = {"Authorization": f"Bearer {shop.key.secret}"}
    made = api.post(API, headers=auth, json={"url": "https://hooks.example.com/portal",
                                             "enabled_events": ["payment.succeeded"]})  # fmt: skip
    assert made.status_code == 201, made.get_json()
    body = made.get_json()
    assert body["object"] == "webhook_endpoint" and body["id"].startswith("we_")
    assert body["secret"].startswith("whsec_") and body["status"] == "enabled"
    one = api.get(f"{API}/{body['id']}", headers=auth).get_json()
    assert one["secret"] is None and one["url"] == "https://hooks.example.com/portal"
    listed = api.get(API, headers=auth).get_json()
    assert listed["url"] == API and [e["id"] for e in listed["data"]] == [body["id"]]
    changed = api.post(f"{API}/{body['id']}", headers=auth,
                       json={"enabled_events": ["*"], "status": "disabled"}).get_json()  # fmt: skip
    assert changed["enabled_events"] == ["*"] and changed["status"] == "disabled"
    assert changed["disabled_reason"] == "merchant"
    rotated = api.post(f"{API}/{body['id']}/rotate_secret", headers=auth,
                       json={"overlap_hours": 2}).get_json()  # fmt: skip
    assert rotated["secret"] not in (None, body["secret"])
    assert rotated["previous_secret_expires_at"] > rotated["created"]
    # Bad input names its field and changes nothing.
    plain = api.post(API, headers=auth, json={"url": "http://hooks.example.com/",
                                              "enabled_events": ["*"]})  # fmt: skip
    assert plain.status_code == 422, plain.get_json()
    assert plain.get_json()["error"]["param"] == "url"
    wrong = {"url": "https://hooks.example.com/", "enabled_events": ["payment.exploded"]}
    unknown = api.post(API, headers=auth, json=wrong)
    assert unknown.status_code == 422
    assert unknown.get_json()["error"]["param"].startswith("enabled_events")
    long = api.post(f"{API}/{body['id']}/rotate_secret", headers=auth, json={"overlap_hours": 169})
    assert long.status_code == 422 and long.get_json()["error"]["param"] == "overlap_hours"
    assert len(api.get(API, headers=auth).get_json()["data"]) == 1
    # A key without the scope, another merchant's key, a malformed id.
    payments_only = open_shop(uow, make, staff, name="Payments only")
    assert api.get(API, headers={"Authorization": f"Bearer {payments_only.key.secret}"}
                   ).status_code == 403  # fmt: skip
    other = open_shop(uow, make, staff, name="Other", scopes=ALL_SCOPES)
    theirs = {"Authorization": f"Bearer {other.key.secret}"}
    assert api.get(f"{API}/{body['id']}", headers=theirs).status_code == 404
    assert api.delete(f"{API}/{body['id']}", headers=theirs).status_code == 404
    assert api.get(f"{API}/we_nope", headers=auth).status_code == 404
    gone = api.delete(f"{API}/{body['id']}", headers=auth)
    assert gone.get_json() == {"id": body["id"], "object": "webhook_endpoint", "deleted": True}
    assert api.get(f"{API}/{body['id']}", headers=auth).status_code == 404
