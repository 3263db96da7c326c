"""``safeddl replay``: replay a whole migration history on a scratch database and compare
every statement's locks with the analysis, so that a team can prove safeddl right (or
report a form it gets wrong) on its own schema.

The history is a sequence of scripts, oldest first (the SQL files of a folder in name
order, or the offline SQL of each Alembic revision). A fresh database is created on the
server for the replay and dropped at the end (``keep`` leaves it). For each script, in
order:

1. it is traced (:func:`safeddl.observe.trace.run_trace`): run statement by statement in
   one transaction that is rolled back, reading ``pg_locks`` and ``relfilenode`` after
   each statement, and compared with the analysis. The analysis knows the schema the
   earlier scripts left (their tables are existing tables, not "created in this
   script");
2. it is applied for real, statement by statement, as a migration tool would send it
   (statements that cannot run in a transaction block, such as ``CREATE INDEX
   CONCURRENTLY``, run too), so that the next script meets the schema it expects.

A script that fails to apply stops the replay there (the later ones would fail for the
wrong reason); the report says which statement failed and why.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql as pgsql
from psycopg.conninfo import make_conninfo

from safeddl.analysis import NEWEST, OLDEST, Catalog, analyze_script
from safeddl.observe.trace import FAILED, RAN, TraceReport, database_label, run_trace
from safeddl.sql import split_script

_SCRATCH_PREFIX = "safeddl_replay_"


@dataclass(frozen=True)
class ReplayedScript:
    """One script of the history: its trace, and whether applying it for real worked."""

    label: str
    trace: TraceReport
    apply_error: str | None = None  # "line N: <error>" when applying it failed

    def as_json(self) -> dict[str, Any]:
        data = self.trace.as_json()
        data["applied"] = self.apply_error is None
        data["apply_error"] = self.apply_error
        return data


@dataclass(frozen=True)
class ReplayReport:
    database: str  # where the scratch database was created
    server_version: int
    pg_version: int
    scripts: tuple[ReplayedScript, ...]
    total: int  # scripts in the history (more than replayed when one failed to apply)
    kept: str | None = None  # the scratch database's name, when it was kept

    @property
    def statements(self) -> int:
        return sum(len(s.trace.steps) for s in self.scripts)

    def count(self, status: str) -> int:
        return sum(s.trace.count(status) for s in self.scripts)

    @property
    def disagreements(self) -> int:
        return sum(s.trace.disagreements for s in self.scripts)

    @property
    def stopped_at(self) -> str | None:
        """The script whose application failed (the replay stopped there)."""
        return next((s.label for s in self.scripts if s.apply_error is not None), None)

    @property
    def ok(self) -> bool:
        """The whole history replayed and every statement that ran agreed."""
        return (self.stopped_at is None and len(self.scripts) == self.total
                and self.disagreements == 0 and self.count(FAILED) == 0)

    @property
    def agreement(self) -> float | None:
        """Share of the statements that ran whose locks agreed with the analysis."""
        ran = self.count(RAN)
        return None if ran == 0 else (ran - self.disagreements) / ran

    @property
    def relations(self) -> tuple[int, int]:
        """(agreeing, compared): over the statements that ran, each relation the
        prediction or the server locked counts once per statement, and agrees when
        mode and rewrite agree."""
        agreeing = compared = 0
        for script in self.scripts:
            for step in script.trace.steps:
                if step.status != RAN:
                    continue
                names = ({lock.relation for lock in step.predicted}
                         | {lock.relation for lock in step.observed})
                wrong = {text.split(":", 1)[0] for text in step.differences}
                compared += len(names | wrong)
                agreeing += len(names - wrong)
        return agreeing, compared

    def as_json(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "server_version": self.server_version,
            "pg_version": self.pg_version,
            "kept_database": self.kept,
            "scripts": [s.as_json() for s in self.scripts],
            "summary": {
                "scripts": self.total,
                "replayed": len(self.scripts),
                "stopped_at": self.stopped_at,
                "statements": self.statements,
                "ran": self.count(RAN),
                "skipped": sum(s.trace.count("skipped") for s in self.scripts),
                "failed": self.count(FAILED),
                "disagreements": self.disagreements,
                "agreement": self.agreement,
                "relations_compared": self.relations[1],
                "relations_agreeing": self.relations[0],
            },
        }

    def summary(self) -> str:
        agreement = self.agreement
        share = "no statement ran" if agreement is None else f"{agreement:.1%} agreed"
        agreeing, compared = self.relations
        if compared:
            share += f" ({agreeing} of {compared} relation locks, {agreeing / compared:.1%})"
        text = (f"safeddl replay: {len(self.scripts)} of {self.total} script(s), "
                f"{self.statements} statement(s): {self.count(RAN)} ran, {share}, "
                f"{self.disagreements} differ from the prediction, {self.count(FAILED)} "
                f"failed in the trace (PostgreSQL {self.server_version}, predicted for "
                f"{self.pg_version})")
        if self.kept is not None:
            text += f"; the database {self.kept} was kept"
        if self.stopped_at is not None:
            failed = next(s for s in self.scripts if s.label == self.stopped_at)
            text += f"; stopped: applying {self.stopped_at} failed at {failed.apply_error}"
        return text


def replay_history(dsn: str, scripts: Sequence[tuple[str, str]], *,
                   pg_version: int | None = None, lock_timeout: float = 5.0,
                   statement_timeout: float = 600.0, keep: bool = False) -> ReplayReport:
    """Replay ``scripts`` (``(label, sql)`` pairs, oldest first) in a new database on the
    server of ``dsn`` (the role needs CREATEDB), and compare each statement's locks with
    the prediction for ``pg_version`` (default: the server's major version)."""
    with _scratch_database(dsn, keep=keep) as (name, scratch):
        with psycopg.connect(scratch, autocommit=True) as conn:
            server_version = conn.info.server_version // 10000
        version = pg_version if pg_version is not None else min(max(server_version, OLDEST),
                                                                 NEWEST)
        catalog = Catalog()
        replayed: list[ReplayedScript] = []
        for label, script in scripts:
            trace = run_trace(scratch, script, file=label, pg_version=version, catalog=catalog,
                              lock_timeout=lock_timeout, statement_timeout=statement_timeout)
            error = _apply(scratch, script, statement_timeout)
            replayed.append(ReplayedScript(label, trace, error))
            if error is not None:
                break
            analyze_script(script, version=version, catalog=catalog, learn=True)
    return ReplayReport(database_label(dsn), server_version, version, tuple(replayed),
                        len(scripts), name if keep else None)


def _apply(dsn: str, script: str, statement_timeout: float) -> str | None:
    """Run the script for real, statement by statement, as a migration tool sends it
    (its own BEGIN / COMMIT kept); the first error, or None. The statement_timeout is a
    startup option of this connection of its own, never a SET another client could
    meet on a pooled server connection."""
    with psycopg.connect(dsn, autocommit=True, application_name="safeddl replay",
                         options=f"-c statement_timeout={int(statement_timeout * 1000)}"
                         ) as conn:
        for raw in split_script(script):
            try:
                conn.execute(raw.text.encode())
            except psycopg.Error as exc:
                return f"line {raw.line}: {str(exc).strip().splitlines()[0]}"
    return None


@contextmanager
def _scratch_database(dsn: str, *, keep: bool) -> Iterator[tuple[str, str]]:
    """A new, empty database on the server of ``dsn`` (its name and conninfo), dropped
    afterwards unless ``keep``."""
    name = _SCRATCH_PREFIX + uuid.uuid4().hex[:12]
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(pgsql.SQL("CREATE DATABASE {} TEMPLATE template0").format(
            pgsql.Identifier(name)))
    try:
        yield name, make_conninfo(dsn, dbname=name)
    finally:
        if not keep:
            with psycopg.connect(dsn, autocommit=True) as admin:
                admin.execute(pgsql.SQL("DROP DATABASE IF EXISTS {}").format(
                    pgsql.Identifier(name)))


__all__ = ["ReplayReport", "ReplayedScript", "replay_history"]
