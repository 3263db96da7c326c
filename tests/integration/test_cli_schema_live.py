"""``lint`` / ``analyze`` against a real database's schema: ``--dsn URL`` (the live
catalog, with sizes and the TimeZone), a ``pg_dump --schema-only`` file of the same
database as ``--schema``, and ``lint --alembic`` linting each revision against the
schema the revisions before it left. Verdicts are compared with what the server does
(``relfilenode`` before/after for rewrites)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from safeddl.cli.main import main
from safeddl.observe.snapshot import observe_in_transaction

pytestmark = [pytest.mark.timeout(180)]

ROWS = 30_000
SETUP = f"""
CREATE TABLE customers (id int PRIMARY KEY, email text);
INSERT INTO customers SELECT g, 'c' || g FROM generate_series(1, 100) g;
CREATE TABLE orders (
    id bigint NOT NULL,
    customer_id int REFERENCES customers (id),
    reference varchar(20),
    total numeric(10, 2),
    placed_at timestamp
);
INSERT INTO orders SELECT g, 1 + g % 100, 'r' || g, g, '2024-01-01' FROM generate_series(1, {ROWS}) g;
CREATE UNIQUE INDEX orders_id_idx ON orders (id);
CREATE PROCEDURE forget_customer(c int) LANGUAGE plpgsql AS $$
BEGIN
    UPDATE orders SET customer_id = NULL WHERE customer_id = c;
    DELETE FROM customers WHERE id = c;
END $$;
ANALYZE;
"""
STATEMENTS = [
    "ALTER TABLE orders ALTER COLUMN reference TYPE varchar(40)",
    "ALTER TABLE orders ALTER COLUMN reference TYPE varchar(10)",
    "ALTER TABLE orders ALTER COLUMN total TYPE numeric(14, 2)",
    "ALTER TABLE orders ALTER COLUMN reference TYPE text",
    "ALTER TABLE orders ALTER COLUMN placed_at TYPE timestamptz",
]


@pytest.fixture(scope="module")
def staging(safeddl_server: Any) -> Iterator[str]:
    from safeddl.testing.server import fresh_database

    with fresh_database(safeddl_server.dsn, prefix="safeddl_staging_") as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SETUP)
        yield dsn


def analyze(*args: str) -> list[dict[str, Any]]:
    result = CliRunner().invoke(main, ["analyze", "--format", "json", *args])
    assert result.exit_code == 0, result.output
    data: list[dict[str, Any]] = json.loads(result.stdout)
    return data


def rewrites(objects: list[dict[str, Any]]) -> list[bool]:
    return [any(lock["holds"] == "rewrite" for lock in o["locks"]) for o in objects]


def server_rewrites(dsn: str) -> list[bool]:
    with psycopg.connect(dsn) as conn:
        return [bool(observe_in_transaction(conn, sql).rewritten) for sql in STATEMENTS]


def test_dsn_type_changes_agree_with_the_server(staging: str, tmp_path: Path) -> None:
    migration = tmp_path / "m.sql"
    migration.write_text(";\n".join(STATEMENTS) + ";\n")
    predicted = rewrites(analyze("--dsn", staging, str(migration)))
    # the staging session's TimeZone is the server's (not necessarily UTC)
    assert predicted == server_rewrites(staging)
    assert predicted[:4] == [False, True, False, False]
    # without the schema, a change of a type the file does not show is a rewrite
    # (the fourth knows varchar(10) from the second)
    assert rewrites(analyze(str(migration)))[:4] == [True, True, True, False]


def test_dsn_finding_says_how_big_the_table_is(staging: str, tmp_path: Path) -> None:
    migration = tmp_path / "m.sql"
    migration.write_text("SET lock_timeout = '2s';\nCREATE INDEX orders_total_idx ON orders (total);\n")
    result = CliRunner().invoke(main, ["lint", "--dsn", staging, str(migration)])
    assert result.exit_code == 1, result.output
    assert f"Size: orders has about {ROWS:,} rows, " in result.output
    assert " MB (from the database)." in result.output or " kB (from the database)." in (
        result.output)


def test_dsn_gives_the_body_of_a_called_procedure(staging: str, tmp_path: Path) -> None:
    migration = tmp_path / "m.sql"
    migration.write_text("CALL forget_customer(7);\n")
    (with_dsn,) = analyze("--dsn", staging, str(migration))
    locks = {lock["relation"]: lock["mode"] for lock in with_dsn["locks"]}
    assert locks == {"orders": "RowExclusiveLock", "customers": "RowExclusiveLock"}, locks
    assert not with_dsn["findings"], with_dsn["findings"]
    with psycopg.connect(staging) as conn:  # what the server takes
        seen = observe_in_transaction(conn, "CALL forget_customer(7)")
    assert {"public.orders", "public.customers"} <= set(seen.locks), seen.locks
    (alone,) = analyze(str(migration))
    assert [f["rule"] for f in alone["findings"]] == ["opaque-statement"]


def test_unreachable_dsn_is_a_usage_error(tmp_path: Path) -> None:
    migration = tmp_path / "m.sql"
    migration.write_text("SELECT 1;\n")
    result = CliRunner().invoke(main, ["lint", "--dsn", "host=/nonexistent dbname=x",
                                       str(migration)])
    assert result.exit_code == 2 and "cannot read the catalog" in result.output


def test_pg_dump_schema_only_file_gives_the_same_verdicts(staging: str, tmp_path: Path,
                                                         safeddl_server: Any) -> None:
    install = getattr(safeddl_server, "install", None)
    pg_dump = (Path(install.bindir) / "pg_dump") if install is not None else None
    if pg_dump is None or not pg_dump.exists():
        found = shutil.which("pg_dump")
        pg_dump = Path(found) if found else None
    if pg_dump is None:
        pytest.skip("no pg_dump next to the server")
    dump = subprocess.run([str(pg_dump), "--schema-only", "--no-owner", "-d", staging],
                          capture_output=True, text=True, timeout=60)
    if dump.returncode != 0:
        pytest.skip(f"pg_dump cannot dump this server: {dump.stderr.strip()[:200]}")
    schema = tmp_path / "schema.sql"
    schema.write_text(dump.stdout)
    migration = tmp_path / "m.sql"
    migration.write_text(";\n".join(STATEMENTS[:4]) + ";\n")
    from_dump = analyze("--schema", str(schema), str(migration))
    from_dsn = analyze("--dsn", staging, str(migration))
    assert [o["locks"] for o in from_dump] == [o["locks"] for o in from_dsn]
    assert rewrites(from_dump) == server_rewrites(staging)[:4]


REVISION_0005 = '''"""widen total

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.alter_column("orders", "total", type_=sa.Numeric(14, 2))


def downgrade() -> None:
    op.alter_column("orders", "total", type_=sa.Numeric(12, 2))
'''


def test_alembic_revision_is_linted_against_the_earlier_revisions(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """0001 creates orders.total numeric(12, 2); 0005 widens it: binary coercible, no
    rewrite: not an alter-column-type error (linted on its own, the old type is
    unknown and a rewrite would be assumed)."""
    project = tmp_path / "alembic_project"
    shutil.copytree(Path(__file__).resolve().parents[1] / "alembic_project", project,
                    ignore=shutil.ignore_patterns("__pycache__"))
    (project / "migrations" / "versions" / "0005_widen_total.py").write_text(REVISION_0005)
    monkeypatch.chdir(project)
    result = CliRunner().invoke(main, ["lint", "--format", "json", "--alembic", "."])
    objects = json.loads(result.output)
    widen = [o for o in objects if o["revision"] == "0005" and "ALTER COLUMN" in o["sql"]]
    assert len(widen) == 1, objects
    assert widen[0]["locks"] == [{"relation": "orders", "mode": "AccessExclusiveLock",
                                  "holds": "brief"}]
    assert "alter-column-type" not in {f["rule"] for f in widen[0]["findings"]}
    # the table 0001 created is an existing table for 0004's index (an error there)
    assert any(f["rule"] == "create-index" for o in objects if o["revision"] == "0004"
               for f in o["findings"])


def test_schema_file_indexes_next_to_the_dsn_go_with_their_column(staging: str,
                                                                     tmp_path: Path) -> None:
    # an index only the schema file knows is kept by its table like the database's own
    schema = tmp_path / "schema.sql"
    schema.write_text("CREATE TABLE extra (id int, x int);\n"
                      "CREATE INDEX extra_x ON extra (x);\nCREATE INDEX extra_id ON extra (id);\n")
    migration = tmp_path / "m.sql"
    migration.write_text("ALTER TABLE extra DROP COLUMN x;\nDROP INDEX extra_x;\n"
                         "DROP INDEX extra_id;\nDROP INDEX orders_id_idx;\n")
    objects = analyze("--schema", str(schema), "--dsn", staging, str(migration))
    on = [[lock["relation"] for lock in o["locks"]] for o in objects[1:]]
    assert on == [["extra_x"], ["extra"], ["orders"]]
