"""``safeddl demo``: the full-refresh-versus-dashboard scenario, measured without and with
safeddl.

A table ``silver_rates`` (a few thousand rows) is read by dashboard sessions polling it
and by a report that reads it in a REPEATABLE READ transaction (one snapshot for several
queries), while a pipeline refreshes it every second or so with ``TRUNCATE`` and a
reload in one transaction, and now and then a slow analytical query reads it for a few
seconds. The same pipeline code runs twice, on a plain SQLAlchemy engine and on one
with safeddl installed:

- without safeddl, the ``TRUNCATE`` (ACCESS EXCLUSIVE) queues behind the slow query's
  ACCESS SHARE, every dashboard query queues behind the ``TRUNCATE``, and the
  dashboards stall until the slow query ends (or the pipeline gives up). ``TRUNCATE``
  is not MVCC-safe either: a report whose snapshot predates the refresh finds the
  table empty;
- with safeddl (policy ``truncate = "rewrite"``), ``TRUNCATE`` becomes ``DELETE FROM``
  in the same transaction (ROW EXCLUSIVE: readers go on and see the old rows until
  the refresh commits); every DDL statement waits at most ``lock_timeout``, and the
  refresh is retried as a whole (:func:`safeddl.recovery.retry.attempts`) when it gives up.

:func:`run_demo` runs both phases and returns a :class:`DemoResult` with what was
measured; the command line prints it. Every wait is bounded: the pipeline by
``statement_timeout`` (and the retry by the same time), the readers by a
``statement_timeout`` of their own, every thread by a join timeout.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import psycopg
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, Engine

from safeddl.integrations.sqlalchemy import install
from safeddl.runtime.errors import QUERY_CANCELED, RetriesExhausted, SafeDDLError, sqlstate_of
from safeddl.runtime.policy import Policy
from safeddl.sql.names import quote_ident

if TYPE_CHECKING:  # pragma: no cover - typing only
    from rich.console import Console

SCHEMA = "safeddl_demo"
TABLE_NAME = "silver_rates"
TABLE = f"{quote_ident(SCHEMA)}.{quote_ident(TABLE_NAME)}"
CURRENCIES = f"{quote_ident(SCHEMA)}.{quote_ident('currencies')}"

_JOIN_SLACK_SECONDS = 10.0
_MAX_ERRORS_KEPT = 5


class DemoError(SafeDDLError):
    """The demo cannot run here (the message says why)."""


@dataclass(frozen=True)
class DemoSettings:
    """The scenario's knobs (seconds unless the name says otherwise)."""

    seconds: float = 12.0  # length of each phase
    readers: int = 4  # dashboard sessions
    reports: int = 1  # sessions reading in REPEATABLE READ transactions
    report_gap: float = 0.2  # between a report's first query and its read of the table
    rows: int = 20_000  # rows of the table (above safeddl's default small_table_rows)
    reader_pause: float = 0.05  # between two dashboard queries of one session
    refresh_every: float = 1.5  # the pipeline starts a refresh this often
    load_seconds: float = 0.3  # the reload's own work, inside the refresh transaction
    slow_query_seconds: float = 3.0  # the analytical query holds ACCESS SHARE this long
    slow_query_every: float = 5.0
    slow_query_first: float = 0.5  # when the first one starts
    lock_timeout: float = 0.3  # the guarded policy's lock_timeout
    give_up_after: float = 2.5  # a refresh is abandoned after this (statement_timeout)
    rewrite_truncate: bool = True  # guarded: truncate = "rewrite" (else: bounded wait only)

    def __post_init__(self) -> None:
        for name in ("seconds", "refresh_every", "slow_query_seconds", "slow_query_every",
                     "lock_timeout", "give_up_after"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, not {getattr(self, name)!r}")
        if self.readers < 1 or self.rows < 1 or self.reports < 0:
            raise ValueError("readers and rows must be 1 or more, reports 0 or more")

    @property
    def reader_timeout(self) -> float:
        """A dashboard query's own bound: longer than any stall the scenario can cause."""
        return self.give_up_after + self.slow_query_seconds + self.load_seconds + 5.0


@dataclass(frozen=True)
class ReadSample:
    """One read of the table, as a dashboard or a report measured it."""

    at: float  # seconds from the start of the phase to the start of the query
    latency_ms: float
    rows: int  # rows the query counted
    report: bool  # by a REPEATABLE READ report (else a dashboard)


@dataclass(frozen=True)
class Span:
    """A refresh or a slow query: from ``start`` to ``end`` (seconds into the phase)."""

    start: float
    end: float
    outcome: str  # completed | abandoned | failed (refreshes); completed (slow queries)


@dataclass(frozen=True)
class PhaseResult:
    """What one phase measured."""

    guarded: bool
    method: str  # how the refresh ran
    seconds: float
    reader_queries: int
    reader_max_stall_ms: float  # the longest a dashboard query took
    reader_p99_ms: float
    reader_median_ms: float
    min_rows_seen: int  # the fewest rows a dashboard or report query counted
    empty_reads: int  # dashboard or report queries that saw an empty table
    report_reads: int  # reads by the REPEATABLE READ reports
    refreshes_completed: int
    refreshes_abandoned: int  # gave up after give_up_after (statement_timeout or retries)
    refreshes_failed: int  # any other error
    lock_timeouts_retried: int
    slowest_refresh_ms: float
    slow_queries: int
    errors: tuple[str, ...] = ()  # the first few distinct errors, for the curious
    reads: tuple[ReadSample, ...] = ()  # every read, in the order they started
    refreshes: tuple[Span, ...] = ()  # every refresh the pipeline started
    slow_query_spans: tuple[Span, ...] = ()


@dataclass(frozen=True)
class DemoResult:
    settings: DemoSettings
    server: str
    unguarded: PhaseResult
    guarded: PhaseResult
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class PhaseProgress:
    """Reported about twice a second while a phase runs."""

    phase: str
    elapsed: float
    seconds: float
    reader_queries: int
    reader_max_stall_ms: float
    refreshes_completed: int


ProgressCallback = Callable[[PhaseProgress], None]


# =========================================================================== the scenario


def run_demo(dsn: str, settings: DemoSettings | None = None,
             progress: ProgressCallback | None = None) -> DemoResult:
    """Build the table on the server of ``dsn`` (in schema ``safeddl_demo``, dropped
    afterwards) and run the scenario without, then with, safeddl."""
    settings = settings or DemoSettings()
    notes: list[str] = []
    url = sqlalchemy_url(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        server = f"PostgreSQL {conn.info.parameter_status('server_version') or '?'}"
    with demo_schema(dsn, settings):
        plain = create_engine(url, pool_size=1, max_overflow=0, pool_timeout=10)
        try:
            unguarded = run_phase(plain, dsn, settings, guarded=False, progress=progress)
        finally:
            plain.dispose()
        load_table(dsn, settings)
        guarded_engine = create_engine(url, pool_size=1, max_overflow=0, pool_timeout=10)
        try:
            policy = guarded_policy(settings)
            install(guarded_engine, policy)
            if settings.rewrite_truncate and lock_taken_by_truncate(guarded_engine) != (
                    "RowExclusiveLock"):
                notes.append("TRUNCATE was not rewritten to DELETE on this server/version: "
                             "the guarded run bounds its lock waits and retries instead.")
                settings = replace(settings, rewrite_truncate=False)
                install(guarded_engine, guarded_policy(settings))
            guarded = run_phase(guarded_engine, dsn, settings, guarded=True, progress=progress)
        finally:
            guarded_engine.dispose()
    return DemoResult(settings, server, unguarded, guarded, tuple(notes))


def guarded_policy(settings: DemoSettings) -> Policy:
    """The policy of the guarded run: bounded lock waits; TRUNCATE rewritten to DELETE
    (or, without the rewrite, allowed under the bounded wait)."""
    action = "rewrite" if settings.rewrite_truncate else "allow"
    return Policy(lock_timeout=f"{round(settings.lock_timeout * 1000)}ms",
                  actions={"truncate": action})


def sqlalchemy_url(dsn: str) -> str:
    from safeddl.testing.server import sqlalchemy_url_from_dsn

    return sqlalchemy_url_from_dsn(dsn)


@contextmanager
def demo_schema(dsn: str, settings: DemoSettings) -> Iterator[None]:
    """Schema ``safeddl_demo`` with the demo's tables, dropped afterwards. An existing
    schema of that name is left alone: the demo refuses to start."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            conn.execute(f"CREATE SCHEMA {quote_ident(SCHEMA)}")
        except psycopg.errors.DuplicateSchema:
            raise DemoError(f"schema {SCHEMA} already exists in this database; the demo "
                            f"creates and drops it: drop it (DROP SCHEMA {SCHEMA} CASCADE) "
                            "or use another database") from None
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"CREATE TABLE {TABLE} (id int PRIMARY KEY, currency text NOT NULL, "
                         "rate numeric(12, 4) NOT NULL, as_of date NOT NULL)")
            conn.execute(f"CREATE TABLE {CURRENCIES} AS SELECT 'C' || g AS code "
                         "FROM generate_series(0, 169) g")
        load_table(dsn, settings)
        yield
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(SCHEMA)} CASCADE")


_LOAD = (f"INSERT INTO {TABLE} (id, currency, rate, as_of) "
         "SELECT g, 'C' || mod(g, 170), round((random() * 100)::numeric, 4), current_date "
         "FROM generate_series(1, %(rows)s) g")


def load_table(dsn: str, settings: DemoSettings) -> None:
    """A fresh, analysed copy of the rows (the guard reads the size from the catalog)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {TABLE}")
        conn.execute(_LOAD, {"rows": settings.rows})
        conn.execute(f"VACUUM ANALYZE {TABLE}")


def lock_taken_by_truncate(engine: Engine) -> str | None:
    """The strongest lock ``TRUNCATE`` takes on the table through this engine, in a
    transaction rolled back afterwards (RowExclusiveLock: rewritten to DELETE)."""
    with engine.connect() as conn:
        transaction = conn.begin()
        try:
            conn.execute(text(f"TRUNCATE {TABLE}"))
            row = conn.execute(text(
                "SELECT mode FROM pg_locks WHERE pid = pg_backend_pid() AND relation = "
                "CAST(:table AS regclass) ORDER BY mode = 'AccessExclusiveLock' DESC LIMIT 1"),
                {"table": TABLE}).fetchone()
            return str(row[0]) if row else None
        except SafeDDLError:
            return None
        finally:
            transaction.rollback()


def refresh(conn: Connection, settings: DemoSettings) -> None:
    """The pipeline's unit of work: empty the table and load it again, in one
    transaction (the caller's), abandoned after ``give_up_after``."""
    conn.execute(text(f"SET LOCAL statement_timeout = '{round(settings.give_up_after * 1000)}ms'"))
    conn.execute(text(f"TRUNCATE {TABLE}"))
    conn.execute(text(_LOAD.replace("%(rows)s", ":rows")), {"rows": settings.rows})
    conn.execute(text("SELECT pg_sleep(:seconds)"), {"seconds": settings.load_seconds})


# =========================================================================== one phase


@dataclass
class _Tally:
    """What the threads of one phase measured (guarded by ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    start: float = field(default_factory=time.monotonic)  # the phase's start (monotonic)
    latencies_ms: list[float] = field(default_factory=list)
    samples: list[ReadSample] = field(default_factory=list)
    refreshes: list[Span] = field(default_factory=list)
    slow_query_spans: list[Span] = field(default_factory=list)
    min_rows: int | None = None
    empty_reads: int = 0
    report_reads: int = 0
    completed: int = 0
    abandoned: int = 0
    failed: int = 0
    retried: int = 0
    slowest_refresh_ms: float = 0.0
    slow_queries: int = 0
    errors: list[str] = field(default_factory=list)

    def read(self, latency_ms: float, rows: int, *, report: bool = False,
             began: float | None = None) -> None:
        """Count one read; ``began`` is when it started (``time.monotonic()``)."""
        at = (time.monotonic() - latency_ms / 1000 if began is None else began) - self.start
        with self.lock:
            self.latencies_ms.append(latency_ms)
            self.samples.append(ReadSample(at, latency_ms, rows, report))
            self.report_reads += report
            self.min_rows = rows if self.min_rows is None else min(self.min_rows, rows)
            if rows == 0:
                self.empty_reads += 1

    def error(self, exc: BaseException) -> None:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        text_ = f"{type(exc).__name__}: {first}"
        with self.lock:
            if text_ not in self.errors and len(self.errors) < _MAX_ERRORS_KEPT:
                self.errors.append(text_)

    def max_stall_ms(self) -> float:
        with self.lock:
            return max(self.latencies_ms, default=0.0)


def run_phase(engine: Engine, dsn: str, settings: DemoSettings, *, guarded: bool,
              progress: ProgressCallback | None = None) -> PhaseResult:
    """Readers, the slow query and the pipeline for ``settings.seconds``; the pipeline
    refreshes through ``engine`` (guarded or not)."""
    tally = _Tally()
    stop = threading.Event()
    start = tally.start
    end = start + settings.seconds
    threads = [threading.Thread(target=_reader, args=(dsn, settings, tally, stop),
                                name=f"safeddl-demo-reader-{i}", daemon=True)
               for i in range(settings.readers)]
    threads.extend(threading.Thread(target=_report, args=(dsn, settings, tally, stop),
                                    name=f"safeddl-demo-report-{i}", daemon=True)
                   for i in range(settings.reports))
    threads.append(threading.Thread(target=_slow_queries, args=(dsn, settings, tally, start, end),
                                    name="safeddl-demo-slow-query", daemon=True))
    threads.append(threading.Thread(target=_pipeline,
                                    args=(engine, settings, tally, end, guarded),
                                    name="safeddl-demo-pipeline", daemon=True))
    for thread in threads:
        thread.start()
    phase = "with safeddl" if guarded else "without safeddl"
    try:
        while time.monotonic() < end:
            time.sleep(min(0.5, max(0.0, end - time.monotonic())))
            if progress is not None:
                with tally.lock:
                    queries, completed = len(tally.latencies_ms), tally.completed
                progress(PhaseProgress(phase, min(time.monotonic() - start, settings.seconds),
                                       settings.seconds, queries, tally.max_stall_ms(),
                                       completed))
    finally:
        stop.set()
        deadline = time.monotonic() + settings.reader_timeout + _JOIN_SLACK_SECONDS
        for thread in threads:
            thread.join(timeout=max(0.1, deadline - time.monotonic()))
    stuck = [t.name for t in threads if t.is_alive()]
    if stuck:
        tally.errors.append(f"threads still running after the phase: {', '.join(stuck)}")
    return _result(tally, settings, guarded, time.monotonic() - start)


def _result(tally: _Tally, settings: DemoSettings, guarded: bool, seconds: float,
            ) -> PhaseResult:
    latencies = sorted(tally.latencies_ms)
    return PhaseResult(
        guarded=guarded,
        method=_method(settings, guarded),
        seconds=seconds,
        reader_queries=len(latencies),
        reader_max_stall_ms=latencies[-1] if latencies else 0.0,
        reader_p99_ms=percentile(latencies, 0.99),
        reader_median_ms=percentile(latencies, 0.5),
        min_rows_seen=tally.min_rows if tally.min_rows is not None else 0,
        empty_reads=tally.empty_reads,
        report_reads=tally.report_reads,
        refreshes_completed=tally.completed,
        refreshes_abandoned=tally.abandoned,
        refreshes_failed=tally.failed,
        lock_timeouts_retried=tally.retried,
        slowest_refresh_ms=tally.slowest_refresh_ms,
        slow_queries=tally.slow_queries,
        errors=tuple(tally.errors),
        reads=tuple(sorted(tally.samples, key=lambda sample: sample.at)),
        refreshes=tuple(tally.refreshes),
        slow_query_spans=tuple(tally.slow_query_spans),
    )


def _method(settings: DemoSettings, guarded: bool) -> str:
    if not guarded:
        return "TRUNCATE + reload, no lock_timeout"
    wait = f"lock_timeout {round(settings.lock_timeout * 1000)} ms, retried"
    if settings.rewrite_truncate:
        return f"TRUNCATE rewritten to DELETE + reload, {wait}"
    return f"TRUNCATE + reload, {wait}"


def percentile(ordered: list[float], fraction: float) -> float:
    """The nearest-rank percentile of an ascending list (0.0 when empty)."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


# -- the threads ---------------------------------------------------------------------------


def _reader(dsn: str, settings: DemoSettings, tally: _Tally, stop: threading.Event) -> None:
    """A dashboard: count the rows, over and over."""
    options = f"-c statement_timeout={round(settings.reader_timeout * 1000)}"
    try:
        with psycopg.connect(dsn, autocommit=True, options=options) as conn:
            while not stop.is_set():
                started, began = time.monotonic(), time.perf_counter()
                row = conn.execute(f"SELECT count(*), max(rate) FROM {TABLE}").fetchone()
                tally.read((time.perf_counter() - began) * 1000, int(row[0]) if row else 0,
                           began=started)
                stop.wait(settings.reader_pause)
    except Exception as exc:  # noqa: BLE001 - reported in the result
        tally.error(exc)


def _report(dsn: str, settings: DemoSettings, tally: _Tally, stop: threading.Event) -> None:
    """A report: several queries on one snapshot (REPEATABLE READ), the table last."""
    options = f"-c statement_timeout={round(settings.reader_timeout * 1000)}"
    try:
        with psycopg.connect(dsn, options=options) as conn:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            while not stop.is_set():
                conn.execute(f"SELECT count(*) FROM {CURRENCIES}")  # the snapshot is taken
                stop.wait(settings.report_gap)
                started, began = time.monotonic(), time.perf_counter()
                row = conn.execute(f"SELECT count(*), max(rate) FROM {TABLE}").fetchone()
                tally.read((time.perf_counter() - began) * 1000, int(row[0]) if row else 0,
                           report=True, began=started)
                conn.commit()
                stop.wait(settings.reader_pause)
    except Exception as exc:  # noqa: BLE001 - reported in the result
        tally.error(exc)


def _slow_queries(dsn: str, settings: DemoSettings, tally: _Tally, start: float,
                  end: float) -> None:
    """An analyst's query holding ACCESS SHARE for a few seconds, now and then (only
    those that end within the phase)."""
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            at = start + settings.slow_query_first
            while at + settings.slow_query_seconds <= end:
                _sleep_until(at)
                began = time.monotonic()
                conn.execute(f"SELECT count(*), avg(rate), pg_sleep(%(s)s) FROM {TABLE}",
                             {"s": settings.slow_query_seconds})
                with tally.lock:
                    tally.slow_queries += 1
                    tally.slow_query_spans.append(Span(began - tally.start,
                                                       time.monotonic() - tally.start,
                                                       "completed"))
                at += settings.slow_query_every
    except Exception as exc:  # noqa: BLE001 - reported in the result
        tally.error(exc)


def _pipeline(engine: Engine, settings: DemoSettings, tally: _Tally, end: float,
              guarded: bool) -> None:
    """Refresh every ``refresh_every`` seconds until the phase ends."""
    at = time.monotonic()
    while at < end:
        _sleep_until(at)
        began = time.monotonic()
        outcome = _refresh_guarded(engine, settings, tally) if guarded else (
            _refresh_plain(engine, settings, tally))
        ended = time.monotonic()
        took = (ended - began) * 1000
        with tally.lock:
            tally.refreshes.append(Span(began - tally.start, ended - tally.start, outcome))
            tally.slowest_refresh_ms = max(tally.slowest_refresh_ms, took)
            if outcome == "completed":
                tally.completed += 1
            elif outcome == "abandoned":
                tally.abandoned += 1
            else:
                tally.failed += 1
        at = max(at + settings.refresh_every, time.monotonic())


def _refresh_plain(engine: Engine, settings: DemoSettings, tally: _Tally) -> str:
    try:
        with engine.begin() as conn:
            refresh(conn, settings)
    except Exception as exc:  # noqa: BLE001 - counted and reported
        tally.error(exc)
        return "abandoned" if sqlstate_of(exc) == QUERY_CANCELED else "failed"
    return "completed"


def _refresh_guarded(engine: Engine, settings: DemoSettings, tally: _Tally) -> str:
    from safeddl.recovery.retry import attempts

    number = 0
    try:
        for attempt in attempts(engine, attempts=50, max_time=f"{settings.give_up_after}s",
                                backoff="50ms", max_backoff="500ms", name="the refresh"):
            number = attempt.number
            with attempt as conn:
                refresh(conn, settings)
    except RetriesExhausted as exc:
        tally.error(exc)
        return "abandoned"
    except Exception as exc:  # noqa: BLE001 - counted and reported
        tally.error(exc)
        return "abandoned" if sqlstate_of(exc) == QUERY_CANCELED else "failed"
    finally:
        with tally.lock:
            tally.retried += max(0, number - 1)
    return "completed"


def _sleep_until(moment: float) -> None:
    delay = moment - time.monotonic()
    if delay > 0:
        time.sleep(delay)


# =========================================================================== showing it


def result_rows(result: DemoResult) -> list[tuple[str, str, str]]:
    """(measure, without safeddl, with safeddl) for the side-by-side table."""
    plain, guarded = result.unguarded, result.guarded
    rows = result.settings.rows

    def both(render: Callable[[PhaseResult], str]) -> tuple[str, str]:
        return render(plain), render(guarded)

    give_up = f"{result.settings.give_up_after:g} s"
    return [
        ("reads (of them by reports)",
         *both(lambda p: f"{p.reader_queries:,} ({p.report_reads:,})")),
        ("read max stall", *both(lambda p: seconds_text(p.reader_max_stall_ms))),
        ("read p99 latency", *both(lambda p: seconds_text(p.reader_p99_ms))),
        ("read median latency", *both(lambda p: seconds_text(p.reader_median_ms))),
        ("fewest rows a read saw", *both(lambda p: f"{p.min_rows_seen:,} of {rows:,}")),
        ("reads of an empty table", *both(lambda p: f"{p.empty_reads:,}")),
        ("refreshes completed", *both(lambda p: f"{p.refreshes_completed}")),
        (f"refreshes stuck > {give_up}, abandoned",
         *both(lambda p: f"{p.refreshes_abandoned}")),
        ("refreshes failed otherwise", *both(lambda p: f"{p.refreshes_failed}")),
        ("slowest refresh", *both(lambda p: seconds_text(p.slowest_refresh_ms))),
        ("lock timeouts retried", *both(lambda p: f"{p.lock_timeouts_retried}")),
        ("slow analytical queries", *both(lambda p: f"{p.slow_queries}")),
    ]


def seconds_text(milliseconds: float) -> str:
    if milliseconds >= 1000:
        return f"{milliseconds / 1000:.2f} s"
    return f"{milliseconds:.0f} ms" if milliseconds >= 10 else f"{milliseconds:.1f} ms"


def describe_scenario(settings: DemoSettings) -> str:
    sessions = "a report session reads" if settings.reports == 1 else (
        f"{settings.reports} report sessions read")
    reports = f" and {sessions} it in REPEATABLE READ transactions" if settings.reports else ""
    return (f"{settings.readers} dashboard sessions poll {TABLE_NAME} ({settings.rows:,} rows)"
            f"{reports}; a pipeline refreshes it every {settings.refresh_every:g} s (TRUNCATE "
            f"+ reload in one transaction, abandoned after {settings.give_up_after:g} s); an "
            f"analytical query reads it for {settings.slow_query_seconds:g} s every "
            f"{settings.slow_query_every:g} s. Each run lasts {settings.seconds:g} s.")


# -- the command line ----------------------------------------------------------------------


@contextmanager
def private_server() -> Iterator[str]:
    """A throwaway PostgreSQL (the newest installed), stopped and removed afterwards."""
    from safeddl.testing.server import start_server

    server = start_server()
    try:
        yield server.dsn
    finally:
        server.stop()


def run_with_progress(dsn: str | None, settings: DemoSettings, console: Console) -> DemoResult:
    """:func:`run_demo` on ``dsn`` or a private server, with a progress bar per run."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console.print(describe_scenario(settings), highlight=False)
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as progress:
        tasks: dict[str, Any] = {}

        def report(step: PhaseProgress) -> None:
            if step.phase not in tasks:
                tasks[step.phase] = progress.add_task(step.phase, total=step.seconds)
            progress.update(tasks[step.phase], completed=step.elapsed,
                            description=f"{step.phase:<16} {step.reader_queries:>6,} reads, "
                                        f"max stall {seconds_text(step.reader_max_stall_ms):>8}, "
                                        f"{step.refreshes_completed} refreshes")

        if dsn is not None:
            return run_demo(dsn, settings, report)
        starting = progress.add_task("starting a private PostgreSQL", total=None)
        with private_server() as private_dsn:
            progress.update(starting, total=1, completed=1,
                            description="private PostgreSQL started")
            return run_demo(private_dsn, settings, report)


def print_result(result: DemoResult, console: Console) -> None:
    from rich.table import Table

    console.print(f"without safeddl: {result.unguarded.method}", highlight=False)
    console.print(f"with safeddl:    {result.guarded.method}", highlight=False)
    table = Table(title=f"silver_rates refresh vs. its readers, {result.server}",
                  title_justify="left", show_lines=False)
    table.add_column("measured")
    table.add_column("without safeddl", justify="right", style="red")
    table.add_column("with safeddl", justify="right", style="green")
    for row in result_rows(result):
        table.add_row(*row)
    console.print(table)
    for phase in (result.unguarded, result.guarded):
        name = "with safeddl" if phase.guarded else "without safeddl"
        for error in phase.errors[:2]:
            console.print(f"[dim]{name}: {error}[/dim]", highlight=False)
    for note in result.notes:
        console.print(f"note: {note}", highlight=False)


__all__ = [
    "DemoError",
    "DemoResult",
    "DemoSettings",
    "PhaseProgress",
    "PhaseResult",
    "ReadSample",
    "Span",
    "describe_scenario",
    "guarded_policy",
    "lock_taken_by_truncate",
    "percentile",
    "print_result",
    "private_server",
    "refresh",
    "result_rows",
    "run_demo",
    "run_phase",
    "run_with_progress",
    "seconds_text",
]
