"""The run report of a large sweep with metrics and images: 250 parameter sets x 4 stages (1,000 nodes),
`train` logging 3 metrics for 1,000 steps in every set (250,000 stream lines) and `plot` storing a PNG
in a directory output in every set. One real `orch run`, then write_report timed on its manifest.

Goal: the report stays well under a second (it is written at the end of every run) and a few MB.
"""

from __future__ import annotations

import sys
import tempfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_scale import time_report  # noqa: E402
from common import env_info, time_cli  # noqa: E402

STAGES = '''
import struct
import zlib

from orchestrator import FileReferenceCacher, JsonCacher, PickleCacher, stage


def write_png(path, width, height, seed):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\\0" + bytes((x * seed + y * 7) % 256 for x in range(width * 3)) for y in range(height))
    with open(path, "wb") as f:
        f.write(b"\\x89PNG\\r\\n\\x1a\\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@stage(outputs=["data"], cachers=[PickleCacher])
def prep(record):
    return record.params.seed


@stage(inputs=["data"], outputs=["model"], cachers=[PickleCacher])
def train(record, data):
    lr, loss = record.params.lr, 10.0
    for step in range(record.params.steps):
        loss *= 1 - lr * (1 + (step * 7919 + data) % 13 / 100)
        record.log(step=step, loss=loss, acc=1 - loss / 10, lr=lr)
    return loss


@stage(inputs=["model"], outputs=["evaluation"], cachers=[JsonCacher])
def evaluate(record, model):
    return {"rel_l2": model / 10}


@stage(inputs=["model"], outputs=["plots"], cachers=[FileReferenceCacher(expect="dir")])
def plot(record, model):
    out = record.get_dir("plots")
    write_png(f"{out}/loss.png", 200, 120, record.params.seed + 1)
    return out
'''


def write_project(root: Path, sets: int, steps: int) -> Path:
    (root / "stages").mkdir(parents=True)
    (root / "stages" / "__init__.py").write_text("")
    (root / "stages" / "s.py").write_text(STAGES)
    (root / "experiment.py").write_text(textwrap.dedent('''
        from stages.s import evaluate, plot, prep, train

        def run(record):
            model = train(prep(record))
            evaluate(model)
            plot(model)
    '''))
    (root / "params").mkdir()
    seeds = ", ".join(str(i) for i in range(sets // 10))
    (root / "params" / "p.yaml").write_text(f"seed: 0\nlr: 0.01\nsteps: {steps}\nsweep:\n  seed: [{seeds}]\n"
                                            f"  lr: [0.001, 0.002, 0.003, 0.005, 0.007, 0.01, 0.02, 0.03, 0.05, 0.07]\n")
    return root


def main(sets: int = 250, steps: int = 1000) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = write_project(Path(tmp) / "proj", sets, steps)
        first, _, _ = time_cli(["run", "experiment.py", "-p", "params/p.yaml", "-q"], root, repeat=1)
        run_dir = (root / ".orch" / "runs" / "latest").resolve()
        report = time_report(run_dir / "manifest.json")
        cpu = cpu_report(run_dir / "manifest.json")
        size = (run_dir / "report-bench.html").stat().st_size
        streams = sum(p.stat().st_size for p in (run_dir / "metrics").iterdir())
    print(f"[{env_info()}]")
    print(f"{sets * 4} nodes ({sets} sets x 4 stages, {steps} steps x 3 metrics logged per set, "
          f"{streams / 1e6:.0f} MB of streams): first run {first:.2f} s")
    print(f"{sets * 4} nodes, writing the run's HTML report: median {report * 1000:.0f} ms "
          f"({cpu * 1000:.0f} ms of CPU), {size / 1e6:.1f} MB")


def cpu_report(manifest_path: Path, repeat: int = 7) -> float:
    """Median CPU seconds of render (what a loaded machine's wall clock blurs)."""
    import json
    import statistics
    import time

    from orchestrator.runs.report import render

    manifest = json.loads(manifest_path.read_text())
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        render(manifest)
        times.append(time.process_time() - t0)
    return statistics.median(times)


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
