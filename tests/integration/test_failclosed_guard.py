"""Through the real guard on a real server, with SQLAlchemy and with psycopg, in and out
of transactions: each unsafe statement form, wrapped in every way that once let one
slip (comments of all kinds and line endings, nested comments, multi-statement strings
in any order, placeholders, odd but legal identifiers and literals), is refused or
rewritten, never sent as written; harmless text wrapped the same way is never refused.

What reached the server is recorded by the server itself: an event trigger logs the
text of every DDL command, a statement trigger every TRUNCATE, and the DO block logs
itself. Sends and outcomes are counted in the test output.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

import safeddl
import safeddl.psycopg
from safeddl import Policy

pytestmark = [pytest.mark.timeout(300)]

ROWS = 20_000
POLICY = Policy(lock_timeout="2s")

SETUP = f"""
CREATE TABLE sent_log (id serial PRIMARY KEY, query text);
CREATE FUNCTION log_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO sent_log (query) VALUES (current_query()); END $$;
CREATE EVENT TRIGGER log_ddl ON ddl_command_end EXECUTE FUNCTION log_ddl();
CREATE FUNCTION log_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO sent_log (query) VALUES (current_query()); RETURN NULL; END $$;
CREATE TABLE big (id int PRIMARY KEY, x int);
CREATE TABLE "ÄRGER" (id int PRIMARY KEY, x int);
CREATE TABLE "Ärger" (id int PRIMARY KEY, x int);
CREATE TABLE "Sch;ema ""q"" -- x" (id int PRIMARY KEY, x int);
CREATE TRIGGER log_truncate BEFORE TRUNCATE ON big EXECUTE FUNCTION log_truncate();
CREATE TRIGGER log_truncate BEFORE TRUNCATE ON "ÄRGER" EXECUTE FUNCTION log_truncate();
CREATE TRIGGER log_truncate BEFORE TRUNCATE ON "Ärger" EXECUTE FUNCTION log_truncate();
INSERT INTO big SELECT g, g FROM generate_series(1, {ROWS}) g;
INSERT INTO "ÄRGER" SELECT g, g FROM generate_series(1, {ROWS}) g;
INSERT INTO "Ärger" SELECT g, g FROM generate_series(1, {ROWS}) g;
INSERT INTO "Sch;ema ""q"" -- x" SELECT g, g FROM generate_series(1, {ROWS}) g;
ANALYZE;
"""

# {n} makes each index name new; each form is unsafe on a 20,000-row table.
UNSAFE = {
    "create index": "CREATE INDEX i{n} ON big (x)",
    "create index, non-ASCII upper case": 'CREATE INDEX i{n} ON "ÄRGER" (x)',
    # unquoted: PostgreSQL folds ASCII letters only, this is the table "Ärger"
    "create index, unquoted non-ASCII": "CREATE INDEX i{n} ON ÄRGER (x)",
    "truncate, unquoted non-ASCII": "TRUNCATE ÄRGER",
    "create index, hostile name": 'CREATE INDEX i{n} ON "Sch;ema ""q"" -- x" (x)',
    "truncate": "TRUNCATE big",
    "truncate, non-ASCII upper case": 'TRUNCATE "ÄRGER"',
    # dynamic SQL cannot be read (a DO block of static SQL is judged by its statements)
    "do block": "DO $$ BEGIN EXECUTE 'INSERT INTO sent_log (query) VALUES (''do {n}'')'; END $$",
}
HARMLESS = {
    "select": "SELECT count(*) FROM big WHERE x > 0",
    "select, odd literals": "SELECT 'a;b', $q$;--$q$, E'\\';', \"x\" FROM (SELECT 1 AS \"x\") s",
    "insert": "INSERT INTO sent_log (query) VALUES ('harmless {n}')",
}
WRAPPINGS: dict[str, Callable[[str], str]] = {
    "as written": lambda s: s,
    "nested comment": lambda s: f"/* a /* b */ c */ {s}",
    "nested comment hiding a keyword": lambda s: f"/* a /* b */ SELECT */ {s}",
    "-- ended by \\r": lambda s: f"-- note\r{s}",
    "-- ended by \\r\\n": lambda s: f"-- note\r\n{s}",
    "after a harmless statement": lambda s: f"SELECT 1; {s}",
    "before a harmless statement": lambda s: f"{s}; SELECT 1",
    "after a placeholder": lambda s: f"SELECT count(*) FROM big WHERE 1 = 0 AND 2 = 1+2; {s}",
    "after a literal with ; and --": lambda s: f"SELECT 'x;y -- z', $t$;$t$; {s}",
    "after an escape string with \\' ; --": lambda s: f"SELECT E'\\';--', 1; {s}",
    "after a dollar quote holding $1+$2;": lambda s: f"SELECT $q$ $1+$2; $q$; {s}",
    "inside BEGIN ... COMMIT": lambda s: f"BEGIN; {s}; COMMIT",
    "tabs, form feeds, a trailing ;": lambda s: f"\t\f{s}\t;",
    "ignore comment for another statement": lambda s: (
        f"-- safeddl: ignore[create-index,truncate,unparsed-statement] the first only\n"
        f"SELECT 1;\n{s}"),
}


def _sent(dsn: str) -> list[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [row[0] for row in conn.execute("SELECT query FROM sent_log ORDER BY id")]


def _refill(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table in ("big", '"ÄRGER"', '"Ärger"'):
            count = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
            if count is None or count[0] < ROWS:
                conn.execute(f"INSERT INTO {table} SELECT g, g FROM generate_series(1, {ROWS}) g "
                             "ON CONFLICT DO NOTHING")
                conn.execute(f"ANALYZE {table}")


@pytest.fixture
def db(safeddl_db: str) -> str:
    with psycopg.connect(safeddl_db, autocommit=True) as conn:
        conn.execute(SETUP)
    return safeddl_db


Send = Callable[[str], None]


def _senders(dsn: str, url: str) -> Iterator[tuple[str, Send, Callable[[], None]]]:
    conn = safeddl.psycopg.connect(dsn, policy=POLICY)
    auto = safeddl.psycopg.connect(dsn, policy=POLICY, autocommit=True)
    engine = sa.create_engine(url)
    safeddl.install(engine, POLICY)
    auto_engine = engine.execution_options(isolation_level="AUTOCOMMIT")

    def sa_send(target: Any) -> Send:
        def send(text: str) -> None:
            with target.connect() as c:
                c.exec_driver_sql(text.replace("%", "%%"))
                c.commit()
        return send

    try:
        yield "psycopg, transaction", lambda t: (conn.execute(t.encode()), None)[1], conn.rollback
        yield "psycopg, autocommit", lambda t: (auto.execute(t.encode()), None)[1], lambda: None
        yield "SQLAlchemy, transaction", sa_send(engine), lambda: None
        yield "SQLAlchemy, autocommit", sa_send(auto_engine), lambda: None
    finally:
        conn.close()
        auto.close()
        engine.dispose()


def test_unsafe_statements_never_reach_the_server_as_written(db: str,
                                                             safeddl_db_url: str) -> None:
    outcomes: Counter[str] = Counter()
    slipped: list[str] = []
    counter = itertools.count()
    for way, send, reset in _senders(db, safeddl_db_url):
        for (form, template), (wrapping, wrap) in itertools.product(UNSAFE.items(),
                                                                     WRAPPINGS.items()):
            statement = template.format(n=next(counter))
            text = wrap(statement)
            before = len(_sent(db))
            try:
                send(text)
            except safeddl.UnsafeStatement:
                outcome = "refused"
            except (psycopg.Error, sa.exc.DBAPIError) as exc:
                outcome = f"server error {type(exc).__name__}"
            else:
                outcome = "sent"
            reset()
            after = _sent(db)[before:]
            if outcome != "refused":
                as_written = [q for q in after if statement in q]
                if as_written or outcome.startswith("server error") or (
                        "do block" in form and any("do " in q for q in after)):
                    slipped.append(f"{way} | {form} | {wrapping}: {outcome} {after!r}")
                    outcome = "SENT AS WRITTEN"
                else:
                    outcome = "rewritten"
            outcomes[outcome] += 1
            _refill(db)
    print(f"\nunsafe sends: {sum(outcomes.values())}, outcomes: {dict(outcomes)}")
    assert not slipped, "\n".join(slipped)
    assert outcomes["refused"] + outcomes["rewritten"] == len(UNSAFE) * len(WRAPPINGS) * 4


def test_harmless_text_is_never_refused(db: str, safeddl_db_url: str) -> None:
    outcomes: Counter[str] = Counter()
    refused: list[str] = []
    counter = itertools.count()
    for way, send, reset in _senders(db, safeddl_db_url):
        for (form, template), (wrapping, wrap) in itertools.product(HARMLESS.items(),
                                                                     WRAPPINGS.items()):
            text = wrap(template.format(n=next(counter)))
            try:
                send(text)
                outcomes["sent"] += 1
            except safeddl.UnsafeStatement as exc:
                refused.append(f"{way} | {form} | {wrapping}: {exc.rule}")
                outcomes["refused"] += 1
            reset()
    print(f"\nharmless sends: {sum(outcomes.values())}, outcomes: {dict(outcomes)}")
    assert not refused, "\n".join(refused)
