"""A bounded, seeded schemathesis run over the merchant operations (merchants, payments,
refunds, events, balance and payouts) of the real application: no 5xx, and every answer conforms to
the OpenAPI document; in negative mode, schema-invalid requests are refused with a 4xx.
Payments, refunds, the balance and payouts run with the merchant's secret key, merchant
management and the bank account with its owner's access token. Half the positive cases get
known values swapped in (the merchant, a held and a captured payment, a card that can pay, a
refund, a payout and its transaction), so the run reaches the services' real paths."""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask

from portal.domain.money import Money
from portal.extensions import limiter
from portal.services.identity import accounts
from portal.services.merchants import payments, payouts
from portal.services.shared.uow import UnitOfWork
from portal.services.wallet.wallet import BankAccount
from tests.api.test_auth_api import API, bearer, client_for, new_address, token_for
from tests.conftest import Factory, new_key
from tests.merchants.conftest import Shop, card_details

TAGS = {"merchants", "payments", "refunds", "payouts", "events"}
SEED = 20_261_202
EXAMPLES = {"positive": 10, "negative": 6}


def known_values(uow: UnitOfWork, make: Factory, shop: Shop) -> dict[str, Any]:
    card = make.card(make.user(), balance="1000")
    captured = payments.create_payment(
        uow, actor=shop.api, merchant=shop.merchant.id, amount=Money(5000, "USD"),
        card=card_details(card), idempotency_key=new_key(),
    )  # fmt: skip
    held = payments.create_payment(
        uow, actor=shop.api, merchant=shop.merchant.id, amount=Money(3000, "USD"),
        card=card_details(card), idempotency_key=new_key(), capture_method="manual",
    )  # fmt: skip
    refund = payments.create_refund(
        uow, actor=shop.api, merchant=shop.merchant.id, payment=captured.id,
        idempotency_key=new_key(), amount=100,
    )  # fmt: skip
    now = uow.clock
    uow.clock = lambda: now() - timedelta(days=3)  # captured then: available now
    try:
        payments.create_payment(
            uow, actor=shop.api, merchant=shop.merchant.id, amount=Money(4000, "USD"),
            card=card_details(card), idempotency_key=new_key(),
        )  # fmt: skip
    finally:
        uow.clock = now
    payouts.set_bank_account(
        uow,
        actor=shop.owner,
        merchant=shop.merchant.id,
        bank=BankAccount("Bank Mandiri", "1234 5678 9012", "Shop"),
    )
    payout = payouts.create_payout(uow, actor=shop.owner, merchant=shop.merchant.id,
                                   idempotency_key=new_key())  # fmt: skip
    return {
        "path": {
            "merchant_id": [shop.merchant.public_id],
            "payment_id": [captured.id, held.id],
            "refund_id": [refund.id],
            "key_id": [shop.key.public_id],
            "payout_id": [payout.id],
            "transaction_id": [payout.balance_transaction],
        },
        "card": {"number": card.number, "exp_month": card.expiry_month,
                 "exp_year": card.expiry_year, "cvc": card.cvv},
        "payment": captured.id,
    }  # fmt: skip


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_merchant_api_answers_only_what_it_documents(
    app: Flask, connection: Any, uow: UnitOfWork, make: Factory, shop: Shop, mode: str
) -> None:
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, seed, settings
    from hypothesis import strategies as st
    from schemathesis.checks import positive_data_acceptance
    from schemathesis.generation import GenerationMode

    limiter.reset()
    token = token_for(uow, accounts.get_user_view(uow, shop.owner.id))
    known = known_values(uow, make, shop)
    address = new_address()
    serial = itertools.count()
    schema = schemathesis.openapi.from_wsgi(f"{API}/openapi.json", app)
    generation = GenerationMode.POSITIVE if mode == "positive" else GenerationMode.NEGATIVE
    tested: list[str] = []
    auth: dict[str, dict[str, str]] = {}
    for result in schema.get_all_operations():
        op = result.ok()
        raw = op.definition.raw
        tags = set(raw.get("tags", ()))
        if not TAGS & tags or raw["operationId"] in {"revoke_api_key", "roll_api_key"}:
            continue  # revoking or rolling the run's own key would end its authentication
        by_token = "/merchants" in op.path  # merchant management and the bank account
        auth[raw["operationId"]] = bearer(token if by_token else shop.key.secret)

        @seed(SEED)
        @settings(
            max_examples=EXAMPLES[mode], deadline=None, derandomize=True, database=None,
            phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
        )  # fmt: skip
        @given(case=op.as_strategy(generation_mode=generation), data=st.data())
        def run(case: Any, data: Any) -> None:
            if mode == "positive" and data.draw(st.booleans(), label="known values"):
                for name in list(case.path_parameters or {}):
                    if name in known["path"]:
                        case.path_parameters[name] = data.draw(
                            st.sampled_from(known["path"][name]), name
                        )
                op_id = case.operation.definition.raw["operationId"]
                if op_id == "create_payment" and isinstance(case.body, dict):
                    case.body = {**case.body, "card": known["card"], "currency": "usd",
                                 "amount": 100 + next(serial)}  # fmt: skip
                if op_id == "create_refund" and isinstance(case.body, dict):
                    case.body = {**case.body, "payment": known["payment"], "amount": 1}
            case.call_and_validate(
                headers={
                    **auth[case.operation.definition.raw["operationId"]],
                    "Idempotency-Key": f"fuzz-{next(serial)}",
                },
                excluded_checks=[positive_data_acceptance],
                environ_base={"REMOTE_ADDR": address},
            )

        run()
        tested.append(raw["operationId"])

    assert {"create_payment", "capture_payment", "create_refund", "apply_for_merchant",
            "get_balance", "list_balance_transactions", "create_payout", "get_payout",
            "set_bank_account"} <= set(tested), sorted(tested)  # fmt: skip
    api = client_for(app)
    assert api.get(f"{API}/payments", headers=bearer(shop.key.secret)).status_code == 200
