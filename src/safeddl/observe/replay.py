"""``safeddl replay``: replay a whole migration history on a scratch database and
compare, statement by statement, the locks the server took with the analysis.

Each migration (a SQL file of a folder, in name order, or an Alembic revision rendered
offline) is first traced (:func:`safeddl.observe.trace.run_trace`: run in a
transaction that is rolled back, ``pg_locks`` and ``relfilenode`` read after each
statement), with a prediction that knows the schema the earlier migrations left, as
``safeddl lint --alembic`` does; then it is applied for real, statement by statement
in autocommit (its own ``BEGIN``/``COMMIT`` kept), so the next migration runs against
the schema it expects. Statements that cannot run in a transaction block are applied
but not traced (see ``safeddl trace``).

The measure reported is the agreement per pre-existing relation: over the statements
that ran, each relation that the prediction or the server locked counts once per
statement, and agrees when mode and rewrite agree. A user can thus prove safeddl right
on their own schema, or find the form it gets wrong and report it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from safeddl.analysis import Catalog, analyze_script
from safeddl.observe.trace import RAN, TraceReport, run_trace
from safeddl.sql import split_script

__all__ = ["Migration", "ReplayReport", "migrations_in_folder", "replay"]


@dataclass(frozen=True)
class Migration:
    name: str  # file name or revision label
    sql: str


@dataclass(frozen=True)
class ReplayReport:
    traces: tuple[TraceReport, ...]
    applied: int  # migrations applied for real
    error: str | None = None  # why the replay stopped early

    @property
    def relations(self) -> tuple[int, int]:
        """(agreeing, compared) relation-statement pairs over the statements that ran."""
        agreeing = compared = 0
        for trace in self.traces:
            for step in trace.steps:
                if step.status != RAN:
                    continue
                names = {lock.relation for lock in step.predicted} | {
                    lock.relation for lock in step.observed}
                wrong = {text.split(":", 1)[0] for text in step.differences}
                compared += len(names | wrong)
                agreeing += len(names - wrong)
        return agreeing, compared

    @property
    def ok(self) -> bool:
        return self.error is None and all(trace.ok for trace in self.traces)

    def as_json(self) -> dict[str, Any]:
        agreeing, compared = self.relations
        return {
            "migrations": [trace.as_json() for trace in self.traces],
            "summary": {
                "migrations": len(self.traces), "applied": self.applied,
                "statements": sum(len(t.steps) for t in self.traces),
                "disagreements": sum(t.disagreements for t in self.traces),
                "relations_compared": compared, "relations_agreeing": agreeing,
                "error": self.error,
            },
        }

    def summary(self) -> str:
        agreeing, compared = self.relations
        share = f"{100 * agreeing / compared:.1f}%" if compared else "n/a"
        text = (f"safeddl replay: {len(self.traces)} migrations, "
                f"{sum(len(t.steps) for t in self.traces)} statements, "
                f"{sum(t.disagreements for t in self.traces)} differ from the prediction; "
                f"agreement per relation {share} ({agreeing} of {compared})")
        if self.error:
            text += f"; stopped: {self.error}"
        return text


def _natural(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def migrations_in_folder(folder: str | Path) -> list[Migration]:
    """The ``*.sql`` files of a folder (and its subfolders), in natural name order."""
    root = Path(folder)
    files = sorted((p for p in root.rglob("*.sql") if p.is_file()),
                   key=lambda p: _natural(str(p.relative_to(root))))
    return [Migration(str(p.relative_to(root)), p.read_text(encoding="utf-8-sig"))
            for p in files]


def replay(dsn: str, migrations: Sequence[Migration], *, pg_version: int | None = None,
           lock_timeout: float = 5.0, statement_timeout: float = 600.0,
           catalog: Catalog | None = None) -> ReplayReport:
    """Trace then apply each migration in order (see the module docstring)."""
    schema = catalog.copy() if catalog is not None else Catalog()
    traces: list[TraceReport] = []
    applied = 0
    for migration in migrations:
        trace = run_trace(dsn, migration.sql, file=migration.name, pg_version=pg_version,
                          lock_timeout=lock_timeout, statement_timeout=statement_timeout,
                          catalog=schema)
        traces.append(trace)
        error = _apply(dsn, migration, statement_timeout)
        if error is not None:
            return ReplayReport(tuple(traces), applied, error)
        applied += 1
        analyze_script(migration.sql, version=trace.pg_version, catalog=schema, learn=True)
        for relation in schema.relations.values():
            relation.new = False  # committed: an existing table for the next migration
    return ReplayReport(tuple(traces), applied)


def _apply(dsn: str, migration: Migration, statement_timeout: float) -> str | None:
    with psycopg.connect(dsn, autocommit=True, application_name="safeddl replay") as conn:
        conn.execute(f"SET statement_timeout = {int(statement_timeout * 1000)}")
        for raw in split_script(migration.sql):
            try:
                conn.execute(raw.text.encode())
            except psycopg.Error as exc:
                return f"{migration.name}:{raw.line}: {str(exc).strip().splitlines()[0]}"
    return None
