"""What the guard does differently on a Citus coordinator.

- **Blockers cluster-wide** (:func:`read_citus_blockers`): a session holding a lock on
  a worker is not in the coordinator's ``pg_locks``. ``citus_locks`` (every node's
  ``pg_locks``, with the global pid) joined with ``citus_stat_activity`` names the node,
  the global pid, the shard and the table the shard belongs to. The own distributed
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
    QUERY_LIMIT,
    Blocker,
    LockRequest,
    Run,
    conflicting_modes,
)
from safeddl.runtime.live_catalog import LiveCatalog

logger = logging.getLogger("safeddl")

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
    SELECT * FROM citus_locks
    WHERE locktype = 'relation' AND granted
      AND global_pid IS DISTINCT FROM citus_backend_gpid()
), activity AS (
    SELECT * FROM citus_stat_activity
)
SELECT l.pid, a.usename::text, a.application_name, a.state, t.name, l.mode, l.granted,
       clock_timestamp() - a.xact_start, clock_timestamp() - a.query_start,
       a.wait_event_type, a.wait_event, left(a.query, %(limit)s),
       citus_nodename_for_nodeid(l.nodeid) || ':' || citus_nodeport_for_nodeid(l.nodeid),
       l.global_pid, l.relation_name
FROM locks l
JOIN targets t ON l.relation_name IN (t.bare, t.qualified)
             AND l.mode = ANY (string_to_array(t.modes, ','))
LEFT JOIN activity a ON a.nodeid = l.nodeid AND a.pid = l.pid
WHERE coalesce(a.backend_type, 'client backend') = 'client backend'
  AND (%(min_age)s::interval IS NULL OR a.xact_start <= clock_timestamp() - %(min_age)s::interval)
ORDER BY a.xact_start NULLS LAST, l.global_pid, l.nodeid, l.pid
"""


def read_citus_blockers(run: Run, requests: Sequence[LockRequest],
                        min_age: timedelta | None = None) -> list[Blocker]:
    """Sessions on any node of the cluster (other than the own distributed transaction)
    holding a lock that conflicts with one of ``requests``, on the table, its copies
    on the workers or any of its shards."""
    if not requests:
        return []
    params = {
        "limit": QUERY_LIMIT,
        "oids": [request.oid for request in requests],
        "names": [request.relation for request in requests],
        "modes": [",".join(conflicting_modes(request.mode)) for request in requests],
        "min_age": min_age,
    }
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
