"""The files the commands read: a path, or ``-`` for standard input, as UTF-8 text."""

from __future__ import annotations

import click

from safeddl.cli.report import STDIN_NAME


def read_source(path: str) -> str:
    """The text of a file, or of standard input for ``-``."""
    try:
        with click.open_file(path, "rb") as handle:
            data: bytes = handle.read()
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise click.BadParameter(f"{display_name(path)} is not UTF-8 text: {exc}",
                                 param_hint="FILE") from None
    except OSError as exc:
        raise click.BadParameter(f"cannot read {display_name(path)}: {exc.strerror}",
                                 param_hint="FILE") from None


def display_name(path: str) -> str:
    return STDIN_NAME if path == "-" else path


__all__ = ["display_name", "read_source"]
