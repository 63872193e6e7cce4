"""Merchant accounts: applications, staff decisions, members and invitations, and who may do
what in a merchant.

A signed-in user applies (``apply``); staff approve or reject the application, and later suspend,
reactivate, archive and restore the merchant. Only an ``active``, unarchived merchant takes
payments, and its keys stop the moment it is suspended or archived (the key check reads the
merchant's status every time). Approval opens the merchant's balance account in its settlement
currency.

Members: ``owner`` (everything, including the team), ``developer`` (keys, payments, refunds) and
``viewer`` (read only). API keys act for their merchant only, within their scopes.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from portal.domain.errors import Conflict, Forbidden, InvalidInput, NotFound, UnexpectedState
from portal.domain.ids import is_public_id
from portal.domain.money import Money, MoneyError
from portal.domain.types import Actor, ActorKind
from portal.services.identity.users import canonical_email, clean_email, is_printable
from portal.services.shared import audit
from portal.services.shared.pagination import Page, like_pattern, page_of
from portal.services.shared.uow import UnitOfWork

ROLES = ("owner", "developer", "viewer")
#: What each member role may do; API keys get theirs from their scopes.
ROLE_ABILITIES: dict[str, frozenset[str]] = {
    "owner": frozenset(
        {"read", "payments:write", "refunds:write", "keys", "team", "payouts", "bank"}
    ),
    "developer": frozenset({"read", "payments:write", "refunds:write", "keys"}),
    "viewer": frozenset({"read"}),
}
#: API key scopes and the ability each grants.
SCOPE_ABILITIES: dict[str, str] = {
    "payments:read": "read",
    "payments:write": "payments:write",
    "refunds:write": "refunds:write",
    "webhooks:manage": "webhooks",
    "payouts:write": "payouts",
}
STATUSES = ("pending", "active", "rejected", "suspended")
INVITATION_DAYS = 7


@dataclass(frozen=True, slots=True)
class MerchantView:
    id: int
    public_id: str
    name: str
    website: str
    contact_email: str
    settlement_currency: str
    status: str
    status_reason: str
    fee_bps: int
    fee_fixed: dict[str, int]
    owner_id: int
    created_at: datetime
    reviewed_at: datetime | None
    archived_at: datetime | None

    @property
    def can_take_payments(self) -> bool:
        return self.status == "active" and self.archived_at is None

    @property
    def state(self) -> str:
        """What staff see: the status, or ``archived``."""
        return "archived" if self.archived_at is not None else self.status


@dataclass(frozen=True, slots=True)
class Membership:
    """A user's place in a merchant (or a key's, with ``role`` None)."""

    merchant: MerchantView
    role: str | None
    abilities: frozenset[str]

    def can(self, ability: str) -> bool:
        return ability in self.abilities


@dataclass(frozen=True, slots=True)
class Member:
    public_id: str
    user_id: int
    user_public_id: str
    email: str
    name: str
    role: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Invitation:
    public_id: str
    email: str
    role: str
    created_at: datetime
    expires_at: datetime
    #: The link's secret: only in the result of ``invite_member``, never stored.
    token: str | None = None


_MERCHANT_COLUMNS = (
    "m.id, m.public_id, m.name, m.website, m.contact_email, m.settlement_currency, m.status,"
    " m.status_reason, m.fee_bps, m.fee_fixed, m.user_id, m.created_at, m.reviewed_at,"
    " m.archived_at"
)


def merchant_view(uow: UnitOfWork, row: Any) -> MerchantView:
    """A merchants row as a view, with the default fees filled in."""
    fixed = dict(uow.settings.fee_fixed)
    fixed.update(row.fee_fixed or {})
    return MerchantView(
        id=row.id, public_id=row.public_id, name=row.name, website=row.website,
        contact_email=row.contact_email, settlement_currency=row.settlement_currency,
        status=row.status, status_reason=row.status_reason,
        fee_bps=uow.settings.fee_bps if row.fee_bps is None else row.fee_bps, fee_fixed=fixed,
        owner_id=row.user_id, created_at=row.created_at, reviewed_at=row.reviewed_at,
        archived_at=row.archived_at,
    )  # fmt: skip


# -- checks ---------------------------------------------------------------------------------
def _text(value: str, param: str, *, low: int, high: int) -> str:
    value = (value or "").strip()
    if not low <= len(value) <= high or not is_printable(value):
        raise InvalidInput(f"{param.replace('_', ' ')} is {low} to {high} characters", param=param)
    return value


def check_url(url: str, param: str, *, allow_loopback_http: bool) -> str:
    """An absolute https URL (http only to a loopback host, in development). Raises
    InvalidInput naming ``param``."""
    url = (url or "").strip()
    if len(url) > 2048 or not is_printable(url) or any(c.isspace() for c in url):
        raise InvalidInput(f"{param} must be a URL of at most 2048 characters", param=param)
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    loopback = host in ("localhost", "127.0.0.1", "::1") or host.startswith("127.")
    if not host or parts.username or parts.password:
        raise InvalidInput(f"{param} must be an absolute https URL", param=param)
    if parts.scheme == "https" or (parts.scheme == "http" and loopback and allow_loopback_http):
        return url
    raise InvalidInput(f"{param} must be an absolute https URL", param=param)


def _currency(code: str) -> str:
    try:
        return Money(0, code).currency
    except MoneyError as exc:
        raise InvalidInput(str(exc), param="settlement_currency") from None


def _require_staff(actor: Actor, permission: str) -> None:
    if not actor.can(permission):
        raise Forbidden(f"missing permission {permission}")


# -- reading --------------------------------------------------------------------------------
def _load(uow: UnitOfWork, where: str, params: dict[str, Any], *, lock: bool = False) -> Any:
    return uow.execute(
        f"SELECT {_MERCHANT_COLUMNS} FROM merchants m WHERE {where}"  # nosec B608
        + (" FOR UPDATE" if lock else ""),
        params,
    ).first()


def merchant_ref(uow: UnitOfWork, merchant: str | int) -> Any:
    """The merchant named by public id or internal id, or NotFound."""
    if isinstance(merchant, int):
        row = _load(uow, "m.id = :id", {"id": merchant})
    elif is_public_id("merchant", merchant):
        row = _load(uow, "m.public_id = :id", {"id": merchant})
    else:
        row = None
    if row is None:
        raise NotFound("no such merchant", param="merchant")
    return row


def access(uow: UnitOfWork, actor: Actor, merchant: str | int, ability: str) -> Membership:
    """What ``actor`` may do in ``merchant`` (public or internal id), checked for ``ability``:
    a member by role, an API key by its merchant and scopes, staff with ``merchants:read`` may
    read. Raises NotFound (not a member: the merchant is not theirs to know), Forbidden."""
    row = merchant_ref(uow, merchant)
    view = merchant_view(uow, row)
    if actor.kind == ActorKind.MERCHANT:
        if actor.id != view.id:
            raise NotFound("no such merchant", param="merchant")
        abilities = frozenset(SCOPE_ABILITIES[s] for s in actor.permissions if s in SCOPE_ABILITIES)
        role = None
    else:
        role = uow.execute(
            "SELECT role FROM merchant_members WHERE merchant_id = :m AND user_id = :u",
            {"m": view.id, "u": actor.id},
        ).scalar()
        if role is not None:
            abilities = ROLE_ABILITIES[role]
        elif actor.can("merchants:read") or actor.can("merchants:manage"):
            abilities = frozenset({"read"})
        else:
            raise NotFound("no such merchant", param="merchant")
    membership = Membership(view, role, abilities)
    if not membership.can(ability):
        raise Forbidden(f"your role in {view.name} does not allow this", code="permission_denied")
    return membership


def get_merchant(uow: UnitOfWork, *, actor: Actor, merchant: str | int) -> Membership:
    """The merchant and the actor's place in it. Raises NotFound."""
    return uow.run(lambda u: access(u, actor, merchant, "read"))


def merchants_of(uow: UnitOfWork, *, actor: Actor) -> list[Membership]:
    """The merchants ``actor`` (a user) is a member of, oldest first, with pending ones."""

    def work(u: UnitOfWork) -> list[Membership]:
        rows = u.execute(
            f"SELECT {_MERCHANT_COLUMNS}, mm.role FROM merchants m"  # nosec B608
            " JOIN merchant_members mm ON mm.merchant_id = m.id WHERE mm.user_id = :u"
            " ORDER BY m.created_at, m.id",
            {"u": actor.id},
        ).all()
        return [Membership(merchant_view(u, r), r.role, ROLE_ABILITIES[r.role]) for r in rows]

    return uow.run(work)


def list_merchants(
    uow: UnitOfWork,
    *,
    actor: Actor,
    state: str | None = None,
    search: str | None = None,
    limit: int = 50,
    starting_after: str | None = None,
) -> Page[MerchantView]:
    """Every merchant, newest first, for staff (``merchants:read``); ``state`` is a status or
    ``archived``. Raises Forbidden, InvalidInput."""
    if not (actor.can("merchants:read") or actor.can("merchants:manage")):
        raise Forbidden("missing permission merchants:read")
    if state is not None and state not in (*STATUSES, "archived"):
        raise InvalidInput("unknown state", param="state")

    def work(u: UnitOfWork) -> Page[MerchantView]:
        where: list[str] = []
        params: dict[str, Any] = {}
        if state == "archived":
            where.append("m.archived_at IS NOT NULL")
        elif state is not None:
            where.append("m.status = :state AND m.archived_at IS NULL")
            params["state"] = state
        if search:
            where.append("(m.name ILIKE :q OR m.contact_email ILIKE :q OR m.website ILIKE :q)")
            params["q"] = like_pattern(search.strip()[:100])
        if starting_after is not None:
            try:
                cursor = merchant_ref(u, starting_after)
            except NotFound:
                raise InvalidInput(
                    "starting_after is not a known object id", param="starting_after"
                ) from None
            where.append("(m.created_at, m.id) < (:after_at, :after_id)")
            params.update(after_at=cursor.created_at, after_id=cursor.id)
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        rows = u.execute(
            f"SELECT {_MERCHANT_COLUMNS} FROM merchants m{clause}"  # nosec B608
            " ORDER BY m.created_at DESC, m.id DESC LIMIT :limit",
            {**params, "limit": limit + 1},
        ).all()
        return page_of([merchant_view(u, r) for r in rows], limit)

    return uow.run(work)


def page_after(
    uow: UnitOfWork,
    *,
    table: str,
    alias: str,
    kind: str,
    starting_after: str | None,
    merchant_id: int,
    where: list[str],
    params: dict[str, Any],
) -> None:
    """Add to ``where`` and ``params`` the keyset condition of the page after the merchant's
    object ``starting_after`` (a public id of ``kind`` in ``table``), newest first. Raises
    InvalidInput (param "starting_after") when it names none of the merchant's objects."""
    if starting_after is None:
        return
    row = None
    if is_public_id(kind, starting_after):
        row = uow.execute(
            f"SELECT created_at, id FROM {table} WHERE public_id = :id AND merchant_id = :m",  # nosec B608
            {"id": starting_after, "m": merchant_id},
        ).first()
    if row is None:
        raise InvalidInput("starting_after is not a known object id", param="starting_after")
    where.append(f"({alias}.created_at, {alias}.id) < (:after_at, :after_id)")
    params.update(after_at=row.created_at, after_id=row.id)


# -- applying and staff decisions -------------------------------------------------------------
def apply(
    uow: UnitOfWork,
    *,
    actor: Actor,
    name: str,
    website: str,
    contact_email: str,
    settlement_currency: str,
) -> MerchantView:
    """Apply for a merchant account (pending until staff decide); the applicant becomes its
    owner. Raises InvalidInput, Forbidden."""
    if actor.kind != ActorKind.USER or actor.id is None:
        raise Forbidden("only a signed-in person can apply for a merchant account")
    name = _text(name, "name", low=2, high=120)
    website = check_url(website, "website", allow_loopback_http=False)
    if len(website) > 255:
        raise InvalidInput("website is at most 255 characters", param="website")
    try:
        email = clean_email(contact_email).lower()
    except InvalidInput as exc:
        exc.param = "contact_email"
        raise
    currency = _currency(settlement_currency)
    if uow.settings.limits_for(currency, "payment") is None:
        raise InvalidInput(f"payments in {currency} are not supported", param="settlement_currency")

    def work(u: UnitOfWork) -> MerchantView:
        open_ = u.execute(
            "SELECT count(*) FROM merchants WHERE user_id = :u AND status = 'pending'"
            " AND archived_at IS NULL",
            {"u": actor.id},
        ).scalar_one()
        if open_ >= 3:
            raise InvalidInput(
                "you have three applications waiting already", code="too_many_applications"
            )
        row = u.execute(
            "INSERT INTO merchants (user_id, name, website, contact_email, settlement_currency,"  # nosec B608
            " created_at, updated_at) VALUES (:u, :name, :web, :email, :cur, :now, :now)"
            f" RETURNING {_MERCHANT_COLUMNS.replace('m.', '')}",
            {"u": actor.id, "name": name, "web": website, "email": email, "cur": currency,
             "now": u.now()},
        ).one()  # fmt: skip
        u.execute(
            "INSERT INTO merchant_members (merchant_id, user_id, role, created_at)"
            " VALUES (:m, :u, 'owner', :now)",
            {"m": row.id, "u": actor.id, "now": u.now()},
        )
        audit.record(u, actor, "merchant.apply", "merchant", row.id, data={"name": name})
        return merchant_view(u, row)

    return uow.run(work)


#: Staff action -> (statuses it applies to, new status or None for archive/restore).
_DECISIONS: dict[str, tuple[tuple[str, ...], str | None]] = {
    "approve": (("pending",), "active"),
    "reject": (("pending",), "rejected"),
    "suspend": (("active",), "suspended"),
    "reactivate": (("suspended",), "active"),
    "archive": (STATUSES, None),
    "restore": (STATUSES, None),
}


def decide(
    uow: UnitOfWork, *, actor: Actor, merchant: str | int, action: str, reason: str = ""
) -> MerchantView:
    """A staff decision (``merchants:manage``): approve, reject, suspend, reactivate, archive or
    restore. Approving opens the merchant's balance account. Raises Forbidden, NotFound,
    UnexpectedState, InvalidInput."""
    _require_staff(actor, "merchants:manage")
    if action not in _DECISIONS:
        raise InvalidInput("unknown action", param="action")
    reason = (reason or "").strip()
    if len(reason) > 255 or not is_printable(reason):
        raise InvalidInput("reason is at most 255 characters", param="reason")

    def work(u: UnitOfWork) -> MerchantView:
        ref = merchant_ref(u, merchant)
        row = _load(u, "m.id = :id", {"id": ref.id}, lock=True)
        allowed, new_status = _DECISIONS[action]
        archived = row.archived_at is not None
        if (
            row.status not in allowed
            or (action == "archive" and archived)
            or (action == "restore" and not archived)
            or (action not in ("archive", "restore") and archived)
        ):
            state = "archived" if archived else row.status
            raise UnexpectedState(
                f"cannot {action} a merchant that is {state}", code="merchant_unexpected_state"
            )
        now = u.now()
        if action == "archive":
            sets = "archived_at = :now"
        elif action == "restore":
            sets = "archived_at = NULL"
        else:
            sets = (
                "status = :status, status_reason = :reason, reviewed_by_id = :by,"
                " reviewed_at = :now"
            )
        updated = u.execute(
            f"UPDATE merchants SET {sets}, updated_at = :now WHERE id = :id"  # nosec B608
            f" RETURNING {_MERCHANT_COLUMNS.replace('m.', '')}",
            {"now": now, "status": new_status, "reason": reason, "by": actor.id, "id": row.id},
        ).one()
        if action == "approve":
            open_balance_account(u, row.id, row.settlement_currency)
        audit.record(
            u, actor, f"merchant.{action}", "merchant", row.id,
            data={"before": "archived" if archived else row.status, "reason": reason},
        )  # fmt: skip
        return merchant_view(u, updated)

    return uow.run(work)


def open_balance_account(uow: UnitOfWork, merchant_id: int, currency: str) -> None:
    """Make sure the merchant has a balance account in ``currency`` (idempotent)."""
    uow.execute(
        "INSERT INTO accounts (kind, merchant_id, currency, posted_minor, pending_debits_minor,"
        " created_at) VALUES ('merchant', :m, :cur, 0, 0, :now)"
        " ON CONFLICT (merchant_id, currency) DO NOTHING",
        {"m": merchant_id, "cur": currency, "now": uow.now()},
    )


# -- team -----------------------------------------------------------------------------------
def list_members(uow: UnitOfWork, *, actor: Actor, merchant: str | int) -> list[Member]:
    """The merchant's members, owners first. Raises NotFound, Forbidden."""

    def work(u: UnitOfWork) -> list[Member]:
        m = access(u, actor, merchant, "read").merchant
        rows = u.execute(
            "SELECT mm.public_id, mm.user_id, u.public_id AS user_public_id, u.email,"
            " u.first_name || ' ' || u.last_name AS name, mm.role, mm.created_at"
            " FROM merchant_members mm JOIN users u ON u.id = mm.user_id"
            " WHERE mm.merchant_id = :m ORDER BY array_position(ARRAY['owner','developer',"
            "'viewer']::text[], mm.role::text), mm.created_at",
            {"m": m.id},
        ).all()
        return [Member(**r._mapping) for r in rows]

    return uow.run(work)


def list_invitations(uow: UnitOfWork, *, actor: Actor, merchant: str | int) -> list[Invitation]:
    """Open invitations, newest first. Raises NotFound, Forbidden."""

    def work(u: UnitOfWork) -> list[Invitation]:
        m = access(u, actor, merchant, "team").merchant
        rows = u.execute(
            "SELECT public_id, email, role, created_at, expires_at FROM merchant_invitations"
            " WHERE merchant_id = :m AND accepted_at IS NULL AND revoked_at IS NULL"
            " AND expires_at > :now ORDER BY created_at DESC",
            {"m": m.id, "now": u.now()},
        ).all()
        return [Invitation(**r._mapping) for r in rows]

    return uow.run(work)


def _token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def invite_member(
    uow: UnitOfWork, *, actor: Actor, merchant: str | int, email: str, role: str
) -> Invitation:
    """Invite someone by email (owners only); the result carries the link's token, to be mailed
    and never shown again. Raises NotFound, Forbidden, InvalidInput, Conflict."""
    # Invitations name the account's canonical address (as sign-in and accepting compare it).
    address = canonical_email(clean_email(email))
    if role not in ROLES:
        raise InvalidInput("role must be owner, developer or viewer", param="role")

    def work(u: UnitOfWork) -> Invitation:
        m = access(u, actor, merchant, "team").merchant
        member = u.execute(
            "SELECT 1 FROM merchant_members mm JOIN users us ON us.id = mm.user_id"
            " WHERE mm.merchant_id = :m AND us.email_canonical = :email",
            {"m": m.id, "email": address},
        ).first()
        if member is not None:
            raise Conflict("that person is a member already", param="email", code="already_member")
        now = u.now()
        u.execute(
            "UPDATE merchant_invitations SET revoked_at = :now WHERE merchant_id = :m"
            " AND email = :email AND accepted_at IS NULL AND revoked_at IS NULL",
            {"now": now, "m": m.id, "email": address},
        )
        token = secrets.token_urlsafe(32)
        row = u.execute(
            "INSERT INTO merchant_invitations (merchant_id, email, role, token_hash,"
            " invited_by_id, created_at, expires_at) VALUES (:m, :email, :role, :hash, :by,"
            " :now, :expires) RETURNING public_id, email, role, created_at, expires_at",
            {"m": m.id, "email": address, "role": role, "hash": _token_hash(token),
             "by": actor.id, "now": now, "expires": now + timedelta(days=INVITATION_DAYS)},
        ).one()  # fmt: skip
        audit.record(u, actor, "merchant.invite", "merchant", m.id, data={"role": role})
        return Invitation(**row._mapping, token=token)

    return uow.run(work)


def revoke_invitation(
    uow: UnitOfWork, *, actor: Actor, merchant: str | int, invitation: str
) -> None:
    """Withdraw an open invitation. Raises NotFound, Forbidden."""

    def work(u: UnitOfWork) -> None:
        m = access(u, actor, merchant, "team").merchant
        done = u.execute(
            "UPDATE merchant_invitations SET revoked_at = :now WHERE merchant_id = :m"
            " AND public_id = :id AND accepted_at IS NULL AND revoked_at IS NULL RETURNING id",
            {"now": u.now(), "m": m.id, "id": invitation},
        ).first()
        if done is None:
            raise NotFound("no such invitation", param="invitation")
        audit.record(u, actor, "merchant.invitation_revoke", "merchant", m.id)

    uow.run(work)


def accept_invitation(uow: UnitOfWork, *, actor: Actor, token: str) -> Membership:
    """Join the merchant an invitation names, as the signed-in user it was sent to. Raises
    NotFound (unknown, used, revoked or expired link, or another address)."""

    def work(u: UnitOfWork) -> Membership:
        row = u.execute(
            "SELECT i.id, i.merchant_id, i.role, i.email FROM merchant_invitations i"
            " WHERE i.token_hash = :hash AND i.accepted_at IS NULL AND i.revoked_at IS NULL"
            " AND i.expires_at > :now FOR UPDATE",
            {"hash": _token_hash(token or ""), "now": u.now()},
        ).first()
        email = u.execute("SELECT email_canonical FROM users WHERE id=:u", {"u": actor.id}).scalar()
        if row is None or email != row.email:
            raise NotFound("this invitation is not valid (used, withdrawn, expired, or for"
                           " another address)", param="token")  # fmt: skip
        u.execute(
            "INSERT INTO merchant_members (merchant_id, user_id, role, created_at)"
            " VALUES (:m, :u, :role, :now) ON CONFLICT (merchant_id, user_id) DO NOTHING",
            {"m": row.merchant_id, "u": actor.id, "role": row.role, "now": u.now()},
        )
        u.execute(
            "UPDATE merchant_invitations SET accepted_at = :now WHERE id = :id",
            {"now": u.now(), "id": row.id},
        )
        audit.record(
            u, actor, "merchant.join", "merchant", row.merchant_id, data={"role": row.role}
        )
        return access(u, actor, row.merchant_id, "read")

    return uow.run(work)


def remove_member(uow: UnitOfWork, *, actor: Actor, merchant: str | int, member: str) -> None:
    """Remove a member (owners only); the last owner stays. Raises NotFound, Forbidden,
    UnexpectedState."""

    def work(u: UnitOfWork) -> None:
        m = access(u, actor, merchant, "team").merchant
        rows = u.execute(
            "SELECT public_id, user_id, role FROM merchant_members WHERE merchant_id = :m"
            " ORDER BY id FOR UPDATE",
            {"m": m.id},
        ).all()
        target = next((r for r in rows if r.public_id == member), None)
        if target is None:
            raise NotFound("no such member", param="member")
        if target.role == "owner" and sum(r.role == "owner" for r in rows) == 1:
            raise UnexpectedState("a merchant keeps at least one owner", code="last_owner")
        u.execute(
            "DELETE FROM merchant_members WHERE merchant_id = :m AND public_id = :id",
            {"m": m.id, "id": member},
        )
        audit.record(
            u, actor, "merchant.member_remove", "merchant", m.id,
            data={"user_id": target.user_id, "role": target.role},
        )  # fmt: skip

    uow.run(work)


def change_member_role(
    uow: UnitOfWork, *, actor: Actor, merchant: str | int, member: str, role: str
) -> None:
    """Give a member another role (owners only); the last owner stays. Raises NotFound,
    Forbidden, InvalidInput, UnexpectedState."""
    if role not in ROLES:
        raise InvalidInput("role must be owner, developer or viewer", param="role")

    def work(u: UnitOfWork) -> None:
        m = access(u, actor, merchant, "team").merchant
        rows = u.execute(
            "SELECT public_id, role FROM merchant_members WHERE merchant_id = :m"
            " ORDER BY id FOR UPDATE",
            {"m": m.id},
        ).all()
        target = next((r for r in rows if r.public_id == member), None)
        if target is None:
            raise NotFound("no such member", param="member")
        owners = sum(r.role == "owner" for r in rows)
        if target.role == "owner" and role != "owner" and owners == 1:
            raise UnexpectedState("a merchant keeps at least one owner", code="last_owner")
        u.execute(
            "UPDATE merchant_members SET role = :role WHERE merchant_id = :m AND public_id = :id",
            {"role": role, "m": m.id, "id": member},
        )
        audit.record(
            u, actor, "merchant.member_role", "merchant", m.id,
            data={"member": member, "before": target.role, "after": role},
        )  # fmt: skip

    uow.run(work)
