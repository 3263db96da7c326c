"""Alembic: ``alembic upgrade`` guarded through env.py against a real server, the rewrite of a
CREATE INDEX inside ``autocommit_block()``, and ``safeddl lint --alembic`` rendering every
revision offline.

The project under tests/alembic_project has four revisions: 0001 creates ``orders``, 0002
adds a nullable column, 0003 builds an index CONCURRENTLY inside ``autocommit_block()``
(all safe), 0004 adds a column and builds a plain index in the transaction (unsafe).
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import psycopg
import pytest
from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.operations import Operations
from click.testing import CliRunner
from sqlalchemy import create_engine
from sqlalchemy.exc import ProgrammingError

import safeddl
from safeddl.cli.alembic import (
    AlembicProjectError,
    RenderedRevision,
    files_of,
    lint_json,
    lint_revision,
    python_ignore_comments,
    render_revisions,
)
from safeddl.cli.main import main
from safeddl.cli.report import lint_github, lint_sarif, lint_text
from safeddl.testing.server import sqlalchemy_url_from_dsn

pytestmark = [pytest.mark.timeout(120)]

PROJECT = Path(__file__).resolve().parent.parent / "alembic_project"
UNSAFE_FILE = "migrations/versions/0004_index_customer.py"
UNSAFE_INDEX_LINE = 17  # op.create_index(...) in 0004
UNSAFE_ADD_COLUMN_LINE = 16
ROWS = 20_000  # above the default small_table_rows: strong locks on it are not waived


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the project (Alembic writes __pycache__ next to the revisions)."""
    target = tmp_path / "alembic_project"
    shutil.copytree(PROJECT, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def config_for(project: Path, dsn: str, *, transaction_per_migration: bool = True) -> Config:
    config = Config(str(project / "alembic.ini"))
    config.set_main_option("sqlalchemy.url", sqlalchemy_url_from_dsn(dsn))
    config.attributes["safeddl_policy"] = safeddl.Policy(lock_timeout="2s")
    config.attributes["transaction_per_migration"] = transaction_per_migration
    return config


def fill_orders(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO orders (customer_id, total) "
                     f"SELECT g % 100, g FROM generate_series(1, {ROWS}) g")
        conn.execute("ANALYZE orders")


def schema_state(dsn: str) -> dict[str, object]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        versions = [r[0] for r in conn.execute("SELECT version_num FROM alembic_version")]
        indexes = dict(conn.execute(
            "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = "
            "i.indexrelid WHERE i.indrelid = 'orders'::regclass").fetchall())
        columns = [r[0] for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'orders'::regclass "
            "AND attnum > 0 AND NOT attisdropped ORDER BY attnum")]
    return {"versions": versions, "indexes": indexes, "columns": columns}


# =========================================================================== online


def test_guarded_upgrade_applies_the_safe_revisions_and_refuses_the_unsafe_one(
        project: Path, safeddl_db: str) -> None:
    config = config_for(project, safeddl_db)
    command.upgrade(config, "0002")
    assert schema_state(safeddl_db)["versions"] == ["0002"]
    fill_orders(safeddl_db)

    with pytest.raises(safeddl.UnsafeStatement) as refused:
        command.upgrade(config, "head")

    assert refused.value.rule == "create-index"
    message = str(refused.value)
    assert "SHARE on orders" in message
    assert "CREATE INDEX CONCURRENTLY orders_customer_id_idx ON orders (customer_id)" in message
    state = schema_state(safeddl_db)
    # transaction_per_migration: 0003 (built CONCURRENTLY) stays; nothing of 0004 applied,
    # not even the ADD COLUMN that ran before the refused statement in its transaction.
    assert state["versions"] == ["0003"]
    assert state["indexes"] == {"orders_pkey": True, "orders_created_at_idx": True}
    assert "status" not in state["columns"]  # type: ignore[operator]
    assert "note" in state["columns"]  # type: ignore[operator]


def test_one_transaction_for_the_whole_run_rolls_back_the_version_but_not_autocommit_work(
        project: Path, safeddl_db: str) -> None:
    """Alembic's default (one transaction for all revisions of a run): the refusal in 0004
    rolls back the version update of 0003 too, but the index 0003 built in its
    autocommit_block() was committed; running the upgrade again then fails on it."""
    config = config_for(project, safeddl_db, transaction_per_migration=False)
    command.upgrade(config, "0002")
    fill_orders(safeddl_db)

    with pytest.raises(safeddl.UnsafeStatement):
        command.upgrade(config, "head")

    state = schema_state(safeddl_db)
    assert state["versions"] == ["0002"]
    assert state["indexes"] == {"orders_pkey": True, "orders_created_at_idx": True}
    assert "status" not in state["columns"]  # type: ignore[operator]
    with pytest.raises(ProgrammingError, match="orders_created_at_idx"):
        command.upgrade(config, "head")


def test_create_index_in_autocommit_block_is_rewritten_to_concurrently(
        safeddl_db: str) -> None:
    """Alembic operations on a guarded engine with create-index set to rewrite: inside the
    migration's transaction the index is refused with the autocommit_block() hint; inside
    autocommit_block() it is built CONCURRENTLY. The proof is the lock it waits for while
    another session holds SHARE (which a plain CREATE INDEX shares and would not wait for):
    SHARE UPDATE EXCLUSIVE."""
    with psycopg.connect(safeddl_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, customer_id int)")
        conn.execute(f"INSERT INTO orders SELECT g, g % 100 FROM generate_series(1, {ROWS}) g")
        conn.execute("ANALYZE orders")
    engine = create_engine(sqlalchemy_url_from_dsn(safeddl_db))
    safeddl.install(engine, safeddl.Policy(lock_timeout="5s",
                                           actions={"create-index": "rewrite"}))
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn)
            op = Operations(context)
            with pytest.raises(safeddl.UnsafeStatement) as refused, \
                    context.begin_transaction():
                op.create_index("orders_in_tx_idx", "orders", ["customer_id"])
            assert "autocommit_block()" in str(refused.value)
            assert "CREATE INDEX CONCURRENTLY orders_in_tx_idx" in str(refused.value)

        waited_for = _mode_waited_for_while_share_is_held(engine, safeddl_db)
    finally:
        engine.dispose()

    if waited_for is None:
        pytest.fail("the index build did not wait for a lock while another session held "
                    "SHARE on orders: it was not rewritten to CREATE INDEX CONCURRENTLY")
    assert waited_for == "ShareUpdateExclusiveLock"
    with psycopg.connect(safeddl_db) as conn:
        row = conn.execute("SELECT indisvalid FROM pg_index "
                           "WHERE indexrelid = 'orders_customer_idx'::regclass").fetchone()
    assert row == (True,)


def _mode_waited_for_while_share_is_held(engine: object, dsn: str) -> str | None:
    errors: list[BaseException] = []

    def migrate() -> None:
        try:
            with engine.connect() as conn:  # type: ignore[attr-defined]
                context = MigrationContext.configure(conn)
                op = Operations(context)
                with context.begin_transaction(), context.autocommit_block():
                    op.create_index("orders_customer_idx", "orders", ["customer_id"])
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    holder = psycopg.connect(dsn)
    waited_for: str | None = None
    worker = threading.Thread(target=migrate, daemon=True)
    try:
        holder.execute("LOCK TABLE orders IN SHARE MODE")
        worker.start()
        with psycopg.connect(dsn, autocommit=True) as observer:
            deadline = time.monotonic() + 4
            while waited_for is None and time.monotonic() < deadline and worker.is_alive():
                row = observer.execute(
                    "SELECT mode FROM pg_locks WHERE relation = 'orders'::regclass "
                    "AND NOT granted").fetchone()
                waited_for = row[0] if row else None
                time.sleep(0.02)
    finally:
        holder.rollback()
        holder.close()
        worker.join(timeout=30)
    assert not worker.is_alive(), "the migration did not finish"
    assert not errors, errors
    return waited_for


# =========================================================================== offline lint


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> list[RenderedRevision]:
    target = tmp_path_factory.mktemp("rendered") / "alembic_project"
    shutil.copytree(PROJECT, target, ignore=shutil.ignore_patterns("__pycache__"))
    return render_revisions(target)


def test_every_revision_is_rendered_with_its_own_transaction(
        rendered: list[RenderedRevision]) -> None:
    assert [r.revision for r in rendered] == ["0001", "0002", "0003", "0004"]
    assert [r.down_revisions for r in rendered] == [(), ("0001",), ("0002",), ("0003",)]
    by_id = {r.revision: r for r in rendered}
    own = [c.sql.strip() for c in by_id["0003"].chunks if c.line is not None]
    # autocommit_block(): Alembic commits before the build and begins again after it
    assert own[0] == "COMMIT;"
    assert own[1].startswith("CREATE INDEX CONCURRENTLY orders_created_at_idx")
    assert own[2] == "BEGIN;"
    alembic_own = [c.sql.strip() for c in by_id["0001"].chunks if c.line is None]
    assert alembic_own[0] == "SET lock_timeout = '3s';"  # env.py, in offline mode
    assert alembic_own[1] == "BEGIN;"
    assert alembic_own[2].startswith("CREATE TABLE alembic_version")
    assert alembic_own[3] == "-- Running upgrade  -> 0001"
    assert alembic_own[-1] == "COMMIT;"
    assert by_id["0004"].path.endswith("0004_index_customer.py")


def test_lint_reports_the_unsafe_revision_at_the_line_of_its_op_call(
        rendered: list[RenderedRevision], tmp_path: Path) -> None:
    base = Path(rendered[0].path).parents[2]
    results = [lint_revision(r, relative_to=base) for r in rendered]
    findings = {r.revision.revision: [(res.statement.line, f.rule)
                                      for res in r.file.results for f in res.findings]
                for r in results}
    assert findings["0001"] == findings["0002"] == findings["0003"] == []
    assert findings["0004"] == [(UNSAFE_INDEX_LINE, "create-index"),
                                (UNSAFE_INDEX_LINE, "statements-after-access-exclusive")]
    unsafe = results[3].file
    assert unsafe.file == UNSAFE_FILE
    create_index, after_exclusive = unsafe.results[1].findings
    assert create_index.message.startswith("create-index: revision 0004 (add status, index")
    assert "CREATE INDEX CONCURRENTLY orders_customer_id_idx ON orders (customer_id)" in (
        create_index.safe_alternative or "")
    assert "`# safeddl: ignore[create-index] <reason>` on the line above" in create_index.message
    # the earlier statement it names is at its own line in the revision file
    assert f"taken at line {UNSAFE_ADD_COLUMN_LINE} by `ALTER TABLE orders ADD COLUMN status" in (
        after_exclusive.message)


def test_every_output_format_names_revision_file_and_line(
        rendered: list[RenderedRevision]) -> None:
    base = Path(rendered[0].path).parents[2]
    revisions = [lint_revision(r, relative_to=base) for r in rendered]
    files = files_of(revisions)
    location = f"{UNSAFE_FILE}:{UNSAFE_INDEX_LINE}"

    text = lint_text(files)
    assert f"{location}: error [create-index] revision 0004" in text

    github = lint_github(files)
    assert (f"::error file={UNSAFE_FILE},line={UNSAFE_INDEX_LINE},title=safeddl create-index"
            "::revision 0004") in github

    sarif = json.loads(lint_sarif(files))
    results = sarif["runs"][0]["results"]
    create_index = next(r for r in results if r["ruleId"] == "create-index")
    physical = create_index["locations"][0]["physicalLocation"]
    assert physical["artifactLocation"]["uri"] == UNSAFE_FILE
    assert physical["region"]["startLine"] == UNSAFE_INDEX_LINE
    assert "revision 0004" in create_index["message"]["text"]

    objects = json.loads(lint_json(revisions))
    flagged = [o for o in objects if o["findings"]]
    assert {(o["revision"], o["file"], o["line"]) for o in flagged} == {
        ("0004", UNSAFE_FILE, UNSAFE_INDEX_LINE)}
    assert [o["revision"] for o in objects] == ["0001", "0002", "0003", "0004", "0004"]


def test_cli_lint_alembic_names_the_unsafe_revision_and_exits_1(
        project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project)
    result = CliRunner().invoke(main, ["lint", "--alembic", "."])
    assert result.exit_code == 1, result.output
    assert f"{UNSAFE_FILE}:{UNSAFE_INDEX_LINE}: error [create-index] revision 0004" in (
        result.output)
    assert "0001_create_orders.py" not in result.output
    assert "2 errors, 0 warnings (5 statements in 4 files)" in result.output

    by_ini = CliRunner().invoke(main, ["lint", "--format", "json", "--alembic",
                                       str(project / "alembic.ini")])
    assert by_ini.exit_code == 1
    assert {o["revision"] for o in json.loads(by_ini.output) if o["findings"]} == {"0004"}


def test_cli_lint_alembic_ignore_comments_above_the_op_call(
        project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = project / UNSAFE_FILE
    source = path.read_text().splitlines()
    assert source[UNSAFE_INDEX_LINE - 1].strip().startswith("op.create_index(")
    source[UNSAFE_INDEX_LINE - 1:UNSAFE_INDEX_LINE - 1] = [
        "    # safeddl: ignore[create-index] orders is empty when this runs",
        "    # safeddl: ignore[statements-after-access-exclusive] same",
    ]
    path.write_text("\n".join(source) + "\n")
    monkeypatch.chdir(project)

    result = CliRunner().invoke(main, ["lint", "--alembic", "."])

    assert result.exit_code == 0, result.output
    line = UNSAFE_INDEX_LINE + 2
    assert f"{UNSAFE_FILE}:{line}: ignored [create-index] orders is empty when this runs" in (
        result.output)
    assert "2 ignored" in result.output


def test_python_ignore_comments_reads_only_the_comment_block_just_above() -> None:
    source = ["x = 1",
              "# safeddl: ignore[drop-index] far away",
              "y = 2",
              "# an ordinary comment",
              "    # safeddl: ignore[create-index, reindex] reason here",
              "op.create_index('i', 't', ['c'])"]
    assert python_ignore_comments(source, 6) == [
        "safeddl: ignore[create-index, reindex] reason here"]
    assert python_ignore_comments(source, 1) == []


def test_cli_lint_alembic_problems_exit_2(project: Path, tmp_path: Path) -> None:
    no_ini = CliRunner().invoke(main, ["lint", "--alembic", str(tmp_path)])
    assert no_ini.exit_code == 2
    assert "no alembic.ini" in no_ini.output

    (project / "migrations" / "versions" / "0005_broken.py").write_text(
        'revision = "0005"\ndown_revision = "0004"\n\n'
        "def upgrade():\n    raise RuntimeError('broken revision')\n")
    broken = CliRunner().invoke(main, ["lint", "--alembic", str(project)])
    assert broken.exit_code == 2
    assert "broken revision" in broken.output

    with pytest.raises(AlembicProjectError, match="does not exist"):
        render_revisions(tmp_path / "missing.ini")

    nothing = CliRunner().invoke(main, ["lint"])
    assert nothing.exit_code == 2
    assert "--alembic PATH" in nothing.output
