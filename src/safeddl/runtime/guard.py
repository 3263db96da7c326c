"""The runtime guard, independent of the driver integration.

The pure decision for one statement text is :func:`safeddl.runtime.decision.decide`.
:class:`Guard` applies decisions to a live session through the small
:class:`~safeddl.runtime.session.Session` port that each
integration (SQLAlchemy events, psycopg cursors) implements: bounded lock waits
(literal ``SET LOCAL`` and a savepoint in a transaction; in autocommit a transactional
statement gets a short transaction of its own; only a statement that cannot run in a
transaction block, on a connection pinned to one server session, gets a session
setting, restored afterwards: see :mod:`safeddl.runtime.topology`), refusal before
anything is sent, pre-flight, and the lock-timeout report, read on the same server
connection.

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
from datetime import timedelta
from functools import lru_cache
from typing import Any

from safeddl.analysis import Action, Statement, analyze_statement
from safeddl.analysis.locktable import NEWEST, OLDEST
from safeddl.caches import MiB, TextCache
from safeddl.locks import LockMode
from safeddl.model import shorten
from safeddl.runtime.blockers import (
    Blocker,
    LockRequest,
    RowWait,
    read_all_blockers,
    read_blockers,
    report_blockers,
    row_wait,
)
from safeddl.runtime.citus import add_citus_facts, read_citus_blockers
from safeddl.runtime.decision import (
    analyse,
    current_rewriter,
    decide,
    looks_like_dml,
    needs_catalog,
    use_rewriter,
)
from safeddl.runtime.errors import (
    CHECK_VIOLATION,
    LockTimeout,
    PreflightBlocked,
    SafeDDLError,
    UnsafeStatement,
    as_driver_error,
    driver_class_for,
    driver_state,
    is_lock_timeout,
    server_context,
    sqlstate_of,
)
from safeddl.runtime.interrupted import PlanInterrupted, PlanStepLockTimeout
from safeddl.runtime.live_catalog import LiveCatalog, names_in, procedures_in
from safeddl.runtime.plan import Decision, PlanStep, Rewriter, SessionFacts
from safeddl.runtime.policy import UNPARSED_RULE, Policy, RuleAction, as_timedelta
from safeddl.runtime.resume import busy, check_expectations, holds, wait_while_busy
from safeddl.runtime.scope import ALLOWANCES, Allowances
from safeddl.runtime.session import (
    ConnectionState,
    Params,
    Session,
    apply_settings,
    detect_topology,
    remember_settings,
    restore_or_discard,
)
from safeddl.runtime.topology import SAVEPOINT
from safeddl.runtime.tracking import LockTracker, Tracked, watch_commands
from safeddl.sql.names import local_name
from safeddl.sql.scan import scans_remembered

logger = logging.getLogger("safeddl")

# The Guard's caches, per server version (bounds in entries and bytes; measured: a
# decision holds about 950 bytes besides its text, what the ledger needs ~1,000)
PLAIN_ENTRIES, PLAIN_BYTES = 20_000, 8 * MiB
TRACKED_ENTRIES, TRACKED_BYTES = 20_000, 16 * MiB
DECISION_ENTRIES, DECISION_BYTES = 4_096, 8 * MiB
LIVE_DECISIONS = 64  # decisions kept with one live catalog (it lives a few seconds)
_NOWAIT = re.compile(r"(?i)\bNOWAIT\b")
# Sent instead of the statement when the guard ran every step of a plan itself.
NOOP = "DO $$BEGIN END$$"
_REPORT_STATEMENT_TIMEOUT = "2000ms"  # bounds the blocker report (Citus asks every node)
_ABORT_AGAIN = ("DO $safeddl$BEGIN RAISE EXCEPTION USING ERRCODE = 'lock_not_available', "
                "MESSAGE = 'safeddl: a lock wait timed out in this transaction, which is "
                "aborted: roll it back'; END$safeddl$")
Report = tuple[list[Blocker], str | None]


def set_rewriter(rewriter: Rewriter | None) -> None:
    """Register the rewriter every Guard uses (None: safeddl's own exact rewrites,
    :func:`safeddl.runtime.rewrite.rewrite`; to have none, set the rules' actions in the
    Policy instead)."""
    use_rewriter(rewriter)
    _guard_for.cache_clear()


# The state of each driver connection, by id(): the connection object itself is left
# alone (reading its ``__dict__`` makes CPython 3.11+ give up the compact attribute
# storage of that object, and every attribute read of psycopg's own code on it gets
# slower: measured with callgrind, about 5,000 instructions per statement); the entry
# goes when the connection is collected, before its id can be reused.
STATES: dict[int, ConnectionState] = {}
_STATES_LOCK = threading.Lock()


def state_of(driver_connection: Any) -> ConnectionState:
    """The state of a psycopg (sync or async) connection, created on first use."""
    state = STATES.get(id(driver_connection))
    if state is not None:
        return state
    info = driver_connection.info
    new = ConnectionState(info.backend_pid, info.server_version // 10000, info)
    with _STATES_LOCK:
        key = id(driver_connection)
        state = STATES.get(key)
        if state is None:
            weakref.finalize(driver_connection, STATES.pop, key, None)
            watch_commands(driver_connection, new)
            STATES[key] = state = new
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
    wrapped: bool = False  # autocommit: safeddl opened a transaction for the statement
    ledger_mark: bool = False  # the lock ledger has a savepoint before the statement
    savepoint: bool = False  # in a transaction block: SAVEPOINT before the statement


# =========================================================================== the guard


class Guard:
    """Applies a Policy to statements on live sessions. One per policy (see
    :meth:`for_policy`); shared by every connection using that policy."""

    def __init__(self, policy: Policy, rewriter: Rewriter | None = None) -> None:
        self.policy = policy
        self.rewriter = rewriter
        # server version -> texts needing nothing (the values mean nothing)
        self.plain: dict[int, TextCache[str, bool]] = {}
        self._decisions: TextCache[tuple[str, int, bool, Allowances], Decision] = TextCache(
            "decisions", DECISION_ENTRIES, DECISION_BYTES, per_char=1.0, overhead=1_000)
        self.tracker = LockTracker(policy)  # lock order and the ledger of transactions
        # server version -> texts needing nothing but the ledger -> what it needs of them
        self.tracked: dict[int, TextCache[str, Tracked]] = {}
        self._unbounded_warned: TextCache[str, bool] = TextCache(
            "unbounded-wait warnings", 1_000, 1 << 20, per_char=1.0, overhead=200)

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
        ``many``) give the keys of the rows the statement locks.

        An internal failure of safeddl (a bug: never a driver's or server's error) does
        not reach the caller as such: it is logged with the statement and the statement
        is treated as one safeddl cannot read (``unparsed_ddl`` / ``unparsed_dml``)."""
        try:
            return self._before(text, session, params, many)
        except SafeDDLError:
            raise
        except Exception as exc:
            if _from_the_driver(exc):
                raise
            self._internal_failure(text, exc)
            return None

    def _internal_failure(self, text: str, error: Exception) -> None:
        """Follow the policy for statements safeddl cannot read: refuse (DDL, by
        default) with an UnsafeStatement naming the reason, or let it pass."""
        allowed = dict(ALLOWANCES.get())
        action = (RuleAction.ALLOW if UNPARSED_RULE in allowed
                  else self.policy.unparsed_action(looks_like_dml(text)))
        kind = "DML" if looks_like_dml(text) else "DDL"
        setting = "unparsed_dml" if kind == "DML" else "unparsed_ddl"
        what = f"{type(error).__name__}: {error}"
        level = logging.ERROR if _first_failure(text, error) else logging.DEBUG
        logger.log(level, "safeddl: internal error while checking `%s` (%s); this is a bug "
                   "in safeddl, please report it with the statement. The statement is "
                   "treated as one safeddl cannot read (%s = %s).", shorten(text, 400), what,
                   setting, action.value, exc_info=level == logging.ERROR)
        if action is not RuleAction.REFUSE:
            return
        message = (
            f"safeddl refused this statement (it was not sent):\n{UNPARSED_RULE}: safeddl "
            f"failed internally while checking `{shorten(text)}` ({what}), so it cannot tell "
            "which locks the statement takes or for how long. This is a bug in safeddl: "
            "please report it with the statement.\nStatements safeddl cannot read are "
            f"refused when they are {kind} ({setting} = \"refuse\"). Run it under "
            f"safeddl.allow(\"{UNPARSED_RULE}\", reason=...) once you have checked its "
            f"locks by hand, or set {setting} = \"warn\" to let such statements through.")
        raise UnsafeStatement(UNPARSED_RULE, text, None, message) from error

    def _before(self, text: str, session: Session, params: Params,
                many: bool) -> Ticket | None:
        state = session.state
        known = self.tracked.get(state.server_version)
        tracked = known.get(text) if known is not None else None
        if tracked is not None:  # needs nothing but the lock ledger
            if session.in_transaction():
                self.track(state, tracked, text, params, many)
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
        marked = False
        if self.tracker.enabled and session.in_transaction():
            version = self.version_for(state.server_version)
            marked = _mark_ledger(state, decision)
            try:
                self.tracker.before(state, _sent_statements(decision, version), text, params,
                                    many, ALLOWANCES.get(), version)
            except BaseException:
                _unmark_ledger(state, marked, forget=True)
                raise
        _log(decision)
        if not decision.set_lock_timeout and decision.plan is None:
            _unmark_ledger(state, marked, forget=False)
            return None
        ticket = Ticket(self, decision, text, live=live, ledger_mark=marked)
        try:
            detect_topology(session)
            if self.policy.preflight.enabled:
                self._preflight(ticket, session)
            self._bound_waits(ticket, session)
        except BaseException:
            _unmark_ledger(state, marked, forget=True)  # it was not sent
            self._abandon(ticket, session)
            raise
        if decision.plan is not None:
            try:
                self._run_plan(ticket, session)
            except BaseException:
                self._abandon(ticket, session)
                raise
        return ticket

    def track(self, state: ConnectionState, tracked: Tracked, text: str,
              params: Params = None, many: bool = False) -> None:
        """A statement in an open transaction that needs nothing but the lock ledger
        (see :attr:`tracked`): check its lock order, record its locks (the fast path
        when no finding is possible, the full check otherwise). An internal failure is
        logged with the statement, which goes on (plain DML passes)."""
        try:
            if many or not self.tracker.fast(state, tracked, params):
                self.tracker.before(state, tracked.statements, text, params, many,
                                    ALLOWANCES.get(), self.version_for(state.server_version))
        except SafeDDLError:
            raise
        except Exception as exc:
            if _from_the_driver(exc):
                raise
            self._internal_failure(text, exc)

    def after(self, ticket: Ticket, session: Session) -> None:
        """The statement succeeded: commit the transaction safeddl opened for it (in
        autocommit), release its savepoint, restore what was changed for it."""
        _unmark_ledger(session.state, ticket.ledger_mark, forget=False)
        ticket.ledger_mark = False
        try:
            if ticket.wrapped:
                ticket.wrapped = False
                session.run("COMMIT")
            elif ticket.savepoint:
                ticket.savepoint = False
                session.run(f"RELEASE SAVEPOINT {SAVEPOINT}")
        finally:
            if ticket.restore:
                restore_or_discard(session)

    def failed(self, ticket: Ticket | None, text: str, session: Session,
               error: BaseException) -> SafeDDLError | None:
        """The statement failed: roll back what safeddl opened, read the blockers on the
        same server connection, restore, and turn a lock timeout into LockTimeout (with
        the blocking sessions). Returns the exception to raise instead, if any."""
        lock = (is_lock_timeout(error) and not isinstance(error, SafeDDLError)
                and not _NOWAIT.search(text))
        report: Report | None = None
        if ticket is not None:  # rolled back to the savepoint: those locks are gone
            _unmark_ledger(session.state, ticket.ledger_mark, forget=lock and ticket.savepoint)
            ticket.ledger_mark = False
        wait = row_wait(server_context(error)) if lock else None  # a row's lock, or None
        if ticket is not None and (ticket.wrapped or ticket.savepoint):
            report = self._close_failed(ticket, session, lock, wait)
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
        if not lock:
            return None
        return self._lock_timeout(ticket, text, session, error, report)

    def _close_failed(self, ticket: Ticket, session: Session, lock: bool,
                      wait: RowWait | None) -> Report | None:
        """After the guarded statement failed in the transaction safeddl opened (roll it
        back) or behind safeddl's savepoint: on a lock timeout, read who was in the way
        on this very server connection (no second connection, which a full pool would
        make wait), then leave the user's transaction aborted as the server had it."""
        wrapped, ticket.wrapped, ticket.savepoint = ticket.wrapped, False, False
        requests = lock_requests(ticket.decision.statements, ticket.live)
        try:
            if wrapped:
                session.run("ROLLBACK")
                return self._read_report(session, requests, wait, own_transaction=True) \
                    if lock else None
            if not lock:
                return None
            session.run(f"ROLLBACK TO SAVEPOINT {SAVEPOINT}")
            try:
                return self._read_report(session, requests, wait, own_transaction=False)
            finally:
                _abort_again(session)
        except Exception as exc:  # noqa: BLE001 - must not hide the statement's own error
            logger.warning("safeddl: could not read the sessions blocking the lock: %s", exc)
            return [], f"(safeddl could not read the blocking sessions: {exc})"

    def _abandon(self, ticket: Ticket, session: Session) -> None:
        """The statement will not be sent: end what was opened for it."""
        _unmark_ledger(session.state, ticket.ledger_mark, forget=True)
        ticket.ledger_mark = False
        if ticket.wrapped:
            ticket.wrapped = False
            _rollback_quietly(session)
        if ticket.restore:
            restore_or_discard(session)

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
        with scans_remembered():  # a large text: scanned once, not kept afterwards
            analysed = analyse(text, facts)
            statements = [item[0] for item in analysed]
            if not needs_catalog(statements):
                decision = decide(text, facts, self.policy, allowed, rewriter, analysed)
                self._remember(key, decision, state.server_version)
                return decision, None
        enrich = None
        if detect_topology(session).citus:
            def enrich(live: LiveCatalog) -> None:
                add_citus_facts(live, session.run, in_transaction=in_transaction)
        live = state.catalogs.get(names_in(statements), session.run, enrich,
                                  procedures_in(statements))
        # the same text against the same live catalog (kept a short while): the same
        # decision (a CALL of a procedure, run over and over, is decided once)
        memo = (id(self), key, id(rewriter))
        remembered: Decision | None = live.decisions.get(memo)
        if remembered is not None:
            return remembered, live
        facts = SessionFacts(version, in_transaction, live.catalog, live=True)
        decided = decide(text, facts, self.policy, allowed, rewriter)
        if len(live.decisions) < LIVE_DECISIONS:
            live.decisions[memo] = decided
        return decided, live

    def hot_caches(self, server_version: int) -> tuple[TextCache[str, bool],
                                                       TextCache[str, Tracked]]:
        """The texts needing nothing and those needing only the ledger, for this server
        version: created once, then kept (a connection's hot path holds on to them)."""
        plain = self.plain.get(server_version)
        if plain is None:
            plain = self.plain.setdefault(server_version, TextCache(
                "plain texts", PLAIN_ENTRIES, PLAIN_BYTES, per_char=1.0, overhead=100))
        tracked = self.tracked.get(server_version)
        if tracked is None:
            tracked = self.tracked.setdefault(server_version, TextCache(
                "texts needing the ledger", TRACKED_ENTRIES, TRACKED_BYTES, per_char=1.0,
                overhead=1_100))
        return plain, tracked

    def _remember(self, key: tuple[str, int, bool, Allowances], decision: Decision,
                  server_version: int) -> None:
        text = key[0]
        if decision.is_plain:
            plain, tracked = self.hot_caches(server_version)
            if self.tracker.tracks(decision.statements):
                tracked.put(text, self.tracker.compile(decision.statements), text)
            else:
                plain.put(text, True, text)
        self._decisions.put(key, decision, text)

    def version_for(self, server_version: int) -> int:
        if self.policy.pg_version is not None:
            return self.policy.pg_version
        return min(max(server_version, OLDEST), NEWEST)

    # -- bounding the wait ----------------------------------------------------------------
    def _bound_waits(self, ticket: Ticket, session: Session) -> None:
        """Settings that live and die with one transaction: in a transaction block,
        ``SET LOCAL`` and a savepoint; in autocommit, a transactional statement is sent
        in a short transaction of its own (``BEGIN; SET LOCAL ...; statement; COMMIT``).
        A rewrite plan in autocommit bounds each step on its own (:meth:`_run_step`)."""
        decision = ticket.decision
        if not decision.set_lock_timeout:
            return
        values = _bound_values(decision, None)
        if not decision.session_level:  # in a transaction block
            if any(s.kind is Action.TRANSACTION_CONTROL for s in decision.statements):
                # the text ends or rolls back transactions itself: no savepoint to release
                session.run("; ".join(_set_local(session, values)))
            else:
                session.run("; ".join((*_set_local(session, values),
                                       f"SAVEPOINT {SAVEPOINT}")))
                ticket.savepoint = True
            ticket.statement_timeout_ms = decision.statement_timeout_ms
        elif decision.plan is None:
            self._bound_autocommit(ticket, session, decision.statements, values)
            ticket.statement_timeout_ms = decision.statement_timeout_ms

    def _bound_autocommit(self, ticket: Ticket, session: Session,
                          statements: Sequence[Statement], values: dict[str, str]) -> None:
        """Outside a transaction block: a transaction of its own when the statements can
        run in one, else a session setting only where the session is pinned."""
        if all(s.transactional and s.kind is not Action.TRANSACTION_CONTROL
               for s in statements):
            session.run("; ".join(("BEGIN", *_set_local(session, values))))
            ticket.wrapped = True
            return
        self._bound_outside(ticket, session, statements, values)

    def _bound_outside(self, ticket: Ticket, session: Session,
                       statements: Sequence[Statement], values: dict[str, str]) -> None:
        """A statement that cannot run in a transaction block. On a connection pinned to
        one server session (direct, or ``pool_mode = "session"``): a session setting,
        restored afterwards. Elsewhere no setting at all (it would stay on a pooled
        server connection for other clients): one that takes at most SHARE UPDATE
        EXCLUSIVE (reads and writes go on) runs with an unbounded wait, a warning says
        so; a stronger one is refused."""
        topology = detect_topology(session)
        if not topology.pinned(self.policy.pool_mode):
            strongest = max((lock.mode for s in statements for lock in s.locks),
                            default=LockMode.ACCESS_SHARE)
            sql = "; ".join(s.sql for s in statements)
            if strongest.conflicts_with(LockMode.ROW_EXCLUSIVE):
                raise _unbounded_refusal(sql, strongest)
            self._warn_unbounded(sql, strongest)
            return
        state = session.state
        if "statement_timeout" not in values and "statement_timeout" in state.dirty:
            saved = state.saved.get("statement_timeout")
            if saved is not None:
                values = {**values, "statement_timeout": saved[0]}  # back to the session's
        names = tuple(values)
        remember_settings(session, names)
        ticket.restore = tuple(sorted(set(ticket.restore) | set(names)))
        state.dirty = tuple(sorted(set(state.dirty) | set(names)))
        apply_settings(session, values, local=False)

    def _warn_unbounded(self, sql: str, mode: LockMode) -> None:
        if sql in self._unbounded_warned:
            return
        self._unbounded_warned.put(sql, True, sql)
        logger.warning(
            "safeddl: `%s` cannot run in a transaction block, and this connection is not "
            "pinned to one server session (it goes through a pooler; see pool_mode), so a "
            "session-level lock_timeout could stay on a pooled server connection for other "
            "clients: it runs with no lock_timeout. It takes %s, which does not block reads "
            "or writes while it waits. To bound it, send it on a direct connection or through "
            "a session-pooling pooler with pool_mode = \"session\".",
            shorten(sql, 80), mode.sql_name)

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
                raise self._lock_timeout(ticket, ticket.text, session, exc) from exc
            raise
        run_all = plan.steps[-1].needs_autocommit
        for number, step in enumerate(plan.steps):
            if number == len(plan.steps) - 1 and not run_all:
                self._bound_final(ticket, session, step)
                ticket.replacement = step.sql
                return
            self._resume_step(ticket, session, step, number)
            ticket.steps_done += 1
        ticket.replacement = NOOP

    def _resume_step(self, ticket: Ticket, session: Session, step: PlanStep,
                     number: int) -> None:
        """Run one step unless its effect is already there; when it collides with
        another session running the same plan, clean up and try again."""
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
                self._run_step(ticket, session, step)
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
        one naming the step and the state left (a lock timeout: the step's own lock)."""
        plan = ticket.decision.plan
        assert plan is not None
        if not isinstance(exc, SafeDDLError) and _connection_lost(exc):
            _discard_quietly(session)  # killed backend, restart: the pool must replace it
        leftover = self._undo_plan(ticket, session, step)
        parts = [ticket.leaves] if ticket.leaves else []
        if leftover:
            parts.append(f"the interrupted build may have left the INVALID index {leftover} "
                         "(running the statement again drops it and builds it anew)")
        state = "; ".join(parts) or "nothing was changed"
        where = (number + 1, len(plan.steps), state)
        if isinstance(exc, LockTimeout):  # read on the same connection by _run_step
            return _as_step_timeout(exc, ticket, where)
        if is_lock_timeout(exc) and not isinstance(exc, SafeDDLError):
            return self._lock_timeout(ticket, step.sql, session, exc, step=where)
        if not parts and (sqlstate_of(exc) or "")[:2] in ("22", "23", "42"):
            return exc  # nothing changed and the statement itself is at fault: as written
        interrupted = PlanInterrupted(ticket.decision.statement.sql, step.sql, number + 1,
                                      len(plan.steps), state, purpose=step.purpose, orig=exc)
        if step.fails_like is not None and sqlstate_of(exc) == CHECK_VIOLATION:
            # the original statement fails with its own error here (a NOT NULL: 23502):
            # handlers written for that error catch this one too
            sqlstate, message = step.fails_like
            driver_class = driver_class_for(exc, sqlstate)
            if driver_class is not None:
                interrupted.fails_as(sqlstate, message)
                as_driver_error(interrupted, PlanInterrupted, (driver_class,),
                                driver_state(exc))
        return interrupted

    def _run_step(self, ticket: Ticket, session: Session, step: PlanStep) -> None:
        """Run one step of a plan (or an undo step). In autocommit a transactional step
        runs in a short transaction of its own with ``SET LOCAL``; on a lock timeout the
        blockers are read on the same connection and LockTimeout is raised."""
        decision = ticket.decision
        if not (decision.set_lock_timeout and decision.session_level):
            self._step_timeout(ticket, session, step)
            session.run(step.sql)
            return
        statement = self._step_statement(step, session)
        values = _bound_values(decision, step)
        if not statement.transactional:
            self._bound_outside(ticket, session, (statement,), values)
            session.run(step.sql)
            return
        session.run("; ".join(("BEGIN", *_set_local(session, values))))
        try:
            session.run(step.sql)
        except Exception as exc:
            _rollback_quietly(session)
            if is_lock_timeout(exc) and not isinstance(exc, SafeDDLError):
                report = self._read_report(session, lock_requests((statement,), ticket.live),
                                           row_wait(server_context(exc)), own_transaction=True)
                raise self._lock_timeout(ticket, step.sql, session, exc, report,
                                         step=_STEP_NOT_PLACED) from exc
            raise
        except BaseException:
            _rollback_quietly(session)
            raise
        session.run("COMMIT")

    def _bound_final(self, ticket: Ticket, session: Session, step: PlanStep) -> None:
        """Bound the plan's last step, which the integration sends instead of the
        statement."""
        decision = ticket.decision
        if not (decision.set_lock_timeout and decision.session_level):
            self._step_timeout(ticket, session, step)
            return
        self._bound_autocommit(ticket, session, (self._step_statement(step, session),),
                               _bound_values(decision, step))

    def _step_statement(self, step: PlanStep, session: Session) -> Statement:
        return _analyzed(step.sql, self.version_for(session.state.server_version))

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
                logger.info("safeddl: cleaning up after a failed step: %s", shorten(action.sql))
                self._run_step(ticket, session, action)
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
            blockers = self._read_blockers(session, requests, min_age)
            if not blockers:
                return
            if time.monotonic() + options.poll_seconds > deadline:
                raise PreflightBlocked(ticket.text, requests[0].relation, requests[0].mode,
                                       blockers)
            time.sleep(options.poll_seconds)

    # -- lock timeouts --------------------------------------------------------------------
    def _read_blockers(self, session: Session, requests: Sequence[LockRequest],
                       min_age: timedelta | None = None) -> list[Blocker]:
        """The blockers, read on the session itself (its own server backend left out
        through ``pg_backend_pid()``); on Citus from every node of the cluster."""
        if session.state.citus:
            return read_citus_blockers(session.run, requests, min_age=min_age)
        return read_blockers(session.run, requests, None, min_age=min_age)

    def _read_in_the_way(self, session: Session, requests: Sequence[LockRequest],
                         wait: RowWait | None) -> list[Blocker]:
        """After a lock timeout, on the session itself: the holders of the row it waited
        for (``wait``), or of conflicting table locks, or the sessions queued ahead for
        rows of its tables; on Citus, the table locks on every node of the cluster."""
        if session.state.citus:
            return read_citus_blockers(session.run, requests)
        return read_all_blockers(session.run, requests, None, wait)

    def _read_report(self, session: Session, requests: Sequence[LockRequest],
                     wait: RowWait | None, *, own_transaction: bool) -> Report:
        """Read the blockers on this connection, with a short statement_timeout that dies
        with the transaction (``own_transaction``: the connection is outside one, open a
        short one; else the caller's transaction is usable, behind a savepoint)."""
        try:
            prefix = ("BEGIN",) if own_transaction else ()
            session.run("; ".join((*prefix, *_set_local(
                session, {"statement_timeout": _REPORT_STATEMENT_TIMEOUT}))))
            try:
                blockers = self._read_in_the_way(session, requests, wait)
            finally:
                if own_transaction:
                    _rollback_quietly(session)
            return blockers, None
        except Exception as exc:  # noqa: BLE001 - a report must never hide the lock timeout
            logger.warning("safeddl: could not read the sessions blocking the lock: %s", exc)
            return [], f"(safeddl could not read the blocking sessions: {exc})"

    def _report_elsewhere(self, session: Session, requests: Sequence[LockRequest],
                          wait: RowWait | None) -> Report:
        """No savepoint was set (a statement safeddl did not bound failed): read on the
        session when it is outside a transaction, from a second connection only when
        the connection is direct (through a pool it could wait for a free server
        connection, PgBouncer's query_wait_timeout)."""
        state = session.state
        try:
            in_transaction = session.in_transaction()
        except Exception:  # noqa: BLE001 - a broken connection: try a second one below
            in_transaction = True
        if not in_transaction:
            return self._read_report(session, requests, wait, own_transaction=True)
        topology = state.topology
        if topology is None or topology.direct:
            exclude = topology.server_pid if topology is not None else state.client_key
            return report_blockers(state.conninfo(), requests, exclude, wait)
        return [], ("(safeddl did not read the blocking sessions: the transaction is aborted, "
                    "and a second connection through the pooler could wait for a free server "
                    "connection)")

    def _lock_timeout(self, ticket: Ticket | None, text: str, session: Session,
                      error: BaseException, report: Report | None = None,
                      step: tuple[int, int, str] | None = None) -> LockTimeout:
        """``step``: (number, of, state left) when ``text`` is a step of the ticket's plan
        (its own locks are reported, not the statement's)."""
        state = session.state
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
        wait = row_wait(server_context(error))  # a row's lock, not a table's
        blockers, note = report if report is not None else self._report_elsewhere(
            session, requests, wait)
        if wait is not None and wait.own_row:  # a unique check waited for another inserter
            target = requests[0] if requests else None
            timeout = LockTimeout(text, target.relation if target else None, None, blockers,
                                  lock_timeout_ms=waited_ms, orig=error, note=note)
        elif wait is not None:
            written = next((r.relation for r in requests if local_name(r.relation)
                            == wait.relation), wait.relation)
            timeout = LockTimeout(text, written, None, blockers, lock_timeout_ms=waited_ms,
                                  orig=error, note=note, row=wait.ctid)
        elif blockers and all(b.row is not None for b in blockers):  # queued for a row
            target = requests[0] if requests else None
            ctid = blockers[0].row if all(b.certain for b in blockers) else None
            timeout = LockTimeout(text, target.relation if target else None, None, blockers,
                                  lock_timeout_ms=waited_ms, orig=error, note=note, row=ctid)
        else:
            target = _waited_for(requests, {b.relation for b in blockers})
            timeout = LockTimeout(text, target.relation if target else None,
                                  target.mode if target else None, blockers,
                                  lock_timeout_ms=waited_ms, orig=error, note=note)
        if step is not None and ticket is not None:
            timeout = _as_step_timeout(timeout, ticket, step)
        timeout.__cause__ = error
        if not isinstance(error, SafeDDLError):  # caught by handlers for the driver's error
            as_driver_error(timeout, type(timeout), (type(error),), driver_state(error))
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


def _from_the_driver(error: BaseException) -> bool:
    """An error of the driver or the server (it has a SQLSTATE, or comes from psycopg or
    SQLAlchemy): the caller's to see, not an internal failure of safeddl."""
    if sqlstate_of(error) is not None:
        return True
    root = (type(error).__module__ or "").split(".", 1)[0]
    return root in ("psycopg", "psycopg2", "sqlalchemy")


_FAILURES_LIMIT = 1_000
_failures: dict[tuple[str, int, int], None] = {}
_failures_lock = threading.Lock()


def _first_failure(text: str, error: BaseException) -> bool:
    """The first internal failure of this kind on this statement text (later ones are
    logged at DEBUG only, so a statement run in a loop does not flood the log). Texts
    are remembered by length and hash, not kept: a few bytes each, however large."""
    key = (type(error).__name__, len(text), hash(text))
    with _failures_lock:
        if key in _failures:
            return False
        if len(_failures) >= _FAILURES_LIMIT:
            _failures.clear()
        _failures[key] = None
        return True


_LEDGER_MARK = "\x00safeddl-bounded-statement"


def _mark_ledger(state: ConnectionState, decision: Decision) -> bool:
    """Before a bounded statement in a transaction, a savepoint of the ledger only: if
    the statement fails (a lock timeout: it never got its lock), what it would have
    taken is forgotten, so no long-held lock is reported for it at ROLLBACK."""
    if not decision.set_lock_timeout or decision.session_level:
        return False
    ledger = state.ledger
    if ledger and state.transaction_idle():
        ledger.clear()  # the last transaction ended unseen (as the tracker does)
    ledger.savepoint(_LEDGER_MARK)
    return True


def _unmark_ledger(state: ConnectionState, marked: bool, *, forget: bool) -> None:
    if not marked:
        return
    if forget:
        state.ledger.rollback_to(_LEDGER_MARK)
    state.ledger.release(_LEDGER_MARK)


def _bound_values(decision: Decision, step: PlanStep | None) -> dict[str, str]:
    """lock_timeout, and the statement_timeout of the step (or the statement)."""
    values = {"lock_timeout": f"{decision.lock_timeout_ms}ms"}
    wanted = decision.statement_timeout_ms
    if step is not None and step.statement_timeout_ms is not None:
        wanted = step.statement_timeout_ms
    if wanted is not None:
        values["statement_timeout"] = f"{wanted}ms"
    return values


def _set_local(session: Session, values: dict[str, str]) -> list[str]:
    from safeddl.runtime.topology import set_local_sql

    return set_local_sql(values, citus=session.state.citus)


@lru_cache(maxsize=256)
def _analyzed(sql: str, version: int) -> Statement:
    return analyze_statement(sql, version=version)


def _connection_lost(exc: BaseException) -> bool:
    """The server connection is gone: no SQLSTATE (the socket closed), a connection
    exception (08xxx) or an operator intervention that ends the session (57P0x)."""
    state = sqlstate_of(exc)
    return state is None or state.startswith(("08", "57P0"))


def _discard_quietly(session: Session) -> None:
    try:
        session.discard()
    except Exception as exc:  # noqa: BLE001 - already failing: the first error matters
        logger.warning("safeddl: could not discard the lost connection: %s", exc)


def _rollback_quietly(session: Session) -> None:
    try:
        session.run("ROLLBACK")
    except Exception as exc:  # noqa: BLE001 - already failing: the first error matters
        logger.warning("safeddl: ROLLBACK after a failed statement failed too: %s", exc)


def _abort_again(session: Session) -> None:
    """Put the user's transaction back into the aborted state the lock timeout left it
    in (rolling back to safeddl's savepoint had made it usable for the report)."""
    try:
        session.run(_ABORT_AGAIN)
    except Exception:  # noqa: BLE001, S110 - the error is the point
        return
    logger.warning("safeddl: could not abort the transaction after a lock timeout")


_UNBOUNDED_RULE = "unbounded-lock-wait"


def _unbounded_refusal(sql: str, mode: LockMode) -> UnsafeStatement:
    rule = _UNBOUNDED_RULE
    message = (
        f"safeddl refused this statement (it was not sent):\n{rule}: `{shorten(sql, 80)}` "
        "cannot run in a transaction block, so its lock wait can only be bounded with a "
        "session-level lock_timeout; this connection is not pinned to one server session (it "
        "goes through a pooler), where such a setting would stay on a pooled server "
        f"connection for other clients. Unbounded, its wait for {mode.sql_name} would block "
        "every query queued behind it.\n"
        "Safe alternative: run it on a direct connection to the server, or through a "
        "session-pooling pooler with pool_mode = \"session\" in the safeddl policy.\n"
        "To accept the risk: send it on a connection safeddl does not guard (it then waits "
        "with no lock_timeout); if the pooler pins sessions (session pooling), set "
        "pool_mode = \"session\".")
    return UnsafeStatement(rule, sql, "run it on a direct connection", message)


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


# A step's lock timeout raised before the step's place in the plan is known (the caller,
# which knows it, makes it the PlanStepLockTimeout that names it).
_STEP_NOT_PLACED = (0, 0, "")


def _as_step_timeout(timeout: LockTimeout, ticket: Ticket,
                     step: tuple[int, int, str]) -> LockTimeout:
    """``timeout`` of a plan's step, as the PlanStepLockTimeout that names the step and
    the state left (the driver classes it was made an instance of are kept)."""
    if isinstance(timeout, PlanStepLockTimeout) and step is _STEP_NOT_PLACED:
        return timeout
    number, total, state = step
    out = PlanStepLockTimeout(
        timeout.statement, timeout.relation, timeout.mode, timeout.blockers,
        lock_timeout_ms=timeout.lock_timeout_ms, orig=timeout.orig,
        note=getattr(timeout, "base_note", timeout.note),
        plan_statement=ticket.decision.statement.sql, number=number, total=total,
        state=state)
    out.__cause__ = timeout.__cause__
    classes = type(timeout).__bases__[1:] if "_safeddl_base" in type(timeout).__dict__ else ()
    if classes:
        as_driver_error(out, PlanStepLockTimeout, classes,
                        {k: v for k, v in vars(timeout).items() if k not in vars(out)})
    return out


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


__all__ = ["STATES", "Guard", "Ticket", "lock_requests", "set_rewriter", "state_of"]
