"""What the server's catalog says about the relations a statement names, as a
:class:`safeddl.analysis.Catalog` the analysis and the rules already understand.

Read on the guarded session itself (so names resolve through its ``search_path`` and
"created in this transaction" can be told), with plain catalog SELECTs that never
wait for a table lock and cannot fail on odd input (no ``::regclass`` casts of user
text, no ``pg_relation_size``, which would take a lock).

Facts: relation kind; estimated rows (``reltuples``, or ``pg_stat`` live tuples when
larger or never analyzed; partitioned tables: the sum of their partitions); column
types and NOT NULL; constraints (foreign keys with the referenced table, CHECKs and
whether they are valid); partition parents and children; the table of an index; the
relations a view reads; user triggers and row-level security; whether an index is
INVALID (a failed concurrent build); and whether the relation was created in the current
transaction (see :data:`_NEW_IN_TRANSACTION`). For a ``CALL``, the procedures of that
name (``pg_get_functiondef``, read as the statement that creates them), and the facts
of the relations their bodies touch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from safeddl.analysis import Action, Catalog, Constraint, ConstraintType, Relation, Statement
from safeddl.model import Step
from safeddl.sql import call_steps, read
from safeddl.sql.names import fold, split_name

logger = logging.getLogger("safeddl")

Run = Callable[[str, Sequence[Any] | dict[str, Any] | None], list[tuple[Any, ...]]]

DEFAULT_TTL_S = 2.0

_KINDS = {"r": "table", "p": "partitioned", "v": "view", "m": "materialized view",
          "f": "foreign table"}
_INDEX_KINDS = frozenset({"i", "I"})
_CONSTRAINT_TYPES = {"c": ConstraintType.CHECK, "f": ConstraintType.FOREIGN_KEY,
                     "u": ConstraintType.UNIQUE, "p": ConstraintType.PRIMARY_KEY,
                     "x": ConstraintType.EXCLUDE, "n": ConstraintType.NOT_NULL}


@dataclass
class LiveCatalog:
    """A catalog read from a live session, with the oid of each relation found."""

    catalog: Catalog
    oids: dict[str, int] = field(default_factory=dict)  # catalog key -> oid
    names: frozenset[str] = frozenset()  # the written names it was read for
    # decisions made against this catalog, by the guard's key (see Guard._decision)
    decisions: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    def oid_of(self, written: str) -> int | None:
        return self.oids.get(self.catalog.key(written))

    @property
    def has_new(self) -> bool:
        return any(relation.new for relation in self.catalog.relations.values())

    def exists(self, written: str) -> bool:
        key = self.catalog.key(written)
        return key in self.catalog.relations or key in self.catalog.indexes


def procedures_in(statements: Iterable[Statement]) -> frozenset[str]:
    """The procedures (as written) the statements CALL without knowing their bodies."""
    return frozenset(step.function for statement in statements for step in statement.steps
                     if step.action is Action.CALL and step.function
                     and step.target_kind not in ("body-read", "body-commits"))


def names_in(statements: Iterable[Statement]) -> frozenset[str]:
    """Every relation name (as written) the statements mention or lock."""
    names: set[str] = set()
    for statement in statements:
        names.update(lock.relation for lock in statement.locks)
        for step in statement.steps:
            names.update(n for n in (step.table, step.references, step.name, step.parent,
                                     step.using_index, step.function) if n)
    return frozenset(names)


# --------------------------------------------------------------------------- reading

_RESOLVE_SQL = """
WITH wanted AS (
    SELECT * FROM unnest(%(written)s::text[], %(schemas)s::text[], %(names)s::text[])
        AS w(written, nsp, name)
), path AS (
    SELECT p.nsp, p.ord FROM unnest(current_schemas(true)) WITH ORDINALITY AS p(nsp, ord)
)
SELECT DISTINCT ON (w.written) w.written, c.oid
FROM wanted w
JOIN pg_class c ON c.relname = w.name
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN path p ON p.nsp = n.nspname
WHERE CASE WHEN w.nsp IS NULL THEN p.ord IS NOT NULL ELSE n.nspname = w.nsp END
ORDER BY w.written, p.ord
"""

# The base relations (indexes replaced by their tables), their partitions and parents
# (recursively), the tables their foreign keys reference or that reference them, and
# what views among them read.
_RELATED_SQL = """
WITH RECURSIVE base AS (
    SELECT coalesce(i.indrelid, b.oid) AS oid
    FROM unnest(%(oids)s::oid[]) AS b(oid) LEFT JOIN pg_index i ON i.indexrelid = b.oid
), down(oid) AS (
    SELECT oid FROM base
    UNION SELECT h.inhrelid FROM pg_inherits h JOIN down d ON h.inhparent = d.oid
), up(oid) AS (
    SELECT oid FROM base
    UNION SELECT h.inhparent FROM pg_inherits h JOIN up u ON h.inhrelid = u.oid
), reads(oid) AS (
    SELECT oid FROM base
    UNION SELECT d.refobjid FROM reads r
          JOIN pg_rewrite w ON w.ev_class = r.oid
          JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = w.oid
                          AND d.refclassid = 'pg_class'::regclass AND d.refobjid <> r.oid
)
SELECT oid FROM down UNION SELECT oid FROM up UNION SELECT oid FROM reads
UNION SELECT k.confrelid FROM pg_constraint k WHERE k.contype = 'f'
      AND k.conrelid IN (SELECT oid FROM base)
UNION SELECT k.conrelid FROM pg_constraint k WHERE k.contype = 'f'
      AND k.confrelid IN (SELECT oid FROM base)
"""

# Created in the current transaction: nobody else can see it yet. The pg_class row is
# no proof (any ALTER in this transaction writes a new version of it, with our xid),
# but a table's system-column rows in pg_attribute are written once, when it is
# created: their xmin is the creating (sub)transaction's xid. ``age(xid) <= 0`` means
# "assigned at or after this transaction's own xid" (age() is relative to it, never
# raises, and is INT_MAX for frozen xids); the creator also holds ACCESS EXCLUSIVE on
# it until COMMIT, which rules out a table another session created and committed
# meanwhile (unless this transaction has since locked it exclusively itself).
_NEW_IN_TRANSACTION = """
txid_current_if_assigned() IS NOT NULL
AND EXISTS (SELECT 1 FROM pg_attribute s
            WHERE s.attrelid = c.oid AND s.attnum = -1 AND age(s.xmin) <= 0)
AND EXISTS (SELECT 1 FROM pg_locks l
            WHERE l.locktype = 'relation' AND l.relation = c.oid AND l.granted
              AND l.pid = pg_backend_pid() AND l.mode = 'AccessExclusiveLock')
"""

_FACTS_SQL = f"""
SELECT c.oid, n.nspname, c.relname, c.relkind,
       greatest(c.reltuples, 0)::float8, pg_stat_get_live_tuples(c.oid),
       (SELECT h.inhparent FROM pg_inherits h WHERE h.inhrelid = c.oid
        ORDER BY h.inhseqno LIMIT 1),
       EXISTS (SELECT 1 FROM pg_partitioned_table t WHERE t.partdefid = c.oid),
       ({_NEW_IN_TRANSACTION}),
       (SELECT i.indrelid FROM pg_index i WHERE i.indexrelid = c.oid),
       (SELECT json_agg(json_build_array(a.attname, format_type(a.atttypid, a.atttypmod),
                                         a.attnotnull) ORDER BY a.attnum)
        FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
       (SELECT json_agg(json_build_array(k.conname, k.contype, k.convalidated,
                                         fn.nspname || '.' || fc.relname,
                                         pg_get_constraintdef(k.oid),
                                         CASE WHEN cardinality(k.conkey) = 1 THEN
                                             (SELECT a.attname FROM pg_attribute a
                                              WHERE a.attrelid = k.conrelid
                                                AND a.attnum = k.conkey[1]) END))
        FROM pg_constraint k
        LEFT JOIN pg_class fc ON fc.oid = k.confrelid
        LEFT JOIN pg_namespace fn ON fn.oid = fc.relnamespace
        WHERE k.conrelid = c.oid AND k.contype IN ('c', 'f', 'u', 'p', 'x', 'n')),
       (SELECT array_agg(DISTINCT d.refobjid) FROM pg_rewrite w
        JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = w.oid
                        AND d.refclassid = 'pg_class'::regclass AND d.refobjid <> c.oid
        WHERE w.ev_class = c.oid AND c.relkind = 'v'),
       (SELECT NOT i.indisvalid FROM pg_index i WHERE i.indexrelid = c.oid),
       (SELECT array_agg(t.tgname) FROM pg_trigger t
        WHERE t.tgrelid = c.oid AND NOT t.tgisinternal),
       c.relrowsecurity,
       -- (lock model) columns with a default, the functions of user triggers, the
       -- key columns of an index (NULL when one is an expression), pages * block size
       (SELECT array_agg(a.attname) FROM pg_attribute a
        WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
          AND (a.atthasdef OR a.attidentity <> '')),
       (SELECT json_agg(json_build_array(t.tgname, p.proname)) FROM pg_trigger t
        JOIN pg_proc p ON p.oid = t.tgfoid WHERE t.tgrelid = c.oid AND NOT t.tgisinternal),
       (SELECT CASE WHEN bool_and(a.attnum IS NOT NULL)
                    THEN array_agg(a.attname ORDER BY k.ord) END
        FROM pg_index i CROSS JOIN unnest(i.indkey[0:i.indnkeyatts - 1])
             WITH ORDINALITY AS k(attnum, ord)
        LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
        WHERE i.indexrelid = c.oid),
       c.relpages::bigint * current_setting('block_size')::bigint
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = ANY (%(oids)s::oid[])
"""

# Tables with a user trigger that executes a function of one of these names (what
# DROP FUNCTION ... CASCADE reaches).
_TRIGGER_TABLES_SQL = """
SELECT DISTINCT t.tgrelid FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
WHERE NOT t.tgisinternal AND p.proname = ANY (%(names)s::text[])
"""


_PROCEDURES_SQL = """
SELECT pg_get_functiondef(p.oid) FROM pg_proc p
WHERE p.prokind = 'p' AND p.proname = ANY (%(names)s::text[])
"""


def read_catalog(run: Run, names: Iterable[str], procedures: Iterable[str] = ()) -> LiveCatalog:
    """The live facts about ``names`` (as written) and the relations related to them;
    and the procedures ``procedures`` (as written in ``CALL``), with the relations
    their bodies touch."""
    wanted = sorted(set(names))
    schemas = run("SELECT current_schemas(false)", None)
    catalog = Catalog()
    path = tuple(schemas[0][0]) if schemas and schemas[0][0] else ()
    catalog.search_path = path or ("public",)
    live = LiveCatalog(catalog, names=frozenset(wanted))
    if procedures:
        wanted = sorted(set(wanted) | _read_procedures(run, catalog, procedures))
    resolved = _resolve(run, wanted)
    timezone = run("SELECT current_setting('TimeZone')", None)
    catalog.timezone = str(timezone[0][0]) if timezone else None
    functions = sorted({parts[1] for parts in map(_folded_parts, wanted) if parts})
    triggered = [row[0] for row in run(_TRIGGER_TABLES_SQL, {"names": functions})]
    if not resolved and not triggered:
        return live
    base = set(resolved.values()) | set(triggered)
    related = [row[0] for row in run(_RELATED_SQL, {"oids": sorted(base)})]
    oids = sorted(set(related) | set(resolved.values()))
    _fill(live, run(_FACTS_SQL, {"oids": oids}))
    _alias_written_names(live, resolved)
    catalog.invalidate()  # relations were added directly: rebuild derived indexes
    _sum_partition_rows(catalog)
    return live


def _read_procedures(run: Run, catalog: Catalog, procedures: Iterable[str]) -> set[str]:
    """Learn the procedures of these names (every schema: the catalog keys them by
    schema, and a CALL resolves through the search path), as the statement that
    creates each; the relation names their bodies touch."""
    names = sorted({parts[1] for parts in map(_folded_parts, procedures) if parts})
    touched: set[str] = set()
    if not names:
        return touched
    for (definition,) in run(_PROCEDURES_SQL, {"names": names}):
        catalog.learn(read(str(definition)).steps)
    for bodies in catalog.procedures.values():
        for language, body in bodies.values():
            steps = call_steps(Step(Action.CALL), language, body) or []
            touched.update(name for step in steps for name in (
                step.table, step.references, step.parent, step.using_index) if name)
    return touched


def _resolve(run: Run, wanted: list[str]) -> dict[str, int]:
    written, schemas, names = [], [], []
    for name in wanted:
        parts = _folded_parts(name)
        if parts is None:
            continue
        written.append(name)
        schemas.append(parts[0])
        names.append(parts[1])
    if not written:
        return {}
    rows = run(_RESOLVE_SQL, {"written": written, "schemas": schemas, "names": names})
    return {row[0]: row[1] for row in rows}


def _folded_parts(written: str) -> tuple[str | None, str] | None:
    try:
        parts = [fold(part, quoted) for part, quoted in split_name(written)]
    except Exception:  # noqa: BLE001 - an unreadable name resolves to nothing
        return None
    if not parts or len(parts) > 3:
        return None
    return (parts[-2] if len(parts) >= 2 else None), parts[-1]


def _fill(live: LiveCatalog, rows: list[tuple[Any, ...]]) -> None:
    keys = {row[0]: f"{row[1]}.{row[2]}" for row in rows}
    for row in rows:
        (oid, _nsp, _name, kind, reltuples, live_tuples, parent, is_default, new,
         index_table, columns, constraints, reads, invalid, triggers, row_security,
         *lock_model) = row
        defaults, trigger_functions, index_columns, size_bytes = (
            [*lock_model, None, None, None, None][:4])
        key = keys[oid]
        live.oids[key] = oid
        if kind in _INDEX_KINDS:
            if index_table in keys:
                live.catalog.add_index(key, keys[index_table],
                                       tuple(index_columns) if index_columns else None)
            if invalid:
                live.catalog.invalid_indexes.add(key)
            continue
        if kind not in _KINDS:
            continue
        relation = Relation(key, kind=_KINDS[kind], new=bool(new),
                            rows=int(max(reltuples or 0, live_tuples or 0)),
                            parent=keys.get(parent), default_partition=bool(is_default))
        _add_columns(relation, columns or [])
        _add_constraints(relation, constraints or [])
        relation.reads = {keys[r] for r in (reads or []) if r in keys}
        relation.triggers = set(triggers or [])
        relation.row_security = bool(row_security)
        relation.defaults = set(defaults or [])
        relation.trigger_functions = {name: function for name, function
                                      in (trigger_functions or [])}
        relation.size_bytes = int(size_bytes) if size_bytes is not None else None
        live.catalog.relations[key] = relation


def _add_columns(relation: Relation, columns: list[list[Any]]) -> None:
    for name, type_sql, not_null in columns:
        relation.columns[name] = type_sql
        if not_null:
            relation.not_null.add(name)


def _add_constraints(relation: Relation, constraints: list[list[Any]]) -> None:
    for name, contype, valid, references, definition, column in constraints:
        kind = _CONSTRAINT_TYPES.get(contype)
        if kind is None:
            continue
        relation.constraints[name] = Constraint(name, kind, valid=bool(valid),
                                                references=references,
                                                definition=definition or "", column=column)


def _alias_written_names(live: LiveCatalog, resolved: dict[str, int]) -> None:
    """A name found through a later search_path schema is also reachable under the key
    the analysis computes for it (first schema of the path)."""
    by_oid = {oid: key for key, oid in live.oids.items()}
    for written, oid in resolved.items():
        actual = by_oid.get(oid)
        alias = live.catalog.key(written)
        if actual is None or alias == actual:
            continue
        if actual in live.catalog.relations:
            live.catalog.relations.setdefault(alias, live.catalog.relations[actual])
        elif actual in live.catalog.indexes and alias not in live.catalog.indexes:
            live.catalog.add_index(alias, live.catalog.indexes[actual])
        live.oids.setdefault(alias, oid)


def _sum_partition_rows(catalog: Catalog) -> None:
    """A partitioned table has no rows of its own: count those of its partitions."""
    for relation in list(catalog.relations.values()):
        if relation.kind == "partitioned":
            relation.rows = sum(catalog.relations[child].rows or 0
                                for child in catalog.children(relation.key)
                                if catalog.relations[child].has_storage)


# --------------------------------------------------------------------------- caching


class CatalogCache:
    """Per connection: live catalogs by the set of names they were read for, kept for a
    short time, dropped after DDL on the connection. A catalog that says a relation
    is new (created in the current transaction) is never kept: it stops being true at
    COMMIT, which the guard does not see."""

    def __init__(self, ttl_s: float = DEFAULT_TTL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: dict[tuple[frozenset[str], frozenset[str]], tuple[float, LiveCatalog]] = {}

    def get(self, names: frozenset[str], run: Run,
            enrich: Callable[[LiveCatalog], None] | None = None,
            procedures: frozenset[str] = frozenset()) -> LiveCatalog:
        """The catalog for ``names`` (and the procedures a CALL names); ``enrich`` adds
        what a topology knows more (Citus: sizes from the shards) to a freshly read one."""
        now = self._clock()
        key = (names, procedures)
        entry = self._entries.get(key)
        if entry is not None and now - entry[0] < self.ttl_s:
            return entry[1]
        live = read_catalog(run, names, procedures)
        if enrich is not None:
            enrich(live)
        if live.has_new:
            self._entries.pop(key, None)
        else:
            if len(self._entries) > 64:
                self._entries.clear()
            self._entries[key] = (now, live)
        return live

    def invalidate(self) -> None:
        self._entries.clear()


__all__ = ["CatalogCache", "LiveCatalog", "names_in", "procedures_in", "read_catalog"]
