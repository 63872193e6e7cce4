"""``GET /auth/sso/login`` and ``GET /auth/sso/callback``: OpenID Connect sign-in (authorization
code flow with PKCE S256 and a nonce) through authlib's Flask client.

The client is registered lazily, per application, from the provider's discovery document, and
only when ``OIDC_ISSUER`` and ``OIDC_CLIENT_ID`` are set (otherwise both routes answer 404).
authlib keeps the state, nonce and PKCE verifier in the session cookie, which is why the cookie
is ``SameSite=Lax``: the provider's redirect back is a cross-site top-level GET.

After the ID token is validated (signature by the provider's JWKS, ``iss``, ``aud``, ``exp``,
``nonce``) ``portal.services.identity.sso`` decides who the user is. A user with TOTP is then
handed over to the second-factor page exactly like a password sign-in (see
:func:`hand_over_to_second_factor`) and is not signed in until it passes; everyone else is signed
in with ``mfa_verified=False`` (the staff decorator sends staff without a second factor to
enrolment). Every failure renders a page
saying why, never a 500.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

import requests
from authlib.integrations.flask_client import OAuth, OAuthError
from flask import (
    Flask,
    Response,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_login import current_user
from joserfc.errors import JoseError
from werkzeug.wrappers import Response as WerkzeugResponse

from portal.domain.errors import PortalError
from portal.services.identity import mfa, sso
from portal.services.identity.accounts import UserView
from portal.sso import bp
from portal.web.auth import await_second_factor, landing_url, safe_next, sign_in, sign_out
from portal.web.errors import http_status
from portal.web.uow import make_uow

log = logging.getLogger("portal.sso")

CLIENT_NAME = "sso"
SCOPE = "openid email profile"
#: Seconds to wait for the provider (discovery, token, JWKS, userinfo).
PROVIDER_TIMEOUT = 10
#: Clock skew tolerated on the ID token's ``exp`` and ``iat``.
LEEWAY_SECONDS = 60
_EXTENSION = "portal.sso.client"
_register_lock = threading.Lock()

#: Where a signed-in user lands when the sign-in carried no (safe) ``next``.
NEXT_KEY = "sso_next"

# -- the second-factor hand-off: the contract with the auth blueprint -------------------------
#: The same marker a password sign-in leaves for ``auth.mfa`` (portal/auth/views.py,
#: ``_set_pending``): "first factor passed, second factor due; nobody signed in yet". Its value is
#: ``{"user_id": int, "account": account tag, "expires": Unix seconds, "next": local path or ""}``
#: (plus ``"method": "sso"``, which ``auth.mfa`` ignores).


class ProviderUnavailable(Exception):
    """The provider cannot be reached or its discovery document is not right."""


class UntrustedAnswer(Exception):
    """The provider's answer lacks an ID token or contradicts it."""


# -- the authlib client --------------------------------------------------------------------------
def _issuer(app: Flask) -> str | None:
    issuer = (app.config.get("OIDC_ISSUER") or "").strip().rstrip("/")
    return issuer if issuer and app.config.get("OIDC_CLIENT_ID") else None


def _client() -> Any | None:
    """This app's authlib client (registered on first use), or None when SSO is not configured."""
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    issuer = _issuer(app)
    if issuer is None:
        return None
    client = app.extensions.get(_EXTENSION)
    if client is None:
        with _register_lock:
            client = app.extensions.get(_EXTENSION)
            if client is None:
                secret = app.config.get("OIDC_CLIENT_SECRET") or None
                client_kwargs: dict[str, Any] = {
                    "scope": SCOPE,
                    "code_challenge_method": "S256",
                    "default_timeout": PROVIDER_TIMEOUT,
                }
                if secret is None:  # a public client: PKCE alone protects the code
                    client_kwargs["token_endpoint_auth_method"] = "none"  # noqa: S105
                client = OAuth(app).register(
                    CLIENT_NAME,
                    client_id=app.config["OIDC_CLIENT_ID"],
                    client_secret=secret,
                    server_metadata_url=issuer + "/.well-known/openid-configuration",
                    client_kwargs=client_kwargs,
                )
                app.extensions[_EXTENSION] = client
    return client


def _metadata(client: Any) -> dict[str, Any]:
    """The provider's discovery document, checked against the configured issuer (OpenID
    Connect Discovery 1.0 §4.3: a document naming another issuer must not be used)."""
    try:
        metadata: dict[str, Any] = client.load_server_metadata()
    except (requests.RequestException, ValueError) as exc:
        raise ProviderUnavailable(f"discovery failed: {type(exc).__name__}") from exc
    issuer = metadata.get("issuer")
    if not isinstance(issuer, str) or issuer.rstrip("/") != _issuer(current_app):
        raise ProviderUnavailable(f"discovery names issuer {issuer!r}")
    for endpoint in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
        if not metadata.get(endpoint):
            raise ProviderUnavailable(f"discovery has no {endpoint}")
    return metadata


def _claims_options(metadata: dict[str, Any]) -> dict[str, Any]:
    """What the ID token must say, beyond authlib's own checks (nonce, azp, at_hash)."""
    return {
        "iss": {"essential": True, "value": metadata["issuer"]},
        "aud": {"essential": True, "value": current_app.config["OIDC_CLIENT_ID"]},
        "sub": {"essential": True},
        "exp": {"essential": True},
        "iat": {"essential": True},
    }


# -- small helpers -------------------------------------------------------------------------------
def _provider_name() -> str:
    return str(current_app.config.get("OIDC_NAME") or "single sign-on")


def _callback_url() -> str:
    """The redirect URI registered at the provider: from PUBLIC_URL, never the Host header."""
    base = str(current_app.config.get("PUBLIC_URL") or request.host_url).rstrip("/")
    return base + url_for("sso.callback")


def _flag(value: object) -> bool:
    """``email_verified`` as a boolean (some providers send the string "true")."""
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def _names(claims: dict[str, Any]) -> tuple[str | None, str | None]:
    first, last = claims.get("given_name"), claims.get("family_name")
    if not first and isinstance(claims.get("name"), str):
        head, _, tail = claims["name"].strip().partition(" ")
        first, last = head or None, last or tail or None
    return (first if isinstance(first, str) else None, last if isinstance(last, str) else None)


def _failure(status: int, message: str, code: str) -> tuple[str, int]:
    session.pop(NEXT_KEY, None)
    return (
        render_template(
            "sso/error.html",
            provider=_provider_name(),
            message=message,
            code=code,
            retry_url=url_for("sso.login"),
            password_url=url_for("auth.login"),
        ),
        status,
    )


def _record(issuer: str | None, reason: str, **data: str) -> None:
    try:
        sso.record_failure(make_uow(), issuer=issuer or "", reason=reason, data=data)
    except Exception:  # the page must still answer; the log keeps the event
        log.exception("could not audit a failed single sign-on (%s)", reason)


def hand_over_to_second_factor(user: UserView, next_url: str | None) -> WerkzeugResponse:
    """The first factor passed at the provider; the user must still pass TOTP on the same
    second-factor page as after a password."""
    await_second_factor(user.id, next_url, method="sso")
    return redirect(url_for("auth.mfa"))


# -- routes --------------------------------------------------------------------------------------
@bp.after_request
def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/login")
def login() -> Any:
    """Send the browser to the provider (404 when single sign-on is not configured)."""
    client = _client()
    if client is None:
        abort(404)
    try:
        _metadata(client)
        wanted = safe_next(request.args.get("next"))
        response = client.authorize_redirect(_callback_url())
    except ProviderUnavailable as exc:
        log.warning("single sign-on unavailable: %s", exc)
        return _failure(
            502, f"{_provider_name()} cannot be reached right now; try again later.",
            "sso_unavailable",
        )  # fmt: skip
    if wanted:
        session[NEXT_KEY] = wanted
    else:
        session.pop(NEXT_KEY, None)
    return response


@bp.get("/callback")
def callback() -> Any:
    """The provider's answer: exchange the code, validate the ID token, find or create the
    user, then sign in or hand over to the second factor."""
    client = _client()
    if client is None:
        abort(404)
    name = _provider_name()
    issuer = _issuer(current_app)
    state = request.args.get("state") or ""
    if not state or client.framework.get_state_data(session, state) is None:
        # A forged, replayed or foreign answer (or one from another browser): no audit row for
        # anonymous junk, only the log.
        log.warning("single sign-on callback with an unknown state")
        return _failure(
            400, "This sign-in answer does not belong to a sign-in started in this browser, or"
            " it was used already. Start again.", "sso_state_mismatch",
        )  # fmt: skip

    error = request.args.get("error")
    if error:
        client.framework.clear_state_data(session, state)
        reason = error if re.fullmatch(r"[a-z_]{1,64}", error) else "error"
        _record(issuer, "provider_error", error=reason)
        if reason == "access_denied":
            message = f"Sign-in was cancelled at {name}; nothing was changed."
        else:
            message = f"{name} did not sign you in ({reason})."
        return _failure(400, message, "sso_provider_error")

    try:
        metadata = _metadata(client)
        token = client.authorize_access_token(
            claims_options=_claims_options(metadata), leeway=LEEWAY_SECONDS
        )
        claims: dict[str, Any] = dict(token.get("userinfo") or {})
        if not claims:
            raise UntrustedAnswer("the token response carries no ID token")
        if not claims.get("email") and metadata.get("userinfo_endpoint"):
            info = dict(client.userinfo(token=token))
            if info.get("sub") != claims["sub"]:  # OpenID Connect Core §5.3.2
                raise UntrustedAnswer("userinfo names another subject")
            claims = {**info, **{k: v for k, v in claims.items() if v is not None}}
    except ProviderUnavailable as exc:
        log.warning("single sign-on unavailable: %s", exc)
        return _failure(
            502, f"{name} cannot be reached right now; try again later.", "sso_unavailable"
        )
    except OAuthError as exc:  # the token endpoint refused the code (or a state error)
        log.warning("single sign-on: the provider refused the code: %s", exc.error)
        _record(issuer, "token_refused", error=str(exc.error)[:64])
        return _failure(400, f"{name} did not complete the sign-in; start again.", "sso_failed")
    except (JoseError, UntrustedAnswer) as exc:  # signature, iss, aud, exp, nonce...
        log.warning("single sign-on: ID token refused: %s", exc)
        _record(issuer, "id_token_invalid", error=type(exc).__name__)
        return _failure(
            400, f"The answer from {name} could not be verified, so you were not signed in.",
            "sso_token_invalid",
        )  # fmt: skip
    except (requests.RequestException, ValueError) as exc:
        log.warning("single sign-on: provider failure: %s", type(exc).__name__, exc_info=True)
        return _failure(
            502, f"{name} cannot be reached right now; try again later.", "sso_unavailable"
        )

    first, last = _names(claims)
    try:
        user = sso.sign_in_with_oidc(
            make_uow(),
            issuer=claims["iss"],
            subject=claims["sub"],
            email=claims.get("email"),
            email_verified=_flag(claims.get("email_verified")),
            first_name=first,
            last_name=last,
        )
    except PortalError as exc:
        return _failure(http_status(exc), exc.message, exc.code)

    next_url = safe_next(session.pop(NEXT_KEY, None))
    if current_user.is_authenticated:
        sign_out()  # whoever was signed in here before: that session ends
    if user.mfa_enabled:
        return hand_over_to_second_factor(user, next_url)
    sign_in(user, mfa_verified=False)
    if mfa.mfa_required(user):
        # Staff without a second factor: a session not verified by MFA, and straight to
        # enrolment (the staff decorator would send them there anyway), as a password sign-in.
        flash("Your role needs two-step verification. Set it up to continue.", "info")
        return redirect(url_for("auth.mfa_setup", next=next_url))
    return redirect(next_url or landing_url(user))
