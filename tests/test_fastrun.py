"""`orch run` without click (orchestrator.fastrun): on every command line it handles, the values must be
exactly what click gives cli.run_command, and the run must print and exit as a click-path run does.

The identity proof drives click itself: cli.main.main(...) with the run body replaced by a recorder,
so click parses, converts, runs the --debug callbacks and builds RunArgs as in a real run; fastrun
either declines a command line (click handles it) or gives equal values of equal types."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

import click
import pytest
from conftest import wait_for

from orchestrator import cli, fastrun, runcommand
from orchestrator.runcommand import FIELDS

REPO = Path(cli.__file__).resolve().parent.parent
WRAPPER = "import sys\nfrom {module} import main\nif __name__ == '__main__':\n    sys.exit(main())\n"

# -- identity of the parsed values with click's -------------------------------------------------------

#: values to draw from: existing files, directories, missing paths, odd strings
PATHS = ["exp.py", "adir", "missing.py", "params.yaml", "cachedir", "cachefile", "", "-", "=x", "a b", "--dry",
         "-q", "run", "--", "x=y", "--help"]
VALUES = {
    "params": PATHS,
    "overrides": ["a=1", "train.lr=0.01", "b.c=[1, 2]", "", "-x", "--quiet", "=", "k=v=w"],
    "cache": PATHS + ["newdir", "newdir/sub"],
    "overwrite_stages": ["s1", "train", "", "-s"],
    "parallel": ["1", "2", "16", "0", "-1", "x", "1_0", " 3 ", "+4", "\u0663", "1.5", "", "0x2", "00", "1e2"],
    "executor": ["local", "slurm", "LOCAL", "Slurm", "bad", "", " local"],
    "slurm_partition": ["gpu", "", "-p"],
    "slurm_account": ["acct", "x y"],
    "slurm_time": ["10", "00:10:00", "-1"],
}
#: field -> its long option and short one (or None)
OPTIONS = {"params": ("--params", "-p"), "overrides": ("--set", "-S"), "cache": ("--cache", None),
           "overwrite_stages": ("--overwrite-stage", None), "parallel": ("--parallel", "-j"),
           "executor": ("--executor", None), "slurm_partition": ("--slurm-partition", None),
           "slurm_account": ("--slurm-account", None), "slurm_time": ("--slurm-time", None)}
FLAGS = ["--overwrite", "--dry", "--quiet", "-q", "--progress", "--no-progress", "--detach", "--debug"]
#: what click rejects or handles itself (fastrun must decline), and oddities of click's parser
ODD = ["--help", "-h", "--", "-qq", "-qp", "-pq", "--dry=1", "--quiet=", "--debug=1", "--nope", "-x", "--para",
       "--no-dry", "--progress=1", "---dry", "-", "extra.py", "--overwrite-stages", "-S", "--cache", "-jx", "-j0",
       "-q=1", "--version", "-Sx=1", "-p=params.yaml", "--set=", "--params="]
ENV = [None, "", "cachedir", "cachefile", "newdir", "missing"]
#: values click accepts, for the half of the command lines that should mostly be valid
VALID = {"params": ["params.yaml", "missing.py", "-", "=x", "a b", "--dry", "-q", "run", "--", "--help"],
         "cache": ["cachedir", "newdir", "", "-", "a b"], "parallel": ["1", "2", "16", "1_0", " 3 ", "+4", "\u0663"],
         "executor": ["local", "slurm"]}


def _option(rng: random.Random, field: str, wild: bool) -> list[str]:
    long, short = OPTIONS[field]
    value = rng.choice(VALUES[field] if wild else VALID.get(field, VALUES[field]))
    forms = [[long, value], [f"{long}={value}"]] + ([[short, value], [short + value]] if short else [])
    return rng.choice(forms)


def _argv(rng: random.Random, wild: bool) -> list[str]:
    """A command line after `orch`: the group's options, `run`, and a shuffle of run's; `wild`: with
    odd tokens and values click rejects, else mostly valid."""
    parts: list[list[str]] = []
    for _ in range(rng.randint(0, 8)):
        kind = rng.random()
        if kind < 0.5:
            parts.append(_option(rng, rng.choice(sorted(OPTIONS)), wild))
        elif kind < 0.85 or not wild:
            parts.append([rng.choice(FLAGS)])
        elif kind < 0.95:
            parts.append([rng.choice(ODD)])
        else:
            parts.append([rng.choice(PATHS)])
    if rng.random() < (0.93 if wild else 0.99):  # EXPERIMENT, anywhere among the options
        parts.insert(rng.randint(0, len(parts)), [rng.choice(["exp.py"] * 6 + PATHS if wild else ["exp.py", "new.py"])])
    head = rng.choice([["run"]] * 12 + [["--debug", "run"]] * 3 + ([["--debug", "--debug", "run"], ["runs"],
                                                                      ["--version", "run"], ["--help", "run"], []]
                                                                     if wild else []))
    return head + [token for part in parts for token in part]


def _clicks_call(argv: list[str], monkeypatch) -> tuple[bool, dict] | None:
    """(debug, RunArgs values) with which click's `orch` would run the body for `argv`, or None."""
    seen = []
    monkeypatch.setattr(runcommand, "run", lambda args, debug: seen.append((debug, args.as_dict())) or 0)
    try:
        cli.main.main(args=list(argv), prog_name="orch", standalone_mode=False)
    except click.ClickException:
        return None
    assert len(seen) <= 1
    return seen[0] if seen else None


def _typed(value):
    """A value with the types of it and of its items, to compare types as well as values."""
    if isinstance(value, tuple):
        return tuple, tuple(_typed(v) for v in value)
    return type(value), value


@pytest.fixture
def files(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp.py").write_text("")
    (tmp_path / "params.yaml").write_text("")
    (tmp_path / "cachefile").write_text("")
    (tmp_path / "adir").mkdir()
    (tmp_path / "cachedir").mkdir()
    return tmp_path


CASES = 10_000


def test_fastrun_gives_clicks_values_or_declines(files, monkeypatch, capsys):
    rng = random.Random(20261202)
    accepted = declined = only_click = 0
    fields_seen: set[str] = set()
    for case in range(CASES):
        argv = _argv(rng, wild=case % 2 == 0)
        env = rng.choice(ENV)
        if env is None:
            monkeypatch.delenv("ORCH_CACHE", raising=False)
        else:
            monkeypatch.setenv("ORCH_CACHE", env)
        fast = fastrun.parse(argv)
        clicks = _clicks_call(argv, monkeypatch)
        capsys.readouterr()  # what click printed (--help, --version)
        if fast is None:
            declined += 1
            only_click += clicks is not None
            continue
        accepted += 1
        debug, args = fast
        ours = args.as_dict()
        assert list(ours) == list(FIELDS)
        assert clicks is not None, f"fastrun accepted what click rejects: {argv} (ORCH_CACHE={env!r})"
        assert (debug, {k: _typed(v) for k, v in ours.items()}) == \
               (clicks[0], {k: _typed(v) for k, v in clicks[1].items()}), f"{argv} (ORCH_CACHE={env!r})"
        fields_seen |= {k for k, v in ours.items() if v != runcommand.RunArgs(Path("x")).as_dict()[k]}
    print(f"{CASES} command lines: {accepted} parsed by fastrun as click does, {declined} declined "
          f"({only_click} of them valid for click)")
    assert accepted > CASES // 3 and declined > CASES // 3, (accepted, declined)
    assert fields_seen == set(FIELDS), set(FIELDS) - fields_seen  # every option was compared away from its default


def test_cli_run_command_takes_exactly_runargs_fields():
    assert tuple(p.name for p in cli.run_command.params if p.expose_value) == FIELDS


def test_fastrun_knows_every_option_of_run_command_and_the_generator_tries_each():
    """A new or changed `orch run` option must reach fastrun (and these tests), not only click."""
    options = [p for p in cli.run_command.params if isinstance(p, click.Option)]
    flags = {o: p.name for p in options if p.is_flag for o in p.opts + p.secondary_opts}
    valued = {o: p.name for p in options if not p.is_flag for o in p.opts}
    assert flags == {o: f for o, (f, _) in fastrun._FLAGS.items()}
    assert valued == fastrun._VALUES
    assert {p.name for p in options if p.multiple} == set(fastrun._MULTIPLE)
    assert set(FLAGS) == set(flags) and set(OPTIONS) == set(valued.values())
    assert {o for pair in OPTIONS.values() for o in pair if o} == set(valued)


USUAL = [  # command lines users type: all handled without click
    ["run", "exp.py"], ["run", "exp.py", "-p", "params.yaml", "-q"], ["run", "-pparams.yaml", "exp.py"],
    ["run", "exp.py", "--params=params.yaml", "--set", "a=1", "-S", "b=2"], ["--debug", "run", "exp.py"],
    ["run", "exp.py", "--debug"], ["run", "exp.py", "--cache", "cachedir", "-j", "2", "--no-progress"],
    ["run", "exp.py", "--overwrite-stage", "s1", "--overwrite-stage=s2", "--dry", "--overwrite"],
    ["run", "exp.py", "--executor", "slurm", "--slurm-partition", "gpu", "--slurm-time=10", "--detach"],
    ["run", "exp.py", "-j4", "--parallel=3", "--progress", "--quiet"],
]


@pytest.mark.parametrize("argv", USUAL, ids=" ".join)
def test_usual_command_lines_are_handled(files, monkeypatch, argv):
    monkeypatch.delenv("ORCH_CACHE", raising=False)
    fast = fastrun.parse(argv)
    assert fast is not None
    assert (fast[0], fast[1].as_dict()) == _clicks_call(argv, monkeypatch)


@pytest.mark.parametrize("argv", [["run", "exp.py", "--help"], ["run", "--", "exp.py"], ["run", "exp.py", "-qj2"],
                                  ["run", "exp.py", "-j", "0"], ["run", "exp.py", "--executor", "pbs"],
                                  ["run", "exp.py", "-p"], ["run", "adir"], ["run", "exp.py", "--cache", "cachefile"],
                                  ["run"], ["run", "exp.py", "more.py"], ["run", "exp.py", "--dry=yes"],
                                  ["--debug", "--debug", "run", "exp.py"], ["runs"], ["run", "exp.py", "--par", "2"]],
                         ids=" ".join)
def test_unusual_command_lines_go_to_click(files, argv):
    assert fastrun.parse(argv) is None


def test_help_and_version_command_lines_are_not_runs():
    """The launcher asks fastrun before the stored help text: fastrun must decline all of those."""
    from orchestrator import helptext

    assert [argv for argv in helptext.TEXTS if fastrun.parse(list(argv)) is not None] == []


def test_the_error_paths_click_uses_exist():
    """fastrun.invoke imports these on the rare paths (Ctrl-C twice, EOF, a closed pipe)."""
    from click.core import _echo_aborted
    from click.utils import _PacifyFlushWrapper

    assert callable(_echo_aborted) and callable(_PacifyFlushWrapper)


# -- echo: what click.echo writes --------------------------------------------------------------------

ECHO_PROBE = """
import sys
which, message, err = sys.argv[1], sys.argv[2].replace('ESC', '\\033'), sys.argv[3] == '1'
if which == 'click':
    from click import echo
else:
    from orchestrator.echo import echo
echo(message, err=err)
echo(message + '!', err=err)
"""


@pytest.mark.parametrize("env", [{}, {"PYTHONIOENCODING": "ascii"}, {"PYTHONIOENCODING": "latin-1:strict"},
                                 {"PYTHONUNBUFFERED": "1"}], ids=str)
@pytest.mark.parametrize("message", ["plain", "", "ünïcode ✓", "ESC[31mred ESC[0m", "two\nlines"])
def test_echo_writes_what_click_echo_writes(env, message):
    outs = []
    for which in ("click", "orch"):
        for err in ("0", "1"):
            p = subprocess.run([sys.executable, "-c", ECHO_PROBE, which, message, err], capture_output=True,
                               env={**os.environ, "PYTHONPATH": str(REPO), **env})
            # a message the encoding cannot take fails alike; the traceback's frames differ by orch's echo
            outs.append((p.stdout, p.stderr if p.returncode == 0 else p.stderr.splitlines()[-1], p.returncode))
    assert outs[:2] == outs[2:]


# -- end to end: the real `orch` script, fast path against click path --------------------------------

@pytest.fixture(scope="module")
def scripts(tmp_path_factory) -> dict[str, Path]:
    """`orch` wrappers (named orch: click names the program after argv[0]) for the launcher (the console
    script) and for click directly."""
    made = {}
    for name, module in (("fast", "orchestrator.launcher"), ("click", "orchestrator.cli")):
        d = tmp_path_factory.mktemp(name)
        (d / "orch").write_text(WRAPPER.format(module=module))
        made[name] = d / "orch"
    return made


PROJECT = {
    "experiment.py": "from stages import make, use\n\ndef run(record):\n    use(make(record))\n",
    "failing.py": "from stages import make, use, fail\n\ndef run(record):\n    use(make(record))\n    fail(make(record))\n",
    "stages.py": "from orchestrator import stage, PickleCacher\n\n"
                 "@stage(outputs=['a'], cachers=[PickleCacher])\ndef make(record):\n    return record.params.seed\n\n"
                 "@stage(inputs=['a'], outputs=['b'], cachers=[PickleCacher])\ndef use(record, a):\n    return a + 1\n\n"
                 "@stage(inputs=['a'], outputs=['c'], cachers=[PickleCacher])\ndef fail(record, a):\n"
                 "    raise ValueError(f'no good: {a}')\n\n"
                 "@stage(outputs=['h'], cachers=[PickleCacher])\ndef hold(record):\n    import os, time\n"
                 "    open(os.environ['HOLD_MARK'], 'w').close()\n    time.sleep(120)\n",
    "holding.py": "from stages import hold\n\ndef run(record):\n    hold(record)\n",
    "params/p.yaml": "seed: 1\n",
    "params/sweep.yaml": "seed: 1\nsweep:\n  seed: [1, 2]\n",
    "params/bad.yaml": "seed: [1\n",
}


def _project(root: Path) -> Path:
    for rel, text in PROJECT.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def _normalized(text: str, root: Path) -> str:
    """Output with what differs between two runs of two projects (timings, run ids, paths) replaced."""
    text = text.replace(str(root), "<root>")
    text = re.sub(r"\d+\.\d\ds", "<t>s", text)
    return re.sub(r"\b\d{8}-\d{6}\.\d{3}-[0-9a-f]{4}\b", "<run>", text)


def _traceback_tail(stderr: str) -> str:
    """A traceback's last line (the exception): the frames above the run body differ between the paths."""
    assert "Traceback (most recent call last)" in stderr
    return stderr.strip().splitlines()[-1]


#: (command line, whether stderr holds a Python traceback of the CLI); in sequence, each path in its own copy
SEQUENCE = [
    (["run", "experiment.py", "-p", "params/sweep.yaml"], False),  # first run: everything runs
    (["run", "experiment.py", "-p", "params/sweep.yaml"], False),  # cached
    (["run", "experiment.py", "--params=params/sweep.yaml", "-q", "--set", "seed=5"], False),
    (["run", "experiment.py", "-pparams/p.yaml", "--dry"], False),
    (["run", "failing.py", "-p", "params/p.yaml"], False),  # a failing stage: exit 1
    (["run", "failing.py", "-p", "params/p.yaml", "--debug"], False),  # its traceback printed
    (["--debug", "run", "failing.py", "-p", "params/p.yaml", "-q"], False),
    (["run", "experiment.py", "-p", "params/bad.yaml"], False),  # OrchError: a message, exit 1
    (["run", "experiment.py", "-p", "params/missing.yaml"], False),
    (["run", "experiment.py", "-p", "params/p.yaml", "--detach"], False),  # OrchError of the options
    (["run", "experiment.py", "-p", "params/p.yaml", "--executor", "slurm", "-j", "2"], False),
    (["run", "experiment.py", "-p", "params/bad.yaml", "--debug"], True),  # OrchError with --debug: traceback
    (["--debug", "run", "experiment.py", "-p", "params/bad.yaml"], True),
    (["run", "experiment.py", "-p", "params/p.yaml", "-j", "0"], False),  # click's usage errors
    (["run", "experiment.py", "--nope"], False),
    (["run", "experiment.py", "-p", "params/p.yaml", "--cache", "cache2", "--overwrite"], False),
    (["run", "experiment.py", "-p", "params/p.yaml", "--overwrite-stage", "use", "--no-progress"], False),
]


def test_a_fast_path_run_prints_and_exits_as_a_click_path_run(scripts, tmp_path):
    roots = {name: _project(tmp_path / name) for name in scripts}
    env = _env()
    for argv, traceback in SEQUENCE:
        seen = {}
        for name, script in scripts.items():
            p = subprocess.run([sys.executable, str(script), *argv], cwd=roots[name], capture_output=True, text=True,
                               env=env, stdin=subprocess.DEVNULL)
            out, err = _normalized(p.stdout, roots[name]), _normalized(p.stderr, roots[name])
            seen[name] = (out, _traceback_tail(err) if traceback else err, p.returncode)
        assert seen["fast"] == seen["click"], argv
    statuses = {name: sorted(p.name for p in (roots[name] / ".orch" / "runs").iterdir()) for name in roots}
    assert len(statuses["fast"]) == len(statuses["click"]) > 5


def test_the_fast_path_is_what_runs_and_click_is_not_imported(tmp_path):
    """The console script's `orch run` parses without click (and `orch run --help` still reaches click)."""
    root = _project(tmp_path / "proj")
    probe = tmp_path / "bin" / "orch"
    probe.parent.mkdir()
    probe.write_text("import sys\nfrom orchestrator.launcher import main\ncode = main()\n"
                     "print(sorted(m for m in sys.modules if m.startswith(('click', 'orchestrator.cli'))), "
                     "file=sys.stderr)\nsys.exit(code)\n")
    env = _env()
    for argv in (["run", "failing.py", "-p", "params/p.yaml"], ["run", "experiment.py", "-p", "params/p.yaml"]):
        p = subprocess.run([sys.executable, str(probe), *argv], cwd=root, capture_output=True, text=True, env=env)
        assert p.stderr.strip().splitlines()[-1] == "[]", p.stderr
    p = subprocess.run([sys.executable, str(probe), "run", "experiment.py", "-j", "x"], cwd=root, capture_output=True,
                       text=True, env=env)
    assert p.returncode == 2 and "Invalid value for '--parallel'" in p.stderr


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("ORCH_CACHE", "COLUMNS")}
    return {**env, "PYTHONPATH": str(REPO), **extra}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_fast_path_run_ends_as_a_click_path_run(scripts, tmp_path, sig):
    seen = {}
    for name, script in scripts.items():
        root = _project(tmp_path / name)
        mark = root / "holding"
        proc = subprocess.Popen([sys.executable, str(script), "run", "holding.py", "-p", "params/p.yaml"], cwd=root,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=_env(HOLD_MARK=str(mark)))
        wait_for(mark.exists, "the held stage to start")
        os.kill(proc.pid, sig)
        out, err = proc.communicate(timeout=60)
        seen[name] = (_normalized(out, root), _normalized(err, root), proc.returncode)
    assert seen["fast"] == seen["click"]
    assert seen["fast"][2] == 128 + sig


def test_a_closed_pipe_ends_a_fast_path_run_as_a_click_path_run(scripts, tmp_path):
    seen = {}
    for name, script in scripts.items():
        root = _project(tmp_path / name)
        read, write = os.pipe()
        os.close(read)  # whatever the run prints meets a closed pipe
        try:
            p = subprocess.run([sys.executable, str(script), "run", "experiment.py", "-p", "params/sweep.yaml"],
                               cwd=root, stdout=write, stderr=subprocess.PIPE, text=True, env=_env())
        finally:
            os.close(write)
        seen[name] = (_normalized(p.stderr, root), p.returncode)
    assert seen["fast"] == seen["click"] == ("", 1)


def test_a_cached_run_does_not_import_pathlib_nor_a_parser(tmp_path):
    """pathlib (with urllib.parse and ipaddress: ~17 M instructions, ~5% of a cached chain-200 run) is
    imported only where a stage runs or a reader asks for a Path, tomllib (~40 M) and PyYAML only to
    parse a text not parsed before (parsecache): a cached run that tracks a file, reads a parameter
    file extending another and a pyproject.toml, and writes its manifest and report does without them."""
    root = tmp_path / "proj"
    files = {
        "experiment.py": "from stages import make, use\n\ndef run(record):\n    use(make(record))\n",
        "stages.py": "from orchestrator import stage, PickleCacher\n\n"
                     "@stage(outputs=['a'], cachers=[PickleCacher])\ndef make(record):\n"
                     "    with open(record.track('data/x.txt')) as f:\n        return record.params.seed + len(f.read())\n\n"
                     "@stage(inputs=['a'], outputs=['b'], cachers=[PickleCacher])\ndef use(record, a):\n    return a + 1\n",
        "data/x.txt": "abc\n",
        "params/base.yaml": "seed: 1\n",
        "params/p.yaml": "extends: base.yaml\nsweep:\n  seed: [1, 2]\n",
        "pyproject.toml": "[tool.orch]\ncode-roots = []\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    probe = tmp_path / "bin" / "orch"
    probe.parent.mkdir()
    probe.write_text("import sys\nfrom orchestrator.launcher import main\ncode = main()\n"
                     "print(sorted(m for m in ('pathlib', 'urllib.parse', 'ipaddress', 'tomllib', 'tomli', 'yaml') "
                     "if m in sys.modules), "
                     "file=sys.stderr)\nsys.exit(code)\n")
    argv = [str(probe), "run", "experiment.py", "-p", "params/p.yaml"]
    first = subprocess.run([sys.executable, *argv], cwd=root, capture_output=True, text=True, env=_env())
    assert first.returncode == 0 and "4 ran" in first.stdout, first.stdout + first.stderr
    # -S: no .pth files run at start-up (an editable install's finder, as in this test's environment,
    # imports pathlib there); site-packages is still on the path, through PYTHONPATH
    site_packages = sysconfig.get_paths()["purelib"]
    env = _env(PYTHONPATH=os.pathsep.join([str(REPO), site_packages]))
    cached = subprocess.run([sys.executable, "-S", *argv], cwd=root, capture_output=True, text=True, env=env)
    assert cached.returncode == 0 and "4 cached" in cached.stdout, cached.stdout + cached.stderr
    assert cached.stderr.strip().splitlines()[-1] == "[]", cached.stderr
    assert (root / ".orch" / "runs" / "latest" / "report.html").is_file()


@pytest.mark.parametrize("path", ["fast", "click"])
def test_run_takes_an_empty_cache_and_a_parameter_file_with_a_slash_as_the_readers_do(scripts, tmp_path, path):
    """`--cache ""` is the current directory for `orch run` as for `orch why` and `runs` (click's Path("")
    there), and `-p p.yaml/` reads p.yaml, as when the run's paths were pathlib's."""
    root = _project(tmp_path / "proj")
    (root / "params" / "child.yaml").write_text("extends: p.yaml/\n")
    sub = root / "sub"
    sub.mkdir()
    run = [sys.executable, str(scripts[path]), "run", "../experiment.py", "-p", "../params/child.yaml/", "--cache", ""]
    first = subprocess.run(run, cwd=sub, capture_output=True, text=True, env=_env())
    assert first.returncode == 0 and "2 ran" in first.stdout, first.stdout + first.stderr
    assert (sub / "runs").is_dir() and not (root / ".orch").exists()
    why = subprocess.run([sys.executable, "-m", "orchestrator.cli", "why", "../experiment.py", "-p",
                          "../params/child.yaml", "--cache", ""], cwd=sub, capture_output=True, text=True, env=_env())
    assert why.returncode == 0 and "everything comes from the cache" in why.stdout, why.stdout + why.stderr
