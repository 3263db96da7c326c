"""The ``safeddl`` command line: analyze, lint, rules, explain.

Exit codes: 0 fine, 1 ``lint`` found an error-severity problem, 2 usage error
(missing file, unsupported ``--pg-version``, unknown rule).
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import TYPE_CHECKING

import click

from safeddl.analysis import NEWEST, OLDEST, Catalog, check_version
from safeddl.cli.report import (
    FileResults,
    analyze_json,
    has_errors,
    lint_github,
    lint_json,
    lint_sarif,
    lint_text,
    plain_tables,
    print_rich_tables,
)
from safeddl.cli.sources import display_name, read_source
from safeddl.rules import BY_ID, DOCS, RULES, lint_script

if TYPE_CHECKING:  # pragma: no cover - typing only
    from safeddl.cli.alembic import RevisionResults

VERSION_ENV = "SAFEDDL_PG_VERSION"


def tool_version() -> str:
    try:
        return package_version("safeddl")
    except PackageNotFoundError:  # pragma: no cover - running from a checkout
        return "0"


def parse_pg_version(ctx: click.Context, param: click.Parameter, value: object) -> int:
    """A PostgreSQL major version safeddl knows (``OLDEST`` to ``NEWEST``)."""
    try:
        number = int(str(value).strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a PostgreSQL major version: safeddl "
                                 f"knows {OLDEST} to {NEWEST}") from None
    try:
        return check_version(number)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def pg_version_option(command: Callable[..., None]) -> Callable[..., None]:
    return click.option(
        "--pg-version", callback=parse_pg_version, default=str(NEWEST), metavar="N",
        envvar=VERSION_ENV, show_default=True, show_envvar=True,
        help=f"PostgreSQL major version of the server ({OLDEST} to {NEWEST}).",
    )(command)


def files_argument(command: Callable[..., None]) -> Callable[..., None]:
    return click.argument(
        "files", nargs=-1, required=True, metavar="FILE...",
        type=click.Path(exists=True, dir_okay=False, allow_dash=True),
    )(command)


def lint_files(paths: Sequence[str], version: int, *,
               assume_in_transaction: bool = False,
               catalog: Catalog | None = None) -> list[FileResults]:
    """Each file on its own, against the schema ``catalog`` describes (if any)."""
    from safeddl.cli.schema import with_sizes

    with fewer_collections():
        return [
            FileResults(display_name(path), tuple(with_sizes(lint_script(
                read_source(path), version=version,
                assume_in_transaction=assume_in_transaction, catalog=catalog), catalog)))
            for path in paths
        ]


@contextmanager
def fewer_collections() -> Iterator[None]:
    """Python's cycle collector, less often while a batch of files is linted: the
    results kept for the report only grow, and with the default first threshold (700
    allocations) the collector ran about 600 times over 10,000 statements and took
    about a sixth of the CPU time. What exists before (modules, sqlglot's tables) is
    left out of its scans (``gc.freeze``); both are undone afterwards."""
    previous = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(10_000, *previous[1:])
    try:
        yield
    finally:
        gc.set_threshold(*previous)
        gc.unfreeze()


def schema_options(command: Callable[..., None]) -> Callable[..., None]:
    """``--schema FILE``, ``--dsn URL``, ``--timezone ZONE``: the schema to lint against."""
    command = click.option(
        "--timezone", metavar="ZONE", default=None,
        help="The TimeZone of the session that runs the migrations (timestamp <-> "
             "timestamptz rewrites unless it is UTC); with --dsn, the database's.")(command)
    command = click.option(
        "--dsn", "schema_dsn", metavar="URL", default=None,
        help="Read the live catalog of this database (e.g. a staging copy): types, "
             "constraints, indexes, partitions, sizes, TimeZone. Only reads pg_catalog.",
    )(command)
    return click.option(
        "--schema", "schema_file", metavar="FILE", default=None,
        type=click.Path(exists=True, dir_okay=False, allow_dash=True),
        help="The current schema: a `pg_dump --schema-only` file or any SQL creating it. "
             "Its statements are learnt, not reported.")(command)


def load_schema(schema_file: str | None, schema_dsn: str | None, version: int,
                timezone: str | None) -> Catalog | None:
    from safeddl.cli.schema import SchemaError, schema_catalog

    text = read_source(schema_file) if schema_file else None
    try:
        return schema_catalog(text, schema_dsn, version, timezone)
    except SchemaError as exc:
        raise click.BadParameter(str(exc), param_hint="--dsn") from None


def traced_run_options(command: Callable[..., None]) -> Callable[..., None]:
    """--format, --pg-version, --lock-timeout, --statement-timeout of the commands that
    run statements on a server and compare their locks with the analysis."""
    for option in reversed([
        click.option("--format", "output", type=click.Choice(["table", "json"]),
                     default="table", show_default=True,
                     help="table for people, json for tools."),
        click.option("--pg-version", metavar="N", default=None,
                     callback=lambda ctx, param, value: None if value is None
                     else parse_pg_version(ctx, param, value),
                     help="Predict for this major version (default: the server's)."),
        click.option("--lock-timeout", default="5s", show_default=True, metavar="DURATION",
                     help="How long each statement may wait for a lock before it fails."),
        click.option("--statement-timeout", default="10min", show_default=True,
                     metavar="DURATION", help="How long each statement may run."),
    ]):
        command = option(command)
    return command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(tool_version(), prog_name="safeddl")
def main() -> None:
    """Predict the table locks PostgreSQL statements take and flag unsafe migrations."""


@main.command()
@click.option("--format", "output", type=click.Choice(["table", "json"]), default="table",
              show_default=True, help="table for people, json for tools (stable contract).")
@pg_version_option
@schema_options
@files_argument
def analyze(output: str, pg_version: int, schema_file: str | None, schema_dsn: str | None,
            timezone: str | None, files: tuple[str, ...]) -> None:
    """Show the locks each statement takes, and what the rules find.

    FILE is a SQL script; `-` reads standard input.
    """
    catalog = load_schema(schema_file, schema_dsn, pg_version, timezone)
    results = lint_files(files, pg_version, catalog=catalog)
    if output == "json":
        click.echo(analyze_json(results))
        return
    print_table(results)


def print_table(results: list[FileResults]) -> None:
    try:
        from rich.console import Console
    except ImportError:  # pragma: no cover - rich is optional
        click.echo(plain_tables(results))
        return
    print_rich_tables(results, Console(soft_wrap=False))


@main.command()
@click.option("--format", "output", type=click.Choice(["text", "json", "github", "sarif"]),
              default="text", show_default=True, help="Output format.")
@pg_version_option
@click.option("--assume-in-transaction", is_flag=True,
              help="The script runs inside a transaction block (as migration tools do).")
@click.option("--alembic", "alembic_path", metavar="PATH",
              type=click.Path(exists=True, file_okay=True, dir_okay=True),
              help="Lint every revision of this Alembic project (the directory holding "
                   "alembic.ini, or the ini file), rendered offline as `alembic upgrade "
                   "--sql` does; no database needed.")
@schema_options
@click.argument("files", nargs=-1, required=False, metavar="[FILE]...",
                type=click.Path(exists=True, dir_okay=False, allow_dash=True))
def lint(output: str, pg_version: int, assume_in_transaction: bool,
         alembic_path: str | None, schema_file: str | None, schema_dsn: str | None,
         timezone: str | None, files: tuple[str, ...]) -> None:
    """Check migrations; exit 1 when an error-severity problem remains.

    FILE is a SQL script; `-` reads standard input. `-- safeddl: ignore[rule-id]
    reason` on the line before a statement silences one rule for it (in an Alembic
    revision: `# safeddl: ignore[rule-id] reason` above the `op.*` call).
    """
    if not files and alembic_path is None:
        raise click.UsageError("give a FILE to lint, or --alembic PATH")
    catalog = load_schema(schema_file, schema_dsn, pg_version, timezone)
    results = lint_files(files, pg_version, assume_in_transaction=assume_in_transaction,
                         catalog=catalog)
    revisions = lint_alembic_project(alembic_path, pg_version, catalog) if alembic_path else []
    text = format_lint(output, results, revisions)
    if text:
        click.echo(text)
    sys.exit(1 if has_errors([*results, *(r.file for r in revisions)]) else 0)


def lint_alembic_project(path: str, pg_version: int,
                         catalog: Catalog | None = None) -> list[RevisionResults]:
    from safeddl.cli.alembic import AlembicProjectError, lint_alembic

    try:
        return lint_alembic(path, version=pg_version, catalog=catalog)
    except AlembicProjectError as exc:
        raise click.BadParameter(str(exc), param_hint="--alembic") from None


def format_lint(output: str, results: list[FileResults],
                revisions: Sequence[RevisionResults] = ()) -> str:
    if revisions:
        results = [*results, *(r.file for r in revisions)]
    if output == "json":
        if revisions:
            from safeddl.cli.alembic import lint_json as alembic_lint_json

            return alembic_lint_json(revisions, results[: len(results) - len(revisions)])
        return lint_json(results)
    if output == "github":
        return lint_github(results)
    if output == "sarif":
        return lint_sarif(results, tool_version=tool_version())
    return lint_text(results)


@main.command()
@click.option("--format", "output", type=click.Choice(["text", "markdown"]), default="text",
              show_default=True, help="markdown: the table the README shows.")
def rules(output: str) -> None:
    """List the rules: id, severity, what the runtime guard does by default, summary."""
    from safeddl.runtime.policy import known_rules

    actions = known_rules()
    if output == "markdown":
        click.echo("| rule | severity | guard's default | what it catches |")
        click.echo("|---|---|---|---|")
        for rule in RULES:
            click.echo(f"| [`{rule.id}`](docs/rules/{rule.id}.md) | {rule.severity.value} "
                       f"| {actions[rule.id].value} | {rule.summary} |")
        return
    width = max((len(rule.id) for rule in RULES), default=0)
    for rule in RULES:
        click.echo(f"{rule.id:<{width}}  {rule.severity.value:<7}  "
                   f"{actions[rule.id].value:<7}  {rule.summary}")


@main.command()
@click.argument("rule")
def explain(rule: str) -> None:
    """Print the documentation of RULE (an id from `safeddl rules`)."""
    if rule not in BY_ID:
        known = ", ".join(sorted(BY_ID))
        raise click.UsageError(f"unknown rule {rule!r}; known rules: {known}")
    click.echo(DOCS.get(rule) or BY_ID[rule].summary)


@main.command()
@click.option("--dsn", required=True, metavar="URL",
              help="The database to run FILE on (libpq URL or conninfo): a staging copy.")
@traced_run_options
@click.option("--yes", is_flag=True, help="Do not ask before running FILE on the database.")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
def trace(dsn: str, output: str, pg_version: int | None, lock_timeout: str,
          statement_timeout: str, yes: bool, file: str) -> None:
    """Run FILE on a database in a transaction that is rolled back, and compare the
    locks each statement took (pg_locks) and the tables it rewrote with what `analyze`
    predicts. Exit 1 when they differ or a statement fails.

    The statements really run (rewrites rewrite; locks are held until the rollback at
    the end): use a staging copy, not a live database.
    """
    from safeddl.observe.trace import run_command

    sys.exit(run_command(dsn, display_name(file), read_source(file), output=output,
                         pg_version=pg_version, lock_timeout=lock_timeout,
                         statement_timeout=statement_timeout, confirmed=yes))


@main.command()
@click.option("--dsn", metavar="URL",
              help="Create the scratch database on this server (libpq URL or conninfo; the "
                   "role needs CREATEDB) instead of a private throwaway PostgreSQL.")
@click.option("--alembic", is_flag=True,
              help="PATH is an Alembic project (the folder of alembic.ini, or the file): "
                   "replay the offline SQL of every revision, oldest first.")
@traced_run_options
@click.option("--keep", is_flag=True, help="Keep the scratch database (its name is printed).")
@click.option("--yes", is_flag=True, help="Do not ask before running on the --dsn server.")
@click.argument("paths", nargs=-1, required=True, metavar="PATH...",
                type=click.Path(exists=True, dir_okay=True))
def replay(dsn: str | None, alembic: bool, output: str, pg_version: int | None,
           lock_timeout: str, statement_timeout: str, keep: bool, yes: bool,
           paths: tuple[str, ...]) -> None:
    """Replay a whole migration history in a new scratch database, script by script, and
    compare the locks each statement took (pg_locks) and the tables it rewrote with what
    `analyze` predicts, each script analysed against the schema the earlier ones left.
    PATH: SQL files in order, or folders of them (natural name order), or with --alembic
    an Alembic project. Exit 1 when a statement differs or fails.
    """
    from safeddl.cli.replay import run_command
    from safeddl.runtime.errors import ConfigError
    from safeddl.runtime.policy import as_timedelta, parse_duration

    try:
        lock_wait = as_timedelta(parse_duration(lock_timeout, "--lock-timeout"))
        run_limit = as_timedelta(parse_duration(statement_timeout, "--statement-timeout"))
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None
    sys.exit(run_command(dsn, paths, alembic=alembic, output=output, pg_version=pg_version,
                         lock_timeout=lock_wait.total_seconds(),
                         statement_timeout=run_limit.total_seconds(), keep=keep,
                         confirmed=yes))


@main.command()
@click.option("--dsn", metavar="URL",
              help="Run on this server (libpq URL or conninfo; a schema safeddl_demo is "
                   "created and dropped) instead of a private throwaway PostgreSQL.")
@click.option("--seconds", type=click.FloatRange(min=3, max=120), default=12.0,
              show_default=True, help="Length of each of the two runs.")
@click.option("--no-rewrite", is_flag=True,
              help="Guarded run: keep the TRUNCATE, bound its lock wait and retry, instead "
                   "of rewriting it to DELETE.")
@click.option("--plot", "plot_path", metavar="FILE", default=None,
              help="Also draw the readers' latency over time in both runs, the refreshes "
                   "marked, into FILE (.png or .svg; needs matplotlib: "
                   "pip install 'safeddl[plot]').")
def demo(dsn: str | None, seconds: float, no_rewrite: bool, plot_path: str | None) -> None:
    """Run the full-refresh-versus-dashboards scenario without, then with, safeddl, and
    print what was measured side by side (under a minute with the defaults)."""
    import logging

    missing = [name for name in ("sqlalchemy", "rich") if not module_available(name)]
    if missing:
        raise click.ClickException(f"safeddl demo needs {' and '.join(missing)}: "
                                   "pip install 'safeddl[demo]'")
    from rich.console import Console

    from safeddl.cli.demo import DemoError, DemoSettings, print_result, run_with_progress
    from safeddl.cli.plot import PlotError, check_plot_path, write_plot
    from safeddl.testing.server import ServerError

    if plot_path is not None:
        try:
            check_plot_path(plot_path)
        except PlotError as exc:
            raise click.BadParameter(str(exc), param_hint="--plot") from None
    logging.getLogger("safeddl").addHandler(logging.NullHandler())  # retries are counted
    console = Console()
    settings = DemoSettings(seconds=seconds, rewrite_truncate=not no_rewrite)
    try:
        result = run_with_progress(dsn, settings, console)
    except ServerError as exc:
        raise click.ClickException(f"{exc}\n(or run the demo on a server of yours: "
                                   "safeddl demo --dsn URL)") from None
    except DemoError as exc:
        raise click.ClickException(str(exc)) from None
    print_result(result, console)
    if plot_path is not None:
        try:
            written = write_plot(result, plot_path)
        except OSError as exc:
            raise click.ClickException(f"cannot write the plot to {plot_path}: "
                                       f"{exc.strerror}") from None
        console.print(f"plot written to {written}", highlight=False)


def module_available(name: str) -> bool:
    """Whether ``name`` can be imported (an optional dependency is installed)."""
    from importlib.util import find_spec

    try:
        return find_spec(name) is not None
    except (ImportError, ValueError):
        return False


if __name__ == "__main__":  # pragma: no cover
    main()
