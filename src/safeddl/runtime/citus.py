"""What the guard does differently on a Citus coordinator.

- **Blockers cluster-wide** (:func:`read_citus_blockers`): a session holding a lock on
  a worker is not in the coordinator's ``pg_locks``. Every node's ``pg_locks`` joined
  with its ``pg_stat_activity`` and the global pids (what ``citus_locks`` and
  ``citus_stat_activity`` show, read in one round over the nodes with
  ``run_command_on_all_nodes``) names the node, the global pid, the shard and the table
  the shard belongs to. The own distributed
  transaction is left out by its global pid (``citus_backend_gpid()``), which its worker
  backends share.
- **Sizes from the shards** (:func:`add_citus_facts`): on the coordinator a distributed
  or reference table has ``reltuples`` 0 and no live tuples; its size is the sum over its
  shards of each shard's ``reltuples`` / live tuples (the largest placement of each
  shard), read on the workers through ``run_command_on_placements`` with catalog reads
  that take no table lock. When that fails the size is unknown (treated as large).
- The bound itself (literal ``SET LOCAL`` after ``SET LOCAL
  citus.propagate_set_commands = 'local'``) is in :mod:`safeddl.runtime.topology`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from safeddl.runtime.blockers import (
    Blocker,
    LockRequest,
    Run,
    request_params,
)
from safeddl.runtime.live_catalog import LiveCatalog

logger = logging.getLogger("safeddl")

# One round over the nodes: each node's granted relation locks with its activity and
# the global pid of each backend (what citus_locks and citus_stat_activity show, in one
# fan-out instead of two).
_NODE_LOCKS = (
    "SELECT coalesce(jsonb_agg(jsonb_build_array("
    "l.pid, a.usename, a.application_name, a.state, l.relation::regclass::text, l.mode, "
    "extract(epoch FROM clock_timestamp() - a.xact_start), "
    "extract(epoch FROM clock_timestamp() - a.query_start), "
    "a.wait_event_type, a.wait_event, left(a.query, 200), t.global_pid)), '[]') "
    "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
    "LEFT JOIN get_all_active_transactions() t ON t.process_id = l.pid "
    "WHERE l.locktype = 'relation' AND l.granted AND a.backend_type = 'client backend' "
    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)

_CITUS_BLOCKERS_SQL = """
WITH wanted AS (
    SELECT w.name, coalesce(w.relid, to_regclass(w.name)::oid) AS relid, w.modes
    FROM unnest(%(oids)s::oid[], %(names)s::text[], %(modes)s::text[]) AS w(relid, name, modes)
), targets AS (
    SELECT w.name, w.modes, format('%%I', c.relname) AS bare,
           format('%%I.%%I', n.nspname, c.relname) AS qualified
    FROM wanted w JOIN pg_class c ON c.oid = w.relid JOIN pg_namespace n ON n.oid = c.relnamespace
    UNION ALL
    SELECT w.name, w.modes, format('%%I', c.relname || '_' || s.shardid),
           format('%%I.%%I', n.nspname, c.relname || '_' || s.shardid)
    FROM wanted w JOIN pg_class c ON c.oid = w.relid JOIN pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_dist_shard s ON s.logicalrelid = w.relid
), locks AS (
    SELECT r.nodeid, e.value AS v
    FROM run_command_on_all_nodes(%(node_locks)s) AS r,
         jsonb_array_elements(r.result::jsonb) AS e
    WHERE r.success
)
SELECT (v->>0)::int, v->>1, v->>2, v->>3, t.name, v->>5, true,
       make_interval(secs => (v->>6)::float8), make_interval(secs => (v->>7)::float8),
       v->>8, v->>9, left(v->>10, %(limit)s),
       citus_nodename_for_nodeid(l.nodeid) || ':' || citus_nodeport_for_nodeid(l.nodeid),
       (v->>11)::bigint, v->>4
FROM locks l
JOIN targets t ON l.v->>4 IN (t.bare, t.qualified)
             AND l.v->>5 = ANY (string_to_array(t.modes, ','))
WHERE (v->>11)::bigint IS DISTINCT FROM citus_backend_gpid()
  AND (%(min_age)s::interval IS NULL
       OR make_interval(secs => (v->>6)::float8) >= %(min_age)s::interval)
ORDER BY (v->>6)::float8 DESC NULLS LAST, (v->>11)::bigint, l.nodeid, (v->>0)::int
"""


def read_citus_blockers(run: Run, requests: Sequence[LockRequest],
                        min_age: timedelta | None = None) -> list[Blocker]:
    """Sessions on any node of the cluster (other than the own distributed transaction)
    holding a lock that conflicts with one of ``requests``, on the table, its copies
    on the workers or any of its shards."""
    if not requests:
        return []
    params = {**request_params(requests, min_age), "node_locks": _NODE_LOCKS}
    seen: set[tuple[int, str, str, str]] = set()
    out = []
    for row in run(_CITUS_BLOCKERS_SQL, params):
        blocker = _blocker(row)
        key = (blocker.pid, blocker.node or "", blocker.relation, blocker.mode)
        if key not in seen:
            seen.add(key)
            out.append(blocker)
    return out


def _blocker(row: tuple[Any, ...]) -> Blocker:
    (pid, user, application, state, relation, mode, granted, xact_age, query_age,
     wait_type, wait_event, query, node, global_pid, shard) = row
    return Blocker(pid, user, application, state, relation, mode, granted, xact_age,
                   query_age, wait_type, wait_event, query, node=node,
                   global_pid=global_pid, shard=shard)


_DISTRIBUTED_SQL = """
WITH shards AS (
    SELECT s.logicalrelid, s.shardid, shard_name(s.logicalrelid, s.shardid) AS name
    FROM pg_dist_shard s WHERE s.logicalrelid = ANY (%(oids)s::oid[])
), command AS (
    SELECT 'SELECT coalesce(json_object_agg(w.shardid, greatest(greatest(c.reltuples, 0)'
           || '::bigint, pg_stat_get_live_tuples(c.oid))), ''{}'') FROM (VALUES '
           || string_agg(format('(%%s, %%L)', shardid, name), ', ')
           || ') AS w(shardid, name) JOIN pg_class c ON c.oid = to_regclass(w.name)' AS sql
    FROM shards
), per_node AS (
    SELECT r.result::json AS counts
    FROM command, run_command_on_all_nodes(command.sql) AS r
    WHERE command.sql IS NOT NULL AND r.success
), per_shard AS (
    SELECT e.key::bigint AS shardid, max(e.value::text::numeric) AS n
    FROM per_node, json_each(per_node.counts) AS e GROUP BY 1
)
SELECT p.logicalrelid::oid,
       (SELECT sum(ps.n) FROM shards s JOIN per_shard ps USING (shardid)
        WHERE s.logicalrelid = p.logicalrelid)
FROM pg_dist_partition p
WHERE p.logicalrelid = ANY (%(oids)s::oid[])
"""


_SAVEPOINT = "safeddl_citus_sizes"


def add_citus_facts(live: LiveCatalog, run: Run, *, in_transaction: bool) -> None:
    """Mark the distributed and reference tables of ``live`` and give them the number
    of rows their shards hold (None, i.e. unknown, when the workers cannot be asked;
    in a transaction block a savepoint keeps such a failure from aborting it)."""
    by_oid: dict[int, list[str]] = {}
    for key, oid in live.oids.items():
        if key in live.catalog.relations:
            by_oid.setdefault(oid, []).append(key)
    if not by_oid:
        return
    try:
        if in_transaction:
            run(f"SAVEPOINT {_SAVEPOINT}", None)
        try:
            rows = run(_DISTRIBUTED_SQL, {"oids": sorted(by_oid)})
        except Exception:
            if in_transaction:
                run(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}; RELEASE SAVEPOINT {_SAVEPOINT}", None)
            raise
        if in_transaction:
            run(f"RELEASE SAVEPOINT {_SAVEPOINT}", None)
    except Exception as exc:  # noqa: BLE001 - unknown size: the rules treat it as large
        logger.warning("safeddl: could not read the size of Citus tables from their shards "
                       "(%s); treating them as large", exc)
        rows = [(oid, None) for oid in by_oid]
    for oid, total in rows:
        for key in by_oid.get(oid, []):
            relation = live.catalog.relations[key]
            relation.distributed = True
            relation.rows = int(total) if total is not None else None


__all__ = ["add_citus_facts", "read_citus_blockers"]
