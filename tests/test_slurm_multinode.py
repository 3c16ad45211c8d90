"""`resources={"nodes": N}` under `--executor slurm`: torchrun across a real multi-node allocation.

The test cluster (tests/slurm/start-cluster.sh) has a partition `multi` of two emulated nodes (two more
slurmd processes on this machine, `slurmd -N orchn1/orchn2`): Slurm allocates, launches and accounts
them as two nodes (SLURMD_NODENAME, SLURM_NODEID), they share this machine's cores and filesystem.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from test_slurm import _cluster_problem, _ended, _submitted, require_cluster

MULTI = ("orchn1", "orchn2")


def _multi_problem() -> str | None:
    problem = _cluster_problem()
    if problem is not None:
        return problem
    rows = subprocess.run(["sinfo", "-h", "-N", "-p", "multi", "-o", "%N %t"], capture_output=True,
                          text=True).stdout.split("\n")
    up = {r.split()[0] for r in rows if r.strip() and r.split()[1] in ("idle", "mix", "alloc", "comp")}
    if set(MULTI) - up:
        return f"partition multi lacks nodes {', '.join(sorted(set(MULTI) - up))} (up: {sorted(up) or 'none'})"
    return None


@pytest.fixture(autouse=True, scope="module")
def _slurm_cluster():
    require_cluster(_multi_problem(), "the test cluster")


DIST = '''
import json
import os
import sys

import torch
import torch.distributed as dist

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
total = torch.tensor([float(rank + 1)])
dist.all_reduce(total)  # 1 + 2: both ranks took part
seen = [None] * world
dist.all_gather_object(seen, {"rank": rank, "node": os.environ["SLURMD_NODENAME"], "node_id": os.environ["SLURM_NODEID"],
                              "group_rank": int(os.environ["GROUP_RANK"]), "job": os.environ["SLURM_JOB_ID"]})
if rank == 0:  # outputs are written by rank 0 only
    with open(sys.argv[1], "w") as f:
        json.dump({"world": world, "sum": total.item(), "ranks": seen}, f)
print(f"rank {rank} of {world} on {os.environ['SLURMD_NODENAME']}")
dist.destroy_process_group()
'''

STAGE = '''
import json
import os
from orchestrator import stage, run_external, JsonCacher
from stages.counting import count

@stage(outputs=["ranks"], cachers=[JsonCacher], resources={"nodes": 2, "cpus": 1, "partition": "multi",
                                                             "time": "00:10:00"})
def spread(record):
    count("spread")
    out = record.get_path("ranks.json")
    run_external(["external/dist.py", out], nproc=1, timeout=180)
    with open(out) as f:
        found = json.load(f)
    found["body"] = os.environ["SLURMD_NODENAME"]  # where the stage itself ran
    return found
'''


def test_a_two_node_stage_runs_torchrun_on_both_nodes_and_is_cached(project):
    project.write("external/dist.py", DIST)
    project.write("stages/multi.py", STAGE)
    project.write("experiment.py", "from stages.multi import spread\n\ndef run(record):\n    spread(record)\n")
    project.write("params/p.yaml", "n: 1\n")
    args = ["run", "experiment.py", "-p", "params/p.yaml", "--executor", "slurm"]
    first = project.orch(*args, timeout=300)
    ((job, tasks),) = _submitted(first.stdout, "spread")
    assert tasks == 1 and "nodes=2" in first.stdout, first.stdout
    (row,) = _ended(job, 1, "JobID,State,NNodes,NodeList")
    assert (row["State"], row["NNodes"]) == ("COMPLETED", "2"), row
    project.orch("get", "ranks", "-o", "ranks.json")
    found = json.loads((project.root / "ranks.json").read_text())
    assert found["world"] == 2 and found["sum"] == 3.0, found
    ranks = sorted(found["ranks"], key=lambda r: r["rank"])
    assert {r["node"] for r in ranks} == set(MULTI)  # one rank on each node of the allocation
    assert {r["node_id"] for r in ranks} == {"0", "1"} and {r["group_rank"] for r in ranks} == {0, 1}
    assert {r["job"] for r in ranks} == {job}
    assert found["body"] == MULTI[0]  # the stage ran once, on the first node
    assert project.counts() == {"spread": 1}
    assert f"job {job} on {MULTI[0]}: spread[p] ran in" in first.stdout, first.stdout

    project.reset_counts()
    second = project.orch(*args)
    assert "submitted" not in second.stdout and project.counts() == {}, second.stdout
    assert set(project.statuses().values()) == {"cached"}


def test_more_nodes_than_the_partition_has_is_refused_before_anything_is_submitted(project):
    project.write("stages/multi.py", STAGE)
    project.write("experiment.py", "from stages.multi import spread\n\ndef run(record):\n    spread(record)\n")
    project.write("params/p.yaml", "n: 1\norch:\n  resources:\n    spread: {nodes: 3}\n")
    args = ["run", "experiment.py", "-p", "params/p.yaml", "--executor", "slurm"]
    for extra in ((), ("--dry",)):
        proc = project.orch(*args, *extra, check=False)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert "stage spread asks for nodes=3, but partition multi has 2 node(s): ask for at most 2" in proc.stderr
    assert "submitted" not in proc.stdout and not (project.root / ".orch" / "runs").exists()
