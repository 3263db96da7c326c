"""The facts the analysis gives about one statement (pure values, no I/O)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TypeVar

from safeddl.locks import Holds, LockMode


class Volatility(str, enum.Enum):
    """Of a DEFAULT expression: what PostgreSQL's ``pg_proc.provolatile`` would say."""

    NONE = "none"  # no default at all
    IMMUTABLE = "immutable"  # constants, casts of constants
    STABLE = "stable"  # now(), CURRENT_TIMESTAMP: evaluated once per statement
    VOLATILE = "volatile"  # random(), clock_timestamp(), nextval(): per row
    UNKNOWN = "unknown"  # a function safeddl does not know (treated as volatile)


class Action(str, enum.Enum):
    """One thing a statement does; an ALTER TABLE has one per sub-command."""

    # DML and reads
    SELECT = "select"
    SELECT_FOR_UPDATE = "select-for-update"
    INSERT = "insert"
    UPDATE = "update"
    DELETE = "delete"
    MERGE = "merge"
    COPY_FROM = "copy-from"
    COPY_TO = "copy-to"
    TRUNCATE = "truncate"
    LOCK_TABLE = "lock-table"
    # creating and dropping
    CREATE_TABLE = "create-table"
    CREATE_VIEW = "create-view"
    CREATE_MATERIALIZED_VIEW = "create-materialized-view"
    CREATE_INDEX = "create-index"
    DROP_INDEX = "drop-index"
    DROP_TABLE = "drop-table"
    DROP_VIEW = "drop-view"
    DROP_MATERIALIZED_VIEW = "drop-materialized-view"
    REINDEX = "reindex"
    CREATE_TRIGGER = "create-trigger"
    DROP_TRIGGER = "drop-trigger"
    CREATE_POLICY = "create-policy"
    CREATE_STATISTICS = "create-statistics"
    # ALTER TABLE sub-commands
    ADD_COLUMN = "add-column"
    DROP_COLUMN = "drop-column"
    ALTER_COLUMN_TYPE = "alter-column-type"
    SET_DEFAULT = "set-default"
    DROP_DEFAULT = "drop-default"
    SET_NOT_NULL = "set-not-null"
    DROP_NOT_NULL = "drop-not-null"
    ADD_IDENTITY = "add-identity"
    ALTER_COLUMN_OTHER = "alter-column"  # SET STATISTICS / STORAGE / COMPRESSION / (options)
    ADD_CONSTRAINT = "add-constraint"
    VALIDATE_CONSTRAINT = "validate-constraint"
    DROP_CONSTRAINT = "drop-constraint"
    RENAME_CONSTRAINT = "rename-constraint"
    RENAME_TABLE = "rename-table"
    RENAME_COLUMN = "rename-column"
    SET_SCHEMA = "set-schema"
    OWNER_TO = "owner-to"
    TRIGGER_ENABLE = "trigger-enable"
    CLUSTER_ON = "cluster-on"
    SET_STORAGE_PARAMETERS = "set-storage-parameters"
    SET_LOGGED = "set-logged"
    SET_TABLESPACE = "set-tablespace"
    SET_ACCESS_METHOD = "set-access-method"
    REPLICA_IDENTITY = "replica-identity"
    ROW_LEVEL_SECURITY = "row-level-security"
    ATTACH_PARTITION = "attach-partition"
    DETACH_PARTITION = "detach-partition"
    INHERIT = "inherit"
    ALTER_TABLE_OTHER = "alter-table"
    ALTER_INDEX = "alter-index"
    # maintenance and the rest
    VACUUM = "vacuum"
    VACUUM_FULL = "vacuum-full"
    ANALYZE = "analyze"
    CLUSTER = "cluster"
    REFRESH_MATERIALIZED_VIEW = "refresh-materialized-view"
    COMMENT = "comment"
    GRANT = "grant"
    ALTER_SEQUENCE = "alter-sequence"
    ALTER_TYPE_ADD_VALUE = "alter-type-add-value"
    CREATE_FUNCTION = "create-function"  # its SQL body is parsed: the tables it names
    DROP_FUNCTION = "drop-function"  # with CASCADE: the triggers that execute it
    PUBLISH_TABLE = "publish-table"  # CREATE / ALTER PUBLICATION ... TABLE t
    DROP_STATISTICS = "drop-statistics"  # SHARE UPDATE EXCLUSIVE on the statistics' table
    # DROP <object> ... CASCADE of a catalog object (type, schema, extension...), DROP
    # OWNED, REASSIGN OWNED: ACCESS EXCLUSIVE on tables the text does not name
    DROP_CASCADE = "drop-cascade"
    PREPARE = "prepare"  # PREPARE q AS <statement>: parse analysis locks what it names
    EXECUTE = "execute"  # EXECUTE q: the prepared statement's locks, when it is known
    CALL = "call"  # CALL p(): what the procedure's body does (not in the text)
    SET = "set"  # SET / SET LOCAL / RESET
    TRANSACTION_CONTROL = "transaction-control"  # BEGIN, COMMIT, SAVEPOINT, ...
    OTHER = "other"  # understood well enough to know it takes no table lock
    UNPARSED = "unparsed"


class ConstraintType(str, enum.Enum):
    CHECK = "check"
    FOREIGN_KEY = "foreign-key"
    UNIQUE = "unique"
    PRIMARY_KEY = "primary-key"
    EXCLUDE = "exclude"
    NOT_NULL = "not-null"


@dataclass(frozen=True)
class KeyTerm:
    """One ``column = value`` of a WHERE clause that picks rows by key: the value is a
    literal (``literal``) or a bound parameter (``parameter``: its position among the
    statement's positional placeholders, or its name)."""

    column: str  # case folded
    parameter: int | str | None = None
    literal: int | str | None = None


@dataclass(frozen=True)
class Step:
    """One action of a statement with the identifiers a rule needs to explain it.

    Text fields (``default_sql``, ``type_sql``, ``definition_sql``) are cut from the
    user's statement as written, never regenerated.
    """

    action: Action
    table: str | None = None  # as written (schema qualified when written so)
    column: str | None = None
    name: str | None = None  # index, constraint, trigger, policy... name as written
    constraint_type: ConstraintType | None = None
    definition_sql: str | None = None  # e.g. "FOREIGN KEY (a) REFERENCES u (id)"
    references: str | None = None  # referenced table of a foreign key
    not_valid: bool = False
    using_index: str | None = None
    concurrently: bool = False
    if_not_exists: bool = False  # IF NOT EXISTS on CREATE, IF EXISTS on DROP
    default_sql: str | None = None
    volatility: Volatility = Volatility.NONE
    type_sql: str | None = None
    not_null: bool = False  # ADD COLUMN ... NOT NULL
    generated: str | None = None  # "identity" | "stored" | "virtual" | "serial"
    unique: bool = False  # CREATE UNIQUE INDEX, inline UNIQUE
    only: bool = False  # ONLY t: does not recurse to partitions / children
    cascade: bool = False
    parent: str | None = None  # PARTITION OF / INHERITS parent of a new table
    target_kind: str | None = None  # REINDEX INDEX|TABLE|SCHEMA..., COMMENT ON <kind>
    options: tuple[str, ...] = ()  # storage parameter names of SET (...) / RESET (...)
    columns: tuple[str, ...] = ()  # columns an UPDATE / MERGE sets (case folded)
    merge_actions: tuple[str, ...] = ()  # "insert" / "update" / "delete" of a MERGE
    mode: LockMode | None = None  # LOCK TABLE ... IN <mode>, and the lock this step takes
    # UPDATE / DELETE / SELECT ... FOR UPDATE whose WHERE is `col = value [AND ...]`
    key: tuple[KeyTerm, ...] = ()
    holds: Holds = Holds.BRIEF
    text: str = ""  # the sub-command's own text
    function: str | None = None  # the function a trigger executes, or DROP FUNCTION drops
    # the column list of INSERT INTO t (a, b) (case folded); None when not written
    insert_columns: tuple[str, ...] | None = None


@dataclass(frozen=True)
class RelationLock:
    """The strongest lock a statement takes on one relation."""

    relation: str  # as written; schema qualified when written so
    mode: LockMode
    holds: Holds
    # "index" when the relation is an index whose table could not be resolved from
    # text alone (DROP INDEX i without a catalog): the table gets the lock.
    object: str = "table"

    def as_json(self) -> dict[str, str]:
        out = {"relation": self.relation, "mode": self.mode.pg_name, "holds": self.holds.value}
        if self.object != "table":
            out["object"] = self.object
        return out


@dataclass(frozen=True)
class Statement:
    """Everything safeddl knows about one statement, before any rule runs."""

    sql: str  # the statement's own text, as written (without the trailing ';')
    line: int  # 1-based line of its first token in the script
    kind: Action  # the main action (the first step's)
    steps: tuple[Step, ...]
    locks: tuple[RelationLock, ...]  # one per relation, strongest mode, file order
    transactional: bool  # may run inside a transaction block
    creates: tuple[str, ...] = ()  # relations this statement creates
    understood: bool = True
    reason: str | None = None  # why it was not understood
    # Read, but its lock set cannot be known from the text (a procedure's body, what
    # depends on a dropped type...): why. The locks listed are the known part.
    unknown_locks: str | None = None
    notes: tuple[str, ...] = ()  # assumptions made (e.g. "column type unknown")
    leading_comments: tuple[str, ...] = field(default=(), compare=False)

    @property
    def strongest(self) -> RelationLock | None:
        return max(self.locks, key=lambda lock: lock.mode, default=None)

    @property
    def holds(self) -> Holds:
        """The longest hold over all locks."""
        order = [Holds.BRIEF, Holds.SCAN, Holds.REWRITE]
        return max((lock.holds for lock in self.locks), key=order.index, default=Holds.BRIEF)

    @property
    def is_ddl(self) -> bool:
        """Not only reads and writes of rows (a CALL: when its body is not known, or
        when a statement of its body is not)."""
        if self.kind is Action.CALL:
            return self.unknown_locks is not None or any(
                step.action not in _DML and step.action is not Action.CALL
                for step in self.steps)
        return self.kind not in _DML

    def lock_on(self, relation: str) -> RelationLock | None:
        for lock in self.locks:
            if lock.relation == relation:
                return lock
        return None


_DML = frozenset(
    {
        Action.SELECT,
        Action.SELECT_FOR_UPDATE,
        Action.INSERT,
        Action.UPDATE,
        Action.DELETE,
        Action.MERGE,
        Action.COPY_FROM,
        Action.COPY_TO,
        Action.SET,
        Action.TRANSACTION_CONTROL,
        Action.PREPARE,
        Action.EXECUTE,
    }
)


def shorten(sql: str, limit: int = 200) -> str:
    """A statement as messages show it: one line, at most ``limit`` characters."""
    head = sql[: 8 * limit + 8]  # enough unless the text is mostly blanks
    text = " ".join(head.split())
    if len(text) <= limit and len(head) < len(sql):
        text = " ".join(sql.split())  # mostly blanks: all of it (linear, seldom)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_Value = TypeVar("_Value", "Step", "Statement", "RelationLock")


def evolve(value: _Value, **changes: object) -> _Value:
    """``dataclasses.replace`` for the frozen value classes above (every field is an
    ``__init__`` argument, none has a ``__post_init__``), a few times cheaper: it is on
    the lint path for every step of every statement."""
    fields = value.__dict__
    if not changes.keys() <= fields.keys():
        raise TypeError(f"{type(value).__name__} has no field "
                        f"{sorted(changes.keys() - fields.keys())[0]!r}")
    new = object.__new__(type(value))
    new.__dict__.update(fields)
    new.__dict__.update(changes)
    return new
