"""The analysis with what a live catalog says (what the guard and ``--dsn`` see) agrees
with ``pg_locks`` and ``relfilenode`` on the forms only the catalog can decide: the
session's TimeZone for timestamp <-> timestamptz, the functions of triggers for
DROP FUNCTION ... CASCADE, column defaults for an INSERT that leaves a foreign-key
column out, the columns of an index for ADD PRIMARY KEY USING INDEX, the old type of
a column for a binary-coercible type change."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from safeddl.analysis import analyze_statement
from safeddl.locks import Holds
from safeddl.observe.snapshot import observe_in_transaction
from safeddl.runtime.live_catalog import names_in, read_catalog
from safeddl.sql import qualified_name

pytestmark = [pytest.mark.timeout(120)]

SETUP = """
CREATE TABLE owners (id int PRIMARY KEY);
INSERT INTO owners SELECT generate_series(1, 100);
CREATE TABLE things (
    id int NOT NULL,
    code int,
    owner_id int REFERENCES owners (id),
    default_owner int DEFAULT 1 REFERENCES owners (id),
    seen timestamp NOT NULL DEFAULT '2024-01-01',
    name varchar(20),
    price numeric(8, 2)
);
INSERT INTO things (id, code, owner_id, name, price)
SELECT g, g, 1 + g % 100, 'n' || g, g FROM generate_series(1, 2000) g;
CREATE UNIQUE INDEX things_id_idx ON things (id);
CREATE UNIQUE INDEX things_code_idx ON things (code);
CREATE FUNCTION things_touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
CREATE TRIGGER things_touch BEFORE UPDATE ON things FOR EACH ROW EXECUTE FUNCTION things_touch();
CREATE TRIGGER owners_touch BEFORE UPDATE ON owners FOR EACH ROW EXECUTE FUNCTION things_touch();
ANALYZE;
"""

CASES = [
    # (session TimeZone, statement)
    ("UTC", "ALTER TABLE things ALTER COLUMN seen TYPE timestamptz"),
    ("Europe/Berlin", "ALTER TABLE things ALTER COLUMN seen TYPE timestamptz"),
    ("Etc/UTC", "ALTER TABLE things ALTER COLUMN seen TYPE timestamp with time zone"),
    ("UTC", "DROP FUNCTION things_touch() CASCADE"),
    ("UTC", "INSERT INTO things (id, code) VALUES (5000, 5000)"),
    ("UTC", "INSERT INTO things (id, code, owner_id) VALUES (5000, 5000, 3)"),
    ("UTC", "ALTER TABLE things ADD PRIMARY KEY USING INDEX things_id_idx"),
    ("UTC", "ALTER TABLE things ALTER COLUMN name TYPE varchar(40)"),
    ("UTC", "ALTER TABLE things ALTER COLUMN name TYPE text"),
    ("UTC", "ALTER TABLE things ALTER COLUMN name TYPE varchar(10)"),
    ("UTC", "ALTER TABLE things ALTER COLUMN price TYPE numeric(12, 2)"),
    ("UTC", "ALTER TABLE things ALTER COLUMN price TYPE numeric(12, 3)"),
]


@pytest.fixture(scope="module")
def live_db(safeddl_server_each: Any) -> Iterator[tuple[str, int]]:
    from safeddl.testing.server import fresh_database

    with fresh_database(safeddl_server_each.dsn, prefix="safeddl_live_") as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SETUP)
        yield dsn, safeddl_server_each.version


@pytest.mark.parametrize(("zone", "sql"), CASES, ids=[f"{z}-{s[:48]}" for z, s in CASES])
def test_live_catalog_prediction_matches_server(live_db: tuple[str, int], zone: str,
                                                sql: str) -> None:
    dsn, version = live_db
    with psycopg.connect(make_conninfo(dsn, options=f"-c TimeZone={zone}")) as conn:
        observation = observe_in_transaction(conn, sql)
        assert observation.error is None, observation.error

        def run(query: str, params: Any) -> list[tuple[Any, ...]]:
            return conn.execute(query, params).fetchall()

        live = read_catalog(run, names_in([analyze_statement(sql, version=version)]))
        conn.rollback()
    statement = analyze_statement(sql, version=version, catalog=live.catalog)
    predicted = {qualified_name(lock.relation): lock.mode for lock in statement.locks}
    rewrites = {qualified_name(lock.relation) for lock in statement.locks
                if lock.holds is Holds.REWRITE}
    report = (f"PostgreSQL {version}, TimeZone {zone}: {sql}\n"
              f"  predicted {predicted} rewrites {rewrites}\n"
              f"  observed  {observation.locks} rewrites {set(observation.rewritten)}")
    assert predicted == observation.locks, report
    assert rewrites == set(observation.rewritten), report


def test_primary_key_on_a_nullable_index_column_scans(live_db: tuple[str, int]) -> None:
    """The catalog knows code is nullable: the analysis says scan (the server sets
    NOT NULL, reading every row), and brief for the NOT NULL id."""
    dsn, version = live_db
    with psycopg.connect(dsn) as conn:
        def run(query: str, params: Any) -> list[tuple[Any, ...]]:
            return conn.execute(query, params).fetchall()

        holds = {}
        for index in ("things_code_idx", "things_id_idx"):
            sql = f"ALTER TABLE things ADD PRIMARY KEY USING INDEX {index}"
            live = read_catalog(run, names_in([analyze_statement(sql, version=version)]))
            holds[index] = analyze_statement(sql, version=version, catalog=live.catalog).holds
        conn.rollback()
    assert holds == {"things_code_idx": Holds.SCAN, "things_id_idx": Holds.BRIEF}


@pytest.mark.parametrize("name", [
    "things_code_owner_id_default_owner_seen_name_price_where_not_archived_idx",
    "Ünïcödé_très_long_nom_d_index_avec_beaucoup_de_caractères_accentués",
])
def test_long_identifier_is_truncated_as_the_rule_says(live_db: tuple[str, int],
                                                       name: str) -> None:
    from safeddl.rules import lint_script
    from safeddl.rules.identifier_too_long import truncated
    from safeddl.sql import quote_ident

    dsn, version = live_db
    sql = f"CREATE INDEX {quote_ident(name)} ON things (name)"
    [result] = lint_script(sql, version=version)
    assert "identifier-too-long" in {f.rule for f in result.findings}
    with psycopg.connect(dsn) as conn:
        conn.execute(sql)
        found = conn.execute("SELECT relname FROM pg_class WHERE relname LIKE %s",
                             [truncated(name)[:20] + "%"]).fetchall()
        conn.rollback()
    assert found == [(truncated(name),)] and len(truncated(name).encode()) <= 63
