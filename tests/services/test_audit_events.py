"""The security events issue 14 lists are in the audit log, each with the client address of the
request that caused it and, where something changed, its before and after values: sign-ins,
failed sign-ins, MFA changes, refresh-token reuse, API key creation and revocation, role
changes. (The request's address is bound as ``portal.web.requests`` binds it before each
request; ``tests/services/test_audit_chain.py`` shows it through a real request.)"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pyotp
import pytest
import sqlalchemy as sa

from portal.domain.errors import InvalidCredentials, Unauthenticated
from portal.services.identity import accounts, mfa, roles, tokens, users
from portal.services.merchants import keys
from portal.services.shared import audit
from portal.services.shared.uow import UnitOfWork
from tests.conftest import SYSTEM, Clock, Factory
from tests.merchants.conftest import open_shop

ADDRESS = "192.0.2.44"
PASSWORD = "Tr0ub4dor&3-purple"


@pytest.fixture
def request_address() -> Iterator[str]:
    audit.bind_address(ADDRESS)
    try:
        yield ADDRESS
    finally:
        audit.bind_address(None)


def test_the_listed_security_events_are_recorded_with_address_and_changes(
    uow: UnitOfWork, make: Factory, connection: sa.Connection, clock: Clock, request_address: str
) -> None:
    staff = make.user(roles=("admin",))
    created = users.create_user(
        uow, actor=SYSTEM, email="audited@example.test", first_name="Ada", last_name="Audit",
        password=PASSWORD, roles=("cardholder",), verified=True,
    )  # fmt: skip
    person = accounts.get_user_view(uow, created.id)
    first = connection.execute(sa.text("SELECT coalesce(max(id), 0) FROM audit_events")).scalar()

    accounts.authenticate(uow, email=person.email, password=PASSWORD)
    with pytest.raises(InvalidCredentials):
        accounts.authenticate(uow, email=person.email, password="not-the-password-1")
    enrolment = mfa.begin_totp_enrolment(uow, actor=person.actor)
    code = pyotp.TOTP(enrolment.secret).at(uow.now(), counter_offset=-1)
    mfa.confirm_totp(uow, actor=person.actor, code=code)
    mfa.disable_totp(uow, actor=person.actor, password=PASSWORD)
    pair = tokens.issue_tokens(uow, user_id=person.id)
    uow.settings = replace(uow.settings, refresh_grace_seconds=0)
    tokens.refresh(uow, refresh_token=pair.refresh_token)
    clock.advance(seconds=1)
    with pytest.raises(Unauthenticated):
        tokens.refresh(uow, refresh_token=pair.refresh_token)  # replayed: theft
    shop = open_shop(uow, make, staff)
    keys.revoke_api_key(uow, actor=shop.owner, merchant=shop.merchant.public_id,
                        key=shop.key.public_id)  # fmt: skip
    roles.assign_role(uow, actor=staff, user_id=person.id, role="support")

    rows = connection.execute(
        sa.text(
            "SELECT action, outcome, address::text AS address, data FROM audit_events"
            " WHERE id > :first ORDER BY id"
        ),
        {"first": first},
    ).all()
    by_action: dict[tuple[str, str], dict] = {}
    for row in rows:
        assert row.address == f"{ADDRESS}/32", row
        by_action.setdefault((row.action, row.outcome), row.data)
    expected = {
        ("auth.sign_in", "success"), ("auth.sign_in", "failure"), ("mfa.enrol", "success"),
        ("mfa.disable", "success"), ("token.reuse_detected", "failure"),
        ("api_key.create", "success"), ("api_key.revoke", "success"),
        ("user.assign_role", "success"),
    }  # fmt: skip
    assert expected <= set(by_action), sorted(by_action)
    assert by_action[("auth.sign_in", "failure")]["reason"] == "wrong_password"
    assert by_action[("mfa.enrol", "success")]["mfa"] == {"from": False, "to": True}
    assert by_action[("mfa.disable", "success")]["mfa"] == {"from": True, "to": False}
    assert by_action[("user.assign_role", "success")]["roles"] == {
        "from": ["cardholder"], "to": ["cardholder", "support"],
    }  # fmt: skip
    assert by_action[("api_key.create", "success")]["prefix"] == shop.key.prefix
