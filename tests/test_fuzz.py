"""The differential fuzzer (tests/fuzzer.py), a short run: random projects and random edits, after
every step the artifacts equal a from-scratch run's and exactly the predicted stages executed.
bench/fuzz.py runs the long one (figures in BENCHMARKS.md, "Reliability")."""

from __future__ import annotations

import os

from fuzzer import fuzz

SEEDS = int(os.environ.get("ORCH_FUZZ_SEEDS", "4"))


def test_random_projects_and_edits_never_give_a_wrong_hit_nor_a_needless_run(tmp_path):
    stats = fuzz(range(SEEDS), steps=6, workdir=tmp_path, max_stages=12)
    assert stats.sequences == SEEDS and stats.steps == SEEDS * 7
    assert stats.nodes > 10 * SEEDS
    assert not stats.findings, "\n".join(map(str, stats.findings))
