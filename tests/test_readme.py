"""The README stays true: its rule table is the one `safeddl rules --format markdown`
prints, and every `safeddl` command it shows exists. Pure: no database."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from safeddl.cli.main import main

README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN, END = "<!-- rules:begin -->", "<!-- rules:end -->"


def test_the_rule_table_is_generated() -> None:
    text = README.read_text(encoding="utf-8")
    assert BEGIN in text and END in text
    shown = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    result = CliRunner().invoke(main, ["rules", "--format", "markdown"])
    assert result.exit_code == 0, result.output
    assert shown == result.output.strip(), (
        "README's rule table is stale: paste `safeddl rules --format markdown` between "
        f"{BEGIN} and {END}")


def test_every_command_the_readme_shows_exists() -> None:
    text = README.read_text(encoding="utf-8")
    shell = "\n".join(re.findall(r"(?s)```sh\n(.*?)```", text))
    shown = set(re.findall(r"(?:^|\s|/)safeddl ([a-z]+)\b", shell))
    shown |= set(re.findall(r"`safeddl ([a-z]+)", text))
    assert {"demo", "lint", "analyze", "trace", "rules", "explain"} <= shown
    assert shown <= set(main.commands), shown - set(main.commands)
