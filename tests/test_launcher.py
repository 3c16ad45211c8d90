"""The `orch` entry point (orchestrator.launcher) prints stored help text without importing click:
the text must be exactly what click prints, now and after any edit of the CLI (regenerate with
`make help-text`), and every other command line must reach click unchanged."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import orchestrator
from orchestrator import helprender, helptext

REPO = Path(orchestrator.__file__).resolve().parent.parent
# what pip writes for a console script, with the `orch = ...` target of pyproject.toml
WRAPPER = "import sys\nfrom {module} import main\nif __name__ == '__main__':\n    sys.exit(main())\n"


@pytest.fixture(scope="module")
def scripts(tmp_path_factory) -> dict[str, Path]:
    """`orch` wrappers for the launcher and for click directly (each named orch: click names the program
    after argv[0])."""
    made = {}
    for name, module in (("launcher", "orchestrator.launcher"), ("click", "orchestrator.cli")):
        d = tmp_path_factory.mktemp(name)
        (d / "orch").write_text(WRAPPER.format(module=module))
        made[name] = d / "orch"
    return made


def _run(script: Path, argv, **env) -> tuple[str, str, int]:
    full = {**os.environ, "PYTHONPATH": str(REPO), **env}
    full.pop("COLUMNS", None) if "COLUMNS" not in env else None
    p = subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True, env=full,
                       stdin=subprocess.DEVNULL)
    return p.stdout, p.stderr, p.returncode


def test_the_stored_text_is_what_click_renders_now():
    assert helptext.TEXTS == helprender.render(), "the CLI changed: run `make help-text` (python -m orchestrator.helprender)"
    assert helptext.COLUMNS == helprender.COLUMNS


def test_the_console_script_is_the_launcher():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["orch"] == "orchestrator.launcher:main"


@pytest.mark.parametrize("argv", sorted(helptext.TEXTS) + [("-h",), ("run",), ("nope", "--help"), ("--debug", "--help")],
                         ids=lambda a: " ".join(a) or "(none)")
def test_the_launcher_prints_what_click_prints(scripts, argv):
    for columns in ("80", "200"):
        assert _run(scripts["launcher"], argv, COLUMNS=columns) == _run(scripts["click"], argv, COLUMNS=columns)


def test_the_launcher_asks_click_when_the_stored_text_may_differ(scripts):
    narrow = _run(scripts["launcher"], ["--help"], COLUMNS="60")
    assert narrow == _run(scripts["click"], ["--help"], COLUMNS="60") and narrow[0] != helptext.TEXTS[("--help",)][0]
    completion = {"_ORCH_COMPLETE": "bash_complete", "COMP_WORDS": "orch ", "COMP_CWORD": "1"}
    completed = _run(scripts["launcher"], [], **completion)
    assert completed == _run(scripts["click"], [], **completion) and "run" in completed[0]
    # ORCH_CACHE names a default no help text shows: stored text still holds
    assert _run(scripts["launcher"], ["run", "--help"], ORCH_CACHE="/elsewhere") == (*helptext.TEXTS[("run", "--help")],)


def test_orch_help_imports_neither_click_nor_the_api(tmp_path):
    probe = tmp_path / "orch"
    probe.write_text("import sys\nfrom orchestrator.launcher import main\ncode = main()\n"
                     "print(sorted(m for m in sys.modules if m.startswith(('orchestrator', 'click'))), file=sys.stderr)\n"
                     "sys.exit(code)\n")
    for argv in (["--help"], ["--version"], ["run", "--help"], []):
        out, err, code = _run(probe, argv, COLUMNS="100")
        assert err.strip().splitlines()[-1] == "['orchestrator', 'orchestrator.helptext', 'orchestrator.launcher']", err
    out, err, code = _run(probe, ["runs", "--limit", "x"], COLUMNS="100")  # anything else: click (which exits)
    assert code == 2 and "Invalid value for '--limit'" in err


def test_the_public_api_is_loaded_on_first_use():
    code = ("import sys, orchestrator\n"
            "assert [m for m in sys.modules if m.startswith('orchestrator.')] == [], sys.modules\n"
            "import orchestrator.stage as st\n"
            "from orchestrator import stage, aggregate, Record, Lazy, run_external, load, PickleCacher, OrchError\n"
            "from orchestrator.cachers import JsonCacher\n"
            "assert st is stage and orchestrator.stage is stage and callable(stage) and stage.__module__ == 'orchestrator.stage'\n"
            "assert sys.modules['orchestrator.stage'].stage is stage\n"
            "assert orchestrator.cachers.PickleCacher is PickleCacher and orchestrator.errors.OrchError is OrchError\n"
            "ns = {}\n"
            "exec('from orchestrator import *', ns)\n"
            "assert set(orchestrator.__all__) <= set(ns), set(orchestrator.__all__) - set(ns)\n"
            "assert set(orchestrator.__all__) <= set(dir(orchestrator))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
