"""Console logs: JSON lines on stdout in production, plain text on stderr in development and
tests, an access-log line per request, and masking of secrets even when code logs them by mistake.

Every line the console handler writes goes through :class:`SecretMask` (card numbers,
security codes, bearer tokens and JWTs, refresh tokens, API keys, passwords, the tokens of
emailed links (``/auth/reset/...``, ``/auth/verify/...``, ``/merchant/join/...``) and the app's
own configured secrets); the development server's request lines (logger ``werkzeug``) are
masked the same way. Inside a request, records carry the request id, route (``url_rule``),
method and the signed-in user's id; the access line (logger ``portal.access``) adds status and
duration. Trace and span ids are added when an OpenTelemetry span is current.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import sys
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import IO, Any

from flask import Flask, Response, g, has_request_context, request

#: The handler this module installs on the ``portal`` logger (replaced, never duplicated).
HANDLER_NAME = "portal.stdout"
access_log = logging.getLogger("portal.access")

MASK = "[REDACTED]"

_CARD = re.compile(r"(?<![A-Za-z0-9_])\d(?:[ -]?\d){12,18}(?![A-Za-z0-9_])")
_CVC = re.compile(
    r"""(?ix)
    (["']?\b(?:cvc|cvv|cvc2|cvv2|security[_ ]?code)\b["']?\s*[:=]\s*["']?)
    \d{3,4}(?!\d)
    """
)
_PASSWORD = re.compile(
    r"""(?ix)
    (["']?\b[a-z_]*(?:password|passwd|secret)[a-z_]*\b["']?\s*[:=]\s*)
    ("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[^\s,&;}\]"']+)
    """
)
_BEARER = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]+")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{4,}(?:\.[A-Za-z0-9_-]*){0,2}")
_PREFIXED = re.compile(r"\b(?:prt|sk|rk)_[A-Za-z0-9_-]{4,}")
#: The token of an emailed one-time link (password reset, email verification, merchant
#: invitation), in a path or URL-encoded in a query; a route's ``<token>`` placeholder stays.
_EMAIL_LINK = re.compile(
    r"""(?ix)
    ((?:/|%2F)(?:auth(?:/|%2F)(?:reset|verify)|merchant(?:/|%2F)join)(?:/|%2F))
    (?!<)[^\s/?#&"'<>\\]+
    """
)


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _mask_card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    if 13 <= len(digits) <= 19 and _luhn(digits):
        return f"[card ****{digits[-4:]}]"
    return match.group(0)


class SecretMask(logging.Filter):
    """Masks secrets in text. The console formatters apply :meth:`mask` to every line they write;
    as a filter (for other handlers, e.g. gunicorn's) it rewrites the record in place."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        # Longest first, so a secret containing another is masked whole; short strings would
        # mask ordinary words.
        self.secrets = sorted({s for s in secrets if s and len(s) >= 8}, key=len, reverse=True)

    def mask(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        text = _PASSWORD.sub(lambda m: m.group(1) + MASK, text)
        text = _CVC.sub(lambda m: m.group(1) + "***", text)
        text = _BEARER.sub(lambda m: m.group(1) + MASK, text)
        text = _JWT.sub(MASK, text)
        text = _PREFIXED.sub(MASK, text)
        text = _EMAIL_LINK.sub(lambda m: m.group(1) + MASK, text)
        return _CARD.sub(_mask_card, text)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep what we can, masked
            message = f"{record.msg!r} {record.args!r}"
        record.msg = self.mask(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.mask(record.exc_text)
        if record.stack_info:
            record.stack_info = self.mask(record.stack_info)
        return True


def _context() -> dict[str, Any]:
    """Request and trace fields for the record being formatted (empty outside a request)."""
    fields: dict[str, Any] = {}
    if has_request_context():
        fields["request_id"] = g.get("request_id")
        fields["method"] = request.method
        fields["route"] = request.url_rule.rule if request.url_rule else None
        actor = g.get("actor")
        login_user = g.get("_login_user")  # flask-login's already loaded user: never load it here
        if actor is None and login_user is not None:
            actor = getattr(login_user, "actor", None)
        if actor is not None and getattr(actor, "id", None) is not None:
            fields[f"{getattr(actor, 'kind', 'user')}_id"] = actor.id
    trace = sys.modules.get("opentelemetry.trace")  # only when tracing is in use
    if trace is not None:
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            fields["trace_id"] = format(span_context.trace_id, "032x")
            fields["span_id"] = format(span_context.span_id, "016x")
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def __init__(self, mask: SecretMask) -> None:
        super().__init__()
        self.masker = mask

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "message": record.getMessage(),
            "logger": record.name,
        }
        entry.update({k: v for k, v in _context().items() if v is not None})
        for key in ("status", "duration_ms"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        # Mask each value, not the encoded line: masking must never break the JSON.
        masked = {k: self.masker.mask(v) if isinstance(v, str) else v for k, v in entry.items()}
        return json.dumps(masked, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self, mask: SecretMask) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")
        self.masker = mask

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        if request_id := _context().get("request_id"):
            line += f" [{request_id}]"
        return self.masker.mask(line)


class ConsoleHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` (JSON) or ``sys.stderr`` (text) is at the time: test
    runners swap them. Text goes to stderr so command output on stdout stays clean."""

    def __init__(self, stream: IO[str] | None = None, *, to_stdout: bool = True) -> None:
        super().__init__(stream or (sys.stdout if to_stdout else sys.stderr))
        self.fixed = stream
        self.to_stdout = to_stdout

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = self.fixed or (sys.stdout if self.to_stdout else sys.stderr)
        super().emit(record)


def configured_secrets(config: Any) -> list[str]:
    """The app's own secrets, as they could appear in text."""
    values = [
        config.get(name)
        for name in ("SECRET_KEY", "OIDC_CLIENT_SECRET", "METRICS_TOKEN", "SMTP_URL")
    ]
    settings = config.get("SERVICE_SETTINGS")
    if settings is not None:
        for key in (settings.fingerprint_key, settings.cvv_key, settings.jwt_key):
            values.append(key.decode(errors="ignore"))
        for key in settings.vault_keys.values():
            values.append(base64.b64encode(key).decode())
    return [v for v in values if isinstance(v, str)]


def build_handler(
    config: Any, stream: IO[str] | None = None, fmt: str | None = None
) -> ConsoleHandler:
    """The console handler: its formatter masks secrets in the whole line it writes (message,
    arguments, exception and stack text), without changing the record other handlers see."""
    mask = SecretMask(configured_secrets(config))
    chosen = fmt or config.get("LOG_FORMAT") or "text"
    handler = ConsoleHandler(stream, to_stdout=chosen == "json")
    handler.set_name(HANDLER_NAME)
    handler.setFormatter(JsonFormatter(mask) if chosen == "json" else TextFormatter(mask))
    return handler


def init_app(app: Flask) -> None:
    if app.config.get("LOG_FORMAT") == "off":
        return
    logger = logging.getLogger("portal")
    for old in [h for h in logger.handlers if h.get_name() == HANDLER_NAME]:
        logger.removeHandler(old)
    logger.addHandler(build_handler(app.config))
    logger.setLevel(app.config.get("LOG_LEVEL") or "INFO")
    # The development server logs each request's path (emailed tokens included) itself.
    server_log = logging.getLogger("werkzeug")
    for old_filter in [f for f in server_log.filters if isinstance(f, SecretMask)]:
        server_log.removeFilter(old_filter)
    server_log.addFilter(SecretMask(configured_secrets(app.config)))

    @app.before_request
    def start_clock() -> None:
        g.started_at = time.perf_counter()

    @app.after_request
    def log_access(response: Response) -> Response:
        started = g.get("started_at")
        duration = round((time.perf_counter() - started) * 1000, 2) if started else None
        access_log.info(
            "%s %s %s",
            request.method,
            request.url_rule.rule if request.url_rule else request.path,
            response.status_code,
            extra={"status": response.status_code, "duration_ms": duration},
        )
        return response
