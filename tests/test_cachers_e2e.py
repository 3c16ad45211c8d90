"""Cachers through the real `orch` CLI: file references, Lazy, numpy, custom cachers, bad outputs."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

RUN = ("run", "experiment.py")


def objects(project) -> set[str]:
    root = project.root / ".orch" / "objects"
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


def seen(project) -> dict:
    """What the consumer stages recorded about their inputs (they append JSON lines to seen.jsonl)."""
    path = project.root / "seen.jsonl"
    out = {}
    if path.exists():
        for line in path.read_text().splitlines():
            out.update(json.loads(line))
    return out


SEEN = '''
import json, os

def note(**kw):
    with open(os.path.join(os.path.dirname(__file__), "..", "seen.jsonl"), "a") as f:
        f.write(json.dumps(kw) + "\\n")
'''


def file_project(project):
    project.write("stages/seen.py", SEEN)
    project.write("data/raw.txt", "raw v1\n")
    project.write("stages/files.py", '''
        import os
        from orchestrator import stage, FileReferenceCacher, JsonCacher
        from stages.counting import count
        from stages.seen import note

        @stage(outputs=["table"], cachers=[FileReferenceCacher])
        def make_table(record):
            count("make_table")
            path = record.get_path("tables/table.csv")
            with open(path, "w") as f:
                f.write("a,b\\n1,2\\n")
            return path

        @stage(outputs=["shards"], cachers=[FileReferenceCacher(expect="dir")])
        def make_shards(record):
            count("make_shards")
            d = record.get_dir("shards")
            for i in range(3):
                with open(os.path.join(d, f"{i}.txt"), "w") as f:
                    f.write(str(i))
            return d

        @stage(outputs=["raw"], cachers=[FileReferenceCacher])
        def reference_raw(record):
            count("reference_raw")
            return "data/raw.txt"

        @stage(outputs=["bundle"], cachers=[FileReferenceCacher])
        def make_bundle(record):
            count("make_bundle")
            a = record.get_path("a.txt")
            with open(a, "w") as f:
                f.write("A")
            return [os.path.abspath("data/raw.txt"), a]

        @stage(inputs=["table", "shards", "raw", "bundle"], outputs=["summary"], cachers=[JsonCacher])
        def summarize(record, table, shards, raw, bundle):
            count("summarize")
            mode = lambda p: oct(os.stat(p).st_mode & 0o777)
            note(table=table, table_mode=mode(table), shards=shards, shard_files=sorted(os.listdir(shards)),
                 raw=raw, bundle=bundle)
            return {"table": open(table).read(), "raw": open(raw).read(),
                    "bundle": [open(p).read() for p in bundle]}
    ''')
    project.write("experiment.py", '''
        from stages.files import make_table, make_shards, reference_raw, make_bundle, summarize

        def run(record):
            make_table(record); make_shards(record); reference_raw(record); make_bundle(record)
            summarize(record)
    ''')
    return project


def test_stage_files_move_into_the_store_and_consumers_get_stored_paths(project):
    file_project(project)
    project.orch(*RUN)
    s = seen(project)
    store = str(project.root / ".orch" / "objects")
    assert s["table"].startswith(store) and s["table"].endswith(".csv")
    assert s["table_mode"] == "0o444"  # read-only
    assert s["shards"].startswith(store) and s["shard_files"] == ["0.txt", "1.txt", "2.txt"]
    assert s["raw"] == str(project.root / "data" / "raw.txt")  # referenced, not copied
    assert s["bundle"][0] == str(project.root / "data" / "raw.txt") and s["bundle"][1].startswith(store)
    assert Path(s["bundle"][1]).name == "a.txt"
    # nothing is left in the staging area, and the referenced file is not in the store
    assert not any((project.root / ".orch" / "tmp").iterdir())
    stored = [p for p in (project.root / ".orch" / "objects").rglob("*") if p.is_file()]
    assert b"A" in [p.read_bytes() for p in stored] and b"raw v1\n" not in [p.read_bytes() for p in stored]
    # fully cached the second time, and consumers still get the same paths
    project.reset_counts()
    (project.root / "seen.jsonl").unlink()
    out = project.orch(*RUN)
    assert project.counts() == {} and "5 cached" in out.stdout


def test_changed_referenced_file_is_a_miss(project):
    file_project(project)
    project.orch(*RUN)
    project.reset_counts()
    # same content, new mtime: the hash is unchanged, nothing re-runs
    st = (project.root / "data/raw.txt").stat()
    os.utime(project.root / "data/raw.txt", ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    project.orch(*RUN)
    assert project.counts() == {}
    project.write("data/raw.txt", "raw v2\n")
    past = (st.st_mtime_ns - 60_000_000_000,) * 2  # not "racy": old enough for the stat cache to keep
    os.utime(project.root / "data/raw.txt", ns=past)
    out = project.orch(*RUN)
    assert project.counts() == {"reference_raw": 1, "make_bundle": 1, "summarize": 1}
    assert "file data/raw.txt changed" in out.stdout
    got = project.orch("get", "summary", "-o", "summary.json")
    assert "summary.json" in got.stdout
    assert json.loads((project.root / "summary.json").read_text()) == {
        "table": "a,b\n1,2\n", "raw": "raw v2\n", "bundle": ["raw v2\n", "A"]}
    # the stat cache persisted in the cache directory knows the referenced file
    stat_cache = json.loads((project.root / ".orch" / "stat-cache.json").read_text())
    assert str(project.root / "data" / "raw.txt") in stat_cache["entries"]


@pytest.mark.parametrize("body, expected", [
    ('return "does/not/exist.txt"', "is the path .*does/not/exist.txt, which does not exist"),
    ('return record.get_dir("d")', "is the directory .* expects a file"),
    ("return 42", "is a int, not a path"),
    ('return ["data/raw.txt", 3]', "item 1 is a int, not a path"),
])
def test_bad_file_outputs_are_named_errors_and_store_nothing(project, body, expected):
    import re

    project.write("data/raw.txt", "raw\n")
    project.write("stages/bad.py", f'''
        from orchestrator import stage, FileReferenceCacher, PickleCacher

        @stage(outputs=["fine", "result"], cachers=[PickleCacher, FileReferenceCacher(expect="file")])
        def produce(record):
            def result():
                {body}
            return [1, 2, 3], result()
    ''')
    project.write("experiment.py", '''
        from stages.bad import produce

        def run(record):
            produce(record)
    ''')
    proc = project.orch(*RUN, check=False)
    assert proc.returncode == 1
    assert "StageOutputError" in proc.stderr and "stage produce: output 'result'" in proc.stderr
    assert re.search(expected, proc.stderr), proc.stderr
    assert "Traceback" not in proc.stderr
    assert objects(project) == set()  # the good output was not stored either: nothing half-written
    assert project.manifest()["nodes"][0]["status"] == "failed"


def test_object_a_cacher_cannot_save_is_a_named_error(project):
    project.write("stages/bad.py", '''
        import threading
        from orchestrator import stage, PickleCacher, NumpyCacher

        @stage(outputs=["lock"], cachers=[PickleCacher])
        def locky(record):
            return threading.Lock()

        @stage(outputs=["arr"], cachers=[NumpyCacher])
        def not_array(record):
            return [1, 2]
    ''')
    project.write("experiment.py", '''
        from stages.bad import locky, not_array

        def run(record):
            locky(record); not_array(record)
    ''')
    proc = project.orch(*RUN, check=False)
    assert proc.returncode == 1
    assert "stage locky: output 'lock' (lock) cannot be saved by PickleCacher" in proc.stderr
    assert "stage not_array: output 'arr' (list) cannot be saved by NumpyCacher" in proc.stderr
    assert "NumpyCacher saves numpy arrays" in proc.stderr
    assert objects(project) == set()


def lazy_project(project):
    project.write("stages/seen.py", SEEN)
    project.write("stages/lazy.py", '''
        import numpy as np
        from orchestrator import stage, Lazy, NumpyCacher, Cacher
        from stages.counting import count
        from stages.seen import note

        class CountingNumpy(NumpyCacher):
            """Counts loads, to show what is read from the store and what is handed over in memory."""

            def load(self, path, metadata=None, **kw):
                count("load:" + metadata["tag"])
                return super().load(path, metadata, **kw)

            def save(self, obj, path):
                meta = super().save(obj, path)
                return {**meta, "tag": "big" if obj.size > 5 else "small"}

        @stage(outputs=[Lazy("big"), "small"], cachers=[CountingNumpy, CountingNumpy])
        def produce(record):
            count("produce")
            return np.arange(10.0), np.arange(3.0)

        @stage(inputs=[Lazy("big"), "small"], outputs=["info"], cachers=[CountingNumpy])
        def handle(record, big, small):
            count("handle")
            arr = big.load(mmap_mode="r")
            note(path=big.path, memmap=type(arr).__name__, meta=big.metadata, small=small.tolist())
            return np.array([arr.sum()])

        @stage(inputs=["big"], outputs=["total"], cachers=[CountingNumpy])
        def eager(record, big):
            count("eager")
            return np.array([big.sum()])
    ''')
    project.write("experiment.py", '''
        from stages.lazy import produce, handle, eager

        def run(record):
            produce(record); handle(record); eager(record)
    ''')
    return project


def test_lazy_outputs_are_not_kept_and_lazy_inputs_are_handles(project):
    lazy_project(project)
    project.orch(*RUN)
    c = project.counts()
    # "small" is handed over in memory (never loaded); "big" is Lazy: dropped after saving, so the
    # eager consumer loads it from the store and the lazy consumer loads it only when it asks
    assert c == {"produce": 1, "handle": 1, "eager": 1, "load:big": 2}
    s = seen(project)
    assert s["path"].startswith(str(project.root / ".orch" / "objects")) and s["path"].endswith(".npy")
    assert s["memmap"] == "memmap" and s["meta"] == {"dtype": "float64", "shape": [10], "tag": "big"}
    assert s["small"] == [0.0, 1.0, 2.0]
    # a cached run loads nothing at all
    project.reset_counts()
    project.orch(*RUN)
    assert project.counts() == {}


def test_lazy_input_that_is_never_loaded_is_never_read(project):
    lazy_project(project)
    project.write("stages/lazy.py", (project.root / "stages/lazy.py").read_text().replace(
        "arr = big.load(mmap_mode=\"r\")", "arr = np.zeros(1)"))
    project.orch(*RUN)
    assert project.counts() == {"produce": 1, "handle": 1, "eager": 1, "load:big": 1}  # the eager consumer only


def test_custom_cacher_metadata_and_config_round_trip(project):
    project.write("stages/custom.py", '''
        from orchestrator import stage, Cacher
        from stages.counting import count

        class TextCacher(Cacher):
            """Writes a list of lines with a configurable separator; metadata remembers the count."""
            extension = ".txt"

            def __init__(self, sep="\\n"):
                self.sep = sep

            def config(self):
                return {"sep": self.sep}

            def save(self, obj, path):
                with open(path, "w") as f:
                    f.write(self.sep.join(obj))
                return {"n": len(obj)}

            def load(self, path, metadata=None):
                with open(path) as f:
                    items = f.read().split(self.sep)
                assert len(items) == metadata["n"]
                return items

        @stage(outputs=["words"], cachers=[TextCacher(sep="|")])
        def words(record):
            count("words")
            return ["a", "b", "c"]

        @stage(inputs=["words"], outputs=["n"], cachers=[TextCacher])
        def upper(record, words):
            return [w.upper() for w in words]
    ''')
    project.write("experiment.py", '''
        from stages.custom import words, upper

        def run(record):
            upper(words(record))
    ''')
    project.orch(*RUN)
    stored = [p for p in (project.root / ".orch" / "objects").rglob("*.txt")]
    assert sorted(p.read_text() for p in stored) == ["A\nB\nC", "a|b|c"]
    entries = [json.loads(p.read_text()) for p in (project.root / ".orch" / "entries").rglob("*.json")]
    words_entry = next(e for e in entries if "words" in e.get("outputs", {}))
    assert words_entry["outputs"]["words"]["cacher"] == ["stages.custom:TextCacher", {"sep": "|"}]
    assert words_entry["outputs"]["words"]["metadata"] == {"n": 3}
    # switching the cacher's config changes the key: re-run
    project.reset_counts()
    project.write("stages/custom.py", (project.root / "stages/custom.py").read_text().replace('sep="|"', 'sep=";"'))
    project.orch(*RUN)
    assert project.counts() == {"words": 1}


def test_numpy_cacher_mmap(tmp_path):
    np = pytest.importorskip("numpy")
    from orchestrator.cachers import NumpyCacher

    c = NumpyCacher()
    path = str(tmp_path / "a.npy")
    meta = c.save(np.arange(6).reshape(2, 3), path)
    assert meta == {"dtype": str(np.arange(1).dtype), "shape": [2, 3]}
    os.chmod(path, stat.S_IRUSR)
    m = c.load(path, meta, mmap_mode="r")
    assert isinstance(m, np.memmap) and m.tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(ValueError, match="read-only"):
        c.load(path, meta, mmap_mode="r+")
    with pytest.raises(TypeError, match="allow_pickle"):
        c.save(np.array([object()]), str(tmp_path / "o.npy"))
    assert NumpyCacher(allow_pickle=True).config() == {"allow_pickle": True}


BYTES_VALUES = '''
import math

def values():
    """name -> the value a stage returns; the test saves the same values through save()."""
    return {
        "small": [1, 2.5, "é", None],
        "tagged": {"words": {"pear", "apple", "fig"}, "t": (1, frozenset({3, 1}))},
        "big": list(range(1_000_000)),  # a pickle over 4 MiB: written to its file as it grows
        "metrics": {"acc": 0.5, "nan": math.nan, "name": "naïve ☃", "nested": [{"k": 1}]},
    }
'''


def test_built_in_cachers_store_from_memory_exactly_what_save_writes(project, tmp_path):
    """PickleCacher and JsonCacher give their bytes to the store without a staging file: every
    object is the one save() would have written (same bytes, digest, name, mode); a subclass that
    overrides save() keeps its own file."""
    project.write("stages/values.py", BYTES_VALUES)
    project.write("stages/bytes.py", '''
        from orchestrator import stage, PickleCacher, JsonCacher
        from stages.values import values

        class Tagged(PickleCacher):
            def save(self, obj, path):
                with open(path, "wb") as f:
                    f.write(b"tagged:" + repr(obj).encode())

        @stage(outputs=["small", "tagged", "big"], cachers=[PickleCacher, PickleCacher(protocol=4), PickleCacher])
        def pickles(record):
            v = values()
            return v["small"], v["tagged"], v["big"]

        @stage(outputs=["metrics", "compact"], cachers=[JsonCacher, JsonCacher(indent=None)])
        def jsons(record):
            return values()["metrics"], values()["small"]

        @stage(outputs=["own"], cachers=[Tagged])
        def own(record):
            return values()["small"]
    ''')
    project.write("experiment.py", '''
        from stages.bytes import pickles, jsons, own

        def run(record):
            pickles(record); jsons(record); own(record)
    ''')
    project.orch(*RUN)
    from orchestrator.cachers import JsonCacher, PickleCacher

    class Tagged(PickleCacher):  # the project's, for what it writes (its identity is not compared)
        def save(self, obj, path):
            with open(path, "wb") as f:
                f.write(b"tagged:" + repr(obj).encode())

    namespace: dict = {}
    exec(BYTES_VALUES, namespace)  # the values the stages returned, made the same way here
    v = namespace["values"]()
    expected = {"small": (PickleCacher(), v["small"]), "tagged": (PickleCacher(protocol=4), v["tagged"]),
                "big": (PickleCacher(), v["big"]), "metrics": (JsonCacher(), v["metrics"]),
                "compact": (JsonCacher(indent=None), v["small"]), "own": (Tagged(), v["small"])}
    stored = {}
    for path in (project.root / ".orch" / "entries").rglob("*.json"):
        for name, out in json.loads(path.read_text())["outputs"].items():
            stored[name] = out["object"]
    assert set(stored) == set(expected)
    for name, (cacher, value) in expected.items():
        saved = tmp_path / f"{name}{cacher.extension}"
        cacher.save(value, str(saved))
        data = saved.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        obj = project.root / ".orch" / "objects" / digest[:2] / f"{digest[2:]}{cacher.extension}"
        assert stored[name] == {"hash": digest, "size": len(data), "kind": "file", "ext": cacher.extension}, name
        assert obj.read_bytes() == data, name
        assert stat.S_IMODE(obj.stat().st_mode) == 0o444, name
    assert stored["own"]["size"] == len(b"tagged:" + repr(v["small"]).encode())
    assert list((project.root / ".orch" / "tmp").iterdir()) == []


def test_pickle_cacher_holds_only_small_pickles_in_memory(tmp_path):
    """A pickle over IN_MEMORY_MAX goes to its staging file as it grows (never whole in memory twice);
    a subclass with its own prepare() is called as before."""
    import pickle

    from orchestrator.cachers import OutputTarget, PickleCacher

    def target(name):
        return OutputTarget("s", name, str(tmp_path / f"{name}.pkl"), tmp_path / "staging")

    data, ext, meta = PickleCacher().prepare_in_memory([1, 2], target("small"))
    assert (data, ext, meta) == (pickle.dumps([1, 2], protocol=5), ".pkl", None)
    assert not (tmp_path / "small.pkl").exists()
    big = list(range(1_000_000))
    path, _, _ = PickleCacher().prepare_in_memory(big, target("big"))
    assert path == str(tmp_path / "big.pkl")
    assert (tmp_path / "big.pkl").read_bytes() == pickle.dumps(big, protocol=5)
    blob = os.urandom(5 << 20)  # one payload handed over whole, written in slices (fsutil.WRITE_SLICE)
    path, _, _ = PickleCacher().prepare_in_memory(blob, target("blob"))
    assert (tmp_path / "blob.pkl").read_bytes() == pickle.dumps(blob, protocol=5)

    class Prepared(PickleCacher):
        def prepare(self, value, out):
            return "elsewhere", ".pkl", {"mine": True}

    assert Prepared().prepare_in_memory([1], target("own")) == ("elsewhere", ".pkl", {"mine": True})


def test_staging_a_stage_used_is_removed_whatever_its_cachers(project):
    """A stage whose outputs go to the store from memory never has its staging directory probed
    unless it asked for one; when it did (record.get_path/get_dir), the directory is removed after
    success and after failure alike."""
    project.write("stages/scratch.py", '''
        from orchestrator import stage, PickleCacher, JsonCacher

        @stage(outputs=["n"], cachers=[PickleCacher])
        def scratch(record):
            with open(record.get_path("notes/a.txt"), "w") as f:
                f.write("scratch")
            return 1

        @stage(outputs=["j"], cachers=[JsonCacher])
        def scratch_dir(record):
            record.get_dir("d")
            return {"ok": 1}

        @stage(outputs=["f"], cachers=[PickleCacher])
        def fails(record):
            record.get_path("x.txt")
            raise RuntimeError("boom")

        @stage(outputs=["m"], cachers=[PickleCacher])
        def plain(record):
            return 2
    ''')
    project.write("experiment.py", '''
        from stages.scratch import scratch, scratch_dir, fails, plain

        def run(record):
            scratch(record); scratch_dir(record); fails(record); plain(record)
    ''')
    proc = project.orch(*RUN, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert {s: st for (s, _), st in project.statuses().items()} == {
        "scratch": "ran", "scratch_dir": "ran", "fails": "failed", "plain": "ran"}
    assert list((project.root / ".orch" / "tmp").iterdir()) == []
