"""Every rule has a doc page, generated from its module docstring, whose examples hold:
the `## Bad` example triggers the rule and the `## Good` one does not.

Pure: no database. The examples run against EXAMPLE_SETUP, whose tables count as
existing (as in a real migration against a live schema).
"""

from __future__ import annotations

import importlib
import re
from functools import cache
from pathlib import Path

import pytest

from safeddl.analysis import Catalog, catalog_from_script
from safeddl.rules import BY_ID, DOCS, RULES, Severity, lint_script, render_doc, write_docs
from safeddl.rules.engine import Result

DOCS_DIR = Path(__file__).resolve().parents[1] / "docs" / "rules"
REGENERATE = 'python -c "from safeddl.rules import write_docs; write_docs(\'docs/rules\')"'
VERSION = 18
# Reported for any strong lock in a script without `SET lock_timeout`: expected next to
# the other rules' examples, and checked by its own.
SCRIPT_WIDE = "missing-lock-timeout"

# The tables the doc examples use, as they exist before the migration.
EXAMPLE_SETUP = """
CREATE TABLE customers (id bigint PRIMARY KEY, email text);
CREATE TABLE orders (
    id bigint PRIMARY KEY,
    customer_id bigint,
    status varchar(20),
    note text,
    total numeric(10, 2),
    quantity integer,
    reference text,
    legacy_code text,
    created_at timestamptz
);
CREATE INDEX orders_status_idx ON orders (status);
CREATE INDEX orders_created_at_idx ON orders (created_at);
CREATE TABLE silver_rates (day date, rate numeric);
CREATE TABLE bookings (room_id integer, during tstzrange);
CREATE UNLOGGED TABLE import_batches (id bigint, payload jsonb);
CREATE TABLE events_archive (id bigint, payload jsonb);
CREATE TABLE legacy_orders (id bigint);
CREATE TABLE events (id bigint, created_at date) PARTITION BY RANGE (created_at);
CREATE TABLE events_2023 PARTITION OF events FOR VALUES FROM ('2023-01-01') TO ('2024-01-01');
CREATE TABLE events_2025 (id bigint, created_at date);
CREATE MATERIALIZED VIEW order_totals AS
    SELECT customer_id, count(*) AS n FROM orders GROUP BY customer_id;
"""


@cache
def example_catalog(version: int = VERSION) -> Catalog:
    return catalog_from_script(EXAMPLE_SETUP, version=version)


def lint_example(sql: str, version: int = VERSION) -> list[Result]:
    return lint_script(sql, version=version, catalog=example_catalog(version))


def rule_ids(results: list[Result]) -> set[str]:
    return {finding.rule for result in results for finding in result.findings}


def sql_block(doc: str, section: str) -> str:
    """The one ```sql block of a ``## <section>`` of a doc page."""
    match = re.search(rf"^## {section}\n(.*?)(?=^## |\Z)", doc, re.DOTALL | re.MULTILINE)
    assert match, f"no '## {section}' section"
    blocks = re.findall(r"^```sql\n(.*?)^```$", match.group(1), re.DOTALL | re.MULTILINE)
    assert len(blocks) == 1, f"'## {section}' must hold exactly one ```sql block"
    return str(blocks[0])


IDS = [rule.id for rule in RULES]


# -- the catalogue ---------------------------------------------------------------------

def test_ids_are_stable_kebab_case_and_unique() -> None:
    assert len(IDS) == len(set(IDS))
    for rule_id in IDS:
        assert re.fullmatch(r"[a-z]+(-[a-z]+)*", rule_id), rule_id
    assert {"truncate", "create-index"} <= set(IDS)


@pytest.mark.parametrize("rule_id", IDS)
def test_module_is_named_after_the_rule(rule_id: str) -> None:
    module = importlib.import_module("safeddl.rules." + rule_id.replace("-", "_"))
    assert module.RULE is BY_ID[rule_id]
    rule = BY_ID[rule_id]
    assert isinstance(rule.severity, Severity)
    assert rule.summary and "\n" not in rule.summary


# -- the pages ---------------------------------------------------------------------------

@pytest.mark.parametrize("rule_id", IDS)
def test_doc_page_is_complete(rule_id: str) -> None:
    doc = DOCS[rule_id]
    assert doc.splitlines()[0] == f"# {rule_id}"
    assert re.search(r"^\*\*Lock:\*\* \S", doc, re.MULTILINE), "a **Lock:** line"
    headings = re.findall(r"^## (.+)$", doc, re.MULTILINE)
    assert headings == ["Bad", "Good", "Safe alternative"], headings
    assert sql_block(doc, "Bad").strip() and sql_block(doc, "Good").strip()
    alternative = doc.split("## Safe alternative", 1)[1].strip()
    assert len(alternative) > 40, "the safe alternative is explained"


@pytest.mark.parametrize("rule_id", IDS)
def test_doc_file_is_generated_from_the_docstring(rule_id: str) -> None:
    path = DOCS_DIR / f"{rule_id}.md"
    assert path.exists(), f"{path} is missing; regenerate with: {REGENERATE}"
    assert path.read_text(encoding="utf-8") == render_doc(rule_id), (
        f"{path} differs from the docstring of safeddl.rules.{rule_id.replace('-', '_')}; "
        f"regenerate with: {REGENERATE}")


def test_no_doc_page_without_a_rule() -> None:
    stale = sorted(p.stem for p in DOCS_DIR.glob("*.md") if p.stem not in BY_ID)
    assert not stale, f"doc pages without a rule: {stale}; delete them"


def test_write_docs_writes_every_page(tmp_path: Path) -> None:
    written = write_docs(tmp_path / "rules")
    assert sorted(p.name for p in written) == sorted(f"{i}.md" for i in IDS)
    for path in written:
        assert path.read_text(encoding="utf-8") == render_doc(path.stem)
        assert render_doc(path.stem).endswith("\n") and not render_doc(path.stem).endswith("\n\n")


# -- the examples ------------------------------------------------------------------------

@pytest.mark.parametrize("rule_id", IDS)
def test_bad_example_triggers_exactly_this_rule(rule_id: str) -> None:
    results = lint_example(sql_block(DOCS[rule_id], "Bad"))
    found = rule_ids(results)
    assert rule_id in found, f"the Bad example of {rule_id} does not trigger it"
    others = found - {rule_id} - ({SCRIPT_WIDE} if rule_id != SCRIPT_WIDE else set())
    assert not others, f"the Bad example of {rule_id} also triggers {sorted(others)}"
    severities = {f.severity for r in results for f in r.findings if f.rule == rule_id}
    assert severities == {BY_ID[rule_id].severity}


@pytest.mark.parametrize("rule_id", IDS)
def test_good_example_does_not_trigger_it(rule_id: str) -> None:
    results = lint_example(sql_block(DOCS[rule_id], "Good"))
    assert rule_id not in rule_ids(results)
    assert all(r.statement.understood for r in results), "the Good example is understood"
    errors = {f.rule for r in results for f in r.findings
              if f.severity is Severity.ERROR and f.rule != SCRIPT_WIDE}
    assert not errors, f"the Good example of {rule_id} is unsafe: {sorted(errors)}"


@pytest.mark.parametrize("rule_id", [i for i in IDS if i != SCRIPT_WIDE])
def test_bad_example_with_lock_timeout_triggers_only_this_rule(rule_id: str) -> None:
    script = "SET lock_timeout = '5s';\n" + sql_block(DOCS[rule_id], "Bad")
    assert rule_ids(lint_example(script)) == {rule_id}


def test_examples_tables_count_as_existing() -> None:
    catalog = example_catalog()
    for table in ("orders", "customers", "events", "events_2025", "order_totals"):
        assert catalog.get(table) is not None and not catalog.is_new(table), table
