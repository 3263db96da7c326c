"""What ``lint`` / ``analyze`` know of the schema the migrations run against.

``--schema FILE``: a ``pg_dump --schema-only`` file (or any SQL that creates the
current schema). Its statements are learnt, not reported; what it creates counts as
existing, and what it does not create does not exist.

``--dsn URL``: the live catalog of a database (a staging copy): column types,
constraints, indexes, partitions, triggers, row estimates and sizes, and the
TimeZone of a session there. Read with plain catalog SELECTs in a read-only
transaction: nothing is locked beyond what reading ``pg_catalog`` takes.

Either way type-change verdicts become exact (the old type is known), and with a DSN
each finding says how big its table is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from safeddl.analysis import Catalog, analyze_script, catalog_from_script
from safeddl.rules import Finding
from safeddl.rules.engine import Result

# Every user relation and index of the database, schema-qualified and quoted.
_ALL_RELATIONS_SQL = """
SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'i', 'I')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
  AND n.nspname NOT LIKE 'pg_temp%%' AND n.nspname NOT LIKE 'pg_toast_temp%%'
"""


# Every user procedure's name (what a CALL in the linted file may run).
_ALL_PROCEDURES_SQL = """
SELECT DISTINCT quote_ident(p.proname)
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE p.prokind = 'p' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
"""


class SchemaError(Exception):
    """The schema source cannot be read (a database that cannot be reached...)."""


def catalog_from_schema_file(text: str, version: int) -> Catalog:
    """The schema a SQL file creates: its relations exist, nothing else does."""
    return catalog_from_script(text, version=version)


def catalog_from_dsn(dsn: str) -> Catalog:
    """The whole live catalog of the database at ``dsn``."""
    import psycopg

    from safeddl.runtime.live_catalog import read_catalog

    try:
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            conn.read_only = True

            def run(sql: str, params: Any) -> list[tuple[Any, ...]]:
                return conn.execute(sql, params).fetchall()

            names = [row[0] for row in run(_ALL_RELATIONS_SQL, None)]
            procedures = [row[0] for row in run(_ALL_PROCEDURES_SQL, None)]
            catalog = read_catalog(run, names, procedures).catalog
            conn.rollback()
    except psycopg.Error as exc:
        raise SchemaError(f"cannot read the catalog of the database: {exc}") from None
    catalog.complete = True  # every relation of the database is here
    return catalog


def schema_catalog(schema_text: str | None, dsn: str | None, version: int,
                   timezone: str | None) -> Catalog | None:
    """The catalog the options give (the DSN wins where both describe a relation)."""
    if schema_text is None and dsn is None and timezone is None:
        return None
    catalog = catalog_from_schema_file(schema_text, version) if schema_text else Catalog()
    if dsn is not None:
        live = catalog_from_dsn(dsn)
        if schema_text:
            live.relations = {**catalog.relations, **live.relations}
            for index, table in catalog.indexes.items():  # (the database's win)
                if index not in live.indexes:
                    live.add_index(index, table, catalog.index_columns.get(index))
                elif index not in live.index_columns and index in catalog.index_columns:
                    live.index_columns[index] = catalog.index_columns[index]
            live.procedures = {**catalog.procedures, **live.procedures}
            live.invalidate()
        catalog = live
    if timezone is not None:
        catalog.timezone = timezone
    return catalog


def learn_existing(catalog: Catalog, script: str, version: int) -> Catalog:
    """The catalog after ``script`` ran and was committed: what it created exists now
    (for the next migration, it is not "created in this script")."""
    after = catalog.copy()
    analyze_script(script, version=version, catalog=after, learn=True)
    for relation in after.relations.values():
        relation.new = False
    return after


def with_sizes(results: Sequence[Result], catalog: Catalog | None) -> list[Result]:
    """Each finding on a table the catalog has a size for says how big it is."""
    if catalog is None:
        return list(results)
    out = []
    for result in results:
        findings = [_sized(finding, catalog) for finding in result.findings]
        out.append(dataclasses.replace(result, findings=findings))
    return out


def _sized(finding: Finding, catalog: Catalog) -> Finding:
    relation = catalog.get(finding.relation) if finding.relation else None
    if relation is None or (relation.rows is None and relation.size_bytes is None):
        return finding
    parts = []
    if relation.rows is not None:
        parts.append(f"about {relation.rows:,} rows")
    if relation.size_bytes is not None and relation.kind != "partitioned":
        parts.append(human_bytes(relation.size_bytes))
    size = f"Size: {finding.relation} has {', '.join(parts)} (from the database)."
    lines = finding.message.split("\n")
    # after the problem and the lock, before the safe alternative / opt-out
    at = next((i for i, line in enumerate(lines)
               if line.startswith(("Safe alternative:", "To accept the risk:"))), len(lines))
    return dataclasses.replace(finding, message="\n".join([*lines[:at], size, *lines[at:]]))


def human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:,.0f} {unit}" if unit == "bytes" else f"{value:,.1f} {unit}"
        value /= 1024
    return f"{size} bytes"  # pragma: no cover - unreachable
