"""Revoking a user's credentials: shared by sign-in changes, session management and archiving."""

from __future__ import annotations

from typing import Any

from portal.services.shared.uow import UnitOfWork


def revoke_credentials(
    u: UnitOfWork, user_id: int, *, except_session_id: int | None = None
) -> None:
    """Inside an open transaction: revoke every web session of a user (but one, if named) and
    every refresh-token family. Locks the families now; the revocations are deferred (sent with
    the transaction's next statement)."""
    keep = "" if except_session_id is None else " AND id <> :keep"
    params: dict[str, Any] = {"now": u.now(), "user_id": user_id}
    if except_session_id is not None:
        params["keep"] = except_session_id
    u.defer(
        "UPDATE web_sessions SET revoked_at = :now"
        f" WHERE user_id = :user_id AND revoked_at IS NULL{keep}",
        **params,
    )
    # Lock every family's first token, as refresh() does, so a refresh in flight finishes
    # first and the revocation then sees (and revokes) the token it issued.
    u.execute(
        "SELECT id FROM refresh_tokens WHERE user_id = :user_id AND parent_id IS NULL"
        " ORDER BY id FOR UPDATE",
        {"user_id": user_id},
    )
    u.defer(
        "UPDATE refresh_tokens SET revoked_at = :now WHERE user_id = :user_id"
        " AND revoked_at IS NULL",
        now=u.now(),
        user_id=user_id,
    )
