"""Canonical emails: ``users.email_canonical`` holds each address in the one form that names an
account (NFKC, then Unicode full case folding, computed in Python by
``portal.services.identity.users.canonical_email``) with a unique index, replacing the unique
index on PostgreSQL's ``lower(email)`` (which disagrees with Python's case mapping: ``İ``).
Existing rows are backfilled here with the same function; two existing accounts whose
addresses fold to one form stop the upgrade, naming them, for staff to settle first.

Revision ID: 0016
Revises: 0015
"""

import unicodedata

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def _canonical(email: str) -> str:
    # Kept here as of this revision (a migration must not change when the app's code does);
    # the same as portal.services.identity.users.canonical_email today.
    return unicodedata.normalize("NFKC", email.strip()).casefold()


def upgrade():
    op.add_column("users", sa.Column("email_canonical", sa.String(254), nullable=True))
    conn = op.get_bind()
    owners: dict[str, int] = {}
    clashes: list[str] = []
    rows = conn.execute(sa.text("SELECT id, email FROM users ORDER BY id")).all()
    for user_id, email in rows:
        canonical = _canonical(email)
        if canonical in owners:
            clashes.append(f"users {owners[canonical]} and {user_id} ({canonical!r})")
        owners[canonical] = user_id
    if clashes:
        raise RuntimeError(
            "these accounts have addresses that fold to one form; change one of each pair"
            " before upgrading: " + "; ".join(clashes)
        )
    if rows:
        conn.execute(
            sa.text("UPDATE users SET email_canonical = :canonical WHERE id = :id"),
            [{"canonical": c, "id": i} for c, i in owners.items()],
        )
    op.alter_column("users", "email_canonical", nullable=False)
    op.create_index("uq_users_email_canonical", "users", ["email_canonical"], unique=True)
    op.drop_index("uq_users_email_lower", table_name="users")


def downgrade():
    op.create_index("uq_users_email_lower", "users", [sa.text("lower(email)")], unique=True)
    op.drop_index("uq_users_email_canonical", table_name="users")
    op.drop_column("users", "email_canonical")
