"""Reads, writes and row locks of DML, from sqlglot's tree.

Every table a statement names gets a step: the targets of INSERT / UPDATE /
DELETE / MERGE (also inside CTEs) write, ``FOR UPDATE/SHARE [OF]`` tables are
row-locked, every other table (FROM, JOIN, USING, subqueries, CTE bodies) is read.
"""

from __future__ import annotations

from sqlglot import exp

from safeddl.model import Action, Step
from safeddl.locks import LockMode

_WRITES: dict[type[exp.Expr], Action] = {
    exp.Insert: Action.INSERT,
    exp.Update: Action.UPDATE,
    exp.Delete: Action.DELETE,
    exp.Merge: Action.MERGE,
}


def written_name(table: exp.Table) -> str:
    """The table's name as written, quotes kept: ``app."Orders"``."""
    parts = []
    for key in ("catalog", "db", "this"):
        ident = table.args.get(key)
        if isinstance(ident, exp.Identifier):
            parts.append(f'"{ident.this}"' if ident.quoted else ident.this)
        elif isinstance(ident, str) and ident:
            parts.append(ident)
    return ".".join(parts)


def _cte_names(tree: exp.Expr) -> set[str]:
    return {cte.alias_or_name for cte in tree.find_all(exp.CTE)}


def _is_relation(table: exp.Table, ctes: set[str]) -> bool:
    if not isinstance(table.this, exp.Identifier):
        return False  # a table function such as generate_series(...)
    return bool(table.args.get("db")) or table.name not in ctes


def _target(node: exp.Expr) -> exp.Table | None:
    this = node.this
    if isinstance(this, exp.Schema):
        this = this.this
    return this if isinstance(this, exp.Table) else None


def dml_steps(tree: exp.Expr) -> list[Step]:
    """One step per (action, relation) in first-appearance order."""
    ctes = _cte_names(tree)
    steps: list[Step] = []
    written: set[int] = set()
    for node in tree.walk():
        action = _WRITES.get(type(node))
        if action is None:
            continue
        target = _target(node)
        if target is not None and _is_relation(target, ctes):
            written.add(id(target))
            steps.append(Step(action, table=written_name(target),
                              only=bool(target.args.get("only")),
                              columns=_assigned_columns(node),
                              merge_actions=_merge_actions(node)))
    row_locked = _row_locked_tables(tree, ctes)
    in_lock_clause = {id(t) for lock in tree.find_all(exp.Lock) for t in lock.expressions}
    for table in tree.find_all(exp.Table):
        if id(table) in written or id(table) in in_lock_clause or not _is_relation(table, ctes):
            continue
        name = written_name(table)
        only = bool(table.args.get("only"))
        if id(table) in row_locked:
            steps.append(Step(Action.SELECT_FOR_UPDATE, table=name, mode=LockMode.ROW_SHARE,
                              only=only))
        else:
            steps.append(Step(Action.SELECT, table=name, only=only))
    return steps


def _column_name(column: exp.Expr) -> str | None:
    ident = column.this if isinstance(column, exp.Column) else None
    if isinstance(ident, exp.Identifier):
        name = str(ident.this)
        return name if ident.quoted else name.lower()
    return None


def _assigned_columns(node: exp.Expr) -> tuple[str, ...]:
    """Columns an UPDATE (or a MERGE's WHEN ... UPDATE) sets, case folded."""
    updates = [node] if isinstance(node, exp.Update) else (
        list(node.find_all(exp.Update)) if isinstance(node, exp.Merge) else [])
    names = []
    for update in updates:
        for assignment in update.expressions:
            name = _column_name(assignment.this) if isinstance(assignment, exp.EQ) else None
            if name:
                names.append(name)
    return tuple(names)


def _merge_actions(node: exp.Expr) -> tuple[str, ...]:
    if not isinstance(node, exp.Merge):
        return ()
    actions = []
    for when in node.find_all(exp.When):
        then = when.args.get("then")
        if isinstance(then, exp.Insert):
            actions.append("insert")
        elif isinstance(then, exp.Update):
            actions.append("update")
        elif then is not None and "DELETE" in then.sql().upper():
            actions.append("delete")
    return tuple(actions)


def _row_locked_tables(tree: exp.Expr, ctes: set[str]) -> set[int]:
    """ids of the Table nodes a FOR UPDATE / FOR SHARE clause locks."""
    locked: set[int] = set()
    for select in tree.find_all(exp.Select):
        clauses = select.args.get("locks") or []
        if not clauses:
            continue
        own = _own_tables(select, ctes)
        for clause in clauses:
            targets = clause.expressions
            if not targets:
                locked.update(id(t) for t in own)
                continue
            wanted = {t.name for t in targets}
            locked.update(id(t) for t in own if (t.alias_or_name in wanted or t.name in wanted))
    return locked


def _own_tables(select: exp.Select, ctes: set[str]) -> list[exp.Table]:
    """Tables in this SELECT's own FROM / JOIN list (not in its subqueries)."""
    tables = []
    sources = []
    if select.args.get("from_") is not None:
        sources.append(select.args["from_"].this)
    sources.extend(join.this for join in select.args.get("joins") or [])
    for source in sources:
        if isinstance(source, exp.Table) and _is_relation(source, ctes):
            tables.append(source)
    return tables
