"""Real topologies for the tests: PgBouncer in front of the suite's server, a Citus cluster.

Each fixture starts the real program once per test session and skips, saying how to
get it, when the program is not installed (``.ci/run`` installs both).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import pytest
from psycopg.conninfo import conninfo_to_dict

from safeddl.testing import (
    CitusCluster,
    PgBouncer,
    ServerHandle,
    citus_available,
    fresh_database,
    pgbouncer_available,
)

PGBOUNCER_MISSING = (
    "PgBouncer is not installed: `apt-get install pgbouncer` (Debian/Ubuntu) or "
    "`brew install pgbouncer` (macOS); .ci/run installs it"
)
CITUS_MISSING = (
    "the Citus extension is not installed for any PostgreSQL found: run shared/citus/build.sh "
    "(Citus 13.2.2 for the Debian PostgreSQL 15; .ci/run does) or install Citus for "
    "PostgreSQL 15"
)
#: Server connections per (database, user) pool: at least 2, so that statements of one
#: client can be seen landing on different server connections.
POOL_SIZE = 3


def _bouncer(server: ServerHandle, pool_mode: str) -> Iterator[PgBouncer]:
    if not pgbouncer_available():
        pytest.skip(PGBOUNCER_MISSING)
    mode = "transaction" if pool_mode == "transaction" else "session"
    with PgBouncer(server, pool_mode=mode, pool_size=POOL_SIZE) as bouncer:
        yield bouncer


@pytest.fixture(scope="session")
def pgbouncer_transaction(safeddl_server: ServerHandle) -> Iterator[PgBouncer]:
    """PgBouncer in transaction pooling mode in front of ``safeddl_server``."""
    yield from _bouncer(safeddl_server, "transaction")


@pytest.fixture(scope="session")
def pgbouncer_session(safeddl_server: ServerHandle) -> Iterator[PgBouncer]:
    """PgBouncer in session pooling mode in front of ``safeddl_server``."""
    yield from _bouncer(safeddl_server, "session")


@pytest.fixture(scope="session")
def citus_cluster() -> Iterator[CitusCluster]:
    """A Citus coordinator with two workers (connect to ``.dsn``, the coordinator)."""
    if not citus_available():
        pytest.skip(CITUS_MISSING)
    with CitusCluster(workers=2) as cluster:
        yield cluster


@contextmanager
def _database_behind(bouncer: PgBouncer) -> Iterator[str]:
    with fresh_database(bouncer.server.dsn) as server_dsn:
        yield bouncer.dsn_for(str(conninfo_to_dict(server_dsn)["dbname"]))


@pytest.fixture
def bouncer_database() -> Callable[[PgBouncer], AbstractContextManager[str]]:
    """``with bouncer_database(bouncer) as dsn:`` a fresh database reached through
    ``bouncer``: a pool of its own, so settings left on its server connections by one
    test cannot reach another test."""
    return _database_behind
