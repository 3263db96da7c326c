"""The SQL reader: splitting, names, and which forms sqlglot leaves as Command."""

from __future__ import annotations

import pytest

from safeddl.analysis import Action
from safeddl.sql import qualified_name, quote_ident, read, split_script, sqlglot_form


def test_split_keeps_semicolons_inside_strings_dollar_quotes_and_identifiers() -> None:
    script = """-- header
CREATE FUNCTION f() RETURNS trigger AS $body$ BEGIN x := 'a;b'; RETURN NEW; END $body$
LANGUAGE plpgsql;
/* block; comment */ SELECT 'x;y', $$a;b$$, E'it\\'s;' FROM "T;x";;
select 1"""
    parts = split_script(script)
    assert [p.line for p in parts] == [2, 4, 5]
    assert parts[0].text.endswith("LANGUAGE plpgsql")
    assert parts[1].text == "SELECT 'x;y', $$a;b$$, E'it\\'s;' FROM \"T;x\""
    assert "block; comment" in parts[1].preamble
    assert parts[2].text == "select 1"


def test_split_never_raises_on_unterminated_input() -> None:
    [only] = split_script("select 'abc")
    assert only.error


@pytest.mark.parametrize(
    ("written", "key"),
    [
        ("Orders", "public.orders"),
        ('"Orders"', "public.Orders"),
        ('app."Orders"', "app.Orders"),
        ("App.Items", "app.items"),
        ('"we""ird"', 'public.we"ird'),
    ],
)
def test_qualified_name_folds_like_postgres(written: str, key: str) -> None:
    assert qualified_name(written) == key


@pytest.mark.parametrize(
    ("name", "quoted"),
    [("orders", "orders"), ("Orders", '"Orders"'), ("order", '"order"'),
     ('a"b', '"a""b"'), ("select", '"select"'), ("t_1", "t_1")],
)
def test_quote_ident(name: str, quoted: str) -> None:
    assert quote_ident(name) == quoted


def test_quote_ident_refuses_empty() -> None:
    with pytest.raises(ValueError):
        quote_ident("")


# Which statement forms sqlglot returns as a generic Command (or cannot parse).
# safeddl reads DDL from tokens whatever the form; this pin makes a sqlglot
# upgrade that changes these visible in review instead of silent.
COMMAND_FORMS = {
    "ALTER TABLE t VALIDATE CONSTRAINT c": "Command",
    "ALTER TABLE t ADD CONSTRAINT u UNIQUE USING INDEX i": "Command",
    "ALTER TABLE p ATTACH PARTITION c FOR VALUES FROM (1) TO (2)": "Command",
    "ALTER TABLE p DETACH PARTITION c CONCURRENTLY": "Command",
    "ALTER TABLE t ALTER COLUMN c SET STATISTICS 100": "Command",
    "ALTER TABLE t ENABLE ROW LEVEL SECURITY": "Command",
    "ALTER TABLE t REPLICA IDENTITY FULL": "Command",
    "ALTER TABLE t OWNER TO bob": "Command",
    "ALTER TABLE t SET SCHEMA app": "Command",
    "ALTER TABLE t DISABLE TRIGGER ALL": "Command",
    "ALTER TYPE e ADD VALUE 'x'": "Command",
    "ALTER SEQUENCE s RESTART": "Command",
    "CREATE POLICY p ON t USING (true)": "Command",
    "CREATE STATISTICS s ON a, b FROM t": "Command",
    "VACUUM FULL t": "Command",
    "REINDEX INDEX CONCURRENTLY i": "Command",
    "REFRESH MATERIALIZED VIEW CONCURRENTLY mv": "Command",
    "LOCK TABLE t IN SHARE MODE": "Command",
    "GRANT SELECT ON t TO bob": "Grant",
    "GRANT SELECT, UPDATE ON TABLE t, u TO bob": "Command",
    "DO $$ BEGIN END $$": "Command",
    "CLUSTER t USING i": "ParseError",
    "CREATE INDEX i ON ONLY t (a)": "ParseError",
    "DROP INDEX CONCURRENTLY IF EXISTS a, b": "ParseError",
    "ALTER TABLE t ADD COLUMN c int DEFAULT 0": "Alter",
    "ALTER TABLE t ALTER COLUMN c SET NOT NULL": "Alter",
    "ALTER TABLE t ADD CONSTRAINT f FOREIGN KEY (a) REFERENCES u (id) NOT VALID": "Alter",
    "ALTER TABLE t SET LOGGED": "Alter",
    "CREATE INDEX CONCURRENTLY i ON t (a)": "Create",
    "TRUNCATE a, b": "TruncateTable",
    "SELECT * FROM t FOR UPDATE SKIP LOCKED": "Select",
    "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE": "Merge",
    "COPY t FROM STDIN": "Copy",
}


@pytest.mark.parametrize(("sql", "form"), sorted(COMMAND_FORMS.items()))
def test_sqlglot_forms_are_pinned(sql: str, form: str) -> None:
    assert sqlglot_form(sql) == form, (
        "sqlglot changed how it returns this statement; check safeddl.sql still reads it "
        "the same way (tests/test_analysis.py and the lock corpus), then update the pin"
    )


@pytest.mark.parametrize("sql", sorted(COMMAND_FORMS))
def test_every_pinned_form_is_understood(sql: str) -> None:
    syntax = read(sql)
    assert syntax.understood, syntax.error  # (DO: its static SQL, none here)


def test_tokens_read_commands_word_by_word() -> None:
    # sqlglot turns the rest of LOCK / VACUUM into one string token; safeddl does not.
    [a, b] = read("LOCK TABLE a, app.\"B\" IN SHARE ROW EXCLUSIVE MODE NOWAIT").steps
    assert (a.table, b.table) == ("a", 'app."B"')
    assert a.mode is not None and a.mode.sql_name == "SHARE ROW EXCLUSIVE"
    [full] = read("VACUUM (FULL, ANALYZE) t").steps
    assert full.action is Action.VACUUM_FULL


def test_row_locks_apply_to_the_tables_named_in_of_only() -> None:
    steps = read("SELECT * FROM t a JOIN u ON true WHERE x IN (SELECT 1 FROM w) "
                 "FOR UPDATE OF a").steps
    by_table = {s.table: s.action for s in steps}
    assert by_table == {"t": Action.SELECT_FOR_UPDATE, "u": Action.SELECT, "w": Action.SELECT}


def test_cte_names_are_not_tables() -> None:
    steps = read("WITH d AS (DELETE FROM a RETURNING *) INSERT INTO b SELECT * FROM d").steps
    assert {(s.action, s.table) for s in steps} == {(Action.INSERT, "b"), (Action.DELETE, "a")}
