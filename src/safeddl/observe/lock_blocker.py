"""Hold a table lock from a second session: a stand-in for a busy dashboard in tests.

``with LockBlocker(dsn, "orders", "ACCESS SHARE") as blocker:`` opens its own
connection, starts a transaction and takes the lock with ``LOCK TABLE``; the lock is
held until :meth:`LockBlocker.release` (or the end of the block). Code under test that
needs a conflicting lock on the table now has to wait, exactly as behind a long
``SELECT`` on a live system, so a test can prove that it fails fast (``lock_timeout``)
and retries instead of hanging.

The blocking session sets ``idle_in_transaction_session_timeout`` (``max_hold``), so
the server ends it by itself if the test process dies without releasing it. The pids
of the blockers alive in this process are known to :mod:`safeddl.observe.lock_tracer`, which
leaves their locks out of its traces.
"""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql as pgsql
from psycopg.pq import TransactionStatus

from safeddl.locks import LockMode

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["LockBlocker", "active_blocker_pids", "parse_lock_mode"]

APPLICATION_NAME = "safeddl lock_blocker"

_ACTIVE: set[int] = set()
_ACTIVE_LOCK = threading.Lock()

_RESOLVE_SQL = """
SELECT n.nspname, c.relname, c.relkind::text
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = pg_catalog.to_regclass(%s)
"""


def active_blocker_pids() -> frozenset[int]:
    """Backend pids of the blockers of this process that hold (or wait for) their lock."""
    with _ACTIVE_LOCK:
        return frozenset(_ACTIVE)


def parse_lock_mode(value: LockMode | str) -> LockMode:
    """``"ACCESS SHARE"``, ``"access_share"``, ``"AccessShareLock"`` or a LockMode."""
    if isinstance(value, LockMode):
        return value
    text = value.strip()
    try:
        return LockMode.from_pg_name(text)
    except KeyError:
        pass
    try:
        return LockMode.from_sql_name(text.removesuffix("MODE").removesuffix("mode"))
    except ValueError:
        names = ", ".join(mode.sql_name for mode in LockMode)
        raise ValueError(f"unknown lock mode {value!r}: expected one of {names}") from None


def _seconds_setting(seconds: float) -> str:
    return f"{max(1, int(seconds * 1000))}ms"


class LockBlocker:
    """A session holding ``mode`` on ``relation`` until :meth:`release`.

    ``relation`` is resolved by the server as written (search_path, quoting:
    ``'app."Orders"'``). The lock is taken when the object is created; waiting for it
    is bounded by ``wait`` seconds (``LockNotAvailable`` if someone else holds a
    conflicting lock that long). Usable as a context manager (releases on exit).
    """

    def __init__(self, dsn: str, relation: str, mode: LockMode | str = LockMode.ACCESS_SHARE,
                 *, wait: float = 10.0, max_hold: float = 600.0,
                 application_name: str = APPLICATION_NAME) -> None:
        self.mode = parse_lock_mode(mode)
        self.relation_written = relation
        self.pid: int = 0  # the server backend's, once the transaction is open
        self._conn: psycopg.Connection[Any] | None = psycopg.connect(
            dsn, autocommit=True, application_name=application_name)
        try:
            conn = self._conn
            row = conn.execute(_RESOLVE_SQL, [relation]).fetchone()
            if row is None:
                raise ValueError(f"lock_blocker: relation {relation!r} does not exist")
            schema, name, relkind = (str(value) for value in row)
            #: the relation locked, "schema.name" (unquoted)
            self.relation = f"{schema}.{name}"
            self.relkind = relkind
            conn.execute("BEGIN")
            # the server backend's pid (behind a pooler info.backend_pid is the pooler's
            # key); the transaction keeps this server connection until release()
            pid_row = conn.execute("SELECT pg_backend_pid()").fetchone()
            self.pid = int(pid_row[0]) if pid_row else 0
            with _ACTIVE_LOCK:
                _ACTIVE.add(self.pid)
            # settings of this transaction only (nothing stays on a pooled connection)
            conn.execute(pgsql.SQL("SET LOCAL idle_in_transaction_session_timeout = {}").format(
                pgsql.Literal(_seconds_setting(max_hold))))
            conn.execute(pgsql.SQL("SET LOCAL lock_timeout = {}").format(
                pgsql.Literal(_seconds_setting(wait))))
            conn.execute(pgsql.SQL("LOCK TABLE {} IN {} MODE").format(
                pgsql.Identifier(schema, name), pgsql.SQL(self.mode.sql_name)))
        except BaseException:
            self.release()
            raise

    @property
    def held(self) -> bool:
        """True until :meth:`release`."""
        conn = self._conn
        return conn is not None and conn.info.transaction_status == TransactionStatus.INTRANS

    def release(self) -> None:
        """End the blocking transaction and close its connection (idempotent)."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        with _ACTIVE_LOCK:
            _ACTIVE.discard(self.pid)
        with contextlib.suppress(psycopg.Error):
            if conn.info.transaction_status != TransactionStatus.IDLE:
                conn.execute("ROLLBACK")
        conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "holding" if self.held else "released"
        relation = getattr(self, "relation", self.relation_written)
        return f"<LockBlocker pid {getattr(self, 'pid', '?')} {state} {self.mode.sql_name} on {relation}>"
