"""Merchants and what they own: members, invitations, API keys, payments, refunds and hosted
checkout sessions.

A merchant's money lives in its balance accounts (``accounts.kind = 'merchant'``, one per
currency it has been paid in). A payment holds the amount on the card's wallet
(``requires_capture``) and moves it at capture: the wallet pays the merchant's balance, and the
fee goes from the merchant's balance to the fee revenue account in the same journal entry.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from portal.models.base import (
    Base,
    currency_column,
    fk_column,
    money_column,
    now_column,
    pk_column,
    public_id_column,
)


class Merchant(Base):
    """A business that takes payments. Only ``active`` and not archived may take payments;
    suspending or archiving one stops its keys at once (they are checked against it)."""

    __tablename__ = "merchants"
    __table_args__ = (
        sa.CheckConstraint(
            "status IN ('pending', 'active', 'rejected', 'suspended')", name="status"
        ),
        sa.CheckConstraint("fee_bps IS NULL OR fee_bps BETWEEN 0 AND 10000", name="fee_bps"),
        sa.Index("ix_merchants_created_at_id", "created_at", "id"),
    )

    id: Mapped[int] = pk_column()
    public_id: Mapped[str] = public_id_column("merchant")
    #: Who applied; the first owner.
    user_id: Mapped[int] = fk_column("users.id")
    name: Mapped[str] = mapped_column(sa.String(120), nullable=False)
    website: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    contact_email: Mapped[str] = mapped_column(sa.String(254), nullable=False)
    settlement_currency: Mapped[str] = currency_column()
    status: Mapped[str] = mapped_column(sa.String(16), nullable=False, server_default="pending")
    #: The fee in basis points of each capture; NULL: the configured default.
    fee_bps: Mapped[int | None] = mapped_column(sa.Integer)
    #: Fixed fee per capture in minor units by currency (``{"USD": 30}``); NULL: the default.
    fee_fixed: Mapped[dict[str, int] | None] = mapped_column(JSONB)
    #: The staff member's reason for the latest decision (reject, suspend, ...).
    status_reason: Mapped[str] = mapped_column(sa.String(255), nullable=False, server_default="")
    reviewed_by_id: Mapped[int | None] = mapped_column(sa.BigInteger, sa.ForeignKey("users.id"))
    reviewed_at: Mapped[datetime | None]
    #: Where payouts go: sealed by the vault (purpose ``merchant.bank``); bank name and last
    #: four shown. NULL until the merchant sets it; no payout is made without one.
    bank_ciphertext: Mapped[bytes | None] = mapped_column(sa.LargeBinary)
    bank_key_version: Mapped[int | None] = mapped_column(sa.Integer)
    #: Sealed bound to this row's public id (false: a legacy blob bound to its purpose only).
    bank_bound: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, server_default=sa.false())
    bank_name: Mapped[str | None] = mapped_column(sa.String(100))
    bank_account_last4: Mapped[str | None] = mapped_column(sa.String(4))
    #: Whether the daily payout schedule pays this merchant out (on-demand payouts always work).
    payouts_automatic: Mapped[bool] = mapped_column(
        sa.Boolean, nullable=False, server_default="true"
    )
    created_at: Mapped[datetime] = now_column()
    updated_at: Mapped[datetime] = now_column()
    archived_at: Mapped[datetime | None]


class MerchantMember(Base):
    """A user's role in a merchant: owner (everything), developer (keys, payments), viewer."""

    __tablename__ = "merchant_members"
    __table_args__ = (
        sa.UniqueConstraint("merchant_id", "user_id", name="uq_merchant_members_merchant_user"),
        sa.CheckConstraint("role IN ('owner', 'developer', 'viewer')", name="role"),
    )

    id: Mapped[int] = pk_column()
    public_id: Mapped[str] = public_id_column("member")
    merchant_id: Mapped[int] = fk_column("merchants.id")
    user_id: Mapped[int] = fk_column("users.id")
    role: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    created_at: Mapped[datetime] = now_column()


class MerchantInvitation(Base):
    """An emailed invitation to join a merchant; the link's token is stored hashed."""

    __tablename__ = "merchant_invitations"
    __table_args__ = (
        sa.CheckConstraint("role IN ('owner', 'developer', 'viewer')", name="role"),
        sa.Index(
            "uq_merchant_invitations_open",
            "merchant_id",
            "email",
            unique=True,
            postgresql_where=sa.text("accepted_at IS NULL AND revoked_at IS NULL"),
        ),
    )

    id: Mapped[int] = pk_column()
    public_id: Mapped[str] = public_id_column("invitation")
    merchant_id: Mapped[int] = fk_column("merchants.id")
    #: Canonical (lowercased) address the invitation was sent to.
    email: Mapped[str] = mapped_column(sa.String(254), nullable=False)
    role: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    token_hash: Mapped[bytes] = mapped_column(sa.LargeBinary(32), nullable=False, unique=True)
    invited_by_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("users.id"), nullable=False
    )
    created_at: Mapped[datetime] = now_column()
    expires_at: Mapped[datetime] = mapped_column(nullable=False)
    accepted_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class ApiKey(Base):
    """A merchant's secret key ``sk_live_...``: only its HMAC is stored, with a visible prefix
    and last four. A rolled key keeps working until ``expires_at`` (the overlap)."""

    __tablename__ = "api_keys"
    __table_args__ = (sa.Index("ix_api_keys_merchant_id_created_at", "merchant_id", "created_at"),)

    id: Mapped[int] = pk_column()
    public_id: Mapped[str] = public_id_column("api_key")
    merchant_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("merchants.id"), nullable=False
    )
    name: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    #: ``sk_live_`` and the first characters of the secret, shown in lists.
    prefix: Mapped[str] = mapped_column(sa.String(32), nullable=False)
    last4: Mapped[str] = mapped_column(sa.CHAR(4), nullable=False)
    #: HMAC-SHA256 of the whole secret under the server's key-hashing key.
    key_hash: Mapped[bytes] = mapped_column(sa.LargeBinary(32), nullable=False, unique=True)
    scopes: Mapped[list[str]] = mapped_column(sa.ARRAY(sa.String(32)), nullable=False)
    created_by_id: Mapped[int | None] = mapped_column(sa.BigInteger, sa.ForeignKey("users.id"))
    #: The key this one replaced when it was rolled.
    rolled_from_id: Mapped[int | None] = mapped_column(sa.BigInteger, sa.ForeignKey("api_keys.id"))
    created_at: Mapped[datetime] = now_column()
    expires_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]
    last_used_ip: Mapped[str] = mapped_column(sa.String(64), nullable=False, server_default="")
    revoked_at: Mapped[datetime | None]


class CheckoutSession(Base):
    """A hosted payment page: the merchant creates it, a cardholder pays it once."""

    __tablename__ = "checkout_sessions"
    __table_args__ = (
        sa.CheckConstraint("amount_minor > 0", name="amount_positive"),
        sa.CheckConstraint("status IN ('open', 'complete', 'expired')", name="status"),
        sa.CheckConstraint("capture_method IN ('automatic', 'manual')", name="capture_method"),
        sa.Index("ix_checkout_sessions_merchant_created_at_id", "merchant_id", "created_at", "id"),
        sa.Index(
            "ix_checkout_sessions_open_expires_at",
            "expires_at",
            postgresql_where=sa.text("status = 'open'"),
        ),
    )

    id: Mapped[int] = pk_column()
    public_id: Mapped[str] = public_id_column("checkout_session")
    merchant_id: Mapped[int] = fk_column("merchants.id")
    api_key_id: Mapped[int | None] = mapped_column(sa.BigInteger, sa.ForeignKey("api_keys.id"))
    amount_minor: Mapped[int] = money_column()
    currency: Mapped[str] = currency_column()
    description: Mapped[str] = mapped_column(sa.String(255), nullable=False, server_default="")
    success_url: Mapped[str] = mapped_column(sa.String(2048), nullable=False)
    cancel_url: Mapped[str] = mapped_column(sa.String(2048), nullable=False)
    client_reference_id: Mapped[str | None] = mapped_column(sa.String(200))
    capture_method: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    metadata_: Mapped[dict[str, str]] = mapped_column(
        "metadata", JSONB, nullable=False, server_default="{}"
    )
    status: Mapped[str] = mapped_column(sa.String(16), nullable=False, server_default="open")
    payment_id: Mapped[int | None] = mapped_column(
        sa.BigInteger, sa.ForeignKey("payments.id"), unique=True
    )
    created_at: Mapped[datetime] = now_column()
    expires_at: Mapped[datetime] = mapped_column(nullable=False)
    completed_at: Mapped[datetime | None]


class Payment(Base):
    """A card payment to a merchant, shaped like Stripe's PaymentIntent.

    ``requires_capture``: the amount is held on the wallet (``hold_id``); ``succeeded``:
    ``amount_received`` moved to the merchant (``capture_entry_id``), the rest released;
    ``canceled``: the hold released; ``requires_payment_method``: declined, nothing moved.
    """

    __tablename__ = "payments"
    __table_args__ = (
        sa.CheckConstraint("amount_minor > 0", name="amount_positive"),
        sa.CheckConstraint(
            "received_minor >= 0 AND received_minor <= amount_minor", name="received"
        ),
        sa.CheckConstraint(
            "refunded_minor >= 0 AND refunded_minor <= received_minor", name="refunded"
        ),
        sa.CheckConstraint("fee_minor >= 0 AND fee_minor <= received_minor", name="fee"),
        sa.CheckConstraint(
            "status IN ('requires_payment_method', 'requires_capture', 'succeeded', 'canceled')",
            name="status",
        ),
        sa.CheckConstraint("capture_method IN ('automatic', 'manual')", name="capture_method"),
        sa.CheckConstraint(
            "cancellation_reason IS NULL OR cancellation_reason IN"
            " ('duplicate', 'fraudulent', 'requested_by_customer', 'abandoned', 'expired')",
            name="cancellation_reason",
        ),
        sa.Index("ix_payments_merchant_created_at_id", "merchant_id", "created_at", "id"),
        sa.Index("ix_payments_merchant_fingerprint", "merchant_id", "card_fingerprint"),
        sa.Index("ix_payments_card_created_at_id", "card_id", "created_at", "id"),
        # The console's tables across merchants, and entry to payment (migration 0026).
        sa.Index("ix_payments_created_at_id", "created_at", "id"),
        sa.Index("ix_payments_capture_entry_id", "capture_entry_id"),
        # Guess limits: incorrect security codes per card, and incorrect codes or numbers per
        # key, in the last hour.
        sa.Index(
            "ix_payments_cvc_failures_card",
            "card_id",
            "created_at",
            postgresql_where=sa.text("(last_payment_error ->> 'decline_code') = 'incorrect_cvc'"),
        ),
        sa.Index(
            "ix_payments_guesses_key",
            "api_key_id",
            "created_at",
            postgresql_where=sa.text(
                "(last_payment_error ->> 'decline_code') IN ('incorrect_cvc', 'incorrect_number')"
            ),
        ),
        sa.Index(
            "ix_payments_merchant_uncaptured",
            "merchant_id",
            postgresql_where=sa.text("status = 'requires_capture'"),
        ),
        sa.Index(
            "ix_payments_uncaptured_created_at",
            "created_at",
            postgresql_where=sa.text("status = 'requires_capture'"),
        ),
    )

    id: Mapped[int] = pk_column()
    public_id: Mapped[str] = public_id_column("payment")
    merchant_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("merchants.id"), nullable=False
    )
    #: NULL when the number given names no card (declined, nothing else known).
    card_id: Mapped[int | None] = mapped_column(sa.BigInteger, sa.ForeignKey("cards.id"))
    api_key_id: Mapped[int | None] = mapped_column(
        sa.BigInteger, sa.ForeignKey("api_keys.id"), index=True
    )
    checkout_session_id: Mapped[int | None] = mapped_column(sa.BigInteger)
    amount_minor: Mapped[int] = money_column()
    received_minor: Mapped[int] = mapped_column(sa.BigInteger, nullable=False, server_default="0")
    refunded_minor: Mapped[int] = mapped_column(sa.BigInteger, nullable=False, server_default="0")
    fee_minor: Mapped[int] = mapped_column(sa.BigInteger, nullable=False, server_default="0")
    currency: Mapped[str] = currency_column()
    status: Mapped[str] = mapped_column(sa.String(32), nullable=False)
    capture_method: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    cancellation_reason: Mapped[str | None] = mapped_column(sa.String(32))
    #: ``{"code", "decline_code", "message"}`` of the last decline.
    last_payment_error: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    card_brand: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    card_last4: Mapped[str] = mapped_column(sa.CHAR(4), nullable=False)
    #: The card's fingerprint as this merchant sees it (keyed per merchant; never the vault's).
    card_fingerprint: Mapped[str] = mapped_column(sa.String(32), nullable=False)
    hold_id: Mapped[int | None] = mapped_column(sa.BigInteger, sa.ForeignKey("holds.id"))
    capture_entry_id: Mapped[int | None] = mapped_column(
        sa.BigInteger, sa.ForeignKey("journal_entries.id")
    )
    description: Mapped[str] = mapped_column(sa.String(1000), nullable=False, server_default="")
    metadata_: Mapped[dict[str, str]] = mapped_column(
        "metadata", JSONB, nullable=False, server_default="{}"
    )
    created_at: Mapped[datetime] = now_column()
    updated_at: Mapped[datetime] = now_column()
    captured_at: Mapped[datetime | None]
    canceled_at: Mapped[datetime | None]


class Refund(Base):
    """Money returned from a merchant's balance to the card a payment came from."""

    __tablename__ = "refunds"
    __table_args__ = (
        sa.CheckConstraint("amount_minor > 0", name="amount_positive"),
        sa.CheckConstraint("status IN ('pending', 'succeeded', 'failed')", name="status"),
        sa.CheckConstraint(
            "reason IS NULL OR reason IN ('duplicate', 'fraudulent', 'requested_by_customer')",
            name="reason",
        ),
        sa.Index("ix_refunds_payment_id_created_at_id", "payment_id", "created_at", "id"),
        sa.Index("ix_refunds_merchant_created_at_id", "merchant_id", "created_at", "id"),
        sa.Index("ix_refunds_card_id_created_at_id", "card_id", "created_at", "id"),
        sa.Index("ix_refunds_created_at_id", "created_at", "id"),  # migration 0026
        sa.Index("ix_refunds_journal_entry_id", "journal_entry_id"),
    )

    id: Mapped[int] = pk_column()
    public_id: Mapped[str] = public_id_column("refund")
    payment_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("payments.id"), nullable=False
    )
    #: Denormalised from the payment, for the merchant's listings and the cardholder's feed.
    merchant_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("merchants.id"), nullable=False
    )
    card_id: Mapped[int] = mapped_column(sa.BigInteger, sa.ForeignKey("cards.id"), nullable=False)
    amount_minor: Mapped[int] = money_column()
    currency: Mapped[str] = currency_column()
    reason: Mapped[str | None] = mapped_column(sa.String(32))
    status: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    failure_reason: Mapped[str | None] = mapped_column(sa.String(64))
    journal_entry_id: Mapped[int | None] = mapped_column(
        sa.BigInteger, sa.ForeignKey("journal_entries.id")
    )
    api_key_id: Mapped[int | None] = mapped_column(sa.BigInteger, sa.ForeignKey("api_keys.id"))
    metadata_: Mapped[dict[str, str]] = mapped_column(
        "metadata", JSONB, nullable=False, server_default="{}"
    )
    created_at: Mapped[datetime] = now_column()


class Event(Base):
    """Something a merchant cares about, written in the same transaction as the change (an
    event exists if and only if its change committed): ``payment.succeeded``, ``refund.created``,
    ... with the object as the API shows it and the attributes it had before."""

    __tablename__ = "events"
    __table_args__ = (
        sa.Index("ix_events_merchant_created_at_id", "merchant_id", "created_at", "id"),
        sa.Index("ix_events_merchant_type_created_at", "merchant_id", "type", "created_at"),
        sa.Index("ix_events_created_at", "created_at"),
    )

    id: Mapped[int] = pk_column()
    public_id: Mapped[str] = public_id_column("event")
    merchant_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("merchants.id"), nullable=False
    )
    type: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    api_version: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    #: ``{"object": {...}, "previous_attributes": {...}}``.
    data: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    #: Sent from "send test event" to one endpoint (sample data, no change behind it): it is
    #: delivered and logged like any other event and never listed by the events API.
    test: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, server_default=sa.false())
    created_at: Mapped[datetime] = now_column()


class WebhookEndpoint(Base):
    """Where a merchant's events are sent: an HTTPS URL, the event types it takes (``*`` for
    all), and its signing secret ``whsec_...`` sealed by the vault, with the previous one while
    a rotation's overlap lasts (both sign until ``previous_secret_expires_at``)."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (
        sa.CheckConstraint("status IN ('enabled', 'disabled')", name="status"),
        sa.CheckConstraint(
            "disabled_reason IS NULL OR disabled_reason IN ('merchant', 'gone', 'failing')",
            name="disabled_reason",
        ),
        sa.CheckConstraint("cardinality(enabled_events) > 0", name="enabled_events"),
        sa.Index("ix_webhook_endpoints_merchant_created_at_id", "merchant_id", "created_at", "id"),
    )

    id: Mapped[int] = pk_column()
    public_id: Mapped[str] = public_id_column("webhook_endpoint")
    merchant_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("merchants.id"), nullable=False
    )
    url: Mapped[str] = mapped_column(sa.String(2048), nullable=False)
    description: Mapped[str] = mapped_column(sa.String(500), nullable=False, server_default="")
    enabled_events: Mapped[list[str]] = mapped_column(sa.ARRAY(sa.String(64)), nullable=False)
    status: Mapped[str] = mapped_column(sa.String(16), nullable=False, server_default="enabled")
    #: Why it is disabled: by the merchant, the receiver answered 410, or it failed for days.
    disabled_reason: Mapped[str | None] = mapped_column(sa.String(16))
    disabled_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    #: Set when Portal disabled the endpoint itself (410, failing for days): the dashboard tells
    #: the owner until the endpoint is enabled again.
    needs_attention: Mapped[bool] = mapped_column(
        sa.Boolean, nullable=False, server_default=sa.false()
    )
    #: The first failed attempt since the last delivered one (None while deliveries succeed).
    failing_since: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    secret_ciphertext: Mapped[bytes] = mapped_column(sa.LargeBinary, nullable=False)
    secret_key_version: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    previous_secret_ciphertext: Mapped[bytes | None] = mapped_column(sa.LargeBinary)
    previous_secret_key_version: Mapped[int | None] = mapped_column(sa.Integer)
    #: Each secret sealed bound to this row's public id (false: legacy, bound to the purpose).
    secret_bound: Mapped[bool] = mapped_column(
        sa.Boolean, nullable=False, server_default=sa.false()
    )
    previous_secret_bound: Mapped[bool] = mapped_column(
        sa.Boolean, nullable=False, server_default=sa.false()
    )
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    created_at: Mapped[datetime] = now_column()
    updated_at: Mapped[datetime] = now_column()


class WebhookDelivery(Base):
    """One event to one endpoint: pending until a 2xx (delivered) or until its retries run out
    or the endpoint is disabled (failed). Each attempt is a ``WebhookAttempt``."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        sa.CheckConstraint("status IN ('pending', 'delivered', 'failed')", name="status"),
        sa.UniqueConstraint("event_id", "endpoint_id"),
        sa.Index("ix_webhook_deliveries_endpoint_created_at_id", "endpoint_id", "created_at", "id"),
        sa.Index("ix_webhook_deliveries_created_at_id", "created_at", "id"),  # migration 0026
        # An endpoint's delivery in flight, found without reading its whole log.
        sa.Index(
            "ix_webhook_deliveries_in_flight",
            "endpoint_id",
            postgresql_where=sa.text("locked_until IS NOT NULL"),
        ),
    )

    id: Mapped[int] = pk_column()
    public_id: Mapped[str] = public_id_column("webhook_delivery")
    endpoint_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), nullable=False
    )
    event_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("events.id", ondelete="CASCADE"), nullable=False
    )
    status: Mapped[str] = mapped_column(sa.String(16), nullable=False, server_default="pending")
    attempts: Mapped[int] = mapped_column(sa.Integer, nullable=False, server_default="0")
    next_attempt_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    last_attempt_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    delivered_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    #: The worker sending it now and until when (at most one attempt in flight).
    locked_by: Mapped[str | None] = mapped_column(sa.String(128))
    locked_until: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    created_at: Mapped[datetime] = now_column()


class WebhookAttempt(Base):
    """One HTTP attempt of a delivery: when, the answer's status (None when there was none),
    how long it took, the first KB of the answer, and the error."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (sa.Index("ix_webhook_attempts_delivery_id_id", "delivery_id", "id"),)

    id: Mapped[int] = pk_column()
    delivery_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), nullable=False
    )
    attempted_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), nullable=False)
    status_code: Mapped[int | None] = mapped_column(sa.Integer)
    duration_ms: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    response_body: Mapped[str] = mapped_column(sa.Text, nullable=False, server_default="")
    error: Mapped[str | None] = mapped_column(sa.Text)
