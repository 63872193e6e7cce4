"""Two database roles: the schema owner runs these migrations, the app runs as a member of the
NOLOGIN group role ``portal_runtime``, which may read and write every table but only read and
append to the ledger and the audit trail (``postings``, ``journal_entries``, ``audit_events``:
SELECT and INSERT), may not TRUNCATE anything, and may only read ``alembic_version``. Tables
and sequences later migrations create get the same read-write grants by default privileges: a
later append-only table must REVOKE UPDATE, DELETE itself. ``BEFORE TRUNCATE`` triggers on the
three tables refuse even the owner (the test suite's wipe, as the owner, disables them for its
own transaction with ``ALTER TABLE ... DISABLE TRIGGER``).

Roles are cluster-wide: the group role is created here when missing (which needs CREATEROLE or
a superuser; otherwise an administrator creates it first, as the error says) and kept on
downgrade, since other databases of the cluster may use it. The login role the app connects as
is made a member by ``portal runtime-role`` (or by an administrator).

Revision ID: 0018
Revises: 0017
"""

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

# Kept here as of this revision (portal.commands.RUNTIME_GROUP names the same role today).
GROUP = "portal_runtime"
APPEND_ONLY = ("postings", "journal_entries", "audit_events")

CREATE_GROUP = f"""
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{GROUP}') THEN
        BEGIN
            CREATE ROLE {GROUP} NOLOGIN;
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN NULL;  -- made meanwhile elsewhere
            WHEN insufficient_privilege THEN
                RAISE EXCEPTION 'role {GROUP} does not exist and % may not create it',
                    current_user USING ERRCODE = 'insufficient_privilege',
                    HINT = 'As an administrator: CREATE ROLE {GROUP} NOLOGIN; then upgrade again.';
        END;
    END IF;
END $$
"""


def upgrade():
    op.execute(CREATE_GROUP)
    tables = ", ".join(APPEND_ONLY)
    for statement in (
        f"GRANT USAGE ON SCHEMA public TO {GROUP}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {GROUP}",
        f"REVOKE UPDATE, DELETE ON {tables} FROM {GROUP}",
        f"REVOKE INSERT, UPDATE, DELETE ON alembic_version FROM {GROUP}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {GROUP}",
        # Objects later migrations create (as the same owner, in this schema).
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public"
        f" GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {GROUP}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {GROUP}",
    ):
        op.execute(statement)
    for table in APPEND_ONLY:
        # refuse_change() (0002) raises "<table> is append-only: TRUNCATE refused".
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table}"
            " FOR EACH STATEMENT EXECUTE FUNCTION refuse_change()"
        )


def downgrade():
    for table in APPEND_ONLY:
        op.execute(f"DROP TRIGGER {table}_no_truncate ON {table}")
    for statement in (
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE USAGE, SELECT ON SEQUENCES FROM {GROUP}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public"
        f" REVOKE SELECT, INSERT, UPDATE, DELETE ON TABLES FROM {GROUP}",
        f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {GROUP}",
        f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {GROUP}",
        f"REVOKE USAGE ON SCHEMA public FROM {GROUP}",
    ):
        op.execute(statement)
