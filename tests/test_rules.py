"""The rule catalogue: what each rule reports, in which words, and when it stays quiet.

Pure: no database. Tables of EXAMPLE_SETUP (and SCHEMA below) count as existing.
"""

from __future__ import annotations

import re
from functools import cache

import pytest
from test_rule_docs import example_catalog, lint_example, rule_ids, sql_block

from safeddl.analysis import Catalog, analyze_statement, catalog_from_script
from safeddl.locks import LockMode
from safeddl.rules import BY_ID, DOCS, RULES, Context, Finding, Severity, lint_script
from safeddl.rules.engine import Result
from safeddl.rules.support import NAME_LIMIT

# A schema whose names must survive unchanged into the alternatives: schema-qualified,
# quoted, mixed case.
SCHEMA = """
CREATE SCHEMA app;
CREATE TABLE app."Customers" ("Id" bigint PRIMARY KEY);
CREATE TABLE app."Orders" ("Id" bigint PRIMARY KEY, "CustomerId" bigint, "Status" varchar(20),
                           "Note" text, "Qty" integer);
CREATE INDEX "Orders_Status_idx" ON app."Orders" ("Status");
CREATE TABLE app."Events" ("Id" bigint, "At" date) PARTITION BY RANGE ("At");
CREATE TABLE app."Events_2023" PARTITION OF app."Events"
    FOR VALUES FROM ('2023-01-01') TO ('2024-01-01');
CREATE TABLE app."Events_2025" ("Id" bigint, "At" date);
CREATE MATERIALIZED VIEW app."Totals" AS
    SELECT "CustomerId", count(*) AS n FROM app."Orders" GROUP BY 1;
CREATE TABLE events (id bigint, created_at date) PARTITION BY RANGE (created_at);
CREATE TABLE events_2023 PARTITION OF events FOR VALUES FROM ('2023-01-01') TO ('2024-01-01');
CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint, status varchar(20),
                     note text, quantity integer);
CREATE TABLE customers (id bigint PRIMARY KEY);
"""

ERROR_RULES = {
    "truncate", "create-index", "drop-index", "reindex", "add-foreign-key", "add-check",
    "add-unique", "add-exclude", "set-not-null", "add-column-volatile-default",
    "add-column-serial", "alter-column-type", "set-logged", "set-tablespace",
    "set-access-method", "attach-partition", "detach-partition", "vacuum-full", "cluster",
    "refresh-materialized-view", "concurrently-in-transaction",
    "statements-after-access-exclusive", "missing-lock-timeout", "drop-cascade",
    "opaque-statement",
}
WARNING_RULES = {
    "multiple-alter-table", "drop-column", "rename-column", "rename-table", "drop-table",
    "add-column-not-null-without-default", "unparsed-statement", "lock-order", "row-lock-order",
    "identifier-too-long",
}

# For each rule's Bad example: the lock its message names, on which table, and a piece
# of the safe alternative it must propose.
EXPECTED = {
    "truncate": ("ACCESS EXCLUSIVE", "silver_rates", "DELETE FROM silver_rates;"),
    "create-index": ("SHARE", "orders", "CREATE INDEX CONCURRENTLY orders_customer_idx"),
    "drop-index": ("ACCESS EXCLUSIVE", "orders", "DROP INDEX CONCURRENTLY orders_status_idx;"),
    "reindex": ("SHARE", "orders", "REINDEX INDEX CONCURRENTLY orders_status_idx;"),
    "add-foreign-key": ("SHARE ROW EXCLUSIVE", "orders",
                        "ALTER TABLE orders VALIDATE CONSTRAINT orders_customer_id_fkey;"),
    "add-check": ("ACCESS EXCLUSIVE", "orders",
                  "CHECK (total >= 0) NOT VALID;"),
    "add-unique": ("ACCESS EXCLUSIVE", "orders",
                   "CREATE UNIQUE INDEX CONCURRENTLY orders_reference_key ON orders (reference);"),
    "add-exclude": ("ACCESS EXCLUSIVE", "bookings", "SET lock_timeout"),
    "set-not-null": ("ACCESS EXCLUSIVE", "orders",
                     "ALTER TABLE orders VALIDATE CONSTRAINT orders_customer_id_not_null;"),
    "add-column-volatile-default": ("ACCESS EXCLUSIVE", "orders",
                                    "ALTER COLUMN token SET DEFAULT gen_random_uuid();"),
    "add-column-serial": ("ACCESS EXCLUSIVE", "orders", "CREATE SEQUENCE orders_sequence_no_seq;"),
    "alter-column-type": ("ACCESS EXCLUSIVE", "orders",
                          "ALTER TABLE orders ADD COLUMN quantity_new bigint;"),
    "set-logged": ("ACCESS EXCLUSIVE", "import_batches",
                   "CREATE TABLE import_batches_new (LIKE import_batches INCLUDING ALL);"),
    "set-tablespace": ("ACCESS EXCLUSIVE", "orders", "pg_repack --table=orders"),
    "set-access-method": ("ACCESS EXCLUSIVE", "events_archive", "USING columnar;"),
    "attach-partition": ("ACCESS EXCLUSIVE", "events_2025",
                         "ALTER TABLE events_2025 VALIDATE CONSTRAINT events_2025_bound;"),
    "detach-partition": ("ACCESS EXCLUSIVE", "events",
                         "ALTER TABLE events DETACH PARTITION events_2023 CONCURRENTLY;"),
    "vacuum-full": ("ACCESS EXCLUSIVE", "orders", "VACUUM orders;"),
    "cluster": ("ACCESS EXCLUSIVE", "orders",
                "ALTER TABLE orders CLUSTER ON orders_created_at_idx;"),
    "refresh-materialized-view": ("ACCESS EXCLUSIVE", "order_totals",
                                  "REFRESH MATERIALIZED VIEW CONCURRENTLY order_totals;"),
    "concurrently-in-transaction": ("SHARE UPDATE EXCLUSIVE", "orders", "COMMIT;"),
    "statements-after-access-exclusive": ("ACCESS EXCLUSIVE", "orders", "COMMIT;"),
    "multiple-alter-table": ("ACCESS EXCLUSIVE", "orders",
                             "ADD COLUMN shipped_at timestamptz,"),
    "missing-lock-timeout": ("ACCESS EXCLUSIVE", "orders", "SET lock_timeout = '5s';"),
    "drop-column": ("ACCESS EXCLUSIVE", "orders", "deploy code that no longer reads or writes"),
    "rename-column": ("ACCESS EXCLUSIVE", "orders", "ALTER TABLE orders ADD COLUMN remarks text;"),
    "rename-table": ("ACCESS EXCLUSIVE", "customers",
                     "CREATE VIEW customers AS SELECT * FROM clients;"),
    "drop-table": ("ACCESS EXCLUSIVE", "legacy_orders", "deploy code that no longer uses"),
    "add-column-not-null-without-default": (
        "ACCESS EXCLUSIVE", "orders", "ALTER TABLE orders ADD COLUMN priority integer;"),
    "unparsed-statement": (None, None, "pg_locks"),
    "drop-cascade": (None, None, "DROP TYPE order_status CASCADE;"),
    "opaque-statement": (None, None, "CALL archive_old_orders();"),
    "identifier-too-long": (None, None, "CREATE INDEX CONCURRENTLY "
                            "orders_customer_id_created_at_status_reference_where_n_"),
    "lock-order": ("ROW EXCLUSIVE", "customers", "UPDATE customers SET email"),
    "row-lock-order": ("ROW EXCLUSIVE", "orders", "WHERE id = 7;"),
}


@cache
def schema_catalog(version: int) -> Catalog:
    return catalog_from_script(SCHEMA, version=version)


def lint(sql: str, version: int = 18, *, catalog: Catalog | None = None,
         in_transaction: bool = False) -> list[Result]:
    return lint_script(sql, version=version, assume_in_transaction=in_transaction,
                       catalog=catalog if catalog is not None else schema_catalog(version))


def findings(results: list[Result], rule_id: str) -> list[Finding]:
    return [f for r in results for f in r.findings if f.rule == rule_id]


def only(results: list[Result], rule_id: str) -> Finding:
    found = findings(results, rule_id)
    assert len(found) == 1, f"expected one {rule_id} finding, got {len(found)}"
    return found[0]


def unindented(message: str) -> str:
    """A message with its safe alternative's indentation taken off."""
    return "\n".join(line.removeprefix("    ")
                     for line in message.splitlines())


def bad_finding(rule_id: str) -> Finding:
    return only(lint_example(sql_block(DOCS[rule_id], "Bad")), rule_id)


# -- the catalogue as a whole -----------------------------------------------------------

def test_every_rule_is_expected_with_its_severity() -> None:
    assert set(BY_ID) == ERROR_RULES | WARNING_RULES
    assert set(BY_ID) == set(EXPECTED)
    for rule in RULES:
        expected = Severity.ERROR if rule.id in ERROR_RULES else Severity.WARNING
        assert rule.severity is expected, rule.id


# -- the message format ---------------------------------------------------------------

@pytest.mark.parametrize("rule_id", sorted(EXPECTED))
def test_message_follows_the_format(rule_id: str) -> None:
    mode, table, fragment = EXPECTED[rule_id]
    finding = bad_finding(rule_id)
    message = finding.message
    assert finding.rule == rule_id and finding.severity is BY_ID[rule_id].severity
    # 1. the rule id first
    assert message.startswith(f"{rule_id}: ")
    # 2. the lock, the table, what it blocks
    if mode is not None:
        lock_at = message.find(f"{mode} on {table}")
        assert lock_at > 0, f"{mode} on {table} not in:\n{message}"
        assert re.search(r"blocks (all reads and writes|writes|schema changes)", message)
        assert finding.relation == table
    else:
        lock_at = len(rule_id)
    # 3. the safe alternative, with the user's identifiers
    alternative_at = message.find("Safe alternative:")
    assert alternative_at > lock_at
    assert fragment in message[alternative_at:], f"{fragment!r} not in:\n{message}"
    if finding.safe_alternative is not None:
        for line in finding.safe_alternative.splitlines():
            assert "    " + line in message
    # 4. how to opt out, last
    opt_out_at = message.find(f"ignore[{rule_id}]")
    assert opt_out_at > alternative_at


def test_messages_say_how_long_the_lock_is_held() -> None:
    assert "scans the whole table under it" in bad_finding("set-not-null").message
    assert "rewrites the whole table and its indexes" in bad_finding("alter-column-type").message
    assert "only changes the catalog" in bad_finding("drop-column").message
    assert "held until COMMIT" in bad_finding("statements-after-access-exclusive").message


def test_foreign_key_message_names_the_referenced_table_lock() -> None:
    message = bad_finding("add-foreign-key").message
    assert "SHARE ROW EXCLUSIVE on the referenced table customers" in message


def test_an_ignore_comment_silences_exactly_that_rule() -> None:
    results = lint("SET lock_timeout = '1s';\n"
                   "-- safeddl: ignore[set-not-null] table has 12 rows\n"
                   "ALTER TABLE orders ALTER COLUMN customer_id SET NOT NULL;\n"
                   "ALTER TABLE orders ALTER COLUMN note SET NOT NULL;")
    assert [i.rule for i in results[1].ignored] == ["set-not-null"]
    assert not results[1].findings
    assert findings(results[2:], "set-not-null")


# -- identifiers ----------------------------------------------------------------------

IDENTIFIER_CASES = [
    ("set-not-null", 17, 'ALTER TABLE app."Orders" ALTER COLUMN "CustomerId" SET NOT NULL;',
     [('ALTER TABLE app."Orders" ADD CONSTRAINT "Orders_CustomerId_not_null" '
      'CHECK ("CustomerId" IS NOT NULL) NOT VALID;'),
      'ALTER TABLE app."Orders" VALIDATE CONSTRAINT "Orders_CustomerId_not_null";',
      'ALTER TABLE app."Orders" ALTER COLUMN "CustomerId" SET NOT NULL;',
      'ALTER TABLE app."Orders" DROP CONSTRAINT "Orders_CustomerId_not_null";']),
    ("add-foreign-key", 18,
     'ALTER TABLE app."Orders" ADD FOREIGN KEY ("CustomerId") REFERENCES app."Customers" ("Id");',
     [('ALTER TABLE app."Orders" ADD CONSTRAINT "Orders_CustomerId_fkey" FOREIGN KEY '
      '("CustomerId") REFERENCES app."Customers" ("Id") NOT VALID;'),
      'ALTER TABLE app."Orders" VALIDATE CONSTRAINT "Orders_CustomerId_fkey";']),
    ("add-foreign-key", 18,
     # (with a default: a new column that is all NULL has nothing to validate)
     'ALTER TABLE app."Orders" ADD COLUMN "Buyer" bigint DEFAULT 1 REFERENCES app."Customers" ("Id");',
     [('ALTER TABLE app."Orders" ADD COLUMN "Buyer" bigint DEFAULT 1,\n'
      '    ADD CONSTRAINT "Orders_Buyer_fkey" FOREIGN KEY ("Buyer") REFERENCES '
      'app."Customers" ("Id") NOT VALID;'),
      'ALTER TABLE app."Orders" VALIDATE CONSTRAINT "Orders_Buyer_fkey";']),
    ("add-check", 18, 'ALTER TABLE app."Orders" ADD CONSTRAINT "Qty_Positive" CHECK ("Qty" > 0);',
     ['ALTER TABLE app."Orders" ADD CONSTRAINT "Qty_Positive" CHECK ("Qty" > 0) NOT VALID;',
      'ALTER TABLE app."Orders" VALIDATE CONSTRAINT "Qty_Positive";']),
    ("add-unique", 18, 'ALTER TABLE app."Orders" ADD UNIQUE NULLS NOT DISTINCT ("Status");',
     [('CREATE UNIQUE INDEX CONCURRENTLY "Orders_Status_key" ON app."Orders" ("Status") '
      'NULLS NOT DISTINCT;'),
      ('ALTER TABLE app."Orders" ADD CONSTRAINT "Orders_Status_key" UNIQUE USING INDEX '
      '"Orders_Status_key";')]),
    ("add-unique", 18, 'ALTER TABLE app."Orders" ADD PRIMARY KEY ("Id");',
     ['CREATE UNIQUE INDEX CONCURRENTLY "Orders_pkey" ON app."Orders" ("Id");',
      ('ALTER TABLE app."Orders" ADD CONSTRAINT "Orders_pkey" PRIMARY KEY USING INDEX '
      '"Orders_pkey";')]),
    ("add-column-volatile-default", 18,
     'ALTER TABLE app."Orders" ADD COLUMN "Token" uuid DEFAULT gen_random_uuid();',
     [('ALTER TABLE app."Orders" ADD COLUMN "Token" uuid, ALTER COLUMN "Token" SET DEFAULT '
      'gen_random_uuid();'),
      ('UPDATE app."Orders" SET "Token" = gen_random_uuid() WHERE ctid = ANY (ARRAY(SELECT '
      'ctid FROM app."Orders" WHERE "Token" IS NULL LIMIT 10000));')]),
    ("add-column-serial", 18, 'ALTER TABLE app."Orders" ADD COLUMN "Seq" bigserial;',
     ['CREATE SEQUENCE app."Orders_Seq_seq";',
      ('ALTER TABLE app."Orders" ADD COLUMN "Seq" bigint, ALTER COLUMN "Seq" SET DEFAULT '
      'nextval(\'app."Orders_Seq_seq"\');'),
      'ALTER SEQUENCE app."Orders_Seq_seq" OWNED BY app."Orders"."Seq";']),
    ("alter-column-type", 18, 'ALTER TABLE app."Orders" ALTER COLUMN "Qty" TYPE bigint;',
     ['ALTER TABLE app."Orders" ADD COLUMN "Qty_new" bigint;',
      'ALTER TABLE app."Orders" RENAME COLUMN "Qty" TO "Qty_old";',
      'ALTER TABLE app."Orders" RENAME COLUMN "Qty_new" TO "Qty";']),
    ("drop-index", 18, 'DROP INDEX app."Orders_Status_idx";',
     ['DROP INDEX CONCURRENTLY app."Orders_Status_idx";']),
    ("reindex", 18, 'REINDEX TABLE app."Orders";', ['REINDEX TABLE CONCURRENTLY app."Orders";']),
    ("reindex", 11, 'REINDEX INDEX app."Orders_Status_idx";',
     ['CREATE INDEX CONCURRENTLY "Orders_Status_idx_new" ON app."Orders"',
      'DROP INDEX CONCURRENTLY app."Orders_Status_idx";',
      'ALTER INDEX app."Orders_Status_idx_new" RENAME TO "Orders_Status_idx";']),
    ("refresh-materialized-view", 18, 'REFRESH MATERIALIZED VIEW app."Totals";',
     ['REFRESH MATERIALIZED VIEW CONCURRENTLY app."Totals";']),
    ("attach-partition", 18,
     ('ALTER TABLE app."Events" ATTACH PARTITION app."Events_2025" '
     "FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');"),
     [('ALTER TABLE app."Events_2025" ADD CONSTRAINT "Events_2025_bound" CHECK ('
      "<partition key> >= '2025-01-01' AND <partition key> < '2026-01-01') NOT VALID;"),
      'ALTER TABLE app."Events_2025" VALIDATE CONSTRAINT "Events_2025_bound";',
      ('ALTER TABLE app."Events" ATTACH PARTITION app."Events_2025" '
      "FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');")]),
    ("detach-partition", 18, 'ALTER TABLE app."Events" DETACH PARTITION app."Events_2023";',
     ['ALTER TABLE app."Events" DETACH PARTITION app."Events_2023" CONCURRENTLY;']),
    ("set-logged", 18, 'ALTER TABLE app."Orders" SET UNLOGGED;',
     ['CREATE UNLOGGED TABLE app."Orders_new" (LIKE app."Orders" INCLUDING ALL);',
      'ALTER TABLE app."Orders" RENAME TO "Orders_old";',
      'ALTER TABLE app."Orders_new" RENAME TO "Orders";']),
    ("set-access-method", 18, 'ALTER TABLE app."Orders" SET ACCESS METHOD "Columnar";',
     ['CREATE TABLE app."Orders_new" (LIKE app."Orders" INCLUDING ALL) USING "Columnar";']),
    ("set-tablespace", 18, 'ALTER INDEX app."Orders_Status_idx" SET TABLESPACE "Fast";',
     ['REINDEX (TABLESPACE "Fast") INDEX CONCURRENTLY app."Orders_Status_idx";']),
    ("rename-table", 18, 'ALTER TABLE app."Customers" RENAME TO "Clients";',
     ['ALTER TABLE app."Customers" RENAME TO "Clients";',
      'CREATE VIEW app."Customers" AS SELECT * FROM app."Clients";']),
    ("rename-column", 18, 'ALTER TABLE app."Orders" RENAME COLUMN "Note" TO "Remark";',
     ['ALTER TABLE app."Orders" ADD COLUMN "Remark" text;',
      'UPDATE app."Orders" SET "Remark" = "Note" WHERE']),
    ("add-column-not-null-without-default", 17,
     'ALTER TABLE app."Orders" ADD COLUMN "Rank" integer NOT NULL;',
     ['ALTER TABLE app."Orders" ADD COLUMN "Rank" integer;',
      ('ALTER TABLE app."Orders" ADD CONSTRAINT "Orders_Rank_not_null" CHECK ("Rank" IS NOT '
      'NULL) NOT VALID;')]),
    ("vacuum-full", 18, 'VACUUM FULL app."Orders";',
     ['VACUUM app."Orders";', "pg_repack --no-order --table='app.\"Orders\"'"]),
    ("cluster", 18, 'CLUSTER app."Orders" USING "Orders_Status_idx";',
     ['ALTER TABLE app."Orders" CLUSTER ON "Orders_Status_idx";']),
]


@pytest.mark.parametrize(("rule_id", "version", "sql", "expected"), IDENTIFIER_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(IDENTIFIER_CASES)])
def test_user_identifiers_appear_unchanged(rule_id: str, version: int, sql: str,
                                           expected: list[str]) -> None:
    finding = only(lint(sql, version), rule_id)
    text = unindented(finding.message)
    for piece in expected:
        assert piece in text, f"{piece!r} not in:\n{text}"
    # the lock names the relation as written
    assert finding.relation is not None and finding.relation.startswith('app."')


def test_invented_names_are_quoted_and_cut_to_the_name_limit() -> None:
    table = "t" + "x" * 40
    column = "Col" + "y" * 40
    catalog = catalog_from_script(f'CREATE TABLE {table} ("{column}" integer);')
    finding = only(lint(f'ALTER TABLE {table} ALTER COLUMN "{column}" SET NOT NULL;', 17,
                        catalog=catalog), "set-not-null")
    name = re.search(r'ADD CONSTRAINT ("(?:[^"]|"")+") CHECK', finding.message)
    assert name, finding.message
    assert len(name.group(1).strip('"').encode()) == NAME_LIMIT
    assert f'VALIDATE CONSTRAINT {name.group(1)};' in finding.message


def test_invented_names_that_need_no_quotes_get_none() -> None:
    finding = only(lint("ALTER TABLE orders ALTER COLUMN customer_id SET NOT NULL;", 17),
                   "set-not-null")
    assert "ADD CONSTRAINT orders_customer_id_not_null CHECK (customer_id IS NOT NULL)" in (
        finding.message)


def test_reserved_words_in_invented_names_are_quoted() -> None:
    catalog = catalog_from_script('CREATE TABLE "user" ("order" integer);')
    finding = only(lint('ALTER TABLE "user" ADD CONSTRAINT c CHECK ("order" > 0);',
                        catalog=catalog), "add-check")
    assert 'ALTER TABLE "user" ADD CONSTRAINT c CHECK ("order" > 0) NOT VALID;' in (
        finding.message)
    finding = only(lint('ALTER TABLE "user" ADD UNIQUE ("order");', catalog=catalog),
                   "add-unique")
    assert 'CREATE UNIQUE INDEX CONCURRENTLY user_order_key ON "user" ("order");' in (
        finding.message)


# -- statements that only take weak locks never produce an error ----------------------

WEAK = """
CREATE TABLE customers (id bigint PRIMARY KEY);
CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint REFERENCES customers (id),
                     note text, total numeric(10, 2));
CREATE INDEX orders_note_idx ON orders (note);
ALTER TABLE orders ADD CONSTRAINT orders_total_check CHECK (total >= 0) NOT VALID;
CREATE TABLE events (id bigint, created_at date) PARTITION BY RANGE (created_at);
CREATE TABLE events_2023 PARTITION OF events FOR VALUES FROM ('2023-01-01') TO ('2024-01-01');
"""
WEAK_STATEMENTS = [
    "SELECT * FROM orders WHERE id = 1",
    "SELECT * FROM orders WHERE id = 1 FOR UPDATE",
    "INSERT INTO orders (id, customer_id) VALUES (1, 1)",
    "UPDATE orders SET note = 'x' WHERE id = 1",
    "DELETE FROM orders WHERE id = 1",
    "COPY orders FROM STDIN",
    "COPY orders TO STDOUT",
    "ALTER TABLE orders VALIDATE CONSTRAINT orders_total_check",
    "CREATE INDEX CONCURRENTLY orders_total_idx ON orders (total)",
    "CREATE UNIQUE INDEX CONCURRENTLY orders_id_note_key ON orders (id, note)",
    "DROP INDEX CONCURRENTLY orders_note_idx",
    "REINDEX INDEX CONCURRENTLY orders_note_idx",
    "REINDEX TABLE CONCURRENTLY orders",
    "ANALYZE orders",
    "VACUUM orders",
    "VACUUM (ANALYZE, VERBOSE) orders",
    "COMMENT ON TABLE orders IS 'the orders'",
    "COMMENT ON COLUMN orders.note IS 'free text'",
    "CREATE STATISTICS orders_stats ON customer_id, total FROM orders",
    "ALTER TABLE orders SET (fillfactor = 70)",
    "ALTER TABLE orders SET (autovacuum_vacuum_scale_factor = 0.01)",
    "ALTER TABLE orders CLUSTER ON orders_note_idx",
    "ALTER INDEX orders_note_idx RENAME TO orders_note_index",
    "SET lock_timeout = '2s'",
    "ALTER TABLE orders ALTER COLUMN note SET STATISTICS 500",
    "ALTER TABLE orders ALTER COLUMN total SET (n_distinct = 100)",
]
def _weak_cases() -> list[object]:
    return [pytest.param(sql, version, id=f"{version}-{sql[:50]}")
            for sql in WEAK_STATEMENTS for version in (14, 18)]


@pytest.mark.parametrize(("sql", "version"), _weak_cases())
def test_weak_locks_never_produce_an_error(sql: str, version: int) -> None:
    catalog = catalog_from_script(WEAK, version=version)
    statement = analyze_statement(sql, version=version, catalog=catalog.copy())
    assert statement.understood, statement.reason
    assert all(lock.mode <= LockMode.SHARE_UPDATE_EXCLUSIVE for lock in statement.locks), (
        statement.locks)
    for start in ("", "SET lock_timeout = '1s';\n", "SELECT 1;\n"):
        results = lint(start + sql + ";", version, catalog=catalog)
        errors = [f for r in results for f in r.findings if f.severity is Severity.ERROR]
        assert not errors, [f.message for f in errors]
    # and each rule, asked directly, in every context a runtime guard may give
    for in_transaction in (False, True):
        context = Context(version=version, catalog=catalog.copy(), runtime=True,
                          in_transaction=in_transaction and statement.transactional)
        for rule in RULES:
            for finding in rule.check(statement, context):
                assert finding.severity is not Severity.ERROR, finding.message


def test_weak_locks_in_the_lock_corpus_never_produce_an_error() -> None:
    """Every statement of the project's lock corpus that the analysis says takes at most
    SHARE UPDATE EXCLUSIVE, run on its own against the corpus schema."""
    from pathlib import Path

    corpus = Path(__file__).parent / "corpus"
    if not (corpus / "statements.sql").exists():
        pytest.skip("no lock corpus")
    catalog = catalog_from_script((corpus / "setup.sql").read_text(), version=18)
    entries = (corpus / "statements.sql").read_text().split("\n-- @@\n")[1:]
    checked = 0
    for entry in entries:
        if re.search(r"(?m)^-- (min|max)_version: ", entry):
            continue
        statement = analyze_statement(entry, version=18, catalog=catalog.copy())
        if not statement.understood or statement.kind.value == "transaction-control":
            continue
        if statement.unknown_locks:  # alone, its lock set is unknown, not weak
            continue
        if any(lock.mode > LockMode.SHARE_UPDATE_EXCLUSIVE for lock in statement.locks):
            continue
        results = lint(entry, 18, catalog=catalog)
        errors = [f.rule for r in results for f in r.findings if f.severity is Severity.ERROR]
        assert not errors, (entry, errors)
        checked += 1
    assert checked > 50


# -- tables created by the script are not reported ------------------------------------

NEW_TABLE_CASES = [
    ("create-index", "CREATE INDEX t_a_idx ON t (a);"),
    ("drop-index", "CREATE INDEX t_a_idx ON t (a);\nDROP INDEX t_a_idx;"),
    ("reindex", "REINDEX TABLE t;"),
    ("truncate", "TRUNCATE t;"),
    ("add-foreign-key", "ALTER TABLE t ADD FOREIGN KEY (a) REFERENCES customers (id);"),
    ("add-check", "ALTER TABLE t ADD CHECK (a > 0);"),
    ("add-unique", "ALTER TABLE t ADD UNIQUE (a);"),
    ("add-exclude", "ALTER TABLE t ADD EXCLUDE USING gist (a WITH =);"),
    ("set-not-null", "ALTER TABLE t ALTER COLUMN a SET NOT NULL;"),
    ("add-column-volatile-default", "ALTER TABLE t ADD COLUMN u uuid DEFAULT gen_random_uuid();"),
    ("add-column-serial", "ALTER TABLE t ADD COLUMN n bigserial;"),
    ("alter-column-type", "ALTER TABLE t ALTER COLUMN a TYPE bigint;"),
    ("set-logged", "ALTER TABLE t SET LOGGED;"),
    ("set-tablespace", "ALTER TABLE t SET TABLESPACE fast;"),
    ("set-access-method", "ALTER TABLE t SET ACCESS METHOD columnar;"),
    ("vacuum-full", "VACUUM FULL t;"),
    ("cluster", "CLUSTER t USING t_pkey;"),
    ("multiple-alter-table", "ALTER TABLE t ADD COLUMN b int;\nALTER TABLE t ADD COLUMN c int;"),
    ("missing-lock-timeout", "ALTER TABLE t ADD COLUMN b int;"),
    ("drop-column", "ALTER TABLE t DROP COLUMN a;"),
    ("rename-column", "ALTER TABLE t RENAME COLUMN a TO b;"),
    ("rename-table", "ALTER TABLE t RENAME TO u;"),
    ("drop-table", "DROP TABLE t;"),
    ("add-column-not-null-without-default", "ALTER TABLE t ADD COLUMN b int NOT NULL;"),
    ("statements-after-access-exclusive",
     "BEGIN;\nALTER TABLE t ADD COLUMN b int;\nUPDATE t SET b = 1;\nCOMMIT;"),
]


@pytest.mark.parametrize(("rule_id", "sql"), NEW_TABLE_CASES, ids=[c[0] for c in NEW_TABLE_CASES])
def test_tables_created_by_the_script_are_not_reported(rule_id: str, sql: str) -> None:
    create = "CREATE TABLE t (id bigint PRIMARY KEY, a integer);\n"
    assert rule_id not in rule_ids(lint(create + sql))
    # the same statement on an existing table is reported
    existing = catalog_from_script(create)
    assert rule_id in rule_ids(lint(sql, catalog=existing)), "the case itself is reported"


def test_materialized_view_created_by_the_script_is_not_reported() -> None:
    sql = ("CREATE MATERIALIZED VIEW mv AS SELECT 1 AS x;\n"
           "REFRESH MATERIALIZED VIEW mv;")
    assert "refresh-materialized-view" not in rule_ids(lint(sql))


# -- rule by rule: when they fire and when they stay quiet -----------------------------

def test_reindex_before_12_has_no_concurrently() -> None:
    old = only(lint("REINDEX INDEX orders_status_idx;", 11, catalog=example_catalog(11)),
               "reindex")
    assert "not available before PostgreSQL 12" in old.message
    assert "REINDEX INDEX CONCURRENTLY" not in old.message
    assert "CREATE INDEX CONCURRENTLY orders_status_idx_new ON orders" in old.message
    assert "ALTER INDEX orders_status_idx_new RENAME TO orders_status_idx;" in old.message
    new = only(lint("REINDEX INDEX orders_status_idx;", 12, catalog=example_catalog(12)),
               "reindex")
    assert new.safe_alternative == "REINDEX INDEX CONCURRENTLY orders_status_idx;"


def test_reindex_concurrently_is_fine_from_12_and_a_syntax_error_before() -> None:
    sql = "REINDEX TABLE CONCURRENTLY orders;"
    assert "reindex" not in rule_ids(lint(sql, 12))
    old = only(lint(sql, 11), "reindex")
    assert "syntax error" in old.message


def test_reindex_keeps_options_and_covers_schemas() -> None:
    finding = only(lint("REINDEX (VERBOSE) TABLE orders;"), "reindex")
    assert finding.safe_alternative == "REINDEX (VERBOSE) TABLE CONCURRENTLY orders;"
    finding = only(lint("REINDEX SCHEMA app;"), "reindex")
    assert "SHARE on every table of schema app" in finding.message
    assert finding.safe_alternative == "REINDEX SCHEMA CONCURRENTLY app;"


@pytest.mark.parametrize("version", [11, 12, 17, 18])
def test_set_not_null_alternative_depends_on_the_version(version: int) -> None:
    finding = only(lint("ALTER TABLE orders ALTER COLUMN note SET NOT NULL;", version),
                   "set-not-null")
    alternative = finding.safe_alternative or ""
    if version >= 18:
        assert "ADD CONSTRAINT orders_note_not_null NOT NULL note NOT VALID;" in alternative
        assert "CHECK" not in alternative
    else:
        assert ("ADD CONSTRAINT orders_note_not_null CHECK (note IS NOT NULL) NOT VALID;"
                in alternative)
    assert "VALIDATE CONSTRAINT orders_note_not_null;" in alternative
    if 12 <= version < 18:
        assert "ALTER TABLE orders ALTER COLUMN note SET NOT NULL;" in alternative
        assert "DROP CONSTRAINT orders_note_not_null;" in alternative
    if version == 11:
        assert "SET NOT NULL;" not in alternative
        assert "keep the CHECK constraint" in alternative


def test_set_not_null_after_a_validated_check_is_quiet_from_12_only() -> None:
    script = ("ALTER TABLE orders ADD CONSTRAINT c CHECK (note IS NOT NULL) NOT VALID;\n"
              "ALTER TABLE orders VALIDATE CONSTRAINT c;\n"
              "ALTER TABLE orders ALTER COLUMN note SET NOT NULL;")
    assert "set-not-null" not in rule_ids(lint(script, 12))
    assert "set-not-null" in rule_ids(lint(script, 11))


def test_not_null_constraint_without_not_valid_is_set_not_null() -> None:
    finding = only(lint("ALTER TABLE orders ADD CONSTRAINT orders_note_nn NOT NULL note;", 18),
                   "set-not-null")
    assert "ADD CONSTRAINT orders_note_nn NOT NULL note NOT VALID;" in finding.message
    assert "set-not-null" not in rule_ids(
        lint("ALTER TABLE orders ADD CONSTRAINT orders_note_nn NOT NULL note NOT VALID;", 18))


def test_detach_partition_concurrently_exists_from_14() -> None:
    sql = "ALTER TABLE events DETACH PARTITION events_2023;"
    assert "detach-partition" not in rule_ids(lint(sql, 13))
    finding = only(lint(sql, 14), "detach-partition")
    assert finding.safe_alternative == (
        "ALTER TABLE events DETACH PARTITION events_2023 CONCURRENTLY;")
    assert "FINALIZE" in finding.message


def test_detach_partition_with_a_default_partition_cannot_be_concurrent() -> None:
    catalog = catalog_from_script(SCHEMA + "CREATE TABLE events_other PARTITION OF events DEFAULT;")
    finding = only(lint("ALTER TABLE events DETACH PARTITION events_2023;", catalog=catalog),
                   "detach-partition")
    assert "CONCURRENTLY is not possible" in finding.message
    assert "events_other" in finding.message
    assert finding.safe_alternative is None


def test_detach_finalize_is_not_reported() -> None:
    assert "detach-partition" not in rule_ids(
        lint("ALTER TABLE events DETACH PARTITION events_2023 FINALIZE;"))


def test_attach_partition_with_a_valid_check_is_quiet() -> None:
    sql = ("ALTER TABLE app.\"Events_2025\" ADD CONSTRAINT b CHECK (\"At\" >= '2025-01-01') "
           "NOT VALID;\nALTER TABLE app.\"Events_2025\" VALIDATE CONSTRAINT b;\n"
           "ALTER TABLE app.\"Events\" ATTACH PARTITION app.\"Events_2025\" "
           "FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');")
    assert "attach-partition" not in rule_ids(lint(sql))


def test_attach_partition_on_11_names_the_parent_lock() -> None:
    finding = only(lint_example(sql_block(DOCS["attach-partition"], "Bad"), 11),
                   "attach-partition")
    assert "events itself is held ACCESS EXCLUSIVE meanwhile: every query on it waits" in (
        finding.message)
    finding = only(lint_example(sql_block(DOCS["attach-partition"], "Bad"), 12),
                   "attach-partition")
    assert "events itself is held SHARE UPDATE EXCLUSIVE" in finding.message


def test_attach_partition_bounds_become_a_condition() -> None:
    catalog = catalog_from_script("CREATE TABLE p (k int, r text) PARTITION BY LIST (r);\n"
                               "CREATE TABLE c (k int, r text);")
    finding = only(lint("ALTER TABLE p ATTACH PARTITION c FOR VALUES IN ('a', 'b');",
                        catalog=catalog), "attach-partition")
    assert "CHECK (<partition key> IN ('a', 'b')) NOT VALID;" in finding.message
    finding = only(lint("ALTER TABLE p ATTACH PARTITION c FOR VALUES FROM (MINVALUE) TO (10);",
                        catalog=catalog), "attach-partition")
    assert "CHECK (<partition key> < 10) NOT VALID;" in finding.message


def test_foreign_key_not_valid_is_quiet_and_validate_too() -> None:
    script = ("ALTER TABLE orders ADD CONSTRAINT fk FOREIGN KEY (customer_id) "
              "REFERENCES customers (id) NOT VALID;\n"
              "ALTER TABLE orders VALIDATE CONSTRAINT fk;")
    assert not rule_ids(lint("SET lock_timeout = '1s';\n" + script))


def test_foreign_key_on_a_partitioned_table_before_18_goes_through_the_partitions() -> None:
    catalog = catalog_from_script(SCHEMA + "ALTER TABLE events ADD COLUMN customer_id bigint;",
                               version=17)
    sql = "ALTER TABLE events ADD FOREIGN KEY (customer_id) REFERENCES customers (id);"
    old = only(lint(sql, 17, catalog=catalog), "add-foreign-key")
    assert ("ALTER TABLE events_2023 ADD CONSTRAINT events_customer_id_fkey FOREIGN KEY "
            "(customer_id) REFERENCES customers (id) NOT VALID;") in old.message
    assert "ALTER TABLE events_2023 VALIDATE CONSTRAINT events_customer_id_fkey;" in old.message
    catalog18 = catalog_from_script(SCHEMA + "ALTER TABLE events ADD COLUMN customer_id bigint;")
    new = only(lint(sql, 18, catalog=catalog18), "add-foreign-key")
    assert "events_2023" not in new.message
    assert "ALTER TABLE events VALIDATE CONSTRAINT events_customer_id_fkey;" in new.message


def test_add_column_with_a_constant_or_stable_default_is_quiet() -> None:
    for default in ("0", "'new'", "now()", "CURRENT_TIMESTAMP"):
        for version in (11, 18):
            sql = f"ALTER TABLE orders ADD COLUMN x text DEFAULT {default};"
            assert "add-column-volatile-default" not in rule_ids(lint(sql, version))


def test_add_column_with_an_unknown_function_says_so() -> None:
    finding = only(lint("ALTER TABLE orders ADD COLUMN x int DEFAULT next_ticket();"),
                   "add-column-volatile-default")
    assert "does not know the volatility of DEFAULT next_ticket()" in finding.message


def test_add_column_volatile_not_null_adds_the_not_null_sequence() -> None:
    finding = only(lint("ALTER TABLE orders ADD COLUMN t uuid NOT NULL DEFAULT gen_random_uuid();",
                        17), "add-column-volatile-default")
    assert "ALTER TABLE orders ALTER COLUMN t SET NOT NULL;" in finding.message


def test_generated_column_depends_on_the_version() -> None:
    sql = "ALTER TABLE orders ADD COLUMN q2 int GENERATED ALWAYS AS (quantity * 2);"
    assert "add-column-serial" not in rule_ids(lint(sql, 18))  # VIRTUAL by default on 18
    stored = "ALTER TABLE orders ADD COLUMN q2 int GENERATED ALWAYS AS (quantity * 2) STORED;"
    new = only(lint(stored, 18), "add-column-serial")
    assert "GENERATED ALWAYS AS (quantity * 2) VIRTUAL;" in new.message
    old = only(lint(stored, 17), "add-column-serial")
    assert "VIRTUAL" not in old.message
    assert "SET q2 = (quantity * 2)" in old.message
    assert "add-column-volatile-default" not in rule_ids(lint(stored, 17))


def test_identity_column_is_a_serial_column() -> None:
    finding = only(lint("ALTER TABLE orders ADD COLUMN n bigint GENERATED ALWAYS AS IDENTITY;"),
                   "add-column-serial")
    assert "CREATE SEQUENCE orders_n_seq;" in finding.message
    assert "ADD COLUMN n bigint, ALTER COLUMN n SET DEFAULT nextval('orders_n_seq');" in (
        finding.message)


def test_alter_column_type_only_when_it_rewrites() -> None:
    for sql in ("ALTER TABLE orders ALTER COLUMN status TYPE varchar(50);",
                "ALTER TABLE orders ALTER COLUMN status TYPE text;"):
        assert "alter-column-type" not in rule_ids(lint(sql))
    for sql in ("ALTER TABLE orders ALTER COLUMN status TYPE varchar(10);",
                "ALTER TABLE orders ALTER COLUMN quantity TYPE bigint;"):
        finding = only(lint(sql), "alter-column-type")
        assert "varchar" in finding.message or "from integer to bigint" in finding.message


def test_alter_column_type_keeps_the_using_expression() -> None:
    finding = only(lint("ALTER TABLE orders ALTER COLUMN note TYPE integer USING note::integer;"),
                   "alter-column-type")
    assert "SET note_new = note::integer WHERE" in finding.message


def test_alter_column_type_of_an_unknown_column_says_so() -> None:
    catalog = catalog_from_script("CREATE TABLE t (id bigint);")
    finding = only(lint("ALTER TABLE t ALTER COLUMN ghost TYPE text;", catalog=catalog),
                   "alter-column-type")
    assert "does not know the current type" in finding.message


def test_add_unique_using_index_is_quiet() -> None:
    sql = "ALTER TABLE orders ADD CONSTRAINT k UNIQUE USING INDEX orders_status_idx;"
    assert "add-unique" not in rule_ids(lint(sql, catalog=example_catalog()))


def test_add_primary_key_makes_the_columns_not_null_first() -> None:
    catalog = catalog_from_script("CREATE TABLE t (a int, b int);")
    finding = only(lint("ALTER TABLE t ADD PRIMARY KEY (a, b);", 17, catalog=catalog),
                   "add-unique")
    assert "ADD CONSTRAINT t_a_not_null CHECK (a IS NOT NULL) NOT VALID;" in finding.message
    assert "ADD CONSTRAINT t_b_not_null CHECK (b IS NOT NULL) NOT VALID;" in finding.message
    assert "CREATE UNIQUE INDEX CONCURRENTLY t_pkey ON t (a, b);" in finding.message


def test_add_unique_keeps_include_and_deferrable() -> None:
    finding = only(lint("ALTER TABLE orders ADD CONSTRAINT k UNIQUE (status) INCLUDE (note) "
                        "DEFERRABLE INITIALLY DEFERRED;"), "add-unique")
    assert "CREATE UNIQUE INDEX CONCURRENTLY k ON orders (status) INCLUDE (note);" in (
        finding.message)
    assert "ADD CONSTRAINT k UNIQUE USING INDEX k DEFERRABLE INITIALLY DEFERRED;" in (
        finding.message)


def test_inline_constraints_on_add_column() -> None:
    results = lint("ALTER TABLE orders ADD COLUMN code text UNIQUE;")
    finding = only(results, "add-unique")
    assert "CREATE UNIQUE INDEX CONCURRENTLY orders_code_key ON orders (code);" in (
        finding.message)
    finding = only(lint("ALTER TABLE orders ADD COLUMN n int CHECK (n > 0);"), "add-check")
    assert ("ALTER TABLE orders ADD COLUMN n int,\n"
            "        ADD CONSTRAINT orders_n_check CHECK (n > 0) NOT VALID;") in finding.message


def test_drop_index_lists_each_index_and_keeps_if_exists() -> None:
    catalog = catalog_from_script(SCHEMA + "CREATE INDEX orders_note_idx ON orders (note);")
    finding = only(lint("DROP INDEX IF EXISTS orders_note_idx, other_idx;", catalog=catalog),
                   "drop-index")
    assert finding.safe_alternative == ("DROP INDEX CONCURRENTLY IF EXISTS orders_note_idx;\n"
                                        "DROP INDEX CONCURRENTLY IF EXISTS other_idx;")
    assert "ACCESS EXCLUSIVE on orders" in finding.message
    assert "drop-index" not in rule_ids(lint("DROP INDEX CONCURRENTLY orders_note_idx;",
                                             catalog=catalog))


def test_vacuum_full_and_cluster_without_a_table() -> None:
    finding = only(lint("VACUUM FULL;"), "vacuum-full")
    assert "ACCESS EXCLUSIVE on every table of the database" in finding.message
    assert finding.safe_alternative == "VACUUM;"
    finding = only(lint("CLUSTER;"), "cluster")
    assert "ACCESS EXCLUSIVE on every table clustered before" in finding.message


def test_refresh_with_no_data_is_not_reported() -> None:
    assert "refresh-materialized-view" not in rule_ids(
        lint('REFRESH MATERIALIZED VIEW app."Totals" WITH NO DATA;'))


@pytest.mark.parametrize("sql", [
    'REFRESH MATERIALIZED VIEW app."Totals" /* WITH NO DATA */;',
    "REFRESH MATERIALIZED VIEW app.\"Totals\" -- WITH NO DATA\n;",
    "REFRESH MATERIALIZED VIEW \"with no data\";",
])
def test_with_no_data_counts_only_as_the_statement_s_own_clause(sql: str) -> None:
    assert "refresh-materialized-view" in rule_ids(lint(sql))


def test_set_tablespace_of_an_index_before_14() -> None:
    finding = only(lint('ALTER INDEX app."Orders_Status_idx" SET TABLESPACE fast;', 13),
                   "set-tablespace")
    assert "REINDEX (TABLESPACE" not in finding.message
    assert "TABLESPACE fast;" in finding.message
    assert 'DROP INDEX CONCURRENTLY app."Orders_Status_idx";' in finding.message


def test_concurrently_in_transaction() -> None:
    sql = "CREATE INDEX CONCURRENTLY orders_note_idx ON orders (note);"
    assert "concurrently-in-transaction" not in rule_ids(lint(sql))
    finding = only(lint(sql, in_transaction=True), "concurrently-in-transaction")
    assert "cannot run inside a transaction block" in finding.message
    after_commit = lint("BEGIN;\nSELECT 1;\nCOMMIT;\n" + sql)
    assert "concurrently-in-transaction" not in rule_ids(after_commit)
    for other in ("VACUUM orders;", "DROP INDEX CONCURRENTLY orders_status_idx;",
                  "ALTER TABLE events DETACH PARTITION events_2023 CONCURRENTLY;"):
        assert "concurrently-in-transaction" in rule_ids(lint("BEGIN;\n" + other))


def test_statements_after_access_exclusive_once_per_transaction() -> None:
    script = ("BEGIN;\n"
              "SET LOCAL lock_timeout = '1s';\n"
              "ALTER TABLE orders ADD COLUMN a int;\n"
              "UPDATE orders SET a = 1;\n"
              "UPDATE orders SET a = 2;\n"
              "COMMIT;\n"
              "BEGIN;\n"
              "ALTER TABLE customers ADD COLUMN b int;\n"
              "SELECT * FROM customers;\n"
              "COMMIT;")
    results = lint(script)
    lines = [r.statement.line for r in results
             for f in r.findings if f.rule == "statements-after-access-exclusive"]
    assert lines == [4, 9]
    assert "taken at line 3" in findings(results, "statements-after-access-exclusive")[0].message


def test_statements_after_access_exclusive_what_counts() -> None:
    head = "BEGIN;\nSET LOCAL lock_timeout = '1s';\nALTER TABLE orders ADD COLUMN a int;\n"
    quiet = ["ALTER TABLE orders ADD COLUMN b int;",      # same table, brief
             "INSERT INTO customers (id) VALUES (1);",    # small write elsewhere
             "SET LOCAL statement_timeout = '1s';",
             "COMMIT;"]
    for sql in quiet:
        assert "statements-after-access-exclusive" not in rule_ids(lint(head + sql)), sql
    loud = ["UPDATE orders SET a = 1;",                   # backfill under the lock
            "CREATE INDEX orders_a_idx ON orders (a);",   # scan under the lock
            "ALTER TABLE customers ADD COLUMN b int;",    # waits for another strong lock
            "LOCK TABLE customers IN SHARE MODE;"]
    for sql in loud:
        assert "statements-after-access-exclusive" in rule_ids(lint(head + sql)), sql
    assert "statements-after-access-exclusive" not in rule_ids(
        lint("ALTER TABLE orders ADD COLUMN a int;\nUPDATE orders SET a = 1;"))


def test_multiple_alter_table() -> None:
    script = ("SET lock_timeout = '1s';\n"
              "ALTER TABLE orders ADD COLUMN a int;\n"
              "ALTER TABLE orders ADD COLUMN b int;\n"
              "ALTER TABLE orders ALTER COLUMN b SET DEFAULT 0;")
    results = lint(script)
    found = findings(results, "multiple-alter-table")
    assert [f.severity for f in found] == [Severity.WARNING, Severity.WARNING]
    assert found[-1].safe_alternative == ("ALTER TABLE orders\n    ADD COLUMN a int,\n"
                                          "    ADD COLUMN b int,\n"
                                          "    ALTER COLUMN b SET DEFAULT 0;")
    separate = ("ALTER TABLE orders ADD COLUMN a int;\n"
                "UPDATE orders SET a = 1;\n"
                "ALTER TABLE orders ADD COLUMN b int;\n"
                "ALTER TABLE customers ADD COLUMN c int;\n")
    assert "multiple-alter-table" not in rule_ids(lint(separate))


def test_multiple_alter_table_leaves_the_set_not_null_sequence_alone() -> None:
    for version in (12, 17, 18):
        finding = only(lint("ALTER TABLE orders ALTER COLUMN note SET NOT NULL;", version),
                       "set-not-null")
        script = "SET lock_timeout = '1s';\n" + "\n".join(
            line for line in (finding.safe_alternative or "").splitlines()
            if not line.startswith("--"))
        assert not rule_ids(lint(script, version)), version


def test_missing_lock_timeout_once_per_script() -> None:
    script = ("SELECT * FROM orders;\n"
              "UPDATE orders SET note = '' WHERE id = 1;\n"
              "ALTER TABLE orders ADD COLUMN a int;\n"
              "ALTER TABLE customers ADD COLUMN b int;")
    results = lint(script)
    lines = [r.statement.line for r in results
             for f in r.findings if f.rule == "missing-lock-timeout"]
    assert lines == [3]
    assert "missing-lock-timeout" not in rule_ids(
        lint("SET lock_timeout = '2s';\nALTER TABLE orders ADD COLUMN a int;"))
    assert "missing-lock-timeout" not in rule_ids(
        lint("BEGIN;\nSET LOCAL lock_timeout = '2s';\nALTER TABLE orders ADD COLUMN a int;"))


def test_missing_lock_timeout_is_left_to_the_runtime_guard() -> None:
    catalog = schema_catalog(18)
    statement = analyze_statement("ALTER TABLE orders ADD COLUMN a int",
                                  catalog=catalog.copy())
    rule = BY_ID["missing-lock-timeout"]
    assert list(rule.check(statement, Context(version=18, catalog=catalog.copy())))
    assert not list(rule.check(statement, Context(version=18, catalog=catalog.copy(),
                                                  runtime=True)))


def test_warnings_on_app_breaking_changes() -> None:
    cases = {
        "drop-column": "ALTER TABLE orders DROP COLUMN note;",
        "rename-column": "ALTER TABLE orders RENAME COLUMN note TO remark;",
        "rename-table": "ALTER TABLE orders RENAME TO purchases;",
        "drop-table": "DROP TABLE orders;",
        "add-column-not-null-without-default": "ALTER TABLE orders ADD COLUMN p int NOT NULL;",
    }
    for rule_id, sql in cases.items():
        finding = only(lint("SET lock_timeout = '1s';\n" + sql), rule_id)
        assert finding.severity is Severity.WARNING
    rename = only(lint("ALTER TABLE orders RENAME COLUMN note TO remark;"), "rename-column")
    assert "ALTER TABLE orders ADD COLUMN remark text;" in rename.message
    assert "add-column-not-null-without-default" not in rule_ids(
        lint("ALTER TABLE orders ADD COLUMN p int NOT NULL DEFAULT 0;"))
    assert "add-column-not-null-without-default" not in rule_ids(
        lint("ALTER TABLE orders ADD COLUMN p bigserial;"))


def test_drop_table_names_the_tables_its_foreign_keys_lock() -> None:
    catalog = catalog_from_script(SCHEMA + "CREATE TABLE lines (id int, "
                               "order_id bigint REFERENCES orders (id));")
    finding = only(lint("DROP TABLE lines;", catalog=catalog), "drop-table")
    assert "ACCESS EXCLUSIVE on orders (foreign keys)" in finding.message


def test_unparsed_statement_gives_the_reason() -> None:
    results = lint("DO $$ BEGIN EXECUTE 'TRUNCATE ' || 'orders'; END $$;")
    finding = only(results, "unparsed-statement")
    assert finding.severity is Severity.WARNING
    assert results[0].statement.reason and results[0].statement.reason in finding.message
    assert finding.message.startswith("unparsed-statement: ")
    assert "ignore[unparsed-statement]" in finding.message
    assert [f.rule for f in results[0].findings] == ["unparsed-statement"]


def test_safe_alternative_is_runnable_sql_or_none() -> None:
    attach = bad_finding("attach-partition")
    assert attach.safe_alternative is None  # the partition key is not in the statement
    assert "CHECK (<partition key> >= '2025-01-01'" in attach.message
    for rule_id in ("add-foreign-key", "add-check", "set-not-null", "add-unique",
                    "add-column-volatile-default", "alter-column-type"):
        alternative = bad_finding(rule_id).safe_alternative
        assert alternative is not None and not re.search(r"<[a-z]", alternative), rule_id
    for rule_id in ("drop-column", "drop-table", "add-exclude", "unparsed-statement"):
        assert bad_finding(rule_id).safe_alternative is None, rule_id


def test_set_access_method_needs_15() -> None:
    finding = only(lint('ALTER TABLE orders SET ACCESS METHOD columnar;', 14), "set-access-method")
    assert "does not have SET ACCESS METHOD" in finding.message
    assert "does not have" not in only(lint('ALTER TABLE orders SET ACCESS METHOD columnar;', 15),
                                       "set-access-method").message


# -- rules that declare which statements they may find something in --------------------


class _Unfiltered:
    """A rule without its ``kinds`` / ``step_actions``: the engine runs it on every
    statement."""

    def __init__(self, rule: object) -> None:
        self.rule = rule
        self.id = rule.id  # type: ignore[attr-defined]
        self.severity = rule.severity  # type: ignore[attr-defined]
        self.summary = rule.summary  # type: ignore[attr-defined]

    def check(self, statement: object, context: Context) -> object:
        return self.rule.check(statement, context)  # type: ignore[attr-defined]


def _declaration_scripts() -> list[tuple[str, Catalog | None]]:
    from pathlib import Path

    scripts: list[tuple[str, Catalog | None]] = []
    for rule_id in IDS_WITH_DECLARATIONS:
        for section in ("Bad", "Good"):
            scripts.append((sql_block(DOCS[rule_id], section), example_catalog()))
    corpus = Path(__file__).parent / "corpus"
    if (corpus / "statements.sql").exists():
        catalog = catalog_from_script((corpus / "setup.sql").read_text(), version=18)
        scripts.append(((corpus / "statements.sql").read_text(), catalog))
    return scripts


IDS_WITH_DECLARATIONS = [rule.id for rule in RULES
                         if hasattr(rule, "kinds") or hasattr(rule, "step_actions")]


def test_a_rule_finds_nothing_outside_the_statements_it_declares() -> None:
    """The engine skips a rule on statements outside its ``kinds`` / ``step_actions``:
    run on every statement, each of those rules finds the same."""
    from safeddl.rules.engine import _applies

    assert len(IDS_WITH_DECLARATIONS) >= 20
    found: set[str] = set()
    for script, catalog in _declaration_scripts():
        every = lint_script(script, catalog=catalog,
                            rules=[_Unfiltered(rule) for rule in RULES])  # type: ignore[misc]
        chosen = lint_script(script, catalog=catalog)
        for unfiltered, filtered in zip(every, chosen, strict=True):
            assert unfiltered.findings == filtered.findings, unfiltered.statement.sql
            for finding in unfiltered.findings:
                statement = unfiltered.statement
                actions = frozenset(step.action for step in statement.steps)
                assert _applies(BY_ID[finding.rule], statement.kind, actions), (
                    finding.rule, statement.sql)
                found.add(finding.rule)
    assert not set(IDS_WITH_DECLARATIONS) - found  # each of them finds something
