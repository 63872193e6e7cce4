"""Pay people, not card numbers (issue 13), through the wallet pages: pay by email after a
confirmation with the masked name and email, once however often the button is pressed; star the
payee and pay them again from the list; the same answer for no such person and cannot receive
this currency; look-ups limited; "How people pay you"; revealing one's own card only after the
password, audited and limited."""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa

from portal.extensions import limiter
from portal.services.identity import users
from portal.services.ledger import reconciliation
from portal.services.wallet import payees
from tests.cardholder.conftest import Wallets
from tests.pages.conftest import PageClient, People, Person, page_text


def hidden(response: Any, name: str) -> str:
    text = response.get_data(as_text=True)
    found = re.search(rf'name="{name}"[^>]*value="([^"]*)"', text) or re.search(
        rf'value="([^"]*)"[^>]*name="{name}"', text
    )
    assert found, f"no {name} in the page"
    return found.group(1)


def review(client: PageClient, card: str, to: str, amount: str = "12.50", **extra: str) -> Any:
    form = client.get("/wallet/pay")
    assert form.status_code == 200
    return client.post("/wallet/pay", data={
        "idempotency_key": hidden(form, "idempotency_key"), "step": "review", "card_id": card,
        "to": to, "amount": amount, **extra,
    })  # fmt: skip


def confirm(client: PageClient, checked: Any) -> Any:
    fields = ("idempotency_key", "card_id", "payee", "recipient", "amount", "memo")
    data = {name: hidden(checked, name) for name in fields}
    return client.post("/wallet/pay", data={**data, "step": "confirm"})


def posted(connection: sa.Connection, card_id: int) -> int:
    return int(
        connection.execute(
            sa.text("SELECT posted_minor FROM accounts WHERE card_id = :c"), {"c": card_id}
        ).scalar_one()
    )


def test_pay_a_person_by_email_after_checking_who_it_is_and_star_them(
    client: PageClient, alice: Person, people: People, wallets: Wallets,
    connection: sa.Connection,
) -> None:  # fmt: skip
    limiter.reset()
    bob = people.make(email="bobby.tables@portal.test")
    mine = wallets.card(alice, balance="100")
    theirs = wallets.card(bob)

    checked = review(client, mine.public_id, "Bobby.Tables@PORTAL.test", memo="Lunch")

    assert checked.status_code == 200, page_text(checked)
    text = page_text(checked)
    assert "Check who you are paying" in text
    assert "<strong>Ada L.</strong>" in text and "b•••s@portal.test" in text
    shown = re.sub(r"<input[^>]*>", "", text)  # (the edit step carries back what was typed)
    assert "bobby.tables" not in shown.lower()  # their address is shown masked only
    assert theirs.last4 not in text and theirs.public_id not in text
    assert hidden(checked, "recipient").startswith("rcp_")
    assert posted(connection, theirs.card_id) == 0  # nothing moved yet

    paid = confirm(client, checked)
    again = confirm(client, checked)  # Back and press again: nothing twice

    assert paid.status_code == again.status_code == 302
    assert paid.headers["Location"] == again.headers["Location"]
    assert re.fullmatch(r"/wallet/pay/sent/tr_[0-9A-Za-z]{24}", paid.headers["Location"])
    assert posted(connection, theirs.card_id) == 1250
    assert posted(connection, mine.card_id) == 10000 - 1250
    report = reconciliation.reconcile(people.uow())
    assert report.ok, report.violations
    receipt = client.get(paid.headers["Location"])
    assert receipt.status_code == 200
    assert "Money sent to Ada L." in page_text(receipt) and "Lunch" in page_text(receipt)

    # Star them from the receipt; they head the payees, and paying them needs no address.
    star = re.search(r'action="(/wallet/payees/pye_[0-9A-Za-z]{24}/star)"', receipt.get_data(True))
    assert star
    assert client.post(star.group(1), data={"back": paid.headers["Location"].rsplit("/", 1)[1]}
                       ).status_code == 302  # fmt: skip
    listed = client.get("/wallet/pay")
    assert "Starred" in page_text(listed)
    payee = re.search(r"/wallet/pay\?payee=(pye_[0-9A-Za-z]{24})", listed.get_data(True))
    assert payee
    chosen = client.get(f"/wallet/pay?payee={payee.group(1)}")
    checked = client.post("/wallet/pay", data={
        "idempotency_key": hidden(chosen, "idempotency_key"), "step": "review",
        "card_id": mine.public_id, "payee": payee.group(1), "amount": "1",
    })  # fmt: skip
    assert checked.status_code == 200 and "b•••s@portal.test" in page_text(checked)
    assert confirm(client, checked).status_code == 302
    assert posted(connection, theirs.card_id) == 1350


def test_no_such_person_and_cannot_receive_this_currency_look_the_same(
    client: PageClient, alice: Person, people: People, wallets: Wallets
) -> None:
    limiter.reset()
    bob = people.make()
    wallets.card(bob, currency="IDR")
    mine = wallets.card(alice, balance="10")

    unknown = review(client, mine.public_id, "nobody-at-all@example.test", amount="1")
    idr_only = review(client, mine.public_id, bob.email, amount="1")

    def error(response: Any) -> str:
        found = re.search(r'<p class="field__error"[^>]*>([^<]*)</p>', response.get_data(True))
        assert found
        return found.group(1)

    assert unknown.status_code == idr_only.status_code == 422
    assert (
        error(unknown)
        == error(idr_only)
        == ("No one can receive USD at that email address or handle.")
    )
    # A payee who cannot receive the card's currency: the same words, where the payee shows.
    actor = users.actor_for(people.uow(), alice.id)
    found = payees.find_person(people.uow(), actor=actor, to=bob.email, currency="IDR")
    saved = payees.save_payee(people.uow(), actor=actor, reference=found.reference)
    chosen = client.get(f"/wallet/pay?payee={saved.public_id}")
    assert "<strong>Ada L.</strong>" in page_text(chosen)
    by_payee = client.post("/wallet/pay", data={
        "idempotency_key": hidden(chosen, "idempotency_key"), "step": "review",
        "card_id": mine.public_id, "payee": saved.public_id, "amount": "1",
    })  # fmt: skip
    assert by_payee.status_code == 422
    assert error(by_payee) == error(unknown)


def test_look_ups_are_limited_per_person(
    client: PageClient, alice: Person, wallets: Wallets
) -> None:
    limiter.reset()
    mine = wallets.card(alice, balance="10")
    per_minute = int(payees.LOOKUPS_PER_USER.split()[0])
    form = client.get("/wallet/pay")
    key = hidden(form, "idempotency_key")
    answers = [
        client.post("/wallet/pay", data={"idempotency_key": key, "step": "review",
                                         "card_id": mine.public_id, "to": "nobody@example.test",
                                         "amount": "1"}).status_code
        for _ in range(per_minute + 1)
    ]  # fmt: skip
    assert answers == [422] * per_minute + [429]


def test_how_people_pay_you_sets_a_handle_and_the_receiving_card(
    client: PageClient, alice: Person, people: People, wallets: Wallets,
    connection: sa.Connection, another_client: PageClient,
) -> None:  # fmt: skip
    limiter.reset()
    first, second = wallets.card(alice), wallets.card(alice)
    page = client.get("/wallet/receiving")
    assert page.status_code == 200 and "Your first USD card receives" in page_text(page)

    saved = client.post("/wallet/receiving", data={"action": "handle", "handle": "@Alice_W"})
    assert saved.status_code == 302
    look_alike = client.post("/wallet/receiving", data={"action": "handle", "handle": "\u0430lice"})
    assert look_alike.status_code == 422 and "look-alike" in page_text(look_alike)
    chosen = client.post("/wallet/receiving", data={"action": "card", "card_id": second.public_id})
    assert chosen.status_code == 302
    assert "You chose this card" in page_text(client.get("/wallet/receiving"))

    # Someone else pays @alice_w: the money arrives on the chosen card.
    from tests.pages.conftest import sign_in

    carol = people.make()
    theirs = wallets.card(carol, balance="20")
    assert sign_in(another_client, carol).status_code == 302
    checked = review(another_client, theirs.public_id, "@ALICE_W", amount="5")
    assert checked.status_code == 200 and "@Alice_W" in page_text(checked)
    assert confirm(another_client, checked).status_code == 302
    assert (posted(connection, first.card_id), posted(connection, second.card_id)) == (0, 500)


def reveal_audits(connection: sa.Connection, card_id: int) -> list[str]:
    return list(
        connection.execute(
            sa.text("SELECT outcome FROM audit_events WHERE action = 'card.reveal'"
                    " AND subject_type = 'card' AND subject_id = :c ORDER BY id"), {"c": card_id},
        ).scalars()
    )  # fmt: skip


def test_a_card_is_revealed_only_after_the_password_audited_and_limited(
    client: PageClient, alice: Person, people: People, wallets: Wallets,
    connection: sa.Connection, another_client: PageClient,
) -> None:  # fmt: skip
    limiter.reset()
    card = wallets.card(alice)
    path = f"/wallet/cards/{card.public_id}/reveal"
    form = client.get(path)
    assert form.status_code == 200 and card.number not in form.get_data(True)

    wrong = client.post(path, data={"password": "not-it"})
    assert wrong.status_code == 422 and card.number not in wrong.get_data(True)
    assert "password is not right" in page_text(wrong)
    shown = client.post(path, data={"password": alice.password})
    assert shown.status_code == 200
    assert card.number in shown.get_data(True) and card.cvv in shown.get_data(True)
    assert shown.headers["Cache-Control"] == "no-store"
    assert reveal_audits(connection, card.card_id) == ["failure", "success"]

    # Not someone else's card, with their own password.
    from tests.pages.conftest import sign_in

    bob = people.make()
    assert sign_in(another_client, bob).status_code == 302
    assert another_client.get(path).status_code == 404
    assert another_client.post(path, data={"password": bob.password}).status_code == 404

    # Five tries a quarter of an hour, right or wrong.
    answers = [client.post(path, data={"password": alice.password}).status_code
               for _ in range(4)]  # fmt: skip
    assert answers == [200, 200, 200, 429]


def test_pages_and_api_count_look_ups_in_the_same_buckets(
    client: PageClient, alice: Person, wallets: Wallets, app: Any, people: People
) -> None:
    from portal.services.identity import tokens

    limiter.reset()
    mine = wallets.card(alice, balance="10")
    token = tokens.issue_tokens(people.uow(), user_id=alice.id).access_token
    api = app.test_client()
    api.environ_base["REMOTE_ADDR"] = "10.9.8.7"  # another address: only the user's bucket
    per_minute = int(payees.LOOKUPS_PER_USER.split()[0])
    for _ in range(per_minute):
        answer = api.post("/api/v1/people/lookup", headers={"Authorization": f"Bearer {token}"},
                          json={"to": "nobody@example.test", "currency": "usd"})  # fmt: skip
        assert answer.status_code == 404
    assert review(client, mine.public_id, "nobody@example.test", amount="1").status_code == 429


def test_a_card_is_revealed_after_a_second_factor_code_instead_of_the_password(
    client: PageClient, people: People, wallets: Wallets
) -> None:
    from tests.pages.conftest import sign_in

    limiter.reset()
    holder = people.make(with_mfa=True)
    assert sign_in(client, holder).headers["Location"] == "/auth/mfa"
    assert client.post("/auth/mfa", data={"code": holder.recovery_codes[0]}).status_code == 302
    card = wallets.card(holder)
    path = f"/wallet/cards/{card.public_id}/reveal"
    form = client.get(path)
    assert "authenticator app" in page_text(form)  # the code field is offered
    wrong = client.post(path, data={"code": holder.code(offset=5)})  # outside the window
    assert wrong.status_code == 422 and card.number not in wrong.get_data(True)
    assert "code is not right" in page_text(wrong)
    shown = client.post(path, data={"code": holder.code()})
    assert shown.status_code == 200 and card.number in shown.get_data(True)
