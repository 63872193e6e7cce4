"""Every route of the application, tried as six personas, against an expected-access table.

A route missing from the table fails the test, so a new route must say who may use it. "Allowed"
means the request got past authentication and authorisation: anything but 401, 403, 404 (how
other people's objects are hidden) or a redirect to the sign-in or second-factor pages. Each
request runs in a savepoint that is rolled back, so no request changes what the next one sees.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pyotp
import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from portal.domain.money import Money
from portal.extensions import limiter
from portal.services.admin import adjustments
from portal.services.identity import mfa, sessions, tokens, users
from portal.services.merchants import (
    checkout,
    events,
    keys,
    merchants,
    payments,
    payouts,
    webhooks,
)
from portal.services.wallet import payees, wallet
from portal.web.auth import SESSION_KEY
from tests.conftest import SYSTEM, Factory, new_key

PERSONAS = ("anonymous", "cardholder", "other", "merchant", "support", "admin")
EVERYONE = frozenset(PERSONAS)
SIGNED_IN = EVERYONE - {"anonymous"}
STAFF = frozenset({"support", "admin"})
ADMIN = frozenset({"admin"})
OWNER = frozenset({"cardholder"})  # path objects belong to the cardholder persona
OWNER_OR_STAFF = OWNER | STAFF
NOBODY: frozenset[str] = frozenset()
#: Holders of wallet:use (cardholders; admin holds every permission).
WALLET = frozenset({"cardholder", "other", "admin"})
#: The merchant persona owns the path merchant (and sends its secret key to the payments API).
MERCHANT = frozenset({"merchant"})
MERCHANT_OR_STAFF = MERCHANT | STAFF
DECISIONS = ("approve", "reject", "suspend", "reactivate", "archive", "restore")
#: API routes a merchant's secret key authenticates (not an access token).
KEY_ROUTES = ("/api/v1/payments", "/api/v1/refunds", "/api/v1/checkout/", "/api/v1/events",
              "/api/v1/webhook_endpoints", "/api/v1/balance", "/api/v1/payouts")  # fmt: skip
#: Request bodies that pass validation, where the table is about who may act, not about input
#: (schema validation runs before the service looks at who is asking).
BODIES = {
    ("PATCH", "/api/v1/payees/<payee_id>"): {"starred": True},
    ("POST", "/api/v1/payees/<payee_id>/lookup"): {"currency": "usd"},
    ("POST", "/api/v1/merchants/<merchant_id>/api_keys"): {"name": "matrix"},
    ("POST", "/api/v1/merchants/<merchant_id>/invitations"): {
        "email": "invitee@example.test",
        "role": "viewer",
    },
    ("POST", "/api/v1/merchants/<merchant_id>/members/<member_id>"): {"role": "owner"},
    ("POST", "/api/v1/webhook_endpoints"): {
        "url": "https://hooks.matrix.example/portal",
        "enabled_events": ["*"],
    },
    ("POST", "/api/v1/webhook_endpoints/<endpoint_id>/replay_failed"): {"since": 0},
    ("PUT", "/api/v1/merchants/<merchant_id>/bank_account"): {
        "bank_name": "Matrix Bank",
        "account_number": "12345678",
        "account_holder": "Matrix",
    },
}

#: (method, rule) -> personas allowed. Path objects are the cardholder's own.
EXPECTED: dict[tuple[str, str], frozenset[str]] = {
    # pages
    ("GET", "/"): EVERYONE,
    ("GET", "/healthz"): EVERYONE,
    ("GET", "/auth/login"): EVERYONE,
    ("POST", "/auth/login"): EVERYONE,
    ("GET", "/auth/register"): EVERYONE,
    ("POST", "/auth/register"): EVERYONE,
    ("GET", "/auth/forgot"): EVERYONE,
    ("POST", "/auth/forgot"): EVERYONE,
    ("GET", "/auth/reset/<token>"): EVERYONE,
    ("POST", "/auth/reset/<token>"): EVERYONE,
    ("GET", "/auth/verify/<token>"): NOBODY,  # an unknown link is a 404 for everyone
    # The second-factor step needs a pending password sign-in; signed-in users are sent on.
    ("GET", "/auth/mfa"): SIGNED_IN,
    ("POST", "/auth/mfa"): SIGNED_IN,
    ("POST", "/auth/logout"): NOBODY,  # everyone ends on the sign-in page
    ("GET", "/auth/account"): SIGNED_IN,
    ("POST", "/auth/account/email"): SIGNED_IN,
    ("POST", "/auth/account/password"): SIGNED_IN,
    ("POST", "/auth/account/verify-email"): SIGNED_IN,
    ("POST", "/auth/account/preferences"): SIGNED_IN,
    ("GET", "/auth/mfa/setup"): SIGNED_IN,
    ("POST", "/auth/mfa/setup"): SIGNED_IN,
    ("POST", "/auth/mfa/setup/confirm"): SIGNED_IN,
    ("POST", "/auth/mfa/disable"): SIGNED_IN,
    ("POST", "/auth/mfa/recovery-codes"): SIGNED_IN,
    ("POST", "/auth/sessions/<kind>/<ident>/revoke"): OWNER | ADMIN,
    ("POST", "/auth/sessions/revoke-others"): SIGNED_IN,
    ("GET", "/auth/sso/login"): NOBODY,  # single sign-on is not configured here: 404
    ("GET", "/auth/sso/callback"): NOBODY,
    # API: documentation and sign-in
    ("GET", "/api/docs"): EVERYONE,
    ("GET", "/api/v1/openapi.json"): EVERYONE,
    ("POST", "/api/v1/auth/register"): EVERYONE,
    ("POST", "/api/v1/auth/token"): EVERYONE,
    ("POST", "/api/v1/auth/refresh"): EVERYONE,
    ("POST", "/api/v1/auth/logout"): EVERYONE,
    ("GET", "/api/v1/auth/me"): SIGNED_IN,
    ("GET", "/api/v1/auth/sessions"): SIGNED_IN,
    ("POST", "/api/v1/auth/sessions/revoke-all"): SIGNED_IN,
    ("DELETE", "/api/v1/auth/sessions/web/<session_id>"): OWNER,
    ("DELETE", "/api/v1/auth/sessions/api/<uuid:family_id>"): OWNER,
    ("GET", "/api/v1/users/me"): SIGNED_IN,
    ("PATCH", "/api/v1/users/me"): SIGNED_IN,
    ("POST", "/api/v1/users/me/password"): SIGNED_IN,
    ("POST", "/api/v1/users/me/email"): SIGNED_IN,
    # API: adjustments (money:read lists and reads; ledger:adjust requests and decides). The
    # path's request is a third administrator's: only they may withdraw it.
    ("GET", "/api/v1/adjustments"): STAFF,
    ("POST", "/api/v1/adjustments"): ADMIN,
    ("GET", "/api/v1/adjustments/<adjustment_id>"): STAFF,
    ("POST", "/api/v1/adjustments/<adjustment_id>/approve"): ADMIN,
    ("POST", "/api/v1/adjustments/<adjustment_id>/reject"): ADMIN,
    ("POST", "/api/v1/adjustments/<adjustment_id>/withdraw"): NOBODY,
    # API: users and roles
    ("GET", "/api/v1/users"): STAFF,
    ("POST", "/api/v1/users"): ADMIN,
    ("GET", "/api/v1/users/<user_id>"): OWNER_OR_STAFF,
    ("PATCH", "/api/v1/users/<user_id>"): OWNER | ADMIN,
    ("DELETE", "/api/v1/users/<user_id>"): ADMIN,
    ("POST", "/api/v1/users/<user_id>/archive"): ADMIN,
    ("POST", "/api/v1/users/<user_id>/restore"): ADMIN,
    ("POST", "/api/v1/users/<user_id>/mfa_enrolment_codes"): ADMIN,
    ("PUT", "/api/v1/users/<user_id>/roles/<role>"): ADMIN,
    ("DELETE", "/api/v1/users/<user_id>/roles/<role>"): ADMIN,
    ("GET", "/api/v1/users/<user_id>/sessions"): OWNER_OR_STAFF,
    ("POST", "/api/v1/users/<user_id>/sessions/revoke-all"): ADMIN,
    ("DELETE", "/api/v1/users/<user_id>/sessions/web/<session_id>"): ADMIN,
    ("DELETE", "/api/v1/users/<user_id>/sessions/api/<uuid:family_id>"): ADMIN,
    ("GET", "/api/v1/roles"): STAFF,
    ("POST", "/api/v1/roles"): ADMIN,
    ("GET", "/api/v1/roles/<role>"): STAFF,
    ("PATCH", "/api/v1/roles/<role>"): ADMIN,
    ("POST", "/api/v1/roles/<role>/archive"): ADMIN,
    ("POST", "/api/v1/roles/<role>/restore"): ADMIN,
    ("PUT", "/api/v1/roles/<role>/permissions/<permission>"): ADMIN,
    ("DELETE", "/api/v1/roles/<role>/permissions/<permission>"): ADMIN,
    ("GET", "/api/v1/permissions"): STAFF,
    # API: cards (the path card is the cardholder's; rename is for its owner only)
    ("POST", "/api/v1/cards"): WALLET,
    ("GET", "/api/v1/cards"): SIGNED_IN,
    ("GET", "/api/v1/cards/<card_id>"): OWNER_OR_STAFF,
    ("PATCH", "/api/v1/cards/<card_id>"): OWNER,
    ("POST", "/api/v1/cards/<card_id>/freeze"): OWNER | ADMIN,
    ("POST", "/api/v1/cards/<card_id>/unfreeze"): OWNER | ADMIN,
    ("POST", "/api/v1/cards/<card_id>/archive"): ADMIN,
    ("POST", "/api/v1/cards/<card_id>/restore"): ADMIN,
    ("GET", "/api/v1/cards/<card_id>/balance"): OWNER_OR_STAFF,
    ("POST", "/api/v1/cards/lookup"): WALLET,
    ("POST", "/api/v1/cards/<card_id>/reveal"): OWNER,  # never staff: only the holder
    # API: paying people (the path payee is the cardholder's)
    ("POST", "/api/v1/people/lookup"): WALLET,
    ("GET", "/api/v1/payees"): WALLET,
    ("POST", "/api/v1/payees"): WALLET,
    ("PATCH", "/api/v1/payees/<payee_id>"): OWNER,
    ("POST", "/api/v1/payees/<payee_id>/lookup"): OWNER,
    ("GET", "/api/v1/receiving-cards"): WALLET,
    ("POST", "/api/v1/receiving-cards"): WALLET,
    ("GET", "/api/v1/users/me/handle"): WALLET,
    ("PUT", "/api/v1/users/me/handle"): WALLET,
    # API: money movements and the activity feed (lists show one's own records)
    ("POST", "/api/v1/top_ups"): WALLET,
    ("GET", "/api/v1/top_ups"): SIGNED_IN,
    ("GET", "/api/v1/top_ups/<top_up_id>"): OWNER_OR_STAFF,
    ("POST", "/api/v1/transfers"): WALLET,
    ("GET", "/api/v1/transfers"): SIGNED_IN,
    ("GET", "/api/v1/transfers/<transfer_id>"): OWNER_OR_STAFF,
    ("POST", "/api/v1/withdrawals"): WALLET,
    ("GET", "/api/v1/withdrawals"): SIGNED_IN,
    ("GET", "/api/v1/withdrawals/<withdrawal_id>"): OWNER_OR_STAFF,
    ("POST", "/api/v1/withdrawals/<withdrawal_id>/confirm"): ADMIN,
    ("POST", "/api/v1/withdrawals/<withdrawal_id>/fail"): ADMIN,
    ("GET", "/api/v1/activity"): SIGNED_IN,
    # Wallet pages (wallet:use). A path card is the cardholder's: another cardholder gets 404;
    # admin may look at it and freeze it (cards:read, cards:manage); only its owner renames it.
    ("GET", "/wallet"): WALLET,
    ("GET", "/wallet/changes"): WALLET,
    ("GET", "/wallet/cards/new"): WALLET,
    ("POST", "/wallet/cards/new"): WALLET,
    ("GET", "/wallet/cards/<card_id>"): OWNER | ADMIN,
    ("POST", "/wallet/cards/<card_id>/name"): OWNER,
    ("POST", "/wallet/cards/<card_id>/freeze"): OWNER | ADMIN,
    ("POST", "/wallet/cards/<card_id>/unfreeze"): OWNER | ADMIN,
    ("GET", "/wallet/top-up"): WALLET,
    ("GET", "/wallet/movements/<movement_id>/status"): OWNER | ADMIN,
    ("GET", "/wallet/movements/<movement_id>"): OWNER | ADMIN,
    ("GET", "/wallet/cards/<card_id>/statement/<month>.pdf"): OWNER,
    ("POST", "/wallet/top-up"): WALLET,
    ("GET", "/wallet/transfer"): WALLET,
    ("POST", "/wallet/transfer"): WALLET,
    ("GET", "/wallet/withdraw"): WALLET,
    ("POST", "/wallet/withdraw"): WALLET,
    ("GET", "/wallet/activity"): WALLET,
    ("GET", "/wallet/pay"): WALLET,
    ("POST", "/wallet/pay"): WALLET,
    ("GET", "/wallet/pay/sent/<transfer_id>"): OWNER,
    ("POST", "/wallet/payees/<payee_id>/star"): OWNER,
    ("POST", "/wallet/payees/<payee_id>/unstar"): OWNER,
    ("GET", "/wallet/receiving"): WALLET,
    ("POST", "/wallet/receiving"): WALLET,
    ("GET", "/wallet/cards/<card_id>/reveal"): OWNER,  # never staff: only the holder
    ("POST", "/wallet/cards/<card_id>/reveal"): OWNER,
    ("GET", "/wallet/activity.csv"): WALLET,
    # API: merchant accounts with access tokens. The path merchant is the merchant persona's;
    # staff read every merchant (merchants:read), only admin decides (merchants:manage).
    ("POST", "/api/v1/merchants"): SIGNED_IN,
    ("GET", "/api/v1/merchants"): SIGNED_IN,
    ("GET", "/api/v1/merchants/<merchant_id>"): MERCHANT_OR_STAFF,
    **{("POST", f"/api/v1/merchants/<merchant_id>/{action}"): ADMIN for action in DECISIONS},
    ("POST", "/api/v1/merchants/<merchant_id>/api_keys"): MERCHANT,
    ("GET", "/api/v1/merchants/<merchant_id>/api_keys"): MERCHANT_OR_STAFF,
    ("POST", "/api/v1/merchants/<merchant_id>/api_keys/<key_id>/roll"): MERCHANT,
    ("POST", "/api/v1/merchants/<merchant_id>/api_keys/<key_id>/revoke"): MERCHANT,
    ("GET", "/api/v1/merchants/<merchant_id>/members"): MERCHANT_OR_STAFF,
    ("POST", "/api/v1/merchants/<merchant_id>/invitations"): MERCHANT,
    ("POST", "/api/v1/merchants/<merchant_id>/members/<member_id>"): MERCHANT,
    ("DELETE", "/api/v1/merchants/<merchant_id>/members/<member_id>"): MERCHANT,
    # API: payments, refunds and checkout sessions take only the merchant's secret key (the
    # merchant persona sends it; access tokens are refused).
    ("POST", "/api/v1/payments"): MERCHANT,
    ("GET", "/api/v1/payments"): MERCHANT,
    ("GET", "/api/v1/payments/<payment_id>"): MERCHANT,
    ("POST", "/api/v1/payments/<payment_id>/capture"): MERCHANT,
    ("POST", "/api/v1/payments/<payment_id>/cancel"): MERCHANT,
    ("POST", "/api/v1/refunds"): MERCHANT,
    ("GET", "/api/v1/refunds"): MERCHANT,
    ("GET", "/api/v1/refunds/<refund_id>"): MERCHANT,
    ("POST", "/api/v1/checkout/sessions"): MERCHANT,
    ("GET", "/api/v1/checkout/sessions"): MERCHANT,
    ("GET", "/api/v1/checkout/sessions/<session_id>"): MERCHANT,
    ("GET", "/api/v1/events"): MERCHANT,
    # Balance and payouts: the merchant's key; the bank account by an owner's token (staff
    # read it), never by a key.
    ("GET", "/api/v1/balance"): MERCHANT,
    ("GET", "/api/v1/balance_transactions"): MERCHANT,
    ("GET", "/api/v1/balance_transactions/<transaction_id>"): MERCHANT,
    # Statistics: the URL names a scope in its query (see ``_url``): the cardholder's card,
    # the merchant persona's merchant, or the system (staff only).
    ("GET", "/api/v1/statistics/<family>/monthly"): OWNER_OR_STAFF,
    ("GET", "/api/v1/statistics/<family>/yearly"): OWNER_OR_STAFF,
    ("GET", "/api/v1/statistics/<family>/statuses"): OWNER_OR_STAFF,
    ("GET", "/api/v1/statistics/<family>/methods"): MERCHANT_OR_STAFF,
    ("GET", "/api/v1/statistics/dashboard"): STAFF,
    ("POST", "/api/v1/payouts"): MERCHANT,
    ("GET", "/api/v1/payouts"): MERCHANT,
    ("GET", "/api/v1/payouts/<payout_id>"): MERCHANT,
    ("PUT", "/api/v1/merchants/<merchant_id>/bank_account"): MERCHANT,
    ("GET", "/api/v1/merchants/<merchant_id>/bank_account"): MERCHANT_OR_STAFF,
    ("GET", "/merchant/<mid>/balance"): MERCHANT_OR_STAFF,
    ("POST", "/merchant/<mid>/balance/bank_account"): MERCHANT,
    ("POST", "/merchant/<mid>/payouts"): MERCHANT,
    ("GET", "/merchant/<mid>/payouts/<po>"): MERCHANT_OR_STAFF,
    ("GET", "/merchant/<mid>/payouts/<po>/report.csv"): MERCHANT_OR_STAFF,
    ("GET", "/api/v1/events/<event_id>"): MERCHANT,
    ("POST", "/api/v1/webhook_endpoints"): MERCHANT,
    ("GET", "/api/v1/webhook_endpoints"): MERCHANT,
    ("GET", "/api/v1/webhook_endpoints/<endpoint_id>"): MERCHANT,
    ("POST", "/api/v1/webhook_endpoints/<endpoint_id>"): MERCHANT,
    ("DELETE", "/api/v1/webhook_endpoints/<endpoint_id>"): MERCHANT,
    ("POST", "/api/v1/webhook_endpoints/<endpoint_id>/rotate_secret"): MERCHANT,
    ("GET", "/api/v1/webhook_endpoints/<endpoint_id>/deliveries"): MERCHANT,
    ("POST", "/api/v1/webhook_endpoints/<endpoint_id>/deliveries/<delivery_id>/resend"): MERCHANT,
    ("POST", "/api/v1/webhook_endpoints/<endpoint_id>/replay_failed"): MERCHANT,
    ("POST", "/api/v1/webhook_endpoints/<endpoint_id>/test"): MERCHANT,
    # Merchant pages: members see their merchant, staff may look (merchants:read), only members
    # whose role allows act; the staff merchants page needs merchants:read, deciding manage.
    ("GET", "/merchant"): SIGNED_IN,
    ("GET", "/merchant/apply"): SIGNED_IN,
    ("POST", "/merchant/apply"): SIGNED_IN,
    ("GET", "/merchant/<mid>"): MERCHANT_OR_STAFF,
    ("GET", "/merchant/<mid>/changes"): MERCHANT_OR_STAFF,
    ("GET", "/merchant/<mid>/payments"): MERCHANT_OR_STAFF,
    ("GET", "/merchant/<mid>/payments/<pid>"): MERCHANT_OR_STAFF,
    ("POST", "/merchant/<mid>/payments/<pid>/capture"): MERCHANT,
    ("POST", "/merchant/<mid>/payments/<pid>/cancel"): MERCHANT,
    ("POST", "/merchant/<mid>/payments/<pid>/refund"): MERCHANT,
    ("GET", "/merchant/<mid>/keys"): MERCHANT,  # managing keys; staff read their metadata by API
    ("POST", "/merchant/<mid>/keys"): MERCHANT,
    ("POST", "/merchant/<mid>/keys/<kid>/roll"): MERCHANT,
    ("POST", "/merchant/<mid>/keys/<kid>/revoke"): MERCHANT,
    # Webhooks: managed by owners and developers only, like keys (viewers and staff: 403).
    ("GET", "/merchant/<mid>/webhooks"): MERCHANT,
    ("POST", "/merchant/<mid>/webhooks"): MERCHANT,
    ("GET", "/merchant/<mid>/webhooks/<endpoint_id>"): MERCHANT,
    ("POST", "/merchant/<mid>/webhooks/<endpoint_id>/test"): MERCHANT,
    ("POST", "/merchant/<mid>/webhooks/<endpoint_id>/deliveries/<delivery_id>/resend"): MERCHANT,
    ("POST", "/merchant/<mid>/webhooks/<endpoint_id>/replay"): MERCHANT,
    ("POST", "/merchant/<mid>/webhooks/<endpoint_id>/rotate"): MERCHANT,
    ("POST", "/merchant/<mid>/webhooks/<endpoint_id>/status"): MERCHANT,
    ("POST", "/merchant/<mid>/webhooks/<endpoint_id>/delete"): MERCHANT,
    ("GET", "/merchant/<mid>/team"): MERCHANT_OR_STAFF,
    ("POST", "/merchant/<mid>/team/invitations"): MERCHANT,
    ("POST", "/merchant/<mid>/team/invitations/<iid>/revoke"): MERCHANT,
    ("POST", "/merchant/<mid>/team/members/<member>/role"): MERCHANT,
    ("POST", "/merchant/<mid>/team/members/<member>/remove"): MERCHANT,
    ("GET", "/merchant/<mid>/start"): MERCHANT_OR_STAFF,
    ("GET", "/merchant/join/<token>"): NOBODY,  # an unknown invitation is a 404 for everyone
    ("POST", "/merchant/join/<token>"): NOBODY,
    ("GET", "/merchant/staff"): STAFF,  # moved into the console: a redirect there
    # The staff console: staff past the second factor; each page names its permission.
    ("GET", "/admin/"): STAFF,
    # Console: users and roles (support reads; acting needs users:manage or roles:manage).
    ("GET", "/admin/users"): STAFF,
    ("POST", "/admin/users/bulk"): ADMIN,
    ("GET", "/admin/users/<user_id>"): STAFF,
    ("GET", "/admin/users/<user_id>/changes"): STAFF,
    ("POST", "/admin/users/<user_id>/<action>"): ADMIN,
    ("POST", "/admin/users/<user_id>/roles"): ADMIN,
    ("GET", "/admin/roles"): STAFF,
    ("POST", "/admin/roles"): ADMIN,
    ("POST", "/admin/roles/bulk"): ADMIN,
    ("GET", "/admin/roles/<role>"): STAFF,
    ("GET", "/admin/roles/<role>/changes"): STAFF,
    ("POST", "/admin/roles/<role>/<action>"): ADMIN,
    ("POST", "/admin/roles/<role>/permissions"): ADMIN,
    # Money records and webhook deliveries: staff read them (money:read, merchants:read).
    **{("GET", f"/admin/{segment}{tail}"): STAFF
       for segment, param in (("top-ups", "top_up_id"), ("transfers", "transfer_id"),
                              ("withdrawals", "withdrawal_id"), ("payments", "payment_id"),
                              ("refunds", "refund_id"), ("payouts", "payout_id"),
                              ("deliveries", "delivery_id"))
       for tail in ("", f"/<{param}>", f"/<{param}>/changes")},  # fmt: skip
    # Adjustments: staff read them (money:read), administrators (ledger:adjust) request and
    # decide; the path's request was made by a third administrator, so the admin persona may
    # approve it, and withdrawing it is refused on the page (only its requester may).
    ("GET", "/admin/adjustments"): STAFF,
    ("GET", "/admin/adjustments/new"): ADMIN,
    ("POST", "/admin/adjustments/new"): ADMIN,
    ("GET", "/admin/adjustments/<adjustment_id>"): STAFF,
    ("GET", "/admin/adjustments/<adjustment_id>/changes"): STAFF,
    ("POST", "/admin/adjustments/<adjustment_id>/approve"): ADMIN,
    ("POST", "/admin/adjustments/<adjustment_id>/reject"): ADMIN,
    ("POST", "/admin/adjustments/<adjustment_id>/withdraw"): ADMIN,
    # Reconciliation: staff read the last check (money:read), admin runs it (reconciliation:run).
    ("GET", "/admin/reconciliation"): STAFF,
    ("POST", "/admin/reconciliation/run"): ADMIN,
    # The queues: staff read them; confirm and fail need withdrawals:manage / money:manage.
    ("GET", "/admin/queues/withdrawals"): STAFF,
    ("GET", "/admin/queues/payouts"): STAFF,
    ("GET", "/admin/queues/withdrawals/changes"): STAFF,
    ("GET", "/admin/queues/payouts/changes"): STAFF,
    ("POST", "/admin/queues/withdrawals/<withdrawal_id>/confirm"): ADMIN,
    ("POST", "/admin/queues/withdrawals/<withdrawal_id>/fail"): ADMIN,
    ("POST", "/admin/queues/payouts/<payout_id>/confirm"): ADMIN,
    ("POST", "/admin/queues/payouts/<payout_id>/fail"): ADMIN,
    # Console: cards and wallets (cards:read reads; cards:manage acts).
    ("GET", "/admin/cards"): STAFF,
    ("POST", "/admin/cards/bulk"): ADMIN,
    ("GET", "/admin/cards/<card_id>"): STAFF,
    ("GET", "/admin/cards/<card_id>/changes"): STAFF,
    ("POST", "/admin/cards/<card_id>/<action>"): ADMIN,
    # The audit log and its verification: audit:read (support and admin).
    ("GET", "/admin/audit"): STAFF,
    ("POST", "/admin/audit/verify"): STAFF,
    # Console: merchants (merchants:read reads; merchants:manage decides, archives, deletes).
    ("GET", "/admin/merchants"): STAFF,
    ("POST", "/admin/merchants/bulk"): ADMIN,
    ("GET", "/admin/merchants/<mid>"): STAFF,
    ("GET", "/admin/merchants/<mid>/changes"): STAFF,
    ("POST", "/admin/merchants/<mid>/<action>"): ADMIN,
    # Hosted checkout: anyone with the link sees the page and may cancel; paying needs sign-in.
    ("GET", "/checkout/<session_id>"): EVERYONE,
    ("POST", "/checkout/<session_id>"): SIGNED_IN,
    ("GET", "/checkout/<session_id>/cancel"): EVERYONE,
}

ROLES_OF = {
    "cardholder": ("cardholder",),
    "other": ("cardholder",),
    "merchant": ("merchant",),
    "support": ("support",),
    "admin": ("admin",),
}


@dataclass
class Persona:
    name: str
    user_id: int | None = None
    user_public_id: str | None = None
    web_token: str | None = None
    access_token: str | None = None
    #: A second web session and token family: the objects revoke routes act on (revoking the
    #: session a request arrives with would sign that persona out mid-test).
    other_session_id: str | None = None
    other_family_id: str | None = None
    #: The cardholder's card and one money movement of each kind on it (path objects), by the
    #: public ids the paths take.
    card_id: str | None = None
    top_up_id: str | None = None
    transfer_id: str | None = None
    withdrawal_id: str | None = None
    #: A payment to another person (``tr_...``) and that person as a payee (``pye_...``).
    paid_id: str | None = None
    payee_id: str | None = None
    #: The merchant persona's merchant and what it owns.
    merchant: dict[str, str] | None = None
    #: A pending balance adjustment of the cardholder's card (``adj_...``), asked for by an
    #: administrator who is none of the personas.
    adjustment_id: str | None = None


def _normalise(rule: str) -> str:
    """Flask spells converters with their arguments; the table does not."""
    return re.sub(r"<(\w+)\([^)]*\):(\w+)>", r"<\1:\2>", rule)


@pytest.fixture
def personas(uow, make: Factory) -> dict[str, Persona]:
    found = {"anonymous": Persona("anonymous")}
    for name, roles in ROLES_OF.items():
        actor = make.user(roles=roles, first_name=name.title())
        assert actor.id is not None
        if name in STAFF:
            issued = mfa.issue_enrolment_code(uow, actor=SYSTEM, user_id=actor.id).code
            enrolment = mfa.begin_totp_enrolment(uow, actor=actor, enrolment_code=issued)
            mfa.confirm_totp(uow, actor=actor, code=pyotp.TOTP(enrolment.secret).now())
        web = sessions.create_web_session(
            uow, user_id=actor.id, user_agent="matrix", ip="127.0.0.1", mfa_verified=True
        )
        other_web = sessions.create_web_session(
            uow, user_id=actor.id, user_agent="other device", ip="127.0.0.2", mfa_verified=True
        )
        pair = tokens.issue_tokens(uow, user_id=actor.id, user_agent="matrix")
        other_pair = tokens.issue_tokens(uow, user_id=actor.id, user_agent="other device")
        found[name] = Persona(name, actor.id, actor.public_id, web.token, pair.access_token,
                              other_web.public_id, str(other_pair.family_id))  # fmt: skip
        if name == "cardholder":
            _give_money_objects(uow, make, actor, found[name])
    merchant = found["merchant"]
    merchant.merchant = _give_merchant_objects(
        uow, make, users.actor_for(uow, merchant.user_id),
        users.actor_for(uow, found["admin"].user_id),
    )  # fmt: skip
    found["cardholder"].merchant = merchant.merchant  # path values come from the cardholder
    found["cardholder"].adjustment_id = _give_adjustment(uow, make, found["cardholder"])
    return found


def _give_adjustment(uow, make: Factory, holder: Persona) -> str:
    requester = make.user(roles=("admin",), first_name="Requester")
    made = adjustments.request_adjustment(
        uow, actor=requester, target=holder.card_id or "", direction="credit",
        amount=Money.of_major("3.00", "USD"), reason="Matrix", reference="M-1",
        idempotency_key=new_key(),
    )  # fmt: skip
    return made.public_id


def _give_merchant_objects(uow, make: Factory, owner, admin) -> dict[str, str]:
    """An active merchant with a key, a captured and refunded payment, a held one, a checkout
    session and an open invitation: the objects the merchant routes' paths name."""
    applied = merchants.apply(
        uow, actor=owner, name="Matrix Shop", website="https://matrix.example",
        contact_email="shop@matrix.example", settlement_currency="USD",
    )  # fmt: skip
    shop = merchants.decide(uow, actor=admin, merchant=applied.public_id, action="approve")
    key = keys.create_api_key(uow, actor=owner, merchant=shop.public_id, name="matrix",
                              scopes=keys.SCOPES)  # fmt: skip
    assert key.secret is not None
    api = keys.authenticate_api_key(uow, secret=key.secret).actor
    payer = make.card(make.user(), balance="100")
    card = payments.CardDetails(payer.number, payer.expiry_month, payer.expiry_year, payer.cvv)
    paid = payments.create_payment(uow, actor=api, merchant=shop.id, amount=Money(5000, "USD"),
                                   card=card, idempotency_key=new_key())  # fmt: skip
    payments.create_payment(
        uow,
        actor=api,
        merchant=shop.id,
        amount=Money(1000, "USD"),
        card=card,
        idempotency_key=new_key(),
        capture_method="manual",
    )
    refund = payments.create_refund(uow, actor=api, merchant=shop.id, payment=paid.id,
                                    idempotency_key=new_key(), amount=100)  # fmt: skip
    session = checkout.create_checkout_session(
        uow, actor=api, merchant=shop.id, amount=Money(700, "USD"),
        success_url="https://matrix.example/ok", cancel_url="https://matrix.example/back",
        idempotency_key=new_key(),
    )  # fmt: skip
    invitation = merchants.invite_member(
        uow, actor=owner, merchant=shop.public_id, email="invited@example.test", role="viewer"
    )
    (member,) = merchants.list_members(uow, actor=owner, merchant=shop.public_id)
    event = events.list_events(uow, actor=api, merchant=shop.id, limit=1).items[0]
    hook = webhooks.create_endpoint(uow, actor=api, merchant=shop.id, enabled_events=["*"],
                                    url="https://hooks.matrix.example/portal")  # fmt: skip
    payments.create_payment(
        uow,
        actor=api,
        merchant=shop.id,
        amount=Money(900, "USD"),
        card=card,
        idempotency_key=new_key(),
    )  # a delivery to the endpoint
    (delivery, *_) = webhooks.list_deliveries(uow, actor=api, merchant=shop.id,
                                              endpoint=hook.id)  # fmt: skip
    # A payment captured three days ago is available: it is paid out to the bank account.
    now = uow.clock
    uow.clock = lambda: now() - timedelta(days=3)
    try:
        payments.create_payment(uow, actor=api, merchant=shop.id, amount=Money(3000, "USD"),
                                card=card, idempotency_key=new_key())  # fmt: skip
    finally:
        uow.clock = now
    payouts.set_bank_account(
        uow,
        actor=owner,
        merchant=shop.id,
        bank=wallet.BankAccount("Matrix Bank", "12345678", "Matrix"),
    )
    payout = payouts.create_payout(uow, actor=owner, merchant=shop.id, idempotency_key=new_key())
    return {
        "merchant_id": shop.public_id, "mid": shop.public_id, "key_id": key.public_id,
        "kid": key.public_id, "payment_id": paid.id, "pid": paid.id, "refund_id": refund.id,
        "checkout_id": session.id, "member_id": member.public_id,
        "member": member.public_id, "iid": invitation.public_id, "action": "suspend",
        "event_id": event.id, "endpoint_id": hook.id, "delivery_id": delivery.id,
        "payout_id": payout.id, "po": payout.id, "transaction_id": payout.balance_transaction,
        "secret": key.secret,
    }  # fmt: skip


def _give_money_objects(uow, make: Factory, actor, persona: Persona) -> None:
    """A card with a top-up, a transfer (to the cardholder's second card) and a pending
    withdrawal: the objects the money routes' paths name."""
    card, spare = make.card(actor), make.card(actor)
    amount = Money.of_major("50.00", "USD")
    top_up = wallet.top_up(uow, actor=actor, card_id=card.card_id, amount=amount,
                           method="cash", idempotency_key=new_key())  # fmt: skip
    make.fund(card, "50.00")  # the money itself (a top-up may stay pending until funded)
    moved = wallet.transfer(uow, actor=actor, from_card_id=card.card_id,
                            to_card_id=spare.card_id, amount=Money.of_major("5.00", "USD"),
                            idempotency_key=new_key())  # fmt: skip
    held = wallet.withdraw(uow, actor=actor, card_id=card.card_id, amount=Money.of_major(
        "10.00", "USD"), bank=wallet.BankAccount("Bank", "12345678", "Card Holder"),
        idempotency_key=new_key())  # fmt: skip
    persona.card_id, persona.top_up_id = card.public_id, top_up.public_id
    persona.transfer_id, persona.withdrawal_id = moved.public_id, held.public_id
    # Another person paid by email: the payee routes' objects.
    person = make.user(email=f"payee-{new_key()[:8]}@example.test")
    make.card(person)
    found = payees.find_person(uow, actor=actor, to=_email(uow, person), currency="USD")
    paid = wallet.transfer(uow, actor=actor, from_card_id=card.card_id,
                           to_card_id=found.reference, amount=Money.of_major("1.00", "USD"),
                           idempotency_key=new_key())  # fmt: skip
    (payee,) = payees.list_payees(uow, actor=actor)
    persona.paid_id, persona.payee_id = paid.public_id, payee.public_id


def _email(uow, actor) -> str:
    return uow.run(
        lambda u: u.execute(
            sa.text("SELECT email FROM users WHERE id = :i"), {"i": actor.id}
        ).scalar_one()
    )


def _url(rule: str, owner: Persona) -> str:
    values = {
        "user_id": owner.user_public_id or "",
        "session_id": owner.other_session_id or "",
        "family_id": owner.other_family_id or "",
        "role": "cardholder",
        "permission": "wallet:use",
        "token": "not-a-real-token",
        "kind": "web",
        "ident": owner.other_session_id or "",
        "card_id": owner.card_id or "",
        "top_up_id": owner.top_up_id or "",
        "movement_id": owner.top_up_id or "",
        "transfer_id": owner.transfer_id or "",
        "withdrawal_id": owner.withdrawal_id or "",
        "payee_id": owner.payee_id or "",
        "adjustment_id": owner.adjustment_id or "",
        "family": "payments",  # statistics
        "month": datetime.now(UTC).strftime("%Y-%m"),  # this month's statement, to date
        **{k: v for k, v in (owner.merchant or {}).items() if k != "secret"},
    }
    if rule.startswith(("/admin/users/", "/admin/roles/")):  # console record actions
        values["action"] = "archive"
    if rule.startswith("/admin/cards/"):
        values["action"] = "freeze"
    if rule.startswith("/wallet/pay/sent/"):  # a payment to a person, not between own cards
        values["transfer_id"] = owner.paid_id or ""
    if rule.startswith(("/checkout/", "/api/v1/checkout/")):
        values["session_id"] = (owner.merchant or {})["checkout_id"]
    url = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: values[m.group(1)], rule)
    if rule.startswith("/api/v1/statistics/<family>/"):  # whose figures: a query parameter
        url += (f"?scope=merchant&id={values['merchant_id']}" if rule.endswith("/methods")
                else f"?scope=card&id={values['card_id']}")  # fmt: skip
    return url


def _request(client: FlaskClient, persona: Persona, method: str, url: str, rule: str):
    headers = {}
    with client.session_transaction() as flask_session:
        flask_session.clear()
        if persona.web_token:
            flask_session[SESSION_KEY] = persona.web_token
    if url.startswith("/api/") and persona.access_token:
        headers["Authorization"] = f"Bearer {persona.access_token}"
    if url.startswith(KEY_ROUTES):
        headers["Idempotency-Key"] = new_key()
        if persona.name == "merchant":
            assert persona.merchant is not None
            headers["Authorization"] = f"Bearer {persona.merchant['secret']}"
    body = BODIES.get((method, rule), {})
    kwargs = {"json": body} if url.startswith("/api/") and method != "GET" else {"data": {}}
    return client.open(url, method=method, headers=headers, **kwargs)


def _allowed(response) -> bool:
    if response.status_code in (401, 403, 404):
        return False
    location = response.headers.get("Location", "")
    return not (response.status_code in (301, 302, 303) and (
        "/auth/login" in location or "/auth/mfa" in location))  # fmt: skip


def test_every_route_answers_as_the_table_says(app: Flask, connection, personas):
    rules = {
        (method, _normalise(rule.rule))
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    assert rules - EXPECTED.keys() == set(), "routes missing from the access table"
    assert EXPECTED.keys() - rules == set(), "the table names routes that no longer exist"

    client = app.test_client()
    wrong: list[str] = []
    for method, rule in sorted(rules, key=lambda r: (r[1], r[0])):
        url = _url(rule, personas["cardholder"])
        for name in PERSONAS:
            limiter.reset()
            savepoint = connection.begin_nested()
            try:
                response = _request(client, personas[name], method, url, rule)
            finally:
                savepoint.rollback()
            assert response.status_code < 500, f"{method} {url} as {name}: {response.status_code}"
            expected = name in EXPECTED[(method, rule)]
            if _allowed(response) != expected:
                wrong.append(
                    f"{method} {rule} as {name}: {response.status_code}"
                    f" {response.headers.get('Location', '')} (expected"
                    f" {'allowed' if expected else 'refused'})"
                )
    assert not wrong, "\n".join(wrong)


def test_table_personas_are_who_they_claim(connection, personas):
    roles = dict(
        connection.execute(
            sa.text(
                "SELECT u.id, r.name FROM users u JOIN user_roles ur ON ur.user_id = u.id"
                " JOIN roles r ON r.id = ur.role_id"
            )
        ).all()
    )
    for name, expected in ROLES_OF.items():
        assert roles[personas[name].user_id] == expected[0]
