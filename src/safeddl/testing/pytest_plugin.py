"""pytest plugin: PostgreSQL servers for tests, started on demand.

Registered through the ``pytest11`` entry point, so it is active wherever
safeddl is installed. Importing it is cheap and it starts nothing unless a test
asks for one of its fixtures:

``safeddl_server``
    (session) the newest PostgreSQL found, started in a temporary directory;
    an object with ``.dsn``, ``.sqlalchemy_url`` and ``.version``.
``safeddl_servers``
    (session) one such server per distinct major version found.
``safeddl_server_each``
    a test using it runs once per major version (ids ``pg15``, ``pg18``, ...).
``safeddl_db`` / ``safeddl_db_each``
    the DSN of a fresh empty database (dropped afterwards) on ``safeddl_server``
    / on each version.
``safeddl_db_url``
    the SQLAlchemy URL of the ``safeddl_db`` database.
``safeddl_conn``
    a psycopg connection (``autocommit=False``) to ``safeddl_db``.

For testing code that talks to PostgreSQL through safeddl:

``safeddl_policy``
    the :class:`safeddl.Policy` of the test: ``[tool.safeddl]`` / ``SAFEDDL_*``,
    then the ``@pytest.mark.safeddl(...)`` markers (module, class, function; the
    closest wins): ``@pytest.mark.safeddl(policy=Policy(...))`` and / or settings as
    keywords, ``@pytest.mark.safeddl(lock_timeout="200ms", actions={...})``.
``safeddl_engine`` / ``safeddl_guarded_conn``
    an SQLAlchemy engine / a psycopg connection on ``safeddl_db``, guarded with
    ``safeddl_policy``: a refused statement fails the test with the rule's message.
``lock_tracer``
    ``with lock_tracer(target) as trace:`` records the table locks taken in the
    block (:mod:`safeddl.observe.lock_tracer`); ``target`` defaults to ``safeddl_db``.
``lock_blocker``
    ``with lock_blocker("orders", "ACCESS SHARE") as blocker:`` holds a lock from a
    second session until ``blocker.release()`` or the end of the test
    (:mod:`safeddl.observe.lock_blocker`).

To run these on a database of your own, override ``safeddl_db`` (a DSN) in your
``conftest.py``.

``--safeddl-dsn DSN`` (or the ``SAFEDDL_TEST_DSN`` environment variable) uses an
existing server instead; the role needs CREATEDB for the database fixtures.
Servers are started lazily, shared by the whole session and stopped when it ends.

``--safeddl-report`` prints, at the end of the session, what the guard did: refused
statements, warnings, lock timeouts and waived findings, with the tests they came
from (read from the ``safeddl`` logger, whose level it lowers to DEBUG meanwhile).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import psycopg
    from sqlalchemy.engine import Engine

    from safeddl.observe.lock_blocker import LockBlocker
    from safeddl.observe.lock_tracer import LockTracer
    from safeddl.runtime.policy import Policy
    from safeddl.testing.server import PostgresServer, ServerHandle

DSN_ENVIRONMENT_VARIABLE = "SAFEDDL_TEST_DSN"
EACH_VERSION_FIXTURE = "safeddl_server_each"


class ServerPool:
    """The servers of one test session: which versions exist, and those started so far."""

    def __init__(self, external_dsn: str | None) -> None:
        self.external_dsn = external_dsn
        self._versions: list[int | None] | None = None
        self._external: ServerHandle | None = None
        self._started: dict[int | None, PostgresServer] = {}
        self._failures: dict[int | None, BaseException] = {}

    def versions(self) -> list[int | None]:
        """Major versions to run on, newest first, found without starting anything.

        ``[None]`` means "whatever is there": the external server, or nothing found
        (the fixture then fails with the message saying what to install).
        """
        if self._versions is None:
            self._versions = self._discover_versions()
        return self._versions

    def get(self, version: int | None = None) -> ServerHandle:
        """The server of this major version (None: the newest), started on first use."""
        if self.external_dsn is not None:
            return self._external_server(version)
        if version is None:
            version = self.versions()[0]
        if version in self._failures:  # fail fast: do not retry a failed start for every test
            raise self._failures[version].with_traceback(None)
        if version not in self._started:
            self._started[version] = self._start(version)
        return self._started[version]

    def all(self) -> list[ServerHandle]:
        if self.external_dsn is not None:
            return [self.get()]
        return [self.get(version) for version in self.versions()]

    def stop_all(self) -> None:
        started, self._started = self._started, {}
        for server in started.values():
            server.stop()

    def _discover_versions(self) -> list[int | None]:
        if self.external_dsn is not None:
            return [None]
        from safeddl.testing.server import distinct_versions, find_server_installs

        versions: list[int | None] = [
            install.version for install in distinct_versions(find_server_installs())
        ]
        return versions or [None]

    def _start(self, version: int | None) -> PostgresServer:
        from safeddl.testing.server import start_server

        try:
            return start_server(version)
        except Exception as exc:
            self._failures[version] = exc
            raise

    def _external_server(self, version: int | None) -> ServerHandle:
        from safeddl.testing.server import ExternalServer

        assert self.external_dsn is not None
        if self._external is None:
            if None in self._failures:
                raise self._failures[None].with_traceback(None)
            try:
                self._external = ExternalServer.connect(self.external_dsn)
            except Exception as exc:
                self._failures[None] = exc
                raise
        if version is not None and version != self._external.version:
            pytest.skip(f"the server given by DSN is PostgreSQL {self._external.version}")
        return self._external


_POOL = pytest.StashKey[ServerPool]()


# --------------------------------------------------------------------------- --safeddl-report


@dataclass(frozen=True)
class SessionFinding:
    """One thing the guard did during the test session."""

    kind: str  # "refused", "warning", "lock timeout", "waived"
    rule: str | None
    summary: str  # one line
    test: str | None  # node id of the test running when it happened


_KINDS = ("refused", "lock timeout", "warning", "waived")
_RULE_PREFIX = re.compile(r"^(?:safeddl: )?([a-z0-9]+(?:-[a-z0-9]+)+): ")
_WAIVED = re.compile(r"^safeddl: ([a-z0-9-]+) not enforced for `(.*)`: (.*)$", re.DOTALL)


class FindingsCollector(logging.Handler):
    """Collects the guard's findings for ``--safeddl-report``.

    Reads the ``safeddl`` logger (warnings, waived findings, lock timeouts), the
    ``handle_error`` events of the engines the fixtures give out, and the safeddl
    errors that made tests fail; an exception seen through several of these counts
    once. Attached only when the option is given: the guard's hot path is untouched.
    """

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.findings: list[SessionFinding] = []
        self.current_test: str | None = None
        self._seen: list[BaseException] = []
        self._logger = logging.getLogger("safeddl")
        self._previous_level = self._logger.level

    def attach(self) -> None:
        self._previous_level = self._logger.level
        if self._logger.getEffectiveLevel() > logging.DEBUG:
            self._logger.setLevel(logging.DEBUG)
        self._logger.addHandler(self)

    def detach(self) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._previous_level)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._record(record)
        except Exception:  # noqa: BLE001 - a report must never break the code under test
            self.handleError(record)

    def _record(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        for arg in args:
            if isinstance(arg, BaseException) and self.exception(arg):
                return
        message = record.getMessage()
        waived = _WAIVED.match(message)
        if waived:
            rule, sql, why = waived.groups()
            self._add("waived", rule, f"`{sql}`: {why}")
        elif record.levelno >= logging.WARNING and message.startswith("safeddl: "):
            rule = _RULE_PREFIX.match(message)
            self._add("warning", rule.group(1) if rule else None,
                      message[rule.end():] if rule else message.removeprefix("safeddl: "))

    def exception(self, error: BaseException) -> bool:
        """Record a refusal or lock timeout (once per exception object); False when
        ``error`` is neither."""
        from safeddl.runtime.errors import LockTimeout, UnsafeStatement

        if not isinstance(error, (UnsafeStatement, LockTimeout)):
            return False
        if any(seen is error for seen in self._seen):
            return True
        self._seen.append(error)
        if isinstance(error, UnsafeStatement):
            self._add("refused", error.rule, _first_line(error.statement))
        else:
            blockers = ", ".join(f"pid {b.pid}" for b in error.blockers) or "no blocker found"
            target = f" on {error.relation}" if error.relation else ""
            self._add("lock timeout", None,
                      f"`{_first_line(error.statement)}`{target} (blocked by {blockers})")
        return True

    def exception_chain(self, error: BaseException | None) -> None:
        """Record every refusal / lock timeout in ``error``'s causes and contexts."""
        depth = 0
        while error is not None and depth < 8:
            self.exception(error)
            error = error.__cause__ or error.__context__
            depth += 1

    def on_engine_error(self, context: Any) -> None:
        """SQLAlchemy ``handle_error`` listener."""
        self.exception(context.original_exception)

    def _add(self, kind: str, rule: str | None, summary: str) -> None:
        self.findings.append(SessionFinding(kind, rule, _first_line(summary), self.current_test))

    def summary_lines(self) -> list[str]:
        if not self.findings:
            return ["the guard refused nothing, warned about nothing, hit no lock timeout"]
        counts = {kind: sum(1 for f in self.findings if f.kind == kind) for kind in _KINDS}
        lines = [", ".join(f"{count} {kind}" for kind, count in counts.items())]
        groups: dict[tuple[str, str | None, str], list[str | None]] = {}
        for finding in self.findings:
            groups.setdefault((finding.kind, finding.rule, finding.summary), []).append(
                finding.test)
        ordered = sorted(groups.items(), key=lambda item: (_KINDS.index(item[0][0]),
                                                            item[0][1] or "", item[0][2]))
        for (kind, rule, summary), tests in ordered:
            named = sorted({test for test in tests if test})
            where = ", ".join(named[:3]) + (f" and {len(named) - 3} more" if len(named) > 3
                                            else "")
            times = f" x{len(tests)}" if len(tests) > 1 else ""
            label = f"{kind} [{rule}]" if rule else kind
            lines.append(f"{label}{times}: {summary}")
            if where:
                lines.append(f"    in {where}")
        return lines


def _first_line(text: str, limit: int = 160) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


_FINDINGS = pytest.StashKey[FindingsCollector]()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    collector = item.config.stash.get(_FINDINGS, None)
    if collector is not None:
        collector.current_test = item.nodeid


@pytest.hookimpl(tryfirst=True)  # a firstresult hook: run before the one making the report
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> None:
    collector = item.config.stash.get(_FINDINGS, None)
    if collector is not None and call.excinfo is not None:
        collector.exception_chain(call.excinfo.value)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int,
                            config: pytest.Config) -> None:
    collector = config.stash.get(_FINDINGS, None)
    if collector is None:
        return
    terminalreporter.write_sep("=", "safeddl report")
    for line in collector.summary_lines():
        terminalreporter.write_line(line)



def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("safeddl", "safeddl PostgreSQL test servers")
    group.addoption(
        "--safeddl-dsn",
        dest="safeddl_dsn",
        default=None,
        metavar="DSN",
        help=(
            "run database tests against this existing PostgreSQL server (libpq conninfo "
            f"or URI) instead of starting throwaway servers; default: ${DSN_ENVIRONMENT_VARIABLE}"
        ),
    )
    group.addoption(
        "--safeddl-report",
        dest="safeddl_report",
        action="store_true",
        default=False,
        help=(
            "at the end of the session, summarise what the safeddl guard did: refused "
            "statements, warnings, lock timeouts and waived findings, per test"
        ),
    )


def pytest_configure(config: pytest.Config) -> None:
    dsn = config.getoption("safeddl_dsn", default=None) or os.environ.get(DSN_ENVIRONMENT_VARIABLE)
    config.stash[_POOL] = ServerPool(external_dsn=dsn or None)
    config.addinivalue_line(
        "markers",
        "safeddl(policy=None, **settings): the safeddl Policy of the guarded fixtures "
        "(safeddl_engine, safeddl_guarded_conn) in this test: a Policy, and / or settings "
        "as in [tool.safeddl], e.g. lock_timeout='200ms', actions={'create-index': 'warn'}",
    )
    if config.getoption("safeddl_report", default=False):
        collector = FindingsCollector()
        collector.attach()
        config.stash[_FINDINGS] = collector


def pytest_unconfigure(config: pytest.Config) -> None:
    pool = config.stash.get(_POOL, None)
    if pool is not None:
        pool.stop_all()
    collector = config.stash.get(_FINDINGS, None)
    if collector is not None:
        collector.detach()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run tests that use ``safeddl_server_each`` once per major version found."""
    if EACH_VERSION_FIXTURE not in metafunc.fixturenames:
        return
    versions = metafunc.config.stash[_POOL].versions()
    metafunc.parametrize(
        EACH_VERSION_FIXTURE, versions, indirect=True, ids=[_version_id(v) for v in versions]
    )


def _version_id(version: int | None) -> str:
    return "server" if version is None else f"pg{version}"


@pytest.fixture(scope="session")
def safeddl_server_pool(request: pytest.FixtureRequest) -> Iterator[ServerPool]:
    """The session's :class:`ServerPool` (stops every server it started at the end)."""
    pool = request.config.stash[_POOL]
    try:
        yield pool
    finally:
        pool.stop_all()


@pytest.fixture(scope="session")
def safeddl_server(safeddl_server_pool: ServerPool) -> ServerHandle:
    """The newest PostgreSQL available (or the ``--safeddl-dsn`` server)."""
    return safeddl_server_pool.get()


@pytest.fixture(scope="session")
def safeddl_servers(safeddl_server_pool: ServerPool) -> list[ServerHandle]:
    """One server per distinct major version available, newest first."""
    return safeddl_server_pool.all()


@pytest.fixture(scope="session")
def safeddl_server_each(
    request: pytest.FixtureRequest, safeddl_server_pool: ServerPool
) -> ServerHandle:
    """The server of one major version; tests using it run once per version."""
    version: int | None = getattr(request, "param", None)
    return safeddl_server_pool.get(version)


@pytest.fixture
def safeddl_db(safeddl_server: ServerHandle) -> Iterator[str]:
    """DSN of a fresh empty database on ``safeddl_server``, dropped (FORCE) afterwards."""
    from safeddl.testing.server import fresh_database

    with fresh_database(safeddl_server.dsn) as dsn:
        yield dsn


@pytest.fixture
def safeddl_db_each(safeddl_server_each: ServerHandle) -> Iterator[str]:
    """DSN of a fresh empty database on each major version in turn."""
    from safeddl.testing.server import fresh_database

    with fresh_database(safeddl_server_each.dsn) as dsn:
        yield dsn


@pytest.fixture
def safeddl_db_url(safeddl_db: str) -> str:
    """SQLAlchemy URL (``postgresql+psycopg://``) of the ``safeddl_db`` database."""
    from safeddl.testing.server import sqlalchemy_url_from_dsn

    return sqlalchemy_url_from_dsn(safeddl_db)


@pytest.fixture
def safeddl_conn(safeddl_db: str) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    """A psycopg connection (autocommit off) to a fresh database, closed afterwards."""
    import psycopg

    conn = psycopg.connect(safeddl_db, autocommit=False)
    try:
        yield conn
    finally:
        conn.close()


# --------------------------------------------------------------------------- guarded fixtures


def policy_for(node: pytest.Item) -> Policy:
    """The Policy of a test: ``[tool.safeddl]`` / ``SAFEDDL_*``, then its
    ``@pytest.mark.safeddl`` markers from the farthest (module) to the closest."""
    from safeddl.runtime.policy import Policy, Settings, default_policy

    policy = default_policy()
    for marker in reversed(list(node.iter_markers("safeddl"))):
        settings_values = dict(marker.kwargs)
        base = settings_values.pop("policy", None)
        if marker.args:
            if len(marker.args) > 1 or base is not None:
                raise pytest.UsageError("@pytest.mark.safeddl takes one Policy (positional or "
                                        "policy=) and settings as keywords")
            base = marker.args[0]
        if base is not None and not isinstance(base, Policy):
            raise pytest.UsageError(
                f"@pytest.mark.safeddl(policy=...) needs a safeddl.Policy, not {type(base)}")
        settings = Settings(base if base is not None else policy)
        settings.add_overrides(settings_values)
        policy = settings.build()
    return policy


@pytest.fixture
def safeddl_policy(request: pytest.FixtureRequest) -> Policy:
    """The Policy of this test (see ``@pytest.mark.safeddl``)."""
    node = request.node
    assert isinstance(node, pytest.Item)
    return policy_for(node)


@pytest.fixture
def safeddl_engine(request: pytest.FixtureRequest, safeddl_db_url: str,
                   safeddl_policy: Policy) -> Iterator[Engine]:
    """An SQLAlchemy engine on ``safeddl_db`` guarded with ``safeddl_policy``; a
    statement the policy refuses raises :class:`safeddl.UnsafeStatement` (never sent)."""
    from sqlalchemy import create_engine, event

    from safeddl.integrations.sqlalchemy import install

    engine = create_engine(safeddl_db_url)
    install(engine, safeddl_policy)
    collector = request.config.stash.get(_FINDINGS, None)
    if collector is not None:
        event.listen(engine, "handle_error", collector.on_engine_error)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def safeddl_guarded_conn(safeddl_db: str, safeddl_policy: Policy,
                         ) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    """A psycopg connection (autocommit off) to ``safeddl_db`` guarded with
    ``safeddl_policy``, closed afterwards."""
    from safeddl.integrations.psycopg import connect

    conn = connect(safeddl_db, policy=safeddl_policy, autocommit=False)
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture
def lock_tracer(request: pytest.FixtureRequest) -> Callable[..., LockTracer]:
    """``with lock_tracer(target=None, **options) as trace:`` records the table locks
    the block takes (see :class:`safeddl.observe.lock_tracer.LockTracer`). ``target``: a DSN,
    an SQLAlchemy engine (adds precise per-statement capture) or a psycopg
    connection; default: the ``safeddl_db`` database."""
    from safeddl.observe.lock_tracer import LockTracer

    def trace(target: Any = None, **options: Any) -> LockTracer:
        if target is None:
            target = request.getfixturevalue("safeddl_db")
        return LockTracer(target, **options)

    return trace


@pytest.fixture
def lock_blocker(request: pytest.FixtureRequest) -> Iterator[Callable[..., LockBlocker]]:
    """``lock_blocker(relation, mode="ACCESS SHARE", dsn=None, **options)`` holds
    ``mode`` on ``relation`` from a second session (on ``safeddl_db`` by default) until
    ``release()``, the end of a ``with`` block, or the end of the test."""
    from safeddl.observe.lock_blocker import LockBlocker

    blockers: list[LockBlocker] = []

    def block(relation: str, mode: Any = "ACCESS SHARE", *, dsn: str | None = None,
              **options: Any) -> LockBlocker:
        blocker = LockBlocker(dsn or request.getfixturevalue("safeddl_db"), relation, mode,
                              **options)
        blockers.append(blocker)
        return blocker

    try:
        yield block
    finally:
        for blocker in blockers:
            blocker.release()
