"""What orch promises about untrusted input: no shell, no unsafe YAML, no name that escapes the store,
stored objects read-only; and the README says plainly that a cache is trusted code (pickles)."""

from __future__ import annotations

import ast
import os
import stat
from pathlib import Path

import pytest
from conftest import pipeline

from orchestrator.errors import OrchError
from orchestrator.store import DiskStore, ObjectInfo
from orchestrator.store.entries import EntryError, check_name, check_object

PACKAGE = Path(__file__).resolve().parents[1] / "orchestrator"
README = Path(__file__).resolve().parents[1] / "README.md"


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def _name(func: ast.expr) -> str:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def _package_sources():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 40
    for path in files:
        yield path, ast.parse(path.read_text(encoding="utf-8"), str(path))


def test_no_subprocess_runs_through_a_shell():
    found = []
    for path, tree in _package_sources():
        for call in _calls(tree):
            for kw in call.keywords:
                if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                    found.append(f"{path}:{call.lineno}")
            if _name(call.func) in ("os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput"):
                found.append(f"{path}:{call.lineno}")
    assert found == []


def test_yaml_is_only_read_with_safe_loaders():
    """yaml.load must name a safe loader; the unsafe entry points are never called."""
    found = []
    for path, tree in _package_sources():
        for call in _calls(tree):
            name = _name(call.func)
            if name in ("yaml.unsafe_load", "yaml.full_load", "yaml.load_all", "yaml.unsafe_load_all"):
                found.append(f"{path}:{call.lineno} {name}")
            if name == "yaml.load":
                loader = next((kw.value for kw in call.keywords if kw.arg == "Loader"), None)
                if loader is None or "_yaml_loader" not in ast.unparse(loader):
                    found.append(f"{path}:{call.lineno} yaml.load without the safe loader")
    assert found == []
    import yaml

    from orchestrator.paramfiles import _yaml_loader

    assert _yaml_loader() in (yaml.SafeLoader, getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def test_a_python_tag_in_a_parameter_file_runs_nothing(project, tmp_path):
    pipeline(project)
    marker = tmp_path / "pwned"
    project.write("params/evil.yaml", f"data: !!python/object/apply:os.system ['touch {marker}']\n")
    proc = project.orch("run", "experiment.py", "-p", "params/evil.yaml", check=False)
    assert proc.returncode == 1 and "evil.yaml" in proc.stderr and not marker.exists()


@pytest.mark.parametrize("bad", ["../../etc/passwd", "a/b", "", ".", "..", "x\x00y", "/abs", "a\\b", "\udcff"])
def test_names_that_would_escape_the_store_are_refused(bad):
    with pytest.raises(ValueError):
        check_name("key", bad)
    with pytest.raises(EntryError):
        check_object(ObjectInfo("0" * 64, 1, "file", bad if bad else "/"))
    with pytest.raises(EntryError):
        check_object(ObjectInfo(bad, 1, "file", ".pkl"))


def test_stored_objects_are_read_only(tmp_path):
    store = DiskStore(tmp_path / "cache")
    src = tmp_path / "x.bin"
    src.write_bytes(b"payload")
    info = store.ingest(src, ".bin")
    path = store.object_path(info)
    assert not path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "f.txt").write_text("x")
    dinfo = store.ingest(tree)
    for dirpath, _, files in os.walk(store.object_path(dinfo)):
        for name in files:
            assert not os.stat(os.path.join(dirpath, name)).st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)


def test_an_output_name_cannot_reach_outside_the_staging_area():
    from orchestrator import PickleCacher, stage

    for bad in ("../x", "a/b", "..", "x\x00", ""):
        with pytest.raises(OrchError, match="output name"):
            stage(outputs=[bad], cachers=[PickleCacher])(lambda record: 1)


def test_the_readme_says_a_cache_is_trusted_code():
    text = " ".join(README.read_text(encoding="utf-8").split())
    assert "A cache is trusted code" in text and "untrusted" in text
