"""`orch run ...` without click: the launcher parses the usual command lines itself and runs the same
body as click's run_command (runcommand.run), sparing the ~60-100 ms of importing click and the CLI.

parse() handles a subset exactly as click parses cli.run_command (same values and types, proven
against click by tests/test_fastrun.py on generated command lines) and declines everything else --
an unknown option, `--`, combined short flags, a missing or bad value, `--help`, a flag given a
value, a second positional -- so click handles it and reports the error as it does. invoke() ends a
run as click's Command.main does around Group.invoke (OrchError: message, exit 1; Ctrl-C / SIGTERM:
130 / 143); the rare error paths import click to print exactly what it prints."""

from __future__ import annotations

import errno
import os
import stat
import sys

from .echo import echo
from .errors import OrchError
from .runcommand import RunArgs

#: flags: option -> (field, value); "debug" is --debug (cli.debug_option: eager, not a parameter)
_FLAGS = {"--overwrite": ("overwrite", True), "--dry": ("dry", True), "--quiet": ("quiet", True),
          "-q": ("quiet", True), "--progress": ("progress", True), "--no-progress": ("progress", False),
          "--detach": ("detach", True), "--debug": ("debug", True)}
#: options taking one value: option -> field
_VALUES = {"--params": "params", "-p": "params", "--set": "overrides", "-S": "overrides", "--cache": "cache",
           "--overwrite-stage": "overwrite_stages", "--parallel": "parallel", "-j": "parallel",
           "--executor": "executor", "--slurm-partition": "slurm_partition", "--slurm-account": "slurm_account",
           "--slurm-time": "slurm_time"}
_MULTIPLE = ("params", "overrides", "overwrite_stages")
_EXECUTORS = ("local", "slurm")


def parse(argv: list[str]) -> tuple[bool, RunArgs] | None:
    """(debug, the run's options) for `[--debug] run ...` as click would parse them, or None: ask click."""
    debug = argv[:1] == ["--debug"]  # the group's own --debug, before the subcommand
    start = 1 if debug else 0
    if argv[start:start + 1] != ["run"]:
        return None
    values: dict = {}  # flags given
    given: dict = {}  # options given: their strings
    positional = []
    rest = argv[start + 1:]
    i = 0
    while i < len(rest):
        arg = rest[i]
        i += 1
        if arg[:1] != "-" or arg == "-":
            positional.append(arg)
            continue
        if arg[:2] == "--":  # --name, --name=value (click splits at the first "=")
            name, eq, value = arg.partition("=")
            attached = value if eq else None
        else:  # -x, or -xVALUE for an option that takes a value (click reads "-p=a" as the value "=a")
            name, attached = arg[:2], arg[2:] or None
        if name in _FLAGS:
            if attached is not None:  # --dry=1 (click: takes no value), -qd (combined short flags)
                return None
            field, flag = _FLAGS[name]
            if field == "debug":
                debug = True
            else:
                values[field] = flag
            continue
        field = _VALUES.get(name)
        if field is None:  # unknown, --help, --
            return None
        if attached is None:
            if i == len(rest):  # click: requires an argument
                return None
            attached = rest[i]
            i += 1
        if field in _MULTIPLE:
            given.setdefault(field, []).append(attached)
        else:
            given[field] = attached  # a repeated option: the last one counts
    if len(positional) != 1:
        return None
    return _converted(debug, positional[0], values, given)


def _converted(debug: bool, experiment: str, values: dict, given: dict) -> tuple[bool, RunArgs] | None:
    """click's type conversion of the parsed strings (click.Path, IntRange(min=1), Choice), or None."""
    cache = given["cache"] if "cache" in given else os.environ.get("ORCH_CACHE") or None  # empty: unset (click)
    checked = [_path_ok(experiment, dir_okay=False)] + [_path_ok(p, dir_okay=False) for p in given.get("params", ())]
    if cache is not None:
        checked.append(_path_ok(cache, file_okay=False))
    if not all(checked):
        return None
    parallel = 1
    if "parallel" in given:
        try:
            parallel = int(given["parallel"])
        except ValueError:
            return None
        if parallel < 1:
            return None
    executor = given.get("executor", "local")
    if executor not in _EXECUTORS:
        return None
    return debug, RunArgs(experiment=experiment, params=tuple(given.get("params", ())),
                          overrides=tuple(given.get("overrides", ())), cache=cache,
                          overwrite=values.get("overwrite", False),
                          overwrite_stages=tuple(given.get("overwrite_stages", ())), dry=values.get("dry", False),
                          quiet=values.get("quiet", False), progress=values.get("progress"), parallel=parallel,
                          executor=executor, slurm_partition=given.get("slurm_partition"),
                          slurm_account=given.get("slurm_account"), slurm_time=given.get("slurm_time"),
                          detach=values.get("detach", False))


def _path_ok(path: str, file_okay: bool = True, dir_okay: bool = True) -> bool:
    """click.Path(file_okay, dir_okay).convert would accept `path` (missing is fine: exists=False)."""
    try:
        st = os.stat(path)
    except OSError:
        return True
    except ValueError:  # a NUL character: click fails differently; let it
        return False
    if not file_okay and stat.S_ISREG(st.st_mode) or not dir_okay and stat.S_ISDIR(st.st_mode):
        return False
    return os.access(path, os.R_OK)


def invoke(debug: bool, args: RunArgs) -> int:
    """The run, ended as click's Command.main (standalone) ends cli.Group.invoke of run_command."""
    from .runcommand import run

    try:
        try:
            return run(args, debug) or 0
        except OrchError as e:  # cli.Group.invoke
            if debug:
                raise
            from .cli import OrchClickError

            error = OrchClickError(str(e))
            report, code = error.show, error.exit_code
        except KeyboardInterrupt as e:
            from .interrupts import Terminated, exit_code

            echo("\nterminated (SIGTERM)" if isinstance(e, Terminated) else "\ninterrupted", err=True)
            return exit_code(e)
    except (EOFError, KeyboardInterrupt):  # Command.main: a blank line and "Aborted!"
        from click import echo as click_echo
        from click.core import _echo_aborted

        click_echo(file=sys.stderr)
        report, code = _echo_aborted, 1
    except OSError as e:  # Command.main: a closed pipe ends the run quietly, exit 1
        if e.errno != errno.EPIPE:
            raise
        from click.utils import _PacifyFlushWrapper

        sys.stdout = _PacifyFlushWrapper(sys.stdout)
        sys.stderr = _PacifyFlushWrapper(sys.stderr)
        return 1
    report()
    return code
