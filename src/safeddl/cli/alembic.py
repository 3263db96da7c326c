"""Alembic: guarding ``alembic upgrade``, and linting every revision without a hand export.

Guarding ``alembic upgrade`` (online)
-------------------------------------
Two lines in the project's ``env.py``, after the engine is built::

    import safeddl

    def run_migrations_online() -> None:
        connectable = engine_from_config(config.get_section(config.config_ini_section, {}),
                                         prefix="sqlalchemy.", poolclass=pool.NullPool)
        safeddl.install(connectable)  # or safeddl.install(connectable, safeddl.Policy(...))
        ...

(or, with no code change, ``?plugin=safeddl`` at the end of ``sqlalchemy.url``). Every
``op.*`` statement then goes through the guard: DDL waits at most ``lock_timeout`` for
its lock, and an unsafe statement is refused before it is sent, with the rule's message.

Alembic runs a whole ``alembic upgrade`` in one transaction by default (PostgreSQL has
transactional DDL): a refusal rolls back every revision of that run, not only the one
refused. Set ``transaction_per_migration=True`` in ``context.configure`` to keep the
revisions before it. That matters most with ``autocommit_block()``: what runs inside it
is committed at once, so with one transaction for the whole run a later refusal rolls
back that revision's version-table update but not its work, and the next ``alembic
upgrade`` runs it again (and fails on the index it already built).

Statements that cannot run in a transaction block (``CREATE INDEX CONCURRENTLY``, and the
rewrites that need autocommit) go inside Alembic's ``autocommit_block()``::

    def upgrade() -> None:
        with op.get_context().autocommit_block():
            op.create_index("orders_customer_idx", "orders", ["customer_id"],
                            postgresql_concurrently=True)

When the policy rewrites ``create-index`` (``actions={"create-index": "rewrite"}``), a
plain ``op.create_index(...)`` inside ``autocommit_block()`` is sent as ``CREATE INDEX
CONCURRENTLY``; inside the migration's transaction it is refused, with the safe
statements spelled out and a pointer to ``autocommit_block()``.

Linting every revision (offline)
--------------------------------
:func:`lint_alembic` (``safeddl lint --alembic PATH``) renders each revision's SQL the
way ``alembic upgrade <down>:<revision> --sql`` does, and lints it with the revision's own
transaction context (the ``BEGIN;`` / ``COMMIT;`` Alembic emits around it and around an
``autocommit_block()``). Each finding names the revision and the line of the ``op.*``
call in the revision file that produced the statement. A ``# safeddl: ignore[rule-id]
reason`` comment on the lines just above that call silences the rule for it.

Rendering runs the project's ``env.py`` in offline mode in a child process (started in
the directory of ``alembic.ini``, like the ``alembic`` command), so it needs the
project's imports to work but no database: offline mode needs only the dialect of
``sqlalchemy.url`` (``postgresql://`` when the ini file sets none).

Without a guard, ``alembic upgrade`` sets no ``lock_timeout``, and lint reports that
(``missing-lock-timeout``). ``context.execute("SET lock_timeout = '3s'")`` inside
``with context.begin_transaction():`` in ``run_migrations_offline()``, before
``context.run_migrations()``, puts it into every rendered script (and into the SQL a DBA
applies by hand).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import tempfile
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safeddl.analysis import Catalog
from safeddl.cli.report import FileResults, statement_object
from safeddl.rules import Finding, Result, lint_script
from safeddl.rules.engine import ignores_in
from safeddl.runtime.errors import SafeDDLError

INI_NAME = "alembic.ini"
OFFLINE_URL = "postgresql://"
RENDER_TIMEOUT_SECONDS = 300.0
_STDERR_TAIL = 4000


class AlembicProjectError(SafeDDLError):
    """The Alembic project could not be found or its revisions could not be rendered."""


@dataclass(frozen=True)
class Chunk:
    """One piece of SQL Alembic wrote in offline mode. ``line`` is the line of the
    revision file whose code emitted it (its ``op.*`` call); None for what Alembic or
    ``env.py`` wrote around the revision (``BEGIN;``, the version table, ...)."""

    sql: str
    line: int | None = None


@dataclass(frozen=True)
class RenderedRevision:
    """The offline SQL of one revision, upgraded on its own from its (first) parent."""

    revision: str
    down_revisions: tuple[str, ...]
    path: str  # the revision file
    doc: str
    chunks: tuple[Chunk, ...]

    @property
    def label(self) -> str:
        return f"revision {self.revision}" + (f" ({self.doc})" if self.doc else "")


@dataclass(frozen=True)
class RevisionResults:
    """The lint results of one revision; ``file.file`` is the revision file."""

    revision: RenderedRevision
    file: FileResults


# =========================================================================== finding the project


def find_config(path: str | os.PathLike[str]) -> Path:
    """``alembic.ini`` in a directory, or the ini file itself."""
    candidate = Path(path)
    if candidate.is_dir():
        candidate = candidate / INI_NAME
        if not candidate.is_file():
            raise AlembicProjectError(f"no {INI_NAME} in {path}: give the directory that holds "
                                      f"{INI_NAME}, or the ini file")
    elif not candidate.is_file():
        raise AlembicProjectError(f"{path} does not exist")
    return candidate.resolve()


# =========================================================================== rendering


def render_revisions(path: str | os.PathLike[str], *,
                     timeout: float = RENDER_TIMEOUT_SECONDS) -> list[RenderedRevision]:
    """Every revision's offline SQL, oldest first. Runs the project's ``env.py`` in a
    child process started in the directory of ``alembic.ini``."""
    config = find_config(path)
    if importlib.util.find_spec("alembic") is None:
        raise AlembicProjectError("Alembic is not installed here: pip install 'safeddl[alembic]' "
                                  "(or alembic) in the project's environment")
    package_root = str(Path(__file__).resolve().parent.parent)
    with tempfile.TemporaryDirectory(prefix="safeddl-alembic-") as directory:
        output = Path(directory) / "revisions.json"
        command = [sys.executable, "-c", _CHILD_BOOTSTRAP, package_root, str(config),
                   str(output)]
        try:
            completed = subprocess.run(command, cwd=config.parent, stdin=subprocess.DEVNULL,
                                       capture_output=True, text=True, timeout=timeout,
                                       check=False)
        except subprocess.TimeoutExpired as exc:
            raise AlembicProjectError(
                f"rendering the revisions of {config} took longer than {timeout:.0f}s") from exc
        if completed.returncode != 0 or not output.is_file():
            raise AlembicProjectError(_render_failure(config, completed))
        data = json.loads(output.read_text(encoding="utf-8"))
    return [_revision_from_json(item) for item in data]


# The child finds this safeddl also when it is not installed (run from a checkout).
_CHILD_BOOTSTRAP = (
    "import sys; sys.path.append(sys.argv[1]); "
    "from safeddl.cli.alembic import _child_main; sys.exit(_child_main(sys.argv[2:]))"
)


def _render_failure(config: Path, completed: subprocess.CompletedProcess[str]) -> str:
    errors = (completed.stderr or "").strip()
    if len(errors) > _STDERR_TAIL:
        errors = "..." + errors[-_STDERR_TAIL:]
    return (f"could not render the revisions of {config} in offline mode "
            f"(alembic upgrade --sql):\n{errors or f'exit code {completed.returncode}'}")


def _revision_from_json(item: dict[str, Any]) -> RenderedRevision:
    return RenderedRevision(
        revision=str(item["revision"]),
        down_revisions=tuple(str(d) for d in item["down_revisions"]),
        path=str(item["path"]),
        doc=str(item.get("doc") or ""),
        chunks=tuple(Chunk(str(c["sql"]), c.get("line")) for c in item["chunks"]),
    )


# -- the child process ---------------------------------------------------------------------


class _RecordingOutput(io.StringIO):
    """Alembic's offline ``output_buffer``: each write is one statement (or comment);
    the call stack tells which revision file, and which line of it, emitted it."""

    def __init__(self, revision_files: dict[str, str]) -> None:
        super().__init__()
        self.revision_files = revision_files  # real path -> revision id
        self.chunks: list[tuple[str, str | None, int | None]] = []  # sql, revision, line
        self._real: dict[str, str] = {}

    def write(self, text: str) -> int:
        revision, line = self._emitter()
        self.chunks.append((text, revision, line))
        return len(text)

    def _emitter(self) -> tuple[str | None, int | None]:
        frame = sys._getframe(2)
        while frame is not None:
            filename = frame.f_code.co_filename
            real = self._real.get(filename)
            if real is None:
                real = self._real[filename] = os.path.realpath(filename)
            revision = self.revision_files.get(real)
            if revision is not None:
                return revision, frame.f_lineno
            frame = frame.f_back  # type: ignore[assignment]
        return None, None


def _render_all(config_path: str) -> list[dict[str, Any]]:
    """In the child: render each revision with ``alembic upgrade <down>:<rev> --sql``."""
    from alembic import command
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    probe = Config(config_path)
    scripts = list(reversed(list(ScriptDirectory.from_config(probe).walk_revisions())))
    files = {os.path.realpath(script.path): script.revision for script in scripts}
    rendered = []
    for script in scripts:
        recorder = _RecordingOutput(files)
        config = Config(config_path, output_buffer=recorder, stdout=sys.stderr)
        if not config.get_main_option("sqlalchemy.url"):
            config.set_main_option("sqlalchemy.url", OFFLINE_URL)
        downs = _as_tuple(script.down_revision)
        target = f"{downs[0]}:{script.revision}" if downs else script.revision
        command.upgrade(config, target, sql=True)
        chunks = [{"sql": sql, "line": line} for sql, revision, line in recorder.chunks
                  if revision is None or revision == script.revision]
        rendered.append({
            "revision": script.revision,
            "down_revisions": list(downs),
            "path": os.path.realpath(script.path),
            "doc": (script.doc or "").strip(),
            "chunks": chunks,
        })
    return rendered


def _as_tuple(value: str | Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)


def _child_main(argv: Sequence[str]) -> int:
    config_path, output = argv
    data = _render_all(config_path)
    Path(output).write_text(json.dumps(data), encoding="utf-8")
    return 0


# =========================================================================== linting


def lint_alembic(path: str | os.PathLike[str], *, version: int = 18,
                 relative_to: str | os.PathLike[str] | None = None,
                 catalog: Catalog | None = None) -> list[RevisionResults]:
    """Render and lint every revision of the Alembic project at ``path`` (the directory
    of ``alembic.ini`` or the file), oldest first. File names are shown relative to
    ``relative_to`` (the working directory) when they are below it.

    Each revision is linted against the schema left by the revisions before it (on
    top of ``catalog``, the schema before the first one, when given): a table an
    earlier revision created is an existing table, not one "created in this script"."""
    from safeddl.cli.schema import learn_existing

    base = Path(relative_to) if relative_to is not None else Path.cwd()
    schema = catalog.copy() if catalog is not None else Catalog()
    out = []
    for revision in render_revisions(path):
        out.append(lint_revision(revision, version=version, relative_to=base, catalog=schema))
        script, _starts = _script_of(revision, _source_lines(revision.path))
        schema = learn_existing(schema, script, version)
    return out


def lint_revision(revision: RenderedRevision, *, version: int = 18,
                  relative_to: str | os.PathLike[str] | None = None,
                  catalog: Catalog | None = None) -> RevisionResults:
    """Lint one rendered revision. Only the statements of the revision's own code are
    reported, at the line of the ``op.*`` call that emitted them; Alembic's own
    statements (``BEGIN;``, ``COMMIT;``, the version table) count for the context."""
    source = _source_lines(revision.path)
    script, starts = _script_of(revision, source)
    results: list[Result] = []

    def to_source(script_line: int) -> int | None:
        return revision.chunks[bisect_right(starts, script_line) - 1].line

    from safeddl.cli.schema import with_sizes

    for result in with_sizes(lint_script(script, version=version, catalog=catalog), catalog):
        line = to_source(result.statement.line)
        if line is None or _is_transaction_control(result):
            continue
        results.append(_relocated(result, line, revision.label, to_source))
    name = display_path(revision.path, relative_to)
    return RevisionResults(revision, FileResults(name, tuple(results)))


def _script_of(revision: RenderedRevision, source: list[str]) -> tuple[str, list[int]]:
    """The revision's SQL as one script, with the line each chunk starts on. The
    ``# safeddl: ignore[...]`` comments above an ``op.*`` call go before its SQL."""
    parts: list[str] = []
    starts: list[int] = []
    line = 1
    seen_lines: set[int] = set()
    for chunk in revision.chunks:
        text = chunk.sql.rstrip("\n") + "\n\n"
        if chunk.line is not None and chunk.line not in seen_lines:
            seen_lines.add(chunk.line)
            comments = python_ignore_comments(source, chunk.line)
            text = "".join(f"-- {comment}\n" for comment in comments) + text
        starts.append(line)
        parts.append(text)
        line += text.count("\n")
    return "".join(parts), starts


def python_ignore_comments(source: Sequence[str], line: int) -> list[str]:
    """The ``# safeddl: ...`` comments on the lines just above ``line`` (1-based) of a
    Python file, without the ``#``."""
    found: list[str] = []
    index = line - 2
    while 0 <= index < len(source):
        text = source[index].strip()
        if not text.startswith("#"):
            break
        comment = text.lstrip("#").strip()
        if ignores_in((comment,)):
            found.append(comment)
        index -= 1
    return list(reversed(found))


def _source_lines(path: str) -> list[str]:
    try:
        return Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []


def _is_transaction_control(result: Result) -> bool:
    from safeddl.analysis import Action

    return result.statement.kind is Action.TRANSACTION_CONTROL


def _relocated(result: Result, line: int, label: str,
               to_source: Callable[[int], int | None]) -> Result:
    """The result at the revision file's line, each finding naming the revision."""
    statement = dataclasses.replace(result.statement, line=line)
    findings = [_in_revision(finding, label, to_source) for finding in result.findings]
    return Result(statement, findings, list(result.ignored))


def _in_revision(finding: Finding, label: str, to_source: Callable[[int], int | None],
                 ) -> Finding:
    """The message names the revision; lines of other statements it mentions become
    lines of the revision file, and the opt-out is the Python comment."""
    prefix = f"{finding.rule}: "
    body = finding.message.removeprefix(prefix)
    body = _LINES.sub(lambda match: _source_lines_text(match, to_source), body)
    body = body.replace(
        f"`-- safeddl: ignore[{finding.rule}] <reason>` on the line before the statement",
        f"`# safeddl: ignore[{finding.rule}] <reason>` on the line above the `op.*` call")
    return dataclasses.replace(finding, message=f"{prefix}{label}: {body}")


_LINES = re.compile(r"\b(lines?) (\d+(?:, \d+)*(?: and \d+)?)\b")


def _source_lines_text(match: re.Match[str], to_source: Callable[[int], int | None]) -> str:
    def one(number: re.Match[str]) -> str:
        mapped = to_source(int(number.group(0)))
        return str(mapped) if mapped is not None else number.group(0)

    return f"{match.group(1)} " + re.sub(r"\d+", one, match.group(2))


def display_path(path: str, relative_to: str | os.PathLike[str] | None = None) -> str:
    """``path`` relative to ``relative_to`` (the working directory) when below it."""
    base = Path(relative_to) if relative_to is not None else Path.cwd()
    try:
        return Path(path).resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return path


def files_of(revisions: Sequence[RevisionResults]) -> list[FileResults]:
    return [item.file for item in revisions]


def lint_json(revisions: Sequence[RevisionResults], files: Sequence[FileResults] = ()) -> str:
    """``lint --format json``: the objects of plain SQL ``files`` first, then those of
    the revisions, which have one more key, ``revision``."""
    objects = []
    for entry, revision in [*((f, None) for f in files),
                            *((r.file, r.revision.revision) for r in revisions)]:
        for result in entry.results:
            obj = statement_object(entry.file, result)
            obj["ignored"] = [{"rule": i.rule, "reason": i.reason} for i in result.ignored]
            if revision is not None:
                obj["revision"] = revision
            objects.append(obj)
    return json.dumps(objects, indent=2, ensure_ascii=False)


__all__ = [
    "AlembicProjectError",
    "Chunk",
    "RenderedRevision",
    "RevisionResults",
    "display_path",
    "files_of",
    "find_config",
    "lint_alembic",
    "lint_json",
    "lint_revision",
    "python_ignore_comments",
    "render_revisions",
]

