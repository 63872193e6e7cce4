"""Enrolment codes: an administrator makes the one-time code a staff member needs, with their
password, to set up their first second factor (``portal create-admin`` prints the first
administrator's). The service decides who may (``users:manage``, every permission the user
holds, never for oneself)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from portal.api import bp
from portal.api.auth import Timestamp
from portal.api.operation import operation
from portal.api.schemas import ApiModel, UserId
from portal.domain.types import Actor
from portal.services.identity import mfa
from portal.web.uow import make_uow


class MfaEnrolmentCode(ApiModel):
    """A one-time enrolment code, shown only in this answer (only its hash is kept)."""

    object: Literal["mfa_enrolment_code"] = "mfa_enrolment_code"
    user: UserId
    email: str
    code: str = Field(
        description="Give it to the user by a channel other than email; it works once, with "
        "their password, on the two-step verification page.",
        examples=["7k3qm-x9c2d-h4p8r-w2n6t-b5v1z"],
    )
    expires_at: Timestamp


@operation(
    bp,
    "POST",
    "/users/<user_id>/mfa_enrolment_codes",
    summary="Make a second-factor enrolment code",
    tags=["users"],
    permission="users:manage",
    response=MfaEnrolmentCode,
    status=201,
    operation_id="create_mfa_enrolment_code",
    ids={"user_id": "user"},
)
def create_mfa_enrolment_code(user_id: str, actor: Actor) -> MfaEnrolmentCode:
    """Staff (admin or support) without a second factor cannot set one up with their password
    alone: they also need this code. It is valid 24 hours and replaces any unused code the user
    had; making it is audited. 403 `cannot_enrol_self` for one's own account (another
    administrator makes it); 400 `mfa_already_enabled` or `user_archived`."""
    issued = mfa.issue_enrolment_code(make_uow(), actor=actor, user_id=user_id)
    return MfaEnrolmentCode(
        user=issued.user_public_id, email=issued.email, code=issued.code,
        expires_at=issued.expires_at,
    )  # fmt: skip
