"""The checkout sessions API through the Flask test client with real merchant keys: the session
object, the URL and expiry rules as 422s naming the field, Idempotency-Key, scopes, another
merchant's session as a 404, the status a merchant reads after the payer paid (captured or held)
or let the session expire, and the list."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient

from portal.domain.errors import CardDeclined, UnexpectedState
from portal.domain.money import Money
from portal.extensions import limiter
from portal.services.ledger import reconciliation
from portal.services.merchants import checkout
from tests.api.test_auth_api import client_for
from tests.conftest import new_key
from tests.merchants.conftest import open_shop

API = "/api/v1"
SESSIONS = f"{API}/checkout/sessions"


@pytest.fixture(autouse=True)
def _fresh_limits() -> None:
    limiter.reset()


@pytest.fixture
def api(app, connection) -> FlaskClient:
    return client_for(app)


def as_key(secret: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}", **extra}


def idem(key: str | None = None) -> dict[str, str]:
    return {"Idempotency-Key": key or uuid.uuid4().hex}


def body(**kw: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "amount": 2000, "currency": "usd", "description": "Two lattes",
        "success_url": "https://shop.example/thanks?order=7",
        "cancel_url": "https://shop.example/cart",
    }  # fmt: skip
    data.update(kw)
    return data


def error(response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    found = response.get_json()["error"]
    assert found["request_id"] == response.headers["X-Request-ID"]
    return found


def create(api, shop, **kw: Any) -> dict[str, Any]:
    response = api.post(SESSIONS, json=body(**kw), headers={**as_key(shop.key.secret), **idem()})
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()


def retrieve(api, shop, session_id: str) -> dict[str, Any]:
    response = api.get(f"{SESSIONS}/{session_id}", headers=as_key(shop.key.secret))
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def pay(uow, payer, session_id: str, card) -> checkout.CheckoutPayment:
    """What the hosted page does when the signed-in payer presses Pay."""
    return checkout.pay_checkout_session(
        uow, actor=payer, session=session_id, card=card.public_id, idempotency_key=new_key()
    )


def assert_reconciled(uow) -> None:
    report = reconciliation.reconcile(uow)
    assert report.ok, report.violations


def test_create_answers_a_checkout_session(api, uow, shop, app):
    made = api.post(SESSIONS, json=body(client_reference_id="order-7", metadata={"cart": "42"}),
                    headers={**as_key(shop.key.secret), **idem()})  # fmt: skip
    assert made.status_code == 201, made.get_data(as_text=True)
    session = made.get_json()
    assert session["object"] == "checkout.session" and session["id"].startswith("cs_")
    public_url = app.config["SERVICE_SETTINGS"].public_url
    assert session["url"] == f"{public_url}/checkout/{session['id']}"
    assert (session["amount_total"], session["currency"], session["description"]) == (
        2000, "usd", "Two lattes",
    )  # fmt: skip
    assert (session["status"], session["payment_status"], session["payment"]) == (
        "open", "unpaid", None,
    )  # fmt: skip
    assert session["capture_method"] == "automatic"
    assert session["client_reference_id"] == "order-7" and session["metadata"] == {"cart": "42"}
    assert session["success_url"] == "https://shop.example/thanks?order=7"
    assert session["cancel_url"] == "https://shop.example/cart"
    assert session["expires_at"] - session["created"] == 86400
    assert made.headers["Cache-Control"] == "no-store"
    assert retrieve(api, shop, session["id"]) == session


def test_idempotency_key_is_required_and_replays(api, shop):
    headers = as_key(shop.key.secret)
    missing = error(api.post(SESSIONS, json=body(), headers=headers), 400)
    assert missing["code"] == "idempotency_key_missing"
    key = idem()
    first = api.post(SESSIONS, json=body(), headers={**headers, **key})
    again = api.post(SESSIONS, json=body(), headers={**headers, **key})
    assert again.status_code == 201 and again.get_json()["id"] == first.get_json()["id"]
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert "Idempotent-Replayed" not in first.headers
    reused = error(api.post(SESSIONS, json=body(amount=2100), headers={**headers, **key}), 422)
    assert reused["code"] == "idempotency_key_reused"
    listed = api.get(SESSIONS, headers=headers).get_json()
    assert [s["id"] for s in listed["data"]] == [first.get_json()["id"]]


@pytest.mark.parametrize("param", ["success_url", "cancel_url"])
@pytest.mark.parametrize(
    "url", ["http://example.com/thanks", "ftp://shop.example/x", "/thanks", "https://a b.example/"]
)
def test_return_urls_must_be_https(api, shop, param, url):
    found = error(api.post(SESSIONS, json=body(**{param: url}),
                           headers={**as_key(shop.key.secret), **idem()}), 422)  # fmt: skip
    assert found["param"] == param
    assert api.get(SESSIONS, headers=as_key(shop.key.secret)).get_json()["data"] == []


def test_http_to_loopback_is_taken_in_development(api, shop):
    session = create(api, shop, success_url="http://127.0.0.1:8000/ok",
                     cancel_url="http://localhost:8000/no")  # fmt: skip
    assert session["success_url"] == "http://127.0.0.1:8000/ok"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"expires_in": 1799}, "expires_in"),
        ({"expires_in": 86401}, "expires_in"),
        ({"expires_in": "3600"}, "expires_in"),
        ({"amount": 0}, "amount"),
        ({"amount": "20"}, "amount"),
        ({"currency": "xx"}, "currency"),
        ({"currency": "zzz"}, "currency"),
        ({"capture_method": "later"}, "capture_method"),
        ({"description": "d" * 256}, "description"),
        ({"client_reference_id": "r" * 201}, "client_reference_id"),
        ({"metadata": {"k": 1}}, "metadata"),
        ({"success_url": None}, "success_url"),
        ({"surprise": True}, "surprise"),
    ],
)
def test_bad_fields_are_422_naming_the_field(api, shop, fields, param):
    found = error(api.post(SESSIONS, json=body(**fields),
                           headers={**as_key(shop.key.secret), **idem()}), 422)  # fmt: skip
    assert found["param"] == param


def test_missing_url_is_named(api, shop):
    data = body()
    del data["cancel_url"]
    found = error(api.post(SESSIONS, json=data, headers={**as_key(shop.key.secret), **idem()}), 422)
    assert (found["code"], found["param"]) == ("parameter_missing", "cancel_url")


@pytest.mark.parametrize("seconds", [1800, 86400])
def test_expiry_bounds_are_taken(api, shop, seconds):
    session = create(api, shop, expires_in=seconds)
    assert session["expires_at"] - session["created"] == seconds


def test_keys_and_scopes(api, uow, make, staff, shop):
    reader = open_shop(uow, make, staff, name="Reader", scopes=("payments:read",))
    headers = {**as_key(reader.key.secret), **idem()}
    refused = error(api.post(SESSIONS, json=body(), headers=headers), 403)
    assert refused["code"] == "permission_denied"
    assert api.get(SESSIONS, headers=as_key(reader.key.secret)).status_code == 200
    assert error(api.get(SESSIONS, headers=as_key("sk_live_" + "x" * 40)), 401)
    assert error(api.get(SESSIONS), 401)


def test_another_merchants_session_is_a_404(api, uow, make, staff, shop):
    other = open_shop(uow, make, staff, name="Other Shop")
    session = create(api, shop)
    found = error(api.get(f"{SESSIONS}/{session['id']}", headers=as_key(other.key.secret)), 404)
    assert found["code"] == "not_found"
    assert api.get(SESSIONS, headers=as_key(other.key.secret)).get_json()["data"] == []
    assert error(api.get(f"{SESSIONS}/cs_notanid", headers=as_key(shop.key.secret)), 404)


def test_paid_session_reads_complete_and_paid(api, uow, make, shop):
    payer = make.user()
    card = make.card(payer, balance="100")
    session = create(api, shop)
    paid = pay(uow, payer, session["id"], card)
    seen = retrieve(api, shop, session["id"])
    assert (seen["status"], seen["payment_status"], seen["payment"]) == (
        "complete", "paid", paid.payment.id,
    )  # fmt: skip
    payment = api.get(f"{API}/payments/{seen['payment']}", headers=as_key(shop.key.secret))
    assert payment.status_code == 200
    assert payment.get_json()["status"] == "succeeded"
    assert payment.get_json()["checkout_session"] == session["id"]
    with pytest.raises(UnexpectedState) as err:
        pay(uow, payer, session["id"], card)
    assert err.value.code == "checkout_session_completed"
    assert retrieve(api, shop, session["id"])["payment"] == paid.payment.id
    assert_reconciled(uow)


def test_manual_capture_session_is_paid_while_held(api, uow, make, shop):
    payer = make.user()
    card = make.card(payer, balance="100")
    session = create(api, shop, capture_method="manual")
    paid = pay(uow, payer, session["id"], card)
    seen = retrieve(api, shop, session["id"])
    assert (seen["status"], seen["payment_status"]) == ("complete", "paid")
    payment = api.get(f"{API}/payments/{paid.payment.id}", headers=as_key(shop.key.secret))
    assert payment.get_json()["status"] == "requires_capture"
    captured = api.post(f"{API}/payments/{paid.payment.id}/capture", json={},
                        headers={**as_key(shop.key.secret), **idem()})  # fmt: skip
    assert captured.get_json()["status"] == "succeeded"
    assert retrieve(api, shop, session["id"])["payment_status"] == "paid"
    assert_reconciled(uow)


def test_a_declined_payer_leaves_the_session_open(api, uow, make, shop):
    payer = make.user()
    poor = make.card(payer, balance="5")
    session = create(api, shop)
    with pytest.raises(CardDeclined):
        pay(uow, payer, session["id"], poor)
    seen = retrieve(api, shop, session["id"])
    assert (seen["status"], seen["payment_status"], seen["payment"]) == ("open", "unpaid", None)
    assert_reconciled(uow)


def test_a_session_past_its_expiry_reads_expired(api, uow, make, shop, connection):
    payer = make.user()
    card = make.card(payer, balance="100")
    session = create(api, shop, expires_in=1800)
    connection.execute(
        sa.text("UPDATE checkout_sessions SET expires_at = :t WHERE public_id = :id"),
        {"t": datetime.now(UTC) - timedelta(seconds=1), "id": session["id"]},
    )
    seen = retrieve(api, shop, session["id"])
    assert (seen["status"], seen["payment_status"]) == ("expired", "unpaid")
    with pytest.raises(UnexpectedState) as err:
        pay(uow, payer, session["id"], card)
    assert err.value.code == "checkout_session_expired"
    listed = api.get(f"{SESSIONS}?status=expired", headers=as_key(shop.key.secret)).get_json()
    assert [s["id"] for s in listed["data"]] == [session["id"]]
    assert (
        api.get(f"{SESSIONS}?status=open", headers=as_key(shop.key.secret)).get_json()["data"] == []
    )
    assert_reconciled(uow)


def test_list_pages_newest_first(api, shop):
    made = [create(api, shop, client_reference_id=f"order-{n % 2}")["id"] for n in range(3)]
    headers = as_key(shop.key.secret)
    first = api.get(f"{SESSIONS}?limit=2", headers=headers).get_json()
    assert first["object"] == "list" and first["url"] == SESSIONS and first["has_more"]
    assert [s["id"] for s in first["data"]] == made[::-1][:2]
    rest = api.get(f"{SESSIONS}?limit=2&starting_after={first['data'][-1]['id']}",
                   headers=headers).get_json()  # fmt: skip
    assert [s["id"] for s in rest["data"]] == [made[0]] and not rest["has_more"]
    odd = api.get(f"{SESSIONS}?client_reference_id=order-1", headers=headers).get_json()
    assert [s["id"] for s in odd["data"]] == [made[1]]
    bad = error(api.get(f"{SESSIONS}?status=paid", headers=headers), 422)
    assert bad["param"] == "status"
    assert (
        error(api.get(f"{SESSIONS}?starting_after=cs_unknown", headers=headers), 422)["param"]
        == "starting_after"
    )


def test_the_openapi_document_has_the_checkout_operations(api):
    document = api.get(f"{API}/openapi.json").get_json()
    paths = document["paths"]
    assert {"post", "get"} <= set(paths["/api/v1/checkout/sessions"])
    assert "get" in paths["/api/v1/checkout/sessions/{session_id}"]
    create_op = paths["/api/v1/checkout/sessions"]["post"]
    assert {"$ref": "#/components/parameters/Idempotency-Key"} in create_op["parameters"]
    assert "expires_in" in str(document["components"]["schemas"]["NewCheckoutSession"])


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_checkout_api_answers_only_what_it_documents(app, connection, uow, make, shop, mode):
    """A bounded, seeded schemathesis run over the checkout operations: no 5xx, every answer
    as documented; in negative mode schema-invalid requests get a 4xx. Half the positive cases
    get a real session id and valid URLs swapped in, so they reach the service's paths."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, seed, settings
    from hypothesis import strategies as st
    from schemathesis.checks import positive_data_acceptance
    from schemathesis.generation import GenerationMode

    from tests.api.test_auth_api import new_address

    limiter.reset()
    known = checkout.create_checkout_session(
        uow, actor=shop.api, merchant=shop.merchant.id, amount=Money(2000, "USD"),
        success_url="https://shop.example/ok", cancel_url="https://shop.example/no",
        idempotency_key=new_key(),
    )  # fmt: skip
    address = new_address()
    serial = itertools.count()
    schema = schemathesis.openapi.from_wsgi(f"{API}/openapi.json", app)
    generation = GenerationMode.POSITIVE if mode == "positive" else GenerationMode.NEGATIVE
    tested: list[str] = []
    for result in schema.get_all_operations():
        op = result.ok()
        if "checkout" not in op.definition.raw.get("tags", ()):
            continue

        @seed(20_261_202)
        @settings(
            max_examples=12 if mode == "positive" else 8, deadline=None, derandomize=True,
            database=None, phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )  # fmt: skip
        @given(case=op.as_strategy(generation_mode=generation), data=st.data())
        def run(case: Any, data: Any) -> None:
            if mode == "positive" and data.draw(st.booleans(), label="known values"):
                if "session_id" in (case.path_parameters or {}):
                    case.path_parameters["session_id"] = known.id
                if isinstance(case.body, dict):
                    case.body = {**case.body, "currency": "usd", "amount": 100 + next(serial),
                                 "success_url": "https://shop.example/ok",
                                 "cancel_url": "https://shop.example/no"}  # fmt: skip
            case.call_and_validate(
                headers={**as_key(shop.key.secret), "Idempotency-Key": f"fuzz-{next(serial)}"},
                excluded_checks=[positive_data_acceptance],
                environ_base={"REMOTE_ADDR": address},
            )

        run()
        tested.append(op.definition.raw["operationId"])

    assert sorted(tested) == [
        "create_checkout_session", "get_checkout_session", "list_checkout_sessions",
    ]  # fmt: skip
    assert_reconciled(uow)
