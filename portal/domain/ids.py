"""Public ids: what the API and the pages call an object (``card_4kT9...``, ``pay_...``).

Every object the API returns has an opaque id made of a prefix naming its kind and 24 random
base62 characters (about 142 bits), stored in its table's ``public_id`` column; integer ids stay
internal. The database makes one by default (``portal_public_id(prefix)``, migration 0007), and
:func:`new_public_id` makes the same kind in Python when a service needs the id before the row
is written.
"""

from __future__ import annotations

import re
import secrets

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
RANDOM_LENGTH = 24

#: Object kind -> id prefix. The prefixes are part of the API.
PREFIXES: dict[str, str] = {
    "user": "usr",
    "session": "ses",
    "role": "rol",
    "card": "card",
    "top_up": "tu",
    "transfer": "tr",
    "withdrawal": "wd",
    "merchant": "mch",
    "member": "mem",
    "invitation": "inv",
    "api_key": "key",
    "payment": "pay",
    "refund": "re",
    "checkout_session": "cs",
    "event": "evt",
    "webhook_endpoint": "we",
    "webhook_delivery": "whd",
    "balance_transaction": "txn",
    "payout": "po",
    "payee": "pye",
    "adjustment": "adj",
}

#: Longest public id: the longest prefix, "_" and the random part.
MAX_LENGTH = max(map(len, PREFIXES.values())) + 1 + RANDOM_LENGTH

_PATTERNS = {
    kind: re.compile(rf"^{prefix}_[0-9A-Za-z]{{{RANDOM_LENGTH}}}$")
    for kind, prefix in PREFIXES.items()
}


def new_public_id(kind: str) -> str:
    """A fresh public id for an object of ``kind`` (a key of :data:`PREFIXES`)."""
    return f"{PREFIXES[kind]}_" + "".join(secrets.choice(ALPHABET) for _ in range(RANDOM_LENGTH))


def is_public_id(kind: str, value: object) -> bool:
    """Whether ``value`` has the shape of a public id of ``kind`` (it may still name nothing)."""
    return isinstance(value, str) and _PATTERNS[kind].match(value) is not None
