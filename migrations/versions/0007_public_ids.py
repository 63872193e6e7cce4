"""Public ids: every object the API returns gets an opaque, random, prefixed id (``card_...``)
in a ``public_id`` column, made by ``portal_public_id(prefix)`` unless the service gives one
(``portal.domain.ids``). Integer ids stay internal.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

#: Table -> prefix of the objects that exist before the merchant tables are rebuilt (0008).
TABLES = {
    "users": "usr",
    "roles": "rol",
    "web_sessions": "ses",
    "cards": "card",
    "top_ups": "tu",
    "transfers": "tr",
    "withdrawals": "wd",
}

# 24 characters from the 62 letters and digits, each from a random byte below 248 (so every
# character is equally likely); the random bytes come from gen_random_uuid (core since 13),
# skipping the two bytes of each UUID that carry its version and variant bits.
PUBLIC_ID_FUNCTION = """
CREATE FUNCTION portal_public_id(prefix text) RETURNS text LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    alphabet CONSTANT text := '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';
    result text := '';
    bytes bytea;
    b int;
BEGIN
    WHILE length(result) < 24 LOOP
        bytes := uuid_send(gen_random_uuid());
        FOR i IN 0..15 LOOP
            CONTINUE WHEN i = 6 OR i = 8;
            b := get_byte(bytes, i);
            IF b < 248 AND length(result) < 24 THEN
                result := result || substr(alphabet, b % 62 + 1, 1);
            END IF;
        END LOOP;
    END LOOP;
    RETURN prefix || '_' || result;
END
$$
"""


def upgrade():
    op.execute(PUBLIC_ID_FUNCTION)
    for table, prefix in TABLES.items():
        op.add_column(
            table,
            sa.Column(
                "public_id",
                sa.String(length=29),
                server_default=sa.text(f"portal_public_id('{prefix}')"),
                nullable=False,
            ),
        )
        op.create_unique_constraint(f"uq_{table}_public_id", table, ["public_id"])


def downgrade():
    for table in TABLES:
        op.drop_column(table, "public_id")
    op.execute("DROP FUNCTION portal_public_id(text)")
