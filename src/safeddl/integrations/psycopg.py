"""psycopg 3 without SQLAlchemy: guarded cursors and ``safeddl.psycopg.connect``.

``cursor_factory`` covers ``conn.execute``, ``cursor.execute``, ``executemany``,
``stream`` and ``copy``; named (server-side) cursors go through
``server_cursor_factory``. Which Guard applies: a ``with safeddl.guard(conn):`` block's,
else the connection's slot (``install`` / ``connect``), else the cursor class's
(:func:`cursor_factory`). Internal statements (``SET LOCAL``, catalog reads) run on
plain, unguarded cursors of the same connection.
"""

from __future__ import annotations

import inspect
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, cast

import psycopg
from psycopg import sql as pgsql
from psycopg.rows import Row

from safeddl.runtime.guard import Guard, Ticket, state_of
from safeddl.runtime.policy import Policy, default_policy
from safeddl.runtime.scope import current_scopes, scoped_guard
from safeddl.runtime.session import ConnectionState, Params

_IDLE = psycopg.pq.TransactionStatus.IDLE


class PsycopgSession:
    """The guard's view of a psycopg connection."""

    __slots__ = ("conn",)

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    @property
    def state(self) -> ConnectionState:
        return state_of(self.conn)

    def in_transaction(self) -> bool:
        conn = self.conn
        return not conn.autocommit or conn.pgconn.transaction_status != _IDLE

    def run(self, sql: str, params: Params = None) -> list[tuple[Any, ...]]:
        with psycopg.Cursor(self.conn) as cursor:
            cursor.execute(cast(Any, sql), params)
            return list(cursor.fetchall()) if cursor.description else []

    def discard(self) -> None:
        self.conn.close()


class Slot:
    """What a hooked connection has (kept in :data:`SLOTS`): the Guard in force (None:
    dormant), the server's major version, the connection's state, and for the hot path
    ``hot``: (guard, is-plain and tracked-entry lookups of its caches, its tracker,
    the state) for this server version, looked up once (see :meth:`refresh`)."""

    __slots__ = ("guard", "hot", "server_version", "state")

    def __init__(self, guard: Guard | None, server_version: int,
                 state: ConnectionState | None = None) -> None:
        self.guard = guard
        self.server_version = server_version
        self.state = state
        self.hot: tuple[Any, ...] | None = None

    def refresh(self) -> tuple[Any, ...] | None:
        """The hot-path tuple of the Guard in force (None: dormant); its caches are
        created once per server version, then kept and only emptied in place."""
        guard = self.guard
        self.hot = None
        if guard is None:
            return None
        plain, known = guard.hot_caches(self.server_version)
        state = self.state
        if state is None:
            return None
        # bound methods of the caches: ``text in cache`` on a dict subclass goes through
        # a slot that looks ``__contains__`` up on every call
        self.hot = (guard, plain.__contains__, known.get, guard.tracker, state)
        return self.hot


# The slot of each hooked connection, by id(): the connection object is left alone (see
# safeddl.runtime.guard.STATES); the entry goes when the connection is collected.
SLOTS: dict[int, Slot] = {}


_slot_get = SLOTS.get
_scopes = current_scopes


def slot_of(conn: Any) -> Slot | None:
    """The slot of a hooked connection (None: not hooked)."""
    return SLOTS.get(id(conn))


def active_guard(cursor: Any, conn: psycopg.Connection[Any]) -> Guard | None:
    """The guard() block's, else the connection slot's, else the cursor class's Guard."""
    slot: Slot | None = SLOTS.get(id(conn))
    guard = slot.guard if slot is not None else None
    if guard is None:
        guard = cursor._class_guard
    if current_scopes():
        guard = scoped_guard((conn,)) or guard
    return guard


def server_version(conn: psycopg.Connection[Any]) -> int:
    return conn.pgconn.server_version // 10000


def text_of(query: Any, conn: psycopg.Connection[Any]) -> str:
    if isinstance(query, str):
        return query
    if isinstance(query, bytes):
        return query.decode("utf-8", errors="replace")
    if isinstance(query, pgsql.Composable):
        return query.as_string(conn)
    return str(query)


class _Call:
    """One guarded driver call: decide, bound the wait, run, restore, report."""

    __slots__ = ("guard", "session", "text", "ticket")

    def __init__(self, guard: Guard, text: str, conn: psycopg.Connection[Any],
                 params: Any = None, many: bool = False) -> None:
        self.guard = guard
        self.text = text
        self.session = PsycopgSession(conn)
        idle = conn.pgconn.transaction_status == _IDLE
        try:
            self.ticket: Ticket | None = guard.before(text, self.session, params, many)
        except BaseException:
            if idle:
                _back_to_idle(conn)
            raise

    def query(self, original: Any) -> Any:
        ticket = self.ticket
        return ticket.replacement if ticket is not None and ticket.replacement else original

    def succeeded(self) -> None:
        if self.ticket is not None:
            self.guard.after(self.ticket, self.session)

    def failed(self, error: BaseException) -> None:
        """Restore; raise LockTimeout instead of the driver's 55P03."""
        replacement = self.guard.failed(self.ticket, self.text, self.session, error)
        if replacement is not None:
            raise replacement from error


def _back_to_idle(conn: psycopg.Connection[Any]) -> None:
    """The statement was not sent (refused, or a pre-flight gave up): a transaction that
    only safeddl's own catalog reads opened is rolled back, so the connection is exactly
    as it was (e.g. ``conn.autocommit = True`` can follow)."""
    if conn.closed or conn.pgconn.transaction_status == _IDLE:
        return
    try:
        conn.rollback()
    except psycopg.Error:  # the refusal is what the caller must see
        pass


def _prepare(cursor: Any, query: Any, params: Any = None, many: bool = False) -> _Call | None:
    """None when the statement needs nothing: the hot path, kept to a few lookups."""
    conn = cursor.connection
    slot: Slot | None = SLOTS.get(id(conn))
    version: int | None = None
    if slot is not None and not current_scopes():
        guard, version = slot.guard, slot.server_version
    else:
        guard = active_guard(cursor, conn)
    if guard is None:
        return None
    text = query if type(query) is str else text_of(query, conn)
    if guard.passes(text, version or server_version(conn)):
        return None
    return _Call(guard, text, conn, params, many)


def _convert_plain(cursor: Any, query: Any, error: BaseException) -> None:
    """A statement that needed nothing failed: report a lock timeout all the same."""
    conn = cursor.connection
    guard = active_guard(cursor, conn)
    if guard is not None:
        text = query if type(query) is str else text_of(query, conn)
        replacement = guard.failed(None, text, PsycopgSession(conn), error)
        if replacement is not None:
            raise replacement from error


class GuardedCursorMixin:
    """Guards execute / executemany / stream / copy of a psycopg cursor class whose
    ``execute`` takes what psycopg's does (query, params, ``prepare``, ``binary``)."""

    __slots__ = ()
    _class_guard: ClassVar[Guard | None] = None
    # the ``execute`` that comes after this mixin in each class's MRO, found once per
    # class: ``super().execute`` builds a super object and walks the MRO on every call
    _base_execute: ClassVar[Callable[..., Any]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        base_execute = getattr(super(GuardedCursorMixin, cls), "execute", None)
        if base_execute is not None:
            cls._base_execute = base_execute

    def execute(self, query: Any, params: Any = None, *, prepare: bool | None = None,
                binary: bool | None = None) -> Any:
        # The hot path, inlined and kept to few bytecodes (each costs; measured with
        # callgrind): a statement known to need nothing costs a few dict lookups. No
        # ``**kwargs``: a dictionary built on every call (a cursor class whose execute
        # takes other keywords gets GuardedServerCursorMixin's full path).
        # ``_conn`` / ``_autocommit``: psycopg's attributes behind its ``connection`` /
        # ``autocommit`` properties.
        conn = self._conn  # type: ignore[attr-defined]
        slot: Slot | None = _slot_get(id(conn))
        if slot is None or type(query) is not str or _scopes():
            return self._execute_guarded(query, params, {"prepare": prepare,
                                                         "binary": binary})
        hot = slot.hot
        if hot is None or hot[0] is not slot.guard:
            hot = slot.refresh()
            if hot is None:
                return self._execute_guarded(query, params, {"prepare": prepare,
                                                             "binary": binary})
        guard, is_plain, tracked, tracker, state = hot
        if not is_plain(query):  # DML that needs nothing but the lock ledger
            statements = tracked(query)
            if statements is None:
                return self._execute_guarded(query, params, {"prepare": prepare,
                                                             "binary": binary})
            if (not conn._autocommit or conn.pgconn.transaction_status != _IDLE) \
                    and not tracker.fast(state, statements, params):
                guard.track(state, statements, query, params)
        try:  # (named, not **kwargs: no dictionary to build and unpack)
            return self._base_execute(query, params, prepare=prepare, binary=binary)
        except Exception as exc:
            _convert_plain(self, query, exc)
            raise

    def _execute_guarded(self, query: Any, params: Any, kwargs: dict[str, Any]) -> Any:
        call = _prepare(self, query, params)
        if call is None:
            try:
                return super().execute(query, params, **kwargs)  # type: ignore[misc]
            except Exception as exc:
                _convert_plain(self, query, exc)
                raise
        try:
            result = super().execute(call.query(query), params, **kwargs)  # type: ignore[misc]
        except BaseException as exc:  # also KeyboardInterrupt: restore
            call.failed(exc)
            raise
        call.succeeded()
        return result

    def executemany(self, query: Any, params_seq: Iterable[Any], **kwargs: Any) -> None:
        call = _prepare(self, query, params_seq, many=True)
        base: Any = super()
        try:
            base.executemany(call.query(query) if call else query, params_seq, **kwargs)
        except BaseException as exc:
            if call is None:
                _convert_plain(self, query, exc)
            else:
                call.failed(exc)
            raise
        if call is not None:
            call.succeeded()

    def stream(self, query: Any, params: Any = None, **kwargs: Any) -> Iterator[Any]:
        call = _prepare(self, query, params)
        base: Any = super()
        failed = False
        try:
            yield from base.stream(call.query(query) if call else query, params, **kwargs)
        except GeneratorExit:  # the caller stopped iterating early: not a failure
            raise
        except BaseException as exc:
            failed = True
            if call is None:
                _convert_plain(self, query, exc)
            else:
                call.failed(exc)
            raise
        finally:
            if call is not None and not failed:
                call.succeeded()  # also when the caller stops iterating early

    @contextmanager
    def copy(self, statement: Any, params: Any = None, **kwargs: Any) -> Iterator[Any]:
        call = _prepare(self, statement)
        base: Any = super()
        failed = False
        try:
            with base.copy(call.query(statement) if call else statement, params,
                           **kwargs) as copy:
                yield copy
        except BaseException as exc:
            failed = True
            if call is None:
                _convert_plain(self, statement, exc)
            else:
                call.failed(exc)
            raise
        finally:
            if call is not None and not failed:
                call.succeeded()


class GuardedCursor(GuardedCursorMixin, psycopg.Cursor[Row]):
    """``psycopg.Cursor`` that goes through the guard."""

    __slots__ = ()


class GuardedClientCursor(GuardedCursorMixin, psycopg.ClientCursor[Row]):
    """``psycopg.ClientCursor`` that goes through the guard."""

    __slots__ = ()


class GuardedServerCursorMixin(GuardedCursorMixin):
    """The guarded ``execute`` of a named (server-side) cursor, whose ``execute`` takes
    no ``prepare``, and of a cursor class whose own ``execute`` takes other keywords
    than ``prepare`` and ``binary``: always the full path, passing on only the keywords
    the caller gave."""

    __slots__ = ()

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        return self._execute_guarded(query, params, kwargs)


class GuardedServerCursor(GuardedServerCursorMixin, psycopg.ServerCursor[Row]):
    """Named (server-side) cursor that goes through the guard."""

    __slots__ = ()


_GUARDED: dict[type[Any], type[Any]] = {
    psycopg.Cursor: GuardedCursor, psycopg.ClientCursor: GuardedClientCursor,
    psycopg.ServerCursor: GuardedServerCursor,
}
_GUARDED_LOCK = threading.Lock()


def guarded_class(base: type[Any]) -> type[Any]:
    """The guarded version of a cursor class (the class itself when it is guarded)."""
    if issubclass(base, GuardedCursorMixin):
        return base
    with _GUARDED_LOCK:
        guarded = _GUARDED.get(base)
        if guarded is None:
            mixin = (GuardedServerCursorMixin if issubclass(base, psycopg.ServerCursor)
                     or not _takes_prepare_and_binary(base) else GuardedCursorMixin)
            guarded = type(f"Guarded{base.__name__}", (mixin, base), {"__slots__": ()})
            _GUARDED[base] = guarded
    return guarded


def _takes_prepare_and_binary(base: type[Any]) -> bool:
    """Whether ``base.execute`` takes the keywords of psycopg's own cursors,
    ``prepare=`` and ``binary=``, and no others: the hot path always passes both, and
    takes no others (a user's subclass may take fewer, or more)."""
    try:
        parameters = inspect.signature(base.execute).parameters
    except (TypeError, ValueError):
        return False
    keywords = {name for name, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    return keywords == {"prepare", "binary"} and not any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def cursor_factory(policy: Policy | None = None,
                   base: type[Any] = psycopg.Cursor) -> type[Any]:
    """A cursor class guarded with ``policy``, for ``conn.cursor_factory = ...`` or
    ``psycopg.connect(..., cursor_factory=...)``."""
    guard = Guard.for_policy(policy if policy is not None else default_policy())
    return type(f"Guarded{base.__name__}", (guarded_class(base),),
                {"__slots__": (), "_class_guard": guard})


def hook_connection(conn: psycopg.Connection[Any]) -> Slot:
    """Make the connection's cursors guarded ones (dormant until a Guard applies);
    returns its slot."""
    if isinstance(conn, psycopg.AsyncConnection) or not isinstance(conn, psycopg.Connection):
        raise TypeError("safeddl guards sync psycopg connections; for asyncio use "
                        "SQLAlchemy's async engine")
    conn.cursor_factory = guarded_class(conn.cursor_factory)
    conn.server_cursor_factory = guarded_class(conn.server_cursor_factory)
    slot: Slot | None = SLOTS.get(id(conn))
    if slot is None:
        with _GUARDED_LOCK:
            slot = SLOTS.get(id(conn))
            if slot is None:
                slot = Slot(None, server_version(conn))
                weakref.finalize(conn, SLOTS.pop, id(conn), None)
                SLOTS[id(conn)] = slot
        slot.state = state_of(conn)  # from now on its ledger follows commits and savepoints
    return slot


def install(conn: psycopg.Connection[Any], policy: Policy | None = None) -> Guard:
    """Guard every statement of this connection from now on."""
    slot = hook_connection(conn)
    guard = Guard.for_policy(policy if policy is not None else default_policy())
    slot.guard = guard
    return guard


def uninstall(conn: psycopg.Connection[Any]) -> None:
    """Stop guarding this connection (``guard()`` blocks on it still work)."""
    slot: Slot | None = SLOTS.get(id(conn))
    if slot is not None:
        slot.guard = None


def scope_target(conn: Any) -> Any:
    hook_connection(conn)
    return conn


def connect(conninfo: str = "", *, policy: Policy | None = None,
            **kwargs: Any) -> psycopg.Connection[Any]:
    """``psycopg.connect`` with every statement guarded by ``policy``."""
    conn = psycopg.Connection.connect(conninfo, **kwargs)
    try:
        install(conn, policy)
    except BaseException:
        conn.close()
        raise
    return conn


__all__ = ["GuardedClientCursor", "GuardedCursor", "GuardedCursorMixin", "GuardedServerCursor",
           "GuardedServerCursorMixin",
           "PsycopgSession", "SLOTS", "Slot", "connect", "cursor_factory", "guarded_class",
           "hook_connection", "install", "scope_target", "slot_of", "uninstall"]
