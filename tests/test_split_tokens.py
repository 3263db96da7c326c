"""The split hands each statement its tokens so that reading does not tokenize it again:
those tokens must be exactly the ones the statement has on its own, and reading with
them must give the same reading."""

from __future__ import annotations

from pathlib import Path

import pytest

from safeddl.sql import read, split_script
from safeddl.sql.psql import split_psql
from safeddl.sql.tokens import Token, tokenize


def places(tokens: list[Token] | None) -> list[tuple[str, str, int, int]] | None:
    """Kind, text and offsets (sqlglot's line numbers of some tokens, e.g. after a
    ``$1``, depend on what came before; no reader uses them)."""
    return None if tokens is None else [(t.kind, t.text, t.start, t.end) for t in tokens]

CORPUS = Path(__file__).parent / "corpus"
REGRESS = Path(__file__).parents[2] / "shared" / "pg-regress-sql"


def scripts() -> list[Path]:
    found = sorted(CORPUS.glob("*.sql"))
    if REGRESS.is_dir():
        found += sorted(REGRESS.glob("*.sql"))
    return found


@pytest.mark.parametrize("path", scripts(), ids=lambda p: p.name)
def test_split_tokens_are_the_statements_own(path: Path) -> None:
    script = path.read_text(encoding="utf-8", errors="replace")
    given = 0
    for raw in [*split_psql(script), *split_script(script)]:
        if raw.tokens is None:
            continue
        given += 1
        assert places(raw.tokens) == places(tokenize(raw.text)), raw.text[:200]
        assert read(raw.text, raw.tokens) == read(raw.text), raw.text[:200]
    assert given  # the fast path is taken


def test_small_and_large_scripts_give_tokens() -> None:
    small = "SET lock_timeout = '1s';\n  -- c\nALTER TABLE t ADD COLUMN c int;"
    large = small + "\n" + ";\n".join(f"SELECT {i}" for i in range(5000))
    for script in (small, large):
        raws = split_script(script)
        assert all(places(raw.tokens) == places(tokenize(raw.text)) for raw in raws)
        assert raws[1].tokens is not None and raws[1].tokens[0].start == 0


def test_positional_parameters_read_alike() -> None:
    # ``$1+$2`` makes sqlglot's tokenizer fail on the whole script: no tokens handed on
    script = "SELECT $1+$2;\nUPDATE t SET a = 1 WHERE id = 2"
    for raw in split_script(script):
        assert raw.tokens is None or places(raw.tokens) == places(tokenize(raw.text))
