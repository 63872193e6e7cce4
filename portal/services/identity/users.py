"""Users: creation (staff, the CLI, demo data and sign-up), staff administration and profiles.

Reading another user needs ``users:read`` and changing one needs ``users:manage``; anyone may
read their own profile and change their own names (their own email changes through the
identity flow, which verifies the new address). Two guard rails hold for every change:
nobody changes a user who holds a permission the actor lacks (so a custom role with
``users:manage`` cannot take over an administrator by changing their email), and the last
active administrator can be neither archived, deleted nor stripped of the admin role.

A user is named by :data:`~portal.services.shared.refs.Ref`: a public id from a request
(``usr_...``), resolved in the statement that loads or locks the user, or an internal id.
"Oneself" is told from either without a query (the actor carries both).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from confusable_homoglyphs import categories, confusables
from sqlalchemy.exc import IntegrityError

from portal.domain.errors import Conflict, Forbidden, InvalidInput, NotFound
from portal.domain.permissions import ADMIN_ROLE, ROLE_NAME, SELF_SERVICE_PERMISSIONS
from portal.domain.types import Actor, ActorKind
from portal.services.identity.credentials import revoke_credentials
from portal.services.identity.passwords import hash_password
from portal.services.shared import audit
from portal.services.shared.pagination import (
    Page,
    check_cursor,
    check_limit,
    like_pattern,
    newest_first,
)
from portal.services.shared.refs import Ref, ref_key
from portal.services.shared.uow import UnitOfWork

MAX_SEARCH = 254
#: The longest email address (RFC 5321's path limit), as typed and in its canonical form.
MAX_EMAIL_LENGTH = 254
#: A first or last name: 1 to 100 printable characters, after trimming.
MAX_NAME_LENGTH = 100


@dataclass(frozen=True, slots=True)
class UserCreated:
    id: int
    public_id: str
    email: str
    roles: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class UserSummary:
    """A user as lists show them. ``roles`` are the roles assigned (an archived one grants
    nothing; see ``UserDetail.permissions`` for what the user may do)."""

    id: int
    public_id: str
    email: str
    first_name: str
    last_name: str
    email_verified: bool
    mfa_enabled: bool
    roles: tuple[str, ...]
    archived: bool
    created_at: datetime


@dataclass(frozen=True, slots=True)
class UserDetail(UserSummary):
    """One user in full: also the permissions their live roles grant (none while archived)."""

    permissions: tuple[str, ...]
    updated_at: datetime
    archived_at: datetime | None


@dataclass(frozen=True, slots=True)
class UserDeleted:
    id: int
    public_id: str
    email: str


# -- input checks ----------------------------------------------------------------------------
def is_printable(text: str) -> bool:
    """No control characters or lone surrogates (PostgreSQL refuses NUL; UTF-8 refuses
    surrogates): such input is a 4xx, never a database error."""
    return not any(unicodedata.category(c) in ("Cc", "Cs") for c in text)


#: Invisible or meaningless in a name or an address: controls, format characters (zero-width
#: space, bidi overrides and isolates, soft hyphen, BOM...), surrogates, private use, unassigned.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn"})
_JOINERS = frozenset({"\u200c", "\u200d"})  # ZWNJ, ZWJ
#: Scripts that may share one identifier (UTS #39 "highly restrictive"): any single script, or
#: Latin with one of the CJK writing systems. Latin with Cyrillic or Greek is refused once the
#: library finds a confusable in it.
_SCRIPT_SETS = (
    frozenset({"LATIN", "HAN", "HIRAGANA", "KATAKANA"}),
    frozenset({"LATIN", "HAN", "BOPOMOFO"}),
    frozenset({"LATIN", "HAN", "HANGUL"}),
)


def _joiner_allowed(text: str, i: int) -> bool:
    """ZWNJ and ZWJ change how the text renders only after a virama (as IDNA's CONTEXTJ rule
    allows), or ZWNJ between two Arabic-script letters (Persian names): elsewhere they are
    invisible and refused."""
    before = text[i - 1] if i > 0 else ""
    after = text[i + 1] if i + 1 < len(text) else ""
    if before and unicodedata.combining(before) == 9:
        return True
    return (
        text[i] == "\u200c"
        and bool(before and after)
        and categories.alias(before) == categories.alias(after) == "ARABIC"
        and before.isalpha()
        and after.isalpha()
    )


def _invisible(text: str) -> bool:
    return any(
        unicodedata.category(c) in _REFUSED_CATEGORIES
        and not (c in _JOINERS and _joiner_allowed(text, i))
        for i, c in enumerate(text)
    )


def _look_alike(text: str) -> bool:
    """Mixed scripts with a character confusable with another script's (the Unicode
    confusables data, through confusable-homoglyphs): Cyrillic "А" in "Аlice"."""
    if not confusables.is_dangerous(text):
        return False
    scripts = {categories.alias(c) for c in text} - {"COMMON", "INHERITED"}
    return len(scripts) > 1 and not any(scripts <= allowed for allowed in _SCRIPT_SETS)


def canonical_email(email: str) -> str:
    """The one form of an address that names an account: NFKC, then full case folding. What
    ``users.email_canonical`` stores and every look-up and per-account limit uses (never
    ``str.lower`` or PostgreSQL's ``lower()``, which disagree: ``"İ".lower()`` is two code
    points, PostgreSQL's is ``i``). Checks nothing: see :func:`clean_email`."""
    return unicodedata.normalize("NFKC", email.strip()).casefold()


def clean_email(email: str, param: str = "email") -> str:
    """The address as it will be stored and shown (NFKC). Raises InvalidInput (on ``param``):
    malformed, too long, or holding invisible characters or mixed-script look-alikes."""
    raw = (email or "").strip() if isinstance(email, str) else ""
    if _invisible(raw):
        raise InvalidInput(
            "an email address cannot hold invisible or text-direction characters", param=param
        )
    email = unicodedata.normalize("NFKC", raw)
    local, _, domain = email.rpartition("@")
    if (
        not local
        or "." not in domain
        or len(email) > MAX_EMAIL_LENGTH
        or len(canonical_email(email)) > MAX_EMAIL_LENGTH
        or any(c.isspace() for c in email)
        or not is_printable(email)
    ):
        raise InvalidInput("enter a valid email address", param=param)
    if _look_alike(local) or _look_alike(domain):
        raise InvalidInput(
            "this email address mixes scripts with look-alike letters (such as a Cyrillic"
            ' "o" in a Latin address)', param=param,
        )  # fmt: skip
    return email


def _check_name(value: str, param: str, label: str) -> str:
    name = value.strip() if isinstance(value, str) else ""
    if not 1 <= len(name) <= MAX_NAME_LENGTH or not is_printable(name):
        raise InvalidInput(f"{label} is 1 to {MAX_NAME_LENGTH} printable characters", param=param)
    if _invisible(name):
        raise InvalidInput(
            f"{label} cannot hold invisible or text-direction characters", param=param
        )
    if _look_alike(name):
        raise InvalidInput(
            f"{label} mixes scripts with look-alike letters (such as a Cyrillic"
            ' "A" in a Latin name)', param=param,
        )  # fmt: skip
    return name


def name_problem(value: str) -> bool:
    """Whether a name (from a single-sign-on provider, say) would be refused."""
    try:
        _check_name(value, "name", "name")
    except InvalidInput:
        return True
    return False


def check_names(first_name: str, last_name: str) -> tuple[str, str]:
    return (
        _check_name(first_name, "first_name", "first name"),
        _check_name(last_name, "last_name", "last name"),
    )


# -- creation --------------------------------------------------------------------------------
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
    InvalidInput (unknown role), Conflict ("email_taken")."""
    found = u.execute(
        "SELECT id, name FROM roles WHERE name = ANY(:names) AND archived_at IS NULL",
        {"names": list(roles)},
    ).all()
    if len(found) != len(set(roles)):
        raise InvalidInput("unknown role", param="roles")
    try:
        with u.session.begin_nested():
            inserted = u.execute(
                "INSERT INTO users (email, email_canonical, password_hash, first_name, last_name,"
                " email_verified_at, created_at, updated_at)"
                " VALUES (:email, :canonical, :hash, :first, :last, :verified, :now, :now)"
                " RETURNING id, public_id",
                {"email": email, "canonical": canonical_email(email), "hash": password_hash,
                 "first": first_name, "last": last_name,
                 "verified": u.now() if verified else None, "now": u.now()},
            ).one()  # fmt: skip
    except IntegrityError as exc:
        raise Conflict(
            "an account with this email already exists", param="email", code="email_taken"
        ) from exc
    user_id = inserted.id
    if found:  # a user may start with no role at all
        u.execute(
            sa.text("INSERT INTO user_roles (user_id, role_id, created_at) VALUES (:u, :r, :now)"),
            [{"u": user_id, "r": r.id, "now": u.now()} for r in found],
        )
    audit.record(u, actor, "user.create", "user", user_id, data={"roles": sorted(roles)})
    return UserCreated(user_id, inserted.public_id, email, tuple(sorted(roles)))


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
    Conflict ("email_taken"), Forbidden (needs users:manage, and every permission the roles
    grant)."""
    require(actor, "users:manage")
    email = clean_email(email)
    first, last = check_names(first_name, last_name)
    password_hash = hash_password(password) if password else None

    def work(u: UnitOfWork) -> UserCreated:
        granted = u.execute(
            "SELECT DISTINCT p.name FROM roles r"
            " JOIN role_permissions rp ON rp.role_id = r.id"
            " JOIN permissions p ON p.id = rp.permission_id"
            " WHERE r.name = ANY(:names) AND r.archived_at IS NULL",
            {"names": list(roles)},
        ).scalars()
        check_no_escalation(actor, granted)
        return insert_user(
            u, actor, email=email, first_name=first, last_name=last,
            password_hash=password_hash, roles=roles, verified=verified,
        )  # fmt: skip

    return uow.run(work)


def actor_for(uow: UnitOfWork, user_id: int) -> Actor:
    """The actor of a user: their ids and the union of their live roles' permissions."""

    def work(u: UnitOfWork) -> Actor:
        row = u.execute(
            "SELECT usr.public_id, ARRAY(SELECT DISTINCT p.name FROM user_roles ur"
            " JOIN roles r ON r.id = ur.role_id AND r.archived_at IS NULL"
            " JOIN role_permissions rp ON rp.role_id = r.id"
            " JOIN permissions p ON p.id = rp.permission_id"
            " WHERE ur.user_id = usr.id AND usr.archived_at IS NULL) AS permissions"
            " FROM users usr WHERE usr.id = :id",
            {"id": user_id},
        ).first()
        if row is None:
            return Actor.user(user_id)
        return Actor.user(user_id, frozenset(row.permissions), public_id=row.public_id)

    return uow.run(work)


# -- guard rails shared with roles -----------------------------------------------------------
def require(actor: Actor, permission: str) -> None:
    """Raises Forbidden unless the actor holds ``permission``."""
    if not actor.can(permission):
        raise Forbidden(f"missing permission {permission}")


def require_for_other(actor: Actor, permission: str) -> None:
    """Acting on another user needs ``permission``. To a caller who may not even read users,
    the other user's existence is not revealed: NotFound, as for no such user; staff who may
    read users but not this get Forbidden."""
    if actor.can(permission):
        return
    if actor.can("users:read"):
        raise Forbidden(f"missing permission {permission}")
    raise NotFound("no such user", param="user_id")


def is_self(actor: Actor, user_id: Ref) -> bool:
    """Whether ``user_id`` (an internal or a public id) names the acting user."""
    if actor.kind != ActorKind.USER:
        return False
    if isinstance(user_id, str):
        return actor.public_id is not None and actor.public_id == user_id
    return actor.id == user_id


def user_key(user_id: Ref, param: str = "user_id") -> tuple[str, int | str]:
    """The column and value that find the user ``user_id`` names. Raises NotFound for a string
    that is not a user's public id, InvalidInput for an integer that is not an id."""
    key = ref_key("user", user_id)
    if key is None:
        if isinstance(user_id, str):
            raise NotFound("no such user", param=param)
        raise InvalidInput(f"{param} must be an object id", param=param)
    return key


def check_no_escalation(actor: Actor, permissions: Iterable[str]) -> None:
    """Raises Forbidden (code "privilege_escalation") unless the actor holds every one of
    ``permissions`` that reaches other people: nobody grants, or acts on a holder of, more
    than they hold themselves (self-service ones like wallet:use give no power over others)."""
    missing = sorted(
        p for p in set(permissions) if p not in SELF_SERVICE_PERMISSIONS and not actor.can(p)
    )
    if missing:
        raise Forbidden(
            "you cannot act beyond your own permissions (missing " + ", ".join(missing) + ")",
            code="privilege_escalation",
        )


def assigned_permissions(u: UnitOfWork, user_id: int) -> frozenset[str]:
    """What the user's live roles grant, archived or not (what a restore would give back)."""
    return frozenset(
        u.execute(
            "SELECT DISTINCT p.name FROM user_roles ur"
            " JOIN roles r ON r.id = ur.role_id AND r.archived_at IS NULL"
            " JOIN role_permissions rp ON rp.role_id = r.id"
            " JOIN permissions p ON p.id = rp.permission_id"
            " WHERE ur.user_id = :id",
            {"id": user_id},
        ).scalars()
    )


def check_not_last_admin(u: UnitOfWork, user_id: int) -> None:
    """Raises Conflict (code "last_admin") if the user is the only active administrator.

    Takes a lock on the admin role's row first, so that two administrators demoting,
    archiving or deleting each other at the same time cannot both pass the count.
    """
    admin = u.execute(
        "SELECT id FROM roles WHERE name = :admin FOR NO KEY UPDATE", {"admin": ADMIN_ROLE}
    ).first()
    if admin is None:
        return
    row = u.execute(
        "SELECT bool_or(ur.user_id = :id) AS holds, count(*) FILTER (WHERE ur.user_id <> :id)"
        " AS others FROM user_roles ur JOIN users usr ON usr.id = ur.user_id"
        " AND usr.archived_at IS NULL WHERE ur.role_id = :role",
        {"id": user_id, "role": admin.id},
    ).one()
    if row.holds and row.others == 0:
        raise Conflict("this is the last active administrator", param="user_id", code="last_admin")


# -- reading ---------------------------------------------------------------------------------
_SUMMARY_COLUMNS = (
    "u.id, u.public_id, u.email, u.first_name, u.last_name,"
    " u.email_verified_at IS NOT NULL AS email_verified,"
    " u.mfa_enabled_at IS NOT NULL AS mfa_enabled,"
    " ARRAY(SELECT r.name FROM user_roles ur JOIN roles r ON r.id = ur.role_id"
    "  WHERE ur.user_id = u.id ORDER BY r.name) AS roles,"
    " u.archived_at IS NOT NULL AS archived, u.created_at"
)
_DETAIL_COLUMNS = (
    _SUMMARY_COLUMNS + ", ARRAY(SELECT DISTINCT p.name FROM user_roles ur"  # nosec B608: constant column fragments
    " JOIN roles r ON r.id = ur.role_id AND r.archived_at IS NULL"
    " JOIN role_permissions rp ON rp.role_id = r.id"
    " JOIN permissions p ON p.id = rp.permission_id"
    " WHERE ur.user_id = u.id AND u.archived_at IS NULL ORDER BY p.name) AS permissions,"
    " u.updated_at, u.archived_at"
)


def _summary(row: sa.Row[Any]) -> UserSummary:
    m = row._mapping
    return UserSummary(
        id=m["id"], public_id=m["public_id"], email=m["email"], first_name=m["first_name"],
        last_name=m["last_name"],
        email_verified=m["email_verified"], mfa_enabled=m["mfa_enabled"],
        roles=tuple(m["roles"]), archived=m["archived"], created_at=m["created_at"],
    )  # fmt: skip


def load_user(u: UnitOfWork, user_id: Ref) -> UserDetail | None:
    """A user's detail inside an open transaction (no permission check); None when there is
    no such user."""
    key = ref_key("user", user_id)
    if key is None:
        return None
    column, value = key
    row = u.execute(f"SELECT {_DETAIL_COLUMNS} FROM users u WHERE u.{column} = :v", {"v": value})  # nosec B608: a constant column list; the column from ref_key; values bound
    found = row.first()
    if found is None:
        return None
    m = found._mapping
    return UserDetail(
        id=m["id"], public_id=m["public_id"], email=m["email"], first_name=m["first_name"],
        last_name=m["last_name"],
        email_verified=m["email_verified"], mfa_enabled=m["mfa_enabled"],
        roles=tuple(m["roles"]), archived=m["archived"], created_at=m["created_at"],
        permissions=tuple(m["permissions"]), updated_at=m["updated_at"],
        archived_at=m["archived_at"],
    )  # fmt: skip


def _lock_user(u: UnitOfWork, user_id: Ref, *, for_delete: bool = False) -> sa.Row[Any]:
    mode = "FOR UPDATE" if for_delete else "FOR NO KEY UPDATE"
    column, value = user_key(user_id)
    row = u.execute(
        f"SELECT id, public_id, email, first_name, last_name, archived_at FROM users"  # nosec B608: the column from user_key, a constant lock mode; values bound
        f" WHERE {column} = :v {mode}",
        {"v": value},
    ).first()
    if row is None:
        raise NotFound("no such user", param="user_id")
    return row


def _reload(u: UnitOfWork, user_id: int) -> UserDetail:
    detail = load_user(u, user_id)
    assert detail is not None  # locked by this transaction
    return detail


def list_users(
    uow: UnitOfWork,
    *,
    actor: Actor,
    limit: int | None = 10,
    starting_after: Ref | None = None,
    search: str | None = None,
    role: str | None = None,
    archived: bool | None = None,
) -> Page[UserSummary]:
    """Users, newest first; ``search`` matches email, first or last name (case-insensitive),
    ``role`` and ``archived`` filter. Raises Forbidden (needs users:read), InvalidInput
    (limit, starting_after, search, role, archived)."""
    require(actor, "users:read")
    size = check_limit(limit)
    after = check_cursor(starting_after, "user")
    where: list[str] = []
    params: dict[str, Any] = {}
    if search is not None:
        term = search.strip() if isinstance(search, str) else None
        if term is None or len(term) > MAX_SEARCH or not is_printable(term):
            raise InvalidInput(f"search is at most {MAX_SEARCH} characters", param="search")
        if term:
            where.append(
                "u.email ILIKE :pattern ESCAPE '\\' OR u.first_name ILIKE :pattern ESCAPE '\\'"
                " OR u.last_name ILIKE :pattern ESCAPE '\\'"
                " OR (u.first_name || ' ' || u.last_name) ILIKE :pattern ESCAPE '\\'"
            )
            params["pattern"] = like_pattern(term)
    if role is not None and (not isinstance(role, str) or not ROLE_NAME.fullmatch(role)):
        raise InvalidInput("unknown role", param="role", code="unknown_role")
    if archived is not None:
        if not isinstance(archived, bool):
            raise InvalidInput("archived is true or false", param="archived")
        where.append("u.archived_at IS NOT NULL" if archived else "u.archived_at IS NULL")

    def work(u: UnitOfWork) -> Page[UserSummary]:
        filters, bound = list(where), dict(params)
        if role is not None:
            role_id = u.execute("SELECT id FROM roles WHERE name = :n", {"n": role}).scalar()
            if role_id is None:
                raise InvalidInput("unknown role", param="role", code="unknown_role")
            filters.append(
                "EXISTS (SELECT 1 FROM user_roles ur WHERE ur.user_id = u.id"
                " AND ur.role_id = :role_id)"
            )
            bound["role_id"] = role_id
        return newest_first(
            u, select=f"SELECT {_SUMMARY_COLUMNS} FROM users u", table="users", alias="u",  # nosec B608: a constant column list
            convert=_summary, limit=size, starting_after=after, kind="user", where=filters,
            params=bound,
        )  # fmt: skip

    return uow.run(work)


def get_user(uow: UnitOfWork, *, actor: Actor, user_id: Ref) -> UserDetail:
    """One user (oneself, or anyone with users:read). Raises InvalidInput, Forbidden, NotFound."""
    if not is_self(actor, user_id):
        require_for_other(actor, "users:read")
    user_key(user_id)

    def work(u: UnitOfWork) -> UserDetail:
        detail = load_user(u, user_id)
        if detail is None:
            raise NotFound("no such user", param="user_id")
        return detail

    return uow.run(work)


def get_profile(uow: UnitOfWork, *, actor: Actor) -> UserDetail:
    """The acting user's own profile. Raises Forbidden (not a user), NotFound (deleted)."""
    if actor.kind != ActorKind.USER or actor.id is None:
        raise Forbidden("only a signed-in user has a profile")
    return get_user(uow, actor=actor, user_id=actor.id)


def mask_email(email: str) -> str:
    """An address with its local part masked, for showing to someone else:
    ``alice@portal.test`` -> ``a\u2022\u2022\u2022e@portal.test``."""
    local, _, domain = email.rpartition("@")
    dots = "\u2022\u2022\u2022"
    shown = local[:1] + dots + (local[-1:] if len(local) > 2 else "")
    return f"{shown}@{domain}"


# -- changes ---------------------------------------------------------------------------------
def update_user(
    uow: UnitOfWork,
    *,
    actor: Actor,
    user_id: Ref,
    first_name: str | None = None,
    last_name: str | None = None,
    email: str | None = None,
) -> UserDetail:
    """Change a user's names (oneself, or staff) or email (staff only; the new address is
    unverified and links mailed before are void). Raises InvalidInput, Forbidden (needs
    users:manage; code "email_change_requires_verification" for one's own email;
    "privilege_escalation"), NotFound, Conflict ("email_taken")."""
    own = is_self(actor, user_id)
    if not own:
        require_for_other(actor, "users:manage")
    user_key(user_id)
    first = None if first_name is None else _check_name(first_name, "first_name", "first name")
    last = None if last_name is None else _check_name(last_name, "last_name", "last name")
    new_email = None if email is None else clean_email(email)

    def work(u: UnitOfWork) -> UserDetail:
        current = _lock_user(u, user_id)
        uid = current.id
        # The actor may have named themselves by an id form it does not carry: check again.
        mine = own or is_self(actor, uid)
        if not mine:
            check_no_escalation(actor, assigned_permissions(u, uid))
        changes: dict[str, Any] = {}
        if first is not None and first != current.first_name:
            changes["first_name"] = first
        if last is not None and last != current.last_name:
            changes["last_name"] = last
        if new_email is not None and new_email != current.email:
            if mine:
                raise Forbidden(
                    "change your own email from your account page: the new address must be"
                    " verified", param="email", code="email_change_requires_verification",
                )  # fmt: skip
            changes["email"] = new_email
        if not changes:
            return _reload(u, uid)
        email = changes.get("email")
        try:
            with u.session.begin_nested():
                # One constant statement: a field not changed is bound as NULL and kept; a new
                # email is unverified.
                u.execute(
                    "UPDATE users SET first_name = COALESCE(CAST(:first AS text), first_name),"
                    " last_name = COALESCE(CAST(:last AS text), last_name),"
                    " email = COALESCE(CAST(:email AS text), email),"
                    " email_canonical = COALESCE(CAST(:canonical AS text), email_canonical),"
                    " email_verified_at = CASE WHEN CAST(:email AS text) IS NULL"
                    "   THEN email_verified_at END,"
                    " updated_at = :now WHERE id = :id",
                    {"first": changes.get("first_name"), "last": changes.get("last_name"),
                     "email": email, "canonical": None if email is None else canonical_email(email),
                     "now": u.now(), "id": uid},
                )  # fmt: skip
        except IntegrityError as exc:
            raise Conflict(
                "an account with this email already exists", param="email", code="email_taken"
            ) from exc
        data: dict[str, Any] = {"fields": sorted(changes)}
        before = {k: getattr(current, k) for k in changes}
        data.update(audit.diff(before, changes))  # {"email": {"from": ..., "to": ...}, ...}
        if "email" in changes:
            # Links mailed before the change (verify, reset, a pending email change) went to
            # the old address or would undo this one: none of them may be spent any more.
            u.execute(
                "DELETE FROM user_tokens WHERE user_id = :id AND used_at IS NULL", {"id": uid}
            )
        audit.record(u, actor, "user.update", "user", uid, data=data)
        return _reload(u, uid)

    return uow.run(work)


def update_profile(
    uow: UnitOfWork, *, actor: Actor, first_name: str | None = None, last_name: str | None = None
) -> UserDetail:
    """Change one's own names. Raises InvalidInput, Forbidden (not a user), NotFound."""
    if actor.kind != ActorKind.USER or actor.id is None:
        raise Forbidden("only a signed-in user has a profile")
    return update_user(
        uow, actor=actor, user_id=actor.id, first_name=first_name, last_name=last_name
    )


def _set_archived(uow: UnitOfWork, actor: Actor, user_id: Ref, archived: bool) -> UserDetail:
    if is_self(actor, user_id):
        require(actor, "users:manage")
    else:
        require_for_other(actor, "users:manage")
    user_key(user_id)
    if archived and is_self(actor, user_id):
        raise Forbidden("you cannot archive yourself", param="user_id", code="cannot_archive_self")

    def work(u: UnitOfWork) -> UserDetail:
        current = _lock_user(u, user_id)
        uid = current.id
        if archived and is_self(actor, uid):  # named by an id form the actor does not carry
            raise Forbidden(
                "you cannot archive yourself", param="user_id", code="cannot_archive_self"
            )
        check_no_escalation(actor, assigned_permissions(u, uid))
        if (current.archived_at is not None) == archived:
            return _reload(u, uid)
        if archived:
            check_not_last_admin(u, uid)
        u.execute(
            "UPDATE users SET archived_at = :at, updated_at = :now WHERE id = :id",
            {"at": u.now() if archived else None, "now": u.now(), "id": uid},
        )
        if archived:  # a later restore must not bring the old sessions and tokens back
            revoke_credentials(u, uid)
        audit.record(
            u, actor, "user.archive" if archived else "user.restore", "user", uid,
            data={"archived": {"from": not archived, "to": archived}},
        )  # fmt: skip
        return _reload(u, uid)

    return uow.run(work)


def archive_user(uow: UnitOfWork, *, actor: Actor, user_id: Ref) -> UserDetail:
    """Archive a user: they cannot sign in and their sessions and tokens stop working. Raises
    InvalidInput, Forbidden (users:manage; "cannot_archive_self", "privilege_escalation"),
    NotFound, Conflict ("last_admin")."""
    return _set_archived(uow, actor, user_id, True)


def restore_user(uow: UnitOfWork, *, actor: Actor, user_id: Ref) -> UserDetail:
    """Restore an archived user. Raises InvalidInput, Forbidden (users:manage;
    "privilege_escalation"), NotFound."""
    return _set_archived(uow, actor, user_id, False)


_HISTORY = (
    "SELECT EXISTS (SELECT 1 FROM cards WHERE user_id = :id)"
    " OR EXISTS (SELECT 1 FROM merchants WHERE user_id = :id OR reviewed_by_id = :id)"
    # A member of a merchant (or one who was: keys and invitations name who made them).
    " OR EXISTS (SELECT 1 FROM merchant_members WHERE user_id = :id)"
    " OR EXISTS (SELECT 1 FROM api_keys WHERE created_by_id = :id)"
    " OR EXISTS (SELECT 1 FROM merchant_invitations WHERE invited_by_id = :id)"
    " OR EXISTS (SELECT 1 FROM top_ups WHERE user_id = :id)"
    # Staff who moved money on others' cards are named by those records (no foreign key).
    " OR EXISTS (SELECT 1 FROM top_ups WHERE created_by_kind = 'user' AND created_by_id = :id)"
    " OR EXISTS (SELECT 1 FROM transfers WHERE created_by_kind = 'user' AND created_by_id = :id)"
    " OR EXISTS (SELECT 1 FROM withdrawals WHERE created_by_kind = 'user'"
    "  AND created_by_id = :id)"
    # Staff who requested or decided a balance adjustment (the four-eyes record names them).
    " OR EXISTS (SELECT 1 FROM adjustment_requests WHERE requested_by = :id OR decided_by = :id)"
)


def delete_user(uow: UnitOfWork, *, actor: Actor, user_id: Ref) -> UserDeleted:
    """Delete a user for good, with their role links, sessions, tokens, recovery codes and
    single-sign-on links (all ON DELETE CASCADE). Raises InvalidInput, Forbidden (users:manage;
    "cannot_delete_self", "privilege_escalation"), NotFound, Conflict ("user_has_history":
    cards, movements or a merchant; "last_admin")."""
    if is_self(actor, user_id):
        require(actor, "users:manage")
    else:
        require_for_other(actor, "users:manage")
    user_key(user_id)
    if is_self(actor, user_id):
        raise Forbidden("you cannot delete yourself", param="user_id", code="cannot_delete_self")

    def work(u: UnitOfWork) -> UserDeleted:
        current = _lock_user(u, user_id, for_delete=True)
        uid = current.id
        if is_self(actor, uid):  # named by an id form the actor does not carry
            raise Forbidden(
                "you cannot delete yourself", param="user_id", code="cannot_delete_self"
            )
        check_no_escalation(actor, assigned_permissions(u, uid))
        if u.execute(_HISTORY, {"id": uid}).scalar_one():
            raise Conflict(
                "this user has money history (cards, movements or a merchant): archive them"
                " instead", param="user_id", code="user_has_history",
            )  # fmt: skip
        check_not_last_admin(u, uid)
        roles = _reload(u, uid).roles
        u.execute("DELETE FROM users WHERE id = :id", {"id": uid})
        audit.record(
            u, actor, "user.delete", "user", uid,
            data={"email": current.email, "roles": list(roles)},
        )  # fmt: skip
        return UserDeleted(uid, current.public_id, current.email)

    return uow.run(work)
