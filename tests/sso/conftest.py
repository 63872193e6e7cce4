"""Fixtures for single sign-on: a real OpenID Connect provider on 127.0.0.1 and a Portal app
configured with it, sharing the test's rolled-back connection."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import sessionmaker
from werkzeug.test import TestResponse

from portal import create_app
from portal.extensions import db
from tests.sso.provider import Identity, Provider, RunningProvider


@pytest.fixture(scope="session")
def provider() -> Iterator[Provider]:
    with RunningProvider(Provider()) as running:
        yield running


@pytest.fixture(scope="session")
def sso_app(app: Flask, provider: Provider) -> Iterator[Flask]:
    """A Portal app whose single sign-on points at the test provider (``app`` has migrated
    the database already)."""
    application = create_app(
        {
            "TESTING": True,
            "PORTAL_ENV": "test",
            "SQLALCHEMY_DATABASE_URI": app.config["SQLALCHEMY_DATABASE_URI"],
            "SERVICE_SETTINGS": app.config["SERVICE_SETTINGS"],
            "PUBLIC_URL": "http://localhost",
            "OIDC_ISSUER": provider.url,
            "OIDC_CLIENT_ID": provider.client_id,
            "OIDC_CLIENT_SECRET": provider.client_secret,
            "OIDC_NAME": "Test ID",
        }
    )
    yield application
    with application.app_context():
        db.engine.dispose()


@pytest.fixture
def portal(sso_app: Flask, connection: sa.Connection) -> Iterator[Flask]:
    """``sso_app`` inside the test's outer transaction (as ``connection`` does for ``app``)."""
    engines = db._app_engines[sso_app]
    original = engines[None]
    engines[None] = connection  # type: ignore[assignment]
    sso_app.extensions["portal.session_factory"] = sessionmaker(
        bind=connection,
        expire_on_commit=False,
        autoflush=False,
        join_transaction_mode="create_savepoint",
    )
    try:
        yield sso_app
    finally:
        engines[None] = original
        sso_app.extensions["portal.session_factory"] = None


@pytest.fixture
def identity(provider: Provider) -> Identity:
    """A fresh identity at the provider for each test (its knobs reset)."""
    who = Identity(
        sub=f"sub-{uuid.uuid4().hex}",
        email=f"sso-{uuid.uuid4().hex[:10]}@example.test",
        email_verified=True,
    )
    provider.reset(who)
    return who


@pytest.fixture
def client(portal: Flask) -> FlaskClient:
    return portal.test_client()


@dataclass
class Flow:
    """One browser round trip: Portal -> provider -> Portal."""

    authorize_url: str
    callback_url: str
    response: TestResponse


def go_to_provider(client: FlaskClient, provider: Provider, path: str = "/auth/sso/login") -> str:
    """Start a sign-in at Portal; the URL of the provider's authorization endpoint."""
    start = client.get(path)
    assert start.status_code == 302, start.get_data(as_text=True)
    location = start.headers["Location"]
    assert location.startswith(provider.url + "/authorize?")
    return location


def come_back(provider_url: str) -> str:
    """Visit the provider like a browser; the Portal URL (path and query) it sends us back to."""
    answer = requests.get(provider_url, allow_redirects=False, timeout=5)
    assert answer.status_code == 302, answer.text
    back = urlsplit(answer.headers["Location"])
    assert (back.scheme, back.netloc, back.path) == ("http", "localhost", "/auth/sso/callback")
    return f"{back.path}?{back.query}"


def sign_in_flow(client: FlaskClient, provider: Provider, path: str = "/auth/sso/login") -> Flow:
    authorize_url = go_to_provider(client, provider, path)
    callback_url = come_back(authorize_url)
    return Flow(authorize_url, callback_url, client.get(callback_url))


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
