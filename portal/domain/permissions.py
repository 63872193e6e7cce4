"""Named permissions and the built-in roles that bundle them.

The migrations seed the same rows (``0002``, then ``0004`` for ``ledger:adjust``); admins may
change a role's permissions later, within the guard rails below.
"""

from __future__ import annotations

import re

PERMISSIONS: dict[str, str] = {
    "wallet:use": "Hold cards and move money on one's own cards",
    "merchant:use": "Run one's own merchant account",
    "users:read": "See users",
    "users:manage": "Create, change, archive and delete users",
    "roles:manage": "Change roles and their permissions",
    "cards:read": "See every card (masked)",
    "cards:manage": "Freeze, archive and restore any card",
    "money:read": "See every balance and money movement",
    "money:manage": "Move money on any card",
    "withdrawals:manage": "Confirm or fail withdrawals by hand",
    "merchants:read": "See every merchant",
    "merchants:manage": "Approve, suspend and change merchants",
    "audit:read": "Read the audit log",
    "stats:read": "See statistics",
    "reconciliation:run": "Run reconciliation",
    "ledger:adjust": "Post manual ledger adjustments (reversing entries)",
}

#: Permissions about one's own things; every other permission reaches other people's.
SELF_SERVICE_PERMISSIONS = frozenset({"wallet:use", "merchant:use"})

ADMIN_ROLE = "admin"
SUPPORT_ROLE = "support"
MERCHANT_ROLE = "merchant"
CARDHOLDER_ROLE = "cardholder"
#: The only role self-registration (sign-up, first single sign-on) gives.
SELF_REGISTRATION_ROLE = CARDHOLDER_ROLE

ROLES: dict[str, tuple[str, list[str]]] = {
    ADMIN_ROLE: ("Administrator: runs the whole portal", list(PERMISSIONS)),
    SUPPORT_ROLE: (
        "Support staff: read-only access to the console",
        [p for p in PERMISSIONS if p.endswith(":read")],
    ),
    MERCHANT_ROLE: ("Merchant: takes payments through the API", ["merchant:use"]),
    CARDHOLDER_ROLE: ("Cardholder: holds cards and wallets", ["wallet:use"]),
}
BUILT_IN_ROLES = frozenset(ROLES)

ROLE_NAME = re.compile(r"^[a-z][a-z0-9_-]{1,31}$")


def is_read_only(permission: str) -> bool:
    return permission.endswith(":read")


def built_in_may_hold(role: str, permission: str) -> bool:
    """Whether a built-in role may be given ``permission`` (custom roles may hold any).

    ``admin`` holds everything; ``support`` stays read-only; ``merchant`` and ``cardholder`` are
    what strangers get by signing up, so they never reach other people's things.
    """
    if role == SUPPORT_ROLE:
        return is_read_only(permission)
    if role in (MERCHANT_ROLE, CARDHOLDER_ROLE):
        return permission in SELF_SERVICE_PERMISSIONS
    return True
