"""Record the table locks a block of code takes, from ``pg_locks``.

``with LockTracer(target) as trace: ...`` then ``trace.strongest("orders")``,
``trace.statements``, ``trace.locks``. Two ways of seeing locks work together:

Sampling (always on)
    A second session polls ``pg_locks`` joined with ``pg_stat_activity`` every
    ``interval`` seconds (default 5 ms), for every client session of the target's
    database (or only ``pids=``). It sees code running on *any* connection, in any
    thread or process, with no hook at all, and it measures how long each lock stays
    held. Its limits: a lock taken and released between two samples is never seen
    (in autocommit mode a fast statement releases its locks at once), a held time is
    known only to within one interval, and a lock is attributed to the statement
    its session was running (or had last run) when the lock was first seen, which is
    wrong when two statements ran between two samples. Relations created inside the
    traced, uncommitted transaction are invisible to the sampling session.

Precise capture (statements run through a hooked engine or connection)
    When the target is an SQLAlchemy engine or a psycopg connection, every statement
    run through it is followed, on the same connection, by a read of its own
    ``pg_locks`` rows: the locks it holds right after the statement, attributed to
    exactly that statement. Nothing is missed inside a transaction block (locks are
    held to its end). It cannot see locks of a statement run in autocommit mode
    (already released when it returns) nor of a statement that failed; sampling
    still catches those if they last long enough. :meth:`LockTracer.connect` gives
    out psycopg connections with the same capture. It costs one round trip per
    statement, and the SQLAlchemy hook (an ``after_cursor_execute`` listener) stays
    on the engine, idle, after the block.

Locks that were already held when the block started, and those of the tracer's own
session, of :class:`safeddl.observe.lock_blocker.LockBlocker` sessions of this process and of
background workers (autovacuum), are left out. Requests that waited and were never
granted count too (``granted`` False): a queued strong request already blocks every
later reader.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import TupleRow, tuple_row

from safeddl.integrations.psycopg import text_of
from safeddl.locks import LockMode
from safeddl.observe.lock_blocker import active_blocker_pids
from safeddl.observe.snapshot import TABLE_RELKINDS, transaction_lock_snapshot

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

__all__ = ["LockTrace", "LockTracer", "TracedLock", "TracedStatement", "lock_tracer",
           "relation_matches"]

log = logging.getLogger("safeddl")

APPLICATION_NAME = "safeddl lock_tracer"
DEFAULT_INTERVAL = 0.005
_SYSTEM_SCHEMAS = ["pg_catalog", "information_schema", "pg_toast"]

_SAMPLE_SQL = """
SELECT l.pid, n.nspname, c.relname, l.mode, l.granted, l.virtualtransaction, a.query_start,
       a.query
FROM pg_catalog.pg_locks l
JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
JOIN pg_catalog.pg_class c ON c.oid = l.relation
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE l.locktype = 'relation'
  AND l.database = %(database)s
  AND l.pid <> pg_catalog.pg_backend_pid()
  AND l.pid <> ALL (%(excluded)s)
  AND (%(pids)s::int[] IS NULL OR l.pid = ANY (%(pids)s::int[]))
  AND a.backend_type = 'client backend'
  AND c.relkind::text = ANY (%(relkinds)s)
  AND n.nspname <> ALL (%(system)s)
  AND n.nspname NOT LIKE 'pg\\_temp\\_%%'
"""


@dataclass(frozen=True)
class TracedLock:
    """One lock mode one session took on one relation (in one transaction)."""

    relation: str  # "schema.name", unquoted
    mode: LockMode
    pid: int
    statement: str | None  # the statement that took it (see the module's caveats)
    first_seen: float  # seconds after the block started
    last_seen: float
    granted: bool  # seen granted at least once (False: it only ever waited)
    waited: bool  # seen waiting (not granted) at least once
    precise: bool  # captured right after its statement, on the statement's connection

    @property
    def held_for(self) -> float:
        """Seconds between the first and the last sighting: a lower bound of how long it
        was held (the truth is up to one sampling interval longer)."""
        return self.last_seen - self.first_seen


@dataclass(frozen=True)
class TracedStatement:
    """A statement and the locks it took that its transaction did not hold before."""

    sql: str
    pid: int
    locks: dict[str, LockMode]  # "schema.name" -> strongest mode
    at: float  # seconds after the block started
    precise: bool


def relation_matches(written: str, relation: str) -> bool:
    """Does ``written`` (``orders``, ``app.orders``, ``app."Orders"``) name ``relation``
    (``"schema.name"``, unquoted)? An unqualified name matches in any schema."""
    from safeddl.sql.names import fold, split_name

    parts = [fold(part, quoted) for part, quoted in split_name(written)]
    schema, _, name = relation.partition(".")
    if len(parts) == 1:
        return parts[0] == name
    return parts[-2:] == [schema, name]


@dataclass
class _Record:
    relation: str
    mode: LockMode
    pid: int
    statement: str | None
    first_seen: float
    last_seen: float
    granted: bool
    waited: bool
    precise: bool

    def frozen(self) -> TracedLock:
        return TracedLock(self.relation, self.mode, self.pid, self.statement, self.first_seen,
                          self.last_seen, self.granted, self.waited, self.precise)


_Key = tuple[int, str, str, LockMode]  # pid, virtual transaction id, relation, mode


@dataclass
class LockTrace:
    """What a :class:`LockTracer` block saw; complete once the block has ended."""

    interval: float
    locks: list[TracedLock] = field(default_factory=list)
    statements: list[TracedStatement] = field(default_factory=list)
    samples: int = 0

    def strongest(self, relation: str, *, granted_only: bool = False) -> LockMode | None:
        """The strongest mode taken (or requested) on ``relation``, None if none."""
        modes = [lock.mode for lock in self.locks_on(relation)
                 if lock.granted or not granted_only]
        return max(modes, default=None)

    def locks_on(self, relation: str) -> list[TracedLock]:
        return [lock for lock in self.locks if relation_matches(relation, lock.relation)]

    def held_for(self, relation: str, mode: LockMode | None = None) -> float:
        """The longest time a lock on ``relation`` (in ``mode``, or any) was seen held."""
        return max((lock.held_for for lock in self.locks_on(relation)
                    if lock.granted and (mode is None or lock.mode == mode)), default=0.0)

    def tables(self) -> dict[str, LockMode]:
        """Every relation locked, with its strongest mode."""
        out: dict[str, LockMode] = {}
        for lock in self.locks:
            if lock.relation not in out or lock.mode > out[lock.relation]:
                out[lock.relation] = lock.mode
        return dict(sorted(out.items()))

    def assert_at_most(self, relation: str, mode: LockMode) -> None:
        """AssertionError, naming the statements, when a stronger lock was taken."""
        stronger = [lock for lock in self.locks_on(relation) if lock.mode > mode]
        if stronger:
            lines = [f"{relation}: expected at most {mode.sql_name}, saw:"]
            lines += [f"  {lock.mode.sql_name} (pid {lock.pid}, "
                      f"{'granted' if lock.granted else 'waited, never granted'}) "
                      f"by: {_one_line(lock.statement or '(statement unknown)')}"
                      for lock in stronger]
            raise AssertionError("\n".join(lines))

    def describe(self) -> str:
        """A readable table of the locks, for assertion messages and logs."""
        if not self.locks:
            return f"no table locks seen ({self.samples} samples, every {self.interval:g}s)"
        lines = []
        for lock in sorted(self.locks, key=lambda lock: (lock.first_seen, lock.relation)):
            state = "" if lock.granted else " (waited, never granted)"
            lines.append(f"{lock.relation}: {lock.mode.sql_name}{state} pid {lock.pid}, "
                         f"held >= {lock.held_for * 1000:.0f} ms, by: "
                         f"{_one_line(lock.statement or '(statement unknown)')}")
        return "\n".join(lines)

    __str__ = describe


def _one_line(sql: str, limit: int = 120) -> str:
    text = " ".join(sql.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- hooks


_ENGINE_TRACERS: weakref.WeakKeyDictionary[Any, list[LockTracer]] = weakref.WeakKeyDictionary()
_ENGINE_LOCK = threading.Lock()


def _after_cursor_execute(conn: Any, cursor: Any, statement: str, parameters: Any,
                          context: Any, executemany: bool) -> None:
    tracers = _ENGINE_TRACERS.get(conn.engine)
    if tracers:
        for tracer in list(tracers):
            tracer.capture(cursor.connection, statement)


def _hook_engine(engine: Engine, tracer: LockTracer) -> None:
    from sqlalchemy import event

    with _ENGINE_LOCK:
        tracers = _ENGINE_TRACERS.get(engine)
        if tracers is None:
            tracers = _ENGINE_TRACERS[engine] = []
            event.listen(engine, "after_cursor_execute", _after_cursor_execute)
        tracers.append(tracer)


def _unhook_engine(engine: Engine, tracer: LockTracer) -> None:
    with _ENGINE_LOCK:
        tracers = _ENGINE_TRACERS.get(engine)
        if tracers is not None and tracer in tracers:
            tracers.remove(tracer)


class _TracingCursorMixin:
    """Captures the connection's locks after each execute / executemany."""

    _safeddl_tracer: LockTracer

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        result = super().execute(query, params, **kwargs)  # type: ignore[misc]
        conn = self.connection  # type: ignore[attr-defined]
        self._safeddl_tracer.capture(conn, text_of(query, conn))
        return result

    def executemany(self, query: Any, params_seq: Iterable[Any], **kwargs: Any) -> None:
        super().executemany(query, params_seq, **kwargs)  # type: ignore[misc]
        conn = self.connection  # type: ignore[attr-defined]
        self._safeddl_tracer.capture(conn, text_of(query, conn))


def _tracing_class(base: type[Any], tracer: LockTracer) -> type[Any]:
    return type(f"Traced{base.__name__}", (_TracingCursorMixin, base),
                {"_safeddl_tracer": tracer})


# --------------------------------------------------------------------------- the tracer


class LockTracer:
    """Trace the table locks taken while the ``with`` block runs.

    ``target``: a DSN (sampling only; :meth:`connect` for precise connections), an
    SQLAlchemy Engine (sampling, plus precise capture of every statement run through
    it) or a psycopg Connection (sampling, plus precise capture of the cursors it
    creates inside the block). ``pids``: trace only these backends (default: every
    client session of the database). ``interval``: seconds between samples;
    ``sample=False`` turns sampling off (precise capture only).
    """

    def __init__(self, target: Any, *, pids: Iterable[int] | None = None,
                 interval: float = DEFAULT_INTERVAL, sample: bool = True,
                 exclude_pids: Iterable[int] = ()) -> None:
        self.target = target
        self.dsn = _dsn_of(target)
        self.pids = None if pids is None else sorted(set(pids))
        self.interval = interval
        self.sample = sample
        self.exclude_pids = set(exclude_pids)
        self.trace = LockTrace(interval=interval)
        self._records: dict[_Key, _Record] = {}
        self._baseline: set[_Key] = set()
        self._sampled_statements: dict[tuple[int, str, datetime | None],
                                       TracedStatement] = {}
        self._precise_statements: list[TracedStatement] = []
        self._precise_transactions: set[tuple[int, str]] = set()
        self._held: dict[tuple[int, str], dict[str, LockMode]] = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        self._active = False
        self._started = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sampler: psycopg.Connection[TupleRow] | None = None
        self._database_oid = 0
        self._sample_error: BaseException | None = None
        self._hooked_conn: psycopg.Connection[Any] | None = None
        self._hooked_factory: type[Any] | None = None
        self._given_out: list[psycopg.Connection[Any]] = []

    # -- the block ------------------------------------------------------------------
    def __enter__(self) -> LockTrace:
        self._started = time.monotonic()
        if self.sample:
            self._open_sampler()
            self._sample(baseline=True)
        self._active = True
        self._hook_target()
        if self.sample:
            self._thread = threading.Thread(target=self._sample_loop, name="safeddl-lock-tracer",
                                            daemon=True)
            self._thread.start()
        return self.trace

    def __exit__(self, *exc_info: object) -> None:
        try:
            self._unhook_target()
            if self._thread is not None:
                self._stop.set()
                self._thread.join(timeout=10.0)
            if self.sample and self._sample_error is None and self._sampler is not None:
                self._sample()  # what is still held at the end
        finally:
            self._active = False
            for conn in self._given_out:
                conn.close()
            if self._sampler is not None:
                self._sampler.close()
            self._finish()
        if self._sample_error is not None and exc_info[0] is None:
            raise RuntimeError(f"lock_tracer: sampling pg_locks failed: {self._sample_error}"
                               ) from self._sample_error

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        """A psycopg connection to the traced database whose statements are captured
        precisely; closed when the block ends."""
        conn = psycopg.connect(self.dsn, **kwargs)
        conn.cursor_factory = _tracing_class(conn.cursor_factory, self)
        self._given_out.append(conn)
        return conn

    # -- precise capture ---------------------------------------------------------------
    def capture(self, conn: Any, sql: str) -> None:
        """Read the locks ``conn`` holds right after ``sql`` and attribute the new ones
        to it (called by the hooks; a no-op outside the block)."""
        if not self._active or getattr(self._local, "busy", False):
            return
        if not isinstance(conn, psycopg.Connection) or conn.closed:
            return  # the async driver: sampling only
        if conn.info.transaction_status != TransactionStatus.INTRANS:
            return  # autocommit (locks already gone) or a failed transaction
        self._local.busy = True
        try:
            transaction_id, locks = transaction_lock_snapshot(conn)
        except psycopg.Error as exc:
            log.debug("lock_tracer: could not read the locks after a statement: %s", exc)
            return
        finally:
            self._local.busy = False
        now = time.monotonic() - self._started
        pid = conn.info.backend_pid
        with self._lock:
            transaction = (pid, transaction_id)
            self._precise_transactions.add(transaction)
            before = self._held.get(transaction, {})
            new = {rel: mode for rel, mode in locks.items()
                   if rel not in before or mode > before[rel]}
            self._held[transaction] = {**before, **locks}
            for relation, mode in locks.items():
                key = (pid, transaction_id, relation, mode)
                if key in self._baseline:
                    continue
                record = self._records.get(key)
                if record is None:
                    self._records[key] = _Record(relation, mode, pid, sql, now, now, True,
                                                 False, True)
                else:
                    record.last_seen = max(record.last_seen, now)
                    record.granted = True
                    if not record.precise:
                        record.precise = True
                        record.statement = sql if relation in new else record.statement
            self._precise_statements.append(TracedStatement(sql, pid, new, now, True))

    def _hook_target(self) -> None:
        target = self.target
        if isinstance(target, psycopg.Connection):
            self._hooked_conn = target
            self._hooked_factory = target.cursor_factory
            target.cursor_factory = _tracing_class(target.cursor_factory, self)
            return
        engine = _engine_of(target)
        if engine is not None:
            _hook_engine(engine, self)

    def _unhook_target(self) -> None:
        conn = self._hooked_conn
        if conn is not None and self._hooked_factory is not None:
            if getattr(conn.cursor_factory, "_safeddl_tracer", None) is self:
                conn.cursor_factory = self._hooked_factory
            return
        engine = _engine_of(self.target)
        if engine is not None:
            _unhook_engine(engine, self)

    # -- sampling ------------------------------------------------------------------------
    def _open_sampler(self) -> None:
        conn = psycopg.Connection.connect(self.dsn, autocommit=True, row_factory=tuple_row,
                                          application_name=APPLICATION_NAME)
        self._sampler = conn
        conn.execute("SET statement_timeout = '10s'")
        row = conn.execute("SELECT oid::int8 FROM pg_catalog.pg_database"
                           " WHERE datname = current_database()").fetchone()
        assert row is not None
        self._database_oid = int(row[0])

    def _sample_loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._sample()
            except Exception as exc:  # noqa: BLE001 - reported when the block ends
                self._sample_error = exc
                return

    def _sample(self, *, baseline: bool = False) -> None:
        conn = self._sampler
        assert conn is not None
        rows = conn.execute(_SAMPLE_SQL, {
            "database": self._database_oid,
            "excluded": sorted(self.exclude_pids | active_blocker_pids()),
            "pids": self.pids,
            "relkinds": sorted(TABLE_RELKINDS),
            "system": _SYSTEM_SCHEMAS,
        }).fetchall()
        now = time.monotonic() - self._started
        with self._lock:
            self.trace.samples += 1
            for pid, nsp, name, mode_name, granted, transaction, query_start, query in rows:
                key: _Key = (int(pid), str(transaction), f"{nsp}.{name}",
                             LockMode.from_pg_name(str(mode_name)))
                if baseline:
                    self._baseline.add(key)
                elif key not in self._baseline:
                    self._see(key, bool(granted), query_start, query, now)

    def _see(self, key: _Key, granted: bool, query_start: datetime | None, query: str | None,
             now: float) -> None:
        pid, transaction, relation, mode = key
        record = self._records.get(key)
        if record is None:
            self._records[key] = _Record(relation, mode, pid, query, now, now, granted,
                                         not granted, False)
            statement_key = (pid, transaction, query_start)
            found = self._sampled_statements.get(statement_key)
            locks = dict(found.locks) if found is not None else {}
            if relation not in locks or mode > locks[relation]:
                locks[relation] = mode
            at = found.at if found is not None else now
            self._sampled_statements[statement_key] = TracedStatement(
                query or "", pid, locks, at, False)
            return
        record.last_seen = now
        record.granted = record.granted or granted
        record.waited = record.waited or not granted

    # -- the result ----------------------------------------------------------------------
    def _finish(self) -> None:
        with self._lock:
            self.trace.locks = sorted((record.frozen() for record in self._records.values()),
                                      key=lambda lock: (lock.first_seen, lock.pid, lock.relation))
            sampled = [statement for (pid, transaction, _), statement
                       in self._sampled_statements.items()
                       if (pid, transaction) not in self._precise_transactions]
            self.trace.statements = sorted([*self._precise_statements, *sampled],
                                           key=lambda statement: statement.at)


def _engine_of(target: Any) -> Engine | None:
    module = type(target).__module__ or ""
    if not module.startswith("sqlalchemy"):
        return None
    from safeddl.integrations.sqlalchemy import sync_engine_of

    return sync_engine_of(target)


def _dsn_of(target: Any) -> str:
    """A libpq connection string for the target's database."""
    if isinstance(target, str):
        if target.startswith(("postgresql+", "postgres+")):
            return "postgresql://" + target.split("://", 1)[1]
        return target
    if isinstance(target, psycopg.Connection):
        params = target.info.get_parameters()
        password = target.info.password
        if password:
            params["password"] = password
        return psycopg.conninfo.make_conninfo(**params)
    engine = _engine_of(target)
    if engine is not None:
        url = engine.url.set(drivername="postgresql")
        return url.render_as_string(hide_password=False)
    raise TypeError(f"lock_tracer cannot trace a {type(target).__name__}: give a DSN, an "
                    "SQLAlchemy engine or connection, or a psycopg connection")


@contextlib.contextmanager
def lock_tracer(target: Any, **options: Any) -> Iterator[LockTrace]:
    """``with lock_tracer(dsn_or_engine_or_conn) as trace:`` (see :class:`LockTracer`)."""
    with LockTracer(target, **options) as trace:
        yield trace
