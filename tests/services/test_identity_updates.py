"""Updating a user and a role with one constant statement each (issue 11 C: no SQL built from
the changed fields' names): a field left out keeps its value, and only a new email clears the
verification."""

from __future__ import annotations

import uuid

from portal.services.identity import accounts, roles, users
from portal.services.shared.uow import UnitOfWork
from tests.conftest import SYSTEM


def verified_user(uow: UnitOfWork) -> accounts.UserView:
    created = users.create_user(
        uow, actor=SYSTEM, email=f"upd-{uuid.uuid4().hex[:10]}@example.test", first_name="Ada",
        last_name="Lovelace", verified=True,
    )  # fmt: skip
    return accounts.get_user_view(uow, created.id)


def test_a_name_change_keeps_the_other_fields_and_the_verification(uow: UnitOfWork) -> None:
    user = verified_user(uow)

    first = users.update_user(uow, actor=SYSTEM, user_id=user.id, first_name="Augusta")
    last = users.update_user(uow, actor=SYSTEM, user_id=user.id, last_name="King")

    assert (first.first_name, first.last_name, first.email) == ("Augusta", "Lovelace", user.email)
    assert (last.first_name, last.last_name, last.email) == ("Augusta", "King", user.email)
    assert last.email_verified


def test_an_email_change_stores_the_canonical_form_and_clears_the_verification(
    uow: UnitOfWork,
) -> None:
    user = verified_user(uow)
    new = f"NEW-{uuid.uuid4().hex[:10]}@Example.test"

    changed = users.update_user(uow, actor=SYSTEM, user_id=user.id, email=new)

    assert (changed.email, changed.first_name, changed.email_verified) == (new, "Ada", False)
    canonical = uow.run(
        lambda u: u.execute(
            "SELECT email_canonical FROM users WHERE id = :id", {"id": user.id}
        ).scalar_one()
    )
    assert canonical == new.casefold()


def test_a_role_keeps_its_name_when_only_the_description_changes(uow: UnitOfWork) -> None:
    role = roles.create_role(
        uow, actor=SYSTEM, name=f"upd-{uuid.uuid4().hex[:8]}", description="before",
        permissions=["audit:read"],
    )  # fmt: skip

    described = roles.rename_role(uow, actor=SYSTEM, role=role.id, description="")
    renamed = roles.rename_role(uow, actor=SYSTEM, role=role.id, name=role.name + "-x")

    assert (described.name, described.description) == (role.name, "")
    assert (renamed.name, renamed.description) == (role.name + "-x", "")
