"""The console's audit log filters by actor and by action, newest first, keyset on
``(occurred_at, id)``: an index for each, so a filtered page (first or deep) reads only the
entries it shows. ``ix_audit_events_action_id`` (action, id) stays: the anchors and the
verification read ``audit.anchor`` entries by id.

Revision ID: 0029
Revises: 0028
"""

from alembic import op

revision = "0029"
down_revision = "0028"
branch_labels = None
depends_on = None


def upgrade():
    op.create_index(
        "ix_audit_events_actor_occurred_at_id", "audit_events",
        ["actor_kind", "actor_id", "occurred_at", "id"],
    )  # fmt: skip
    op.create_index(
        "ix_audit_events_action_occurred_at_id", "audit_events", ["action", "occurred_at", "id"]
    )


def downgrade():
    op.drop_index("ix_audit_events_action_occurred_at_id", table_name="audit_events")
    op.drop_index("ix_audit_events_actor_occurred_at_id", table_name="audit_events")
