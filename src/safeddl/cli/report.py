"""Output formats of the command line: pure functions from lint results to text.

``analyze --format json`` is the stable contract of DESIGN.md ("Command-line
contract"): one object per statement with exactly ``file``, ``line``, ``sql``,
``transactional``, ``locks`` and ``findings``. ``lint --format json`` prints the same
objects with one more key, ``ignored``. The human formats (``text``, the analyze
table) may change; ``github`` follows GitHub's workflow commands and ``sarif`` is
SARIF 2.1.0.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import PurePath
from typing import TYPE_CHECKING
from urllib.parse import quote

from safeddl.analysis import RelationLock, Statement
from safeddl.rules import BY_ID, DOCS, RULES, Finding, Result, Severity

if TYPE_CHECKING:  # pragma: no cover - typing only
    from rich.console import Console

JsonObject = dict[str, object]

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
STDIN_NAME = "<stdin>"
_STATEMENT_WIDTH = 60


@dataclass(frozen=True)
class FileResults:
    """The lint results of one input file; ``file`` is the name as given."""

    file: str
    results: tuple[Result, ...]


@dataclass(frozen=True)
class Located:
    """A finding with where it was found."""

    file: str
    line: int
    finding: Finding


# -- shared ----------------------------------------------------------------------


def located(files: Iterable[FileResults]) -> Iterator[Located]:
    """Every remaining (not ignored) finding, in file and statement order."""
    for entry in files:
        for result in entry.results:
            for finding in result.findings:
                yield Located(entry.file, result.statement.line, finding)


def has_errors(files: Iterable[FileResults]) -> bool:
    return any(item.finding.severity is Severity.ERROR for item in located(files))


def message_body(finding: Finding) -> str:
    """The message without its leading ``rule-id: `` (formats that show the id apart)."""
    prefix = f"{finding.rule}: "
    return finding.message.removeprefix(prefix)


def short_sql(sql: str, width: int = _STATEMENT_WIDTH) -> str:
    """One line, whitespace collapsed, cut to ``width`` characters with an ellipsis."""
    flat = " ".join(sql.split())
    return flat if len(flat) <= width else flat[: width - 1].rstrip() + "…"


# -- JSON ------------------------------------------------------------------------


def statement_object(file: str, result: Result) -> JsonObject:
    """One statement as in the command-line contract (DESIGN.md)."""
    statement = result.statement
    item: JsonObject = {
        "file": file,
        "line": statement.line,
        "sql": statement.sql,
        "transactional": statement.transactional,
        "locks": [lock.as_json() for lock in statement.locks],
        "findings": [finding.as_json() for finding in result.findings],
    }
    if statement.sql.startswith("\\"):
        item["psql_meta_command"] = True  # run by psql; the server never sees it
    return item


def analyze_json(files: Iterable[FileResults]) -> str:
    objects = [statement_object(f.file, r) for f in files for r in f.results]
    return json.dumps(objects, indent=2, ensure_ascii=False)


def lint_json(files: Iterable[FileResults]) -> str:
    objects = []
    for entry in files:
        for result in entry.results:
            obj = statement_object(entry.file, result)
            obj["ignored"] = [{"rule": i.rule, "reason": i.reason} for i in result.ignored]
            objects.append(obj)
    return json.dumps(objects, indent=2, ensure_ascii=False)


# -- text ------------------------------------------------------------------------


def lint_text(files: Iterable[FileResults]) -> str:
    """``file:line: error [rule-id] message`` blocks, ignored lines, then a summary."""
    files = list(files)
    blocks: list[str] = []
    for entry in files:
        for result in entry.results:
            blocks.extend(_text_blocks(entry.file, result))
    blocks.append(summary(files))
    return "\n".join(blocks)


def _text_blocks(file: str, result: Result) -> Iterator[str]:
    line = result.statement.line
    for finding in result.findings:
        first, *rest = message_body(finding).splitlines() or [""]
        head = f"{file}:{line}: {finding.severity.value} [{finding.rule}] {first}"
        yield "\n".join([head, *("    " + text for text in rest)]) + "\n"
    for ignored in result.ignored:
        reason = ignored.reason or "(no reason given)"
        yield f"{file}:{line}: ignored [{ignored.rule}] {reason}"


def summary(files: Iterable[FileResults]) -> str:
    files = list(files)
    statements = sum(len(f.results) for f in files)
    findings = [item.finding for item in located(files)]
    errors = sum(1 for f in findings if f.severity is Severity.ERROR)
    warnings = len(findings) - errors
    ignored = sum(len(r.ignored) for f in files for r in f.results)
    scope = f"{_plural(statements, 'statement')} in {_plural(len(files), 'file')}"
    verdict = f"{_plural(errors, 'error')}, {_plural(warnings, 'warning')}" if findings else (
        "no problems found")
    if ignored:
        verdict += f", {ignored} ignored"
    return f"safeddl: {verdict} ({scope})"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


# -- GitHub workflow commands ----------------------------------------------------


def escape_data(value: str) -> str:
    """The message of a workflow command (GitHub's ``escapeData``)."""
    return value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(value: str) -> str:
    """A ``key=value`` property of a workflow command (GitHub's ``escapeProperty``)."""
    return escape_data(value).replace(":", "%3A").replace(",", "%2C")


def lint_github(files: Iterable[FileResults]) -> str:
    lines = []
    for item in located(files):
        level = "error" if item.finding.severity is Severity.ERROR else "warning"
        properties = ",".join([
            f"file={escape_property(item.file)}",
            f"line={item.line}",
            f"title={escape_property('safeddl ' + item.finding.rule)}",
        ])
        lines.append(f"::{level} {properties}::{escape_data(message_body(item.finding))}")
    return "\n".join(lines)


# -- SARIF 2.1.0 -----------------------------------------------------------------


def lint_sarif(files: Iterable[FileResults], *, tool_version: str = "0") -> str:
    files = list(files)
    rule_ids = _sarif_rule_ids(files)
    index = {rule_id: i for i, rule_id in enumerate(rule_ids)}
    results: list[JsonObject] = []
    for entry in files:
        for result in entry.results:
            results.extend(_sarif_results(entry.file, result, index))
    run: JsonObject = {
        "tool": {"driver": {
            "name": "safeddl",
            "version": tool_version,
            "rules": [_sarif_rule(rule_id) for rule_id in rule_ids],
        }},
        "results": results,
    }
    if files:
        run["artifacts"] = [{"location": {"uri": sarif_uri(f.file)}} for f in files]
    log: JsonObject = {"$schema": SARIF_SCHEMA, "version": "2.1.0", "runs": [run]}
    return json.dumps(log, indent=2, ensure_ascii=False)


def _sarif_rule_ids(files: list[FileResults]) -> list[str]:
    """Every known rule, then any id a finding used that the catalogue lacks."""
    ids = [rule.id for rule in RULES]
    for entry in files:
        for result in entry.results:
            for rule_id in [f.rule for f in result.findings] + [i.rule for i in result.ignored]:
                if rule_id not in ids:
                    ids.append(rule_id)
    return ids


def _sarif_rule(rule_id: str) -> JsonObject:
    rule = BY_ID.get(rule_id)
    summary_text = rule.summary if rule is not None else rule_id
    doc = DOCS.get(rule_id) or summary_text
    out: JsonObject = {
        "id": rule_id,
        "name": "".join(part.capitalize() for part in rule_id.split("-")),
        "shortDescription": {"text": summary_text},
        "fullDescription": {"text": summary_text},
        "help": {"text": doc, "markdown": doc},
    }
    if rule is not None:
        out["defaultConfiguration"] = {"level": _sarif_level(rule.severity)}
    return out


def _sarif_results(file: str, result: Result, index: dict[str, int]) -> Iterator[JsonObject]:
    location = _sarif_location(file, result.statement.line)
    for finding in result.findings:
        yield {
            "ruleId": finding.rule,
            "ruleIndex": index[finding.rule],
            "level": _sarif_level(finding.severity),
            "message": {"text": finding.message},
            "locations": [location],
        }
    for ignored in result.ignored:
        rule = BY_ID.get(ignored.rule)
        yield {
            "ruleId": ignored.rule,
            "ruleIndex": index[ignored.rule],
            "level": _sarif_level(rule.severity) if rule is not None else "warning",
            "message": {"text": rule.summary if rule is not None else ignored.rule},
            "locations": [location],
            "suppressions": [{"kind": "inSource", "justification": ignored.reason}],
        }


def _sarif_location(file: str, line: int) -> JsonObject:
    return {"physicalLocation": {
        "artifactLocation": {"uri": sarif_uri(file)},
        "region": {"startLine": line},
    }}


def _sarif_level(severity: Severity) -> str:
    return "error" if severity is Severity.ERROR else "warning"


def sarif_uri(file: str) -> str:
    """Relative paths stay relative (``uriBaseId``-free, forward slashes)."""
    path = PurePath(file)
    if path.is_absolute():
        return "file://" + quote(path.as_posix())
    return quote(path.as_posix())


# -- analyze table ---------------------------------------------------------------


def describe_locks(locks: Iterable[RelationLock]) -> str:
    return "\n".join(f"{lock.relation}: {lock.mode.sql_name} ({lock.holds.value})"
                     for lock in locks) or "-"


def describe_findings(result: Result) -> str:
    parts = [f"{f.severity.value} {f.rule}" for f in result.findings]
    parts += [f"ignored {i.rule}" for i in result.ignored]
    return "\n".join(parts) or "-"


def describe_statement(statement: Statement) -> str:
    text = short_sql(statement.sql)
    if not statement.understood:
        text += f"\n(not understood: {statement.reason})"
    return "\n".join([text, *(f"note: {note}" for note in statement.notes)])


def table_rows(result: Result) -> tuple[str, str, str, str, str]:
    statement = result.statement
    return (str(statement.line), describe_statement(statement),
            describe_locks(statement.locks), "yes" if statement.transactional else "no",
            describe_findings(result))


TABLE_HEADERS = ("line", "statement", "locks (relation: mode (holds))", "in tx", "findings")


def print_rich_tables(files: Iterable[FileResults], console: Console) -> None:
    from rich.table import Table

    for entry in files:
        table = Table(title=entry.file, show_lines=True, title_justify="left")
        for header in TABLE_HEADERS:
            table.add_column(header, overflow="fold")
        for result in entry.results:
            style = _row_style(result)
            table.add_row(*table_rows(result), style=style)
        console.print(table)


def _row_style(result: Result) -> str | None:
    if any(f.severity is Severity.ERROR for f in result.findings):
        return "red"
    if result.findings or not result.statement.understood:
        return "yellow"
    return None


def plain_tables(files: Iterable[FileResults]) -> str:
    """The analyze table without rich: one block per statement."""
    out: list[str] = []
    for entry in files:
        out.append(f"== {entry.file}")
        for result in entry.results:
            line, sql, locks, tx, findings = table_rows(result)
            out.append(f"{entry.file}:{line}: {sql}")
            out.append(f"    in transaction: {tx}")
            out.extend(f"    lock {text}" for text in locks.splitlines() if text != "-")
            out.extend(f"    {text}" for text in findings.splitlines() if text != "-")
    return "\n".join(out)
