"""``lint`` / ``analyze`` against the schema the migration runs on: ``--schema FILE`` (SQL
that creates it), ``--dsn URL`` (a live database's catalog, with table sizes), and
``lint --alembic`` where each revision meets the schema the earlier revisions left."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from safeddl.cli.main import main

pytestmark = [pytest.mark.timeout(180)]

PROJECT = Path(__file__).resolve().parent.parent / "alembic_project"

SCHEMA = """
CREATE TABLE accounts (id bigint PRIMARY KEY);
CREATE TABLE orders (id bigint PRIMARY KEY, account_id bigint REFERENCES accounts (id),
                     note varchar(20), amount int);
"""

MIGRATION = """
SET lock_timeout = '2s';
ALTER TABLE orders ALTER COLUMN note TYPE varchar(50);
ALTER TABLE orders ALTER COLUMN amount TYPE bigint;
"""


def lint_json(*arguments: str) -> tuple[int, list[dict[str, Any]]]:
    result = CliRunner().invoke(main, ["lint", "--format", "json", *arguments])
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(result.stdout)


def rules_by_line(report: list[dict[str, Any]]) -> dict[int, set[str]]:
    return {item["line"]: {f["rule"] for f in item["findings"]} for item in report}


def test_without_a_schema_a_widening_is_assumed_to_rewrite(tmp_path: Path) -> None:
    migration = tmp_path / "m.sql"
    migration.write_text(MIGRATION)
    code, report = lint_json(str(migration))
    assert code == 1
    assert "alter-column-type" in rules_by_line(report)[3]  # varchar(20) -> (50): unknown


def test_schema_file_makes_type_change_verdicts_exact(tmp_path: Path) -> None:
    schema, migration = tmp_path / "schema.sql", tmp_path / "m.sql"
    schema.write_text(SCHEMA)
    migration.write_text(MIGRATION)
    code, report = lint_json("--schema", str(schema), str(migration))
    by_line = rules_by_line(report)
    assert "alter-column-type" not in by_line[3]  # widening a varchar: no rewrite
    assert "alter-column-type" in by_line[4]  # int -> bigint rewrites
    message = next(f["message"] for f in report[2]["findings"] if f["rule"] == "alter-column-type")
    assert "from int" in message or "from integer" in message
    assert code == 1
    # the schema's own statements are learnt, not reported
    assert [item["line"] for item in report] == [2, 3, 4]


def test_dsn_reads_the_live_catalog_and_findings_say_how_big_the_table_is(
        safeddl_db: str, tmp_path: Path) -> None:
    with psycopg.connect(safeddl_db, autocommit=True) as conn:
        conn.execute(SCHEMA)
        conn.execute("INSERT INTO accounts VALUES (1)")
        conn.execute("INSERT INTO orders SELECT g, 1, 'x', g FROM generate_series(1, 50000) g")
        conn.execute("ANALYZE orders")
    migration = tmp_path / "m.sql"
    migration.write_text(MIGRATION)
    code, report = lint_json("--dsn", safeddl_db, str(migration))
    assert code == 1
    by_line = rules_by_line(report)
    assert "alter-column-type" not in by_line[3]
    finding = next(f for f in report[2]["findings"] if f["rule"] == "alter-column-type")
    assert "orders has about 50,000 rows" in finding["message"]
    assert "MB" in finding["message"] or "kB" in finding["message"]


def test_dsn_and_schema_together_are_refused(safeddl_db: str, tmp_path: Path) -> None:
    schema, migration = tmp_path / "schema.sql", tmp_path / "m.sql"
    schema.write_text(SCHEMA)
    migration.write_text(MIGRATION)
    result = CliRunner().invoke(main, ["lint", "--schema", str(schema), "--dsn", safeddl_db,
                                       str(migration)])
    assert result.exit_code == 2
    assert "not both" in result.output


def test_analyze_takes_the_schema_too(tmp_path: Path) -> None:
    schema, migration = tmp_path / "schema.sql", tmp_path / "m.sql"
    schema.write_text(SCHEMA)
    migration.write_text("ALTER TABLE orders ALTER COLUMN note TYPE varchar(50);\n")
    result = CliRunner().invoke(main, ["analyze", "--format", "json", "--schema", str(schema),
                                       str(migration)])
    assert result.exit_code == 0, result.output
    (item,) = json.loads(result.stdout)
    assert item["locks"] == [{"relation": "orders", "mode": "AccessExclusiveLock",
                              "holds": "brief"}]


def test_alembic_revisions_meet_the_schema_of_the_earlier_ones(tmp_path: Path) -> None:
    pytest.importorskip("alembic")
    project = tmp_path / "alembic_project"
    shutil.copytree(PROJECT, project, ignore=shutil.ignore_patterns("__pycache__"))
    # 0002 adds orders.note as text; changing it to text again rewrites nothing, which
    # only a lint that knows 0002 can tell
    (project / "migrations" / "versions" / "0005_note_text.py").write_text(
        '"""note stays text\n\nRevision ID: 0005\nRevises: 0004\n"""\n'
        "import sqlalchemy as sa\nfrom alembic import op\n\n"
        'revision = "0005"\ndown_revision = "0004"\nbranch_labels = None\n'
        "depends_on = None\n\n\n"
        "def upgrade() -> None:\n"
        '    op.alter_column("orders", "note", type_=sa.Text())\n\n\n'
        "def downgrade() -> None:\n    pass\n")
    result = CliRunner().invoke(main, ["lint", "--format", "json", "--alembic", str(project)])
    assert result.exit_code == 1, result.output  # 0004 stays unsafe
    report = json.loads(result.stdout)
    items = report if isinstance(report, list) else report.get("statements", report)
    fifth = [item for item in items if "0005" in json.dumps(item)]
    assert fifth, report
    assert not any(f["rule"] == "alter-column-type" for item in fifth
                   for f in item["findings"]), fifth
