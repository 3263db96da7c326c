"""safeddl on a real Citus 13.2 cluster (a coordinator and two workers on 127.0.0.1).

What must hold there: the lock-wait bound reaches every shard (literal ``SET LOCAL``
with ``citus.propagate_set_commands = 'local'``) and nothing of it outlives the
transaction on any node; a blocker on a worker is named (node, global pid, shard, the
table); distributed and reference tables have the size of their shards, so the default
policy rewrites or refuses on a 200,000-row distributed table and every rewrite
converges on the coordinator and all shards; a foreign key on a distributed table is
predicted as EXCLUSIVE on the coordinator's table, as it takes; a distributed deadlock
is retried until both units commit exactly once.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

import safeddl
import safeddl.psycopg
from safeddl import Policy
from safeddl.analysis import analyze_statement
from safeddl.locks import LockMode
from safeddl.runtime.citus import add_citus_facts
from safeddl.runtime.live_catalog import read_catalog
from safeddl.testing import CitusCluster

pytestmark = [pytest.mark.timeout(240)]

Conn = psycopg.Connection[tuple[Any, ...]]

LOCK_TIMEOUT_S = 0.3
BOUND_S = LOCK_TIMEOUT_S + 1.5  # the report asks every node twice (citus_locks, activity)
POLICY = Policy(lock_timeout="300ms", statement_timeout={"default": "20s"})
ROWS = 200_000


def _value(conn: Conn, query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def _run(conn: Conn) -> Callable[[str, Any], list[tuple[Any, ...]]]:
    return lambda sql, params: conn.execute(sql, params).fetchall()


@pytest.fixture
def orders(citus_cluster: CitusCluster) -> Iterator[str]:
    """A distributed table (by account_id) of 200,000 rows, and a reference table
    ``<orders>_currencies`` it can refer to."""
    name = f"orders_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(citus_cluster.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name}_currencies (code text PRIMARY KEY)")
        conn.execute("SELECT create_reference_table(%s)", [f"{name}_currencies"])
        conn.execute(f"INSERT INTO {name}_currencies VALUES ('EUR'), ('USD')")
        conn.execute(f"CREATE TABLE {name} (account_id bigint NOT NULL, id bigint NOT NULL, "
                     "amount int, currency text, status text, PRIMARY KEY (account_id, id))")
        conn.execute("SELECT create_distributed_table(%s, 'account_id')", [name])
        conn.execute(f"INSERT INTO {name} SELECT g % 64, g, g, 'EUR', 'new' "
                     f"FROM generate_series(1, {ROWS}) g")
        conn.execute(f"ANALYZE {name}")
    try:
        yield name
    finally:
        with psycopg.connect(citus_cluster.dsn, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {name}, {name}_currencies CASCADE")


def _shard_on(cluster: CitusCluster, table: str, port: int) -> str:
    with psycopg.connect(cluster.dsn, autocommit=True) as conn:
        return str(_value(conn, "SELECT shard_name FROM citus_shards WHERE table_name = "
                                "%s::regclass AND nodeport = %s ORDER BY shardid LIMIT 1",
                          [table, port]))


def _settings_everywhere(cluster: CitusCluster, table: str) -> set[tuple[str, ...]]:
    """lock_timeout, statement_timeout and citus.propagate_set_commands as a new
    transaction sees them on the coordinator and, through every shard's query, on the
    workers' connections Citus keeps open."""
    settings = ("lock_timeout", "statement_timeout")
    with psycopg.connect(cluster.dsn, autocommit=True) as conn:
        seen = {tuple(str(_value(conn, f"SHOW {name}")) for name in
                      (*settings, "citus.propagate_set_commands"))}
        for _ in range(3):  # several transactions: Citus reuses its worker connections
            rows = conn.execute(f"SELECT DISTINCT current_setting('lock_timeout'), "
                                f"current_setting('statement_timeout'), 'worker' FROM {table}"
                                ).fetchall()
            seen |= {tuple(str(v) for v in row) for row in rows}
    return seen


@pytest.mark.parametrize("autocommit", [True, False], ids=["autocommit", "transaction"])
def test_the_bound_reaches_the_shards_and_names_the_blocker_on_a_worker(
        citus_cluster: CitusCluster, orders: str, autocommit: bool) -> None:
    worker = citus_cluster.worker_servers[0]
    shard = _shard_on(citus_cluster, orders, worker.port)
    with psycopg.connect(worker.dsn, application_name="worker reader") as blocker, \
            safeddl.psycopg.connect(citus_cluster.dsn, policy=POLICY,
                                    autocommit=autocommit) as conn:
        blocker.execute(f"SELECT count(*) FROM {shard}")  # ACCESS SHARE on a worker only
        blocker_pid = int(_value(blocker, "SELECT pg_backend_pid()"))
        start = time.monotonic()
        with pytest.raises(safeddl.LockTimeout) as caught:
            conn.execute(f"ALTER TABLE {orders} ADD COLUMN note text")
        seconds = time.monotonic() - start
        assert seconds < BOUND_S, f"LockTimeout after {seconds:.2f} s"
        error = caught.value
        named = [b for b in error.blockers if b.pid == blocker_pid]
        assert named, str(error)
        assert named[0].node is not None and named[0].node.endswith(f":{worker.port}")
        assert named[0].global_pid is not None
        assert named[0].shard == shard and named[0].relation == orders
        assert "may have finished" not in str(error)
        assert f"on node 127.0.0.1:{worker.port}" in str(error)
        if not autocommit:
            conn.rollback()
        blocker.rollback()
    assert _settings_everywhere(citus_cluster, orders) == {("0", "0", "none"),
                                                           ("0", "0", "worker")}


def test_nothing_set_for_guarded_ddl_outlives_its_transaction_on_any_node(
        citus_cluster: CitusCluster, orders: str) -> None:
    with safeddl.psycopg.connect(citus_cluster.dsn, policy=POLICY, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE {orders} ADD COLUMN note text")
        conn.execute(f"SELECT count(*) FROM {orders}")  # reuses the worker connections
        assert _value(conn, "SHOW lock_timeout") == "0"
    with safeddl.psycopg.connect(citus_cluster.dsn, policy=POLICY) as conn:
        conn.execute(f"ALTER TABLE {orders} DROP COLUMN note")
        conn.commit()
    assert _settings_everywhere(citus_cluster, orders) == {("0", "0", "none"),
                                                           ("0", "0", "worker")}


def test_distributed_tables_have_the_size_of_their_shards(
        citus_cluster: CitusCluster, orders: str) -> None:
    with psycopg.connect(citus_cluster.dsn, autocommit=True) as conn:
        assert _value(conn, "SELECT reltuples FROM pg_class WHERE oid = %s::regclass",
                      [orders]) <= 0  # what the coordinator itself says
        live = read_catalog(_run(conn), [orders, f"{orders}_currencies"])
        add_citus_facts(live, _run(conn), in_transaction=False)
    table = live.catalog.get(orders)
    reference = live.catalog.get(f"{orders}_currencies")
    assert table is not None and reference is not None
    assert table.distributed and reference.distributed
    assert table.rows is not None and ROWS * 0.5 <= table.rows <= ROWS * 1.5
    assert reference.rows == 2  # one copy counted, not one per node


def test_rewrites_converge_on_every_shard_with_the_default_policy(
        citus_cluster: CitusCluster, orders: str) -> None:
    """200,000 rows, the default policy: what needs a rewrite is rewritten (and ends in
    the state the original statement would have left, on the coordinator and on every
    shard), what has no exact rewrite is refused."""
    rewritten = [
        f"CREATE INDEX {orders}_amount_idx ON {orders} (amount)",
        f"ALTER TABLE {orders} ADD CONSTRAINT {orders}_amount_positive CHECK (amount > 0)",
        f"ALTER TABLE {orders} ALTER COLUMN status SET NOT NULL",
        f"ALTER TABLE {orders} ADD CONSTRAINT {orders}_currency_fk FOREIGN KEY (currency) "
        f"REFERENCES {orders}_currencies (code)",
        f"ALTER TABLE {orders} ADD CONSTRAINT {orders}_account_amount_key "
        "UNIQUE (account_id, amount)",
    ]
    refused = {f"TRUNCATE {orders}": "truncate",
               f"ALTER TABLE {orders} ADD COLUMN r float8 DEFAULT random()":
                   "add-column-volatile-default",
               f"ALTER TABLE {orders} ALTER COLUMN amount TYPE bigint": "alter-column-type"}
    with safeddl.psycopg.connect(citus_cluster.dsn, autocommit=True) as conn:
        for sql, rule in refused.items():
            with pytest.raises(safeddl.UnsafeStatement) as caught:
                conn.execute(sql)
            assert caught.value.rule == rule
        for sql in rewritten:
            conn.execute(sql)
    with psycopg.connect(citus_cluster.dsn, autocommit=True) as conn:
        constraints = dict(conn.execute(
            "SELECT conname, convalidated FROM pg_constraint WHERE conrelid = %s::regclass",
            [orders]).fetchall())
        assert constraints == {f"{orders}_pkey": True, f"{orders}_amount_positive": True,
                               f"{orders}_currency_fk": True,
                               f"{orders}_account_amount_key": True}
        assert _value(conn, "SELECT attnotnull FROM pg_attribute WHERE attrelid = "
                            "%s::regclass AND attname = 'status'", [orders])
        indexes = dict(conn.execute(
            "SELECT indexrelid::regclass::text, indisvalid FROM pg_index "
            "WHERE indrelid = %s::regclass", [orders]).fetchall())
        assert indexes == {f"{orders}_pkey": True, f"{orders}_amount_idx": True,
                           f"{orders}_account_amount_key": True}
        shard_count = int(_value(conn, "SELECT count(*) FROM pg_dist_shard "
                                       "WHERE logicalrelid = %s::regclass", [orders]))
        per_shard = conn.execute(
            "SELECT result FROM run_command_on_shards(%s, $cmd$SELECT "
            "(SELECT string_agg(conname || '=' || convalidated, ',' ORDER BY conname) "
            " FROM pg_constraint WHERE conrelid = '%%1$s'::regclass) || ' ' || "
            "(SELECT count(*) FILTER (WHERE indisvalid) || '/' || count(*) FROM pg_index "
            " WHERE indrelid = '%%1$s'::regclass) || ' ' || "
            "(SELECT attnotnull FROM pg_attribute WHERE attrelid = '%%1$s'::regclass "
            " AND attname = 'status')$cmd$)", [orders]).fetchall()
        assert len(per_shard) == shard_count
        for (result,) in per_shard:
            checks, index_counts, not_null = result.split(" ")
            assert sorted(part.split("_", 2)[-1].rsplit("=", 1)[1] for part in
                          checks.split(",")) == ["true"] * 4, result
            assert index_counts == "3/3" and not_null == "true", result


def test_a_foreign_key_on_a_distributed_table_is_exclusive_on_the_coordinator(
        citus_cluster: CitusCluster, orders: str) -> None:
    sql = (f"ALTER TABLE {orders} ADD CONSTRAINT {orders}_fk FOREIGN KEY (currency) "
           f"REFERENCES {orders}_currencies (code) NOT VALID")
    with psycopg.connect(citus_cluster.dsn) as conn:
        live = read_catalog(_run(conn), [orders, f"{orders}_currencies"])
        add_citus_facts(live, _run(conn), in_transaction=True)
        predicted = {lock.relation: lock.mode for lock in
                     analyze_statement(sql, version=citus_cluster.version,
                                       catalog=live.catalog).locks}
        conn.execute(sql)
        taken: dict[str, LockMode] = {}
        for relation, mode in conn.execute(
                "SELECT relation::regclass::text, mode FROM pg_locks WHERE pid = "
                "pg_backend_pid() AND locktype = 'relation' AND relation = ANY "
                "(ARRAY[%s::regclass, %s::regclass])",
                [orders, f"{orders}_currencies"]).fetchall():
            held = LockMode.from_pg_name(mode)
            taken[relation] = max(taken.get(relation, held), held)
        conn.rollback()
    assert taken[orders] is LockMode.EXCLUSIVE
    assert predicted == taken


# --------------------------------------------------------------------------- deadlocks


def _accounts_on_two_workers(conn: Conn, table: str) -> tuple[int, int]:
    nodes: dict[int, int] = {}
    for account in range(64):
        port = int(_value(conn, "SELECT nodeport FROM citus_shards WHERE shardid = "
                                "get_shard_id_for_distribution_column(%s, %s)",
                          [table, account]))
        nodes.setdefault(port, account)
        if len(nodes) == 2:
            first, second = nodes.values()
            return first, second
    raise AssertionError("the table's shards are all on one worker")


def test_a_distributed_deadlock_is_retried_to_exactly_once_commits(
        citus_cluster: CitusCluster, caplog: pytest.LogCaptureFixture) -> None:
    name = f"counters_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(citus_cluster.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (account_id bigint PRIMARY KEY, n int NOT NULL)")
        conn.execute("SELECT create_distributed_table(%s, 'account_id')", [name])
        conn.execute(f"INSERT INTO {name} SELECT g, 0 FROM generate_series(0, 63) g")
        first, second = _accounts_on_two_workers(conn, name)
    barrier = threading.Barrier(2, timeout=30)
    attempts: dict[str, int] = {"ab": 0, "ba": 0}
    failures: list[BaseException] = []

    def unit(label: str, a: int, b: int) -> Callable[[Conn], None]:
        def body(conn: Conn) -> None:
            attempts[label] += 1
            conn.execute(f"UPDATE {name} SET n = n + 1 WHERE account_id = %s", [a])
            if attempts[label] == 1:
                barrier.wait()  # both hold their first row: the cycle closes across nodes
            conn.execute(f"UPDATE {name} SET n = n + 1 WHERE account_id = %s", [b])
        return body

    def worker(label: str, a: int, b: int) -> None:
        try:
            with psycopg.connect(citus_cluster.dsn) as conn:
                safeddl.run_transaction(conn, unit(label, a, b), attempts=5,
                                        backoff="50ms", max_backoff="200ms")
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=("ab", first, second)),
               threading.Thread(target=worker, args=("ba", second, first))]
    with caplog.at_level(logging.WARNING, logger="safeddl"):
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    summaries = [r.getMessage() for r in caplog.records if "attempt 1 of" in r.getMessage()]
    assert not failures, failures
    assert attempts["ab"] + attempts["ba"] == 3  # one of them was cancelled and retried
    with psycopg.connect(citus_cluster.dsn, autocommit=True) as conn:
        counts = dict(conn.execute(f"SELECT account_id, n FROM {name} WHERE account_id "
                                   "IN (%s, %s)", [first, second]).fetchall())
        conn.execute(f"DROP TABLE {name}")
    assert counts == {first: 2, second: 2}  # each unit committed exactly once
    assert summaries and "distributed deadlock" in summaries[0]
    assert "names no processes" in summaries[0]
