"""Instruction counts of whole `orch` processes under callgrind: deterministic, unlike wall-clock time
on a shared machine, so an A/B decision about an optimization rests on them.

    python bench/instructions.py [--code DIR ...] [--only NAME ...]

Each --code DIR is a checkout whose `orchestrator` package is put first on PYTHONPATH (default: this
repository); every workload is measured for every DIR, in alternation, each in its own project and
cache. Needs valgrind.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import bench_env, make_repository, write_chain_project  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
#: seconds between the first run and the cached one before the measured run: entries younger than
#: store.entryindex.RACY_S (2 s) at the start of a planning are not indexed
SETTLE_S = 2.5
RUN = ["run", "experiment.py", "-p", "params/p.yaml", "-q"]
#: name -> (stages, sets, cached?, argv); "run1-cached": `orch run`'s start-up (one stage, cached);
#: "-repo-": the project at the top of a repository with a research project's pyproject.toml
#: (common.REPO_PYPROJECT); "-cached": a run that finds everything cached, after one
#: that did (2.5 s after the first run: the entry index holds it), "-cached-once": the run right
#: after the first run, on sources older than the racy windows of orch's caches (up to Round 10 it
#: read every entry file; since Round 11 the first run indexes what it wrote); "orch-help" and the runs use the `orch` console
#: script (the target pyproject.toml names, in a wrapper as pip writes it), "help" is click's own
#: `python -m orchestrator.cli --help`, "python-pass" is `python -c pass`
WORKLOADS = {
    "python-pass": (0, 0, False, []),
    "orch-help": (0, 0, False, ["--help"]),
    "help": (0, 0, False, ["--help"]),
    "run1-cached": (1, 1, True, RUN),
    "chain200-cached": (200, 1, True, RUN),
    "chain200-repo-cached": (200, 1, True, RUN),
    "chain200-cached-once": (200, 1, True, RUN),
    "chain200-first": (200, 1, False, RUN),
    "1k-cached": (100, 10, True, RUN),
    "1k-cached-once": (100, 10, True, RUN),
    "1k-first": (100, 10, False, RUN),
    "10k-cached": (100, 100, True, RUN),
}


def console_script(code: Path, where: Path) -> Path:
    """An `orch` script as pip writes it for the entry point in CODE's pyproject.toml (in WHERE, which
    becomes sys.path[0] as a venv's bin directory does: keep it out of a project)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    module, function = tomllib.loads((code / "pyproject.toml").read_text())["project"]["scripts"]["orch"].split(":")
    where.mkdir(parents=True, exist_ok=True)
    script = where / "orch"
    script.write_text(f"import sys\nfrom {module} import {function}\nif __name__ == '__main__':\n    sys.exit({function}())\n")
    return script


def command(code: Path, name: str, argv: list[str], cwd: Path) -> list[str]:
    """The command line measured: `orch ...` through the console script, as users run it ("help": click's
    own rendering, `python -m orchestrator.cli --help`)."""
    if name == "python-pass":
        return [sys.executable, "-c", "pass"]
    if name == "help":
        return [sys.executable, "-m", "orchestrator.cli", *argv]
    return [sys.executable, str(console_script(code, cwd.with_name(cwd.name + "-bin"))), *argv]


def count(cmd: list[str], code: Path, cwd: Path) -> int:
    """Instructions executed by CMD (the process and its children)."""
    env = bench_env() | {"PYTHONPATH": str(code)}
    proc = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *cmd],
                          cwd=cwd, env=env, capture_output=True, text=True)
    m = re.search(r"Collected : (\d+)", proc.stderr)
    if proc.returncode != 0 or not m:
        raise SystemExit(f"callgrind run failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-2000:]}")
    return int(m.group(1))


def measure(code: Path, name: str, tmp: Path) -> int:
    stages, sets, cached, argv = WORKLOADS[name]
    root = tmp / f"{name}-{abs(hash(str(code)))}"
    shutil.rmtree(root, ignore_errors=True)
    if stages:
        write_chain_project(root, stages, sets=sets)
        if "-repo-" in name:
            make_repository(root)
    else:
        root.mkdir(parents=True)
    env = bench_env() | {"PYTHONPATH": str(code)}
    if name.endswith("-once"):  # sources older than the racy windows of orch's caches (yaml, fingerprints),
        time.sleep(SETTLE_S)    # as a user's are: what the run after the first one does is then all it measures
    # One plain run first: bytecode written (users have .pyc files) and, for "cached", the results.
    cmd = command(code, name, argv, root)
    subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)
    if cached and not name.endswith("-once"):  # steady state: a cached run wrote the entry index
        time.sleep(SETTLE_S)
        subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)
    if not cached and stages:
        shutil.rmtree(root / ".orch")
    return count(cmd, code, root)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--code", action="append", type=Path, help="checkout(s) to compare (default: this one)")
    ap.add_argument("--only", action="append", choices=sorted(WORKLOADS))
    args = ap.parse_args()
    codes = [c.resolve() for c in (args.code or [REPO])]
    names = args.only or list(WORKLOADS)
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            counts = [measure(code, name, Path(tmp)) for code in codes]
            ratio = f"  ratio {counts[-1] / counts[0]:.3f}" if len(counts) > 1 else ""
            print(f"{name:18s} " + "  ".join(f"{c / 1e6:9.1f} M" for c in counts) + ratio, flush=True)


if __name__ == "__main__":
    main()
