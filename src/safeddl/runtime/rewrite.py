"""Exact rewrites: the safe sequence of statements the guard runs instead of one that
would hold a strong lock for a long time, leaving the same catalog end state.

:func:`rewrite` is the rewriter every Guard uses unless another is registered with
:func:`safeddl.runtime.guard.set_rewriter`. It is pure: from the analysed statement and
what the live catalog says about its tables it returns a
:class:`~safeddl.runtime.plan.Plan`, or None when no exact rewrite applies (the guard
then refuses, with the safe alternative spelled out).

======================================  ===============================================
original                                run instead
======================================  ===============================================
``CREATE [UNIQUE] INDEX [IF NOT          ``DROP INDEX CONCURRENTLY`` of an INVALID index
EXISTS] i ON t ...``                     of that name, then ``CREATE ... INDEX
                                         CONCURRENTLY ...``
``DROP INDEX [IF EXISTS] i``             ``DROP INDEX CONCURRENTLY [IF EXISTS] i``
``REINDEX INDEX i``                      ``REINDEX INDEX CONCURRENTLY i`` (PostgreSQL 12+)
``ADD [CONSTRAINT c] FOREIGN KEY`` /     ``ADD CONSTRAINT c ... NOT VALID``, then
``CHECK``                                ``VALIDATE CONSTRAINT c``
``ALTER COLUMN c SET NOT NULL``          ``ADD CONSTRAINT t_c_is_not_null CHECK (c IS NOT
                                         NULL) NOT VALID``, ``VALIDATE``, ``SET NOT
                                         NULL`` (no scan: the CHECK proves it), ``DROP
                                         CONSTRAINT t_c_is_not_null`` (PostgreSQL 12+)
``ADD [CONSTRAINT c] UNIQUE`` /          ``CREATE UNIQUE INDEX CONCURRENTLY c``, [the SET
``PRIMARY KEY``                          NOT NULL sequence for nullable key columns],
                                         ``ADD CONSTRAINT c ... USING INDEX c``
``TRUNCATE t``                           ``DELETE FROM t`` in the same transaction
======================================  ===============================================

Everything but ``DELETE`` needs its own transactions (autocommit); inside a
transaction block the guard refuses and prints the plan. Names PostgreSQL would have
chosen (``t_a_fkey``, ``t_a_key``, ``t_pkey``, ``t_a_check``) are given explicitly, so
the end state is the same. When a step fails, what the earlier steps did is undone
and an INVALID index left by a failed concurrent build is dropped: the end state is
then the one the failed original would have left.

No rewrite (the statement is refused instead) where it could not be exact: tables
with partitions or inheritance children, unnamed indexes, a name PostgreSQL would
have had to number (already taken on the table), a CHECK without a name when the
columns of the table are unknown, ``REINDEX TABLE`` / ``SCHEMA``, ``DROP INDEX`` of
several indexes or with ``CASCADE``, and ``TRUNCATE`` of a table that has user
triggers, row-level security or foreign keys pointing at it, or with ``RESTART
IDENTITY``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from safeddl.analysis import Action, Catalog, ConstraintType, Statement, Step
from safeddl.analysis.catalog import Relation
from safeddl.rules.support import beside, first_group, group_columns, split_commas
from safeddl.runtime.errors import NOT_NULL_VIOLATION
from safeddl.runtime.plan import Decision, Plan, PlanStep, SessionFacts
from safeddl.sql import local_name, quote_ident
from safeddl.sql.names import fold, pg_object_name
from safeddl.sql.names import name_addition as _name_addition
from safeddl.sql.tokens import SqlTokenError, tokenize

Builder = Callable[[Statement, Catalog, int], "Plan | None"]


_DO_BLOCK = re.compile(r"(?is)^\s*(?:(?:--[^\n]*(?:\n|$)|/\*.*?\*/)\s*)*DO\b")


def rewrite(decision: Decision, facts: SessionFacts) -> Plan | None:
    """The exact plan for a ``rewrite`` decision, or None."""
    if len(decision.statements) != 1 or not decision.deciding:
        return None
    if _DO_BLOCK.match(decision.statement.sql):
        return None  # a DO block: its statements cannot be replaced one by one
    rules = frozenset(finding.rule for finding in decision.deciding)
    builder = _BUILDERS.get(rules)
    if builder is None:
        return None
    catalog = facts.catalog if facts.catalog is not None else Catalog()
    return builder(decision.statement, catalog, facts.version)


def repair(decision: Decision, facts: SessionFacts) -> Plan | None:
    """For ``CREATE INDEX CONCURRENTLY IF NOT EXISTS i`` allowed as written: when an
    INVALID index ``i`` exists (a failed build), drop it first, so that IF NOT EXISTS
    does not keep the broken index."""
    step = _single(decision.statement)
    if (step is None or step.action is not Action.CREATE_INDEX or not step.concurrently
            or not step.if_not_exists or not step.name or not step.table
            or facts.catalog is None):
        return None
    index = beside(step.table, step.name)
    if not _is_invalid(facts.catalog, step.table, step.name):
        return None
    return Plan((_drop_invalid(index),
                 PlanStep(decision.statement.sql, needs_autocommit=True,
                          purpose="build the index", leftover_index=index)),
                summary=f"drop the INVALID index {index} before building it")


# --------------------------------------------------------------------------- indexes


def _create_index(statement: Statement, catalog: Catalog, version: int) -> Plan | None:
    step = _single(statement)
    if (step is None or step.action is not Action.CREATE_INDEX or step.concurrently
            or not step.name or not step.table or _has_children(catalog, step.table)):
        return None
    concurrent = _insert_after(statement.sql, {"INDEX"}, "CONCURRENTLY")
    if concurrent is None:
        return None
    index = beside(step.table, step.name)
    steps = [_drop_invalid(index)] if _is_invalid(catalog, step.table, step.name) else []
    steps.append(PlanStep(concurrent, needs_autocommit=True,
                          purpose="build the index without blocking writes",
                          leftover_index=index))
    return Plan(tuple(steps), summary=f"CREATE INDEX CONCURRENTLY {index}")


def _drop_index(statement: Statement, catalog: Catalog, version: int) -> Plan | None:
    step = _single(statement)
    if (step is None or step.action is not Action.DROP_INDEX or step.concurrently
            or step.cascade or not step.name):
        return None
    table = catalog.index_table(step.name)
    if table is not None and _has_children(catalog, table):
        return None
    if_exists = " IF EXISTS" if step.if_not_exists else ""
    return Plan((PlanStep(f"DROP INDEX CONCURRENTLY{if_exists} {step.name}",
                          needs_autocommit=True, purpose="drop the index without blocking"),),
                summary=f"DROP INDEX CONCURRENTLY {step.name}")


def _reindex(statement: Statement, catalog: Catalog, version: int) -> Plan | None:
    step = _single(statement)
    if (version < 12 or step is None or step.action is not Action.REINDEX
            or step.target_kind != "index" or step.concurrently or not step.name):
        return None
    table = catalog.index_table(step.name)
    relation = catalog.relations.get(table) if table else None
    if relation is None or _has_children(catalog, table or ""):
        return None
    name = local_name(step.name)
    if any(c.type is ConstraintType.EXCLUDE and c.name == name
           for c in relation.constraints.values()):
        return None  # exclusion constraints cannot be rebuilt concurrently
    concurrent = _insert_after(statement.sql, {"INDEX"}, "CONCURRENTLY")
    if concurrent is None:
        return None
    leftover = beside(step.name, quote_ident(pg_object_name(name, None, "ccnew")))
    return Plan((PlanStep(concurrent, needs_autocommit=True,
                          purpose="rebuild the index without blocking",
                          leftover_index=leftover),),
                summary=f"REINDEX INDEX CONCURRENTLY {step.name}")


def _is_invalid(catalog: Catalog, table: str, name: str) -> bool:
    relation = catalog.get(table)
    table_key = relation.key if relation is not None else catalog.key(table)
    wanted = local_name(name)
    return any(key.endswith("." + wanted) and catalog.indexes.get(key) == table_key
               for key in catalog.invalid_indexes)


def _drop_invalid(index: str) -> PlanStep:
    return PlanStep(f"DROP INDEX CONCURRENTLY {index}", needs_autocommit=True,
                    only_if_invalid_index=index,
                    purpose="drop the INVALID index a failed concurrent build left")


# --------------------------------------------------------------------------- constraints


def _validate_separately(statement: Statement, catalog: Catalog, version: int) -> Plan | None:
    """ADD FOREIGN KEY / CHECK -> ADD ... NOT VALID; VALIDATE CONSTRAINT."""
    step = _single(statement)
    if (step is None or step.action is not Action.ADD_CONSTRAINT or step.not_valid
            or step.table is None or step.definition_sql is None
            or step.constraint_type not in (ConstraintType.FOREIGN_KEY, ConstraintType.CHECK)):
        return None
    relation = catalog.get(step.table)
    if relation is None or _has_children(catalog, step.table):
        return None
    definition = _without_constraint_name(step.definition_sql)
    name = step.name or _default_name(step, relation, definition)
    if name is None:
        return None
    table = step.table
    add = PlanStep(f"ALTER TABLE {table} ADD CONSTRAINT {name} {definition} NOT VALID",
                   needs_autocommit=True,
                   purpose="add the constraint for new rows only (brief)",
                   undo=(PlanStep(f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {name}"),))
    validate = PlanStep(f"ALTER TABLE {table} VALIDATE CONSTRAINT {name}",
                        needs_autocommit=True,
                        purpose="check the existing rows under SHARE UPDATE EXCLUSIVE")
    return Plan((add, validate), summary=f"{name} NOT VALID, then VALIDATE")


def _default_name(step: Step, relation: Relation, definition: str) -> str | None:
    """The name PostgreSQL would give the constraint, or None when that cannot be
    known for sure (the name is taken, the columns of the table are unknown)."""
    table = local_name(step.table or relation.key)  # the key cannot be split at a dot
    if step.constraint_type is ConstraintType.FOREIGN_KEY:
        columns = [local_name(c) for c in group_columns(definition)]
        if not columns:
            return None
        name = pg_object_name(table, _name_addition(columns), "fkey")
    else:
        referenced = _columns_in(definition, relation)
        if referenced is None:
            return None
        name = pg_object_name(table, referenced[0] if len(referenced) == 1 else None, "check")
    return None if name in relation.constraints else quote_ident(name)


def _columns_in(definition: str, relation: Relation) -> list[str] | None:
    """The distinct columns of the table an expression refers to (names not followed
    by ``(`` nor after ``::``), or None when the table's columns are unknown."""
    if not relation.columns:
        return None
    try:
        tokens = tokenize(definition)
    except SqlTokenError:
        return None
    found: list[str] = []
    for i, token in enumerate(tokens):
        if token.kind == "IDENTIFIER" or (token.word and token.kind not in ("L_PAREN",
                                                                         "R_PAREN")):
            name = fold(token.text, token.kind == "IDENTIFIER")  # as PostgreSQL stores it
        else:
            continue
        after = tokens[i + 1].kind if i + 1 < len(tokens) else ""
        before = tokens[i - 1].kind if i else ""
        if name in relation.columns and after != "L_PAREN" and before != "DCOLON" \
                and name not in found:
            found.append(name)
    return found


def _set_not_null(statement: Statement, catalog: Catalog, version: int) -> Plan | None:
    step = _single(statement)
    if (version < 12 or step is None or step.action is not Action.SET_NOT_NULL
            or step.table is None or step.column is None):
        return None
    relation = catalog.get(step.table)
    if relation is None or _has_children(catalog, step.table):
        return None
    steps = not_null_steps(step.table, step.column, relation)
    return Plan(tuple(steps), summary=f"prove {step.column} NOT NULL with a CHECK first")


def not_null_steps(table: str, column: str, relation: Relation) -> list[PlanStep]:
    """SET NOT NULL without a scan under ACCESS EXCLUSIVE (PostgreSQL 12+): a CHECK
    (col IS NOT NULL) added NOT VALID and validated proves it; then it is dropped."""
    proof = _free_name(relation, local_name(table), local_name(column),
                       "is_not_null")
    return [
        PlanStep(f"ALTER TABLE {table} ADD CONSTRAINT {proof} CHECK ({column} IS NOT NULL) "
                 "NOT VALID", needs_autocommit=True,
                 purpose="new rows must not be NULL (brief)",
                 undo=(PlanStep(f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {proof}"),)),
        PlanStep(f"ALTER TABLE {table} VALIDATE CONSTRAINT {proof}", needs_autocommit=True,
                 purpose="check the existing rows under SHARE UPDATE EXCLUSIVE",
                 fails_like=(NOT_NULL_VIOLATION, f'column "{local_name(column)}" of relation '
                             f'"{relation.key.split(".", 1)[1]}" contains null values')),
        PlanStep(f"ALTER TABLE {table} ALTER COLUMN {column} SET NOT NULL",
                 needs_autocommit=True, purpose="no scan: the valid CHECK proves it",
                 undo=(PlanStep(f"ALTER TABLE {table} ALTER COLUMN {column} DROP NOT NULL"),)),
        PlanStep(f"ALTER TABLE {table} DROP CONSTRAINT {proof}",
                 purpose="the CHECK is no longer needed"),
    ]


def _unique_using_index(statement: Statement, catalog: Catalog, version: int) -> Plan | None:
    """ADD UNIQUE / PRIMARY KEY -> CREATE UNIQUE INDEX CONCURRENTLY; ADD ... USING INDEX."""
    step = _single(statement)
    if (step is None or step.action is not Action.ADD_CONSTRAINT or step.using_index
            or step.table is None or step.definition_sql is None
            or step.constraint_type not in (ConstraintType.UNIQUE, ConstraintType.PRIMARY_KEY)):
        return None
    relation = catalog.get(step.table)
    if relation is None or _has_children(catalog, step.table):
        return None
    parts = _key_parts(_without_constraint_name(step.definition_sql))
    if parts is None:
        return None
    columns, include, index_tail, constraint_tail = parts
    primary = step.constraint_type is ConstraintType.PRIMARY_KEY
    kind = "PRIMARY KEY" if primary else "UNIQUE"
    table = step.table
    name = step.name or quote_ident(pg_object_name(
        local_name(step.table or relation.key), None if primary else _name_addition(columns + include),
        "pkey" if primary else "key"))
    index = beside(table, name)
    steps = [PlanStep(f"CREATE UNIQUE INDEX CONCURRENTLY {name} ON {table} {index_tail}",
                      needs_autocommit=True, purpose="build the unique index without blocking",
                      undo=(PlanStep(f"DROP INDEX CONCURRENTLY IF EXISTS {index}",
                                     needs_autocommit=True),),
                      leftover_index=index)]
    if primary:
        for written in _written_columns(step.definition_sql):
            column = local_name(written)
            if column in relation.not_null or catalog.proves_not_null(table, column):
                continue
            if version < 12:
                return None
            steps.extend(not_null_steps(table, written, relation))
    steps.append(PlanStep(f"ALTER TABLE {table} ADD CONSTRAINT {name} {kind} USING INDEX "
                          f"{name}{constraint_tail}", purpose="a brief catalog change"))
    return Plan(tuple(steps), summary=f"{kind} {name} from a concurrently built index")


def _key_parts(definition: str) -> tuple[list[str], list[str], str, str] | None:
    """``UNIQUE NULLS NOT DISTINCT (a) INCLUDE (b) WITH (f=1) USING INDEX TABLESPACE s
    DEFERRABLE`` -> columns, include columns (folded), the CREATE INDEX tail ``(a)
    INCLUDE (b) NULLS NOT DISTINCT WITH (f=1) TABLESPACE s`` and the constraint tail
    `` DEFERRABLE``; None for what is not understood."""
    try:
        tokens = tokenize(definition)
    except SqlTokenError:
        return None
    words = [t.word for t in tokens]
    i = 1 if words[:1] == ["UNIQUE"] else 2 if words[:2] == ["PRIMARY", "KEY"] else -1
    if i < 0:
        return None
    nulls = ""
    if words[i:i + 2] == ["NULLS", "DISTINCT"]:
        nulls, i = "NULLS DISTINCT", i + 2
    elif words[i:i + 3] == ["NULLS", "NOT", "DISTINCT"]:
        nulls, i = "NULLS NOT DISTINCT", i + 3
    rest = definition[tokens[i].start:] if i < len(tokens) else ""
    group = first_group(rest)
    if group is None or group[0].strip():
        return None
    columns_sql, tail = group[1], group[2]
    columns = [local_name(c) for c in split_commas(columns_sql[1:-1])]
    clauses: dict[str, str] = {}
    constraint_tail = ""
    while tail.strip():
        tail = tail.strip()
        upper = tail.upper()
        if upper.startswith(("INCLUDE", "WITH")):
            key = "INCLUDE" if upper.startswith("INCLUDE") else "WITH"
            found = first_group(tail)
            if found is None or found[0].strip().upper() != key:
                return None
            clauses[key] = f"{key} {found[1]}"
            tail = found[2]
        elif upper.startswith("USING"):
            parts = tail.split(None, 4)
            if len(parts) < 4 or [p.upper() for p in parts[:3]] != ["USING", "INDEX",
                                                                       "TABLESPACE"]:
                return None
            clauses["TABLESPACE"] = f"TABLESPACE {parts[3]}"
            tail = parts[4] if len(parts) > 4 else ""
        elif upper.startswith(("DEFERRABLE", "NOT DEFERRABLE", "INITIALLY")):
            constraint_tail = " " + " ".join(tail.split())
            break
        else:
            return None
    include = []
    if "INCLUDE" in clauses:
        inner = first_group(clauses["INCLUDE"])
        include = [local_name(c) for c in split_commas(inner[1][1:-1])] if inner else []
    index_tail = " ".join(p for p in (columns_sql, clauses.get("INCLUDE", ""), nulls,
                                      clauses.get("WITH", ""), clauses.get("TABLESPACE", ""))
                          if p)
    return columns, include, index_tail, constraint_tail


def _written_columns(definition: str) -> list[str]:
    found = first_group(definition)
    return split_commas(found[1][1:-1]) if found else []


# --------------------------------------------------------------------------- truncate


def _delete_instead(statement: Statement, catalog: Catalog, version: int) -> Plan | None:
    """TRUNCATE -> DELETE in the same transaction, where nothing tells them apart: no
    user triggers (ON DELETE ones would fire, ON TRUNCATE ones would not), no
    row-level security (DELETE sees only the visible rows), no foreign key pointing at
    a table (TRUNCATE refuses or cascades), no RESTART IDENTITY."""
    if statement.kind is not Action.TRUNCATE or not statement.steps:
        return None
    try:
        words = [t.word for t in tokenize(statement.sql)]
    except SqlTokenError:
        return None
    if "RESTART" in words:
        return None
    steps = []
    for step in statement.steps:
        if step.table is None or not _deletes_like_truncate(catalog, step.table, step.only):
            return None
        only = "ONLY " if step.only else ""
        steps.append(PlanStep(f"DELETE FROM {only}{step.table}",
                              purpose="empty the table under ROW EXCLUSIVE"))
    return Plan(tuple(steps), summary="DELETE instead of TRUNCATE")


def _deletes_like_truncate(catalog: Catalog, table: str, only: bool) -> bool:
    relation = catalog.get(table)
    if relation is None or relation.kind not in ("table", "partitioned"):
        return False
    keys = [relation.key] + ([] if only else catalog.children(table))
    for key in keys:
        member = catalog.relations.get(key)
        if member is None or member.triggers or member.row_security:
            return False
        if catalog.referencing(key):
            return False
    return True


# --------------------------------------------------------------------------- names


def _free_name(relation: Relation, name1: str, name2: str, label: str) -> str:
    """An invented constraint name not taken on the table (``label1``, ``label2``...
    like PostgreSQL), quoted."""
    name = pg_object_name(name1, name2, label)
    number = 0
    while name in relation.constraints:
        number += 1
        name = pg_object_name(name1, name2, f"{label}{number}")
    return quote_ident(name)


def _without_constraint_name(definition: str) -> str:
    """``CONSTRAINT c CHECK (...)`` -> ``CHECK (...)``."""
    try:
        tokens = tokenize(definition)
    except SqlTokenError:
        return definition.strip()
    if len(tokens) > 2 and tokens[0].word == "CONSTRAINT":
        return definition[tokens[2].start:].strip()
    return definition.strip()


# --------------------------------------------------------------------------- helpers


def _single(statement: Statement) -> Step | None:
    return statement.steps[0] if len(statement.steps) == 1 and statement.understood else None


def _has_children(catalog: Catalog, table: str) -> bool:
    return catalog.is_partitioned(table) or bool(catalog.children(table))


def _insert_after(sql: str, words: set[str], keyword: str) -> str | None:
    """``sql`` with ``keyword`` inserted after the first top-level token among
    ``words`` (comments and option lists skipped), or None."""
    try:
        tokens = tokenize(sql)
    except SqlTokenError:
        return None
    depth = 0
    for token in tokens:
        if token.kind == "L_PAREN":
            depth += 1
        elif token.kind == "R_PAREN":
            depth -= 1
        elif depth == 0 and token.word in words:
            return f"{sql[:token.end]} {keyword}{sql[token.end:]}"
    return None


_BUILDERS: dict[frozenset[str], Builder] = {
    frozenset({"create-index"}): _create_index,
    frozenset({"drop-index"}): _drop_index,
    frozenset({"reindex"}): _reindex,
    frozenset({"add-foreign-key"}): _validate_separately,
    frozenset({"add-check"}): _validate_separately,
    frozenset({"set-not-null"}): _set_not_null,
    frozenset({"add-unique"}): _unique_using_index,
    frozenset({"truncate"}): _delete_instead,
}

__all__ = ["not_null_steps", "pg_object_name", "repair", "rewrite"]
