-- The lock corpus: statements whose locks safeddl predicts and a real server checks.
--
-- Format (independent of the project's own SQL splitter): entries are separated by
-- a line that is exactly "-- @@". An entry may start with directive lines:
--   -- min_version: N      run on PostgreSQL N and later only
--   -- max_version: N      run on PostgreSQL N and earlier only
--   -- note: text          what the entry is about (for people)
--   -- stdin: line         a line of data for COPY ... FROM STDIN (repeatable)
--   -- before: statement  run and committed first, in a throwaway copy of the
--                         database; the analysis learns it (renames, dropped
--                         columns...), its own locks are not compared (repeatable)
--   -- plan_dependent: r1, r2
--                         relations ("schema.name") whose lock depends on the data
--                         or the plan (partition pruning, tuple routing): the
--                         prediction may leave them out; where both sides lock
--                         one, the modes must agree
--   -- requires: ext        run only where the server ships extension "ext"
--   -- transaction_dependent: why
--                         whether the server refuses a transaction block depends on
--                         the run (a COMMIT in a branch not taken): the prediction
--                         must be "outside a transaction", the server may run it in one
-- When the analysis says a statement's lock set is not known from the text (DROP
-- TYPE ... CASCADE, CALL...), the locks it names must be taken as predicted, and the
-- server may take more.
-- Everything after the directives is one statement, as users write it (comments
-- included). It runs against tests/corpus/setup.sql, in a transaction that is
-- rolled back, or (when the server refuses a transaction block: SQLSTATE 25001, or
-- 2D000 of a CALL or DO whose COMMIT / ROLLBACK is refused there) in a throwaway copy
-- of the database, after the entry's "before" statements.
-- @@
-- ===================================================================== reads
SELECT 1;
-- @@
SELECT * FROM accounts WHERE id = 1;
-- @@
select id, email from accounts where created_at > now() - interval '1 day';
-- @@
SELECT a.email, o.amount
FROM accounts a
JOIN orders o ON o.account_id = a.id
WHERE o.status = 'paid';
-- @@
SELECT * FROM accounts WHERE id IN (SELECT account_id FROM orders WHERE amount > 400);
-- @@
SELECT id FROM accounts a WHERE EXISTS (SELECT 1 FROM invoices i WHERE i.account_id = a.id);
-- @@
WITH big AS (
    SELECT account_id, sum(amount) AS total FROM orders GROUP BY account_id
)
SELECT accounts.email, big.total FROM big JOIN accounts ON accounts.id = big.account_id;
-- @@
-- the view's tables are read too
SELECT * FROM account_orders WHERE account_id = 7;
-- @@
SELECT * FROM order_totals ORDER BY total DESC LIMIT 10;
-- @@
SELECT "Id", "CustomerName" FROM app."Orders" WHERE "Total" > 100;
-- @@
SELECT count(*) FROM events;
-- @@
-- note: plan-time partition pruning: only the matching partition is locked
-- plan_dependent: public.events, public.events_2024, public.events_2025, public.events_default
SELECT * FROM events WHERE created_at >= '2024-03-01' AND created_at < '2024-04-01';
-- @@
-- plan_dependent: public.metrics, public.metrics_eu, public.metrics_us
SELECT * FROM metrics WHERE region = 'eu';
-- @@
SELECT * FROM ONLY events_2024 LIMIT 5;
-- @@
SELECT nextval('ticket_seq');
-- @@
SELECT a.id, x.n FROM accounts a, LATERAL (SELECT count(*) AS n FROM orders o WHERE o.account_id = a.id) x WHERE a.id < 10;
-- @@
SELECT * FROM audit_log WHERE actor = 'user1';
-- @@
SELECT * FROM ONLY audit_log WHERE actor = 'user1';
-- @@
SELECT * FROM accounts UNION ALL SELECT * FROM accounts LIMIT 1;
-- @@
-- ========================================================== row locking reads
SELECT * FROM accounts WHERE id = 1 FOR UPDATE;
-- @@
select * from accounts where id = 2 for share;
-- @@
SELECT * FROM accounts WHERE id = 3 FOR NO KEY UPDATE;
-- @@
SELECT * FROM accounts WHERE id = 4 FOR KEY SHARE;
-- @@
SELECT o.* FROM orders o JOIN accounts a ON a.id = o.account_id WHERE o.id = 10 FOR UPDATE OF o;
-- @@
SELECT * FROM orders WHERE status = 'new' ORDER BY id LIMIT 10 FOR UPDATE SKIP LOCKED;
-- @@
SELECT * FROM invoices WHERE id = 5 FOR UPDATE NOWAIT;
-- @@
SELECT o.id, a.email FROM orders o, accounts a WHERE a.id = o.account_id AND o.id = 3 FOR SHARE OF a NOWAIT;
-- @@
SELECT * FROM app."Orders" WHERE "Id" = 1 FOR NO KEY UPDATE SKIP LOCKED;
-- @@
-- plan_dependent: public.events, public.events_2024, public.events_2025, public.events_default
SELECT * FROM events WHERE id = 42 FOR UPDATE;
-- @@
-- ================================================================= INSERT
INSERT INTO accounts (id, email, name) VALUES (100001, 'new@example.com', 'New');
-- @@
insert into accounts (id, email) values (100002, 'x@example.com') returning id, created_at;
-- @@
INSERT INTO accounts (id, email) VALUES (1, 'user1@example.com')
ON CONFLICT (id) DO UPDATE SET email = EXCLUDED.email;
-- @@
INSERT INTO accounts (id, email) VALUES (1, 'dup@example.com') ON CONFLICT DO NOTHING;
-- @@
-- note: the foreign key check locks the referenced table (FOR KEY SHARE)
INSERT INTO orders (account_id, amount) VALUES (1, 9.99);
-- @@
INSERT INTO invoices (id, account_id, number, total)
SELECT 100000 + id, id, 'X-' || id, 1 FROM accounts WHERE id <= 10;
-- @@
-- note: the row is routed to one partition, which alone is locked
-- plan_dependent: public.events, public.events_2024, public.events_2025, public.events_default
INSERT INTO events (id, created_at, kind) VALUES (900001, '2025-03-01', 'click');
-- @@
-- plan_dependent: public.events, public.events_2024, public.events_2025, public.events_default
INSERT INTO events (id, created_at, kind) VALUES (900002, '2030-01-01', 'future');
-- @@
-- plan_dependent: public.metrics, public.metrics_eu, public.metrics_us
INSERT INTO metrics (id, region, value) VALUES (900003, 'us', 1.0), (900004, 'eu', 2.0);
-- @@
INSERT INTO app."Orders" ("Id", "CustomerName", "Total") VALUES (50001, 'Quoted', 1.00);
-- @@
INSERT INTO audit_log (actor, action) VALUES ('me', 'test') RETURNING id;
-- @@
-- the trigger fires on UPDATE only
INSERT INTO items (sku, name, price) VALUES ('SKU-NEW', 'New item', 1.00);
-- @@
-- ================================================================= UPDATE
UPDATE accounts SET name = 'Renamed' WHERE id = 5;
-- @@
update items set price = price * 1.1 where sku = 'SKU-1';
-- @@
UPDATE orders o SET status = 'paid' FROM accounts a WHERE a.id = o.account_id AND a.email = 'user9@example.com';
-- @@
-- note: changing a referencing column checks the referenced row
UPDATE orders SET account_id = 3 WHERE id = 1;
-- @@
-- plan_dependent: public.events, public.events_2024, public.events_2025, public.events_default
UPDATE events SET kind = 'seen' WHERE created_at < '2024-02-01';
-- @@
UPDATE app."Orders" SET "Total" = "Total" + 1 WHERE "Id" = 3;
-- @@
UPDATE accounts SET balance = balance + 1 WHERE id = (SELECT account_id FROM orders WHERE id = 100);
-- @@
-- note: changing a referenced key checks the referencing tables (FOR KEY SHARE)
UPDATE accounts SET id = 5000 WHERE id = 3000;
-- @@
-- ================================================================= DELETE
DELETE FROM audit_log WHERE id < 10;
-- @@
-- note: deleting a referenced row runs the foreign key checks on orders and invoices
DELETE FROM accounts WHERE id = 3000;
-- @@
DELETE FROM orders o USING accounts a WHERE a.id = o.account_id AND a.id = 5;
-- @@
-- plan_dependent: public.events, public.events_2024, public.events_2025, public.events_default
delete from events where id = 17;
-- @@
-- plan_dependent: public.metrics, public.metrics_eu, public.metrics_us
DELETE FROM metrics WHERE region = 'us' AND id < 5;
-- @@
WITH gone AS (DELETE FROM audit_log WHERE id < 100 RETURNING *)
INSERT INTO audit_log (actor, action) SELECT actor, 'purged' FROM gone;
-- @@
-- ================================================================== MERGE
MERGE INTO accounts AS t
USING (SELECT 100003 AS id, 'm@example.com' AS email) AS s ON t.id = s.id
WHEN MATCHED THEN UPDATE SET email = s.email
WHEN NOT MATCHED THEN INSERT (id, email) VALUES (s.id, s.email);
-- @@
MERGE INTO items i
USING orders o ON i.weight = o.id
WHEN MATCHED THEN DELETE;
-- @@
-- min_version: 17
MERGE INTO accounts t USING (VALUES (1, 'a@b.c')) AS s (id, email) ON t.id = s.id
WHEN MATCHED THEN UPDATE SET email = s.email
RETURNING t.id;
-- @@
-- =================================================================== COPY
COPY accounts TO STDOUT;
-- @@
COPY (SELECT id, email FROM accounts WHERE id < 10) TO STDOUT WITH (FORMAT csv, HEADER);
-- @@
COPY app."Orders" ("Id", "Total") TO STDOUT;
-- @@
-- stdin: 100004,copy@example.com
COPY accounts (id, email) FROM STDIN WITH (FORMAT csv);
-- @@
-- note: the foreign key check runs per copied row
-- stdin: 1,5.00
COPY orders (account_id, amount) FROM STDIN (FORMAT csv);
-- @@
-- plan_dependent: public.events, public.events_2024, public.events_2025, public.events_default
-- stdin: 900005,2024-05-05 00:00:00,copied
COPY events (id, created_at, kind) FROM STDIN WITH (FORMAT csv);
-- @@
-- =============================================================== TRUNCATE
TRUNCATE audit_log;
-- @@
TRUNCATE TABLE items, reservations;
-- @@
TRUNCATE orders RESTART IDENTITY;
-- @@
-- note: CASCADE empties the referencing tables too
TRUNCATE accounts CASCADE;
-- @@
TRUNCATE events;
-- @@
truncate table only metrics_eu;
-- @@
TRUNCATE app."Orders" CONTINUE IDENTITY;
-- @@
-- ========================================================= CREATE INDEX
CREATE INDEX accounts_name_idx ON accounts (name);
-- @@
CREATE UNIQUE INDEX items_sku_lower_idx ON items (lower(sku));
-- @@
CREATE INDEX orders_paid_idx ON orders (created_at) WHERE status = 'paid';
-- @@
CREATE INDEX orders_tags_gin ON orders USING gin (tags);
-- @@
create index on orders using gin (doc jsonb_path_ops);
-- @@
CREATE INDEX IF NOT EXISTS orders_status_idx ON orders (status);
-- @@
CREATE INDEX orders_account_amount_idx ON orders (account_id) INCLUDE (amount);
-- @@
-- note: on a partitioned table each partition gets its own index
CREATE INDEX events_kind_idx ON events (kind);
-- @@
CREATE INDEX "Orders_total_idx" ON app."Orders" ("Total");
-- @@
CREATE INDEX CONCURRENTLY accounts_score_idx ON accounts (score);
-- @@
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS items_descr_sku_idx ON items (descr, sku);
-- @@
create index concurrently on app."Orders" (placed_at);
-- @@
CREATE INDEX CONCURRENTLY events_2024_kind_idx ON events_2024 (kind);
-- @@
-- =========================================================== DROP INDEX
DROP INDEX accounts_created_at_idx;
-- @@
DROP INDEX IF EXISTS no_such_index;
-- @@
DROP INDEX orders_status_idx CASCADE;
-- @@
-- note: dropping a partitioned index drops the partitions' indexes too
DROP INDEX events_created_at_idx;
-- @@
DROP INDEX CONCURRENTLY items_price_idx;
-- @@
DROP INDEX CONCURRENTLY IF EXISTS orders_account_id_idx;
-- @@
-- ============================================================== REINDEX
REINDEX INDEX accounts_email_key;
-- @@
REINDEX TABLE orders;
-- @@
reindex table app."Orders";
-- @@
REINDEX INDEX CONCURRENTLY orders_account_id_idx;
-- @@
REINDEX TABLE CONCURRENTLY items;
-- @@
REINDEX INDEX events_created_at_idx;
-- @@
-- min_version: 14
REINDEX (VERBOSE) SCHEMA app;
-- @@
-- note: a partitioned table is reindexed one partition per transaction
REINDEX TABLE events;
-- @@
-- ============================================== ALTER TABLE: ADD COLUMN
ALTER TABLE accounts ADD COLUMN nickname text;
-- @@
alter table accounts add column if not exists nickname varchar(30);
-- @@
ALTER TABLE accounts ADD COLUMN level integer DEFAULT 0;
-- @@
ALTER TABLE accounts ADD COLUMN level integer NOT NULL DEFAULT 1;
-- @@
ALTER TABLE accounts ADD COLUMN flags text[] DEFAULT '{}';
-- @@
ALTER TABLE accounts ADD COLUMN settings jsonb NOT NULL DEFAULT '{}'::jsonb;
-- @@
ALTER TABLE accounts ADD COLUMN greeting text DEFAULT 'hello' || ' world';
-- @@
ALTER TABLE accounts ADD COLUMN feeling mood DEFAULT 'ok';
-- @@
-- note: now() is stable: evaluated once, no rewrite
ALTER TABLE accounts ADD COLUMN seen_at timestamptz DEFAULT now();
-- @@
ALTER TABLE accounts ADD COLUMN seen_at timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP;
-- @@
ALTER TABLE accounts ADD COLUMN expires_at timestamptz DEFAULT now() + interval '30 days';
-- @@
-- note: volatile defaults are evaluated per row: rewrite
ALTER TABLE accounts ADD COLUMN touched_at timestamptz DEFAULT clock_timestamp();
-- @@
ALTER TABLE accounts ADD COLUMN lucky double precision DEFAULT random();
-- @@
ALTER TABLE accounts ADD COLUMN uid uuid NOT NULL DEFAULT gen_random_uuid();
-- @@
ALTER TABLE accounts ADD COLUMN ticket bigint DEFAULT nextval('ticket_seq');
-- @@
ALTER TABLE items ADD COLUMN item_no serial;
-- @@
ALTER TABLE items ADD COLUMN big_no bigserial;
-- @@
ALTER TABLE items ADD COLUMN ident integer GENERATED ALWAYS AS IDENTITY;
-- @@
ALTER TABLE items ADD COLUMN ident bigint GENERATED BY DEFAULT AS IDENTITY (START WITH 10);
-- @@
ALTER TABLE items ADD COLUMN heavy integer GENERATED ALWAYS AS (weight * 2) STORED;
-- @@
-- min_version: 18
ALTER TABLE items ADD COLUMN heavy integer GENERATED ALWAYS AS (weight * 2) VIRTUAL;
-- @@
-- min_version: 18
-- note: virtual is the default from PostgreSQL 18
ALTER TABLE items ADD COLUMN heavier integer GENERATED ALWAYS AS (weight * 3);
-- @@
ALTER TABLE accounts ADD COLUMN alias text UNIQUE;
-- @@
ALTER TABLE invoices ADD COLUMN parent_account integer REFERENCES accounts (id);
-- @@
ALTER TABLE accounts ADD COLUMN age integer CHECK (age >= 0);
-- @@
ALTER TABLE items ADD COLUMN item_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY;
-- @@
ALTER TABLE events ADD COLUMN source text;
-- @@
ALTER TABLE events ADD COLUMN received_at timestamp DEFAULT clock_timestamp();
-- @@
ALTER TABLE app."Orders" ADD COLUMN "Note" text DEFAULT 'none';
-- @@
ALTER TABLE audit_log ADD COLUMN ip inet;
-- @@
-- ============================================= ALTER TABLE: DROP COLUMN
ALTER TABLE accounts DROP COLUMN note;
-- @@
ALTER TABLE accounts DROP COLUMN IF EXISTS no_such_column;
-- @@
-- note: CASCADE also drops the view that uses the column
ALTER TABLE accounts DROP COLUMN email CASCADE;
-- @@
ALTER TABLE orders DROP COLUMN ref;
-- @@
ALTER TABLE events DROP COLUMN payload;
-- @@
-- ============================================ ALTER TABLE: ALTER COLUMN TYPE
-- note: widening a varchar is binary coercible: no rewrite
ALTER TABLE orders ALTER COLUMN ref TYPE varchar(20);
-- @@
ALTER TABLE accounts ALTER COLUMN code TYPE text;
-- @@
-- note: the unique index on sku is kept as is
ALTER TABLE items ALTER COLUMN sku TYPE varchar(40);
-- @@
ALTER TABLE accounts ALTER COLUMN name TYPE varchar;
-- @@
ALTER TABLE accounts ALTER COLUMN balance TYPE numeric(14, 2);
-- @@
ALTER TABLE accounts ALTER COLUMN balance TYPE numeric;
-- @@
-- note: changing the scale rewrites
ALTER TABLE accounts ALTER COLUMN balance TYPE numeric(14, 4);
-- @@
ALTER TABLE orders ALTER COLUMN ref TYPE varchar(5);
-- @@
ALTER TABLE accounts ALTER COLUMN name TYPE varchar(200);
-- @@
ALTER TABLE orders ALTER COLUMN qty TYPE bigint;
-- @@
ALTER TABLE orders ALTER qty SET DATA TYPE numeric(12, 2) USING qty::numeric;
-- @@
ALTER TABLE accounts ALTER COLUMN score TYPE text USING score::text;
-- @@
ALTER TABLE accounts ALTER COLUMN mood TYPE text;
-- @@
-- note: the foreign key to accounts is re-created
ALTER TABLE invoices ALTER COLUMN account_id TYPE bigint;
-- @@
ALTER TABLE events ALTER COLUMN kind TYPE varchar(100);
-- @@
ALTER TABLE app."Orders" ALTER COLUMN "CustomerName" TYPE varchar(80);
-- @@
-- =============================================== ALTER TABLE: defaults, NOT NULL
ALTER TABLE orders ALTER COLUMN status SET DEFAULT 'pending';
-- @@
alter table accounts alter column created_at set default clock_timestamp();
-- @@
ALTER TABLE orders ALTER COLUMN status DROP DEFAULT;
-- @@
-- note: scans the table to prove there are no NULLs
ALTER TABLE accounts ALTER COLUMN name SET NOT NULL;
-- @@
-- min_version: 12
-- note: a valid CHECK (number IS NOT NULL) proves it: no scan
ALTER TABLE invoices ALTER COLUMN number SET NOT NULL;
-- @@
ALTER TABLE accounts ALTER COLUMN email DROP NOT NULL;
-- @@
ALTER TABLE events ALTER COLUMN kind SET NOT NULL;
-- @@
-- =========================================== ALTER TABLE: column options
ALTER TABLE accounts ALTER COLUMN email SET STATISTICS 500;
-- @@
ALTER TABLE accounts ALTER COLUMN note SET STORAGE EXTERNAL;
-- @@
-- min_version: 14
ALTER TABLE accounts ALTER COLUMN note SET COMPRESSION pglz;
-- @@
ALTER TABLE accounts ALTER COLUMN score SET (n_distinct = 100);
-- @@
-- min_version: 13
ALTER TABLE orders ALTER COLUMN amount_cents DROP EXPRESSION;
-- @@
-- min_version: 17
ALTER TABLE orders ALTER COLUMN amount_cents SET EXPRESSION AS (amount * 1000);
-- @@
ALTER TABLE orders ALTER COLUMN id SET GENERATED ALWAYS;
-- @@
ALTER TABLE orders ALTER COLUMN id RESTART WITH 100000;
-- @@
ALTER TABLE orders ALTER COLUMN id DROP IDENTITY;
-- @@
ALTER TABLE invoices ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY;
-- @@
-- ======================================= ALTER TABLE: ADD CONSTRAINT
-- note: validates every row under the lock
ALTER TABLE accounts ADD CONSTRAINT accounts_balance_positive CHECK (balance >= 0);
-- @@
ALTER TABLE accounts ADD CONSTRAINT accounts_balance_positive CHECK (balance >= 0) NOT VALID;
-- @@
ALTER TABLE invoices ADD CONSTRAINT invoices_account_fk2 FOREIGN KEY (account_id) REFERENCES accounts (id);
-- @@
ALTER TABLE invoices ADD CONSTRAINT invoices_account_fk2 FOREIGN KEY (account_id) REFERENCES accounts (id) NOT VALID;
-- @@
ALTER TABLE orders ADD FOREIGN KEY (account_id) REFERENCES accounts ON DELETE CASCADE;
-- @@
ALTER TABLE app."Orders" ADD CONSTRAINT "Orders_id_fk" FOREIGN KEY ("Id") REFERENCES public.accounts (id) NOT VALID;
-- @@
ALTER TABLE items ADD CONSTRAINT items_sku_unique UNIQUE (sku);
-- @@
ALTER TABLE items ADD CONSTRAINT items_name_unique UNIQUE USING INDEX items_name_idx;
-- @@
ALTER TABLE items ADD PRIMARY KEY (sku);
-- @@
ALTER TABLE items ADD CONSTRAINT items_pkey PRIMARY KEY USING INDEX items_sku_idx;
-- @@
ALTER TABLE reservations ADD CONSTRAINT reservations_no_overlap EXCLUDE USING gist (during WITH &&);
-- @@
ALTER TABLE events ADD CONSTRAINT events_kind_check CHECK (kind <> '');
-- @@
ALTER TABLE events ADD CONSTRAINT events_kind_check CHECK (kind <> '') NOT VALID;
-- @@
-- min_version: 18
ALTER TABLE accounts ADD CONSTRAINT accounts_name_not_null NOT NULL name NOT VALID;
-- @@
-- min_version: 18
ALTER TABLE accounts ADD CONSTRAINT accounts_score_check CHECK (score > 0) NOT ENFORCED;
-- @@
-- min_version: 18
ALTER TABLE invoices ADD CONSTRAINT invoices_account_fk3 FOREIGN KEY (account_id) REFERENCES accounts (id) NOT ENFORCED;
-- @@
-- ============================== ALTER TABLE: VALIDATE / DROP / RENAME CONSTRAINT
ALTER TABLE invoices VALIDATE CONSTRAINT invoices_total_positive;
-- @@
ALTER TABLE invoices VALIDATE CONSTRAINT invoices_account_fk;
-- @@
ALTER TABLE invoices DROP CONSTRAINT invoices_total_positive;
-- @@
-- note: dropping a foreign key removes its triggers from the referenced table too
ALTER TABLE invoices DROP CONSTRAINT invoices_account_fk;
-- @@
ALTER TABLE accounts DROP CONSTRAINT accounts_pkey CASCADE;
-- @@
ALTER TABLE invoices DROP CONSTRAINT IF EXISTS no_such_constraint;
-- @@
ALTER TABLE invoices RENAME CONSTRAINT invoices_total_positive TO invoices_total_gt_zero;
-- @@
-- ======================================================= ALTER TABLE: RENAME
ALTER TABLE audit_log RENAME TO audit_entries;
-- @@
ALTER TABLE IF EXISTS app."Orders" RENAME TO "PurchaseOrders";
-- @@
ALTER TABLE accounts RENAME COLUMN name TO full_name;
-- @@
alter table app."Orders" rename column "Total" to "GrandTotal";
-- @@
ALTER TABLE events RENAME COLUMN kind TO event_kind;
-- @@
-- ============================================= ALTER TABLE: the rest
ALTER TABLE audit_log SET SCHEMA app;
-- @@
ALTER TABLE accounts OWNER TO CURRENT_USER;
-- @@
ALTER TABLE items DISABLE TRIGGER items_touch;
-- @@
ALTER TABLE items ENABLE TRIGGER items_touch;
-- @@
ALTER TABLE items DISABLE TRIGGER USER;
-- @@
ALTER TABLE orders DISABLE TRIGGER ALL;
-- @@
ALTER TABLE items ENABLE REPLICA TRIGGER items_touch;
-- @@
ALTER TABLE orders CLUSTER ON orders_account_id_idx;
-- @@
ALTER TABLE audit_log SET WITHOUT CLUSTER;
-- @@
ALTER TABLE orders SET (fillfactor = 70);
-- @@
ALTER TABLE orders SET (autovacuum_enabled = false);
-- @@
ALTER TABLE orders SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_analyze_scale_factor = 0.02);
-- @@
ALTER TABLE orders RESET (fillfactor);
-- @@
ALTER TABLE orders SET (toast_tuple_target = 256);
-- @@
ALTER TABLE orders SET (parallel_workers = 2);
-- @@
-- note: rewrites the table (and writes it all to WAL)
ALTER TABLE audit_log SET LOGGED;
-- @@
ALTER TABLE items SET UNLOGGED;
-- @@
ALTER TABLE orders REPLICA IDENTITY FULL;
-- @@
ALTER TABLE orders REPLICA IDENTITY USING INDEX orders_pkey;
-- @@
ALTER TABLE accounts ENABLE ROW LEVEL SECURITY;
-- @@
ALTER TABLE accounts DISABLE ROW LEVEL SECURITY;
-- @@
ALTER TABLE accounts FORCE ROW LEVEL SECURITY;
-- @@
ALTER TABLE accounts NO FORCE ROW LEVEL SECURITY;
-- @@
ALTER TABLE audit_archive INHERIT audit_log;
-- @@
ALTER TABLE child_log NO INHERIT audit_log;
-- @@
-- ============================================= ALTER TABLE: partitions
-- note: the CHECK matching the bound spares the scan of events_2026; the default partition is scanned
ALTER TABLE events ATTACH PARTITION events_2026 FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
-- @@
-- note: the CHECK does not imply this narrower bound: events_2026 is scanned
ALTER TABLE events ATTACH PARTITION events_2026 FOR VALUES FROM ('2026-01-01') TO ('2026-06-01');
-- @@
ALTER TABLE events DETACH PARTITION events_2024;
-- @@
ALTER TABLE events DETACH PARTITION events_default;
-- @@
-- min_version: 14
ALTER TABLE metrics DETACH PARTITION metrics_us CONCURRENTLY;
-- @@
-- =============================== ALTER TABLE: several sub-commands at once
ALTER TABLE accounts
    ADD COLUMN tier text,
    ALTER COLUMN tier SET DEFAULT 'free',
    ALTER COLUMN email SET STATISTICS 200;
-- @@
ALTER TABLE orders ALTER COLUMN status SET DEFAULT 'x', ALTER COLUMN qty TYPE bigint;
-- @@
ALTER TABLE orders SET (fillfactor = 80), ALTER COLUMN status SET STATISTICS 300;
-- @@
ALTER TABLE orders CLUSTER ON orders_pkey, SET (autovacuum_enabled = true);
-- @@
ALTER TABLE invoices VALIDATE CONSTRAINT invoices_total_positive, ADD COLUMN memo text;
-- @@
ALTER TABLE items ADD COLUMN a1 integer, ADD COLUMN a2 text DEFAULT random()::text, DROP COLUMN descr;
-- @@
-- ============================================================ ALTER INDEX
ALTER INDEX accounts_created_at_idx RENAME TO accounts_created_idx;
-- @@
ALTER INDEX orders_status_idx SET (fillfactor = 80);
-- @@
ALTER INDEX orders_status_idx RESET (fillfactor);
-- @@
-- note: the index is in pg_default already, so nothing is copied; the table is not locked
ALTER INDEX items_price_idx SET TABLESPACE pg_default;
-- @@
-- before: CREATE INDEX items_lower_name_idx ON items (lower(name))
ALTER INDEX items_lower_name_idx ALTER COLUMN 1 SET STATISTICS 200;
-- @@
-- before: CREATE INDEX metrics_region_idx ON ONLY metrics (region)
-- before: CREATE INDEX metrics_eu_region_idx ON metrics_eu (region)
ALTER INDEX metrics_region_idx ATTACH PARTITION metrics_eu_region_idx;
-- @@
-- before: CREATE INDEX metrics_region_idx ON ONLY metrics (region)
-- before: CREATE INDEX "statistics" ON metrics_eu (region)
ALTER INDEX metrics_region_idx ATTACH PARTITION "statistics";
-- @@
ALTER INDEX IF EXISTS app."Orders_pkey" RENAME TO "Orders_pk";
-- @@
-- ============================================================= triggers
CREATE TRIGGER accounts_touch BEFORE UPDATE ON accounts FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
-- @@
-- min_version: 14
CREATE OR REPLACE TRIGGER items_touch BEFORE UPDATE OR INSERT ON items FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
-- @@
DROP TRIGGER items_touch ON items;
-- @@
DROP TRIGGER IF EXISTS no_such_trigger ON items;
-- @@
ALTER TRIGGER items_touch ON items RENAME TO items_touch_updated;
-- @@
-- ============================================== policies, comments, grants
CREATE POLICY accounts_own ON accounts USING (id > 0);
-- @@
CREATE POLICY "Orders_all" ON app."Orders" FOR SELECT TO PUBLIC USING (true);
-- @@
COMMENT ON TABLE accounts IS 'People who pay';
-- @@
COMMENT ON COLUMN orders.status IS 'new, paid or shipped';
-- @@
COMMENT ON INDEX orders_status_idx IS 'by status';
-- @@
GRANT SELECT ON accounts TO PUBLIC;
-- @@
GRANT SELECT, INSERT, UPDATE ON TABLE orders, invoices TO PUBLIC;
-- @@
REVOKE ALL ON app."Orders" FROM PUBLIC;
-- @@
GRANT SELECT (email) ON accounts TO PUBLIC;
-- @@
CREATE STATISTICS accounts_stats (dependencies) ON score, balance FROM accounts;
-- @@
-- ============================================================ maintenance
ANALYZE accounts;
-- @@
analyze orders (status, amount);
-- @@
ANALYZE events;
-- @@
ANALYZE VERBOSE items;
-- @@
-- note: an inheritance parent is analyzed with its children
ANALYZE audit_log;
-- @@
-- min_version: 18
ANALYZE ONLY audit_log;
-- @@
VACUUM accounts;
-- @@
-- note: PostgreSQL 18 vacuums inheritance children too (VACUUM ONLY does not)
VACUUM audit_log;
-- @@
-- min_version: 18
VACUUM ONLY audit_log;
-- @@
VACUUM FULL audit_log;
-- @@
VACUUM (ANALYZE) orders;
-- @@
VACUUM (VERBOSE, ANALYZE) items (price);
-- @@
vacuum analyze invoices, reservations;
-- @@
VACUUM metrics;
-- @@
VACUUM (FREEZE) app."Orders";
-- @@
CLUSTER orders USING orders_account_id_idx;
-- @@
-- note: uses the index chosen earlier with CLUSTER ON
CLUSTER audit_log;
-- @@
REFRESH MATERIALIZED VIEW order_totals;
-- @@
REFRESH MATERIALIZED VIEW CONCURRENTLY order_totals;
-- @@
REFRESH MATERIALIZED VIEW order_totals WITH NO DATA;
-- @@
-- =========================================================== LOCK TABLE
LOCK TABLE accounts;
-- @@
LOCK TABLE accounts IN ACCESS SHARE MODE;
-- @@
LOCK TABLE accounts IN ROW SHARE MODE;
-- @@
lock table accounts in row exclusive mode;
-- @@
LOCK TABLE accounts IN SHARE UPDATE EXCLUSIVE MODE;
-- @@
LOCK TABLE accounts IN SHARE MODE;
-- @@
LOCK TABLE accounts IN SHARE ROW EXCLUSIVE MODE;
-- @@
LOCK TABLE accounts IN EXCLUSIVE MODE;
-- @@
LOCK accounts IN ACCESS EXCLUSIVE MODE;
-- @@
LOCK TABLE accounts, orders IN SHARE ROW EXCLUSIVE MODE;
-- @@
LOCK TABLE ONLY events IN SHARE MODE NOWAIT;
-- @@
-- note: without ONLY the partitions are locked too
LOCK TABLE events IN ACCESS EXCLUSIVE MODE;
-- @@
LOCK TABLE app."Orders" IN EXCLUSIVE MODE NOWAIT;
-- @@
-- note: locking a view locks the tables it reads
LOCK TABLE account_orders IN ACCESS SHARE MODE;
-- @@
-- ================================================================== DROP
DROP TABLE IF EXISTS no_such_table;
-- @@
DROP TABLE reservations;
-- @@
-- note: the foreign key's triggers on accounts go too
DROP TABLE invoices;
-- @@
DROP TABLE accounts CASCADE;
-- @@
DROP TABLE events;
-- @@
drop table if exists events_2026, app."Orders";
-- @@
DROP VIEW account_orders;
-- @@
DROP VIEW IF EXISTS account_orders CASCADE;
-- @@
DROP MATERIALIZED VIEW order_totals;
-- @@
DROP MATERIALIZED VIEW IF EXISTS no_such_view;
-- @@
-- ================================================================ CREATE
CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL);
-- @@
CREATE TABLE IF NOT EXISTS accounts (id integer);
-- @@
CREATE TABLE payments (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id integer NOT NULL REFERENCES accounts (id),
    amount numeric(10, 2)
);
-- @@
CREATE TABLE app.refunds (order_id bigint REFERENCES public.orders ON DELETE CASCADE, amount numeric);
-- @@
CREATE TABLE accounts_copy (LIKE accounts INCLUDING ALL);
-- @@
CREATE TABLE paid_orders AS SELECT * FROM orders WHERE status = 'paid';
-- @@
CREATE UNLOGGED TABLE scratch AS SELECT id, email FROM accounts WITH NO DATA;
-- @@
CREATE TEMP TABLE tmp_ids AS SELECT id FROM accounts LIMIT 5;
-- @@
CREATE TABLE events_2027 PARTITION OF events FOR VALUES FROM ('2027-01-01') TO ('2028-01-01');
-- @@
CREATE TABLE metrics_asia PARTITION OF metrics FOR VALUES IN ('asia');
-- @@
CREATE TABLE child_log2 () INHERITS (audit_log);
-- @@
CREATE VIEW recent_orders AS SELECT * FROM orders WHERE created_at > now() - interval '7 days';
-- @@
CREATE OR REPLACE VIEW account_orders AS
SELECT a.id AS account_id, a.email, o.id AS order_id, o.amount, o.status
FROM accounts AS a
JOIN orders AS o ON o.account_id = a.id;
-- @@
CREATE MATERIALIZED VIEW invoice_totals AS SELECT account_id, sum(total) AS total FROM invoices GROUP BY account_id;
-- @@
CREATE MATERIALIZED VIEW invoice_totals AS SELECT account_id FROM invoices WITH NO DATA;
-- @@
CREATE SEQUENCE invoice_seq;
-- @@
CREATE FUNCTION one() RETURNS integer LANGUAGE sql AS 'SELECT 1';
-- @@
-- ====================================================== sequences, types
ALTER SEQUENCE ticket_seq RESTART WITH 1000;
-- @@
ALTER SEQUENCE ticket_seq INCREMENT BY 10 CACHE 5;
-- @@
ALTER SEQUENCE audit_log_id_seq OWNED BY NONE;
-- @@
ALTER SEQUENCE ticket_seq OWNED BY orders.qty;
-- @@
-- min_version: 12
ALTER TYPE mood ADD VALUE 'great';
-- @@
-- min_version: 12
ALTER TYPE mood ADD VALUE IF NOT EXISTS 'meh' BEFORE 'ok';
-- @@
ALTER TYPE mood RENAME VALUE 'sad' TO 'blue';
-- @@
-- ===================================================== session settings
SET statement_timeout = '5s';
-- @@
SET LOCAL lock_timeout TO '2s';
-- @@
set search_path to app, public;
-- @@
RESET lock_timeout;
-- @@
SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED;
-- @@
RESET ALL;
-- @@
-- ============================== forms found replaying real migration histories
-- note: the foreign key on the column goes with it: its triggers on accounts too
ALTER TABLE tasks DROP COLUMN owner_id;
-- @@
-- note: CASCADE drops the triggers that execute it, on each of their tables
DROP FUNCTION bump_title() CASCADE;
-- @@
-- note: two levels of ON DELETE CASCADE: every level is written
DELETE FROM tenants WHERE id = 7;
-- @@
-- note: replacing an existing view locks it; its query is parsed, not planned
CREATE OR REPLACE VIEW busy_tenant_projects AS
SELECT tenant_id, name, project_id FROM tenant_projects WHERE tenant_id < 50;
-- @@
-- note: a view over a view: only the view named is locked, not its tables
CREATE VIEW tenant_projects_copy AS SELECT * FROM tenant_projects;
-- @@
-- note: a LANGUAGE sql body is checked when the function is created
CREATE FUNCTION task_count() RETURNS bigint LANGUAGE sql AS 'SELECT count(*) FROM tasks';
-- @@
CREATE OR REPLACE FUNCTION add_tenant(tid integer) RETURNS void LANGUAGE sql AS $$
    INSERT INTO tenants (id, name) VALUES (tid, 'new');
    UPDATE projects SET title = 'x' WHERE tenant_id = tid;
$$;
-- @@
-- note: the body reads a view: rewritten, so the view's tables are locked too
CREATE FUNCTION busy_count() RETURNS bigint LANGUAGE sql STABLE
AS $$ SELECT count(*) FROM busy_tenant_projects $$;
-- @@
-- note: plpgsql bodies are not checked for tables at creation
CREATE FUNCTION noop_count() RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
    RETURN (SELECT count(*) FROM tasks);
END
$$;
-- @@
-- note: a primary key sets NOT NULL on the nullable code: a scan under ACCESS EXCLUSIVE
ALTER TABLE labels ADD PRIMARY KEY USING INDEX labels_code_idx;
-- @@
-- note: id is NOT NULL already: brief
ALTER TABLE labels ADD CONSTRAINT labels_pkey PRIMARY KEY USING INDEX labels_id_idx;
-- @@
-- note: the new column is all NULL: no validation scan
ALTER TABLE tasks ADD COLUMN tenant_id bigint REFERENCES tenants (id);
-- @@
-- note: ON ONLY a partitioned table: the parent alone, no partition is built
CREATE INDEX events_at_only_idx ON ONLY events (created_at);
-- @@
-- min_version: 18
-- note: NOT ENFORCED: no validation scan
ALTER TABLE tasks ADD CONSTRAINT tasks_project_unenforced
    FOREIGN KEY (project_id) REFERENCES projects (id) NOT ENFORCED;
-- @@
-- note: owner_id is left out and has no default: NULL is not checked against accounts
INSERT INTO tasks (id, project_id, title) VALUES (100001, 5, 'new task');
-- @@
INSERT INTO tasks (id, project_id, owner_id, title) VALUES (100002, 5, 9, 'owned task');
-- @@
-- before: ALTER TABLE accounts RENAME TO members
-- note: the foreign key follows the renamed table
ALTER TABLE tasks DROP CONSTRAINT tasks_owner_id_fkey;
-- @@
-- before: ALTER INDEX projects_code_idx RENAME TO projects_code_key
-- note: the renamed index is still known to belong to projects
DROP INDEX projects_code_key;
-- @@
-- before: ALTER TABLE tasks DROP COLUMN owner_id
-- note: no foreign key points from tasks to accounts any more
DELETE FROM accounts WHERE id = 2999;
-- @@
-- before: ALTER TABLE projects DROP COLUMN tenant_id CASCADE
-- note: the dropped column took its foreign key with it: projects is not touched
DROP TABLE tenants;
-- @@
-- ============================== rules, publications, catalog-only objects
-- note: a rule locks its table ACCESS EXCLUSIVE; its action is analysed
CREATE RULE tasks_copy AS ON INSERT TO tasks
    DO ALSO INSERT INTO tenants (id, name) VALUES (new.id + 100000, 'copied');
-- @@
CREATE RULE projects_keep AS ON DELETE TO projects DO INSTEAD NOTHING;
-- @@
-- before: CREATE RULE projects_keep AS ON DELETE TO projects DO INSTEAD NOTHING
DROP RULE projects_keep ON projects;
-- @@
-- before: CREATE RULE projects_keep AS ON DELETE TO projects DO INSTEAD NOTHING
ALTER RULE projects_keep ON projects RENAME TO projects_never_deleted;
-- @@
-- note: SHARE UPDATE EXCLUSIVE on each table published
CREATE PUBLICATION tasks_pub FOR TABLE tasks, ONLY projects;
-- @@
-- note: a partitioned table is published as itself: its partitions are not locked
CREATE PUBLICATION events_pub FOR TABLE events;
-- @@
-- before: CREATE TABLE notes_base (id integer PRIMARY KEY)
-- before: CREATE TABLE notes_child () INHERITS (notes_base)
-- note: an inheritance parent: its children too
CREATE PUBLICATION notes_pub FOR TABLE notes_base;
-- @@
-- before: CREATE PUBLICATION empty_pub
ALTER PUBLICATION empty_pub ADD TABLE tenants;
-- @@
-- before: CREATE PUBLICATION tenants_pub FOR TABLE tenants
ALTER PUBLICATION tenants_pub SET (publish = 'insert');
-- @@
-- before: CREATE PUBLICATION tenants_pub FOR TABLE tenants
DROP PUBLICATION tenants_pub;
-- @@
-- min_version: 15
CREATE PUBLICATION app_pub FOR TABLES IN SCHEMA app;
-- @@
CREATE COLLATION plain_c (provider = libc, locale = 'C');
-- @@
CREATE AGGREGATE int_total (integer) (sfunc = int4pl, stype = integer);
-- @@
CREATE TEXT SEARCH CONFIGURATION plain_ts (COPY = simple);
-- @@
CREATE OPERATOR === (leftarg = integer, rightarg = integer, function = int4eq);
-- @@
CREATE FOREIGN DATA WRAPPER dummy_fdw;
-- @@
-- before: CREATE FOREIGN DATA WRAPPER dummy_fdw
CREATE SERVER dummy_server FOREIGN DATA WRAPPER dummy_fdw;
-- @@
CREATE ACCESS METHOD heap_copy TYPE TABLE HANDLER heap_tableam_handler;
-- @@
-- before: CREATE COLLATION plain_c (provider = libc, locale = 'C')
ALTER COLLATION plain_c RENAME TO plain_collation;
-- @@
-- before: CREATE AGGREGATE int_total (integer) (sfunc = int4pl, stype = integer)
DROP AGGREGATE int_total (integer);
-- @@
-- before: CREATE STATISTICS tasks_stats ON project_id, owner_id FROM tasks
DROP STATISTICS tasks_stats;
-- @@
-- before: CREATE STATISTICS tasks_stats ON project_id, owner_id FROM tasks
ALTER STATISTICS tasks_stats RENAME TO tasks_statistics;
-- @@
-- before: CREATE STATISTICS tasks_stats ON project_id, owner_id FROM tasks
ALTER STATISTICS tasks_stats SET STATISTICS 500;
-- @@
-- ============================================== DO blocks (static SQL)
-- note: an idempotent migration: the union of what it may run
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'tasks_id_positive') THEN
        ALTER TABLE tasks ADD CONSTRAINT tasks_id_positive CHECK (id > 0) NOT VALID;
    END IF;
END
$$;
-- @@
DO $$
DECLARE
    n integer;
BEGIN
    SELECT count(*) INTO n FROM tenants;
    PERFORM 1 FROM projects WHERE id = 1;
    UPDATE tasks SET title = 'renamed' WHERE id = n;
    RAISE NOTICE 'tenants: %', n;
END
$$;
-- @@
DO LANGUAGE plpgsql $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT id FROM labels WHERE id < 3 LOOP
        DELETE FROM tasks WHERE id = r.id;
    END LOOP;
END
$$;
-- @@
-- before: CREATE FOREIGN DATA WRAPPER dummy_fdw
-- before: CREATE SERVER dummy_server FOREIGN DATA WRAPPER dummy_fdw
CREATE FOREIGN TABLE remote_notes (id integer, body text) SERVER dummy_server OPTIONS (table_name 'notes');
-- @@
-- before: CREATE FOREIGN DATA WRAPPER dummy_fdw
-- before: CREATE SERVER dummy_server FOREIGN DATA WRAPPER dummy_fdw
-- note: a foreign partition: the parent and its default partition, as for a local one
CREATE FOREIGN TABLE events_2030 PARTITION OF events
    FOR VALUES FROM ('2030-01-01') TO ('2031-01-01') SERVER dummy_server;
-- @@
-- note: a block that COMMITs: refused in a transaction block (2D000), runs outside one
DO $$
BEGIN
    UPDATE tenants SET name = name WHERE id = 1;
    COMMIT;
END
$$;
-- @@
-- note: ROLLBACK is transaction control too
DO $$ BEGIN DELETE FROM accounts WHERE id = 2999; ROLLBACK; END $$;
-- @@
-- ============================== BEGIN ATOMIC bodies, prepared statements, CALL
-- min_version: 14
-- note: one statement: the ';' inside BEGIN ATOMIC ... END do not end it
CREATE FUNCTION tenant_count() RETURNS bigint LANGUAGE sql
BEGIN ATOMIC
    SELECT count(*) FROM tenants;
    SELECT CASE WHEN count(*) > 0 THEN count(*) END FROM accounts;
END;
-- @@
-- min_version: 14
CREATE PROCEDURE add_tenant(n integer) LANGUAGE sql
BEGIN ATOMIC
    INSERT INTO tenants (id, name) VALUES (n, 'new');
    UPDATE projects SET title = title WHERE id = n;
END;
-- @@
-- note: a rule with several actions in parentheses is one statement
CREATE RULE tasks_log AS ON DELETE TO tasks DO ALSO (
    INSERT INTO tenants (id, name) VALUES (old.id + 200000, 'deleted');
    UPDATE projects SET title = title WHERE id = old.project_id
);
-- @@
-- note: PREPARE parses the statement: ACCESS SHARE on what it reads (no partitions)
PREPARE recent_events (date) AS SELECT * FROM events WHERE created_at > $1;
-- @@
PREPARE drop_account (integer) AS DELETE FROM accounts WHERE id = $1;
-- @@
-- before: PREPARE drop_account (integer) AS DELETE FROM accounts WHERE id = $1
-- note: EXECUTE takes the prepared statement's locks (foreign key checks included)
EXECUTE drop_account (2999);
-- @@
-- before: PREPARE count_events AS SELECT count(*) FROM events
EXECUTE count_events;
-- @@
-- before: CREATE PROCEDURE touch_tenants() LANGUAGE sql AS $$ UPDATE tenants SET name = name WHERE id = 1 $$
-- note: the procedure was created in the text: CALL takes the locks of its body
CALL touch_tenants();
-- @@
-- before: CREATE PROCEDURE empty_events(keep boolean) LANGUAGE plpgsql AS $$ BEGIN IF NOT keep THEN TRUNCATE events; END IF; DELETE FROM accounts WHERE id = 2999; END $$
-- note: every static statement of a plpgsql body counts, whichever branch runs
CALL empty_events(false);
-- @@
-- before: CREATE PROCEDURE rename_tenant(tid integer) LANGUAGE sql BEGIN ATOMIC UPDATE tenants SET name = 'x' WHERE id = tid; SELECT count(*) FROM projects; END
CALL rename_tenant(1);
-- @@
-- before: CREATE PROCEDURE touch(a integer) LANGUAGE sql AS $$ UPDATE tenants SET name = name WHERE id = a $$
-- before: CREATE PROCEDURE touch(a text) LANGUAGE sql AS $$ LOCK TABLE accounts $$
-- note: two overloads: which one runs depends on the arguments' types (unknown)
CALL touch(1);
-- @@
-- before: CREATE PROCEDURE lock_dynamic() LANGUAGE plpgsql AS $$ BEGIN EXECUTE 'LOCK TABLE accounts'; END $$
-- note: dynamic SQL in the body: its locks are reported as unknown
CALL lock_dynamic();
-- @@
-- before: CREATE PROCEDURE commit_tenants() LANGUAGE plpgsql AS $$ BEGIN UPDATE tenants SET name = name WHERE id = 1; COMMIT; END $$
-- note: the body COMMITs: refused in a transaction block (2D000, invalid transaction
-- note: termination); outside one it takes the locks of its body
CALL commit_tenants();
-- @@
-- before: CREATE PROCEDURE maybe_commit(done boolean) LANGUAGE plpgsql AS $$ BEGIN UPDATE tenants SET name = name WHERE id = 1; IF done THEN COMMIT; END IF; END $$
-- note: the branch that COMMITs is taken: refused in a transaction block (2D000)
CALL maybe_commit(true);
-- @@
-- before: CREATE PROCEDURE maybe_commit(done boolean) LANGUAGE plpgsql AS $$ BEGIN UPDATE tenants SET name = name WHERE id = 1; IF done THEN COMMIT; END IF; END $$
-- transaction_dependent: the COMMIT is in a branch this call does not take
-- note: the server runs this call in a transaction block; the body may COMMIT (with other
-- note: arguments it does), so the prediction that holds for every call is "outside one"
CALL maybe_commit(false);
-- @@
-- ============================== DROP ... CASCADE of catalog objects, owned objects
-- note: the columns of the type go: ACCESS EXCLUSIVE on their tables
DROP TYPE mood CASCADE;
-- @@
DROP SCHEMA app CASCADE;
-- @@
-- before: CREATE DOMAIN positive_int AS integer CHECK (VALUE > 0)
-- before: ALTER TABLE tenants ADD COLUMN headcount positive_int
DROP DOMAIN positive_int CASCADE;
-- @@
-- before: CREATE COLLATION plain_c (provider = libc, locale = 'C')
-- before: ALTER TABLE tenants ADD COLUMN sort_key text COLLATE plain_c
-- note: the column's collation is not in the catalog: the lock on tenants is unknown
DROP COLLATION plain_c CASCADE;
-- @@
-- before: CREATE FUNCTION twice(integer) RETURNS integer IMMUTABLE LANGUAGE sql AS 'SELECT $1 * 2'
-- before: CREATE INDEX tenants_twice_idx ON tenants (twice(id))
-- note: the expression index goes with the function: ACCESS EXCLUSIVE on tenants (unknown)
DROP FUNCTION twice(integer) CASCADE;
-- @@
-- before: CREATE SEQUENCE tenant_seq
-- before: ALTER TABLE tenants ALTER COLUMN id SET DEFAULT nextval('tenant_seq')
DROP SEQUENCE tenant_seq CASCADE;
-- @@
-- before: DO $$ BEGIN CREATE ROLE safeddl_corpus_owner; EXCEPTION WHEN duplicate_object THEN NULL; END $$
-- before: DO $$ BEGIN CREATE ROLE safeddl_corpus_heir; EXCEPTION WHEN duplicate_object THEN NULL; END $$
-- before: ALTER TABLE tenants OWNER TO safeddl_corpus_owner
-- note: ALTER ... OWNER TO on every table the role owns: ACCESS EXCLUSIVE (unknown)
REASSIGN OWNED BY safeddl_corpus_owner TO safeddl_corpus_heir;
-- @@
-- before: DO $$ BEGIN CREATE ROLE safeddl_corpus_owner; EXCEPTION WHEN duplicate_object THEN NULL; END $$
-- before: CREATE TABLE owned_notes (id integer)
-- before: ALTER TABLE owned_notes OWNER TO safeddl_corpus_owner
DROP OWNED BY safeddl_corpus_owner;
-- @@
-- ============================== foreign tables
-- before: CREATE FOREIGN DATA WRAPPER plain_fdw
-- before: CREATE SERVER plain_server FOREIGN DATA WRAPPER plain_fdw
-- before: CREATE FOREIGN TABLE remote_notes (id integer, body text) SERVER plain_server
ALTER FOREIGN TABLE remote_notes ALTER COLUMN body OPTIONS (ADD column_name 'text');
-- @@
-- before: CREATE FOREIGN DATA WRAPPER plain_fdw
-- before: CREATE SERVER plain_server FOREIGN DATA WRAPPER plain_fdw
-- before: CREATE FOREIGN TABLE remote_notes (id integer, body text) SERVER plain_server
ALTER FOREIGN TABLE remote_notes OPTIONS (ADD table_name 'notes');
-- @@
-- before: CREATE FOREIGN DATA WRAPPER plain_fdw
-- before: CREATE SERVER plain_server FOREIGN DATA WRAPPER plain_fdw
-- before: CREATE FOREIGN TABLE remote_notes (id integer, body text) SERVER plain_server
-- note: the server's foreign tables go with it (not known from the text)
DROP SERVER plain_server CASCADE;
-- @@
-- requires: postgres_fdw
-- before: CREATE EXTENSION postgres_fdw
-- before: DO $$ BEGIN EXECUTE format('CREATE SERVER loopback FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host %L, port %L, dbname %L)', split_part(current_setting('unix_socket_directories'), ',', 1), current_setting('port'), current_database()); END $$
-- before: CREATE USER MAPPING FOR CURRENT_USER SERVER loopback
-- before: CREATE SCHEMA imported
-- note: creates foreign tables, locks no existing table
IMPORT FOREIGN SCHEMA app FROM SERVER loopback INTO imported;
-- @@
-- ============================== subscriptions (connect = false: no publisher needed)
CREATE SUBSCRIPTION corpus_sub CONNECTION 'dbname=nowhere' PUBLICATION corpus_pub
    WITH (connect = false);
-- @@
-- before: CREATE SUBSCRIPTION corpus_sub CONNECTION 'dbname=nowhere' PUBLICATION corpus_pub WITH (connect = false)
ALTER SUBSCRIPTION corpus_sub DISABLE;
-- @@
-- before: CREATE SUBSCRIPTION corpus_sub CONNECTION 'dbname=nowhere' PUBLICATION corpus_pub WITH (connect = false)
ALTER SUBSCRIPTION corpus_sub SET PUBLICATION other_pub WITH (refresh = false);
-- @@
-- min_version: 14
-- before: CREATE SUBSCRIPTION corpus_sub CONNECTION 'dbname=nowhere' PUBLICATION corpus_pub WITH (connect = false)
ALTER SUBSCRIPTION corpus_sub ADD PUBLICATION more_pub WITH (refresh = false);
-- @@
-- before: CREATE SUBSCRIPTION corpus_sub CONNECTION 'dbname=nowhere' PUBLICATION corpus_pub WITH (connect = false)
ALTER SUBSCRIPTION corpus_sub SET (synchronous_commit = off);
-- @@
-- before: CREATE SUBSCRIPTION corpus_sub CONNECTION 'dbname=nowhere' PUBLICATION corpus_pub WITH (connect = false)
ALTER SUBSCRIPTION corpus_sub CONNECTION 'dbname=elsewhere';
-- @@
-- before: CREATE SUBSCRIPTION corpus_sub CONNECTION 'dbname=nowhere' PUBLICATION corpus_pub WITH (connect = false)
ALTER SUBSCRIPTION corpus_sub RENAME TO corpus_subscription;
-- @@
-- before: CREATE SUBSCRIPTION corpus_sub CONNECTION 'dbname=nowhere' PUBLICATION corpus_pub WITH (connect = false, slot_name = NONE)
-- note: without a replication slot nothing is asked of the publisher
DROP SUBSCRIPTION corpus_sub;
-- @@
-- note: connect = false alone leaves slot_name at its default, the subscription's name:
-- note: refused in a transaction block (25001). Outside one it connects to the publisher
-- note: (this server, pointed at once created) and drops the slot there (a physical slot
-- note: made for it: no wal_level = logical needed to have one to drop)
-- before: CREATE SUBSCRIPTION corpus_sub CONNECTION 'dbname=nowhere' PUBLICATION corpus_pub WITH (connect = false)
-- before: DO $$ BEGIN EXECUTE format('ALTER SUBSCRIPTION corpus_sub CONNECTION %L', format('host=%s port=%s dbname=%s user=%s', split_part(current_setting('unix_socket_directories'), ',', 1), current_setting('port'), current_database(), current_user)); END $$
-- before: DO $$ BEGIN PERFORM pg_create_physical_replication_slot('corpus_sub'); EXCEPTION WHEN duplicate_object THEN NULL; END $$
DROP SUBSCRIPTION corpus_sub;
-- @@
-- note: a named replication slot: refused in a transaction block, dropped outside one
-- before: CREATE SUBSCRIPTION corpus_sub CONNECTION 'dbname=nowhere' PUBLICATION corpus_pub WITH (connect = false, slot_name = 'corpus_slot')
-- before: DO $$ BEGIN EXECUTE format('ALTER SUBSCRIPTION corpus_sub CONNECTION %L', format('host=%s port=%s dbname=%s user=%s', split_part(current_setting('unix_socket_directories'), ',', 1), current_setting('port'), current_database(), current_user)); END $$
-- before: DO $$ BEGIN PERFORM pg_create_physical_replication_slot('corpus_slot'); EXCEPTION WHEN duplicate_object THEN NULL; END $$
DROP SUBSCRIPTION corpus_sub;
-- @@
-- note: the slot let go of first (what to do when the publisher is gone): no publisher asked
-- before: CREATE SUBSCRIPTION corpus_sub CONNECTION 'dbname=nowhere' PUBLICATION corpus_pub WITH (connect = false, slot_name = 'corpus_slot')
-- before: ALTER SUBSCRIPTION corpus_sub SET (slot_name = NONE)
DROP SUBSCRIPTION corpus_sub;
-- @@
-- note: created without a slot, given one later: refused in a transaction block again
-- before: CREATE SUBSCRIPTION corpus_sub CONNECTION 'dbname=nowhere' PUBLICATION corpus_pub WITH (connect = false, slot_name = NONE)
-- before: ALTER SUBSCRIPTION corpus_sub SET (slot_name = 'corpus_late_slot')
-- before: DO $$ BEGIN EXECUTE format('ALTER SUBSCRIPTION corpus_sub CONNECTION %L', format('host=%s port=%s dbname=%s user=%s', split_part(current_setting('unix_socket_directories'), ',', 1), current_setting('port'), current_database(), current_user)); END $$
-- before: DO $$ BEGIN PERFORM pg_create_physical_replication_slot('corpus_late_slot'); EXCEPTION WHEN duplicate_object THEN NULL; END $$
DROP SUBSCRIPTION corpus_sub;
-- @@
-- ============================== more commands of PostgreSQL's reference
-- min_version: 15
CREATE UNLOGGED SEQUENCE scratch_seq;
-- @@
COPY BINARY accounts TO STDOUT;
