"""ALTER TABLE (and ALTER VIEW / MATERIALIZED VIEW / FOREIGN TABLE), one step per
sub-command, read from tokens."""

from __future__ import annotations

from safeddl.model import Action, ConstraintType, Step, Volatility, evolve
from safeddl.sql.clauses import NotUnderstood, require_name, storage_options
from safeddl.sql.columns import (
    TABLE_CONSTRAINT_WORDS,
    is_null_literal,
    read_column_def,
    read_table_constraint,
    volatility_of,
)
from safeddl.sql.tokens import Cursor, split_top_level


def read_alter_table(c: Cursor) -> list[Step]:
    c.accept("ALTER")
    relation_kind = "table"
    if c.accept("MATERIALIZED", "VIEW"):
        relation_kind = "materialized view"
    elif c.accept("VIEW"):
        relation_kind = "view"
    elif c.accept("FOREIGN", "TABLE"):
        relation_kind = "foreign table"
    else:
        c.accept("TABLE")
    if c.at("ALL", "IN", "TABLESPACE"):
        return [Step(Action.ALTER_TABLE_OTHER, text=c.text_of(0, c.stop))]
    c.accept("IF", "EXISTS")
    only = c.accept("ONLY")
    table = require_name(c, relation_kind)
    if c.peek() is not None and c.peek().kind == "STAR":  # type: ignore[union-attr]
        c.advance()
    steps = []
    for start, stop in split_top_level(c.tokens, c.pos, c.stop):
        step = _subcommand(c, table, start, stop)
        steps.append(_with(step, only=only, text=c.text_of(start, stop)))
    if not steps:
        raise NotUnderstood("ALTER TABLE without a sub-command")
    return steps


def _with(step: Step, **changes: object) -> Step:
    return evolve(step, **changes)


def _subcommand(cursor: Cursor, table: str, start: int, stop: int) -> Step:
    c = cursor.sub(start, stop)
    if c.accept("ADD"):
        if c.peek_word() in TABLE_CONSTRAINT_WORDS or c.at("NOT", "NULL"):
            constraint = read_table_constraint(cursor, table, c.pos, stop)
            if constraint.constraint_type is None:
                raise NotUnderstood("ADD CONSTRAINT without a constraint")
            if constraint.constraint_type is ConstraintType.FOREIGN_KEY and \
                    not constraint.references:
                raise NotUnderstood("FOREIGN KEY without REFERENCES <table>")
            return constraint
        c.accept("COLUMN")
        if_not_exists = c.accept("IF", "NOT", "EXISTS")
        if c.done:
            raise NotUnderstood("ADD COLUMN without a column definition")
        new = read_column_def(cursor, table, c.pos, stop, if_not_exists=if_not_exists)
        if not new.step.column:
            raise NotUnderstood("ADD COLUMN without a column name")
        # Inline constraints of the new column ride on the ADD COLUMN step.
        return _column_with_constraints(new.step, new.constraints)
    if c.accept("DROP"):
        if c.accept("CONSTRAINT"):
            c.accept("IF", "EXISTS")
            return Step(Action.DROP_CONSTRAINT, table=table, name=c.read_name(),
                        cascade="CASCADE" in c.words(c.pos, c.stop))
        c.accept("COLUMN")
        c.accept("IF", "EXISTS")
        return Step(Action.DROP_COLUMN, table=table, column=c.read_name(),
                    cascade="CASCADE" in c.words(c.pos, c.stop))
    if c.accept("ALTER"):
        if c.accept("CONSTRAINT"):
            return Step(Action.ALTER_TABLE_OTHER, table=table, name=c.read_name(),
                        target_kind="constraint")
        c.accept("COLUMN")
        column = require_name(c, "column")
        return _alter_column(c, table, column)
    if c.accept("VALIDATE", "CONSTRAINT"):
        return Step(Action.VALIDATE_CONSTRAINT, table=table,
                    name=require_name(c, "constraint"))
    if c.accept("RENAME"):
        if c.accept("TO"):
            return Step(Action.RENAME_TABLE, table=table, name=require_name(c, "table"))
        if c.accept("CONSTRAINT"):
            return Step(Action.RENAME_CONSTRAINT, table=table, name=c.read_name())
        c.accept("COLUMN")
        old = c.read_name()
        c.accept("TO")
        return Step(Action.RENAME_COLUMN, table=table, column=old, name=c.read_name())
    if c.accept("SET", "SCHEMA"):
        return Step(Action.SET_SCHEMA, table=table, name=c.read_name())
    if c.accept("OWNER", "TO"):
        return Step(Action.OWNER_TO, table=table, name=c.read_name())
    if c.at("ENABLE") or c.at("DISABLE"):
        c.advance()
        c.accept_any("REPLICA", "ALWAYS")
        if c.accept("TRIGGER"):
            return Step(Action.TRIGGER_ENABLE, table=table, name=c.read_name())
        if c.at("ROW", "LEVEL", "SECURITY"):
            return Step(Action.ROW_LEVEL_SECURITY, table=table)
        return Step(Action.ALTER_TABLE_OTHER, table=table)  # ENABLE/DISABLE RULE
    if c.at("FORCE", "ROW") or c.at("NO", "FORCE"):
        return Step(Action.ROW_LEVEL_SECURITY, table=table)
    if c.accept("CLUSTER", "ON"):
        return Step(Action.CLUSTER_ON, table=table, using_index=c.read_name())
    if c.accept("SET", "WITHOUT", "CLUSTER"):
        return Step(Action.CLUSTER_ON, table=table)
    if c.at("SET", "(") or c.at("RESET", "("):
        return Step(Action.SET_STORAGE_PARAMETERS, table=table, options=storage_options(c))
    if c.accept("SET", "LOGGED") or c.accept("SET", "UNLOGGED"):
        return Step(Action.SET_LOGGED, table=table)
    if c.accept("SET", "TABLESPACE"):
        return Step(Action.SET_TABLESPACE, table=table, name=c.read_name())
    if c.accept("SET", "ACCESS", "METHOD"):
        return Step(Action.SET_ACCESS_METHOD, table=table, name=c.read_name())
    if c.accept("REPLICA", "IDENTITY"):
        return Step(Action.REPLICA_IDENTITY, table=table)
    if c.accept("ATTACH", "PARTITION"):
        name = require_name(c, "partition")
        default = c.at("DEFAULT")
        return Step(Action.ATTACH_PARTITION, table=table, name=name,
                    target_kind="default" if default else None, text=c.text_of(0, c.stop))
    if c.accept("DETACH", "PARTITION"):
        name = require_name(c, "partition")
        concurrently = c.accept("CONCURRENTLY")
        finalize = c.accept("FINALIZE")
        return Step(Action.DETACH_PARTITION, table=table, name=name, concurrently=concurrently,
                    target_kind="finalize" if finalize else None)
    if c.accept("INHERIT") or c.accept("NO", "INHERIT"):
        return Step(Action.INHERIT, table=table, references=c.read_name())
    if c.peek_word() in ("OF", "NOT", "SET", "OPTIONS"):
        # OF type, NOT OF, SET WITHOUT OIDS, a foreign table's OPTIONS (...)
        return Step(Action.ALTER_TABLE_OTHER, table=table)
    raise NotUnderstood(f"unknown ALTER TABLE sub-command: {c.text_of(c.pos, c.stop)[:60]}")


def _column_with_constraints(step: Step, constraints: tuple[Step, ...]) -> Step:
    if not constraints:
        return step
    refs = [s.references for s in constraints if s.references]
    kinds = {s.constraint_type for s in constraints}
    names = [s.name for s in constraints if s.name]
    return _with(
        step,
        name=names[0] if names else None,
        references=refs[0] if refs else None,
        constraint_type=(
            ConstraintType.PRIMARY_KEY if ConstraintType.PRIMARY_KEY in kinds
            else ConstraintType.UNIQUE if ConstraintType.UNIQUE in kinds
            else ConstraintType.FOREIGN_KEY if ConstraintType.FOREIGN_KEY in kinds
            else ConstraintType.CHECK
        ),
        definition_sql=" ".join(s.definition_sql or "" for s in constraints),
    )


def _alter_column(c: Cursor, table: str, column: str) -> Step:
    text = c.text_of(c.pos, c.stop)
    if c.accept("SET", "DATA", "TYPE") or c.accept("TYPE"):
        t0, t1 = c.until("COLLATE", "USING")
        type_sql = c.text_of(t0, t1)
        has_using = "USING" in c.words(c.pos, c.stop)
        return Step(Action.ALTER_COLUMN_TYPE, table=table, column=column, type_sql=type_sql,
                    definition_sql=c.text_of(c.pos, c.stop) or None, cascade=has_using)
    if c.accept("SET", "DEFAULT"):
        d0, d1 = c.pos, c.stop
        volatility = Volatility.NONE if is_null_literal(c, d0, d1) else volatility_of(c, d0, d1)
        return Step(Action.SET_DEFAULT, table=table, column=column,
                    default_sql=c.text_of(d0, d1), volatility=volatility)
    if c.accept("DROP", "DEFAULT"):
        return Step(Action.DROP_DEFAULT, table=table, column=column)
    if c.accept("SET", "NOT", "NULL"):
        return Step(Action.SET_NOT_NULL, table=table, column=column)
    if c.accept("DROP", "NOT", "NULL"):
        return Step(Action.DROP_NOT_NULL, table=table, column=column)
    if c.accept("ADD", "GENERATED"):
        return Step(Action.ADD_IDENTITY, table=table, column=column, generated="identity",
                    volatility=Volatility.VOLATILE)
    if c.accept("SET", "EXPRESSION"):
        return Step(Action.ALTER_COLUMN_OTHER, table=table, column=column,
                    target_kind="set-expression", text=text)
    if c.at("SET", "STATISTICS"):
        return Step(Action.ALTER_COLUMN_OTHER, table=table, column=column,
                    target_kind="statistics", text=text)
    if c.at("SET", "(") or c.at("RESET", "("):
        return Step(Action.ALTER_COLUMN_OTHER, table=table, column=column,
                    target_kind="options", text=text)
    if c.at("SET", "STORAGE"):
        return Step(Action.ALTER_COLUMN_OTHER, table=table, column=column,
                    target_kind="storage", text=text)
    if c.at("SET", "COMPRESSION"):
        return Step(Action.ALTER_COLUMN_OTHER, table=table, column=column,
                    target_kind="compression", text=text)
    if c.at("DROP", "EXPRESSION"):
        return Step(Action.ALTER_COLUMN_OTHER, table=table, column=column,
                    target_kind="drop-expression", text=text)
    if c.at("OPTIONS"):  # a foreign table column's FDW options: ACCESS EXCLUSIVE
        return Step(Action.ALTER_COLUMN_OTHER, table=table, column=column,
                    target_kind="fdw-options", text=text)
    if c.peek_word() in ("SET", "RESTART", "DROP"):  # identity options
        return Step(Action.ALTER_COLUMN_OTHER, table=table, column=column,
                    target_kind="identity", text=text)
    raise NotUnderstood(f"unknown ALTER COLUMN form: {text[:60]}")
