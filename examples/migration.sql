-- Migration 0042: shipments, and tightening the orders schema.
--
-- Lint it with:  safeddl lint examples/migration.sql
-- Several statements below are unsafe on a busy database: each is flagged with
-- the lock it takes, what that blocks, and the safe form (see safe_migration.sql).

-- Safe: every lock wait below gives up after 2 s instead of queueing readers.
SET lock_timeout = '2s';

-- Safe: a new table; nobody else can see it yet, so locks on it are harmless.
-- (The REFERENCES takes a brief SHARE ROW EXCLUSIVE on orders.)
CREATE TABLE shipments (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id    bigint NOT NULL REFERENCES orders (id),
    carrier     text NOT NULL,
    tracking_no text,
    shipped_at  timestamptz NOT NULL DEFAULT now()
);

-- Safe: the index is on the table created above.
CREATE INDEX shipments_order_id_idx ON shipments (order_id);

-- Unsafe: checks every row of orders while writes to orders and customers wait.
ALTER TABLE orders
    ADD CONSTRAINT orders_customer_id_fkey
    FOREIGN KEY (customer_id) REFERENCES customers (id);

-- Unsafe: SHARE lock on order_items for the whole index build (blocks writes).
CREATE INDEX order_items_product_id_idx ON order_items (product_id);

-- Unsafe: scans all of orders under ACCESS EXCLUSIVE (blocks reads too).
ALTER TABLE orders ALTER COLUMN status SET NOT NULL;

-- Unsafe: a volatile default rewrites every row under ACCESS EXCLUSIVE.
ALTER TABLE orders ADD COLUMN public_id uuid DEFAULT gen_random_uuid();

-- Safe (PostgreSQL 11+): a constant default is stored in the catalog, no rewrite.
ALTER TABLE orders ADD COLUMN gift_wrap boolean NOT NULL DEFAULT false;

-- Unsafe: the dashboards poll this table; TRUNCATE queues every one of them.
TRUNCATE daily_sales_report;

-- Accepted risk, recorded next to the statement:
-- safeddl: ignore[create-index] order_notes holds a few hundred rows
CREATE INDEX order_notes_order_id_idx ON order_notes (order_id);

-- Safe: a nullable column without a default is a catalog change only.
ALTER TABLE customers ADD COLUMN loyalty_tier text;

COMMENT ON TABLE shipments IS 'One row per parcel handed to a carrier';
