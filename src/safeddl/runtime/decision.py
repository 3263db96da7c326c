"""The pure decision for one statement text on a connection in a given state: which
findings, what the policy does about them (allow / warn / rewrite / refuse), and
whether and how the lock wait must be bounded (:func:`decide`).

Rewrites: a rewriter (see :func:`safeddl.runtime.guard.set_rewriter`) turns findings
whose action is ``rewrite`` into a :class:`~safeddl.runtime.plan.Plan`; without one,
``rewrite`` refuses with the safe alternative spelled out.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence

from safeddl.analysis import Action, Catalog, Statement, analyze_statement
from safeddl.locks import Holds
from safeddl.model import Step
from safeddl.rules import Context, Finding, check
from safeddl.rules.engine import ignores_in
from safeddl.runtime.plan import Decision, Plan, PlanStep, Rewriter, SessionFacts, Waiver
from safeddl.runtime.policy import UNPARSED_RULE, Policy, RuleAction
from safeddl.runtime.rewrite import repair, rewrite
from safeddl.runtime.scope import Allowances
from safeddl.sql import LIMITS, first_words, split_script
from safeddl.sql.scan import scans_remembered

_SIZE_INDEPENDENT_RULES = frozenset({"concurrently-in-transaction", UNPARSED_RULE})
# Rules whose lock lasts until COMMIT whatever the table's size: a small table is not a
# reason to send them as written (it is a reason to send their exact rewrite).
_HELD_UNTIL_COMMIT_RULES = frozenset({"truncate"})
_DML_WORDS = frozenset({"SELECT", "WITH", "INSERT", "UPDATE", "DELETE", "MERGE", "VALUES",
                        "TABLE", "COPY", "EXECUTE", "FETCH", "EXPLAIN", "SHOW", "("})
_TIMEOUT_SETTING = re.compile(
    r"(?is)^\s*(?:SET|RESET)\b.*\b(lock_timeout|statement_timeout|ALL)\b|^\s*DISCARD\s+ALL\b")


Analysed = list[tuple[Statement, dict[str, str], Catalog]]


def decide(text: str, facts: SessionFacts, policy: Policy,
           allowed: Allowances = (), rewriter: Rewriter | None = None,
           analysed: Analysed | None = None) -> Decision:
    """The decision for one statement text (or several, ``;``-separated). ``analysed``:
    what :func:`analyse` gave for this text and these facts, when the caller has it."""
    with scans_remembered():  # a large text is scanned once for all that asks
        return _decide(text, facts, policy, allowed, rewriter,
                       analysed if analysed is not None else analyse(text, facts))


def _decide(text: str, facts: SessionFacts, policy: Policy, allowed: Allowances,
            rewriter: Rewriter | None, analysed: Analysed) -> Decision:
    in_transaction = facts.in_transaction or len(analysed) > 1
    findings: list[Finding] = []
    verdicts: list[tuple[Finding, RuleAction]] = []
    waived: list[Waiver] = []
    small: list[Finding] = []  # rewritten only because the table is small
    for statement, ignores, catalog in analysed:
        context = Context(version=facts.version, catalog=catalog,
                          in_transaction=in_transaction, lock_timeout_set=True, runtime=True)
        for finding in check(statement, context):
            findings.append(finding)
            action, waiver = _action_for(finding, statement, catalog, facts, policy,
                                         {**dict(allowed), **ignores})
            verdicts.append((finding, action))
            if waiver is not None:
                waived.append(waiver)
            if action is RuleAction.REWRITE and finding.rule in _HELD_UNTIL_COMMIT_RULES \
                    and policy.action_for(finding.rule) is not action:
                small.append(finding)
    statements = tuple(item[0] for item in analysed)
    decision = _combine(statements, tuple(findings), verdicts, tuple(waived), facts, policy)
    if decision.action is RuleAction.REWRITE:
        decision = _plan_rewrite(decision, facts, policy,
                                 rewriter if rewriter is not None else current_rewriter())
        if decision.action is RuleAction.REFUSE and decision.plan is None \
                and decision.deciding and all(f in small for f in decision.deciding):
            # a small table, and no exact DELETE (foreign keys, triggers, CASCADE, RESTART
            # IDENTITY): sent as written with a warning, as a test suite's teardown expects
            decision = dataclasses.replace(
                decision, action=RuleAction.WARN, deciding=(), refusal_note=None,
                warnings=decision.warnings + decision.deciding)
    elif decision.action is not RuleAction.REFUSE and facts.live and not facts.in_transaction:
        decision = _plan_repair(decision, facts, policy)
    return decision


def analyse(text: str, facts: SessionFacts) -> Analysed:
    """Statements with their ``-- safeddl: ignore[...]`` comments; a catalog copy learns
    from each statement for the next when there are several."""
    with scans_remembered():
        return _analyse(text, facts)


def _analyse(text: str, facts: SessionFacts) -> Analysed:
    catalog = facts.catalog if facts.catalog is not None else Catalog()
    # (one large statement has no comment of its own: its preamble is blanks only)
    if ";" not in text and (len(text) > LIMITS.parse_bytes or "safeddl:" not in text):
        return [(analyze_statement(text, version=facts.version, catalog=catalog), {}, catalog)]
    raws = split_script(text)
    if len(raws) <= 1 and (not raws or "safeddl:" not in raws[0].preamble):
        return [(analyze_statement(text, version=facts.version, catalog=catalog), {}, catalog)]
    if len(raws) > LIMITS.script_statements:
        # Each statement is analysed against what the ones before it did (a catalog
        # copy each): past the bound the string is not read, and the policy decides.
        return [(_too_many(text, len(raws)), {}, catalog)]
    learning = catalog.copy() if len(raws) > 1 else catalog
    out = []
    for raw in raws:
        statement = analyze_statement(raw.text, version=facts.version, catalog=learning)
        out.append((statement, ignores_in(raw.comments), learning))
        if len(raws) > 1 and statement.understood:
            learning = learning.copy()
            learning.learn(statement.steps)
    return out or [(analyze_statement(text, version=facts.version, catalog=catalog), {}, catalog)]


def _too_many(text: str, count: int) -> Statement:
    return Statement(text, 1, Action.UNPARSED, (Step(Action.UNPARSED, text=text),), (), True,
                     understood=False,
                     reason=f"{count:,} statements in one string; safeddl analyses at most "
                            f"{LIMITS.script_statements:,} (send them in several strings)")


def _action_for(finding: Finding, statement: Statement, catalog: Catalog, facts: SessionFacts,
                policy: Policy, allowed: Mapping[str, str],
                ) -> tuple[RuleAction, Waiver | None]:
    if finding.rule in allowed:
        return RuleAction.ALLOW, Waiver(finding, f"allowed: {allowed[finding.rule]}")
    if finding.rule == UNPARSED_RULE:
        action = policy.unparsed_action(looks_like_dml(statement.sql))
    else:
        action = policy.action_for(finding.rule)
    if action.strictness >= RuleAction.REWRITE.strictness:
        why = _harmless_here(finding, statement, catalog, facts, policy)
        if why is not None:
            return RuleAction.ALLOW, Waiver(finding, why)
        if finding.rule in _HELD_UNTIL_COMMIT_RULES \
                and _harmless_here(finding, statement, catalog, facts, policy, sized=True):
            # small, but the lock lasts until COMMIT whatever the size: the exact DELETE
            # is cheap on a small table (refused, as before, where it is not exact)
            return RuleAction.REWRITE, None
    return action, None


def _harmless_here(finding: Finding, statement: Statement, catalog: Catalog,
                   facts: SessionFacts, policy: Policy, sized: bool = False) -> str | None:
    """Why a strong lock does not matter here: every relation it scans, rewrites or
    empties was created in this transaction, or is tiny. Tiny counts only for
    statements whose hold time grows with the table (or with ``sized``): not for
    TRUNCATE, whose ACCESS EXCLUSIVE lasts until COMMIT (a reload after it keeps every
    reader waiting) and which is not MVCC-safe, whatever the table's size. A relation the
    catalog does not have is never a reason: unknown means refuse."""
    if finding.rule in _SIZE_INDEPENDENT_RULES or not facts.live:
        return None
    small_counts = sized or finding.rule not in _HELD_UNTIL_COMMIT_RULES
    relations = {finding.relation} if finding.relation else set()
    relations.update(lock.relation for lock in statement.locks
                     if lock.holds is not Holds.BRIEF or statement.kind is Action.TRUNCATE)
    if not relations:
        return None
    reasons = []
    for relation in sorted(relations):
        why = _relation_is_harmless(relation, catalog, policy, small_counts)
        if why is None:
            return None
        reasons.append(f"{relation} {why}")
    return "; ".join(reasons)


def _relation_is_harmless(written: str, catalog: Catalog, policy: Policy,
                          small_counts: bool = True) -> str | None:
    relation = catalog.get(written)
    if relation is None:
        table = catalog.index_table(written)
        relation = catalog.relations.get(table) if table else None
        if relation is None:
            return None  # not found (a name safeddl may have folded differently)
    if relation.new:
        return "was created in this transaction"
    if small_counts and relation.rows is not None and relation.rows < policy.small_table_rows:
        return f"has about {relation.rows} rows (< small_table_rows {policy.small_table_rows})"
    return None


def looks_like_dml(sql: str) -> bool:
    """For a statement safeddl could not read: is it one statement whose first token
    (after comments of every kind, nested ones and ``\\r`` line ends included) starts
    a query or DML? Text that is not one complete statement is not DML."""
    words = first_words(sql, 1)
    return bool(words) and words[0] in _DML_WORDS


def _combine(statements: tuple[Statement, ...], findings: tuple[Finding, ...],
             verdicts: list[tuple[Finding, RuleAction]], waived: tuple[Waiver, ...],
             facts: SessionFacts, policy: Policy) -> Decision:
    action = max((a for _f, a in verdicts), key=lambda a: a.strictness, default=RuleAction.ALLOW)
    deciding = tuple(f for f, a in verdicts
                     if a is action and action.strictness >= RuleAction.REWRITE.strictness)
    warnings = tuple(f for f, a in verdicts if a is RuleAction.WARN)
    bounded = _needs_bounded_wait(statements, policy)
    timed = next((s for s in statements if s.locks), statements[0])
    return Decision(
        action=action, statements=statements, findings=findings, deciding=deciding,
        warnings=warnings, waived=waived, set_lock_timeout=bounded,
        session_level=bounded and not facts.in_transaction,
        lock_timeout_ms=policy.lock_timeout_ms,
        statement_timeout_ms=policy.statement_timeout_ms(timed) if bounded else None,
        catalog_dependent=needs_catalog(statements),
        changes_timeouts=any(_TIMEOUT_SETTING.match(s.sql) for s in statements
                             if s.kind is Action.SET or not s.understood),
    )


def _needs_bounded_wait(statements: tuple[Statement, ...], policy: Policy) -> bool:
    for statement in statements:
        if not statement.understood and not looks_like_dml(statement.sql):
            return True  # unknown locks: bound whatever it waits for
        if statement.locks and (statement.is_ddl or policy.guard_dml_lock_timeout):
            return True
    return False


def needs_catalog(statements: Sequence[Statement]) -> bool:
    """DDL that locks relations: whether they are new, small or partitioned matters; a
    CALL of a procedure whose body the text does not show: the database has it."""
    return any((s.is_ddl and s.understood and s.locks)
               or (s.kind is Action.CALL and s.unknown_locks is not None) for s in statements)


def _plan_rewrite(decision: Decision, facts: SessionFacts, policy: Policy,
                  rewriter: Rewriter | None) -> Decision:
    plan = rewriter(decision, facts) if rewriter is not None else None
    if plan is not None:
        plan = _with_statement_timeouts(plan, facts, policy)
    if plan is None:
        note = ("(The policy asks for a rewrite, but no exact rewrite is available here: "
                "run the safe alternative above yourself.)")
        return dataclasses.replace(decision, action=RuleAction.REFUSE, refusal_note=note)
    if plan.needs_autocommit and facts.in_transaction:
        note = ("(The safe rewrite needs its own transactions, which is not possible inside "
                "this transaction block. Run it in autocommit mode (SQLAlchemy "
                "isolation_level=\"AUTOCOMMIT\", Alembic autocommit_block()):\n"
                + plan.render() + ")")
        return dataclasses.replace(decision, action=RuleAction.REFUSE, refusal_note=note,
                                   plan=plan)
    return dataclasses.replace(decision, plan=plan)


def _plan_repair(decision: Decision, facts: SessionFacts, policy: Policy) -> Decision:
    """A statement allowed as written may still need a step first (e.g. an INVALID index
    that ``CREATE INDEX CONCURRENTLY IF NOT EXISTS`` would silently keep)."""
    if decision.plan is not None or len(decision.statements) != 1 \
            or decision.statement.kind not in (Action.CREATE_INDEX, Action.SET_NOT_NULL):
        return decision
    plan = repair(decision, facts)
    if plan is None:
        return decision
    return dataclasses.replace(decision, plan=_with_statement_timeouts(plan, facts, policy))


def _with_statement_timeouts(plan: Plan, facts: SessionFacts, policy: Policy) -> Plan:
    """Each step (and each undo step) with the statement_timeout the policy gives its
    own kind of statement, so that a concurrent build or a VALIDATE does not inherit
    the short one of the statement it replaces."""

    def timed(step: PlanStep) -> PlanStep:
        if step.statement_timeout_ms is None:
            own = policy.statement_timeout_ms(analyze_statement(step.sql, version=facts.version))
            step = dataclasses.replace(step, statement_timeout_ms=own)
        return dataclasses.replace(step, undo=tuple(timed(u) for u in step.undo))

    return dataclasses.replace(plan, steps=tuple(timed(step) for step in plan.steps))


_REWRITER: Rewriter | None = None


def use_rewriter(rewriter: Rewriter | None) -> None:
    """Make ``rewriter`` the one decisions use by default (None: safeddl's own)."""
    global _REWRITER
    _REWRITER = rewriter


def current_rewriter() -> Rewriter:
    """The registered rewriter, or safeddl's own."""
    if _REWRITER is not None:
        return _REWRITER
    return rewrite


__all__ = ["Analysed", "analyse", "current_rewriter", "decide", "looks_like_dml", "needs_catalog",
           "use_rewriter"]
