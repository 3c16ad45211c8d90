"""Parameter files parsed through the run's yaml-cache.json (orchestrator.parsecache) give exactly
what PyYAML gives, every time, and a cached run does not import PyYAML."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from conftest import pipeline

from orchestrator import parsecache
from orchestrator.fsutil import json_exact
from orchestrator.paramfiles import _parse_yaml

TEXTS = [
    "a: 1\nb: [1, 2.5, -0.0, true, null, 'x']\nc: {d: {e: 1e-7}}\n",
    "lr: 0.1\nsweep:\n  lr: [0.1, 0.2]\n",
    "",  # empty file: None
    "when: 2024-01-02\n",  # a date: not exact in JSON, parsed every time
    "n: .nan\n",
    "1: one\n",  # an int key
    "s: !!set {a, b}\n",
    "big: 123456789012345678901234567890\nx: 0x10\ny: 1_000\nz: '1'\n",
    "huge: 0x" + "f" * 4000 + "\n",  # more digits than str() of an int may have (Python >= 3.10.7)
]


@pytest.mark.parametrize("text", TEXTS)
def test_what_the_cache_gives_is_what_yaml_gives(tmp_path, text):
    expected = yaml.safe_load(text)
    path = tmp_path / "yaml-cache.json"
    first = parsecache.yaml_texts(path)
    got = first.load(text, _parse_yaml)
    first.save()
    again = parsecache.yaml_texts(path).load(text, _parse_yaml)
    for value in (got, again):
        if expected == expected:  # NaN aside
            assert value == expected and (text.startswith("huge") or repr(value) == repr(expected))  # (no repr)
    kept = json.loads(path.read_text())["parsed"] if path.exists() else {}
    if not json_exact(expected):
        assert not kept
    for text_kept, _check in kept.values():  # what is kept gives back exactly what YAML gave
        assert repr(json.loads(text_kept)) == repr(expected)
    if text.startswith("huge") and hasattr(sys, "set_int_max_str_digits"):
        assert not kept  # json.dumps refuses it: parsed every time


def test_a_caller_changing_the_value_changes_nothing_stored(tmp_path):
    path = tmp_path / "yaml-cache.json"
    c = parsecache.yaml_texts(path)
    c.load(TEXTS[0], _parse_yaml)["a"] = 99
    c.save()
    c2 = parsecache.yaml_texts(path)
    c2.load(TEXTS[0], _parse_yaml)["c"]["d"]["e"] = 0
    assert c2.load(TEXTS[0], _parse_yaml) == yaml.safe_load(TEXTS[0])


def test_a_damaged_or_foreign_cache_file_is_ignored(tmp_path):
    path = tmp_path / "yaml-cache.json"
    c = parsecache.yaml_texts(path)
    c.load(TEXTS[1], _parse_yaml)
    c.save()
    data = json.loads(path.read_text())
    digest = next(iter(data["parsed"]))
    data["parsed"][digest] = 12  # not JSON text
    path.write_text(json.dumps(data))
    assert parsecache.yaml_texts(path).load(TEXTS[1], _parse_yaml) == yaml.safe_load(TEXTS[1])
    data["version"] = "2 another pyyaml"
    data["parsed"][digest] = json.dumps({"lr": 5})
    path.write_text(json.dumps(data))
    assert parsecache.yaml_texts(path).load(TEXTS[1], _parse_yaml) == yaml.safe_load(TEXTS[1])
    path.write_text("{not json")
    assert parsecache.yaml_texts(path).load(TEXTS[1], _parse_yaml) == yaml.safe_load(TEXTS[1])


def test_a_kept_value_damaged_in_place_is_parsed_again_not_used(tmp_path):
    """A digit of a kept JSON text changed (bit rot, a hand edit): still JSON, another parameter value;
    its check no longer matches, so the YAML text is parsed again."""
    path = tmp_path / "yaml-cache.json"
    c = parsecache.yaml_texts(path)
    text = "train:\n  lr: 0.1\n"
    c.load(text, _parse_yaml)
    c.save()
    data = json.loads(path.read_text())
    (digest, (kept, check)), = data["parsed"].items()
    assert json.loads(kept) == {"train": {"lr": 0.1}}
    data["parsed"][digest] = [kept.replace("0.1", "0.7"), check]
    path.write_text(json.dumps(data))
    assert parsecache.yaml_texts(path).load(text, _parse_yaml) == {"train": {"lr": 0.1}}


def test_a_cached_run_does_not_import_yaml_and_an_edit_is_seen(project):
    pipeline(project)
    run = ("run", "experiment.py", "--params", "params/sweep.yaml")
    project.orch(*run)  # it made the cache directory after reading its parameters, and saved them then
    assert (project.root / ".orch" / "yaml-cache.json").exists()
    probe = ("import sys, runpy\nsys.argv = ['orch', *sys.argv[1:]]\n"
             "try:\n    runpy.run_module('orchestrator.cli', run_name='__main__')\n"
             "except SystemExit as e:\n    code = e.code\n"
             "print('yaml' in sys.modules, file=sys.stderr)\nsys.exit(code)\n")
    env = {**os.environ, "ORCH_COUNTS": str(project.counts_file)}
    p = subprocess.run([sys.executable, "-c", probe, *run], cwd=project.root, capture_output=True, text=True, env=env)
    assert p.returncode == 0 and p.stderr.strip().splitlines()[-1] == "False", p.stderr
    project.reset_counts()
    project.write("params/sweep.yaml", """
        extends: base.yaml
        sweep:
          train.lr: [0.1, 0.3]
    """)
    project.orch(*run)
    assert project.counts() == {"train": 1, "evaluate": 1}
