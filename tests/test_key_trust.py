"""A cache key you can trust in a real research repository (issue 9) and code that runs as hashed
(issue 15): every case here returned a stale result as a cache hit in orch 0.1.0."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
import time
from pathlib import Path

from conftest import COUNTING, Project

RUN = ("run", "experiment.py", "-p", "params/p.yaml")


def _pythonpath(*paths: Path) -> dict:
    """PYTHONPATH with `paths` first (and whatever the test run itself has after them)."""
    return {"PYTHONPATH": os.pathsep.join([*map(str, paths), *filter(None, [os.environ.get("PYTHONPATH")])])}


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def _edit(path: Path, old: str, new: str) -> None:
    """An edit as an editor makes it: new content, a fresh mtime (at least a tick later)."""
    before = path.stat().st_mtime_ns
    path.write_text(path.read_text().replace(old, new))
    if path.stat().st_mtime_ns <= before:
        os.utime(path, ns=(before + 1_000_000, before + 1_000_000))


def _repo(tmp_path: Path) -> tuple[Path, Project]:
    """A research repository: the team's library under src/, experiments under experiments/."""
    repo = tmp_path / "repo"
    _write(repo / "src/mylib/__init__.py", "")
    _write(repo / "src/mylib/ops.py", """
        def scale(x):
            return x * 2
    """)
    exp = repo / "experiments" / "e1"
    _write(exp / "stages/__init__.py", "")
    _write(exp / "stages/counting.py", COUNTING)
    _write(exp / "stages/s.py", """
        from orchestrator import stage, PickleCacher
        from stages.counting import count
        from mylib.ops import scale

        @stage(outputs=["x"], cachers=[PickleCacher])
        def make(record):
            count("make")
            return scale(record.params.n)
    """)
    _write(exp / "experiment.py", """
        from stages.s import make

        def run(record):
            make(record)
    """)
    _write(exp / "params/p.yaml", "n: 3\n")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    return repo, Project(exp)


def _load(project: Project, name: str, env: dict | None = None):
    code = f"import orchestrator, json; print(json.dumps(orchestrator.load({name!r}, experiment_dir='.')))"
    proc = subprocess.run([str(Path(os.sys.executable)), "-c", code], cwd=project.root, capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


# -- 1. the team's library lives outside the experiment's directory -----------------------------------

def test_editing_the_repositorys_library_outside_the_experiment_directory_reruns(tmp_path):
    repo, p = _repo(tmp_path)
    env = _pythonpath(repo / "src")
    p.orch(*RUN, env=env)
    assert p.counts() == {"make": 1}
    _edit(repo / "src/mylib/ops.py", "x * 2", "x * 3")
    out = p.orch(*RUN, env=env)
    assert p.counts() == {"make": 2}
    assert "src/mylib/ops.py" in out.stdout, out.stdout  # which file changed...
    assert str(repo) in out.stdout  # ...of which code root
    assert _load(p, "x", env) == 9
    why = p.orch("why", env=env)
    assert "src/mylib/ops.py" in why.stdout


def _editable_site(tmp_path: Path, project_dir: Path, name: str) -> Path:
    """A site directory holding what `pip install -e` leaves (PEP 610/660): a dist-info whose
    direct_url.json says editable, pointing at the package's project directory."""
    site = tmp_path / "site"
    info = site / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "direct_url.json").write_text(json.dumps({"url": project_dir.as_uri(), "dir_info": {"editable": True}}))
    return site


def test_editing_a_package_installed_in_editable_mode_anywhere_reruns(tmp_path):
    # not inside the experiment's repository at all; its file: URL holds escapes (%20, %C3%A9)
    lib = tmp_path / "else where é" / "teamlib"
    _write(lib / "src/teamlib/__init__.py", "")
    _write(lib / "src/teamlib/ops.py", "def scale(x):\n    return x * 2\n")
    p = Project(tmp_path / "proj")
    _write(p.root / "stages/__init__.py", "")
    _write(p.root / "stages/counting.py", COUNTING)
    _write(p.root / "stages/s.py", """
        from orchestrator import stage, PickleCacher
        from stages.counting import count
        from teamlib.ops import scale

        @stage(outputs=["x"], cachers=[PickleCacher])
        def make(record):
            count("make")
            return scale(record.params.n)
    """)
    _write(p.root / "experiment.py", "from stages.s import make\n\ndef run(record):\n    make(record)\n")
    _write(p.root / "params/p.yaml", "n: 3\n")
    site = _editable_site(tmp_path, lib, "teamlib")
    env = _pythonpath(site, lib / "src")
    p.orch(*RUN, env=env)
    _edit(lib / "src/teamlib/ops.py", "x * 2", "x * 5")
    out = p.orch(*RUN, env=env)
    assert p.counts() == {"make": 2}, out.stdout
    assert "teamlib/ops.py" in out.stdout


def test_an_editable_install_url_is_read_as_urllib_reads_it():
    """coderoots.file_url_path (no urllib.parse on a cached run) gives what unquote(urlparse(url).path) does."""
    import random
    from urllib.parse import unquote, urlparse

    from orchestrator.hashing.coderoots import file_url_path

    urls = ["file:///home/me/proj", "file://localhost/srv/x", "FILE:///a%20b", "file:/a/b", "file:a", "file://host",
            "file:///a?x#y", "file:///a#b?c", "file:///caf%C3%A9/%E2%82", "file:///%zz%4", "file:///a;b/c;d",
            "file:///a\tb", "file://[::1]/x", "file:", "", "https://example.org/x", "git+file:///r"]
    rng = random.Random(7)
    alphabet = "/:%?#;abcAF09é \t[]@"
    urls += ["file:" + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) for _ in range(20_000)]
    compared = 0
    for url in urls:
        try:
            parsed = urlparse(url)
        except ValueError:  # (an invalid bracketed host: urllib refuses what file_url_path reads anyway)
            continue
        assert file_url_path(url) == (unquote(parsed.path) if parsed.scheme == "file" else ""), url
        compared += 1
    assert compared > 15_000


def _scaling_project(tmp_path: Path, vendored: bool = False) -> tuple[Path, Path, Project]:
    """(shared, repo, project): a stage using helpers.scale from `shared/` (on PYTHONPATH, neither in the
    repository nor installed) and, with `vendored`, vendored.fast from the repository."""
    shared = tmp_path / "shared"
    _write(shared / "helpers.py", "def scale(x):\n    return x * 2\n")
    repo, p = _repo(tmp_path)
    imported, added = ("from vendored.fast import fast", " + fast()") if vendored else ("", "")
    _write(p.root / "stages/s.py", f"""
        from orchestrator import stage, PickleCacher
        from stages.counting import count
        from helpers import scale
        {imported}

        @stage(outputs=["x"], cachers=[PickleCacher])
        def make(record):
            count("make")
            return scale(record.params.n){added}
    """)
    return shared, repo, p


def test_pyproject_adds_code_roots_and_excludes(tmp_path):
    shared, repo, p = _scaling_project(tmp_path, vendored=True)
    _write(repo / "vendored/fast.py", "def fast():\n    return 0\n")
    _write(repo / "pyproject.toml", f"""
        [tool.orch]
        code-roots = ["{shared}"]
        exclude = ["vendored"]
    """)
    env = _pythonpath(shared, repo)
    p.orch(*RUN, env=env)
    _edit(repo / "vendored/fast.py", "return 0", "return 0  # tuned")
    _edit(repo / "vendored/fast.py", "return 0  # tuned", "return 1 - 1")
    p.orch(*RUN, env=env)
    assert p.counts() == {"make": 1}  # excluded: treated like an installed package
    _edit(shared / "helpers.py", "x * 2", "x * 4")
    p.orch(*RUN, env=env)
    assert p.counts() == {"make": 2}


def test_tool_orch_is_read_from_its_kept_parse_and_an_edit_counts(tmp_path):
    """A cached run reads [tool.orch] from toml-cache.json (parsecache, by the text's hash: no import
    of tomllib) instead of parsing pyproject.toml again; any edit of the file is a text of its own."""
    shared, repo, p = _scaling_project(tmp_path)
    plain = '[project]\nname = "demo"\ndependencies = ["torch"]\n\n[tool.orch]\nexclude = []\n'
    rooted = plain.replace("exclude = []", f'code-roots = ["{shared}"]')
    (repo / "pyproject.toml").write_text(plain)
    env = _pythonpath(shared, repo)
    p.orch(*RUN, env=env)
    kept = json.loads((p.root / ".orch" / "toml-cache.json").read_text())["parsed"]
    assert [json.loads(text) for text, _ in kept.values()] == [{"exclude": []}]
    _edit(shared / "helpers.py", "x * 2", "x * 4")
    p.orch(*RUN, env=env)
    assert p.counts() == {"make": 1}  # not project code
    (repo / "pyproject.toml").write_text(rooted)
    p.orch(*RUN, env=env)
    assert p.counts() == {"make": 2}  # now it is
    _edit(shared / "helpers.py", "x * 4", "x * 5")
    p.orch(*RUN, env=env)
    assert p.counts() == {"make": 3}
    (repo / "pyproject.toml").write_text(plain)  # a text parsed before: from the kept parse
    assert len(json.loads((p.root / ".orch" / "toml-cache.json").read_text())["parsed"]) == 2
    out = p.orch(*RUN, env=env)
    assert p.counts() == {"make": 3} and "cached" in out.stdout  # the first run's entry again
    (repo / "pyproject.toml").write_text(plain.replace("[tool.orch]", "[tool.orch"))
    out = p.orch(*RUN, env=env, check=False)
    assert out.returncode == 1 and "invalid TOML" in out.stderr and "Traceback" not in out.stderr


def test_a_mistake_in_tool_orch_is_a_clear_error(tmp_path):
    repo, p = _repo(tmp_path)
    _write(repo / "pyproject.toml", '[tool.orch]\ncode-root = ["src"]\n')
    out = p.orch(*RUN, env=_pythonpath(repo / "src"), check=False)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "pyproject.toml" in out.stderr and "code-root" in out.stderr and "code-roots" in out.stderr


# -- 2. imports inside a function body -----------------------------------------------------------------

def test_imports_inside_a_stage_are_followed(project):
    """Modules a stage imports in its body: followed function by function when planning finds them
    loaded, keyed by their files' content when not (importing them to plan would defeat the lazy
    import, e.g. of a module that imports torch)."""
    project.write("stages/loaded.py", """
        def f(x):
            return x + 1

        def unrelated():
            return 0
    """)
    project.write("stages/lazy_a.py", "def g(x):\n    return x * 10\n")
    project.write("stages/lazy_b.py", "def h(x):\n    return x - 1\n")
    project.write("stages/lazy.py", """
        from orchestrator import stage, PickleCacher
        from stages.counting import count

        @stage(outputs=["a"], cachers=[PickleCacher])
        def uses_loaded(record):
            from stages.loaded import f
            count("uses_loaded")
            return f(1)

        @stage(outputs=["b"], cachers=[PickleCacher])
        def uses_module(record):
            import stages.lazy_a as a
            count("uses_module")
            return a.g(1)

        @stage(outputs=["c"], cachers=[PickleCacher])
        def uses_from(record):
            from stages.lazy_b import h
            count("uses_from")
            return h(1)
    """)
    project.write("experiment.py", """
        import stages.loaded  # loaded while planning
        from stages.lazy import uses_loaded, uses_module, uses_from

        def run(record):
            uses_loaded(record)
            uses_module(record)
            uses_from(record)
    """)
    project.write("params/p.yaml", "n: 1\n")
    project.orch(*RUN)
    _edit(project.root / "stages/loaded.py", "return 0", "return 1")  # a function no stage uses
    project.orch(*RUN)
    assert project.counts() == {"uses_loaded": 1, "uses_module": 1, "uses_from": 1}
    _edit(project.root / "stages/loaded.py", "x + 1", "x + 2")
    project.orch(*RUN)
    assert project.counts() == {"uses_loaded": 2, "uses_module": 1, "uses_from": 1}
    _edit(project.root / "stages/lazy_a.py", "x * 10", "x * 20")
    out = project.orch(*RUN)
    assert project.counts() == {"uses_loaded": 2, "uses_module": 2, "uses_from": 1}
    assert "stages/lazy_a.py" in out.stdout
    _edit(project.root / "stages/lazy_b.py", "x - 1", "x - 2")
    project.orch(*RUN)
    assert project.counts() == {"uses_loaded": 2, "uses_module": 2, "uses_from": 2}
    assert [_load(project, n) for n in "abc"] == [3, 20, -1]


# -- 3. module-level data computed at import -------------------------------------------------------------

def test_module_level_data_loaded_at_import_is_keyed_by_value(project):
    project.write("stages/classes.txt", "cat dog\n")
    project.write("stages/config.json", '{"scale": 2}')
    project.write("stages/labels.py", """
        import json
        from pathlib import Path

        CLASSES = Path(__file__).with_name("classes.txt").read_text().split()
        CONFIG = json.loads(Path(__file__).with_name("config.json").read_text())
    """)
    project.write("stages/use.py", """
        from orchestrator import stage, JsonCacher
        from stages.counting import count
        from stages.labels import CLASSES, CONFIG

        @stage(outputs=["n"], cachers=[JsonCacher])
        def n_classes(record):
            count("n_classes")
            return len(CLASSES) * CONFIG["scale"]
    """)
    project.write("experiment.py", "from stages.use import n_classes\n\ndef run(record):\n    n_classes(record)\n")
    project.write("params/p.yaml", "n: 1\n")
    project.orch(*RUN)
    (project.root / "stages/classes.txt").write_text("cat dog bird\n")
    project.orch(*RUN)
    assert project.counts() == {"n_classes": 2}
    assert _load(project, "n") == 6
    (project.root / "stages/config.json").write_text('{"scale": 3}')
    project.orch(*RUN)
    assert project.counts() == {"n_classes": 3}
    assert _load(project, "n") == 9


# -- 4. an artifact loaded from another run inside a stage -----------------------------------------------

def test_a_stage_that_loads_another_experiments_artifact_reruns_when_it_changes(tmp_path):
    source = Project(tmp_path / "source")
    _write(source.root / "stages/__init__.py", "")
    _write(source.root / "stages/train.py", """
        from orchestrator import stage, JsonCacher

        @stage(outputs=["model"], cachers=[JsonCacher])
        def train(record):
            return {"w": record.params.w}
    """)
    _write(source.root / "experiment.py", "from stages.train import train\n\ndef run(record):\n    train(record)\n")
    _write(source.root / "params/p.yaml", "w: 1\n")
    source.orch(*RUN)
    infer = Project(tmp_path / "infer")
    _write(infer.root / "stages/__init__.py", "")
    _write(infer.root / "stages/counting.py", COUNTING)
    _write(infer.root / "stages/batch.py", f"""
        import orchestrator
        from orchestrator import stage, JsonCacher
        from stages.counting import count

        @stage(outputs=["pred"], cachers=[JsonCacher])
        def predict(record):
            count("predict")
            model = orchestrator.load("model", run="latest", cache={str(source.root / ".orch")!r})
            return model["w"] * 10
    """)
    _write(infer.root / "experiment.py", "from stages.batch import predict\n\ndef run(record):\n    predict(record)\n")
    _write(infer.root / "params/p.yaml", "x: 1\n")
    infer.orch(*RUN)
    infer.orch(*RUN)
    assert infer.counts() == {"predict": 1}
    _write(source.root / "params/p.yaml", "w: 2\n")
    source.orch(*RUN)  # the source experiment re-trains
    out = infer.orch(*RUN)
    assert infer.counts() == {"predict": 2}, out.stdout
    assert "model" in out.stdout
    assert _load(infer, "pred") == 20


# -- 5. equal values, different bytes --------------------------------------------------------------------

def test_an_equal_set_of_strings_keeps_everything_downstream_cached(project):
    project.write("stages/vocab.py", """
        from orchestrator import stage, PickleCacher
        from stages.counting import count

        @stage(outputs=["vocab"], cachers=[PickleCacher])
        def vocab(record):
            count("vocab")
            words = "the quick brown fox jumps over the lazy dog and then some more words".split()
            return {"words": set(words), "tags": [frozenset({"a", "b", "c", "d"})]}

        @stage(inputs=["vocab"], outputs=["size"], cachers=[PickleCacher])
        def size(record, vocab):
            count("size")
            return len(vocab["words"])
    """)
    project.write("experiment.py", "from stages.vocab import vocab, size\n\ndef run(record):\n    size(vocab(record))\n")
    project.write("params/p.yaml", "n: 1\n")
    project.orch(*RUN, env={"PYTHONHASHSEED": "1"})
    _edit(project.root / "stages/vocab.py", 'count("vocab")', 'count("vocab")\n    _unused = 1')
    project.orch(*RUN, env={"PYTHONHASHSEED": "2"})  # another set order in this process
    assert project.counts() == {"vocab": 2, "size": 1}


# -- issue 15: an edit in the same second as the last run -------------------------------------------------

BYTECODE_ON = {"PYTHONDONTWRITEBYTECODE": ""}


def _same_second_edit(path: Path, old: str, new: str) -> None:
    """Rewrite `path` to content of the same size within the second of its current mtime: what a
    script or `sed -i` does right after a run. Python's .pyc check (mtime in whole seconds + size)
    cannot tell the difference."""
    st = path.stat()
    text = path.read_text()
    assert len(old) == len(new) and old in text
    path.write_text(text.replace(old, new))
    second = st.st_mtime_ns - st.st_mtime_ns % 1_000_000_000
    later = min(st.st_mtime_ns + 1_000, second + 999_999_999)
    os.utime(path, ns=(later, later))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns // 10**9 == st.st_mtime_ns // 10**9


def _bytecode_project(project: Project) -> None:
    project.write("stages/helpers.py", """
        K = 2

        def bump(x):
            return x + 100
    """)
    project.write("stages/b.py", """
        from orchestrator import stage, JsonCacher
        from stages.helpers import K, bump

        @stage(outputs=["out"], cachers=[JsonCacher])
        def compute(record):
            return bump(K * 10)
    """)
    project.write("experiment.py", "from stages.b import compute\n\ndef run(record):\n    compute(record)\n")
    project.write("params/p.yaml", "n: 1\n")
    now = time.time_ns()
    for rel in ("stages/helpers.py", "stages/b.py"):  # mid-second, so a same-second edit always fits
        stamp = now - now % 10**9 + 200_000_000
        os.utime(project.root / rel, ns=(stamp, stamp))


def test_a_same_second_same_size_edit_never_stores_the_old_codes_result(project):
    _bytecode_project(project)
    project.orch(*RUN, env=BYTECODE_ON)
    assert _load(project, "out") == 120
    assert list((project.root / "stages" / "__pycache__").glob("helpers.*.pyc"))  # bytecode is on
    _same_second_edit(project.root / "stages/helpers.py", "K = 2", "K = 3")  # a constant
    project.orch(*RUN, env=BYTECODE_ON)
    assert _load(project, "out") == 130
    _same_second_edit(project.root / "stages/helpers.py", "x + 100", "x + 200")  # a helper body
    project.orch(*RUN, env=BYTECODE_ON)
    assert _load(project, "out") == 230
    _same_second_edit(project.root / "stages/b.py", "K * 10", "K * 20")  # the stage body
    project.orch(*RUN, env=BYTECODE_ON)
    assert _load(project, "out") == 260


def test_same_second_edits_in_parallel_workers_run_the_new_code(project):
    """Workers that import the project themselves (forkserver) must execute the hashed code too."""
    _bytecode_project(project)
    env = {**BYTECODE_ON, "ORCH_START_METHOD": "forkserver"}
    project.orch(*RUN, "-j", "2", env=env)
    _same_second_edit(project.root / "stages/helpers.py", "K = 2", "K = 7")
    project.orch(*RUN, "-j", "2", env=env)
    assert _load(project, "out") == 170


def test_same_second_edits_of_an_external_scripts_module_run_the_new_code(project):
    project.write("external/model.py", "FACTOR = 2\n")
    project.write("external/job.py", """
        import json, sys
        from model import FACTOR
        json.dump({"y": FACTOR * 10}, open(sys.argv[1], "w"))
    """)
    project.write("stages/ext.py", """
        import json
        from orchestrator import stage, run_external, JsonCacher

        @stage(outputs=["y"], cachers=[JsonCacher])
        def job(record):
            out = record.get_path("y.json")
            run_external(["external/job.py", out], echo=False)
            return json.load(open(out))["y"]
    """)
    project.write("experiment.py", "from stages.ext import job\n\ndef run(record):\n    job(record)\n")
    project.write("params/p.yaml", "n: 1\n")
    now = time.time_ns()
    stamp = now - now % 10**9 + 200_000_000
    os.utime(project.root / "external/model.py", ns=(stamp, stamp))
    project.orch(*RUN, env=BYTECODE_ON)
    assert _load(project, "y") == 20
    assert list((project.root / "external" / "__pycache__").glob("model.*.pyc"))
    _same_second_edit(project.root / "external/model.py", "FACTOR = 2", "FACTOR = 4")
    project.orch(*RUN, env=BYTECODE_ON)
    assert _load(project, "y") == 40


# -- 6. orch accept --------------------------------------------------------------------------------------

ACCEPT_STAGES = """
from orchestrator import stage, JsonCacher
from stages.counting import count

@stage(outputs=["model"], cachers=[JsonCacher])
def train(record):
    count("train")
    total = 0
    for i in range(record.params.epochs):
        total += i * record.params.lr
    return {"w": total}

@stage(inputs=["model"], outputs=["score"], cachers=[JsonCacher])
def evaluate(record, model):
    count("evaluate")
    return {"score": model["w"] + 1}
"""


def _accept_project(project: Project) -> None:
    project.write("stages/t.py", ACCEPT_STAGES)
    project.write("experiment.py", "from stages.t import train, evaluate\n\ndef run(record):\n    evaluate(train(record))\n")
    project.write("params/p.yaml", "epochs: 4\nlr: 0.5\n")
    project.write("params/sweep.yaml", "extends: p.yaml\nsweep:\n  lr: [0.5, 1.0]\n")
    project.orch(*RUN)
    project.orch("run", "experiment.py", "-p", "params/sweep.yaml")
    project.reset_counts()


def test_orch_accept_rekeys_a_refactored_stage_and_everything_downstream_stays_cached(project):
    _accept_project(project)
    _edit(project.root / "stages/t.py", "total += i * record.params.lr",
          "total += i * record.params.lr  # same math\n        pass")  # a refactor: the AST changed
    assert "code changed: stages/t.py" in project.orch("why", *RUN[1:]).stdout
    dry = project.orch("accept", "experiment.py", "train", "-p", "params/p.yaml", "--dry")
    assert "would accept" in dry.stdout and "train[p]" in dry.stdout
    assert "code changed" in project.orch("why", *RUN[1:]).stdout  # --dry changed nothing
    out = project.orch("accept", "experiment.py", "train", "-p", "params/p.yaml")
    assert "accepted" in out.stdout and "stages/t.py" in out.stdout
    run = project.orch(*RUN)
    assert project.counts() == {}  # nothing ran: train re-keyed, evaluate's input unchanged
    assert "code change accepted by" in run.stdout
    why = project.orch("why").stdout  # the latest run: the acceptance is shown with who and when
    assert "train [p]" in why and "accepted by" in why and "cached after an accepted code change" in why
    report = (project.root / ".orch" / "runs" / project.manifest()["run_id"] / "report.html").read_text()
    assert "code change accepted by" in report
    node = next(n for n in project.manifest()["nodes"] if n["stage"] == "train")
    assert set(node["accepted"]) == {"by", "at", "from_key", "old_code", "new_code"}
    assert node["accepted"]["old_code"] != node["accepted"]["new_code"]
    assert _load(project, "score") == {"score": 4.0}


def test_orch_accept_does_not_rekey_an_entry_that_lacks_an_output_of_its_stage(project):
    """A damaged old entry (its outputs emptied by hand) is no candidate: accepting it would re-key a
    record that the next planning ignores, and report success for nothing."""
    _accept_project(project)
    for path in (project.root / ".orch" / "entries").rglob("*.json"):
        entry = json.loads(path.read_text())
        if entry["stage"] == "stages.t:train" and entry["param_set"] == "p":
            path.chmod(0o644)
            path.write_text(json.dumps({**entry, "outputs": {}}))
    _edit(project.root / "stages/t.py", 'count("train")', 'count("train")  # noted\n    pass')
    out = project.orch("accept", "experiment.py", "train", "-p", "params/p.yaml", check=False)
    assert "Traceback" not in out.stderr and "accepted" not in out.stdout, out.stdout + out.stderr
    assert "it records the outputs [], the stage declares [model]" in out.stderr
    project.orch(*RUN)
    assert project.counts() == {"train": 1}  # it ran; evaluate's input came out the same


def test_orch_accept_covers_every_parameter_set_or_the_one_named(project):
    _accept_project(project)
    _edit(project.root / "stages/t.py", 'count("train")', 'count("train")  # noted\n    pass')
    sweep = ("-p", "params/sweep.yaml")
    one = project.orch("accept", "experiment.py", "train", *sweep, "--param-set", "sweep[lr=0.5]")
    assert "accepted" in one.stdout and "sweep[lr=1.0]" not in one.stdout
    project.orch("run", "experiment.py", *sweep)
    assert project.counts() == {"train": 1}  # the other point re-ran
    bad = project.orch("accept", "experiment.py", "train", *sweep, "--param-set", "nope", check=False)
    assert bad.returncode == 1 and "sweep[lr=0.5]" in bad.stderr and "Traceback" not in bad.stderr
    bad = project.orch("accept", "experiment.py", "trian", *sweep, check=False)
    assert bad.returncode == 1 and "no stage 'trian'" in bad.stderr


def test_orch_accept_refuses_when_more_than_the_code_changed(project):
    _accept_project(project)
    _edit(project.root / "stages/t.py", "i * record.params.lr", "i * record.params.lr * 1.0")
    (project.root / "params/p.yaml").write_text("epochs: 5\nlr: 0.5\n")  # and a parameter train reads
    out = project.orch("accept", "experiment.py", "train", "-p", "params/p.yaml", check=False)
    assert out.returncode == 1 and "refused" in out.stderr and "epochs changed: 4 -> 5" in out.stderr
    project.orch(*RUN)
    assert project.counts() == {"train": 1, "evaluate": 1}  # nothing was accepted: it ran
    nothing = project.orch("accept", "experiment.py", "evaluate", "-p", "params/p.yaml", check=False)
    assert nothing.returncode == 0 and "already cached" in nothing.stdout


def test_a_tracked_file_rewritten_by_an_upstream_stage_during_the_run_is_hashed_again(project):
    """Planning hashes a tracked file once (for `side`, cached); `write` then rewrites it while the
    run goes on and returns the same value (early cutoff). `use`, re-decided after `write`, must see
    the file's new content, not the hash planning took: a hit there would serve the old content."""
    project.write("stages/side.py", '''
        from pathlib import Path

        from orchestrator import JsonCacher, stage
        from stages.counting import count

        @stage(outputs=["done"], cachers=[JsonCacher])
        def write(record):
            count("write")
            Path("shared.txt").write_text(record.params.content)
            return 1

        @stage(inputs=["done"], outputs=["seen"], cachers=[JsonCacher])
        def use(record, done):
            count("use")
            return Path(record.track("shared.txt")).read_text()

        @stage(outputs=["seen"], cachers=[JsonCacher])
        def side(record):
            count("side")
            return Path(record.track("shared.txt")).read_text()
    ''')
    project.write("experiment.py", '''
        from stages.side import side, use, write

        def run(record):
            side(record)
            use(write(record))
    ''')
    project.write("shared.txt", "X")
    project.write("params/p.yaml", "content: X\n")
    project.orch("run", "experiment.py", "-p", "params/p.yaml")
    assert project.counts() == {"write": 1, "use": 1, "side": 1}
    project.reset_counts()
    project.orch("run", "experiment.py", "-p", "params/p.yaml", "-S", "content=Y")
    assert project.counts()["write"] == 1 and project.counts()["use"] == 1
    rows = {r["stage"]: r for r in project.manifest()["nodes"]}
    assert rows["use"]["status"] == "ran"
