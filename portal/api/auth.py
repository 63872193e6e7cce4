"""Signing up and in over the API: registration, tokens (access + rotating refresh), sign-out,
the caller's identity, and their sessions and devices.

Also the objects other identity endpoints share: the user object and the session objects.

Brute force on ``POST /auth/token`` is throttled by flask-limiter, counting only *failed*
attempts (``deduct_when``), so a correct sign-in costs nothing and is never what locks anyone
out:

- per client address (any account): ``SIGN_IN_FAILURES_PER_ADDRESS``;
- per account at one client address: ``SIGN_IN_FAILURES_PER_ACCOUNT_AND_ADDRESS``. Keyed by
  address too, so an attacker elsewhere cannot lock the real user out: only failures from the
  user's own address (or a NAT they share with the attacker) count against them, and only for
  the window;
- per account from anywhere, counting only wrong *second-factor* codes:
  ``SECOND_FACTOR_FAILURES_PER_ACCOUNT``. Reaching the second factor needs the password, so
  only someone who already has it can spend this limit, and it stops a password holder with
  many addresses from guessing six-digit codes.

A limit that is used up answers 429 with ``Retry-After`` until its window ends, whatever the
credentials. Addresses come from ``request.remote_addr`` (ProxyFix with
``PORTAL_PROXY_COUNT``); emails become storage keys only as an HMAC under ``SECRET_KEY``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from flask import Response, current_app, g, request
from pydantic import AfterValidator, Field

from portal.api import bp
from portal.api.operation import MAX_BODY_BYTES, operation
from portal.api.pagination import ListResponse
from portal.api.schemas import (
    ApiModel,
    EmailAddress,
    NewPassword,
    PasswordGiven,
    PersonName,
    RequestBody,
    SessionId,
    UserId,
)
from portal.api.security import bearer_credential
from portal.domain.errors import Conflict, InvalidCredentials, NotFound, Unauthenticated
from portal.domain.types import Actor
from portal.extensions import limiter
from portal.services.identity import accounts, mfa, tokens
from portal.services.identity import sessions as session_service
from portal.services.identity import users as user_service
from portal.web import mail
from portal.web.auth import access_claims, account_key
from portal.web.uow import make_uow

log = logging.getLogger("portal.api")

#: Failed sign-ins (any account) per client address.
SIGN_IN_FAILURES_PER_ADDRESS = "30 per minute; 200 per hour"
#: Failed sign-ins of one account (by email) from one client address.
SIGN_IN_FAILURES_PER_ACCOUNT_AND_ADDRESS = "5 per minute; 20 per hour"
#: Wrong second-factor codes of one account, from any address.
SECOND_FACTOR_FAILURES_PER_ACCOUNT = "10 per hour"
#: Sign-ups that create an account or find the email taken, per client address.
SIGN_UPS_PER_ADDRESS = "20 per hour"

#: The path of the verification page the emailed link opens.
VERIFY_PATH = "/auth/verify/"


# -- shared objects -------------------------------------------------------------------------------
def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


#: A moment, serialised as ISO 8601 in UTC (``2026-01-31T12:00:00Z``).
Timestamp = Annotated[datetime, AfterValidator(_utc)]


class User(ApiModel):
    """A person who signs in: cardholder, merchant or staff."""

    id: UserId
    object: Literal["user"] = "user"
    email: str
    first_name: str
    last_name: str
    email_verified: bool
    mfa_enabled: bool = Field(description="Whether a second factor (TOTP) is set up.")
    roles: list[str] = Field(description="Roles assigned; an archived role grants nothing.")
    permissions: list[str] = Field(
        description="What the user's live roles grant (nothing while the user is archived)."
    )
    archived: bool
    archived_at: Timestamp | None
    created_at: Timestamp
    updated_at: Timestamp

    @classmethod
    def of(cls, user: user_service.UserDetail) -> User:
        return cls(
            id=user.public_id,
            email=user.email,
            first_name=user.first_name,
            last_name=user.last_name,
            email_verified=user.email_verified,
            mfa_enabled=user.mfa_enabled,
            roles=list(user.roles),
            permissions=sorted(user.permissions),
            archived=user.archived,
            archived_at=user.archived_at,
            created_at=user.created_at,
            updated_at=user.updated_at,
        )


class WebSession(ApiModel):
    """A signed-in browser."""

    id: SessionId
    object: Literal["session"] = "session"
    kind: Literal["web"] = "web"
    created_at: Timestamp
    last_seen_at: Timestamp
    expires_at: Timestamp = Field(description="When it ends unless used (idle or absolute).")
    user_agent: str
    ip: str
    current: bool = Field(description="Always false over the API (the caller uses a token).")


class ApiSession(ApiModel):
    """An API refresh-token family: one sign-in of an API client, across its rotations."""

    id: uuid.UUID = Field(description="The token family's id (a UUID, not a prefixed id).")
    object: Literal["session"] = "session"
    kind: Literal["api"] = "api"
    created_at: Timestamp
    last_seen_at: Timestamp = Field(description="The last refresh.")
    expires_at: Timestamp
    user_agent: str
    current: bool = Field(description="Whether the calling access token belongs to it.")


Session = Annotated[WebSession | ApiSession, Field(discriminator="kind")]


class SessionList(ListResponse[Session]):
    """Live web sessions and API token families, most recently used first (not paged)."""

    @classmethod
    def of_views(cls, views: Iterable[session_service.SessionView]) -> SessionList:
        data: list[WebSession | ApiSession] = []
        for v in views:
            if v.kind == "web":
                data.append(
                    WebSession(
                        id=v.public_id, created_at=v.created_at, last_seen_at=v.last_seen_at,
                        expires_at=v.expires_at, user_agent=v.user_agent, ip=v.ip,
                        current=v.current,
                    )
                )  # fmt: skip
            else:
                data.append(
                    ApiSession(
                        id=uuid.UUID(v.id), created_at=v.created_at, last_seen_at=v.last_seen_at,
                        expires_at=v.expires_at, user_agent=v.user_agent, current=v.current,
                    )
                )  # fmt: skip
        return cls(url=request.path, has_more=False, data=data)


def own_profile(call: Callable[[], user_service.UserDetail]) -> User:
    """The caller's own user object from ``call``. A caller whose user no longer exists (deleted
    after the token was checked) holds credentials that identify nobody: 401, not 404."""
    try:
        return User.of(call())
    except NotFound:
        raise Unauthenticated("the access token is no longer valid", code="invalid_token") from None


def current_family() -> uuid.UUID | None:
    """The refresh-token family of the calling access token (its ``fam`` claim), if any."""
    credential = bearer_credential(request)
    if credential is None:
        return None
    try:
        claims = access_claims(credential)
    except Unauthenticated:
        return None  # another scheme's credential
    return claims.family_id


def send_verification(user_id: int, email: str) -> None:
    """Mail a new email-verification link. A failure is logged, not raised: the account exists
    and the user can ask for another link."""
    try:
        token = accounts.issue_email_token(make_uow(), user_id=user_id, purpose="verify_email")
        link = str(current_app.config["PUBLIC_URL"]).rstrip("/") + VERIFY_PATH + token
        mail.send(
            email,
            "Verify your email address",
            "Open this link to verify your email address for Portal:\n\n"
            f"{link}\n\nIf you did not ask for an account, ignore this message.",
        )
    except Exception:
        log.exception("could not send the verification email to user %s", user_id)


# -- rate limits --------------------------------------------------------------------------------
def _address() -> str:
    return request.remote_addr or "unknown"


def _email_digest() -> str:
    """A keyed digest of the account the email in the request body signs in to (its user id,
    or its canonical form for an unknown account), or "-" when there is none: limit keys name
    accounts without holding their addresses, and no spelling of one is a fresh bucket.
    Never raises: a key function that raised would make flask-limiter think its storage died."""
    try:
        request.max_content_length = current_app.config.get("API_MAX_BODY_BYTES", MAX_BODY_BYTES)
        data = request.get_json(silent=True)
        email = data.get("email") if isinstance(data, dict) else None
        if not isinstance(email, str) or not email.strip():
            return "-"
        return account_key(email)
    except Exception:
        return "-"


def _per_address() -> str:
    return f"sign-in-address:{_address()}"


def _per_account_and_address() -> str:
    return f"sign-in-account-address:{_email_digest()}|{_address()}"


def _per_account() -> str:
    return f"second-factor-account:{_email_digest()}"


def _sign_in_failed(_response: Response) -> bool:
    return bool(g.get("api_sign_in_failed"))


def _second_factor_failed(_response: Response) -> bool:
    return bool(g.get("api_second_factor_failed"))


def _sign_in_limits(view: Callable[..., Any]) -> Callable[..., Any]:
    limits = (
        limiter.limit(
            SIGN_IN_FAILURES_PER_ADDRESS, key_func=_per_address, deduct_when=_sign_in_failed
        ),
        limiter.limit(
            SIGN_IN_FAILURES_PER_ACCOUNT_AND_ADDRESS,
            key_func=_per_account_and_address,
            deduct_when=_sign_in_failed,
        ),
        limiter.limit(
            SECOND_FACTOR_FAILURES_PER_ACCOUNT,
            key_func=_per_account,
            deduct_when=_second_factor_failed,
        ),
    )
    for limit in limits:
        view = limit(view)
    return view


def _sign_up_limit(view: Callable[..., Any]) -> Callable[..., Any]:
    # Counts what costs something or tells something: an account made (and an email sent) or
    # an email found taken.
    return limiter.limit(
        SIGN_UPS_PER_ADDRESS,
        key_func=lambda: f"sign-up-address:{_address()}",
        deduct_when=lambda response: response.status_code in (201, 409),
    )(view)


# -- registration and tokens -------------------------------------------------------------------
class Registration(RequestBody):
    first_name: PersonName = Field(examples=["Ada"])
    last_name: PersonName = Field(examples=["Lovelace"])
    email: EmailAddress = Field(examples=["ada@example.com"])
    password: NewPassword
    password_confirmation: PasswordGiven = Field(
        description="The password again (`password_mismatch` when it differs)."
    )


class TokenRequest(RequestBody):
    email: str = Field(max_length=1024, examples=["ada@example.com"])
    password: str = Field(max_length=1024)
    totp_code: str | None = Field(
        None,
        max_length=64,
        description="The current code of the user's authenticator app, or one of their recovery "
        "codes. Required when the user has set up a second factor.",
    )


class RefreshRequest(RequestBody):
    refresh_token: str = Field(max_length=4096, description="The refresh token (prt_...).")


class Token(ApiModel):
    """An access token and the refresh token that renews it."""

    object: Literal["token"] = "token"
    access_token: str = Field(description="A JWT; send it as Authorization: Bearer <token>.")
    token_type: Literal["Bearer"] = "Bearer"  # noqa: S105 (the OAuth token type)
    expires_in: int = Field(description="Seconds until the access token expires.")
    refresh_token: str = Field(
        description="Single use: POST it to /auth/refresh for a new pair. Keep it secret."
    )

    @classmethod
    def of(cls, pair: tokens.TokenPair) -> Token:
        return cls(
            access_token=pair.access_token,
            expires_in=pair.expires_in,
            refresh_token=pair.refresh_token,
        )


@operation(
    bp,
    "POST",
    "/auth/register",
    summary="Sign up",
    tags=["auth"],
    auth="none",
    body=Registration,
    response=User,
    status=201,
    errors=(Conflict,),
    rate_limit=_sign_up_limit,
)
def register(body: Registration) -> User:
    """Create a cardholder account (email not yet verified) and email a verification link.
    409 `email_taken` when the email has an account. Sign-ups that create an account or find
    the email taken are limited per client address."""
    uow = make_uow()
    view = accounts.register(
        uow,
        email=body.email,
        first_name=body.first_name,
        last_name=body.last_name,
        password=body.password,
        password_confirmation=body.password_confirmation,
    )
    send_verification(view.id, view.email)
    return User.of(user_service.get_user(uow, actor=view.actor, user_id=view.id))


@operation(
    bp,
    "POST",
    "/auth/token",
    summary="Sign in: get an access token and a refresh token",
    tags=["auth"],
    auth="none",
    body=TokenRequest,
    response=Token,
    errors=(Unauthenticated,),
    rate_limit=_sign_in_limits,
    operation_id="create_token",
)
def create_token(body: TokenRequest) -> Token:
    """Check the email and password (and the second factor when the user has one) and start a
    new token family.

    - 401 `invalid_credentials`: wrong email or password, or an archived account (one answer
      for all, so it reveals nothing).
    - 401 `mfa_required`: the password is right and the user has a second factor: send
      `totp_code` too. 401 `mfa_code_invalid`: that code is wrong or used already.
    - 403 `mfa_enrolment_required`: staff must set up a second factor (on the account page)
      before they can get API tokens.
    - 429: too many failed attempts (per client address; per account and client address; wrong
      second-factor codes per account). Successful sign-ins are not counted. Retry after
      `Retry-After` seconds.
    """
    uow = make_uow()
    try:
        user = accounts.authenticate(uow, email=body.email, password=body.password)
    except InvalidCredentials:
        g.api_sign_in_failed = True
        raise
    if user.mfa_enabled:
        if not body.totp_code:
            raise Unauthenticated(
                "this account has a second factor: send totp_code with the code from your"
                " authenticator app (or a recovery code)",
                param="totp_code",
                code="mfa_required",
            )
        if not mfa.verify_second_factor(uow, user_id=user.id, code=body.totp_code):
            g.api_sign_in_failed = True
            g.api_second_factor_failed = True
            raise InvalidCredentials(
                "the second-factor code is not right, or was used already",
                param="totp_code",
                code="mfa_code_invalid",
            )
    pair = tokens.issue_tokens(
        uow, user_id=user.id, user_agent=(request.user_agent.string or "")[:255]
    )
    return Token.of(pair)


@operation(
    bp,
    "POST",
    "/auth/refresh",
    summary="Exchange a refresh token for a new pair",
    tags=["auth"],
    auth="none",
    body=RefreshRequest,
    response=Token,
    errors=(Unauthenticated,),
    operation_id="refresh_token",
)
def refresh_token(body: RefreshRequest) -> Token:
    """Rotate: the refresh token is spent and a new access token and refresh token come back.
    Presenting a spent refresh token again (after a short grace period for concurrent
    refreshes) is treated as theft: the whole family is revoked, its access tokens stop
    working, and the answer is 401. An access token is not a refresh token (401)."""
    return Token.of(tokens.refresh(make_uow(), refresh_token=body.refresh_token))


@operation(
    bp,
    "POST",
    "/auth/logout",
    summary="Sign out: revoke a refresh token's family",
    tags=["auth"],
    auth="none",
    body=RefreshRequest,
    status=204,
    errors=(Unauthenticated,),
    operation_id="logout",
)
def logout(body: RefreshRequest) -> None:
    """Revoke the family of this refresh token: it and every access token of the family stop
    working. Revoking a revoked family again is not an error; an unknown token is a 401."""
    tokens.logout(make_uow(), refresh_token=body.refresh_token)


@operation(
    bp,
    "GET",
    "/auth/me",
    summary="Who am I",
    tags=["auth"],
    response=User,
    operation_id="get_current_user",
)
def get_current_user(actor: Actor) -> User:
    """The user the access token belongs to, with roles and permissions."""
    return own_profile(lambda: user_service.get_profile(make_uow(), actor=actor))


# -- the caller's sessions and devices ---------------------------------------------------------
def _as_owner(actor: Actor) -> Actor:
    # /auth/sessions is about the caller's own sessions: without permissions, the services
    # answer 404 for anyone else's, even to staff (who use /users/{user_id}/sessions).
    return Actor.user(accounts.require_user(actor))


@operation(
    bp,
    "GET",
    "/auth/sessions",
    summary="List my sessions and devices",
    tags=["auth"],
    response=SessionList,
    operation_id="list_sessions",
)
def list_sessions(actor: Actor) -> SessionList:
    """The caller's live web sessions (`kind: web`) and API token families (`kind: api`); the
    family of the calling access token is marked `current`."""
    views = session_service.list_sessions(
        make_uow(), actor=_as_owner(actor), current_family_id=current_family()
    )
    return SessionList.of_views(views)


@operation(
    bp,
    "DELETE",
    "/auth/sessions/web/<session_id>",
    summary="Sign a browser out",
    tags=["auth"],
    status=204,
    operation_id="revoke_web_session",
    ids={"session_id": "session"},
)
def revoke_web_session(actor: Actor, session_id: str) -> None:
    """End one of the caller's web sessions (by its `ses_` id). 404 if it is not the
    caller's."""
    session_service.revoke_session(make_uow(), actor=_as_owner(actor), session_id=session_id)


@operation(
    bp,
    "DELETE",
    "/auth/sessions/api/<uuid:family_id>",
    summary="Revoke an API token family",
    tags=["auth"],
    status=204,
    operation_id="revoke_api_session",
)
def revoke_api_session(actor: Actor, family_id: uuid.UUID) -> None:
    """Revoke one of the caller's API token families: its refresh token and access tokens stop
    working (the calling one too, if it is that family). 404 if it is not the caller's."""
    session_service.revoke_family(make_uow(), actor=_as_owner(actor), family_id=family_id)


@operation(
    bp,
    "POST",
    "/auth/sessions/revoke-all",
    summary="Sign out everywhere",
    tags=["auth"],
    status=204,
    operation_id="revoke_all_sessions",
)
def revoke_all_sessions(actor: Actor) -> None:
    """Revoke every web session and every API token family of the caller, including the one
    making this call: sign in again afterwards."""
    session_service.revoke_all(make_uow(), actor=_as_owner(actor))
