"""Hosted checkout: a merchant creates a session, a signed-in cardholder pays it on Portal's page.

The merchant never handles card data: ``create_checkout_session`` answers the URL of Portal's
page (``{public_url}/checkout/cs_...``); the payer signs in there, picks one of their own cards
and confirms (``pay_checkout_session``), and is sent back to the session's ``success_url`` with
``session_id`` appended; the merchant confirms with ``get_checkout_session``.

A session is ``open`` until paid (``complete``, at most once: the payment is made in the same
transaction that locks the session row and marks it complete) or until ``expires_at``
(``expired``: computed on every read, and written by the worker's
``expire_checkout_sessions``). A declined card leaves the session open for another card. The
success and cancel URLs are the merchant's, checked at creation (https; http only to a loopback
host in development) and only ever read back from the row, never from a request.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from portal.domain.errors import (
    CardDeclined,
    Forbidden,
    InvalidInput,
    NotFound,
    UnexpectedState,
    error_from_dict,
    error_to_dict,
)
from portal.domain.ids import is_public_id, new_public_id
from portal.domain.money import Money
from portal.domain.types import Actor, ActorKind
from portal.services.merchants import events, payments
from portal.services.merchants.merchants import access, check_url, page_after
from portal.services.merchants.objects import Stored, checkout_session_object
from portal.services.shared import audit, idempotency
from portal.services.shared.pagination import Page, check_limit, page_of
from portal.services.shared.uow import UnitOfWork

#: Seconds a session stays payable: 30 minutes to 24 hours, 24 hours when not given (Stripe's).
MIN_EXPIRES_IN, MAX_EXPIRES_IN = 1800, 86400
DEFAULT_EXPIRES_IN = MAX_EXPIRES_IN
DESCRIPTION_LENGTH = 255
CLIENT_REFERENCE_LENGTH = 200
STATUSES = ("open", "complete", "expired")
#: A payment that holds or has moved the money: the merchant may ship.
PAID_PAYMENT_STATUSES = ("succeeded", "requires_capture")


# -- results ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CheckoutSessionView(Stored):
    """A checkout session as the merchant and the API see it."""

    id: str
    merchant_id: str
    url: str
    amount: int
    currency: str
    description: str
    #: open, complete or expired (expired as soon as ``expires_at`` passes, worker or not).
    status: str
    #: paid (its payment succeeded or holds the money) or unpaid.
    payment_status: str
    payment: str | None
    client_reference_id: str | None
    success_url: str
    cancel_url: str
    capture_method: str
    metadata: dict[str, str]
    created: datetime
    expires_at: datetime
    completed_at: datetime | None
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class PublicCheckout:
    """What the payer's page may show of a session, to anyone holding its URL: no URLs, no
    metadata, no client reference."""

    id: str
    merchant_name: str
    amount: Money
    description: str
    status: str
    expires_at: datetime
    #: The scheme and host of the success URL (``https://shop.example``): the page's
    #: Content-Security-Policy must let its form's redirect go there.
    success_origin: str


@dataclass(frozen=True, slots=True)
class CheckoutPayment:
    """A paid session and the payment that paid it."""

    session: CheckoutSessionView
    payment: payments.PaymentView
    replayed: bool = False

    @property
    def return_url(self) -> str:
        """Where the payer goes now: the success URL with ``session_id`` added to its query."""
        return with_session_id(self.session.success_url, self.session.id)


def with_session_id(url: str, session_id: str) -> str:
    """``url`` with ``session_id=<id>`` appended to its query, keeping what is there (and any
    fragment)."""
    parts = urlsplit(url)
    query = f"{parts.query}&" if parts.query else ""
    return parts._replace(query=f"{query}session_id={session_id}").geturl()


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


_SELECT = (
    "SELECT cs.id AS pk, cs.public_id, m.public_id AS merchant_public_id, m.name AS merchant_name,"
    " cs.merchant_id, cs.amount_minor, cs.currency, cs.description, cs.status, cs.success_url,"
    " cs.cancel_url, cs.client_reference_id, cs.capture_method, cs.metadata, cs.created_at,"
    " cs.expires_at, cs.completed_at, p.public_id AS payment_public_id,"
    " p.status AS payment_state FROM checkout_sessions cs"
    " JOIN merchants m ON m.id = cs.merchant_id LEFT JOIN payments p ON p.id = cs.payment_id"
)


def _status(row: Any, now: datetime) -> str:
    if row.status == "open" and row.expires_at <= now:
        return "expired"
    return str(row.status)


def _view(uow: UnitOfWork, row: Any) -> CheckoutSessionView:
    paid = row.payment_state in PAID_PAYMENT_STATUSES
    return CheckoutSessionView(
        id=row.public_id, merchant_id=row.merchant_public_id,
        url=checkout_url(uow, row.public_id), amount=row.amount_minor, currency=row.currency,
        description=row.description, status=_status(row, uow.now()),
        payment_status="paid" if paid else "unpaid", payment=row.payment_public_id,
        client_reference_id=row.client_reference_id, success_url=row.success_url,
        cancel_url=row.cancel_url, capture_method=row.capture_method,
        metadata=row.metadata or {}, created=row.created_at, expires_at=row.expires_at,
        completed_at=row.completed_at,
    )  # fmt: skip


def checkout_url(uow: UnitOfWork, session_id: str) -> str:
    """The hosted page of a session."""
    return f"{uow.settings.public_url.rstrip('/')}/checkout/{session_id}"


# -- checks -----------------------------------------------------------------------------------
def _check_text(value: str | None, param: str, limit: int) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidInput(f"{param} must be text", param=param)
    text = value.strip()
    if len(text) > limit or "\x00" in text:
        raise InvalidInput(f"{param} is at most {limit} characters", param=param)
    return text


def _check_expires_in(expires_in: int | None) -> int:
    if expires_in is None:
        return DEFAULT_EXPIRES_IN
    if (
        isinstance(expires_in, bool)
        or not isinstance(expires_in, int)
        or not MIN_EXPIRES_IN <= expires_in <= MAX_EXPIRES_IN
    ):
        raise InvalidInput(
            f"expires_in is {MIN_EXPIRES_IN} to {MAX_EXPIRES_IN} seconds (30 minutes to 24 hours)",
            param="expires_in",
        )
    return expires_in


def _check_return_url(uow: UnitOfWork, url: str, param: str) -> str:
    """An absolute https URL (http only to a loopback host in development) whose port, if
    any, is a number. Raises InvalidInput naming ``param``."""
    if not isinstance(url, str):
        raise InvalidInput(f"{param} must be an absolute https URL", param=param)
    checked = check_url(url, param, allow_loopback_http=uow.settings.allow_loopback_http)
    parts = urlsplit(checked)
    try:
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
    except ValueError:
        raise InvalidInput(f"{param} has an invalid port", param=param) from None
    return checked


def _check_amount(uow: UnitOfWork, amount: Money) -> None:
    # The payment's own rule (positive, within the configured limits), checked now so that a
    # session that could never be paid is never created; paying checks it again.
    payments.check_amount(uow, amount)


# -- create -----------------------------------------------------------------------------------
def create_checkout_session(
    uow: UnitOfWork,
    *,
    actor: Actor,
    merchant: str | int,
    amount: Money,
    success_url: str,
    cancel_url: str,
    idempotency_key: str,
    description: str = "",
    client_reference_id: str | None = None,
    expires_in: int | None = None,
    capture_method: str = "automatic",
    metadata: Mapping[str, Any] | None = None,
) -> CheckoutSessionView:
    """Create a hosted checkout session and the URL to send the payer to. Raises InvalidInput
    (naming the field), LimitExceeded, NotFound, Forbidden (no payments:write, or the merchant
    cannot take payments), IdempotencyConflict."""
    key = idempotency.check_key(idempotency_key)
    _check_amount(uow, amount)
    success = _check_return_url(uow, success_url, "success_url")
    cancel = _check_return_url(uow, cancel_url, "cancel_url")
    text = _check_text(description, "description", DESCRIPTION_LENGTH)
    reference = _check_text(client_reference_id, "client_reference_id", CLIENT_REFERENCE_LENGTH)
    seconds = _check_expires_in(expires_in)
    if capture_method not in payments.CAPTURE_METHODS:
        raise InvalidInput("capture_method is automatic or manual", param="capture_method")
    clean_metadata = payments.check_metadata(metadata)
    params = {
        "amount": amount.amount_minor, "currency": amount.currency, "success_url": success,
        "cancel_url": cancel, "description": text, "client_reference_id": reference or None,
        "expires_in": seconds, "capture_method": capture_method, "metadata": clean_metadata,
    }  # fmt: skip

    def work(u: UnitOfWork) -> CheckoutSessionView:
        m = access(u, actor, merchant, "payments:write").merchant
        claim = idempotency.claim(u, actor, key, "create_checkout_session", params)
        if claim.replay is not None:
            u.observe("idempotent_replays", kind="checkout_session")
            return CheckoutSessionView.from_dict(claim.replay["result"], replayed=True)
        if not m.can_take_payments:
            raise Forbidden(
                f"{m.name} cannot take payments while it is {m.state}", code="merchant_inactive"
            )
        now = u.now()
        public_id = new_public_id("checkout_session")
        u.defer(
            "INSERT INTO checkout_sessions (public_id, merchant_id, api_key_id, amount_minor,"
            " currency, description, success_url, cancel_url, client_reference_id,"
            " capture_method, metadata, status, created_at, expires_at) VALUES (:pid, :m, :key,"
            " :amount, :cur, :description, :success, :cancel, :reference, :method,"
            " CAST(:metadata AS jsonb), 'open', :now, :expires) RETURNING id",
            name="session", pid=public_id, m=m.id, key=actor.key_id, amount=amount.amount_minor,
            cur=amount.currency, description=text, success=success, cancel=cancel,
            reference=reference or None, method=capture_method,
            metadata=json.dumps(clean_metadata), now=now,
            expires=now + timedelta(seconds=seconds),
        )  # fmt: skip
        audit.record(
            u, actor, "checkout_session.create", "checkout_session", None,
            subject_from="session",
            data={"merchant_id": m.id, "amount_minor": amount.amount_minor,
                  "currency": amount.currency},
        )  # fmt: skip
        view = CheckoutSessionView(
            id=public_id, merchant_id=m.public_id, url=checkout_url(u, public_id),
            amount=amount.amount_minor, currency=amount.currency, description=text,
            status="open", payment_status="unpaid", payment=None,
            client_reference_id=reference or None, success_url=success, cancel_url=cancel,
            capture_method=capture_method, metadata=clean_metadata, created=now,
            expires_at=now + timedelta(seconds=seconds), completed_at=None,
        )  # fmt: skip
        idempotency.store(u, claim, {"result": view.to_dict()})
        return view

    return uow.run(work)


# -- read -------------------------------------------------------------------------------------
def _row(uow: UnitOfWork, session: str, *, merchant_id: int | None = None) -> Any:
    row = None
    if is_public_id("checkout_session", session):
        where = " WHERE cs.public_id = :id" + (" AND cs.merchant_id = :m" if merchant_id else "")
        row = uow.execute(_SELECT + where, {"id": session, "m": merchant_id}).first()
    if row is None:
        raise NotFound("no such checkout session", param="session")
    return row


def get_checkout_session(
    uow: UnitOfWork, *, actor: Actor, merchant: str | int, session: str
) -> CheckoutSessionView:
    """One of the merchant's sessions (another merchant's is not found). Raises NotFound,
    Forbidden."""

    def work(u: UnitOfWork) -> CheckoutSessionView:
        m = access(u, actor, merchant, "read").merchant
        return _view(u, _row(u, session, merchant_id=m.id))

    return uow.run(work)


def list_checkout_sessions(
    uow: UnitOfWork,
    *,
    actor: Actor,
    merchant: str | int,
    limit: int | None = None,
    starting_after: str | None = None,
    status: str | None = None,
    client_reference_id: str | None = None,
) -> Page[CheckoutSessionView]:
    """The merchant's sessions, newest first, by cursor; filters: status (as the API shows it,
    so ``expired`` includes open sessions past their expiry) and client reference. Raises
    NotFound, Forbidden, InvalidInput."""
    size = check_limit(limit)
    if status is not None and status not in STATUSES:
        raise InvalidInput(f"status is one of {', '.join(STATUSES)}", param="status")

    def work(u: UnitOfWork) -> Page[CheckoutSessionView]:
        m = access(u, actor, merchant, "read").merchant
        where = ["cs.merchant_id = :m"]
        params: dict[str, Any] = {"m": m.id, "limit": size + 1, "now": u.now()}
        if status == "open":
            where.append("cs.status = 'open' AND cs.expires_at > :now")
        elif status == "expired":
            where.append(
                "(cs.status = 'expired' OR (cs.status = 'open' AND cs.expires_at <= :now))"
            )
        elif status == "complete":
            where.append("cs.status = 'complete'")
        if client_reference_id is not None:
            where.append("cs.client_reference_id = :reference")
            params["reference"] = client_reference_id
        page_after(u, table="checkout_sessions", alias="cs", kind="checkout_session",
                   starting_after=starting_after, merchant_id=m.id, where=where,
                   params=params)  # fmt: skip
        rows = u.execute(
            _SELECT
            + " WHERE "
            + " AND ".join(where)
            + " ORDER BY cs.created_at DESC, cs.id DESC LIMIT :limit",
            params,
        ).all()
        return page_of([_view(u, r) for r in rows], size)

    return uow.run(work)


def get_public_checkout(uow: UnitOfWork, *, session: str) -> PublicCheckout:
    """What the hosted page shows of a session, to whoever opens its URL. Raises NotFound."""

    def work(u: UnitOfWork) -> PublicCheckout:
        row = _row(u, session)
        return PublicCheckout(
            id=row.public_id, merchant_name=row.merchant_name,
            amount=Money(row.amount_minor, row.currency), description=row.description,
            status=_status(row, u.now()), expires_at=row.expires_at,
            success_origin=_origin(row.success_url),
        )  # fmt: skip

    return uow.run(work)


def cancel_url_of(uow: UnitOfWork, *, session: str) -> str:
    """Where a payer who gives up goes back to: the session's cancel URL (whatever its
    status; leaving changes nothing). Raises NotFound."""
    return str(uow.run(lambda u: _row(u, session).cancel_url))


# -- pay --------------------------------------------------------------------------------------
def _own_card(uow: UnitOfWork, actor: Actor, card: str | int) -> tuple[int, str]:
    """(internal id, public id) of one of the actor's own cards, or NotFound: another person's
    card is as unknown as one that does not exist."""
    row = None
    if isinstance(card, int) and not isinstance(card, bool):
        row = uow.execute(
            "SELECT id, public_id, user_id FROM cards WHERE id = :id", {"id": card}
        ).first()
    elif is_public_id("card", card):
        row = uow.execute(
            "SELECT id, public_id, user_id FROM cards WHERE public_id = :id", {"id": card}
        ).first()
    if row is None or row.user_id != actor.id:
        raise NotFound("no such card", param="card")
    return row.id, row.public_id


def _payment_key(actor: Actor, key: str) -> str:
    """The key the payment itself is claimed under: derived from the payer's key, so that one
    confirmation makes at most one payment, and distinct from any key the payer sends."""
    return "checkout:" + hashlib.sha256(f"{actor.scope}\x00{key}".encode()).hexdigest()


def pay_checkout_session(
    uow: UnitOfWork,
    *,
    actor: Actor,
    session: str,
    card: str | int,
    idempotency_key: str,
) -> CheckoutPayment:
    """The signed-in payer pays an open session from one of their own cards, once: the session
    row is locked, the payment made (captured, or held for a manual-capture session) and the
    session marked complete in one transaction. Raises NotFound (no such session, or not their
    card), Forbidden, UnexpectedState (``checkout_session_completed``,
    ``checkout_session_expired``), CardDeclined (recorded; the session stays open),
    IdempotencyConflict."""
    key = idempotency.check_key(idempotency_key)
    if actor.kind != ActorKind.USER or actor.id is None or not actor.can("wallet:use"):
        raise Forbidden("only a cardholder can pay with a card", code="permission_denied")

    def work(u: UnitOfWork) -> CheckoutPayment:
        card_pk, card_public_id = _own_card(u, actor, card)
        claim = idempotency.claim(
            u, actor, key, "pay_checkout_session", {"session": session, "card": card_public_id}
        )
        if claim.replay is not None:
            u.observe("idempotent_replays", kind="checkout_payment")
            stored = claim.replay
            if "error" in stored:
                error = error_from_dict(stored["error"])
                error.replayed = True
                raise error
            return CheckoutPayment(
                CheckoutSessionView.from_dict(stored["result"]["session"], replayed=True),
                payments.PaymentView.from_dict(stored["result"]["payment"], replayed=True),
                replayed=True,
            )
        if not is_public_id("checkout_session", session):
            raise NotFound("no such checkout session", param="session")
        locked = u.execute(
            "SELECT id FROM checkout_sessions WHERE public_id = :id FOR UPDATE", {"id": session}
        ).first()
        if locked is None:
            raise NotFound("no such checkout session", param="session")
        # Read under the lock: a concurrent confirmation that committed first is seen here.
        row = _row(u, session)
        status = _status(row, u.now())
        if status == "complete":
            raise UnexpectedState(
                "This checkout session has been paid already.", param="session",
                code="checkout_session_completed",
            )  # fmt: skip
        if status == "expired":
            raise UnexpectedState(
                "This checkout session has expired; ask the merchant for a new one.",
                param="session", code="checkout_session_expired",
            )  # fmt: skip
        payment = payments.pay_with_own_card(
            u, actor=actor, merchant_id=row.merchant_id, card_id=card_pk,
            amount=Money(row.amount_minor, row.currency), capture_method=row.capture_method,
            description=row.description, metadata=row.metadata or {}, checkout_session_id=row.pk,
            idempotency_key=_payment_key(actor, key),
        )  # fmt: skip
        if payment.status == "requires_payment_method":
            # Declined: the attempt is recorded and the unit of work raises the decline after
            # committing it. The session stays open; this key answers the same decline again.
            last = payment.last_payment_error or {}
            decline = str(last.get("decline_code", ""))
            refusal = CardDeclined(
                f"Your card was declined: {last.get('message', '')}",
                param="card" if decline != "insufficient_funds" else "amount",
                details={"decline_code": decline, "payment": payment.to_dict()},
            )
            idempotency.store(u, claim, {"error": error_to_dict(refusal)})
            return CheckoutPayment(_view(u, row), payment)
        now = u.now()
        u.defer(
            "UPDATE checkout_sessions SET status = 'complete', payment_id = (SELECT id FROM"
            " payments WHERE public_id = :payment), completed_at = :now WHERE id = :id",
            payment=payment.id, now=now, id=row.pk,
        )  # fmt: skip
        audit.record(
            u, actor, "checkout_session.complete", "checkout_session", row.pk,
            data={"payment": payment.id, "payment_status": payment.status},
        )  # fmt: skip
        view = replace(
            _view(u, row), status="complete", payment_status="paid", payment=payment.id,
            completed_at=now,
        )  # fmt: skip
        idempotency.store(
            u, claim, {"result": {"session": view.to_dict(), "payment": payment.to_dict()}}
        )
        events.record(
            u, row.merchant_id,
            ("checkout.session.completed", checkout_session_object(view),
             {"status": "open", "payment_status": "unpaid", "payment": None}),
            step=1,  # after the payment's own events, written earlier in this transaction
        )  # fmt: skip
        return CheckoutPayment(view, payment)

    return uow.run(work)


# -- expiry -----------------------------------------------------------------------------------
def expire_checkout_sessions(uow: UnitOfWork, *, limit: int = 1000) -> int:
    """Mark open sessions past their expiry ``expired`` (the worker's periodic task; reads show
    them expired already). Locked rows (a payment in progress) are skipped and taken next
    time. Returns how many it marked."""

    def work(u: UnitOfWork) -> int:
        expired = u.execute(
            "UPDATE checkout_sessions SET status = 'expired' WHERE id IN (SELECT id FROM"
            " checkout_sessions WHERE status = 'open' AND expires_at <= :now ORDER BY expires_at"
            " LIMIT :n FOR UPDATE SKIP LOCKED) RETURNING public_id, merchant_id",
            {"now": u.now(), "n": limit},
        ).all()
        for session in expired:
            view = _view(u, _row(u, session.public_id))
            # It was open (unpaid) until now; reads showed it expired since expires_at.
            events.record(
                u, session.merchant_id,
                ("checkout.session.expired", checkout_session_object(view), None),
            )  # fmt: skip
        return len(expired)

    return uow.run(work)


__all__ = [
    "CheckoutPayment",
    "CheckoutSessionView",
    "PublicCheckout",
    "cancel_url_of",
    "checkout_url",
    "create_checkout_session",
    "expire_checkout_sessions",
    "get_checkout_session",
    "get_public_checkout",
    "list_checkout_sessions",
    "pay_checkout_session",
    "with_session_id",
]
