"""Throwaway PostgreSQL servers for tests (:mod:`~safeddl.testing.server`, no pytest needed)
and the pytest plugin that starts them (:mod:`~safeddl.testing.pytest_plugin`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
        fresh_database,
        sqlalchemy_url_from_dsn,
        start_server,
        with_database,
    )


def __getattr__(name: str) -> Any:
    """Import the server module on first use: loading the pytest plugin starts nothing."""
    if name not in __all__:
        raise AttributeError(f"module 'safeddl.testing' has no attribute {name!r}")
    from safeddl.testing import server

    return getattr(server, name)

__all__ = [
    "DATABASE",
    "DEFAULT_SETTINGS",
    "USER",
    "ExternalServer",
    "PostgresServer",
    "ServerError",
    "ServerHandle",
    "ServerInstall",
    "ServerNotFound",
    "ServerStartError",
    "choose_install",
    "distinct_versions",
    "find_server_installs",
    "fresh_database",
    "sqlalchemy_url_from_dsn",
    "start_server",
    "with_database",
]
