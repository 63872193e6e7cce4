"""PORTAL_PUBLIC_URL, the base of the links in emails: in development it follows PORTAL_BIND
when unset (a server bound to port 5102 links to 5102); an explicit value always wins; test
and production keep their rule (no bind involved)."""

from __future__ import annotations

from pathlib import Path

import pytest

import portal.config
from portal.config import DEFAULT_PUBLIC_URL, ConfigError, load_config, url_for_bind


@pytest.fixture
def development(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    # Development secrets are made on first use: in a folder of the test's own.
    monkeypatch.setattr(portal.config, "INSTANCE_DIR", tmp_path)
    return {"PORTAL_ENV": "development"}


def test_development_links_follow_the_bind(development: dict[str, str]) -> None:
    assert load_config(development)["PUBLIC_URL"] == DEFAULT_PUBLIC_URL == "http://127.0.0.1:5000"
    bound = {**development, "PORTAL_BIND": "127.0.0.1:5102"}
    assert load_config(bound)["PUBLIC_URL"] == "http://127.0.0.1:5102"
    # Bound to every interface: the browser on this machine uses loopback.
    assert load_config({**development, "PORTAL_BIND": "0.0.0.0:8080"})["PUBLIC_URL"] == (
        "http://127.0.0.1:8080"
    )
    explicit = {**bound, "PORTAL_PUBLIC_URL": "https://portal.example/"}
    assert load_config(explicit)["PUBLIC_URL"] == "https://portal.example"


@pytest.mark.parametrize(
    ("bind", "url"),
    [
        ("localhost:5102", "http://localhost:5102"),
        (":5102", "http://127.0.0.1:5102"),
        ("[::]:5102", "http://[::1]:5102"),
        ("[::1]:5102", "http://[::1]:5102"),
        ("10.0.0.5:80, 127.0.0.1:81", "http://10.0.0.5:80"),
        ("unix:/run/portal.sock", DEFAULT_PUBLIC_URL),
        ("127.0.0.1", DEFAULT_PUBLIC_URL),
        ("127.0.0.1:http", DEFAULT_PUBLIC_URL),
    ],
)
def test_url_for_bind(bind: str, url: str) -> None:
    assert url_for_bind(bind) == url


def test_the_bind_does_not_move_links_outside_development() -> None:
    assert load_config({"PORTAL_ENV": "test", "PORTAL_BIND": "127.0.0.1:5102"})["PUBLIC_URL"] == (
        DEFAULT_PUBLIC_URL
    )
    production = {
        "PORTAL_ENV": "production",
        "SECRET_KEY": "s" * 48,
        "DATABASE_URL": "postgresql://portal@db.internal/portal",
        "PORTAL_VAULT_KEYS": "1:" + "A" * 43 + "=",
        "PORTAL_FINGERPRINT_KEY": "f" * 32,
        "PORTAL_CVV_KEY": "c" * 32,
        "PORTAL_JWT_KEY": "j" * 48,
        "PORTAL_API_KEY_HASH_KEY": "k" * 32,
        "PORTAL_SMTP_URL": "smtp://mail:25",
        "PORTAL_BIND": "0.0.0.0:8000",
        "PORTAL_PUBLIC_URL": "https://portal.example.com",
    }
    assert load_config(production)["PUBLIC_URL"] == "https://portal.example.com"
    # Never guessed from the bind (the container's address, not the one people reach): missing
    # in production, Portal refuses to start and names it.
    unset = {k: v for k, v in production.items() if k != "PORTAL_PUBLIC_URL"}
    with pytest.raises(ConfigError, match="PORTAL_PUBLIC_URL"):
        load_config(unset)


@pytest.mark.parametrize(
    "value",
    ["portal.example.com", "ftp://portal.example.com", "https://", "https://p.example/?a=1"],
)
def test_a_public_url_that_is_not_a_web_address_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="PORTAL_PUBLIC_URL must be an http"):
        load_config({"PORTAL_ENV": "test", "PORTAL_PUBLIC_URL": value})
