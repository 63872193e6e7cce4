"""Ledger invariants (triggers) and seed data: roles, permissions, system accounts.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Copied, not imported: a migration must not change when the application code does.
PERMISSIONS = {
    "wallet:use": "Hold cards and move money on one's own cards",
    "merchant:use": "Run one's own merchant account",
    "users:read": "See users",
    "users:manage": "Create, change, archive and delete users",
    "roles:manage": "Change roles and their permissions",
    "cards:read": "See every card (masked)",
    "cards:manage": "Freeze, archive and restore any card",
    "money:read": "See every balance and money movement",
    "money:manage": "Move money on any card",
    "withdrawals:manage": "Confirm or fail withdrawals by hand",
    "merchants:read": "See every merchant",
    "merchants:manage": "Approve, suspend and change merchants",
    "audit:read": "Read the audit log",
    "stats:read": "See statistics",
    "reconciliation:run": "Run reconciliation",
}
ROLES = {
    "admin": ("Administrator: runs the whole portal", list(PERMISSIONS)),
    "support": (
        "Support staff: read-only access to the console",
        [p for p in PERMISSIONS if p.endswith(":read")],
    ),
    "merchant": ("Merchant: takes payments through the API", ["merchant:use"]),
    "cardholder": ("Cardholder: holds cards and wallets", ["wallet:use"]),
}
CURRENCIES = (
    "AUD BHD BRL CAD CHF CLP CNY CZK DKK EUR GBP HKD HUF IDR ILS INR ISK JOD JPY KRW KWD MXN"
    " MYR NOK NZD OMR PHP PLN SAR SEK SGD THB TND TRY TWD UGX USD VND XAF XOF ZAR"
).split()

TRIGGERS = """
-- Every journal entry's postings sum to zero per currency. Deferred to commit, so an entry's
-- postings may be inserted one by one; the unit of work runs SET CONSTRAINTS ALL IMMEDIATE
-- before committing so the check also fires inside savepoints.
CREATE FUNCTION postings_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    unbalanced record;
BEGIN
    SELECT currency, SUM(amount_minor) AS total INTO unbalanced
    FROM postings WHERE journal_entry_id = NEW.journal_entry_id
    GROUP BY currency HAVING SUM(amount_minor) <> 0 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'journal entry % does not balance in %: sum %',
            NEW.journal_entry_id, unbalanced.currency, unbalanced.total
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER postings_balanced
    AFTER INSERT ON postings DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION postings_balanced();

-- Append-only tables: history is corrected by new rows, never rewritten.
CREATE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER postings_append_only BEFORE UPDATE OR DELETE ON postings
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER journal_entries_append_only BEFORE UPDATE OR DELETE ON journal_entries
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
"""


def upgrade():
    op.execute(TRIGGERS)
    permissions = sa.table("permissions", sa.column("name"), sa.column("description"))
    op.bulk_insert(permissions, [{"name": n, "description": d} for n, d in PERMISSIONS.items()])
    roles = sa.table("roles", sa.column("name"), sa.column("description"))
    op.bulk_insert(roles, [{"name": n, "description": d} for n, (d, _) in ROLES.items()])
    for role, (_, perms) in ROLES.items():
        op.execute(
            sa.text(
                "INSERT INTO role_permissions (role_id, permission_id)"
                " SELECT r.id, p.id FROM roles r, permissions p"
                " WHERE r.name = :role AND p.name = ANY(:perms)"
            ).bindparams(role=role, perms=perms)
        )
    accounts = sa.table("accounts", sa.column("kind"), sa.column("currency"))
    op.bulk_insert(
        accounts,
        [{"kind": k, "currency": c} for c in CURRENCIES for k in ("funding", "payouts", "fees")],
    )


def downgrade():
    op.execute("DELETE FROM accounts WHERE kind IN ('funding', 'payouts', 'fees')")
    op.execute("DELETE FROM role_permissions")
    op.execute("DELETE FROM roles")
    op.execute("DELETE FROM permissions")
    op.execute(
        "DROP TRIGGER audit_events_append_only ON audit_events;"
        " DROP TRIGGER journal_entries_append_only ON journal_entries;"
        " DROP TRIGGER postings_append_only ON postings;"
        " DROP TRIGGER postings_balanced ON postings;"
        " DROP FUNCTION refuse_change(); DROP FUNCTION postings_balanced();"
    )
