"""Helpers shared by the benchmarks: generated projects and timing of the real CLI."""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ORCH = [str(Path(sys.executable).with_name("orch"))]


def write_chain_project(root: Path, stages: int, sets: int = 1, payload: str = "1") -> Path:
    """A project whose experiment chains `stages` distinct stage functions, for `sets` parameter sets."""
    (root / "stages").mkdir(parents=True, exist_ok=True)
    (root / "stages" / "__init__.py").write_text("")
    lines = ["from orchestrator import stage, PickleCacher", ""]
    lines += ["@stage(outputs=['x0'], cachers=[PickleCacher])", "def s0(record):",
              "    return record.params.seed", ""]
    for i in range(1, stages):
        lines += [f"@stage(inputs=['x{i-1}'], outputs=['x{i}'], cachers=[PickleCacher])",
                  f"def s{i}(record, x{i-1}):", f"    return x{i-1} + {payload}", ""]
    (root / "stages" / "chain.py").write_text("\n".join(lines))
    calls = "\n".join(f"    s{i}(record)" for i in range(stages))
    (root / "experiment.py").write_text(
        f"from stages.chain import {', '.join(f's{i}' for i in range(stages))}\n\ndef run(record):\n{calls}\n")
    (root / "params").mkdir(exist_ok=True)
    (root / "params" / "p.yaml").write_text("seed: 1\nsweep:\n  seed: [" + ", ".join(str(i) for i in range(sets)) + "]\n"
                                            if sets > 1 else "seed: 1\n")
    return root


#: what a research repository's pyproject.toml holds (the chain projects have none otherwise)
REPO_PYPROJECT = """[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "darcy-experiments"
version = "0.3.0"
requires-python = ">=3.10"
dependencies = ["torch>=2.1", "lightning>=2.2", "numpy>=1.26", "pyyaml>=6", "matplotlib>=3.8", "orch>=0.2"]

[project.optional-dependencies]
dev = ["pytest>=8", "ruff>=0.4", "mypy>=1.10"]

[tool.ruff]
line-length = 120
target-version = "py310"

[tool.ruff.lint]
select = ["E", "F", "I", "B", "UP"]

[tool.pytest.ini_options]
testpaths = ["tests"]
addopts = "-q"

[tool.orch]
exclude = ["notebooks"]
"""


def make_repository(root: Path) -> Path:
    """`root` as the top of a repository (a .git directory: what orch looks for) with REPO_PYPROJECT."""
    (root / ".git").mkdir(exist_ok=True)
    (root / "pyproject.toml").write_text(REPO_PYPROJECT)
    return root


def time_cli(args: list[str], cwd: Path, repeat: int = 5) -> tuple[float, float, int]:
    """(median wall s, min wall s, max peak RSS KiB of the child) over `repeat` runs of the orch CLI."""
    times, rss = [], 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        proc = subprocess.run(ORCH + args, cwd=cwd, capture_output=True, text=True, env=bench_env())
        times.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            raise SystemExit(f"orch {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
        rss = max(rss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return statistics.median(times), min(times), rss


def bench_env() -> dict:
    """The environment users have: bytecode caching on (some sandboxes turn it off globally)."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def env_info(where: str | None = None) -> str:
    """Python, cores, and the filesystem the benchmark's projects live on (tempfile's directory by
    default): first runs depend on it (see filesystem())."""
    import tempfile

    return f"python {sys.version.split()[0]}, {os.cpu_count()} cores, {filesystem(where or tempfile.gettempdir())}"


def filesystem(path: str) -> str:
    """The type of the filesystem holding `path`, and for ext4 whether it has a journal. ext4 without
    one (common on VM images) will not reuse an inode for 60-360 s after it was freed, and scans the
    inode table past every such inode for each file it creates: creating files right after deleting
    many costs up to ~20x more there (BENCHMARKS.md, Round 10). A journaled ext4, XFS or tmpfs do not."""
    best, fstype, device = "", "?", ""
    try:
        with open("/proc/mounts") as f:
            mounts = [line.split()[:3] for line in f]
    except OSError:
        return "filesystem unknown"
    real = os.path.realpath(path)
    for dev, mnt, typ in mounts:
        mnt = mnt.replace("\\040", " ")
        if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
            best, fstype, device = mnt, typ, dev
    if fstype != "ext4":
        return f"{fstype} at {best}"
    name = os.path.basename(os.path.realpath(device))
    journaled = any(entry.startswith(name + "-") for entry in _listdir("/proc/fs/jbd2"))
    return f"ext4 at {best}, " + ("journaled" if journaled else "NO journal")


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []
