"""``safeddl.psycopg.connect(dsn, policy=...)`` and guarded cursor classes for psycopg 3
(see :mod:`safeddl.integrations.psycopg`)."""

from __future__ import annotations

from safeddl.integrations.psycopg import (
    GuardedClientCursor,
    GuardedCursor,
    GuardedServerCursor,
    connect,
    cursor_factory,
    install,
    uninstall,
)

__all__ = ["GuardedClientCursor", "GuardedCursor", "GuardedServerCursor", "connect",
           "cursor_factory", "install", "uninstall"]
