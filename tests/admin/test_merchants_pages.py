"""Console pages for merchants: applications waiting and every merchant by state, a
merchant's page (keys' metadata and never a secret, team, balance, decisions with their
reason, trail, live), decisions and archive/restore/delete one by one and in bulk (a merchant
that took money is never deleted), and the old staff page sending here."""

from __future__ import annotations

import re
import uuid

import pytest
import sqlalchemy as sa

from portal.domain.errors import Conflict, Forbidden
from portal.domain.money import Money
from portal.services.admin import merchants as admin_merchants
from portal.services.identity import users
from portal.services.merchants import keys, merchants, payments
from tests.admin.conftest import StaffClient
from tests.admin.test_people_pages import _console_forms, _flashes
from tests.conftest import SYSTEM, Factory, new_key
from tests.pages.conftest import PageClient, People, page_text, sign_in


def _apply(uow, make: Factory, name: str | None = None):
    owner = make.user()
    return owner, merchants.apply(
        uow, actor=owner, name=name or f"Shop {uuid.uuid4().hex[:6]}",
        website="https://shop.example", contact_email="shop@shop.example",
        settlement_currency="USD",
    )  # fmt: skip


def _state(connection: sa.Connection, public_id: str) -> str | None:
    row = connection.execute(
        sa.text("SELECT status, archived_at FROM merchants WHERE public_id = :p"),
        {"p": public_id},
    ).first()
    if row is None:
        return None
    return "archived" if row.archived_at is not None else row.status


def _paying_shop(uow, make: Factory):
    """An approved merchant with a key and one captured payment (money history)."""
    owner, applied = _apply(uow, make)
    shop = merchants.decide(uow, actor=SYSTEM, merchant=applied.public_id, action="approve")
    key = keys.create_api_key(uow, actor=owner, merchant=shop.public_id, name="Till",
                              scopes=keys.SCOPES)  # fmt: skip
    api = keys.authenticate_api_key(uow, secret=key.secret).actor
    payer = make.card(make.user(), balance="100")
    card = payments.CardDetails(payer.number, payer.expiry_month, payer.expiry_year, payer.cvv)
    payments.create_payment(uow, actor=api, merchant=shop.id, amount=Money(2500, "USD"),
                            card=card, idempotency_key=new_key())  # fmt: skip
    return owner, shop, key


def test_merchant_pages_for_staff_only_support_reads(
    client: PageClient, people: People, as_staff: StaffClient, uow, make: Factory,
    connection: sa.Connection,
) -> None:  # fmt: skip
    _, applied = _apply(uow, make)
    mid = applied.public_id
    pages = ("/admin/merchants", "/admin/merchants?state=pending", f"/admin/merchants/{mid}",
             f"/admin/merchants/{mid}/changes?v=0")  # fmt: skip
    sign_in(client, people.make())
    for page in pages:
        assert client.get(page).status_code == 403, page
    support, _ = as_staff("support")
    admin, _ = as_staff()
    for page in pages[:3]:
        read = support.get(page)
        assert read.status_code == 200 and not _console_forms(read.get_data(as_text=True))
        assert _console_forms(admin.get(page).get_data(as_text=True)), page
    assert 'href="/admin/merchants">Merchants</a>' in support.get("/admin/").get_data(True)
    for action in ("approve", "reject", "archive", "delete"):
        assert support.post(f"/admin/merchants/{mid}/{action}").status_code == 403
        assert client.post(f"/admin/merchants/{mid}/{action}").status_code == 403
    assert (
        support.post("/admin/merchants/bulk", data={"action": "archive", "ids": [mid]}).status_code
        == 403
    )
    assert _state(connection, mid) == "pending"


def test_the_old_staff_page_sends_to_the_console(
    client: PageClient, people: People, as_staff: StaffClient
) -> None:
    support, _ = as_staff("support")
    sent = support.get("/merchant/staff?state=pending&q=kopi")
    assert sent.status_code == 302
    assert sent.headers["Location"] == "/admin/merchants?state=pending&q=kopi"
    assert support.get("/merchant/staff").headers["Location"] == "/admin/merchants"
    sign_in(client, people.make())
    assert client.get("/merchant/staff").status_code == 403


def test_decisions_with_reason_and_the_states_views(
    as_staff: StaffClient, uow, make: Factory, connection: sa.Connection
) -> None:
    admin, _ = as_staff()
    tag = uuid.uuid4().hex[:6]
    owner, applied = _apply(uow, make, f"Warung {tag}")
    mid = applied.public_id
    waiting = page_text(admin.get("/admin/merchants?state=pending"))
    assert f"Warung {tag}" in waiting and "application" in waiting
    page = admin.get(f"/admin/merchants/{mid}").get_data(as_text=True)
    assert f'formaction="/admin/merchants/{mid}/approve"' in page
    assert f'formaction="/admin/merchants/{mid}/reject"' in page
    done = admin.post(f"/admin/merchants/{mid}/approve", data={"reason": "documents checked"})
    assert done.status_code == 302 and done.headers["Location"] == f"/admin/merchants/{mid}"
    assert _state(connection, mid) == "active"
    text = page_text(admin.get(f"/admin/merchants/{mid}"))
    assert "merchant.approve" in text and "documents checked" in text
    assert "No balance account" not in text  # approval opened it
    admin.post(f"/admin/merchants/{mid}/approve")
    assert any("cannot approve a merchant that is active" in n.lower() for n in _flashes(admin))
    for action, expected in [("suspend", "suspended"), ("reactivate", "active"),
                             ("archive", "archived"), ("restore", "active")]:  # fmt: skip
        admin.post(f"/admin/merchants/{mid}/{action}", data={"reason": f"{action} test"})
        assert _state(connection, mid) == expected, action
    assert admin.post(f"/admin/merchants/{mid}/explode").status_code == 404
    admin.post(f"/admin/merchants/{mid}/suspend")
    row = f'<tr id="{mid}">'
    suspended = admin.get(f"/admin/merchants?state=suspended&q={tag}").get_data(as_text=True)
    assert row in suspended
    assert row not in admin.get(f"/admin/merchants?state=active&q={tag}").get_data(as_text=True)
    admin.post(f"/admin/merchants/{mid}/archive")
    assert row not in admin.get(f"/admin/merchants?q={tag}").get_data(as_text=True)
    assert row in admin.get(f"/admin/merchants?state=archived&q={tag}").get_data(as_text=True)
    assert admin.get("/admin/merchants/mch_nothing").status_code == 404


def test_a_merchants_page_shows_keys_metadata_team_balance_and_is_live(
    as_staff: StaffClient, uow, make: Factory
) -> None:
    admin, _ = as_staff()
    owner, shop, key = _paying_shop(uow, make)
    page = admin.get(f"/admin/merchants/{shop.public_id}")
    html = page.get_data(as_text=True)
    text = page_text(page)
    assert key.secret not in html  # the secret never leaves the service again
    assert f"{key.secret[:12]}…{key.secret[-4:]}" in text and "Till" in text
    assert key.public_id in text and "payments:write" in text
    assert "Owner" in text and owner.public_id in html  # the team links to the user
    assert re.search(r'USD</th> ?<td class="num">\$', text)  # a balance row
    version = re.search(r'data-version="([^"]+)"', html).group(1)
    quiet = admin.get(f"/admin/merchants/{shop.public_id}/changes?v={version}")
    assert quiet.status_code == 204
    keys.revoke_api_key(uow, actor=owner, merchant=shop.public_id, key=key.public_id)
    changed = admin.get(f"/admin/merchants/{shop.public_id}/changes?v={version}")
    assert changed.status_code == 200 and "Revoked" in page_text(changed)
    assert key.secret not in changed.get_data(as_text=True)


def test_bulk_merchant_actions_never_delete_money(
    as_staff: StaffClient, uow, make: Factory, connection: sa.Connection
) -> None:
    admin, _ = as_staff()
    _, fresh = _apply(uow, make)
    _, paying, _ = _paying_shop(uow, make)
    ids = [fresh.public_id, paying.public_id]
    admin.post("/admin/merchants/bulk", data={"action": "archive", "ids": ids})
    assert {_state(connection, i) for i in ids} == {"archived"}
    admin.post("/admin/merchants/bulk", data={"action": "archive", "ids": ids[:1]})
    assert any("cannot archive a merchant that is archived" in n.lower()
               for n in _flashes(admin))  # fmt: skip
    sent = admin.post("/admin/merchants/bulk", data={
        "action": "delete", "ids": [*ids, "mch_none"], "back": "/admin/merchants?state=archived",
    })  # fmt: skip
    assert sent.headers["Location"] == "/admin/merchants?state=archived"
    notes = _flashes(admin)
    assert any(n.startswith("Deleted for good 1:") and fresh.public_id in n for n in notes)
    assert any(paying.public_id in n and "money history" in n for n in notes), notes
    assert any("mch_none" in n and "No such merchant" in n for n in notes), notes
    assert _state(connection, fresh.public_id) is None
    assert _state(connection, paying.public_id) == "archived"
    admin.post("/admin/merchants/bulk", data={"action": "restore", "ids": [paying.public_id]})
    assert _state(connection, paying.public_id) == "active"
    assert admin.post("/admin/merchants/bulk", data={"action": "approve", "ids": ids}
                      ).status_code == 400  # fmt: skip


def test_delete_merchant_service(uow, make: Factory, connection: sa.Connection) -> None:
    support = make.user(roles=("support",))
    owner, applied = _apply(uow, make)
    shop = merchants.decide(uow, actor=SYSTEM, merchant=applied.public_id, action="approve")
    keys.create_api_key(uow, actor=owner, merchant=shop.public_id, name="k", scopes=keys.SCOPES)
    merchants.invite_member(uow, actor=owner, merchant=shop.public_id,
                            email="x@example.test", role="viewer")  # fmt: skip
    with pytest.raises(Forbidden):
        admin_merchants.delete_merchant(uow, actor=support, merchant=shop.public_id)
    _, paying, _ = _paying_shop(uow, make)
    with pytest.raises(Conflict) as history:
        admin_merchants.delete_merchant(uow, actor=SYSTEM, merchant=paying.public_id)
    assert history.value.code == "merchant_has_history"
    gone = admin_merchants.delete_merchant(uow, actor=SYSTEM, merchant=shop.public_id)
    assert gone.name == shop.name
    for table in ("api_keys", "merchant_members", "merchant_invitations", "accounts"):
        left = connection.execute(
            sa.text(f"SELECT count(*) FROM {table} WHERE merchant_id = :m"),  # noqa: S608
            {"m": shop.id},
        ).scalar_one()
        assert left == 0, table
    event = connection.execute(
        sa.text("SELECT data FROM audit_events WHERE action = 'merchant.delete'"
                " AND subject_id = :m"), {"m": shop.id},
    ).scalar_one()  # fmt: skip
    assert event["name"] == shop.name
    # The owner, no longer in any merchant, may now be deleted too.
    assert users.delete_user(uow, actor=SYSTEM, user_id=owner.id).id == owner.id


def test_the_merchants_table_pages_by_cursor(uow, make: Factory) -> None:
    tag = uuid.uuid4().hex[:6]
    made = [_apply(uow, make, f"Deep {tag} {n}")[1].public_id for n in range(5)]
    seen, after = [], None
    while True:
        page = admin_merchants.list_merchants(uow, actor=SYSTEM, search=f"Deep {tag}",
                                              limit=2, starting_after=after)  # fmt: skip
        seen += [m.public_id for m in page.items]
        if not page.has_more:
            break
        after = page.items[-1].public_id
    assert seen == list(reversed(made))
