"""The ways in: SQLAlchemy engines and connections, and psycopg 3 connections.

Each integration implements the guard's :class:`safeddl.runtime.session.Session` port and keeps
one permanent hook per engine or connection, switched by :func:`safeddl.install` /
:func:`safeddl.uninstall` and by ``with safeddl.guard(...)`` blocks (a ContextVar), so
nothing is ever removed while other threads may be dispatching.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from safeddl.runtime.guard import Guard
from safeddl.runtime.policy import Policy, default_policy
from safeddl.runtime.scope import entered


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


@contextmanager
def guard(target: Any, policy: Policy | None = None) -> Iterator[Guard]:
    """Guard the statements run on ``target`` (an SQLAlchemy Engine / AsyncEngine /
    Connection / AsyncConnection, or a psycopg Connection) inside the block, in this
    thread or task. A permanent, dormant hook is put on the target the first time."""
    key = scope_target(target)
    with entered(key, Guard.for_policy(policy if policy is not None else default_policy())) as active:
        yield active


__all__ = ["guard", "install", "scope_target", "uninstall"]
