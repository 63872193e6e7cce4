"""Who is asking: server-side web sessions behind Flask-Login, bearer tokens for the API, and
the decorators pages use to require sign-in, permissions and (for staff) a second factor.

The browser's signed cookie holds only a random session token; the session itself is a row
(``web_sessions``) checked on every request, so it can be listed, revoked and timed out.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import Flask, Request, abort, current_app, g, redirect, request, session, url_for
from flask_login import LoginManager, UserMixin, current_user, login_user, logout_user

from portal.domain.errors import Unauthenticated
from portal.domain.permissions import SELF_SERVICE_PERMISSIONS
from portal.domain.types import Actor
from portal.services.identity import accounts, mfa, sessions, tokens
from portal.services.identity.accounts import UserView
from portal.services.identity.users import canonical_email
from portal.web.uow import make_uow

login_manager = LoginManager()
F = TypeVar("F", bound=Callable[..., Any])
SESSION_KEY = "sid"
#: Signed-cookie key of a sign-in waiting for its second factor (nobody is signed in yet).
PENDING_KEY = "auth_pending"
PENDING_SECONDS = 300


@dataclass(frozen=True)
class SessionUser(UserMixin):
    """The signed-in user for this request (never an ORM row)."""

    user: UserView
    session_id: int
    mfa_verified: bool
    actor: Actor

    def get_id(self) -> str:
        return str(self.user.id)

    @property
    def id(self) -> int:
        return self.user.id

    @property
    def mfa_satisfied(self) -> bool:
        return self.mfa_verified or not mfa.mfa_required(self.user)


def init_app(app: Flask) -> None:
    login_manager.init_app(app)
    login_manager.session_protection = None  # the server-side session is the protection
    login_manager.login_view = "auth.login"
    login_manager.login_message = "Please sign in to see this page."
    login_manager.login_message_category = "info"
    login_manager.request_loader(_load_from_session)
    app.extensions["portal.api_authenticator"] = authenticate_bearer
    secure = str(app.config.get("PUBLIC_URL", "")).startswith("https://")
    app.config.update(
        SESSION_COOKIE_NAME="__Host-portal" if secure else "portal_session",
        SESSION_COOKIE_SECURE=secure,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",  # Strict would break single-sign-on redirects
    )


def background(view: F) -> F:
    """Mark a view the browser calls by itself (a live poll): it reads the session but never
    extends its idle timeout. Put it right under the route decorator."""
    view.portal_background = True  # type: ignore[attr-defined]
    return view


def _background_request() -> bool:
    view = current_app.view_functions.get(request.endpoint or "")
    return bool(getattr(view, "portal_background", False))


def _load_from_session(_request: Request) -> SessionUser | None:
    token = session.get(SESSION_KEY)
    if not token:
        return None
    info = sessions.resolve_web_session(make_uow(), token=token, touch=not _background_request())
    if info is None:
        g.portal_session_ended = token  # ended_session_reason() can say why
        session.clear()
        return None
    return SessionUser(info.user, info.session_id, info.mfa_verified, info.actor)


def ended_session_reason() -> str | None:
    """Why this request's session cookie named a session that has ended (``"revoked"``,
    ``"idle"``, ``"expired"``, ``"archived"``), or None (no such cookie, or none ended)."""
    token = g.get("portal_session_ended")
    return sessions.ended_reason(make_uow(), token=token) if token else None


def sign_in(user: UserView, *, mfa_verified: bool) -> SessionUser:
    """Start a new server-side session (a new identifier at every sign-in)."""
    session.clear()
    new = sessions.create_web_session(
        make_uow(),
        user_id=user.id,
        user_agent=(request.user_agent.string or "")[:255],
        ip=request.remote_addr or "",
        mfa_verified=mfa_verified,
    )
    session[SESSION_KEY] = new.token
    session.permanent = True
    signed_in = SessionUser(user, new.id, mfa_verified, user.actor)
    login_user(signed_in)
    return signed_in


def step_up() -> None:
    """The second factor was just verified: the session gets a new token, marked verified."""
    new = sessions.mark_mfa_verified(make_uow(), session_id=current_user.session_id)
    session[SESSION_KEY] = new.token
    login_user(SessionUser(current_user.user, new.id, True, current_user.actor))


def account_tag(account: str) -> str:
    """A keyed digest of an account key (``user:<id>`` or ``email:<canonical address>``, see
    :func:`account_key`): how sign-in throttling, the trusted-browser cookie and the pending
    second factor name an account without its address."""
    key = str(current_app.config["SECRET_KEY"]).encode()
    text = account.encode("utf-8", "replace")
    return hmac.new(key, b"portal.auth.account:" + text, hashlib.sha256).hexdigest()[:32]


def user_tag(user_id: int) -> str:
    """The account tag of a known user."""
    return account_tag(f"user:{user_id}")


def email_tag(email: str) -> str:
    """The account tag of an address as typed, without looking the account up (for limits
    that must count known and unknown addresses alike): its canonical form."""
    return account_tag("email:" + canonical_email(email if isinstance(email, str) else ""))


def account_key(email: str) -> str:
    """The per-account limit key of an address typed at sign-in: the resolved user's id, or
    the canonical address for an unknown account (cached per request). Never raises: a key
    function that raised would make flask-limiter think its storage had died."""
    cache: dict[str, str] = g.setdefault("portal_account_keys", {})
    if email not in cache:
        try:
            cache[email] = accounts.account_key(make_uow(), email)
        except Exception:  # the database is down: the sign-in fails anyway
            cache[email] = "email:" + canonical_email(email if isinstance(email, str) else "")
    return account_tag(cache[email])


def await_second_factor(user_id: int, next_url: str | None, *, method: str) -> None:
    """The first factor passed (a password, or a single-sign-on provider); the second is due.
    Nobody is signed in: the signed session holds only who is waiting, for a few minutes."""
    session.clear()
    session[PENDING_KEY] = {
        "user_id": user_id,
        "account": user_tag(user_id),
        "expires": int(time.time()) + PENDING_SECONDS,
        "next": next_url or "",
        "method": method,
    }


def pending_second_factor() -> dict[str, Any] | None:
    pending = session.get(PENDING_KEY)
    if not isinstance(pending, dict) or float(pending.get("expires", 0)) < time.time():
        return None
    return pending


def safe_next(value: object) -> str | None:
    """A same-site relative path to go to after signing in, or None (absolute URLs,
    protocol-relative ``//host``, backslashes and control characters are refused: no open
    redirects)."""
    if not isinstance(value, str):
        return None
    target = value.strip()
    if target.endswith("?"):  # request.full_path of a URL without a query
        target = target[:-1]
    if (
        not target.startswith("/")
        or target.startswith("//")
        or "\\" in target
        or len(target) > 2000
        or any(ord(c) < 0x20 or ord(c) == 0x7F for c in target)
    ):
        return None
    parts = urlsplit(target)
    return None if parts.scheme or parts.netloc else target


def sign_out() -> None:
    if current_user.is_authenticated:
        sessions.revoke_session(
            make_uow(), actor=current_user.actor, session_id=current_user.session_id
        )
    logout_user()
    session.clear()


def current_actor() -> Actor:
    if not current_user.is_authenticated:
        raise Unauthenticated("sign in first")
    return current_user.actor


def login_required(*permissions: str) -> Callable[[F], F]:
    """Require a signed-in user holding every permission named; staff must also have passed
    their second factor in this session (enrolling first if they have not)."""

    def decorate(view: F) -> F:
        @wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if not current_user.is_authenticated:
                return login_manager.unauthorized()
            if not current_user.mfa_satisfied:
                endpoint = "auth.mfa_setup" if not current_user.user.mfa_enabled else "auth.mfa"
                return redirect(url_for(endpoint, next=request.full_path))
            if any(not current_user.actor.can(p) for p in permissions):
                abort(403)
            return view(*args, **kwargs)

        return wrapped  # type: ignore[return-value]

    return decorate


@dataclass(frozen=True)
class ApiPrincipal:
    actor: Actor
    user: UserView


def access_claims(token: str) -> tokens.AccessClaims:
    """``tokens.verify_access_token`` of ``token``, checked once per request (the per-user rate
    limits' keys and the bearer check read the same claims). Raises Unauthenticated."""
    checked = g.get("portal_access_claims")
    if checked is not None and checked[0] == token:
        return checked[1]
    claims = tokens.verify_access_token(current_app.config["SERVICE_SETTINGS"], token)
    g.portal_access_claims = (token, claims)
    return claims


def authenticate_bearer(req: Request) -> ApiPrincipal:
    """The API's bearer-token check: a valid access token of a live user and family."""
    header = req.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("send an access token: Authorization: Bearer <token>")
    claims = access_claims(token.strip())
    actor, user = tokens.actor_for_access(make_uow(), claims)
    g.api_user = user
    return ApiPrincipal(actor, user)


def landing_url(user: UserView) -> str:
    """Where a sign-in without a ``next`` lands (password, second factor or single sign-on):
    cardholders on their wallet; staff (any permission beyond self-service) on the account page
    until they have a console."""
    if "wallet:use" in user.permissions and user.permissions <= SELF_SERVICE_PERMISSIONS:
        return url_for("cardholder.index")
    return url_for("auth.account")
