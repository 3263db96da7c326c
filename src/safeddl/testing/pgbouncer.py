"""A throwaway PgBouncer in front of a test server.

:class:`PgBouncer` runs the ``pgbouncer`` program of the system (Debian/Ubuntu:
``apt-get install pgbouncer``) with an ini file of its own in a fresh temporary
directory, listening on 127.0.0.1 on a free port, with ``auth_type = trust``,
and forwards every database name to one backend server (a
:class:`~safeddl.testing.server.ServerHandle`, read from its DSN). Pooling is
``transaction`` or ``session``; the pool is small on purpose, so that tests
can see statements of one client land on different server connections.

Like :class:`~safeddl.testing.server.PostgresServer` it runs as an unprivileged
OS user when the process is root, and three safety nets stop it: ``stop()``
(``with`` block), an ``atexit`` hook, and a watchdog process that ends it when
the starting process dies without cleaning up.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row

from safeddl.testing.server import (
    LOOPBACK,
    USER,
    RunAs,
    ServerError,
    ServerHandle,
    ServerNotFound,
    ServerStartError,
    StartedInBlock,
    free_tcp_port,
    release_watchdog,
    sqlalchemy_url_from_dsn,
    start_watchdog,
    temp_root,
    unprivileged_user,
)

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "PgBouncer",
    "PgBouncerNotFound",
    "PgBouncerStartError",
    "PoolMode",
    "find_pgbouncer",
    "pgbouncer_available",
]

logger = logging.getLogger("safeddl")

PoolMode = Literal["session", "transaction"]

#: The database name of PgBouncer's admin console.
ADMIN_DATABASE = "pgbouncer"
_PROGRAM = "pgbouncer"
#: Where packages put the program, also when that directory is not on PATH (/usr/sbin).
_USUAL_LOCATIONS = (
    "/usr/sbin/pgbouncer",
    "/usr/bin/pgbouncer",
    "/usr/local/bin/pgbouncer",
    "/usr/local/sbin/pgbouncer",
    "/opt/homebrew/bin/pgbouncer",
)
_START_TIMEOUT = 15.0
_STOP_TIMEOUT = 10.0
_CONNECT_TIMEOUT = 10
_LOG_TAIL_LINES = 40
_INSTALL_HINT = (
    "install it with `apt-get install pgbouncer` (Debian/Ubuntu), `dnf install pgbouncer` "
    "(Fedora/RHEL) or `brew install pgbouncer` (macOS)"
)


class PgBouncerNotFound(ServerNotFound):
    """The ``pgbouncer`` program is not installed."""


class PgBouncerStartError(ServerStartError):
    """PgBouncer did not start; the message ends with its log."""


def find_pgbouncer() -> Path | None:
    """The ``pgbouncer`` program: on PATH or in the usual package locations."""
    found = shutil.which(_PROGRAM)
    if found is not None:
        return Path(found)
    for location in _USUAL_LOCATIONS:
        if os.access(location, os.X_OK):
            return Path(location)
    return None


def pgbouncer_available() -> bool:
    return find_pgbouncer() is not None


_live: set[PgBouncer] = set()


@atexit.register
def _stop_live() -> None:
    for bouncer in list(_live):
        bouncer.stop()


class PgBouncer(StartedInBlock):
    """A PgBouncer on 127.0.0.1 in front of ``server`` (any :class:`ServerHandle`).

    >>> with PgBouncer(server, pool_mode="transaction") as bouncer:   # doctest: +SKIP
    ...     psycopg.connect(bouncer.dsn, prepare_threshold=None)

    Every database of the server is reachable through it (``dsn_for(name)``), as the
    users in ``users`` (PgBouncer needs to know the names even with ``trust``); the
    server's own user is always one of them.
    """

    def __init__(
        self,
        server: ServerHandle,
        *,
        pool_mode: PoolMode = "transaction",
        pool_size: int = 3,
        max_client_conn: int = 200,
        users: Sequence[str] = (USER, "postgres"),
        ignore_startup_parameters: Sequence[str] = ("extra_float_digits",),
        query_wait_timeout: int = 30,
        settings: Mapping[str, str] | None = None,
        program: str | Path | None = None,
    ) -> None:
        if pool_mode not in ("session", "transaction"):
            raise ValueError(f"pool_mode must be 'session' or 'transaction', not {pool_mode!r}")
        if pool_size < 1:
            raise ValueError(f"pool_size must be at least 1, not {pool_size}")
        self._server = server
        self._pool_mode: PoolMode = pool_mode
        self._pool_size = pool_size
        self._max_client_conn = max_client_conn
        self._users = tuple(users)
        self._ignore_startup_parameters = tuple(ignore_startup_parameters)
        self._query_wait_timeout = query_wait_timeout
        self._settings = dict(settings or {})
        self._program = Path(program) if program is not None else None
        self._run_as: RunAs | None = None
        self._directory: Path | None = None
        self._port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._pgbouncer_version: str | None = None
        self._owner_pid = os.getpid()
        backend = conninfo_to_dict(server.dsn)
        self._user = str(backend.get("user") or USER)
        self._dbname = str(backend.get("dbname") or self._user)

    def __repr__(self) -> str:
        state = f"on {LOOPBACK}:{self._port}" if self.running else "stopped"
        return f"<PgBouncer {self._pool_mode} pool of {self._pool_size} {state}>"

    # -- public properties

    @property
    def server(self) -> ServerHandle:
        """The backend server."""
        return self._server

    @property
    def pool_mode(self) -> PoolMode:
        return self._pool_mode

    @property
    def pool_size(self) -> int:
        """Server connections per database and user (``default_pool_size``)."""
        return self._pool_size

    @property
    def version(self) -> int:
        """Major version of the backend PostgreSQL server."""
        return self._server.version

    @property
    def pgbouncer_version(self) -> str | None:
        """PgBouncer's own version (e.g. ``"PgBouncer 1.18.0"``), None before start."""
        return self._pgbouncer_version

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The pgbouncer process id, None when stopped."""
        return None if self._process is None else self._process.pid

    @property
    def directory(self) -> Path | None:
        """The temporary directory holding ini, auth file and log; None when stopped."""
        return self._directory

    @property
    def port(self) -> int:
        if self._port is None:
            raise ServerError(f"{self!r} is not started")
        return self._port

    @property
    def dsn(self) -> str:
        """libpq connection string through PgBouncer, for the server's user and database.

        Use ``prepare_threshold=None`` with psycopg in transaction mode.
        """
        return self.dsn_for(self._dbname)

    @property
    def sqlalchemy_url(self) -> str:
        return sqlalchemy_url_from_dsn(self.dsn)

    @property
    def admin_dsn(self) -> str:
        """The admin console (database ``pgbouncer``), for ``SHOW POOLS`` and friends."""
        return self.dsn_for(ADMIN_DATABASE)

    def dsn_for(self, dbname: str, user: str | None = None) -> str:
        """libpq connection string through PgBouncer to another database of the server."""
        return make_conninfo(
            host=LOOPBACK,
            port=self.port,
            user=user or self._user,
            dbname=dbname,
            connect_timeout=_CONNECT_TIMEOUT,
        )

    def admin(self, command: str) -> list[dict[str, Any]]:
        """Run an admin console command (``SHOW POOLS``, ``SHOW SERVERS``, ``RECONNECT``, ...)
        and return its rows as dicts."""
        with psycopg.connect(
            self.admin_dsn, autocommit=True, prepare_threshold=None, row_factory=dict_row
        ) as conn:
            cursor = conn.execute(command)
            return cursor.fetchall() if cursor.description is not None else []

    def pools(self) -> list[dict[str, Any]]:
        """``SHOW POOLS`` without the admin console's own pool."""
        return [row for row in self.admin("SHOW POOLS") if row["database"] != ADMIN_DATABASE]

    def servers(self) -> list[dict[str, Any]]:
        """``SHOW SERVERS``: one row per server connection (``remote_pid`` is the backend's)."""
        return self.admin("SHOW SERVERS")

    # -- lifecycle

    def start(self) -> Self:
        """Write the configuration, start PgBouncer and wait until it answers."""
        if self._directory is not None:
            raise ServerError(f"{self!r} is already started")
        program = self._program or find_pgbouncer()
        if program is None:
            raise PgBouncerNotFound(
                f"PgBouncer is not installed (no `{_PROGRAM}` on PATH nor in "
                f"{', '.join(str(Path(p).parent) for p in _USUAL_LOCATIONS)}): {_INSTALL_HINT}"
            )
        started_at = time.monotonic()
        _live.add(self)
        try:
            self._run_as = unprivileged_user()
            self._directory = self._make_directory()
            self._port = free_tcp_port()
            self._write_files()
            self._spawn(program)
            self._start_watchdog()
            self._wait_until_ready()
        except BaseException as exc:
            message = f"could not start PgBouncer ({program}): {exc}"
            tail = self._log_tail()
            if tail:
                message += f"\n--- pgbouncer log (last lines) ---\n{tail}"
            self.stop()
            if isinstance(exc, Exception):
                raise PgBouncerStartError(message) from exc
            raise
        logger.info(
            "started %s (%s pooling) on port %s in front of PostgreSQL %s in %.2fs",
            self._pgbouncer_version,
            self._pool_mode,
            self._port,
            self.version,
            time.monotonic() - started_at,
        )
        return self

    def stop(self) -> None:
        """Stop PgBouncer (its immediate shutdown) and remove its directory; safe to call
        twice."""
        if os.getpid() != self._owner_pid:
            return  # a forked child must not stop its parent's PgBouncer
        _live.discard(self)
        process, self._process = self._process, None
        directory, self._directory = self._directory, None
        try:
            if process is not None:
                _terminate(process)
        finally:
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)
            self._release_watchdog()
            self._port = None
            if directory is not None:
                logger.info("stopped PgBouncer and removed %s", directory)

    # -- steps

    def _require_directory(self) -> Path:
        if self._directory is None:
            raise ServerError(f"{self!r} is not started")
        return self._directory

    @property
    def _log_file(self) -> Path:
        return self._require_directory() / "pgbouncer.log"

    @property
    def _output_file(self) -> Path:
        return self._require_directory() / "pgbouncer.out"

    def _make_directory(self) -> Path:
        directory = Path(tempfile.mkdtemp(prefix="safeddl-pgb-", dir=temp_root(self._run_as)))
        if self._run_as is not None:
            os.chown(directory, self._run_as.uid, self._run_as.gid)
        return directory

    def _backend(self) -> tuple[str, int, str]:
        """Host (or socket directory), port and password libpq uses for the server's DSN
        (defaults and PG* variables resolved; it also checks the server is up)."""
        try:
            with psycopg.connect(self._server.dsn, autocommit=True) as conn:
                return conn.info.host, conn.info.port, conn.info.password or ""
        except psycopg.Error as exc:
            raise PgBouncerStartError(f"cannot connect to the backend server: {exc}") from exc

    def _auth_lines(self, password: str) -> str:
        """The auth file: user names (and the server's password, which PgBouncer then sends
        to the server; clients are trusted)."""
        users = dict.fromkeys((self._user, *self._users), "")
        users[self._user] = password
        return "".join(f"{_quoted(name)} {_quoted(secret)}\n" for name, secret in users.items())

    def _write_files(self) -> None:
        directory = self._require_directory()
        auth_file = directory / "users.txt"
        host, port, password = self._backend()
        settings: dict[str, str] = {
            "listen_addr": LOOPBACK,
            "listen_port": str(self.port),
            "unix_socket_dir": str(directory),
            "auth_type": "trust",
            "auth_file": str(auth_file),
            "admin_users": self._user,
            "stats_users": self._user,
            "pool_mode": self._pool_mode,
            "default_pool_size": str(self._pool_size),
            "min_pool_size": "0",
            "reserve_pool_size": "0",
            "max_client_conn": str(self._max_client_conn),
            "ignore_startup_parameters": ",".join(self._ignore_startup_parameters),
            "query_wait_timeout": str(self._query_wait_timeout),
            "server_login_retry": "1",
            "logfile": str(self._log_file),
            "pidfile": str(directory / "pgbouncer.pid"),
            **self._settings,
        }
        ini = (
            "; written by safeddl.testing\n"
            "[databases]\n"
            f"* = host={_ini_value(host)} port={port}\n\n"
            "[pgbouncer]\n" + "".join(f"{name} = {value}\n" for name, value in settings.items())
        )
        (directory / "pgbouncer.ini").write_text(ini, encoding="utf-8")
        auth_file.write_text(self._auth_lines(password), encoding="utf-8")
        auth_file.chmod(0o600)
        if self._run_as is not None:
            for path in directory.iterdir():
                os.chown(path, self._run_as.uid, self._run_as.gid)

    def _spawn(self, program: Path) -> None:
        run_as = self._run_as
        directory = self._require_directory()
        # Output goes to a file: a pipe nobody reads could fill up and stall it.
        with open(self._output_file, "wb") as output:
            self._process = subprocess.Popen(
                [str(program), str(directory / "pgbouncer.ini")],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=directory,
                env=_environment(),
                start_new_session=True,  # a Ctrl-C in the terminal must not reach it
                user=None if run_as is None else run_as.uid,
                group=None if run_as is None else run_as.gid,
                extra_groups=None if run_as is None else [],
            )

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            process = self._process
            if process is None or process.poll() is not None:
                code = None if process is None else process.returncode
                raise PgBouncerStartError(f"pgbouncer exited with code {code}")
            try:
                rows = self.admin("SHOW VERSION")
            except psycopg.OperationalError as exc:
                last_error = exc
                time.sleep(0.05)
                continue
            self._pgbouncer_version = str(next(iter(rows[0].values()))) if rows else "PgBouncer"
            return
        raise PgBouncerStartError(
            f"pgbouncer did not accept connections within {_START_TIMEOUT:.0f}s: {last_error}"
        )

    def _log_tail(self) -> str:
        if self._directory is None:
            return ""
        lines: list[str] = []
        for path in (self._output_file, self._log_file):
            try:
                lines += path.read_text(encoding="utf-8", errors="replace").splitlines()
            except OSError:
                continue
        return "\n".join(lines[-_LOG_TAIL_LINES:])

    # -- watchdog

    def _start_watchdog(self) -> None:
        """Start a process that ends PgBouncer if this process dies without calling stop()."""
        process = self._process
        if process is None:
            return
        self._watchdog = start_watchdog(
            _WATCHDOG_SOURCE, [str(self._require_directory()), str(process.pid)], "PgBouncer")

    def _release_watchdog(self) -> None:
        watchdog, self._watchdog = self._watchdog, None
        release_watchdog(watchdog)


# The watchdog runs with ``python -I -S -c`` (stdlib only). It waits for its stdin to
# close; without the word "stopped" first, its parent died without cleaning up. SIGTERM
# is PgBouncer's immediate shutdown (1.18; newer versions wait for clients, hence the
# SIGKILL after a while).
_WATCHDOG_SOURCE = """
import os, shutil, signal, sys, time
directory, pid = sys.argv[1], int(sys.argv[2])
signal.signal(signal.SIGINT, signal.SIG_IGN)
if sys.stdin.buffer.read() != b"stopped":
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
    shutil.rmtree(directory, ignore_errors=True)
"""


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        logger.warning("PgBouncer %s did not stop on SIGTERM; killing it", process.pid)
        process.kill()
        process.wait(timeout=_STOP_TIMEOUT)


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


def _quoted(value: str) -> str:
    """A field of PgBouncer's auth file (double quotes, doubled inside)."""
    return '"' + value.replace('"', '""') + '"'


def _ini_value(value: str) -> str:
    """A value in a ``[databases]`` connection string (single quotes when needed)."""
    if value and all(c.isalnum() or c in "/._-" for c in value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"

