"""click.echo without importing click (~60 M instructions) for what `orch run` prints.

click.echo writes the message and a newline in one write and flushes; it swaps a stream whose
encoding is ASCII (or unset) for a wrapper and strips ANSI codes from a non-terminal. Only the plain
case is done here: a str to a standard text stream in UTF-8 with no escape character in the message
(orch writes none on these paths; a user's error message might). Anything else is handed to
click.echo itself, so the output is the same either way."""

from __future__ import annotations

import io
import sys

_UTF8 = ("utf-8", "utf8", "UTF-8", "UTF8")


def echo(message: str, err: bool = False) -> None:
    stream = sys.stderr if err else sys.stdout
    if type(stream) is io.TextIOWrapper and stream.encoding in _UTF8 and stream.errors is not None \
            and type(message) is str and "\033" not in message:
        stream.write(message + "\n")
        stream.flush()
        return
    import click

    click.echo(message, err=err)
