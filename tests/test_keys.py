"""The key scheme (orchestrator.core.keys): golden digests pin every derived name.

Every name here is on users' disks (entry directories and files, head records, lock files,
checkpoint directories). The digests below were computed by orch 0.1.0, before the key scheme got
its own module: if one of these tests fails, every existing cache would be re-keyed (a 6-hour
training stage re-run for nothing). Change them only together with KEY_VERSION, on purpose.
"""

from __future__ import annotations

from orchestrator.core import keys
from orchestrator.params import MISSING
from orchestrator.store import Entry, KeyComponents, Read

C1 = KeyComponents("m:s", None, "c" * 64, "d" * 64, {"data": "e" * 64})
C2 = KeyComponents("m:agg", 3, "c" * 64, "d" * 64, {"x@a": "1" * 64, "x@b": "2" * 64}, ("a", "b"))
C3 = KeyComponents("m:s", "v2", "c" * 64, "d" * 64, {})


def test_node_keys_are_pinned():
    assert keys.KEY_VERSION == "orch-node-v1"
    assert keys.node_key(C1) == "4a40db7f40476742507371636f3948082431e78ebd179e02fdeb9e120a0e0740"
    assert keys.node_key(C2) == "fe4c1961b2eb3a77cdd099e53eb8bd96597d7b6d6ac740762fab2161a7197b97"
    assert keys.node_key(C3) == "7349ef9b432dfdbc05904fd3e87e488f0a96c0db16b5045abf5274fdc1323d73"


def test_node_key_builds_the_bytes_of_the_generic_encoding():
    """node_key builds hash_value((KEY_VERSION, static hash, sorted inputs)) by hand: the same digest
    for any components, odd input names included."""
    import random

    from orchestrator.hashing import hash_value

    rng = random.Random(7)
    names = ["data", "x@a", "é", "\udcff", "", "a" * 300, "model@p[lr=0.1]", "日本"]
    for _ in range(300):
        digests = ["%064x" % rng.getrandbits(256), "abc", "é" * 64, "0" * 63, "日" * 21]
        inputs = {rng.choice(names) + str(rng.randrange(3)): rng.choice(digests[:1] * 4 + digests)
                  for _ in range(rng.randrange(5))}
        c = KeyComponents(rng.choice(["m:s", "m:agg"]), rng.choice([None, 1, True, 1.0, "v2"]), "%064x" % rng.getrandbits(256),
                          "d" * 64, inputs, rng.choice([None, (), ("a", "b")]))
        generic = hash_value((keys.KEY_VERSION, keys._static_hash.__wrapped__(c.stage, c.version, c.code, c.decl, c.sets),
                              sorted(c.inputs.items())))
        assert keys.node_key(c) == generic


def test_every_component_changes_the_key():
    base = keys.node_key(C1)
    variants = [
        KeyComponents("m:t", None, "c" * 64, "d" * 64, {"data": "e" * 64}),
        KeyComponents("m:s", 1, "c" * 64, "d" * 64, {"data": "e" * 64}),
        KeyComponents("m:s", "1", "c" * 64, "d" * 64, {"data": "e" * 64}),  # "1" is not 1
        KeyComponents("m:s", None, "f" * 64, "d" * 64, {"data": "e" * 64}),
        KeyComponents("m:s", None, "c" * 64, "f" * 64, {"data": "e" * 64}),
        KeyComponents("m:s", None, "c" * 64, "d" * 64, {"data": "f" * 64}),
        KeyComponents("m:s", None, "c" * 64, "d" * 64, {"other": "e" * 64}),
        KeyComponents("m:s", None, "c" * 64, "d" * 64, {"data": "e" * 64}, ()),
    ]
    found = {keys.node_key(v) for v in variants}
    assert base not in found and len(found) == len(variants)


def test_other_names_are_pinned():
    assert keys.head_key("m:s", "default") == "ab00b1742fcc1ce8e4edb12d06c35026a79984674c818412a3ef4b081cb7da81"
    assert keys.read_value_hash(0.1) == "3462eed403c243a7bcee7f60747bd1587739bd7b5c0c9b754a1fa1b00594ee0d"
    assert keys.read_value_hash(MISSING) == "85103a4bc828cf27504a3b1addc7295215a244d47a6b534e4e1c860304e06d3e"
    assert keys.read_value_hash({"a": [1, 2]}) == "b16bde7805a5b9d74acecc0aaad2408702399ee0782e82b63e96d7b08a5d6aa0"
    assert (keys.trace_id({"train.lr": "1" * 64, "data.n": "2" * 64}, {"data/a.csv": "3" * 64})
            == "5c17bee853184819-a3d47e0914149157350e1a777c0874a5a7562d69")
    assert keys.trace_id({}, {}) == "5192bb1bf0fc427f-a7430afa4add559e92f33dec63c7221706390495"
    assert keys.lock_scope_name("k", [("train.lr", "1" * 64)]) == "k.f01c19eb6d1d59afb841"
    assert (keys.checkpoint_dir_name("k" * 64, ("m", "s"), "default", {"train": {"lr": 0.1}})
            == "75d2810020cf6fb8768bb4a4f64124c7")
    assert keys.checkpoint_dir_name(None, ("m", "s"), "default", {}) == "ed4ba19b525ec739fb30e2b497bef591"


def test_absence_is_never_confused_with_a_value():
    assert len({keys.read_value_hash(v) for v in (MISSING, None, "<missing>", 0, False, "")}) == 6


def test_a_trace_id_names_its_reads_then_their_values():
    a = keys.trace_id({"lr": keys.read_value_hash(0.1)}, {})
    b = keys.trace_id({"lr": keys.read_value_hash(0.2)}, {})
    c = keys.trace_id({"wd": keys.read_value_hash(0.1)}, {})
    assert keys.signature_of(a) == keys.signature_of(b) != keys.signature_of(c)
    assert a != b
    assert keys.signature_of(a) == keys.trace_signature(["lr"], [])


def test_the_name_of_the_entry_that_holds_now_is_known_only_when_names_tell():
    """An entry holding now has exactly the name holding_trace_id gives; names_tell says when every
    other name of the signature can be skipped unread (planner and re-check alike)."""
    values = {"lr": 0.1, "opt": "adam"}
    files = {"data.csv": "1" * 64}
    stored = keys.trace_id({p: keys.read_value_hash(v) for p, v in values.items()}, files)
    sig = keys.signature_of(stored)

    def now(vals, fs):
        return keys.holding_trace_id(("lr", "opt"), ("data.csv",), lambda p: keys.read_value_hash(vals[p]), fs.get)

    assert now(values, files) == stored
    assert now({**values, "lr": 0.2}, files) != stored and keys.signature_of(now({**values, "lr": 0.2}, files)) == sig
    assert now(values, {}) is None  # a tracked file gone: cannot be said
    assert now({**values, "lr": [object()]}, files) is None  # a value with no hash: cannot be said
    assert keys.names_tell(sig, ("lr", "opt"), ("data.csv",), ())
    assert not keys.names_tell(sig, ("lr",), ("data.csv",), ())  # reads learned from a misnamed entry
    assert not keys.names_tell(sig, ("lr", "opt"), ("data.csv",), ("lr",))  # check_trace skips an ignored read


def _entry(reads: dict, files: dict) -> Entry:
    return Entry(key="k" * 64, trace_id="t", stage="m:s", param_set="p", created=1.0, components=C1,
                 reads={p: Read(keys.read_value_hash(v), v) for p, v in reads.items()}, files=files, outputs={})


def _check(entry: Entry, params: dict, files: dict, ignore=()):
    def now(path):
        return params.get(path, MISSING)

    return keys.check_trace(entry, tuple(ignore), lambda p: keys.read_value_hash(now(p)), now, files.get)


def test_check_trace_names_the_first_change_or_nothing():
    entry = _entry({"lr": 0.1, "opt": "adam"}, {"data.csv": "1" * 64})
    assert _check(entry, {"lr": 0.1, "opt": "adam", "unread": 5}, {"data.csv": "1" * 64}) is None
    assert _check(entry, {"lr": 0.3, "opt": "adam"}, {"data.csv": "1" * 64}) == "parameter lr changed: 0.1 -> 0.3"
    assert _check(entry, {"opt": "adam"}, {"data.csv": "1" * 64}) == "parameter lr changed: 0.1 -> <missing>"
    assert _check(entry, {"lr": 0.1, "opt": "adam"}, {"data.csv": "2" * 64}) == "file data.csv changed"
    assert _check(entry, {"lr": 0.1, "opt": "adam"}, {}) == "file data.csv is gone"
    assert _check(entry, {"lr": 0.3, "opt": "adam"}, {"data.csv": "1" * 64}, ignore=["lr"]) is None


def test_a_read_of_an_absent_parameter_misses_once_it_is_added():
    entry = _entry({"extra": MISSING}, {})
    assert _check(entry, {}, {}) is None
    assert _check(entry, {"extra": 0}, {}) == "parameter extra changed: <missing> -> 0"


def test_stage_parameters_read_from_the_code_object_are_what_inspect_says():
    """stage._parameters reads a plain function's parameters from its code object (inspect costs a
    quarter of a declaration); for every shape of signature it must say what inspect.signature says."""
    import functools
    import inspect

    from orchestrator.stage import _parameters

    def a(record): ...
    def b(record, x, y=1): ...
    def c(record, /, x, *, y, z=2): ...
    def d(record, *args, k, **kw): ...
    def e(record, x=1, *rest): ...
    def f(*args): ...
    def g(**kw): ...
    def h(): ...
    def i(r, /, p, q=3, *a, k1, k2=4, **kw): ...
    def j(r, a, b, /, c, d=1, *, e=2, f): ...
    lam = lambda record, x: x  # noqa: E731

    @functools.wraps(b)
    def wrapped(*args, **kwargs): ...

    class Callable:
        def __call__(self, record, x): ...

    def sig_set(record, **kw): ...
    sig_set.__signature__ = inspect.signature(b)

    cases = [a, b, c, d, e, f, g, h, i, j, lam, wrapped, Callable(), functools.partial(b, 1), sig_set, len]
    for fn in cases:
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            assert _parameters(fn) is None, fn
            continue
        expected = [(p.name, int(p.kind), p.default is not p.empty) for p in sig.parameters.values()]
        assert _parameters(fn) == expected, fn


def test_versions_equal_in_python_but_not_in_hashing_give_different_keys():
    """1 == True == 1.0, but hash_value tells them apart: the per-stage memo must too (typed)."""
    from orchestrator.hashing import hash_value

    found = set()
    for version in (1, True, 1.0, 1, True):
        c = KeyComponents("m:typed", version, "c" * 64, "d" * 64, {"data": "e" * 64})
        generic = hash_value((keys.KEY_VERSION, keys._static_hash.__wrapped__(c.stage, c.version, c.code, c.decl, c.sets),
                              sorted(c.inputs.items())))
        assert keys.node_key(c) == generic, version
        found.add(generic)
    assert len(found) == 3
