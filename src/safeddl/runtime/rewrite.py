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
``CREATE [UNIQUE] INDEX i ON parted``     ``CREATE ... INDEX i ON ONLY parted`` (INVALID, no
                                         scan), for each partition ``CREATE ... INDEX
                                         CONCURRENTLY <partition>_<columns>_idx`` (the
                                         name PostgreSQL gives it; ``ON ONLY`` for a
                                         sub-partitioned one, recursively), then ``ALTER
                                         INDEX i ATTACH PARTITION`` (``i`` turns valid
                                         with the last one)
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
the end state is the same. Plans resume rather than undo: every step carries a
``done_if`` check (its effect is already there: skipped) and the state it leaves, so
running the statement again after a fault at any step finishes the job; an INVALID
index left by a failed concurrent build is dropped (under the lock the build took,
never while another session still builds it). Each object a plan creates under a
fixed name comes with an :class:`~safeddl.runtime.plan.Expectation`: one of that name
with another definition is refused before anything runs.

No rewrite (the statement is refused instead) where it could not be exact: tables
with partitions or inheritance children (but for ``CREATE INDEX`` on a partitioned
table whose partitions are plain or partitioned tables without an unattached index
of their own), unnamed indexes, a name PostgreSQL would
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
from safeddl.runtime.plan import Check, Decision, Expectation, Plan, PlanStep, SessionFacts
from safeddl.sql import first_words, local_name, quote_ident
from safeddl.sql.names import fold, pg_object_name
from safeddl.sql.names import name_addition as _name_addition
from safeddl.sql.tokens import SqlTokenError, Token, tokenize

Builder = Callable[[Statement, Catalog, int], "Plan | None"]


def rewrite(decision: Decision, facts: SessionFacts) -> Plan | None:
    """The exact plan for a ``rewrite`` decision, or None."""
    if len(decision.statements) != 1 or not decision.deciding:
        return None
    if first_words(decision.statement.sql, 1) in ([], ["DO"], ["CALL"]):
        # a DO block or a procedure: its statements cannot be replaced one by one (and
        # text whose first word cannot be read is not rewritten either)
        return None
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
    if facts.catalog is not None and decision.statement.kind is Action.SET_NOT_NULL:
        return _finish_not_null(decision.statement, facts.catalog)
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
            or not step.name or not step.table):
        return None
    if catalog.is_partitioned(step.table) and not step.only:
        return _partitioned_index(statement, step, catalog)
    if _has_children(catalog, step.table):
        return None
    concurrent = _insert_after(statement.sql, {"INDEX"}, "CONCURRENTLY")
    if concurrent is None:
        return None
    index = beside(step.table, step.name)
    steps = [_drop_invalid(index)] if _is_invalid(catalog, step.table, step.name) else []
    probe = _probe_sql(statement.sql, "ON")
    steps.append(PlanStep(concurrent, needs_autocommit=True,
                          purpose="build the index without blocking writes",
                          leftover_index=index, done_if=_valid_index(index),
                          leaves=f"index {index} exists, valid"))
    expects = () if step.if_not_exists or probe is None else (
        Expectation("index", step.table, local_name(step.name), (_probe_table(step.table),
                                                                 probe)),)
    return Plan(tuple(steps), summary=f"CREATE INDEX CONCURRENTLY {index}", expects=expects)


def _partitioned_index(statement: Statement, step: Step, catalog: Catalog) -> Plan | None:
    """CREATE INDEX i ON parted -> ``CREATE INDEX i ON ONLY parted`` (INVALID, no scan);
    for each partition ``CREATE INDEX CONCURRENTLY`` under the name PostgreSQL would
    give it (``<partition>_<columns>_idx``), then ``ALTER INDEX i ATTACH PARTITION``;
    sub-partitions get an ``ON ONLY`` index of their own, attached once theirs are.
    ``i`` becomes valid when the last partition's index is attached."""
    assert step.table is not None and step.name is not None
    parent = catalog.get(step.table)
    parts = _index_parts(statement.sql)
    if parent is None or parts is None:
        return None
    head, tail = parts
    names = _index_column_names(tail)
    if names is None:
        return None
    addition = _name_addition(names)
    kind = "CREATE UNIQUE INDEX" if step.unique else "CREATE INDEX"
    index = beside(step.table, step.name)
    steps = [PlanStep(f"{head} ONLY {step.table}{tail}", needs_autocommit=True,
                      purpose="the partitioned index, INVALID until every partition's is "
                              "attached (brief: no scan)",
                      done_if=_exists(index), leaves=f"the index {index} exists, INVALID")]
    expects = [Expectation("index", step.table, local_name(step.name),
                           (_probe_table(step.table),
                            f"{kind} {step.name} ON pg_temp.safeddl_probe{tail}"))]
    children: list[str] = []
    if not _partition_steps(catalog, parent, index, kind, tail, addition, steps, expects,
                            children):
        return None
    refuse = (Check(
        "SELECT EXISTS (SELECT 1 FROM pg_partition_tree(to_regclass(%s)) t JOIN pg_index i "
        "ON i.indrelid = t.relid WHERE t.relid <> to_regclass(%s) AND NOT i.indexrelid = "
        "ANY(ARRAY(SELECT to_regclass(n)::oid FROM unnest(%s::text[]) n WHERE to_regclass(n) "
        "IS NOT NULL)) AND NOT EXISTS (SELECT 1 FROM pg_inherits h "
        "WHERE h.inhrelid = i.indexrelid))",
        (step.table, step.table, "{" + ",".join(_array_item(c) for c in children) + "}")),
        f"a partition of {step.table} has an index of its own, attached to no partitioned "
        "index: CREATE INDEX would attach it instead of building one when it is equivalent, "
        "which the rewrite cannot tell. Attach or drop it first, or run the statement "
        "yourself.")
    return Plan(tuple(steps), summary=f"{index} on ONLY {step.table}, then each partition "
                f"concurrently, attached", expects=tuple(expects), refuse_if=(refuse,))


def _partition_steps(catalog: Catalog, parent: Relation, parent_index: str, kind: str,
                     tail: str, addition: str, steps: list[PlanStep],
                     expects: list[Expectation], children: list[str]) -> bool:
    """Append the steps of every partition of ``parent`` (recursively); False when one
    cannot be indexed exactly (a foreign table, an unknown kind)."""
    partitions = sorted(key for key, relation in catalog.relations.items()
                        if relation.parent == parent.key)
    for key in partitions:
        relation = catalog.relations[key]
        schema, table_name = key.split(".", 1)
        table = f"{quote_ident(schema)}.{quote_ident(table_name)}"
        name = quote_ident(pg_object_name(table_name, addition or None, "idx"))
        index = f"{quote_ident(schema)}.{name}"
        children.append(index)
        expects.append(Expectation("index", table, local_name(name), (
            _probe_table(table), f"{kind} {name} ON pg_temp.safeddl_probe{tail}")))
        if relation.kind == "partitioned":
            steps.append(PlanStep(f"{kind} {name} ON ONLY {table}{tail}", needs_autocommit=True,
                                  purpose="the sub-partitioned table's index (brief)",
                                  done_if=_exists(index),
                                  leaves=f"the index {index} exists, INVALID"))
            if not _partition_steps(catalog, relation, index, kind, tail, addition, steps,
                                    expects, children):
                return False
        elif relation.kind == "table":
            steps.append(_drop_invalid(index))
            steps.append(PlanStep(f"{kind} CONCURRENTLY {name} ON {table}{tail}",
                                  needs_autocommit=True,
                                  purpose="build the partition's index without blocking writes",
                                  leftover_index=index, done_if=_valid_index(index),
                                  leaves=f"the index {index} exists, valid, not attached"))
        else:
            return False
        steps.append(PlanStep(f"ALTER INDEX {parent_index} ATTACH PARTITION {index}",
                              needs_autocommit=True, purpose="attach it (brief)",
                              done_if=Check("SELECT EXISTS (SELECT 1 FROM pg_inherits WHERE "
                                            "inhrelid = to_regclass(%s) AND inhparent = "
                                            "to_regclass(%s))", (index, parent_index)),
                              leaves=f"the index {index} is attached to {parent_index}"))
    return True


def _array_item(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _exists(index: str) -> Check:
    return Check("SELECT to_regclass(%s) IS NOT NULL", (index,))


def _name_after(sql: str, keyword: str) -> tuple[int, int, int] | None:
    """In ``sql``: where the first top-level ``keyword`` ends, and where the relation
    name after it (and an ``ONLY``) starts and ends, schema-qualified or not; None when
    there is none."""
    try:
        tokens = tokenize(sql)
    except SqlTokenError:
        return None
    depth = 0
    for i, token in enumerate(tokens):
        if token.kind == "L_PAREN":
            depth += 1
        elif token.kind == "R_PAREN":
            depth -= 1
        elif depth == 0 and token.word == keyword:
            j = i + 1
            if j < len(tokens) and tokens[j].word == "ONLY":
                j += 1
            if j >= len(tokens):
                return None
            end = j
            while end + 2 < len(tokens) and tokens[end + 1].kind == "DOT":
                end += 2
            return token.end, tokens[j].start, tokens[end].end
    return None


def _index_parts(sql: str) -> tuple[str, str] | None:
    """``CREATE INDEX i ON [ONLY] t <tail>`` -> (``CREATE INDEX i ON``, `` <tail>``)."""
    where = _name_after(sql, "ON")
    return None if where is None else (sql[:where[0]], sql[where[2]:])


def _index_column_names(tail: str) -> list[str] | None:
    """The names PostgreSQL's ChooseIndexColumnNames gives the key and INCLUDE columns
    of ``[USING m] (a, lower(b), (c + 1)) INCLUDE (d)``: a column's own name, ``expr``
    for an expression, made unique with a number."""
    found = first_group(tail)
    if found is None or not re.fullmatch(r"(?i)\s*(USING\s+\w+\s*)?", found[0]):
        return None
    elements = split_commas(found[1][1:-1])
    rest = found[2].strip()
    if rest.upper().startswith("INCLUDE"):
        include = first_group(rest)
        if include is None:
            return None
        elements += split_commas(include[1][1:-1])
    names: list[str] = []
    for element in elements:
        try:
            tokens = tokenize(element)
        except SqlTokenError:
            return None
        if not tokens:
            return None
        name = _figure_index_colname(tokens)
        candidate, number = name, 0
        while candidate in names:
            number += 1
            candidate = f"{name}{number}"
        names.append(candidate)
    return names


def _figure_index_colname(tokens: list[Token]) -> str:
    """PostgreSQL's FigureIndexColname for one index element: a column's name (also
    under a cast or in parentheses), a function call's name, else ``expr``."""
    while len(tokens) > 2 and tokens[0].kind == "L_PAREN" and _closing(tokens, 0) == len(
            tokens) - 1:
        tokens = tokens[1:-1]
    if tokens and tokens[0].word in ("CASE", "ARRAY", "ROW"):
        return tokens[0].word.lower()
    i, name = 0, None
    while i < len(tokens) and tokens[i].kind not in _PUNCTUATION:
        name = tokens[i].text if tokens[i].kind == "IDENTIFIER" else tokens[i].text.lower()
        if i + 1 < len(tokens) and tokens[i + 1].kind == "DOT":
            i += 2
            continue
        break
    if name is None:
        return "expr"
    after = i + 1
    if after < len(tokens) and tokens[after].kind == "L_PAREN":  # a function call
        after = _closing(tokens, after) + 1
        if after == 0:
            return "expr"
    rest = tokens[after:]
    if rest and rest[0].kind == "DCOLON":
        rest = [t for t in rest[1:] if t.kind not in ("L_PAREN", "R_PAREN", "NUMBER")]
    if all(t.kind not in _PUNCTUATION and t.kind != "DCOLON" for t in rest):
        return name
    return "expr"


_PUNCTUATION = frozenset({"L_PAREN", "R_PAREN", "DOT", "COMMA", "PLUS", "DASH", "STAR",
                          "SLASH", "PIPE", "DPIPE", "EQ", "NEQ", "LT", "GT", "LTE", "GTE",
                          "STRING", "NUMBER", "L_BRACKET", "R_BRACKET", "PARAMETER",
                          "MOD", "CARET", "AMP", "TILDA", "DAMP", "ARROW", "DARROW"})


def _closing(tokens: list[Token], start: int) -> int:
    """The index of the parenthesis closing the one at ``start`` (-1: none)."""
    depth = 0
    for i in range(start, len(tokens)):
        if tokens[i].kind == "L_PAREN":
            depth += 1
        elif tokens[i].kind == "R_PAREN":
            depth -= 1
            if depth == 0:
                return i
    return -1


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
    old = beside(step.name, quote_ident(pg_object_name(name, None, "ccold")))
    # An interrupted REINDEX CONCURRENTLY leaves <i>_ccnew (or, after the swap, <i>_ccold)
    # INVALID, and a new run would add <i>_ccnew1: both go first.
    return Plan((_drop_invalid(leftover), _drop_invalid(old),
                 PlanStep(concurrent, needs_autocommit=True,
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
                    purpose="drop the INVALID index a failed concurrent build left",
                    done_if=Check("SELECT NOT EXISTS (SELECT 1 FROM pg_index WHERE indexrelid "
                                  "= to_regclass(%s) AND NOT indisvalid)", (index,)))


# --------------------------------------------------------------------------- resuming

_CONSTRAINT = ("EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = to_regclass(%s) "
               "AND conname = %s{})")
_NOT_NULL = ("EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(%s) "
             "AND attname = %s AND attnotnull)")


def _constraint_there(table: str, name: str, valid: bool = False) -> tuple[str, tuple[str, ...]]:
    return (_CONSTRAINT.format(" AND convalidated" if valid else ""),
            (table, local_name(name)))


def _not_null(table: str, column: str) -> tuple[str, tuple[str, ...]]:
    return _NOT_NULL, (table, local_name(column))


def _any(*parts: tuple[str, tuple[str, ...]]) -> Check:
    """A check that holds when one of the conditions does."""
    return Check("SELECT " + " OR ".join(sql for sql, _ in parts),
                 tuple(p for _, params in parts for p in params))


def _valid_index(index: str) -> Check:
    return Check("SELECT EXISTS (SELECT 1 FROM pg_index WHERE indexrelid = to_regclass(%s) "
                 "AND indisvalid)", (index,))


def _probe_table(table: str) -> str:
    """A column copy of the table, for the server to render a planned definition on."""
    return f"CREATE TEMP TABLE safeddl_probe (LIKE {table} INCLUDING INDEXES)"


def _probe_sql(sql: str, after: str) -> str | None:
    """``sql`` with the relation name that follows the first top-level ``after`` keyword
    replaced by ``pg_temp.safeddl_probe`` (``ON t`` of CREATE INDEX, ``REFERENCES p``
    of a foreign key, then naming ``pg_temp.safeddl_probe_ref``), or None."""
    target = "pg_temp.safeddl_probe" if after == "ON" else "pg_temp.safeddl_probe_ref"
    where = _name_after(sql, after)
    if where is None:
        return None
    return f"{sql[:where[1]]}{target}{sql[where[2]:]}"


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
                   done_if=_any(_constraint_there(table, name)),
                   leaves=f"{name} exists on {table}, NOT VALID (new rows are checked, the "
                          "existing ones not yet)")
    validate = PlanStep(f"ALTER TABLE {table} VALIDATE CONSTRAINT {name}",
                        needs_autocommit=True,
                        purpose="check the existing rows under SHARE UPDATE EXCLUSIVE",
                        done_if=_any(_constraint_there(table, name, valid=True)),
                        leaves=f"{name} exists on {table}, validated")
    probe: list[str] = [_probe_table(table)]
    wanted: str | None = definition
    references = None
    if step.constraint_type is ConstraintType.FOREIGN_KEY:
        references = step.references
        wanted = _probe_sql(definition, "REFERENCES")
        probe.append(f"CREATE TEMP TABLE safeddl_probe_ref (LIKE {references} "
                     "INCLUDING INDEXES)")
    expects: tuple[Expectation, ...] = ()
    if wanted is not None and (references is not None or step.constraint_type
                               is ConstraintType.CHECK):
        probe.append(f"ALTER TABLE pg_temp.safeddl_probe ADD CONSTRAINT {name} {wanted} "
                     "NOT VALID")
        expects = (Expectation("constraint", table, local_name(name), tuple(probe),
                               references),)
    return Plan((add, validate), summary=f"{name} NOT VALID, then VALIDATE", expects=expects)


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
    return None if _taken_by_another(relation, name, step.constraint_type) \
        else quote_ident(name)


def _taken_by_another(relation: Relation, name: str, kind: ConstraintType | None) -> bool:
    """The name is taken by a constraint that cannot be a leftover of this very plan
    (another type). One of the same type is checked against the planned definition
    before the plan runs (refused when it differs, resumed when it is the same)."""
    there = relation.constraints.get(name)
    return there is not None and there.type is not kind


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


def _finish_not_null(statement: Statement, catalog: Catalog) -> Plan | None:
    """``SET NOT NULL`` allowed as written (the column is NOT NULL already, or a valid
    CHECK proves it) while an interrupted rewrite left its helper CHECK: run it, then
    drop the helper, so that no helper outlives a statement that succeeded."""
    step = _single(statement)
    if (step is None or step.action is not Action.SET_NOT_NULL or step.table is None
            or step.column is None):
        return None
    relation = catalog.get(step.table)
    helper = leftover_helper(relation, step.column) if relation is not None else None
    if helper is None:
        return None
    return Plan((PlanStep(statement.sql, needs_autocommit=True,
                          purpose="no scan: the valid CHECK proves it",
                          done_if=_any(_not_null(step.table, step.column)),
                          leaves=f"{step.column} is NOT NULL; the helper CHECK {helper} is "
                                 "still there"),
                 drop_helper(step.table, step.column, helper)),
                summary=f"drop the helper CHECK {helper} an interrupted run left")


def not_null_steps(table: str, column: str, relation: Relation) -> list[PlanStep]:
    """SET NOT NULL without a scan under ACCESS EXCLUSIVE (PostgreSQL 12+): a CHECK
    (col IS NOT NULL) added NOT VALID and validated proves it; then it is dropped."""
    proof = _proof_name(relation, column)
    is_not_null = _not_null(table, column)
    return [
        PlanStep(f"ALTER TABLE {table} ADD CONSTRAINT {proof} CHECK ({column} IS NOT NULL) "
                 "NOT VALID", needs_autocommit=True,
                 purpose="new rows must not be NULL (brief)",
                 done_if=_any(_constraint_there(table, proof), is_not_null),
                 leaves=f"the helper CHECK {proof} exists on {table}, NOT VALID"),
        PlanStep(f"ALTER TABLE {table} VALIDATE CONSTRAINT {proof}", needs_autocommit=True,
                 purpose="check the existing rows under SHARE UPDATE EXCLUSIVE",
                 done_if=_any(_constraint_there(table, proof, valid=True), is_not_null),
                 leaves=f"the helper CHECK {proof} exists on {table}, validated; {column} is "
                        "not yet NOT NULL",
                 fails_like=(NOT_NULL_VIOLATION, f'column "{local_name(column)}" of relation '
                             f'"{local_name(table)}" contains null values')),
        PlanStep(f"ALTER TABLE {table} ALTER COLUMN {column} SET NOT NULL",
                 needs_autocommit=True, purpose="no scan: the valid CHECK proves it",
                 done_if=_any(is_not_null),
                 leaves=f"{column} is NOT NULL; the helper CHECK {proof} is still there"),
        drop_helper(table, column, proof),
    ]


def drop_helper(table: str, column: str, proof: str) -> PlanStep:
    """The last step of the NOT NULL proof: the helper CHECK goes (IF EXISTS: a rerun
    or another session may have dropped it already)."""
    return PlanStep(f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {proof}",
                    needs_autocommit=True, purpose="the helper CHECK is no longer needed",
                    done_if=Check("SELECT NOT " + _CONSTRAINT.format(""),
                                  (table, local_name(proof))),
                    leaves=f"{column} is NOT NULL, no helper CHECK left")


def _proof_name(relation: Relation, column: str) -> str:
    """The helper CHECK's name (quoted): a leftover helper of an interrupted run (same
    name pattern, definition ``CHECK ((col IS NOT NULL))``) is taken up again, else the
    first free ``<t>_<c>_is_not_null[N]``."""
    name1, name2 = relation.key.split(".", 1)[1], local_name(column)
    number = 0
    while True:
        name = pg_object_name(name1, name2, f"is_not_null{number or ''}")
        there = relation.constraints.get(name)
        if there is None or is_helper(there.definition, name2):
            return quote_ident(name)
        number += 1


def leftover_helper(relation: Relation, column: str) -> str | None:
    """The helper CHECK an interrupted NOT NULL proof left on the table (quoted), if any."""
    name1, name2 = relation.key.split(".", 1)[1], local_name(column)
    for number in range(10):
        name = pg_object_name(name1, name2, f"is_not_null{number or ''}")
        there = relation.constraints.get(name)
        if there is not None and is_helper(there.definition, name2):
            return quote_ident(name)
    return None


def is_helper(definition: str, column: str) -> bool:
    """``CHECK ((col IS NOT NULL))`` as pg_get_constraintdef renders the helper."""
    wanted = f"CHECK (({quote_ident(column)} IS NOT NULL))"
    return definition.strip().removesuffix(" NOT VALID") == wanted


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
    steps = [_drop_invalid(index),
             PlanStep(f"CREATE UNIQUE INDEX CONCURRENTLY {name} ON {table} {index_tail}",
                      needs_autocommit=True, purpose="build the unique index without blocking",
                      leftover_index=index, done_if=_valid_index(index),
                      leaves=f"the unique index {index} exists, valid; no {kind} constraint "
                             "yet")]
    if primary:
        for written in _written_columns(step.definition_sql):
            column = local_name(written)
            helper = leftover_helper(relation, column)
            if column in relation.not_null or (helper is None
                                               and catalog.proves_not_null(table, column)):
                if helper is not None:  # left by an interrupted run: it goes too
                    steps.append(drop_helper(table, written, helper))
                continue
            if version < 12:
                return None
            steps.extend(not_null_steps(table, written, relation))
    steps.append(PlanStep(f"ALTER TABLE {table} ADD CONSTRAINT {name} {kind} USING INDEX "
                          f"{name}{constraint_tail}", needs_autocommit=True,
                          purpose="a brief catalog change",
                          done_if=_any(_constraint_there(table, name)),
                          leaves=f"the {kind} constraint {name} exists"))
    expects = (Expectation("index", table, local_name(name), (
        _probe_table(table),
        f"CREATE UNIQUE INDEX {name} ON pg_temp.safeddl_probe {index_tail}")),)
    return Plan(tuple(steps), summary=f"{kind} {name} from a concurrently built index",
                expects=expects)


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

__all__ = ["drop_helper", "is_helper", "leftover_helper", "not_null_steps", "pg_object_name",
           "repair", "rewrite"]
