"""Users: one's own profile (``/users/me``) and staff administration of users, their roles and
their sessions. The services decide who may do what (oneself, ``users:read``,
``users:manage``, ``roles:manage``, and their guard rails); a single permission that gates a
whole route is also declared on the operation, so it is checked before the body and
documented."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

from flask import Response, current_app, g, request
from pydantic import Field, field_validator

from portal.api import bp
from portal.api.auth import (
    VERIFY_PATH,
    SessionList,
    Timestamp,
    User,
    current_family,
    own_profile,
    send_verification,
)
from portal.api.operation import operation
from portal.api.pagination import ListQuery, ListResponse, cursor_field
from portal.api.schemas import (
    ApiModel,
    EmailAddress,
    NewPassword,
    PasswordGiven,
    PersonName,
    RequestBody,
    UserId,
)
from portal.api.security import bearer_credential
from portal.domain.errors import Conflict, InvalidInput, NotFound
from portal.domain.ids import is_public_id
from portal.domain.permissions import ROLE_NAME
from portal.domain.types import Actor
from portal.extensions import limiter
from portal.services.identity import accounts
from portal.services.identity import roles as role_service
from portal.services.identity import sessions as session_service
from portal.services.identity import users as user_service
from portal.web import mail
from portal.web.auth import access_claims
from portal.web.uow import make_uow

log = logging.getLogger("portal.api")

T = TypeVar("T")

#: Wrong current passwords given to change the password or the email, per user (the access
#: token's), both operations together: a stolen access token must not become a way to guess
#: the password. Only failures count.
REAUTH_FAILURES_PER_USER = "5 per minute; 20 per hour"
#: Email-change requests per client address, every attempt counted (each one that passes mails
#: the new address): the account page's limit (AUTH_LIMIT_EMAIL_ADDRESS's default).
EMAIL_CHANGES_PER_ADDRESS = "10 per minute; 50 per hour"
#: Email-change requests that mail a link, per user.
EMAIL_CHANGE_MAILS_PER_USER = "5 per hour"
#: The page a mailed notice points to when the change was not the user's doing.
FORGOT_PATH = "/auth/forgot"

#: What a permission name looks like (``users:read``); anything else names none.
PERMISSION_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}:[a-z][a-z0-9_-]{0,31}$")


#: A path's user id.
USER_ID = {"user_id": "user"}


def role_ref(role: str) -> str:
    """A role named in a path, by its public id (``rol_...``) or by its name. Raises NotFound
    for text that can name neither (no role name has the shape of a role id)."""
    if is_public_id("role", role) or ROLE_NAME.fullmatch(role):
        return role
    raise NotFound("no such role", param="role")


def permission_ref(permission: str) -> str:
    """A permission named in a path. Raises InvalidInput (``unknown_permission``, as the
    services do for a name they do not know) for text that cannot name one."""
    if not PERMISSION_NAME.fullmatch(permission):
        raise InvalidInput("unknown permission", param="permission", code="unknown_permission")
    return permission


def renamed(call: Callable[[], T], params: dict[str, str]) -> T:
    """Run ``call``, naming a refused parameter as the API does where a service names it
    otherwise."""
    try:
        return call()
    except InvalidInput as exc:
        if exc.param in params:
            exc.param = params[exc.param]
        raise


# -- objects ------------------------------------------------------------------------------------
class UserSummary(ApiModel):
    """A user as lists show them; retrieve the user for their permissions."""

    id: UserId
    object: Literal["user"] = "user"
    email: str
    first_name: str
    last_name: str
    email_verified: bool
    mfa_enabled: bool
    roles: list[str] = Field(description="Roles assigned; an archived role grants nothing.")
    archived: bool
    created_at: Timestamp

    @classmethod
    def of(cls, user: user_service.UserSummary) -> UserSummary:
        return cls(
            id=user.public_id,
            email=user.email,
            first_name=user.first_name,
            last_name=user.last_name,
            email_verified=user.email_verified,
            mfa_enabled=user.mfa_enabled,
            roles=list(user.roles),
            archived=user.archived,
            created_at=user.created_at,
        )


class UserList(ListResponse[UserSummary]):
    """One page of users, newest first."""


class DeletedUser(ApiModel):
    """A user deleted for good."""

    id: UserId
    object: Literal["user"] = "user"
    deleted: Literal[True] = True


class UserListQuery(ListQuery):
    starting_after: str | None = cursor_field("user")
    q: str | None = Field(
        None,
        max_length=254,
        description="Search: part of the email, first name, last name or full name "
        "(case-insensitive).",
    )
    role: str | None = Field(None, max_length=32, description="Only users holding this role.")
    archived: bool = Field(
        False, description="true: archived users only; false (the default): active users only."
    )

    @field_validator("q")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        if value is not None and not user_service.is_printable(value):
            raise ValueError("control characters are not allowed")
        return value


class NewUser(RequestBody):
    email: EmailAddress = Field(examples=["grace@example.com"])
    first_name: PersonName
    last_name: PersonName
    roles: list[Annotated[str, Field(max_length=32)]] = Field(
        default_factory=lambda: ["cardholder"],
        max_length=10,
        description="Role names. Granting a role needs every permission it grants.",
    )


class ProfileUpdate(RequestBody):
    first_name: PersonName | None = None
    last_name: PersonName | None = None


class PasswordChange(RequestBody):
    current_password: PasswordGiven = Field(description="The password now (`wrong_password`).")
    password: NewPassword
    password_confirmation: PasswordGiven = Field(
        description="The new password again (`password_mismatch` when it differs)."
    )


class EmailChangeRequest(RequestBody):
    current_password: PasswordGiven = Field(description="The password now (`wrong_password`).")
    new_email: EmailAddress = Field(
        examples=["ada@example.org"],
        description=f"At most {user_service.MAX_EMAIL_LENGTH} characters; no invisible or "
        "text-direction characters, no mixed-script look-alikes (a Cyrillic `о` in a Latin "
        "address). Compared with other accounts' addresses in canonical form (NFKC, case "
        "folded): `email_taken` when one has it, `email_unchanged` when it is the caller's.",
    )


class EmailChange(ApiModel):
    """An email change waiting for its link: the account keeps `email` (and its verification
    state) until the link mailed to `new_email` is opened, which makes `new_email` the
    account's verified address."""

    object: Literal["email_change"] = "email_change"
    email: str = Field(description="The account's address: unchanged for now.")
    new_email: str = Field(description="Where the verification link went (as it will be stored).")
    status: Literal["pending_verification"] = "pending_verification"
    expires_in: int = Field(description="Seconds until the link stops working.")


class UserUpdate(ProfileUpdate):
    email: EmailAddress | None = Field(
        None,
        description="Staff only. The new address is unverified and every emailed link is void.",
    )


# -- one's own profile --------------------------------------------------------------------------
@operation(
    bp,
    "GET",
    "/users/me",
    summary="My profile",
    tags=["users"],
    response=User,
    operation_id="get_profile",
)
def get_profile(actor: Actor) -> User:
    """The caller's own user object (the same as GET /auth/me)."""
    return own_profile(lambda: user_service.get_profile(make_uow(), actor=actor))


@operation(
    bp,
    "PATCH",
    "/users/me",
    summary="Change my names",
    tags=["users"],
    body=ProfileUpdate,
    response=User,
    operation_id="update_profile",
)
def update_profile(body: ProfileUpdate, actor: Actor) -> User:
    """Change one's own first and last name (a field left out stays as it is). The email
    changes through POST /users/me/email, which verifies the new address."""
    return own_profile(
        lambda: user_service.update_profile(
            make_uow(), actor=actor, first_name=body.first_name, last_name=body.last_name
        )
    )


# -- one's own password and email ---------------------------------------------------------------
def _token_user() -> str:
    """The calling user's id from the access token, or "-". Never raises: a key function that
    raised would make flask-limiter think its storage died."""
    try:
        credential = bearer_credential(request)
        if credential is None:
            return "-"
        claims = access_claims(credential)
        return str(claims.user_id)
    except Exception:
        return "-"


def _reauth_failed(_response: Response) -> bool:
    return bool(g.get("api_reauth_failed"))


_reauth_limit = limiter.shared_limit(
    REAUTH_FAILURES_PER_USER,
    scope="api-reauth-user",
    key_func=lambda: f"reauth-user:{_token_user()}",
    deduct_when=_reauth_failed,
)


def _email_change_limits(view: Callable[..., Any]) -> Callable[..., Any]:
    view = _reauth_limit(view)
    view = limiter.limit(
        EMAIL_CHANGE_MAILS_PER_USER,
        key_func=lambda: f"email-change-user:{_token_user()}",
        deduct_when=lambda response: response.status_code == 202,
    )(view)
    return limiter.limit(
        EMAIL_CHANGES_PER_ADDRESS,
        key_func=lambda: f"email-change-address:{request.remote_addr or 'unknown'}",
    )(view)


def _reauthenticated(call: Callable[[], T], params: dict[str, str] | None = None) -> T:
    """Run ``call``, marking a wrong current password for the limit (and naming the parameter
    as the API does)."""
    try:
        return call()
    except InvalidInput as exc:
        if exc.code == "wrong_password":
            g.api_reauth_failed = True
        if params and exc.param in params:
            exc.param = params[exc.param]
        raise


def _send(to: str, subject: str, body: str) -> None:
    """Mail after the change committed; a failure is logged, not raised (the change stands)."""
    try:
        mail.send(to, subject, body)
    except Exception:
        log.exception("could not send %r to %s", subject, to)


def _public_url(path: str) -> str:
    return str(current_app.config["PUBLIC_URL"]).rstrip("/") + path


def _notify(user: accounts.UserView, subject: str, text: str) -> None:
    _send(
        user.email,
        subject,
        f"Hello {user.first_name},\n\n{text}\n\n"
        f"If this was not you, reset your password at once: {_public_url(FORGOT_PATH)}\n",
    )


@operation(
    bp,
    "POST",
    "/users/me/password",
    summary="Change my password",
    tags=["users"],
    body=PasswordChange,
    status=204,
    rate_limit=_reauth_limit,
    operation_id="change_password",
)
def change_password(body: PasswordChange, actor: Actor) -> None:
    """Change one's own password, as the account page does: the current password is required,
    and the new one follows the sign-up rules. Every other web session and every other API
    token family of the user is revoked (their refresh and access tokens stop working); the
    calling token's family stays signed in. A notice is mailed to the account's address.

    - 422 `wrong_password` (`param` `current_password`): changes nothing. A wrong current
      password counts against a limit per user (5 a minute, 20 an hour, shared with
      POST /users/me/email): past it, 429 with `Retry-After`, whatever the password.
    - 422 `password_too_short`, `password_too_long`, `password_too_common`,
      `password_too_personal` (`param` `password`); `password_mismatch`
      (`param` `password_confirmation`).
    """
    _reauthenticated(
        lambda: accounts.change_password(
            make_uow(), actor=actor, current_password=body.current_password,
            password=body.password, password_confirmation=body.password_confirmation,
            keep_family_id=current_family(),
        )
    )  # fmt: skip
    user = accounts.get_user_view(make_uow(), accounts.require_user(actor))
    _notify(
        user,
        "Your Portal password was changed",
        "The password of your Portal account was changed, and every other session was signed out.",
    )


@operation(
    bp,
    "POST",
    "/users/me/email",
    summary="Change my email address",
    tags=["users"],
    body=EmailChangeRequest,
    response=EmailChange,
    status=202,
    errors=(Conflict,),
    rate_limit=_email_change_limits,
    operation_id="change_email",
)
def change_email(body: EmailChangeRequest, actor: Actor) -> EmailChange:
    """Start changing one's own email, as the account page does: the current password is
    required, the new address is checked as at sign-up, and a link is mailed to it. Nothing
    changes until that link is opened (on the verification page): then the new address
    replaces the old one, verified, and every link mailed before stops working. Until then the
    account keeps its address. A notice goes to the current address; asking again replaces the
    earlier link.

    - 422 `parameter_invalid` (`param` `new_email`): malformed, or holding invisible,
      text-direction or mixed-script look-alike characters; `email_unchanged`: the caller's own
      address (in any spelling).
    - 409 `email_taken` (`param` `new_email`): another account has this address (compared in
      canonical form).
    - 422 `wrong_password` (`param` `current_password`): counts against the per-user limit
      shared with POST /users/me/password (5 a minute, 20 an hour).
    - 429: that limit; or 10 requests a minute and 50 an hour per client address; or 5 links a
      hour per user.
    """
    token = _reauthenticated(
        lambda: accounts.request_email_change(
            make_uow(), actor=actor, password=body.current_password, new_email=body.new_email
        ),
        {"password": "current_password"},
    )
    user = accounts.get_user_view(make_uow(), accounts.require_user(actor))
    new_email = user_service.clean_email(body.new_email, param="new_email")
    minutes = int(current_app.config["SERVICE_SETTINGS"].email_token_minutes)
    _send(
        new_email,
        "Confirm your new email address for Portal",
        f"Hello {user.first_name},\n\nTo make this your Portal email address, open this "
        f"link:\n\n{_public_url(VERIFY_PATH + token)}\n\nThe link works once and expires "
        f"in {minutes} minutes. Until you open it, your account keeps its current address. "
        "If you did not ask for this, ignore this message.\n",
    )
    _notify(
        user,
        "Your Portal email address is changing",
        f"Someone asked to change the email address of your Portal account to {new_email}. "
        "It changes only once the link sent there is opened.",
    )
    return EmailChange(email=user.email, new_email=new_email, expires_in=minutes * 60)


# -- administration -----------------------------------------------------------------------------
@operation(
    bp,
    "GET",
    "/users",
    summary="List users",
    tags=["users"],
    permission="users:read",
    query=UserListQuery,
    response=UserList,
    operation_id="list_users",
)
def list_users(query: UserListQuery, actor: Actor) -> UserList:
    """Users, newest first, with search (`q`) and filters (`role`; `archived=true` for the
    archived ones, hidden otherwise)."""
    page = renamed(
        lambda: user_service.list_users(
            make_uow(), actor=actor, limit=query.limit, starting_after=query.starting_after,
            search=query.q, role=query.role, archived=query.archived,
        ),
        {"search": "q"},
    )  # fmt: skip
    return UserList.of(page, UserSummary.of)


@operation(
    bp,
    "POST",
    "/users",
    summary="Create a user",
    tags=["users"],
    permission="users:manage",
    body=NewUser,
    response=User,
    status=201,
    errors=(Conflict,),
    operation_id="create_user",
)
def create_user(body: NewUser, actor: Actor) -> User:
    """Create a user with the given roles (by default `cardholder`) and email them a
    verification link. They have no password yet: they set one through "forgot password",
    which also verifies the email. Granting roles needs every permission the roles grant.
    409 `email_taken`."""
    uow = make_uow()
    created = user_service.create_user(
        uow, actor=actor, email=body.email, first_name=body.first_name,
        last_name=body.last_name, roles=body.roles,
    )  # fmt: skip
    send_verification(created.id, created.email)
    # Read without a permission check: creating needs users:manage, which need not come with
    # users:read, and the creator may see what they just made.
    detail = uow.run(lambda u: user_service.load_user(u, created.id))
    if detail is None:  # deleted in between
        raise NotFound("no such user", param="user_id")
    return User.of(detail)


@operation(
    bp,
    "GET",
    "/users/<user_id>",
    summary="Retrieve a user",
    tags=["users"],
    response=User,
    operation_id="get_user",
    ids=USER_ID,
)
def get_user(user_id: str, actor: Actor) -> User:
    """One user: oneself, or anyone with `users:read`."""
    return User.of(user_service.get_user(make_uow(), actor=actor, user_id=user_id))


@operation(
    bp,
    "PATCH",
    "/users/<user_id>",
    summary="Update a user",
    tags=["users"],
    body=UserUpdate,
    response=User,
    errors=(Conflict,),
    operation_id="update_user",
    ids=USER_ID,
)
def update_user(user_id: str, body: UserUpdate, actor: Actor) -> User:
    """Change a user's names (oneself, or with `users:manage`) or email (with `users:manage`
    only: the new address is unverified). Nobody changes a user who holds a permission they
    lack (403 `privilege_escalation`). 409 `email_taken`."""
    detail = user_service.update_user(
        make_uow(), actor=actor, user_id=user_id, first_name=body.first_name,
        last_name=body.last_name, email=body.email,
    )  # fmt: skip
    return User.of(detail)


@operation(
    bp,
    "POST",
    "/users/<user_id>/archive",
    summary="Archive a user",
    tags=["users"],
    permission="users:manage",
    response=User,
    errors=(Conflict,),
    operation_id="archive_user",
    ids=USER_ID,
)
def archive_user(user_id: str, actor: Actor) -> User:
    """The user can no longer sign in, and their sessions and tokens stop working at their
    next request; they are revoked too, so a restore does not bring them back. 403
    `cannot_archive_self`; 409 `last_admin`."""
    return User.of(user_service.archive_user(make_uow(), actor=actor, user_id=user_id))


@operation(
    bp,
    "POST",
    "/users/<user_id>/restore",
    summary="Restore an archived user",
    tags=["users"],
    permission="users:manage",
    response=User,
    operation_id="restore_user",
    ids=USER_ID,
)
def restore_user(user_id: str, actor: Actor) -> User:
    """The user can sign in again (their sessions and tokens from before the archive stay
    revoked)."""
    return User.of(user_service.restore_user(make_uow(), actor=actor, user_id=user_id))


@operation(
    bp,
    "DELETE",
    "/users/<user_id>",
    summary="Delete a user for good",
    tags=["users"],
    permission="users:manage",
    response=DeletedUser,
    errors=(Conflict,),
    operation_id="delete_user",
    ids=USER_ID,
)
def delete_user(user_id: str, actor: Actor) -> DeletedUser:
    """Only for users with no money history: 409 `user_has_history` for one who has cards,
    movements or a merchant (archive them instead). 403 `cannot_delete_self`; 409
    `last_admin`."""
    deleted = user_service.delete_user(make_uow(), actor=actor, user_id=user_id)
    return DeletedUser(id=deleted.public_id)


@operation(
    bp,
    "PUT",
    "/users/<user_id>/roles/<role>",
    summary="Give a user a role",
    tags=["users"],
    permission="roles:manage",
    response=User,
    errors=(Conflict,),
    operation_id="assign_role",
    ids=USER_ID,
)
def assign_role(user_id: str, role: str, actor: Actor) -> User:
    """Give the user the role (named by name or by its `rol_` id); giving a role they hold
    changes nothing. Nobody changes their own roles (403 `cannot_change_own_roles`) or grants
    more than they hold (403 `privilege_escalation`). 409 `role_archived`."""
    detail = role_service.assign_role(make_uow(), actor=actor, user_id=user_id, role=role_ref(role))
    return User.of(detail)


@operation(
    bp,
    "DELETE",
    "/users/<user_id>/roles/<role>",
    summary="Take a role from a user",
    tags=["users"],
    permission="roles:manage",
    response=User,
    errors=(Conflict,),
    operation_id="remove_role",
    ids=USER_ID,
)
def remove_role(user_id: str, role: str, actor: Actor) -> User:
    """Take the role (named by name or by its `rol_` id) from the user; taking one they do not
    hold changes nothing. 409 `last_admin`: the last active administrator keeps the admin
    role."""
    detail = role_service.remove_role(make_uow(), actor=actor, user_id=user_id, role=role_ref(role))
    return User.of(detail)


# -- a user's sessions --------------------------------------------------------------------------
def _live_session_ids(actor: Actor, user_id: str) -> set[tuple[str, str]]:
    views = session_service.list_sessions(make_uow(), actor=actor, user_id=user_id)
    return {(v.kind, v.public_id) for v in views}


@operation(
    bp,
    "GET",
    "/users/<user_id>/sessions",
    summary="List a user's sessions and devices",
    tags=["users"],
    response=SessionList,
    operation_id="list_user_sessions",
    ids=USER_ID,
)
def list_user_sessions(user_id: str, actor: Actor) -> SessionList:
    """The user's live web sessions and API token families (oneself, or with `users:read`;
    404 otherwise)."""
    views = session_service.list_sessions(
        make_uow(), actor=actor, user_id=user_id, current_family_id=current_family()
    )
    return SessionList.of_views(views)


@operation(
    bp,
    "DELETE",
    "/users/<user_id>/sessions/web/<session_id>",
    summary="Sign a user's browser out",
    tags=["users"],
    permission="users:manage",
    status=204,
    operation_id="revoke_user_web_session",
    ids={**USER_ID, "session_id": "session"},
)
def revoke_user_web_session(user_id: str, session_id: str, actor: Actor) -> None:
    """End one live web session of the user (this needs `users:read` too, to find it). 404 if
    it is not a live session of this user."""
    if ("web", session_id) not in _live_session_ids(actor, user_id):
        raise NotFound("no such session", param="session_id")
    session_service.revoke_session(make_uow(), actor=actor, session_id=session_id)


@operation(
    bp,
    "DELETE",
    "/users/<user_id>/sessions/api/<uuid:family_id>",
    summary="Revoke a user's API token family",
    tags=["users"],
    permission="users:manage",
    status=204,
    operation_id="revoke_user_api_session",
    ids=USER_ID,
)
def revoke_user_api_session(user_id: str, family_id: uuid.UUID, actor: Actor) -> None:
    """Revoke one live API token family of the user (this needs `users:read` too, to find it).
    404 if it is not a live family of this user."""
    if ("api", str(family_id)) not in _live_session_ids(actor, user_id):
        raise NotFound("no such session", param="family_id")
    session_service.revoke_family(make_uow(), actor=actor, family_id=family_id)


@operation(
    bp,
    "POST",
    "/users/<user_id>/sessions/revoke-all",
    summary="Sign a user out everywhere",
    tags=["users"],
    permission="users:manage",
    status=204,
    operation_id="revoke_all_user_sessions",
    ids=USER_ID,
)
def revoke_all_user_sessions(user_id: str, actor: Actor) -> None:
    """Revoke every web session and API token family of the user."""
    session_service.revoke_all(make_uow(), actor=actor, user_id=user_id)
