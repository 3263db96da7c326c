"""The ways in: SQLAlchemy engines and connections, and psycopg 3 connections.

Each integration implements the guard's :class:`safeddl.decision.Session` port and keeps
one permanent hook per engine or connection, switched by :func:`safeddl.install` /
:func:`safeddl.uninstall` and by ``with safeddl.guard(...)`` blocks (a ContextVar), so
nothing is ever removed while other threads may be dispatching.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from safeddl.decision import Guard
    from safeddl.policy import Policy


def _library_of(target: Any) -> str:
    module = type(target).__module__ or ""
    return module.split(".", 1)[0]


def scope_target(target: Any) -> Any:
    """Make sure ``target`` has its hook; return the object a ``guard()`` block matches."""
    library = _library_of(target)
    if library == "sqlalchemy":
        from safeddl.integrations import sqlalchemy

        return sqlalchemy.scope_target(target)
    if library == "psycopg":
        from safeddl.integrations import psycopg

        return psycopg.scope_target(target)
    raise TypeError(f"safeddl cannot guard a {type(target).__name__}: expected an SQLAlchemy "
                    "Engine/Connection (sync or async) or a psycopg Connection")


def install(target: Any, policy: Policy | None = None) -> Guard:
    """Guard every statement on ``target`` (an SQLAlchemy Engine or AsyncEngine, or a
    psycopg Connection) from now on."""
    library = _library_of(target)
    if library == "sqlalchemy":
        from safeddl.integrations import sqlalchemy

        return sqlalchemy.install(target, policy)
    if library == "psycopg":
        from safeddl.integrations import psycopg

        return psycopg.install(target, policy)
    raise TypeError(f"safeddl cannot install on a {type(target).__name__}")


def uninstall(target: Any) -> None:
    """Stop guarding ``target`` (its hook stays, dormant; ``guard()`` blocks still work)."""
    library = _library_of(target)
    if library == "sqlalchemy":
        from safeddl.integrations import sqlalchemy

        sqlalchemy.uninstall(target)
    elif library == "psycopg":
        from safeddl.integrations import psycopg

        psycopg.uninstall(target)
    else:
        raise TypeError(f"safeddl cannot uninstall from a {type(target).__name__}")


__all__ = ["install", "scope_target", "uninstall"]
