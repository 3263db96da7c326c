"""Every command of PostgreSQL's SQL reference is read (no database here: what each one
locks is checked against pg_locks by tests/corpus/statements.sql on every server the
suite runs). What stays unread is text that is not valid SQL, or a DO block with
dynamic SQL. A valid statement whose lock set the text does not show (DROP ...
CASCADE, CALL, EXECUTE of a statement prepared elsewhere) is read, names the locks it
knows, says the rest is unknown, and is refused by the guard's default policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from safeddl.analysis import Action, analyze_script, analyze_statement, catalog_from_script
from safeddl.locks import LockMode
from safeddl.rules import lint_script
from safeddl.runtime.decision import decide
from safeddl.runtime.plan import SessionFacts
from safeddl.runtime.policy import Policy, RuleAction
from safeddl.sql import LIMITS, split_script
from safeddl.sql.psql import split_psql

REGRESS = Path(__file__).resolve().parents[1].parent / "shared" / "pg-regress-sql"

# One form (or more) of every command of PostgreSQL's SQL command reference (11-18).
COMMANDS = """
ABORT; ALTER AGGREGATE a(int) RENAME TO b; ALTER COLLATION c REFRESH VERSION;
ALTER CONVERSION c RENAME TO d; ALTER DATABASE d SET work_mem = '1MB';
ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO r; ALTER DOMAIN d SET DEFAULT 1;
ALTER EVENT TRIGGER e DISABLE; ALTER EXTENSION e UPDATE;
ALTER FOREIGN DATA WRAPPER w OPTIONS (ADD a '1'); ALTER FOREIGN TABLE f ADD COLUMN c int;
ALTER FOREIGN TABLE f OPTIONS (ADD a '1'); ALTER FUNCTION f() STABLE; ALTER GROUP g ADD USER u;
ALTER INDEX i RENAME TO j; ALTER LANGUAGE l RENAME TO m; ALTER LARGE OBJECT 1 OWNER TO r;
ALTER MATERIALIZED VIEW m RENAME TO n; ALTER OPERATOR = (int, int) OWNER TO r;
ALTER OPERATOR CLASS c USING btree RENAME TO d; ALTER OPERATOR FAMILY f USING btree OWNER TO r;
ALTER POLICY p ON t RENAME TO q; ALTER PROCEDURE p() SECURITY DEFINER;
ALTER PUBLICATION p ADD TABLE t; ALTER ROLE r LOGIN; ALTER ROUTINE r() IMMUTABLE;
ALTER RULE r ON t RENAME TO s; ALTER SCHEMA s RENAME TO t; ALTER SEQUENCE s RESTART;
ALTER SERVER s VERSION '2'; ALTER STATISTICS s SET STATISTICS 10;
ALTER SUBSCRIPTION s DISABLE; ALTER SYSTEM SET work_mem = '1MB'; ALTER TABLE t ADD COLUMN c int;
ALTER TABLESPACE s RENAME TO t; ALTER TEXT SEARCH CONFIGURATION c RENAME TO d;
ALTER TEXT SEARCH DICTIONARY d (a = 1); ALTER TEXT SEARCH PARSER p RENAME TO q;
ALTER TEXT SEARCH TEMPLATE t RENAME TO u; ALTER TRIGGER g ON t RENAME TO h;
ALTER TYPE e ADD VALUE 'x'; ALTER USER u NOLOGIN; ALTER USER MAPPING FOR u SERVER s OPTIONS (SET a '1');
ALTER VIEW v RENAME TO w; ANALYZE t; BEGIN; CALL p(1); CHECKPOINT; CLOSE c; CLUSTER t USING i;
COMMENT ON TABLE t IS 'x'; COMMIT; COMMIT PREPARED 'x'; COPY t FROM STDIN;
CREATE ACCESS METHOD a TYPE TABLE HANDLER h; CREATE AGGREGATE a(int) (sfunc = f, stype = int);
CREATE CAST (int AS text) WITH INOUT; CREATE COLLATION c (locale = 'C');
CREATE CONVERSION c FOR 'UTF8' TO 'LATIN1' FROM f; CREATE DATABASE d; CREATE DOMAIN d AS int;
CREATE EVENT TRIGGER e ON ddl_command_start EXECUTE FUNCTION f(); CREATE EXTENSION e;
CREATE FOREIGN DATA WRAPPER w; CREATE FOREIGN TABLE f (a int) SERVER s;
CREATE FUNCTION f() RETURNS int LANGUAGE sql RETURN 1; CREATE GROUP g; CREATE INDEX i ON t (a);
CREATE LANGUAGE l HANDLER h; CREATE MATERIALIZED VIEW m AS SELECT 1;
CREATE OPERATOR === (leftarg = int, rightarg = int, function = f);
CREATE OPERATOR CLASS c FOR TYPE int USING btree AS OPERATOR 1 <;
CREATE OPERATOR FAMILY f USING btree; CREATE POLICY p ON t USING (true);
CREATE PROCEDURE p() LANGUAGE sql AS 'SELECT 1'; CREATE PUBLICATION p FOR TABLE t;
CREATE ROLE r; CREATE RULE r AS ON INSERT TO t DO NOTHING; CREATE SCHEMA s; CREATE SEQUENCE s;
CREATE SERVER s FOREIGN DATA WRAPPER w; CREATE STATISTICS s ON a, b FROM t;
CREATE SUBSCRIPTION s CONNECTION 'dbname=x' PUBLICATION p WITH (connect = false);
CREATE TABLE t (a int); CREATE TABLE u AS SELECT 1; CREATE TABLESPACE s LOCATION '/x';
CREATE TEXT SEARCH CONFIGURATION c (COPY = simple); CREATE TEXT SEARCH DICTIONARY d (TEMPLATE = simple);
CREATE TEXT SEARCH PARSER p (START = a, GETTOKEN = b, END = c, LEXTYPES = d);
CREATE TEXT SEARCH TEMPLATE t (LEXIZE = f); CREATE TRANSFORM FOR int LANGUAGE l (FROM SQL WITH FUNCTION f(internal));
CREATE TRIGGER g BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION f(); CREATE TYPE e AS ENUM ('a');
CREATE USER u; CREATE USER MAPPING FOR u SERVER s; CREATE VIEW v AS SELECT 1;
CREATE UNLOGGED SEQUENCE s2; DEALLOCATE q; DECLARE c CURSOR FOR SELECT 1; DELETE FROM t;
DISCARD ALL; DO $$ BEGIN PERFORM 1; END $$; DROP ACCESS METHOD a; DROP AGGREGATE a(int);
DROP CAST (int AS text); DROP COLLATION c; DROP CONVERSION c; DROP DATABASE d; DROP DOMAIN d;
DROP EVENT TRIGGER e; DROP EXTENSION e; DROP FOREIGN DATA WRAPPER w; DROP FOREIGN TABLE f;
DROP FUNCTION f(); DROP GROUP g; DROP INDEX i; DROP LANGUAGE l; DROP MATERIALIZED VIEW m;
DROP OPERATOR === (int, int); DROP OPERATOR CLASS c USING btree; DROP OPERATOR FAMILY f USING btree;
DROP OWNED BY r; DROP POLICY p ON t; DROP PROCEDURE p(); DROP PUBLICATION p; DROP ROLE r;
DROP ROUTINE r(); DROP RULE r ON t; DROP SCHEMA s; DROP SEQUENCE s; DROP SERVER s;
DROP STATISTICS s; DROP SUBSCRIPTION s; DROP TABLE t; DROP TABLESPACE s;
DROP TEXT SEARCH CONFIGURATION c; DROP TEXT SEARCH DICTIONARY d; DROP TEXT SEARCH PARSER p;
DROP TEXT SEARCH TEMPLATE t; DROP TRANSFORM FOR int LANGUAGE l; DROP TRIGGER g ON t;
DROP TYPE e; DROP USER u; DROP USER MAPPING FOR u SERVER s; DROP VIEW v; END;
PREPARE q AS SELECT 1; EXECUTE q; EXPLAIN SELECT 1; FETCH c; GRANT SELECT ON t TO r;
IMPORT FOREIGN SCHEMA r FROM SERVER s INTO l; INSERT INTO t VALUES (1); LISTEN c;
LOAD 'x'; LOCK TABLE t; MERGE INTO t USING u ON t.a = u.a WHEN MATCHED THEN DELETE;
MOVE c; NOTIFY c; PREPARE TRANSACTION 'x'; REASSIGN OWNED BY r TO s;
REFRESH MATERIALIZED VIEW m; REINDEX TABLE t; RELEASE SAVEPOINT s; RESET work_mem;
REVOKE SELECT ON t FROM r; ROLLBACK; ROLLBACK PREPARED 'x'; ROLLBACK TO SAVEPOINT s;
SAVEPOINT s; SECURITY LABEL ON TABLE t IS 'x'; SELECT 1; SELECT 1 INTO v2; SET work_mem = '1MB';
SET CONSTRAINTS ALL DEFERRED; SET ROLE r; SET SESSION AUTHORIZATION r;
SET TRANSACTION READ ONLY; SHOW work_mem; START TRANSACTION; TRUNCATE t; UNLISTEN c;
UPDATE t SET a = 1; VACUUM t; VALUES (1)
"""


@pytest.mark.parametrize("sql", [raw.text for raw in split_script(COMMANDS)])
def test_every_command_is_read(sql: str) -> None:
    statement = analyze_statement(sql)
    assert statement.understood, statement.reason


def test_the_command_list_is_whole() -> None:
    assert len(split_script(COMMANDS)) >= 185


# -- splitting: BEGIN ATOMIC bodies and parenthesized rule actions ----------------------

ATOMIC = ("CREATE OR REPLACE FUNCTION f(a int) RETURNS int LANGUAGE sql BEGIN ATOMIC "
          "SELECT 1; SELECT CASE WHEN a > 0 THEN 1 END FROM orders; END")
RULE = ("CREATE RULE r AS ON INSERT TO t DO INSTEAD (DELETE FROM t; "
        "INSERT INTO audit VALUES (1))")


@pytest.mark.parametrize("split", [split_script, split_psql])
def test_a_begin_atomic_body_and_a_rule_are_one_statement(split: object) -> None:
    script = f"{ATOMIC};\n{RULE};\nSELECT 2;\nCREATE TABLE function_x (a int); END;"
    texts = [raw.text for raw in split(script)]  # type: ignore[operator]
    assert texts == [ATOMIC, RULE, "SELECT 2", "CREATE TABLE function_x (a int)", "END"]


def test_a_long_script_keeps_a_body_together() -> None:
    padding = "SELECT 1;\n" * (LIMITS.parse_bytes // 10 + 10)
    texts = [raw.text for raw in split_script(padding + ATOMIC + ";\nTRUNCATE big")]
    assert texts[-2:] == [ATOMIC, "TRUNCATE big"]


def test_a_function_named_begin_hides_nothing() -> None:
    text = "CREATE FUNCTION begin() RETURNS int LANGUAGE sql AS 'SELECT 1'; TRUNCATE big"
    assert [raw.text for raw in split_script(text)][-1] == "TRUNCATE big"
    assert decide(text, SessionFacts(18, True), Policy()).action is RuleAction.REFUSE


def test_a_begin_atomic_body_is_analysed() -> None:
    statement = analyze_script(ATOMIC + ";")[0]
    assert statement.understood and statement.kind is Action.CREATE_FUNCTION
    assert [(lock.relation, lock.mode) for lock in statement.locks] == [
        ("orders", LockMode.ACCESS_SHARE)]


# -- lock sets the text does not show -------------------------------------------------------

SCHEMA = """
CREATE SCHEMA app;
CREATE TYPE mood AS ENUM ('sad', 'ok');
CREATE TABLE people (id int PRIMARY KEY, mood mood);
CREATE TABLE app.jobs (id int PRIMARY KEY);
CREATE TABLE runs (id int, job_id int REFERENCES app.jobs (id));
"""


def _lint(sql: str) -> list[tuple[str, list[str], list[tuple[str, str]]]]:
    catalog = catalog_from_script(SCHEMA)
    return [(r.statement.sql, [f.rule for f in r.findings],
             [(lock.relation, lock.mode.pg_name) for lock in r.statement.locks])
            for r in lint_script("SET lock_timeout = '1s';\n" + sql, catalog=catalog)][1:]


def test_drop_cascade_names_what_it_knows_and_says_the_rest_is_unknown() -> None:
    (_, rules, locks), = _lint("DROP TYPE mood CASCADE;")
    assert rules == ["drop-cascade"]
    assert locks == [("people", "AccessExclusiveLock")]
    (_, rules, locks), = _lint("DROP SCHEMA app CASCADE;")
    assert rules == ["drop-cascade"]
    assert locks == [("app.jobs", "AccessExclusiveLock"), ("runs", "AccessExclusiveLock")]
    for sql in ("DROP EXTENSION hstore CASCADE;", "DROP OWNED BY app_owner;",
                "REASSIGN OWNED BY app_owner TO admin;", "DROP FUNCTION f(int) CASCADE;",
                "DROP OPERATOR === (int, int) CASCADE;", "DROP SERVER s CASCADE;"):
        (_, rules, _locks), = _lint(sql)
        assert rules == ["drop-cascade"], sql
    statement = analyze_statement("DROP TYPE mood CASCADE")
    assert statement.understood and statement.unknown_locks
    assert "not known from the text" in statement.unknown_locks


def test_drop_without_cascade_takes_no_lock_and_says_nothing() -> None:
    for sql in ("DROP TYPE mood;", "DROP SCHEMA app;", "DROP FUNCTION f(int);"):
        (_, rules, locks), = _lint(sql)
        assert (rules, locks) == ([], []), sql


def test_execute_takes_the_locks_of_the_statement_prepared_before_it() -> None:
    results = _lint("PREPARE q (int) AS DELETE FROM app.jobs WHERE id = $1;\nEXECUTE q (1);")
    (prepare, prepare_rules, prepare_locks), (execute, rules, locks) = results
    assert prepare_locks == [("app.jobs", "RowExclusiveLock")] and not prepare_rules
    assert rules == [] and locks == [("app.jobs", "RowExclusiveLock"),
                                     ("runs", "RowShareLock")]
    (_, rules, locks), = _lint("EXECUTE unseen (1);")
    assert rules == ["opaque-statement"] and locks == []


@pytest.mark.parametrize("sql", [
    "CALL archive(1)",
    "EXECUTE unseen",
    "CREATE SUBSCRIPTION s CONNECTION 'host=p' PUBLICATION p",
    "ALTER SUBSCRIPTION s REFRESH PUBLICATION",
])
def test_opaque_statements_follow_the_unparsed_policy(sql: str) -> None:
    facts = SessionFacts(18, False)
    refused = decide(sql, facts, Policy())
    assert refused.action is RuleAction.REFUSE
    assert [f.rule for f in refused.deciding] == ["opaque-statement"]
    assert decide(sql, facts, Policy(unparsed_ddl="warn")).action is RuleAction.WARN
    assert decide(sql, facts, Policy(unparsed_ddl="warn",
                                     actions={"opaque-statement": "refuse"})).action \
        is RuleAction.REFUSE


def test_drop_cascade_is_refused_by_default() -> None:
    decision = decide("DROP TYPE mood CASCADE", SessionFacts(18, True), Policy())
    assert decision.action is RuleAction.REFUSE
    assert [f.rule for f in decision.deciding] == ["drop-cascade"]


@pytest.mark.parametrize(("sql", "transactional", "unknown"), [
    ("CREATE SUBSCRIPTION s CONNECTION 'host=p' PUBLICATION p", False, True),
    ("CREATE SUBSCRIPTION s CONNECTION 'host=p' PUBLICATION p WITH (create_slot = false)",
     True, True),
    ("CREATE SUBSCRIPTION s CONNECTION 'host=p' PUBLICATION p WITH (connect = false)",
     True, False),
    ("ALTER SUBSCRIPTION s REFRESH PUBLICATION", False, True),
    ("ALTER SUBSCRIPTION s SET PUBLICATION p", False, True),
    ("ALTER SUBSCRIPTION s SET PUBLICATION p WITH (refresh = false)", True, False),
    ("ALTER SUBSCRIPTION s ENABLE", True, False),
    ("DROP SUBSCRIPTION s", False, False),  # it drops its replication slot
])
def test_subscriptions(sql: str, transactional: bool, unknown: bool) -> None:
    statement = analyze_statement(sql)
    assert statement.understood and not statement.locks
    assert statement.transactional is transactional
    assert bool(statement.unknown_locks) is unknown


@pytest.mark.parametrize(("script", "transactional"), [
    ("CREATE SUBSCRIPTION s CONNECTION 'host=p' PUBLICATION p "
     "WITH (connect = false, slot_name = NONE)", True),
    ("CREATE SUBSCRIPTION s CONNECTION 'host=p' PUBLICATION p WITH (connect = false)", False),
    ("ALTER SUBSCRIPTION s DISABLE; ALTER SUBSCRIPTION s SET (slot_name = NONE)", True),
    ("ALTER SUBSCRIPTION s SET (slot_name = NONE); ALTER SUBSCRIPTION s SET (slot_name = 'x')",
     False),
    ("ALTER SUBSCRIPTION s SET (slot_name = NONE); DROP SUBSCRIPTION s; "
     "CREATE SUBSCRIPTION s CONNECTION 'host=p' PUBLICATION p", False),
])
def test_a_subscription_without_a_slot_drops_in_a_transaction(script: str,
                                                              transactional: bool) -> None:
    drop = analyze_script(f"{script};\nDROP SUBSCRIPTION s;")[-1]
    assert drop.transactional is transactional


# -- what is left unread in PostgreSQL's regression scripts ------------------------------------

@pytest.mark.skipif(not REGRESS.is_dir(), reason="PostgreSQL's regression scripts not here")
def test_regression_scripts_leave_only_invalid_sql_unread() -> None:
    """83 statements other than DML stay unread (benchmarks/bench_coverage.py lists them):
    psql variables (``:name``), inline COPY data, deliberately broken SQL, DO blocks with
    dynamic SQL. None of them is a command safeddl does not know."""
    unread = []
    for path in sorted(REGRESS.glob("*.sql")):
        for statement in analyze_script(path.read_text(encoding="utf-8", errors="replace")):
            if not statement.understood and not statement.sql.startswith("\\"):
                unread.append((path.name, statement.sql, statement.reason or ""))
    for name, sql, reason in unread:
        assert "runs code whose statements" not in reason, (name, sql)
        assert "CASCADE also drops" not in reason, (name, sql)
        assert not sql.upper().startswith(("CALL", "EXECUTE", "IMPORT", "ALTER SUBSCRIPTION",
                                           "DROP SUBSCRIPTION")), (name, sql)
        if sql.upper().startswith("DO"):
            assert "EXECUTE" in reason or "DOBODY" in reason, (name, sql, reason)
    assert len([u for u in unread if not u[1].lstrip().upper().startswith(
        ("SELECT", "WITH", "INSERT", "UPDATE", "DELETE", "MERGE", "VALUES", "TABLE", "(")
    )]) <= 83
