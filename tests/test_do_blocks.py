"""DO blocks: the static SQL a PL/pgSQL block may run is analysed (the union over its
control flow); dynamic SQL keeps it unreadable. Pure: checked on servers by the lock
corpus (tests/corpus/statements.sql, "DO blocks")."""

from __future__ import annotations

import pytest

from safeddl.analysis import analyze_statement
from safeddl.sql.plpgsql import read_block


def locks(sql: str) -> dict[str, str]:
    statement = analyze_statement(sql)
    assert statement.understood, statement.reason
    return {lock.relation: lock.mode.pg_name for lock in statement.locks}


def test_static_statements_in_order() -> None:
    body = """
    <<outer>>
    DECLARE
        n integer := 0;
        r record;
    BEGIN
        SELECT count(*) INTO STRICT n FROM a WHERE x = 1;
        INSERT INTO b (x) VALUES (n) RETURNING id INTO n;
        IF n > (SELECT max(x) FROM c) THEN
            UPDATE d SET x = 1;
        ELSIF EXISTS (SELECT 1 FROM e) THEN
            PERFORM f();
        ELSE
            NULL;
        END IF;
        FOR r IN SELECT * FROM g LOOP
            DELETE FROM h WHERE id = r.id;
        END LOOP;
        n := (SELECT count(*) FROM i);
    EXCEPTION WHEN others THEN
        RAISE NOTICE 'x';
    END outer
    """
    assert read_block(body)[0] == [
        "SELECT count(*) FROM a WHERE x = 1",
        "INSERT INTO b (x) VALUES (n) RETURNING id",
        "SELECT n > (SELECT max(x) FROM c)",
        "UPDATE d SET x = 1",
        "SELECT EXISTS (SELECT 1 FROM e)",
        "SELECT f()",
        "SELECT * FROM g",
        "DELETE FROM h WHERE id = r.id",
        "SELECT (SELECT count(*) FROM i)",
    ]


def test_do_block_locks_are_the_union_of_its_statements() -> None:
    sql = """DO $$
    BEGIN
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint WHERE conname = 'k') THEN
            ALTER TABLE orders ADD CONSTRAINT k CHECK (total > 0) NOT VALID;
        END IF;
        UPDATE accounts SET flag = true WHERE id = 1;
    END $$"""
    assert locks(sql) == {"orders": "AccessExclusiveLock", "accounts": "RowExclusiveLock"}


@pytest.mark.parametrize("sql", [
    "DO $$ BEGIN EXECUTE 'DROP TABLE ' || 'orders'; END $$",
    "DO $$ BEGIN CALL cleanup(); END $$",
    "DO $$ DECLARE r record; BEGIN FOR r IN EXECUTE 'SELECT 1' LOOP NULL; END LOOP; END $$",
    "DO LANGUAGE plpython3u $$ plpy.execute('DROP TABLE orders') $$",
    "DO $$ BEGIN frobnicate the table; END $$",
])
def test_dynamic_or_unknown_code_stays_unreadable(sql: str) -> None:
    statement = analyze_statement(sql)
    assert not statement.understood


def test_rules_judge_the_statement_a_do_block_runs() -> None:
    from safeddl.rules import lint_script

    sql = ("SET lock_timeout = '1s';\n"
           "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_class WHERE relname = 'o_x') THEN "
           "CREATE INDEX o_x ON orders (x); END IF; END $$;\n"
           "DO $$ BEGIN TRUNCATE orders; END $$;\n")
    first, index, truncate = lint_script(sql)
    assert "create-index" in {f.rule for f in index.findings}
    assert "truncate" in {f.rule for f in truncate.findings}
    # two such statements in one block: not read (refused at runtime, as before)
    two = analyze_statement("DO $$ BEGIN TRUNCATE a; TRUNCATE b; END $$")
    assert not two.understood


@pytest.mark.parametrize(("sql", "transactional"), [
    ("DO $$ BEGIN UPDATE accounts SET flag = true; COMMIT; END $$", False),
    ("DO $$ BEGIN UPDATE accounts SET flag = true; ROLLBACK; END $$", False),
    # in a branch: it may COMMIT, which is enough to refuse a transaction block
    ("DO $$ BEGIN UPDATE accounts SET flag = true; IF now() IS NULL THEN COMMIT; END IF; "
     "END $$", False),
    # a kind judged as a whole (TRUNCATE) keeps its kind, and still may not run in one
    ("DO $$ BEGIN TRUNCATE accounts; COMMIT; END $$", False),
    ("DO $$ BEGIN TRUNCATE accounts; END $$", True),
    # the word in a literal, a comment or an identifier is not transaction control
    ("DO $$ DECLARE commit_count int; BEGIN RAISE NOTICE 'COMMIT'; -- ROLLBACK\n"
     "UPDATE accounts SET flag = true; END $$", True),
])
def test_a_do_block_that_may_commit_cannot_run_in_a_transaction_block(
        sql: str, transactional: bool) -> None:
    statement = analyze_statement(sql)
    assert statement.understood, statement.reason
    assert statement.transactional is transactional
    assert {lock.relation for lock in statement.locks} == {"accounts"}
    if "TRUNCATE" in sql:
        assert statement.kind.value == "truncate"


@pytest.mark.parametrize(("sql", "transactional"), [
    ("DO $$ BEGIN EXECUTE 'UPDATE accounts SET flag = true'; COMMIT; END $$", False),
    ("DO $$ BEGIN EXECUTE 'UPDATE accounts SET flag = true'; END $$", True),
    ("CREATE PROCEDURE p() LANGUAGE plpgsql AS $$ BEGIN EXECUTE 'UPDATE accounts SET flag "
     "= true'; COMMIT; END $$;\nCALL p()", False),
    ("CREATE PROCEDURE p() LANGUAGE plpgsql AS $$ BEGIN EXECUTE 'UPDATE accounts SET flag "
     "= true'; END $$;\nCALL p()", True),
])
def test_an_unreadable_body_that_may_commit_still_runs_outside_a_transaction(
        sql: str, transactional: bool) -> None:
    # dynamic SQL leaves its locks unknown, not whether it may COMMIT: an opted-out DO or
    # CALL must not be wrapped in a transaction block the server then refuses
    from safeddl.analysis import analyze_script

    statement = analyze_script(sql)[-1]
    assert "EXECUTE in a plpgsql body" in repr(statement)  # (its locks are not known)
    assert statement.transactional is transactional


def test_a_do_block_that_commits_inside_a_transaction_is_reported() -> None:
    from safeddl.rules import lint_script

    [outside] = lint_script("DO $$ BEGIN UPDATE accounts SET flag = true; COMMIT; END $$;")
    assert "concurrently-in-transaction" not in {f.rule for f in outside.findings}
    _begin, inside, _commit = lint_script(
        "BEGIN;\nDO $$ BEGIN UPDATE accounts SET flag = true; COMMIT; END $$;\nCOMMIT;")
    assert "concurrently-in-transaction" in {f.rule for f in inside.findings}



def _call(script: str) -> tuple[dict[str, str], bool, str | None]:
    from safeddl.analysis import analyze_script

    call = analyze_script(script)[-1]
    assert call.sql.startswith("CALL"), call.sql
    return ({lock.relation: lock.mode.pg_name for lock in call.locks}, call.transactional,
            call.unknown_locks)


@pytest.mark.parametrize("create", [
    "CREATE PROCEDURE p(a int) LANGUAGE sql AS $$ TRUNCATE t $$",
    "CREATE PROCEDURE p(a int) LANGUAGE sql BEGIN ATOMIC TRUNCATE t; END",
    "CREATE PROCEDURE p(a int) LANGUAGE plpgsql AS $$ BEGIN IF a > 0 THEN TRUNCATE t; "
    "END IF; END $$",
])
def test_a_call_of_a_procedure_the_script_created_takes_its_bodys_locks(create: str) -> None:
    assert _call(f"{create};\nCALL p(1);") == ({"t": "AccessExclusiveLock"}, True, None)
    # created elsewhere: unknown
    assert _call("CALL p(1);")[2] is not None


def test_a_call_of_a_procedure_that_commits_cannot_run_in_a_transaction_block() -> None:
    found, transactional, unknown = _call(
        "CREATE PROCEDURE p() LANGUAGE plpgsql AS $$ BEGIN UPDATE t SET x = 1; COMMIT; "
        "END $$;\nCALL p();")
    assert (found, transactional, unknown) == ({"t": "RowExclusiveLock"}, False, None)


@pytest.mark.parametrize(("script", "why"), [
    ("CREATE PROCEDURE p() LANGUAGE plpgsql AS $$ BEGIN EXECUTE 'TRUNCATE t'; END $$;"
     "CALL p();", "EXECUTE in a plpgsql body"),
    ("CREATE PROCEDURE p(a int) LANGUAGE sql AS 'TRUNCATE t';"
     "CREATE PROCEDURE p(a text) LANGUAGE sql AS 'SELECT 1';"
     "CALL p(1);", "creates 2 procedures of that name"),
    ("CREATE PROCEDURE p() LANGUAGE plpython3u AS 'pass'; CALL p();", "LANGUAGE plpython3u"),
    ("CREATE PROCEDURE p() LANGUAGE sql AS 'CALL q()'; CALL p();", "or a CALL or EXECUTE"),
])
def test_a_call_whose_body_cannot_be_known_says_why(script: str, why: str) -> None:
    found, _transactional, unknown = _call(script)
    assert unknown is not None and why in unknown, unknown


def test_create_or_replace_of_the_same_procedure_replaces_its_body() -> None:
    found, _transactional, unknown = _call(
        "CREATE PROCEDURE p() LANGUAGE sql AS 'TRUNCATE t';\n"
        "CREATE OR REPLACE PROCEDURE P(  ) LANGUAGE sql AS 'LOCK TABLE u IN SHARE MODE';\n"
        "CALL public.p();")
    assert (found, unknown) == ({"u": "ShareLock"}, None)


def test_the_rules_of_a_procedure_s_statements_apply_to_its_call() -> None:
    """CALL p() where p truncates: judged as the TRUNCATE (and never rewritten: the
    procedure's other statements would be lost)."""
    from safeddl.analysis import analyze_script
    from safeddl.analysis.catalog import Catalog
    from safeddl.rules.engine import lint_script
    from safeddl.runtime.decision import decide
    from safeddl.runtime.plan import SessionFacts
    from safeddl.runtime.policy import Policy, RuleAction

    create = ("CREATE PROCEDURE reload() LANGUAGE plpgsql AS $$ BEGIN TRUNCATE t; "
              "INSERT INTO t SELECT * FROM staging; END $$")
    results = lint_script(f"CREATE TABLE staging (x int);\n{create};\nCALL reload();")
    assert "truncate" in [f.rule for f in results[-1].findings]
    catalog = Catalog()
    analyze_script(f"CREATE TABLE t (x int); {create};", catalog=catalog)
    for relation in catalog.relations.values():
        relation.new, relation.rows = False, 10  # small: a TRUNCATE alone is rewritten
    decision = decide("CALL reload()", SessionFacts(18, True, catalog, live=True), Policy())
    assert decision.plan is None and decision.action is not RuleAction.ALLOW
    assert decision.statements[0].locks[0].relation == "t"


def test_a_block_nested_in_a_loop_may_declare() -> None:
    body = """
    BEGIN
        FOR i IN 1..3 LOOP
            DECLARE
                n integer := i;
                r record;
            BEGIN
                UPDATE a SET x = n;
            END;
        END LOOP;
        <<inner>>
        DECLARE m integer;
        BEGIN
            DELETE FROM b WHERE x = m;
        END;
    END
    """
    assert read_block(body)[0] == ["UPDATE a SET x = n", "DELETE FROM b WHERE x = m"]
