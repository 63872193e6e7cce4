"""Vault ciphertexts are bound to their row (issue 11 A10), on real PostgreSQL: a card number,
a withdrawal's or a merchant's bank details, a payout's or a webhook endpoint's secret copied
into another row does not open there, wherever the app reads it (the payout jobs, webhook
delivery, making a payout, ``portal vault rotate``), so nothing is paid to, signed with or
re-sealed from another row's secret; rows sealed before the binding (to their purpose only)
still open, and ``portal vault rotate`` re-seals them bound to their rows."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
import sqlalchemy as sa

from portal.domain.money import Money
from portal.services.merchants import payments, payouts, webhooks
from portal.services.shared.uow import UnitOfWork
from portal.services.shared.vault import Vault, VaultError
from portal.services.wallet import cards, wallet
from portal.services.wallet import payouts as withdrawal_payouts
from portal.services.wallet.wallet import BankAccount
from portal.worker import Worker
from tests.conftest import SYSTEM, new_key
from tests.merchants.conftest import card_details, open_shop
from tests.merchants.test_webhooks import Receiver

ALICE_BANK = BankAccount("Bank Alice", "1111222233", "Alice")
MALLORY_BANK = BankAccount("Bank Mallory", "9999888877", "Mallory")
CLOSED_BANK = BankAccount("Bank Alice", "55550000", "Alice")


@pytest.fixture
def vault(uow: UnitOfWork) -> Vault:
    return Vault.from_settings(uow.settings)


@pytest.fixture
def staff(make: Any) -> Any:
    return make.user(roles=("admin",))


def rotated_uow(app: Any, clock: Any) -> UnitOfWork:
    """A unit of work whose vault has a new active key 2 (key 1 kept to read old blobs)."""
    old = app.config["SERVICE_SETTINGS"]
    settings = replace(old, vault_keys={**old.vault_keys, 2: b"k" * 32}, vault_active_key=2)
    return UnitOfWork(app.extensions["portal.session_factory"], settings, clock=clock)


def column(connection: sa.Connection, table: str, columns: str, public_id: str) -> Any:
    return connection.execute(
        sa.text(f"SELECT {columns} FROM {table} WHERE public_id = :p"),  # nosec B608: test tables
        {"p": public_id},
    ).one()


def copy_blob(
    connection: sa.Connection,
    table: str,
    blob: str,
    version: str,
    bound: str,
    source: str,
    target: str,
) -> None:
    """What someone who can write to the database but has no key would do: put one row's
    ciphertext (with its key version and flag) into another row."""
    connection.execute(
        sa.text(
            f"UPDATE {table} t SET {blob} = s.{blob}, {version} = s.{version},"  # nosec B608: test tables
            f" {bound} = s.{bound} FROM {table} s WHERE s.public_id = :source"
            " AND t.public_id = :target"
        ),
        {"source": source, "target": target},
    )


def make_legacy(
    connection: sa.Connection,
    vault: Vault,
    table: str,
    blob: str,
    version: str,
    bound: str,
    purpose: str,
    public_id: str,
    plaintext: bytes,
) -> bytes:
    """Rewrite a row as it was before records were bound: sealed to its purpose only."""
    sealed, key_version = vault.encrypt(plaintext, purpose=purpose)
    connection.execute(
        sa.text(
            f"UPDATE {table} SET {blob} = :blob, {version} = :v, {bound} = false"  # nosec B608: test tables
            " WHERE public_id = :p"
        ),
        {"blob": sealed, "v": key_version, "p": public_id},
    )
    return sealed


def processor_asked(connection: sa.Connection, key: str) -> int:
    return connection.execute(
        sa.text("SELECT count(*) FROM demo_processor_requests WHERE idempotency_key = :k"),
        {"k": key},
    ).scalar_one()


def bank_json(bank: BankAccount) -> bytes:
    return json.dumps(
        {
            "bank_name": bank.bank_name,
            "account_number": bank.account_number,
            "account_holder": bank.account_holder,
        }
    ).encode()


# -- cards ------------------------------------------------------------------------------------
def test_a_card_number_is_sealed_for_its_own_row(connection, make, vault):
    alice = make.card(make.user())
    row = column(connection, "cards", "pan_ciphertext, key_version, pan_bound", alice.public_id)
    assert row.pan_bound is True
    opened = vault.decrypt(
        bytes(row.pan_ciphertext), row.key_version, purpose="card.pan", record=alice.public_id
    )
    assert opened.decode() == alice.number
    with pytest.raises(VaultError):  # not as a purpose-only (legacy) blob
        vault.decrypt(bytes(row.pan_ciphertext), row.key_version, purpose="card.pan")


def test_a_card_number_copied_to_another_card_fails_loudly_on_rotation(
    app, connection, make, clock
):
    alice = make.card(make.user())
    mallory = make.card(make.user())
    copy_blob(
        connection,
        "cards",
        "pan_ciphertext",
        "key_version",
        "pan_bound",
        alice.public_id,
        mallory.public_id,
    )
    with pytest.raises(VaultError, match=f"cards.pan_ciphertext of {mallory.public_id}"):
        cards.rotate_vault_keys(rotated_uow(app, clock), actor=SYSTEM)
    # Nothing of that batch was written: Mallory's row still holds Alice's blob under key 1,
    # never re-sealed as Mallory's own.
    row = column(connection, "cards", "key_version", mallory.public_id)
    assert row.key_version == 1


# -- withdrawals ------------------------------------------------------------------------------
def withdraw(uow: UnitOfWork, owner: Any, card: Any, bank: BankAccount) -> Any:
    return wallet.withdraw(
        uow,
        actor=owner,
        card_id=card.card_id,
        amount=Money(1000, "USD"),
        bank=bank,
        idempotency_key=new_key(),
    )


def test_bank_details_copied_to_another_withdrawal_are_not_paid_out(uow, connection, make):
    alice, mallory = make.user(), make.user()
    mine = withdraw(uow, alice, make.card(alice, balance="50"), ALICE_BANK)
    theirs = withdraw(uow, mallory, make.card(mallory, balance="50"), MALLORY_BANK)
    # Mallory copies their bank details into Alice's withdrawal: Alice's money would go to them.
    copy_blob(
        connection,
        "withdrawals",
        "bank_ciphertext",
        "bank_key_version",
        "bank_bound",
        theirs.public_id,
        mine.public_id,
    )
    with pytest.raises(VaultError):
        withdrawal_payouts.pay_out(uow, {"withdrawal_id": mine.id})
    assert processor_asked(connection, mine.public_id) == 0  # the bank was never asked
    assert column(connection, "withdrawals", "status", mine.public_id).status == "processing"
    # Mallory's own withdrawal pays out as usual.
    withdrawal_payouts.pay_out(uow, {"withdrawal_id": theirs.id})
    assert column(connection, "withdrawals", "status", theirs.public_id).status == "succeeded"
    assert processor_asked(connection, theirs.public_id) == 1


def test_a_legacy_withdrawal_is_paid_out_and_rotation_binds_it(
    uow, app, connection, make, vault, clock
):
    alice = make.user()
    legacy = withdraw(uow, alice, make.card(alice, balance="50"), ALICE_BANK)
    make_legacy(
        connection,
        vault,
        "withdrawals",
        "bank_ciphertext",
        "bank_key_version",
        "bank_bound",
        "withdrawal.bank",
        legacy.public_id,
        bank_json(CLOSED_BANK),
    )
    withdrawal_payouts.pay_out(uow, {"withdrawal_id": legacy.id})
    row = column(connection, "withdrawals", "status, failure_code", legacy.public_id)
    # Paid out to the account the legacy blob holds: the demo bank refuses one ending 0000.
    assert (row.status, row.failure_code) == ("failed", "account_closed")
    assert processor_asked(connection, legacy.public_id) == 1

    # Rotation to a new key re-seals it bound to its row.
    rotated = rotated_uow(app, clock)
    assert cards.rotate_vault_keys(rotated, actor=SYSTEM) >= 1
    row = column(
        connection, "withdrawals", "bank_ciphertext, bank_key_version, bank_bound", legacy.public_id
    )
    assert row.bank_bound is True and row.bank_key_version == 2
    new_vault = Vault.from_settings(rotated.settings)
    opened = new_vault.decrypt(
        bytes(row.bank_ciphertext), 2, purpose="withdrawal.bank", record=legacy.public_id
    )
    assert json.loads(opened)["account_number"] == CLOSED_BANK.account_number
    with pytest.raises(VaultError):
        new_vault.decrypt(bytes(row.bank_ciphertext), 2, purpose="withdrawal.bank")


# -- rotation of legacy rows under the active key -------------------------------------------
def test_rotation_binds_every_legacy_row_even_under_the_active_key(
    uow, connection, make, staff, vault
):
    alice = make.user()
    card = make.card(alice, balance="50")
    legacy_card = make_legacy(
        connection,
        vault,
        "cards",
        "pan_ciphertext",
        "key_version",
        "pan_bound",
        "card.pan",
        card.public_id,
        card.number.encode(),
    )
    assert vault.decrypt(legacy_card, 1, purpose="card.pan").decode() == card.number
    wd = withdraw(uow, alice, card, ALICE_BANK)
    make_legacy(
        connection,
        vault,
        "withdrawals",
        "bank_ciphertext",
        "bank_key_version",
        "bank_bound",
        "withdrawal.bank",
        wd.public_id,
        bank_json(ALICE_BANK),
    )
    shop = open_shop(uow, make, staff, name="Legacy Shop")
    merchant_id = shop.merchant.public_id
    payouts.set_bank_account(uow, actor=shop.owner, merchant=merchant_id, bank=ALICE_BANK)
    make_legacy(
        connection,
        vault,
        "merchants",
        "bank_ciphertext",
        "bank_key_version",
        "bank_bound",
        "merchant.bank",
        merchant_id,
        bank_json(ALICE_BANK),
    )
    we = webhooks.create_endpoint(
        uow,
        actor=shop.owner,
        merchant=merchant_id,
        url="https://hooks.example.com/x",
        enabled_events=["*"],
    )
    assert we.secret is not None
    make_legacy(
        connection,
        vault,
        "webhook_endpoints",
        "secret_ciphertext",
        "secret_key_version",
        "secret_bound",
        "webhook.secret",
        we.id,
        we.secret.encode(),
    )

    assert cards.rotate_vault_keys(uow, actor=SYSTEM) == 4  # all under key 1, the active key
    for table, columns, public_id, purpose, plain in (
        (
            "cards",
            "pan_ciphertext AS b, key_version AS v, pan_bound AS f",
            card.public_id,
            "card.pan",
            card.number.encode(),
        ),
        (
            "withdrawals",
            "bank_ciphertext AS b, bank_key_version AS v, bank_bound AS f",
            wd.public_id,
            "withdrawal.bank",
            bank_json(ALICE_BANK),
        ),
        (
            "merchants",
            "bank_ciphertext AS b, bank_key_version AS v, bank_bound AS f",
            merchant_id,
            "merchant.bank",
            bank_json(ALICE_BANK),
        ),
        (
            "webhook_endpoints",
            "secret_ciphertext AS b, secret_key_version AS v, secret_bound AS f",
            we.id,
            "webhook.secret",
            we.secret.encode(),
        ),
    ):
        row = column(connection, table, columns, public_id)
        assert row.f is True, table
        assert vault.decrypt(bytes(row.b), row.v, purpose=purpose, record=public_id) == plain
        with pytest.raises(VaultError):
            vault.decrypt(bytes(row.b), row.v, purpose=purpose)
    assert cards.rotate_vault_keys(uow, actor=SYSTEM) == 0  # nothing left to re-seal


# -- merchants: bank account and payouts ------------------------------------------------------
def funded_shop(uow, make, staff, clock, name: str) -> Any:
    shop = open_shop(uow, make, staff, name=name)
    payments.create_payment(
        uow,
        actor=shop.api,
        merchant=shop.merchant.id,
        amount=Money(5000, "USD"),
        card=card_details(make.card(make.user(), balance="100")),
        idempotency_key=new_key(),
    )
    return shop


def test_a_merchant_bank_account_copied_to_another_merchant_makes_no_payout(
    uow, connection, make, staff, clock
):
    honest = funded_shop(uow, make, staff, clock, "Honest Shop")
    thief = funded_shop(uow, make, staff, clock, "Thief Shop")
    clock.advance(days=3)
    payouts.set_bank_account(uow, actor=honest.owner, merchant=honest.merchant.id, bank=ALICE_BANK)
    payouts.set_bank_account(uow, actor=thief.owner, merchant=thief.merchant.id, bank=MALLORY_BANK)
    copy_blob(
        connection,
        "merchants",
        "bank_ciphertext",
        "bank_key_version",
        "bank_bound",
        thief.merchant.public_id,
        honest.merchant.public_id,
    )
    with pytest.raises(VaultError):
        payouts.create_payout(
            uow, actor=honest.owner, merchant=honest.merchant.id, idempotency_key=new_key()
        )
    made = connection.execute(
        sa.text("SELECT count(*) FROM payouts WHERE merchant_id = :m"), {"m": honest.merchant.id}
    ).scalar_one()
    assert made == 0  # and so no money left the balance
    paid = payouts.create_payout(
        uow, actor=thief.owner, merchant=thief.merchant.id, idempotency_key=new_key()
    )
    assert paid.bank_last4 == "8877"


def test_a_payout_holds_its_own_sealed_copy_and_a_swapped_one_is_not_paid(
    uow, connection, make, staff, clock, vault
):
    honest = funded_shop(uow, make, staff, clock, "Honest Shop")
    thief = funded_shop(uow, make, staff, clock, "Thief Shop")
    clock.advance(days=3)
    payouts.set_bank_account(uow, actor=honest.owner, merchant=honest.merchant.id, bank=ALICE_BANK)
    payouts.set_bank_account(uow, actor=thief.owner, merchant=thief.merchant.id, bank=MALLORY_BANK)
    mine = payouts.create_payout(
        uow, actor=honest.owner, merchant=honest.merchant.id, idempotency_key=new_key()
    )
    theirs = payouts.create_payout(
        uow, actor=thief.owner, merchant=thief.merchant.id, idempotency_key=new_key()
    )
    row = column(
        connection, "payouts", "id, bank_ciphertext, bank_key_version, bank_bound", mine.id
    )
    assert row.bank_bound is True
    assert vault.decrypt(
        bytes(row.bank_ciphertext), row.bank_key_version, purpose="merchant.bank", record=mine.id
    ) == bank_json(ALICE_BANK)
    with pytest.raises(VaultError):  # re-sealed for the payout, not a copy of the merchant's
        vault.decrypt(
            bytes(row.bank_ciphertext),
            row.bank_key_version,
            purpose="merchant.bank",
            record=honest.merchant.public_id,
        )
    copy_blob(
        connection,
        "payouts",
        "bank_ciphertext",
        "bank_key_version",
        "bank_bound",
        theirs.id,
        mine.id,
    )
    with pytest.raises(VaultError):
        payouts.pay(uow, {"payout_id": row.id})
    assert processor_asked(connection, mine.id) == 0


def test_a_legacy_merchant_bank_account_and_payout_still_pay(
    uow, connection, make, staff, clock, vault
):
    shop = funded_shop(uow, make, staff, clock, "Old Shop")
    clock.advance(days=3)
    payouts.set_bank_account(uow, actor=shop.owner, merchant=shop.merchant.id, bank=ALICE_BANK)
    make_legacy(
        connection,
        vault,
        "merchants",
        "bank_ciphertext",
        "bank_key_version",
        "bank_bound",
        "merchant.bank",
        shop.merchant.public_id,
        bank_json(ALICE_BANK),
    )
    made = payouts.create_payout(
        uow, actor=shop.owner, merchant=shop.merchant.id, idempotency_key=new_key()
    )
    assert column(connection, "payouts", "bank_bound", made.id).bank_bound is True
    # A payout made before the binding (a legacy copy) is paid as well.
    make_legacy(
        connection,
        vault,
        "payouts",
        "bank_ciphertext",
        "bank_key_version",
        "bank_bound",
        "merchant.bank",
        made.id,
        bank_json(ALICE_BANK),
    )
    payout_id = column(connection, "payouts", "id", made.id).id
    payouts.pay(uow, {"payout_id": payout_id})
    assert column(connection, "payouts", "status", made.id).status == "paid"
    assert processor_asked(connection, made.id) == 1


# -- webhook endpoints ------------------------------------------------------------------------
@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def test_a_webhook_secret_copied_to_another_endpoint_signs_nothing(
    uow, connection, make, staff, receiver, clock
):
    shop = open_shop(uow, make, staff, name="Hooks", scopes=("payments:write", "webhooks:manage"))
    other = open_shop(uow, make, staff, name="Other", scopes=("webhooks:manage",))
    victim = webhooks.create_endpoint(
        uow, actor=shop.api, merchant=shop.merchant.id, url=receiver.url, enabled_events=["*"]
    )
    known = webhooks.create_endpoint(
        uow,
        actor=other.api,
        merchant=other.merchant.id,
        url="https://hooks.example.com/other",
        enabled_events=["*"],
    )
    # The other merchant knows its own secret; copied into the victim's endpoint, it would
    # let them sign events the victim's receiver trusts, or read the victim's deliveries.
    copy_blob(
        connection,
        "webhook_endpoints",
        "secret_ciphertext",
        "secret_key_version",
        "secret_bound",
        known.id,
        victim.id,
    )
    payments.create_payment(
        uow,
        actor=shop.api,
        merchant=shop.merchant.id,
        amount=Money(1000, "USD"),
        card=card_details(make.card(make.user(), balance="100")),
        idempotency_key=new_key(),
    )
    Worker(lambda: uow, worker_id="test-worker").run_once()
    assert receiver.received == []  # nothing signed with the other endpoint's secret
    # Each delivery's job failed loudly on the vault, to be retried (and fail) again.
    failed = connection.execute(
        sa.text(
            "SELECT j.status, j.last_error FROM jobs j JOIN webhook_deliveries d"
            " ON (j.payload->>'delivery')::bigint = d.id"
            " JOIN webhook_endpoints e ON e.id = d.endpoint_id WHERE e.public_id = :we"
        ),
        {"we": victim.id},
    ).all()
    assert failed and all(
        r.status == "queued" and "ciphertext failed authentication" in r.last_error for r in failed
    )


def test_a_rotated_secret_keeps_each_binding_and_a_legacy_one_still_signs(
    uow, connection, make, staff, receiver, vault, clock
):
    shop = open_shop(uow, make, staff, name="Hooks", scopes=("payments:write", "webhooks:manage"))
    we = webhooks.create_endpoint(
        uow, actor=shop.api, merchant=shop.merchant.id, url=receiver.url, enabled_events=["*"]
    )
    assert we.secret is not None
    make_legacy(
        connection,
        vault,
        "webhook_endpoints",
        "secret_ciphertext",
        "secret_key_version",
        "secret_bound",
        "webhook.secret",
        we.id,
        we.secret.encode(),
    )
    new = webhooks.rotate_secret(
        uow, actor=shop.api, merchant=shop.merchant.id, endpoint=we.id, overlap_hours=24
    )
    row = column(connection, "webhook_endpoints", "secret_bound, previous_secret_bound", we.id)
    assert (row.secret_bound, row.previous_secret_bound) == (True, False)  # legacy one moved
    payments.create_payment(
        uow,
        actor=shop.api,
        merchant=shop.merchant.id,
        amount=Money(1000, "USD"),
        card=card_details(make.card(make.user(), balance="100")),
        idempotency_key=new_key(),
    )
    while Worker(lambda: uow, worker_id="test-worker").run_once():
        pass
    assert receiver.received
    signed = receiver.received[0].headers["Portal-Signature"]
    body = receiver.received[0].body
    timestamp = int(receiver.received[0].headers["webhook-timestamp"])
    event_id = receiver.received[0].headers["webhook-id"]
    for secret in (we.secret, new.secret):
        assert secret is not None
        one = webhooks.sign([secret], event_id, timestamp, body)["Portal-Signature"]
        assert one.split(",v1=")[1] in signed  # signed with both, each opened for this row


def test_the_rotate_command_re_seals_a_legacy_card_bound_to_its_row(app, connection, make, vault):
    card = make.card(make.user())
    make_legacy(connection, vault, "cards", "pan_ciphertext", "key_version", "pan_bound",
                "card.pan", card.public_id, card.number.encode())  # fmt: skip
    result = app.test_cli_runner().invoke(args=["vault", "rotate"])
    assert result.exit_code == 0, result.output
    assert "re-encrypted 1 record(s) under key 1" in result.output
    row = column(connection, "cards", "pan_ciphertext, key_version, pan_bound", card.public_id)
    assert row.pan_bound is True
    opened = vault.decrypt(bytes(row.pan_ciphertext), row.key_version, purpose="card.pan",
                           record=card.public_id)  # fmt: skip
    assert opened.decode() == card.number
    again = app.test_cli_runner().invoke(args=["vault", "rotate"])
    assert "re-encrypted 0 record(s)" in again.output
