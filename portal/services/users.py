"""Users and their roles (the parts the foundation needs; sign-up and sign-in build on it)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from portal.domain.errors import Conflict, Forbidden, InvalidInput
from portal.domain.types import Actor
from portal.services import audit
from portal.services.passwords import hash_password
from portal.services.uow import UnitOfWork


@dataclass(frozen=True, slots=True)
class UserCreated:
    id: int
    email: str
    roles: tuple[str, ...]


def clean_email(email: str) -> str:
    email = (email or "").strip()
    local, _, domain = email.rpartition("@")
    if not local or "." not in domain or len(email) > 254 or any(c.isspace() for c in email):
        raise InvalidInput("enter a valid email address", param="email")
    return email


def insert_user(
    u: UnitOfWork,
    actor: Actor,
    *,
    email: str,
    first_name: str,
    last_name: str,
    password_hash: str | None,
    roles: Sequence[str],
    verified: bool,
) -> UserCreated:
    """Insert a user with roles inside an open transaction (after input checks). Raises
    InvalidInput (unknown role), Conflict (email taken)."""
    found = u.execute(
        "SELECT id, name FROM roles WHERE name = ANY(:names) AND archived_at IS NULL",
        {"names": list(roles)},
    ).all()
    if len(found) != len(set(roles)):
        raise InvalidInput("unknown role", param="roles")
    try:
        with u.session.begin_nested():
            user_id = u.execute(
                "INSERT INTO users (email, password_hash, first_name, last_name,"
                " email_verified_at, created_at, updated_at)"
                " VALUES (:email, :hash, :first, :last, :verified, :now, :now) RETURNING id",
                {"email": email, "hash": password_hash, "first": first_name, "last": last_name,
                 "verified": u.now() if verified else None, "now": u.now()},
            ).scalar_one()  # fmt: skip
    except IntegrityError as exc:
        raise Conflict("an account with this email already exists", param="email") from exc
    u.execute(
        sa.text("INSERT INTO user_roles (user_id, role_id, created_at) VALUES (:u, :r, :now)"),
        [{"u": user_id, "r": r.id, "now": u.now()} for r in found],
    )
    audit.record(u, actor, "user.create", "user", user_id, data={"roles": sorted(roles)})
    return UserCreated(user_id, email, tuple(sorted(roles)))


def check_names(first_name: str, last_name: str) -> tuple[str, str]:
    first, last = first_name.strip(), last_name.strip()
    if not 1 <= len(first) <= 100:
        raise InvalidInput("first name is 1 to 100 characters", param="first_name")
    if not 1 <= len(last) <= 100:
        raise InvalidInput("last name is 1 to 100 characters", param="last_name")
    return first, last


def create_user(
    uow: UnitOfWork,
    *,
    actor: Actor,
    email: str,
    first_name: str,
    last_name: str,
    password: str | None = None,
    roles: Sequence[str] = ("cardholder",),
    verified: bool = False,
) -> UserCreated:
    """Create a user with the given roles (staff, the CLI and demo data). Raises InvalidInput,
    Conflict (email taken), Forbidden (needs users:manage)."""
    if not actor.can("users:manage"):
        raise Forbidden("missing permission users:manage")
    email = clean_email(email)
    first, last = check_names(first_name, last_name)
    password_hash = hash_password(password) if password else None
    return uow.run(
        lambda u: insert_user(
            u,
            actor,
            email=email,
            first_name=first,
            last_name=last,
            password_hash=password_hash,
            roles=roles,
            verified=verified,
        )  # fmt: skip
    )


def actor_for(uow: UnitOfWork, user_id: int) -> Actor:
    """The actor of a user: their id and the union of their live roles' permissions."""

    def work(u: UnitOfWork) -> Actor:
        perms = u.execute(
            "SELECT DISTINCT p.name FROM user_roles ur"
            " JOIN roles r ON r.id = ur.role_id AND r.archived_at IS NULL"
            " JOIN role_permissions rp ON rp.role_id = r.id"
            " JOIN permissions p ON p.id = rp.permission_id"
            " JOIN users usr ON usr.id = ur.user_id AND usr.archived_at IS NULL"
            " WHERE ur.user_id = :id",
            {"id": user_id},
        ).scalars()
        return Actor.user(user_id, frozenset(perms))

    return uow.run(work)
