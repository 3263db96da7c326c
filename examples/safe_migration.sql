-- Migration 0042, written the safe way: `safeddl lint` finds nothing here
-- (PostgreSQL 18, the default `--pg-version`).
--
-- Run it outside a transaction block (CONCURRENTLY cannot run inside one, and
-- each VALIDATE should commit on its own), e.g. Alembic's autocommit_block().

SET lock_timeout = '2s';

CREATE TABLE shipments (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id    bigint NOT NULL REFERENCES orders (id),
    carrier     text NOT NULL,
    tracking_no text,
    shipped_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX shipments_order_id_idx ON shipments (order_id);

-- Foreign key: add it NOT VALID (brief), then VALIDATE (SHARE UPDATE EXCLUSIVE:
-- reads and writes go on during the scan).
ALTER TABLE orders
    ADD CONSTRAINT orders_customer_id_fkey
    FOREIGN KEY (customer_id) REFERENCES customers (id) NOT VALID;
ALTER TABLE orders VALIDATE CONSTRAINT orders_customer_id_fkey;

-- Index: CONCURRENTLY lets writes go on during the build.
CREATE INDEX CONCURRENTLY order_items_product_id_idx ON order_items (product_id);

-- NOT NULL (PostgreSQL 18): add the constraint NOT VALID (brief), then VALIDATE
-- (SHARE UPDATE EXCLUSIVE: reads and writes go on during the scan). On 12 to 17:
-- ADD CONSTRAINT ... CHECK (status IS NOT NULL) NOT VALID, VALIDATE it, and then
-- SET NOT NULL skips its scan.
ALTER TABLE orders
    ADD CONSTRAINT orders_status_not_null NOT NULL status NOT VALID;
ALTER TABLE orders VALIDATE CONSTRAINT orders_status_not_null;

-- Volatile default: add the column without one and give new rows the default in
-- the same statement (no rewrite: existing rows stay NULL), then backfill in batches.
ALTER TABLE orders
    ADD COLUMN public_id uuid,
    ALTER COLUMN public_id SET DEFAULT gen_random_uuid();
UPDATE orders SET public_id = gen_random_uuid()
 WHERE id >= 1 AND id < 10001 AND public_id IS NULL;

-- A constant default is a catalog change only (PostgreSQL 11+).
ALTER TABLE orders ADD COLUMN gift_wrap boolean NOT NULL DEFAULT false;

-- Refresh the report with DELETE: readers keep their snapshot until COMMIT.
DELETE FROM daily_sales_report;

ALTER TABLE customers ADD COLUMN loyalty_tier text;

COMMENT ON TABLE shipments IS 'One row per parcel handed to a carrier';
