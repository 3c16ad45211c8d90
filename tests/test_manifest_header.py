"""A run manifest's header read without its rows (runs.manifesthead): what `orch runs` lists and what
`orch cache gc` asks, equal to the full manifest's, for old and new layouts and any chunking."""

from __future__ import annotations

import io
import json

import pytest
from conftest import pipeline

from orchestrator.runs import manifesthead
from orchestrator.runs.manifesthead import read_header


def _run(project) -> dict:
    pipeline(project)
    project.orch("run", "experiment.py", "-p", "params/base.yaml")
    return project.manifest()


def test_a_new_manifest_puts_its_rows_last_and_its_header_is_all_the_rest(project):
    m = _run(project)
    assert list(m)[0] == "format" and list(m)[-1] == "nodes" and m["format"] == manifesthead.FORMAT
    path = project.root / ".orch" / "runs" / "latest" / "manifest.json"
    assert read_header(path) == {k: v for k, v in m.items() if k != "nodes"}


def test_the_rows_of_a_new_manifest_are_not_parsed_to_list_it(project):
    """Rows that are not JSON at all: `orch runs` still lists the run from its header, while `orch show`,
    which needs the rows, says the manifest cannot be read."""
    m = _run(project)
    path = project.root / ".orch" / "runs" / m["run_id"] / "manifest.json"
    text = path.read_text()
    path.write_text(text[:text.index('"nodes":') + len('"nodes":')] + "[{not json at all")
    listed = project.orch("runs").stdout
    assert m["run_id"] in listed and "ok" in listed and "3 ran" in listed, listed
    shown = project.orch("show", m["run_id"], check=False)
    assert shown.returncode != 0 and "cannot be read" in shown.stderr and "Traceback" not in shown.stderr


def test_an_older_manifest_whose_summary_follows_its_rows_is_read_whole(project):
    m = _run(project)
    path = project.root / ".orch" / "runs" / m["run_id"] / "manifest.json"
    old = {k: v for k, v in m.items() if k not in ("format", "summary", "duration_s")}
    old.update(summary=m["summary"], duration_s=m["duration_s"])  # orch 0.2's order: rows, then these
    path.write_text(json.dumps(old))
    assert read_header(path) == {k: v for k, v in old.items() if k != "nodes"}
    listed = project.orch("runs").stdout
    assert m["run_id"] in listed and "3 ran" in listed, listed


def test_an_older_manifest_gives_the_fields_before_its_rows_without_parsing_them_when_that_is_all_one_needs(tmp_path):
    """`orch cache gc` asks only for "status", which precedes the rows in orch 0.2's layout too."""
    path = tmp_path / "manifest.json"
    path.write_text('{"run_id": "r1", "status": "detached", "param_sets": {"a": {}}, "nodes": [{not json, '
                    '"summary": {"ran": 1}}')
    assert read_header(path, wanted=("status",)) == {"run_id": "r1", "status": "detached", "param_sets": {"a": {}}}
    assert read_header(path) is None  # the whole header (its summary follows the rows) cannot be had
    assert read_header(path, wanted=("summary",)) is None


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64])
def test_any_chunking_gives_the_same_header(tmp_path, monkeypatch, chunk):
    """Fields cut anywhere by the chunks, numbers that go on in the next chunk, escapes, non-ASCII text
    (as UTF-8, split between chunks), whitespace between tokens."""
    header = {"format": 2, "run_id": "r1", "argv": ["-S", "name=é ü 😀", 'a "quote" \\ back'],
              "duration_s": 12.345678, "summary": {"ran": 10, "cached": 2}, "status": "ok", "nested": [[1, [2.5e-3]], {}],
              "flag": True, "none": None}
    manifest = {**header, "nodes": [{"id": 0}]}
    path = tmp_path / "manifest.json"
    path.write_bytes(json.dumps(manifest, indent=1, ensure_ascii=False).encode("utf-8"))
    monkeypatch.setattr(manifesthead, "CHUNK", chunk)
    monkeypatch.setattr(manifesthead, "read_json_object", _no_fallback)
    assert read_header(path) == header


def test_a_damaged_or_missing_manifest_has_no_header(tmp_path):
    path = tmp_path / "manifest.json"
    assert read_header(path) is None
    path.write_bytes(b'{"format": 2, "run_id": "r1", "status": ')
    assert read_header(path) is None
    path.write_bytes(b'{"format": 2, "run_id": \xff\xfe}')
    assert read_header(path) is None
    path.write_text('{"format": 2, "run_id": "r1"}')  # no rows at all: a header still
    assert read_header(path) == {"format": 2, "run_id": "r1"}


def _no_fallback(path):
    raise AssertionError(f"read whole: {path}")


class _Trickle(io.BytesIO):
    """A file whose every read gives at most `step` bytes, as a slow pipe would."""

    def __init__(self, data: bytes, step: int):
        super().__init__(data)
        self.step = step

    def read(self, size: int = -1) -> bytes:
        return super().read(self.step if size < 0 else min(size, self.step))


@pytest.mark.parametrize("number", ["12.5", "1e+300", "-1.5E-7", "0.25", "-0", "123456789"])
def test_a_number_cut_anywhere_by_a_read_is_read_again_whole(number):
    """"12." or "1e+" at the end of what was read is a number cut short, not the number 12 or 1."""
    data = ('{"format": 2, "duration_s": ' + number + ', "status": "ok", "nodes": []}').encode()
    for step in range(1, len(data) + 1):
        with _Trickle(data, step) as f:
            assert manifesthead._read_header(f, ()) == {"format": 2, "duration_s": json.loads(number),
                                                         "status": "ok"}, step


def test_damage_the_incremental_reader_meets_is_a_missing_header_never_an_exception(tmp_path):
    path = tmp_path / "manifest.json"
    for text in ('{"format": 2, [1]: 0, "nodes": []}', '{[1]: 0, "status": "ok", "nodes": []}',
                 '{"format": 2, "deep": ' + "[" * 100_000 + "]" * 100_000 + ', "nodes": []}'):
        path.write_text(text)
        assert read_header(path) is None and read_header(path, wanted=("status",)) is None


def _random_value(rng, depth: int = 0):
    kind = rng.randrange(8 if depth < 3 else 5)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.randrange(-10**12, 10**12)
    if kind == 2:
        return rng.choice([rng.uniform(-1e6, 1e6), rng.random() * 1e-9, 0.0, -0.0, 1e300])
    if kind in (3, 4):
        return "".join(rng.choice('ab "\\/\n\t\u00e9\u4e2d\U0001f600{}[]:,') for _ in range(rng.randrange(12)))
    if kind == 5:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {f"k{i}{_random_value(rng, 3) if rng.random() < 0.3 else ''}": _random_value(rng, depth + 1)
            for i in range(rng.randrange(4))}


def test_random_headers_in_any_layout_read_back_as_json_gives_them(tmp_path, monkeypatch):
    """300 made-up headers (nested values, escapes, non-ASCII, every number kind), written compact or
    indented, ASCII-escaped or UTF-8, read back by reads of 1 to 50 bytes each (never the whole-file
    fallback)."""
    import random

    rng = random.Random(20261202)
    path = tmp_path / "manifest.json"
    for case in range(300):
        header = {"format": manifesthead.FORMAT}
        header.update({f"field{i}": _random_value(rng) for i in range(rng.randrange(6))})
        manifest = {**header, "nodes": [_random_value(rng) for _ in range(3)]}
        indent = rng.choice([None, 0, 2])
        ascii_only = rng.random() < 0.5
        path.write_bytes(json.dumps(manifest, indent=indent, ensure_ascii=ascii_only).encode("utf-8"))
        data = path.read_bytes()
        with _Trickle(data, rng.randrange(1, 51)) as f:  # every read short: fields cut anywhere
            assert manifesthead._read_header(f, ()) == header, (case, data)
