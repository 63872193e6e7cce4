-- Baseline (a): the 6-round-trip transfer of perf-baselines.md, as bench/baseline_app.py sends
-- it (same statements, same accounts), run by pgbench -M prepared. :accounts is set by -D.
\set a random(1, :accounts)
\set b 1 + (:a + random(0, :accounts - 2)) % :accounts
\set amount random(1, 500)
BEGIN;
SELECT id, balance FROM bench_accounts WHERE id IN (:a, :b) ORDER BY id FOR UPDATE;
UPDATE bench_accounts SET balance = balance - :amount WHERE id = :a;
UPDATE bench_accounts SET balance = balance + :amount WHERE id = :b;
INSERT INTO bench_ledger (debit, credit, amount) VALUES (:a, :b, :amount);
COMMIT;
