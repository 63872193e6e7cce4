"""Recipient references: how a sender names someone else's card in a transfer (issue 11 A5).

A transfer to another person's card does not take that card's id: it takes the opaque,
short-lived reference (``rcp_...``) that the rate-limited look-up by card number
(``activity.find_recipient``) issued to this sender. The reference is sealed by the vault
(AES-GCM, so it can be neither read nor forged) around the card's internal id, the sender's user
id and an expiry ``REFERENCE_MINUTES`` later; nothing is stored. A card id alone names only one's
own cards, so card ids seen anywhere (or guessed) cannot be probed through transfers: a
reference that is not this sender's, has expired or does not open answers exactly as a card that
does not exist.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from portal.domain.errors import NotFound
from portal.services.shared.settings import ServiceSettings
from portal.services.shared.vault import Vault, VaultError

PREFIX = "rcp_"
#: How long a look-up's reference may be used to send money.
REFERENCE_MINUTES = 15
_PURPOSE = "transfer.recipient"
#: References are short; anything much longer is not one (checked before any decryption).
MAX_LENGTH = 200


@dataclass(frozen=True, slots=True)
class Sealed:
    """What a reference holds, once opened."""

    card_id: int
    sender_id: int
    expires_at: datetime
    #: Found as a person (email, @handle, payee), not by the card's number: the sender is
    #: shown the person, never the card.
    person: bool = False


def is_reference(value: object) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def issue(
    settings: ServiceSettings, *, sender_id: int, card_id: int, now: datetime,
    person: bool = False,
) -> str:  # fmt: skip
    """A reference to ``card_id`` for ``sender_id`` to use until ``REFERENCE_MINUTES`` from
    ``now``; ``person``: the card was found as its holder's receiving card, not by number."""
    expires = int((now + timedelta(minutes=REFERENCE_MINUTES)).timestamp())
    sealed = [card_id, sender_id, expires, *([1] if person else [])]
    blob, version = Vault.from_settings(settings).encrypt(
        json.dumps(sealed).encode(), purpose=_PURPOSE
    )
    token = base64.urlsafe_b64encode(version.to_bytes(2, "big") + blob).rstrip(b"=").decode()
    return PREFIX + token


def open_reference(settings: ServiceSettings, reference: str, param: str) -> Sealed:
    """What the reference holds; NotFound (as for a card that does not exist) when it is not a
    reference this system sealed."""
    unknown = NotFound("no such card", param=param)
    if not is_reference(reference) or len(reference) > MAX_LENGTH:
        raise unknown
    token = reference[len(PREFIX) :]
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        plain = Vault.from_settings(settings).decrypt(
            raw[2:], int.from_bytes(raw[:2], "big"), purpose=_PURPOSE
        )
        card_id, sender_id, expires, *person = json.loads(plain)
    except (binascii.Error, ValueError, VaultError):
        raise unknown from None
    return Sealed(int(card_id), int(sender_id), datetime.fromtimestamp(int(expires), tz=UTC),
                  person=person == [1])  # fmt: skip


def check(sealed: Sealed, *, sender_id: int | None, now: datetime, param: str) -> int:
    """The card id, if the reference was issued to this sender and has not expired; NotFound
    (as for a card that does not exist) otherwise."""
    if sealed.sender_id != sender_id or now >= sealed.expires_at:
        raise NotFound("no such card", param=param)
    return sealed.card_id
