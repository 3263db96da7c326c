"""What the analysis may know about the schema: from the script itself (tables it
creates, their columns, constraints, indexes, partitions) or from a live
connection (the runtime fills the same structure from ``pg_catalog``).

Relations are keyed by :func:`safeddl.sql.qualified_name` (``public.orders``).
"""

from __future__ import annotations

import bisect
import copy
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from safeddl.model import Action, ConstraintType, Step, Volatility
from safeddl.sql import local_name, qualified_name
from safeddl.sql.names import pg_object_name, schema_in_key


@dataclass
class Constraint:
    name: str
    type: ConstraintType
    valid: bool = True
    references: str | None = None  # qualified referenced table of a foreign key
    definition: str = ""
    column: str | None = None
    ref_columns: tuple[str, ...] = ()  # referenced columns of a foreign key (folded)

    @property
    def on_delete_writes(self) -> bool:
        """ON DELETE CASCADE / SET NULL / SET DEFAULT: deleting a referenced row
        writes the referencing table."""
        return bool(re.search(r"(?i)ON\s+DELETE\s+(CASCADE|SET\s+NULL|SET\s+DEFAULT)",
                              self.definition))

    @property
    def on_delete_cascades(self) -> bool:
        """ON DELETE CASCADE: deleting a referenced row deletes the referencing rows."""
        return bool(re.search(r"(?i)ON\s+DELETE\s+CASCADE", self.definition))


@dataclass
class _Derived:
    children: dict[str, list[str]] = field(default_factory=dict)
    referencing: dict[str, list[tuple[str, Constraint]]] = field(default_factory=dict)


@dataclass
class Relation:
    key: str  # qualified name
    kind: str = "table"  # table | partitioned | view | materialized view | foreign table
    columns: dict[str, str] = field(default_factory=dict)  # folded name -> type as written
    not_null: set[str] = field(default_factory=set)
    constraints: dict[str, Constraint] = field(default_factory=dict)
    parent: str | None = None  # partition or inheritance parent
    default_partition: bool = False
    reads: set[str] = field(default_factory=set)  # relations a view reads
    new: bool = False  # created by the script / transaction being analysed
    rows: int | None = None  # estimated, from a live connection
    triggers: set[str] = field(default_factory=set)
    row_security: bool = False  # ENABLE ROW LEVEL SECURITY (from a live connection)
    tablespace: str = "pg_default"
    access_method: str = "heap"
    # A Citus distributed or reference table (from a live connection): its rows live in
    # shards on the workers, and some statements lock the coordinator's table harder.
    distributed: bool = False
    trigger_functions: dict[str, str] = field(default_factory=dict)  # trigger -> function
    defaults: set[str] = field(default_factory=set)  # columns with a DEFAULT (or generated)
    size_bytes: int | None = None  # on disk, from a live connection

    @property
    def has_storage(self) -> bool:
        return self.kind in ("table", "materialized view")


class Catalog:
    """Mutable knowledge of the schema; the analysis of a script updates a copy."""

    def __init__(self) -> None:
        self.relations: dict[str, Relation] = {}
        # qualified index -> qualified table; change it through add_index / drop_index,
        # which keep ``_indexes_of`` (qualified table -> its indexes) in step
        self.indexes: dict[str, str] = {}
        self._indexes_of: dict[str, set[str]] = {}
        self.invalid_indexes: set[str] = set()  # qualified indexes marked INVALID (live)
        self.functions: dict[str, Volatility] = {}
        # qualified index -> its key columns (folded), when they are plain columns
        self.index_columns: dict[str, tuple[str, ...]] = {}
        # qualified extended statistics -> the qualified table they are on
        self.statistics: dict[str, str] = {}
        # prepared statement name (folded) -> its statement's text (PREPARE q AS ...)
        self.prepared: dict[str, str] = {}
        # procedure (qualified) -> its argument list as written (folded) -> its LANGUAGE
        # and body, as CREATE PROCEDURE in the text gave them (what a CALL runs)
        self.procedures: dict[str, dict[str, tuple[str, str]]] = {}
        # subscriptions (folded) the text created or altered with slot_name = NONE
        self.slotless_subscriptions: set[str] = set()
        # the session's TimeZone when known (SET TimeZone, a live connection)
        self.timezone: str | None = None
        self.search_path: tuple[str, ...] = ("public",)
        # True when every relation of the database is known (a live connection, or a
        # script that built the whole schema): what is not here does not exist.
        self.complete = False
        # Bumped whenever parents or foreign keys change (learn() does it; code that
        # edits relations directly calls invalidate()): derived indexes are rebuilt.
        self._generation = 0
        self._derived: tuple[int, _Derived] | None = None

    # -- building -------------------------------------------------------------
    def knows_absent(self, written: str, index: bool = False) -> bool:
        """The catalog is complete and has no such relation (or index)."""
        if not self.complete:
            return False
        return (self.index_table(written) is None) if index else (self.get(written) is None)

    def dependent_views(self, written: str) -> list[str]:
        """Views and materialized views that read this relation, recursively."""
        out: list[str] = []
        todo = [self.key(written)]
        while todo:
            key = todo.pop(0)
            for other, relation in sorted(self.relations.items()):
                if key in relation.reads and other not in out:
                    out.append(other)
                    todo.append(other)
        return out

    def is_partitioned(self, written: str) -> bool:
        relation = self.get(written)
        return relation is not None and relation.kind == "partitioned"

    def inheritance_children(self, written: str) -> list[str]:
        """Children by INHERITS (not partitions)."""
        if self.is_partitioned(written):
            return []
        return self.children(written)

    def copy(self) -> Catalog:
        return copy.deepcopy(self)

    def add_index(self, index: str, table: str, columns: tuple[str, ...] | None = None) -> None:
        """An index (qualified) on a table (qualified), with its key columns when they
        are plain columns."""
        self.drop_index(index)
        self.indexes[index] = table
        self._indexes_of.setdefault(table, set()).add(index)
        if columns:
            self.index_columns[index] = columns

    def drop_index(self, index: str) -> None:
        table = self.indexes.pop(index, None)
        self.index_columns.pop(index, None)
        if table is not None:
            self._indexes_of.get(table, set()).discard(index)

    # -- looking up -----------------------------------------------------------
    def key(self, written: str) -> str:
        return qualified_name(written, self.search_path[0] if self.search_path else "public")

    def get(self, written: str | None) -> Relation | None:
        if written is None:
            return None
        return self.relations.get(self.key(written))

    def is_new(self, written: str) -> bool:
        relation = self.get(written)
        return relation is not None and relation.new

    def invalidate(self) -> None:
        """Call after changing ``relations`` directly (not through learn())."""
        self._generation += 1

    def _index(self) -> _Derived:
        """Children and incoming foreign keys by table, rebuilt after a change."""
        stamp = self._generation
        if self._derived is None or self._derived[0] != stamp:
            derived = _Derived()
            for key, relation in sorted(self.relations.items()):
                if relation.parent:
                    derived.children.setdefault(relation.parent, []).append(key)
                for con in relation.constraints.values():
                    if con.type is ConstraintType.FOREIGN_KEY and con.references:
                        derived.referencing.setdefault(con.references, []).append((key, con))
            self._derived = (stamp, derived)
        return self._derived[1]

    def children(self, written: str) -> list[str]:
        """Partitions / inheritance children, recursively, as qualified names."""
        index = self._index().children
        out: list[str] = []
        seen = {self.key(written)}
        todo = [self.key(written)]
        while todo:
            kids = [kid for kid in index.get(todo.pop(0), []) if kid not in seen]
            seen.update(kids)  # a script can make a cycle (attach, rename, inherit)
            out.extend(kids)
            todo.extend(kids)
        return out

    def default_partition(self, written: str) -> str | None:
        parent = self.key(written)
        for key, relation in self.relations.items():
            if relation.parent == parent and relation.default_partition:
                return key
        return None

    def index_table(self, written_index: str) -> str | None:
        return self.indexes.get(self.key(written_index))

    def procedure_bodies(self, written: str | None) -> list[tuple[str, str]]:
        """The (LANGUAGE, body) of each procedure of that name known here (one per
        argument list: several are overloads)."""
        known = self.procedures.get(self.key(written)) if written else None
        return list(known.values()) if known else []

    def constraint(self, table: str, name: str | None) -> Constraint | None:
        relation = self.get(table)
        if relation is None or name is None:
            return None
        return relation.constraints.get(local_name(name))

    def referencing(self, written: str) -> list[tuple[str, Constraint]]:
        """(table, foreign key) of every foreign key that points at this table."""
        return list(self._index().referencing.get(self.key(written), []))

    def foreign_keys(self, written: str) -> list[Constraint]:
        relation = self.get(written)
        if relation is None:
            return []
        return [c for c in relation.constraints.values() if c.type is ConstraintType.FOREIGN_KEY]

    def view_reads(self, written: str) -> list[str]:
        """Relations a view reads, expanded through views, as qualified names."""
        out: list[str] = []
        seen: set[str] = set()
        todo = [self.key(written)]
        while todo:
            key = todo.pop(0)
            relation = self.relations.get(key)
            if relation is None or relation.kind != "view":
                continue
            for read in sorted(relation.reads):
                if read not in seen:
                    seen.add(read)
                    out.append(read)
                    todo.append(read)
        return out

    def query_reads(self, written: str) -> list[str]:
        """Relations the query of a view or materialized view reads (one level)."""
        relation = self.get(written)
        return sorted(relation.reads) if relation is not None else []

    def proves_not_null(self, table: str, column: str | None) -> bool:
        """A valid ``CHECK (col IS NOT NULL)`` or an existing NOT NULL."""
        relation = self.get(table)
        if relation is None or column is None:
            return False
        col = local_name(column)
        if col in relation.not_null:
            return True
        checks = [c for c in relation.constraints.values()
                  if c.type is ConstraintType.CHECK and c.valid]
        if not checks:  # (compiling the column's pattern costs more than the rest)
            return False
        pattern = re.compile(
            r"^\(*\s*\"?" + re.escape(col) + r"\"?\s+IS\s+NOT\s+NULL\s*\)*$", re.IGNORECASE
        )
        return any(pattern.match(_strip_check(c.definition)) for c in checks)

    def has_default(self, table: str, column: str) -> bool | None:
        """Whether the column has a DEFAULT; None when the column is not known."""
        relation = self.get(table)
        if relation is None or column not in relation.columns:
            return None
        return column in relation.defaults

    def trigger_tables(self, function: str) -> list[str]:
        """Tables with a trigger that executes this function."""
        name = local_name(function)
        return [key for key, relation in sorted(self.relations.items())
                if name in relation.trigger_functions.values()]

    def column_type(self, table: str, column: str | None) -> str | None:
        relation = self.get(table)
        if relation is None or column is None:
            return None
        return relation.columns.get(local_name(column))

    # -- learning from statements --------------------------------------------
    def learn(self, steps: Iterable[Step]) -> None:
        """Apply what a statement does to the schema."""
        steps = list(steps)
        if not steps:
            return
        head = steps[0]
        if head.action is Action.PREPARE:
            if head.name and head.definition_sql:
                self.prepared[local_name(head.name)] = head.definition_sql
            return
        kind = head.target_kind or ""
        if kind.startswith("subscription") and head.name:
            subscription = local_name(head.name)
            if head.options == ("NONE",):
                self.slotless_subscriptions.add(subscription)
            elif head.options or head.text in ("CREATE SUBSCRIPTION", "DROP SUBSCRIPTION"):
                self.slotless_subscriptions.discard(subscription)
            return
        if (head.action is Action.CREATE_FUNCTION and kind.startswith("procedure:")
                and head.function and head.definition_sql is not None):
            self.procedures.setdefault(self.key(head.function), {})[head.type_sql or ""] = (
                kind.partition(":")[2], head.definition_sql)
        if head.action in (Action.CREATE_TABLE, Action.CREATE_VIEW,
                           Action.CREATE_MATERIALIZED_VIEW):
            self._create(head, steps[1:])
            return
        for step in steps:
            reshapes = step.action in _RESHAPES or (bool(step.references) and step.action not in (
                Action.ADD_CONSTRAINT, Action.ADD_COLUMN))
            if reshapes:
                self._generation += 1  # parents or foreign keys change
            # (a new foreign key is added to the derived indexes in place: a long
            # history stays linear)
            self._learn_step(step)
            if reshapes:
                # again: the step itself may have rebuilt the derived indexes (children
                # of a table it drops) before it changed the relations
                self._generation += 1

    def _create(self, head: Step, rest: list[Step]) -> None:
        assert head.table is not None
        key = self.key(head.table)
        if head.if_not_exists and key in self.relations:
            return
        kind = {
            Action.CREATE_TABLE: {"partitioned": "partitioned", "foreign-table": "foreign table"}.get(
                head.target_kind or "", "table"),
            Action.CREATE_VIEW: "view",
            Action.CREATE_MATERIALIZED_VIEW: "materialized view",
        }[head.action]
        previous = self.relations.get(key)  # CREATE OR REPLACE VIEW of a known view
        # OR REPLACE of a view the catalog does not know may replace an existing one
        new = previous.new if previous is not None else not (head.cascade and not self.complete)
        relation = Relation(key, kind=kind, new=new)
        if head.parent:
            relation.parent = self.key(head.parent)
            relation.default_partition = head.target_kind == "default-partition"
            parent = self.relations.get(relation.parent)
            if parent is not None:
                relation.columns.update(parent.columns)
                relation.not_null |= parent.not_null
                relation.defaults |= parent.defaults
        self.relations[key] = relation
        for step in rest:
            if step.action is Action.SELECT and step.table and kind != "table":
                relation.reads.add(self.key(step.table))
            elif step.action is Action.SELECT and step.table and step.text == "LIKE":
                like = self.get(step.table)
                if like is not None:
                    relation.columns.update(like.columns)
            elif step.action in (Action.ADD_COLUMN, Action.ADD_CONSTRAINT):
                self._learn_step(step)
        if relation.parent:
            current = self._current_derived()
            if current is None or previous is not None:
                self._generation += 1
            else:
                bisect.insort(current.children.setdefault(relation.parent, []), key)

    def _learn_step(self, step: Step) -> None:
        action = step.action
        table = self.get(step.table) if step.table else None
        if table is None and step.table and not self.complete and action in _ALTERS:
            # A table the script alters but did not create exists already: learn
            # what the script does to it (a CHECK that proves NOT NULL, ...).
            table = self.relations[self.key(step.table)] = Relation(self.key(step.table))
        if action is Action.ADD_COLUMN and table is not None and step.column:
            col = local_name(step.column)
            table.columns[col] = step.type_sql or ""
            if step.not_null:
                table.not_null.add(col)
            if _has_default(step):
                table.defaults.add(col)
            for child in self.children(table.key):
                kid = self.relations.get(child)
                if kid is not None:
                    kid.columns[col] = step.type_sql or ""
            if step.constraint_type is not None:
                self._add_constraint(table, step, inline=True)
        elif action is Action.ADD_CONSTRAINT and table is not None:
            self._add_constraint(table, step, inline=False)
        elif action is Action.ALTER_COLUMN_TYPE and table is not None and step.column:
            table.columns[local_name(step.column)] = step.type_sql or ""
        elif action is Action.SET_NOT_NULL and table is not None and step.column:
            table.not_null.add(local_name(step.column))
        elif action is Action.DROP_NOT_NULL and table is not None and step.column:
            table.not_null.discard(local_name(step.column))
        elif action is Action.DROP_COLUMN and table is not None and step.column:
            self._drop_column(table, local_name(step.column))
        elif action is Action.SET_DEFAULT and table is not None and step.column:
            table.defaults.add(local_name(step.column))
        elif action is Action.DROP_DEFAULT and table is not None and step.column:
            table.defaults.discard(local_name(step.column))
        elif action is Action.VALIDATE_CONSTRAINT and table is not None and step.name:
            con = table.constraints.get(local_name(step.name))
            if con is not None:
                con.valid = True
        elif action is Action.DROP_CONSTRAINT and table is not None and step.name:
            table.constraints.pop(local_name(step.name), None)
        elif action is Action.CREATE_INDEX and step.table:
            if step.name:
                schema = schema_in_key(self.key(step.table), step.table)
                self.add_index(f"{schema}.{local_name(step.name)}", self.key(step.table),
                               step.columns or None)
        elif action is Action.DROP_INDEX and step.name:
            self.drop_index(self.key(step.name))
        elif action is Action.CREATE_STATISTICS and step.table and step.name:
            schema = schema_in_key(self.key(step.table), step.table)
            self.statistics[f"{schema}.{local_name(step.name)}"] = self.key(step.table)
        elif action is Action.DROP_STATISTICS and step.name:
            self.statistics.pop(self.key(step.name), None)
        elif action is Action.ALTER_INDEX and step.name:
            self._rename_index(step)
        elif action in (Action.DROP_TABLE, Action.DROP_VIEW, Action.DROP_MATERIALIZED_VIEW):
            if table is not None:
                for child in self.children(table.key):
                    self._forget(child)
                self._forget(table.key)
        elif action is Action.DROP_FUNCTION and step.function and step.cascade:
            name = local_name(step.function)
            for relation in self.relations.values():
                for trigger, function in list(relation.trigger_functions.items()):
                    if function == name:
                        relation.triggers.discard(trigger)
                        del relation.trigger_functions[trigger]
        elif action is Action.ATTACH_PARTITION and table is not None and step.name:
            part = self.get(step.name)
            if part is not None:
                part.parent = table.key
                part.default_partition = step.target_kind == "default"
        elif action is Action.DETACH_PARTITION and step.name and step.target_kind != "pending":
            part = self.get(step.name)
            if part is not None and not step.concurrently:
                part.parent = None
                part.default_partition = False
        elif action is Action.RENAME_TABLE and table is not None and step.name:
            schema = schema_in_key(table.key, step.table or table.key)
            self._rename(table, f"{schema}.{local_name(step.name)}")
        elif action is Action.RENAME_COLUMN and table is not None and step.column and step.name:
            old, new = local_name(step.column), local_name(step.name)
            if old in table.columns:
                table.columns[new] = table.columns.pop(old)
        elif action is Action.SET and step.text:
            self._learn_set(step.text)
        elif action is Action.CREATE_TRIGGER and table is not None and step.name:
            table.triggers.add(local_name(step.name))
            if step.function:
                table.trigger_functions[local_name(step.name)] = local_name(step.function)
        elif action is Action.DROP_TRIGGER and table is not None and step.name:
            table.triggers.discard(local_name(step.name))
            table.trigger_functions.pop(local_name(step.name), None)
        elif action is Action.SET_TABLESPACE and table is not None and step.name:
            table.tablespace = local_name(step.name)
        elif action is Action.SET_ACCESS_METHOD and table is not None and step.name:
            table.access_method = local_name(step.name)

    def _rename(self, table: Relation, new_key: str) -> None:
        """A table renamed: what points at it (foreign keys, partitions, views, indexes)
        follows it."""
        old_key = table.key
        self.relations.pop(old_key, None)
        table.key = new_key
        self.relations[new_key] = table
        for relation in self.relations.values():
            if relation.parent == old_key:
                relation.parent = new_key
            if old_key in relation.reads:
                relation.reads = (relation.reads - {old_key}) | {new_key}
            for con in relation.constraints.values():
                if con.references == old_key:
                    con.references = new_key
        moved = self._indexes_of.pop(old_key, set())
        for index in moved:
            self.indexes[index] = new_key
        if moved:
            self._indexes_of.setdefault(new_key, set()).update(moved)
        self._generation += 1

    def _rename_index(self, step: Step) -> None:
        assert step.name is not None
        match = re.match(r"(?is)^\s*RENAME\s+TO\s+(\S+)\s*$", step.text)
        old = self.key(step.name)
        if match is None or old not in self.indexes:
            return
        new = f"{schema_in_key(old, step.name)}.{local_name(match.group(1))}"
        table = self.indexes[old]
        columns = self.index_columns.get(old)
        self.drop_index(old)
        self.add_index(new, table, columns)
        owner = self.relations.get(table)
        old_name, new_name = local_name(step.name), local_name(match.group(1))
        if owner is not None and old_name in owner.constraints:  # the index of a key
            con = owner.constraints.pop(old_name)
            con.name = new_name
            owner.constraints[new_name] = con

    def _drop_column(self, table: Relation, column: str) -> None:
        """The column goes, and with it its constraints and the indexes on it."""
        table.columns.pop(column, None)
        table.not_null.discard(column)
        table.defaults.discard(column)
        for name, con in list(table.constraints.items()):
            if con.column == column:
                del table.constraints[name]
                if con.references:
                    self._generation += 1  # a foreign key went
        for index in list(self._indexes_of.get(table.key, ())):
            if column in self.index_columns.get(index, ()):
                self.drop_index(index)

    def _forget(self, key: str) -> None:
        """A relation dropped: the foreign keys that pointed at it are gone too (they
        had to be dropped with CASCADE), and so are its indexes."""
        self.relations.pop(key, None)
        for relation in self.relations.values():
            for name, con in list(relation.constraints.items()):
                if con.references == key:
                    del relation.constraints[name]
            relation.reads.discard(key)
        for index in list(self._indexes_of.get(key, ())):
            self.drop_index(index)
        self._generation += 1

    def _current_derived(self) -> _Derived | None:
        """The derived indexes when they are up to date (to be updated in place)."""
        if self._derived is not None and self._derived[0] == self._generation:
            return self._derived[1]
        return None

    def _add_constraint(self, table: Relation, step: Step, inline: bool) -> None:
        kind = step.constraint_type
        if kind is None:
            return
        column = local_name(step.column) if step.column else None
        own = local_name(step.table) if step.table else table.key.rpartition(".")[2]
        name = local_name(step.name) if step.name else _default_name(own, column, kind)
        definition = _strip_prefix(step.definition_sql or "")
        references = self.key(step.references) if step.references else None
        replaced = table.constraints.get(name)
        con = table.constraints[name] = Constraint(
            name, kind, valid=not step.not_valid, references=references,
            definition=definition, column=column,
            ref_columns=self._referenced_columns(definition, references),
        )
        if kind is ConstraintType.FOREIGN_KEY and references:
            current = self._current_derived()
            if current is None or (replaced is not None and replaced.references):
                self._generation += 1
            else:
                bisect.insort(current.referencing.setdefault(references, []),
                              (table.key, con), key=lambda item: item[0])
        elif replaced is not None and replaced.references:
            self._generation += 1
        if kind is ConstraintType.PRIMARY_KEY and column:
            table.not_null.add(column)

    def _referenced_columns(self, definition: str, references: str | None) -> tuple[str, ...]:
        """``REFERENCES t (a, b)`` -> (a, b); ``REFERENCES t`` -> t's primary key."""
        if references is None:
            return ()
        match = re.search(r"(?is)REFERENCES\s+[^(\s]+\s*\(([^)]*)\)", definition)
        if match:
            return tuple(local_name(c.strip()) for c in match.group(1).split(",") if c.strip())
        target = self.relations.get(references)
        if target is None:
            return ()
        return tuple(c.column for c in target.constraints.values()
                     if c.type is ConstraintType.PRIMARY_KEY and c.column)

    def _learn_set(self, text: str) -> None:
        zone = re.match(r"(?is)^\s*SET\s+(?:SESSION\s+|LOCAL\s+)?(?:TIME\s+ZONE\s+|"
                        r"TimeZone\s*(?:=|TO)\s*)(.+?)\s*$", text)
        if zone:
            value = zone.group(1).strip().strip("'\"")
            self.timezone = None if value.upper() in ("DEFAULT", "LOCAL") else value
            return
        match = re.match(r"(?is)^\s*SET\s+(?:SESSION\s+|LOCAL\s+)?search_path\s*(?:=|TO)\s*(.+)$", text)
        if match:
            parts = [p.strip().strip("'\"") for p in match.group(1).split(",")]
            self.search_path = tuple(p for p in parts if p and p != "$user") or ("public",)

    def __iter__(self) -> Iterator[Relation]:
        return iter(self.relations.values())


# Steps that change partitions, inheritance or foreign keys (derived indexes).
_RESHAPES = frozenset({
    Action.DROP_CONSTRAINT, Action.DROP_TABLE,
    Action.DROP_VIEW, Action.DROP_MATERIALIZED_VIEW, Action.ATTACH_PARTITION,
    Action.DETACH_PARTITION, Action.RENAME_TABLE, Action.INHERIT,
})

_ALTERS = frozenset({
    Action.ADD_COLUMN, Action.ADD_CONSTRAINT, Action.VALIDATE_CONSTRAINT,
    Action.ALTER_COLUMN_TYPE, Action.SET_NOT_NULL, Action.DROP_NOT_NULL,
    Action.CREATE_TRIGGER,
})


def _has_default(step: Step) -> bool:
    """ADD COLUMN with a non-NULL DEFAULT, identity, serial or a generated value."""
    if step.generated is not None:
        return True
    return step.default_sql is not None and step.volatility is not Volatility.NONE


def _default_name(table: str, column: str | None, kind: ConstraintType) -> str:
    """The name PostgreSQL gives an unnamed constraint of ``table`` (its own name)."""
    suffix = {
        ConstraintType.CHECK: "check", ConstraintType.FOREIGN_KEY: "fkey",
        ConstraintType.UNIQUE: "key", ConstraintType.PRIMARY_KEY: "pkey",
        ConstraintType.EXCLUDE: "excl", ConstraintType.NOT_NULL: "not_null",
    }[kind]
    if kind is ConstraintType.PRIMARY_KEY or column is None:
        return pg_object_name(table, None, suffix)
    return pg_object_name(table, column, suffix)


def _strip_prefix(definition: str) -> str:
    return re.sub(r"(?is)^\s*CONSTRAINT\s+\S+\s+", "", definition).strip()


def _strip_check(definition: str) -> str:
    text = re.sub(r"(?is)^\s*CHECK\s*", "", definition).strip()
    text = re.sub(r"(?is)\s+NOT\s+VALID\s*$", "", text)
    return text
