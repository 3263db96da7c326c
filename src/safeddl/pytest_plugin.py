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

``--safeddl-dsn DSN`` (or the ``SAFEDDL_TEST_DSN`` environment variable) uses an
existing server instead; the role needs CREATEDB for the database fixtures.
Servers are started lazily, shared by the whole session and stopped when it ends.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import psycopg

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


def pytest_configure(config: pytest.Config) -> None:
    dsn = config.getoption("safeddl_dsn", default=None) or os.environ.get(DSN_ENVIRONMENT_VARIABLE)
    config.stash[_POOL] = ServerPool(external_dsn=dsn or None)


def pytest_unconfigure(config: pytest.Config) -> None:
    pool = config.stash.get(_POOL, None)
    if pool is not None:
        pool.stop_all()


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
