"""Running the rules over a script (lint) or one statement (runtime guard)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from safeddl.analysis import Action, Catalog, Statement, analyze_statement
from safeddl.analysis.analyzer import analyze_meta_command, check_version, split_script_items
from safeddl.rules import catalogue
from safeddl.rules.base import Context, Finding, Rule
from safeddl.sql import LIMITS

_IGNORE = re.compile(r"safeddl:\s*ignore\[([^\]]*)\]\s*(.*)$", re.IGNORECASE)
_SET_LOCK_TIMEOUT = re.compile(
    r"(?is)^\s*SET\s+(SESSION\s+|LOCAL\s+)?lock_timeout\s*(?:=|TO)\s*'?([^';\s]*)"
)
_RESET_LOCK_TIMEOUT = re.compile(r"(?is)^\s*RESET\s+(lock_timeout|ALL)\b")


@dataclass(frozen=True)
class Ignored:
    rule: str
    reason: str


@dataclass
class Result:
    """A statement, what the rules found, and what an ignore comment silenced."""

    statement: Statement
    findings: list[Finding] = field(default_factory=list)
    ignored: list[Ignored] = field(default_factory=list)


def all_rules() -> list[Rule]:
    return list(catalogue.RULES)


def check(statement: Statement, context: Context, rules: list[Rule] | None = None) -> list[Finding]:
    findings: list[Finding] = []
    for rule in _may_find(statement, rules):
        findings.extend(rule.check(statement, context))
    return findings


# The rules of the catalogue that may find something, by the statement's kind and the
# actions of its steps (a few dozen combinations in practice; bounded all the same).
_MAY_FIND: dict[tuple[Action, frozenset[Action]], list[Rule]] = {}
_MAY_FIND_RULES: list[tuple[Rule, ...]] = [()]  # the catalogue they were chosen from
_MAY_FIND_BOUND = 4096


def _may_find(statement: Statement, rules: list[Rule] | None) -> list[Rule]:
    """The rules, in order, less those that declare they find nothing in such a
    statement: a rule's ``kinds`` (only statements of these kinds) and ``step_actions``
    (only statements with a step of one of these actions), when it has them."""
    key = (statement.kind, frozenset([step.action for step in statement.steps]))
    if rules is not None:
        return [rule for rule in rules if _applies(rule, *key)]
    if _MAY_FIND_RULES[0] is not catalogue.RULES:
        _MAY_FIND.clear()
        _MAY_FIND_RULES[0] = catalogue.RULES
    chosen = _MAY_FIND.get(key)
    if chosen is None:
        if len(_MAY_FIND) >= _MAY_FIND_BOUND:
            _MAY_FIND.clear()
        chosen = _MAY_FIND[key] = [rule for rule in catalogue.RULES if _applies(rule, *key)]
    return chosen


def _applies(rule: Rule, kind: Action, actions: frozenset[Action]) -> bool:
    kinds: frozenset[Action] | None = getattr(rule, "kinds", None)
    if kinds is not None and kind not in kinds:
        return False
    step_actions: frozenset[Action] | None = getattr(rule, "step_actions", None)
    return step_actions is None or not step_actions.isdisjoint(actions)


def ignores_in(comments: tuple[str, ...]) -> dict[str, str]:
    """``-- safeddl: ignore[a, b] reason`` -> {"a": "reason", "b": "reason"}."""
    out: dict[str, str] = {}
    for comment in comments:
        match = _IGNORE.search(comment)
        if match:
            for rule in match.group(1).split(","):
                if rule.strip():
                    out[rule.strip()] = match.group(2).strip()
    return out


def lint_script(script: str, *, version: int = 18, catalog: Catalog | None = None,
                assume_in_transaction: bool = False,
                rules: list[Rule] | None = None, psql: bool = True) -> list[Result]:
    """Analyse and check every statement of a script, in order (with ``psql``: its
    meta-commands as items of their own, inline COPY data skipped)."""
    check_version(version)
    catalog = catalog.copy() if catalog is not None else Catalog()
    context = Context(version=version, catalog=catalog, in_transaction=assume_in_transaction)
    results = []
    for raw in split_script_items(script, psql):
        if raw.psql:
            statement = analyze_meta_command(raw, version, catalog)
        else:
            statement = analyze_statement(raw.text, version=version, catalog=catalog,
                                          line=raw.line, tokens=raw.tokens)
        ignores = ignores_in(raw.comments)
        result = Result(statement)
        for finding in check(statement, context, rules):
            if finding.rule in ignores:
                result.ignored.append(Ignored(finding.rule, ignores[finding.rule]))
            else:
                result.findings.append(finding)
        results.append(result)
        _advance(context, statement, raw.text, assume_in_transaction)
    return results


def _advance(context: Context, statement: Statement, text: str, assume: bool) -> None:
    """What the script's transaction state is after this statement."""
    if statement.understood:
        context.catalog.learn(statement.steps)
    context.script.append(statement)
    if statement.kind is Action.TRANSACTION_CONTROL:
        word = text.split(None, 1)[0].upper() if text.split() else ""
        if word in ("BEGIN", "START"):
            context.in_transaction = True
            context.transaction = []
        elif word in ("COMMIT", "END", "ROLLBACK", "ABORT") and "TO" not in text.upper().split():
            context.in_transaction = assume
            context.transaction = []
            if context.lock_timeout_local:
                context.lock_timeout_set = context.lock_timeout_local = False
        return
    if statement.kind is Action.SET:
        _track_lock_timeout(context, text)
    if context.in_transaction and len(context.transaction) < LIMITS.transaction_history:
        # Rules compare a statement with the earlier ones of its transaction: past the
        # bound the later statements are still checked, against the first ones only
        # (linear work for any length).
        context.transaction.append(statement)


def _track_lock_timeout(context: Context, text: str) -> None:
    """``SET [LOCAL] lock_timeout`` bounds later lock waits; 0, RESET, or the end of
    the transaction of a SET LOCAL take that away again."""
    if _RESET_LOCK_TIMEOUT.match(text):
        context.lock_timeout_set = context.lock_timeout_local = False
        return
    match = _SET_LOCK_TIMEOUT.match(text)
    if match is None:
        return
    local = bool(match.group(1)) and match.group(1).strip().upper() == "LOCAL"
    if local and not context.in_transaction:
        return  # SET LOCAL outside a transaction block has no effect
    value = match.group(2).strip().lower()
    context.lock_timeout_set = value not in ("", "0", "default")
    context.lock_timeout_local = local and context.lock_timeout_set
