"""The `orch` entry point. `orch`, `orch --help`, `orch --version` and `orch CMD --help` print the
text click rendered for them (orchestrator/helptext.py, checked against click by the tests), so they
import neither click nor the CLI (~170 M instructions, twice a bare interpreter's start-up). The usual
`orch run ...` command lines are parsed here too, as click would parse them (orchestrator.fastrun),
and run without click (~64 M instructions less). Every other command line goes to orchestrator.cli,
as does one the stored text may not match exactly (a terminal narrower than the text, a program name
other than `orch`, shell completion) or that fastrun declines."""

import os
import sys


def main():
    argv = sys.argv[1:]
    if "run" in argv[:2] and "--help" not in argv and _as_orch():  # (helptext holds `orch run --help`)
        from . import fastrun

        parsed = fastrun.parse(argv)
        if parsed is not None:
            return fastrun.invoke(*parsed)
    stored = _stored(argv)
    if stored is None:
        from .cli import main as cli

        return cli()
    out, err, code = stored
    for stream, text in ((sys.stdout, out), (sys.stderr, err)):
        if text:
            stream.write(text)
            stream.flush()
    return code


def _stored(argv: list):
    """(stdout, stderr, exit code) as click would give them for `argv`, or None to ask click."""
    from .helptext import COLUMNS, TEXTS

    found = TEXTS.get(tuple(argv))
    if found is None or not _as_orch() or _columns() < COLUMNS:
        return None
    return found


def _as_orch() -> bool:
    """Whether click would name the program `orch` and not complete the command line."""
    if os.path.basename(sys.argv[0]) != "orch":
        return False
    if "_ORCH_COMPLETE" in os.environ:  # click's shell completion asks with these same command lines
        return False
    return not getattr(sys.modules.get("__main__"), "__package__", None)  # `python -m`: click names it otherwise


def _columns() -> int:
    """shutil.get_terminal_size().columns (what click wraps help to), without importing shutil."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    try:
        lines = int(os.environ["LINES"])
    except (KeyError, ValueError):
        lines = 0
    if columns <= 0 or lines <= 0:
        try:
            size = os.get_terminal_size(sys.__stdout__.fileno())
        except (AttributeError, ValueError, OSError):
            size = os.terminal_size((80, 24))
        if columns <= 0:
            columns = size.columns or 80
    return columns
