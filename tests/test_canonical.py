"""Canonical pickles (orchestrator.artifacts.canonical): equal values give equal bytes, whatever the
process's hash seed, and load back as exactly what was stored."""

from __future__ import annotations

import hashlib
import os
import pickle
import subprocess
import sys

from orchestrator.artifacts import canonical

VALUE = "{'words': {'the', 'quick', 'brown', 'fox'}, 'tags': [frozenset({'x', 'y', 'z'})], frozenset({'k', 'j'}): ({'m', 'n'},)}"


def test_equal_values_give_equal_bytes_in_every_process():
    code = f"import hashlib; from orchestrator.artifacts import canonical; print(hashlib.sha256(canonical.dumps({VALUE})).hexdigest())"
    digests = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout for seed in range(6)}
    plain = {subprocess.run([sys.executable, "-c", code.replace("canonical.dumps", "__import__('pickle').dumps")],
                            capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout for seed in range(6)}
    assert len(digests) == 1
    assert len(plain) > 1  # what plain pickle does: the reason this module exists


def test_loads_back_as_plain_sets_with_sharing_and_dict_order_kept():
    shared = [1, 2]
    value = {"b": {3, 1, 2}, "a": [shared, shared, frozenset({"q", "p"})], "c": ({"z"},)}
    back = pickle.loads(canonical.dumps(value))
    assert back == value and list(back) == ["b", "a", "c"]  # dict order is observable: kept
    assert type(back["b"]) is set and type(back["a"][2]) is frozenset
    assert back["a"][0] is back["a"][1]


def test_values_without_sets_pickle_exactly_as_before():
    value = {"x": [1.5, "a", (2, None)], "y": b"bytes"}
    assert canonical.dumps(value) == pickle.dumps(value, protocol=5)


def test_unsortable_sets_and_cycles_still_pickle():
    mixed = {1, "a", (2,)}
    assert pickle.loads(canonical.dumps(mixed)) == mixed
    cycle: list = []
    cycle.append(cycle)
    back = pickle.loads(canonical.dumps(cycle))
    assert back[0] is back
    assert hashlib.sha256(canonical.dumps({"s": {"b", "a"}})).hexdigest() == \
        hashlib.sha256(canonical.dumps({"s": {"a", "b"}})).hexdigest()
