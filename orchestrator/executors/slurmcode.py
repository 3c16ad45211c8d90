"""Code frozen at submission, for `--executor slurm`: a job runs the project code as it was when the run
submitted it, however long it waits in the queue, so editing a stage meanwhile never mixes versions.

At its first submission a run copies its project's code roots (hashing.coderoots) into
`runs/<id>/code/<n>/`: every `.py` file is copied; everything else (data, configuration, hidden
directories such as the cache itself) is a symlink to the original, so code that opens files next to
itself still finds them. A job puts the snapshot first on `sys.path` (the experiment's directory and
every entry of the head's `sys.path` that lies in a root, mapped into the snapshot) and loads the
experiment from it. The node keys were computed from the code at planning, moments before the
snapshot; the job still checks (executors.slurmjob) that the stage it imported has the planned
fingerprint, so an edit in that window, or code the snapshot cannot cover (a package that an import
hook, not sys.path, finds), fails the node instead of storing under the wrong key.
ORCH_SLURM_FREEZE=0 turns the snapshot off (jobs import the project in place).
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..hashing.coderoots import CodeRoots


@dataclass(frozen=True)
class Snapshot:
    """Where a run's code was copied: pairs of (original root, its copy), and the experiment's copy."""

    roots: tuple[tuple[str, str], ...]
    experiment: str
    sys_path: tuple[str, ...] = field(default=())  # the head's sys.path entries inside roots, mapped

    def mapped(self, path: str) -> str | None:
        real = os.path.realpath(path)
        for original, copy in self.roots:
            if real == original or real.startswith(original + os.sep):
                return os.path.join(copy, os.path.relpath(real, original))
        return None


def freeze(roots: CodeRoots, experiment: str, into: Path, cache: str) -> Snapshot | None:
    """Copy the project code under `into` (inside the cache directory `cache`, which is never walked:
    it may lie in the project, unhidden); None when ORCH_SLURM_FREEZE=0 or the experiment is in no root."""
    if os.environ.get("ORCH_SLURM_FREEZE", "1") == "0":
        return None
    pairs = []
    for n, root in enumerate(roots.roots):
        copy = into / str(n)
        _mirror(Path(root.path), copy, roots, root.path, os.path.realpath(cache))
        pairs.append((root.path, str(copy)))
    snap = Snapshot(tuple(pairs), "")
    experiment_copy = snap.mapped(experiment)
    if experiment_copy is None:
        return None
    path = tuple(p for p in (snap.mapped(e) for e in sys.path if e) if p is not None)
    return Snapshot(tuple(pairs), experiment_copy, path)


def _mirror(src: Path, dst: Path, roots: CodeRoots, root: str, cache: str) -> None:
    """Python files copied, the rest symlinked; directories that are not this root's code (installed
    packages, virtual environments, excluded paths, hidden ones, the cache) symlinked whole."""
    dst.mkdir(parents=True, exist_ok=True)
    with os.scandir(src) as entries:
        for entry in entries:
            target = dst / entry.name
            if entry.name == "__pycache__":
                continue
            if entry.is_dir(follow_symlinks=False):
                real = os.path.realpath(entry.path)
                owner = roots.root_of(os.path.join(real, "x.py"))
                if entry.name.startswith(".") or owner is None or owner.path != root or real == cache:
                    target.symlink_to(real)
                else:
                    _mirror(Path(entry.path), target, roots, root, cache)
            elif entry.name.endswith(".py") and entry.is_file():
                shutil.copyfile(entry.path, target)
            else:
                target.symlink_to(os.path.realpath(entry.path))


def activate(snapshot: Snapshot) -> None:
    """In a job, before the experiment is imported: the snapshot comes first on sys.path."""
    for entry in reversed((os.path.dirname(snapshot.experiment), *snapshot.sys_path)):
        if entry in sys.path:
            sys.path.remove(entry)
        sys.path.insert(0, entry)


def job_roots(task_roots: CodeRoots | None, snapshot: Snapshot | None) -> CodeRoots | None:
    """The code roots a job fingerprints with: the planned roots plus their copies (a module imported
    from either is project code, with the same module names, so the same fingerprint)."""
    if task_roots is None or snapshot is None:
        return task_roots
    from ..hashing.coderoots import CodeRoot

    copies = tuple(CodeRoot(os.path.realpath(copy), "snapshot") for _, copy in snapshot.roots)
    return CodeRoots(copies + task_roots.roots, task_roots.excluded)
