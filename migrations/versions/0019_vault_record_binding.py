"""Vault ciphertexts bound to their row (issue 11 A10): a ``<column>_bound`` flag beside each
stored ciphertext says it was sealed with its row's public id in the associated data
(``portal.services.shared.vault``), so it cannot be copied into another row. Rows written
before this revision were sealed to their purpose only: they get ``false`` and keep opening as
before until ``portal vault rotate`` re-seals them bound and sets the flag. The service sets the
flag explicitly whenever it writes a ciphertext; the default ``false`` names the legacy form.

Downgrade drops the flags; it refuses while any row is bound, since the code of the previous
revision could not open such a row (re-sealing a bound row to its purpose alone needs the keys,
which migrations do not hold).

Revision ID: 0019
Revises: 0018
"""

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

# (table, flag) for every vault ciphertext stored in a row, as of this revision.
FLAGS = (
    ("cards", "pan_bound"),
    ("withdrawals", "bank_bound"),
    ("merchants", "bank_bound"),
    ("payouts", "bank_bound"),
    ("webhook_endpoints", "secret_bound"),
    ("webhook_endpoints", "previous_secret_bound"),
)


def upgrade():
    for table, flag in FLAGS:
        op.add_column(
            table, sa.Column(flag, sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade():
    refuse = " UNION ALL ".join(
        f"SELECT '{table}.{flag}' FROM {table} WHERE {flag}" for table, flag in FLAGS
    )
    op.execute(
        f"""
DO $$
DECLARE found text;
BEGIN
    SELECT * INTO found FROM ({refuse}) AS bound LIMIT 1;
    IF found IS NOT NULL THEN
        RAISE EXCEPTION 'vault ciphertexts bound to their rows remain (%): cannot downgrade',
            found USING HINT = 'The previous revision cannot open them.';
    END IF;
END $$
"""
    )
    for table, flag in reversed(FLAGS):
        op.drop_column(table, flag)
