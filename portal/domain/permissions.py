"""Named permissions and the built-in roles that bundle them.

The migration ``0002`` seeds the same table; a role's permissions can be changed by admins later.
"""

from __future__ import annotations

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
}

ROLES: dict[str, tuple[str, list[str]]] = {
    "admin": ("Administrator: runs the whole portal", list(PERMISSIONS)),
    "support": (
        "Support staff: read-only access to the console",
        [p for p in PERMISSIONS if p.endswith(":read")],
    ),
    "merchant": ("Merchant: takes payments through the API", ["merchant:use"]),
    "cardholder": ("Cardholder: holds cards and wallets", ["wallet:use"]),
}
