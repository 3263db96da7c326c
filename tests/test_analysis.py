"""The pure analysis: locks, holds and version differences without a server.

What each statement takes is proved against real servers by the lock corpus
(tests/integration/test_lock_corpus.py); these tests pin the version-aware and
catalog-aware decisions, including versions the test servers do not cover.
"""

from __future__ import annotations

import pytest

from safeddl.analysis import analyze_script, analyze_statement, catalog_from_script
from safeddl.locks import Holds, LockMode

SETUP = """
CREATE TABLE customers (id bigint PRIMARY KEY, email varchar(100));
CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint REFERENCES customers (id),
                     note varchar(10), amount numeric(10, 2), status text,
                     CONSTRAINT status_present CHECK (status IS NOT NULL));
CREATE INDEX orders_note_idx ON orders (note);
CREATE TABLE events (id int, at date) PARTITION BY RANGE (at);
CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE TABLE events_other PARTITION OF events DEFAULT;
CREATE TABLE events_2027 (id int, at date);
CREATE VIEW big_orders AS SELECT * FROM orders WHERE amount > 100;
"""


def locks(sql: str, version: int = 18) -> dict[str, tuple[str, str]]:
    catalog = catalog_from_script(SETUP, version=version)
    [statement] = analyze_script(sql, version=version, catalog=catalog)
    assert statement.understood, statement.reason
    return {lock.relation: (lock.mode.pg_name, lock.holds.value) for lock in statement.locks}


@pytest.mark.parametrize(
    ("default", "holds"),
    [("0", "brief"), ("'x'", "brief"), ("now()", "brief"), ("CURRENT_TIMESTAMP", "brief"),
     ("NULL", "brief"), ("clock_timestamp()", "rewrite"), ("random()", "rewrite"),
     ("gen_random_uuid()", "rewrite"), ("nextval('s')", "rewrite"), ("my_func()", "rewrite")],
)
def test_add_column_default_rewrites_only_when_volatile(default: str, holds: str) -> None:
    got = locks(f"ALTER TABLE orders ADD COLUMN x text DEFAULT {default}")
    assert got == {"orders": ("AccessExclusiveLock", holds)}


def test_unknown_function_in_default_is_assumed_volatile_and_says_so() -> None:
    statement = analyze_statement("ALTER TABLE orders ADD COLUMN x int DEFAULT my_func()")
    assert any("my_func()" in note for note in statement.notes)


@pytest.mark.parametrize(("version", "holds"), [(17, "rewrite"), (18, "brief")])
def test_generated_column_is_virtual_by_default_from_18(version: int, holds: str) -> None:
    got = locks("ALTER TABLE orders ADD COLUMN double_amount numeric "
                "GENERATED ALWAYS AS (amount * 2)", version)
    assert got["orders"] == ("AccessExclusiveLock", holds)


@pytest.mark.parametrize(
    ("new_type", "holds"),
    [("varchar(20)", "brief"), ("varchar(5)", "rewrite"), ("text", "brief"),
     ("varchar", "brief"), ("bigint USING note::bigint", "rewrite"), ("char(10)", "rewrite")],
)
def test_type_change_rewrites_unless_binary_coercible(new_type: str, holds: str) -> None:
    assert locks(f"ALTER TABLE orders ALTER COLUMN note TYPE {new_type}")["orders"] == (
        "AccessExclusiveLock", holds)


@pytest.mark.parametrize(("new_type", "holds"),
                         [("numeric(12, 2)", "brief"), ("numeric(10, 3)", "rewrite"),
                          ("numeric", "brief")])
def test_numeric_precision_widening_does_not_rewrite(new_type: str, holds: str) -> None:
    assert locks(f"ALTER TABLE orders ALTER COLUMN amount TYPE {new_type}")["orders"][1] == holds


def test_type_change_of_an_unknown_column_assumes_a_rewrite() -> None:
    statement = analyze_statement("ALTER TABLE t ALTER COLUMN c TYPE text")
    assert statement.locks[0].holds is Holds.REWRITE
    assert any("not known" in note for note in statement.notes)


def test_foreign_key_locks_both_tables_and_not_valid_skips_the_scan() -> None:
    sql = "ALTER TABLE orders ADD CONSTRAINT fk FOREIGN KEY (customer_id) REFERENCES customers (id)"
    assert locks(sql) == {"orders": ("ShareRowExclusiveLock", "scan"),
                          "customers": ("ShareRowExclusiveLock", "scan")}
    assert locks(sql + " NOT VALID") == {"orders": ("ShareRowExclusiveLock", "brief"),
                                         "customers": ("ShareRowExclusiveLock", "brief")}


def test_validate_foreign_key_takes_row_share_on_the_referenced_table() -> None:
    got = locks("ALTER TABLE orders VALIDATE CONSTRAINT orders_customer_id_fkey")
    assert got == {"orders": ("ShareUpdateExclusiveLock", "scan"),
                   "customers": ("RowShareLock", "scan")}


@pytest.mark.parametrize(("version", "holds"), [(11, "scan"), (12, "brief"), (18, "brief")])
def test_set_not_null_skips_the_scan_when_a_valid_check_proves_it(version: int,
                                                                  holds: str) -> None:
    got = locks("ALTER TABLE orders ALTER COLUMN status SET NOT NULL", version)
    assert got["orders"] == ("AccessExclusiveLock", holds)
    assert locks("ALTER TABLE orders ALTER COLUMN note SET NOT NULL", version)["orders"][1] == "scan"


@pytest.mark.parametrize(("version", "parent_mode"),
                         [(11, "AccessExclusiveLock"), (12, "ShareUpdateExclusiveLock")])
def test_attach_partition_parent_lock_depends_on_version(version: int, parent_mode: str) -> None:
    got = locks("ALTER TABLE events ATTACH PARTITION events_2027 "
                "FOR VALUES FROM ('2027-01-01') TO ('2028-01-01')", version)
    assert got["events"][0] == parent_mode
    assert got["events_2027"] == ("AccessExclusiveLock", "scan")
    assert got["events_other"][0] == "AccessExclusiveLock"  # the default partition is checked


def test_create_index_on_a_partitioned_table_scans_every_partition() -> None:
    got = locks("CREATE INDEX ON events (at)")
    assert got == {"events": ("ShareLock", "scan"), "events_2026": ("ShareLock", "scan"),
                   "events_other": ("ShareLock", "scan")}


def test_concurrently_is_not_transactional() -> None:
    for sql in ["CREATE INDEX CONCURRENTLY i ON orders (status)",
                "DROP INDEX CONCURRENTLY orders_note_idx",
                "REINDEX INDEX CONCURRENTLY orders_note_idx",
                "ALTER TABLE events DETACH PARTITION events_2026 CONCURRENTLY",
                "VACUUM orders"]:
        catalog = catalog_from_script(SETUP)
        [statement] = analyze_script(sql, catalog=catalog)
        assert statement.transactional is False, sql
    assert analyze_statement("REFRESH MATERIALIZED VIEW CONCURRENTLY mv").transactional


@pytest.mark.parametrize(("version", "transactional"), [(11, False), (12, True)])
def test_alter_type_add_value_in_a_transaction_from_12(version: int, transactional: bool) -> None:
    assert analyze_statement("ALTER TYPE mood ADD VALUE 'meh'", version=version).transactional \
        is transactional


def test_version_specific_forms_carry_a_note_on_older_servers() -> None:
    assert analyze_statement("REINDEX INDEX CONCURRENTLY i", version=11).notes
    assert not analyze_statement("REINDEX INDEX CONCURRENTLY i", version=12).notes
    detach = "ALTER TABLE p DETACH PARTITION c CONCURRENTLY"
    assert analyze_statement(detach, version=13).notes
    assert not analyze_statement(detach, version=14).notes


def test_drop_index_resolves_its_table_through_the_catalog_or_says_it_could_not() -> None:
    assert locks("DROP INDEX orders_note_idx") == {"orders": ("AccessExclusiveLock", "brief")}
    alone = analyze_statement("DROP INDEX orders_note_idx")
    assert alone.locks[0].relation == "orders_note_idx" and alone.locks[0].object == "index"
    assert alone.notes


def test_reads_through_a_view_lock_the_view_and_its_tables() -> None:
    assert locks("SELECT * FROM big_orders") == {"big_orders": ("AccessShareLock", "brief"),
                                                 "orders": ("AccessShareLock", "brief")}


def test_dml_takes_row_share_on_the_other_side_of_a_foreign_key() -> None:
    assert locks("INSERT INTO orders (id, customer_id) VALUES (1, 1)") == {
        "orders": ("RowExclusiveLock", "brief"), "customers": ("RowShareLock", "brief")}
    assert locks("DELETE FROM customers WHERE id = 1") == {
        "customers": ("RowExclusiveLock", "brief"), "orders": ("RowShareLock", "brief")}


def test_strongest_mode_per_relation_and_longest_hold() -> None:
    got = locks("ALTER TABLE orders ALTER COLUMN note SET STATISTICS 100, "
                "ADD CONSTRAINT c CHECK (amount > 0)")
    assert got == {"orders": ("AccessExclusiveLock", "scan")}


def test_tables_created_by_the_statement_are_not_reported() -> None:
    catalog = catalog_from_script(SETUP)
    [statement] = analyze_script(
        "CREATE TABLE refunds (id int, order_id bigint REFERENCES orders (id), LIKE customers)",
        catalog=catalog)
    assert {lock.relation: lock.mode for lock in statement.locks} == {
        "orders": LockMode.SHARE_ROW_EXCLUSIVE, "customers": LockMode.ACCESS_SHARE}
    assert statement.creates == ("refunds",)


def test_unsupported_versions_are_refused_clearly() -> None:
    with pytest.raises(ValueError, match="11 to 18"):
        analyze_statement("SELECT 1", version=10)


def test_what_cannot_be_read_is_reported_not_raised() -> None:
    statement = analyze_statement("ALTER TABLE t FROBNICATE")
    assert not statement.understood and statement.reason
    # a DO block with dynamic SQL (its static SQL is read: tests/test_do_blocks.py)
    assert not analyze_statement("DO $$ BEGIN EXECUTE 'DROP TABLE t'; END $$").understood


def test_indexes_follow_renames_and_go_with_their_column_or_table() -> None:
    # each table's indexes are kept by table: a DROP COLUMN looks only at its own
    sql = """CREATE TABLE a (id int, x int); CREATE TABLE b (id int, x int);
    CREATE INDEX a_x ON a (x); CREATE INDEX b_x ON b (x); CREATE INDEX a_id ON a (id);
    ALTER TABLE a RENAME TO a2; ALTER INDEX b_x RENAME TO b_x2;
    ALTER TABLE a2 DROP COLUMN x; ALTER TABLE b DROP COLUMN id;
    DROP INDEX a_x; DROP INDEX a_id; DROP INDEX b_x2; DROP INDEX b_x;
    CREATE TABLE c (id int); CREATE INDEX c_id ON c (id); DROP TABLE c; DROP INDEX c_id;"""
    statements = analyze_script(sql)
    on = {s.sql: [lock.relation for lock in s.locks] for s in statements
          if s.sql.startswith("DROP INDEX")}
    assert on == {"DROP INDEX a_x": ["a_x"],  # went with its column
                  "DROP INDEX a_id": ["a2"],  # followed the table's rename
                  "DROP INDEX b_x2": ["b"],  # renamed, on b
                  "DROP INDEX b_x": ["b_x"],  # no longer by that name
                  "DROP INDEX c_id": ["c_id"]}  # went with its table
