"""The topology fixtures are the real thing: what a pooler and a Citus cluster do to the
statements of one client, observed on the servers.

These tests document the hazards safeddl must avoid (a session-level SET behind a
transaction pool reaches other clients; on Citus only a literal SET LOCAL, with
``citus.propagate_set_commands = 'local'``, reaches the shards), not safeddl itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from safeddl.testing import CitusCluster, PgBouncer

Connect = Callable[..., psycopg.Connection[tuple[Any, ...]]]
BouncerDatabase = Callable[[PgBouncer], AbstractContextManager[str]]


def _through_bouncer(dsn: str, **options: Any) -> psycopg.Connection[tuple[Any, ...]]:
    """A client of PgBouncer (no protocol-level prepared statements: PgBouncer < 1.21
    does not track them)."""
    return psycopg.connect(dsn, prepare_threshold=None, **options)


def _value(conn: psycopg.Connection[tuple[Any, ...]], query: str) -> Any:
    row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


def _backend_pid(conn: psycopg.Connection[tuple[Any, ...]]) -> int:
    """The server backend serving this statement (``conn.info.backend_pid`` is
    PgBouncer's key, not a server pid)."""
    return int(_value(conn, "SELECT pg_backend_pid()"))


# --------------------------------------------------------------------------- PgBouncer


def test_pgbouncer_fixtures_are_pgbouncer(pgbouncer_transaction: PgBouncer,
                                          pgbouncer_session: PgBouncer) -> None:
    for bouncer, mode in ((pgbouncer_transaction, "transaction"),
                          (pgbouncer_session, "session")):
        assert bouncer.pool_mode == mode
        assert bouncer.pgbouncer_version is not None
        assert bouncer.pgbouncer_version.startswith("PgBouncer")
        with _through_bouncer(bouncer.dsn, autocommit=True) as conn:
            assert _value(conn, "SELECT current_setting('server_version_num')::int") // 10000 \
                == bouncer.version
        pools = bouncer.pools()
        assert pools and {row["pool_mode"] for row in pools} == {mode}


def test_sqlalchemy_url_through_pgbouncer(pgbouncer_transaction: PgBouncer) -> None:
    engine = sqlalchemy.create_engine(pgbouncer_transaction.sqlalchemy_url,
                                      connect_args={"prepare_threshold": None})
    try:
        with engine.connect() as conn:
            assert conn.execute(sqlalchemy.text("SELECT 41 + 1")).scalar() == 42
    finally:
        engine.dispose()


def test_transaction_mode_moves_one_client_between_server_backends(
    pgbouncer_transaction: PgBouncer, bouncer_database: BouncerDatabase
) -> None:
    assert pgbouncer_transaction.pool_size >= 2
    with bouncer_database(pgbouncer_transaction) as dsn, \
            _through_bouncer(dsn, autocommit=True) as client, \
            _through_bouncer(dsn, autocommit=False) as other:
        seen = [_backend_pid(client)]
        for _ in range(3):
            held = _backend_pid(other)  # `other` now holds a server connection: its transaction
            during = _backend_pid(client)
            assert during != held  # the pool gave `client` another one meanwhile
            other.commit()
            seen += [during, _backend_pid(client)]
        assert len(set(seen)) >= 2, seen
        assert client.info.backend_pid not in seen  # the client's "pid" is PgBouncer's


def test_transaction_mode_session_set_leaks_to_another_client(
    pgbouncer_transaction: PgBouncer, bouncer_database: BouncerDatabase
) -> None:
    with bouncer_database(pgbouncer_transaction) as dsn:
        with _through_bouncer(dsn, autocommit=True) as first:
            default = _value(first, "SHOW lock_timeout")
            first.execute("SET lock_timeout = '4321ms'")  # session level: on a server connection
            setter = _backend_pid(first)
        # `first` is gone; its setting is not: the next client gets that server connection.
        with _through_bouncer(dsn, autocommit=True) as second:
            assert _backend_pid(second) == setter
            assert _value(second, "SHOW lock_timeout") == "4321ms" != default
        servers = [row for row in pgbouncer_transaction.servers()
                   if row["remote_pid"] == setter]
        assert servers, "the server connection stays in the pool after every client left"


def test_transaction_mode_set_local_ends_with_the_transaction(
    pgbouncer_transaction: PgBouncer, bouncer_database: BouncerDatabase
) -> None:
    with bouncer_database(pgbouncer_transaction) as dsn:
        with _through_bouncer(dsn, autocommit=False) as first:
            default = _value(first, "SHOW lock_timeout")
            first.execute("SET LOCAL lock_timeout = '4321ms'")
            assert _value(first, "SHOW lock_timeout") == "4321ms"
            setter = _backend_pid(first)
            first.commit()
        with _through_bouncer(dsn, autocommit=True) as second:
            assert _backend_pid(second) == setter
            assert _value(second, "SHOW lock_timeout") == default


def test_session_mode_pins_the_server_backend(
    pgbouncer_session: PgBouncer, bouncer_database: BouncerDatabase
) -> None:
    with bouncer_database(pgbouncer_session) as dsn:
        dbname = str(conninfo_to_dict(dsn)["dbname"])
        # One client, one server connection: its SET goes when the client goes (PgBouncer
        # runs DISCARD ALL on release), though the next client gets the same connection.
        with _through_bouncer(dsn, autocommit=True) as first:
            default = _value(first, "SHOW lock_timeout")
            first.execute("SET lock_timeout = '4321ms'")
            setter = _backend_pid(first)
        _wait_until_reset(pgbouncer_session, dbname)
        with _through_bouncer(dsn, autocommit=True) as second:
            assert _backend_pid(second) == setter
            assert _value(second, "SHOW lock_timeout") == default

        # Two clients: each keeps its own server connection, whatever the other does.
        with _through_bouncer(dsn, autocommit=True) as client, \
                _through_bouncer(dsn, autocommit=False) as other:
            pinned = _backend_pid(client)
            for _ in range(3):
                assert _backend_pid(other) != pinned
                assert _backend_pid(client) == pinned
                other.commit()
                assert _backend_pid(client) == pinned
            client.execute("SET lock_timeout = '4321ms'")
            assert _value(client, "SHOW lock_timeout") == "4321ms"
            assert _value(other, "SHOW lock_timeout") == default
            assert _backend_pid(client) == pinned


def _wait_until_reset(bouncer: PgBouncer, dbname: str) -> None:
    """Until no client and no server connection of the pool is busy (a released session
    connection runs DISCARD ALL before it is idle again)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pool = [row for row in bouncer.pools() if row["database"] == dbname]
        if pool and not any(pool[0][key] for key in ("cl_active", "sv_active", "sv_tested",
                                                     "sv_login")):
            return
        time.sleep(0.02)
    raise AssertionError(f"the pool of {dbname} stayed busy: {bouncer.pools()}")


# --------------------------------------------------------------------------- Citus


@pytest.fixture
def orders(citus_cluster: CitusCluster) -> Iterator[str]:
    """A distributed table ``orders_<random>`` (by ``account_id``) with rows on every shard."""
    name = f"orders_{uuid.uuid4().hex[:8]}"
    table = sql.Identifier(name)
    with psycopg.connect(citus_cluster.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL(
            "CREATE TABLE {} (account_id bigint NOT NULL, id bigint NOT NULL, amount int, "
            "PRIMARY KEY (account_id, id))").format(table))
        conn.execute("SELECT create_distributed_table(%s, 'account_id')", (name,))
        conn.execute(sql.SQL(
            "INSERT INTO {} SELECT g % 64, g, g FROM generate_series(1, 640) g").format(table))
    try:
        yield name
    finally:
        with psycopg.connect(citus_cluster.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))


def _worker_settings(conn: psycopg.Connection[tuple[Any, ...]], table: str,
                     setting: str) -> set[tuple[str, int]]:
    """(value of ``setting``, server port) as seen by the shards' queries on the workers."""
    rows = conn.execute(sql.SQL(
        "SELECT DISTINCT current_setting({}), inet_server_port() FROM {}").format(
            sql.Literal(setting), sql.Identifier(table))).fetchall()
    return {(str(value), int(port)) for value, port in rows}


def test_citus_cluster_has_a_coordinator_and_two_workers(citus_cluster: CitusCluster) -> None:
    assert len(citus_cluster.workers) == 2
    assert citus_cluster.citus_version is not None
    assert citus_cluster.citus_version.startswith("Citus ")
    with psycopg.connect(citus_cluster.dsn, autocommit=True) as conn:
        assert int(_value(conn, "SHOW server_version_num")) // 10000 == citus_cluster.version
        nodes = conn.execute("SELECT groupid, nodeport FROM pg_dist_node ORDER BY groupid"
                             ).fetchall()
    assert nodes[0] == (0, citus_cluster.coordinator.port)
    assert sorted(port for _, port in nodes[1:]) == sorted(citus_cluster.worker_ports)


def test_distributed_table_has_shards_on_both_workers(citus_cluster: CitusCluster,
                                                       orders: str) -> None:
    with psycopg.connect(citus_cluster.dsn, autocommit=True) as conn:
        placements = conn.execute(
            "SELECT nodeport, shard_name FROM citus_shards WHERE table_name = %s::regclass",
            (orders,)).fetchall()
        assert _value(conn, f"SELECT count(*) FROM {orders}") == 640
    assert {port for port, _ in placements} == set(citus_cluster.worker_ports)
    for worker in citus_cluster.worker_servers:
        here = [shard for port, shard in placements if port == worker.port]
        with psycopg.connect(worker.dsn, autocommit=True) as conn:
            rows = sum(int(_value(conn, f"SELECT count(*) FROM {shard}")) for shard in here)
        assert 0 < rows < 640  # the rows really live on the workers, split between them


def test_citus_set_local_reaches_the_workers_only_when_propagated(
    citus_cluster: CitusCluster, orders: str
) -> None:
    ports = set(citus_cluster.worker_ports)
    with psycopg.connect(citus_cluster.dsn, autocommit=False) as conn:
        default = _value(conn, "SHOW lock_timeout")
        # Default (citus.propagate_set_commands = 'none'): the coordinator only.
        conn.execute("SET LOCAL lock_timeout = '1234ms'")
        assert _value(conn, "SHOW lock_timeout") == "1234ms"
        assert _worker_settings(conn, orders, "lock_timeout") == {(default, p) for p in ports}
        conn.rollback()

        conn.execute("SET LOCAL citus.propagate_set_commands = 'local'")
        conn.execute("SET LOCAL lock_timeout = '1234ms'")
        assert _worker_settings(conn, orders, "lock_timeout") == {("1234ms", p) for p in ports}
        conn.commit()
        # The workers' connections are cached by the coordinator; the setting is not.
        assert _worker_settings(conn, orders, "lock_timeout") == {(default, p) for p in ports}
        conn.commit()

        # set_config(..., true) is SET LOCAL on the coordinator, but is not forwarded.
        conn.execute("SET LOCAL citus.propagate_set_commands = 'local'")
        conn.execute("SELECT set_config('lock_timeout', '1234ms', true)")
        assert _worker_settings(conn, orders, "lock_timeout") == {(default, p) for p in ports}
        conn.rollback()


def test_citus_propagated_lock_timeout_bounds_a_lock_wait_on_a_worker(
    citus_cluster: CitusCluster, orders: str
) -> None:
    worker = citus_cluster.worker_servers[0]
    with psycopg.connect(citus_cluster.dsn, autocommit=True) as conn:
        shard = _value(conn, "SELECT shard_name FROM citus_shards WHERE table_name = "
                             f"'{orders}'::regclass AND nodeport = {worker.port} LIMIT 1")
    with psycopg.connect(worker.dsn, autocommit=False) as blocker, \
            psycopg.connect(citus_cluster.dsn, autocommit=False) as conn:
        blocker.execute("SET LOCAL citus.enable_manual_changes_to_shards = on")
        blocker.execute(f"LOCK TABLE {shard} IN ACCESS EXCLUSIVE MODE")  # on the worker only

        # Not forwarded: the worker waits; only the coordinator's statement_timeout ends it.
        conn.execute("SET LOCAL lock_timeout = '200ms'")
        conn.execute("SET LOCAL statement_timeout = '1500ms'")
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute(f"SELECT count(*) FROM {orders}")
        assert time.monotonic() - started >= 1.4
        conn.rollback()

        # Forwarded: the worker's own lock_timeout fails the statement fast.
        conn.execute("SET LOCAL citus.propagate_set_commands = 'local'")
        conn.execute("SET LOCAL lock_timeout = '200ms'")
        conn.execute("SET LOCAL statement_timeout = '10s'")
        started = time.monotonic()
        with pytest.raises(psycopg.errors.LockNotAvailable):
            conn.execute(f"SELECT count(*) FROM {orders}")
        assert time.monotonic() - started < 5
        conn.rollback()
        blocker.rollback()


# --------------------------------------------------------------------------- lifecycle


def test_pgbouncer_missing_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from safeddl.testing import ExternalServer, PgBouncerNotFound, ServerError
    from safeddl.testing import pgbouncer as pgbouncer_module

    monkeypatch.setattr(pgbouncer_module, "find_pgbouncer", lambda: None)
    nowhere = ExternalServer(dsn="host=/nonexistent user=u dbname=d", sqlalchemy_url="",
                             version=15)
    with pytest.raises(PgBouncerNotFound, match="apt-get install pgbouncer") as caught:
        PgBouncer(nowhere).start()
    assert isinstance(caught.value, ServerError)


def test_citus_missing_says_how_to_get_it() -> None:
    from safeddl.testing import CitusNotFound, ServerInstall

    no_citus = ServerInstall(version=15, bindir=Path("/nonexistent/bin"), source="system")
    with pytest.raises(CitusNotFound, match=r"shared/citus/build\.sh.*PostgreSQL 15"):
        CitusCluster(no_citus).start()


_DIES_WITHOUT_CLEANING_UP = """
import os, sys
from safeddl.testing import ExternalServer, PgBouncer
bouncer = PgBouncer(ExternalServer.connect(sys.argv[1])).start()
print(bouncer.pid, bouncer.directory, flush=True)
os._exit(0)
"""


def test_pgbouncer_does_not_outlive_a_process_that_dies(
    pgbouncer_transaction: PgBouncer, safeddl_server: Any
) -> None:
    # (pgbouncer_transaction: only to skip when PgBouncer is not installed)
    done = subprocess.run([sys.executable, "-c", _DIES_WITHOUT_CLEANING_UP, safeddl_server.dsn],
                          capture_output=True, text=True, timeout=60, check=True)
    pid_text, directory = done.stdout.split()
    pid = int(pid_text)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (_alive(pid) or Path(directory).exists()):
        time.sleep(0.05)
    assert not _alive(pid), "pgbouncer outlived the process that started it"
    assert not Path(directory).exists()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "\nState:\tZ" in status.read_text())
