"""``lint`` / ``analyze`` against a known schema (``--schema FILE``, ``--timezone``):
the schema's statements are learnt, not reported; its tables are existing tables;
type-change verdicts use the old type. Pure: no database (``--dsn`` and Alembic
revisions are tested in tests/integration/test_cli_schema_live.py)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from safeddl.cli.main import main

# as pg_dump --schema-only writes it
DUMP = """
SET statement_timeout = 0;
SET lock_timeout = 0;
SELECT pg_catalog.set_config('search_path', '', false);
SET default_tablespace = '';
CREATE TABLE public.orders (
    id bigint NOT NULL,
    customer_id integer,
    reference character varying(20),
    total numeric(10,2),
    placed_at timestamp without time zone
);
ALTER TABLE public.orders OWNER TO app;
CREATE TABLE public.customers (
    id integer NOT NULL,
    email text
);
ALTER TABLE ONLY public.customers
    ADD CONSTRAINT customers_pkey PRIMARY KEY (id);
ALTER TABLE ONLY public.orders
    ADD CONSTRAINT orders_customer_id_fkey FOREIGN KEY (customer_id) REFERENCES public.customers(id);
CREATE UNIQUE INDEX orders_id_idx ON public.orders USING btree (id);
"""

MIGRATION = """SET lock_timeout = '2s';
ALTER TABLE orders ALTER COLUMN reference TYPE varchar(40);
ALTER TABLE orders ALTER COLUMN total TYPE numeric(14, 2);
ALTER TABLE orders ADD PRIMARY KEY USING INDEX orders_id_idx;
ALTER TABLE customers DROP COLUMN id CASCADE;
"""


def analyze(tmp_path: Path, *options: str, migration: str = MIGRATION) -> list[dict[str, object]]:
    (tmp_path / "schema.sql").write_text(DUMP)
    (tmp_path / "m.sql").write_text(migration)
    result = CliRunner().invoke(main, ["analyze", "--format", "json", *options,
                                       str(tmp_path / "m.sql")])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert isinstance(data, list)
    return data


def holds(objects: list[dict[str, object]]) -> list[list[tuple[object, object, object]]]:
    return [[(lock["relation"], lock["mode"], lock["holds"])  # type: ignore[index]
             for lock in o["locks"]] for o in objects]  # type: ignore[attr-defined]


def test_schema_file_makes_type_changes_and_keys_exact(tmp_path: Path) -> None:
    without = holds(analyze(tmp_path))
    with_schema = holds(analyze(tmp_path, "--schema", str(tmp_path / "schema.sql")))
    # the old types are not in the migration: a rewrite is assumed
    assert without[1] == [("orders", "AccessExclusiveLock", "rewrite")]
    assert without[2] == [("orders", "AccessExclusiveLock", "rewrite")]
    # varchar widening and numeric precision increase are binary coercible
    assert with_schema[1] == [("orders", "AccessExclusiveLock", "brief")]
    assert with_schema[2] == [("orders", "AccessExclusiveLock", "brief")]
    # id is NOT NULL in the schema: the primary key needs no scan
    assert with_schema[3] == [("orders", "AccessExclusiveLock", "brief")]
    assert without[3] == [("orders", "AccessExclusiveLock", "scan")]
    # the foreign key from orders goes with customers.id
    assert ("orders", "AccessExclusiveLock", "brief") in with_schema[4]
    assert ("orders", "AccessExclusiveLock", "brief") not in without[4]


def test_schema_statements_are_learnt_not_reported(tmp_path: Path) -> None:
    (tmp_path / "schema.sql").write_text(DUMP)
    (tmp_path / "m.sql").write_text("SET lock_timeout = '2s';\n"
                                    "ALTER TABLE orders ALTER COLUMN reference TYPE text;\n")
    result = CliRunner().invoke(main, ["lint", "--schema", str(tmp_path / "schema.sql"),
                                       str(tmp_path / "m.sql")])
    assert result.exit_code == 0, result.output
    assert "(2 statements in 1 file)" in result.output  # the dump's are not counted
    plain = CliRunner().invoke(main, ["lint", str(tmp_path / "m.sql")])
    assert plain.exit_code == 1 and "[alter-column-type]" in plain.output


def test_timezone_decides_timestamp_to_timestamptz(tmp_path: Path) -> None:
    migration = "ALTER TABLE orders ALTER COLUMN placed_at TYPE timestamptz;\n"
    schema = ("--schema", str(tmp_path / "schema.sql"))
    utc = holds(analyze(tmp_path, *schema, "--timezone", "UTC", migration=migration))
    berlin = holds(analyze(tmp_path, *schema, "--timezone", "Europe/Berlin",
                           migration=migration))
    unknown = holds(analyze(tmp_path, *schema, migration=migration))
    assert utc == [[("orders", "AccessExclusiveLock", "brief")]]
    assert berlin == unknown == [[("orders", "AccessExclusiveLock", "rewrite")]]
