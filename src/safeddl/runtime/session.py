"""A guarded connection as the guard sees it: what it remembers per driver connection
(:class:`ConnectionState`), the :class:`Session` port each integration implements, and
saving and restoring the session settings safeddl changes."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from safeddl.runtime.blockers import conninfo_of
from safeddl.runtime.ledger import Ledger
from safeddl.runtime.live_catalog import CatalogCache
from safeddl.runtime.topology import Topology, detect, set_local_sql

logger = logging.getLogger("safeddl")

Params = Sequence[Any] | Mapping[str, Any] | None

_SETTINGS = ("lock_timeout", "statement_timeout")


class ConnectionState:
    """What the guard remembers about one driver connection."""

    def __init__(self, client_key: int, server_version: int, info: Any) -> None:
        self.client_key = client_key  # the client library's backend_pid (a pooler's key)
        self.topology: Topology | None = None  # detected on first need (detect_topology)
        self.server_version = server_version  # major, e.g. 15
        self._info = info
        self._pgconn = getattr(info, "pgconn", None)  # psycopg's libpq connection
        self.saved: dict[str, tuple[str, str]] = {}  # setting -> (value, source) to restore
        self.dirty: tuple[str, ...] = ()  # session settings changed by safeddl right now
        self.catalogs = CatalogCache()
        self.ledger = Ledger()  # the locks of the open transaction (safeddl.runtime.tracking)

    @property
    def pid(self) -> int | None:
        """The server backend's pid, when it is known and stays the same: detected with
        ``pg_backend_pid()`` on a direct connection (behind a pooler each transaction
        may run on another server connection: None)."""
        topology = self.topology
        return topology.server_pid if topology is not None and topology.direct else None

    @property
    def citus(self) -> bool:
        return self.topology is not None and self.topology.citus

    def conninfo(self) -> str:
        return conninfo_of(self._info)

    def transaction_idle(self) -> bool:
        """No transaction is open on the server right now."""
        pgconn = self._pgconn
        if pgconn is not None:  # the libpq status, without psycopg's enum around it
            return bool(pgconn.transaction_status == 0)  # TransactionStatus.IDLE
        return bool(self._info.transaction_status == 0)


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


def detect_topology(session: Session) -> Topology:
    """The connection's topology (pid, pooler, Citus), detected once per connection."""
    state = session.state
    if state.topology is None:
        state.topology = detect(session.run, state.client_key)
    return state.topology


def apply_settings(session: Session, values: Mapping[str, str], *, local: bool) -> None:
    """Change the settings in one round trip. ``local``: literal ``SET LOCAL``
    statements, which live and die with the transaction (and which Citus forwards to
    the shards, see :mod:`safeddl.runtime.topology`); otherwise ``set_config`` at
    session level (only on a connection pinned to one server session)."""
    if local:
        session.run("; ".join(set_local_sql(values, citus=session.state.citus)))
        return
    calls = ", ".join("set_config(%s, %s, %s)" for _ in values)
    params: list[Any] = []
    for name, value in values.items():
        params.extend([name, value, local])
    session.run(f"SELECT {calls}", params)


def remember_settings(session: Session, names: Sequence[str]) -> None:
    """Read the values to restore after a session-level change, each time: the session
    may have changed them meanwhile by any means (``set_config()``, a function, ``SET``
    inside a ``DO`` block), which the guard cannot see. Not while safeddl's own values
    are in force (``dirty``: an earlier restore failed)."""
    state = session.state
    if state.dirty:
        return
    rows = session.run("SELECT name, current_setting(name), source FROM pg_settings "
                       "WHERE name = ANY(%s)", [list(names)])
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


def restore_or_discard(session: Session) -> None:
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


__all__ = ["ConnectionState", "Params", "Session", "apply_settings", "detect_topology",
           "remember_settings",
           "restore_or_discard", "restore_settings"]
