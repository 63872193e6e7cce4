"""Payments to merchants, shaped like Stripe's PaymentIntents, and their refunds.

Lifecycle: ``create_payment`` checks the card (it must exist, be active and unexpired, hold the
payment's currency, and the security code must match the vault's derivation, compared in
constant time; wrong codes are counted per card and per key and refused past a limit). A
``manual`` payment holds the amount on the card's wallet (``requires_capture``); an
``automatic`` one is captured in the same transaction (``succeeded``). ``capture_payment`` moves
``amount_to_capture`` (at most the held amount; the rest is released at once),
``cancel_payment`` releases the hold. A decline records the attempt
(``requires_payment_method`` with ``last_payment_error``), moves nothing, and is a
``CardDeclined`` (402) carrying the payment.

Money at capture, one journal entry: the wallet pays ``captured``; the merchant's balance gets
``captured - fee``; the fee revenue account gets ``fee``. A refund is its own entry from the
merchant's balance back to the wallet; the fee is kept (Stripe's rule). Every movement locks the
wallet and the merchant's balance account in one statement in account-id order, then the payment
row, so captures, cancels and refunds of one payment serialise and resolve once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from portal.domain.cards import brand_name, detect_brand, validate_number
from portal.domain.errors import (
    CardDeclined,
    Forbidden,
    InvalidInput,
    NotFound,
    RateLimited,
    UnexpectedState,
    error_from_dict,
    error_to_dict,
)
from portal.domain.ids import ALPHABET, is_public_id, new_public_id
from portal.domain.money import Money
from portal.domain.types import Actor
from portal.services.ledger.ledger import LedgerWrites, LockedWallet, system_account_id
from portal.services.merchants import events, settlements
from portal.services.merchants.merchants import (
    MerchantView,
    access,
    merchant_ref,
    merchant_view,
    open_balance_account,
    page_after,
)
from portal.services.merchants.objects import Stored, payment_object, refund_object
from portal.services.shared import audit, idempotency
from portal.services.shared.pagination import Page, check_limit, like_pattern, page_of
from portal.services.shared.uow import UnitOfWork
from portal.services.shared.vault import Vault
from portal.services.wallet.wallet import check_amount as wallet_check_amount

CAPTURE_METHODS = ("automatic", "manual")
CANCELLATION_REASONS = ("duplicate", "fraudulent", "requested_by_customer", "abandoned")
REFUND_REASONS = ("duplicate", "fraudulent", "requested_by_customer")
#: Why a refund failed: its card was closed (archived), so nothing could go back to it.
REFUND_CARD_CLOSED = "expired_or_canceled_card"
STATUSES = ("requires_payment_method", "requires_capture", "succeeded", "canceled")
#: Stripe's metadata limits.
METADATA_KEYS, METADATA_KEY_LENGTH, METADATA_VALUE_LENGTH = 50, 40, 500
CVC_WINDOW = timedelta(hours=1)
DECLINE_MESSAGES = {
    "incorrect_number": "The card number does not name a card.",
    "incorrect_cvc": "The card's security code or expiry date is incorrect.",
    "expired_card": "The card has expired.",
    "card_frozen": "The card is frozen by its holder.",
    "card_archived": "The card is closed.",
    "currency_not_supported": "The card does not hold this currency.",
    "insufficient_funds": "The card has insufficient funds.",
}


# -- results ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PaymentView(Stored):
    """A payment as merchants and the API see it (never a full card number)."""

    id: str
    merchant_id: str
    amount: int
    amount_capturable: int
    amount_received: int
    amount_refunded: int
    currency: str
    status: str
    capture_method: str
    cancellation_reason: str | None
    canceled_at: datetime | None
    last_payment_error: dict[str, Any] | None
    fee: int
    description: str
    metadata: dict[str, str]
    card_brand: str
    card_last4: str
    card_fingerprint: str
    checkout_session: str | None
    created: datetime
    captured_at: datetime | None
    replayed: bool = False

    @property
    def net(self) -> int:
        """What the capture added to the merchant's balance: received minus fee."""
        return self.amount_received - self.fee

    @property
    def refunded(self) -> bool:
        return self.amount_received > 0 and self.amount_refunded == self.amount_received


@dataclass(frozen=True, slots=True)
class RefundView(Stored):
    id: str
    payment: str
    amount: int
    currency: str
    reason: str | None
    status: str
    failure_reason: str | None
    metadata: dict[str, str]
    created: datetime
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class CardDetails:
    """What a merchant sends to pay with a card; the security code is never stored."""

    number: str
    exp_month: int
    exp_year: int
    cvc: str


_PAYMENT_SELECT = (
    "SELECT p.id AS pk, p.public_id, m.public_id AS merchant_public_id, p.amount_minor,"
    " p.received_minor, p.refunded_minor, p.fee_minor, p.currency, p.status, p.capture_method,"
    " p.cancellation_reason, p.canceled_at, p.last_payment_error, p.description, p.metadata,"
    " p.card_brand, p.card_last4, p.card_fingerprint, cs.public_id AS checkout_public_id,"
    " p.created_at, p.captured_at, p.card_id, p.merchant_id, p.hold_id"
    " FROM payments p JOIN merchants m ON m.id = p.merchant_id"
    " LEFT JOIN checkout_sessions cs ON cs.id = p.checkout_session_id"
)


def _payment_view(row: Any) -> PaymentView:
    return PaymentView(
        id=row.public_id, merchant_id=row.merchant_public_id, amount=row.amount_minor,
        amount_capturable=row.amount_minor if row.status == "requires_capture" else 0,
        amount_received=row.received_minor, amount_refunded=row.refunded_minor,
        currency=row.currency, status=row.status, capture_method=row.capture_method,
        cancellation_reason=row.cancellation_reason, canceled_at=row.canceled_at,
        last_payment_error=row.last_payment_error, fee=row.fee_minor,
        description=row.description, metadata=row.metadata or {}, card_brand=row.card_brand,
        card_last4=row.card_last4, card_fingerprint=row.card_fingerprint,
        checkout_session=row.checkout_public_id, created=row.created_at,
        captured_at=row.captured_at,
    )  # fmt: skip


# -- pure checks ------------------------------------------------------------------------------
def fee_for(merchant: MerchantView, amount_minor: int, currency: str) -> int:
    """The merchant's fee on a capture of ``amount_minor``: basis points (rounded half up) plus
    the fixed part for the currency, never more than the capture itself."""
    percent = (amount_minor * merchant.fee_bps + 5000) // 10000
    return min(amount_minor, percent + merchant.fee_fixed.get(currency, 0))


def check_metadata(metadata: Mapping[str, Any] | None) -> dict[str, str]:
    """Stripe's limits: at most 50 keys of at most 40 characters (no brackets), values of at
    most 500 characters, all strings. Raises InvalidInput naming the key."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise InvalidInput("metadata must be an object of strings", param="metadata")
    if len(metadata) > METADATA_KEYS:
        raise InvalidInput(f"metadata has at most {METADATA_KEYS} keys", param="metadata")
    clean: dict[str, str] = {}
    for key, value in metadata.items():
        if (
            not isinstance(key, str)
            or not 1 <= len(key) <= METADATA_KEY_LENGTH
            or "[" in key
            or "]" in key
            or not key.isprintable()
        ):
            raise InvalidInput(
                f"metadata keys are 1 to {METADATA_KEY_LENGTH} printable characters without"
                " brackets",
                param=f"metadata.{key}",
            )
        if not isinstance(value, str) or len(value) > METADATA_VALUE_LENGTH or "\x00" in value:
            raise InvalidInput(
                f"metadata values are strings of at most {METADATA_VALUE_LENGTH} characters",
                param=f"metadata.{key}",
            )
        clean[key] = value
    return clean


def check_amount(uow: UnitOfWork, amount: Money) -> None:
    """Positive and within the currency's payment limits. Raises InvalidInput, LimitExceeded."""
    wallet_check_amount(uow, amount, "payment", "payment")


def _check_card(card: CardDetails) -> str:
    try:
        number, _ = validate_number(card.number)
    except InvalidInput as exc:
        exc.param = "card.number"
        raise
    if isinstance(card.exp_month, bool) or not 1 <= card.exp_month <= 12:
        raise InvalidInput("exp_month is 1 to 12", param="card.exp_month")
    if isinstance(card.exp_year, bool) or not 2000 <= card.exp_year <= 2100:
        raise InvalidInput("exp_year is a four-digit year", param="card.exp_year")
    if not (card.cvc.isascii() and card.cvc.isdigit() and 3 <= len(card.cvc) <= 4):
        raise InvalidInput("cvc is 3 or 4 digits", param="card.cvc")
    return number


def merchant_fingerprint(uow: UnitOfWork, merchant_id: int, vault_fingerprint: bytes) -> str:
    """The card's fingerprint as one merchant sees it: the same card gives the same value to
    this merchant and an unrelated one to any other (so fingerprints cannot be joined across
    merchants, and never reveal the vault's look-up key)."""
    digest = hmac.new(
        uow.settings.fingerprint_key,
        b"merchant:%d:" % merchant_id + vault_fingerprint,
        hashlib.sha256,
    ).digest()
    return "".join(ALPHABET[b % 62] for b in digest[:16])


def _require_merchant_can_pay(merchant: MerchantView) -> None:
    if not merchant.can_take_payments:
        raise Forbidden(
            f"{merchant.name} cannot take payments while it is {merchant.state}",
            code="merchant_inactive",
        )


# -- locking ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Locked:
    wallet: LockedWallet | None
    merchant_account: int
    merchant_available: int
    brand: str
    last4: str
    fingerprint: bytes | None


def _lock(
    uow: UnitOfWork, merchant_id: int, currency: str, *, card_id: int | None = None,
    fingerprint: bytes | None = None,
) -> _Locked:  # fmt: skip
    """Lock the card's wallet (found by id or by fingerprint) and the merchant's balance
    account in ``currency`` in one statement, in account-id order, opening the latter if it does
    not exist yet; mark the cardholder's money views as changed."""
    card = "SELECT id FROM cards WHERE id = :card" if card_id else (
        "SELECT id FROM cards WHERE fingerprint = :fp"
    )  # fmt: skip
    statement = f"""
        WITH card AS ({card}), locked AS (
            SELECT a.id, a.kind, a.card_id, a.currency, a.posted_minor, a.pending_debits_minor
            FROM accounts a
            WHERE a.card_id = (SELECT id FROM card)
               OR (a.merchant_id = :m AND a.currency = :cur AND a.kind = 'merchant')
            ORDER BY a.id FOR UPDATE OF a
        ), bumped AS (
            UPDATE users SET change_version = change_version + 1
            WHERE id = (SELECT user_id FROM cards WHERE id = (SELECT id FROM card))
        )
        SELECT l.*, c.user_id, c.status AS card_status, c.archived_at, c.expiry_month,
               c.expiry_year, c.brand, c.last4, c.fingerprint,
               u.email_verified_at IS NOT NULL AS owner_verified
        FROM locked l LEFT JOIN cards c ON c.id = l.card_id LEFT JOIN users u ON u.id = c.user_id
    """  # nosec B608
    params = {"card": card_id, "fp": fingerprint, "m": merchant_id, "cur": currency}
    rows = uow.execute(statement, params).all()
    if not any(r.kind == "merchant" for r in rows):
        open_balance_account(uow, merchant_id, currency)
        rows = uow.execute(statement, params).all()
    merchant = next(r for r in rows if r.kind == "merchant")
    held = next((r for r in rows if r.kind == "wallet"), None)
    wallet = None
    if held is not None:
        wallet = LockedWallet(
            account_id=held.id, card_id=held.card_id, user_id=held.user_id,
            currency=held.currency, posted=held.posted_minor, pending=held.pending_debits_minor,
            card_status=held.card_status, archived_at=held.archived_at,
            expiry_month=held.expiry_month, expiry_year=held.expiry_year,
            owner_verified=held.owner_verified,
        )  # fmt: skip
    return _Locked(
        wallet=wallet,
        merchant_account=merchant.id,
        merchant_available=merchant.posted_minor - merchant.pending_debits_minor,
        brand=held.brand if held else "",
        last4=held.last4 if held else "",
        fingerprint=bytes(held.fingerprint) if held else None,
    )


def _decline_code(
    uow: UnitOfWork, wallet: LockedWallet | None, amount: Money, card: CardDetails | None,
    number: str | None,
) -> str | None:  # fmt: skip
    """Why the card cannot pay ``amount`` now, as a decline code, or None."""
    if wallet is None:
        return "incorrect_number"
    if card is not None and number is not None:
        matches = (card.exp_month, card.exp_year) == (wallet.expiry_month, wallet.expiry_year)
        vault = Vault.from_settings(uow.settings)
        if not (
            vault.verify_security_code(number, wallet.expiry_month, wallet.expiry_year, card.cvc)
            and matches
        ):
            return "incorrect_cvc"
    now = uow.now()
    if wallet.archived_at is not None:
        return "card_archived"
    if (now.year, now.month) > (wallet.expiry_year, wallet.expiry_month):
        return "expired_card"
    if wallet.card_status == "frozen":
        return "card_frozen"
    if wallet.currency != amount.currency:
        return "currency_not_supported"
    if wallet.available < amount.amount_minor:
        return "insufficient_funds"
    return None


def _check_guesses(uow: UnitOfWork, actor: Actor, card_id: int | None) -> None:
    """Refuse (429, nothing written) once a card has had too many incorrect security codes in
    the last hour, or the acting key too many incorrect codes or card numbers: guessing a code,
    or which numbers exist, takes more tries than that."""
    row = uow.execute(
        "SELECT count(*) FILTER (WHERE card_id = :card AND last_payment_error->>'decline_code'"
        " = 'incorrect_cvc') AS card_fails, count(*) FILTER (WHERE api_key_id = :key)"
        " AS key_fails FROM payments WHERE created_at > :since AND (last_payment_error->>"
        "'decline_code') IN ('incorrect_cvc', 'incorrect_number')"
        " AND (card_id = :card OR api_key_id = :key)",
        {"card": card_id, "key": actor.key_id, "since": uow.now() - CVC_WINDOW},
    ).one()
    if (
        row.card_fails >= uow.settings.cvc_failures_per_card
        or row.key_fails >= uow.settings.cvc_failures_per_key
    ):
        raise RateLimited(
            "Too many incorrect card details for this card or key; try again later.",
            retry_after=int(CVC_WINDOW.total_seconds()),
            code="too_many_card_attempts",
        )


# -- create -----------------------------------------------------------------------------------
def _replay_payment(uow: UnitOfWork, stored: dict[str, Any]) -> PaymentView:
    uow.observe("idempotent_replays", kind="payment")
    if "error" in stored:
        error = error_from_dict(stored["error"])
        error.replayed = True
        raise error
    return PaymentView.from_dict(stored["result"], replayed=True)


def create_payment(
    uow: UnitOfWork,
    *,
    actor: Actor,
    merchant: str | int,
    amount: Money,
    card: CardDetails,
    idempotency_key: str,
    capture_method: str = "automatic",
    description: str = "",
    metadata: Mapping[str, Any] | None = None,
) -> PaymentView:
    """Pay ``merchant`` with a card. Raises InvalidInput, LimitExceeded, Forbidden, NotFound,
    CardDeclined (the attempt is recorded), RateLimited, IdempotencyConflict."""
    key = idempotency.check_key(idempotency_key)
    number = _check_card(card)
    fields = _common_fields(uow, amount, capture_method, description, metadata)
    params = {"amount": amount.amount_minor, "currency": amount.currency, "number": number,
              "exp": [card.exp_month, card.exp_year], "cvc": card.cvc, **fields}  # fmt: skip
    fingerprint = Vault.from_settings(uow.settings).fingerprint(number)

    def work(u: UnitOfWork) -> PaymentView:
        m = access(u, actor, merchant, "payments:write").merchant
        claim = idempotency.claim(u, actor, key, "create_payment", params)
        if claim.replay is not None:
            return _replay_payment(u, claim.replay)
        _require_merchant_can_pay(m)
        locked = _lock(u, m.id, amount.currency, fingerprint=fingerprint)
        _check_guesses(u, actor, locked.wallet.card_id if locked.wallet else None)
        decline = _decline_code(u, locked.wallet, amount, card, number)
        return _authorise(
            u, actor, m, claim, locked, amount, fields, decline,
            brand=locked.brand or detect_brand(number) or "", last4=number[-4:],
        )  # fmt: skip

    return uow.run(work)


def _common_fields(
    uow: UnitOfWork, amount: Money, capture_method: str, description: str,
    metadata: Mapping[str, Any] | None,
) -> dict[str, Any]:  # fmt: skip
    check_amount(uow, amount)
    if capture_method not in CAPTURE_METHODS:
        raise InvalidInput("capture_method is automatic or manual", param="capture_method")
    description = (description or "").strip()
    if len(description) > 1000 or "\x00" in description:
        raise InvalidInput("description is at most 1000 characters", param="description")
    return {"capture_method": capture_method, "description": description,
            "metadata": check_metadata(metadata)}  # fmt: skip


def pay_with_own_card(
    uow: UnitOfWork,
    *,
    actor: Actor,
    merchant_id: int,
    card_id: int,
    amount: Money,
    capture_method: str,
    description: str,
    metadata: Mapping[str, Any],
    checkout_session_id: int,
    idempotency_key: str,
) -> PaymentView:
    """A signed-in cardholder pays a merchant from one of their own cards (hosted checkout):
    inside the caller's open unit of work. Raises NotFound (not their card), Forbidden,
    CardDeclined."""
    fields = _common_fields(uow, amount, capture_method, description, metadata)
    claim = idempotency.claim(
        uow, actor, idempotency.check_key(idempotency_key), "checkout_payment",
        {"session": checkout_session_id, "card": card_id},
    )  # fmt: skip
    if claim.replay is not None:
        return _replay_payment(uow, claim.replay)
    m = access_merchant(uow, merchant_id)
    _require_merchant_can_pay(m)
    locked = _lock(uow, m.id, amount.currency, card_id=card_id)
    if locked.wallet is None or locked.wallet.user_id != actor.id:
        raise NotFound("no such card", param="card")
    decline = _decline_code(uow, locked.wallet, amount, None, None)
    return _authorise(
        uow, actor, m, claim, locked, amount, fields, decline, brand=locked.brand,
        last4=locked.last4, checkout_session_id=checkout_session_id,
    )  # fmt: skip


def access_merchant(uow: UnitOfWork, merchant_id: int) -> MerchantView:
    return merchant_view(uow, merchant_ref(uow, merchant_id))


def _authorise(
    uow: UnitOfWork,
    actor: Actor,
    merchant: MerchantView,
    claim: idempotency.Claim,
    locked: _Locked,
    amount: Money,
    fields: dict[str, Any],
    decline: str | None,
    *,
    brand: str,
    last4: str,
    checkout_session_id: int | None = None,
) -> PaymentView:
    """Record the payment and move its money (hold, or hold and capture), or record the
    decline; store the answer for the idempotency key."""
    now = uow.now()
    wallet = locked.wallet
    automatic = fields["capture_method"] == "automatic"
    writes = LedgerWrites(uow)
    fee = 0
    hold = "NULL"
    if decline is not None:
        status = "requires_payment_method"
    elif automatic:
        assert wallet is not None
        fee = fee_for(merchant, amount.amount_minor, amount.currency)
        writes.entry(
            kind="payment", currency=amount.currency,
            legs=_capture_legs(uow, wallet.account_id, locked.merchant_account,
                               amount.amount_minor, fee, amount.currency),
            customer_accounts=[wallet.account_id, locked.merchant_account],
            description=f"payment to {merchant.name}"[:255],
        )  # fmt: skip
        status = "succeeded"
    else:
        assert wallet is not None
        writes.hold(
            wallet, amount.amount_minor, kind="payment",
            expires_at=now + timedelta(days=uow.settings.authorization_days),
        )  # fmt: skip
        hold = "(SELECT id FROM hold)"
        status = "requires_capture"
    writes.apply()
    error = None
    if decline is not None:
        error = {"code": "card_declined", "decline_code": decline,
                 "message": DECLINE_MESSAGES[decline]}  # fmt: skip
    public_id = new_public_id("payment")
    fingerprint = (
        merchant_fingerprint(uow, merchant.id, locked.fingerprint) if locked.fingerprint else ""
    )
    received = amount.amount_minor if status == "succeeded" else 0
    entry = "(SELECT id FROM entry)" if writes.has_entry else "NULL"
    uow.defer(
        "INSERT INTO payments (public_id, merchant_id, card_id, api_key_id, checkout_session_id,"  # nosec B608
        " amount_minor, received_minor, fee_minor, currency, status, capture_method,"
        " last_payment_error, card_brand, card_last4, card_fingerprint, hold_id,"
        " capture_entry_id, description, metadata, created_at, updated_at, captured_at)"
        " VALUES (:pid, :m, :card, :key, :cs, :amount, :received, :fee, :cur, :status, :method,"
        f" CAST(:error AS jsonb), :brand, :last4, :fp, {hold}, {entry}, :description,"
        " CAST(:metadata AS jsonb), :now, :now, :captured) RETURNING id",
        name="record", pid=public_id, m=merchant.id, card=wallet.card_id if wallet else None,
        key=actor.key_id, cs=checkout_session_id, amount=amount.amount_minor, received=received,
        fee=fee, cur=amount.currency, status=status, method=fields["capture_method"],
        error=json.dumps(error) if error else None, brand=brand, last4=last4, fp=fingerprint,
        description=fields["description"], metadata=json.dumps(fields["metadata"]), now=now,
        captured=now if status == "succeeded" else None,
    )  # fmt: skip
    if writes.has_entry:
        settlements.record(
            uow, merchant_id=merchant.id, account_id=locked.merchant_account,
            currency=amount.currency, type="payment", amount=amount.amount_minor, fee=fee,
            payment="record", description=f"payment {public_id}",
        )  # fmt: skip
    audit.record(
        uow, actor, "payment.create", "payment", None, subject_from="record",
        outcome="failure" if decline else "success",
        data={"merchant_id": merchant.id, "amount_minor": amount.amount_minor,
              "currency": amount.currency, "status": status, "decline_code": decline},
    )  # fmt: skip
    view = PaymentView(
        id=public_id, merchant_id=merchant.public_id, amount=amount.amount_minor,
        amount_capturable=amount.amount_minor if status == "requires_capture" else 0,
        amount_received=received, amount_refunded=0, currency=amount.currency, status=status,
        capture_method=fields["capture_method"], cancellation_reason=None, canceled_at=None,
        last_payment_error=error, fee=fee, description=fields["description"],
        metadata=fields["metadata"], card_brand=brand, card_last4=last4,
        card_fingerprint=fingerprint, checkout_session=None, created=now,
        captured_at=now if status == "succeeded" else None,
    )  # fmt: skip
    if checkout_session_id is not None:
        cs = uow.execute(
            "SELECT public_id FROM checkout_sessions WHERE id = :id", {"id": checkout_session_id}
        ).scalar_one()
        view = replace(view, checkout_session=cs)
    obj = payment_object(view)
    events.record(
        uow, merchant.id, ("payment.created", obj, None), (_EVENT_OF_STATUS[status], obj, None)
    )
    labels = {"kind": "payment", "currency": amount.currency}
    if decline is not None:
        refusal = CardDeclined(
            f"Your card was declined: {DECLINE_MESSAGES[decline]}",
            param="card" if decline != "insufficient_funds" else "amount",
            details={"decline_code": decline, "payment": view.to_dict()},
        )
        idempotency.store(uow, claim, {"error": error_to_dict(refusal)})
        uow.refuse_after_commit(refusal)
        uow.observe("refusals", kind="payment", code=decline)
        uow.observe("money_movements", 1, outcome="failed", **labels)
    else:
        idempotency.store(uow, claim, {"result": view.to_dict()})
        outcome = "succeeded" if status == "succeeded" else "pending"
        uow.observe("money_movements", 1, outcome=outcome, **labels)
        uow.observe("money_moved_minor_units", amount.amount_minor, outcome=outcome, **labels)
    uow.flush()
    return view


#: The event a new payment's status announces after ``payment.created``.
_EVENT_OF_STATUS = {
    "succeeded": "payment.succeeded",
    "requires_capture": "payment.requires_capture",
    "requires_payment_method": "payment.failed",
}


def _capture_legs(
    uow: UnitOfWork, wallet_account: int, merchant_account: int, amount: int, fee: int,
    currency: str,
) -> list[tuple[int, int]]:  # fmt: skip
    legs = [(wallet_account, -amount), (merchant_account, amount - fee)]
    if fee:
        legs.append((system_account_id(uow, "fees", currency), fee))
    return [(account, value) for account, value in legs if value != 0]


# -- capture and cancel -----------------------------------------------------------------------
def _payment_ref(uow: UnitOfWork, merchant: MerchantView, payment: str) -> Any:
    row = None
    if is_public_id("payment", payment):
        row = uow.execute(
            _PAYMENT_SELECT + " WHERE p.public_id = :id AND p.merchant_id = :m",
            {"id": payment, "m": merchant.id},
        ).first()
    if row is None:
        raise NotFound("no such payment", param="payment")
    return row


def _locked_payment(uow: UnitOfWork, merchant: MerchantView, payment: str) -> tuple[_Locked, Any]:
    """Lock the payment's accounts (wallet and merchant balance, in id order) and then the
    payment row; return both with the row read under the lock."""
    ref = _payment_ref(uow, merchant, payment)
    locked = _lock(uow, merchant.id, ref.currency, card_id=ref.card_id) if ref.card_id else None
    uow.execute("SELECT 1 FROM payments WHERE id = :id FOR UPDATE", {"id": ref.pk})
    row = uow.execute(_PAYMENT_SELECT + " WHERE p.id = :id", {"id": ref.pk}).one()
    return locked, row  # type: ignore[return-value]


def _changed(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """An event's ``previous_attributes``: the fields that changed, with their old values."""
    return {k: v for k, v in before.items() if after.get(k) != v}


def _unexpected(row: Any, action: str) -> UnexpectedState:
    return UnexpectedState(
        f"This payment's status is {row.status}; it cannot be {action}.",
        param="payment", code="payment_unexpected_state",
    )  # fmt: skip


class _Stored(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


S = TypeVar("S", bound=_Stored)


def _keyed(
    uow: UnitOfWork, actor: Actor, key: str, operation: str, params: dict[str, Any],
    fn: Callable[[], S], load: Callable[..., S],
) -> S:  # fmt: skip
    """Run ``fn()`` once per idempotency key: a replay answers the stored result (``load``)."""
    claim = idempotency.claim(uow, actor, key, operation, params)
    if claim.replay is not None:
        uow.observe("idempotent_replays", kind=operation)
        return load(claim.replay["result"], replayed=True)
    result = fn()
    idempotency.store(uow, claim, {"result": result.to_dict()})
    return result


def capture_payment(
    uow: UnitOfWork,
    *,
    actor: Actor,
    merchant: str | int,
    payment: str,
    idempotency_key: str,
    amount_to_capture: int | None = None,
) -> PaymentView:
    """Capture a held payment, wholly or in part (the rest is released at once). Raises
    NotFound, Forbidden, InvalidInput, UnexpectedState (not ``requires_capture``)."""
    key = idempotency.check_key(idempotency_key)
    if amount_to_capture is not None and (
        isinstance(amount_to_capture, bool) or amount_to_capture <= 0
    ):
        raise InvalidInput("amount_to_capture must be positive", param="amount_to_capture")

    def work(u: UnitOfWork) -> PaymentView:
        m = access(u, actor, merchant, "payments:write").merchant

        def capture() -> PaymentView:
            locked, row = _locked_payment(u, m, payment)
            if row.status != "requires_capture":
                raise _unexpected(row, "captured")
            amount = row.amount_minor if amount_to_capture is None else amount_to_capture
            if amount > row.amount_minor:
                raise InvalidInput(
                    f"amount_to_capture is at most amount_capturable ({row.amount_minor})",
                    param="amount_to_capture", code="amount_too_large",
                )  # fmt: skip
            limits = u.settings.limits_for(row.currency, "payment")
            if limits is not None and amount < limits.minimum:
                # As a payment's own minimum: below it the fee could take the whole capture.
                least = Money(limits.minimum, row.currency)
                raise InvalidInput(
                    f"amount_to_capture is at least the payment minimum of {least}",
                    param="amount_to_capture", code="amount_too_small",
                )  # fmt: skip
            wallet = locked.wallet
            assert wallet is not None
            fee = fee_for(m, amount, row.currency)
            writes = LedgerWrites(u)
            writes.entry(
                kind="payment", currency=row.currency,
                legs=_capture_legs(u, wallet.account_id, locked.merchant_account, amount, fee,
                                   row.currency),
                customer_accounts=[wallet.account_id, locked.merchant_account],
                description=f"capture of {row.public_id}",
            )  # fmt: skip
            writes.release(row.hold_id, wallet.account_id, row.amount_minor, status="posted")
            writes.apply()
            now = u.now()
            u.defer(
                "UPDATE payments SET status = 'succeeded', received_minor = :amount, fee_minor ="
                " :fee, capture_entry_id = (SELECT id FROM entry), captured_at = :now,"
                " updated_at = :now WHERE id = :id",
                amount=amount, fee=fee, now=now, id=row.pk,
            )  # fmt: skip
            settlements.record(
                u, merchant_id=m.id, account_id=locked.merchant_account, currency=row.currency,
                type="payment", amount=amount, fee=fee, payment=row.pk,
                description=f"payment {row.public_id}",
            )  # fmt: skip
            audit.record(
                u, actor, "payment.capture", "payment", row.pk,
                data={"amount_minor": amount, "released_minor": row.amount_minor - amount},
            )  # fmt: skip
            u.observe("money_movements", 1, kind="payment", currency=row.currency,
                      outcome="succeeded")  # fmt: skip
            u.observe("money_moved_minor_units", amount, kind="payment", currency=row.currency,
                      outcome="succeeded")  # fmt: skip
            before = _payment_view(row)
            captured = replace(
                before, status="succeeded", amount_capturable=0, amount_received=amount,
                fee=fee, captured_at=now,
            )  # fmt: skip
            obj = payment_object(captured)
            events.record(
                u, m.id, ("payment.succeeded", obj, _changed(payment_object(before), obj))
            )
            return captured

        return _keyed(
            u, actor, key, "capture_payment",
            {"payment": payment, "amount": amount_to_capture}, capture, PaymentView.from_dict,
        )  # fmt: skip

    return uow.run(work)


def cancel_payment(
    uow: UnitOfWork,
    *,
    actor: Actor,
    merchant: str | int,
    payment: str,
    idempotency_key: str,
    reason: str | None = None,
) -> PaymentView:
    """Cancel a payment that is not captured: its hold is released. Raises NotFound,
    Forbidden, InvalidInput, UnexpectedState (succeeded or canceled already)."""
    key = idempotency.check_key(idempotency_key)
    if reason is not None and reason not in CANCELLATION_REASONS:
        raise InvalidInput(
            f"cancellation_reason is one of {', '.join(CANCELLATION_REASONS)}",
            param="cancellation_reason",
        )

    def work(u: UnitOfWork) -> PaymentView:
        m = access(u, actor, merchant, "payments:write").merchant
        return _keyed(
            u, actor, key, "cancel_payment", {"payment": payment, "reason": reason},
            lambda: _cancel(u, actor, m, payment, reason), PaymentView.from_dict,
        )  # fmt: skip

    return uow.run(work)


def _cancel(
    uow: UnitOfWork, actor: Actor, merchant: MerchantView, payment: str, reason: str | None
) -> PaymentView:
    locked, row = _locked_payment(uow, merchant, payment)
    if row.status not in ("requires_capture", "requires_payment_method"):
        raise _unexpected(row, "canceled")
    writes = LedgerWrites(uow)
    if row.status == "requires_capture":
        assert locked is not None
        assert locked.wallet is not None
        writes.release(
            row.hold_id, locked.wallet.account_id, row.amount_minor,
            status="expired" if reason == "expired" else "voided",
        )  # fmt: skip
        writes.apply()
    now = uow.now()
    uow.defer(
        "UPDATE payments SET status = 'canceled', cancellation_reason = :reason,"
        " canceled_at = :now, updated_at = :now WHERE id = :id",
        reason=reason, now=now, id=row.pk,
    )  # fmt: skip
    audit.record(uow, actor, "payment.cancel", "payment", row.pk, data={"reason": reason})
    before = _payment_view(row)
    canceled = replace(
        before, status="canceled", amount_capturable=0, cancellation_reason=reason,
        canceled_at=now,
    )  # fmt: skip
    obj = payment_object(canceled)
    events.record(
        uow, merchant.id, ("payment.canceled", obj, _changed(payment_object(before), obj))
    )
    uow.flush()
    return canceled


def expire_uncaptured(uow: UnitOfWork, *, actor: Actor, limit: int = 200) -> int:
    """Cancel payments held longer than ``authorization_days`` (reason ``expired``), each in
    its own transaction, releasing the money. Returns how many it canceled."""
    due = uow.run(
        lambda u: u.execute(
            "SELECT p.public_id, p.merchant_id FROM payments p WHERE p.status = 'requires_capture'"
            " AND p.created_at <= :cutoff ORDER BY p.created_at LIMIT :n",
            {"cutoff": u.now() - timedelta(days=u.settings.authorization_days), "n": limit},
        ).all()
    )
    count = 0
    for row in due:

        def work(u: UnitOfWork, row: Any = row) -> bool:
            merchant = access_merchant(u, row.merchant_id)
            try:
                _cancel(u, actor, merchant, row.public_id, "expired")
            except UnexpectedState:
                return False  # captured or canceled meanwhile
            return True

        count += uow.run(work)
    return count


# -- reading ----------------------------------------------------------------------------------
def get_payment(uow: UnitOfWork, *, actor: Actor, merchant: str | int, payment: str) -> PaymentView:
    """One of the merchant's payments. Raises NotFound, Forbidden."""

    def work(u: UnitOfWork) -> PaymentView:
        m = access(u, actor, merchant, "read").merchant
        return _payment_view(_payment_ref(u, m, payment))

    return uow.run(work)


def list_payments(
    uow: UnitOfWork,
    *,
    actor: Actor,
    merchant: str | int,
    limit: int | None = None,
    starting_after: str | None = None,
    status: str | None = None,
    created_gte: datetime | None = None,
    created_lte: datetime | None = None,
    card_fingerprint: str | None = None,
    search: str | None = None,
) -> Page[PaymentView]:
    """The merchant's payments, newest first, by cursor; filters: status, created range, card
    fingerprint; search in description and metadata values. Raises NotFound, Forbidden,
    InvalidInput."""
    size = check_limit(limit)
    if status is not None and status not in STATUSES:
        raise InvalidInput(f"status is one of {', '.join(STATUSES)}", param="status")

    def work(u: UnitOfWork) -> Page[PaymentView]:
        m = access(u, actor, merchant, "read").merchant
        where = ["p.merchant_id = :m"]
        params: dict[str, Any] = {"m": m.id, "limit": size + 1}
        if status:
            where.append("p.status = :status")
            params["status"] = status
        if created_gte:
            where.append("p.created_at >= :gte")
            params["gte"] = created_gte
        if created_lte:
            where.append("p.created_at <= :lte")
            params["lte"] = created_lte
        if card_fingerprint:
            where.append("p.card_fingerprint = :fp")
            params["fp"] = card_fingerprint
        if search:
            where.append(
                "(p.description ILIKE :q ESCAPE '\\' OR EXISTS (SELECT 1 FROM"
                " jsonb_each_text(p.metadata) kv WHERE kv.value ILIKE :q ESCAPE '\\'))"
            )
            params["q"] = like_pattern(search.strip()[:100])
        page_after(u, table="payments", alias="p", kind="payment", starting_after=starting_after,
                   merchant_id=m.id, where=where, params=params)  # fmt: skip
        rows = u.execute(
            _PAYMENT_SELECT
            + " WHERE "
            + " AND ".join(where)
            + " ORDER BY p.created_at DESC, p.id DESC LIMIT :limit",
            params,
        ).all()
        return page_of([_payment_view(r) for r in rows], size)

    return uow.run(work)


# -- refunds ----------------------------------------------------------------------------------
_REFUND_SELECT = (
    "SELECT r.public_id, p.public_id AS payment_public_id, r.amount_minor, r.currency, r.reason,"
    " r.status, r.failure_reason, r.metadata, r.created_at FROM refunds r"
    " JOIN payments p ON p.id = r.payment_id"
)


def _refund_view(row: Any) -> RefundView:
    return RefundView(
        id=row.public_id, payment=row.payment_public_id, amount=row.amount_minor,
        currency=row.currency, reason=row.reason, status=row.status,
        failure_reason=row.failure_reason, metadata=row.metadata or {}, created=row.created_at,
    )  # fmt: skip


def create_refund(
    uow: UnitOfWork,
    *,
    actor: Actor,
    merchant: str | int,
    payment: str,
    idempotency_key: str,
    amount: int | None = None,
    reason: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> RefundView:
    """Return money from the merchant's balance to the payment's card: all that is left by
    default, several partial refunds allowed, never beyond ``amount_received``. Raises
    NotFound, Forbidden, InvalidInput, UnexpectedState (not succeeded, or
    ``balance_insufficient`` when the merchant's balance cannot cover it)."""
    key = idempotency.check_key(idempotency_key)
    if amount is not None and (isinstance(amount, bool) or amount <= 0):
        raise InvalidInput("amount must be positive", param="amount")
    if reason is not None and reason not in REFUND_REASONS:
        raise InvalidInput(f"reason is one of {', '.join(REFUND_REASONS)}", param="reason")
    clean_metadata = check_metadata(metadata)

    def work(u: UnitOfWork) -> RefundView:
        m = access(u, actor, merchant, "refunds:write").merchant

        def failed_refund(row: Any, value: int) -> RefundView:
            """The card was closed: nothing can go back to it. The refund is recorded as
            failed (``refund.created`` then ``refund.failed``) and no money moves."""
            now = u.now()
            public_id = new_public_id("refund")
            u.execute(
                "INSERT INTO refunds (public_id, payment_id, merchant_id, card_id, amount_minor,"
                " currency, reason, status, failure_reason, api_key_id, metadata, created_at)"
                " VALUES (:pid, :p, :m, :card, :amount, :cur, :reason, 'failed', :failure, :key,"
                " CAST(:metadata AS jsonb), :now)",
                {"pid": public_id, "p": row.pk, "m": m.id, "card": row.card_id, "amount": value,
                 "cur": row.currency, "reason": reason, "failure": REFUND_CARD_CLOSED,
                 "key": actor.key_id, "metadata": json.dumps(clean_metadata), "now": now},
            )  # fmt: skip
            audit.record(
                u, actor, "refund.create", "refund", None, outcome="failure",
                data={"payment_id": row.pk, "amount_minor": value,
                      "failure_reason": REFUND_CARD_CLOSED},
            )  # fmt: skip
            u.observe("money_movements", 1, kind="refund", currency=row.currency,
                      outcome="failed")  # fmt: skip
            made = RefundView(
                id=public_id, payment=row.public_id, amount=value, currency=row.currency,
                reason=reason, status="failed", failure_reason=REFUND_CARD_CLOSED,
                metadata=clean_metadata, created=now,
            )  # fmt: skip
            pending = refund_object(replace(made, status="pending", failure_reason=None))
            events.record(
                u, m.id, ("refund.created", pending, None),
                ("refund.failed", refund_object(made),
                 {"status": "pending", "failure_reason": None}),
            )  # fmt: skip
            return made

        def refund() -> RefundView:
            locked, row = _locked_payment(u, m, payment)
            if row.status != "succeeded":
                raise _unexpected(row, "refunded")
            left = row.received_minor - row.refunded_minor
            if left == 0:
                raise UnexpectedState(
                    "This payment has been refunded in full already.", param="payment",
                    code="charge_already_refunded",
                )  # fmt: skip
            value = left if amount is None else amount
            if value > left:
                raise InvalidInput(
                    f"amount is at most what is left to refund ({left})", param="amount",
                    code="amount_too_large",
                )  # fmt: skip
            wallet = locked.wallet
            assert wallet is not None
            if wallet.archived_at is not None:
                return failed_refund(row, value)
            if locked.merchant_available < value:
                raise UnexpectedState(
                    "The merchant's balance cannot cover this refund now.", param="amount",
                    code="balance_insufficient",
                )  # fmt: skip
            writes = LedgerWrites(u)
            writes.entry(
                kind="refund", currency=row.currency,
                legs=[(locked.merchant_account, -value), (wallet.account_id, value)],
                customer_accounts=[locked.merchant_account, wallet.account_id],
                description=f"refund of {row.public_id}",
            )  # fmt: skip
            writes.apply()
            now = u.now()
            public_id = new_public_id("refund")
            u.defer(
                "INSERT INTO refunds (public_id, payment_id, merchant_id, card_id, amount_minor,"
                " currency, reason, status, journal_entry_id, api_key_id, metadata, created_at)"
                " VALUES (:pid, :p, :m, :card, :amount, :cur, :reason, 'succeeded',"
                " (SELECT id FROM entry), :key, CAST(:metadata AS jsonb), :now) RETURNING id",
                name="record", pid=public_id, p=row.pk, m=m.id, card=row.card_id, amount=value,
                cur=row.currency,
                reason=reason, key=actor.key_id, metadata=json.dumps(clean_metadata), now=now,
            )  # fmt: skip
            u.defer(
                "UPDATE payments SET refunded_minor = refunded_minor + :amount, updated_at = :now"
                " WHERE id = :id",
                amount=value, now=now, id=row.pk,
            )  # fmt: skip
            settlements.record(
                u, merchant_id=m.id, account_id=locked.merchant_account, currency=row.currency,
                type="refund", amount=-value, payment=row.pk, refund="record",
                description=f"refund {public_id}",
            )  # fmt: skip
            audit.record(
                u, actor, "refund.create", "refund", None, subject_from="record",
                data={"payment_id": row.pk, "amount_minor": value, "reason": reason},
            )  # fmt: skip
            u.observe("money_movements", 1, kind="refund", currency=row.currency,
                      outcome="succeeded")  # fmt: skip
            u.observe("money_moved_minor_units", value, kind="refund", currency=row.currency,
                      outcome="succeeded")  # fmt: skip
            made = RefundView(
                id=public_id, payment=row.public_id, amount=value, currency=row.currency,
                reason=reason, status="succeeded", failure_reason=None,
                metadata=clean_metadata, created=now,
            )  # fmt: skip
            obj = refund_object(made)
            events.record(u, m.id, ("refund.created", obj, None), ("refund.succeeded", obj, None))
            return made

        return _keyed(
            u, actor, key, "create_refund",
            {"payment": payment, "amount": amount, "reason": reason, "metadata": clean_metadata},
            refund, RefundView.from_dict,
        )  # fmt: skip

    return uow.run(work)


def get_refund(uow: UnitOfWork, *, actor: Actor, merchant: str | int, refund: str) -> RefundView:
    """One of the merchant's refunds. Raises NotFound, Forbidden."""

    def work(u: UnitOfWork) -> RefundView:
        m = access(u, actor, merchant, "read").merchant
        row = None
        if is_public_id("refund", refund):
            row = u.execute(
                _REFUND_SELECT + " WHERE r.public_id = :id AND r.merchant_id = :m",
                {"id": refund, "m": m.id},
            ).first()
        if row is None:
            raise NotFound("no such refund", param="refund")
        return _refund_view(row)

    return uow.run(work)


def list_refunds(
    uow: UnitOfWork,
    *,
    actor: Actor,
    merchant: str | int,
    payment: str | None = None,
    limit: int | None = None,
    starting_after: str | None = None,
) -> Page[RefundView]:
    """The merchant's refunds, newest first, optionally of one payment. Raises NotFound,
    Forbidden, InvalidInput."""
    size = check_limit(limit)

    def work(u: UnitOfWork) -> Page[RefundView]:
        m = access(u, actor, merchant, "read").merchant
        where = ["r.merchant_id = :m"]
        params: dict[str, Any] = {"m": m.id, "limit": size + 1}
        if payment is not None:
            where.append("p.public_id = :payment")
            params["payment"] = payment
        page_after(u, table="refunds", alias="r", kind="refund", starting_after=starting_after,
                   merchant_id=m.id, where=where, params=params)  # fmt: skip
        rows = u.execute(
            _REFUND_SELECT
            + " WHERE "
            + " AND ".join(where)
            + " ORDER BY r.created_at DESC, r.id DESC LIMIT :limit",
            params,
        ).all()
        return page_of([_refund_view(r) for r in rows], size)

    return uow.run(work)


def card_label(view: PaymentView) -> str:
    """``Visa •••• 4242``: all a merchant ever sees of a card."""
    return f"{brand_name(view.card_brand)} •••• {view.card_last4}"


__all__ = [
    "CardDetails",
    "PaymentView",
    "RefundView",
    "cancel_payment",
    "capture_payment",
    "create_payment",
    "create_refund",
    "expire_uncaptured",
    "fee_for",
    "get_payment",
    "get_refund",
    "list_payments",
    "list_refunds",
    "pay_with_own_card",
]
