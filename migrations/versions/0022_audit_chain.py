"""A tamper-evident audit log (issue 14): every ``audit_events`` row is hash-chained, whoever
inserts it (``portal.services.shared.audit.record``, a PL/pgSQL movement function, psql).

How the chain is kept. ``audit_chain_heads`` holds one row per chain (``CHAINS`` of them):
the chain's last sequence number and hash (32 zero bytes before its first entry). A BEFORE
INSERT trigger on ``audit_events`` (``audit_events_chain()``, SECURITY DEFINER, owned by the
schema owner) picks a chain, locks its head row, sets the new row's ``chain``, ``seq`` (head +
1) and ``hash`` = sha256(previous hash || UTF-8 of ``audit_event_content(...)``), whatever the
inserter gave for them, and advances the head. The head lock is held until the transaction
ends, so writers on one chain serialise; writers on different chains do not:

- A transaction prefers chain ``pg_backend_pid() % CHAINS``; if another transaction holds that
  head, it takes the next one that is free (``FOR UPDATE SKIP LOCKED``, in chain order,
  wrapping round), and waits (for its preferred head) only when every head is held.
- It keeps the chain it took for the rest of the transaction (the transaction-local setting
  ``portal.audit_chain``), so it holds at most one head: no deadlock between heads, and its
  entries are consecutive on one chain.

The head row is updated once per entry: a transaction writing thousands of entries pays more
per entry as it goes (PostgreSQL walks the row versions it made itself; about 0.5 ms an entry
at 1,000, 1.5 ms at 10,000): Portal writes a handful per transaction, and a bulk import should
commit every few hundred.

Rows commit out of sequence order across transactions (ids come from a sequence at INSERT,
positions from the head at INSERT, commits in any order), so the chain is walked by
``(chain, seq)``, never by id; ``(chain, seq)`` is unique.

The runtime role may still only SELECT and INSERT ``audit_events``; it may only SELECT
``audit_chain_heads`` (the trigger advances heads with the owner's rights).

The canonical content (``audit_event_content``, version ``portal.audit.v1``): the fields id,
chain, seq, occurred_at (microseconds since the Unix epoch), actor_kind, actor_id, action,
subject_type, subject_id, outcome, address (``inet`` as text), data (``jsonb`` as text), each
written ``<length in characters>:<value>`` or ``-`` for NULL, joined by ``|`` after the
version. ``portal audit verify`` recomputes it in Python (``portal.services.shared.audit_chain``)
and checks every link, so it does not trust this function nor the stored hashes.

Existing rows are chained here, on chain 0 in id order (the append-only trigger is off for
this transaction only). ``address`` is new: the client address of the request (NULL for
the worker, the CLI and rows written before it existed).

Downgrade drops the chain (columns, trigger, functions, heads); the rows stay.

Revision ID: 0022
Revises: 0021
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None

#: Chains as of this revision (verify and anchors read the heads table, not this).
CHAINS = 16
GROUP = "portal_runtime"

#: The canonical content's fields, in order, as text (``{r}`` is where the row's name goes).
FIELDS = (
    "{r}id::text", "{r}chain::text", "{r}seq::text",
    "((extract(epoch FROM {r}occurred_at) * 1000000)::bigint)::text",
    "{r}actor_kind", "{r}actor_id::text", "{r}action", "{r}subject_type",
    "{r}subject_id::text", "{r}outcome", "{r}address::text", "{r}data::text",
)  # fmt: skip


def content(row: str) -> str:
    """The canonical content as one SQL expression over ``row``'s columns: written out rather
    than through a helper function, which PostgreSQL would not inline (its argument is used
    twice) and would run as a function call per field (most of the trigger's cost)."""
    fields = (f.format(r=row) for f in FIELDS)
    parts = ", ".join(f"coalesce(length({f}) || ':' || {f}, '-')" for f in fields)
    return f"concat_ws('|', 'portal.audit.v1', {parts})"


FUNCTIONS = f"""
CREATE FUNCTION audit_event_content(
    id bigint, chain smallint, seq bigint, occurred_at timestamptz, actor_kind text,
    actor_id bigint, action text, subject_type text, subject_id bigint, outcome text,
    address inet, data jsonb
) RETURNS text LANGUAGE sql STABLE AS $$ SELECT {content("")} $$;

CREATE FUNCTION audit_events_chain() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, public AS $$
DECLARE
    taken text := current_setting('portal.audit_chain', true);
    preferred int := pg_backend_pid() % {CHAINS};
    head record;
BEGIN
    IF taken IS NOT NULL AND taken <> '' THEN
        -- this transaction's chain: its head is locked by us already
        SELECT h.chain, h.seq, h.hash INTO head FROM public.audit_chain_heads h
            WHERE h.chain = taken::smallint FOR UPDATE;
    ELSE
        -- Look-ups by primary key only: a bloated heads table is never scanned.
        SELECT h.chain, h.seq, h.hash INTO head FROM public.audit_chain_heads h
            WHERE h.chain = preferred FOR UPDATE SKIP LOCKED;
        IF NOT FOUND THEN  -- held by another transaction: the next free one, wrapping round
            SELECT h.chain, h.seq, h.hash INTO head FROM public.audit_chain_heads h
                WHERE h.chain > preferred ORDER BY h.chain FOR UPDATE SKIP LOCKED LIMIT 1;
        END IF;
        IF NOT FOUND THEN
            SELECT h.chain, h.seq, h.hash INTO head FROM public.audit_chain_heads h
                WHERE h.chain < preferred ORDER BY h.chain FOR UPDATE SKIP LOCKED LIMIT 1;
        END IF;
        IF NOT FOUND THEN  -- every head is held: wait for our own
            SELECT h.chain, h.seq, h.hash INTO head FROM public.audit_chain_heads h
                WHERE h.chain = preferred FOR UPDATE;
        END IF;
        PERFORM set_config('portal.audit_chain', head.chain::text, true);
    END IF;
    NEW.chain := head.chain;
    NEW.seq := head.seq + 1;
    -- audit_event_content(NEW.*), written out
    NEW.hash := sha256(head.hash || convert_to({content("NEW.")}, 'UTF8'));
    UPDATE public.audit_chain_heads SET seq = NEW.seq, hash = NEW.hash
        WHERE chain = head.chain;
    RETURN NEW;
END $$;
"""

# Existing rows, on chain 0 in id order (before the trigger exists).
BACKFILL = """
DO $$
DECLARE
    r record;
    n bigint := 0;
    h bytea := decode(repeat('00', 32), 'hex');
BEGIN
    FOR r IN SELECT * FROM audit_events ORDER BY id LOOP
        n := n + 1;
        h := sha256(h || convert_to(audit_event_content(
            r.id, 0::smallint, n, r.occurred_at, r.actor_kind, r.actor_id, r.action,
            r.subject_type, r.subject_id, r.outcome, r.address, r.data), 'UTF8'));
        UPDATE audit_events SET chain = 0, seq = n, hash = h WHERE id = r.id;
    END LOOP;
    UPDATE audit_chain_heads SET seq = n, hash = h WHERE chain = 0;
END $$
"""


def upgrade():
    op.create_table(
        "audit_chain_heads",
        sa.Column("chain", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.LargeBinary(length=32), nullable=False),
        sa.CheckConstraint("chain >= 0", name=op.f("ck_audit_chain_heads_chain")),
        sa.CheckConstraint("seq >= 0", name=op.f("ck_audit_chain_heads_seq")),
        sa.CheckConstraint("octet_length(hash) = 32", name=op.f("ck_audit_chain_heads_hash")),
        sa.PrimaryKeyConstraint("chain", name=op.f("pk_audit_chain_heads")),
    )
    op.execute(
        "INSERT INTO audit_chain_heads (chain, seq, hash)"
        f" SELECT c, 0, decode(repeat('00', 32), 'hex') FROM generate_series(0, {CHAINS - 1}) c"
    )
    # Default privileges (0018) gave the runtime role every write: it may only read heads.
    op.execute(f"REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON audit_chain_heads FROM {GROUP}")
    # Sixteen rows updated at every audit insert: room on the page for HOT updates, and
    # vacuumed after every few thousand dead versions rather than a fraction of its size.
    op.execute(
        "ALTER TABLE audit_chain_heads SET (fillfactor = 50,"
        " autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000)"
    )
    op.add_column("audit_events", sa.Column("address", postgresql.INET(), nullable=True))
    op.add_column("audit_events", sa.Column("chain", sa.SmallInteger(), nullable=True))
    op.add_column("audit_events", sa.Column("seq", sa.BigInteger(), nullable=True))
    op.add_column("audit_events", sa.Column("hash", sa.LargeBinary(length=32), nullable=True))
    op.execute(FUNCTIONS)
    op.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only")
    op.execute(BACKFILL)
    op.execute("ALTER TABLE audit_events ENABLE TRIGGER audit_events_append_only")
    for column in ("chain", "seq", "hash"):
        op.alter_column("audit_events", column, nullable=False)
    op.create_unique_constraint("uq_audit_events_chain", "audit_events", ["chain", "seq"])
    # Anchors (and the console's filters) look up by action, newest first.
    op.create_index("ix_audit_events_action_id", "audit_events", ["action", "id"])
    op.drop_index("ix_audit_events_action", table_name="audit_events")
    op.execute(
        "CREATE TRIGGER audit_events_chain BEFORE INSERT ON audit_events"
        " FOR EACH ROW EXECUTE FUNCTION audit_events_chain()"
    )


def downgrade():
    op.execute("DROP TRIGGER audit_events_chain ON audit_events")
    op.create_index("ix_audit_events_action", "audit_events", ["action"])
    op.drop_index("ix_audit_events_action_id", table_name="audit_events")
    op.drop_constraint("uq_audit_events_chain", "audit_events", type_="unique")
    op.execute(
        "DROP FUNCTION audit_events_chain(); DROP FUNCTION audit_event_content(bigint, smallint,"
        " bigint, timestamptz, text, bigint, text, text, bigint, text, inet, jsonb)"
    )
    for column in ("hash", "seq", "chain", "address"):
        op.drop_column("audit_events", column)
    op.drop_table("audit_chain_heads")
