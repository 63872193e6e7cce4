"""Statistics roll-ups (issue 14): ``stat_rollups`` kept by triggers in the movement's own
transaction, and ``stat_checks``, the nightly recomputation's results.

See ``portal.services.statistics`` for the design (families, scopes, statuses, slots). Here:

- ``stat_rollups``: one row per (family, scope_kind, scope_id, currency, status, method, grain,
  period, slot) with ``amount_minor`` and ``count``; grain ``day`` (period = the UTC day) and
  ``month`` (period = the month's first day). Reads sum over slots.
- AFTER INSERT and AFTER UPDATE *statement* triggers with transition tables on top_ups,
  transfers, withdrawals, payments, refunds and AFTER INSERT on postings (balances): each runs
  one aggregated ``INSERT ... ON CONFLICT DO UPDATE`` inside the statement that moved the
  money, so the movement's round trip stays one round trip. An UPDATE adds the new rows'
  contributions and subtracts the old rows' (a status change moves the amount from one status
  to the other); contributions that net to zero (an UPDATE of ``updated_at`` only) write
  nothing. PostgreSQL allows transition tables on single-event triggers only, hence two per
  table.
- Slots: ``SLOTS`` rows per key; a statement writes slot ``txid_current() % SLOTS`` for system,
  merchant and API key scopes (concurrent transactions have neighbouring txids, so they land on
  different rows; one transaction always uses one slot, so its writes never cross another's in
  two orders), and slot 0 for card scopes (a card's movements lock its account row already).
  A slot's row may go negative (the old contribution is subtracted in the current slot); sums
  over slots are exact.
- The functions are SECURITY DEFINER (owned by the schema owner): the runtime role may only
  SELECT ``stat_rollups``, so no application code path can edit a figure.
- Existing rows are rolled up here (the same contributions, slot 0).
- BRIN indexes on ``created_at`` of postings, payments and refunds (append-ordered) let the
  nightly recomputation read one day without scanning history.

Revision ID: 0027
Revises: 0026
"""

from alembic import op

revision = "0027"
down_revision = "0026"
branch_labels = None
depends_on = None

SLOTS = 8
GROUP = "portal_runtime"

#: Per table: the contributions of a row ``r`` (with a ``sign`` column) as SELECTs of
#: (scope_kind, scope_id, currency, status, method, day, amount, count).
_DAY = "(r.created_at AT TIME ZONE 'UTC')::date"
_PAYMENT_STATUS = (
    "CASE r.status WHEN 'requires_payment_method' THEN 'failed'"
    " WHEN 'requires_capture' THEN 'pending' ELSE r.status END"
)
_PAYMENT_AMOUNT = "CASE WHEN r.status = 'succeeded' THEN r.received_minor ELSE r.amount_minor END"


def _scopes(
    scopes: list[tuple[str, str, str | None]], status: str, method: str, amount: str
) -> str:
    parts = []
    for kind, scope_id, where in scopes:
        parts.append(
            f"SELECT '{kind}'::text AS sk, {scope_id}::bigint AS sid, r.currency::text AS cur,"
            f" ({status})::text AS st, ({method})::text AS meth, {_DAY} AS day,"
            f" r.sign * ({amount}) AS amt, r.sign AS cnt FROM moved r"
            + (f" WHERE {where}" if where else "")
        )
    return "\nUNION ALL ".join(parts)


FAMILIES = {
    "top_ups": ("top_ups", _scopes(
        [("system", "0", None), ("card", "r.card_id", None)],
        "r.status", "r.method", "r.amount_minor")),
    "transfers": ("transfers", _scopes(
        [("system", "0", None), ("card", "r.from_card_id", None),
         ("card_received", "r.to_card_id", None)],
        "r.status", "''", "r.amount_minor")),
    "withdrawals": ("withdrawals", _scopes(
        [("system", "0", None), ("card", "r.card_id", None)],
        "r.status", "''", "r.amount_minor")),
    "payments": ("payments", _scopes(
        [("system", "0", None), ("merchant", "r.merchant_id", None),
         ("card", "r.card_id", "r.card_id IS NOT NULL"),
         ("api_key", "r.api_key_id", "r.api_key_id IS NOT NULL")],
        _PAYMENT_STATUS, "r.card_brand", _PAYMENT_AMOUNT)),
    "refunds": ("refunds", _scopes(
        [("system", "0", None), ("merchant", "r.merchant_id", None),
         ("card", "r.card_id", None), ("api_key", "r.api_key_id", "r.api_key_id IS NOT NULL")],
        "r.status", "''", "r.amount_minor")),
}  # fmt: skip

#: Balances: the net posted change of wallet accounts (system and card scopes) and merchant
#: balance accounts (merchant scope); system accounts (funding, payouts, fees) are not counted.
BALANCES = """
SELECT CASE a.kind WHEN 'wallet' THEN s.sk ELSE 'merchant' END AS sk,
       CASE WHEN a.kind = 'merchant' THEN a.merchant_id
            WHEN s.sk = 'card' THEN a.card_id ELSE 0 END::bigint AS sid,
       r.currency::text AS cur, 'succeeded'::text AS st, ''::text AS meth,
       (r.created_at AT TIME ZONE 'UTC')::date AS day, r.sign * r.amount_minor AS amt,
       r.sign AS cnt
FROM moved r JOIN public.accounts a ON a.id = r.account_id
CROSS JOIN (VALUES ('system'), ('card')) s(sk)
WHERE a.kind = 'wallet' OR (a.kind = 'merchant' AND s.sk = 'system')
"""


def _upsert(family: str, contributions: str) -> str:
    return f"""
INSERT INTO public.stat_rollups AS t (family, scope_kind, scope_id, currency, status, method,
    grain, period, slot, amount_minor, count)
SELECT '{family}', c.sk, c.sid, c.cur, c.st, c.meth, g.grain,
       CASE g.grain WHEN 'day' THEN c.day ELSE date_trunc('month', c.day::timestamp)::date END,
       CASE WHEN c.sk IN ('card', 'card_received') THEN 0 ELSE v_slot END,
       sum(c.amt), sum(c.cnt)
FROM ({contributions}) c CROSS JOIN (VALUES ('day'), ('month')) g(grain)
GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9
HAVING sum(c.amt) <> 0 OR sum(c.cnt) <> 0
ORDER BY 1, 2, 3, 4, 5, 6, 7, 8, 9
ON CONFLICT (family, scope_kind, scope_id, grain, period, currency, status, method, slot)
DO UPDATE SET amount_minor = t.amount_minor + EXCLUDED.amount_minor,
              count = t.count + EXCLUDED.count"""


def _function(name: str, rows: str, family: str, contributions: str) -> str:
    return f"""
CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, public AS $$
DECLARE
    v_slot smallint := (txid_current() % {SLOTS})::smallint;
BEGIN
    WITH moved AS ({rows}) {_upsert(family, contributions)};
    RETURN NULL;
END $$;
"""


INSERTED = "SELECT 1 AS sign, n.* FROM new_rows n"
UPDATED = "SELECT 1 AS sign, n.* FROM new_rows n UNION ALL SELECT -1, o.* FROM old_rows o"


def upgrade() -> None:
    op.execute(f"""
CREATE TABLE stat_rollups (
    family varchar(16) NOT NULL,
    scope_kind varchar(16) NOT NULL,
    scope_id bigint NOT NULL,
    grain varchar(8) NOT NULL,
    period date NOT NULL,
    currency char(3) NOT NULL,
    status varchar(16) NOT NULL,
    method varchar(32) NOT NULL,
    slot smallint NOT NULL,
    amount_minor bigint NOT NULL DEFAULT 0,
    count bigint NOT NULL DEFAULT 0,
    CONSTRAINT pk_stat_rollups PRIMARY KEY
        (family, scope_kind, scope_id, grain, period, currency, status, method, slot),
    CONSTRAINT ck_stat_rollups_grain CHECK (grain IN ('day', 'month')),
    CONSTRAINT ck_stat_rollups_slot CHECK (slot >= 0 AND slot < {SLOTS})
);
CREATE TABLE stat_checks (
    id bigint GENERATED BY DEFAULT AS IDENTITY CONSTRAINT pk_stat_checks PRIMARY KEY,
    first_day date NOT NULL,
    last_day date NOT NULL,
    checked_at timestamptz NOT NULL DEFAULT now(),
    differences integer NOT NULL,
    details jsonb NOT NULL DEFAULT '[]'::jsonb
);
CREATE INDEX ix_stat_checks_checked_at ON stat_checks (checked_at);
CREATE INDEX ix_postings_created_at_brin ON postings USING brin (created_at);
CREATE INDEX ix_payments_created_at_brin ON payments USING brin (created_at);
CREATE INDEX ix_refunds_created_at_brin ON refunds USING brin (created_at);
REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON stat_rollups FROM {GROUP};
GRANT SELECT ON stat_rollups TO {GROUP};
""")
    for family, (table, contributions) in FAMILIES.items():
        op.execute(_function(f"stat_{table}_inserted", INSERTED, family, contributions))
        op.execute(_function(f"stat_{table}_updated", UPDATED, family, contributions))
        op.execute(
            f"CREATE TRIGGER {table}_stat_insert AFTER INSERT ON {table}"
            f" REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT"
            f" EXECUTE FUNCTION stat_{table}_inserted()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_stat_update AFTER UPDATE ON {table}"
            f" REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT"
            f" EXECUTE FUNCTION stat_{table}_updated()"
        )
        # What exists already, rolled up once (slot 0).
        op.execute(
            f"DO $$ DECLARE v_slot smallint := 0; BEGIN"
            f" WITH moved AS (SELECT 1 AS sign, n.* FROM {table} n) "
            f"{_upsert(family, contributions)}; END $$"
        )
    op.execute(_function("stat_postings_inserted", INSERTED, "balances", BALANCES))
    op.execute(
        "CREATE TRIGGER postings_stat_insert AFTER INSERT ON postings"
        " REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT"
        " EXECUTE FUNCTION stat_postings_inserted()"
    )
    op.execute(
        "DO $$ DECLARE v_slot smallint := 0; BEGIN"
        " WITH moved AS (SELECT 1 AS sign, n.* FROM postings n) "
        f"{_upsert('balances', BALANCES)}; END $$"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER postings_stat_insert ON postings")
    op.execute("DROP FUNCTION stat_postings_inserted()")
    for table, _ in FAMILIES.values():
        op.execute(f"DROP TRIGGER {table}_stat_insert ON {table}")
        op.execute(f"DROP TRIGGER {table}_stat_update ON {table}")
        op.execute(f"DROP FUNCTION stat_{table}_inserted()")
        op.execute(f"DROP FUNCTION stat_{table}_updated()")
    op.execute("DROP INDEX ix_postings_created_at_brin")
    op.execute("DROP INDEX ix_payments_created_at_brin")
    op.execute("DROP INDEX ix_refunds_created_at_brin")
    op.execute("DROP TABLE stat_checks")
    op.execute("DROP TABLE stat_rollups")
