"""A secrets scan after one full run: the database dump, every log line and every response body
hold no full card number, security code, API key, token, or password.

One run through the real application (test client, real PostgreSQL committing for real, real
Redis): sign-up and email verification (pages and API), a password reset, signing in, a second
factor enrolled, cards issued (the number and security code shown once, and a retried issue),
a top-up funded (``Factory.fund``), a transfer to another person's card found by its number, a
withdrawal, a merchant with an API key (shown once, then rolled), payments authorised, captured
and refunded through the API with a card, a webhook endpoint's secret (shown once, rotated),
JWT access and refresh tokens (rotated, then signed out). Every secret seen is collected.

Then three places are searched for each secret, in the forms it could take there (the card
number with spaces or dashes, tokens URL-encoded, the second-factor key grouped as shown):

- every log record of every logger at DEBUG, SQLAlchemy's statements and parameters included,
  both as raw records (what any handler, gunicorn's or an exporter's, would see) and as the
  app's JSON and text console lines (what ships to Loki);
- every response body (and redirect ``Location``): a secret may appear only in the one response
  that issued it ("shown once");
- ``pg_dump`` of the test database (and Redis's keys and values).

The scanner is checked too: a secret planted in a log record, a table row and a response is
found (``test_the_scanner_finds_what_is_planted``), so a clean result means something.

Builds on ``test_no_card_data_in_logs.py`` (card data and SQL logging during card use, inside
a rolled-back transaction): this run commits, so the dump sees what the app stored.
"""

from __future__ import annotations

import io
import logging
import re
import shutil
import subprocess
import time
import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, quote_plus

import psycopg
import pyotp
import pytest
import redis
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.engine import make_url

from portal.domain.types import IssuedCard
from portal.extensions import limiter
from portal.services.identity import users
from portal.services.merchants import keys, merchants
from portal.web import logging as log_setup
from portal.web.auth import SESSION_KEY
from tests.conftest import SYSTEM, Factory

pytestmark = pytest.mark.concurrency  # commits for real (wiped afterwards)

API = "/api/v1"
PASSWORDS = {
    "page sign-up": "velvet-Otter-canyon-42",
    "refused sign-up": "mango-Quartz-ladder-77",
    "after reset": "amber-Falcon-drizzle-19",
    "api sign-up": "copper-Lynx-meadow-58",
}
#: A bank account number distinctive enough to search for (stored encrypted, shown as last 4).
BANK_ACCOUNT = "740193285561"


# -- what is searched, and for what ---------------------------------------------------------
@dataclass
class Secret:
    kind: str
    value: str
    #: Indexes of the responses allowed to show it (the one that issued it).
    shown_in: set[int] = field(default_factory=set)

    def patterns(self) -> list[re.Pattern[str]]:
        if self.kind == "security code":
            # Three or four digits occur everywhere (amounts, statuses, ids): only the forms a
            # leaked code takes count, labelled (cvc=123, "cvv": "123", a cvc input's value);
            # the dump is also searched cell by cell (scan_dump).
            # "incorrect_cvc" (a decline code) labels no code, and the code follows the label in
            # the same cell (a dump's tab ends a column: an address such as 198.51.100.20 in
            # the next one is not a code).
            code = re.escape(self.value)
            label = r"(?<!incorrect_)(?:cvc|cvv|cvc2|cvv2|security[_ ]?code)"
            return [
                re.compile(rf"(?i){label}[^\w\t\n]{{0,6}}{code}(?!\d)"),
                re.compile(rf'(?i)name="{label}"[^>]*value="{code}"'),
            ]
        forms = {self.value, quote(self.value, safe=""), quote_plus(self.value)}
        if self.kind == "card number":
            groups = [self.value[i : i + 4] for i in range(0, len(self.value), 4)]
            forms |= {" ".join(groups), "-".join(groups)}
        if self.kind == "second-factor key":
            forms.add(" ".join(self.value[i : i + 4] for i in range(0, len(self.value), 4)))
        return [re.compile(re.escape(form)) for form in forms]


@dataclass(frozen=True)
class Finding:
    where: str
    kind: str
    excerpt: str

    def __str__(self) -> str:
        return f"{self.kind} in {self.where}: ...{self.excerpt}..."


def scan(
    secrets: Iterable[Secret],
    where: str,
    text: str,
    *,
    response: int | None = None,
) -> Iterator[Finding]:
    """The secrets found in one text (a response's index lets the response that issued it
    show its own secret; nothing else may, not even the page a link's token opens)."""
    for secret in secrets:
        if response is not None and response in secret.shown_in:
            continue
        for pattern in secret.patterns():
            if found := pattern.search(text):
                start = max(found.start() - 40, 0)
                yield Finding(where, secret.kind, text[start : found.end() + 40])
                break


# -- capture ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    status: int
    text: str


class RecordingClient(FlaskClient):
    """A test client that keeps every response's body and Location (buffered, so what runs as
    a response closes, mail sent after commit, has run)."""

    seen: list[Seen]

    def open(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("buffered", True)
        response = super().open(*args, **kwargs)
        request = response.request
        text = response.get_data(as_text=True) + "\n" + response.headers.get("Location", "")
        self.seen.append(Seen(request.method, request.full_path, response.status_code, text))
        return response

    @property
    def last(self) -> int:
        return len(self.seen) - 1


class RawRecords(logging.Handler):
    """Every record as logged, unmasked: message, arguments, exception and stack text."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: what the record holds
            message = f"{record.msg!r} {record.args!r}"
        extra = {k: v for k, v in vars(record).items() if k not in _PLAIN_RECORD}
        self.lines.append(
            f"{record.name} {record.levelname} {message} {extra!r}"
            f" {record.exc_text or ''} {record.stack_info or ''}"
        )


_PLAIN_RECORD = set(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {"message"}


@dataclass
class Logs:
    raw: RawRecords
    json: io.StringIO
    text: io.StringIO


@pytest.fixture
def logs(app: Flask) -> Iterator[Logs]:
    """Every logger at DEBUG (SQLAlchemy's statements and parameters included) into raw
    records and into the app's own JSON and text console handlers."""
    root = logging.getLogger()
    raw = RawRecords()
    json_stream, text_stream = io.StringIO(), io.StringIO()
    handlers = [
        raw,
        log_setup.build_handler(app.config, stream=json_stream, fmt="json"),
        log_setup.build_handler(app.config, stream=text_stream, fmt="text"),
    ]
    levels = {
        name: logging.getLogger(name).level
        for name in ("", "portal", "portal.mail", "sqlalchemy.engine", "werkzeug")
    }
    for handler in handlers:
        root.addHandler(handler)
    for name in levels:
        logging.getLogger(name).setLevel(logging.INFO if name == "sqlalchemy.engine" else 0)
    root.setLevel(logging.DEBUG)
    try:
        yield Logs(raw, json_stream, text_stream)
    finally:
        for handler in handlers:
            root.removeHandler(handler)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


# -- the run ----------------------------------------------------------------------------------
@dataclass
class Run:
    app: Flask
    make: Factory
    secrets: list[Secret] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)

    def client(self, address: str) -> RecordingClient:
        client = RecordingClient(self.app, self.app.response_class, use_cookies=True)
        client.environ_base["REMOTE_ADDR"] = address
        client.seen = self.seen
        return client

    def keep(self, kind: str, value: str, shown_in: int | None = None) -> str:
        assert value, kind
        secret = next((s for s in self.secrets if s.value == value), None)
        if secret is None:
            secret = Secret(kind, value)
            self.secrets.append(secret)
        if shown_in is not None:
            secret.shown_in.add(shown_in)
        return value

    def card(self, issued: dict[str, Any], shown_in: int) -> None:
        self.keep("card number", issued["number"], shown_in)
        self.keep("security code", issued["cvc"], shown_in)

    def issued_card(self, issued: IssuedCard) -> None:
        self.keep("card number", issued.number)
        self.keep("security code", issued.cvv)


def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, response.get_data(as_text=True)[:2000]
    return response.get_json() if response.is_json else response.get_data(as_text=True)


def mailed_token(app: Flask, to: str, path: str) -> str:
    outbox = app.extensions["portal.outbox"]
    for message in reversed(outbox):
        if message["To"].lower() == to.lower():
            found = re.search(re.escape(path) + r"([A-Za-z0-9_\-]+)", message.get_content())
            assert found, message.get_content()
            return found.group(1)
    raise AssertionError(f"no mail to {to}")


def funding_target(make: Factory, public_id: str) -> IssuedCard:
    """The card the API issued, as ``Factory.fund`` takes it (it reads the id and currency)."""
    row = make.uow.run(
        lambda u: u.execute(
            "SELECT c.id, a.currency FROM cards c JOIN accounts a ON a.card_id = c.id"
            " WHERE c.public_id = :p",
            {"p": public_id},
        ).one()
    )
    return IssuedCard(
        card_id=row.id,
        public_id=public_id,
        account_id=0,
        brand="",
        card_type="",
        last4="",
        number="",
        cvv="",
        expiry_month=0,
        expiry_year=0,
        currency=row.currency,
        name="",
    )


def bearer(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **extra}


def idem() -> dict[str, str]:
    return {"Idempotency-Key": uuid.uuid4().hex}


def pages_part(run: Run) -> tuple[str, str]:
    """Sign-up, verification, a reset, signing in and a second factor, through the pages.
    Returns the person's email and the second-factor key."""
    app = run.app
    page = run.client("198.51.100.10")
    email = f"scan-{uuid.uuid4().hex[:8]}@example.test"
    first = run.keep("password", PASSWORDS["page sign-up"])
    ok(
        page.post(
            "/auth/register",
            data={
                "first_name": "Sekar",
                "last_name": "Ayu",
                "email": email,
                "password": first,
                "password_confirmation": first,
            },
        ),
        302,
    )
    verify = run.keep("verification token", mailed_token(app, email, "/auth/verify/"))
    assert page.get(f"/auth/verify/{verify}").status_code in (200, 302)
    # A refused sign-up (the address is taken) must not echo the password it was sent.
    refused = run.keep("password", PASSWORDS["refused sign-up"])
    again = run.client("198.51.100.11").post(
        "/auth/register",
        data={
            "first_name": "Sekar",
            "last_name": "Ayu",
            "email": email,
            "password": refused,
            "password_confirmation": refused,
        },
    )
    assert again.status_code == 422
    ok(page.post("/auth/logout"), 302)

    ok(page.post("/auth/forgot", data={"email": email}))
    reset = run.keep("reset token", mailed_token(app, email, "/auth/reset/"))
    ok(page.get(f"/auth/reset/{reset}"))
    new = run.keep("password", PASSWORDS["after reset"])
    ok(page.post(f"/auth/reset/{reset}", data={"password": new, "password_confirmation": new}), 302)
    wrong = page.post("/auth/login", data={"email": email, "password": first})  # the old one
    assert wrong.status_code == 401
    ok(page.post("/auth/login", data={"email": email, "password": new}), 302)
    with page.session_transaction() as flask_session:
        run.keep("web session token", flask_session[SESSION_KEY])

    setup = ok(page.post("/auth/mfa/setup", data={}))
    key = re.search(r'name="secret" value="([A-Z2-7]+)"', setup).group(1)  # type: ignore[union-attr]
    run.keep("second-factor key", key, shown_in=page.last)
    code = pyotp.TOTP(key).at(time.time(), counter_offset=-1)
    codes_page = ok(page.post("/auth/mfa/setup/confirm", data={"secret": key, "code": code}))
    for recovery in re.findall(r"<li><code>([^<]+)</code></li>", codes_page):
        run.keep("recovery code", recovery, shown_in=page.last)
    assert any(s.kind == "recovery code" for s in run.secrets)
    return email, key


def api_part(run: Run, email: str, totp_key: str) -> tuple[str, IssuedCard, str]:
    """Tokens, cards, money and a merchant through the JSON API."""
    app, make = run.app, run.make
    api = run.client("198.51.100.20")

    # Another person signs up through the API and verifies their address.
    other_email = f"scan-api-{uuid.uuid4().hex[:8]}@example.test"
    other_password = run.keep("password", PASSWORDS["api sign-up"])
    ok(
        api.post(
            f"{API}/auth/register",
            json={
                "email": other_email,
                "first_name": "Budi",
                "last_name": "Santoso",
                "password": other_password,
                "password_confirmation": other_password,
            },
        ),
        201,
    )
    other_verify = run.keep("verification token", mailed_token(app, other_email, "/auth/verify/"))
    assert api.get(f"/auth/verify/{other_verify}").status_code in (200, 302)

    # Tokens: a pair, rotated once.
    password = PASSWORDS["after reset"]
    code = pyotp.TOTP(totp_key).now()
    pair = ok(
        api.post(
            f"{API}/auth/token", json={"email": email, "password": password, "totp_code": code}
        )
    )
    run.keep("access token", pair["access_token"], api.last)
    run.keep("refresh token", pair["refresh_token"], api.last)
    rotated = ok(api.post(f"{API}/auth/refresh", json={"refresh_token": pair["refresh_token"]}))
    run.keep("access token", rotated["access_token"], api.last)
    run.keep("refresh token", rotated["refresh_token"], api.last)
    me = bearer(rotated["access_token"])

    # Cards: the number and code shown once; a retried issue does not show them again.
    issue = {"card_type": "debit", "brand": "visa", "currency": "USD"}
    key = idem()
    mine = ok(api.post(f"{API}/cards", json=issue, headers={**me, **key}), 201)
    run.card(mine, api.last)
    replay = api.post(f"{API}/cards", json=issue, headers={**me, **key})
    assert replay.status_code in (200, 201), replay.get_data(as_text=True)
    spare = ok(api.post(f"{API}/cards", json=issue, headers={**me, **idem()}), 201)
    run.card(spare, api.last)

    # Money: funded by the Factory (the funding processor's answer), a transfer to another
    # person's card found by its number, a withdrawal.
    make.fund(funding_target(make, mine["id"]), "200.00")
    theirs = make.card(make.user(first_name="Tari"), balance="100.00")
    run.issued_card(theirs)
    found = ok(api.post(f"{API}/cards/lookup", json={"number": theirs.number}, headers=me))
    ok(
        api.post(
            f"{API}/transfers",
            json={
                "from_card": mine["id"],
                "to_card": found.get("recipient") or found["card"],
                "amount": 1500,
                "currency": "usd",
                "memo": "lunch",
            },
            headers={**me, **idem()},
        ),
        201,
    )
    ok(
        api.post(
            f"{API}/transfers",
            json={
                "from_card": mine["id"],
                "to_card": spare["id"],
                "amount": 500,
                "currency": "usd",
            },
            headers={**me, **idem()},
        ),
        201,
    )
    ok(
        api.post(
            f"{API}/withdrawals",
            json={
                "card": mine["id"],
                "amount": 2000,
                "currency": "usd",
                "bank_name": "BCA",
                "account_number": BANK_ACCOUNT,
                "account_holder": "Sekar Ayu",
            },
            headers={**me, **idem()},
        ),
        201,
    )
    run.keep("bank account number", BANK_ACCOUNT)

    # A merchant: applied for by this person, approved by staff, with a key shown once.
    applied = ok(
        api.post(
            f"{API}/merchants",
            json={
                "name": "Warung Scan",
                "website": "https://warung-scan.example",
                "contact_email": "shop@warung-scan.example",
                "settlement_currency": "usd",
            },
            headers=me,
        ),
        201,
    )
    staff = make.user(roles=("admin",))
    merchants.decide(make.uow, actor=staff, merchant=applied["id"], action="approve")
    made = ok(
        api.post(
            f"{API}/merchants/{applied['id']}/api_keys",
            json={"name": "server", "scopes": list(keys.SCOPES)},
            headers=me,
        ),
        201,
    )
    run.keep("API key", made["secret"], api.last)
    invited = ok(
        api.post(
            f"{API}/merchants/{applied['id']}/invitations",
            json={"email": f"invitee-{uuid.uuid4().hex[:6]}@example.test", "role": "viewer"},
            headers=me,
        ),
        201,
    )
    if invited.get("token"):  # the invitation link's token, shown to the inviter once
        run.keep("invitation token", invited["token"], api.last)
    rolled = ok(
        api.post(
            f"{API}/merchants/{applied['id']}/api_keys/{made['id']}/roll",
            json={"overlap_hours": 1},
            headers=me,
        ),
        201,
    )
    secret = run.keep("API key", rolled["secret"], api.last)
    ok(api.get(f"{API}/merchants/{applied['id']}/api_keys", headers=me))
    shop = bearer(secret)

    # Payments with the other person's card: authorised, captured, refunded; one automatic.
    card = {
        "number": theirs.number,
        "exp_month": theirs.expiry_month,
        "exp_year": theirs.expiry_year,
        "cvc": theirs.cvv,
    }
    held = ok(
        api.post(
            f"{API}/payments",
            json={"amount": 3000, "currency": "usd", "card": card, "capture_method": "manual"},
            headers={**shop, **idem()},
        ),
        201,
    )
    ok(
        api.post(
            f"{API}/payments/{held['id']}/capture",
            json={"amount_to_capture": 2500},
            headers={**shop, **idem()},
        )
    )
    ok(
        api.post(
            f"{API}/refunds",
            json={"payment": held["id"], "amount": 1000},
            headers={**shop, **idem()},
        ),
        201,
    )
    spaced = {**card, "number": " ".join(theirs.number[i : i + 4] for i in range(0, 16, 4))}
    paid = api.post(
        f"{API}/payments",
        json={"amount": 700, "currency": "usd", "card": spaced},
        headers={**shop, **idem()},
    )
    assert paid.status_code in (201, 402, 422), paid.get_data(as_text=True)
    declined = api.post(
        f"{API}/payments",
        json={"amount": 700, "currency": "usd", "card": {**card, "cvc": "000"}},
        headers={**shop, **idem()},
    )
    assert declined.status_code in (402, 422), declined.get_data(as_text=True)
    ok(api.get(f"{API}/payments", headers=shop))
    ok(api.get(f"{API}/events", headers=shop))

    # A webhook endpoint: its secret shown once, then rotated.
    hook = ok(
        api.post(
            f"{API}/webhook_endpoints",
            json={"url": "https://hooks.warung-scan.example/portal", "enabled_events": ["*"]},
            headers=shop,
        ),
        201,
    )
    run.keep("webhook secret", hook["secret"], api.last)
    turned = ok(
        api.post(
            f"{API}/webhook_endpoints/{hook['id']}/rotate_secret",
            json={"overlap_hours": 1},
            headers=shop,
        )
    )
    run.keep("webhook secret", turned["secret"], api.last)
    ok(api.get(f"{API}/webhook_endpoints/{hook['id']}", headers=shop))

    # Reading everything back, then signing out.
    for path in (
        "/cards",
        f"/cards/{mine['id']}",
        "/transfers",
        "/withdrawals",
        "/top_ups",
        "/activity",
        "/auth/sessions",
    ):
        ok(api.get(f"{API}{path}", headers=me))
    out = api.post(f"{API}/auth/logout", json={"refresh_token": rotated["refresh_token"]})
    assert out.status_code in (200, 204), out.get_data(as_text=True)
    return mine["id"], theirs, applied["id"]


def wallet_pages_part(run: Run, email: str, totp_key: str, mine: str, theirs: IssuedCard) -> None:
    """The cardholder's pages after the API part: a card issued on a page (shown once), a
    transfer to another person's card typed by its number, the wallet read."""
    page = run.client("198.51.100.30")
    ok(page.post("/auth/login", data={"email": email, "password": PASSWORDS["after reset"]}), 302)
    code = pyotp.TOTP(totp_key).at(time.time(), counter_offset=1)
    ok(page.post("/auth/mfa", data={"code": code}), 302)
    form = ok(page.get("/wallet/cards/new"))
    once = re.search(r'name="idempotency_key" type="hidden" value="([^"]+)"', form)
    assert once, form
    issued = page.post(
        "/wallet/cards/new",
        data={
            "card_type": "debit",
            "brand": "mastercard",
            "currency": "USD",
            "name": "Scan",
            "idempotency_key": once.group(1),
        },
    )
    text = issued.get_data(as_text=True)
    assert issued.status_code in (200, 201), text[:2000]
    number = re.search(r"\b(\d{4}(?: \d{4}){3})\b", text)
    assert number, text[:3000]
    run.keep("card number", number.group(1).replace(" ", ""), page.last)
    cvv = re.search(r'id="card-cvv">(\d{3,4})<', text)
    assert cvv, text[:3000]
    run.keep("security code", cvv.group(1), page.last)

    # A transfer to another person's card by its number: a review step, then the confirmation.
    form = ok(page.get("/wallet/transfer"))
    once = re.search(r'name="idempotency_key" type="hidden" value="([^"]+)"', form)
    assert once, form
    spaced = " ".join(theirs.number[i : i + 4] for i in range(0, len(theirs.number), 4))
    data = {"card_id": mine, "destination": "other", "to_number": spaced, "amount": "3.00",
            "memo": "page transfer", "idempotency_key": once.group(1),
            "step": "review"}  # fmt: skip
    review = page.post("/wallet/transfer", data=data)
    assert review.status_code == 200, review.get_data(as_text=True)[:3000]
    confirm = {**data, "step": "confirm"}
    for name, value in re.findall(
        r'<input type="hidden" name="([^"]+)" value="([^"]*)"', review.get_data(as_text=True)
    ):
        if name != "step":
            confirm[name] = value
    done = page.post("/wallet/transfer", data=confirm)
    assert done.status_code == 303, done.get_data(as_text=True)[:3000]  # to its receipt
    receipt = page.get(done.headers["Location"])
    receipt_text = receipt.get_data(as_text=True)
    assert receipt.status_code == 200, receipt_text[:3000]
    assert 'name="to_number"' not in receipt_text, receipt_text[:3000]  # a receipt, no form
    for path in ("/wallet", "/wallet/activity", "/wallet/activity.csv", "/auth/account"):
        ok(page.get(path))
    return page


def merchant_pages_part(run: Run, page: RecordingClient, mid: str) -> None:
    """The merchant dashboard: a key and a webhook endpoint made on the pages (each secret
    shown once), then the pages that list them."""
    form = {"name": "dashboard", "scopes": ["payments:read"], "form_token": uuid.uuid4().hex}
    made = page.post(f"/merchant/{mid}/keys", data=form)
    text = made.get_data(as_text=True)
    key = re.search(r"\b(sk_live_[A-Za-z0-9]{20,})", text)
    assert made.status_code in (200, 201) and key, text[:3000]
    run.keep("API key", key.group(1), page.last)
    hook = page.post(f"/merchant/{mid}/webhooks", data={
        "url": "https://hooks.warung-scan.example/pages", "events": ["*"],
        "description": "from the dashboard", "form_token": uuid.uuid4().hex})  # fmt: skip
    text = hook.get_data(as_text=True)
    secret = re.search(r"\b(whsec_[A-Za-z0-9+/=_-]{20,})", text)
    assert hook.status_code in (200, 201) and secret, text[:3000]
    run.keep("webhook secret", secret.group(1), page.last)
    for path in (f"/merchant/{mid}", f"/merchant/{mid}/keys", f"/merchant/{mid}/webhooks",
                 f"/merchant/{mid}/payments", f"/merchant/{mid}/team"):  # fmt: skip
        ok(page.get(path))


# -- where secrets are looked for ------------------------------------------------------------
def owner_url(app: Flask) -> str:
    """The test database as its owner (who may read every table), where the app runs as a
    runtime role; the app's own URL otherwise."""
    return str(app.config.get("MIGRATION_DATABASE_URI") or app.config["SQLALCHEMY_DATABASE_URI"])


def libpq_url(app: Flask) -> str:
    url = make_url(owner_url(app)).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def database_dump(app: Flask) -> str:
    """``pg_dump`` of the test database (schema and data)."""
    pg_dump = shutil.which("pg_dump")
    assert pg_dump, "pg_dump is not installed"
    done = subprocess.run(  # noqa: S603 (a fixed program and the test's own database)
        [
            pg_dump,
            "--no-owner",
            "--no-privileges",
            "--dbname",
            libpq_url(app),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


_COPY = re.compile(r"^COPY (\S+) \(([^)]*)\) FROM stdin;$")


def dump_cells(dumped: str) -> Iterator[tuple[str, str, str]]:
    """(table, column, value) of every cell in the dump's COPY blocks."""
    table, columns = None, []
    for line in dumped.splitlines():
        if table is None:
            if found := _COPY.match(line):
                table, columns = found.group(1), [c.strip('" ') for c in found.group(2).split(",")]
            continue
        if line == "\\.":
            table = None
            continue
        for column, value in zip(columns, line.split("\t"), strict=False):
            yield table, column, value


def scan_dump(secrets: list[Secret], dumped: str) -> list[Finding]:
    found = list(scan(secrets, "the database dump", dumped))
    # A security code is three or four digits: besides its quoted and labelled forms, a cell
    # holding exactly it is a find, in any column but the integer ones (amounts, ids, years).
    codes = {s.value for s in secrets if s.kind == "security code"}
    numeric = re.compile(r"^-?\d+$")
    for table, column, value in dump_cells(dumped):
        if value in codes and not _integer_column(dumped, table, column, numeric):
            found.append(Finding(f"the dump's {table}.{column}", "security code", value))
    for name in re.findall(r"^\s+\"?(\w*(?:cvv|cvc|security_code)\w*)\"? ", dumped, re.M):
        found.append(Finding("the database schema", "security code column", name))
    return found


def _integer_column(dumped: str, table: str, column: str, numeric: re.Pattern[str]) -> bool:
    """Whether the schema in the dump declares the column an integer."""
    short = table.split(".")[-1]
    block = re.search(rf"CREATE TABLE (?:public\.)?{re.escape(short)} \((.*?)\n\);", dumped, re.S)
    if block is None:
        return False
    declared = re.search(rf"^\s+\"?{re.escape(column)}\"? (\w+)", block.group(1), re.M)
    return bool(declared and declared.group(1) in {"integer", "bigint", "smallint"})


def redis_contents(app: Flask) -> str:
    client = app.extensions.get("portal.redis")
    if client is None:
        return ""
    url = app.config["REDIS_URL"]
    plain = redis.Redis.from_url(url, decode_responses=False)
    parts: list[str] = []
    for key in plain.scan_iter(count=500):
        kind = plain.type(key).decode()
        value: Any
        if kind == "string":
            value = plain.get(key)
        elif kind == "hash":
            value = plain.hgetall(key)
        elif kind == "list":
            value = plain.lrange(key, 0, -1)
        elif kind == "set":
            value = plain.smembers(key)
        elif kind == "zset":
            value = plain.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            value = plain.xrange(key)
        else:
            value = kind
        parts.append(f"{key!r} {value!r}")
    return "\n".join(parts)


#: Secrets a page sends back to the person who just typed them, each a known defect with its
#: own strict expected failure: (method, path, kind) -> that test.
KNOWN_ECHOES: dict[tuple[str, str, str], str] = {}


def known_echo(finding: Finding) -> bool:
    found = re.match(r"response \d+ \((\w+) ([^? ]+)", finding.where)
    return bool(found) and (found.group(1), found.group(2), finding.kind) in KNOWN_ECHOES


def every_finding(run: Run, logs: Logs, dumped: str, cached: str) -> list[Finding]:
    secrets = run.secrets
    found: list[Finding] = []
    for i, line in enumerate(logs.raw.lines):
        found += scan(secrets, f"log record {i}", line)
    found += scan(secrets, "the JSON log lines", logs.json.getvalue())
    found += scan(secrets, "the text log lines", logs.text.getvalue())
    for i, seen in enumerate(run.seen):
        found += scan(
            secrets,
            f"response {i} ({seen.method} {seen.path} {seen.status})",
            seen.text,
            response=i,
        )
    found += scan_dump(secrets, dumped)
    found += scan(secrets, "Redis", cached)
    return found


# -- tests ------------------------------------------------------------------------------------
@pytest.fixture
def run(app: Flask, real_uow, committing_engine: sa.Engine) -> Iterator[Run]:
    """The app on its real engine (every request commits), a Factory committing too, fresh
    limits and an empty outbox; everything written is wiped afterwards."""
    limiter.reset()
    app.extensions.setdefault("portal.outbox", deque(maxlen=100)).clear()
    app.extensions["portal.session_factory"] = None  # the app's own engine, not a test's
    try:
        yield Run(app, Factory(real_uow()))
    finally:
        limiter.reset()
        with psycopg.connect(libpq_url(app)) as conn:
            conn.execute("DROP TABLE IF EXISTS scan_plant")


def test_no_secret_in_the_dump_the_logs_or_the_responses(app: Flask, run: Run, logs: Logs):
    email, totp_key = pages_part(run)
    mine, theirs, merchant = api_part(run, email, totp_key)
    page = wallet_pages_part(run, email, totp_key, mine, theirs)
    merchant_pages_part(run, page, merchant)
    kinds = {s.kind for s in run.secrets}
    assert kinds >= {
        "card number",
        "security code",
        "API key",
        "access token",
        "refresh token",
        "reset token",
        "verification token",
        "password",
        "webhook secret",
        "second-factor key",
        "recovery code",
        "web session token",
    }
    assert len(logs.raw.lines) > 100 and "INSERT INTO cards" in "\n".join(logs.raw.lines)
    assert len(run.seen) > 40

    found = every_finding(run, logs, database_dump(app), redis_contents(app))

    unexpected = [f for f in found if not known_echo(f)]
    assert not unexpected, "\n".join(map(str, unexpected[:40]))


def test_the_scanner_finds_what_is_planted(app: Flask, run: Run, logs: Logs) -> None:
    """The same scan finds a secret planted in a log record, a table row, Redis and a response
    that was not the one to show it, in each form it looks for."""
    number, token = "4000056655665556", "prt_Ab3/dE+fG=hIjK-lMn_0pQ"
    run.keep("card number", number)
    run.keep("refresh token", token)
    run.keep("security code", "7391")
    run.keep("second-factor key", "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP")
    logging.getLogger("tests.secrets_scan").warning("planted %s", number)
    # Planted over a plain psycopg connection, so no SQL log line carries the plant.
    with psycopg.connect(libpq_url(app)) as conn:
        conn.execute("CREATE TABLE scan_plant (note text)")
        conn.execute(
            "INSERT INTO scan_plant VALUES (%s), (%s), (%s)",
            ("4000 0566 5566 5556", quote(token, safe=""), "7391"),
        )
    client = run.client("198.51.100.40")
    client.get(
        "/auth/login", query_string={"next": "/wallet?k=JBSW Y3DP EHPK 3PXP JBSW Y3DP EHPK 3PXP"}
    )
    cache = "secret 'cvc': 7391"

    found = every_finding(run, logs, database_dump(app), cache)

    kinds_at: dict[str, set[str]] = {}
    for finding in found:
        kinds_at.setdefault(finding.where, set()).add(finding.kind)
    assert any(w.startswith("log record") and "card number" in k for w, k in kinds_at.items())
    assert kinds_at["the database dump"] >= {"card number", "refresh token"}
    assert "security code" in kinds_at["the dump's public.scan_plant.note"]  # the bare code
    assert "security code" in kinds_at["Redis"]
    assert any(w.startswith("response") and "second-factor key" in k for w, k in kinds_at.items())
    # The console lines mask what the raw record held.
    assert not any("JSON" in w or "text log" in w for w in kinds_at), kinds_at


def test_a_link_token_is_not_echoed_into_its_page(app: Flask, connection: sa.Connection) -> None:
    """The page a reset or verification link opens does not write the link's token into its
    HTML (where caches, saved pages and the browser's developer tools keep it)."""
    limiter.reset()
    app.extensions.setdefault("portal.outbox", deque(maxlen=100)).clear()
    client = RecordingClient(app, app.response_class, use_cookies=True)
    client.seen = []
    email = f"echo-{uuid.uuid4().hex[:8]}@example.test"
    password = PASSWORDS["page sign-up"]
    ok(client.post("/auth/register", data={"first_name": "Sekar", "last_name": "Ayu",
                                           "email": email, "password": password,
                                           "password_confirmation": password}), 302)  # fmt: skip
    verify = mailed_token(app, email, "/auth/verify/")
    opened = client.get(f"/auth/verify/{verify}")
    ok(client.post("/auth/logout"), 302)
    ok(client.post("/auth/forgot", data={"email": email}))
    reset = mailed_token(app, email, "/auth/reset/")
    form = ok(client.get(f"/auth/reset/{reset}"))

    assert verify not in opened.get_data(as_text=True) + opened.headers.get("Location", "")
    assert reset not in form


def test_the_transfer_review_does_not_carry_the_recipients_card_number(
    app: Flask, connection: sa.Connection, make: Factory
) -> None:
    limiter.reset()
    password = PASSWORDS["page sign-up"]
    sender = users.create_user(
        make.uow, actor=SYSTEM, email=f"review-{uuid.uuid4().hex[:6]}@example.test",
        first_name="Sekar", last_name="Ayu", password=password, roles=("cardholder",),
        verified=True,
    )  # fmt: skip
    mine = make.card(users.actor_for(make.uow, sender.id), balance="20.00")
    theirs = make.card(make.user(first_name="Tari"))
    page = RecordingClient(app, app.response_class, use_cookies=True)
    page.seen = []
    ok(page.post("/auth/login", data={"email": sender.email, "password": password}), 302)
    form = ok(page.get("/wallet/transfer"))
    once = re.search(r'name="idempotency_key" type="hidden" value="([^"]+)"', form)
    assert once, form
    review = page.post("/wallet/transfer", data={
        "card_id": mine.public_id, "destination": "other", "to_number": theirs.number,
        "amount": "3.00", "idempotency_key": once.group(1), "step": "review"})  # fmt: skip
    text = review.get_data(as_text=True)
    assert review.status_code == 200 and "Check and confirm" in text, text[:2000]

    assert not list(scan([Secret("card number", theirs.number)], "the review", text))


def test_a_security_code_is_found_in_its_leaked_forms_and_not_beside_a_decline_code() -> None:
    code = Secret("security code", "198")
    leaked = ["cvc=198", '"cvv": "198"', "card_cvc: 198", 'name="cvc" value="198"']
    assert all(list(scan([code], "text", text)) for text in leaked)
    # A declined payment's audit row: the decline code ends one column, the address begins the
    # next (TEST-NET-2 addresses start with 198).
    row = '{"decline_code": "incorrect_cvc"}\t198.51.100.20\t3\t26'
    assert list(scan([code], "the database dump", row)) == []
