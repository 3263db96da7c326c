"""Reads, writes and row locks of DML, from sqlglot's tree.

Every table a statement names gets a step: the targets of INSERT / UPDATE /
DELETE / MERGE (also inside CTEs) write, ``FOR UPDATE/SHARE [OF]`` tables are
row-locked, every other table (FROM, JOIN, USING, subqueries, CTE bodies) is read.
An UPDATE / DELETE / SELECT ... FOR UPDATE of one table whose WHERE is ``col = value
[AND col = value ...]`` also gets the key it picks rows by (literals or bound
parameters), so the runtime guard can check that rows are locked in key order.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

from sqlglot import exp

from safeddl.locks import LockMode
from safeddl.model import Action, KeyTerm, Step
from safeddl.sql.names import fold
from safeddl.sql.tokens import Token

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
    nodes = list(tree.walk())  # one walk (``find_all`` is a walk filtered by type)
    ctes = {cte.alias_or_name for cte in nodes if isinstance(cte, exp.CTE)}
    steps: list[Step] = []
    written: set[int] = set()
    for node in nodes:
        action = _WRITES.get(type(node))
        if action is None:
            continue
        target = _target(node)
        if target is not None and _is_relation(target, ctes):
            written.add(id(target))
            key: tuple[KeyTerm, ...] = ()
            if action in (Action.UPDATE, Action.DELETE) and not (
                    node.args.get("from_") or node.args.get("from") or node.args.get("using")):
                key = key_terms(node.args.get("where"))
            steps.append(Step(action, table=written_name(target),
                              only=bool(target.args.get("only")),
                              columns=_assigned_columns(node),
                              merge_actions=_merge_actions(node), key=key,
                              insert_columns=_insert_columns(node)))
    row_locked = _row_locked_tables([n for n in nodes if isinstance(n, exp.Select)], ctes)
    in_lock_clause = {id(t) for lock in nodes if isinstance(lock, exp.Lock)
                      for t in lock.expressions}
    for table in nodes:
        if not isinstance(table, exp.Table):
            continue
        if id(table) in written or id(table) in in_lock_clause or not _is_relation(table, ctes):
            continue
        name = written_name(table)
        only = bool(table.args.get("only"))
        if id(table) in row_locked:
            key = ()
            select = table.find_ancestor(exp.Select)
            if select is not None and _own_tables(select, ctes) == [table] and not select.args.get(
                    "joins"):
                key = key_terms(select.args.get("where"))
            steps.append(Step(Action.SELECT_FOR_UPDATE, table=name, mode=LockMode.ROW_SHARE,
                              only=only, key=key))
        else:
            steps.append(Step(Action.SELECT, table=name, only=only))
    return steps


def _column_name(column: exp.Expr) -> str | None:
    ident = column.this if isinstance(column, exp.Column) else None
    if isinstance(ident, exp.Identifier):
        name = str(ident.this)
        return fold(name, bool(ident.quoted))
    return None


def _insert_columns(node: exp.Expr) -> tuple[str, ...] | None:
    """The column list of ``INSERT INTO t (a, b)``, case folded; None when there is
    none, or an ON CONFLICT clause may set other columns."""
    if not isinstance(node, exp.Insert) or not isinstance(node.this, exp.Schema) \
            or node.args.get("conflict") is not None:
        return None
    names = []
    for ident in node.this.expressions:
        if not isinstance(ident, exp.Identifier):
            return None
        names.append(str(ident.this) if ident.quoted else str(ident.this).lower())
    return tuple(names)


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


def _row_locked_tables(selects: list[exp.Select], ctes: set[str]) -> set[int]:
    """ids of the Table nodes a FOR UPDATE / FOR SHARE clause of these SELECTs locks."""
    locked: set[int] = set()
    for select in selects:
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


POSITIONAL = "safeddl_position_"


def number_positional(source: str, tokens: Sequence[Token]) -> str:
    """The text with each positional ``%s`` named by its position (``%(safeddl_position_0)s``
    ...), so that the tree tells which parameter a key compares with (sqlglot's tree does
    not keep the order of the text)."""
    out: list[str] = []
    last = 0
    count = 0
    for first, second in pairwise(tokens):
        if first.kind == "MOD" and second.kind == "VAR" and second.text == "s" and (
                second.start == first.end):
            out.append(source[last:first.start])
            out.append(f"%({POSITIONAL}{count})s")
            last = second.end
            count += 1
    if not count:
        return source
    out.append(source[last:])
    return "".join(out)


def key_terms(where: exp.Expr | None) -> tuple[KeyTerm, ...]:
    """``WHERE a = %s AND b = 'x'`` -> the terms, in the order written; () when the
    condition is anything but a conjunction of ``column = literal-or-parameter``."""
    if where is None:
        return ()
    condition = where.this if isinstance(where, exp.Where) else where
    conjuncts = list(condition.flatten()) if isinstance(condition, exp.And) else [condition]
    terms = []
    for conjunct in conjuncts:
        term = _key_term(conjunct)
        if term is None:
            return ()
        terms.append(term)
    return tuple(terms)


def _key_term(node: exp.Expr) -> KeyTerm | None:
    if isinstance(node, exp.Paren):
        node = node.this
    if not isinstance(node, exp.EQ):
        return None
    left, right = node.this, node.expression
    if not isinstance(left, exp.Column):
        left, right = right, left
    column = _column_name(left) if isinstance(left, exp.Column) else None
    if column is None:
        return None
    if isinstance(right, exp.Placeholder) and right.this:
        name = str(right.name)
        if name.startswith(POSITIONAL) and name[len(POSITIONAL):].isdigit():
            return KeyTerm(column, parameter=int(name[len(POSITIONAL):]))
        return KeyTerm(column, parameter=name)
    if isinstance(right, exp.Parameter) and isinstance(right.this, exp.Literal):
        number = str(right.this.this)
        return KeyTerm(column, parameter=int(number) - 1) if number.isdigit() else None
    if isinstance(right, exp.Literal):
        if right.is_string:
            return KeyTerm(column, literal=str(right.this))
        text = str(right.this)
        return KeyTerm(column, literal=int(text)) if text.lstrip("-").isdigit() else None
    if isinstance(right, exp.Neg) and isinstance(right.this, exp.Literal):
        text = str(right.this.this)
        return KeyTerm(column, literal=-int(text)) if text.isdigit() else None
    return None
