"""The ground truth: every lock safeddl predicts is the lock the server takes.

Each statement of ``tests/corpus/statements.sql`` runs on every PostgreSQL version
available against the schema of ``tests/corpus/setup.sql``: in a transaction that
is rolled back (``pg_locks`` of the own backend, ``relfilenode`` before/after), or,
when the server refuses a transaction block, in a throwaway copy of the database
watched from other sessions (:mod:`safeddl.observe.snapshot`). The analysis must agree with
the server on every relation's mode, on rewrites and on "may run in a transaction".
"""

from __future__ import annotations

import contextlib
import functools
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql as pgsql
from psycopg.conninfo import make_conninfo

from safeddl.observe.snapshot import (
    Observation,
    disposable_database,
    drop_database,
    observe_in_transaction,
    observe_outside_transaction,
)

CORPUS_DIR = Path(__file__).resolve().parents[1] / "corpus"
SETUP_SQL = (CORPUS_DIR / "setup.sql").read_text()
STATEMENTS_FILE = CORPUS_DIR / "statements.sql"

# Session settings of every observing session. timestamp -> timestamptz does not
# rewrite when the session's TimeZone is UTC (PostgreSQL 12+); the corpus assumes a
# session that is not on UTC, like the conservative prediction does.
SESSION_OPTIONS = "-c TimeZone=Europe/Paris"


# --- the corpus file format -------------------------------------------------------------

SEPARATOR = "-- @@"
_DIRECTIVE = re.compile(
    r"--\s*(min_version|max_version|note|stdin|plan_dependent|before|requires"
    r"|transaction_dependent)\s*:\s?(.*)$")


@dataclass(frozen=True)
class Entry:
    """One statement of the corpus with its directives."""

    index: int  # 1-based position in the file
    line: int  # line of the statement's first line (after the directives)
    sql: str
    min_version: int | None = None
    max_version: int | None = None
    notes: tuple[str, ...] = ()
    stdin: tuple[str, ...] = ()
    # relations whose lock depends on the data or the plan (partition pruning, tuple
    # routing): the prediction may name them or not, but where both the prediction
    # and the server have a lock on one, the modes must agree
    plan_dependent: frozenset[str] = frozenset()
    # statements run and committed before this one (in a copy of the database), whose
    # effect on the schema the analysis learns: renames, dropped columns...
    before: tuple[str, ...] = ()
    # extensions the entry needs (skipped on a server that does not ship them)
    requires: tuple[str, ...] = ()
    # why the server's refusal of a transaction block depends on the data or the
    # arguments (a COMMIT in a branch this run does not take): the prediction must be
    # "outside a transaction" (it may be refused), the server may have run it in one
    transaction_dependent: str | None = None

    @property
    def id(self) -> str:
        words = re.sub(r"--[^\n]*", " ", self.sql)
        slug = re.sub(r"[^a-z0-9]+", "-", words.lower()).strip("-")[:48].rstrip("-")
        return f"{self.index:03d}-{slug}"

    def runs_on(self, version: int) -> bool:
        return (self.min_version is None or version >= self.min_version) and (
            self.max_version is None or version <= self.max_version
        )

    @property
    def copy_data(self) -> bytes | None:
        return "".join(line + "\n" for line in self.stdin).encode() if self.stdin else None


def load_corpus(text: str) -> list[Entry]:
    """Entries separated by lines that are exactly ``-- @@``.

    Directive lines (``-- min_version: 12``...) may stand anywhere among an
    entry's leading comment lines; they are not part of the statement, the other
    comments are.

    A chunk with nothing but comments (the file's header) is not an entry.
    """
    entries: list[Entry] = []
    chunk: list[tuple[int, str]] = []
    for number, line in enumerate([*text.splitlines(), SEPARATOR], start=1):
        if line.rstrip() != SEPARATOR:
            chunk.append((number, line))
            continue
        directives: dict[str, list[str]] = {}
        body: list[tuple[int, str]] = []
        in_leading_comments = True
        for line_number, chunk_line in chunk:
            stripped = chunk_line.strip()
            in_leading_comments = in_leading_comments and (
                not stripped or stripped.startswith("--")
            )
            match = _DIRECTIVE.match(stripped) if in_leading_comments else None
            if match:
                directives.setdefault(match.group(1), []).append(match.group(2).rstrip())
            elif body or stripped:
                body.append((line_number, chunk_line))
        chunk = []
        code = [l for _, l in body if l.strip() and not l.strip().startswith("--")]
        if not code:
            continue
        sql = "\n".join(l for _, l in body).strip()
        entries.append(
            Entry(
                index=len(entries) + 1,
                line=body[0][0],
                sql=sql,
                min_version=int(directives["min_version"][-1])
                if "min_version" in directives
                else None,
                max_version=int(directives["max_version"][-1])
                if "max_version" in directives
                else None,
                notes=tuple(directives.get("note", ())),
                stdin=tuple(directives.get("stdin", ())),
                before=tuple(directives.get("before", ())),
                requires=tuple(directives.get("requires", ())),
                transaction_dependent=directives["transaction_dependent"][-1]
                if "transaction_dependent" in directives
                else None,
                plan_dependent=frozenset(
                    name.strip()
                    for value in directives.get("plan_dependent", ())
                    for name in value.split(",")
                    if name.strip()
                ),
            )
        )
    return entries


ENTRIES = load_corpus(STATEMENTS_FILE.read_text())


# --- the database the corpus runs against -----------------------------------------------


class CorpusDatabase:
    """``setup.sql`` loaded once per server: a template, and a working copy of it."""

    TEMPLATE = "safeddl_corpus_template"
    WORK = "safeddl_corpus"

    def __init__(self, admin_dsn: str, version: int) -> None:
        self.admin_dsn = admin_dsn
        self.version = version
        self._cache: dict[int, Observation] = {}
        self._extensions: dict[str, bool] = {}
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            for name in (self.WORK, self.TEMPLATE):
                drop_database(admin, name)
            admin.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(self.TEMPLATE)))
            with psycopg.connect(self.dsn(self.TEMPLATE), autocommit=True) as conn:
                conn.execute(SETUP_SQL)
                conn.execute("VACUUM ANALYZE")  # nothing left for autovacuum to do
            # nobody (autovacuum included) connects to the template again, so copying
            # it never waits for other sessions to leave
            admin.execute(
                pgsql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(
                    pgsql.Identifier(self.TEMPLATE)
                )
            )
            admin.execute(
                pgsql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    pgsql.Identifier(self.WORK), pgsql.Identifier(self.TEMPLATE)
                )
            )
        self.conn: psycopg.Connection[Any] = psycopg.connect(self.dsn(self.WORK))

    def has_extension(self, name: str) -> bool:
        if name not in self._extensions:
            with psycopg.connect(self.admin_dsn, autocommit=True) as admin:
                row = admin.execute(
                    "SELECT count(*) FROM pg_available_extensions WHERE name = %s", (name,)
                ).fetchone()
            self._extensions[name] = bool(row and row[0])
        return self._extensions[name]

    def dsn(self, dbname: str) -> str:
        return make_conninfo(self.admin_dsn, dbname=dbname, options=SESSION_OPTIONS)

    @contextlib.contextmanager
    def _copy(self, entry: Entry) -> Iterator[tuple[str, psycopg.Connection[Any]]]:
        """A throwaway copy of the database with the entry's ``before`` statements
        committed in it; yields its DSN and the (idle) session that ran them, whose
        session state (prepared statements) the entry may need."""
        with disposable_database(self.admin_dsn, self.TEMPLATE) as dsn:
            dsn = make_conninfo(dsn, options=SESSION_OPTIONS)
            with psycopg.connect(dsn, autocommit=True) as conn:
                for statement in entry.before:
                    conn.execute(statement)
                conn.autocommit = False
                yield dsn, conn

    def observe(self, entry: Entry) -> Observation:
        """The server's answer for ``entry`` (observed once per server)."""
        if entry.index not in self._cache:
            if entry.before:
                with self._copy(entry) as (_dsn, conn):
                    observation = observe_in_transaction(conn, entry.sql,
                                                         copy_data=entry.copy_data)
            else:
                observation = observe_in_transaction(self.conn, entry.sql,
                                                     copy_data=entry.copy_data)
            if not observation.transactional:
                # refused inside a transaction block: run it for real, in a copy where
                # the "before" statements ran (from another session)
                with self._copy(entry) as (dsn, _conn):
                    observation = observe_outside_transaction(dsn, entry.sql, None)
            self._cache[entry.index] = observation
        return self._cache[entry.index]

    def close(self) -> None:
        self.conn.close()
        with psycopg.connect(self.admin_dsn, autocommit=True) as admin:
            for name in (self.WORK, self.TEMPLATE):
                drop_database(admin, name)


@pytest.fixture(scope="session")
def corpus_db(safeddl_server_each: Any) -> Iterator[CorpusDatabase]:
    db = CorpusDatabase(safeddl_server_each.dsn, safeddl_server_each.version)
    try:
        yield db
    finally:
        db.close()


def _entry_on(corpus_db: CorpusDatabase, entry: Entry) -> None:
    if not entry.runs_on(corpus_db.version):
        pytest.skip(
            f"needs PostgreSQL {entry.min_version or ''}..{entry.max_version or ''}, "
            f"server is {corpus_db.version}"
        )
    missing = [name for name in entry.requires if not corpus_db.has_extension(name)]
    if missing:
        pytest.skip(f"needs the extension(s) {', '.join(missing)}, which this server "
                    "does not ship")


# --- comparing prediction and observation -----------------------------------------------


def _describe(locks: dict[str, Any], rewritten: set[str] | frozenset[str]) -> str:
    if not locks:
        return "(no table locks)"
    return ", ".join(
        f"{rel} {mode.pg_name}{' +rewrite' if rel in rewritten else ''}"
        for rel, mode in sorted(locks.items())
    )


@functools.cache
def _setup_catalog_template(version: int) -> Any:
    from safeddl.analysis import catalog_from_script

    return catalog_from_script(SETUP_SQL, version=version)


def _setup_catalog(version: int) -> Any:
    """What the analysis knows of setup.sql (a fresh copy per statement)."""
    return _setup_catalog_template(version).copy()


def compare(entry: Entry, version: int, observation: Observation) -> list[str]:
    """The differences between the analysis and the server, as readable lines."""
    from safeddl.analysis import analyze_script
    from safeddl.locks import Holds
    from safeddl.sql import qualified_name

    catalog = _setup_catalog(version)
    for before in entry.before:
        analyze_script(before, version=version, catalog=catalog)
    statements = analyze_script(entry.sql, version=version, catalog=catalog)
    if len(statements) != 1:
        return [f"the analysis found {len(statements)} statements, not 1"]
    [stmt] = statements
    predicted = {qualified_name(lock.relation): lock.mode for lock in stmt.locks}
    observed = dict(observation.locks)
    # A lock the analysis puts on an index itself is compared with the index's own
    # lock (the mode only: rewrites are tracked for tables). Outside a transaction
    # only the tables are guarded, so an index's lock is not reliably seen there.
    index_locks = {lock.relation: lock.mode for lock in observation.all_locks}
    indexes = {qualified_name(lock.relation) for lock in stmt.locks if lock.object == "index"}
    for name in indexes:
        if not observation.transactional:
            predicted.pop(name)
        elif name in index_locks:
            observed[name] = index_locks[name]
    predicted_rewrites = {
        qualified_name(lock.relation)
        for lock in stmt.locks
        if lock.holds == Holds.REWRITE and lock.object != "index"
    }
    problems: list[str] = []
    for rel in sorted(set(predicted) | set(observed)):
        want, got = predicted.get(rel), observed.get(rel)
        if rel in entry.plan_dependent and (want is None or got is None):
            continue
        if want is None and stmt.unknown_locks:
            # the analysis says the lock set is not known from the text (and names the
            # part it knows): a lock beyond that part is what it warned about
            continue
        if want != got:
            problems.append(
                f"{rel}: predicted {want.pg_name if want else 'no lock'}, "
                f"server took {got.pg_name if got else 'no lock'}"
            )
    for rel in sorted((predicted_rewrites ^ set(observation.rewritten)) - entry.plan_dependent):
        problems.append(
            f"{rel}: predicted {'a rewrite' if rel in predicted_rewrites else 'no rewrite'}, "
            f"server {'rewrote it' if rel in observation.rewritten else 'did not rewrite it'}"
        )
    if entry.transaction_dependent is not None:
        # the server's answer holds for this run only: the prediction must be the one
        # that holds for every run (it may be refused in a transaction block)
        if stmt.transactional:
            problems.append(
                f"transactional: predicted True, but whether the server refuses a "
                f"transaction block depends on the run ({entry.transaction_dependent}); "
                f"server {observation.transactional} this time"
            )
    elif stmt.transactional != observation.transactional:
        problems.append(
            f"transactional: predicted {stmt.transactional}, server {observation.transactional}"
        )
    if problems:
        outside = " (outside a transaction)"
        problems += [
            f"predicted: {_describe(predicted, predicted_rewrites)}"
            + ("" if stmt.transactional else outside),
            f"observed:  {_describe(observed, observation.rewritten)}"
            + ("" if observation.transactional else outside),
        ]
    return problems


def _where(entry: Entry, version: int) -> str:
    notes = "".join(f"\n  note: {note}" for note in entry.notes)
    sql = "".join(f"\n    {line}" for line in entry.sql.splitlines())
    return f"PostgreSQL {version}, {STATEMENTS_FILE.name}:{entry.line}{notes}{sql}"


# --- the tests ---------------------------------------------------------------------------


def test_corpus_is_big_enough() -> None:
    assert len(ENTRIES) >= 170
    assert len({entry.id for entry in ENTRIES}) == len(ENTRIES)


def test_loader_reads_directives() -> None:
    text = (
        "-- header\n-- @@\n-- min_version: 14\n-- c\n-- note: n\n-- stdin: a,b\n"
        "-- plan_dependent: public.a, b.c\nSELECT 1;\n-- note: not a directive\n-- @@\n"
        "-- transaction_dependent: a branch\nSELECT 2"
    )
    first, second = load_corpus(text)
    assert first.min_version == 14 and first.notes == ("n",) and first.stdin == ("a,b",)
    assert first.plan_dependent == {"public.a", "b.c"}
    assert first.transaction_dependent is None
    assert second.transaction_dependent == "a branch"
    assert first.sql == "-- c\nSELECT 1;\n-- note: not a directive" and first.line == 4
    assert second.sql == "SELECT 2" and second.index == 2


@pytest.mark.parametrize("entry", ENTRIES, ids=[entry.id for entry in ENTRIES])
def test_statement_runs_on_server(corpus_db: CorpusDatabase, entry: Entry) -> None:
    """Every corpus statement is valid against setup.sql (else it proves nothing)."""
    _entry_on(corpus_db, entry)
    observation = corpus_db.observe(entry)
    assert observation.error is None, (
        f"{_where(entry, corpus_db.version)}\n  -> {observation.error}"
    )


@pytest.mark.parametrize("entry", ENTRIES, ids=[entry.id for entry in ENTRIES])
def test_prediction_matches_server(corpus_db: CorpusDatabase, entry: Entry) -> None:
    _entry_on(corpus_db, entry)
    observation = corpus_db.observe(entry)
    if observation.error is not None:
        pytest.fail(f"{_where(entry, corpus_db.version)}\n  -> {observation.error}")
    problems = compare(entry, corpus_db.version, observation)
    assert not problems, _where(entry, corpus_db.version) + "".join(
        f"\n  {line}" for line in problems
    )


# --- the observing machinery itself ------------------------------------------------------


def test_observation_is_rolled_back_and_bounded(safeddl_db_each: str) -> None:
    from safeddl.locks import LockMode
    from safeddl.observe.snapshot import lock_snapshot

    with psycopg.connect(safeddl_db_each, autocommit=True) as setup:
        setup.execute(
            "CREATE TABLE a (id integer PRIMARY KEY);"
            " INSERT INTO a SELECT generate_series(1, 1000); CREATE TABLE b (id integer)"
        )
    with psycopg.connect(safeddl_db_each) as conn:
        seen = observe_in_transaction(conn, "ALTER TABLE a ALTER COLUMN id TYPE bigint")
        assert seen.locks == {"public.a": LockMode.ACCESS_EXCLUSIVE}
        assert seen.rewritten == {"public.a"} and seen.transactional and seen.error is None
        assert not conn.autocommit  # restored
        row = conn.execute(
            "SELECT format_type(atttypid, NULL) FROM pg_attribute"
            " WHERE attrelid = 'a'::regclass AND attname = 'id'"
        ).fetchone()
        assert row == ("integer",)  # rolled back
        conn.rollback()
        refused = observe_in_transaction(conn, "VACUUM a")
        assert not refused.transactional and refused.sqlstate == "25001"
        conn.execute("LOCK TABLE a IN ROW SHARE MODE")
        assert lock_snapshot(conn) == {"public.a": LockMode.ROW_SHARE}
        conn.rollback()

        # a lock held by someone else than the guards: cancelled after the timeout
        conn.execute("LOCK TABLE a IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        stuck = observe_outside_transaction(safeddl_db_each, "VACUUM a", ["public.b"], timeout=1.0)
        assert time.monotonic() - started < 5
        assert stuck.sqlstate == "57014", stuck
        conn.rollback()

    done = observe_outside_transaction(
        safeddl_db_each, "CREATE INDEX CONCURRENTLY ON a (id)", ["a"]
    )
    assert done.locks == {"public.a": LockMode.SHARE_UPDATE_EXCLUSIVE} and done.error is None


def test_a_refused_commit_counts_only_for_call_and_do(safeddl_db_each: str) -> None:
    with psycopg.connect(safeddl_db_each, autocommit=True) as setup:
        setup.execute(
            "CREATE TABLE c (id integer);"
            " CREATE PROCEDURE c_commit() LANGUAGE plpgsql AS $$ BEGIN COMMIT; END $$;"
            " CREATE FUNCTION c_commit_f() RETURNS integer LANGUAGE plpgsql"
            " AS $$ BEGIN COMMIT; RETURN 1; END $$"
        )
    with psycopg.connect(safeddl_db_each) as conn:
        for sql in ("CALL c_commit()", "/* a comment */ DO $$ BEGIN ROLLBACK; END $$"):
            refused = observe_in_transaction(conn, sql)
            assert not refused.transactional and refused.sqlstate == "2D000", refused
        # a function may never COMMIT: the same SQLSTATE is a failure, not a refusal
        failed = observe_in_transaction(conn, "SELECT c_commit_f()")
        assert failed.transactional and failed.sqlstate == "2D000" and failed.error
    # outside a transaction block the CALL runs
    done = observe_outside_transaction(safeddl_db_each, "CALL c_commit()", ["c"])
    assert done.error is None and not done.transactional
