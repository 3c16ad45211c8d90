"""Code frozen at submission (executors.slurmcode), without a cluster: what is copied, what is linked,
and that a job's imports come from the copy."""

from __future__ import annotations

import os
import subprocess
import sys

from orchestrator.executors.slurmcode import freeze, job_roots
from orchestrator.hashing.coderoots import CodeRoots


def _project(root):
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "mod.py").write_text("VALUE = 1\n")
    (root / "data").mkdir()
    (root / "data" / "table.csv").write_text("a,b\n")
    (root / ".git").mkdir()
    (root / "experiment.py").write_text("from pkg.mod import VALUE\n\ndef run(record):\n    pass\n")
    (root / "cache" / "runs" / "r1").mkdir(parents=True)  # an unhidden cache inside the project
    return root


def test_python_files_are_copied_the_rest_linked_and_the_cache_never_walked(tmp_path):
    root = _project(tmp_path / "proj")
    roots = CodeRoots.single(root)
    snap = freeze(roots, str(root / "experiment.py"), root / "cache" / "runs" / "r1" / "code", str(root / "cache"))
    copy = root / "cache" / "runs" / "r1" / "code" / "0"
    assert snap.experiment == str(copy / "experiment.py") and snap.mapped(str(root / "pkg")) == str(copy / "pkg")
    assert not (copy / "pkg" / "mod.py").is_symlink() and (copy / "pkg" / "mod.py").read_text() == "VALUE = 1\n"
    assert (copy / "data").is_dir() and not (copy / "data").is_symlink()
    assert (copy / "data" / "table.csv").is_symlink() and (copy / "data" / "table.csv").read_text() == "a,b\n"
    assert (copy / ".git").is_symlink() and (copy / "cache").is_symlink()  # hidden and the cache: linked whole
    (root / "pkg" / "mod.py").write_text("VALUE = 2\n")  # an edit after submission
    assert (copy / "pkg" / "mod.py").read_text() == "VALUE = 1\n"
    assert [r.kind for r in job_roots(roots, snap).roots] == ["snapshot", "project"]


def test_a_job_imports_the_copy_and_freezing_can_be_turned_off(tmp_path, monkeypatch):
    root = _project(tmp_path / "proj")
    snap = freeze(CodeRoots.single(root), str(root / "experiment.py"), tmp_path / "code", str(tmp_path / "cache"))
    (root / "pkg" / "mod.py").write_text("VALUE = 2\n")
    code = ("import pickle, sys; from orchestrator.executors.slurmcode import activate; "
            "activate(pickle.loads(bytes.fromhex(sys.argv[1]))); import pkg.mod; print(pkg.mod.VALUE, pkg.mod.__file__)")
    import pickle

    out = subprocess.run([sys.executable, "-c", code, pickle.dumps(snap).hex()], cwd=root, capture_output=True,
                         text=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert out.stdout.split() == ["1", str(tmp_path / "code" / "0" / "pkg" / "mod.py")], out.stderr
    monkeypatch.setenv("ORCH_SLURM_FREEZE", "0")
    assert freeze(CodeRoots.single(root), str(root / "experiment.py"), tmp_path / "code2", str(tmp_path)) is None
