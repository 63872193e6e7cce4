"""Revealing one's own card's full number and security code again (issue 13), after
re-authentication: the cardholder's password, or a code of their second factor (TOTP, or one of
their recovery codes, which is then spent).

Only the card's holder, never staff and never anyone else (another's card is NotFound, as for a
card that does not exist). Every attempt is audited (``card.reveal``, success or failure with
the reason; the second factor's own check is audited too). Callers rate-limit it per user with
:data:`REVEALS_PER_USER` (pages and API share the count). The number is opened from the vault
for the card's own row (``binding(public_id, pan_bound)``); the security code is derived as at
issue, never stored.
"""

from __future__ import annotations

from dataclasses import dataclass

from portal.domain.errors import Forbidden, InvalidInput, InvalidState, NotFound
from portal.domain.types import Actor, ActorKind
from portal.services.identity.accounts import reauthenticate
from portal.services.identity.mfa import verify_second_factor
from portal.services.shared import audit
from portal.services.shared.refs import Ref, ref_key
from portal.services.shared.uow import UnitOfWork
from portal.services.shared.vault import Vault, binding
from portal.services.wallet.cards import PAN_PURPOSE

#: Reveal attempts (right or wrong) per user, pages and API together.
REVEALS_PER_USER = "5 per 15 minutes; 20 per day"
ACTION = "card.reveal"


@dataclass(frozen=True, slots=True)
class RevealedCard:
    """A card's full details, for its holder only, after re-authentication."""

    card_id: int
    public_id: str
    brand: str
    last4: str
    number: str
    cvv: str
    expiry_month: int
    expiry_year: int
    currency: str
    name: str


def reveal_card(
    uow: UnitOfWork,
    *,
    actor: Actor,
    card_id: Ref,
    password: str | None = None,
    code: str | None = None,
) -> RevealedCard:
    """The full number and security code of one of the actor's own cards, once ``password``
    (or, instead, ``code``: a TOTP or recovery code) proves it is them. Raises Forbidden (not a
    cardholder), NotFound (not their card), InvalidState (archived), InvalidInput
    (``reauthentication_required`` when neither is given; ``wrong_password`` on ``password``;
    ``wrong_code`` on ``code``), Unauthenticated."""
    if actor.kind != ActorKind.USER or actor.id is None:
        raise Forbidden("only a cardholder can see their card's details")
    if not actor.can("wallet:use"):
        raise Forbidden("missing permission wallet:use")
    user_id = actor.id
    key = ref_key("card", card_id)
    if key is None:
        raise NotFound("no such card", param="card_id")
    column, value = key
    card = uow.run(
        lambda u: u.execute(
            "SELECT id, public_id, user_id, brand, last4, pan_ciphertext, key_version, pan_bound,"
            " expiry_month, expiry_year, currency, name, archived_at FROM cards"
            f" WHERE {column} = :ref",  # nosec B608: column from ref_key
            {"ref": value},
        ).first()
    )
    if card is None or card.user_id != user_id:
        raise NotFound("no such card", param="card_id")

    def fail(reason: str) -> None:
        uow.run(lambda u: audit.record(u, actor, ACTION, "card", card.id, outcome="failure",
                                       data={"reason": reason}))  # fmt: skip

    if card.archived_at is not None:
        fail("archived")
        raise InvalidState("card is archived", param="card_id")
    given_password = isinstance(password, str) and password != ""
    given_code = isinstance(code, str) and code.strip() != ""
    if given_password:
        try:  # records a failure on the user too (card.reveal, wrong_password)
            reauthenticate(uow, user_id, password or "", action=ACTION, param="password")
        except InvalidInput:
            fail("wrong_password")
            raise
        method = "password"
    elif given_code:
        if not verify_second_factor(uow, user_id=user_id, code=code or ""):
            fail("wrong_code")
            raise InvalidInput(
                "that code is not right (or was already used)", param="code", code="wrong_code"
            )
        method = "second_factor"
    else:
        fail("no_reauthentication")
        raise InvalidInput(
            "enter your password (or a code from your authenticator app) to see the card's"
            " details", param="password", code="reauthentication_required",
        )  # fmt: skip
    vault = Vault.from_settings(uow.settings)
    number = vault.decrypt(
        bytes(card.pan_ciphertext), card.key_version, purpose=PAN_PURPOSE,
        record=binding(card.public_id, card.pan_bound),
    ).decode("ascii")  # fmt: skip
    uow.run(lambda u: audit.record(u, actor, ACTION, "card", card.id,
                                   data={"method": method, "last4": card.last4}))  # fmt: skip
    return RevealedCard(
        card_id=card.id, public_id=card.public_id, brand=card.brand, last4=card.last4,
        number=number, cvv=vault.security_code(number, card.expiry_month, card.expiry_year),
        expiry_month=card.expiry_month, expiry_year=card.expiry_year, currency=card.currency,
        name=card.name,
    )  # fmt: skip
