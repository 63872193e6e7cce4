"""A bounded, seeded schemathesis run over POST /users/me/password and POST /users/me/email,
as a cardholder: no 5xx, and every answer conforms to the OpenAPI document; in negative mode,
schema-invalid requests are refused with a 4xx.

The identity run (test_schemathesis_identity) covers these operations with random bodies, which
never know the password; here half the positive cases send the real current password (and a
fresh address, or a new password), so the run also reaches the 202 and 204 answers and the
service's refusals (common or personal passwords, taken, own and look-alike addresses). Each
case is a new cardholder calling from a new client address, inside the ``connection``
fixture's transaction.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from flask import Flask

from portal.services.identity import tokens
from portal.services.shared.uow import UnitOfWork
from tests.api.test_auth_api import API, PASSWORD, bearer, cardholder, new_address

OPERATIONS = {"change_password", "change_email"}
SEED = 20_261_203
EXAMPLES = {"positive": 15, "negative": 10}


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_account_changes_answer_only_what_they_document(
    app: Flask, connection: Any, uow: UnitOfWork, mode: str
) -> None:
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, seed, settings
    from hypothesis import strategies as st
    from schemathesis.checks import positive_data_acceptance
    from schemathesis.generation import GenerationMode

    taken = cardholder(uow).email
    serial = itertools.count()
    statuses: dict[str, set[int]] = {op: set() for op in OPERATIONS}

    schema = schemathesis.openapi.from_wsgi(f"{API}/openapi.json", app)
    generation = GenerationMode.POSITIVE if mode == "positive" else GenerationMode.NEGATIVE
    tested: list[str] = []
    for result in schema.get_all_operations():
        op = result.ok()
        op_id = op.definition.raw["operationId"]
        if op_id not in OPERATIONS:
            continue

        @seed(SEED)
        @settings(
            max_examples=EXAMPLES[mode],
            deadline=None,
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=op.as_strategy(generation_mode=generation), data=st.data())
        def run(case: Any, data: Any) -> None:
            # A new user, token and client address per case: the per-user and per-address
            # limits (documented 429s) then never hide the answers behind them.
            n = next(serial)
            user = cardholder(uow)
            token = tokens.issue_tokens(uow, user_id=user.id).access_token
            operation = case.operation.definition.raw["operationId"]
            if mode == "positive" and data.draw(st.booleans(), label="known values"):
                if operation == "change_email":
                    email = data.draw(
                        st.sampled_from([f"fuzz-{n}@example.test", taken, user.email,
                                         f"p\u043ertal-{n}@example.test"]), "new_email",
                    )  # fmt: skip
                    case.body = {"current_password": PASSWORD, "new_email": email}
                else:
                    new = data.draw(
                        st.sampled_from([f"fuzzed-password-{n}", "password1", "Lovelace"]),
                        "password",
                    )
                    case.body = {"current_password": PASSWORD, "password": new,
                                 "password_confirmation": new}  # fmt: skip
            response = case.call_and_validate(
                headers=bearer(token),
                excluded_checks=[positive_data_acceptance],
                environ_base={"REMOTE_ADDR": new_address()},
            )
            statuses[operation].add(response.status_code)

        run()
        tested.append(op_id)

    assert sorted(tested) == sorted(OPERATIONS)
    assert not any(status >= 500 for seen in statuses.values() for status in seen)
    if mode == "positive":  # the known values reached the successes and the refusals
        assert {202, 422} <= statuses["change_email"], statuses
        assert {204, 422} <= statuses["change_password"], statuses
    else:
        assert all(seen and max(seen) < 500 for seen in statuses.values()), statuses
