"""Cards and their wallets: issue (with the wallet account), freeze, archive, key rotation.

A card's number is kept only as AES-GCM ciphertext plus a keyed fingerprint; the security code
is derived from number and expiry when needed and never stored. A full number and code leave
the service layer in two places only: ``IssuedCard``, at issue, to be shown once, and
``reveal.RevealedCard``, to the card's holder after re-authentication. A retry of the issue
under the same idempotency key answers ``ReissuedCard``: the same card, without them.

Cards and users are named by :data:`~portal.services.shared.refs.Ref` (a public id from a
request, or an internal id), resolved in the statement that loads or locks them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, overload

from sqlalchemy.exc import IntegrityError

from portal.domain import cards as card_numbers
from portal.domain.errors import Forbidden, InvalidInput, InvalidState, LimitExceeded, NotFound
from portal.domain.ids import new_public_id
from portal.domain.money import MoneyError, normalize_currency
from portal.domain.types import Actor, CardStatus, CardType, IssuedCard
from portal.services.identity.users import is_self
from portal.services.shared import audit, idempotency
from portal.services.shared.refs import Ref, ref_key
from portal.services.shared.uow import UnitOfWork
from portal.services.shared.vault import Vault, VaultError, binding

#: The longest card name (after trimming), as ``activity.rename_card`` allows too.
MAX_CARD_NAME = 64

PAN_PURPOSE = "card.pan"
VALID_YEARS = 4


@dataclass(frozen=True, slots=True)
class CardView:
    """What pages and the API may show of a card."""

    id: int
    public_id: str
    user_id: int
    name: str
    card_type: str
    brand: str
    last4: str
    expiry_month: int
    expiry_year: int
    currency: str
    status: str
    archived: bool


@dataclass(frozen=True, slots=True)
class ReissuedCard:
    """The answer to a retried issue (the same idempotency key): the card the first request
    issued, without its number and security code. Those were in the first answer, once; a
    retry, or whoever replays the key, never gets them."""

    card_id: int
    public_id: str
    account_id: int
    brand: str
    card_type: str
    last4: str
    expiry_month: int
    expiry_year: int
    currency: str
    name: str
    replayed: bool = True


def _may_manage(actor: Actor, owner: Ref, permission: str) -> bool:
    return is_self(actor, owner) or actor.can(permission)


@overload
def issue_card(
    uow: UnitOfWork,
    *,
    actor: Actor,
    user_id: Ref,
    card_type: str,
    brand: str,
    currency: str,
    name: str = "",
    idempotency_key: None = None,
) -> IssuedCard: ...


@overload
def issue_card(
    uow: UnitOfWork,
    *,
    actor: Actor,
    user_id: Ref,
    card_type: str,
    brand: str,
    currency: str,
    name: str = "",
    idempotency_key: str | None,
) -> IssuedCard | ReissuedCard: ...


def issue_card(
    uow: UnitOfWork,
    *,
    actor: Actor,
    user_id: Ref,
    card_type: str,
    brand: str,
    currency: str,
    name: str = "",
    idempotency_key: str | None = None,
) -> IssuedCard | ReissuedCard:
    """Issue a card with a fresh Luhn-valid number of ``brand`` and its wallet account. With
    ``idempotency_key``, the same request again (a double submit, a retry after a lost answer)
    answers the card the first one issued, to the same caller, instead of issuing another: as a
    ReissuedCard, without the number and security code (shown once, in the first answer).
    Raises InvalidInput, Forbidden, NotFound (no such user), LimitExceeded (too many cards),
    IdempotencyConflict (the key was used for another request)."""
    if not _may_manage(actor, user_id, "cards:manage"):
        raise Forbidden("you may only issue cards for yourself")
    user_key = ref_key("user", user_id)
    if user_key is None:
        raise NotFound("no such user", param="user_id")
    user_column, user_value = user_key
    if card_type not in CardType.__members__.values():
        raise InvalidInput("card type must be debit, credit or prepaid", param="card_type")
    if brand not in card_numbers.BRANDS:
        raise InvalidInput("brand must be one of " + ", ".join(card_numbers.BRANDS), param="brand")
    try:
        currency = normalize_currency(currency)
    except MoneyError as exc:
        raise InvalidInput(str(exc), param="currency") from exc
    name = name.strip()
    if len(name) > MAX_CARD_NAME:
        raise InvalidInput(f"card name is at most {MAX_CARD_NAME} characters", param="name")
    vault = Vault.from_settings(uow.settings)
    key = idempotency.check_key(idempotency_key) if idempotency_key is not None else None
    params = {"user_id": user_id, "card_type": card_type, "brand": brand, "currency": currency,
              "name": name}  # fmt: skip

    def work(u: UnitOfWork) -> IssuedCard | ReissuedCard:
        claim = idempotency.claim(u, actor, key, "card_issue", params) if key else None
        if claim is not None and claim.replay is not None:
            u.observe("idempotent_replays", kind="card_issue")
            return _reissued(u, int(claim.replay["result"]["card_id"]))
        # Lock the owner so two concurrent issues cannot both pass the per-user cap.
        owner = u.execute(
            f"SELECT id FROM users WHERE {user_column} = :ref AND archived_at IS NULL"  # nosec B608: user_column is id or public_id (ref_key)
            " FOR NO KEY UPDATE",
            {"ref": user_value},
        ).first()
        if owner is None:
            raise NotFound("no such user", param="user_id")
        owner_id = owner.id
        held = u.execute(
            "SELECT count(*) FROM cards WHERE user_id = :id AND archived_at IS NULL",
            {"id": owner_id},
        ).scalar_one()
        if held >= u.settings.max_cards_per_user:
            raise LimitExceeded(
                f"at most {u.settings.max_cards_per_user} cards per person", param="card_type"
            )
        now = u.now()
        expiry_month, expiry_year = now.month, now.year + VALID_YEARS
        for _ in range(5):  # a fingerprint collision is astronomically rare; retry anyway
            number = card_numbers.generate_number(brand)
            # The public id is made here so the number is sealed bound to its row.
            public_id = new_public_id("card")
            blob, version = vault.encrypt(number.encode(), purpose=PAN_PURPOSE, record=public_id)
            try:
                with u.session.begin_nested():
                    inserted = u.execute(
                        "INSERT INTO cards (public_id, user_id, name, card_type, brand, last4,"
                        " pan_ciphertext, key_version, pan_bound, fingerprint, expiry_month,"
                        " expiry_year, currency, status, created_at, updated_at) VALUES (:pid,"
                        " :user, :name, :type, :brand, :last4, :blob, :version, true, :fp,"
                        " :month, :year, :cur, 'active', :now, :now) RETURNING id, public_id",
                        {"pid": public_id, "user": owner_id, "name": name, "type": card_type,
                         "brand": brand, "last4": number[-4:], "blob": blob, "version": version,
                         "fp": vault.fingerprint(number), "month": expiry_month,
                         "year": expiry_year, "cur": currency, "now": now},
                    ).one()  # fmt: skip
                break
            except IntegrityError:
                continue
        else:  # pragma: no cover
            raise RuntimeError("could not draw a unique card number")
        card_id = inserted.id
        account_id = u.execute(
            "WITH wallet AS (INSERT INTO accounts (kind, card_id, currency, posted_minor,"
            " pending_debits_minor, created_at) VALUES ('wallet', :card, :cur, 0, 0, :now)"
            " RETURNING id), bumped AS (UPDATE users SET change_version = change_version + 1"
            " WHERE id = :user) SELECT id FROM wallet",
            {"card": card_id, "cur": currency, "now": now, "user": owner_id},
        ).scalar_one()
        audit.record(
            u, actor, "card.issue", "card", card_id,
            data={"user_id": owner_id, "brand": brand, "last4": number[-4:],
                  "card_type": card_type, "currency": currency},
        )  # fmt: skip
        if claim is not None:
            # The card's id only: the number stays in the vault, never in a stored response.
            idempotency.store(u, claim, {"result": {"card_id": card_id}})
        return IssuedCard(
            card_id=card_id, public_id=inserted.public_id, account_id=account_id, brand=brand,
            card_type=card_type, last4=number[-4:], number=number,
            cvv=vault.security_code(number, expiry_month, expiry_year),
            expiry_month=expiry_month, expiry_year=expiry_year, currency=currency, name=name,
        )  # fmt: skip

    return uow.run(work)


def _reissued(u: UnitOfWork, card_id: int) -> ReissuedCard:
    """The answer to a replayed issue: the card the first request issued, read back without
    its number (never decrypted for a replay) and so without its security code."""
    row = u.execute(
        "SELECT c.id, c.public_id, a.id AS account_id, c.brand, c.card_type, c.last4,"
        " c.expiry_month, c.expiry_year, c.currency, c.name"
        " FROM cards c JOIN accounts a ON a.card_id = c.id WHERE c.id = :id",
        {"id": card_id},
    ).one()
    return ReissuedCard(
        card_id=row.id, public_id=row.public_id, account_id=row.account_id, brand=row.brand,
        card_type=row.card_type, last4=row.last4, expiry_month=row.expiry_month,
        expiry_year=row.expiry_year, currency=row.currency, name=row.name,
    )  # fmt: skip


_CARD_VIEW_COLUMNS = (
    "id, public_id, user_id, name, card_type, brand, last4, expiry_month, expiry_year, currency,"
    " status, archived_at IS NOT NULL AS archived"
)


def _card_key(card_id: Ref) -> tuple[str, int | str]:
    key = ref_key("card", card_id)
    if key is None:
        raise NotFound("no such card", param="card_id")
    return key


def _load_for_change(u: UnitOfWork, actor: Actor, card_id: Ref, permission: str) -> CardView:
    column, value = _card_key(card_id)
    row = u.execute(
        f"SELECT {_CARD_VIEW_COLUMNS} FROM cards WHERE {column} = :ref FOR NO KEY UPDATE",  # nosec B608: constant columns; column from ref_key
        {"ref": value},
    ).first()
    if row is None or not _may_manage(actor, row.user_id, permission):
        raise NotFound("no such card", param="card_id")
    return CardView(**row._mapping)


def update_card(u: UnitOfWork, card_id: int, assignments: str, **params: Any) -> None:
    """Change a card and mark its owner's pages as changed (live updates poll
    ``users.change_version``), in one statement."""
    u.execute(
        f"WITH changed AS (UPDATE cards SET {assignments}, updated_at = :now WHERE id = :id"  # nosec B608: assignments are this module's constant SET clauses
        " RETURNING user_id) UPDATE users SET change_version = change_version + 1"
        " WHERE id IN (SELECT user_id FROM changed)",
        {**params, "now": u.now(), "id": card_id},
    )


def set_frozen(uow: UnitOfWork, *, actor: Actor, card_id: Ref, frozen: bool) -> CardView:
    """Freeze or unfreeze a card (its owner or staff with cards:manage). Raises NotFound,
    InvalidState (archived card)."""
    _card_key(card_id)

    def work(u: UnitOfWork) -> CardView:
        card = _load_for_change(u, actor, card_id, "cards:manage")
        if card.archived:
            raise InvalidState("card is archived", param="card_id")
        status = CardStatus.FROZEN if frozen else CardStatus.ACTIVE
        if card.status != status:
            update_card(u, card.id, "status = :s", s=status)
            audit.record(u, actor, "card.freeze" if frozen else "card.unfreeze", "card", card.id)
        return _reload(u, card.id)

    return uow.run(work)


def set_archived(uow: UnitOfWork, *, actor: Actor, card_id: Ref, archived: bool) -> CardView:
    """Archive or restore a card (staff with cards:manage). Raises NotFound, Forbidden."""
    if not actor.can("cards:manage"):
        raise Forbidden("missing permission cards:manage")
    _card_key(card_id)

    def work(u: UnitOfWork) -> CardView:
        card = _load_for_change(u, actor, card_id, "cards:manage")
        if card.archived != archived:
            update_card(u, card.id, "archived_at = :at", at=u.now() if archived else None)
            audit.record(u, actor, "card.archive" if archived else "card.restore", "card", card.id)
        return _reload(u, card.id)

    return uow.run(work)


def _reload(u: UnitOfWork, card_id: int) -> CardView:
    row = u.execute(f"SELECT {_CARD_VIEW_COLUMNS} FROM cards WHERE id = :id", {"id": card_id}).one()  # nosec B608: constant column list
    return CardView(**row._mapping)


@dataclass(frozen=True, slots=True)
class SealedColumn:
    """A vault ciphertext stored in a table: its columns and purpose. Each is sealed bound to
    its row's ``public_id`` once ``bound`` is set (see ``portal.services.shared.vault``)."""

    table: str
    column: str
    version: str
    bound: str
    purpose: str


#: Every vault ciphertext stored in a row (``portal vault rotate`` re-seals them all). The
#: purposes are the ones their services seal with (kept literal here: services of other
#: capabilities are not imported by the wallet's). Not here: users' TOTP secrets
#: (``user.totp``, sealed to their purpose only, by ``identity.mfa``).
ENCRYPTED_COLUMNS = (
    SealedColumn("cards", "pan_ciphertext", "key_version", "pan_bound", PAN_PURPOSE),
    SealedColumn("withdrawals", "bank_ciphertext", "bank_key_version", "bank_bound",
                 "withdrawal.bank"),
    SealedColumn("merchants", "bank_ciphertext", "bank_key_version", "bank_bound",
                 "merchant.bank"),
    SealedColumn("payouts", "bank_ciphertext", "bank_key_version", "bank_bound",
                 "merchant.bank"),
    SealedColumn("webhook_endpoints", "secret_ciphertext", "secret_key_version",
                 "secret_bound", "webhook.secret"),
    SealedColumn("webhook_endpoints", "previous_secret_ciphertext",
                 "previous_secret_key_version", "previous_secret_bound", "webhook.secret"),
)  # fmt: skip


def rotate_vault_keys(uow: UnitOfWork, *, actor: Actor, batch: int = 500) -> int:
    """Re-seal every stored vault ciphertext that is under an old key or not yet bound to its
    row (a legacy row, sealed to its purpose only) under the active key, bound to its row, in
    batches. Returns how many were re-sealed. Raises Forbidden; VaultError (nothing of that
    batch written) for a ciphertext that does not open for its own row, e.g. one copied from
    another row."""
    if not actor.can("cards:manage"):
        raise Forbidden("missing permission cards:manage")
    vault = Vault.from_settings(uow.settings)
    total = 0
    for sealed in ENCRYPTED_COLUMNS:

        def work(u: UnitOfWork, c: SealedColumn = sealed) -> int:
            rows = u.execute(
                f"SELECT id, public_id, {c.column} AS blob, {c.version} AS version,"  # nosec B608: table and columns from the constant ENCRYPTED_COLUMNS list
                f" {c.bound} AS bound FROM {c.table} WHERE {c.column} IS NOT NULL"
                f" AND ({c.version} <> :active OR NOT {c.bound})"
                " ORDER BY id LIMIT :n FOR NO KEY UPDATE SKIP LOCKED",
                {"active": vault.active_version, "n": batch},
            ).all()
            for row in rows:
                try:
                    blob, version = vault.reencrypt(
                        bytes(row.blob), row.version, purpose=c.purpose, record=row.public_id,
                        sealed_for=binding(row.public_id, row.bound),
                    )  # fmt: skip
                except VaultError as exc:
                    raise VaultError(
                        f"{c.table}.{c.column} of {row.public_id} does not open for its row: {exc}"
                    ) from None
                u.execute(
                    f"UPDATE {c.table} SET {c.column} = :blob, {c.version} = :v,"  # nosec B608: table and columns from the constant ENCRYPTED_COLUMNS list
                    f" {c.bound} = true WHERE id = :id",
                    {"blob": blob, "v": version, "id": row.id},
                )
            if rows:
                audit.record(u, actor, "vault.rotate", c.table, None,
                             data={"count": len(rows), "column": c.column})  # fmt: skip
            return len(rows)

        while done := uow.run(work):
            total += done
            if done < batch:
                break
    return total
