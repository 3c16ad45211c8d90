"""Which project files an external script imports (so that editing them re-runs its stage)."""

from __future__ import annotations

from orchestrator.hashing.scriptdeps import local_imports


def _w(path, text=""):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_finds_sibling_package_relative_and_transitive_imports(tmp_path):
    root = tmp_path / "proj"
    script = _w(root / "external" / "train.py", "import json\nimport torch\nfrom models import Net\n"
                "from external.data import load\nimport common.util as u\n")
    models = _w(root / "external" / "models.py", "from .layers import Block\n")
    _w(root / "external" / "__init__.py")
    layers = _w(root / "external" / "layers.py", "import numpy\n")
    data = _w(root / "external" / "data.py")
    util = _w(root / "common" / "util.py", "from . import helpers\n")
    init = _w(root / "common" / "__init__.py")
    helpers = _w(root / "common" / "helpers.py")
    _w(root / "unused.py")
    found = local_imports(script, root)
    assert found == sorted(p.resolve() for p in [models, layers, data, util, init, helpers,
                                                  root / "external" / "__init__.py"])


def test_ignores_installed_excluded_and_outside_files(tmp_path):
    root = tmp_path / "proj"
    script = _w(root / "train.py", "import site_mod\nimport orchlike\nimport outside\n")
    _w(root / ".venv" / "lib" / "site-packages" / "site_mod.py")
    _w(root / "orchlike" / "__init__.py")
    _w(tmp_path / "outside.py")
    assert local_imports(script, root, exclude=[root / "orchlike"]) == []


def test_cycles_and_syntax_errors_do_not_break_it(tmp_path):
    root = tmp_path / "proj"
    script = _w(root / "s.py", "import a\n")
    a = _w(root / "a.py", "import b\n")
    b = _w(root / "b.py", "import a\nthis is not python\n")
    assert local_imports(script, root) == sorted([a.resolve(), b.resolve()])
