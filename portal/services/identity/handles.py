"""Handles: the ``@name`` a person chooses so others can pay them without knowing their email.

A handle is kept as written (NFKC, without the "@": ``handle``) and found by its canonical form
(NFKC, then full case folding: ``handle_canonical``, unique), as emails are. What a handle may
hold follows names (``services.identity.users``): no invisible or text-direction characters, no
mixed scripts with look-alike letters (a Cyrillic "а" in a Latin handle), and further only
letters, marks, digits, "_" and "." (not first or last, never two together), 3 to 30 characters.
A few handles that could pass for Portal itself are reserved.
"""

from __future__ import annotations

import unicodedata

from sqlalchemy.exc import IntegrityError

from portal.domain.errors import InvalidInput
from portal.domain.types import Actor
from portal.services.identity.accounts import require_user
from portal.services.identity.users import _invisible, _look_alike
from portal.services.shared import audit
from portal.services.shared.uow import UnitOfWork

MIN_LENGTH = 3
MAX_LENGTH = 30
#: Handle changes per user (pages and API together; callers rate-limit).
CHANGES_PER_USER = "10 per hour"
#: Could pass for the service or its staff.
RESERVED = frozenset({"admin", "administrator", "portal", "support", "staff", "help", "root",
                      "security", "system", "billing", "payments", "wallet", "me"})  # fmt: skip
_PUNCTUATION = frozenset("_.")


def canonical_handle(handle: str) -> str:
    """The one form of a handle that names a person: "@" and spaces trimmed, NFKC, then full
    case folding (never ``str.lower``). Checks nothing: see :func:`clean_handle`."""
    return unicodedata.normalize("NFKC", handle.strip().removeprefix("@")).casefold()


def _allowed(c: str) -> bool:
    return unicodedata.category(c)[0] in "LMN" or c in _PUNCTUATION


def clean_handle(handle: str, param: str = "handle") -> str:
    """The handle as it will be stored and shown (NFKC, without the "@"). Raises InvalidInput
    (on ``param``) naming what is wrong."""
    raw = handle.strip().removeprefix("@") if isinstance(handle, str) else ""
    if _invisible(raw):
        raise InvalidInput(
            "a handle cannot hold invisible or text-direction characters", param=param,
            code="invalid_handle",
        )  # fmt: skip
    text = unicodedata.normalize("NFKC", raw)
    canonical = canonical_handle(text)
    if not MIN_LENGTH <= len(text) <= MAX_LENGTH or len(canonical) > 2 * MAX_LENGTH:
        raise InvalidInput(
            f"a handle is {MIN_LENGTH} to {MAX_LENGTH} characters", param=param,
            code="invalid_handle",
        )  # fmt: skip
    if (
        not all(_allowed(c) for c in text)
        or text[0] in _PUNCTUATION
        or text[-1] in _PUNCTUATION
        or ".." in text
        or "__" in text
        or unicodedata.category(text[0])[0] == "M"
    ):
        raise InvalidInput(
            'a handle holds letters, digits, "_" and "." only (not first or last, not two'
            " together)", param=param, code="invalid_handle",
        )  # fmt: skip
    if _look_alike(text):
        raise InvalidInput(
            "this handle mixes scripts with look-alike letters (such as a Cyrillic"
            ' "а" in a Latin handle)', param=param, code="invalid_handle",
        )  # fmt: skip
    if canonical in RESERVED:
        raise InvalidInput("this handle is reserved", param=param, code="handle_taken")
    return text


def get_handle(uow: UnitOfWork, *, actor: Actor) -> str | None:
    """The actor's handle (without "@"), or None. Raises Unauthenticated."""
    user_id = require_user(actor)
    return uow.run(
        lambda u: u.execute("SELECT handle FROM users WHERE id = :id", {"id": user_id}).scalar()
    )


def set_handle(uow: UnitOfWork, *, actor: Actor, handle: str | None) -> str | None:
    """Choose (or, with None or "", remove) one's own handle; returns it as stored. Raises
    Unauthenticated, InvalidInput (``invalid_handle``; ``handle_taken`` when someone else's
    handle has the same canonical form, or it is reserved)."""
    user_id = require_user(actor)
    wanted = clean_handle(handle) if handle and handle.strip().removeprefix("@") else None
    canonical = canonical_handle(wanted) if wanted is not None else None

    def work(u: UnitOfWork) -> str | None:
        taken = u.execute(
            "SELECT 1 FROM users WHERE handle_canonical = :c AND id <> :id",
            {"c": canonical, "id": user_id},
        ).first()
        if taken is not None:
            raise InvalidInput(
                "this handle is taken: choose another", param="handle", code="handle_taken"
            )
        before = u.execute(
            "SELECT handle FROM users WHERE id = :id FOR NO KEY UPDATE", {"id": user_id}
        ).scalar()
        if before == wanted:
            return wanted
        try:
            with u.session.begin_nested():
                u.execute(
                    "UPDATE users SET handle = :h, handle_canonical = :c, updated_at = :now"
                    " WHERE id = :id",
                    {"h": wanted, "c": canonical, "now": u.now(), "id": user_id},
                )
        except IntegrityError as exc:  # a concurrent claim of the same canonical form
            if "uq_users_handle_canonical" not in str(exc):
                raise
            raise InvalidInput(
                "this handle is taken: choose another", param="handle", code="handle_taken"
            ) from None
        audit.record(u, actor, "user.handle", "user", user_id,
                     data={"before": before, "after": wanted})  # fmt: skip
        return wanted

    return uow.run(work)
