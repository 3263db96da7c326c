"""DO blocks: the static SQL a PL/pgSQL block may run is analysed (the union over its
control flow); dynamic SQL keeps it unreadable. Pure: checked on servers by the lock
corpus (tests/corpus/statements.sql, "DO blocks")."""

from __future__ import annotations

import pytest

from safeddl.analysis import analyze_statement
from safeddl.sql.plpgsql import static_statements


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
    assert static_statements(body) == [
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

