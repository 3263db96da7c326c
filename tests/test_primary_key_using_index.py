"""ADD PRIMARY KEY USING INDEX sets NOT NULL on the index's columns: a scan under
ACCESS EXCLUSIVE unless they are known NOT NULL (checked on servers by the lock corpus
and tests/integration/test_scan_grows.py)."""

from __future__ import annotations


def test_primary_key_using_index_on_columns_not_known_not_null() -> None:
    """From text alone ADD PRIMARY KEY USING INDEX is an error (it sets NOT NULL, a
    scan under ACCESS EXCLUSIVE) unless the columns are known NOT NULL."""
    from safeddl.analysis import catalog_from_script
    from safeddl.rules import lint_script

    sql = "SET lock_timeout = '1s';\nALTER TABLE t ADD PRIMARY KEY USING INDEX t_code_idx;\n"
    [_, alone] = lint_script(sql)
    assert "add-unique" in {f.rule for f in alone.findings}
    schema = ("CREATE TABLE t (id int NOT NULL, code int);"
              "CREATE UNIQUE INDEX t_code_idx ON t (code);"
              "CREATE UNIQUE INDEX t_id_idx ON t (id);")
    [_, nullable] = lint_script(sql, catalog=catalog_from_script(schema))
    [finding] = [f for f in nullable.findings if f.rule == "add-unique"]
    assert "ALTER TABLE t VALIDATE CONSTRAINT t_code_not_null;" in finding.message
    [_, not_null] = lint_script(sql.replace("t_code_idx", "t_id_idx"),
                                catalog=catalog_from_script(schema))
    assert "add-unique" not in {f.rule for f in not_null.findings}
