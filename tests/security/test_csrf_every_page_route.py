"""CSRF on every state-changing page route, generated from ``app.url_map``.

Every rule outside ``/api/`` that takes POST, PUT, PATCH or DELETE is posted to, with CSRF
protection on, as the personas the access table (``test_authorization_matrix.EXPECTED``) lets use
it: anonymous when allowed and the first signed-in persona allowed (every persona for a rule the
table does not know yet). Four ways: no token, no token as htmx, another session's token in the
form, and another session's token in ``X-CSRFToken``. Each must be the 400 refusal and write
nothing (counted from ``pg_stat_xact_user_tables`` on the test's own connection, where every
request's statements run). The same request with the session's own token must not be refused for
CSRF: that proves the refusal is about the token. A route added later is covered without touching
this file; a route that is legitimately exempt (a signed webhook receiver, say) must be named in
``CSRF_EXEMPT`` with the reason.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import pytest
import sqlalchemy as sa
from flask import Flask, session
from flask.testing import FlaskClient
from flask_wtf.csrf import generate_csrf

from portal import create_app
from portal.extensions import csrf, limiter
from portal.web.auth import SESSION_KEY
from tests.security.test_authorization_matrix import (  # noqa: F401 (personas: a fixture)
    EXPECTED,
    PERSONAS,
    Persona,
    _normalise,
    _url,
    personas,
)

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})

#: (method, rule) of page routes that may change state without a CSRF token, each with its
#: reason. None today: Portal receives no webhooks or provider callbacks by POST (single sign-on
#: returns by GET and is protected by its state parameter).
CSRF_EXEMPT: dict[tuple[str, str], str] = {}

#: What a CSRF refusal says (flask-wtf's reasons; the sign-in and checkout pages say the form
#: had expired and show it again with a fresh token).
REFUSALS = (
    "The CSRF token is missing",
    "The CSRF session token is missing",
    "The CSRF token is invalid",
    "The CSRF tokens do not match",
    "The CSRF token has expired",
    "This form had expired, so nothing was done",
    "This form had expired, so nothing was paid",
)

#: Form bodies that would change something if the token were not checked (the rest post an
#: empty form: the refusal comes before the form is read).
FORMS: dict[tuple[str, str], dict[str, str]] = {
    ("POST", "/wallet/cards/<card_id>/name"): {"name": "Renamed by CSRF"},
    # The console's queues (one-time tokens fresh for each test session).
    ("POST", "/admin/queues/withdrawals/<withdrawal_id>/confirm"): {"form_token": uuid.uuid4().hex},
    ("POST", "/admin/queues/payouts/<payout_id>/fail"): {
        "form_token": uuid.uuid4().hex,
        "reason": "payout_failed",
    },
}

#: Routes whose accepted request (own token) always writes: the control proving the write count
#: sees a change when one happens.
MUST_WRITE_WHEN_ACCEPTED = (
    ("POST", "/auth/logout", "cardholder"),
    ("POST", "/wallet/cards/<card_id>/freeze", "cardholder"),
    ("POST", "/wallet/cards/<card_id>/name", "cardholder"),
    ("POST", "/admin/queues/withdrawals/<withdrawal_id>/confirm", "admin"),
    ("POST", "/admin/queues/payouts/<payout_id>/fail", "admin"),
)


def state_changing_page_routes(app: Flask) -> list[tuple[str, str]]:
    """Every (method, rule) outside /api/ that may change state, in a stable order."""
    found = {
        (method, _normalise(rule.rule))
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static" and not rule.rule.startswith("/api/")
        for method in (rule.methods or set()) & STATE_CHANGING
    }
    return sorted(found, key=lambda r: (r[1], r[0]))


def suitable(method: str, rule: str) -> tuple[str, ...]:
    """Who would be let through if the token were not checked; everyone for an unknown rule."""
    allowed = EXPECTED.get((method, rule))
    if allowed is None:
        return PERSONAS
    if not allowed:  # refused for everyone anyway: still refused first for the token
        return ("anonymous", "cardholder")
    signed_in = [p for p in PERSONAS if p in allowed and p != "anonymous"][:1]
    return tuple(["anonymous"] * ("anonymous" in allowed) + signed_in)


def refused_for_csrf(response, flashes: list[str]) -> bool:
    """A 400 saying why, or (the wallet's pages) a trip back to a fresh form, by redirect or
    htmx's HX-Redirect, with a notice saying why and that nothing was done."""
    text = response.get_data(as_text=True)
    if response.status_code == 400 and any(reason in text for reason in REFUSALS):
        return True
    back = response.status_code in (302, 303) or (
        response.status_code == 400 and "HX-Redirect" in response.headers
    )
    return back and any(reason in note for note in flashes for reason in REFUSALS)


def sent_and_told(client: FlaskClient, send: Callable[[], object]) -> Callable[[], object]:
    """``send``, answering (its response, the notices it flashed)."""

    def run() -> object:
        response = send()
        with client.session_transaction() as flask_session:
            flashes = [message for _, message in flask_session.get("_flashes", [])]
        return response, flashes

    return run


def mint(app: Flask) -> tuple[str, str]:
    """A (raw, signed) CSRF token pair, made by flask-wtf itself."""
    with app.test_request_context():
        signed = generate_csrf()
        return session["csrf_token"], signed


def writes(connection: sa.Connection) -> int:
    """Rows inserted, updated or deleted so far in the test's transaction (savepoints rolled
    back included)."""
    return connection.execute(
        sa.text(
            "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)"
            " FROM pg_stat_xact_user_tables"
        )
    ).scalar_one()


@dataclass(frozen=True)
class Attempt:
    name: str
    data: dict[str, str]
    headers: dict[str, str]


def attempts(form: dict[str, str], foreign: str) -> tuple[Attempt, ...]:
    return (
        Attempt("no token", form, {}),
        Attempt("no token, htmx", form, {"HX-Request": "true"}),
        Attempt("another session's token", {**form, "csrf_token": foreign}, {}),
        Attempt("another session's token in X-CSRFToken", form,
                {"X-CSRFToken": foreign, "HX-Request": "true"}),
    )  # fmt: skip


def check_route(
    client: FlaskClient,
    method: str,
    url: str,
    *,
    sign_in: Callable[[dict], None],
    own: tuple[str, str],
    foreign: str,
    form: dict[str, str],
    in_savepoint: Callable[[Callable[[], object]], tuple[object, int]],
) -> tuple[list[str], object, int]:
    """Refusals that did not happen, and the accepted control's response and write count."""
    raw, signed = own
    wrong: list[str] = []
    for attempt in attempts(form, foreign):

        def send(attempt: Attempt = attempt) -> object:
            with client.session_transaction() as flask_session:
                sign_in(flask_session)
                flask_session["csrf_token"] = raw
            return client.open(url, method=method, data=attempt.data, headers=attempt.headers)

        (response, flashes), written = in_savepoint(sent_and_told(client, send))
        if not refused_for_csrf(response, flashes):
            wrong.append(f"{method} {url} ({attempt.name}): {response.status_code}")  # type: ignore[attr-defined]
        elif written:
            wrong.append(f"{method} {url} ({attempt.name}): refused but wrote {written} rows")

    def accepted() -> object:
        with client.session_transaction() as flask_session:
            sign_in(flask_session)
            flask_session["csrf_token"] = raw
        return client.open(url, method=method, data={**form, "csrf_token": signed})

    (response, flashes), written = in_savepoint(sent_and_told(client, accepted))
    if refused_for_csrf(response, flashes):
        wrong.append(f"{method} {url}: refused for CSRF even with the session's own token")
    return wrong, response, written


@pytest.fixture
def csrf_on(app: Flask) -> Iterator[None]:
    saved = app.config["WTF_CSRF_ENABLED"]
    app.config["WTF_CSRF_ENABLED"] = True
    limiter.reset()
    try:
        yield
    finally:
        app.config["WTF_CSRF_ENABLED"] = saved
        limiter.reset()


def _signer(persona: Persona) -> Callable[[dict], None]:
    def sign_in(flask_session: dict) -> None:
        flask_session.clear()
        if persona.web_token:
            flask_session[SESSION_KEY] = persona.web_token

    return sign_in


def _savepoints(connection: sa.Connection) -> Callable[[Callable[[], object]], tuple[object, int]]:
    def run(send: Callable[[], object]) -> tuple[object, int]:
        limiter.reset()
        before = writes(connection)
        savepoint = connection.begin_nested()
        try:
            response = send()
            return response, writes(connection) - before
        finally:
            savepoint.rollback()

    return run


def test_every_state_changing_page_route_needs_the_csrf_token(
    app: Flask,
    connection: sa.Connection,
    personas: dict[str, Persona],  # noqa: F811 (the matrix's fixture)
    csrf_on: None,
) -> None:
    routes = state_changing_page_routes(app)
    assert len(routes) > 30  # the generator found the page forms (sign-in, wallet, merchant...)
    assert set(CSRF_EXEMPT) <= set(routes), "an exemption names a route that no longer exists"
    client = app.test_client()
    run = _savepoints(connection)
    _, foreign = mint(app)  # a token good for some other session, never for these
    wrong: list[str] = []
    accepted_writes: dict[tuple[str, str, str], int] = {}
    for method, rule in routes:
        if (method, rule) in CSRF_EXEMPT:
            continue
        url = _url(rule, personas["cardholder"])
        for name in suitable(method, rule):
            found, response, written = check_route(
                client, method, url, sign_in=_signer(personas[name]), own=mint(app),
                foreign=foreign, form=FORMS.get((method, rule), {}), in_savepoint=run,
            )  # fmt: skip
            wrong += [f"{line} as {name}" for line in found]
            assert response.status_code < 500, f"{method} {url} as {name}"  # type: ignore[attr-defined]
            accepted_writes[(method, rule, name)] = written
    assert not wrong, "\n".join(wrong)
    for key in MUST_WRITE_WHEN_ACCEPTED:
        assert accepted_writes[key] > 0, f"{key}: the accepted request wrote nothing"


def _probe_app(app: Flask, paths: Iterable[str]) -> Flask:
    probe = create_app({**app.config, "WTF_CSRF_ENABLED": True})
    for path in paths:

        def view() -> str:
            return "changed"

        view.__name__ = "probe_" + path.strip("/").replace("-", "_")
        if "exempt" in path:
            view = csrf.exempt(view)
        probe.add_url_rule(path, view_func=view, methods=["POST"])
    return probe


def test_a_new_route_is_checked_and_an_unprotected_one_is_caught(app: Flask) -> None:
    """The generator picks up a route it was never told about, and the check fails for a route
    that skips the token (here, one exempted with ``csrf.exempt``)."""
    probe = _probe_app(app, ["/wallet/probe", "/wallet/probe-exempt"])
    routes = state_changing_page_routes(probe)
    assert ("POST", "/wallet/probe") in routes and ("POST", "/wallet/probe-exempt") in routes
    assert ("POST", "/api/v1/transfers") not in routes  # the API has no cookies to ride

    client = probe.test_client()

    def run(send: Callable[[], object]) -> tuple[object, int]:
        return send(), 0

    def anonymous(flask_session: dict) -> None:
        flask_session.clear()

    checked = {
        path: check_route(client, "POST", path, sign_in=anonymous, own=mint(probe),
                          foreign=mint(probe)[1], form={}, in_savepoint=run)[0]
        for path in ("/wallet/probe", "/wallet/probe-exempt")
    }  # fmt: skip
    assert checked["/wallet/probe"] == []
    assert len(checked["/wallet/probe-exempt"]) == 4  # every tokenless attempt got through
