"""The merchant's balance, its history and payouts (``/api/v1/balance``,
``/api/v1/balance_transactions``, ``/api/v1/payouts``), and where payouts go
(``/api/v1/merchants/{id}/bank_account``, owners only, never an API key).

Every movement on the balance is a balance transaction (``txn_``) whose ``net`` is exactly what
the ledger posted on the merchant's balance account. Captured funds are ``pending`` until
``available_on`` (``PORTAL_SETTLEMENT_DELAY_DAYS`` after the UTC day of capture); a payout
takes the ``available`` part only, so a refund after a payout is covered by what is pending or
refused (400 ``balance_insufficient``). ``GET /balance_transactions?payout=po_...`` lists the
rows of a payout's report: their net sums to the payout's amount.
"""

from __future__ import annotations

from typing import Literal

from flask import request
from pydantic import Field

from portal.api import bp
from portal.api.merchant_auth import key_failures
from portal.api.merchants import MERCHANT_ID
from portal.api.operation import mark_replayed, operation
from portal.api.pagination import ListResponse
from portal.api.schemas import ApiModel, QueryModel, RequestBody
from portal.domain.errors import IdempotencyConflict, NotFound, UnexpectedState
from portal.domain.ids import MAX_LENGTH
from portal.domain.types import Actor
from portal.services.merchants import payouts, settlements
from portal.services.shared.pagination import DEFAULT_LIMIT, MAX_LIMIT
from portal.services.wallet.wallet import BankAccount as BankDetails
from portal.web.uow import make_uow

TransactionType = Literal[settlements.TYPES]  # type: ignore[valid-type]
PayoutStatus = Literal[payouts.STATUSES]  # type: ignore[valid-type]


class Amount(ApiModel):
    amount: int = Field(description="Minor units; negative when refunds exceed what is there.")
    currency: str = Field(examples=["usd"])


class Balance(ApiModel):
    object: Literal["balance"] = "balance"
    available: list[Amount] = Field(description="May be paid out now, per currency.")
    pending: list[Amount] = Field(description="Captured, not yet available, per currency.")


class BalanceTransaction(ApiModel):
    id: str = Field(examples=["txn_1MiN3gLkdIwHu7ixxapQrznl"])
    object: Literal["balance_transaction"] = "balance_transaction"
    type: TransactionType
    amount: int = Field(description="Gross, minor units (negative for money leaving).")
    fee: int = Field(description="Portal's fee, minor units.")
    net: int = Field(description="`amount - fee`: what the balance moved by.")
    currency: str = Field(examples=["usd"])
    status: Literal["pending", "available"]
    available_on: int = Field(description="Unix seconds.")
    created: int = Field(description="Unix seconds.")
    source: str | None = Field(description="The payment, refund or payout it came from.")
    payout: str | None = Field(description="The payout that paid it out, once one has.")
    description: str

    @classmethod
    def of(cls, t: settlements.BalanceTransactionView) -> BalanceTransaction:
        return cls.model_validate(settlements.balance_transaction_object(t))


class BalanceTransactionList(ListResponse[BalanceTransaction]):
    """The merchant's balance transactions, newest first."""


class BalanceTransactionQuery(QueryModel):
    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)
    starting_after: str | None = Field(None, max_length=MAX_LENGTH)
    payout: str | None = Field(
        None, max_length=MAX_LENGTH, description="Only what this payout paid out (its report)."
    )
    type: TransactionType | None = None
    currency: str | None = Field(None, min_length=3, max_length=3, examples=["usd"])


class Destination(ApiModel):
    bank_name: str
    last4: str


class Payout(ApiModel):
    id: str = Field(examples=["po_1OaFDbEcg9tTZuTgNYmX0PKB"])
    object: Literal["payout"] = "payout"
    amount: int
    currency: str = Field(examples=["usd"])
    status: PayoutStatus
    automatic: bool = Field(description="Made by the daily schedule, not on request.")
    method: Literal["standard"] = "standard"
    destination: Destination
    balance_transaction: str = Field(description="The payout's own `payout` transaction.")
    failure_code: str | None
    failure_message: str | None
    description: str
    created: int = Field(description="Unix seconds.")
    arrival_date: int | None = Field(description="Unix seconds, once paid.")
    failed_at: int | None

    @classmethod
    def of(cls, p: payouts.PayoutView) -> Payout:
        return cls.model_validate(payouts.payout_object(p))


class PayoutList(ListResponse[Payout]):
    """The merchant's payouts, newest first."""


class PayoutQuery(QueryModel):
    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)
    starting_after: str | None = Field(None, max_length=MAX_LENGTH)
    status: PayoutStatus | None = None


class NewPayout(RequestBody):
    currency: str | None = Field(
        None, min_length=3, max_length=3, description="Default: the settlement currency."
    )


class BankAccount(ApiModel):
    object: Literal["bank_account"] = "bank_account"
    bank_name: str
    last4: str


#: ``wallet.BankAccount.validated``'s rules, copied (that module states them as literals): a
#: bank name and an account holder of 2 to 100 characters (trimmed), an account number of 6 to
#: 34 ASCII letters or digits once spaces and dashes are taken out.
BANK_TEXT_MIN, BANK_TEXT_MAX = 2, 100
ACCOUNT_NUMBER_MIN, ACCOUNT_NUMBER_MAX = 6, 34
#: The account number's shape: 6 to 34 letters or digits, with spaces and dashes anywhere.
ACCOUNT_NUMBER_PATTERN = (
    rf"^[ -]*(?:[A-Za-z0-9][ -]*){{{ACCOUNT_NUMBER_MIN},{ACCOUNT_NUMBER_MAX}}}$"
)


class NewBankAccount(RequestBody):
    bank_name: str = Field(min_length=BANK_TEXT_MIN, max_length=BANK_TEXT_MAX,
                           examples=["Bank Mandiri"])  # fmt: skip
    account_number: str = Field(
        min_length=ACCOUNT_NUMBER_MIN,
        # Every letter or digit may be followed by a space or a dash.
        max_length=2 * ACCOUNT_NUMBER_MAX,
        pattern=ACCOUNT_NUMBER_PATTERN,
        examples=["1234 5678 9012"],
        description=f"{ACCOUNT_NUMBER_MIN} to {ACCOUNT_NUMBER_MAX} letters or digits; spaces"
        " and dashes are ignored. Shown again as the last four only.",
    )
    account_holder: str = Field(min_length=BANK_TEXT_MIN, max_length=BANK_TEXT_MAX)


# -- balance ------------------------------------------------------------------------------------
@operation(
    bp, "GET", "/balance", summary="Retrieve the balance", tags=["payouts"], auth="api_key",
    permission="payments:read", response=Balance, rate_limit=key_failures,
)  # fmt: skip
def get_balance(actor: Actor) -> Balance:
    """Available and pending per currency; together they are the ledger's balance."""
    assert actor.id is not None
    found = settlements.get_balance(make_uow(), actor=actor, merchant=actor.id)
    return Balance.model_validate(settlements.balance_object(found))


@operation(
    bp, "GET", "/balance_transactions", summary="List balance transactions", tags=["payouts"],
    auth="api_key", permission="payments:read", query=BalanceTransactionQuery,
    response=BalanceTransactionList, rate_limit=key_failures,
)  # fmt: skip
def list_balance_transactions(
    query: BalanceTransactionQuery, actor: Actor
) -> BalanceTransactionList:
    """Every movement on the balance, newest first; `payout=po_...` lists a payout's report
    rows (their `net` sums to its amount); filter by `type` and `currency`."""
    assert actor.id is not None
    page = settlements.list_balance_transactions(
        make_uow(), actor=actor, merchant=actor.id, payout=query.payout, type=query.type,
        currency=query.currency, limit=query.limit, starting_after=query.starting_after,
    )  # fmt: skip
    return BalanceTransactionList(url=request.path, has_more=page.has_more,
                                  data=[BalanceTransaction.of(t) for t in page.items])  # fmt: skip


@operation(
    bp, "GET", "/balance_transactions/<transaction_id>", summary="Retrieve a balance transaction",
    tags=["payouts"], auth="api_key", permission="payments:read", response=BalanceTransaction,
    errors=(NotFound,), rate_limit=key_failures, ids={"transaction_id": "balance_transaction"},
)  # fmt: skip
def get_balance_transaction(transaction_id: str, actor: Actor) -> BalanceTransaction:
    """One of the merchant's balance transactions."""
    assert actor.id is not None
    return BalanceTransaction.of(
        settlements.get_balance_transaction(
            make_uow(), actor=actor, merchant=actor.id, transaction=transaction_id
        )
    )


# -- payouts ------------------------------------------------------------------------------------
@operation(
    bp, "POST", "/payouts", summary="Pay out the available balance", tags=["payouts"],
    auth="api_key", permission="payouts:write", body=NewPayout, response=Payout, status=201,
    errors=(IdempotencyConflict, UnexpectedState, 409), idempotency="required",
    rate_limit=key_failures,
)  # fmt: skip
def create_payout(body: NewPayout, actor: Actor, idempotency_key: str) -> Payout:
    """Pay the available balance in `currency` not yet paid out to the bank account: 400
    `bank_account_missing` without one, 400 `balance_insufficient` below the minimum payout.
    The payout is `pending`, then `paid` (or `failed`, its money back on the balance)."""
    assert actor.id is not None
    made = payouts.create_payout(
        make_uow(), actor=actor, merchant=actor.id, idempotency_key=idempotency_key,
        currency=body.currency,
    )  # fmt: skip
    if made.replayed:
        mark_replayed()
    return Payout.of(made)


@operation(
    bp, "GET", "/payouts", summary="List payouts", tags=["payouts"], auth="api_key",
    permission="payments:read", query=PayoutQuery, response=PayoutList, rate_limit=key_failures,
)  # fmt: skip
def list_payouts(query: PayoutQuery, actor: Actor) -> PayoutList:
    """The merchant's payouts, newest first, optionally by `status`."""
    assert actor.id is not None
    page = payouts.list_payouts(
        make_uow(), actor=actor, merchant=actor.id, status=query.status, limit=query.limit,
        starting_after=query.starting_after,
    )  # fmt: skip
    return PayoutList(url=request.path, has_more=page.has_more,
                      data=[Payout.of(p) for p in page.items])  # fmt: skip


@operation(
    bp, "GET", "/payouts/<payout_id>", summary="Retrieve a payout", tags=["payouts"],
    auth="api_key", permission="payments:read", response=Payout, errors=(NotFound,),
    rate_limit=key_failures, ids={"payout_id": "payout"},
)  # fmt: skip
def get_payout(payout_id: str, actor: Actor) -> Payout:
    """One of the merchant's payouts."""
    assert actor.id is not None
    return Payout.of(
        payouts.get_payout(make_uow(), actor=actor, merchant=actor.id, payout=payout_id)
    )


# -- the bank account (members, by bearer token) --------------------------------------------
@operation(
    bp, "PUT", "/merchants/<merchant_id>/bank_account", summary="Set the payout bank account",
    tags=["payouts"], body=NewBankAccount, response=BankAccount, errors=(NotFound,),
    ids=MERCHANT_ID,
)  # fmt: skip
def set_bank_account(merchant_id: str, body: NewBankAccount, actor: Actor) -> BankAccount:
    """Owners only: where payouts go from now on (payouts on their way keep theirs). Stored
    encrypted; only the bank's name and the last four are shown again."""
    view = payouts.set_bank_account(
        make_uow(), actor=actor, merchant=merchant_id,
        bank=BankDetails(body.bank_name, body.account_number, body.account_holder),
    )  # fmt: skip
    return BankAccount(bank_name=view.bank_name, last4=view.last4)


@operation(
    bp, "GET", "/merchants/<merchant_id>/bank_account", summary="Retrieve the payout bank account",
    tags=["payouts"], response=BankAccount, errors=(NotFound,), ids=MERCHANT_ID,
)  # fmt: skip
def get_bank_account(merchant_id: str, actor: Actor) -> BankAccount:
    """The bank's name and last four of where payouts go; 404 when none is set."""
    view = payouts.bank_account(make_uow(), actor=actor, merchant=merchant_id)
    if view is None:
        raise NotFound("no bank account is set for payouts", param="bank_account")
    return BankAccount(bank_name=view.bank_name, last4=view.last4)
