"""The ``portal ledger verify`` command and configuration checks."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from portal.config import ConfigError, load_config
from portal.domain.money import Money
from portal.services.wallet import wallet
from tests.conftest import new_key


def test_ledger_verify_is_clean_then_catches_a_tampered_balance(app, connection, make, uow):
    alice = make.user()
    card = make.card(alice, balance="100")
    other = make.card(make.user())
    wallet.transfer(uow, actor=alice, from_card_id=card.card_id, to_card_id=other.card_id,
                    amount=Money(2500, "USD"), idempotency_key=new_key())  # fmt: skip
    runner = app.test_cli_runner()
    result = runner.invoke(args=["ledger", "verify"])
    assert result.exit_code == 0, result.output
    assert "ledger sum USD: 0" in result.output
    assert "system account funding:USD: -10000" in result.output
    assert "OK: ledger balanced" in result.output

    connection.execute(
        sa.text("UPDATE accounts SET posted_minor = posted_minor + 1 WHERE card_id = :c"),
        {"c": other.card_id},
    )
    result = runner.invoke(args=["ledger", "verify"])
    assert result.exit_code == 1
    assert "VIOLATION posted_balance" in result.output
    assert "expected 2500, found 2501" in result.output


def test_production_refuses_to_start_without_its_secrets():
    with pytest.raises(ConfigError) as exc:
        load_config({"PORTAL_ENV": "production", "SECRET_KEY": "x" * 40})
    for name in ("DATABASE_URL", "PORTAL_VAULT_KEYS", "PORTAL_FINGERPRINT_KEY", "PORTAL_CVV_KEY"):
        assert name in str(exc.value)


def test_bad_settings_are_named():
    base = {"PORTAL_ENV": "test"}
    with pytest.raises(ConfigError, match="32 bytes"):
        load_config({**base, "PORTAL_VAULT_KEYS": "1:c2hvcnQ="})
    with pytest.raises(ConfigError, match="PORTAL_VAULT_ACTIVE_KEY"):
        load_config({**base, "PORTAL_VAULT_ACTIVE_KEY": "9"})
    with pytest.raises(ConfigError, match="PORTAL_LIMITS"):
        load_config({**base, "PORTAL_LIMITS": '{"USD": {"top_up": {"min": "5", "max": "1"}}}'})
    with pytest.raises(ConfigError, match="PORTAL_ENV"):
        load_config({"PORTAL_ENV": "staging"})


def test_limits_are_read_in_major_units():
    config = load_config(
        {"PORTAL_ENV": "test",
         "PORTAL_LIMITS": '{"JPY": {"top_up": {"min": "100", "max": "5000", "daily": "9000"}}}'}
    )  # fmt: skip
    limits = config["SERVICE_SETTINGS"].limits_for("JPY", "top_up")
    assert (limits.minimum, limits.maximum, limits.daily) == (100, 5000, 9000)


def test_create_admin_makes_an_administrator_with_a_checked_password(app, connection):
    runner = app.test_cli_runner()
    args = ["create-admin", "--email", "root@portal.test", "--first-name", "Ada",
            "--last-name", "Root"]  # fmt: skip
    weak = runner.invoke(args=[*args, "--password", "password"])
    assert weak.exit_code == 1
    assert "password" in weak.output
    result = runner.invoke(args=[*args, "--password", "correct horse battery staple"])
    assert result.exit_code == 0, result.output
    assert "administrator root@portal.test created" in result.output
    roles = connection.execute(
        sa.text(
            "SELECT r.name FROM users u JOIN user_roles ur ON ur.user_id = u.id"
            " JOIN roles r ON r.id = ur.role_id WHERE u.email = 'root@portal.test'"
        )
    ).scalars()
    assert list(roles) == ["admin"]
    again = runner.invoke(args=[*args, "--password", "correct horse battery staple"])
    assert again.exit_code == 1
    assert "already exists" in again.output


def test_development_secrets_are_made_once_and_completed_when_new_ones_appear(
    tmp_path, monkeypatch
):
    from portal import config

    monkeypatch.setattr(config, "INSTANCE_DIR", tmp_path)
    first = config.load_config({"PORTAL_ENV": "development"})
    secrets_file = tmp_path / "dev-secrets.json"
    assert oct(secrets_file.stat().st_mode & 0o777) == "0o600"
    assert config.load_config({"PORTAL_ENV": "development"})["SECRET_KEY"] == first["SECRET_KEY"]
    # A file from an older version, without a secret added since: it is completed, not replaced.
    old = json.loads(secrets_file.read_text())
    del old["PORTAL_JWT_KEY"]
    secrets_file.write_text(json.dumps(old))
    again = config.load_config({"PORTAL_ENV": "development"})
    assert again["SECRET_KEY"] == first["SECRET_KEY"]
    assert len(again["SERVICE_SETTINGS"].jwt_key) >= 32
    assert "PORTAL_JWT_KEY" in json.loads(secrets_file.read_text())


def test_vault_rotate_reencrypts_every_record_under_the_active_key(app, connection, make):
    from dataclasses import replace

    from portal.services.shared.vault import Vault
    from portal.services.wallet.wallet import BankAccount, withdraw
    from tests.conftest import new_key

    alice = make.user()
    card = make.card(alice, balance="100")
    bank = BankAccount("Bank", "1234567890", "Alice")
    withdraw(make.uow, actor=alice, card_id=card.card_id, amount=Money(1000, "USD"), bank=bank,
             idempotency_key=new_key())  # fmt: skip
    old = app.config["SERVICE_SETTINGS"]
    new_keys = {**old.vault_keys, 2: b"n" * 32}
    app.config["SERVICE_SETTINGS"] = replace(old, vault_keys=new_keys, vault_active_key=2)
    try:
        result = app.test_cli_runner().invoke(args=["vault", "rotate"])
        assert result.exit_code == 0, result.output
        assert "re-encrypted 2 record(s) under key 2" in result.output
        row = connection.execute(
            sa.text("SELECT pan_ciphertext, key_version FROM cards WHERE id = :id"),
            {"id": card.card_id},
        ).one()
        assert row.key_version == 2
        vault = Vault.from_settings(app.config["SERVICE_SETTINGS"])
        opened = vault.decrypt(
            bytes(row.pan_ciphertext), 2, purpose="card.pan", record=card.public_id
        )  # bound to its row now (issue 11 A10)
        assert opened.decode() == card.number
        versions = connection.execute(
            sa.text("SELECT DISTINCT bank_key_version FROM withdrawals")
        ).scalars()
        assert list(versions) == [2]
        again = app.test_cli_runner().invoke(args=["vault", "rotate"])
        assert "re-encrypted 0 record(s)" in again.output
    finally:
        app.config["SERVICE_SETTINGS"] = old
