"""Typed SQLAlchemy models. Importing this package registers every table on ``Base.metadata``."""

from portal.models.adjustments import AdjustmentRequest
from portal.models.base import Base
from portal.models.identity import (
    OAuthIdentity,
    Permission,
    RecoveryCode,
    RefreshToken,
    Role,
    User,
    UserToken,
    WebSession,
    role_permissions,
    user_roles,
)
from portal.models.ledger import (
    CUSTOMER_ACCOUNT_KINDS,
    SYSTEM_ACCOUNT_KINDS,
    Account,
    Card,
    Hold,
    JournalEntry,
    Posting,
)
from portal.models.merchants import (
    ApiKey,
    CheckoutSession,
    Event,
    Merchant,
    MerchantInvitation,
    MerchantMember,
    Payment,
    Refund,
)
from portal.models.movements import TopUp, Transfer, Withdrawal
from portal.models.payees import Payee, ReceivingCard
from portal.models.settlements import BalanceTransaction, DemoProcessorRequest, Payout
from portal.models.statistics import StatCheck, StatRollup
from portal.models.system import (
    AuditChainHead,
    AuditEvent,
    IdempotencyKey,
    Job,
    LedgerCheck,
    OutboxEvent,
    RateLimitCounter,
)

__all__ = [
    "AdjustmentRequest",
    "BalanceTransaction",
    "DemoProcessorRequest",
    "Payout",
    "CUSTOMER_ACCOUNT_KINDS",
    "SYSTEM_ACCOUNT_KINDS",
    "Account",
    "ApiKey",
    "AuditChainHead",
    "AuditEvent",
    "Base",
    "Card",
    "CheckoutSession",
    "Event",
    "Hold",
    "IdempotencyKey",
    "Job",
    "LedgerCheck",
    "RateLimitCounter",
    "JournalEntry",
    "Merchant",
    "MerchantInvitation",
    "MerchantMember",
    "OAuthIdentity",
    "OutboxEvent",
    "Payee",
    "Payment",
    "Permission",
    "Posting",
    "ReceivingCard",
    "StatCheck",
    "StatRollup",
    "RecoveryCode",
    "Refund",
    "RefreshToken",
    "Role",
    "TopUp",
    "Transfer",
    "User",
    "UserToken",
    "WebSession",
    "Withdrawal",
    "role_permissions",
    "user_roles",
]
