"""The schema ``lint`` and ``analyze`` check against: the relations a script meets that it
did not create, so that verdicts that depend on what is there (a column's old type, an
existing foreign key, partitions, a table's size) are exact.

- ``--schema FILE``: SQL that creates the current schema (``pg_dump --schema-only`` or
  any script); its statements are learnt, not reported.
- ``--dsn URL``: the live catalog of a database (e.g. a staging copy), read with plain
  catalog queries that take no table lock: column types, constraints, indexes,
  partitions, row estimates, and the size of each table from ``relpages`` (an
  estimate, like ``reltuples``); findings then say how big the table is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from safeddl.analysis import Catalog, analyze_script, catalog_from_script
from safeddl.rules import Finding, Result
from safeddl.runtime.live_catalog import names_in, read_catalog


@dataclass(frozen=True)
class TableSize:
    rows: int | None
    bytes: int | None

    def describe(self) -> str:
        parts = []
        if self.rows is not None:
            parts.append(f"about {self.rows:,} rows")
        if self.bytes is not None:
            parts.append(_bytes(self.bytes))
        return ", ".join(parts)


@dataclass
class Schema:
    """A starting catalog, and what the database said of its tables' sizes."""

    catalog: Catalog
    source: str  # for messages: the file(s) or the database
    sizes: dict[str, TableSize] = field(default_factory=dict)  # catalog key -> size

    def sized(self, results: Sequence[Result]) -> list[Result]:
        """The results with each finding on a table of known size saying how big it is."""
        if not self.sizes:
            return list(results)
        return [dataclasses.replace(r, findings=[self._sized(f) for f in r.findings])
                for r in results]

    def _sized(self, finding: Finding) -> Finding:
        if finding.relation is None:
            return finding
        size = self.sizes.get(self.catalog.key(finding.relation))
        if size is None or not size.describe():
            return finding
        note = f"{finding.relation} has {size.describe()} (catalog of {self.source})."
        return dataclasses.replace(finding, message=f"{finding.message}\n{note}")


def schema_from_files(sources: Sequence[tuple[str, str]], version: int) -> Schema:
    """The catalog the schema scripts leave (``(name, text)`` pairs, in order)."""
    text = "\n;\n".join(script for _name, script in sources)
    return Schema(catalog_from_script(text, version=version),
                  ", ".join(name for name, _script in sources))


def schema_from_database(dsn: str, scripts: Sequence[str], version: int) -> Schema:
    """The live catalog of the relations the scripts name, read from ``dsn``."""
    import psycopg

    from safeddl.observe.trace import database_label

    names: set[str] = set()
    for script in scripts:
        names |= names_in(analyze_script(script, version=version))
    with psycopg.connect(dsn, autocommit=True, application_name="safeddl lint") as conn:
        def run(sql: str, params: Any = None) -> list[tuple[Any, ...]]:
            return conn.execute(sql, params).fetchall()

        live = read_catalog(run, sorted(names))
        sizes = _sizes(run, live.oids, live.catalog) if live.oids else {}
    return Schema(live.catalog, database_label(dsn), sizes)


def _sizes(run: Any, oids: dict[str, int], catalog: Catalog) -> dict[str, TableSize]:
    """Rows (the catalog's estimate) and bytes (``relpages``) of the tables and
    materialized views among ``oids`` (catalog key -> oid)."""
    rows = run("SELECT c.oid::int8, c.reltuples::float8, c.relpages::int8 * "
               "current_setting('block_size')::int8, c.relkind::text "
               "FROM pg_catalog.pg_class c WHERE c.oid = ANY (%s)", [sorted(set(oids.values()))])
    by_oid = {oid: (tuples, size, kind) for oid, tuples, size, kind in rows}
    sizes = {}
    for key, oid in oids.items():
        if oid not in by_oid:
            continue
        tuples, size, kind = by_oid[oid]
        if kind not in ("r", "m", "p"):
            continue
        relation = catalog.relations.get(key)
        rows = relation.rows if relation is not None and relation.rows is not None else (
            int(tuples) if tuples is not None and tuples >= 0 else None)
        sizes[key] = TableSize(rows, int(size) if size else None)
    return sizes


def _bytes(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:,.0f} {unit}" if unit == "bytes" else f"{value:,.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


__all__ = ["Schema", "TableSize", "schema_from_database", "schema_from_files"]
