"""SQLAlchemy 2.x (psycopg 3 driver, sync and async): the engine plugin, install() and
the hook behind ``safeddl.guard(engine_or_connection)``.

One :class:`EngineHook` per engine, attached once and never removed (no event is
registered, so nothing has to be removed while other threads dispatch: ``event.remove``
is not safe then); ``hook.guard`` None means dormant, and ``guard()`` blocks switch it
through a ContextVar.

The hook stands in for the engine's dialect methods ``do_execute`` /
``do_executemany`` / ``do_execute_no_params`` (instance attributes shadowing the
class's; the dialect's own method is still called when its class overrides SQLAlchemy's
default). That replaces a frame SQLAlchemy runs anyway: a ``before_cursor_execute``
listener, even an empty one, switches SQLAlchemy onto its event path and costs
several µs per statement, and a DialectEvents ``do_execute`` listener still costs the
dispatch. Around the cursor call the guard decides, bounds the lock wait (on the same
connection, through a separate cursor), restores session settings changed outside a
transaction (closing the connection if that fails, so a pool replaces it), and turns
a lock timeout into :class:`safeddl.LockTimeout`. Errors raised here that are not
driver errors (UnsafeStatement, LockTimeout) reach the caller unwrapped.

Plugin: ``create_engine(url, plugins=["safeddl"])`` or ``...?plugin=safeddl``; URL keys
``safeddl_lock_timeout=2s``, ``safeddl_pg_version=15``, ``safeddl_refuse=rule,rule``,
``safeddl_allow=...``, ``safeddl_warn=...``, ``safeddl_rewrite=...``,
``safeddl_policy=path/to/policy.toml`` and every other policy key with a ``safeddl_``
prefix; or ``create_engine(..., safeddl_policy=Policy(...))``.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import URL, Connection, CreateEnginePlugin, Engine
from sqlalchemy.engine.default import DefaultDialect

from safeddl.runtime.errors import LockTimeout, PreflightBlocked, SafeDDLError, as_driver_error
from safeddl.runtime.guard import STATES, Guard, Ticket, state_of
from safeddl.runtime.policy import Policy, Settings, default_policy, read_tool_table
from safeddl.runtime.scope import current_scopes, scoped_guard
from safeddl.runtime.session import ConnectionState, Params

logger = logging.getLogger("safeddl")

URL_PREFIX = "safeddl_"
POLICY_FILE_KEY = "safeddl_policy"
_IDLE = psycopg.pq.TransactionStatus.IDLE
_contains = dict.__contains__
_state_get = STATES.get
_scopes = current_scopes


# =========================================================================== session port


class SqlaSession:
    """The guard's view of the pooled DBAPI connection behind an SQLAlchemy Connection."""

    __slots__ = ("dbapi", "driver", "pooled")

    def __init__(self, pooled: Any) -> None:
        self.pooled = pooled  # SQLAlchemy's PoolProxiedConnection
        self.dbapi = pooled.dbapi_connection
        # psycopg.Connection (sync) or psycopg.AsyncConnection behind the async adapter
        self.driver = getattr(self.dbapi, "driver_connection", self.dbapi)

    @classmethod
    def of(cls, conn: Connection) -> SqlaSession:
        return cls(conn.connection)

    @property
    def state(self) -> ConnectionState:
        return state_of(self.driver)

    def in_transaction(self) -> bool:
        driver = self.driver
        return not driver.autocommit or driver.pgconn.transaction_status != _IDLE

    def run(self, sql: str, params: Params = None) -> list[tuple[Any, ...]]:
        if self.dbapi is self.driver:  # sync: a plain cursor, whatever cursor_factory says
            cursor: Any = psycopg.Cursor(self.driver)
        else:  # async adapter: its cursor awaits through the greenlet bridge
            cursor = self.dbapi.cursor()
        try:
            cursor.execute(sql, params)
            return list(cursor.fetchall()) if cursor.description else []
        finally:
            cursor.close()

    def discard(self) -> None:
        """The pool replaces the connection when it comes back (soft invalidation: the
        Connection using it now goes on undisturbed until then). A connection already
        lost (killed backend, restart during a plan step the guard ran itself, which
        SQLAlchemy never saw fail) is invalidated at once, so that closing the
        Connection does not try to roll back on it."""
        lost = bool(getattr(self.driver, "broken", False) or getattr(self.driver, "closed",
                                                                      False))
        self.pooled.invalidate(soft=not lost)


# =========================================================================== the hook


class EngineHook:
    """Stands in for the dialect's ``do_execute`` / ``do_executemany`` /
    ``do_execute_no_params`` of one engine; ``guard`` None means dormant."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.guard: Guard | None = None
        self.server_version: int | None = None  # learnt on the first guarded statement
        self.hot: tuple[Any, ...] | None = None  # see do_execute
        dialect = engine.dialect
        # The dialect's own methods, called only when a dialect subclass overrides them;
        # the default ones are exactly the cursor calls made here.
        self._execute = _overridden(dialect, "do_execute")
        self._executemany = _overridden(dialect, "do_executemany")
        self._execute_no_params = _overridden(dialect, "do_execute_no_params")

    def attach(self) -> None:
        if engine_driver(self.engine) != "psycopg":
            raise TypeError("safeddl guards SQLAlchemy engines using the psycopg (3) driver "
                            f"(postgresql+psycopg://), not {engine_driver(self.engine)!r}")
        dialect = self.engine.dialect
        setattr(dialect, "do_execute", self.do_execute)  # noqa: B010 - shadow the method
        setattr(dialect, "do_executemany", self.do_executemany)  # noqa: B010
        setattr(dialect, "do_execute_no_params", self.do_execute_no_params)  # noqa: B010

    def active_guard(self, context: Any) -> Guard | None:
        if current_scopes():
            connection = getattr(context, "root_connection", None)
            return scoped_guard((connection, self.engine)) or self.guard
        return self.guard

    # -- the hot path -----------------------------------------------------------------
    def do_execute(self, cursor: Any, statement: str, parameters: Any,
                   context: Any = None) -> None:
        # Kept to few bytecodes (each costs; measured with callgrind): ``hot`` holds
        # the Guard in force with bound lookups of its caches for this server version.
        hot = self.hot
        if hot is None or hot[0] is not self.guard or _scopes():
            self._do_execute(cursor, statement, parameters, context)
            return
        guard, is_plain, tracked_of, tracker = hot
        if not is_plain(statement):  # DML that needs nothing but the lock ledger
            tracked = tracked_of(statement)
            # the psycopg connection (``_conn``: psycopg's BaseCursor attribute behind
            # its ``connection`` property); the async adapter's cursor has none
            driver: Any = getattr(cursor, "_conn", None) if tracked is not None else None
            state = _state_get(id(driver)) if driver is not None else None
            if state is None:
                self._do_execute(cursor, statement, parameters, context)
                return
            # (``_autocommit``: psycopg's attribute behind its ``autocommit`` property)
            if (not driver._autocommit or driver.pgconn.transaction_status != _IDLE) \
                    and not tracker.fast(state, tracked, parameters):
                guard.track(state, tracked, statement, parameters)
        try:
            if self._execute is None:
                cursor.execute(statement, parameters)
            else:
                self._execute(cursor, statement, parameters, context)
        except Exception as exc:
            self._report(guard, None, statement, context, exc)
            raise

    def _do_execute(self, cursor: Any, statement: str, parameters: Any,
                    context: Any) -> None:
        """do_execute when ``hot`` does not apply (yet): guard() blocks, dormant, the
        server version not known yet, a text not decided yet, the async adapter."""
        guard = self.guard
        if current_scopes():
            guard = self.active_guard(context)
        if guard is None:
            self._cursor_execute(cursor, statement, parameters, context)
            return
        if guard is self.guard and self.server_version is not None and not current_scopes():
            plain_texts, tracked_texts = guard.hot_caches(self.server_version)
            self.hot = (guard, plain_texts.__contains__, tracked_texts.get, guard.tracker)
        plain = guard.plain.get(self.server_version)  # type: ignore[arg-type]
        # (dict.__contains__: ``in`` on the cache, a dict subclass, looks the method up)
        if plain is None or not _contains(plain, statement):
            # DML that needs nothing but the lock ledger: checked on the fast path
            known = guard.tracked.get(self.server_version)  # type: ignore[arg-type]
            tracked = known.get(statement) if known is not None else None
            # the psycopg connection (``_conn``: psycopg's BaseCursor attribute behind
            # its ``connection`` property); the async adapter's cursor has none: full path
            driver: Any = getattr(cursor, "_conn", None) if tracked is not None else None
            state = STATES.get(id(driver)) if driver is not None else None
            if tracked is None or state is None:
                self._guarded(guard, statement, context,
                              lambda sql: self._cursor_execute(cursor, sql, parameters,
                                                               context),
                              parameters)
                return
            # (``_autocommit``: psycopg's attribute behind its ``autocommit`` property)
            if (not driver._autocommit or driver.pgconn.transaction_status != _IDLE) \
                    and not guard.tracker.fast(state, tracked, parameters):
                guard.track(state, tracked, statement, parameters)
        self._send_as_written(guard, cursor, statement, parameters, context)

    def _send_as_written(self, guard: Guard, cursor: Any, statement: str, parameters: Any,
                         context: Any) -> None:
        """A statement the guard lets through unchanged (a driver error reported)."""
        try:
            self._cursor_execute(cursor, statement, parameters, context)
        except Exception as exc:
            self._report(guard, None, statement, context, exc)
            raise

    def _cursor_execute(self, cursor: Any, statement: str, parameters: Any,
                        context: Any) -> None:
        if self._execute is None:
            cursor.execute(statement, parameters)
        else:
            self._execute(cursor, statement, parameters, context)

    def do_executemany(self, cursor: Any, statement: str, parameters: Any,
                       context: Any = None) -> None:
        def run(sql: str) -> None:
            if self._executemany is None:
                cursor.executemany(sql, parameters)
            else:
                self._executemany(cursor, sql, parameters, context)

        self._guarded_or_not(self.active_guard(context), statement, context, run,
                             parameters, many=True)

    def do_execute_no_params(self, cursor: Any, statement: str, context: Any = None) -> None:
        def run(sql: str) -> None:
            if self._execute_no_params is None:
                cursor.execute(sql)
            else:
                self._execute_no_params(cursor, sql, context)

        self._guarded_or_not(self.active_guard(context), statement, context, run)

    # -- the guarded call -------------------------------------------------------------------
    def _guarded_or_not(self, guard: Guard | None, statement: str, context: Any,
                        run: Callable[[str], object], parameters: Any = None,
                        many: bool = False) -> None:
        if guard is None:
            run(statement)
        else:
            self._guarded(guard, statement, context, run, parameters, many)

    def _guarded(self, guard: Guard, statement: str, context: Any,
                 run: Callable[[str], object], parameters: Any = None,
                 many: bool = False) -> None:
        if getattr(context, "root_connection", None) is None:
            run(statement)  # no execution context (not seen in SQLAlchemy 2.x): as is
            return
        session = self._session(context)
        if self.server_version is None:
            self.server_version = session.state.server_version
        ticket = None
        if not guard.passes(statement, self.server_version):
            try:
                ticket = guard.before(statement, session, parameters, many)
            except LockTimeout as timeout:  # a rewrite step timed out
                raise as_sqlalchemy_error(timeout, parameters, many) from timeout.__cause__
        try:
            run(ticket.replacement if ticket is not None and ticket.replacement else statement)
        except Exception as exc:
            self._report(guard, ticket, statement, context, exc, session)
            raise
        if ticket is not None:
            guard.after(ticket, session)

    def _report(self, guard: Guard, ticket: Ticket | None, statement: str, context: Any,
                error: BaseException, session: SqlaSession | None = None) -> None:
        """Restore; raise LockTimeout (from the driver's error) on a lock timeout."""
        if session is None:
            if getattr(context, "root_connection", None) is None:
                return
            session = self._session(context)
        replacement = guard.failed(ticket, statement, session, error)
        if replacement is not None:
            raise as_sqlalchemy_error(replacement, getattr(context, "parameters", None)) \
                from error

    @staticmethod
    def _session(context: Any) -> SqlaSession:
        return SqlaSession.of(context.root_connection)


def as_sqlalchemy_error(error: SafeDDLError, parameters: Any = None,
                        many: bool = False) -> SafeDDLError:
    """A LockTimeout raised instead of the driver's 55P03 is also the
    ``sqlalchemy.exc.OperationalError`` SQLAlchemy would have raised for it (``.orig``:
    the driver's error, ``.orig.sqlstate == "55P03"``), so an application's own
    ``except OperationalError`` keeps working; it is not wrapped again."""
    if not isinstance(error, LockTimeout) or isinstance(error, PreflightBlocked) \
            or error.orig is None:
        return error
    from sqlalchemy.exc import DontWrapMixin, OperationalError

    return as_driver_error(error, LockTimeout, (OperationalError, DontWrapMixin), {
        "params": parameters, "ismulti": many, "hide_parameters": False, "detail": [],
        "connection_invalidated": False})


def _overridden(dialect: Any, name: str) -> Callable[..., Any] | None:
    """The dialect's own method when its class overrides SQLAlchemy's default one."""
    if getattr(type(dialect), name) is getattr(DefaultDialect, name):
        return None
    method: Callable[..., Any] = getattr(dialect, name)
    return method


_HOOKS: weakref.WeakKeyDictionary[Engine, EngineHook] = weakref.WeakKeyDictionary()
_HOOKS_LOCK = threading.Lock()


def hook_for(engine: Engine) -> EngineHook:
    """The engine's hook, attached on first use."""
    with _HOOKS_LOCK:
        hook = _HOOKS.get(engine)
        if hook is None:
            hook = EngineHook(engine)
            hook.attach()
            _HOOKS[engine] = hook
    return hook


def sync_engine_of(target: Any) -> Engine:
    """An Engine, the sync engine of an AsyncEngine, or the engine of a connection or an
    ORM Session."""
    if isinstance(target, Engine):
        return target
    sync = getattr(target, "sync_engine", None)
    if isinstance(sync, Engine):
        return sync
    if isinstance(target, Connection):
        return target.engine
    sync_connection = getattr(target, "sync_connection", None)
    if isinstance(sync_connection, Connection):
        return sync_connection.engine
    get_bind = getattr(target, "get_bind", None)
    if callable(get_bind):
        return sync_engine_of(get_bind())
    raise TypeError(f"not an SQLAlchemy engine or connection: {type(target).__name__}")


def scope_target(target: Any) -> Any:
    """For ``guard()``: hook the engine; return what its hook compares a block with: the
    engine, or the (sync) SQLAlchemy Connection when given a connection."""
    hook = hook_for(sync_engine_of(target))
    if isinstance(target, Connection):
        return target
    sync_connection = getattr(target, "sync_connection", None)
    if isinstance(sync_connection, Connection):
        return sync_connection
    return hook.engine


def engine_driver(engine: Engine) -> str:
    return str(getattr(engine.dialect, "driver", ""))


def install(target: Any, policy: Policy | None = None) -> Guard:
    """Guard every statement of this engine (sync or async) with ``policy`` (default:
    ``[tool.safeddl]`` and ``SAFEDDL_*``)."""
    hook = hook_for(sync_engine_of(target))
    hook.guard = Guard.for_policy(policy if policy is not None else default_policy())
    return hook.guard


def uninstall(target: Any) -> None:
    """Stop guarding this engine (``guard()`` blocks on it still work)."""
    engine = sync_engine_of(target)
    hook = _HOOKS.get(engine)
    if hook is not None:
        hook.guard = None


# =========================================================================== plugin


class SafeDDLPlugin(CreateEnginePlugin):
    """``create_engine(url, plugins=["safeddl"])`` / ``?plugin=safeddl``."""

    def __init__(self, url: URL, kwargs: dict[str, Any]) -> None:
        super().__init__(url, kwargs)
        base = kwargs.pop(POLICY_FILE_KEY, None)
        if base is not None and not isinstance(base, Policy):
            raise TypeError(f"{POLICY_FILE_KEY}= must be a safeddl.Policy, not {type(base)}")
        self.policy = policy_from_url(url, base)

    def update_url(self, url: URL) -> URL:
        return url.difference_update_query([k for k in url.query if k.startswith(URL_PREFIX)])

    def engine_created(self, engine: Engine) -> None:
        install(engine, self.policy)


def policy_from_url(url: URL, base: Policy | None = None) -> Policy:
    """The policy of ``base`` (default: pyproject + environment), then the TOML file of
    ``safeddl_policy=``, then the other ``safeddl_*`` URL keys."""
    settings = Settings(base if base is not None else default_policy())
    values = {k: _single(v) for k, v in url.query.items()
              if k.startswith(URL_PREFIX) and k != POLICY_FILE_KEY}
    path = url.query.get(POLICY_FILE_KEY)
    if path:
        file = Path(_single(path))
        settings.add_table(read_tool_table(file), str(file))
    settings.add_strings(values, "URL", prefix=URL_PREFIX)
    return settings.build()


def _single(value: str | tuple[str, ...]) -> str:
    return value if isinstance(value, str) else ",".join(value)


__all__ = ["EngineHook", "SafeDDLPlugin", "SqlaSession", "engine_driver", "hook_for", "install",
           "policy_from_url", "scope_target", "uninstall"]
