"""The dashboard's webhook pages through the Flask test client, inside the test's transaction:
each page renders for an owner and a developer; the signing secret is on the answer to the POST
that made it and nowhere else; the buttons (send test event, resend, replay failed since, rotate,
disable and enable, delete) act through the same services as the API, the test event reaching a
real receiver; a viewer and staff see no tab and get 403 on every page and post; CSRF is
required."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from portal.services.merchants import webhooks
from tests.merchants import test_dashboard_pages as dash
from tests.merchants import test_webhooks as base
from tests.merchants.test_dashboard_pages import World, actor_of
from tests.merchants.test_webhooks import Answer, run_worker, verify_both
from tests.pages.conftest import PageClient, new_client, sign_in

page_config = dash.page_config
client = dash.client
people = dash.people
outbox = dash.outbox
world = dash.world
csrf_on = dash.csrf_on
receiver = base.receiver


def page_text(response: Any) -> str:
    """What the page says: its text without tags, white space collapsed."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", response.get_data(as_text=True)))


def _field(response: Any, name: str) -> str:
    return dash._field(response, name)


def _add(c: PageClient, mid: str, url: str, events: tuple[str, ...] = ("*",), **extra: str):
    page = c.get(f"/merchant/{mid}/webhooks")
    assert page.status_code == 200
    data: dict[str, Any] = {"url": url, "events": list(events), "description": "Orders",
                            "form_token": _field(page, "form_token"), **extra}  # fmt: skip
    return c.post(f"/merchant/{mid}/webhooks", data=data)


def _secret(response: Any) -> str | None:
    found = re.search(r'id="new-secret" type="text" value="(whsec_[^"]+)"', response.get_data(True))
    return found.group(1) if found else None


def _endpoints(w: World) -> list[webhooks.WebhookEndpointView]:
    return list(webhooks.list_endpoints(w.uow, actor=actor_of(w.uow, w.owner), merchant=w.mid,
                                        limit=100).items)  # fmt: skip


def test_an_owner_adds_an_endpoint_and_sees_its_secret_once(world: World) -> None:
    c = world.as_client(world.owner)
    empty = c.get(f"/merchant/{world.mid}/webhooks")
    assert empty.status_code == 200 and "No endpoints yet" in page_text(empty)
    assert f'href="/merchant/{world.mid}/webhooks" aria-current="page">Webhooks' in (
        empty.get_data(True))  # fmt: skip
    made = _add(c, world.mid, "https://hooks.kopi.example/portal",
                ("payment.succeeded", "refund.created"))  # fmt: skip
    assert made.status_code == 201, page_text(made)
    assert made.headers["Cache-Control"] == "no-store"
    secret = _secret(made)
    assert secret is not None and secret.startswith("whsec_")
    assert "You won't see this secret again." in page_text(made)
    (e,) = _endpoints(world)
    assert e.url == "https://hooks.kopi.example/portal"
    assert e.enabled_events == ("payment.succeeded", "refund.created")
    # Never again: not on the endpoint's page, not on the list, not in a redirect's flash.
    for path in (f"/merchant/{world.mid}/webhooks/{e.id}", f"/merchant/{world.mid}/webhooks"):
        html = c.get(path).get_data(as_text=True)
        assert secret not in html and secret.removeprefix("whsec_") not in html
    listed = page_text(c.get(f"/merchant/{world.mid}/webhooks"))
    assert "https://hooks.kopi.example/portal" in listed and "Enabled" in listed
    assert "payment.succeeded refund.created" in listed and "None yet" in listed
    # The same form sent again (a double click, a reload) makes no second endpoint.
    page = c.get(f"/merchant/{world.mid}/webhooks")
    token = _field(page, "form_token")
    data = {"url": "https://hooks.kopi.example/second", "events": ["*"], "form_token": token}
    assert c.post(f"/merchant/{world.mid}/webhooks", data=data).status_code == 201
    again = c.post(f"/merchant/{world.mid}/webhooks", data=data)
    assert again.status_code == 302
    assert "only the first submission counted" in page_text(c.get(again.headers["Location"]))
    assert len(_endpoints(world)) == 2


def test_bad_input_is_shown_next_to_its_field_and_adds_nothing(world: World) -> None:
    c = world.as_client(world.developer)
    plain = _add(c, world.mid, "ftp://hooks.kopi.example/")
    assert plain.status_code == 422
    assert re.search(r'id="url-error">Url must use https\.', plain.get_data(True))
    none = _add(c, world.mid, "https://hooks.kopi.example/", ())
    assert none.status_code == 422 and "Choose at least one event" in page_text(none)
    assert _endpoints(world) == []
    assert _secret(plain) is None and _secret(none) is None


def test_the_endpoint_page_sends_a_test_event_that_arrives_signed(world: World, receiver,
                                                                  clock) -> None:  # fmt: skip
    c = world.as_client(world.developer)
    made = _add(c, world.mid, receiver.url, ("refund.created",))
    secret = _secret(made)
    assert secret
    (e,) = _endpoints(world)
    page = c.get(f"/merchant/{world.mid}/webhooks/{e.id}")
    assert page.status_code == 200 and "Nothing sent yet" in page_text(page)
    sent = c.post(f"/merchant/{world.mid}/webhooks/{e.id}/test")
    assert sent.status_code == 302  # Post/Redirect/Get
    shown = c.get(sent.headers["Location"])
    assert "A test event (payment.succeeded, evt_" in page_text(shown)
    html = shown.get_data(as_text=True)
    assert "data-test" in html and 'data-status="pending"' in html
    clock.advance(seconds=5)  # the page ran on the real clock, the worker on the test's
    assert run_worker(lambda: world.uow) == 1
    (got,) = receiver.received
    event = verify_both(secret, got)
    assert event["type"] == "payment.succeeded"
    assert event["data"]["object"]["metadata"] == {"portal_test": "true"}
    logged = c.get(f"/merchant/{world.mid}/webhooks/{e.id}")
    text = page_text(logged)
    assert 'data-status="delivered"' in logged.get_data(True)
    assert event["id"] in text and " ms" in text and "ok" in text  # the attempt's answer
    listed = page_text(c.get(f"/merchant/{world.mid}/webhooks"))
    assert "Delivered" in listed


def test_resend_replay_rotate_disable_enable_and_delete(
    world: World, receiver, clock, connection: sa.Connection
) -> None:
    c = world.as_client(world.owner)
    owner = actor_of(world.uow, world.owner)
    made = _add(c, world.mid, receiver.url)
    old_secret = _secret(made)
    (e,) = _endpoints(world)
    base_url = f"/merchant/{world.mid}/webhooks/{e.id}"
    receiver.default = Answer(500, b"broken")
    world.pay("12")
    clock.advance(seconds=5)
    run_worker(lambda: world.uow)
    deliveries = webhooks.list_deliveries(world.uow, actor=owner, merchant=world.mid,
                                          endpoint=e.id, limit=100)  # fmt: skip
    assert {d.status for d in deliveries} == {"pending"}
    page = page_text(c.get(base_url))
    assert "answered 500" in page and "broken" in page
    # Disabling ends the pending retries failed; enabling and replaying sends them again.
    off = c.post(f"{base_url}/status", data={"status": "disabled"})
    assert off.status_code == 302 and "is disabled" in page_text(c.get(off.headers["Location"]))
    assert "Send test event" not in page_text(c.get(base_url))
    assert "Disabled" in page_text(c.get(f"/merchant/{world.mid}/webhooks"))
    clock.advance(minutes=2)  # the retries come due while it is off: they end failed
    run_worker(lambda: world.uow)
    assert len(receiver.received) == 2
    on = c.post(f"{base_url}/status", data={"status": "enabled"})
    assert on.status_code == 302
    receiver.default = Answer(200)
    since = clock.now - timedelta(hours=1)
    replayed = c.post(f"{base_url}/replay", data={"since": since.strftime("%Y-%m-%dT%H:%M")})
    assert replayed.status_code == 302
    assert "2 failed deliveries since" in page_text(c.get(replayed.headers["Location"]))
    run_worker(lambda: world.uow)
    assert len(receiver.received) == 4
    bad = c.post(f"{base_url}/replay", data={"since": "yesterday"})
    assert bad.status_code == 422 and "Enter a date and time" in page_text(bad)
    # Resend a delivered one: the same event id again.
    (first, *_) = webhooks.list_deliveries(world.uow, actor=owner, merchant=world.mid,
                                           endpoint=e.id, limit=100)  # fmt: skip
    assert first.status == "delivered"
    resent = c.post(f"{base_url}/deliveries/{first.id}/resend")
    assert resent.status_code == 302
    assert "same event id" in page_text(c.get(resent.headers["Location"]))
    run_worker(lambda: world.uow)
    assert receiver.received[-1].headers["webhook-id"] == first.event
    # Rotate: the new secret once, the overlap explained, both secrets signing meanwhile.
    page = c.get(base_url)
    rotation = {"overlap": "24", "form_token": _field(page, "form_token")}
    rotated = c.post(f"{base_url}/rotate", data=rotation)
    assert rotated.status_code == 201
    new_secret = _secret(rotated)
    assert new_secret and new_secret != old_secret
    assert "signed with both secrets" in page_text(rotated)
    assert new_secret not in c.get(base_url).get_data(as_text=True)
    world.pay("13")
    run_worker(lambda: world.uow)
    verify_both(new_secret, receiver.received[-1])
    verify_both(old_secret, receiver.received[-1])
    # Delete: gone with its log.
    gone = c.post(f"{base_url}/delete")
    assert gone.status_code == 302 and gone.headers["Location"].endswith("/webhooks")
    assert "is deleted" in page_text(c.get(gone.headers["Location"]))
    assert _endpoints(world) == []
    assert c.get(base_url).status_code == 404


def test_an_endpoint_portal_turned_off_says_so_on_the_list(world: World, receiver,
                                                          clock) -> None:  # fmt: skip
    c = world.as_client(world.owner)
    _add(c, world.mid, receiver.url)
    (e,) = _endpoints(world)
    receiver.default = Answer(410, b"gone")
    world.pay("12")
    clock.advance(seconds=5)
    run_worker(lambda: world.uow)
    listed = page_text(c.get(f"/merchant/{world.mid}/webhooks"))
    assert "Turned off by Portal: answered 410 Gone" in listed
    assert "Portal stopped sending to this endpoint" in listed
    detail = page_text(c.get(f"/merchant/{world.mid}/webhooks/{e.id}"))
    assert "Portal turned this endpoint off because it answered 410 Gone" in detail
    assert "Enable endpoint" in detail


def _routes(mid: str, endpoint: str, delivery: str) -> list[tuple[str, str]]:
    base_url = f"/merchant/{mid}/webhooks"
    return [
        ("GET", base_url), ("POST", base_url), ("GET", f"{base_url}/{endpoint}"),
        ("POST", f"{base_url}/{endpoint}/test"), ("POST", f"{base_url}/{endpoint}/replay"),
        ("POST", f"{base_url}/{endpoint}/rotate"), ("POST", f"{base_url}/{endpoint}/status"),
        ("POST", f"{base_url}/{endpoint}/delete"),
        ("POST", f"{base_url}/{endpoint}/deliveries/{delivery}/resend"),
    ]  # fmt: skip


def test_a_viewer_and_staff_see_no_tab_and_get_403(world: World, people, client,
                                                   connection: sa.Connection) -> None:  # fmt: skip
    owner = actor_of(world.uow, world.owner)
    e = webhooks.create_endpoint(
        world.uow, actor=owner, merchant=world.mid, url="https://hooks.kopi.example/portal",
        enabled_events=["*"],
    )  # fmt: skip
    world.pay("9")
    (d, *_) = webhooks.list_deliveries(world.uow, actor=owner, merchant=world.mid, endpoint=e.id)
    viewer = world.as_client(world.viewer)
    staff_person = dash._staff(people, client)
    assert staff_person
    for c in (viewer, client):
        overview = c.get(f"/merchant/{world.mid}")
        assert overview.status_code == 200
        assert "/webhooks" not in overview.get_data(as_text=True)  # no tab
        for method, path in _routes(world.mid, e.id, d.id):
            response = c.open(path, method=method, data={
                "url": "https://hooks.kopi.example/mine", "events": ["*"], "status": "disabled",
                "overlap": "0", "since": "2020-01-01T00:00", "form_token": uuid.uuid4().hex,
            })  # fmt: skip
            assert response.status_code == 403, (method, path, response.status_code)
            assert "Send test event" not in page_text(response)
    # Nothing changed: one endpoint, enabled, its secret not rotated, no test event.
    (still,) = _endpoints(world)
    assert (still.status, still.previous_secret_expires_at) == ("enabled", None)
    assert connection.execute(sa.text("SELECT count(*) FROM events WHERE test")).scalar() == 0
    # A stranger does not learn the merchant exists.
    stranger = world.as_client(world.stranger)
    for method, path in _routes(world.mid, e.id, d.id):
        assert stranger.open(path, method=method).status_code == 404, path


def test_the_forms_need_the_csrf_token(world: World, csrf_on: None) -> None:
    c = new_client(world.people.app)
    login = c.get("/auth/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', login).group(1)
    who = {"email": world.owner.email, "password": world.owner.password, "csrf_token": token}
    signed = c.post("/auth/login", data=who)
    assert signed.status_code == 302
    page = c.get(f"/merchant/{world.mid}/webhooks")
    data = {"url": "https://hooks.kopi.example/portal", "events": ["*"],
            "form_token": _field(page, "form_token")}  # fmt: skip
    assert c.post(f"/merchant/{world.mid}/webhooks", data=data).status_code == 400
    assert _endpoints(world) == []
    made = c.post(f"/merchant/{world.mid}/webhooks",
                  data={**data, "csrf_token": _field(page, "csrf_token")})  # fmt: skip
    assert made.status_code == 201
    (e,) = _endpoints(world)
    detail = c.get(f"/merchant/{world.mid}/webhooks/{e.id}")
    csrf = _field(detail, "csrf_token")
    for action, extra in (("test", {}), ("status", {"status": "disabled"}), ("delete", {})):
        path = f"/merchant/{world.mid}/webhooks/{e.id}/{action}"
        assert c.post(path, data=extra).status_code == 400, action
    (still,) = _endpoints(world)
    assert still.status == "enabled"
    sent = c.post(f"/merchant/{world.mid}/webhooks/{e.id}/test", data={"csrf_token": csrf})
    assert sent.status_code == 302


@pytest.mark.parametrize("role", ["owner", "developer"])
def test_every_webhook_page_labels_its_inputs_and_has_no_inline_script(
    world: World, role: str
) -> None:
    c = world.as_client(getattr(world, role))
    made = _add(c, world.mid, "https://hooks.kopi.example/portal")
    (e,) = _endpoints(world)
    c.post(f"/merchant/{world.mid}/webhooks/{e.id}/test")
    pages = {
        "list": c.get(f"/merchant/{world.mid}/webhooks").get_data(True),
        "detail": c.get(f"/merchant/{world.mid}/webhooks/{e.id}").get_data(True),
        "created": made.get_data(True),
    }
    for name, html in pages.items():
        for tag in re.findall(r"<input\b[^>]*>", html):
            kind = re.search(r'type="([^"]+)"', tag)
            if kind and kind.group(1) in ("hidden", "submit"):
                continue
            field_id = re.search(r'\bid="([^"]+)"', tag)
            assert field_id and f'for="{field_id.group(1)}"' in html, f"{name}: {tag}"
        for tag in re.findall(r"<select\b[^>]*>", html):
            field_id = re.search(r'\bid="([^"]+)"', tag)
            assert field_id and f'for="{field_id.group(1)}"' in html, f"{name}: {tag}"
        ids = re.findall(r'\bid="([^"]+)"', html)
        assert len(ids) == len(set(ids)), f"{name}: duplicate ids"
        assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == [], name
        assert "<style" not in html and not re.search(r"\sstyle=", html), name
        assert not re.search(r"\son[a-z]+=", html), name


def test_sign_in_is_needed(world: World) -> None:
    c = new_client(world.people.app)
    response = c.get(f"/merchant/{world.mid}/webhooks")
    assert response.status_code == 302 and "/auth/login" in response.headers["Location"]
    assert sign_in(c, world.owner).status_code == 302
    assert c.get(f"/merchant/{world.mid}/webhooks").status_code == 200
