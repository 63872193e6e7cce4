"""Money and times in the user's locale (issue 13): ``users.locale`` (the number, currency and
date formats the pages use, a name from ``portal.domain.locale.LOCALES``; the pages' language
stays English) and ``users.time_zone`` (an IANA name the pages show times in; CSV exports and
the API stay UTC). Existing users get US English; ``time_zone`` stays NULL (shown as UTC, what
the pages showed before) until the user chooses one or a sign-in brings the browser's.

Revision ID: 0021
Revises: 0020
"""

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column(
        "users", sa.Column("locale", sa.String(16), nullable=False, server_default="en_US")
    )
    op.add_column("users", sa.Column("time_zone", sa.String(64), nullable=True))


def downgrade():
    op.drop_column("users", "time_zone")
    op.drop_column("users", "locale")
