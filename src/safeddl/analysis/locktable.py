"""Which lock each step takes on which relations, and for how long: version-aware.

Every entry here is checked against a real server by the project's lock corpus
(``tests/integration/test_lock_corpus.py``): a disagreement is a bug in this file.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from safeddl.analysis.catalog import Catalog, Constraint
from safeddl.locks import Holds, LockMode
from safeddl.model import Action, ConstraintType, Step, Volatility
from safeddl.sql import local_name, procedure_statements, read
from safeddl.sql.clauses import NotUnderstood

AS = LockMode.ACCESS_SHARE
RS = LockMode.ROW_SHARE
RE = LockMode.ROW_EXCLUSIVE
SUE = LockMode.SHARE_UPDATE_EXCLUSIVE
S = LockMode.SHARE
SRE = LockMode.SHARE_ROW_EXCLUSIVE
E = LockMode.EXCLUSIVE
AE = LockMode.ACCESS_EXCLUSIVE

OLDEST, NEWEST = 11, 18


@dataclass(frozen=True)
class Take:
    """One lock a step takes. ``relation`` is as written, or a qualified catalog key."""

    relation: str
    mode: LockMode
    holds: Holds = Holds.BRIEF
    object: str = "table"


@dataclass(frozen=True)
class Effect:
    takes: tuple[Take, ...]
    holds: Holds  # what the step does to its own table's data
    transactional: bool = True
    notes: tuple[str, ...] = ()
    # the step also locks relations the text does not show: why (the takes are the
    # known part)
    unknown: str | None = None


# Storage parameters PostgreSQL changes under SHARE UPDATE EXCLUSIVE (reloptions.c);
# every other one takes ACCESS EXCLUSIVE.
_SUE_OPTIONS = re.compile(
    r"^(fillfactor|autovacuum_.*|toast\.autovacuum_.*|toast_tuple_target|parallel_workers"
    r"|log_autovacuum_min_duration|toast\.log_autovacuum_min_duration|vacuum_index_cleanup"
    r"|toast\.vacuum_index_cleanup|vacuum_truncate|toast\.vacuum_truncate"
    r"|vacuum_max_eager_freeze_failure_rate|toast\.vacuum_max_eager_freeze_failure_rate"
    r"|autovacuum_vacuum_max_threshold)$"
)

# ALTER TABLE sub-commands that do not recurse to partitions / inheritance children.
_NO_RECURSION = frozenset({
    Action.RENAME_TABLE, Action.SET_SCHEMA, Action.OWNER_TO, Action.REPLICA_IDENTITY,
    Action.ROW_LEVEL_SECURITY, Action.CLUSTER_ON, Action.SET_STORAGE_PARAMETERS,
    Action.ATTACH_PARTITION, Action.DETACH_PARTITION, Action.INHERIT, Action.SET_TABLESPACE,
    Action.SET_LOGGED, Action.SET_ACCESS_METHOD, Action.ALTER_TABLE_OTHER,
})


def effect(step: Step, version: int, catalog: Catalog) -> Effect:
    """The locks one step takes, on a server of this major version."""
    rule = _RULES.get(step.action)
    if rule is None:
        return Effect((), Holds.BRIEF)
    return rule(step, version, catalog)


# -- helpers ----------------------------------------------------------------------------

def _on(step: Step, mode: LockMode, holds: Holds, catalog: Catalog, *,
        recurse: bool = True, transactional: bool = True,
        notes: tuple[str, ...] = (), extra: tuple[Take, ...] = ()) -> Effect:
    """``mode`` on the step's table (and its children unless ONLY), holding ``holds``."""
    assert step.table is not None
    takes = [Take(step.table, mode, _own_holds(step.table, holds, catalog))]
    if recurse and not step.only:
        takes.extend(Take(child, mode, _own_holds(child, holds, catalog))
                     for child in catalog.children(step.table))
    return Effect(tuple(takes) + extra, holds, transactional, notes)


def _own_holds(relation: str, holds: Holds, catalog: Catalog) -> Holds:
    """A view is never scanned or rewritten itself. A partitioned table has no
    storage either, but its lock is held while its partitions are scanned or
    rewritten, so it keeps the statement's hold."""
    info = catalog.get(relation)
    if info is not None and info.kind == "view" and holds is not Holds.BRIEF:
        return Holds.BRIEF
    return holds


def _max_holds(*holds: Holds) -> Holds:
    order = [Holds.BRIEF, Holds.SCAN, Holds.REWRITE]
    return max(holds, key=order.index)


# -- DML --------------------------------------------------------------------------------

def _read(step: Step, version: int, catalog: Catalog) -> Effect:
    if step.table is None:
        return Effect((), Holds.BRIEF)
    if step.target_kind == "function-body":
        return _function_body(step, catalog)
    mode = RS if step.action is Action.SELECT_FOR_UPDATE else AS
    takes = [Take(step.table, mode)]
    takes.extend(Take(rel, mode) for rel in catalog.view_reads(step.table))
    if not step.only:
        takes.extend(Take(child, mode) for child in catalog.children(step.table))
    return Effect(tuple(takes), Holds.BRIEF)


def _write(step: Step, version: int, catalog: Catalog) -> Effect:
    if step.table is None:
        return Effect((), Holds.BRIEF)
    if step.target_kind == "function-body":
        return _function_body(step, catalog)
    takes = [Take(step.table, RE)]
    takes.extend(Take(rel, RE) for rel in catalog.view_reads(step.table))
    if step.action not in (Action.INSERT, Action.COPY_FROM) and not step.only:
        takes.extend(Take(child, RE) for child in catalog.children(step.table))
    takes.extend(_foreign_key_checks(step, catalog))
    return Effect(tuple(takes), Holds.BRIEF)


def _foreign_key_checks(step: Step, catalog: Catalog) -> list[Take]:
    """The RI triggers' locks, for rows the statement actually changes.

    A new or re-keyed referencing row locks its referenced row FOR KEY SHARE (ROW
    SHARE on the referenced table); deleting or re-keying a referenced row checks the
    referencing table the same way, or writes it for ON DELETE CASCADE / SET NULL.
    """
    assert step.table is not None
    action, merge = step.action, set(step.merge_actions)
    sets = set(step.columns)
    inserts = action in (Action.INSERT, Action.COPY_FROM) or "insert" in merge
    deletes = action is Action.DELETE or "delete" in merge
    takes = []
    checked: set[str] = set()  # a table several foreign keys point at: one lock
    for fk in catalog.foreign_keys(step.table):
        if fk.references and fk.references not in checked and (
                (inserts and _inserts_key(step, fk, catalog))
                or (fk.column is not None and fk.column in sets)
                or (fk.column is None and bool(sets))):
            checked.add(fk.references)
            takes.append(Take(fk.references, RS))
    referencing: set[tuple[str, LockMode]] = set()
    for table, fk in catalog.referencing(step.table):
        rekeys = bool(sets & set(fk.ref_columns)) if fk.ref_columns else bool(sets)
        if deletes or rekeys:
            take = (table, RE if deletes and fk.on_delete_writes else RS)
            if take not in referencing:
                referencing.add(take)
                takes.append(Take(*take))
    if deletes:
        takes.extend(_cascaded_deletes(step.table, catalog))
    return takes


def _inserts_key(step: Step, fk: Constraint, catalog: Catalog) -> bool:
    """Whether an INSERT gives the foreign key's column a value: an INSERT that lists
    its columns and leaves out a column without a default leaves it NULL, and a NULL
    key is not checked."""
    if step.insert_columns is None or fk.column is None or fk.column in step.insert_columns:
        return True
    assert step.table is not None
    return catalog.has_default(step.table, fk.column) is not False


def _cascaded_deletes(table: str, catalog: Catalog) -> list[Take]:
    """ON DELETE CASCADE deletes rows of the referencing table, which fires that
    table's own foreign keys in turn, level after level: each level is written."""
    takes: list[Take] = []
    seen = {catalog.key(table)}
    todo = [child for child, fk in catalog.referencing(table)
            if fk.on_delete_cascades and child not in seen]
    while todo:
        child = todo.pop(0)
        if child in seen:
            continue
        seen.add(child)
        for grandchild, fk in catalog.referencing(child):
            takes.append(Take(grandchild, RE if fk.on_delete_writes else RS))
            if fk.on_delete_cascades and grandchild not in seen:
                todo.append(grandchild)
    return takes


def _copy_to(step: Step, version: int, catalog: Catalog) -> Effect:
    if step.table is None:
        return Effect((), Holds.BRIEF)
    return Effect((Take(step.table, AS, Holds.SCAN),), Holds.BRIEF)


def _truncate(step: Step, version: int, catalog: Catalog) -> Effect:
    assert step.table is not None
    extra: list[Take] = []
    if step.cascade:
        seen = {catalog.key(step.table)}
        todo = [step.table]
        while todo:
            for table, _fk in catalog.referencing(todo.pop()):
                if table not in seen:
                    seen.add(table)
                    extra.append(Take(table, AE))
                    todo.append(table)
    return _on(step, AE, Holds.BRIEF, catalog, extra=tuple(extra))


def _lock_table(step: Step, version: int, catalog: Catalog) -> Effect:
    assert step.table is not None and step.mode is not None
    views = tuple(Take(rel, step.mode) for rel in catalog.view_reads(step.table))
    return _on(step, step.mode, Holds.BRIEF, catalog, extra=views)


# -- indexes ----------------------------------------------------------------------------

def _create_index(step: Step, version: int, catalog: Catalog) -> Effect:
    if step.concurrently:
        return _on(step, SUE, Holds.SCAN, catalog, transactional=False)
    if step.only and step.table and catalog.is_partitioned(step.table):
        # ON ONLY a partitioned table: an invalid index on the parent, no partition
        # is built (the first step of indexing a partitioned table safely)
        return _on(step, S, Holds.BRIEF, catalog, recurse=False)
    return _on(step, S, Holds.SCAN, catalog)


def _index_owner(step: Step, catalog: Catalog) -> tuple[str, str]:
    """(relation, object): the index's table when known, else the index itself."""
    assert step.name is not None
    table = catalog.index_table(step.name)
    return (table, "table") if table else (step.name, "index")


def _drop_index(step: Step, version: int, catalog: Catalog) -> Effect:
    assert step.name is not None
    if step.if_not_exists and catalog.knows_absent(step.name, index=True):
        return Effect((), Holds.BRIEF, not step.concurrently)
    relation, obj = _index_owner(step, catalog)
    # Dropping a partitioned index drops its partitions' indexes too.
    children = tuple(Take(c, SUE if step.concurrently else AE)
                     for c in (catalog.children(relation) if obj == "table" else []))
    notes = () if obj == "table" else (
        f"the table of index {step.name} is not known from the text alone; "
        "its lock is reported against the index",)
    if step.concurrently:
        return Effect((Take(relation, SUE, Holds.BRIEF, obj), *children), Holds.BRIEF, False,
                      notes)
    return Effect((Take(relation, AE, Holds.BRIEF, obj), *children), Holds.BRIEF, True, notes)


def _reindex(step: Step, version: int, catalog: Catalog) -> Effect:
    notes: tuple[str, ...] = ()
    if step.concurrently and version < 12:
        notes = ("REINDEX CONCURRENTLY needs PostgreSQL 12 or later",)
    mode = SUE if step.concurrently else S
    if step.target_kind == "index" and step.name:
        relation, obj = _index_owner(step, catalog)
        takes = [Take(relation, mode, Holds.SCAN, obj)]
        partitioned = obj == "table" and catalog.is_partitioned(relation)
        takes.extend(Take(c, mode, Holds.SCAN) for c in catalog.children(relation)
                     if obj == "table")
        if obj == "table" and not step.concurrently and not partitioned:
            # The index itself is locked ACCESS EXCLUSIVE: queries that would plan
            # with it wait too.
            takes.append(Take(step.name, AE, Holds.SCAN, "index"))
        return Effect(tuple(takes), Holds.SCAN,
                      not step.concurrently and not (partitioned and version >= 14), notes)
    if step.target_kind == "table" and step.table:
        info = catalog.get(step.table)
        partitioned = info is not None and info.kind == "partitioned"
        takes = [Take(step.table, mode, _own_holds(step.table, Holds.SCAN, catalog))]
        takes.extend(Take(c, mode, Holds.SCAN) for c in catalog.children(step.table))
        return Effect(tuple(takes), Holds.SCAN,
                      not step.concurrently and not (partitioned and version >= 14), notes)
    # SCHEMA / DATABASE / SYSTEM: one transaction per table, never in a block.
    schema = step.name.lower() if step.target_kind == "schema" and step.name else None
    every = tuple(
        Take(key, mode, Holds.SCAN) for key, rel in sorted(catalog.relations.items())
        if rel.has_storage and (schema is None or key.split(".")[0] == schema)
    ) if step.target_kind in ("schema", "database") else ()
    return Effect(every, Holds.SCAN, False, notes)


def _alter_index(step: Step, version: int, catalog: Catalog) -> Effect:
    if step.name is None:
        return Effect((), Holds.BRIEF)
    text = step.text.upper()
    if text.startswith("RENAME"):
        mode = SUE if version >= 12 else AE
    elif text.startswith("SET TABLESPACE"):
        return Effect((Take(step.name, AE, Holds.REWRITE, "index"),), Holds.REWRITE)
    elif text.startswith(("SET (", "SET(", "RESET")):
        mode = SUE if step.options and all(_SUE_OPTIONS.match(o) for o in step.options) else AE
    elif text.startswith("ALTER") and "STATISTICS" in text:  # ALTER [COLUMN] n SET STATISTICS
        mode = SUE
    elif text.startswith("ATTACH"):
        # SHARE UPDATE EXCLUSIVE on the partitioned index, ACCESS SHARE on both tables
        takes = [Take(step.name, SUE, Holds.BRIEF, "index")]
        for index in (step.name, step.using_index):
            table = catalog.index_table(index) if index else None
            if table is not None:
                takes.append(Take(table, AS))
        return Effect(tuple(takes), Holds.BRIEF)
    else:
        mode = AE
    return Effect((Take(step.name, mode, Holds.BRIEF, "index"),), Holds.BRIEF)


# -- creating and dropping relations ---------------------------------------------------

def _create_table(step: Step, version: int, catalog: Catalog) -> Effect:
    takes: list[Take] = []
    if step.parent:
        parent = catalog.get(step.parent)
        is_partition = parent is None or parent.kind == "partitioned"
        if is_partition:
            takes.append(Take(step.parent, AE))
            default = catalog.default_partition(step.parent)
            if default and step.target_kind != "default-partition":
                takes.append(Take(default, AE, Holds.SCAN))
        else:
            takes.append(Take(step.parent, SUE))
    return Effect(tuple(takes), Holds.BRIEF)


def _create_view(step: Step, version: int, catalog: Catalog) -> Effect:
    assert step.table is not None
    # OR REPLACE of an existing view (or of one the catalog cannot rule out)
    if step.cascade and step.action is Action.CREATE_VIEW and (
            catalog.get(step.table) is not None or not catalog.complete):
        return Effect((Take(step.table, AE),), Holds.BRIEF)
    return Effect((), Holds.BRIEF)


def effect_in_view_query(step: Step) -> Effect:
    """A relation named in the query of CREATE VIEW: parse analysis opens it with
    ACCESS SHARE; the query is not planned, so a view's own tables and a table's
    partitions are not locked."""
    if step.table is None:
        return Effect((), Holds.BRIEF)
    return Effect((Take(step.table, AS),), Holds.BRIEF)


def _create_function(step: Step, version: int, catalog: Catalog) -> Effect:
    notes = ("the body of this LANGUAGE sql function cannot be read: the tables it names "
             "(locked ACCESS SHARE while the body is checked) are not known",
             ) if step.target_kind == "body-unread" else ()
    return Effect((), Holds.BRIEF, True, notes)


def _function_body(step: Step, catalog: Catalog) -> Effect:
    """A statement of a SQL function body, analysed (and rewritten) when the function
    is created: reads take ACCESS SHARE, targets ROW EXCLUSIVE (FOR UPDATE: ROW SHARE),
    views are expanded; nothing is planned or run (no partitions, no foreign keys)."""
    assert step.table is not None
    if step.action is Action.SELECT:
        mode = AS
    elif step.action is Action.SELECT_FOR_UPDATE:
        mode = RS
    else:
        mode = RE
    views = tuple(Take(rel, AS) for rel in catalog.view_reads(step.table))
    return Effect((Take(step.table, mode), *views), Holds.BRIEF)


def _drop_statistics(step: Step, version: int, catalog: Catalog) -> Effect:
    """SHARE UPDATE EXCLUSIVE on the table of the statistics object; when the catalog
    does not know it, the lock is reported against the statistics object itself."""
    assert step.name is not None
    table = catalog.statistics.get(catalog.key(step.name))
    if table is not None:
        return Effect((Take(table, SUE),), Holds.BRIEF)
    if step.if_not_exists and catalog.complete:
        return Effect((), Holds.BRIEF)
    return Effect((Take(step.name, SUE, Holds.BRIEF, "statistics"),), Holds.BRIEF, True,
                  (f"the table of statistics {step.name} is not known from the text alone; "
                   "its lock is reported against the statistics object",))


def _publish_table(step: Step, version: int, catalog: Catalog) -> Effect:
    """A table added to a publication: SHARE UPDATE EXCLUSIVE on it, and on its
    inheritance children unless ONLY; a partitioned table is published as itself."""
    assert step.table is not None
    return _on(step, SUE, Holds.BRIEF, catalog,
               recurse=not catalog.is_partitioned(step.table))


def _drop_function(step: Step, version: int, catalog: Catalog) -> Effect:
    """DROP FUNCTION ... CASCADE drops the triggers that execute it: ACCESS EXCLUSIVE
    on each of their tables (without CASCADE the drop fails if there are any)."""
    if not step.cascade or step.function is None:
        return Effect((), Holds.BRIEF)
    return Effect(tuple(Take(table, AE) for table in catalog.trigger_tables(step.function)),
                  Holds.BRIEF, unknown=(
                      f"DROP FUNCTION {step.function} ... CASCADE also drops the defaults, "
                      "indexes, constraints and views that use it, under ACCESS EXCLUSIVE "
                      "on their tables; which tables those are is not known from the text "
                      "(its triggers' tables are)"))


def effect_in_new_table(step: Step) -> Effect:
    """A column or constraint inside CREATE TABLE: the new table itself is not
    reported; a foreign key locks the table it references."""
    if step.references:
        return Effect((Take(step.references, SRE),), Holds.BRIEF)
    return Effect((), Holds.BRIEF)


def _drop(step: Step, version: int, catalog: Catalog) -> Effect:
    assert step.table is not None
    if step.if_not_exists and catalog.knows_absent(step.table):
        return Effect((), Holds.BRIEF)
    takes = [Take(step.table, AE)]
    if step.cascade:
        takes.extend(Take(view, AE) for view in catalog.dependent_views(step.table))
    takes.extend(Take(child, AE) for child in catalog.children(step.table))
    for fk in catalog.foreign_keys(step.table):
        if fk.references and catalog.key(fk.references) != catalog.key(step.table):
            takes.append(Take(fk.references, AE))
    for table, _fk in catalog.referencing(step.table):
        if table != catalog.key(step.table):
            takes.append(Take(table, AE))
    return Effect(tuple(takes), Holds.BRIEF)


# -- ALTER TABLE ------------------------------------------------------------------------

def _add_column(step: Step, version: int, catalog: Catalog) -> Effect:
    holds = Holds.BRIEF
    generated = step.generated
    if generated == "default-kind":
        generated = "virtual" if version >= 18 else "stored"
    if generated in ("identity", "serial", "stored"):
        holds = Holds.REWRITE
    elif step.volatility in (Volatility.VOLATILE, Volatility.UNKNOWN):
        holds = Holds.REWRITE
    extra: tuple[Take, ...] = ()
    if step.constraint_type in (ConstraintType.UNIQUE, ConstraintType.PRIMARY_KEY):
        holds = _max_holds(holds, Holds.SCAN)
    elif step.constraint_type is ConstraintType.CHECK:
        holds = _max_holds(holds, Holds.SCAN)
    if step.references:
        # A new column is all NULL unless it gets a default: nothing to validate then
        empty = step.default_sql is None and step.generated is None
        fk_holds = Holds.BRIEF if empty or step.not_valid else Holds.SCAN
        holds = _max_holds(holds, fk_holds)
        extra = (Take(step.references, SRE, fk_holds),)
    notes: tuple[str, ...] = ()
    if step.volatility is Volatility.UNKNOWN:
        notes = (f"the volatility of DEFAULT {step.default_sql} is not known; "
                 "assumed volatile (a rewrite)",)
    return _on(step, AE, holds, catalog, extra=extra, notes=notes)


_BINARY_COERCIBLE = {("varchar", "text"), ("text", "varchar"), ("cidr", "inet"),
                     ("varbit", "varbit"), ("xml", "text")}
_TYPE_ALIASES = {
    "character varying": "varchar", "character": "char", "int4": "integer", "int": "integer",
    "int8": "bigint", "int2": "smallint", "decimal": "numeric", "bool": "boolean",
    "float8": "double precision", "float4": "real", "timestamp without time zone": "timestamp",
    "timestamp with time zone": "timestamptz", "bit varying": "varbit",
}


def _parse_type(type_sql: str) -> tuple[str, tuple[int, ...], bool]:
    """``VARCHAR(20)`` -> ("varchar", (20,), False); the bool says "an array"."""
    text = " ".join(type_sql.lower().replace('"', "").split())
    array = text.endswith("[]")
    text = text.removesuffix("[]").strip()
    match = re.match(r"^([a-z_ ][a-z0-9_ .]*?)\s*(?:\(([\d\s,]+)\))?$", text)
    if not match:
        return text, (), array
    base = match.group(1).strip()
    base = _TYPE_ALIASES.get(base, base)
    mods = tuple(int(x) for x in match.group(2).split(",")) if match.group(2) else ()
    return base.split(".")[-1], mods, array


# Time zones at a fixed offset of zero: timestamp <-> timestamptz needs no rewrite in
# them (PostgreSQL 12+).
_UTC_ZONES = frozenset(z.lower() for z in (
    "UTC", "Etc/UTC", "UCT", "Etc/UCT", "GMT", "Etc/GMT", "GMT0", "Etc/GMT0", "GMT+0",
    "GMT-0", "Etc/GMT+0", "Etc/GMT-0", "Greenwich", "Etc/Greenwich", "Universal",
    "Etc/Universal", "Zulu", "Etc/Zulu"))


def _type_change_rewrites(old: str, new: str, version: int = NEWEST,
                          timezone: str | None = None) -> bool:
    """Would ``ALTER COLUMN TYPE`` from ``old`` to ``new`` rewrite the table? (With
    the session's TimeZone when known: None is taken as a zone other than UTC.)"""
    old_base, old_mods, old_array = _parse_type(old)
    new_base, new_mods, new_array = _parse_type(new)
    if old_array != new_array:
        return True
    if {old_base, new_base} == {"timestamp", "timestamptz"} and version >= 12 \
            and timezone is not None and timezone.lower() in _UTC_ZONES:
        return old_mods != new_mods and bool(new_mods) and (
            not old_mods or new_mods[0] < old_mods[0])
    if old_base == new_base:
        if not new_mods:
            return False  # dropping a length / precision limit
        if not old_mods:
            return True  # adding one: every value is checked and coerced
        if old_base in ("varchar", "varbit"):
            return new_mods[0] < old_mods[0]
        if old_base == "numeric":
            old_scale = old_mods[1] if len(old_mods) > 1 else 0
            new_scale = new_mods[1] if len(new_mods) > 1 else 0
            return not (new_scale == old_scale and new_mods[0] >= old_mods[0])
        return old_mods != new_mods
    if (old_base, new_base) in _BINARY_COERCIBLE:
        return new_base == "varchar" and bool(new_mods)
    return True


def _alter_column_type(step: Step, version: int, catalog: Catalog) -> Effect:
    assert step.table is not None
    old = catalog.column_type(step.table, step.column)
    notes: tuple[str, ...] = ()
    if step.cascade:  # USING <expression>
        holds = Holds.REWRITE
    elif old is None:
        holds = Holds.REWRITE
        notes = (f"the current type of {step.column} is not known; a rewrite is assumed",)
    else:
        rewrites = _type_change_rewrites(old, step.type_sql or "", version, catalog.timezone)
        holds = Holds.REWRITE if rewrites else Holds.BRIEF
        if {_parse_type(old)[0], _parse_type(step.type_sql or "")[0]} == {
                "timestamp", "timestamptz"} and version >= 12:
            zone = catalog.timezone or "not known"
            notes = (f"timestamp <-> timestamptz rewrites the table unless the session's "
                     f"TimeZone is UTC (here: {zone})",)
    # Foreign keys on the column are dropped and re-created with the new type.
    column = catalog.key(step.column).split(".")[1] if step.column else None
    extra = tuple(
        Take(fk.references, AE) for fk in catalog.foreign_keys(step.table)
        if fk.references and fk.column == column
    ) + tuple(
        Take(table, AE) for table, fk in catalog.referencing(step.table)
        if column in fk.ref_columns
    )
    return _on(step, AE, holds, catalog, notes=notes, extra=extra)


def _set_not_null(step: Step, version: int, catalog: Catalog) -> Effect:
    assert step.table is not None
    proven = catalog.proves_not_null(step.table, step.column) and version >= 12
    return _on(step, AE, Holds.BRIEF if proven else Holds.SCAN, catalog)


def _alter_column_other(step: Step, version: int, catalog: Catalog) -> Effect:
    kind = step.target_kind
    if kind in ("statistics", "options"):
        return _on(step, SUE, Holds.BRIEF, catalog)
    if kind == "set-expression":
        return _on(step, AE, Holds.REWRITE, catalog)
    return _on(step, AE, Holds.BRIEF, catalog)


def _add_constraint(step: Step, version: int, catalog: Catalog) -> Effect:
    assert step.table is not None
    kind = step.constraint_type
    scan = Holds.BRIEF if step.not_valid else Holds.SCAN
    if kind is ConstraintType.FOREIGN_KEY:
        extra = (Take(step.references, SRE, scan),) if step.references else ()
        # Citus takes EXCLUSIVE on a distributed table's coordinator relation (SHARE ROW
        # EXCLUSIVE on its shards), which also blocks SELECT ... FOR UPDATE there.
        info = catalog.get(step.table)
        mode = E if info is not None and info.distributed else SRE
        return _on(step, mode, scan, catalog, extra=extra)
    if kind in (ConstraintType.UNIQUE, ConstraintType.PRIMARY_KEY):
        if step.using_index:
            # A primary key makes its columns NOT NULL: a scan unless already proven.
            # (The index's columns are not in the catalog: only a one-column key
            # named in the statement can be proven.)
            index = catalog.key(step.using_index)
            columns = catalog.index_columns.get(index) if catalog.index_table(
                step.using_index) == catalog.key(step.table) else None
            needs_scan = kind is ConstraintType.PRIMARY_KEY and not (
                all(catalog.proves_not_null(step.table, col) for col in columns)
                if columns else catalog.proves_not_null(step.table, step.column))
            return _on(step, AE, Holds.SCAN if needs_scan else Holds.BRIEF, catalog)
        return _on(step, AE, Holds.SCAN, catalog)
    if kind is ConstraintType.NOT_NULL:
        notes = () if version >= 18 else (
            "named NOT NULL constraints (ADD CONSTRAINT ... NOT NULL col) need "
            "PostgreSQL 18 or later",)
        return _on(step, AE, scan, catalog, notes=notes)
    return _on(step, AE, scan, catalog)  # CHECK, EXCLUDE


def _validate(step: Step, version: int, catalog: Catalog) -> Effect:
    assert step.table is not None
    con = catalog.constraint(step.table, step.name)
    extra: tuple[Take, ...] = ()
    if con is not None and con.type is ConstraintType.FOREIGN_KEY and con.references:
        extra = (Take(con.references, RS, Holds.SCAN),)
    return _on(step, SUE, Holds.SCAN, catalog, extra=extra)


def _drop_constraint(step: Step, version: int, catalog: Catalog) -> Effect:
    assert step.table is not None
    con = catalog.constraint(step.table, step.name)
    extra: tuple[Take, ...] = ()
    if con is not None and con.type is ConstraintType.FOREIGN_KEY and con.references:
        extra = (Take(con.references, AE),)
    elif con is not None and step.cascade and con.type in (ConstraintType.PRIMARY_KEY,
                                                           ConstraintType.UNIQUE):
        # CASCADE drops the foreign keys that depend on the key.
        extra = tuple(Take(table, AE) for table, _fk in catalog.referencing(step.table))
    return _on(step, AE, Holds.BRIEF, catalog, extra=extra)


def _storage_parameters(step: Step, version: int, catalog: Catalog) -> Effect:
    info = catalog.get(step.table)
    is_view = info is not None and info.kind == "view"
    light = bool(step.options) and all(_SUE_OPTIONS.match(o) for o in step.options)
    return _on(step, SUE if light and not is_view else AE, Holds.BRIEF, catalog, recurse=False)


def _attach_partition(step: Step, version: int, catalog: Catalog) -> Effect:
    assert step.table is not None and step.name is not None
    parent_mode = SUE if version >= 12 else AE
    part = catalog.get(step.name)
    proven = part is not None and any(
        c.type is ConstraintType.CHECK and c.valid for c in part.constraints.values()
    )
    part_holds = Holds.BRIEF if proven else Holds.SCAN
    # Before 12 the parent's ACCESS EXCLUSIVE is held through the partition's scan.
    parent_holds = part_holds if version < 12 else Holds.BRIEF
    takes = [Take(step.table, parent_mode, parent_holds), Take(step.name, AE, part_holds)]
    default = catalog.default_partition(step.table)
    if default and step.target_kind != "default":
        takes.append(Take(default, AE, Holds.SCAN))
    notes = () if proven else (
        f"{step.name} is scanned to prove its rows fit the partition bound "
        "(a matching valid CHECK constraint avoids the scan)",)
    return Effect(tuple(takes), Holds.BRIEF if proven else Holds.SCAN, True, notes)


def _detach_partition(step: Step, version: int, catalog: Catalog) -> Effect:
    assert step.table is not None and step.name is not None
    if step.concurrently or step.target_kind == "finalize":
        notes = ("DETACH PARTITION CONCURRENTLY needs PostgreSQL 14 or later",) if version < 14 else ()
        # First transaction: SHARE UPDATE EXCLUSIVE on both; after waiting for every
        # transaction that uses the parent, a second one takes ACCESS EXCLUSIVE on
        # the partition (which nobody reaches through the parent any more).
        takes = [Take(step.table, SUE), Take(step.name, AE)]
        return Effect(tuple(takes), Holds.BRIEF, step.target_kind == "finalize", notes)
    takes = [Take(step.table, AE), Take(step.name, AE)]
    default = catalog.default_partition(step.table)
    if default and catalog.key(step.name) != default:
        takes.append(Take(default, AE))
    return Effect(tuple(takes), Holds.BRIEF)


def _inherit(step: Step, version: int, catalog: Catalog) -> Effect:
    assert step.table is not None
    parent_mode = AS if step.text.upper().lstrip().startswith("NO") else SUE
    extra = (Take(step.references, parent_mode),) if step.references else ()
    return _on(step, AE, Holds.BRIEF, catalog, recurse=False, extra=extra)


RuleFn = Callable[[Step, int, Catalog], Effect]


def _ae(holds: Holds, recurse: bool = True) -> RuleFn:
    def rule(step: Step, version: int, catalog: Catalog) -> Effect:
        if step.table is None:
            return Effect((), holds)
        return _on(step, AE, holds, catalog,
                   recurse=recurse and step.action not in _NO_RECURSION)
    return rule


def _mode(mode: LockMode, holds: Holds = Holds.BRIEF, recurse: bool = True,
          transactional: bool = True) -> RuleFn:
    def rule(step: Step, version: int, catalog: Catalog) -> Effect:
        if step.table is None:
            return Effect((), holds, transactional)
        return _on(step, mode, holds, catalog, recurse=recurse, transactional=transactional)
    return rule


# -- maintenance and the rest ------------------------------------------------------------

def _vacuum(step: Step, version: int, catalog: Catalog) -> Effect:
    full = step.action is Action.VACUUM_FULL
    mode, holds = (AE, Holds.REWRITE) if full else (SUE, Holds.SCAN)
    if step.table is None:
        return Effect((), holds, False)
    # Partitions are always processed; inheritance children from PostgreSQL 18 on.
    recurse = catalog.is_partitioned(step.table) or version >= 18
    return _on(step, mode, holds, catalog, recurse=recurse, transactional=False)


def _analyze(step: Step, version: int, catalog: Catalog) -> Effect:
    if step.table is None:
        return Effect((), Holds.SCAN)
    if catalog.is_partitioned(step.table):
        return _on(step, SUE, Holds.SCAN, catalog)
    # An inheritance parent is sampled together with its children, also with ONLY:
    # read (ACCESS SHARE) before 18; from 18 on the children are analysed as well
    # (SHARE UPDATE EXCLUSIVE) unless ONLY is given.
    mode = SUE if version >= 18 and not step.only else AS
    children = tuple(Take(c, mode, Holds.SCAN) for c in catalog.inheritance_children(step.table))
    return _on(step, SUE, Holds.SCAN, catalog, recurse=False, extra=children)


def _cluster(step: Step, version: int, catalog: Catalog) -> Effect:
    if step.table is None:
        return Effect((), Holds.REWRITE, False)
    partitioned = catalog.is_partitioned(step.table)
    return _on(step, AE, Holds.REWRITE, catalog, recurse=partitioned,
               transactional=not partitioned)


def _refresh(step: Step, version: int, catalog: Catalog) -> Effect:
    assert step.table is not None
    if step.target_kind == "no-data":  # empties it: the query does not run
        return _on(step, AE, Holds.BRIEF, catalog, recurse=False)
    reads = tuple(Take(rel, AS, Holds.SCAN) for rel in catalog.query_reads(step.table))
    if step.concurrently:
        return _on(step, E, Holds.SCAN, catalog, recurse=False, extra=reads)
    return _on(step, AE, Holds.REWRITE, catalog, recurse=False, extra=reads)


def _comment(step: Step, version: int, catalog: Catalog) -> Effect:
    if step.table is None:
        return Effect((), Holds.BRIEF)
    return _on(step, SUE if step.target_kind in ("table", "column") else AE,
               Holds.BRIEF, catalog, recurse=False)


def _grant(step: Step, version: int, catalog: Catalog) -> Effect:
    if step.table is None or version < 18:
        return Effect((), Holds.BRIEF)
    return _on(step, AS, Holds.BRIEF, catalog, recurse=False)


def _alter_type_add_value(step: Step, version: int, catalog: Catalog) -> Effect:
    return Effect((), Holds.BRIEF, version >= 12)


def _other(step: Step, version: int, catalog: Catalog) -> Effect:
    kind = step.target_kind or ""
    if kind.startswith("subscription-connects"):
        return Effect((), Holds.BRIEF, not kind.endswith("-outside"), unknown=(
            f"{step.text} {step.name} connects to the publisher and takes ACCESS SHARE on "
            "each local table the publication lists, which only the publisher knows"))
    if kind == "subscription-drop":
        # DROP SUBSCRIPTION drops the replication slot on the publisher, which cannot
        # be done inside a transaction block; without a slot (slot_name = NONE) it can
        slotless = step.name is not None and local_name(step.name) in catalog.slotless_subscriptions
        return Effect((), Holds.BRIEF, slotless, () if slotless else (
            "a subscription with a replication slot cannot be dropped inside a transaction "
            "block (ALTER SUBSCRIPTION ... SET (slot_name = NONE) first, if the publisher "
            "is gone)",))
    return Effect((), Holds.BRIEF, kind != "outside-transaction")


def _execute(step: Step, version: int, catalog: Catalog) -> Effect:
    """``EXECUTE q``: what the prepared statement takes when it runs (planned then:
    partitions and children, foreign key checks), when the catalog saw it prepared."""
    text = catalog.prepared.get(local_name(step.name)) if step.name else None
    if text is None:
        return Effect((), Holds.BRIEF, unknown=(
            f"EXECUTE {step.name} runs a statement prepared elsewhere (PREPARE {step.name} "
            "is not in the text): its locks are not known"))
    takes: list[Take] = []
    for inner in read(text).steps:
        if inner.action not in (Action.PREPARE, Action.EXECUTE):
            takes.extend(effect(inner, version, catalog).takes)
    return Effect(tuple(takes), Holds.BRIEF)


def _call(step: Step, version: int, catalog: Catalog) -> Effect:
    """``CALL p(...)``: when the analysis read p's body (``body-read``), its statements
    are steps of their own and the CALL takes nothing itself (a body that may COMMIT
    cannot run inside a transaction block); otherwise why its locks are not known."""
    if step.target_kind in ("body-read", "body-commits"):
        return Effect((), Holds.BRIEF, step.target_kind == "body-read")
    bodies = catalog.procedure_bodies(step.function)
    if not bodies:
        return _call_unknown(step, "its body is not known (not created earlier in the text, "
                             "nor read from a database)")
    if len(bodies) > 1:
        return _call_unknown(step, f"the text creates {len(bodies)} procedures of that name "
                             "and which one runs depends on the arguments' types")
    try:
        texts, commits = procedure_statements(*bodies[0])
    except NotUnderstood as exc:  # (a body that may COMMIT: outside a transaction)
        return _call_unknown(step, str(exc), not exc.outside_transaction)
    unread = next((syntax.error for syntax in map(read, texts) if not syntax.understood),
                  None)
    return _call_unknown(step, f"a statement of its body cannot be read: {unread}" if unread
                         else "its body runs several statements judged one at a time, or a "
                         "CALL or EXECUTE", not commits)


def _call_unknown(step: Step, why: str, transactional: bool = True) -> Effect:
    return Effect((), Holds.BRIEF, transactional, unknown=(
        f"CALL {step.function} runs the statements of the procedure's body: {why}, so its "
        "locks are not known"))


def _drop_cascade(step: Step, version: int, catalog: Catalog) -> Effect:
    """DROP <object> ... CASCADE drops what depends on the object: columns of its type,
    defaults, indexes, constraints, views, foreign tables, whole tables of a schema
    (and DROP / REASSIGN OWNED reach every table a role owns), under ACCESS EXCLUSIVE
    on each table. The catalog knows some (columns of a type or domain, relations of
    a schema, the tables their foreign keys connect); the rest cannot be known from
    the text, which the step says."""
    kind, name = step.target_kind or "", step.name
    takes: list[Take] = []
    if name and kind in ("TYPE", "DOMAIN"):
        wanted = local_name(name)
        for key, relation in sorted(catalog.relations.items()):
            if any(_type_name(t) == wanted for t in relation.columns.values()):
                takes.append(Take(key, AE))
    elif name and kind == "SCHEMA":
        schema = local_name(name)
        inside = [key for key in sorted(catalog.relations) if key.split(".")[0] == schema]
        takes.extend(Take(key, AE) for key in inside)
        for key in inside:
            takes.extend(Take(table, AE) for table, _fk in catalog.referencing(key)
                         if table.split(".")[0] != schema)
    what = f"{step.text} {name}" if name else step.text
    return Effect(tuple(takes), Holds.BRIEF, unknown=(
        f"{what} also drops or changes what depends on it (or what the role owns): "
        "columns, defaults, indexes, constraints, views, tables, under ACCESS EXCLUSIVE "
        "on each of their tables; which tables those are is not known from the text"))


def _type_name(type_sql: str) -> str:
    """``public.mood[]`` -> ``mood``; ``varchar(20)`` -> ``varchar``."""
    base = type_sql.strip().split("(")[0].strip().removesuffix("[]").strip()
    return local_name(base) if base else ""


def _set_default(step: Step, version: int, catalog: Catalog) -> Effect:
    return _on(step, AE, Holds.BRIEF, catalog)


def _drop_trigger(step: Step, version: int, catalog: Catalog) -> Effect:
    assert step.table is not None
    info = catalog.get(step.table)
    if step.if_not_exists and catalog.complete and step.name and (
        info is None or local_name(step.name) not in info.triggers
    ):
        return Effect((), Holds.BRIEF)
    return _on(step, AE, Holds.BRIEF, catalog, recurse=False)


def _drop_column(step: Step, version: int, catalog: Catalog) -> Effect:
    assert step.table is not None
    views = tuple(Take(v, AE) for v in catalog.dependent_views(step.table)) if step.cascade else ()
    # A foreign key on the column is dropped with it: its triggers on the referenced
    # table go, under ACCESS EXCLUSIVE there; with CASCADE so do the foreign keys
    # that reference the column.
    column = local_name(step.column) if step.column else None
    keys = tuple(Take(fk.references, AE) for fk in catalog.foreign_keys(step.table)
                 if fk.references and fk.column == column
                 and catalog.key(fk.references) != catalog.key(step.table))
    if step.cascade:
        keys += tuple(Take(table, AE) for table, fk in catalog.referencing(step.table)
                      if column in fk.ref_columns and table != catalog.key(step.table))
    return _on(step, AE, Holds.BRIEF, catalog, extra=views + keys)


def _move(step: Step, version: int, catalog: Catalog) -> Effect:
    """SET TABLESPACE / SET ACCESS METHOD: a rewrite unless it is already there."""
    assert step.table is not None
    info = catalog.get(step.table)
    current = None if info is None else (
        info.tablespace if step.action is Action.SET_TABLESPACE else info.access_method)
    target = local_name(step.name) if step.name else None
    holds = Holds.BRIEF if current is not None and current == target else Holds.REWRITE
    return _on(step, AE, holds, catalog, recurse=False)


def _alter_sequence(step: Step, version: int, catalog: Catalog) -> Effect:
    if step.table is None:
        return Effect((), Holds.BRIEF)
    return _on(step, AS, Holds.BRIEF, catalog, recurse=False)


_RULES: dict[Action, RuleFn] = {
    Action.SELECT: _read,
    Action.SELECT_FOR_UPDATE: _read,
    Action.INSERT: _write,
    Action.UPDATE: _write,
    Action.DELETE: _write,
    Action.MERGE: _write,
    Action.COPY_FROM: _write,
    Action.COPY_TO: _copy_to,
    Action.TRUNCATE: _truncate,
    Action.LOCK_TABLE: _lock_table,
    Action.CREATE_TABLE: _create_table,
    Action.CREATE_VIEW: _create_view,
    Action.CREATE_MATERIALIZED_VIEW: _create_view,
    Action.CREATE_INDEX: _create_index,
    Action.DROP_INDEX: _drop_index,
    Action.REINDEX: _reindex,
    Action.ALTER_INDEX: _alter_index,
    Action.DROP_TABLE: _drop,
    Action.DROP_VIEW: _drop,
    Action.DROP_MATERIALIZED_VIEW: _drop,
    Action.CREATE_TRIGGER: _mode(SRE),
    Action.DROP_TRIGGER: _drop_trigger,
    Action.CREATE_POLICY: _ae(Holds.BRIEF, recurse=False),
    Action.CREATE_STATISTICS: _mode(SUE, recurse=False),
    Action.ADD_COLUMN: _add_column,
    Action.DROP_COLUMN: _drop_column,
    Action.ALTER_COLUMN_TYPE: _alter_column_type,
    Action.SET_DEFAULT: _set_default,
    Action.DROP_DEFAULT: _set_default,
    Action.SET_NOT_NULL: _set_not_null,
    Action.DROP_NOT_NULL: _ae(Holds.BRIEF),
    Action.ADD_IDENTITY: _ae(Holds.BRIEF),
    Action.ALTER_COLUMN_OTHER: _alter_column_other,
    Action.ADD_CONSTRAINT: _add_constraint,
    Action.VALIDATE_CONSTRAINT: _validate,
    Action.DROP_CONSTRAINT: _drop_constraint,
    Action.RENAME_CONSTRAINT: _ae(Holds.BRIEF, recurse=False),
    Action.RENAME_TABLE: _ae(Holds.BRIEF),
    Action.RENAME_COLUMN: _ae(Holds.BRIEF),
    Action.SET_SCHEMA: _ae(Holds.BRIEF),
    Action.OWNER_TO: _ae(Holds.BRIEF),
    Action.TRIGGER_ENABLE: _mode(SRE),
    Action.CLUSTER_ON: _mode(SUE, recurse=False),
    Action.SET_STORAGE_PARAMETERS: _storage_parameters,
    Action.SET_LOGGED: _ae(Holds.REWRITE),
    Action.SET_TABLESPACE: _move,
    Action.SET_ACCESS_METHOD: _move,
    Action.REPLICA_IDENTITY: _ae(Holds.BRIEF),
    Action.ROW_LEVEL_SECURITY: _ae(Holds.BRIEF),
    Action.ATTACH_PARTITION: _attach_partition,
    Action.DETACH_PARTITION: _detach_partition,
    Action.INHERIT: _inherit,
    Action.ALTER_TABLE_OTHER: _ae(Holds.BRIEF),
    Action.VACUUM: _vacuum,
    Action.VACUUM_FULL: _vacuum,
    Action.ANALYZE: _analyze,
    Action.ALTER_SEQUENCE: _alter_sequence,
    Action.CLUSTER: _cluster,
    Action.REFRESH_MATERIALIZED_VIEW: _refresh,
    Action.COMMENT: _comment,
    Action.GRANT: _grant,
    Action.ALTER_TYPE_ADD_VALUE: _alter_type_add_value,
    Action.OTHER: _other,
    Action.CREATE_FUNCTION: _create_function,
    Action.DROP_FUNCTION: _drop_function,
    Action.PUBLISH_TABLE: _publish_table,
    Action.DROP_STATISTICS: _drop_statistics,
    Action.DROP_CASCADE: _drop_cascade,
    Action.PREPARE: lambda step, version, catalog: Effect((), Holds.BRIEF),
    Action.EXECUTE: _execute,
    Action.CALL: _call,
}
