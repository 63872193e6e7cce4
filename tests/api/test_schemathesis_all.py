"""schemathesis over the whole OpenAPI document, three times: as a cardholder (a bearer access
token; the cardholder also owns the merchant, so the merchant-management and bank-account
operations reach their services), as staff (an administrator's access token, second factor set
up as the API requires) and as the merchant (its secret API key). Every operation runs for each:
where the caller's credential is not the operation's scheme, the answer must be the documented
401/403. Seeded and bounded (``EXAMPLES``).

Checks: schemathesis's defaults (no 5xx; status code, content type, headers and body conform to
the document; negative mode: schema-invalid requests are refused with a 4xx; authentication is
not ignored), except ``positive_data_acceptance``: a schema-valid request may still be refused by
a service (an unknown ``starting_after``, a card of someone else, too little money), and those
refusals are documented 4xx answers.

Random ids and bodies mostly reach 404 and 422, so in positive mode half the cases get known,
schema-valid values swapped in: path parameters naming real objects of every kind (cards,
movements, users, sessions, token families, roles, merchants, keys, members, payments, refunds,
checkout sessions, events, webhook endpoints and deliveries, balance transactions, payouts) and
bodies that get past validation (a sign-in, a refresh, a registration, a payment with a real
card, a refund, top-ups, transfers, withdrawals, a checkout session, a password or email change
by a cardholder of its own). Negative cases are left as generated, so their invalid part stays
invalid.

Kept out, so each run keeps its own credentials to the end: ``revoke_all_sessions`` (the
caller's own token family; tested in test_auth_api), and the personas' own user ids, token
families and the merchant's own key in the known values (a spare key is rolled and revoked
instead). Each persona calls from its own client address, and rate limits are reset before each.
All of it runs inside the ``connection`` fixture's transaction and is rolled back.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask

from portal.domain.money import Money
from portal.extensions import limiter
from portal.services.identity import roles, sessions, tokens, users
from portal.services.ledger import reconciliation
from portal.services.merchants import (
    checkout,
    events,
    keys,
    merchants,
    payments,
    payouts,
    webhooks,
)
from portal.services.shared.uow import UnitOfWork
from portal.services.wallet import payees, wallet
from portal.services.wallet.wallet import BankAccount
from tests.api.test_auth_api import (
    API,
    PASSWORD,
    bearer,
    cardholder,
    client_for,
    new_address,
    person,
    token_for,
)
from tests.conftest import SYSTEM, Factory, new_key
from tests.merchants.conftest import card_details

SEED = 20_261_203
PERSONAS = ("cardholder", "merchant", "staff")
#: Examples per operation and mode: where the persona's credential is the operation's scheme,
#: and where it is not (every answer is then the same refusal).
EXAMPLES = {True: {"positive": 8, "negative": 4}, False: {"positive": 2, "negative": 1}}
#: Operations whose known body replaces the generated one (generated extras, such as metadata or
#: a description, would often be refused by the service); the others' are merged into it.
WHOLE_BODIES = {
    "create_token", "refresh_token", "logout", "register", "create_payment", "capture_payment",
    "create_refund", "create_checkout_session", "create_top_up", "create_transfer",
    "create_withdrawal", "issue_card", "set_bank_account", "create_webhook_endpoint",
    "apply_for_merchant", "create_api_key", "create_payout", "lookup_person", "create_payee",
    "set_receiving_card", "reveal_card", "set_handle",
}  # fmt: skip
#: Operations that would end the caller's own authentication.
EXCLUDED = {"revoke_all_sessions"}
#: Known defects: operation id -> (the personas whose run finds it, what its failure says, why).
#: Each such run expects the operation to fail so (strictly, as xfail(strict=True) would) and
#: every other one to pass.
KNOWN_FAILURES: dict[str, tuple[set[str], str, str]] = {}


@dataclass
class World:
    """The personas' credentials and the known values the runs swap in."""

    tokens: dict[str, str]
    path: dict[str, list[Any]]
    bodies: dict[str, dict[str, Any]]
    #: Path values for particular operations (in place of ``path``'s).
    by_operation: dict[str, dict[str, list[Any]]]
    #: Checkout operations' ``session_id`` is a checkout session, not a web session.
    checkout_session: str


def build_world(uow: UnitOfWork, make: Factory) -> World:
    staff_view = person(uow, "admin")
    staff_token = token_for(uow, staff_view)
    staff = users.actor_for(uow, staff_view.id)
    holder_view = person(uow, "cardholder", last_name="Owner")
    holder = users.actor_for(uow, holder_view.id)
    holder_token = token_for(uow, holder_view)
    # The cardholder's cards and movements.
    own = make.card(holder, balance="500")
    second = make.card(holder, balance="50")
    top_up = wallet.top_up(
        uow, actor=holder, card_id=own.public_id, amount=Money(2000, "USD"),
        method="bank_transfer", idempotency_key=new_key(),
    )  # fmt: skip
    transfer = wallet.transfer(
        uow, actor=holder, from_card_id=own.public_id, to_card_id=second.public_id,
        amount=Money(500, "USD"), idempotency_key=new_key(),
    )  # fmt: skip
    withdrawal = wallet.withdraw(
        uow, actor=holder, card_id=own.public_id, amount=Money(1000, "USD"),
        bank=BankAccount("Bank Central Asia", "1234 5678 90", "Grace Owner"),
        idempotency_key=new_key(),
    )  # fmt: skip
    # Another person (not a persona): a card (so deleting them is refused and they stay), a web
    # session, a token family; a custom role.
    target_view = person(uow, "cardholder", last_name="Target")
    target = users.actor_for(uow, target_view.id)
    theirs = make.card(target, balance="1000")
    web = sessions.create_web_session(
        uow, user_id=target_view.id, user_agent="fuzz", ip="192.0.2.9", mfa_verified=False
    )
    pair = tokens.issue_tokens(uow, user_id=target_view.id)
    role = roles.create_role(
        uow, actor=SYSTEM, name="fuzz-role", description="fuzzed", permissions=["audit:read"]
    )
    # The cardholder's merchant, its key (the merchant persona's) and a spare key.
    applied = merchants.apply(
        uow, actor=holder, name="Fuzz Coffee", website="https://fuzz.example",
        contact_email="owner@fuzz.example", settlement_currency="USD",
    )  # fmt: skip
    shop = merchants.decide(uow, actor=staff, merchant=applied.public_id, action="approve")
    key = keys.create_api_key(
        uow, actor=holder, merchant=shop.public_id, name="server", scopes=keys.SCOPES
    )  # every scope: the merchant persona reaches every merchant operation
    spare = keys.create_api_key(uow, actor=holder, merchant=shop.public_id, name="spare")
    assert key.secret is not None
    api = keys.authenticate_api_key(uow, secret=key.secret).actor
    hook = webhooks.create_endpoint(
        uow, actor=api, merchant=shop.id, url="https://hooks.fuzz.example/portal",
        enabled_events=["*"],
    )  # fmt: skip
    spare_hook = webhooks.create_endpoint(
        uow, actor=holder, merchant=shop.id, url="https://hooks.fuzz.example/spare",
        enabled_events=["*"],
    )  # fmt: skip
    pending = [
        merchants.apply(
            uow, actor=target, name=f"Pending {n}", website="https://pending.example",
            contact_email="owner@pending.example", settlement_currency="USD",
        ).public_id
        for n in range(2)
    ]  # fmt: skip
    captured = payments.create_payment(
        uow, actor=api, merchant=shop.id, amount=Money(5000, "USD"), card=card_details(theirs),
        idempotency_key=new_key(),
    )  # fmt: skip
    held = [
        payments.create_payment(
            uow,
            actor=api,
            merchant=shop.id,
            amount=Money(3000, "USD"),
            card=card_details(theirs),
            idempotency_key=new_key(),
            capture_method="manual",
        )  # fmt: skip
        for _ in range(4)
    ]
    refund = payments.create_refund(
        uow, actor=api, merchant=shop.id, payment=captured.id, idempotency_key=new_key(),
        amount=100,
    )  # fmt: skip
    now = uow.clock
    uow.clock = lambda: now() - timedelta(days=3)  # captured then: available now
    try:
        payments.create_payment(
            uow, actor=api, merchant=shop.id, amount=Money(4000, "USD"),
            card=card_details(theirs), idempotency_key=new_key(),
        )  # fmt: skip
    finally:
        uow.clock = now
    payouts.set_bank_account(
        uow, actor=holder, merchant=shop.id,
        bank=BankAccount("Bank Mandiri", "1234 5678 9012", "Fuzz Coffee"),
    )  # fmt: skip
    payout = payouts.create_payout(uow, actor=holder, merchant=shop.id, idempotency_key=new_key())
    uow.clock = lambda: now() - timedelta(days=3)  # more available money, for a payout on request
    try:
        payments.create_payment(
            uow, actor=api, merchant=shop.id, amount=Money(6000, "USD"),
            card=card_details(theirs), idempotency_key=new_key(),
        )  # fmt: skip
    finally:
        uow.clock = now
    session = checkout.create_checkout_session(
        uow, actor=api, merchant=shop.id, amount=Money(2000, "USD"),
        success_url="https://fuzz.example/ok", cancel_url="https://fuzz.example/no",
        idempotency_key=new_key(),
    )  # fmt: skip
    # The cardholder has paid the other person by email: a recent payee (issue 13).
    found = payees.find_person(uow, actor=holder, to=target_view.email, currency="USD")
    wallet.transfer(
        uow, actor=holder, from_card_id=own.public_id, to_card_id=found.reference,
        amount=Money(100, "USD"), idempotency_key=new_key(),
    )  # fmt: skip
    (payee,) = payees.list_payees(uow, actor=holder)
    event = events.list_events(uow, actor=api, merchant=shop.id, limit=1).items[0]
    (delivery, *_) = webhooks.list_deliveries(uow, actor=api, merchant=shop.id, endpoint=hook.id)
    members = merchants.list_members(uow, actor=holder, merchant=shop.public_id)
    path = {
        "card_id": [own.public_id, second.public_id, theirs.public_id],
        "top_up_id": [top_up.public_id],
        "transfer_id": [transfer.public_id],
        "withdrawal_id": [withdrawal.public_id],
        "user_id": [target_view.public_id],
        "session_id": [web.id],
        "family_id": [str(pair.family_id)],
        "role": [role.name, str(role.id), "support"],
        "permission": ["audit:read", "users:read", "wallet:use", "ledger:adjust"],
        "merchant_id": [shop.public_id],
        "key_id": [spare.public_id],
        "member_id": [m.public_id for m in members] + [m.user_public_id for m in members],
        "payment_id": [captured.id, held[0].id],
        "refund_id": [refund.id],
        "event_id": [event.id],
        "endpoint_id": [hook.id],
        "delivery_id": [delivery.id],
        "payout_id": [payout.id],
        "transaction_id": [payout.balance_transaction],
        "payee_id": [payee.public_id],
    }
    card = {"number": theirs.number, "exp_month": theirs.expiry_month,
            "exp_year": theirs.expiry_year, "cvc": theirs.cvv}  # fmt: skip
    bodies = {
        "create_token": {"email": target_view.email, "password": PASSWORD},
        "refresh_token": {"refresh_token": pair.refresh_token},
        "logout": {"refresh_token": pair.refresh_token},
        "create_role": {"permissions": ["audit:read"]},
        "create_payment": {"card": card, "currency": "usd"},
        "create_refund": {"payment": captured.id, "amount": 1},
        "create_checkout_session": {"currency": "usd", "success_url": "https://fuzz.example/ok",
                                    "cancel_url": "https://fuzz.example/no"},
        "create_top_up": {"card": own.public_id, "currency": "usd", "method": "bank_transfer"},
        "create_transfer": {"from_card": own.public_id, "to_card": second.public_id,
                            "currency": "usd"},
        "create_withdrawal": {"card": own.public_id, "currency": "usd",
                              "bank_name": "Bank Central Asia", "account_number": "1234567890",
                              "account_holder": "Grace Owner"},
        "lookup_card": {"number": theirs.number},
        "lookup_person": {"to": target_view.email, "currency": "usd"},
        "lookup_payee": {"currency": "usd"},
        "create_payee": {"recipient": found.reference},
        "set_receiving_card": {"card": second.public_id},
        "reveal_card": {"password": PASSWORD},
        "issue_card": {"currency": "usd", "brand": "visa", "card_type": "debit"},
        "set_bank_account": {"bank_name": "Bank Mandiri", "account_number": "123456789012",
                             "account_holder": "Fuzz Coffee"},
        "create_webhook_endpoint": {"enabled_events": ["*"]},
        "apply_for_merchant": {"website": "https://applied.example",
                               "contact_email": "owner@applied.example",
                               "settlement_currency": "usd"},
        "create_api_key": {},
        "create_payout": {"currency": "usd"},
    }  # fmt: skip
    # Held payments for the operations that capture or cancel one (each can be done once).
    by_operation: dict[str, dict[str, list[Any]]] = {
        op: {"payment_id": [h.id for h in held]} for op in ("capture_payment", "cancel_payment")
    }
    # The known endpoint stays for the operations after its deletion; applications to decide.
    by_operation["delete_webhook_endpoint"] = {"endpoint_id": [spare_hook.id]}
    by_operation["approve_merchant"] = {"merchant_id": [pending[0]]}
    by_operation["reject_merchant"] = {"merchant_id": [pending[1]]}
    bodies["capture_payment"] = {"amount_to_capture": 1000}
    return World(
        by_operation=by_operation,
        tokens={"cardholder": holder_token, "staff": staff_token, "merchant": key.secret},
        path=path,
        bodies=bodies,
        checkout_session=session.id,
    )


def swap_in_known_values(case: Any, world: World, uow: UnitOfWork, data: Any, n: int) -> str:
    """Swap known values into a positive case; returns the access token to call with when the
    case needs one of its own (a password or email change by a fresh cardholder), else ""."""
    from hypothesis import strategies as st

    op_id = case.operation.definition.raw["operationId"]
    checkout_op = "checkout" in case.operation.definition.raw.get("tags", ())
    path = {**world.path, **world.by_operation.get(op_id, {})}
    for name in list(case.path_parameters or {}):
        if name == "session_id" and checkout_op:
            case.path_parameters[name] = world.checkout_session
        elif name in path:
            case.path_parameters[name] = data.draw(st.sampled_from(path[name]), name)
    email = f"fuzz-{n}-{id(world)}@example.test"
    fresh = {
        "register": {"first_name": "Fuzz", "last_name": "Case", "email": email,
                     "password": PASSWORD, "password_confirmation": PASSWORD},
        "create_user": {"email": email, "first_name": "Fuzz", "last_name": "Case",
                        "roles": ["support"]},
        "create_role": {"name": f"fuzz-{n}"},
        "create_payment": {"amount": 100 + n},
        "create_checkout_session": {"amount": 100 + n},
        "create_top_up": {"amount": 1000 + n},
        "create_transfer": {"amount": 1 + n},
        "create_withdrawal": {"amount": 500 + n},
        "create_webhook_endpoint": {"url": f"https://hooks.fuzz.example/{n}"},
        "apply_for_merchant": {"name": f"Applied {n}"},
        "create_api_key": {"name": f"fuzz {n}"},
        "set_handle": {"handle": f"fuzz_{n}"},
    }  # fmt: skip
    body = {**world.bodies.get(op_id, {}), **fresh.get(op_id, {})}
    if op_id in ("change_password", "change_email"):
        # A cardholder of its own per case: the persona's password stays, and the per-user
        # limits on wrong current passwords never hide the answers behind them.
        user = cardholder(uow)
        if op_id == "change_email":
            taken = world.bodies["create_token"]["email"]
            new = data.draw(
                st.sampled_from([email, taken, user.email, f"p\u043ertal-{n}@example.test"]),
                "new_email",
            )
            case.body = {"current_password": PASSWORD, "new_email": new}
        else:
            new = data.draw(st.sampled_from([f"fuzzed-password-{n}", "password1"]), "password")
            case.body = {"current_password": PASSWORD, "password": new,
                         "password_confirmation": new}  # fmt: skip
        return tokens.issue_tokens(uow, user_id=user.id).access_token
    if body and (op_id in WHOLE_BODIES or not isinstance(case.body, dict)):
        case.body = body
    elif body:
        case.body = {**case.body, **body}
    return ""


@pytest.mark.parametrize("persona", PERSONAS)
def test_the_whole_api_answers_only_what_it_documents(
    app: Flask, connection: Any, uow: UnitOfWork, make: Factory, persona: str
) -> None:
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, seed, settings
    from hypothesis import strategies as st
    from schemathesis.checks import positive_data_acceptance
    from schemathesis.generation import GenerationMode

    limiter.reset()
    world = build_world(uow, make)
    token = world.tokens[persona]
    scheme = "api_key" if persona == "merchant" else "bearer"
    address = new_address()
    serial = itertools.count()
    statuses: dict[str, set[int]] = {}
    failures: dict[str, str] = {}

    def runner(op: Any, mode: str, examples: int, seen: set[int]) -> Any:
        generation = GenerationMode.POSITIVE if mode == "positive" else GenerationMode.NEGATIVE

        @seed(SEED)
        @settings(
            max_examples=examples, deadline=None, derandomize=True, database=None,
            phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
        )  # fmt: skip
        @given(case=op.as_strategy(generation_mode=generation), data=st.data())
        def run(case: Any, data: Any) -> None:
            n = next(serial)
            own_token = ""
            if mode == "positive" and data.draw(st.booleans(), label="known values"):
                own_token = swap_in_known_values(case, world, uow, data, n)
            response = case.call_and_validate(
                headers={**bearer(own_token or token), "Idempotency-Key": f"fuzz-{n}"},
                excluded_checks=[positive_data_acceptance],
                environ_base={"REMOTE_ADDR": address},
            )
            seen.add(response.status_code)

        return run

    schema = schemathesis.openapi.from_wsgi(f"{API}/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    for op in operations:
        raw = op.definition.raw
        op_id = raw["operationId"]
        if op_id in EXCLUDED:
            continue
        schemes = {name for requirement in raw.get("security", []) for name in requirement}
        own = not schemes or scheme in schemes
        seen = statuses.setdefault(op_id, set())
        try:
            for mode in ("positive", "negative"):
                runner(op, mode, EXAMPLES[own][mode], seen)()
        except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - reported together below
            failures[op_id] = f"{type(exc).__name__}: {exc}"[:3000]
    known = {op for op, (personas, *_) in KNOWN_FAILURES.items() if persona in personas}
    unexpected = {
        op: why for op, why in failures.items()
        if op not in known or KNOWN_FAILURES[op][1] not in why or "Undocumented" not in why
    }  # fmt: skip
    passed = sorted(op for op in known if op in statuses and op not in failures)
    assert not unexpected, "\n\n".join(f"{op}: {why}" for op, why in unexpected.items())
    assert not passed, f"known failures now pass (remove them from KNOWN_FAILURES): {passed}"
    # Every operation of the document ran, none answered a 5xx.
    assert set(statuses) | EXCLUDED == {op.definition.raw["operationId"] for op in operations}
    assert not [op for op, seen in statuses.items() if any(s >= 500 for s in seen)]
    # The runs kept their credentials to the end: every operation ran authenticated.
    api = client_for(app)
    check = f"{API}/payments" if persona == "merchant" else f"{API}/auth/me"
    assert api.get(check, headers=bearer(token)).status_code == 200
    # Whatever the run did to money, the ledger still reconciles.
    report = reconciliation.reconcile(uow)
    assert report.ok, report.violations
    if persona == "cardholder":
        # The known values reached the services' successes and refusals, not only the schema's.
        for op_id, status in (("create_transfer", 201), ("create_top_up", 201),
                              ("create_withdrawal", 201), ("get_card", 200),
                              ("change_password", 204), ("change_password", 422),
                              ("change_email", 202), ("change_email", 422),
                              ("set_bank_account", 200), ("apply_for_merchant", 201),
                              ("create_api_key", 201)):  # fmt: skip
            assert status in statuses[op_id], (op_id, statuses[op_id])
    if persona == "merchant":
        for op_id, status in (("create_payment", 201), ("capture_payment", 200),
                              ("create_refund", 201), ("get_payout", 200),
                              ("create_payout", 201), ("create_checkout_session", 201),
                              ("create_webhook_endpoint", 201),
                              ("list_webhook_deliveries", 200)):  # fmt: skip
            assert status in statuses[op_id], (op_id, statuses[op_id])
    if persona == "staff":
        for op_id, status in (("get_user", 200), ("create_user", 201), ("list_users", 200),
                              ("create_role", 201), ("get_merchant", 200),
                              ("approve_merchant", 200)):  # fmt: skip
            assert status in statuses[op_id], (op_id, statuses[op_id])
