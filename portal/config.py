"""Configuration from environment variables, with safe development defaults.

Every variable is documented in the README. In production (``PORTAL_ENV=production``) the
secrets and the database have no default: a missing one stops start-up with a clear message.

Tracing is configured by OpenTelemetry's standard ``OTEL_*`` variables, read from the process
environment by ``portal.telemetry`` and the SDK (gunicorn's ``post_fork`` runs before any app
exists): ``OTEL_EXPORTER_OTLP_ENDPOINT`` turns it on, ``OTEL_SERVICE_NAME`` names the process.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from portal.services.shared.settings import (
    DEFAULT_FEE_FIXED,
    DEFAULT_LIMITS,
    ServiceSettings,
    parse_fee_fixed,
    parse_limits,
)

INSTANCE_DIR = Path(os.environ.get("PORTAL_INSTANCE_DIR", Path.cwd() / "instance"))


class ConfigError(RuntimeError):
    """A required production setting is missing or malformed."""


def payout_time(value: str | None) -> tuple[int, int] | None:
    """``PORTAL_PAYOUT_TIME``: the UTC time of the daily payout as HH:MM; empty or ``off`` turns
    the schedule off (payouts on demand still work)."""
    text = (value or "").strip().lower()
    if text in ("", "off", "none"):
        return None
    hours, _, minutes = text.partition(":")
    if not (hours.isdigit() and minutes.isdigit() and int(hours) < 24 and int(minutes) < 60):
        raise ConfigError("PORTAL_PAYOUT_TIME must be HH:MM (UTC) or off")
    return int(hours), int(minutes)


def _dev_secrets() -> dict[str, str]:
    """Random development secrets, made once and kept under instance/ so encrypted data stays
    readable across restarts; a secret added by a later version is generated and added to the
    file. Never used in production."""
    makers = {
        "SECRET_KEY": lambda: secrets.token_urlsafe(48),
        "PORTAL_VAULT_KEYS": lambda: "1:" + base64.b64encode(secrets.token_bytes(32)).decode(),
        "PORTAL_FINGERPRINT_KEY": lambda: secrets.token_urlsafe(32),
        "PORTAL_CVV_KEY": lambda: secrets.token_urlsafe(32),
        "PORTAL_JWT_KEY": lambda: secrets.token_urlsafe(48),
        "PORTAL_API_KEY_HASH_KEY": lambda: secrets.token_urlsafe(32),
    }
    path = INSTANCE_DIR / "dev-secrets.json"
    values: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    missing = {name: make() for name, make in makers.items() if name not in values}
    if missing:
        INSTANCE_DIR.mkdir(parents=True, exist_ok=True)
        values.update(missing)
        fresh = path.with_suffix(".tmp")
        fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(values, fh)
        fresh.replace(path)
    return values


DEFAULT_PUBLIC_URL = "http://127.0.0.1:5000"


def url_for_bind(bind: str) -> str:
    """The URL a browser on this machine uses for a server bound to ``bind`` (gunicorn's
    ``HOST:PORT`` syntax): a wildcard host becomes loopback; a Unix socket or a bind without a
    port gives the default."""
    bind = bind.strip().split(",")[0].strip()
    if bind.startswith(("unix:", "fd://")) or ":" not in bind:
        return DEFAULT_PUBLIC_URL
    host, _, port = bind.rpartition(":")
    if not port.isdigit():
        return DEFAULT_PUBLIC_URL
    # A wildcard is read here and mapped to loopback, never bound to.
    wildcard_v4 = "0.0.0.0"  # noqa: S104  # nosec B104
    host = {"": "127.0.0.1", wildcard_v4: "127.0.0.1", "[::]": "[::1]"}.get(host, host)
    return f"http://{host}:{port}"


def database_url(raw: str) -> str:
    """Accept ``postgres://``/``postgresql://`` URLs and pin the psycopg 3 driver."""
    for prefix in ("postgres://", "postgresql://"):
        if raw.startswith(prefix):
            return "postgresql+psycopg://" + raw[len(prefix) :]
    return raw


def parse_vault_keys(text: str) -> dict[int, bytes]:
    """``"1:<base64 32 bytes>,2:<base64 32 bytes>"`` -> {1: key, 2: key}."""
    keys: dict[int, bytes] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        version, _, b64 = part.partition(":")
        try:
            key = base64.b64decode(b64, validate=True)
            keys[int(version)] = key
        except ValueError as exc:
            raise ConfigError(f"PORTAL_VAULT_KEYS: cannot read key {version!r}") from exc
        if len(key) != 32:
            raise ConfigError(f"PORTAL_VAULT_KEYS: key {version} must be 32 bytes (AES-256)")
    if not keys:
        raise ConfigError("PORTAL_VAULT_KEYS is empty")
    return keys


#: Fixed, public keys for the test suite only (PORTAL_ENV=test), so runs are reproducible.
TEST_SECRETS = {
    "SECRET_KEY": "test-secret-key-not-for-production-000000000000",
    "PORTAL_VAULT_KEYS": "1:" + base64.b64encode(b"t" * 32).decode(),
    "PORTAL_FINGERPRINT_KEY": "test-fingerprint-key",
    "PORTAL_CVV_KEY": "test-cvv-key",
    "PORTAL_JWT_KEY": "test-jwt-key-0123456789abcdef0123456789abcdef",
    "PORTAL_API_KEY_HASH_KEY": "test-api-key-hash-key",
}

REQUIRED_IN_PRODUCTION = (
    "SECRET_KEY",
    "DATABASE_URL",
    "PORTAL_VAULT_KEYS",
    "PORTAL_FINGERPRINT_KEY",
    "PORTAL_CVV_KEY",
    "PORTAL_JWT_KEY",
    "PORTAL_API_KEY_HASH_KEY",
    # Emails carry password-reset and verification links: without a mail server they would
    # only be shown on the console, which in production means the shipped logs.
    "PORTAL_SMTP_URL",
    # The base of those links and of hosted checkout's return addresses: never guessed in
    # production (the bind address is the container's, not the one people reach).
    "PORTAL_PUBLIC_URL",
)
#: Schemes ``PORTAL_SMTP_URL`` may use (portal.web.mail sends through each).
SMTP_SCHEMES = ("smtp", "smtp+starttls", "smtps")


def load_config(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Build the Flask config mapping from the environment."""
    env = os.environ if env is None else env
    mode = env.get("PORTAL_ENV", "development")
    if mode not in ("development", "production", "test"):
        raise ConfigError(f"PORTAL_ENV must be development, production or test, not {mode!r}")
    if mode == "production":
        missing = [name for name in REQUIRED_IN_PRODUCTION if not env.get(name)]
        if missing:
            why = (
                "; production sends email through SMTP only, since emails carry password-reset"
                " and verification links"
                if "PORTAL_SMTP_URL" in missing
                else ""
            )
            raise ConfigError(
                "missing production settings: " + ", ".join(missing) + " (see README.md)" + why
            )
        defaults: Mapping[str, str] = {}
    elif mode == "test":
        defaults = TEST_SECRETS
    else:
        defaults = _dev_secrets()

    def get(name: str, default: str | None = None) -> str | None:
        return env.get(name) or defaults.get(name) or default

    db_raw = get("DATABASE_URL")
    # The schema owner, for `portal db ...` (migrations) and `portal runtime-role` only; the app
    # itself connects as DATABASE_URL, a role that may not rewrite or erase the ledger.
    migration_raw = get("MIGRATION_DATABASE_URL") or db_raw
    vault_keys = parse_vault_keys(get("PORTAL_VAULT_KEYS") or "")
    active = int(get("PORTAL_VAULT_ACTIVE_KEY", str(max(vault_keys))) or 0)
    if active not in vault_keys:
        raise ConfigError(f"PORTAL_VAULT_ACTIVE_KEY {active} is not in PORTAL_VAULT_KEYS")
    jwt_key = (get("PORTAL_JWT_KEY") or "").encode()
    if len(jwt_key) < 32:
        raise ConfigError("PORTAL_JWT_KEY must be at least 32 bytes (HS256 needs a 256-bit key)")

    def number(name: str, default: str) -> int:
        try:
            return int(get(name, default) or default)
        except ValueError as exc:
            raise ConfigError(f"{name} must be a whole number") from exc

    try:
        limits = parse_limits(get("PORTAL_LIMITS")) if get("PORTAL_LIMITS") else DEFAULT_LIMITS
    except ValueError as exc:
        raise ConfigError(f"PORTAL_LIMITS: {exc}") from exc

    try:
        fee_fixed = (
            parse_fee_fixed(get("PORTAL_FEE_FIXED"))
            if get("PORTAL_FEE_FIXED")
            else DEFAULT_FEE_FIXED
        )
    except ValueError as exc:
        raise ConfigError(f"PORTAL_FEE_FIXED: {exc}") from exc
    fee_bps = number("PORTAL_FEE_BPS", "290")
    if not 0 <= fee_bps <= 10000:
        raise ConfigError("PORTAL_FEE_BPS must be from 0 to 10000 (basis points)")
    public_url = (get("PORTAL_PUBLIC_URL") or "").rstrip("/")
    if not public_url:
        # In development the links in emails follow the address the server is bound to
        # (`make run` serves on PORTAL_BIND); elsewhere the old default stands.
        bind = env.get("PORTAL_BIND") if mode == "development" else None
        public_url = url_for_bind(bind) if bind else DEFAULT_PUBLIC_URL
    parts = urlsplit(public_url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ConfigError(
            "PORTAL_PUBLIC_URL must be an http:// or https:// address with a host, such as"
            " https://portal.example.com (no query or fragment)"
        )

    smtp_url = get("PORTAL_SMTP_URL")
    if smtp_url and smtp_url.partition("://")[0].lower() not in SMTP_SCHEMES:
        raise ConfigError("PORTAL_SMTP_URL must start with smtp://, smtp+starttls:// or smtps://")

    log_format = get("PORTAL_LOG_FORMAT", "json" if mode == "production" else "text")
    if log_format not in ("json", "text", "off"):
        raise ConfigError(f"PORTAL_LOG_FORMAT must be json, text or off, not {log_format!r}")

    return {
        "PORTAL_ENV": mode,
        "SECRET_KEY": get("SECRET_KEY"),
        "SQLALCHEMY_DATABASE_URI": database_url(db_raw) if db_raw else None,
        "MIGRATION_DATABASE_URI": database_url(migration_raw) if migration_raw else None,
        "SQLALCHEMY_ENGINE_OPTIONS": {
            "pool_size": int(get("PORTAL_DB_POOL_SIZE", "10") or 10),
            "max_overflow": int(get("PORTAL_DB_MAX_OVERFLOW", "10") or 10),
            # No ping per checkout: portal.web.uow pings a connection only after it sat idle.
            "pool_pre_ping": False,
            # Fail fast instead of hanging a web worker when the database is unreachable, and
            # never wait more than 3 s for a row lock (the unit of work turns that into a
            # retryable "try again" refusal).
            "connect_args": {"connect_timeout": 3, "options": "-c lock_timeout=3000"},
        },
        "REDIS_URL": get("REDIS_URL"),
        #: Transfers each user may create through the API (flask-limiter syntax).
        "PORTAL_TRANSFER_LIMITS": get("PORTAL_TRANSFER_LIMITS", "30 per minute; 1000 per day"),
        "SERVICE_SETTINGS": ServiceSettings(
            vault_keys=vault_keys,
            vault_active_key=active,
            fingerprint_key=(get("PORTAL_FINGERPRINT_KEY") or "").encode(),
            cvv_key=(get("PORTAL_CVV_KEY") or "").encode(),
            limits=limits,
            idempotency_ttl_hours=max(24, int(get("PORTAL_IDEMPOTENCY_TTL_HOURS", "24") or 24)),
            withdrawal_hold_hours=int(get("PORTAL_WITHDRAWAL_HOLD_HOURS", "72") or 72),
            payout_delay_seconds=float(get("PORTAL_PAYOUT_DELAY_SECONDS", "3") or 3),
            funding_delay_seconds=float(get("PORTAL_FUNDING_DELAY_SECONDS", "2") or 2),
            max_cards_per_user=int(get("PORTAL_MAX_CARDS_PER_USER", "5") or 5),
            jwt_key=jwt_key,
            jwt_issuer=get("PORTAL_JWT_ISSUER", "portal") or "portal",
            jwt_audience=get("PORTAL_JWT_AUDIENCE", "portal-api") or "portal-api",
            access_token_seconds=number("PORTAL_ACCESS_TOKEN_SECONDS", "900"),
            refresh_token_days=number("PORTAL_REFRESH_TOKEN_DAYS", "30"),
            refresh_grace_seconds=number("PORTAL_REFRESH_GRACE_SECONDS", "10"),
            session_idle_minutes=number("PORTAL_SESSION_IDLE_MINUTES", "30"),
            session_absolute_hours=number("PORTAL_SESSION_ABSOLUTE_HOURS", "12"),
            email_token_minutes=number("PORTAL_EMAIL_TOKEN_MINUTES", "60"),
            password_reset_minutes=number("PORTAL_PASSWORD_RESET_MINUTES", "30"),
            require_verified_email=(get("PORTAL_REQUIRE_VERIFIED_EMAIL", "true") or "").lower()
            not in ("0", "false", "no", "off"),
            api_key_hash_key=(get("PORTAL_API_KEY_HASH_KEY") or "").encode(),
            fee_bps=fee_bps,
            fee_fixed=fee_fixed,
            authorization_days=number("PORTAL_AUTHORIZATION_DAYS", "7"),
            cvc_failures_per_card=number("PORTAL_CVC_FAILURES_PER_CARD", "5"),
            cvc_failures_per_key=number("PORTAL_CVC_FAILURES_PER_KEY", "30"),
            public_url=public_url,
            allow_loopback_http=mode != "production",
            webhook_allow_private=(
                get("PORTAL_WEBHOOK_ALLOW_PRIVATE", "false" if mode == "production" else "true")
                or ""
            ).lower()
            in ("1", "true", "yes", "on"),
            settlement_delay_days=number("PORTAL_SETTLEMENT_DELAY_DAYS", "2"),
            payout_time=payout_time(get("PORTAL_PAYOUT_TIME", "02:00")),
        ),
        "PROXY_COUNT": number("PORTAL_PROXY_COUNT", "0"),
        "SMTP_URL": smtp_url,
        "MAIL_FROM": get("PORTAL_MAIL_FROM", "Portal <no-reply@portal.test>"),
        "PUBLIC_URL": public_url,
        "OIDC_ISSUER": get("PORTAL_OIDC_ISSUER"),
        "OIDC_CLIENT_ID": get("PORTAL_OIDC_CLIENT_ID"),
        "OIDC_CLIENT_SECRET": get("PORTAL_OIDC_CLIENT_SECRET"),
        "OIDC_NAME": get("PORTAL_OIDC_NAME", "single sign-on"),
        "LOG_FORMAT": log_format,
        "LOG_LEVEL": (get("PORTAL_LOG_LEVEL", "INFO") or "INFO").upper(),
        "METRICS_ENABLED": (get("PORTAL_METRICS_ENABLED", "true") or "").lower()
        not in ("0", "false", "no", "off"),
        "METRICS_TOKEN": get("PORTAL_METRICS_TOKEN"),
        "WORKER_POLL_SECONDS": float(get("PORTAL_WORKER_POLL_SECONDS", "0.5") or 0.5),
        "WORKER_LEASE_SECONDS": float(get("PORTAL_WORKER_LEASE_SECONDS", "60") or 60),
        "WORKER_HTTP_PORT": int(get("PORTAL_WORKER_HTTP_PORT", "0") or 0) or None,
        # Loopback by default: outside a container nothing else needs the port. The container
        # configurations (Dockerfile, compose, k8s) open it to their probes and scrapes with
        # PORTAL_WORKER_HTTP_HOST=0.0.0.0.
        "WORKER_HTTP_HOST": get("PORTAL_WORKER_HTTP_HOST", "127.0.0.1"),
        "LEDGER_CHECK_SECONDS": float(get("PORTAL_LEDGER_CHECK_SECONDS", "300") or 300),
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
    }
