"""Settings the services need, passed in through the unit of work (never read from Flask)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from portal.domain.money import Money, MoneyError


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-currency limits in minor units. ``daily`` caps the sum per user per UTC day."""

    minimum: int
    maximum: int
    daily: int | None = None


#: Per currency, per movement kind; written in major units and converted once.
DEFAULT_LIMITS_MAJOR: dict[str, dict[str, dict[str, str]]] = {
    "IDR": {
        "top_up": {"min": "50000", "max": "100000000", "daily": "250000000"},
        "withdrawal": {"min": "50000", "max": "100000000"},
        "transfer": {"min": "1000", "max": "100000000"},
        "payment": {"min": "5000", "max": "100000000"},
        "payout": {"min": "100000", "max": "100000000000"},
    },
    "USD": {
        "top_up": {"min": "5", "max": "10000", "daily": "25000"},
        "withdrawal": {"min": "5", "max": "10000"},
        "transfer": {"min": "0.01", "max": "10000"},
        "payment": {"min": "0.50", "max": "100000"},
        "payout": {"min": "10", "max": "10000000"},
    },
    "EUR": {
        "top_up": {"min": "5", "max": "10000", "daily": "25000"},
        "withdrawal": {"min": "5", "max": "10000"},
        "transfer": {"min": "0.01", "max": "10000"},
        "payment": {"min": "0.50", "max": "100000"},
        "payout": {"min": "10", "max": "10000000"},
    },
    "SGD": {
        "top_up": {"min": "5", "max": "10000", "daily": "25000"},
        "withdrawal": {"min": "5", "max": "10000"},
        "transfer": {"min": "0.01", "max": "10000"},
        "payment": {"min": "0.50", "max": "100000"},
        "payout": {"min": "10", "max": "10000000"},
    },
    "JPY": {
        "top_up": {"min": "500", "max": "1000000", "daily": "2500000"},
        "withdrawal": {"min": "500", "max": "1000000"},
        "transfer": {"min": "1", "max": "1000000"},
        "payment": {"min": "50", "max": "10000000"},
        "payout": {"min": "1000", "max": "1000000000"},
    },
}


def parse_limits(source: str | dict[str, Any] | None) -> dict[str, dict[str, Limits]]:
    """Convert a JSON document of major-unit limits to minor-unit ``Limits``."""
    data = json.loads(source) if isinstance(source, str) else (source or {})
    out: dict[str, dict[str, Limits]] = {}
    for cur, kinds in data.items():
        per_kind: dict[str, Limits] = {}
        for kind, spec in kinds.items():
            try:
                lo = Money.of_major(spec["min"], cur)
                hi = Money.of_major(spec["max"], cur)
                daily = Money.of_major(spec["daily"], cur).amount_minor if "daily" in spec else None
            except (KeyError, MoneyError) as exc:
                raise ValueError(f"{cur}.{kind}: {exc}") from exc
            if not 0 < lo.amount_minor <= hi.amount_minor:
                raise ValueError(f"{cur}.{kind}: need 0 < min <= max")
            per_kind[kind] = Limits(lo.amount_minor, hi.amount_minor, daily)
        out[lo.currency if per_kind else cur.upper()] = per_kind
    return out


DEFAULT_LIMITS = parse_limits(DEFAULT_LIMITS_MAJOR)

#: The fixed part of the default merchant fee, in major units per currency.
DEFAULT_FEE_FIXED_MAJOR = {"USD": "0.30", "EUR": "0.25", "SGD": "0.50", "JPY": "30", "IDR": "2000"}


def parse_fee_fixed(source: str | dict[str, str] | None) -> dict[str, int]:
    """A JSON object of major-unit fixed fees per currency, in minor units."""
    data = json.loads(source) if isinstance(source, str) else (source or {})
    if not isinstance(data, dict):
        raise ValueError("a JSON object of currency to amount is needed")
    out: dict[str, int] = {}
    for cur, major in data.items():
        try:
            fee = Money.of_major(str(major), cur)
        except MoneyError as exc:
            raise ValueError(f"{cur}: {exc}") from exc
        if fee.amount_minor < 0:
            raise ValueError(f"{cur}: a fee is not negative")
        out[fee.currency] = fee.amount_minor
    return out


DEFAULT_FEE_FIXED = parse_fee_fixed(DEFAULT_FEE_FIXED_MAJOR)


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    vault_keys: dict[int, bytes]
    vault_active_key: int
    fingerprint_key: bytes
    cvv_key: bytes
    limits: dict[str, dict[str, Limits]] = field(default_factory=lambda: DEFAULT_LIMITS)
    idempotency_ttl_hours: int = 24
    withdrawal_hold_hours: int = 72
    payout_delay_seconds: float = 3.0
    #: Seconds before the funding job asks the funding processor whether a top-up's money
    #: arrived (the demo processor answers at once, so this is the demo's confirmation delay).
    funding_delay_seconds: float = 2.0
    max_cards_per_user: int = 5
    #: HS256 key (at least 32 bytes) for access tokens; issuer and audience they carry.
    jwt_key: bytes = b""
    jwt_issuer: str = "portal"
    jwt_audience: str = "portal-api"
    access_token_seconds: int = 900
    refresh_token_days: int = 30
    #: A refresh token used again within this many seconds of its first use is answered
    #: (concurrent refreshes), not treated as theft.
    refresh_grace_seconds: int = 10
    session_idle_minutes: int = 30
    session_absolute_hours: int = 12
    email_token_minutes: int = 60
    password_reset_minutes: int = 30
    #: Unverified accounts can sign in but cannot move money while this is on.
    require_verified_email: bool = True
    #: HMAC-SHA256 key under which merchant API keys are stored (only their HMAC is).
    api_key_hash_key: bytes = b""
    #: Default merchant fee: basis points of each capture plus a fixed amount per currency
    #: (minor units); a merchant may have its own.
    fee_bps: int = 290
    fee_fixed: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_FEE_FIXED))
    #: Uncaptured payments are canceled (reason ``expired``) this many days after authorisation.
    authorization_days: int = 7
    #: Incorrect security codes allowed per card, and incorrect codes or card numbers per API
    #: key, in a rolling hour.
    cvc_failures_per_card: int = 5
    cvc_failures_per_key: int = 30
    #: Hosted checkout: the public URL payers open, and whether http:// success and cancel URLs
    #: to loopback are allowed (development and tests only).
    public_url: str = "http://127.0.0.1:5000"
    allow_loopback_http: bool = False
    #: Whether webhook URLs may resolve to loopback, private, link-local or reserved addresses
    #: (``PORTAL_WEBHOOK_ALLOW_PRIVATE``; on outside production, for local receivers).
    webhook_allow_private: bool = False
    #: Captured funds become available this many days after the UTC day of their capture
    #: (0: at once); the daily payout runs at ``payout_time`` UTC ("HH:MM"; None: no schedule).
    settlement_delay_days: int = 2
    payout_time: tuple[int, int] | None = (2, 0)

    def limits_for(self, currency: str, kind: str) -> Limits | None:
        return self.limits.get(currency, {}).get(kind)
