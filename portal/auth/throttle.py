"""Throttling of sign-in, and the "device cookie" that keeps a real user's own browser out of it.

Only FAILED attempts count (flask-limiter's ``deduct_when``: a view marks a failure with
:func:`record_failure`), so a user who signs in correctly never uses up anything. Three limits,
all on POST only, all answered with 429 and ``Retry-After``:

* per client address (``SIGN_IN_LIMIT_ADDRESS``, default 20 a minute and 100 an hour), shared by
  the password and the second-factor steps: one address cannot guess at many accounts;
* per account (the user id the typed address resolves to, whatever its spelling), for browsers
  that are NOT trusted for that account (``SIGN_IN_LIMIT_ACCOUNT``,
  default 10 per 15 minutes): many addresses together cannot guess at one account;
* per trusted browser and account (``SIGN_IN_LIMIT_DEVICE``, same default).

The per-account limit alone would let an attacker lock a real user out by failing on purpose.
Following OWASP's "device cookie" scheme, a successful sign-in leaves a signed, long-lived,
HttpOnly cookie naming the accounts signed in from this browser (as keyed digests, not
addresses) and a random device id. A browser presenting a valid device cookie for the account it
signs in to is exempt from the per-account limit and counted on its own instead, so an attack
from elsewhere only slows down browsers the account has never been used from, and only while it
lasts (the window is fixed, 15 minutes by default).
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from flask import current_app, g, request, session
from flask_login import current_user
from itsdangerous import BadSignature, URLSafeTimedSerializer
from werkzeug.wrappers import Response

from portal.extensions import limiter
from portal.web.auth import PENDING_KEY, account_key, email_tag, user_tag

DEVICE_COOKIE = "portal_device"
DEVICE_COOKIE_SECURE = "__Host-portal_device"
DEVICE_MAX_AGE = 180 * 24 * 3600
#: Accounts remembered per browser (most recent first).
DEVICE_ACCOUNTS = 5

DEFAULT_LIMITS = {
    "SIGN_IN_LIMIT_ADDRESS": "20 per minute; 100 per hour",
    "SIGN_IN_LIMIT_ACCOUNT": "10 per 15 minutes",
    "SIGN_IN_LIMIT_DEVICE": "10 per 15 minutes",
    "AUTH_LIMIT_EMAIL_ADDRESS": "10 per minute; 50 per hour",
    "AUTH_LIMIT_EMAIL_RECIPIENT": "5 per hour",
}


def _setting(name: str) -> Any:
    return lambda: current_app.config.get(name) or DEFAULT_LIMITS[name]


# -- accounts and failures ------------------------------------------------------------------
def record_failure() -> None:
    """Mark this request as a failed sign-in attempt: the limits below then count it."""
    g.auth_failed = True


def _failed(_response: Response) -> bool:
    return bool(g.get("auth_failed"))


def _attempted_account() -> str:
    """The account this request tries, by user id (so no spelling of an address is a fresh
    bucket): the user the address typed on the sign-in form resolves to (its canonical form
    when there is none), the account waiting for its second factor, or the signed-in user
    stepping up."""
    if request.endpoint == "auth.login":
        return "acct:" + account_key(request.form.get("email", ""))
    pending = session.get(PENDING_KEY)
    if isinstance(pending, dict) and pending.get("account"):
        return "acct:" + str(pending["account"])
    if current_user.is_authenticated:
        return "acct:" + user_tag(current_user.id)
    return "acct:none"


# -- the device cookie ----------------------------------------------------------------------
def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt="portal.device-cookie")


def _cookie_name() -> str:
    return (
        DEVICE_COOKIE_SECURE if current_app.config.get("SESSION_COOKIE_SECURE") else DEVICE_COOKIE
    )


def _device() -> dict[str, Any] | None:
    raw = request.cookies.get(_cookie_name())
    if not raw:
        return None
    try:
        data = _serializer().loads(raw, max_age=DEVICE_MAX_AGE)
    except BadSignature:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("a"), list):
        return None
    return data


def _trusted() -> bool:
    device = _device()
    return device is not None and _attempted_account()[len("acct:") :] in device["a"]


def _device_key() -> str:
    device = _device() or {}
    return f"dev:{device.get('d', 'none')}:{_attempted_account()}"


def remember_device(response: Response, user_id: int) -> None:
    """After a successful sign-in: trust this browser for this account (and keep the accounts
    it already knew), refreshing the cookie's lifetime."""
    device = _device() or {"d": secrets.token_hex(16), "a": []}
    tag = user_tag(user_id)
    accounts = [tag] + [a for a in device["a"] if a != tag]
    value = _serializer().dumps({"d": device["d"], "a": accounts[:DEVICE_ACCOUNTS]})
    secure = bool(current_app.config.get("SESSION_COOKIE_SECURE"))
    response.set_cookie(
        _cookie_name(),
        value,
        max_age=DEVICE_MAX_AGE,
        path="/",
        secure=secure,
        httponly=True,
        samesite="Lax",
    )


# -- the limits -----------------------------------------------------------------------------
#: Failures per client address, shared by the password and the second-factor steps.
per_address = limiter.shared_limit(
    _setting("SIGN_IN_LIMIT_ADDRESS"),
    scope="sign-in-address",
    methods=["POST"],
    deduct_when=_failed,
)
#: Failures per account from browsers not trusted for it.
per_account = limiter.shared_limit(
    _setting("SIGN_IN_LIMIT_ACCOUNT"),
    scope="sign-in-account",
    key_func=_attempted_account,
    methods=["POST"],
    deduct_when=_failed,
    exempt_when=_trusted,
)
#: Failures per trusted browser and account.
per_device = limiter.shared_limit(
    _setting("SIGN_IN_LIMIT_DEVICE"),
    scope="sign-in-device",
    key_func=_device_key,
    methods=["POST"],
    deduct_when=_failed,
    exempt_when=lambda: not _trusted(),
)
#: Requests that send email (sign-up, forgotten password): per address, every attempt counts.
email_per_address = limiter.shared_limit(
    _setting("AUTH_LIMIT_EMAIL_ADDRESS"), scope="auth-email-address", methods=["POST"]
)
#: Reset links per recipient (every attempt counts, whether or not the account exists, so the
#: answer stays the same for both).
email_per_recipient = limiter.limit(
    _setting("AUTH_LIMIT_EMAIL_RECIPIENT"),
    key_func=lambda: "to:" + email_tag(request.form.get("email", "")),
    methods=["POST"],
)


def retry_after_seconds() -> int:
    """Seconds until the breached limit of this request resets (for the message)."""
    current = limiter.current_limit
    if current is None:
        return 60
    return max(1, int(current.reset_at - time.time()))
