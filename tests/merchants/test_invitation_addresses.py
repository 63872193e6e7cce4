"""Invitations name the invited account by its canonical address (issue 11 A3): an address
typed in another case, or with a character whose lower case differs between Python and
PostgreSQL (U+0130), reaches the same account, and a member is recognised however their address
is typed."""

from __future__ import annotations

import pytest

from portal.domain.errors import Conflict
from portal.services.merchants import merchants
from tests.conftest import Factory


@pytest.mark.parametrize("typed", ["Member.Two@Shop.Example", "member.two@shop.example"])
def test_an_invitation_reaches_the_account_however_its_address_is_typed(
    uow, make: Factory, typed: str
) -> None:
    owner = make.user()
    shop = merchants.apply(uow, actor=owner, name="Two Shop", website="https://two.example",
                           contact_email="two@shop.example", settlement_currency="USD")  # fmt: skip
    member = make.user(email="member.two@shop.example")
    invitation = merchants.invite_member(
        uow, actor=owner, merchant=shop.public_id, email=typed, role="viewer"
    )
    assert invitation.email == "member.two@shop.example"
    joined = merchants.accept_invitation(uow, actor=member, token=invitation.token or "")
    assert joined.merchant.public_id == shop.public_id
    with pytest.raises(Conflict) as again:
        merchants.invite_member(uow, actor=owner, merchant=shop.public_id,
                                email=typed.upper(), role="viewer")  # fmt: skip
    assert again.value.code == "already_member"


def test_a_dotted_capital_i_names_the_account_its_canonical_form_names(uow, make: Factory):
    owner = make.user()
    shop = merchants.apply(uow, actor=owner, name="Dot Shop", website="https://dot.example",
                           contact_email="dot@shop.example", settlement_currency="USD")  # fmt: skip
    # "İ".casefold() is "i̇" (i + combining dot): the account registered with it is that one.
    member = make.user(email="\u0130rem@shop.example")
    invitation = merchants.invite_member(
        uow, actor=owner, merchant=shop.public_id, email="\u0130REM@shop.example", role="viewer"
    )
    merchants.accept_invitation(uow, actor=member, token=invitation.token or "")
    with pytest.raises(Conflict):
        merchants.invite_member(uow, actor=owner, merchant=shop.public_id,
                                email="\u0130rem@SHOP.example", role="viewer")  # fmt: skip
