"""The analysis never raises, whatever the text: it says what it did not understand.

Three kinds of input: arbitrary text, a soup of SQL keywords, identifiers and
punctuation, and real migration statements mangled (truncated, characters deleted
or duplicated, quotes and ``$$`` left open).
"""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from safeddl.analysis import Action, Statement, analyze_script, analyze_statement
from safeddl.cli.main import main
from safeddl.rules import BY_ID, Result, lint_script
from safeddl.sql import read

UNPARSED_RULE = "unparsed-statement"

# SAFEDDL_FUZZ_EXAMPLES=5000 for a longer hunt; the default keeps the file near 10 s.
EXAMPLES = int(os.environ.get("SAFEDDL_FUZZ_EXAMPLES", "400"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=max(EXAMPLES // 6, 10), deadline=None,
               suppress_health_check=[HealthCheck.too_slow])

REAL_STATEMENTS = [
    ("CREATE TABLE shipments (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
     "order_id bigint NOT NULL REFERENCES orders (id), note text DEFAULT 'n/a')"),
    ("ALTER TABLE orders ADD CONSTRAINT orders_customer_fk FOREIGN KEY (customer_id) "
     "REFERENCES customers (id) NOT VALID"),
    "ALTER TABLE orders VALIDATE CONSTRAINT orders_customer_fk",
    ("CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS orders_ref_idx ON public.orders "
     "USING btree (lower(ref)) WHERE deleted_at IS NULL"),
    "ALTER TABLE orders ALTER COLUMN status SET NOT NULL",
    "ALTER TABLE orders ADD COLUMN public_id uuid DEFAULT gen_random_uuid()",
    "ALTER TABLE orders ALTER COLUMN total TYPE numeric(12, 2) USING total::numeric",
    'TRUNCATE TABLE ONLY "Daily Report", audit.events RESTART IDENTITY CASCADE',
    "UPDATE orders o SET status = 'shipped' FROM shipments s WHERE s.order_id = o.id",
    ("INSERT INTO audit.events (kind, payload) SELECT 'x', to_jsonb(o) FROM orders o "
     "ON CONFLICT DO NOTHING"),
    ("WITH moved AS (DELETE FROM cart_items WHERE added_at < now() - interval '1 day' "
     "RETURNING *) INSERT INTO old_cart_items SELECT * FROM moved"),
    "SELECT * FROM orders WHERE id = $1 FOR UPDATE SKIP LOCKED",
    ("CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
     "NEW.updated_at := now(); RETURN NEW; END $$"),
    "CREATE TRIGGER orders_touch BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION touch()",
    "DO $body$ BEGIN EXECUTE 'TRUNCATE t'; END $body$",
    "LOCK TABLE orders, order_items IN SHARE ROW EXCLUSIVE MODE NOWAIT",
    "REINDEX INDEX CONCURRENTLY orders_ref_idx",
    "VACUUM (FULL, ANALYZE) orders",
    "REFRESH MATERIALIZED VIEW CONCURRENTLY sales_by_day",
    ("ALTER TABLE measurements ATTACH PARTITION measurements_2024 "
     "FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')"),
    "ALTER TABLE measurements DETACH PARTITION measurements_2019 CONCURRENTLY",
    "COPY orders (id, status) FROM STDIN WITH (FORMAT csv)",
    ("CREATE MATERIALIZED VIEW sales_by_day AS SELECT date_trunc('day', created_at) d, "
     "sum(total) FROM orders GROUP BY 1 WITH NO DATA"),
    "DROP INDEX CONCURRENTLY IF EXISTS orders_ref_idx",
    "ALTER TABLE orders RENAME COLUMN total TO total_amount",
    "COMMENT ON COLUMN orders.status IS 'it''s the status; see docs'",
    "SET LOCAL lock_timeout = '2s'",
    "BEGIN ISOLATION LEVEL SERIALIZABLE",
    "EXPLAIN ANALYZE SELECT count(*) FROM orders",
    ("MERGE INTO stock s USING incoming i ON s.sku = i.sku WHEN MATCHED THEN UPDATE SET "
     "qty = s.qty + i.qty WHEN NOT MATCHED THEN INSERT VALUES (i.sku, i.qty)"),
]

KEYWORDS = [
    "SELECT", "FROM", "WHERE", "INSERT", "INTO", "VALUES", "UPDATE", "SET", "DELETE",
    "ALTER", "TABLE", "ADD", "DROP", "COLUMN", "CONSTRAINT", "FOREIGN", "KEY", "PRIMARY",
    "REFERENCES", "NOT", "NULL", "VALID", "VALIDATE", "DEFAULT", "CREATE", "UNIQUE",
    "INDEX", "CONCURRENTLY", "ON", "USING", "IF", "EXISTS", "TRUNCATE", "ONLY", "CASCADE",
    "LOCK", "IN", "MODE", "SHARE", "ROW", "EXCLUSIVE", "ACCESS", "REINDEX", "VACUUM",
    "FULL", "CLUSTER", "REFRESH", "MATERIALIZED", "VIEW", "AS", "WITH", "DATA", "TYPE",
    "ATTACH", "DETACH", "PARTITION", "OF", "FOR", "TO", "RENAME", "BEGIN", "COMMIT",
    "ROLLBACK", "LOCAL", "COPY", "STDIN", "EXPLAIN", "ANALYZE", "MERGE", "DO", "TRIGGER",
    "EXECUTE", "FUNCTION", "CHECK", "IDENTITY", "GENERATED", "ALWAYS", "STORED", "LOGGED",
    "UNLOGGED", "TABLESPACE", "OWNER", "SCHEMA", "COMMENT", "IS", "RETURNING", "JOIN",
    "AND", "OR", "interval", "now()", "gen_random_uuid()", "random()", "nextval('s')",
]
IDENTIFIERS = ["orders", "public.orders", '"Order Items"', "t", "customer_id", "id", "i",
               "a.b.c", '"x""y"', "_t1", "ÿ", "select_"]
PUNCTUATION = ["(", ")", ",", ";", ".", "=", "::", "*", "'x'", "''", "'", '"', "$$", "$1",
               "$tag$", "--", "/*", "*/", "1", "2.5", "-", "[", "]", "E'\\n'", "\n", "\\"]
SOUP = st.lists(st.sampled_from(KEYWORDS + IDENTIFIERS + PUNCTUATION), max_size=30).map(
    " ".join)
OPEN_QUOTES = ["'", '"', "$$", "$q$", "/*", "E'"]


# Inputs that crash the analysis today (reported to the analysis owners). The random
# tests step around them so they stay deterministic; test_known_crashes tracks them.
# Inputs that once crashed the analysis or hid the statements before them.
ONCE_CRASHED = [
    "ALTER TABLE measurements ATTACH PARTITION",
    "ALTER TABLE measurements DETACH PARTITION",
    "ALTER TABLE m DETACH PARTITION CONCURRENTLY",
    "ALTER TABLE m ATTACH PARTITION FOR VALUES IN (1)",
    "COMMENT ON COLUMN orders",
    "ALTER TABLE m ADD COLUMN",
    "ALTER TABLE m ADD CONSTRAINT",
    "ALTER TABLE m RENAME TO",
    "ALTER TABLE m ADD FOREIGN KEY (a) REFERENCES",
    "TRUNCATE",
    "LOCK TABLE",
]


@pytest.mark.parametrize("text", ONCE_CRASHED)
def test_incomplete_statements_are_not_understood(text: str) -> None:
    check_everything(text)
    (statement,) = analyze_script(text)
    assert not statement.understood
    assert statement.reason and "index out of range" not in statement.reason


def test_statements_before_a_tokenize_error_are_still_analysed() -> None:
    first, second = analyze_script("TRUNCATE t;\nSELECT 'never closed;\n")
    assert first.understood and first.kind is Action.TRUNCATE and first.line == 1
    assert not second.understood and second.line == 2


def test_lint_still_fails_on_unsafe_statements_before_an_unclosed_quote() -> None:
    results = lint_script("SET lock_timeout = '1s';\nTRUNCATE orders;\n"
                          "CREATE INDEX i ON orders (a);\nSELECT 'oops;")
    assert [r.statement.line for r in results] == [1, 2, 3, 4]
    rules = {f.rule for r in results for f in r.findings}
    assert {"truncate", "create-index", "unparsed-statement"} <= rules


NOT_UNDERSTOOD = [
    "DO $$ BEGIN EXECUTE 'TRUNCATE t'; END $$",
    "FROBNICATE orders",
    "SELECT 'never closed",
    "SELECT $$ never closed",
    'SELECT "never closed',
    "ALTER TABLE",
    "CREATE INDEX ON",
]


@pytest.mark.parametrize("text", NOT_UNDERSTOOD)
def test_not_understood_says_why(text: str) -> None:
    (statement,) = analyze_script(text)
    assert not statement.understood
    assert statement.kind is Action.UNPARSED
    assert statement.reason and statement.reason.strip()
    (result,) = lint_script(text)
    assert not result.statement.understood and result.statement.reason
    if UNPARSED_RULE in BY_ID:
        assert UNPARSED_RULE in {f.rule for f in result.findings}


def check_statement(statement: Statement, script: str) -> None:
    """What every statement from any text satisfies."""
    assert 1 <= statement.line <= script.count("\n") + 1
    assert statement.sql in script
    if not statement.understood:
        assert statement.kind is Action.UNPARSED
        assert isinstance(statement.reason, str) and statement.reason.strip()
        assert statement.locks == ()
    for lock in statement.locks:
        json.dumps(lock.as_json())


def check_results(results: list[Result], script: str) -> None:
    for result in results:
        check_statement(result.statement, script)
        for finding in result.findings:
            json.dumps(finding.as_json())
        if not result.statement.understood and UNPARSED_RULE in BY_ID:
            assert UNPARSED_RULE in {f.rule for f in result.findings} | {
                i.rule for i in result.ignored}


def explore(script: str) -> None:
    check_everything(script)


def check_everything(script: str) -> None:
    for statement in analyze_script(script):
        check_statement(statement, script)
    check_results(lint_script(script), script)
    check_results(lint_script(script, version=11, assume_in_transaction=True), script)
    syntax = read(script)
    assert syntax.steps
    assert syntax.understood or (syntax.error or "").strip()
    analyze_statement(script, version=12)


@FUZZ
@given(st.text(max_size=200))
def test_random_text_never_raises(script: str) -> None:
    explore(script)


@FUZZ
@given(st.lists(SOUP, max_size=4).map(";\n".join))
def test_token_soup_never_raises(script: str) -> None:
    explore(script)


@st.composite
def mangled(draw: st.DrawFn) -> str:
    """A real statement, cut, with characters deleted or duplicated."""
    text = draw(st.sampled_from(REAL_STATEMENTS))
    for _ in range(draw(st.integers(1, 3))):
        if not text:
            break
        where = draw(st.integers(0, len(text) - 1))
        how = draw(st.sampled_from(["truncate", "delete", "duplicate", "insert"]))
        if how == "truncate":
            text = text[:where]
        elif how == "delete":
            text = text[:where] + text[where + draw(st.integers(1, 5)):]
        elif how == "duplicate":
            text = text[:where] + text[where] * draw(st.integers(2, 4)) + text[where + 1:]
        else:
            text = text[:where] + draw(st.sampled_from(PUNCTUATION)) + text[where:]
    return text


@FUZZ
@given(mangled(), st.sampled_from(REAL_STATEMENTS))
def test_mangled_statements_never_raise(broken: str, good: str) -> None:
    explore(broken)
    explore(f"{good};\n{broken};\n{good};")


def left_open(statement: str, quote: str, where: int) -> str:
    """The statement without quotes of its own, and one quote opened at ``where``."""
    clean = statement.translate(str.maketrans("", "", "'\"$"))
    where = min(where, len(clean))
    return f"{clean[:where]} {quote} {clean[where:]}"


@FUZZ
@given(st.sampled_from(REAL_STATEMENTS), st.sampled_from(OPEN_QUOTES), st.integers(0, 300))
def test_unbalanced_quotes_are_not_understood(statement: str, quote: str, where: int) -> None:
    text = left_open(statement, quote, where)
    explore(text)
    # What precedes the last ';' before the open quote is split off and read as
    # usual; the part with the open quote is never taken as understood.
    assert not analyze_script(text)[-1].understood
    assert not analyze_statement(text).understood
    assert not read(text).understood
    statements = analyze_script(f"SELECT 1;\n{text};\nSELECT 2;")
    explore(f"SELECT 1;\n{text};\nSELECT 2;")
    assert not statements[-1].understood


@FEW
@given(st.one_of(st.text(max_size=80), SOUP, mangled()))
def test_cli_never_crashes(script: str) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["analyze", "--format", "json", "-"], input=script)
    assert result.exit_code == 0, result.output
    assert isinstance(json.loads(result.stdout), list)
    for output in ("text", "github", "sarif"):
        linted = runner.invoke(main, ["lint", "--format", output, "-"], input=script)
        assert linted.exit_code in (0, 1), linted.output
        assert linted.exception is None or isinstance(linted.exception, SystemExit)
