"""set_key / split_set_key: how an aggregate's reads name a parameter set, and back."""

from __future__ import annotations

import itertools

import pytest

from orchestrator.params import set_key, split_set_key

NAMES = ["default", "sweep[train.lr=0.1]", "sweep[train.lr=0.1,model.width=64]", "a%b", "a%2Eb", "a%25.b", "%",
         "%%2E%25", ".", "..", "", "x%2", "x%2e", "π.σ", "set with spaces. and dots"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("rest", ["train.lr", "lr", "data.n.x", ""])
def test_split_set_key_inverts_set_key(name, rest):
    key = set_key(name)
    assert "." not in key  # one component of a dotted path
    assert split_set_key(f"{key}.{rest}") == (name, rest)


def test_split_set_key_of_a_bare_set_component():
    assert split_set_key(set_key("sweep[train.lr=0.1]")) == ("sweep[train.lr=0.1]", "")


def test_set_key_is_injective_on_awkward_names():
    """Names built from the escape alphabet itself never collide, so decoding is unambiguous."""
    names = {"".join(chars) for k in range(5) for chars in itertools.product("%2E5.", repeat=k)}
    keys = {set_key(n) for n in names}
    assert len(keys) == len(names)
    assert all(split_set_key(k + ".p") == (n, "p") for n, k in ((n, set_key(n)) for n in names))
