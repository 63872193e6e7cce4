"""In production the web server and the worker refuse to start as a role that could erase the
ledger (a superuser, or the owner of its tables): a misconfigured DATABASE_URL would silently
give the app back the power the runtime role takes away (issue 11 A9)."""

from __future__ import annotations

import pytest
from flask import Flask

from portal.commands import refuse_powerful_role, role_refusal


def test_the_owner_and_superusers_are_named_and_the_runtime_role_is_not(app: Flask) -> None:
    owner = app.config["MIGRATION_DATABASE_URI"]  # the suite's owner: a superuser in CI
    refusal = role_refusal(owner)
    assert refusal is not None and ("superuser" in refusal or "owner" in refusal)
    assert role_refusal(app.config["SQLALCHEMY_DATABASE_URI"]) is None


def test_production_refuses_to_serve_as_the_owner(app: Flask) -> None:
    owner = app.config["MIGRATION_DATABASE_URI"]
    with pytest.raises(SystemExit, match="refusing to start: DATABASE_URL connects as"):
        refuse_powerful_role({"PORTAL_ENV": "production", "SQLALCHEMY_DATABASE_URI": owner})
    # As the runtime role it starts; outside production nothing is checked.
    refuse_powerful_role(
        {"PORTAL_ENV": "production",
         "SQLALCHEMY_DATABASE_URI": app.config["SQLALCHEMY_DATABASE_URI"]}
    )  # fmt: skip
    refuse_powerful_role({"PORTAL_ENV": "development", "SQLALCHEMY_DATABASE_URI": owner})
