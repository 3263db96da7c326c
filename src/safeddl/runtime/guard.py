"""The runtime guard, independent of the driver integration.

The pure decision for one statement text is :func:`safeddl.runtime.decision.decide`.
:class:`Guard` applies decisions to a live session through the small
:class:`~safeddl.runtime.session.Session` port that each
integration (SQLAlchemy events, psycopg cursors) implements: bounded lock waits
(``SET LOCAL`` in a transaction, a session setting restored afterwards outside one),
refusal before anything is sent, pre-flight, and the lock-timeout report.

Hot path: a statement whose decision is "nothing to do" (plain DML) is remembered by
its text; later executions cost one set lookup (:meth:`Guard.passes`). Decisions that
do not depend on the catalog are cached by (text, version, in transaction, allowed
rules); only DDL that locks existing relations reads the live catalog.

Rewrites: a rewriter (see :func:`set_rewriter`) turns findings whose action is
``rewrite`` into a :class:`~safeddl.runtime.plan.Plan` executed step by step; the last step replaces the
statement. Without one, ``rewrite`` refuses with the safe alternative spelled out.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from safeddl.analysis import Statement, analyze_statement
from safeddl.analysis.locktable import NEWEST, OLDEST
from safeddl.locks import LockMode
from safeddl.model import shorten
from safeddl.runtime.blockers import LockRequest, read_blockers, report_blockers
from safeddl.runtime.decision import analyse, current_rewriter, decide, needs_catalog, use_rewriter
from safeddl.runtime.errors import (
    DEADLOCK_DETECTED,
    LOCK_NOT_AVAILABLE,
    LockTimeout,
    PreflightBlocked,
    SafeDDLError,
    is_lock_timeout,
    sqlstate_of,
)
from safeddl.runtime.interrupted import PlanInterrupted, PlanStepLockTimeout
from safeddl.runtime.live_catalog import LiveCatalog, names_in
from safeddl.runtime.plan import Decision, PlanStep, Rewriter, SessionFacts
from safeddl.runtime.resume import busy, check_expectations, holds, wait_while_busy
from safeddl.runtime.policy import Policy, RuleAction, as_timedelta
from safeddl.runtime.scope import ALLOWANCES, Allowances
from safeddl.runtime.session import (
    ConnectionState,
    Params,
    Session,
    apply_settings,
    remember_settings,
    restore_or_discard,
)
from safeddl.runtime.tracking import LockTracker, watch_commands

logger = logging.getLogger("safeddl")

_PLAIN_LIMIT = 20_000
_DECISION_LIMIT = 4_096
_NOWAIT = re.compile(r"(?i)\bNOWAIT\b")
# Sent instead of the statement when the guard ran every step of a plan itself.
NOOP = "DO $$BEGIN END$$"


def set_rewriter(rewriter: Rewriter | None) -> None:
    """Register the rewriter every Guard uses (None: safeddl's own exact rewrites,
    :func:`safeddl.runtime.rewrite.rewrite`; to have none, set the rules' actions in the
    Policy instead)."""
    use_rewriter(rewriter)
    _guard_for.cache_clear()


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
    leaves: str = ""  # the state the plan's steps so far have left


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
                                ALLOWANCES.get(), version)
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
                    restore_or_discard(session)
                raise
        return ticket

    def track(self, state: ConnectionState, statements: Sequence[Statement], text: str,
              params: Params = None, many: bool = False) -> None:
        """A statement in an open transaction that needs nothing but the lock ledger
        (see :attr:`tracked`): check its lock order, record its locks."""
        self.tracker.before(state, statements, text, params, many, ALLOWANCES.get(),
                            self.version_for(state.server_version))

    def after(self, ticket: Ticket, session: Session) -> None:
        """The statement succeeded: restore what was changed for it."""
        if ticket.restore:
            restore_or_discard(session)

    def failed(self, ticket: Ticket | None, text: str, session: Session,
               error: BaseException) -> SafeDDLError | None:
        """The statement failed: restore, and turn a lock timeout into LockTimeout
        (with the blocking sessions). Returns the exception to raise instead, if any."""
        if sqlstate_of(error) in (LOCK_NOT_AVAILABLE, DEADLOCK_DETECTED):
            ledger = session.state.ledger  # what it waited for was never granted
            ledger.not_granted(ledger.mark)
        if ticket is not None and ticket.decision.plan is not None and ticket.replacement != NOOP:
            self._undo_plan(ticket, session, ticket.decision.plan.steps[-1])
        if ticket is not None and ticket.restore:
            restore_or_discard(session)
        if ticket is not None and ticket.decision.plan is not None \
                and ticket.replacement == NOOP and not isinstance(error, SafeDDLError):
            total = len(ticket.decision.plan.steps)
            return PlanInterrupted(ticket.decision.statement.sql, NOOP, total, total,
                                   ticket.leaves or "every step had completed",
                                   purpose="every step had completed; this no-op stands in "
                                           "for the statement", orig=error)
        if not is_lock_timeout(error) or isinstance(error, SafeDDLError) or _NOWAIT.search(text):
            return None
        return self._lock_timeout(ticket, text, session.state, error)

    # -- deciding -------------------------------------------------------------------------
    def _decision(self, text: str, session: Session) -> tuple[Decision, LiveCatalog | None]:
        state = session.state
        version = self.version_for(state.server_version)
        in_transaction = session.in_transaction()
        allowed = ALLOWANCES.get()
        key = (text, version, in_transaction, allowed)
        cached = self._decisions.get(key)
        if cached is not None:
            return cached, None
        rewriter = self.rewriter or current_rewriter()
        facts = SessionFacts(version, in_transaction)
        statements = [item[0] for item in analyse(text, facts)]
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
        """Run the plan's steps, resuming where an earlier, interrupted run (or another
        session running the same plan) got to: a step whose effect is already there is
        skipped, a step another session is running is waited for. The last step is sent
        by the integration instead of the statement, unless it needs its own transaction:
        then the guard runs it too and a no-op is sent. A failure raises PlanInterrupted
        (PlanStepLockTimeout on a lock timeout) naming the step and the state left."""
        plan = ticket.decision.plan
        assert plan is not None
        if ticket.decision.action is RuleAction.REWRITE:
            logger.info("safeddl: instead of `%s` (%s), running:\n%s",
                        shorten(ticket.decision.statement.sql, 80),
                        ", ".join(f.rule for f in ticket.decision.deciding), plan.render())
        if not plan.steps:
            return
        try:
            check_expectations(ticket.decision, session)
        except Exception as exc:
            if is_lock_timeout(exc) and not isinstance(exc, SafeDDLError):
                raise self._lock_timeout(ticket, ticket.text, session.state, exc) from exc
            raise
        run_all = plan.steps[-1].needs_autocommit
        for number, step in enumerate(plan.steps):
            if number == len(plan.steps) - 1 and not run_all:
                self._step_timeout(ticket, session, step)
                ticket.replacement = step.sql
                return
            self._run_step(ticket, session, step, number)
            ticket.steps_done += 1
        ticket.replacement = NOOP

    def _run_step(self, ticket: Ticket, session: Session, step: PlanStep, number: int) -> None:
        for attempt in range(_RACE_ATTEMPTS):
            try:
                wait_while_busy(session, step)
                if step.only_if_invalid_index and not _index_is_invalid(
                        session, step.only_if_invalid_index):
                    return
                if step.done_if is not None and holds(session, step.done_if):
                    logger.info("safeddl: already done, skipped: %s", shorten(step.sql))
                    ticket.leaves = step.leaves or ticket.leaves
                    return
                logger.info("safeddl: rewrite step: %s", shorten(step.sql))
                self._step_timeout(ticket, session, step)
                session.run(step.sql)
            except Exception as exc:
                if self._done_meanwhile(session, step):
                    logger.info("safeddl: another session did `%s` meanwhile",
                                shorten(step.sql))
                    ticket.leaves = step.leaves or ticket.leaves
                    return
                if attempt + 1 < _RACE_ATTEMPTS and _lost_a_race(exc) and step.done_if:
                    # Another session running the same plan got in the way (the name
                    # taken a moment earlier, a deadlock between two concurrent builds):
                    # clean up this attempt's leftover, and try the step again.
                    logger.info("safeddl: `%s` collided with another session (%s); trying "
                                "again", shorten(step.sql), sqlstate_of(exc))
                    self._undo_plan(ticket, session, step, earlier_steps=False)
                    time.sleep(random.uniform(0.05, 0.3))
                    continue
                raise self._interrupted(ticket, session, step, number, exc) from exc
            ticket.leaves = step.leaves or ticket.leaves
            return

    @staticmethod
    def _done_meanwhile(session: Session, step: PlanStep) -> bool:
        """After a failure: another session running the same plan did this step (it
        created the same index or constraint first)."""
        if step.done_if is None:
            return False
        try:
            wait_while_busy(session, step)
            return holds(session, step.done_if)
        except Exception:  # noqa: BLE001 - the connection is gone: the failure stands
            return False

    def _interrupted(self, ticket: Ticket, session: Session, step: PlanStep, number: int,
                     exc: Exception) -> Exception:
        """The error for a failed step: the driver's own when nothing was changed, else
        one naming the step and the state left."""
        plan = ticket.decision.plan
        assert plan is not None
        leftover = self._undo_plan(ticket, session, step)
        parts = [ticket.leaves] if ticket.leaves else []
        if leftover:
            parts.append(f"the interrupted build may have left the INVALID index {leftover} "
                         "(running the statement again drops it and builds it anew)")
        state = "; ".join(parts) or "nothing was changed"
        where = (number + 1, len(plan.steps), state)
        if is_lock_timeout(exc) and not isinstance(exc, SafeDDLError):
            return self._lock_timeout(ticket, step.sql, session.state, exc, step=where)
        if not parts and (sqlstate_of(exc) or "")[:2] in ("22", "23", "42"):
            return exc  # nothing changed and the statement itself is at fault: as written
        return PlanInterrupted(ticket.decision.statement.sql, step.sql, number + 1,
                               len(plan.steps), state, purpose=step.purpose, orig=exc)

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

    def _undo_plan(self, ticket: Ticket, session: Session, failed: PlanStep,
                   earlier_steps: bool = True) -> str | None:
        """After a failed step (outside a transaction block, where the steps before it
        were committed): drop the INVALID index the failed concurrent build left (under
        the same SHARE UPDATE EXCLUSIVE the build took; never one another session is
        still building), and run the undo steps a custom plan gives, last first.
        safeddl's own plans give none: they resume when the statement runs again.
        Returns the INVALID index that may be left, if any."""
        plan = ticket.decision.plan
        if plan is None:
            return None
        try:
            if session.in_transaction():  # rolled back as a whole, or the connection is gone
                return failed.leftover_index if failed.needs_autocommit else None
        except Exception:  # noqa: BLE001 - a closed connection: nothing can be done
            return failed.leftover_index
        actions: list[PlanStep] = []
        if failed.leftover_index:
            actions.append(PlanStep(
                f"DROP INDEX CONCURRENTLY IF EXISTS {failed.leftover_index}",
                needs_autocommit=True, statement_timeout_ms=0,
                only_if_invalid_index=failed.leftover_index,
                purpose="drop the INVALID index the failed concurrent build left"))
        for step in reversed(plan.steps[:ticket.steps_done] if earlier_steps else ()):
            actions.extend(step.undo)
        leftover = None
        for action in actions:
            try:
                if action.only_if_invalid_index and (
                        busy(session, action) or not _index_is_invalid(
                            session, action.only_if_invalid_index)):
                    continue  # gone, valid, or another session's build in progress
                self._step_timeout(ticket, session, action)
                logger.info("safeddl: cleaning up after a failed step: %s", shorten(action.sql))
                session.run(action.sql)
            except Exception as exc:  # noqa: BLE001 - the original error is what matters
                if action.only_if_invalid_index:
                    leftover = action.only_if_invalid_index
                    logger.warning("safeddl: could not drop the INVALID index %s (%s); running "
                                   "the statement again drops it first", leftover, exc)
                else:
                    logger.warning("safeddl: could not undo a step of the rewrite (%s); run "
                                   "it yourself: %s;", exc, action.sql)
        return leftover

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
                      error: BaseException, step: tuple[int, int, str] | None = None,
                      ) -> LockTimeout:
        """``step``: (number, of, state left) when ``text`` is a step of the ticket's plan
        (its own locks are reported, not the statement's)."""
        live: LiveCatalog | None = None
        waited_ms: int | None = None
        if ticket is not None:
            statements, live = ticket.decision.statements, ticket.live
            if step is not None:
                statements = (analyze_statement(text, version=self.version_for(
                    state.server_version)),)
            if ticket.decision.set_lock_timeout:
                waited_ms = ticket.decision.lock_timeout_ms
        else:
            facts = SessionFacts(self.version_for(state.server_version), True)
            statements = tuple(item[0] for item in analyse(text, facts))
        requests = lock_requests(statements, live)
        blockers, note = report_blockers(state.conninfo(), requests, state.pid)
        target = _waited_for(requests, {b.relation for b in blockers})
        if step is not None and ticket is not None:
            timeout: LockTimeout = PlanStepLockTimeout(
                text, target.relation if target else None, target.mode if target else None,
                blockers, lock_timeout_ms=waited_ms, orig=error, note=note,
                plan_statement=ticket.decision.statement.sql, number=step[0], total=step[1],
                state=step[2])
        else:
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


_RACE_ATTEMPTS = 4
# duplicate_table, duplicate_object, deadlock_detected: what two sessions running the same
# plan step at the same moment get.
_RACE_STATES = frozenset({"42P07", "42710", "40P01"})


def _lost_a_race(exc: BaseException) -> bool:
    state = sqlstate_of(exc)
    if state in _RACE_STATES:
        return True
    # the same name inserted into pg_class by two sessions at once
    constraint = getattr(getattr(exc, "diag", None), "constraint_name", None)
    return state == "23505" and isinstance(constraint, str) and constraint.startswith("pg_")


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


__all__ = ["Guard", "Ticket", "lock_requests", "set_rewriter", "state_of"]
