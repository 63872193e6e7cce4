"""A card-to-card transfer in one round trip (issue 12): ``portal_transfer(...)``, one PL/pgSQL
call that claims the idempotency key, locks both wallets in account-id order, makes every
refusal ``portal.services.wallet.wallet.transfer`` made in Python, and writes the journal entry,
its postings, both cached balances, the ``transfers`` row, its audit event and the stored
idempotent response. It returns ``(outcome, response)``:

- ``moved``: ``response`` is the stored ``{"result": ...}`` the 201 is built from;
- ``refused``: a refusal made after locking (card archived, frozen or expired, insufficient
  funds); the failed record, its audit event and the stored ``{"error": ...}`` are written;
- ``replay``: the key was used before for this request; ``response`` is what was stored;
- ``conflict``: the key was used for a different request, or its request is still in flight
  (nothing written).

Refusals that write nothing (no such card, another's card, unverified email, the same card,
currency mismatch) raise SQLSTATE ``PTREF`` (``MESSAGE`` names the refusal, ``DETAIL`` the
card's currency for a mismatch), so the whole statement, the claim included, is undone.

Nothing is bypassed: plain INSERTs and UPDATEs, so the ledger's deferred balance trigger, the
CHECK constraints, the append-only and audit-chain triggers and any later AFTER triggers fire
as before. Each statement inside takes its own snapshot (READ COMMITTED, VOLATILE): a
duplicate key whose first request commits while this one waits on the unique index is then
read as committed, as ``idempotency.claim_existing`` reads it. The function runs with the
caller's rights (SECURITY INVOKER): the runtime role's grants apply.

Python keeps what needs its configuration or secrets and costs no query (permission, key,
card ids, the recipient reference, memo, amount limits) and passes the rest in: the request
hash, the clock reading, the key's expiry, the currency's exponent, brand display names.

Revision ID: 0030
Revises: 0029
"""

from alembic import op

revision = "0030"
down_revision = "0029"
branch_labels = None
depends_on = None

SIGNATURE = (
    "portal_transfer(text, text, bytea, timestamptz, timestamptz, text, bigint, text, bigint,"
    " bigint, boolean, boolean, boolean, bigint, text, integer, text, boolean, text, text,"
    " bigint, inet, integer, text, jsonb)"
)

FUNCTIONS = r"""
CREATE OR REPLACE FUNCTION portal_money_text(minor bigint, exponent integer, currency text)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    -- Money.format(): "1,234.56 USD", "-5 JPY"
    SELECT CASE WHEN minor < 0 THEN '-' ELSE '' END
        || regexp_replace(left(d, length(d) - exponent), '(\d)(?=(\d{3})+$)', '\1,', 'g')
        || CASE WHEN exponent > 0 THEN '.' || right(d, exponent) ELSE '' END
        || ' ' || currency
    FROM (SELECT repeat('0', exponent + 1 - length(t)) || t AS d
          FROM (SELECT abs(minor)::text AS t) a) s
$$;

CREATE OR REPLACE FUNCTION portal_masked_name(first_name text, last_name text)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    -- activity.masked_name(): "Budi S."
    SELECT CASE
        WHEN f <> '' AND l <> '' THEN f || ' ' || upper(left(l, 1)) || '.'
        WHEN f <> '' THEN f
        WHEN l <> '' THEN upper(left(l, 1)) || '.'
        ELSE 'Cardholder' END
    FROM (SELECT btrim(coalesce(first_name, '')) AS f, btrim(coalesce(last_name, '')) AS l) s
$$;

CREATE OR REPLACE FUNCTION portal_transfer(
    p_scope text, p_key text, p_hash bytea, p_now timestamptz, p_expires timestamptz,
    p_from_public text, p_from_id bigint, p_to_public text, p_to_id bigint,
    p_owner bigint, p_manage boolean, p_dest_by_owner boolean,
    p_require_verified boolean, p_amount bigint, p_currency text, p_exponent integer,
    p_memo text, p_person boolean, p_public_id text, p_actor_kind text, p_actor_id bigint,
    p_address inet, p_month integer, p_created_at text, p_brands jsonb,
    OUT outcome text, OUT response jsonb
) LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    claim_id bigint;
    existing record;
    w record;
    src record;
    dst record;
    src_found boolean := false;
    dst_found boolean := false;
    owners bigint[] := '{}';
    refusal text;
    entry_id bigint;
    record_id bigint;
    label text;
BEGIN
    -- The idempotency claim (idempotency.claim): a concurrent duplicate waits here on the
    -- unique index until the first request's transaction ends.
    INSERT INTO idempotency_keys (scope, key, request_hash, created_at, expires_at)
        VALUES (p_scope, p_key, p_hash, p_now, p_expires)
        ON CONFLICT (scope, key) DO NOTHING RETURNING id INTO claim_id;
    IF claim_id IS NULL THEN  -- idempotency.claim_existing
        SELECT k.id, k.request_hash, k.response, k.expires_at INTO existing
            FROM idempotency_keys k WHERE k.scope = p_scope AND k.key = p_key FOR UPDATE;
        IF NOT FOUND THEN  -- purged meanwhile: as a key still in flight
            outcome := 'conflict';
            RETURN;
        ELSIF existing.expires_at <= p_now THEN  -- kept past its retention: starts afresh
            UPDATE idempotency_keys SET request_hash = p_hash, response = NULL,
                created_at = p_now, expires_at = p_expires WHERE id = existing.id;
            claim_id := existing.id;
        ELSIF existing.request_hash <> p_hash OR existing.response IS NULL THEN
            outcome := 'conflict';
            RETURN;
        ELSE
            outcome := 'replay';
            response := existing.response;
            RETURN;
        END IF;
    END IF;

    -- The wallets, locked in account-id order (ledger.lock_wallets_by_ref): a public id names
    -- only the actor's own cards unless they may manage money.
    FOR w IN
        SELECT a.id AS account_id, c.id AS card_id, c.user_id, a.currency,
               a.posted_minor AS posted, a.pending_debits_minor AS pending,
               c.status AS card_status, c.archived_at, c.expiry_month, c.expiry_year,
               u.email_verified_at IS NOT NULL AS owner_verified, c.public_id AS card_public_id,
               c.last4, c.brand, u.first_name, u.last_name
        FROM accounts a JOIN cards c ON c.id = a.card_id JOIN users u ON u.id = c.user_id
        WHERE c.id IN (p_from_id, p_to_id)
           OR (c.public_id IN (p_from_public, p_to_public) AND (p_manage OR c.user_id = p_owner))
        ORDER BY a.id FOR UPDATE OF a
    LOOP
        owners := owners || w.user_id;
        IF w.card_id = p_from_id OR w.card_public_id = p_from_public THEN
            src := w;
            src_found := true;
        END IF;
        IF w.card_id = p_to_id OR w.card_public_id = p_to_public THEN
            dst := w;
            dst_found := true;
        END IF;
    END LOOP;
    -- Their owners' money views have changed (live updates poll users.change_version).
    UPDATE users SET change_version = change_version + 1 WHERE id IN (
        SELECT id FROM users WHERE id = ANY(owners) ORDER BY id FOR NO KEY UPDATE
    );

    -- Refusals that write nothing (ledger.wallet_for, then the transfer's own checks). A
    -- record not found is never read (PL/pgSQL refuses the fields of an unassigned record).
    IF NOT src_found THEN
        RAISE EXCEPTION USING ERRCODE = 'PTREF', MESSAGE = 'from_not_found';
    END IF;
    IF NOT p_manage AND src.user_id IS DISTINCT FROM p_owner THEN
        RAISE EXCEPTION USING ERRCODE = 'PTREF', MESSAGE = 'from_not_found';
    END IF;
    IF p_require_verified AND src.user_id = p_owner AND NOT src.owner_verified THEN
        RAISE EXCEPTION USING ERRCODE = 'PTREF', MESSAGE = 'email_unverified';
    END IF;
    IF NOT dst_found THEN
        RAISE EXCEPTION USING ERRCODE = 'PTREF', MESSAGE = 'to_not_found';
    END IF;
    IF p_dest_by_owner AND NOT p_manage AND dst.user_id IS DISTINCT FROM p_owner THEN
        RAISE EXCEPTION USING ERRCODE = 'PTREF', MESSAGE = 'to_not_found';
    END IF;
    IF src.card_id = dst.card_id THEN
        RAISE EXCEPTION USING ERRCODE = 'PTREF', MESSAGE = 'same_card';
    END IF;
    IF src.currency <> p_currency THEN
        RAISE EXCEPTION USING ERRCODE = 'PTREF', MESSAGE = 'source_currency',
            DETAIL = src.currency;
    END IF;
    IF dst.currency <> p_currency THEN
        RAISE EXCEPTION USING ERRCODE = 'PTREF', MESSAGE = 'dest_currency',
            DETAIL = dst.currency;
    END IF;

    -- Refusals that are recorded (ledger.card_refusal for each card, then the funds).
    refusal := CASE
        WHEN src.archived_at IS NOT NULL THEN 'card_archived'
        WHEN src.card_status = 'frozen' THEN 'card_frozen'
        WHEN p_month > src.expiry_year * 12 + src.expiry_month THEN 'card_expired'
        WHEN dst.archived_at IS NOT NULL THEN 'card_archived'
        WHEN dst.card_status = 'frozen' THEN 'card_frozen'
        WHEN p_month > dst.expiry_year * 12 + dst.expiry_month THEN 'card_expired'
        WHEN src.posted - src.pending < p_amount THEN 'insufficient_funds'
    END;

    IF refusal IS NULL THEN
        INSERT INTO journal_entries (kind, description, created_at)
            VALUES ('transfer', p_memo, p_now) RETURNING id INTO entry_id;
        INSERT INTO postings (journal_entry_id, account_id, amount_minor, currency, created_at)
            VALUES (entry_id, src.account_id, -p_amount, p_currency, p_now),
                   (entry_id, dst.account_id, p_amount, p_currency, p_now);
        UPDATE accounts a SET posted_minor = a.posted_minor + d.delta
            FROM (VALUES (src.account_id, -p_amount), (dst.account_id, p_amount))
                AS d(id, delta)
            WHERE a.id = d.id;
    END IF;

    INSERT INTO transfers (public_id, from_card_id, to_card_id, amount_minor, currency, memo,
                           to_person, status, failure_code, journal_entry_id, created_by_kind,
                           created_by_id, created_at)
        VALUES (p_public_id, src.card_id, dst.card_id, p_amount, p_currency, p_memo, p_person,
                CASE WHEN refusal IS NULL THEN 'succeeded' ELSE 'failed' END, refusal,
                entry_id, p_actor_kind, p_actor_id, p_now)
        RETURNING id INTO record_id;
    INSERT INTO audit_events (occurred_at, actor_kind, actor_id, action, subject_type,
                              subject_id, outcome, data, address)
        VALUES (p_now, p_actor_kind, p_actor_id, 'transfer.create', 'transfer', record_id,
                CASE WHEN refusal IS NULL THEN 'success' ELSE 'failure' END,
                jsonb_build_object('from_card_id', src.card_id, 'to_card_id', dst.card_id,
                                   'amount_minor', p_amount, 'currency', p_currency,
                                   'failure_code', refusal),
                p_address);

    IF refusal IS NULL THEN
        -- wallet.card_label(): "Visa •••• 4242 (Budi S.)", or the name alone for a person
        label := portal_masked_name(dst.first_name, dst.last_name);
        IF NOT p_person THEN
            label := coalesce(p_brands ->> dst.brand, 'Card') || ' '
                || U&'\2022\2022\2022\2022' || ' ' || dst.last4 || ' (' || label || ')';
        END IF;
        outcome := 'moved';
        response := jsonb_build_object('result', jsonb_build_object(
            'kind', 'transfer', 'id', record_id, 'public_id', p_public_id,
            'status', 'succeeded',
            'amount', jsonb_build_object('amount_minor', p_amount, 'currency', p_currency),
            'card_id', src.card_id, 'card_public_id', src.card_public_id,
            'balance', jsonb_build_object(
                'card_id', src.card_id, 'account_id', src.account_id,
                'posted', jsonb_build_object('amount_minor', src.posted - p_amount,
                                             'currency', src.currency),
                'pending_debits', jsonb_build_object('amount_minor', src.pending,
                                                     'currency', src.currency),
                'card_public_id', src.card_public_id),
            'created_at', p_created_at,
            'counterparty_card_id', dst.card_id,
            'counterparty_card_public_id', dst.card_public_id,
            'method', NULL, 'journal_entry_id', entry_id, 'replayed', false,
            'card_last4', src.last4, 'counterparty', label, 'memo', p_memo));
    ELSE
        outcome := 'refused';
        response := jsonb_build_object('error', CASE
            WHEN refusal = 'insufficient_funds' THEN jsonb_build_object(
                'class', 'InsufficientFunds', 'type', 'card_error', 'code', refusal,
                'message', 'not enough available money ('
                    || portal_money_text(src.posted - src.pending, p_exponent, src.currency)
                    || ' available)',
                'param', 'amount')
            ELSE jsonb_build_object(
                'class', 'CardUnavailable', 'type', 'card_error', 'code', refusal,
                'message', CASE refusal WHEN 'card_archived' THEN 'card is archived'
                                        WHEN 'card_frozen' THEN 'card is frozen'
                                        ELSE 'card has expired' END,
                'param', NULL)
        END);
    END IF;
    UPDATE idempotency_keys SET response = portal_transfer.response WHERE id = claim_id;
END $$;
"""


def upgrade():
    op.execute(FUNCTIONS)


def downgrade():
    op.execute(
        f"DROP FUNCTION {SIGNATURE};"
        " DROP FUNCTION portal_masked_name(text, text);"
        " DROP FUNCTION portal_money_text(bigint, integer, text)"
    )
