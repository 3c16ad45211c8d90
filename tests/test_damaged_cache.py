"""A damaged cache is a miss, never a crash or a wrong result (tests/damager.py): a sample of the
damage sweep through the real CLI, and the cases that once made orch fail. bench/damage.py runs every
case of the sweep (ORCH_DAMAGE_ALL=1 runs them here too)."""

from __future__ import annotations

import os
import re

import pytest
from damager import COMMANDS, Sweep, damages, kind_of

#: the damages every sampled file gets (the JSON ones only where the file holds JSON)
SAMPLED = ("empty", "half", "first bytes not utf-8", "nested arrays", "numbers past a float")
#: files nothing but a person reads back (the report) or whose content is never read (locks)
UNREAD = ("runs/report.html", "runs/alive.lock", "locks")
#: damages that once made a command fail, whatever the sample: (kind of file, damage)
ONCE_FAILED = {
    ("entries", "outputs={}"),  # the planner looked for a declared output the entry lacks (KeyError)
    ("entries", "created=100000.."),  # math.isfinite(10**400): OverflowError
    ("fingerprints.json", "nested arrays"),  # json's RecursionError escaped the cache file's reader
    ("yaml-cache.json", "nested objects"),
    ("runs/manifest.json", "run_id=[]"),  # `orch runs` formatted the header's fields as they were
    ("runs/manifest.json", "duration_s=100000.."),
    ("runs/manifest.json", "summary=\"x\""),
    ("object.jsonl", "first line: numbers past a float"),  # a stored metrics series: OverflowError in the report
    ("stat-cache.json", "strings as numbers"),  # the hash 7 was taken as the tracked file's, and recorded
}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return Sweep(tmp_path_factory.mktemp("damage"))


def _sample(sweep: Sweep) -> list[tuple[str, str, bytes]]:
    if os.environ.get("ORCH_DAMAGE_ALL"):
        return list(sweep.cases())
    first_of_kind: dict[str, str] = {}
    for rel in sweep.files:
        first_of_kind.setdefault(kind_of(rel), rel)
    chosen = []
    for rel, damage, data in sweep.cases():
        kind = kind_of(rel)
        if kind in UNREAD:
            continue
        if first_of_kind[kind] == rel and (damage in SAMPLED or (kind, damage) in ONCE_FAILED):
            chosen.append((rel, damage, data))
    return chosen


def test_the_sample_covers_every_kind_of_file_and_the_cases_that_once_failed(sweep):
    kinds = {kind_of(rel) for rel in sweep.files}
    assert {"entries", "refs", "index", "object.json", "object.pkl", "object-dir", "object.jsonl", "runs/manifest.json",
            "runs/metrics", "fingerprints.json", "yaml-cache.json", "toml-cache.json", "code-manifests.json",
            "stat-cache.json"} <= kinds
    sample = _sample(sweep)
    assert {kind_of(rel) for rel, _, _ in sample} == kinds - set(UNREAD)
    assert ONCE_FAILED <= {(kind_of(rel), damage) for rel, damage, _ in sample}


def test_every_damaged_file_is_a_miss_or_ignored_never_a_crash_nor_a_wrong_result(sweep):
    findings = []
    for rel, damage, data in _sample(sweep):
        # the commands that only read run records: with a damaged run record (the others are run for each case by bench/damage.py)
        commands = COMMANDS if kind_of(rel).startswith("runs/") else ()
        findings += sweep.check(rel, damage, data, commands)
    assert not findings, "\n".join(map(str, findings))


def test_an_entry_that_lacks_a_declared_output_is_a_miss_named_in_a_warning(sweep):
    rel = next(r for r in sweep.files if kind_of(r) == "entries")
    sweep.damage(rel, dict(damages((sweep.snapshot / rel).read_bytes()))["outputs={}"])
    rerun = sweep.orch("run", "experiment.py", "-p", "params/p.yaml")
    assert rerun.returncode == 0, rerun.stderr
    assert "it records the outputs [], the stage declares" in rerun.stderr
    assert rerun.stderr.count("it records the outputs") == 1  # one warning, however many lookups met it
    assert re.search(r"\b1 ran, 6 cached\b", rerun.stdout), rerun.stdout  # the node whose entry it was, alone
    assert sweep.get() == sweep.reference
