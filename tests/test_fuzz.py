"""The differential fuzzer (tests/fuzzer.py), a short run: random projects and random edits, after
every step the artifacts equal a from-scratch run's and exactly the predicted stages executed.
bench/fuzz.py runs the long one (figures in BENCHMARKS.md, "Reliability")."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from fuzzer import fuzz

SEEDS = int(os.environ.get("ORCH_FUZZ_SEEDS", "4"))


def test_random_projects_and_edits_never_give_a_wrong_hit_nor_a_needless_run(tmp_path):
    stats = fuzz(range(SEEDS), steps=6, workdir=tmp_path, max_stages=12)
    assert stats.sequences == SEEDS and stats.steps == SEEDS * 7
    assert stats.nodes > 10 * SEEDS
    assert not stats.findings, "\n".join(map(str, stats.findings))


def test_the_same_with_every_entry_served_from_the_entry_index(tmp_path, monkeypatch):
    """ORCH_INDEX_RACY_S=0: every entry older than the planning is indexed (store.entryindex), so
    from the second step on most lookups are answered by the index instead of the entry files."""
    monkeypatch.setenv("ORCH_INDEX_RACY_S", "0")
    indexes = []
    rmtree = shutil.rmtree

    def keeping_count(path, *args, **kwargs):  # the fuzzer removes each sequence's directory
        indexes.extend(Path(path).rglob("index/*.idx"))
        return rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", keeping_count)
    stats = fuzz(range(100, 100 + SEEDS), steps=6, workdir=tmp_path, max_stages=12)
    assert stats.sequences == SEEDS and stats.nodes > 10 * SEEDS
    assert not stats.findings, "\n".join(map(str, stats.findings))
    assert indexes, "no entry index was written: the index was not exercised"
