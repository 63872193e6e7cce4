"""RBAC: the ledger:adjust permission (manual ledger adjustments), granted to admin.

Admin holds every permission, so each new permission is granted to it where it is added.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# Copied, not imported: a migration must not change when the application code does.
NEW_PERMISSIONS = {
    "ledger:adjust": "Post manual ledger adjustments (reversing entries)",
}


def upgrade():
    permissions = sa.table("permissions", sa.column("name"), sa.column("description"))
    op.bulk_insert(
        permissions, [{"name": n, "description": d} for n, d in NEW_PERMISSIONS.items()]
    )
    op.execute(
        sa.text(
            "INSERT INTO role_permissions (role_id, permission_id)"
            " SELECT r.id, p.id FROM roles r, permissions p"
            " WHERE r.name = 'admin' AND p.name = ANY(:perms)"
        ).bindparams(perms=list(NEW_PERMISSIONS))
    )


def downgrade():
    # role_permissions rows go with the permission (ON DELETE CASCADE).
    op.execute(
        sa.text("DELETE FROM permissions WHERE name = ANY(:perms)").bindparams(
            perms=list(NEW_PERMISSIONS)
        )
    )
