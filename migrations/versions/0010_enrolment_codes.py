"""Enrolment codes: the one-time code a staff member needs, besides their password, to set up
their first second factor (made by ``portal create-admin`` or by another administrator). Only
a SHA-256 of the code is stored; each works once and expires.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "mfa_enrolment_codes",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("code_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("created_by_id", sa.BigInteger(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("secret_digest", sa.LargeBinary(length=32), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_mfa_enrolment_codes_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["created_by_id"],
            ["users.id"],
            name=op.f("fk_mfa_enrolment_codes_created_by_id_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mfa_enrolment_codes")),
        sa.UniqueConstraint("code_hash", name=op.f("uq_mfa_enrolment_codes_code_hash")),
        sa.CheckConstraint(
            "used_at IS NOT NULL OR secret_digest IS NULL",
            name=op.f("ck_mfa_enrolment_codes_digest_when_used"),
        ),
    )
    op.create_index(
        op.f("ix_mfa_enrolment_codes_user_id"), "mfa_enrolment_codes", ["user_id"], unique=False
    )
    op.create_index(
        op.f("ix_mfa_enrolment_codes_created_by_id"),
        "mfa_enrolment_codes",
        ["created_by_id"],
        unique=False,
    )


def downgrade():
    op.drop_index(op.f("ix_mfa_enrolment_codes_created_by_id"), table_name="mfa_enrolment_codes")
    op.drop_index(op.f("ix_mfa_enrolment_codes_user_id"), table_name="mfa_enrolment_codes")
    op.drop_table("mfa_enrolment_codes")
