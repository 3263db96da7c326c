"""What the analysis may know about the schema: from the script itself (tables it
creates, their columns, constraints, indexes, partitions) or from a live
connection (the runtime fills the same structure from ``pg_catalog``).

Relations are keyed by :func:`safeddl.sql.qualified_name` (``public.orders``).
"""

from __future__ import annotations

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

    @property
    def has_storage(self) -> bool:
        return self.kind in ("table", "materialized view")


class Catalog:
    """Mutable knowledge of the schema; the analysis of a script updates a copy."""

    def __init__(self) -> None:
        self.relations: dict[str, Relation] = {}
        self.indexes: dict[str, str] = {}  # qualified index -> qualified table
        self.invalid_indexes: set[str] = set()  # qualified indexes marked INVALID (live)
        self.functions: dict[str, Volatility] = {}
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
        pattern = re.compile(
            r"^\(*\s*\"?" + re.escape(col) + r"\"?\s+IS\s+NOT\s+NULL\s*\)*$", re.IGNORECASE
        )
        return any(
            c.type is ConstraintType.CHECK and c.valid and pattern.match(_strip_check(c.definition))
            for c in relation.constraints.values()
        )

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
        if head.action in (Action.CREATE_TABLE, Action.CREATE_VIEW,
                           Action.CREATE_MATERIALIZED_VIEW):
            self._create(head, steps[1:])
            return
        for step in steps:
            reshapes = step.action in _RESHAPES or bool(step.references)
            if reshapes:
                self._generation += 1  # parents or foreign keys change
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
            Action.CREATE_TABLE: "partitioned" if head.target_kind == "partitioned" else "table",
            Action.CREATE_VIEW: "view",
            Action.CREATE_MATERIALIZED_VIEW: "materialized view",
        }[head.action]
        relation = Relation(key, kind=kind, new=True)
        if head.parent:
            relation.parent = self.key(head.parent)
            relation.default_partition = head.target_kind == "default-partition"
            parent = self.relations.get(relation.parent)
            if parent is not None:
                relation.columns.update(parent.columns)
                relation.not_null |= parent.not_null
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
        if relation.parent or any(step.references for step in rest):
            self._generation += 1  # parents or foreign keys changed (after the steps,
            # which may have rebuilt the derived indexes before the constraints were in)

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
            table.columns.pop(local_name(step.column), None)
        elif action is Action.VALIDATE_CONSTRAINT and table is not None and step.name:
            con = table.constraints.get(local_name(step.name))
            if con is not None:
                con.valid = True
        elif action is Action.DROP_CONSTRAINT and table is not None and step.name:
            table.constraints.pop(local_name(step.name), None)
        elif action is Action.CREATE_INDEX and step.table:
            if step.name:
                schema = schema_in_key(self.key(step.table), step.table)
                self.indexes[f"{schema}.{local_name(step.name)}"] = self.key(step.table)
        elif action is Action.DROP_INDEX and step.name:
            self.indexes.pop(self.key(step.name), None)
        elif action in (Action.DROP_TABLE, Action.DROP_VIEW, Action.DROP_MATERIALIZED_VIEW):
            if table is not None:
                for child in self.children(table.key):
                    self.relations.pop(child, None)
                self.relations.pop(table.key, None)
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
            new_key = f"{schema}.{local_name(step.name)}"
            old_key = table.key
            self.relations.pop(old_key, None)
            table.key = new_key
            self.relations[new_key] = table
            for other in self.relations.values():  # partitions and children follow
                if other.parent == old_key:
                    other.parent = new_key
            for index, owner in list(self.indexes.items()):
                if owner == old_key:
                    self.indexes[index] = new_key
        elif action is Action.RENAME_COLUMN and table is not None and step.column and step.name:
            old, new = local_name(step.column), local_name(step.name)
            if old in table.columns:
                table.columns[new] = table.columns.pop(old)
        elif action is Action.SET and step.text:
            self._learn_set(step.text)
        elif action is Action.CREATE_TRIGGER and table is not None and step.name:
            table.triggers.add(local_name(step.name))
        elif action is Action.DROP_TRIGGER and table is not None and step.name:
            table.triggers.discard(local_name(step.name))
        elif action is Action.SET_TABLESPACE and table is not None and step.name:
            table.tablespace = local_name(step.name)
        elif action is Action.SET_ACCESS_METHOD and table is not None and step.name:
            table.access_method = local_name(step.name)

    def _add_constraint(self, table: Relation, step: Step, inline: bool) -> None:
        kind = step.constraint_type
        if kind is None:
            return
        column = local_name(step.column) if step.column else None
        own = local_name(step.table) if step.table else table.key.rpartition(".")[2]
        name = local_name(step.name) if step.name else _default_name(own, column, kind)
        definition = _strip_prefix(step.definition_sql or "")
        references = self.key(step.references) if step.references else None
        table.constraints[name] = Constraint(
            name, kind, valid=not step.not_valid, references=references,
            definition=definition, column=column,
            ref_columns=self._referenced_columns(definition, references),
        )
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
