"""A bounded, seeded schemathesis run over the auth, users and roles operations of the real
application: no 5xx, and every answer (status, media type, headers, body) conforms to the
OpenAPI document; in negative mode, schema-invalid requests are refused with a 4xx.

The run is authenticated as an administrator with a second factor, and runs inside the
``connection`` fixture's transaction, so the users, roles and tokens it creates are rolled back
with the test. It calls from its own client address, so the sign-in and sign-up limits it
spends (it may well reach them: 429 is a documented answer) touch no other test.

Left out or narrowed, so the run keeps its own authentication to the end:

- ``revoke_all_sessions`` revokes the caller's own token family (tested in test_auth_api);
- the admin's own id is kept out of the user-session revocations, which would revoke the
  run's family too.

Random ids and bodies mostly reach 404 and 422, so in positive mode half the cases get known,
schema-valid values swapped in (a real user with a web session and a token family, a custom
role, real permission names, a valid sign-in, refresh or registration body): the run then
reaches the services' real paths and the success schemas. Negative cases are left as
generated, so their invalid part stays invalid.

``positive_data_acceptance`` is not checked: a schema-valid request may still be refused by a
service (an unknown ``starting_after``, a role name that does not exist, a weak password), and
those refusals are documented 4xx answers.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from flask import Flask

from portal.services.identity import roles, sessions, tokens, users
from portal.services.shared.uow import UnitOfWork
from tests.api.test_auth_api import (
    API,
    PASSWORD,
    bearer,
    client_for,
    enrol_totp,
    new_address,
    pair_of,
    person,
    sign_in,
    totp_code,
)
from tests.conftest import SYSTEM, Factory

TAGS = {"auth", "users", "roles"}
EXCLUDED = {"revoke_all_sessions"}
#: Operations where the admin's own user id would revoke the run's own credentials.
NOT_ON_SELF = {"revoke_all_user_sessions", "revoke_user_api_session", "revoke_user_web_session"}
SEED = 20_261_124
EXAMPLES = {"positive": 12, "negative": 8}


def known_values(uow: UnitOfWork) -> dict[str, Any]:
    """Real objects for the run to reach: a user (not the admin) with a card (so deleting them
    is refused and they stay for the operations after), a web session and a token family; and
    a custom role."""
    target = person(uow, "cardholder")
    Factory(uow).card(users.actor_for(uow, target.id))
    web = sessions.create_web_session(
        uow, user_id=target.id, user_agent="fuzz", ip="192.0.2.9", mfa_verified=False
    )
    pair = tokens.issue_tokens(uow, user_id=target.id)
    role = roles.create_role(
        uow, actor=SYSTEM, name="fuzz-role", description="fuzzed", permissions=["audit:read"]
    )
    return {
        "path": {
            "user_id": [target.id],
            "session_id": [web.id],
            "family_id": [str(pair.family_id)],
            "role": [role.name, str(role.id), "support", "cardholder"],
            "permission": ["audit:read", "users:read", "wallet:use", "ledger:adjust"],
        },
        "email": target.email,
        "refresh_token": pair.refresh_token,
    }


def with_known_values(case: Any, known: dict[str, Any], data: Any, n: int) -> None:
    """Swap known, schema-valid values into a positive case: path parameters naming real
    objects, and a body that gets past validation for the operations whose random bodies
    never do."""
    from hypothesis import strategies as st

    for name in list(case.path_parameters or {}):
        if name in known["path"]:
            case.path_parameters[name] = data.draw(st.sampled_from(known["path"][name]), name)
    email = f"fuzz-{n}-{id(known)}@example.test"
    bodies: dict[str, dict[str, Any]] = {
        "create_token": {"email": known["email"], "password": PASSWORD},
        "refresh_token": {"refresh_token": known["refresh_token"]},
        "logout": {"refresh_token": known["refresh_token"]},
        "register": {"first_name": "Fuzz", "last_name": "Case", "email": email,
                     "password": PASSWORD, "password_confirmation": PASSWORD},
        "create_user": {"email": email, "first_name": "Fuzz", "last_name": "Case",
                        "roles": ["support"]},
        "create_role": {"name": f"fuzz-{n}", "permissions": ["audit:read"]},
    }  # fmt: skip
    body = bodies.get(case.operation.definition.raw["operationId"])
    if body is not None:
        case.body = body


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_identity_api_answers_only_what_it_documents(
    app: Flask, connection: Any, uow: UnitOfWork, mode: str
) -> None:
    import schemathesis
    from hypothesis import HealthCheck, Phase, assume, given, seed, settings
    from hypothesis import strategies as st
    from schemathesis.checks import positive_data_acceptance
    from schemathesis.generation import GenerationMode

    admin = person(uow, "admin")
    secret, _ = enrol_totp(uow, admin)
    client = client_for(app)
    token = pair_of(sign_in(client, admin.email, totp_code=totp_code(secret)))["access_token"]
    address = new_address()
    known = known_values(uow)
    serial = itertools.count()

    schema = schemathesis.openapi.from_wsgi(f"{API}/openapi.json", app)
    generation = GenerationMode.POSITIVE if mode == "positive" else GenerationMode.NEGATIVE
    tested: list[str] = []
    for result in schema.get_all_operations():
        op = result.ok()
        raw = op.definition.raw
        op_id = raw["operationId"]
        if not TAGS.intersection(raw.get("tags", ())) or op_id in EXCLUDED:
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
            if mode == "positive" and data.draw(st.booleans(), label="known values"):
                with_known_values(case, known, data, next(serial))
            if case.operation.definition.raw["operationId"] in NOT_ON_SELF:
                assume(str((case.path_parameters or {}).get("user_id")) != str(admin.id))
            case.call_and_validate(
                headers=bearer(token),
                excluded_checks=[positive_data_acceptance],
                environ_base={"REMOTE_ADDR": address},
            )

        run()
        tested.append(op_id)

    assert len(tested) == 35, sorted(tested)
    # The run kept its credentials to the end: every operation ran authenticated.
    assert client.get(f"{API}/auth/me", headers=bearer(token)).status_code == 200
