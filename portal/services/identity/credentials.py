"""Revoking a user's credentials: shared by sign-in changes, session management and archiving."""

from __future__ import annotations

import uuid

from portal.services.shared.uow import UnitOfWork


def revoke_credentials(
    u: UnitOfWork,
    user_id: int,
    *,
    except_session_id: int | None = None,
    except_family_id: uuid.UUID | None = None,
) -> None:
    """Inside an open transaction: revoke every web session of a user (but one, if named) and
    every refresh-token family (but one, if named: the API caller's own). Locks the families
    now; the revocations are deferred (sent with the transaction's next statement)."""
    # "IS DISTINCT FROM NULL" holds for every row: nothing is spared when none is named.
    u.defer(
        "UPDATE web_sessions SET revoked_at = :now WHERE user_id = :user_id"
        " AND revoked_at IS NULL AND id IS DISTINCT FROM CAST(:keep AS bigint)",
        now=u.now(),
        user_id=user_id,
        keep=except_session_id,
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
        " AND revoked_at IS NULL AND family_id IS DISTINCT FROM CAST(:family AS uuid)",
        now=u.now(),
        user_id=user_id,
        family=except_family_id,
    )
