"""``safeddl trace`` against the real server: the script runs in a transaction that is
rolled back, each statement's locks and rewrites come from the server, and a prediction
for the wrong server version is reported as a difference (exit 1)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from safeddl.cli.main import main

pytestmark = [pytest.mark.timeout(120)]

SCRIPT = """\
BEGIN;
ALTER TABLE orders ADD COLUMN note text;
UPDATE orders SET total = total + 1 WHERE id = 1;
UPDATE orders SET total = total + 1 WHERE id = 2;
ALTER TABLE orders ALTER COLUMN total TYPE bigint;
CREATE TABLE audit (id int);
ALTER TABLE audit ADD COLUMN at timestamptz;
CREATE INDEX CONCURRENTLY orders_note ON orders (note);
COMMIT;
"""

# GRANT takes ACCESS SHARE on the table from PostgreSQL 18 on, no table lock before.
GRANT = "GRANT SELECT ON orders TO PUBLIC;\n"


def make_orders(dsn: str) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, total int)")
        conn.execute("INSERT INTO orders SELECT g, g FROM generate_series(1, 1000) g")
    return dsn


@pytest.fixture
def db(safeddl_db: str) -> str:
    return make_orders(safeddl_db)


@pytest.fixture
def db_each(safeddl_db_each: str) -> str:
    return make_orders(safeddl_db_each)


def server_version(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.info.server_version // 10000


def trace(dsn: str, path: Path, *options: str) -> tuple[int, str, str]:
    runner = CliRunner(env={"COLUMNS": "250"})  # wide enough for rich not to wrap cells
    result = runner.invoke(main, ["trace", "--dsn", dsn, *options, str(path)])
    return result.exit_code, result.stdout, result.stderr


def trace_json(dsn: str, path: Path, *options: str) -> tuple[int, dict[str, Any]]:
    code, out, _err = trace(dsn, path, "--yes", "--format", "json", *options)
    return code, json.loads(out)


def locks(step: dict[str, Any], side: str) -> dict[str, str]:
    return {lock["relation"]: lock["mode"] for lock in step[side]["locks"]}


def test_script_is_traced_statement_by_statement_and_rolled_back(db: str, tmp_path: Path) -> None:
    path = tmp_path / "migration.sql"
    path.write_text(SCRIPT)
    code, report = trace_json(db, path)
    assert code == 0, report
    steps = {step["line"]: step for step in report["statements"]}
    assert [steps[line]["status"] for line in sorted(steps)] == [
        "skipped", "ran", "ran", "ran", "ran", "ran", "ran", "skipped", "skipped"]
    assert locks(steps[2], "observed") == {"public.orders": "AccessExclusiveLock"}
    assert locks(steps[3], "observed") == {"public.orders": "RowExclusiveLock"}
    # the second UPDATE asks for a mode the transaction already holds: not observable
    assert steps[4]["observed"]["locks"] == [
        {"relation": "public.orders", "mode": "RowExclusiveLock", "already_held": True}]
    assert steps[5]["observed"]["rewrites"] == ["public.orders"]
    assert steps[5]["predicted"]["rewrites"] == ["public.orders"]
    assert steps[2]["observed"]["rewrites"] == []  # a nullable column without default
    # a table created by an earlier statement of the script is traced too
    assert locks(steps[7], "observed") == {"public.audit": "AccessExclusiveLock"}
    assert "transaction block" in steps[8]["reason"] and steps[8]["agrees"] is None
    assert all(step["agrees"] for step in report["statements"] if step["status"] == "ran")
    assert report["summary"] == {"statements": 9, "ran": 6, "skipped": 3, "failed": 0,
                                 "disagreements": 0}
    assert report["rolled_back"] is True
    with psycopg.connect(db) as conn:  # nothing stayed
        columns = conn.execute(
            "SELECT attname, format_type(atttypid, NULL) FROM pg_attribute"
            " WHERE attrelid = 'orders'::regclass AND attnum > 0 ORDER BY attnum").fetchall()
        assert columns == [("id", "integer"), ("total", "integer")]
        assert conn.execute("SELECT to_regclass('audit')").fetchone() == (None,)
        assert conn.execute("SELECT total FROM orders WHERE id = 1").fetchone() == (1,)


def test_prediction_for_another_version_disagrees(db_each: str, tmp_path: Path) -> None:
    db = db_each
    path = tmp_path / "grant.sql"
    path.write_text(GRANT)
    version = server_version(db)
    code, report = trace_json(db, path)  # predicted for the server's own version
    assert code == 0, report
    assert report["pg_version"] == report["server_version"] == version

    other = "15" if version >= 18 else "18"
    code, report = trace_json(db, path, "--pg-version", other)
    assert code == 1
    [step] = report["statements"]
    assert step["agrees"] is False
    if version >= 18:
        assert step["differences"] == [
            "public.orders: predicted no lock, the server took AccessShareLock"]
    else:
        assert step["differences"] == [
            "public.orders: predicted AccessShareLock, the server took no new lock"]
    assert report["summary"]["disagreements"] == 1


def test_unreadable_statement_and_failure_are_reported(db: str, tmp_path: Path) -> None:
    path = tmp_path / "odd.sql"
    path.write_text("SELECT * FROM nosuch;\nALTER TABLE orders ADD COLUMN ok int;\n")
    code, report = trace_json(db, path)
    assert code == 1  # a statement failed: the script could not be checked
    failed, ran = report["statements"]
    assert failed["status"] == "failed" and "nosuch" in failed["reason"]
    assert failed["agrees"] is None
    # the failure did not end the transaction: the next statement still ran
    assert ran["status"] == "ran" and ran["agrees"] is True


def test_a_commit_refused_in_the_transaction_block_is_a_difference(db: str,
                                                                  tmp_path: Path) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        # created in the database, not in the script: the analysis cannot see the COMMIT
        conn.execute("CREATE PROCEDURE commit_orders() LANGUAGE plpgsql AS $$ BEGIN"
                     " UPDATE orders SET total = total WHERE id = 1; COMMIT; END $$")
        conn.execute("CREATE FUNCTION commit_in_function() RETURNS int LANGUAGE plpgsql"
                     " AS $$ BEGIN COMMIT; RETURN 1; END $$")
    path = tmp_path / "commits.sql"
    path.write_text("CALL commit_orders();\nSELECT commit_in_function();\n"
                    "DO $$ BEGIN UPDATE orders SET total = total WHERE id = 1; COMMIT; END $$;\n")
    code, report = trace_json(db, path)
    assert code == 1
    call, select, do = report["statements"]
    # the CALL's COMMIT is refused inside the trace's transaction (SQLSTATE 2D000): the
    # prediction "may run in a transaction block" was wrong, as for a 25001
    assert call["status"] == "failed" and call["predicted"]["transactional"] is True
    assert call["differences"] == ["predicted it may run inside a transaction block; the "
                                   "server refused it there (SQLSTATE 2D000)"]
    assert call["agrees"] is False
    # a function may never COMMIT: the same SQLSTATE, but no transaction block is to blame
    assert select["status"] == "failed" and "invalid transaction termination" in select["reason"]
    assert select["differences"] == [] and select["agrees"] is None
    # a DO block that COMMITs is predicted to run outside a transaction block: not run
    assert do["status"] == "skipped" and "transaction block" in do["reason"]
    assert do["predicted"]["transactional"] is False
    assert report["summary"]["disagreements"] == 1


def test_table_output_and_confirmation(db: str, tmp_path: Path) -> None:
    path = tmp_path / "migration.sql"
    path.write_text(SCRIPT)
    code, out, err = trace(db, path)  # no --yes and no terminal: refuses to run
    assert code == 2 and "--yes" in err and out == ""
    code, out, err = trace(db, path, "--yes")
    assert code == 0
    assert "rolled back" in err and "staging copy" in err
    assert "agrees" in out and "already held" in out
    assert "every statement that ran took the predicted locks" in out
