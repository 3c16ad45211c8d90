"""orchestrator.hashing: golden digests, encoding properties, files/dirs, the stat cache, code fingerprints.

GOLDEN DIGESTS: every digest pinned below is part of the cache keys stored on users' disks. If one
of them changes, every user's cache is invalidated (each stage re-runs once, 6-hour trainings
included): only change a golden value together with a deliberate version bump of the encoding
(VALUE_PREFIX "orch-value-v2", "dir-v1" -> "dir-v2", "fingerprint-v1" -> ...) and a changelog note.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import json
import logging
import os
import sys
import textwrap
from pathlib import Path

import pytest

from orchestrator.hashing import (
    Fingerprinter,
    StatCache,
    encode,
    hash_bytes,
    hash_dir,
    hash_file,
    hash_path,
    hash_value,
    statcache,
)

PAST_NS = 1_600_000_000 * 10**9  # an mtime far from "now": never racy for the stat cache

# ---------------------------------------------------------------------------------- golden digests

GOLDEN_VALUES = [
    (None, "6a59920e6c6482dee42d078e5967eaa303e271e8f97c341a1f601495d932d1d3"),
    (True, "283822661d69396bfb892bf2e3474ff2fb6e4c6856981f20d129c7817015c4b9"),
    (False, "0dd11f697f213f6765cca6eb97fbfca2131d1f685e51def3ba119102ad3a3c37"),
    (0, "f7fd9132f6c60a15fcaf0ee9de4e4b7f921e698b0aa5d2c2a848737290ac194f"),
    (1, "d51b9bc322134ce052352d6fec823ab653dec02ed059225fb6c53f37f304c492"),
    (-1, "ef7e44c88deab43a26c9aced5e8e442b119e094df6ecd6f92839aaf2196949df"),
    (2**100, "cd7749cf0dd8de3fa70018642a31abe849fb6c7fc5cd686ba10fa9755e2e2797"),
    (1.5, "7c33b077f914c13046a12ed254c302e00db3cef8ee3586a023693099bc620827"),
    (-0.0, "4c517b0099d7a82780317dcba3908f3ebcf10c93d36b9c7b7a7e9eacb55f7149"),
    (float("nan"), "a3631923589775dc7597b1c0917bf9c8c2d625ded848942ca2ac9d64421797d7"),
    (float("inf"), "e057bdc38cbe1720caa0d31765f34c4af4fea5547aa7107c35a91e3f50496e79"),
    ("", "f5ba454cd2fa4b95bc2dfa91cf69be462b779ae42d914f2e5fd00650fc983c4c"),
    ("héllo", "9bb6d7a53b65945dd32b7c8a11daeee59b627a7c36e0e3027f260f7aa23fa234"),
    (b"", "33f6e58d70564d11a5d352011e9e8adfbfe718af711656d632a9809a3bce3f35"),
    (b"\x00\xff", "b5ecf177633ada7d847a78ee9f78a05264ad416fa39e639bf35c375c8912369f"),
    ([], "89c4d735422021c9006f07ab0fa52d448b40efaaa05aa535e238c84f41cdebe6"),
    ((), "4c90a3d235d0e3e45cea4798668b1305997eba29e1a9fc562668b9b9e6dc53e5"),
    ({}, "322ab608aeaedffff97031bb042a37d43b5ea5823e66859e0683810c34ac0e10"),
    (frozenset(), "6e7e02f82ed2ad5b5784f48e46061fd0fa99ed20c568d734a1750c7815b37b3d"),
]

NESTED = {
    "train": {"lr": 0.001, "epochs": 10, "opt": ("adam", [0.9, 0.999]), "amp": True},
    "data": {"n": 1024, "seed": None, "tags": frozenset({"a", "b"}), "blob": b"\x00\xff"},
    3: [1, -2, 2**70, "é"],
}


@pytest.mark.parametrize("value,digest", GOLDEN_VALUES, ids=[repr(v) for v, _ in GOLDEN_VALUES])
def test_golden_scalars(value, digest):
    assert hash_value(value) == digest


def test_golden_nested_value_and_wire_format():
    assert hash_value(NESTED) == "deedd8282cecd8b8d9b119cd334a2a294be77417c6ada5a786600d46d01523fc"
    # The format itself: tag, 8-byte big-endian payload length, payload.
    assert encode((True, 1, "a")).hex() == (
        "74" "000000000000001e" "62" "0000000000000001" "01" "69" "0000000000000001" "01"
        "73" "0000000000000001" "61")


def test_golden_bytes_and_file(tmp_path):
    assert hash_bytes(b"orch") == "0c09a48c4a7aa11b92c01d3e5bb478d71f20323674adeec478e0205347caaf57"
    f = tmp_path / "f.txt"
    f.write_bytes(b"orch")
    assert hash_file(f) == hash_bytes(b"orch") == hashlib.sha256(b"orch").hexdigest()  # = `sha256sum f.txt`


def write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)  # explicit: independent of the umask


def make_tree(root: Path, reverse: bool = False) -> Path:
    """A small tree with every kind of entry hash_dir distinguishes."""
    steps = [
        lambda: write(root / "a.txt", b"alpha\n"),
        lambda: write(root / "sub" / "b.bin", b"\x00\x01"),
        lambda: write(root / "sub" / "run.sh", b"#!/bin/sh\n", 0o755),
        lambda: (root / "empty").mkdir(parents=True),
        lambda: os.symlink("a.txt", root / "link"),
    ]
    root.mkdir(parents=True, exist_ok=True)
    for step in reversed(steps) if reverse else steps:
        step()
    return root


def test_golden_dir(tmp_path):
    tree = make_tree(tmp_path / "t")
    assert hash_dir(tree) == "2e38208a2497daa7052094173fb4dbde1f76d93744bee38ef701f419f45b8dbf"
    assert hash_path(tree) == ("dir", hash_dir(tree), len("alpha\n") + 2 + len("#!/bin/sh\n"))


GOLDEN_MODULE = '''
"""A module whose fingerprints are pinned."""
import json

SCALE = 3


def helper(x):
    return x * SCALE


class Model:
    def forward(self, x):
        return helper(x) + 1


def main(record):
    return json.dumps(Model().forward(record))
'''

# ast.dump's output differs between Python versions (3.12 added type_params, 3.13 omits empty
# fields), so fingerprints are pinned per version: a Python upgrade re-runs stages once.
GOLDEN_FINGERPRINTS = {
    (3, 10): "bf000c17d73333fb06190ebb63f4965cd2dde5f8e9d47b9fb557181991584693",
    (3, 11): "bf000c17d73333fb06190ebb63f4965cd2dde5f8e9d47b9fb557181991584693",
    (3, 12): "9babf7843fb22811cb3cc0845b605e40f3020d1fa0ce2a3f436b25c6bacbe5b0",
    (3, 13): "d81d936d85e0b7966df90a6696e9b38a9786cf44e3a6ae5defd40f6d59234a98",
}


def _golden_module_fingerprint(tmp_path, monkeypatch) -> str:
    """The fingerprint of GOLDEN_MODULE's main, made afresh (no cache: its source is parsed)."""
    (tmp_path / "orch_golden_fp_mod.py").write_text(GOLDEN_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    try:
        mod = importlib.import_module("orch_golden_fp_mod")
        return Fingerprinter(tmp_path).fingerprint(mod.main)
    finally:
        sys.modules.pop("orch_golden_fp_mod", None)


def test_golden_fingerprint(tmp_path, monkeypatch):
    expected = GOLDEN_FINGERPRINTS.get(sys.version_info[:2])
    if expected is None:
        pytest.skip(f"no golden fingerprint pinned for Python {sys.version_info[:2]}")
    assert _golden_module_fingerprint(tmp_path, monkeypatch) == expected


def _sha256_implementations() -> dict:
    """hashing.sha's candidates: CPython's own sha256 module (whichever this Python has) and OpenSSL's."""
    found = {"openssl": hashlib.sha256}
    for module in ("_sha2", "_sha256"):
        try:
            found["builtin"] = importlib.import_module(module).sha256
            break
        except ImportError:
            continue
    return found


@pytest.mark.parametrize("which", sorted(_sha256_implementations()))
def test_golden_digests_hold_with_either_sha256(which, tmp_path, monkeypatch):
    """A process makes its small digests with CPython's sha256 until it switches to OpenSSL's
    (hashing.sha): every golden digest (values, keys' encoding, a code fingerprint with its per-file
    summaries, made afresh) is the same under both, as are the bytes of a buffer of any kind."""
    from orchestrator.hashing import sha

    new = _sha256_implementations()[which]
    monkeypatch.setattr(sha, "new", new)
    for value, digest in GOLDEN_VALUES:
        assert hash_value(value) == digest
    assert hash_value(NESTED) == "deedd8282cecd8b8d9b119cd334a2a294be77417c6ada5a786600d46d01523fc"
    expected = GOLDEN_FINGERPRINTS.get(sys.version_info[:2])
    if expected is not None:
        assert _golden_module_fingerprint(tmp_path, monkeypatch) == expected
    for data in (b"", b"abc", bytes(range(256)) * 1000, bytearray(b"xyz"), memoryview(b"0123456789")[2:7]):
        assert new(data).hexdigest() == hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------ value encoding


def test_distinct_values_never_collide():
    values = [None, True, False, 0, 1, -1, 1.0, 0.0, -0.0, "1", b"1", "", b"", [], (), {}, frozenset(),
              [1], (1,), {1}, {1: None}, {"1": None}, [[]], [()], ("ab", "c"), ("a", "bc"), ["a", "b"],
              ["ab"], [b"a", "a"], {"a": 1, "b": 2}, {"a": 2, "b": 1}, {"a": (1,)}, {"a": [1]},
              2**64, -(2**64), 255, -256, float("inf"), -float("inf"), float("nan"), "None", "True"]
    encodings = [encode(v) for v in values]
    assert len(set(encodings)) == len(values)
    assert len({hash_value(v) for v in values}) == len(values)


def test_bool_int_float_list_tuple_differ():
    assert len({hash_value(True), hash_value(1), hash_value(1.0)}) == 3
    assert hash_value([1, 2]) != hash_value((1, 2))
    assert hash_value(("ab", "c")) != hash_value(("a", "bc"))


def test_dict_and_set_order_independent():
    a = {"x": 1, "y": [1, 2], 3: "z", (1, "t"): None}
    b = dict(reversed(list(a.items())))
    assert list(a) != list(b) and hash_value(a) == hash_value(b)
    assert hash_value({3, 1, 2}) == hash_value({2, 3, 1}) == hash_value(frozenset({1, 2, 3}))


def test_floats_exact_and_nan_normalized():
    assert hash_value(0.1 + 0.2) != hash_value(0.3)
    assert hash_value(float("nan")) == hash_value(-float("nan")) == hash_value(float("inf") - float("inf"))


def test_subclasses_of_supported_types_encode_as_their_base():
    from collections import OrderedDict, namedtuple

    Point = namedtuple("Point", "x y")
    assert encode(Point(1, 2)) == encode((1, 2))
    assert encode(OrderedDict(b=1, a=2)) == encode({"a": 2, "b": 1})


def _spec_encoding(v) -> bytes:
    """The encoding as its docstring states it, one recursive rule per type and nothing inlined:
    the reference the optimized encoder (str items and keys framed in place) must match byte for byte."""
    import struct

    def frame(tag: bytes, payload: bytes) -> bytes:
        return tag + struct.pack(">Q", len(payload)) + payload

    if v is None:
        return frame(b"N", b"")
    if isinstance(v, bool):
        return frame(b"b", b"\x01" if v else b"\x00")
    if isinstance(v, int):
        return frame(b"i", int(v).to_bytes((v.bit_length() + 8) // 8, "big", signed=True))
    if isinstance(v, float):
        return frame(b"f", b"nan" if v != v else float(v).hex().encode())
    if isinstance(v, str):
        return frame(b"s", v.encode("utf-8", "surrogatepass"))
    if isinstance(v, (bytes, bytearray)):
        return frame(b"y", bytes(v))
    if isinstance(v, (list, tuple)):
        return frame(b"l" if isinstance(v, list) else b"t", b"".join(_spec_encoding(x) for x in v))
    if isinstance(v, dict):
        items = sorted((_spec_encoding(k), _spec_encoding(x)) for k, x in v.items())
        return frame(b"d", b"".join(k + x for k, x in items))
    return frame(b"e", b"".join(sorted(_spec_encoding(x) for x in v)))


def _hashable(x) -> bool:
    try:
        hash(x)
    except TypeError:
        return False
    return True


def test_encoding_matches_the_spec_on_random_nested_values():
    import random
    from collections import OrderedDict, namedtuple

    Pair = namedtuple("Pair", "a b")

    class Name(str):
        pass

    rng = random.Random(14)
    scalars = [None, True, False, 0, -1, 2**70, 1.5, float("nan"), "", "a", "é\u00a0x", "\ud800", Name("n"),
               b"\x00b", bytearray(b"z")]

    def value(depth: int):
        kind = rng.randrange(8 if depth < 4 else 1)
        if kind == 0:
            return rng.choice(scalars)
        items = [value(depth + 1) for _ in range(rng.randrange(5))]
        if kind in (1, 2):
            return items if kind == 1 else tuple(items)
        if kind == 3:
            return Pair(rng.choice(scalars), items)
        if kind in (4, 5):  # str keys (the inlined case), others mixed in
            keys = [rng.choice(["k", "é", "\ud800", Name("k2"), 3, (1, "t"), None]) for _ in items]
            d = dict(zip(keys, items))
            return d if kind == 4 else OrderedDict(reversed(list(d.items())))
        if kind == 6:
            return frozenset(x for x in items if _hashable(x))
        return [rng.choice(scalars) for _ in range(rng.randrange(6))]  # flat: str / None items in place

    for _ in range(3000):
        v = value(0)
        assert encode(v) == _spec_encoding(v), repr(v)


def test_unsupported_type_names_type_and_location():
    with pytest.raises(TypeError, match=r"type object at \['train'\]\['opt'\]"):
        hash_value({"train": {"opt": object()}})
    with pytest.raises(TypeError, match=r"complex at \[0\]\[1\]"):
        encode([(1, 2j)])
    with pytest.raises(TypeError, match="at the top level"):
        encode(Path("x"))


def test_depth_guard():
    deep: list = []
    for _ in range(300):
        deep = [deep]
    with pytest.raises(TypeError, match="too deeply nested"):
        encode(deep)
    cyclic: list = []
    cyclic.append(cyclic)
    with pytest.raises(TypeError, match="too deeply nested"):
        encode(cyclic)


# ------------------------------------------------------------------------------- files and dirs


def test_hash_file_streams_large_files(tmp_path):
    data = os.urandom(3 * (1 << 20) + 17)  # several buffers plus a partial one
    f = tmp_path / "big"
    f.write_bytes(data)
    assert hash_file(f) == hashlib.sha256(data).hexdigest()
    assert hash_path(f) == ("file", hashlib.sha256(data).hexdigest(), len(data))


def test_hash_path_missing(tmp_path):
    with pytest.raises(FileNotFoundError):
        hash_path(tmp_path / "nope")


def test_hash_dir_ignores_mtimes_order_and_location(tmp_path):
    a = make_tree(tmp_path / "a")
    b = make_tree(tmp_path / "elsewhere" / "b", reverse=True)
    for p in b.rglob("*"):
        if not p.is_symlink():
            os.utime(p, ns=(PAST_NS, PAST_NS))
    assert hash_dir(a) == hash_dir(b)


@pytest.mark.parametrize("change", ["rename", "content", "exec_bit", "new_empty_dir", "link_target", "rmdir"])
def test_hash_dir_sees_every_change(tmp_path, change):
    tree = make_tree(tmp_path / "t")
    before = hash_dir(tree)
    if change == "rename":
        os.rename(tree / "sub" / "b.bin", tree / "sub" / "c.bin")
    elif change == "content":
        (tree / "sub" / "b.bin").write_bytes(b"\x00\x02")
    elif change == "exec_bit":
        os.chmod(tree / "a.txt", 0o755)
    elif change == "new_empty_dir":
        (tree / "sub" / "new_empty").mkdir()
    elif change == "link_target":
        os.unlink(tree / "link")
        os.symlink("sub/b.bin", tree / "link")
    elif change == "rmdir":
        (tree / "empty").rmdir()
    assert hash_dir(tree) != before


def test_hash_dir_does_not_follow_links(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "big").write_bytes(b"x" * 1000)
    tree = make_tree(tmp_path / "t")
    os.symlink(outside / "big", tree / "to_file")
    os.symlink(outside, tree / "to_dir")
    kind, before, size = hash_path(tree)
    assert size == len("alpha\n") + 2 + len("#!/bin/sh\n")  # nothing behind the links counted
    (outside / "big").write_bytes(b"y" * 1000)
    (outside / "new").write_text("n")
    assert hash_dir(tree) == before


# ----------------------------------------------------------------------------------- stat cache


def write_old(path: Path, data: bytes) -> os.stat_result:
    path.write_bytes(data)
    os.utime(path, ns=(PAST_NS, PAST_NS))
    return path.stat()


def test_stat_cache_avoids_rehashing_and_sees_real_changes(tmp_path):
    f = tmp_path / "data.bin"
    write_old(f, b"original")
    cache = StatCache(tmp_path / "stat.json")
    assert hash_file(f, cache) == hash_bytes(b"original")
    ino = f.stat().st_ino
    with open(f, "r+b") as fh:  # same size, same inode; then restore the mtime: a "stat-identical" file
        fh.write(b"ORIGINAL")
    os.utime(f, ns=(PAST_NS, PAST_NS))
    assert f.stat().st_ino == ino
    assert hash_file(f, cache) == hash_bytes(b"original")  # served from the cache, not re-read
    assert hash_file(f) == hash_bytes(b"ORIGINAL")
    os.utime(f, ns=(PAST_NS, PAST_NS + 1))  # a real change of mtime re-hashes
    assert hash_file(f, cache) == hash_bytes(b"ORIGINAL")


def test_stat_cache_never_reads_unchanged_files(tmp_path, monkeypatch):
    tree = tmp_path / "t"
    tree.mkdir()
    for i in range(5):
        write_old(tree / f"f{i}", b"x" * i)
    cache = StatCache(tmp_path / "stat.json")
    first = hash_path(tree, cache)
    cache.save()
    monkeypatch.setattr("builtins.open", lambda *a, **k: pytest.fail(f"re-read {a[0]}"))
    fresh = StatCache(tmp_path / "stat.json")  # also: survives a save/load round trip
    assert hash_path(tree, fresh) == first


def test_stat_cache_skips_racy_files(tmp_path, monkeypatch):
    """A file hashed right after it was written could change again within the same mtime tick."""
    monkeypatch.setattr(statcache, "RACY_NS", 10**9 * 3600)  # "right after", however slow the machine
    f = tmp_path / "fresh"
    f.write_bytes(b"new")
    cache = StatCache()
    hash_file(f, cache)
    assert cache.get(f) is None


def test_stat_cache_corrupt_file_is_ignored(tmp_path, caplog):
    path = tmp_path / "stat.json"
    f = tmp_path / "data"
    st = write_old(f, b"abc")
    for garbage in ["{not json", "[1, 2]", '{"version": 1, "entries": 3}', "\x00\xff"]:
        path.write_text(garbage)
        cache = StatCache(path)
        with caplog.at_level(logging.WARNING, logger="orchestrator.hashing"):
            assert cache.get(f) is None
        assert "unreadable cache file" in caplog.text
        caplog.clear()
        cache.put(f, st, "d" * 64)
        cache.save()  # replaces the corrupt file
        assert StatCache(path).get(f) == "d" * 64


def test_stat_cache_concurrent_savers_merge_and_leave_no_temp_files(tmp_path):
    path = tmp_path / "cache" / "stat.json"
    a, b = StatCache(path), StatCache(path)
    fa, fb = tmp_path / "fa", tmp_path / "fb"
    sta, stb = write_old(fa, b"a"), write_old(fb, b"b")
    a.get(fa), b.get(fb)  # both loaded (empty) before either saves
    a.put(fa, sta, hash_bytes(b"a"))
    b.put(fb, stb, hash_bytes(b"b"))
    a.save()
    b.save()
    merged = StatCache(path)
    assert merged.get(fa) == hash_bytes(b"a") and merged.get(fb) == hash_bytes(b"b")
    assert os.listdir(path.parent) == ["stat.json"]


def test_stat_cache_without_path_and_unwritable_dir(tmp_path, caplog):
    f = tmp_path / "data"
    st = write_old(f, b"abc")
    StatCache().save()  # in-memory only: nothing to do
    blocker = tmp_path / "file_not_dir"
    blocker.write_text("")
    cache = StatCache(blocker / "stat.json")
    cache.put(f, st, "e" * 64)
    with caplog.at_level(logging.WARNING, logger="orchestrator.hashing"):
        cache.save()  # an unwritable location only costs re-hashing later
    assert "could not save" in caplog.text
    assert cache.get(f) == "e" * 64


# ----------------------------------------------------------------------------------- fingerprints

TOP_LEVEL = ("stages", "fakeorch", "extpkg", "loose")


class Proj:
    """A throwaway project under tmp_path: write modules, (re-)import them, fingerprint."""

    def __init__(self, root: Path):
        self.root = root
        self.clock = PAST_NS

    def write(self, rel: str, src: str) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(src).lstrip("\n"))
        self.clock += 2 * 10**9  # a distinct mtime per edit, whatever the clock granularity
        os.utime(path, ns=(self.clock, self.clock))
        return path

    def edit(self, rel: str, old: str, new: str) -> None:
        text = (self.root / rel).read_text()
        assert old in text, old
        self.write(rel, text.replace(old, new))

    def load(self, name: str):
        """Import name afresh (all project modules purged), as a new `orch run` would."""
        for mod in [m for m in sys.modules if m.split(".")[0] in TOP_LEVEL]:
            del sys.modules[mod]
        importlib.invalidate_caches()
        return importlib.import_module(name)

    def fp(self, qualname: str, exclude=("fakeorch",)) -> str:
        """Fingerprint module:attr with a new Fingerprinter, after a fresh import."""
        module, _, attr = qualname.partition(":")
        obj = self.load(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return Fingerprinter(self.root, exclude=[self.root / e for e in exclude]).fingerprint(obj)


FAKE_ORCH = '''
class Stage:
    def __init__(self, fn, kwargs):
        self.__wrapped__, self.kwargs = fn, kwargs

    def __call__(self, *a, **k):
        return self.__wrapped__(*a, **k)


def stage(**kwargs):
    return lambda fn: Stage(fn, kwargs)


def aggregate(fn):
    return Stage(fn, {})


def orch_helper(x):
    return x
'''


@pytest.fixture
def proj(tmp_path, monkeypatch):
    for mod in [m for m in sys.modules if m.split(".")[0] in TOP_LEVEL]:
        monkeypatch.delitem(sys.modules, mod)  # e.g. the bundled example's own `stages`
    monkeypatch.syspath_prepend(str(tmp_path / "proj"))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # .pyc caches key on whole seconds
    p = Proj(tmp_path / "proj")
    p.write("stages/__init__.py", "")
    p.write("fakeorch/__init__.py", FAKE_ORCH)
    yield p
    for mod in [m for m in sys.modules if m.split(".")[0] in TOP_LEVEL]:
        del sys.modules[mod]


STAGE_A = '''
import json
from fakeorch import stage
from stages import util


@stage(outputs=["data"])
def make(record):
    """Make the data."""
    n = record * 2  # double it
    return util.helper(n)
'''

UTIL = '''
THRESHOLD = 0.5


def helper(x):
    return x + 1


def other(x):
    return x - 1
'''


def test_formatting_comments_docstrings_do_not_matter_code_does(proj):
    proj.write("stages/util.py", UTIL)
    proj.write("stages/a.py", STAGE_A)
    base = proj.fp("stages.a:make")
    reformatted = "\n    # doubled\n    n = (record *\n         2)\n"
    proj.edit("stages/a.py", "    n = record * 2  # double it", reformatted)
    proj.edit("stages/a.py", '"""Make the data."""', '"""Make the data, now documented at length."""')
    assert proj.fp("stages.a:make") == base
    proj.edit("stages/a.py", "2)", "3)")
    assert proj.fp("stages.a:make") != base


@pytest.mark.parametrize("style", ["module_attr", "from_import", "import_as", "relative", "dotted"])
def test_helper_edit_in_another_module_invalidates(proj, style):
    use = {
        "module_attr": ("from stages import util", "util.helper(x)"),
        "from_import": ("from stages.util import helper", "helper(x)"),
        "import_as": ("import stages.util as u", "u.helper(x)"),
        "relative": ("from .util import helper", "helper(x)"),
        "dotted": ("import stages.util", "stages.util.helper(x)"),
    }[style]
    proj.write("stages/util.py", UTIL)
    proj.write("stages/a.py", f"{use[0]}\n\ndef make(x):\n    return {use[1]}\n")
    base = proj.fp("stages.a:make")
    proj.edit("stages/util.py", "def other(x):\n    return x - 1", "def other(x):\n    return x - 2")
    assert proj.fp("stages.a:make") == base  # unrelated helper: no effect
    proj.edit("stages/util.py", "return x + 1", "return x + 2")
    assert proj.fp("stages.a:make") != base


def test_module_level_names_count_by_source_and_value(proj, monkeypatch):
    proj.write("stages/util.py", UTIL)
    proj.write("stages/config.py", 'import os\nSEED = int(os.environ.get("ORCH_TEST_SEED", "1"))\nLR = 0.1\n')
    proj.write("stages/a.py", """
        from stages import util
        from .config import SEED, LR as RATE
        from .util import helper
        LOCAL = (1, "two", {"three": 3.0})
        BIG = list(range(100_000))

        def make(x):
            return x > util.THRESHOLD and LOCAL and len(BIG) and SEED * RATE
    """)
    seen = {proj.fp("stages.a:make")}
    for rel, old, new in [("stages/util.py", "THRESHOLD = 0.5", "THRESHOLD = 0.6"),
                          ("stages/a.py", '"three": 3.0', '"three": 3.5'),
                          ("stages/a.py", "range(100_000)", "range(100_001)"),  # large: by its source
                          ("stages/config.py", "LR = 0.1", "LR = 0.2"),  # behind `from .config import`
                          ("stages/a.py", "LR as RATE", "LR as RATE  # a comment")]:
        proj.edit(rel, old, new)
        seen.add(proj.fp("stages.a:make"))
    assert len(seen) == 5  # the first state and every edit but the comment
    monkeypatch.setenv("ORCH_TEST_SEED", "2")  # same source, another value: counts too
    assert proj.fp("stages.a:make") not in seen


def test_mutable_module_state_does_not_drift(proj):
    """An accumulator mutated while stages run must not change the fingerprint (needless re-runs)."""
    proj.write("stages/a.py", """
        CALLS: list[str] = []
        MEMO = {}
        from stages.models import Net
        MODEL = Net(3)

        def make(x):
            CALLS.append("make")
            MEMO[x] = x
            return MODEL.forward(x)
    """)
    proj.write("stages/models.py", "class Net:\n    def __init__(self, k):\n        self.k = k\n\n"
                                   "    def forward(self, x):\n        return x * self.k\n")
    mod = proj.load("stages.a")
    before = Fingerprinter(proj.root).fingerprint(mod.make)
    mod.make(1), mod.make(2)
    assert Fingerprinter(proj.root).fingerprint(mod.make) == before
    proj.edit("stages/a.py", "MODEL = Net(3)", "MODEL = Net(4)")  # instances count by their statement
    assert proj.fp("stages.a:make") != before
    after = proj.fp("stages.a:make")
    proj.edit("stages/models.py", "x * self.k", "x * self.k + 1")  # ... and their class
    assert proj.fp("stages.a:make") != after


def test_closure_values_count(proj):
    proj.write("stages/a.py", '''
        def factory(k):
            def inner(x):
                return x * k
            return inner

        two, three = factory(2), factory(3)
    ''')
    proj.load("stages.a")
    m = sys.modules["stages.a"]
    fp = Fingerprinter(proj.root)
    assert fp.fingerprint(m.two) != fp.fingerprint(m.three)


def test_installed_packages_and_stdlib_are_not_followed(proj, monkeypatch):
    proj.write("stages/a.py", '''
        import json
        import extpkg

        def make(x):
            return json.dumps(extpkg.ext(x))
    ''')
    site = proj.root / ".venv" / "lib" / "python3.11" / "site-packages"  # a venv inside the project
    monkeypatch.syspath_prepend(str(site))
    proj.write(".venv/lib/python3.11/site-packages/extpkg/__init__.py", "def ext(x):\n    return x\n")
    base = proj.fp("stages.a:make")
    proj.write(".venv/lib/python3.11/site-packages/extpkg/__init__.py", "def ext(x):\n    return -x\n")
    monkeypatch.setattr(json, "dumps", json.loads)  # if json.dumps were followed, this would show
    assert proj.fp("stages.a:make") == base
    fp = Fingerprinter(proj.root)
    assert not fp.is_project_file(json.__file__) and not fp.is_project_file(str(site / "extpkg/__init__.py"))
    assert fp.is_project_file(str(proj.root / "stages" / "a.py"))


def test_excluded_dirs_are_not_followed(proj):
    proj.write("stages/a.py", '''
        from fakeorch import orch_helper

        def make(x):
            return orch_helper(x)
    ''')
    base, base_inc = proj.fp("stages.a:make"), proj.fp("stages.a:make", exclude=())
    proj.edit("fakeorch/__init__.py", "return x", "return x + 1")
    assert proj.fp("stages.a:make") == base
    assert proj.fp("stages.a:make", exclude=()) != base_inc


def test_mutual_recursion_terminates_and_is_followed(proj):
    proj.write("stages/a.py", '''
        def even(n):
            return n == 0 or odd(n - 1)

        def odd(n):
            return n != 0 and even(n - 1)

        def make(n):
            return even(n)
    ''')
    base = proj.fp("stages.a:make")
    proj.edit("stages/a.py", "n != 0", "n > 0")
    assert proj.fp("stages.a:make") != base


def test_classes_methods_and_bases(proj):
    proj.write("stages/models.py", '''
        class Base:
            def act(self, x):
                return x

        class Net(Base):
            """A net."""
            def forward(self, x):
                return self.act(x) * 2
    ''')
    proj.write("stages/a.py", '''
        from stages.models import Net

        def make(x):
            return Net().forward(x)
    ''')
    base, net = proj.fp("stages.a:make"), proj.fp("stages.models:Net")
    proj.edit("stages/models.py", '"""A net."""', '"""A better documented net."""')
    assert (proj.fp("stages.a:make"), proj.fp("stages.models:Net")) == (base, net)
    proj.edit("stages/models.py", "* 2", "* 3")
    edited_method = proj.fp("stages.a:make")
    proj.edit("stages/models.py", "return x\n", "return -x\n")
    edited_base = proj.fp("stages.a:make")
    assert len({base, edited_method, edited_base}) == 3


def test_nested_classes_and_methods_are_located(proj):
    proj.write("stages/a.py", '''
        class Outer:
            class Inner:
                K = 1

                def method(self):
                    return self.K

        def make():
            return Outer.Inner().method()
    ''')
    inner, method = proj.fp("stages.a:Outer.Inner"), proj.fp("stages.a:Outer.Inner.method")
    proj.edit("stages/a.py", "K = 1", "K = 2")
    assert proj.fp("stages.a:Outer.Inner") != inner
    assert proj.fp("stages.a:Outer.Inner.method") == method  # the method's own code did not change


def test_stage_decorator_is_dropped_other_decorators_count(proj):
    proj.write("stages/a.py", '''
        import functools
        import fakeorch
        from fakeorch import stage

        @stage(outputs=["x"])
        @functools.lru_cache(maxsize=2)
        def make(x):
            return x

        @fakeorch.aggregate
        def summary(records):
            return len(records)
    ''')
    base = proj.fp("stages.a:make")
    proj.edit("stages/a.py", '@stage(outputs=["x"])', '@stage(outputs=["y"], version=2)')
    assert proj.fp("stages.a:make") == base
    proj.edit("stages/a.py", "maxsize=2", "maxsize=3")
    assert proj.fp("stages.a:make") != base
    summary = proj.fp("stages.a:summary")
    proj.edit("stages/a.py", "@fakeorch.aggregate\n", "")
    assert proj.fp("stages.a:summary") == summary


def test_user_decorators_are_followed(proj):
    proj.write("stages/util.py", '''
        import functools

        def timed(fn):
            @functools.wraps(fn)
            def wrapper(*a):
                return fn(*a)
            return wrapper

        @timed
        def helper(x):
            return x + 1
    ''')
    proj.write("stages/a.py", "from stages.util import helper\n\ndef make(x):\n    return helper(x)\n")
    base = proj.fp("stages.a:make")
    proj.edit("stages/util.py", "return x + 1", "return x + 2")  # behind the wrapper
    wrapped_edit = proj.fp("stages.a:make")
    proj.edit("stages/util.py", "return fn(*a)", "return fn(*a) or 0")  # the wrapper itself
    assert len({base, wrapped_edit, proj.fp("stages.a:make")}) == 3


def test_source_less_code_falls_back_to_code_objects(proj):
    proj.write("stages/util.py", UTIL)
    proj.load("stages.util")
    fp = Fingerprinter(proj.root)
    ns: dict = {"__name__": "loose", "util": sys.modules["stages.util"]}
    exec("def f(x):\n    return util.helper(x) + 1\ng = lambda x: x * 2\n", ns)
    ns2: dict = {"__name__": "loose", "util": sys.modules["stages.util"]}
    exec("def f(x):\n    return util.helper(x) + 2\ng = lambda x: x * 2\n", ns2)
    assert fp.fingerprint(ns["f"]) != fp.fingerprint(ns2["f"])
    assert fp.fingerprint(ns["g"]) == fp.fingerprint(ns2["g"])  # same code, no source: equal
    before = fp.fingerprint(ns["f"])
    proj.edit("stages/util.py", "return x + 1", "return x + 5")  # co_names are still followed
    proj.load("stages.util")
    ns["util"] = sys.modules["stages.util"]
    assert Fingerprinter(proj.root).fingerprint(ns["f"]) != before


def test_not_a_function_or_class(proj):
    import functools

    fp = Fingerprinter(proj.root)
    for bad in [42, functools.partial(print), len, "make"]:
        with pytest.raises(TypeError, match="not a function or a class"):
            fp.fingerprint(bad)


def test_200_stages_parse_each_file_once(proj, monkeypatch):
    body = ["from stages.util import helper, other\nfrom fakeorch import stage\n"]
    for i in range(200):
        body.append(f'@stage(outputs=["o{i}"])\ndef s{i}(record):\n    """Stage {i}."""\n'
                    f"    x = helper(record) + {i}\n    return other(x) if x > {i} else x\n")
    proj.write("stages/util.py", UTIL)
    proj.write("stages/many.py", "\n\n".join(body))
    mod = proj.load("stages.many")
    parses = spy_on_parse(monkeypatch)
    fp = Fingerprinter(proj.root, exclude=[proj.root / "fakeorch"])
    digests = {fp.fingerprint(getattr(mod, f"s{i}")) for i in range(200)}
    assert len(digests) == 200
    assert sorted(parses) == [str(proj.root / "stages" / "many.py"), str(proj.root / "stages" / "util.py")]
    assert {fp.fingerprint(getattr(mod, f"s{i}")) for i in range(200)} == digests
    assert len(parses) == 2  # memoized: each file parsed once (speed is measured in bench/, not here)


def spy_on_parse(monkeypatch) -> list[str]:
    """Record the file names hashing parses (a pass-through: tracebacks use ast.parse too)."""
    parses, real_parse = [], ast.parse
    monkeypatch.setattr(ast, "parse", lambda src, filename="<unknown>", *a, **k:
                        parses.append(filename) or real_parse(src, filename, *a, **k))
    return parses


def test_persistent_cache_parses_nothing_for_unchanged_code(proj, monkeypatch):
    monkeypatch.setattr(statcache, "RACY_NS", 0)  # files written just now may be persisted
    proj.write("stages/util.py", UTIL)
    proj.write("stages/a.py", STAGE_A)
    cache = proj.root / ".orch" / "fingerprints.json"
    mod = proj.load("stages.a")
    first = Fingerprinter(proj.root, exclude=[proj.root / "fakeorch"], cache_path=cache)
    base = first.fingerprint(mod.make)
    first.save()
    parses = spy_on_parse(monkeypatch)
    again = Fingerprinter(proj.root, exclude=[proj.root / "fakeorch"], cache_path=cache)
    assert again.fingerprint(mod.make) == base
    assert parses == []
    proj.edit("stages/util.py", "return x + 1", "return x + 2")  # a new stamp: parsed again
    mod = proj.load("stages.a")
    edited = Fingerprinter(proj.root, exclude=[proj.root / "fakeorch"], cache_path=cache)
    assert edited.fingerprint(mod.make) != base


def test_persistent_cache_corrupt_or_racy(proj, caplog, monkeypatch):
    monkeypatch.setattr(statcache, "RACY_NS", 0)
    proj.write("stages/util.py", UTIL)
    cache = proj.root / "fp.json"
    cache.write_text('{"version": "garbage"')
    mod = proj.load("stages.util")
    with caplog.at_level(logging.WARNING, logger="orchestrator.hashing"):
        fp = Fingerprinter(proj.root, cache_path=cache)
        base = fp.fingerprint(mod.helper)
    assert "unreadable cache file" in caplog.text
    fp.save()
    assert json.loads(cache.read_text())["files"]  # replaced by a valid cache
    (proj.root / "stages" / "fresh.py").write_text("def f():\n    return 1\n")
    monkeypatch.setattr(statcache, "RACY_NS", 10**9 * 3600)  # fresh.py: "just written"
    fresh = Fingerprinter(proj.root, cache_path=cache)
    fresh.fingerprint(proj.load("stages.fresh").f)
    fresh.save()
    assert str(proj.root / "stages" / "fresh.py") not in json.loads(cache.read_text())["files"]
    monkeypatch.setattr(statcache, "RACY_NS", 0)
    assert Fingerprinter(proj.root, cache_path=cache).fingerprint(proj.load("stages.util").helper) == base


def test_source_edited_during_the_run_fingerprints_the_imported_code(proj, caplog):
    """A stage edited after import must not get the new source's key for the old code's results."""
    proj.write("stages/util.py", UTIL)
    mod = proj.load("stages.util")
    fp = Fingerprinter(proj.root)
    proj.edit("stages/util.py", "return x + 1", "return x + 2")  # after import, before fingerprinting
    with caplog.at_level(logging.WARNING, logger="orchestrator.hashing"):
        during = fp.fingerprint(mod.helper)
    assert "changed during this run" in caplog.text
    assert during != Fingerprinter(proj.root).fingerprint(proj.load("stages.util").helper)


def test_file_stamped_once_per_run_and_an_edit_before_its_parse_is_not_recorded(proj, monkeypatch, caplog):
    """A file is stat'ed once per Fingerprinter (a file of 200 stages is one stat). A definition the
    persistent cache does not hold yet is parsed later; if the file changed since its stamp, the
    new source's digest is neither used for the imported code nor recorded under the old stamp."""
    monkeypatch.setattr(statcache, "RACY_NS", 0)
    proj.write("stages/two.py", "def a(x):\n    return x + 1\n\n\ndef b(x):\n    return x + 2\n")
    cache = proj.root / "fp.json"
    first = Fingerprinter(proj.root, cache_path=cache)
    first.fingerprint(proj.load("stages.two").a)
    first.save()  # the cache holds two.py's stamp with `a` only
    mod = proj.load("stages.two")
    fp = Fingerprinter(proj.root, cache_path=cache)
    two, stats, real_stat = str(proj.root / "stages" / "two.py"), [], os.stat
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: stats.append(str(p)) or real_stat(p, *a, **k))
    fp.fingerprint(mod.a)  # stamps two.py; `a` comes from the cache, nothing is parsed
    proj.edit("stages/two.py", "return x + 2", "return x + 3")  # same size, before `b` is parsed
    with caplog.at_level(logging.WARNING, logger="orchestrator.hashing"):
        during = fp.fingerprint(mod.b)
    assert "changed during this run" in caplog.text
    assert stats.count(two) == 1
    monkeypatch.setattr(os, "stat", real_stat)
    edited = Fingerprinter(proj.root).fingerprint(proj.load("stages.two").b)
    assert during != edited  # the imported code (x + 2) is not keyed as the edited source (x + 3)
    fp.save()
    saved = json.loads(cache.read_text())["files"].get(two)
    assert saved is None or not any(k.startswith("f:b:") for k in saved["defs"])


def test_an_edit_right_after_the_parse_checked_its_file_is_not_in_the_digest(proj, monkeypatch):
    """The parse checks the file's stamp after reading it: an in-place save landing between the check
    and the read would otherwise give the new source's digest to the old, imported code."""
    monkeypatch.setattr(statcache, "RACY_NS", 0)
    proj.write("stages/two.py", "def a(x):\n    return x + 1\n\n\ndef b(x):\n    return x + 2\n")
    cache = proj.root / "fp.json"
    first = Fingerprinter(proj.root, cache_path=cache)
    first.fingerprint(proj.load("stages.two").a)
    first.save()
    mod = proj.load("stages.two")
    imported = Fingerprinter(proj.root).fingerprint(mod.b)  # parses the file as imported
    fp = Fingerprinter(proj.root, cache_path=cache)
    fp.fingerprint(mod.a)  # stamps two.py; `b` is parsed below
    two, real_fstat = proj.root / "stages" / "two.py", os.fstat

    def fstat_then_save(fd):
        st = real_fstat(fd)
        with open(two, "r+b") as f:  # an editor saving in place, same size
            text = f.read()
            f.seek(0)
            f.write(text.replace(b"x + 2", b"x + 3"))
        return st

    monkeypatch.setattr(os, "fstat", fstat_then_save)
    during = fp.fingerprint(mod.b)
    monkeypatch.setattr(os, "fstat", real_fstat)
    assert during == imported


def test_parameters_and_locals_are_not_references_to_module_names(proj):
    """`def evaluate(record, model)` next to a stage `model`: the parameter is not the stage."""
    proj.write("stages/a.py", """
        def model(x):
            return x

        def data(x):
            return x

        def evaluate(record, model):
            data = model + 1
            return [data for model in range(3)]

        def uses(record):
            return model(1)

        def shadow_in_inner(record):
            def inner(model):
                return model
            return inner(1) + model(2)
    """)
    before = {f: proj.fp(f"stages.a:{f}") for f in ("evaluate", "uses", "shadow_in_inner")}
    proj.edit("stages/a.py", "def model(x):\n    return x", "def model(x):\n    return x * 2")
    after = {f: proj.fp(f"stages.a:{f}") for f in ("evaluate", "uses", "shadow_in_inner")}
    assert after["evaluate"] == before["evaluate"]  # its `model` and `data` are its own
    assert after["uses"] != before["uses"]
    assert after["shadow_in_inner"] != before["shadow_in_inner"]  # local in inner, global in the outer body


def test_module_data_too_large_to_key_by_value_warns_once_and_points_to_track(proj, caplog):
    proj.write("stages/a.py", """
        from pathlib import Path

        WORDS = ["w%06d" % i for i in range(20000)]   # ~200 KB encoded: past MAX_CONST_BYTES

        def make(x):
            return len(WORDS) + x

        def other(x):
            return WORDS[x]
    """)
    import logging

    mod = proj.load("stages.a")
    fp = Fingerprinter(proj.root)  # one per run
    with caplog.at_level(logging.WARNING, logger="orchestrator.hashing.fingerprints"):
        first = fp.fingerprint(mod.make)
        fp.fingerprint(mod.other)
    warned = [r.getMessage() for r in caplog.records if "WORDS" in r.getMessage()]
    assert len(warned) == 1 and "record.track(path)" in warned[0] and "stages/a.py" in warned[0]
    proj.edit("stages/a.py", "range(20000)", "range(20001)")  # the source still counts
    assert proj.fp("stages.a:make") != first


def test_module_data_is_keyed_by_value_as_imported(proj, monkeypatch):
    proj.write("stages/data.txt", "cat dog\n")
    proj.write("stages/a.py", """
        from pathlib import Path

        CLASSES = Path(__file__).with_name("data.txt").read_text().split()

        def make(x):
            return len(CLASSES) + x
    """)
    mod = proj.load("stages.a")
    before = Fingerprinter(proj.root).fingerprint(mod.make)
    mod.CLASSES.append("bird")  # a stage filling it in this process: as imported, not a change
    assert Fingerprinter(proj.root).fingerprint(mod.make) == before
    (proj.root / "stages/data.txt").write_text("cat dog bird\n")
    assert proj.fp("stages.a:make") != before  # a new import reads the new file: keyed by value


def test_the_walker_gives_ast_walks_nodes_in_its_order_and_their_parents():
    """hashing.astnodes.walk stands in for ast.walk where fingerprints and lock scopes walk source:
    the same node objects in the same order (a fingerprint can depend on it: the last of two local
    imports of one name wins), and each node's parent as ast.iter_child_nodes gives it."""
    import orchestrator
    from orchestrator.hashing.astnodes import walk

    files = sorted(Path(orchestrator.__file__).parent.rglob("*.py")) + [Path(ast.__file__), Path(json.__file__)]
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        parents: dict = {}
        nodes = walk(tree, parents)
        expected = list(ast.walk(tree))
        assert len(nodes) == len(expected) and all(a is b for a, b in zip(nodes, expected)), path
        expected_parents = {}
        for node in expected:
            for child in ast.iter_child_nodes(node):
                expected_parents[child] = node
        assert parents == expected_parents, path
    tree = ast.parse("def f(a, *, b=1):\n    import x.y as z\n    return z(lambda: a)")
    tree.body[0].returns = None  # a field set to None, and one deleted: iter_fields skips it
    del tree.body[0].type_comment
    assert walk(tree) == list(ast.walk(tree))
