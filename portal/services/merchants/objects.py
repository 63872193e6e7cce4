"""The JSON shapes of merchant objects, as the API answers them and as events carry them.

One function per object, pure: the API's pydantic models validate these dicts (so the document
and the answers cannot drift apart), and events store them in the same transaction as the
change, so an event's ``data.object`` is exactly what ``GET`` would have answered then.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from portal.services.merchants.checkout import CheckoutSessionView
    from portal.services.merchants.payments import PaymentView, RefundView


class Stored:
    """A frozen view kept with an idempotency key and read back for a replay: datetimes as ISO
    text, ``replayed`` left out (a view read back is a replay)."""

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)  # type: ignore[call-overload]
        data.pop("replayed")
        return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, replayed: bool = False) -> Self:
        dated = {f.name for f in fields(cls) if "datetime" in str(f.type)}  # type: ignore[arg-type]
        values = {
            k: datetime.fromisoformat(v) if k in dated and v is not None else v
            for k, v in data.items()
        }
        return cls(**values, replayed=replayed)  # type: ignore[call-arg]


def unix(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp())


def payment_object(p: PaymentView) -> dict[str, Any]:
    return {
        "id": p.id, "object": "payment", "amount": p.amount,
        "amount_capturable": p.amount_capturable, "amount_received": p.amount_received,
        "amount_refunded": p.amount_refunded, "refunded": p.refunded,
        "currency": p.currency.lower(), "status": p.status, "capture_method": p.capture_method,
        "cancellation_reason": p.cancellation_reason, "canceled_at": unix(p.canceled_at),
        "last_payment_error": dict(p.last_payment_error) if p.last_payment_error else None,
        "fee": p.fee, "net": p.net, "description": p.description, "metadata": dict(p.metadata),
        "card": {"brand": p.card_brand, "last4": p.card_last4,
                 "fingerprint": p.card_fingerprint},
        "checkout_session": p.checkout_session, "created": unix(p.created) or 0,
    }  # fmt: skip


def refund_object(r: RefundView) -> dict[str, Any]:
    return {
        "id": r.id, "object": "refund", "amount": r.amount, "currency": r.currency.lower(),
        "payment": r.payment, "reason": r.reason, "status": r.status,
        "failure_reason": r.failure_reason, "metadata": dict(r.metadata),
        "created": unix(r.created) or 0,
    }  # fmt: skip


def checkout_session_object(s: CheckoutSessionView) -> dict[str, Any]:
    return {
        "id": s.id, "object": "checkout.session", "url": s.url, "amount_total": s.amount,
        "currency": s.currency.lower(), "description": s.description, "status": s.status,
        "payment_status": s.payment_status, "payment": s.payment,
        "client_reference_id": s.client_reference_id, "success_url": s.success_url,
        "cancel_url": s.cancel_url, "capture_method": s.capture_method,
        "metadata": dict(s.metadata), "created": unix(s.created) or 0,
        "expires_at": unix(s.expires_at) or 0,
    }  # fmt: skip
