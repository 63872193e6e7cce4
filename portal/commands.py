"""CLI commands: ``portal worker``, ``portal ledger verify``, ``portal create-admin``,
``portal mfa-enrolment-code``, ``portal runtime-role``, ``portal seed-demo`` (refused in
production)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any

import click
from flask import Flask, current_app
from flask.cli import AppGroup, with_appcontext

from portal.services.identity.mfa import EnrolmentCode, issue_enrolment_code
from portal.services.ledger.reconciliation import reconcile
from portal.web.uow import make_uow

log = logging.getLogger("portal.worker")
ledger = AppGroup("ledger", help="Ledger maintenance and checks.")


@ledger.command("verify")
def ledger_verify() -> None:
    """Check every cached balance against its postings and holds, and that the ledger sums to
    zero per currency. Exits 1 on any violation."""
    report = reconcile(make_uow())
    click.echo(
        f"checked {report.accounts_checked} accounts, {report.entries_checked} journal entries,"
        f" {report.postings_checked} postings"
    )
    for currency, total in sorted(report.totals_by_currency.items()):
        click.echo(f"  ledger sum {currency}: {total}")
    for name, total in sorted(report.system_balances.items()):
        click.echo(f"  system account {name}: {total} (derived from postings)")
    for v in report.violations:
        click.echo(f"VIOLATION {v.check} {v.subject}: expected {v.expected}, found {v.actual}")
    if not report.ok:
        click.echo(f"FAILED: {len(report.violations)} violation(s)")
        sys.exit(1)
    click.echo("OK: ledger balanced, cached balances match postings and holds")


@click.command("worker")
@with_appcontext
@click.option("--once", is_flag=True, help="Run due jobs once and exit.")
def worker_command(once: bool) -> None:
    """Run a background worker (payouts, hold expiry, ledger checks, key purge). It logs
    through the app's console handler (JSON lines in production, secrets masked)."""
    from portal.worker import Worker, serve_http

    app = current_app._get_current_object()  # type: ignore[attr-defined]
    refuse_powerful_role(app.config)
    from portal.telemetry import WORKER_SERVICE, setup_tracing

    setup_tracing(WORKER_SERVICE, app=app)  # OpenTelemetry, when OTEL_EXPORTER_OTLP_ENDPOINT is set
    worker = Worker(
        lambda: make_uow(app),
        poll_seconds=app.config["WORKER_POLL_SECONDS"],
        lease_seconds=app.config["WORKER_LEASE_SECONDS"],
        ledger_check_seconds=app.config["LEDGER_CHECK_SECONDS"],
    )
    if once:
        worker.run_periodic()
        log.info("worker %s ran once: %d job(s)", worker.worker_id, worker.run_once())
        return
    if port := app.config.get("WORKER_HTTP_PORT"):
        serve_http(
            worker, port, host=app.config["WORKER_HTTP_HOST"], token=app.config.get("METRICS_TOKEN")
        )
    worker.install_signal_handlers()
    worker.serve()


def _echo_enrolment_code(issued: EnrolmentCode) -> None:
    click.echo(
        f"one-time enrolment code for {issued.email} (shown once, valid until"
        f" {issued.expires_at:%Y-%m-%d %H:%M} UTC): {issued.code}"
    )
    click.echo(
        "  sign in with the password, then enter this code to set up two-step verification;"
        " the password alone cannot"
    )


@click.command("create-admin")
@click.option("--email", prompt=True)
@click.option("--first-name", prompt=True)
@click.option("--last-name", prompt=True)
@click.password_option(help="Prompted (twice) when not given; checked against the policy.")
@with_appcontext
def create_admin_command(email: str, first_name: str, last_name: str, password: str) -> None:
    """Create an administrator (the first one, or another) and print the one-time enrolment
    code they need, with their password, to set up the second factor every staff page asks
    for."""
    from portal.domain.errors import PortalError
    from portal.domain.types import Actor
    from portal.services.identity.passwords import check_password_policy
    from portal.services.identity.users import create_user

    cli = Actor.system("cli")
    try:
        check_password_policy(password, personal=(email, first_name, last_name))
        created = create_user(
            make_uow(), actor=cli, email=email, first_name=first_name,
            last_name=last_name, password=password, roles=("admin",), verified=True,
        )  # fmt: skip
    except PortalError as exc:
        raise click.ClickException(f"{exc.param or 'input'}: {exc.message}") from exc
    click.echo(f"administrator {created.email} created (id {created.id})")
    _echo_enrolment_code(issue_enrolment_code(make_uow(), actor=cli, user_id=created.id))


@click.command("mfa-enrolment-code")
@click.option("--email", prompt=True, help="The staff member's email address.")
@with_appcontext
def mfa_enrolment_code_command(email: str) -> None:
    """Print a new one-time enrolment code for a user without a second factor (an
    administrator whose code expired, say); it replaces their unused one. Administrators can
    also make one through the API (POST /api/v1/users/{id}/mfa_enrolment_codes)."""
    from portal.domain.errors import PortalError
    from portal.domain.types import Actor
    from portal.services.identity.users import list_users

    cli = Actor.system("cli")
    wanted = email.strip().casefold()
    try:
        found = [
            u
            for u in list_users(make_uow(), actor=cli, search=email.strip(), limit=100).items
            if u.email.casefold() == wanted
        ]
        if not found:
            raise click.ClickException(f"no user has the email {email.strip()!r}")
        issued = issue_enrolment_code(make_uow(), actor=cli, user_id=found[0].id)
    except PortalError as exc:
        raise click.ClickException(exc.message) from exc
    _echo_enrolment_code(issued)


vault = AppGroup("vault", help="The card vault's encryption keys.")


@vault.command("rotate")
def vault_rotate() -> None:
    """Re-encrypt every card number and payout bank record under the active key
    (PORTAL_VAULT_ACTIVE_KEY). Keep the old key in PORTAL_VAULT_KEYS until this has run."""
    from portal.domain.types import Actor
    from portal.services.wallet.cards import rotate_vault_keys

    uow = make_uow()
    done = rotate_vault_keys(uow, actor=Actor.system("cli"))
    click.echo(f"re-encrypted {done} record(s) under key {uow.settings.vault_active_key}")


#: The NOLOGIN group role migration 0018 grants the app's privileges to (roles are cluster-wide).
RUNTIME_GROUP = "portal_runtime"
_CREATE_GROUP = """
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'portal_runtime') THEN
        CREATE ROLE portal_runtime NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;  -- made meanwhile elsewhere
END $$
"""
assert RUNTIME_GROUP in _CREATE_GROUP  # written out: a DO block takes no bound parameters


class RuntimeRoleError(click.ClickException):
    """The runtime role cannot be set up as asked."""


def _libpq(url: str) -> str:
    """A libpq connection string from a SQLAlchemy URL (``postgresql+psycopg://...``)."""
    import sqlalchemy as sa

    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def role_refusal(url: str) -> str | None:
    """Why the app must not run as the role ``url`` connects as, if it must not: a superuser,
    or the owner of the ledger's tables (either could rewrite or erase it)."""
    import psycopg

    with psycopg.connect(_libpq(url), autocommit=True) as conn:
        row = conn.execute(
            "SELECT current_user, rolsuper, EXISTS (SELECT FROM pg_tables"
            " WHERE tablename = 'postings' AND tableowner = current_user) AS owns"
            " FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
    assert row is not None
    name, superuser, owns = row
    if superuser:
        return f"DATABASE_URL connects as {name}, a superuser"
    if owns:
        return f"DATABASE_URL connects as {name}, the owner of the ledger's tables"
    return None


def refuse_powerful_role(config: Mapping[str, Any]) -> None:
    """In production, refuse to serve (web or worker) as a role that could erase the ledger:
    the runtime role exists to take that power away (README: Database roles)."""
    if config.get("PORTAL_ENV") != "production" or not config.get("SQLALCHEMY_DATABASE_URI"):
        return
    if why := role_refusal(str(config["SQLALCHEMY_DATABASE_URI"])):
        raise SystemExit(
            f"refusing to start: {why}. Connect as the runtime role (`portal runtime-role`"
            " makes it) and keep the owner's URL in MIGRATION_DATABASE_URL for migrations."
        )


def ensure_runtime_role(owner_url: str, runtime_url: str) -> str:
    """Make the login role ``runtime_url`` names (with its password, when it has one) a member
    of ``portal_runtime``, connected as the schema owner ``owner_url``; returns what was done.
    Idempotent. Raises RuntimeRoleError for no user, the owner itself, a superuser, or a role
    that owns the ledger: the app would keep the power this role exists to take away."""
    import psycopg
    import sqlalchemy as sa
    from psycopg import errors, sql

    target = sa.make_url(runtime_url)
    name, password = target.username, target.password
    if not name:
        raise RuntimeRoleError("DATABASE_URL names no user: the app's role must be explicit")
    role = sql.Identifier(name)
    with psycopg.connect(_libpq(owner_url), autocommit=True) as conn:
        owner = conn.execute("SELECT current_user").fetchone()
        if owner is not None and owner[0] == name:
            raise RuntimeRoleError(
                f"DATABASE_URL connects as {name}, the role MIGRATION_DATABASE_URL runs the"
                " migrations as: give the app a role of its own"
            )
        conn.execute(_CREATE_GROUP)
        found = conn.execute(
            "SELECT rolsuper, rolcanlogin, pg_has_role(oid, %s, 'MEMBER') AS member,"
            " EXISTS (SELECT FROM pg_tables WHERE tableowner = rolname"
            "         AND tablename = 'postings') AS owns"
            " FROM pg_roles WHERE rolname = %s",
            (RUNTIME_GROUP, name),
        ).fetchone()
        secret = sql.SQL(" PASSWORD {}").format(sql.Literal(password)) if password else sql.SQL("")
        done = []
        if found is None:
            try:
                conn.execute(
                    sql.SQL(
                        "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS{}"
                        " IN ROLE {}"
                    ).format(role, secret, sql.Identifier(RUNTIME_GROUP))
                )
                return f"created login role {name} in {RUNTIME_GROUP}"
            except (errors.DuplicateObject, errors.UniqueViolation):
                return ensure_runtime_role(owner_url, runtime_url)  # made meanwhile: check it
        superuser, can_login, member, owns_ledger = found
        if superuser:
            raise RuntimeRoleError(f"{name} is a superuser: the app must run as an ordinary role")
        if owns_ledger:
            raise RuntimeRoleError(f"{name} owns the ledger's tables: the app needs its own role")
        if password or not can_login:
            conn.execute(sql.SQL("ALTER ROLE {} LOGIN{}").format(role, secret))
            done.append("password set" if password else "login allowed")
        if not member:
            conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(RUNTIME_GROUP), role))
            done.append(f"made a member of {RUNTIME_GROUP}")
        return f"login role {name}: " + (", ".join(done) or f"already a member of {RUNTIME_GROUP}")


@click.command("runtime-role")
@with_appcontext
def runtime_role_command() -> None:
    """Create or update the database role the app connects as (DATABASE_URL's user and
    password) as a member of portal_runtime, connected as the schema owner
    (MIGRATION_DATABASE_URL), which needs CREATEROLE. Run it with `portal db upgrade`; a
    database administrator may make the role by hand instead."""
    owner_url = current_app.config.get("MIGRATION_DATABASE_URI")
    runtime_url = current_app.config.get("SQLALCHEMY_DATABASE_URI")
    if not owner_url or not runtime_url or owner_url == runtime_url:
        raise RuntimeRoleError(
            "MIGRATION_DATABASE_URL is not set: it names the schema owner, DATABASE_URL the"
            " role the app runs as (see README.md)"
        )
    click.echo(ensure_runtime_role(owner_url, runtime_url))


def register(app: Flask) -> None:
    app.cli.add_command(runtime_role_command)
    app.cli.add_command(ledger)
    app.cli.add_command(vault)
    app.cli.add_command(worker_command)
    app.cli.add_command(create_admin_command)
    app.cli.add_command(mfa_enrolment_code_command)

    @app.cli.command("seed-demo")
    @click.option("--if-empty", is_flag=True, help="Do nothing when any user exists already.")
    def seed_demo_command(if_empty: bool) -> None:
        """Fill the database with demo users, cards, a year of wallet history, and merchants with
        keys and four weeks of payments. Development only: refused in production, where its
        published passwords would be a way in."""
        if app.config["PORTAL_ENV"] == "production":
            raise click.ClickException(
                "seed-demo refuses to run in production (PORTAL_ENV=production): the demo"
                " accounts have published passwords. Create the first administrator with"
                " `portal create-admin`."
            )
        import time
        from datetime import UTC, datetime

        from portal.demo import has_users, seed_demo, summary_lines
        from portal.domain.errors import Conflict

        if if_empty and has_users(make_uow(app)):
            click.echo("demo data not seeded: the database has users already")
            return
        started = time.monotonic()
        try:
            summary = seed_demo(lambda clock: make_uow(app, clock=clock), now=datetime.now(UTC))
        except Conflict as exc:
            raise click.ClickException(f"demo users exist already ({exc})") from exc
        for line in summary_lines(summary):
            click.echo(line)
        from portal import demo_merchants

        shops = demo_merchants.seed_merchants(
            lambda clock: make_uow(app, clock=clock), now=datetime.now(UTC)
        )
        # Secret keys are shown once, and only outside production.
        show = app.config["PORTAL_ENV"] != "production"
        for line in demo_merchants.summary_lines(shops, show_secrets=show):
            click.echo(line)
        click.echo(f"seeded in {time.monotonic() - started:.1f} s")
