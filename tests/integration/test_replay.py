"""``safeddl replay``: a whole history (a folder of SQL files, an Alembic project) is
traced against pg_locks migration by migration and applied for real on a scratch
database; the prediction knows what the earlier migrations did."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from safeddl.cli.main import main
from safeddl.observe.replay import migrations_in_folder, replay

pytestmark = [pytest.mark.timeout(180)]

HISTORY = {
    "001_users.sql": """
CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL);
INSERT INTO users SELECT g, 'u' || g FROM generate_series(1, 500) g;
""",
    "002_activity.sql": """
SET lock_timeout = '2s';
CREATE TABLE activity (id bigint PRIMARY KEY, what text);
ALTER TABLE activity ADD COLUMN user_id bigint REFERENCES users (id);
INSERT INTO activity (id, what) SELECT g, 'a' FROM generate_series(1, 100) g;
""",
    "010_rename.sql": """
ALTER TABLE users RENAME TO members;
CREATE INDEX activity_what_idx ON activity (what);
ALTER INDEX activity_what_idx RENAME TO activity_what_key;
""",
    "011_cleanup.sql": """
DROP INDEX activity_what_key;
ALTER TABLE activity DROP COLUMN user_id;
DELETE FROM members WHERE id = 1;
GRANT SELECT ON members TO PUBLIC;
""",
}


@pytest.fixture
def history(tmp_path: Path) -> Path:
    folder = tmp_path / "migrations"
    folder.mkdir()
    for name, sql in HISTORY.items():
        (folder / name).write_text(sql)
    return folder


def test_folder_is_replayed_in_order_and_agrees(history: Path, safeddl_db_each: str) -> None:
    migrations = migrations_in_folder(history)
    assert [m.name for m in migrations] == list(HISTORY)
    report = replay(safeddl_db_each, migrations)
    assert report.error is None and report.applied == 4
    assert report.ok, "\n".join(d for t in report.traces for s in t.steps for d in s.differences)
    agreeing, compared = report.relations
    assert compared >= 8 and agreeing == compared
    with psycopg.connect(safeddl_db_each) as conn:
        row = conn.execute("SELECT to_regclass('members') IS NOT NULL, "
                           "to_regclass('users') IS NULL").fetchone()
    assert row == (True, True)


def test_a_wrong_prediction_is_reported(history: Path, safeddl_server: Any, tmp_path: Path,
                                        ) -> None:
    """Predicting for another major version than the server's: GRANT takes ACCESS SHARE
    on 18, no table lock on 15, so one of the two disagrees."""
    from safeddl.testing.server import fresh_database

    other = 15 if safeddl_server.version >= 18 else 18
    with fresh_database(safeddl_server.dsn) as dsn:
        result = CliRunner().invoke(main, ["replay", "--yes", "--format", "json",
                                           "--pg-version", str(other), "--dsn", dsn,
                                           str(history)])
    assert result.exit_code == 1, result.output
    data = json.loads(result.stdout)
    summary = data["summary"]
    assert summary["applied"] == 4 and summary["disagreements"] >= 1
    assert summary["relations_agreeing"] < summary["relations_compared"]


def test_alembic_project_is_replayed(safeddl_db: str, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "alembic_project"
    shutil.copytree(Path(__file__).resolve().parents[1] / "alembic_project", project,
                    ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.chdir(project)
    result = CliRunner().invoke(main, ["replay", "--yes", "--dsn", safeddl_db,
                                       "--alembic", "."])
    assert "stopped" not in result.output, result.output
    assert result.exit_code == 0, result.output
    assert "4 migrations" in result.output and "agreement per relation 100.0%" in result.output
    with psycopg.connect(safeddl_db) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == ("0004",)
