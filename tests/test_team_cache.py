"""A cache shared by a team: two real users of one group run against one ORCH_CACHE whose root is
setgid (store/sharing.py). What one stores the other reuses, runs on and can re-store; lock files
work for both; nobody can write into another's object; private umasks (022, 077) do not get in
the way. Needs root (useradd, setpriv): skips with a message elsewhere, must run in CI
(ORCH_REQUIRE_ROOT_TESTS=1)."""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import COUNTING, Project
from faultkit import half_writer_project, need_root

_ORCH_ROOT = str(Path(__file__).resolve().parents[1])


class User:
    """A user created for the test, running orch through setpriv (environment kept as given).

    When this interpreter lives where the user cannot reach it (a python under /root, mode 0700),
    the user keeps CAP_DAC_READ_SEARCH only: it may read and traverse anything, but every write, and
    so every permission this test is about, is checked as for that user; read permissions are
    then asserted from the file modes."""

    def __init__(self, name: str, group: str, umask: int):
        self.name, self.group, self.umask = name, group, umask
        self.uid = int(subprocess.run(["id", "-u", name], capture_output=True, text=True, check=True).stdout)
        self.caps: list[str] = []
        if self._run([sys.executable, "-c", "pass"]).returncode != 0:
            self.caps = ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]

    def _run(self, argv, env=None, cwd=None) -> subprocess.CompletedProcess:
        return subprocess.run(["setpriv", f"--reuid={self.name}", f"--regid={self.group}", "--init-groups",
                               *self.caps, *argv], capture_output=True, text=True, env=env, cwd=cwd, timeout=120,
                              preexec_fn=lambda: os.umask(self.umask))

    def orch(self, project: Project, cache: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        env = {**os.environ, "ORCH_CACHE": str(cache), "ORCH_COUNTS": str(project.counts_file),
               "PYTHONDONTWRITEBYTECODE": "1",
               "PYTHONPATH": os.pathsep.join(p for p in (_ORCH_ROOT, os.environ.get("PYTHONPATH")) if p)}
        out = self._run([sys.executable, "-m", "orchestrator.cli", *args], env=env, cwd=project.root)
        if check and out.returncode != 0:
            raise AssertionError(f"{self.name}: orch {' '.join(args)} exited {out.returncode}\n{out.stdout}\n{out.stderr}")
        return out

    def python(self, code: str) -> subprocess.CompletedProcess:
        return self._run([sys.executable, "-c", code])


@pytest.fixture
def team():
    """Two users in one new group, removed afterwards."""
    need_root("creating users (useradd)")
    if shutil.which("useradd") is None or shutil.which("setpriv") is None:
        pytest.skip("useradd/setpriv not installed")
    tag = secrets.token_hex(3)
    group, names = f"orcht{tag}", [f"orcha{tag}", f"orchb{tag}"]
    made: list[list[str]] = []
    try:
        for argv in (["groupadd", group], *[["useradd", "-M", "-N", "-g", group, "-s", "/usr/sbin/nologin", n] for n in names]):
            out = subprocess.run(argv, capture_output=True, text=True)
            if out.returncode != 0:
                if os.environ.get("ORCH_REQUIRE_ROOT_TESTS") == "1":
                    pytest.fail(f"{' '.join(argv)} failed: {out.stderr}")
                pytest.skip(f"{' '.join(argv)} is not permitted here: {out.stderr.strip()}")
            made.append(["groupdel", group] if argv[0] == "groupadd" else ["userdel", argv[-1]])
        yield group, [User(names[0], group, 0o022), User(names[1], group, 0o077)]
    finally:
        for argv in reversed(made):
            subprocess.run(argv, capture_output=True)


@pytest.fixture
def shared(team):
    """A project everyone can read and a group-shared cache (setgid root, group rwx, nothing for others)."""
    group, users = team
    base = Path(tempfile.mkdtemp(prefix="orch-team-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        project = Project(base / "proj")
        project.root.mkdir()
        project.write("stages/__init__.py", "")
        project.write("stages/counting.py", COUNTING)
        project.counts_file.touch()
        os.chmod(project.counts_file, 0o666)
        cache = base / "cache"
        cache.mkdir()
        shutil.chown(cache, group=group)
        os.chmod(cache, 0o2770)
        yield project, cache, users
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_two_users_share_one_cache(shared):
    project, cache, (alice, bob) = shared
    args = half_writer_project(project, sets=(1, 2), mb=1)
    first = alice.orch(project, cache, *args)
    assert "6 nodes: 6 ran" in first.stdout
    gid = cache.stat().st_gid
    for path in cache.rglob("*"):
        st = path.lstat()
        if path.parent.name == "tmp" and stat.S_ISDIR(st.st_mode):
            continue  # a run's private staging directory
        assert st.st_gid == gid, f"{path} is not in the team's group"
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISDIR(st.st_mode) and "objects" not in path.relative_to(cache).parts[1:]:
            assert mode & 0o2070 == 0o2070, f"{path}: {oct(mode)}, want g+rwxs"
        elif stat.S_ISREG(st.st_mode):
            assert mode & 0o040, f"{path}: {oct(mode)} is not group-readable"
            if path.suffix == ".lock":
                assert mode & 0o020, f"{path}: {oct(mode)}: a lock file the group cannot open for writing"
    objects = [p for p in (cache / "objects").rglob("*") if p.is_file()]
    assert objects and all(stat.S_IMODE(p.stat().st_mode) == 0o444 and p.stat().st_uid == alice.uid for p in objects)

    # bob: alice's results are his (nothing runs), new nodes run in the same cache, and he can
    # recompute (and re-store) one of alice's nodes, under her lock file
    project.reset_counts()
    project.counts_file.touch()
    os.chmod(project.counts_file, 0o666)
    assert "6 nodes: 6 cached" in bob.orch(project, cache, *args).stdout
    assert project.counts() == {}
    more = bob.orch(project, cache, "run", "experiment.py", "-p", "params/p.yaml", "-S", "mb=2")
    assert "6 nodes: 4 ran, 2 cached" in more.stdout
    again = bob.orch(project, cache, *args, "--overwrite-stage", "size")
    assert "2 ran, 4 cached" in again.stdout
    assert project.counts() == {"big": 2, "size": 4}

    # nobody writes into another's finished object
    target = objects[0]
    denied = bob.python(f"open({str(target)!r}, 'r+b')")
    assert denied.returncode != 0 and "PermissionError" in denied.stderr
    assert bob.python(f"import os; os.chmod({str(target)!r}, 0o644)").returncode != 0

    # and alice finds bob's results, written with his private umask 077
    project.reset_counts()
    project.counts_file.touch()
    os.chmod(project.counts_file, 0o666)
    assert "6 nodes: 6 cached" in alice.orch(project, cache, "run", "experiment.py", "-p", "params/p.yaml",
                                            "-S", "mb=2").stdout
    assert project.counts() == {}
    runs = alice.orch(project, cache, "runs").stdout
    assert runs.count(" ok ") == 5  # every run, whoever ran it
    assert "0 damaged" in alice.orch(project, cache, "cache", "verify").stdout


def test_a_member_sets_aside_another_members_damaged_directory_object(shared):
    """A directory object is sealed by its owner (0555): a group member cannot make it writable, so
    cannot move it into quarantine/ (moving a directory to another parent rewrites its `..`). When
    it is damaged, the member's run sets it aside within its shard, recomputes the producer and
    stores a good copy under the name, and the consumer sees the right content."""
    project, cache, (alice, bob) = shared
    project.write("experiment.py", '''
        from pathlib import Path
        from orchestrator import stage, FileReferenceCacher, JsonCacher
        from stages.counting import count

        @stage(outputs=["tree"], cachers=[FileReferenceCacher(expect="dir")])
        def make(record):
            count("make")
            d = Path(record.get_dir("tree"))
            for i in range(3):
                (d / f"part{i}.txt").write_text(f"part {i} of {record.params.n}\\n")
            return str(d)

        @stage(inputs=["tree"], outputs=["text"], cachers=[JsonCacher])
        def read(record, tree):
            text = "".join(p.read_text() for p in sorted(Path(tree).iterdir()))
            count("read:" + text.splitlines()[1].replace(" ", "_"))  # what the consumer saw
            return text

        def run(record):
            read(make(record))
    ''')
    project.write("params/p.yaml", "n: 7\n")
    args = ("run", "experiment.py", "-p", "params/p.yaml")
    assert "2 nodes: 2 ran" in alice.orch(project, cache, *args).stdout
    trees = [p for p in (cache / "objects").glob("*/*") if p.is_dir()]
    assert len(trees) == 1 and trees[0].stat().st_uid == alice.uid
    tree = trees[0]
    assert stat.S_IMODE(tree.stat().st_mode) == 0o555
    assert bob.python(f"import os; os.chmod({str(tree)!r}, 0o755)").returncode != 0  # bob cannot unseal it

    part = tree / "part1.txt"  # damage it as root: a disk error, or someone with rights
    os.chmod(part, 0o644)
    part.write_text("part 1 of 8\n")
    os.chmod(part, 0o444)

    project.reset_counts()
    project.counts_file.touch()
    os.chmod(project.counts_file, 0o666)
    out = bob.orch(project, cache, *args, "--overwrite-stage", "read")
    assert project.counts() == {"make": 1, "read:part_1_of_7": 1}, out.stdout + out.stderr
    assert "damaged" in out.stderr
    aside = [p for p in tree.parent.iterdir() if p.name.startswith(".damaged-")]
    assert len(aside) == 1 and (aside[0] / "part1.txt").read_text() == "part 1 of 8\n"
    assert tree.is_dir() and tree.stat().st_uid == bob.uid  # the good copy, stored by bob
    assert (tree / "part1.txt").read_text() == "part 1 of 7\n"
    assert "0 damaged" in alice.orch(project, cache, "cache", "verify").stdout
