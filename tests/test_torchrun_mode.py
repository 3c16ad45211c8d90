"""`torchrun --nproc_per_node 2 orch run ...`: a `distributed=True` stage runs on every rank together
(gloo on CPU), every other stage on rank 0 only; only rank 0 writes and reports."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
TORCHRUN = Path(sys.executable).with_name("torchrun")
if not TORCHRUN.exists():  # pragma: no cover
    pytest.skip("torchrun not found", allow_module_level=True)
_script = Path(sys.executable).with_name("orch")
ORCH = [str(_script)] if _script.exists() else ["-m", "orchestrator.cli"]

STAGES = '''
import os
from orchestrator import stage, PickleCacher, JsonCacher

def count(name):
    with open(os.environ["ORCH_COUNTS"], "a") as f:
        f.write(name + "\\n")

@stage(outputs=["data"], cachers=[PickleCacher])
def make_data(record):
    count("make_data@" + os.environ["RANK"])
    return [float(i) for i in range(record.params.n)]

@stage(inputs=["data"], outputs=["total"], cachers=[JsonCacher], distributed=True)
def reduce_sum(record, data):
    import torch
    import torch.distributed as dist
    from orchestrator.distributed import init_process_group

    info = init_process_group()
    count(f"reduce_sum@{info.rank}")
    if record.params.get("fail_rank", -1) == info.rank:
        raise RuntimeError(f"boom on rank {info.rank}")
    shard = torch.tensor(data[info.rank::info.world_size]).sum()  # each rank its half
    dist.all_reduce(shard)
    return {"total": float(shard), "world": info.world_size, "backend": info.backend}

@stage(inputs=["total"], outputs=["report"], cachers=[JsonCacher])
def report(record, total):
    count("report@" + os.environ["RANK"])
    return {"total": total["total"]}
'''


def torchrun(project, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "ORCH_COUNTS": str(project.counts_file), "PYTHONDONTWRITEBYTECODE": "1",
           "ORCH_TORCHRUN_GRACE": "10", "OMP_NUM_THREADS": "1"}
    env.pop("ORCH_CACHE", None)
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", *ORCH, *args]
    return subprocess.run(cmd, cwd=project.root, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def ddp_project(project):
    project.write("stages/ddp.py", STAGES)
    project.write("experiment.py", '''
        from stages.ddp import make_data, reduce_sum, report

        def run(record):
            report(reduce_sum(make_data(record)))
    ''')
    project.write("params/p.yaml", "n: 10\n")
    project.write("params/fail1.yaml", "n: 12\nfail_rank: 1\n")
    return project


def test_distributed_stage_runs_on_every_rank_and_the_rest_on_rank_0(ddp_project):
    p = ddp_project
    out = torchrun(p, "run", "experiment.py", "-p", "params/p.yaml")
    assert out.returncode == 0, out.stdout + out.stderr
    # data once (rank 0), the distributed stage once per rank, together; report on rank 0
    assert p.counts() == {"make_data@0": 1, "reduce_sum@0": 1, "reduce_sum@1": 1, "report@0": 1}
    m = p.manifest()
    node = next(n for n in m["nodes"] if n["stage"] == "reduce_sum")
    h = node["outputs"]["total"]
    (path,) = glob.glob(str(p.root / ".orch" / "objects" / h[:2] / (h[2:] + "*")))
    assert json.loads(Path(path).read_text()) == {"total": 45.0, "world": 2, "backend": "gloo"}
    assert out.stdout.count("3 nodes: 3 ran") == 1  # only rank 0 prints
    assert len([r for r in (p.root / ".orch" / "runs").iterdir() if r.name != "latest"]) == 1
    assert not list((p.root / ".orch" / "tmp").glob("torchrun-*"))  # the ranks' channel is cleaned up

    again = torchrun(p, "run", "experiment.py", "-p", "params/p.yaml")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "3 nodes: 3 cached" in again.stdout
    assert p.counts() == {"make_data@0": 1, "reduce_sum@0": 1, "reduce_sum@1": 1, "report@0": 1}


def test_a_failure_on_rank_1_fails_the_node_and_every_rank(ddp_project):
    p = ddp_project
    out = torchrun(p, "run", "experiment.py", "-p", "params/fail1.yaml", timeout=90)  # a hang: TimeoutExpired
    assert out.returncode != 0
    assert "boom on rank 1 [on torchrun rank 1" in out.stderr
    statuses = p.statuses()
    assert statuses[("make_data", "fail1")] == "ran"
    assert statuses[("reduce_sum", "fail1")] == "failed" and statuses[("report", "fail1")] == "skipped"
    # make_data's entry is stored, and nothing of the failed distributed stage or what follows it
    stored = [json.loads(f.read_text())["stage"] for f in p.root.joinpath(".orch", "entries").rglob("*.json")]
    assert stored == ["stages.ddp:make_data"]


def test_init_process_group_outside_torchrun_is_a_group_of_one():
    code = ("from orchestrator.distributed import init_process_group\n"
            "a = init_process_group(); b = init_process_group()\n"
            "assert (a.rank, a.world_size, a.backend, str(a.device)) == (0, 1, 'gloo', 'cpu'), a\n"
            "assert b == a\n"
            "import torch, torch.distributed as dist\n"
            "t = torch.ones(2); dist.all_reduce(t); assert t.tolist() == [1.0, 1.0]\n"
            "dist.destroy_process_group()\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
