"""torchrun spread over a multi-node Slurm allocation (executors.slurmlaunch, run_external), without a
cluster: `srun` and `scontrol` are stand-ins on PATH that record their arguments, so what is checked is
the exact argument list run_external starts. The real thing runs in tests/test_slurm_multinode.py."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from orchestrator import run_external
from orchestrator.errors import ExternalCommandError
from orchestrator.executors.external import _nodes, clean_env
from orchestrator.executors.slurmlaunch import NODES_VAR, allocation, srun_prefix

PY = sys.executable


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """`srun` writing its argv as JSON to srun.json; `scontrol` answering for nodes gpu[3-4] at 10.1.0.3/4."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(textwrap.dedent(f'''\
        #!{PY}
        import json, os, sys
        json.dump({{"argv": sys.argv[1:], "nodes_var": os.environ.get("{NODES_VAR}")}},
                  open(os.path.join("{tmp_path}", "srun.json"), "w"))
    '''))
    (bin_dir / "scontrol").write_text(textwrap.dedent('''\
        #!/bin/sh
        case "$1 $2" in
            "show hostnames") [ "$3" = "gpu[3-4]" ] && printf 'gpu3\\ngpu4\\n' ;;
            "show node") echo "NodeName=$3 Arch=x86_64 NodeAddr=10.1.0.${3#gpu} NodeHostName=$3 OS=Linux 6.1" ;;
            *) exit 1 ;;
        esac
    '''))
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    monkeypatch.setenv(NODES_VAR, "2")
    monkeypatch.setenv("SLURM_JOB_ID", "4711")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[3-4]")
    monkeypatch.setenv("SLURMD_NODENAME", "gpu3")
    (tmp_path / "train.py").write_text("print('ran on this node')\n")
    return tmp_path


def _srun(tmp_path) -> dict:
    return json.loads((tmp_path / "srun.json").read_text())


def test_torchrun_in_a_two_node_job_runs_through_srun_on_every_node(fake_slurm):
    res = run_external([fake_slurm / "train.py", "--lr", 0.1], nproc=4, cwd=fake_slurm, echo=False)
    got = _srun(fake_slurm)
    argv = got["argv"]
    assert argv[:argv.index(PY)] == ["--nodes", "2", "--ntasks", "2", "--ntasks-per-node", "1", "--overlap",
                                     "--kill-on-bad-exit=1"]
    torchrun = argv[argv.index(PY):]
    endpoint = torchrun[torchrun.index("--rdzv_endpoint") + 1]
    host, port = endpoint.split(":")
    assert host == "10.1.0.3"  # the first node, at its NodeAddr
    # a port the job id picks (29500 + 4711 % 1000) or the next free one, below Linux's default ephemeral range
    assert 30211 <= int(port) < 30500
    assert torchrun == [PY, "-m", "torch.distributed.run", "--nnodes", "2", "--rdzv_backend", "c10d",
                        "--rdzv_endpoint", endpoint, "--rdzv_id", "4711", "--nproc_per_node", "4",
                        str(fake_slurm / "train.py"), "--lr", "0.1"]
    assert res.command[0] == "srun"
    assert got["nodes_var"] is None  # what the job body launches does not own the allocation


def test_the_rendezvous_port_skips_a_port_taken_on_the_first_node(fake_slurm):
    """A real listener on the port the job id picks: the next one goes to torchrun."""
    import socket

    from orchestrator.executors.slurmlaunch import free_port

    first = free_port(711)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("", first))
        taken.listen()
        run_external([fake_slurm / "train.py"], nproc=1, cwd=fake_slurm, echo=False)
        argv = _srun(fake_slurm)["argv"]
    port = int(argv[argv.index("--rdzv_endpoint") + 1].split(":")[1])
    assert port != first and 30211 <= port < 30500


def test_free_port_probes_up_and_wraps_within_its_span(monkeypatch):
    """Which ports bind is made up here (no real socket), so every case is exact."""
    import socket

    from orchestrator.executors import slurmlaunch

    busy: set[int] = set()
    tried: list[int] = []

    def bind(sock, address):
        tried.append(address[1])
        if address[1] in busy:
            raise OSError(98, "Address already in use")

    monkeypatch.setattr(socket.socket, "bind", bind)
    assert slurmlaunch.free_port(711) == 30211
    busy.update({30211, 30212})
    assert slurmlaunch.free_port(711) == 30213
    busy.add(30499)
    assert slurmlaunch.free_port(999) == 29500  # wraps to the start of the span, never past its end
    busy.update(range(29500, 30500))
    tried.clear()
    assert slurmlaunch.free_port(42) == 29542  # all taken: the job's own port, torchrun then says so
    assert sorted(tried) == list(range(29500, 30500))  # every port of the span was tried once


def test_an_explicit_endpoint_and_nnodes_equal_to_the_allocation_are_kept(fake_slurm):
    run_external([fake_slurm / "train.py"], nproc=1, nnodes=2, rdzv_endpoint="gpu3:29400", rdzv_id="mine",
                 cwd=fake_slurm, echo=False)
    argv = _srun(fake_slurm)["argv"]
    assert argv[argv.index("--rdzv_endpoint") + 1] == "gpu3:29400" and argv[argv.index("--rdzv_id") + 1] == "mine"


def test_nnodes_1_and_non_torchrun_launches_stay_on_this_node(fake_slurm, capsys):
    res = run_external([fake_slurm / "train.py"], cwd=fake_slurm, echo=False)  # python, not torchrun
    assert res.command == [PY, str(fake_slurm / "train.py")]
    assert not (fake_slurm / "srun.json").exists()
    assert _nodes("torchrun", 1) == (1, None)  # torchrun --standalone here (not started: it imports torch)
    assert _nodes("torchrun", None)[0] == 2 and _nodes("python", None) == (1, None)


def test_nnodes_other_than_the_allocation_is_refused_saying_what_to_do(fake_slurm):
    with pytest.raises(ExternalCommandError, match=r"run_external\(nnodes=3\): this Slurm job has 2 nodes .*"
                                                   r"leave nnodes out .* nnodes=1 .*resources=\{'nodes': \.\.\.\}"):
        run_external([fake_slurm / "train.py"], nproc=1, nnodes=3, cwd=fake_slurm, echo=False)
    assert not (fake_slurm / "srun.json").exists()


def test_allocation_is_only_the_job_bodys():
    assert allocation({NODES_VAR: "3", "SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "n[1-3]"}).nodes == 3
    # an `orch run` that srun started on several nodes (MPI ranks): not the body of an orch job
    assert allocation({"SLURM_JOB_NUM_NODES": "4", "SLURM_JOB_ID": "7"}) is None
    assert allocation({NODES_VAR: "1"}) is None
    assert srun_prefix(3)[:3] == ["srun", "--nodes", "3"]
    assert NODES_VAR not in clean_env({NODES_VAR: "2", "PATH": "/bin"})
