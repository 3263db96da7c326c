"""``safeddl replay`` against the real server: a whole history runs in a scratch database
that is dropped afterwards, each script is traced against the schema the earlier ones
left and then applied for real, a wrong prediction is reported (exit 1), and a script
that fails to apply stops the replay there."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from safeddl.cli.main import main
from safeddl.cli.replay import natural_key

pytestmark = [pytest.mark.timeout(180)]

PROJECT = Path(__file__).resolve().parent.parent / "alembic_project"

HISTORY = {
    "1_tables.sql": """
        CREATE TABLE accounts (id bigint PRIMARY KEY, name text);
        CREATE TABLE orders (id bigint PRIMARY KEY, account_id bigint REFERENCES accounts,
                             total numeric);
        INSERT INTO accounts VALUES (1, 'one');
        INSERT INTO orders SELECT g, 1, g FROM generate_series(1, 100) g;
    """,
    # runs outside a transaction block: skipped by the trace, applied by the replay
    "2_index.sql": "CREATE INDEX CONCURRENTLY orders_total_idx ON orders (total);\n",
    # after 2_index.sql in natural order; needs the index 2 built and the tables of 1
    "10_changes.sql": """
        ALTER TABLE orders ALTER COLUMN total TYPE text;
        DROP INDEX orders_total_idx;
        DROP TABLE orders;
    """,
}


def write_history(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def replay(dsn: str, *arguments: str) -> tuple[int, dict[str, Any], str]:
    result = CliRunner().invoke(main, ["replay", "--dsn", dsn, "--yes", "--format", "json",
                                       *arguments])
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        report = {}
    return result.exit_code, report, result.stderr


def scratch_databases(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT datname FROM pg_database "
                            "WHERE datname LIKE 'safeddl\\_replay\\_%'").fetchall()
    return [name for (name,) in rows]


def steps_of(report: dict[str, Any], script: int) -> list[dict[str, Any]]:
    return list(report["scripts"][script]["statements"])


def test_a_history_replays_in_order_and_agrees_with_the_server(
        safeddl_db: str, tmp_path: Path) -> None:
    folder = write_history(tmp_path / "migrations", HISTORY)
    code, report, err = replay(safeddl_db, str(folder))
    assert code == 0, (err, report)
    assert [Path(s["file"]).name for s in report["scripts"]] == [
        "1_tables.sql", "2_index.sql", "10_changes.sql"]
    summary = report["summary"]
    assert summary["replayed"] == summary["scripts"] == 3
    assert summary["disagreements"] == 0 and summary["failed"] == 0
    assert summary["agreement"] == 1.0
    # CREATE INDEX CONCURRENTLY is not traced, but it was applied: 10_changes drops it
    assert steps_of(report, 1)[0]["status"] == "skipped"
    changes = steps_of(report, 2)
    assert [step["status"] for step in changes] == ["ran", "ran", "ran"]
    # the rewrite of a table with rows is seen; DROP TABLE orders also locks accounts,
    # which only an analysis that knows 1_tables.sql's foreign key predicts
    assert changes[0]["observed"]["rewrites"] == ["public.orders"]
    dropped = {lock["relation"] for lock in changes[2]["predicted"]["locks"]}
    assert {"public.orders", "public.accounts"} <= dropped
    assert scratch_databases(safeddl_db) == []


def test_a_prediction_for_another_version_is_reported(safeddl_db: str, tmp_path: Path) -> None:
    with psycopg.connect(safeddl_db) as conn:
        version = conn.info.server_version // 10000
    other = "15" if version >= 18 else "18"  # GRANT locks the table from 18 on only
    folder = write_history(tmp_path / "h", {
        "1.sql": "CREATE TABLE t (id int);\n",
        "2.sql": "GRANT SELECT ON t TO PUBLIC;\n"})
    code, report, _err = replay(safeddl_db, "--pg-version", other, str(folder))
    assert code == 1
    assert report["summary"]["disagreements"] == 1
    assert steps_of(report, 1)[0]["differences"]


def test_a_script_that_fails_to_apply_stops_the_replay(safeddl_db: str, tmp_path: Path) -> None:
    folder = write_history(tmp_path / "h", {
        "1.sql": "CREATE TABLE t (id int);\n",
        "2.sql": "ALTER TABLE t ADD COLUMN c int;\nALTER TABLE missing ADD COLUMN c int;\n",
        "3.sql": "DROP TABLE t;\n"})
    code, report, _err = replay(safeddl_db, str(folder))
    assert code == 1
    summary = report["summary"]
    assert summary["scripts"] == 3 and summary["replayed"] == 2
    assert summary["stopped_at"].endswith("2.sql")
    failed = report["scripts"][1]
    assert failed["applied"] is False and failed["apply_error"].startswith("line 2:")
    assert scratch_databases(safeddl_db) == []


def test_keep_leaves_the_scratch_database_with_the_history_applied(
        safeddl_db: str, tmp_path: Path) -> None:
    folder = write_history(tmp_path / "h", {"1.sql": "CREATE TABLE kept (id int);\n"})
    code, report, _err = replay(safeddl_db, "--keep", str(folder))
    assert code == 0
    name = report["kept_database"]
    assert name in scratch_databases(safeddl_db)
    with psycopg.connect(safeddl_db, autocommit=True) as conn:
        with psycopg.connect(conn.info.dsn.replace(conn.info.dbname, name)) as kept:
            assert kept.execute("SELECT to_regclass('kept') IS NOT NULL").fetchone() == (True,)
        conn.execute(f'DROP DATABASE "{name}"')


def test_an_alembic_history_replays_revision_by_revision(
        safeddl_db: str, tmp_path: Path) -> None:
    pytest.importorskip("alembic")
    project = tmp_path / "alembic_project"
    shutil.copytree(PROJECT, project)
    code, report, err = replay(safeddl_db, "--alembic", str(project))
    assert report, err
    assert report["summary"]["replayed"] == report["summary"]["scripts"] == 4
    assert report["summary"]["failed"] == 0
    assert report["summary"]["disagreements"] == 0, report
    assert code == 0


def test_without_confirmation_nothing_runs(safeddl_db: str, tmp_path: Path) -> None:
    folder = write_history(tmp_path / "h", {"1.sql": "CREATE TABLE t (id int);\n"})
    result = CliRunner().invoke(main, ["replay", "--dsn", safeddl_db, str(folder)])
    assert result.exit_code == 2
    assert "--yes" in result.stderr
    assert scratch_databases(safeddl_db) == []


def test_folders_are_read_in_natural_name_order() -> None:
    names = ["10_c.sql", "2_b.sql", "1_a.sql", "0003_x.sql"]
    assert sorted(names, key=natural_key) == ["1_a.sql", "2_b.sql", "0003_x.sql", "10_c.sql"]
