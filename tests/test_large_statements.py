"""Very large statements (megabytes): the quick reading of where statements end agrees
with the full scan on every text it accepts, a statement hidden behind any quoting is
still found, and nothing of a large text is kept once the decision is made (no
database here; the guard end to end is measured by benchmarks/bench_large_statements.py)."""

from __future__ import annotations

import gc
import tracemalloc

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from safeddl.analysis import Action, analyze_statement
from safeddl.analysis.analyzer import READINGS
from safeddl.runtime.decision import analyse, decide
from safeddl.runtime.plan import SessionFacts
from safeddl.runtime.policy import Policy, RuleAction
from safeddl.sql import LIMITS, read, split_script
from safeddl.sql import scan
from safeddl.sql.scan import Unterminated, scans_remembered, statement_ends

# Pieces of text whose reading differs between quoting contexts.
PIECES = ["'a;b'", "''", "';'", "'it''s'", ";", " ", "\n", "\r", "1", "ab", "e", "E",
          "(", ")", ",", '"x;y"', '"', "'", "$$;$$", "$t$;$t$", "$1", "a$b", "$",
          "-- c;\n", "--", "-", "/* ; */", "/* /* */ ; */", "/*", "*/", "/", "*",
          "E'\\';'", "\\", "ä", "'ä;'", "'--'", "'/*'", "'$$'", "'\"'", '"\'"']

FEW = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def full_scan(text: str) -> list[int] | type[Unterminated]:
    try:
        return scan._statement_ends(text)
    except Unterminated:
        return Unterminated


@FEW
@given(st.lists(st.sampled_from(PIECES), max_size=40))
@example(["E'\\'';'"])  # an escaped quote: one string, then ';', then an open quote
@example(["'a'", "$$';$$", "'b'", ";", "x"])  # a quote in a dollar quote
@example(["'a'", '"\';"', "'b'", ";", "x"])  # a quote in a quoted identifier
@example(["'a'", "-- ';\n", "'b'", ";", "x"])  # a quote in a comment
@example(["'a'", "/* '; */", "'b'", ";", "x"])
def test_the_quick_reading_agrees_with_the_full_scan(pieces: list[str]) -> None:
    text = "".join(pieces)
    quick = scan._quick_ends(text)
    if quick is not None:  # None: left to the full scan
        assert quick == full_scan(text), text


@FEW
@given(st.lists(st.sampled_from(PIECES), max_size=40), st.sampled_from(["", ";", " ;\n ; "]))
def test_large_texts_end_where_the_full_scan_says(pieces: list[str], tail: str) -> None:
    text = "INSERT INTO t VALUES " + "(1, 'x; y')," * 3000 + "".join(pieces) + tail
    assert len(text) > LIMITS.parse_bytes
    expected = full_scan(text)
    with scans_remembered():
        for candidate in (text, text.rstrip(" \t\r\n;")):  # reading strips the tail
            wanted = full_scan(candidate)
            for _ in range(2):  # the second time from what the block remembers
                if wanted is Unterminated:
                    with pytest.raises(Unterminated):
                        statement_ends(candidate)
                else:
                    assert statement_ends(candidate) == wanted
    if expected is not Unterminated:
        assert statement_ends(text) == expected


ROWS = ",".join(f"({i}, 'row {i}; note')" for i in range(5000))  # ~110 KB
HIDDEN = [
    "; TRUNCATE t",
    ", ('x'); TRUNCATE t",
    ", (\"a;b\"); TRUNCATE t",
    ", ($$;$$); TRUNCATE t",
    ", (1) -- ;\n; TRUNCATE t",
    ", (1) /* ; */; TRUNCATE t",
    ", (E'\\';'); TRUNCATE t",
    ", ('--'); TRUNCATE t",
    ";\r\nTRUNCATE t",
]


@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("in_transaction", [False, True])
def test_a_statement_behind_a_large_one_is_found(hidden: str, in_transaction: bool) -> None:
    text = f"INSERT INTO t (id, note) VALUES {ROWS}{hidden}"
    assert len(text) > LIMITS.parse_bytes
    decision = decide(text, SessionFacts(18, in_transaction), Policy())
    # refused, or TRUNCATE rewritten (outside a transaction): never sent as written
    assert decision.action in (RuleAction.REFUSE, RuleAction.REWRITE), hidden
    assert decision.deciding, hidden


@pytest.mark.parametrize("text", [
    f"INSERT INTO t (id, note) VALUES {ROWS}",
    f"INSERT INTO t (id, note) VALUES {ROWS};\n",
    f"INSERT INTO t (id, note) VALUES {ROWS}, ('a -- b', '/* \"x\" $$ */')",
    "DELETE FROM t WHERE id IN (" + ",".join(str(i) for i in range(20000)) + ") AND x <> 'a;b'",
])
def test_large_dml_on_one_table_is_read_by_its_head(text: str) -> None:
    statement = analyze_statement(text)
    assert statement.understood, statement.reason
    assert statement.kind in (Action.INSERT, Action.DELETE)
    assert [lock.relation for lock in statement.locks] == ["t"]
    assert decide(text, SessionFacts(18, True), Policy()).action is RuleAction.ALLOW


@pytest.mark.parametrize("more", [
    ", ((SELECT max(id) FROM other))", ", ((TABLE other))", " RETURNING (SELECT 1 FROM o)",
    " ON CONFLICT (id) DO UPDATE SET note = (SELECT note FROM other LIMIT 1)",
])
def test_large_dml_naming_another_relation_is_not_read_by_its_head(more: str) -> None:
    syntax = read(f"INSERT INTO t (id, note) VALUES {ROWS}{more}")
    assert not syntax.understood and "characters" in (syntax.error or "")


def test_an_unterminated_quote_in_a_large_statement_says_where() -> None:
    text = f"INSERT INTO t (id, note) VALUES {ROWS}, (1, 'open"
    reason = analyze_statement(text).reason or ""
    assert "a quoted string starting at line 1" in reason and "does not end" in reason, reason
    assert decide(text, SessionFacts(18, True), Policy()).action is RuleAction.REFUSE


def test_an_unterminated_quote_after_large_statements_is_its_statement() -> None:
    """In a long script, the unreadable rest starts at its statement (not at the quote),
    and says where the quote opens in it."""
    script = (f"INSERT INTO t (id, note) VALUES {ROWS};\n"
              "ALTER TABLE t\n  ADD COLUMN c text DEFAULT 'x' || 'open")
    assert len(script) > LIMITS.parse_bytes
    *head, tail = split_script(script)
    assert [r.text[:11] for r in head] == ["INSERT INTO"]
    assert tail.text.startswith("ALTER TABLE t") and tail.line == 2
    assert tail.error == ("a quoted string starting at line 2, column 36 of the "
                          "statement does not end")
    decision = decide(script, SessionFacts(18, True), Policy())
    assert decision.action is RuleAction.REFUSE


def test_a_large_text_is_scanned_once_per_decision(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    quick = scan._quick_ends

    def counted(text: str) -> list[int] | None:
        calls.append(len(text))
        return quick(text)

    monkeypatch.setattr(scan, "_quick_ends", counted)
    text = f"INSERT INTO t (id, note) VALUES {ROWS};\n"
    facts = SessionFacts(18, True)
    with scans_remembered():
        analysed = analyse(text, facts)
        decide(text, facts, Policy(), analysed=analysed)
    assert len(calls) == 1
    assert scan._SCANS.get() is None  # nothing remembered after the block


def test_nothing_of_a_large_text_is_kept_after_the_decision() -> None:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for salt in range(3):
            text = ("INSERT INTO t (id, note) VALUES "
                    + ",".join(f"({i}, 'row {i}; {salt}')" for i in range(100_000)))
            assert len(text) > 2_000_000
            decision = decide(text, SessionFacts(18, True), Policy())
            assert decision.action is RuleAction.ALLOW and decision.statement.understood
            analyze_statement(text)
            split_script(text)
            del text, decision
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 1_000_000, kept  # each text is 2.4 MB
    assert all(len(key) < LIMITS.parse_bytes * 4 for key in READINGS)


def test_an_internal_failure_is_logged_once_per_text_and_keeps_no_copy_of_it() -> None:
    from safeddl.runtime import guard

    text = "SELECT '" + "x" * 1_000_000 + "'"
    assert guard._first_failure(text, KeyError("k"))
    assert not guard._first_failure(text, KeyError("k"))
    assert guard._first_failure(text, ValueError("v"))  # another kind of failure
    assert not any(isinstance(part, str) and len(part) > 100
                   for key in guard._failures for part in key)
