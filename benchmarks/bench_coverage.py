"""How much of PostgreSQL's own SQL does the analysis read? Prints counts; asserts nothing.

    python benchmarks/bench_coverage.py [DIR] [--list GROUP] [--all]

Runs ``analyze_script`` over every ``*.sql`` file of DIR (default: PostgreSQL 17.0's
regression scripts, ``../shared/pg-regress-sql``, when present) and counts the
statements other than DML: every item that is not a psql meta-command and whose first
keyword does not start a query or DML (SELECT, WITH, INSERT, UPDATE, DELETE, MERGE,
VALUES, TABLE, ``(``). Of those it prints how many safeddl cannot read
(``understood`` false), grouped by their first keywords, with one example and the
reason; ``--list GROUP`` prints every statement of one group, ``--all`` every group
(not only the first 60).

It also counts the statements that are read but whose lock set cannot be known from
the text (findings ``drop-cascade`` and ``opaque-statement``): valid SQL, reported as
such, refused by the guard's default policy.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

from safeddl.analysis import analyze_script
from safeddl.sql import first_words

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "shared" / "pg-regress-sql"
DML = {"SELECT", "WITH", "INSERT", "UPDATE", "DELETE", "MERGE", "VALUES", "TABLE", "("}
_ONE_WORD_GROUPS = {"EXECUTE", "CALL", "DO", "NUMBER", "STRING", ":"}


def group_of(sql: str) -> str:
    words = first_words(sql, 3)
    if not words:
        return "<not one complete statement>"
    if words[0] in _ONE_WORD_GROUPS:
        return words[0]
    key = " ".join(words[:2])
    if words[0] == "DROP" and first_words(sql, 200)[-1:] == ["CASCADE"]:
        key += " ... CASCADE"
    return key


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", nargs="?", default=str(DEFAULT_DIR))
    parser.add_argument("--list", metavar="GROUP", help="print every statement of GROUP")
    parser.add_argument("--all", action="store_true", help="print every group")
    args = parser.parse_args(argv)
    root = Path(args.directory)
    files = sorted(root.glob("*.sql"))
    if not files:
        print(f"no *.sql files in {root}", file=sys.stderr)
        return 2
    counts: collections.Counter[str] = collections.Counter()
    unread: collections.Counter[str] = collections.Counter()
    unknown_locks: collections.Counter[str] = collections.Counter()
    examples: dict[str, tuple[str, str, str]] = {}
    listed: list[tuple[str, int, str, str]] = []
    started = time.process_time()
    for path in files:
        script = path.read_text(encoding="utf-8", errors="replace")
        for statement in analyze_script(script):
            counts["items"] += 1
            if statement.sql.startswith("\\"):
                counts["psql meta-commands"] += 1
                continue
            words = first_words(statement.sql, 1)
            if words and words[0] in DML:
                counts["DML"] += 1
                continue
            counts["other than DML"] += 1
            group = group_of(statement.sql)
            if not statement.understood:
                unread[group] += 1
                examples.setdefault(group, (path.name, " ".join(statement.sql.split())[:110],
                                            (statement.reason or "")[:140]))
                if args.list == group:
                    listed.append((path.name, statement.line, statement.sql,
                                   statement.reason or ""))
            elif statement.unknown_locks:
                unknown_locks[group] += 1
    seconds = time.process_time() - started
    print(f"{len(files)} files in {root}: {counts['items']:,} items, "
          f"{counts['psql meta-commands']:,} psql meta-commands, {counts['DML']:,} DML, "
          f"{counts['other than DML']:,} other statements ({seconds:.1f} s CPU)")
    total = sum(unread.values())
    print(f"\nnot read: {total:,} of {counts['other than DML']:,} statements other than DML "
          f"({100 * total / max(counts['other than DML'], 1):.2f}%)\n")
    print("| count | group | example (file) | reason |")
    print("|---:|---|---|---|")
    for i, (group, n) in enumerate(unread.most_common()):
        if i >= 60 and not args.all:
            print(f"| ... | {len(unread) - 60} more groups (--all) | | |")
            break
        name, sql, reason = examples[group]
        print(f"| {n} | {group} | `{sql}` ({name}) | {reason} |")
    print(f"\nread, but their locks cannot be known from the text: "
          f"{sum(unknown_locks.values()):,}")
    for group, n in unknown_locks.most_common():
        print(f"  {n:5d}  {group}")
    for name, line, sql, reason in listed:
        print(f"\n{name}:{line}: {reason}\n{sql}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
