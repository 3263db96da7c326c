"""``safeddl trace``: run a script on a real database and compare the locks each statement
took with what ``safeddl analyze`` predicted.

The script runs statement by statement in ONE transaction that is rolled back at the
end (:class:`safeddl.observe.ScriptTransaction`): each statement sees what the earlier
ones did, and nothing is committed. It does run, though, with its real cost: a table
rewrite rewrites, and every lock is held until the rollback. Point it at a staging copy,
never at a live database.

Per statement it reports the table locks the server granted (``pg_locks`` of the
session), the tables rewritten (``pg_class.relfilenode`` changed and the new file has
data), and how that differs from the prediction: mode per relation, rewrites, and
"may run in a transaction block". Not run, and reported as skipped with the reason:
statements that cannot run in a transaction block (``CONCURRENTLY``, ``VACUUM``...;
running them would commit) and transaction control (``BEGIN``, ``COMMIT``...).

What cannot be seen: PostgreSQL lists each lock mode once per session, so a mode the
transaction already held before the statement cannot be told apart from one the
statement asked for again; such a prediction is reported as "already held" (agreeing,
unverified). An empty table that gets a new file may have been rewritten or truncated:
the rewrite is not judged either way. Deferred constraint triggers, which would run at
COMMIT, never run.

JSON shape (``--format json``; keys are stable)::

    {"file": "m.sql", "database": "staging", "server_version": 18, "pg_version": 18,
     "rolled_back": true,
     "statements": [
       {"line": 3, "sql": "ALTER TABLE ...", "status": "ran",   # ran | skipped | failed
        "reason": null,                                          # why skipped / the error
        "predicted": {"transactional": true, "understood": true,
                      "locks": [{"relation": "public.orders", "mode": "AccessExclusiveLock",
                                 "holds": "rewrite"}],
                      "rewrites": ["public.orders"]},
        "observed": {"locks": [{"relation": "public.orders", "mode": "AccessExclusiveLock",
                                "already_held": false}],
                     "rewrites": ["public.orders"]},
        "differences": [],
        "agrees": true}],
     "summary": {"statements": 1, "ran": 1, "skipped": 0, "failed": 0, "disagreements": 0}}

``agrees`` is null for a statement that did not run. Relations are ``schema.name`` as
the server resolved them (unquoted); an index the analysis locks is compared on its
table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from safeddl.analysis import NEWEST, OLDEST, Action, Catalog, Statement
from safeddl.locks import Holds, LockMode
from safeddl.observe.snapshot import (
    TABLE_RELKINDS,
    ScriptTransaction,
    StepObservation,
    refused_in_transaction_block,
)
from safeddl.rules import lint_script

if TYPE_CHECKING:  # pragma: no cover - typing only
    from rich.console import Console

__all__ = ["LockDifference", "TraceReport", "TracedStep", "run_trace"]

RAN = "ran"
SKIPPED = "skipped"
FAILED = "failed"
_WIDTH = 60


@dataclass(frozen=True)
class PredictedLock:
    """A lock of the prediction, on the relation the server resolved the name to."""

    relation: str  # "schema.name" (the index's table for a lock on an index)
    written: str  # as in the script
    mode: LockMode
    holds: Holds


@dataclass(frozen=True)
class ObservedLock:
    relation: str
    mode: LockMode
    already_held: bool  # the transaction held this mode before the statement


@dataclass(frozen=True)
class LockDifference:
    relation: str
    text: str


@dataclass(frozen=True)
class TracedStep:
    """One statement of the script: the prediction, what the server did, the differences."""

    line: int
    sql: str
    status: str  # ran | skipped | failed
    reason: str | None
    statement: Statement
    predicted: tuple[PredictedLock, ...]
    predicted_rewrites: frozenset[str]
    observed: tuple[ObservedLock, ...] = ()
    rewritten: frozenset[str] = frozenset()
    differences: tuple[str, ...] = ()

    @property
    def agrees(self) -> bool | None:
        """None when it did not run (skipped, or failed for another reason than the
        prediction)."""
        if self.differences:
            return False
        return True if self.status == RAN else None

    def as_json(self) -> dict[str, Any]:
        statement = self.statement
        return {
            "line": self.line,
            "sql": self.sql,
            "status": self.status,
            "reason": self.reason,
            "predicted": {
                "transactional": statement.transactional,
                "understood": statement.understood,
                "locks": [{"relation": lock.relation, "mode": lock.mode.pg_name,
                           "holds": lock.holds.value} for lock in self.predicted],
                "rewrites": sorted(self.predicted_rewrites),
            },
            "observed": {
                "locks": [{"relation": lock.relation, "mode": lock.mode.pg_name,
                           "already_held": lock.already_held} for lock in self.observed],
                "rewrites": sorted(self.rewritten),
            },
            "differences": list(self.differences),
            "agrees": self.agrees,
        }


@dataclass(frozen=True)
class TraceReport:
    file: str
    database: str
    server_version: int
    pg_version: int
    steps: tuple[TracedStep, ...]

    @property
    def disagreements(self) -> int:
        return sum(1 for step in self.steps if step.differences)

    def count(self, status: str) -> int:
        return sum(1 for step in self.steps if step.status == status)

    @property
    def ok(self) -> bool:
        """Every statement that ran agreed with the prediction, and none failed."""
        return self.disagreements == 0 and self.count(FAILED) == 0

    def as_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "database": self.database,
            "server_version": self.server_version,
            "pg_version": self.pg_version,
            "rolled_back": True,
            "statements": [step.as_json() for step in self.steps],
            "summary": {
                "statements": len(self.steps),
                "ran": self.count(RAN),
                "skipped": self.count(SKIPPED),
                "failed": self.count(FAILED),
                "disagreements": self.disagreements,
            },
        }

    def summary(self) -> str:
        if self.disagreements:
            verdict = f"{self.disagreements} statement(s) differ from the prediction"
        else:
            verdict = "every statement that ran took the predicted locks"
        if self.count(FAILED):
            verdict += f"; {self.count(FAILED)} failed, so could not be checked"
        return (f"safeddl trace: {verdict} ({self.count(RAN)} ran, {self.count(SKIPPED)} "
                f"skipped, {self.count(FAILED)} failed; PostgreSQL {self.server_version}, "
                f"predicted for {self.pg_version}; rolled back)")


def database_label(dsn: str) -> str:
    """``dbname on host`` for messages (no password)."""
    params = conninfo_to_dict(dsn)
    dbname = params.get("dbname") or params.get("user") or "?"
    host = params.get("host") or "the local socket"
    return f"{dbname} on {host}"


def run_trace(dsn: str, script: str, *, file: str = "<script>", pg_version: int | None = None,
              lock_timeout: float = 5.0, statement_timeout: float = 600.0,
              catalog: Catalog | None = None) -> TraceReport:
    """Run ``script`` on the database of ``dsn`` in a transaction that is rolled back, and
    compare each statement's locks with the prediction for ``pg_version`` (default: the
    server's major version), made with what ``catalog`` knows of the schema (if given)."""
    with psycopg.connect(dsn, autocommit=True, application_name="safeddl trace") as conn:
        server_version = conn.info.server_version // 10000
        version = pg_version if pg_version is not None else min(max(server_version, OLDEST),
                                                                 NEWEST)
        results = lint_script(script, version=version, catalog=catalog)
        steps: list[TracedStep] = []
        with ScriptTransaction(conn, timeout=statement_timeout,
                               lock_timeout=lock_timeout) as transaction:
            for result in results:
                steps.append(_trace_statement(transaction, result.statement))
    return TraceReport(file, database_label(dsn), server_version, version, tuple(steps))


def _skip_reason(statement: Statement) -> str | None:
    if statement.sql.startswith("\\"):
        return "a psql meta-command: psql runs it, the server never sees it"
    if statement.kind is Action.TRANSACTION_CONTROL:
        return ("transaction control: the whole script runs in one transaction that is "
                "rolled back")
    if not statement.transactional:
        return ("cannot run inside a transaction block (running it would commit): not run, "
                "its locks are not checked")
    return None


def _trace_statement(transaction: ScriptTransaction, statement: Statement) -> TracedStep:
    predicted = tuple(_resolve_prediction(transaction, statement))
    predicted_rewrites = frozenset(lock.relation for lock in predicted
                                   if lock.holds is Holds.REWRITE)
    skipped = TracedStep(statement.line, statement.sql, SKIPPED, _skip_reason(statement),
                         statement, predicted, predicted_rewrites)
    if skipped.reason is not None:
        return skipped
    step = transaction.run(statement.sql)
    if step.error is not None:
        differences: tuple[str, ...] = ()
        if refused_in_transaction_block(statement.sql, step.sqlstate):
            refused = ("predicted it may run inside a transaction block; the server "
                       f"refused it there (SQLSTATE {step.sqlstate})")
            differences = (refused,)
        return dataclasses.replace(skipped, status=FAILED, reason=step.error,
                                   differences=differences)
    return dataclasses.replace(
        skipped, status=RAN,
        observed=_observed(step, {lock.relation: lock.mode for lock in predicted}),
        rewritten=step.rewritten,
        differences=tuple(_differences(statement, predicted, predicted_rewrites, step)))


def _resolve_prediction(transaction: ScriptTransaction,
                        statement: Statement) -> Iterable[PredictedLock]:
    from safeddl.sql.names import qualified_name

    strongest: dict[str, PredictedLock] = {}
    for lock in statement.locks:
        resolved = transaction.resolve(lock.relation)
        if resolved is None:
            relation = qualified_name(lock.relation)
        else:
            name, _relkind, table = resolved
            # a lock on an index is compared on its table, which the server locks too
            # (DROP INDEX, REINDEX), except for ALTER INDEX: that locks the index only
            on_table = lock.object == "index" and table is not None \
                and statement.kind is not Action.ALTER_INDEX
            relation = table if on_table and table is not None else name
        current = strongest.get(relation)
        if current is None or lock.mode > current.mode:
            strongest[relation] = PredictedLock(relation, lock.relation, lock.mode, lock.holds)
    return strongest.values()


def _observed(step: StepObservation, predicted: dict[str, LockMode]) -> tuple[ObservedLock, ...]:
    """Per table (and predicted relation): the strongest mode the statement took, or the
    predicted mode when the transaction already held it (then not observable)."""
    out: list[ObservedLock] = []
    for relation in sorted(set(step.taken) | (set(predicted) & set(step.held))):
        if step.relkinds.get(relation) not in TABLE_RELKINDS and relation not in predicted:
            continue
        got, want = step.taken.get(relation), predicted.get(relation)
        if want is not None and want in step.held.get(relation, ()) and (
                got is None or got < want):
            out.append(ObservedLock(relation, want, True))
        elif got is not None:
            out.append(ObservedLock(relation, got, False))
    return tuple(out)


def _differences(statement: Statement, predicted: tuple[PredictedLock, ...],
                 predicted_rewrites: frozenset[str], step: StepObservation) -> Iterable[str]:
    if not statement.understood:
        yield f"safeddl could not read this statement ({statement.reason or 'unknown'})"
    wanted = {lock.relation: lock.mode for lock in predicted}
    taken = {rel: mode for rel, mode in step.taken.items()
             if step.relkinds.get(rel) in TABLE_RELKINDS or rel in wanted}
    for relation in sorted(set(wanted) | set(taken)):
        want, got = wanted.get(relation), taken.get(relation)
        held = step.held.get(relation, frozenset())
        if want is None:
            assert got is not None
            yield f"{relation}: predicted no lock, the server took {got.pg_name}"
        elif got is not None and got > want:
            yield f"{relation}: predicted {want.pg_name}, the server took {got.pg_name}"
        elif want not in held:
            took = got.pg_name if got is not None else "no new lock"
            yield f"{relation}: predicted {want.pg_name}, the server took {took}"
    rewritten = set(step.rewritten)
    # an empty table that got a new file may have been rewritten: no verdict either way
    for relation in sorted((set(predicted_rewrites) ^ rewritten) - step.renewed_empty):
        if relation in predicted_rewrites:
            yield f"{relation}: predicted a rewrite, the server did not rewrite it"
        else:
            yield f"{relation}: predicted no rewrite, the server rewrote it"


# --------------------------------------------------------------------------- output


def _short(sql: str, width: int = _WIDTH) -> str:
    flat = " ".join(sql.split())
    return flat if len(flat) <= width else flat[: width - 1].rstrip() + "…"


def _describe_predicted(step: TracedStep) -> str:
    lines = [f"{lock.relation}: {lock.mode.pg_name}"
             + (f" ({lock.holds.value})" if lock.holds is not Holds.BRIEF else "")
             for lock in step.predicted]
    if not step.statement.transactional:
        lines.append("outside a transaction block")
    return "\n".join(lines) or "-"


def _describe_observed(step: TracedStep) -> str:
    if step.status != RAN:
        return "-"
    lines = [f"{lock.relation}: {lock.mode.pg_name}"
             + (" (already held)" if lock.already_held else "")
             + (" (rewrite)" if lock.relation in step.rewritten else "")
             for lock in step.observed]
    lines += [f"{rel}: rewritten" for rel in sorted(step.rewritten)
              if rel not in {lock.relation for lock in step.observed}]
    return "\n".join(lines) or "-"


def _verdict(step: TracedStep) -> str:
    if step.status == SKIPPED:
        return f"skipped: {step.reason}"
    lines = list(step.differences)
    if step.status == FAILED:
        lines.append(f"failed: {step.reason}")
    return "\n".join(lines) or "agrees"


def plain_report(report: TraceReport) -> str:
    """The report without rich."""
    out = [f"== {report.file} on {report.database}"]
    for step in report.steps:
        out.append(f"{report.file}:{step.line}: {_short(step.sql)}")
        out += [f"    predicted {text}" for text in _describe_predicted(step).splitlines()]
        out += [f"    observed  {text}" for text in _describe_observed(step).splitlines()]
        out += [f"    {text}" for text in _verdict(step).splitlines()]
    out.append(report.summary())
    return "\n".join(out)


def print_rich_report(report: TraceReport, console: Console) -> None:
    from rich.table import Table

    table = Table(title=f"{report.file} on {report.database} (rolled back)", show_lines=True,
                  title_justify="left")
    for header in ("line", "statement", "predicted", "server took", "result"):
        table.add_column(header, overflow="fold")
    for step in report.steps:
        style = ("red" if step.differences or step.status == FAILED
                 else "yellow" if step.status == SKIPPED else None)
        table.add_row(str(step.line), _short(step.sql), _describe_predicted(step),
                      _describe_observed(step), _verdict(step), style=style)
    console.print(table)
    console.print(report.summary())


def run_command(dsn: str, file: str, script: str, *, output: str, pg_version: int | None,
                lock_timeout: str, statement_timeout: str, confirmed: bool) -> int:
    """``safeddl trace``: warn, confirm, run, print; the exit code (0 agrees, 1 differs or
    a statement failed, 2 refused to run)."""
    import json
    import sys

    import click

    from safeddl.runtime.errors import ConfigError
    from safeddl.runtime.policy import as_timedelta, parse_timeout

    try:
        lock_wait = as_timedelta(parse_timeout(lock_timeout, "--lock-timeout")).total_seconds()
        run_limit = as_timedelta(parse_timeout(statement_timeout, "--statement-timeout")
                                 ).total_seconds()
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None
    label = database_label(dsn)
    click.echo(f"safeddl trace: running every statement of {file} on {label} in one "
               "transaction that is rolled back at the end. The statements really run and "
               "hold their locks until then: use a staging copy, not a live database.",
               err=True)
    if not confirmed:
        if not sys.stdin.isatty():
            click.echo("safeddl trace: not confirmed; pass --yes to run it.", err=True)
            return 2
        if not click.confirm("Run it?", err=True):
            return 2
    try:
        report = run_trace(dsn, script, file=file, pg_version=pg_version,
                           lock_timeout=lock_wait, statement_timeout=run_limit)
    except psycopg.Error as exc:
        click.echo(f"safeddl trace: {label}: {exc}", err=True)
        return 2
    if output == "json":
        click.echo(json.dumps(report.as_json(), indent=2, ensure_ascii=False))
    else:
        try:
            from rich.console import Console
        except ImportError:  # pragma: no cover - rich is optional
            click.echo(plain_report(report))
        else:
            print_rich_report(report, Console(soft_wrap=False))
    return 0 if report.ok else 1
