"""``portal.services.identity.sso.sign_in_with_oidc``: the linking rules, without the web."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from portal.domain.errors import Conflict, InvalidCredentials, InvalidInput
from portal.services.identity import sso, users
from portal.services.shared.uow import UnitOfWork
from tests.conftest import SYSTEM, Factory

ISSUER = "https://id.example.test"


def sub() -> str:
    return f"sub-{uuid.uuid4().hex}"


def address() -> str:
    return f"sso-{uuid.uuid4().hex[:10]}@example.test"


def oidc(uow: UnitOfWork, **overrides: Any) -> Any:
    params: dict[str, Any] = {
        "issuer": ISSUER,
        "subject": sub(),
        "email": address(),
        "email_verified": True,
        "first_name": "Grace",
        "last_name": "Hopper",
        **overrides,
    }
    return sso.sign_in_with_oidc(uow, **params)


def link_count(uow: UnitOfWork, user_id: int) -> int:
    return uow.run(
        lambda u: u.execute(
            "SELECT count(*) FROM oauth_identities WHERE user_id = :id", {"id": user_id}
        ).scalar_one()
    )


def last_failure(uow: UnitOfWork, subject: str) -> Any:
    return uow.run(
        lambda u: u.execute(
            "SELECT subject_id, data FROM audit_events WHERE action = 'auth.sso_sign_in'"
            " AND outcome = 'failure' AND data->>'subject' = :s ORDER BY id DESC LIMIT 1",
            {"s": subject},
        ).one()
    )


def test_first_sign_in_creates_a_cardholder_then_the_link_finds_them(uow: UnitOfWork) -> None:
    subject, email = sub(), address()

    created = oidc(uow, subject=subject, email=email)
    again = oidc(uow, subject=subject, email=address(), first_name="Someone", last_name="Else")

    assert created.roles == ("cardholder",)
    assert (created.first_name, created.last_name) == ("Grace", "Hopper")
    assert again.id == created.id
    assert again.email == email  # the Portal account keeps its own address
    assert link_count(uow, created.id) == 1


def test_one_subject_at_two_issuers_is_two_identities(uow: UnitOfWork) -> None:
    subject = sub()
    first = oidc(uow, subject=subject)
    second = oidc(uow, subject=subject, issuer="https://other.example.test")
    assert first.id != second.id


def test_an_account_linked_to_another_subject_of_the_same_issuer_is_not_linked_again(
    uow: UnitOfWork,
) -> None:
    email = address()
    owner = oidc(uow, email=email)  # creates and links the account
    intruder = sub()  # a recycled address at the provider: same email, a new subject

    with pytest.raises(Conflict) as refused:
        oidc(uow, subject=intruder, email=email)

    assert refused.value.code == "sso_identity_mismatch"
    assert link_count(uow, owner.id) == 1
    failure = last_failure(uow, intruder)
    assert (failure.subject_id, failure.data["reason"]) == (owner.id, "other_identity_linked")


@pytest.mark.parametrize(
    ("portal_verified", "provider_verified", "linked"),
    [(True, True, True), (True, False, False), (False, True, False), (False, False, False)],
)
def test_an_existing_account_is_linked_only_when_both_sides_verified_the_email(
    portal_verified: bool, provider_verified: bool, linked: bool, uow: UnitOfWork, make: Factory
) -> None:
    email = address()
    actor = make.user(email=email, verified="yes" if portal_verified else "no")
    assert actor.id is not None

    if linked:
        view = oidc(uow, email=email.upper(), email_verified=provider_verified)
        assert view.id == actor.id
    else:
        with pytest.raises(Conflict) as refused:
            oidc(uow, email=email, email_verified=provider_verified)
        assert refused.value.code == "sso_email_unverified"
    assert link_count(uow, actor.id) == (1 if linked else 0)


def test_archived_accounts_are_refused_with_the_sign_in_error(
    uow: UnitOfWork, make: Factory
) -> None:
    email, subject = address(), sub()
    actor = make.user(email=email)
    assert actor.id is not None
    users.archive_user(uow, actor=SYSTEM, user_id=actor.id)

    with pytest.raises(InvalidCredentials):
        oidc(uow, subject=subject, email=email)
    assert last_failure(uow, subject).data["reason"] == "archived"  # committed despite refusal


def test_no_usable_email_is_refused_and_creates_nothing(uow: UnitOfWork) -> None:
    for email in (None, "", "not-an-email", 42):
        subject = sub()
        with pytest.raises(InvalidInput) as refused:
            oidc(uow, subject=subject, email=email)
        assert refused.value.code == "sso_email_missing"
        assert last_failure(uow, subject).data["reason"] == "email_missing"


@pytest.mark.parametrize("field", ["issuer", "subject"])
@pytest.mark.parametrize("value", ["", "x" * 256, "bad\x00value", None])
def test_unusable_issuer_or_subject_is_invalid_input(
    field: str, value: Any, uow: UnitOfWork
) -> None:
    with pytest.raises(InvalidInput) as refused:
        oidc(uow, **{field: value})
    assert refused.value.code == "sso_identity_invalid"


def test_missing_or_unfit_names_fall_back_to_the_email(uow: UnitOfWork) -> None:
    email = f"lin.{uuid.uuid4().hex[:6]}@example.test"

    view = oidc(uow, email=email, first_name=None, last_name="  \x07 ")
    long = oidc(uow, first_name="  A  " + "b" * 300, last_name="Van   der   Berg")

    assert view.first_name == email.partition("@")[0]
    assert view.last_name == "-"
    assert long.first_name == ("A " + "b" * 300)[:100]
    assert long.last_name == "Van der Berg"


def test_email_verified_must_be_a_real_true(uow: UnitOfWork) -> None:
    # The web layer turns strings into booleans; a string "true" here is not verification.
    with pytest.raises(Conflict) as exc:
        oidc(uow, email_verified="true")
    assert exc.value.code == "sso_email_unverified"


def test_record_failure_writes_an_audit_event(uow: UnitOfWork) -> None:
    sso.record_failure(uow, issuer=ISSUER, reason="id_token_invalid", data={"error": "nonce"})

    row = uow.run(
        lambda u: u.execute(
            "SELECT actor_kind, outcome, data FROM audit_events WHERE action = 'auth.sso_sign_in'"
            " ORDER BY id DESC LIMIT 1"
        ).one()
    )
    assert (row.actor_kind, row.outcome) == ("system", "failure")
    assert row.data == {"issuer": ISSUER, "reason": "id_token_invalid", "error": "nonce"}
