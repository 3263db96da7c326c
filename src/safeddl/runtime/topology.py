"""What stands between a guarded connection and the server, and what that means for the
settings safeddl makes: a direct connection, a pooler (PgBouncer), a Citus coordinator.

Detected once per driver connection with one query (:func:`detect`):

- the server backend's own pid, ``pg_backend_pid()``. The client library's
  ``backend_pid`` is the key the server sent at connect time; a pooler sends its own
  (PgBouncer: a random cancel key), so it is never used to recognise the own session.
- whether the connection is *pinned* to one server session: a direct connection is
  (its key is the server's pid); behind a pooler safeddl assumes transaction pooling,
  where every transaction may run on another server connection, unless the policy says
  ``pool_mode = "session"``. Only on a pinned connection does safeddl ever change a
  session-level setting (for the few statements that cannot run in a transaction
  block); everywhere else every setting it makes is ``SET LOCAL`` and dies with its
  transaction.
- whether the Citus extension is installed: then the bound must be a literal ``SET
  LOCAL`` statement, preceded by ``SET LOCAL citus.propagate_set_commands = 'local'``,
  for Citus to forward it to every shard (``set_config()`` and session-level ``SET`` are
  not forwarded).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Run = Callable[[str, Sequence[Any] | dict[str, Any] | None], list[tuple[Any, ...]]]

SAVEPOINT = "safeddl_lock_wait"
"""The savepoint set before a guarded statement inside a transaction block: after a lock
timeout, rolling back to it makes the transaction usable for the blocker report."""

CITUS_FORWARD = "SET LOCAL citus.propagate_set_commands = 'local'"

_DETECT_SQL = ("SELECT pg_backend_pid(), "
               "(SELECT extversion FROM pg_extension WHERE extname = 'citus')")
_VALUE = re.compile(r"^-?[0-9]+(?:us|ms|s|min|h|d)?$")
_NAMES = frozenset({"lock_timeout", "statement_timeout"})


@dataclass(frozen=True)
class Topology:
    """What one detection found on a connection."""

    server_pid: int  # pg_backend_pid() when it was detected
    client_key: int  # what the client library calls the backend pid
    citus_version: str | None = None

    @property
    def direct(self) -> bool:
        """The connection talks to the server itself (no pooler in between)."""
        return self.server_pid == self.client_key

    @property
    def citus(self) -> bool:
        return self.citus_version is not None

    def pinned(self, pool_mode: str) -> bool:
        """Every statement of the connection runs on one server session: session-level
        settings reach nobody else (``pool_mode``: the policy's ``auto``, ``session`` or
        ``transaction``)."""
        if pool_mode == "session":
            return True
        if pool_mode == "transaction":
            return False
        return self.direct


def bound_statement(run: Run, lock_timeout_ms: int) -> str:
    """One statement that sets ``lock_timeout`` for the open transaction only, in the form
    that also reaches the shards on a Citus coordinator (for helpers that run their own
    transactions on a connection safeddl does not track)."""
    rows = run("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')", None)
    citus = bool(rows and rows[0][0])
    return "; ".join(set_local_sql({"lock_timeout": f"{int(lock_timeout_ms)}ms"}, citus=citus))


def detect(run: Run, client_key: int) -> Topology:
    """One round trip: the server pid and the Citus extension's version."""
    rows = run(_DETECT_SQL, None)
    pid, citus = rows[0] if rows else (client_key, None)
    return Topology(int(pid), client_key, str(citus) if citus is not None else None)


def set_local_sql(values: Mapping[str, str], *, citus: bool) -> list[str]:
    """Literal ``SET LOCAL`` statements for ``values`` (on Citus, first the one that makes
    Citus forward them to the shards). Only lock_timeout / statement_timeout with plain
    duration values are written as literals; anything else raises ValueError."""
    statements = [CITUS_FORWARD] if citus else []
    for name, value in values.items():
        if name not in _NAMES or not _VALUE.match(value):
            raise ValueError(f"safeddl: refusing to write SET LOCAL {name} = {value!r}")
        statements.append(f"SET LOCAL {name} = '{value}'")
    return statements


__all__ = ["CITUS_FORWARD", "SAVEPOINT", "Topology", "bound_statement", "detect",
           "set_local_sql"]
