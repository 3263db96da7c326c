"""Throwaway PostgreSQL servers for tests (:mod:`~safeddl.testing.server`, no pytest needed),
the topologies built on them (a PgBouncer in front of a server, a Citus cluster) and the
pytest plugin that starts them (:mod:`~safeddl.testing.pytest_plugin`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from safeddl.testing.citus import (
        CitusCluster,
        CitusNotFound,
        CitusStartError,
        citus_available,
    )
    from safeddl.testing.pgbouncer import (
        PgBouncer,
        PgBouncerNotFound,
        PgBouncerStartError,
        PoolMode,
        pgbouncer_available,
    )
    from safeddl.testing.server import (
        DATABASE,
        DEFAULT_SETTINGS,
        USER,
        ExternalServer,
        PostgresServer,
        ServerError,
        ServerHandle,
        ServerInstall,
        ServerNotFound,
        ServerStartError,
        choose_install,
        distinct_versions,
        find_server_installs,
        free_tcp_port,
        fresh_database,
        sqlalchemy_url_from_dsn,
        start_server,
        with_database,
    )

_MODULES = {
    "CitusCluster": "citus", "CitusNotFound": "citus", "CitusStartError": "citus",
    "citus_available": "citus",
    "PgBouncer": "pgbouncer", "PgBouncerNotFound": "pgbouncer",
    "PgBouncerStartError": "pgbouncer", "PoolMode": "pgbouncer",
    "pgbouncer_available": "pgbouncer",
}


def __getattr__(name: str) -> Any:
    """Import the module on first use: loading the pytest plugin starts nothing."""
    if name not in __all__:
        raise AttributeError(f"module 'safeddl.testing' has no attribute {name!r}")
    from importlib import import_module

    module = import_module(f"safeddl.testing.{_MODULES.get(name, 'server')}")
    return getattr(module, name)


__all__ = [
    "DATABASE",
    "DEFAULT_SETTINGS",
    "USER",
    "CitusCluster",
    "CitusNotFound",
    "CitusStartError",
    "ExternalServer",
    "PgBouncer",
    "PgBouncerNotFound",
    "PgBouncerStartError",
    "PoolMode",
    "PostgresServer",
    "ServerError",
    "ServerHandle",
    "ServerInstall",
    "ServerNotFound",
    "ServerStartError",
    "choose_install",
    "citus_available",
    "distinct_versions",
    "find_server_installs",
    "free_tcp_port",
    "fresh_database",
    "pgbouncer_available",
    "sqlalchemy_url_from_dsn",
    "start_server",
    "with_database",
]
