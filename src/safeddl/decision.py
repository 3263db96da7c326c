"""The runtime guard, independent of the driver integration.

:func:`decide` is the pure decision for one statement text on a connection in a given
state: which findings, what the policy does about them (allow / warn / rewrite /
refuse), and whether and how the lock wait must be bounded. :class:`Guard` applies
decisions to a live session through the small :class:`Session` port that each
integration (SQLAlchemy events, psycopg cursors) implements: bounded lock waits
(``SET LOCAL`` in a transaction, a session setting restored afterwards outside one),
refusal before anything is sent, pre-flight, and the lock-timeout report.

Hot path: a statement whose decision is "nothing to do" (plain DML) is remembered by
its text; later executions cost one set lookup (:meth:`Guard.passes`). Decisions that
do not depend on the catalog are cached by (text, version, in transaction, allowed
rules); only DDL that locks existing relations reads the live catalog.

Rewrites: a rewriter (see :func:`set_rewriter`) turns findings whose action is
``rewrite`` into a :class:`Plan` executed step by step; the last step replaces the
statement. Without one, ``rewrite`` refuses with the safe alternative spelled out.
"""

from __future__ import annotations

import contextvars
import dataclasses
import logging
import re
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol

from safeddl.analysis import Action, Catalog, Statement, analyze_statement
from safeddl.analysis.locktable import NEWEST, OLDEST
from safeddl.blockers import LockRequest, conninfo_of, read_blockers, report_blockers
from safeddl.errors import (
    ConfigError,
    LockTimeout,
    PreflightBlocked,
    SafeDDLError,
    UnsafeStatement,
    is_lock_timeout,
    shorten,
)
from safeddl.ledger import Ledger
from safeddl.live_catalog import CatalogCache, LiveCatalog, names_in
from safeddl.locks import Holds, LockMode
from safeddl.policy import UNPARSED_RULE, Policy, RuleAction, as_timedelta, known_rules
from safeddl.rules import Context, Finding, check
from safeddl.rules.engine import ignores_in
from safeddl.sql import split_script
from safeddl.tracking import LockTracker, watch_commands

logger = logging.getLogger("safeddl")

Params = Sequence[Any] | Mapping[str, Any] | None
Allowances = tuple[tuple[str, str], ...]  # (rule id, reason), innermost last

_PLAIN_LIMIT = 20_000
_DECISION_LIMIT = 4_096
_SIZE_INDEPENDENT_RULES = frozenset({"concurrently-in-transaction", UNPARSED_RULE})
_DML_WORDS = frozenset({"SELECT", "WITH", "INSERT", "UPDATE", "DELETE", "MERGE", "VALUES",
                        "TABLE", "COPY", "EXECUTE", "FETCH", "EXPLAIN", "SHOW", "("})
_TIMEOUT_SETTING = re.compile(
    r"(?is)^\s*(?:SET|RESET)\b.*\b(lock_timeout|statement_timeout|ALL)\b|^\s*DISCARD\s+ALL\b")
_NOWAIT = re.compile(r"(?i)\bNOWAIT\b")
_SETTINGS = ("lock_timeout", "statement_timeout")


# =========================================================================== decision


@dataclass(frozen=True)
class PlanStep:
    """One statement of a rewrite plan."""

    sql: str
    needs_autocommit: bool = False  # must run outside a transaction block
    purpose: str = ""
    # Its own statement_timeout in ms (0: none), None: the statement's. decide() fills it
    # from the policy (a concurrent build or a VALIDATE must not inherit a short one).
    statement_timeout_ms: int | None = None
    # Run only while this index (SQL text for to_regclass) exists and is INVALID.
    only_if_invalid_index: str | None = None
    # When this step or a later one fails: what puts things back (run after it ran).
    undo: tuple[PlanStep, ...] = ()
    # When this very step fails: this index, left INVALID by a failed concurrent build,
    # is dropped concurrently.
    leftover_index: str | None = None


@dataclass(frozen=True)
class Plan:
    """A rewrite: steps run in order; the last one is sent instead of the statement."""

    steps: tuple[PlanStep, ...]
    summary: str = ""

    def render(self) -> str:
        lines = []
        for step in self.steps:
            if step.only_if_invalid_index:
                lines.append(f"-- only if {step.only_if_invalid_index} exists and is INVALID:")
            lines.append(step.sql.rstrip().rstrip(";") + ";")
        return "\n".join(lines)

    @property
    def needs_autocommit(self) -> bool:
        return any(step.needs_autocommit for step in self.steps)


@dataclass(frozen=True)
class SessionFacts:
    """What the decision knows of the connection."""

    version: int
    in_transaction: bool
    catalog: Catalog | None = None
    live: bool = False  # the catalog was read from the server (absent = does not exist)


@dataclass(frozen=True)
class Waiver:
    """A finding that did not count, and why."""

    finding: Finding
    why: str


@dataclass(frozen=True)
class Decision:
    """What to do with one statement text."""

    action: RuleAction
    statements: tuple[Statement, ...]
    findings: tuple[Finding, ...] = ()  # everything the rules found
    deciding: tuple[Finding, ...] = ()  # the findings behind a refuse or rewrite
    warnings: tuple[Finding, ...] = ()
    waived: tuple[Waiver, ...] = ()
    set_lock_timeout: bool = False
    session_level: bool = False  # outside a transaction block: SET, then restore
    lock_timeout_ms: int = 0
    statement_timeout_ms: int | None = None  # None: leave the session's value
    plan: Plan | None = None
    refusal_note: str | None = None
    catalog_dependent: bool = False
    changes_timeouts: bool = False  # the statement itself sets lock/statement_timeout

    @property
    def statement(self) -> Statement:
        return self.statements[0]

    @property
    def is_ddl(self) -> bool:
        return any(s.is_ddl for s in self.statements)

    @property
    def is_plain(self) -> bool:
        """Nothing to do now or ever for this text: the hot path skips it."""
        return (self.action is RuleAction.ALLOW and not self.findings and not self.waived
                and not self.set_lock_timeout and not self.changes_timeouts
                and not self.catalog_dependent and not self.is_ddl)

    def refusal(self) -> UnsafeStatement:
        first = self.deciding[0] if self.deciding else None
        message = "\n\n".join(f.message for f in self.deciding) or "refused"
        if self.refusal_note:
            message += "\n" + self.refusal_note
        sql = "; ".join(s.sql for s in self.statements)
        return UnsafeStatement(first.rule if first else "unknown", sql,
                               first.safe_alternative if first else None,
                               "safeddl refused this statement (it was not sent):\n" + message,
                               self.deciding)


def decide(text: str, facts: SessionFacts, policy: Policy,
           allowed: Allowances = (), rewriter: Rewriter | None = None) -> Decision:
    """The decision for one statement text (or several, ``;``-separated)."""
    analysed = _analyse(text, facts)
    in_transaction = facts.in_transaction or len(analysed) > 1
    findings: list[Finding] = []
    verdicts: list[tuple[Finding, RuleAction]] = []
    waived: list[Waiver] = []
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
    statements = tuple(item[0] for item in analysed)
    decision = _combine(statements, tuple(findings), verdicts, tuple(waived), facts, policy)
    if decision.action is RuleAction.REWRITE:
        decision = _plan_rewrite(decision, facts, policy,
                                 rewriter if rewriter is not None else current_rewriter())
    elif decision.action is not RuleAction.REFUSE and facts.live and not facts.in_transaction:
        decision = _plan_repair(decision, facts, policy)
    return decision


def _analyse(text: str, facts: SessionFacts) -> list[tuple[Statement, dict[str, str], Catalog]]:
    """Statements with their ``-- safeddl: ignore[...]`` comments; a catalog copy learns
    from each statement for the next when there are several."""
    catalog = facts.catalog if facts.catalog is not None else Catalog()
    if ";" not in text and "safeddl:" not in text:
        return [(analyze_statement(text, version=facts.version, catalog=catalog), {}, catalog)]
    raws = split_script(text)
    if len(raws) <= 1 and (not raws or "safeddl:" not in raws[0].preamble):
        return [(analyze_statement(text, version=facts.version, catalog=catalog), {}, catalog)]
    learning = catalog.copy() if len(raws) > 1 else catalog
    out = []
    for raw in raws:
        statement = analyze_statement(raw.text, version=facts.version, catalog=learning)
        out.append((statement, ignores_in(raw.comments), learning))
        if len(raws) > 1 and statement.understood:
            learning = learning.copy()
            learning.learn(statement.steps)
    return out or [(analyze_statement(text, version=facts.version, catalog=catalog), {}, catalog)]


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
    return action, None


def _harmless_here(finding: Finding, statement: Statement, catalog: Catalog,
                   facts: SessionFacts, policy: Policy) -> str | None:
    """Why a strong lock does not matter here: every relation it scans, rewrites or
    empties was created in this transaction, is tiny, or does not exist."""
    if finding.rule in _SIZE_INDEPENDENT_RULES or not facts.live:
        return None
    relations = {finding.relation} if finding.relation else set()
    relations.update(lock.relation for lock in statement.locks
                     if lock.holds is not Holds.BRIEF or statement.kind is Action.TRUNCATE)
    if not relations:
        return None
    reasons = []
    for relation in sorted(relations):
        why = _relation_is_harmless(relation, catalog, policy)
        if why is None:
            return None
        reasons.append(f"{relation} {why}")
    return "; ".join(reasons)


def _relation_is_harmless(written: str, catalog: Catalog, policy: Policy) -> str | None:
    relation = catalog.get(written)
    if relation is None:
        table = catalog.index_table(written)
        relation = catalog.relations.get(table) if table else None
        if relation is None:
            return "does not exist (the server will say so)"
    if relation.new:
        return "was created in this transaction"
    if relation.rows is not None and relation.rows < policy.small_table_rows:
        return f"has about {relation.rows} rows (< small_table_rows {policy.small_table_rows})"
    return None


def looks_like_dml(sql: str) -> bool:
    """For a statement safeddl could not read: does it start like a query or DML?"""
    stripped = _strip_leading_comments(sql)
    word = stripped.split(None, 1)[0].upper() if stripped.split() else ""
    return word in _DML_WORDS or word.startswith("(")


def _strip_leading_comments(sql: str) -> str:
    text = sql.lstrip()
    while text.startswith(("--", "/*")):
        if text.startswith("--"):
            text = text.split("\n", 1)[1].lstrip() if "\n" in text else ""
        else:
            text = text.split("*/", 1)[1].lstrip() if "*/" in text else ""
    return text


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
    """DDL that locks relations: whether they are new, small or partitioned matters."""
    return any(s.is_ddl and s.understood and s.locks for s in statements)


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


class Rewriter(Protocol):
    """Turns a ``rewrite`` decision into an exact plan, or None when none applies."""

    def __call__(self, decision: Decision, facts: SessionFacts) -> Plan | None: ...


def _plan_repair(decision: Decision, facts: SessionFacts, policy: Policy) -> Decision:
    """A statement allowed as written may still need a step first (e.g. an INVALID index
    that ``CREATE INDEX CONCURRENTLY IF NOT EXISTS`` would silently keep)."""
    if decision.plan is not None or len(decision.statements) != 1 \
            or decision.statement.kind is not Action.CREATE_INDEX:
        return decision
    from safeddl.rewrite import repair

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


def set_rewriter(rewriter: Rewriter | None) -> None:
    """Register the rewriter every Guard uses (None: safeddl's own exact rewrites,
    :func:`safeddl.rewrite.rewrite`; to have none, set the rules' actions in the
    Policy instead)."""
    global _REWRITER
    _REWRITER = rewriter
    _guard_for.cache_clear()


def current_rewriter() -> Rewriter:
    """The registered rewriter, or safeddl's own."""
    if _REWRITER is not None:
        return _REWRITER
    from safeddl.rewrite import rewrite

    return rewrite


# =========================================================================== sessions


class ConnectionState:
    """What the guard remembers about one driver connection."""

    def __init__(self, pid: int, server_version: int, info: Any) -> None:
        self.pid = pid
        self.server_version = server_version  # major, e.g. 15
        self._info = info
        self.saved: dict[str, tuple[str, str]] = {}  # setting -> (value, source) to restore
        self.dirty: tuple[str, ...] = ()  # session settings changed by safeddl right now
        self.catalogs = CatalogCache()
        self.ledger = Ledger()  # the locks of the open transaction (safeddl.tracking)

    def conninfo(self) -> str:
        return conninfo_of(self._info)

    def transaction_idle(self) -> bool:
        """No transaction is open on the server right now."""
        return bool(self._info.transaction_status == 0)  # psycopg's TransactionStatus.IDLE


_STATES: weakref.WeakKeyDictionary[Any, ConnectionState] = weakref.WeakKeyDictionary()
_STATES_LOCK = threading.Lock()


def state_of(driver_connection: Any) -> ConnectionState:
    """The state of a psycopg (sync or async) connection, created on first use."""
    state = _STATES.get(driver_connection)
    if state is None:
        info = driver_connection.info
        state = ConnectionState(info.backend_pid, info.server_version // 10000, info)
        with _STATES_LOCK:
            if driver_connection not in _STATES:
                watch_commands(driver_connection, state)
            state = _STATES.setdefault(driver_connection, state)
    return state


class Session(Protocol):
    """What an integration gives the guard: the connection a statement runs on."""

    @property
    def state(self) -> ConnectionState: ...

    def in_transaction(self) -> bool: ...

    def run(self, sql: str, params: Params = None) -> list[tuple[Any, ...]]:
        """Run an internal statement on the same session (not guarded)."""
        ...

    def discard(self) -> None:
        """Close the connection: its settings could not be restored, so nobody may use
        it again (a pool then replaces it)."""
        ...


@dataclass
class Ticket:
    """What the guard did before a statement, to undo or report afterwards."""

    guard: Guard
    decision: Decision
    text: str
    replacement: str | None = None
    restore: tuple[str, ...] = ()  # session settings to restore afterwards
    live: LiveCatalog | None = None
    steps_done: int = 0  # plan steps run before the statement
    statement_timeout_ms: int | None = None  # the statement_timeout set now (None: session's)


# =========================================================================== the guard


class Guard:
    """Applies a Policy to statements on live sessions. One per policy (see
    :meth:`for_policy`); shared by every connection using that policy."""

    def __init__(self, policy: Policy, rewriter: Rewriter | None = None) -> None:
        self.policy = policy
        self.rewriter = rewriter
        self.plain: dict[int, set[str]] = {}  # server version -> texts needing nothing
        self._decisions: dict[tuple[str, int, bool, Allowances], Decision] = {}
        self.tracker = LockTracker(policy)  # lock order and the ledger of transactions
        # server version -> texts needing nothing but the ledger -> their statements
        self.tracked: dict[int, dict[str, tuple[Statement, ...]]] = {}

    @classmethod
    def for_policy(cls, policy: Policy) -> Guard:
        """The shared Guard of this policy (its caches serve every connection)."""
        return _guard_for(policy)

    # -- hot path -----------------------------------------------------------------
    def passes(self, text: str, server_version: int) -> bool:
        """True when this text is known to need nothing (plain DML on this server)."""
        plain = self.plain.get(server_version)
        return plain is not None and text in plain

    # -- before / after / failed --------------------------------------------------------
    def before(self, text: str, session: Session, params: Params = None,
               many: bool = False) -> Ticket | None:
        """Decide and prepare; raises UnsafeStatement / PreflightBlocked. Returns None
        when nothing needs undoing afterwards. ``params`` (a list of parameter sets when
        ``many``) give the keys of the rows the statement locks."""
        state = session.state
        known = self.tracked.get(state.server_version)
        statements = known.get(text) if known is not None else None
        if statements is not None:  # needs nothing but the lock ledger
            if session.in_transaction():
                self.track(state, statements, text, params, many)
            return None
        decision, live = self._decision(text, session)
        if decision.changes_timeouts:
            state.saved.clear()
        if decision.is_ddl:
            state.catalogs.invalidate()
        if decision.action is RuleAction.REFUSE:
            refusal = decision.refusal()
            logger.info("safeddl: refused %s: %s", refusal.rule, refusal)
            raise refusal
        if self.tracker.enabled and session.in_transaction():
            version = self.version_for(state.server_version)
            self.tracker.before(state, _sent_statements(decision, version), text, params, many,
                                _ALLOWANCES.get(), version)
        _log(decision)
        if not decision.set_lock_timeout and decision.plan is None:
            return None
        ticket = Ticket(self, decision, text, live=live)
        if self.policy.preflight.enabled:
            self._preflight(ticket, session)
        self._bound_waits(ticket, session)
        if decision.plan is not None:
            try:
                self._run_plan(ticket, session)
            except BaseException:
                if ticket.restore:
                    _restore_or_log(session)
                raise
        return ticket

    def track(self, state: ConnectionState, statements: Sequence[Statement], text: str,
              params: Params = None, many: bool = False) -> None:
        """A statement in an open transaction that needs nothing but the lock ledger
        (see :attr:`tracked`): check its lock order, record its locks."""
        self.tracker.before(state, statements, text, params, many, _ALLOWANCES.get(),
                            self.version_for(state.server_version))

    def after(self, ticket: Ticket, session: Session) -> None:
        """The statement succeeded: restore what was changed for it."""
        if ticket.restore:
            _restore_or_log(session)

    def failed(self, ticket: Ticket | None, text: str, session: Session,
               error: BaseException) -> SafeDDLError | None:
        """The statement failed: restore, and turn a lock timeout into LockTimeout
        (with the blocking sessions). Returns the exception to raise instead, if any."""
        if ticket is not None and ticket.decision.plan is not None:
            self._undo_plan(ticket, session, ticket.decision.plan.steps[-1])
        if ticket is not None and ticket.restore:
            _restore_or_log(session)
        if not is_lock_timeout(error) or isinstance(error, SafeDDLError) or _NOWAIT.search(text):
            return None
        return self._lock_timeout(ticket, text, session.state, error)

    # -- deciding -------------------------------------------------------------------------
    def _decision(self, text: str, session: Session) -> tuple[Decision, LiveCatalog | None]:
        state = session.state
        version = self.version_for(state.server_version)
        in_transaction = session.in_transaction()
        allowed = _ALLOWANCES.get()
        key = (text, version, in_transaction, allowed)
        cached = self._decisions.get(key)
        if cached is not None:
            return cached, None
        rewriter = self.rewriter or current_rewriter()
        facts = SessionFacts(version, in_transaction)
        statements = [item[0] for item in _analyse(text, facts)]
        if not needs_catalog(statements):
            decision = decide(text, facts, self.policy, allowed, rewriter)
            self._remember(key, decision, state.server_version)
            return decision, None
        live = state.catalogs.get(names_in(statements), session.run)
        facts = SessionFacts(version, in_transaction, live.catalog, live=True)
        return decide(text, facts, self.policy, allowed, rewriter), live

    def _remember(self, key: tuple[str, int, bool, Allowances], decision: Decision,
                  server_version: int) -> None:
        if decision.is_plain and self.tracker.tracks(decision.statements):
            tracked = self.tracked.setdefault(server_version, {})
            if len(tracked) >= _PLAIN_LIMIT:
                tracked.clear()
            tracked[key[0]] = decision.statements
        elif decision.is_plain:
            plain = self.plain.setdefault(server_version, set())
            if len(plain) >= _PLAIN_LIMIT:
                plain.clear()
            plain.add(key[0])
        if len(self._decisions) >= _DECISION_LIMIT:
            self._decisions.clear()
        self._decisions[key] = decision

    def version_for(self, server_version: int) -> int:
        if self.policy.pg_version is not None:
            return self.policy.pg_version
        return min(max(server_version, OLDEST), NEWEST)

    # -- bounding the wait ----------------------------------------------------------------
    def _bound_waits(self, ticket: Ticket, session: Session) -> None:
        decision = ticket.decision
        if not decision.set_lock_timeout:
            return
        values = {"lock_timeout": f"{decision.lock_timeout_ms}ms"}
        if decision.statement_timeout_ms is not None:
            values["statement_timeout"] = f"{decision.statement_timeout_ms}ms"
        names = tuple(values)
        if decision.plan is not None and "statement_timeout" not in names and any(
                step.statement_timeout_ms is not None for step in decision.plan.steps):
            names += ("statement_timeout",)  # plan steps set their own
        if decision.session_level:
            remember_settings(session, names)
            ticket.restore = names
            session.state.dirty = tuple(sorted(set(session.state.dirty) | set(names)))
        apply_settings(session, values, local=not decision.session_level)
        ticket.statement_timeout_ms = decision.statement_timeout_ms

    # -- rewrite plans --------------------------------------------------------------------
    def _run_plan(self, ticket: Ticket, session: Session) -> None:
        """Run every step but the last (which the integration sends instead of the
        statement); on failure undo the steps that ran and raise (LockTimeout on a lock
        timeout)."""
        plan = ticket.decision.plan
        assert plan is not None
        if ticket.decision.action is RuleAction.REWRITE:
            logger.info("safeddl: instead of `%s` (%s), running:\n%s",
                        shorten(ticket.decision.statement.sql, 80),
                        ", ".join(f.rule for f in ticket.decision.deciding), plan.render())
        for step in plan.steps[:-1]:
            if step.only_if_invalid_index and not _index_is_invalid(session,
                                                                    step.only_if_invalid_index):
                ticket.steps_done += 1
                continue
            logger.info("safeddl: rewrite step: %s", shorten(step.sql))
            try:
                self._step_timeout(ticket, session, step)
                session.run(step.sql)
            except Exception as exc:
                self._undo_plan(ticket, session, step)
                if is_lock_timeout(exc) and not isinstance(exc, SafeDDLError):
                    raise self._lock_timeout(ticket, step.sql, session.state, exc) from exc
                raise
            ticket.steps_done += 1
        if plan.steps:
            self._step_timeout(ticket, session, plan.steps[-1])
            ticket.replacement = plan.steps[-1].sql

    def _step_timeout(self, ticket: Ticket, session: Session, step: PlanStep) -> None:
        """The step's own statement_timeout (a concurrent build: none), else the one the
        statement had."""
        decision = ticket.decision
        if not decision.set_lock_timeout:
            return
        wanted = (step.statement_timeout_ms if step.statement_timeout_ms is not None
                  else decision.statement_timeout_ms)
        if wanted == ticket.statement_timeout_ms:
            return
        if wanted is None:  # back to the session's own value
            saved = session.state.saved.get("statement_timeout")
            if saved is None or not decision.session_level:
                return
            value = saved[0]
        else:
            value = f"{wanted}ms"
        apply_settings(session, {"statement_timeout": value}, local=not decision.session_level)
        ticket.statement_timeout_ms = wanted

    def _undo_plan(self, ticket: Ticket, session: Session, failed: PlanStep) -> None:
        """After a failed step (outside a transaction block, where the steps before it
        were committed): drop the INVALID index a failed concurrent build left, then
        undo the steps that ran, last first, so the end state is the one the failed
        original statement would have left. What cannot be undone is logged with the
        statement to run."""
        plan = ticket.decision.plan
        if plan is None:
            return
        try:
            if session.in_transaction():
                return  # the transaction is rolled back as a whole
        except Exception:  # noqa: BLE001 - a closed connection: nothing can be done
            return
        actions: list[PlanStep] = []
        if failed.leftover_index:
            actions.append(PlanStep(
                f"DROP INDEX CONCURRENTLY IF EXISTS {failed.leftover_index}",
                needs_autocommit=True, statement_timeout_ms=0,
                only_if_invalid_index=failed.leftover_index,
                purpose="drop the INVALID index the failed concurrent build left"))
        for step in reversed(plan.steps[:ticket.steps_done]):
            actions.extend(step.undo)
        for action in actions:
            try:
                if action.only_if_invalid_index and not _index_is_invalid(
                        session, action.only_if_invalid_index):
                    continue
                self._step_timeout(ticket, session, action)
                logger.info("safeddl: undoing a rewrite step: %s", shorten(action.sql))
                session.run(action.sql)
            except Exception as exc:  # noqa: BLE001 - the original error is what matters
                logger.warning("safeddl: could not undo a step of the rewrite (%s); run it "
                               "yourself: %s;", exc, action.sql)

    # -- pre-flight -------------------------------------------------------------------------
    def _preflight(self, ticket: Ticket, session: Session) -> None:
        requests = [r for r in lock_requests(ticket.decision.statements, ticket.live)
                    if r.mode.conflicts_with(LockMode.ACCESS_SHARE)]
        if not requests:
            return
        options = self.policy.preflight
        deadline = time.monotonic() + options.wait_seconds
        min_age = as_timedelta(options.min_age)
        while True:
            blockers = read_blockers(session.run, requests, session.state.pid, min_age=min_age)
            if not blockers:
                return
            if time.monotonic() + options.poll_seconds > deadline:
                raise PreflightBlocked(ticket.text, requests[0].relation, requests[0].mode,
                                       blockers)
            time.sleep(options.poll_seconds)

    # -- lock timeouts --------------------------------------------------------------------
    def _lock_timeout(self, ticket: Ticket | None, text: str, state: ConnectionState,
                      error: BaseException) -> LockTimeout:
        live: LiveCatalog | None = None
        waited_ms: int | None = None
        if ticket is not None:
            statements, live = ticket.decision.statements, ticket.live
            if ticket.decision.set_lock_timeout:
                waited_ms = ticket.decision.lock_timeout_ms
        else:
            facts = SessionFacts(self.version_for(state.server_version), True)
            statements = tuple(item[0] for item in _analyse(text, facts))
        requests = lock_requests(statements, live)
        blockers, note = report_blockers(state.conninfo(), requests, state.pid)
        target = _waited_for(requests, {b.relation for b in blockers})
        timeout = LockTimeout(text, target.relation if target else None,
                              target.mode if target else None, blockers,
                              lock_timeout_ms=waited_ms, orig=error, note=note)
        timeout.__cause__ = error
        logger.info("%s", timeout)
        return timeout


@lru_cache(maxsize=32)
def _guard_for(policy: Policy) -> Guard:
    return Guard(policy)


def lock_requests(statements: Sequence[Statement], live: LiveCatalog | None,
                  ) -> list[LockRequest]:
    """The table locks the statements ask for, strongest first (new relations left out)."""
    requests = []
    for statement in statements:
        for lock in statement.locks:
            if live is not None and live.catalog.is_new(lock.relation):
                continue
            oid = live.oid_of(lock.relation) if live is not None else None
            requests.append(LockRequest(lock.relation, lock.mode, oid))
    return sorted(requests, key=lambda r: -r.mode)


def _sent_statements(decision: Decision, version: int) -> tuple[Statement, ...]:
    """What reaches the server for this decision: the plan's statements when the
    statement is rewritten (``TRUNCATE`` sent as ``DELETE`` takes ROW EXCLUSIVE)."""
    if decision.plan is None:
        return decision.statements
    return tuple(analyze_statement(step.sql, version=version) for step in decision.plan.steps)


def _waited_for(requests: list[LockRequest], blocked: set[str]) -> LockRequest | None:
    for request in requests:
        if request.relation in blocked:
            return request
    return requests[0] if requests else None


def _index_is_invalid(session: Session, index: str) -> bool:
    """The index exists and is INVALID (a concurrent build failed or is in progress)."""
    rows = session.run("SELECT EXISTS (SELECT 1 FROM pg_index WHERE indexrelid = "
                       "to_regclass(%s) AND NOT indisvalid)", [index])
    return bool(rows and rows[0][0])


def _log(decision: Decision) -> None:
    for waiver in decision.waived:
        level = logging.INFO if waiver.why.startswith("allowed") else logging.DEBUG
        logger.log(level, "safeddl: %s not enforced for `%s`: %s", waiver.finding.rule,
                   shorten(decision.statement.sql, 80), waiver.why)
    for finding in decision.warnings:
        logger.warning("safeddl: %s", finding.message)


# =========================================================================== settings


def apply_settings(session: Session, values: Mapping[str, str], *, local: bool) -> None:
    """``set_config`` for each setting in one round trip (``local``: SET LOCAL)."""
    calls = ", ".join("set_config(%s, %s, %s)" for _ in values)
    params: list[Any] = []
    for name, value in values.items():
        params.extend([name, value, local])
    session.run(f"SELECT {calls}", params)


def remember_settings(session: Session, names: Sequence[str]) -> None:
    """Read (once per connection) the values to restore after a session-level change."""
    state = session.state
    missing = [n for n in names if n not in state.saved]
    if not missing or state.dirty:
        return
    rows = session.run("SELECT name, current_setting(name), source FROM pg_settings "
                       "WHERE name = ANY(%s)", [missing])
    for name, value, source in rows:
        state.saved[name] = (value, source)


def restore_settings(session: Session) -> None:
    """Put back the session settings safeddl changed (RESET when they were not set in
    the session before). They stay marked as changed when this fails."""
    state = session.state
    dirty = state.dirty
    if not dirty:
        return
    values = {n: state.saved[n][0] for n in dirty
              if n in state.saved and state.saved[n][1] == "session"}
    resets = [n for n in dirty if n not in values]
    if values:
        apply_settings(session, values, local=False)
    if resets:
        session.run("; ".join(f"RESET {name}" for name in resets if name in _SETTINGS))
    state.dirty = ()


def _restore_or_log(session: Session) -> None:
    """Restore after a statement. When that fails the connection is closed rather than
    handed on with a changed lock_timeout (a pool replaces it); the statement's own
    outcome is not hidden."""
    try:
        restore_settings(session)
    except Exception as exc:  # noqa: BLE001 - must not hide the statement's own outcome
        logger.warning("safeddl: could not restore lock_timeout/statement_timeout (%s); "
                       "closing the connection", exc)
        try:
            session.discard()
        except Exception as close_error:  # noqa: BLE001 - already failing: just report
            logger.warning("safeddl: closing the connection failed too: %s", close_error)


# =========================================================================== context


_ALLOWANCES: contextvars.ContextVar[Allowances] = contextvars.ContextVar(
    "safeddl_allowances", default=())


@dataclass(frozen=True)
class Scope:
    """A ``with safeddl.guard(target):`` block: this Guard for that engine/connection."""

    target: Any
    guard: Guard = field(compare=False)


_SCOPES: contextvars.ContextVar[tuple[Scope, ...]] = contextvars.ContextVar(
    "safeddl_scopes", default=())


current_scopes = _SCOPES.get
"""The active ``guard()`` blocks of this thread/task (bound method: cheap to call)."""


def scoped_guard(candidates: Sequence[Any]) -> Guard | None:
    """The innermost ``guard()`` block's Guard for one of these targets, if any."""
    for scope in reversed(_SCOPES.get()):
        for candidate in candidates:
            if scope.target is candidate:
                return scope.guard
    return None


@contextmanager
def allow(*rule_ids: str, reason: str) -> Iterator[None]:
    """Let these rules pass inside the block (this thread / task only); the reason is
    logged whenever it lets a statement through."""
    if not rule_ids:
        raise ConfigError("safeddl.allow() needs at least one rule id")
    known = set(known_rules())
    unknown = [r for r in rule_ids if r not in known]
    if unknown:
        raise ConfigError(f"safeddl.allow(): unknown rule id(s) {', '.join(unknown)}")
    if not reason or not reason.strip():
        raise ConfigError("safeddl.allow() needs a reason")
    logger.debug("safeddl: allowing %s in this block: %s", ", ".join(rule_ids), reason)
    token = _ALLOWANCES.set(_ALLOWANCES.get() + tuple((r, reason) for r in rule_ids))
    try:
        yield
    finally:
        _ALLOWANCES.reset(token)


@lru_cache(maxsize=1)
def default_policy() -> Policy:
    """``Policy.from_sources()`` (pyproject.toml and SAFEDDL_* variables), read once."""
    return Policy.from_sources()


@contextmanager
def guard(target: Any, policy: Policy | None = None) -> Iterator[Guard]:
    """Guard the statements run on ``target`` (an SQLAlchemy Engine / AsyncEngine /
    Connection / AsyncConnection, or a psycopg Connection) inside the block, in this
    thread or task. A permanent, dormant hook is put on the target the first time."""
    from safeddl.integrations import scope_target

    key = scope_target(target)
    active = Guard.for_policy(policy if policy is not None else default_policy())
    token = _SCOPES.set(_SCOPES.get() + (Scope(key, active),))
    try:
        yield active
    finally:
        _SCOPES.reset(token)


__all__ = [
    "ConnectionState",
    "Decision",
    "Guard",
    "Plan",
    "PlanStep",
    "Rewriter",
    "Session",
    "SessionFacts",
    "Ticket",
    "Waiver",
    "allow",
    "current_rewriter",
    "decide",
    "default_policy",
    "guard",
    "lock_requests",
    "looks_like_dml",
    "needs_catalog",
    "set_rewriter",
    "state_of",
]
