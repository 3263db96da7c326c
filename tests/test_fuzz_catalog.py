"""The catalog a script builds never breaks the analysis: scripts that create, attach,
detach, inherit, rename, alter and drop a few tables in random orders (what
PostgreSQL's own regression scripts do, where the analysis once raised KeyError or
looped on a cycle of parents)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from safeddl.analysis import analyze_script
from safeddl.rules import lint_script

EXAMPLES = int(os.environ.get("SAFEDDL_FUZZ_EXAMPLES", "400"))
NAMES = ["p", "c1", "c2", "q", '"Mixed"', "s.t"]

name = st.sampled_from(NAMES)
STATEMENTS = st.one_of(
    st.builds("CREATE TABLE {} (a int, b text) PARTITION BY LIST (a)".format, name),
    st.builds("CREATE TABLE {} (a int, b text)".format, name),
    st.builds("CREATE TABLE {} PARTITION OF {} FOR VALUES IN (1)".format, name, name),
    st.builds("CREATE TABLE {} PARTITION OF {} DEFAULT".format, name, name),
    st.builds("CREATE TABLE {} () INHERITS ({})".format, name, name),
    st.builds("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES IN (2)".format, name, name),
    st.builds("ALTER TABLE {} DETACH PARTITION {}".format, name, name),
    st.builds("ALTER TABLE {} DETACH PARTITION {} CONCURRENTLY".format, name, name),
    st.builds("ALTER TABLE {} INHERIT {}".format, name, name),
    st.builds("ALTER TABLE {} NO INHERIT {}".format, name, name),
    st.builds("ALTER TABLE {} RENAME TO {}".format, name, st.sampled_from(["p", "c1", "z"])),
    st.builds("ALTER TABLE {} ADD COLUMN d int".format, name),
    st.builds("ALTER TABLE {} ADD CONSTRAINT k CHECK (a > 0)".format, name),
    st.builds("ALTER TABLE {} ADD FOREIGN KEY (a) REFERENCES {} (a)".format, name, name),
    st.builds("ALTER TABLE {} ALTER COLUMN a SET NOT NULL".format, name),
    st.builds("ALTER TABLE {} DROP COLUMN b".format, name),
    st.builds("CREATE INDEX i ON {} (a)".format, name),
    st.builds("DROP TABLE {}".format, name),
    st.builds("DROP TABLE {} CASCADE".format, name),
    st.builds("TRUNCATE {} CASCADE".format, name),
    st.builds("CREATE VIEW v AS SELECT * FROM {}".format, name),
    st.builds("INSERT INTO {} VALUES (1)".format, name),
    st.just("BEGIN"), st.just("COMMIT"),
)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(STATEMENTS, min_size=1, max_size=25))
def test_reshaping_scripts_never_raise(statements: list[str]) -> None:
    script = ";\n".join(statements) + ";"
    for statement in analyze_script(script):
        assert "internal error" not in (statement.reason or ""), (statement.sql, statement.reason)
    for result in lint_script(script):
        assert "internal error" not in (result.statement.reason or "")
