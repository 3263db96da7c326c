"""``safeddl replay``: the history to replay (SQL files in order, or an Alembic project),
where (a given server, or a private throwaway one), and the report."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import click
import psycopg

from safeddl.cli.sources import read_source
from safeddl.observe.replay import ReplayReport, replay_history
from safeddl.observe.trace import database_label, plain_report, print_rich_report


def natural_key(name: str) -> list[object]:
    """``2_b.sql`` before ``10_a.sql``: digits compare as numbers."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def sql_history(paths: Sequence[str]) -> list[tuple[str, str]]:
    """The scripts of ``paths`` in order: a folder gives its ``*.sql`` files (with those of
    its subfolders) in natural name order, a file itself."""
    files: list[Path] = []
    for path in paths:
        candidate = Path(path)
        if candidate.is_dir():
            found = sorted((p for p in candidate.rglob("*.sql") if p.is_file()),
                           key=lambda p: natural_key(str(p.relative_to(candidate))))
            if not found:
                raise click.BadParameter(f"no .sql files in {path}", param_hint="PATH")
            files.extend(found)
        else:
            files.append(candidate)
    return [(str(file), read_source(str(file))) for file in files]


def alembic_history(path: str) -> list[tuple[str, str]]:
    """The offline SQL of every revision of an Alembic project, oldest first."""
    from safeddl.cli.alembic import AlembicProjectError, render_revisions

    try:
        revisions = render_revisions(path)
    except AlembicProjectError as exc:
        raise click.BadParameter(str(exc), param_hint="PATH") from None
    return [(f"{revision.path} ({revision.label})",
             "\n\n".join(chunk.sql.rstrip("\n") for chunk in revision.chunks) + "\n")
            for revision in revisions]


@contextmanager
def target_server(dsn: str | None) -> Iterator[str]:
    """``dsn``, or a private throwaway PostgreSQL for the length of the block."""
    if dsn is not None:
        yield dsn
        return
    from safeddl.testing.server import start_server

    server = start_server()
    try:
        yield server.dsn
    finally:
        server.stop()


def run_command(dsn: str | None, paths: Sequence[str], *, alembic: bool, output: str,
                pg_version: int | None, lock_timeout: float, statement_timeout: float,
                keep: bool, confirmed: bool) -> int:
    """Replay, print, and the exit code (0 all agree, 1 differences or failures, 2 refused
    to run or could not connect)."""
    if alembic:
        if len(paths) != 1:
            raise click.BadParameter("--alembic takes one project (the folder of alembic.ini "
                                     "or the file)", param_hint="PATH")
        history = alembic_history(paths[0])
    else:
        history = sql_history(paths)
    if dsn is not None:
        click.echo(f"safeddl replay: creating a scratch database on {database_label(dsn)} "
                   f"and running {len(history)} script(s) in it for real (the role needs "
                   "CREATEDB); it is dropped at the end.", err=True)
        if not confirmed:
            if not sys.stdin.isatty():
                click.echo("safeddl replay: not confirmed; pass --yes to run it.", err=True)
                return 2
            if not click.confirm("Run it?", err=True):
                return 2
    try:
        with target_server(dsn) as server_dsn:
            report = replay_history(server_dsn, history, pg_version=pg_version,
                                    lock_timeout=lock_timeout,
                                    statement_timeout=statement_timeout, keep=keep)
    except psycopg.Error as exc:
        click.echo(f"safeddl replay: {exc}".rstrip(), err=True)
        return 2
    print_report(report, output)
    return 0 if report.ok else 1


def print_report(report: ReplayReport, output: str) -> None:
    if output == "json":
        click.echo(json.dumps(report.as_json(), indent=2, ensure_ascii=False))
        return
    try:
        from rich.console import Console
    except ImportError:  # pragma: no cover - rich is optional
        for script in report.scripts:
            click.echo(plain_report(script.trace))
    else:
        console = Console(soft_wrap=False)
        for script in report.scripts:
            console.rule(script.label)
            print_rich_report(script.trace, console)
            if script.apply_error is not None:
                console.print(f"applying it failed at {script.apply_error}", style="red")
    click.echo(report.summary())


__all__ = ["alembic_history", "natural_key", "run_command", "sql_history"]
