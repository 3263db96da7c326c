"""A throwaway Citus cluster: a coordinator and workers on 127.0.0.1.

:class:`CitusCluster` starts one :class:`~safeddl.testing.server.PostgresServer`
per node from a PostgreSQL installation that has the Citus extension, with
``shared_preload_libraries = 'citus'``, each also listening on 127.0.0.1 on a
free port (the coordinator reaches the workers over TCP), runs ``CREATE
EXTENSION citus`` on every node, and registers the coordinator and the workers
on the coordinator. ``initdb`` runs once: the nodes start from copies of its data
directory (initdb is most of the time a server takes to start), and the nodes live
on a tmpfs (/dev/shm) when there is one. Tests connect to the coordinator
(:attr:`CitusCluster.dsn`); the workers' DSNs are there to look at the shards.

Citus is not packaged for every distribution; for the Debian PostgreSQL 15 the
project's ``shared/citus/build.sh`` builds and installs Citus 13.2.2.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg

from safeddl.testing.server import (
    LOOPBACK,
    PostgresServer,
    ServerError,
    ServerInstall,
    ServerNotFound,
    ServerStartError,
    StartedInBlock,
    find_server_installs,
    sqlalchemy_url_from_dsn,
    unprivileged_user,
)

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "CITUS_SETTINGS",
    "CitusCluster",
    "CitusNotFound",
    "CitusStartError",
    "citus_available",
    "citus_installs",
    "has_citus",
]

logger = logging.getLogger("safeddl")

#: Server settings of every node (on top of the test server defaults).
CITUS_SETTINGS: Mapping[str, str] = {
    "shared_preload_libraries": "'citus'",
    "citus.enable_statistics_collection": "off",  # no calls home from a test server
}

_BUILD_HINT = (
    "run shared/citus/build.sh (builds and installs Citus 13.2.2 for the Debian "
    "PostgreSQL 15) or install Citus for PostgreSQL 15 "
    "(https://docs.citusdata.com/en/stable/installation/)"
)


class CitusNotFound(ServerNotFound):
    """No PostgreSQL installation with the Citus extension was found."""


class CitusStartError(ServerStartError):
    """A node did not start, or the extension / node registration failed."""


def has_citus(install: ServerInstall) -> bool:
    """Whether ``install`` can load Citus: ``citus.so`` in its library directory and
    ``citus.control`` in its extension directory."""
    libs = [install.bindir.parent / "lib", install.bindir.parent / "lib" / "postgresql"]
    shares = [
        install.bindir.parent / "share",
        install.bindir.parent / "share" / "postgresql",
        Path(f"/usr/share/postgresql/{install.version}"),  # Debian's layout
    ]
    return any((lib / "citus.so").is_file() for lib in libs) and any(
        (share / "extension" / "citus.control").is_file() for share in shares
    )


def citus_installs(installs: Sequence[ServerInstall] | None = None) -> list[ServerInstall]:
    """The installations (newest first) that have the Citus extension."""
    return [i for i in (find_server_installs() if installs is None else installs) if has_citus(i)]


def citus_available() -> bool:
    return bool(citus_installs())


def _choose_citus_install(version: int | None) -> ServerInstall:
    installs = find_server_installs()
    matching = [i for i in citus_installs(installs) if version is None or i.version == version]
    if matching:
        return matching[0]
    found = ", ".join(f"{i.version} ({i.source}, {i.bindir})" for i in installs) or "none"
    wanted = "PostgreSQL" if version is None else f"PostgreSQL {version}"
    raise CitusNotFound(
        f"The Citus extension is not installed for any {wanted} server found "
        f"(servers: {found}; looked for citus.so and extension/citus.control): {_BUILD_HINT}"
    )


class CitusCluster(StartedInBlock):
    """A coordinator and ``workers`` worker nodes, all on this machine.

    >>> with CitusCluster() as cluster:   # doctest: +SKIP
    ...     psycopg.connect(cluster.dsn).execute(
    ...         "SELECT create_distributed_table('orders', 'account_id')")
    """

    def __init__(
        self,
        install: ServerInstall | None = None,
        *,
        workers: int = 2,
        settings: Mapping[str, str] | None = None,
        version: int | None = None,
        parent_dir: str | Path | None = None,
    ) -> None:
        """``install``: a PostgreSQL installation with Citus (default: the newest one, of
        ``version`` when given); ``settings``: extra server settings for every node;
        ``parent_dir``: where the nodes' temporary directories go (default: /dev/shm when
        it is a shared tmpfs, else the temp dir)."""
        if workers < 1:
            raise ValueError(f"a Citus cluster needs at least one worker, not {workers}")
        self._install = install
        self._version_wanted = version
        self._worker_count = workers
        self._settings = {**CITUS_SETTINGS, **(settings or {})}
        self._parent_dir = parent_dir if parent_dir is not None else _shared_memory_dir()
        self._coordinator: PostgresServer | None = None
        self._workers: list[PostgresServer] = []
        self._citus_version: str | None = None

    def __repr__(self) -> str:
        coordinator = self._coordinator
        state = f"coordinator on port {coordinator.port}" if coordinator is not None else "stopped"
        return f"<CitusCluster {self._worker_count} workers, {state}>"

    @staticmethod
    def available() -> bool:
        """Whether a PostgreSQL installation with Citus exists (nothing is started)."""
        return citus_available()

    # -- public properties

    @property
    def running(self) -> bool:
        return self._coordinator is not None and self._coordinator.running

    @property
    def coordinator(self) -> PostgresServer:
        if self._coordinator is None:
            raise ServerError(f"{self!r} is not started")
        return self._coordinator

    @property
    def worker_servers(self) -> list[PostgresServer]:
        return list(self._workers)

    @property
    def workers(self) -> list[str]:
        """The workers' DSNs (unix sockets; the coordinator reaches them through TCP)."""
        return [worker.dsn for worker in self._workers]

    @property
    def worker_ports(self) -> list[int]:
        """The workers' TCP ports on 127.0.0.1, as in ``pg_dist_node.nodeport``."""
        return [worker.port for worker in self._workers]

    @property
    def dsn(self) -> str:
        """The coordinator's DSN (the ``safeddl`` superuser and database)."""
        return self.coordinator.dsn

    @property
    def sqlalchemy_url(self) -> str:
        return sqlalchemy_url_from_dsn(self.dsn)

    @property
    def version(self) -> int:
        """Major PostgreSQL version of the nodes."""
        return self.coordinator.version

    @property
    def citus_version(self) -> str | None:
        """``citus_version()`` of the coordinator (e.g. ``"Citus 13.2.2 on ..."``)."""
        return self._citus_version

    # -- lifecycle

    def start(self) -> Self:
        if self._coordinator is not None:
            raise ServerError(f"{self!r} is already started")
        install = self._install or _choose_citus_install(self._version_wanted)
        if not has_citus(install):
            raise CitusNotFound(
                f"PostgreSQL {install.version} in {install.bindir} has no Citus extension: "
                f"{_BUILD_HINT}"
            )
        started_at = time.monotonic()
        template = _CitusNode(install, self._settings, parent_dir=self._parent_dir)
        try:
            data = template.initdb_only()
            nodes: list[PostgresServer] = [
                _CitusNode(install, self._settings, template=data, parent_dir=self._parent_dir)
                for _ in range(1 + self._worker_count)
            ]
            self._coordinator, self._workers = nodes[0], nodes[1:]
            self._in_parallel(_start_node, nodes)
            template.stop()
            self._in_parallel(_create_extension, nodes)
            self._register_nodes()
        except BaseException as exc:
            template.stop()
            self.stop()
            if isinstance(exc, ServerError):
                raise
            if isinstance(exc, Exception):
                raise CitusStartError(f"could not set up the Citus cluster: {exc}") from exc
            raise
        logger.info(
            "started a Citus cluster (%s, PostgreSQL %s, %s workers) in %.2fs",
            self._citus_version,
            install.version,
            self._worker_count,
            time.monotonic() - started_at,
        )
        return self

    def stop(self) -> None:
        """Stop every node; safe to call twice."""
        nodes = [n for n in (self._coordinator, *self._workers) if n is not None]
        self._coordinator, self._workers = None, []
        self._citus_version = None
        for node in nodes:
            node.stop()

    # -- steps

    @staticmethod
    def _in_parallel(
        step: Callable[[PostgresServer], None], nodes: Sequence[PostgresServer]
    ) -> None:
        """Run ``step`` on every node at once; raise the first failure after all ended."""
        with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
            futures = [pool.submit(step, node) for node in nodes]
        for future in futures:
            future.result()

    def _register_nodes(self) -> None:
        coordinator = self.coordinator
        with psycopg.connect(coordinator.dsn, autocommit=True) as conn:
            conn.execute("SELECT citus_set_coordinator_host(%s, %s)", (LOOPBACK, coordinator.port))
            for worker in self._workers:
                conn.execute("SELECT citus_add_node(%s, %s)", (LOOPBACK, worker.port))
            row = conn.execute("SELECT citus_version()").fetchone()
        self._citus_version = None if row is None else str(row[0])


class _CitusNode(PostgresServer):
    """A node on 127.0.0.1 whose data directory is a copy of ``template`` (an initdb'd
    data directory of the same installation), or a fresh initdb without one."""

    def __init__(
        self,
        install: ServerInstall,
        settings: Mapping[str, str],
        *,
        template: Path | None = None,
        parent_dir: str | Path | None = None,
    ) -> None:
        super().__init__(install, settings, tcp_port=0, parent_dir=parent_dir)
        self._template = template

    def initdb_only(self) -> Path:
        """Run initdb in a new directory (no server) and return the data directory;
        ``stop()`` removes it."""
        self._run_as = unprivileged_user()
        self._directory = self._make_directory()
        try:
            self._bindir = self._runnable_bindir()
            self._initdb()
        except BaseException:
            self.stop()
            raise
        return self._data_dir

    def _initdb(self) -> None:
        if self._template is None:
            super()._initdb()
            return
        # As the server user, so that owner and modes (0700) stay what initdb made.
        self._run(["cp", "-R", "-p", str(self._template), str(self._data_dir)], timeout=120.0)


def _shared_memory_dir() -> str | None:
    """/dev/shm when it is a directory everybody can use (sticky, world-writable)."""
    try:
        mode = os.stat("/dev/shm").st_mode
    except OSError:
        return None
    usable = stat.S_ISDIR(mode) and mode & stat.S_ISVTX and mode & 0o007 == 0o007
    return "/dev/shm" if usable else None


def _start_node(node: PostgresServer) -> None:
    """Start a node; once more on a new port when another process took the free one."""
    try:
        node.start()
    except ServerStartError as exc:
        if "already in use" not in str(exc):
            raise
        logger.info("port taken while starting a Citus node; retrying on another port")
        node.start()


def _create_extension(node: PostgresServer) -> None:
    try:
        with psycopg.connect(node.dsn, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS citus")
    except psycopg.Error as exc:
        raise CitusStartError(f"CREATE EXTENSION citus failed on {node!r}: {exc}") from exc
