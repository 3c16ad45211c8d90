"""`--executor slurm`: every node that must run becomes a Slurm job, submitted through submitit.

The run loop (core.runner) hands over every ready node before it waits (capacity is unbounded), so
submit() only collects: wait() sends what was collected, grouped, then polls. Ready nodes of one
stage asking for the same resources go out as one job array (chunked at the cluster's
MaxArraySize); a lone node is a plain job. A job is one worker (executors.slurmjob): it reads its
inputs from the shared cache and stores its outputs there itself; the pickled TaskResult (with any
in-memory outputs) comes back through submitit's result file. Cached nodes are never submitted:
the runner finishes them without the executor.

A job is finished when its result file exists (a stat per poll, no Slurm call); sacct (through
submitit's watcher, one call for every job) is asked every few seconds only to notice jobs that
ended without one (cancelled, timed out, killed, out of memory), which then fail naming the job,
its node and the tail of its log. Closing with jobs still in flight (Ctrl-C, a crash) cancels them,
or asks first when a person is at the terminal.

Detach and re-attach: each job of a cached stage leaves a record (executors.slurmrecords) named by the
node's lock scope (the computation, whichever run asks for it), removed by whoever collects the job.
With `--detach` the run loop ends once
what is ready is submitted (executors.base.Detached); a later run that must run the same computation
finds the record and, while Slurm still holds that job, waits for it instead of submitting another.
Downstream nodes of a detached run are submitted by that later run. The jobs of a run are listed in
`runs/<id>/slurm.json` for `orch status`.

submitit is imported here only, inside methods: `orch --help` and local runs never load it.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..core.status import Status
from ..errors import OrchError, ResourcesError
from ..resources import DEFAULT_REQUEUE, for_node, time_minutes
from ..resources import check as check_resources
from .base import Detached, Executor
from .slurmrecords import InflightRecords
from .task import Task, TaskResult
from .worker import WorkerConfig, decode_result, encode_task

#: Slurm states after which a job will never write its result file.
ENDED = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                   "DEADLINE", "REVOKED", "PREEMPTED", "VANISHED"})
#: Ended only if it stays so: a COMPLETED job's result file may lag on a shared filesystem, a
#: PREEMPTED job is requeued where the cluster's PreemptMode says so, and VANISHED (neither sacct nor
#: squeue knows the job) covers clusters without accounting.
SETTLING = frozenset({"COMPLETED", "PREEMPTED", "VANISHED"})
SACCT_EVERY = 2.0  # seconds between state checks of the jobs in flight (result files are checked every poll)
#: Seconds a job may stay COMPLETED/PREEMPTED/VANISHED without a result file before its node fails: on
#: a shared filesystem the file may show up late (NFS attribute caching); ORCH_SLURM_RESULT_GRACE.
RESULT_GRACE = 30.0
LOG_TAIL = 15  # lines of a failed job's log in its failure message


@dataclass
class _Job:
    job: Any  # submitit.slurm.slurm.SlurmJob
    node_id: int
    label: str
    ended_seen: float | None = None  # when sacct first said COMPLETED/PREEMPTED while no result file was there
    record: Path | None = None  # its record in <cache>/slurm/inflight/


class SlurmExecutor(Executor):
    def __init__(self, config: WorkerConfig, overrides: dict | None = None,
                 echo: Callable[[str], None] | None = None):
        self.config = config
        overrides = dict(overrides or {})
        self.detach = bool(overrides.pop("detach", False))
        if overrides.pop("quiet", False) and echo is None:  # --quiet: no line per submission or job either
            echo = lambda line: None  # noqa: E731
        self.overrides = check_resources({k: v for k, v in overrides.items() if v is not None},
                                         "--slurm-* options", OrchError)
        self.folder = Path(config.store_root) / "slurm" / "jobs"
        self.records = InflightRecords(Path(config.store_root) / "slurm" / "inflight")
        self._run_jobs: dict[str, str] = {}  # node label -> job id, for runs/<id>/slurm.json
        self.echo = echo or (lambda line: print(line, flush=True))
        self.submitted: list[str] = []  # every job id this run submitted, in order
        self._node_resources: dict[int, dict] = {}
        self._pending: list[tuple[Task, Any, bytes]] = []
        self._in_flight: dict[str, _Job] = {}
        self._done: list[TaskResult] = []
        self._limits = None
        self._last_check = 0.0
        self._snapshot = None  # executors.slurmcode.Snapshot, made at the first submission
        self._warned_squeue = False
        grace = os.environ.get("ORCH_SLURM_RESULT_GRACE", "")
        if grace and not grace.replace(".", "", 1).isdigit():
            raise OrchError(f"ORCH_SLURM_RESULT_GRACE={grace!r}: give a number of seconds")
        self._grace = float(grace) if grace else RESULT_GRACE
        cap = os.environ.get("ORCH_SLURM_MAX_ARRAY", "")
        if cap and (not cap.isdigit() or int(cap) < 1):
            raise OrchError(f"ORCH_SLURM_MAX_ARRAY={cap!r}: give a positive number of tasks per job array")
        self._max_array = int(cap) if cap else None
        self._frozen = False

    @property
    def capacity(self) -> int:
        return 1 << 30  # the queue is Slurm's: hand over everything that is ready

    # -- before the run ---------------------------------------------------------------------------
    def prepare(self, graph) -> None:
        """Each node's resources (declaration < parameter file < run options) and the cluster's limits,
        checked before anything is recorded or submitted."""
        from .slurmctl import cluster_limits

        for node in graph.nodes:
            ps = graph.param_sets.get(node.set_name)
            orch = ps.orch if ps is not None else next(
                (p.orch for p in graph.param_sets.values() if node.stage.name in p.orch.get("resources", {})), {})
            self._node_resources[node.id] = for_node(node.stage, orch, self.overrides)
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise OrchError("--executor slurm needs submitit: pip install 'orch[slurm]' (or pip install submitit)") \
                from None
        self._limits = cluster_limits()
        for node in graph.nodes:
            self._check_nodes(node.stage.name, self._node_resources[node.id])

    def _check_nodes(self, stage: str, res: dict) -> None:
        """A multi-node stage fits its partition (sbatch would say only "Node count specification invalid")."""
        nodes, partition = res.get("nodes", 1), self._limits.partition(res.get("partition"))
        if nodes > 1 and partition is not None and partition.total_nodes and nodes > partition.total_nodes:
            raise ResourcesError(
                f"stage {stage} asks for nodes={nodes}, but partition {partition.name} has "
                f"{partition.total_nodes} node(s): ask for at most {partition.total_nodes} "
                f"(resources={{'nodes': ...}}, or an orch: section), or for a partition with more nodes "
                f"(resources={{'partition': ...}}, --slurm-partition)")

    def start(self, store) -> None:
        from .slurmctl import queued_jobs

        self.folder.mkdir(parents=True, exist_ok=True)
        self.records.dir.mkdir(parents=True, exist_ok=True)
        self.records.prune(queued_jobs)

    # -- submitting ---------------------------------------------------------------------------------
    def submit(self, task: Task, stage) -> None:
        payload = encode_task(task)
        if isinstance(payload, TaskResult):  # an in-memory input that cannot travel
            self._done.append(payload)
        else:
            self._pending.append((task, stage, payload))

    def _flush(self) -> None:
        """Submit what was collected: one array per (stage, resources), chunked at MaxArraySize."""
        groups: dict[tuple, list] = defaultdict(list)
        for task, stage, payload in self._adopt(self._pending):
            res = self._node_resources.get(task.node_id) or for_node(stage, {}, self.overrides)
            groups[(stage.id, tuple(sorted(res.items())))].append((task, stage, payload))
        self._pending = []
        if groups and not self._frozen:
            self._freeze(next(iter(groups.values()))[0][0])
        size = self._array_size()
        for (_, res), items in groups.items():
            for i in range(0, len(items), size):
                self._submit_group(items[i:i + size], dict(res))
        self._write_run_jobs()

    # -- records of jobs in flight: re-attach (executors.slurmrecords) -------------------------------
    def _adopt(self, items: list) -> list:
        """Wait for the jobs of earlier runs still computing what these tasks would (the same lock
        scope, Slurm still holding the job) instead of submitting them again; returns the rest. A
        forced task (--overwrite) is submitted anyway; a record whose job left the queue is dropped
        (the job ended: its result is in the cache, and the planner saw it, or it failed)."""
        from submitit import SlurmJob

        from .slurmctl import queued_jobs

        found = []
        for item in items:
            path = None if item[0].force else self.records.path(item[0].lock_scope)
            found.append((item, path, self.records.read(path)))
        if not any(record for _, _, record in found):
            return items
        queued = queued_jobs()
        rest = []
        for item, path, record in found:
            job_id = str(record.get("job_id", "")) if record else ""
            if job_id and job_id in queued:
                task = item[0]
                self._in_flight[job_id] = _Job(SlurmJob(folder=self.folder / "%j", job_id=job_id), task.node_id,
                                               task.label, record=path)
                self._run_jobs[task.label] = job_id
                self.echo(f"attached to job {job_id}: {task.label} (submitted by run {record.get('run', '?')}, "
                          f"{queued[job_id][0].lower()})")
                continue
            if record:
                path.unlink(missing_ok=True)
            rest.append(item)
        return rest

    def _write_run_jobs(self) -> None:
        from .slurmrecords import write_run_jobs

        if self.run_dir is not None and self._run_jobs:
            write_run_jobs(Path(self.run_dir), self._run_jobs, self.folder)

    def _freeze(self, task: Task) -> None:
        """Copy the project's code into the run directory once, before the first job is submitted."""
        from .slurmcode import freeze

        self._frozen = True
        if self.run_dir is not None and task.code_roots is not None:
            self._snapshot = freeze(task.code_roots, self.config.experiment, Path(self.run_dir) / "code",
                                    self.config.store_root)

    def _array_size(self) -> int:
        """Tasks per array: the cluster's MaxArraySize, or less with ORCH_SLURM_MAX_ARRAY (a site that
        caps arrays by policy; 1 submits one job per node, as the benchmark compares)."""
        size = self._limits.max_array_size if self._limits else 1000
        return max(1, min(size, self._max_array or size))

    def _sbatch_parameters(self, stage, res: dict) -> dict:
        partition = res.get("partition")
        minutes = (time_minutes(res["time"]) if "time" in res
                   else self._limits.default_minutes(partition) if self._limits else None)
        orch_dir = str(Path(__file__).resolve().parents[2])  # the head's orch, first on the job's path
        params = {
            "job_name": f"orch:{stage.name}",
            "time": minutes,
            "partition": partition,
            "account": res.get("account"),
            "qos": res.get("qos"),
            "constraint": res.get("constraint"),
            "cpus_per_task": res.get("cpus"),
            "gpus_per_node": res.get("gpus") or None,
            "mem": (f"{res['mem']}M" if isinstance(res.get("mem"), int) else res.get("mem")),
            "setup": [f"export PYTHONPATH={shlex.quote(orch_dir)}${{PYTHONPATH:+:$PYTHONPATH}}"],
        }
        nodes = res.get("nodes", 1)
        if nodes > 1:  # one task per node, the stage once on the first (executors.slurmlaunch spreads torchrun)
            params.update(nodes=nodes, ntasks_per_node=1, srun_args=["--nodes=1", "--ntasks=1"])
        return {k: v for k, v in params.items() if v is not None}

    def _submit_group(self, items: list, res: dict) -> None:
        import submitit
        from submitit.core.utils import FailedJobError

        from .slurmjob import run_job

        stage = items[0][1]
        try:
            ex = submitit.SlurmExecutor(folder=self.folder / "%j", python=shlex.quote(sys.executable))
            ex.update_parameters(array_parallelism=len(items), **self._sbatch_parameters(stage, res))
            # one item: a plain job; several: one array job (submitit's map_array)
            jobs = ex.map_array(run_job, [self.config] * len(items), [t.node_id for t, _, _ in items],
                                [payload for _, _, payload in items], [self._snapshot] * len(items),
                                [res.get("requeue", DEFAULT_REQUEUE)] * len(items))
        except (FailedJobError, OSError) as e:  # sbatch refused (a partition or account that does not exist, ...)
            for task, _, _ in items:
                self._done.append(TaskResult(task.node_id, Status.FAILED, error_type="SlurmSubmissionError",
                                             error=f"stage {task.label}: sbatch refused the job "
                                                   f"({_describe(res)}): {_first_lines(str(e), 6)}"))
            return
        # a job of several nodes has a task per node, but the node runs in task 0 only (its result)
        jobs = [job.task(0) for job in jobs]
        for (task, _, _), job in zip(items, jobs):
            run = os.path.basename(self.run_dir) if self.run_dir is not None else None
            record = self.records.write(task.lock_scope, job.job_id, task.label, run)
            self._in_flight[job.job_id] = _Job(job, task.node_id, task.label, record=record)
            self._run_jobs[task.label] = job.job_id
            self.submitted.append(job.job_id)
        first = jobs[0].job_id.split("_")[0]
        what = f"array job {first} ({len(jobs)} tasks)" if len(jobs) > 1 else f"job {first}"
        self.echo(f"submitted {stage.name}: {what} [{_describe(res)}]")

    # -- waiting ------------------------------------------------------------------------------------
    def wait(self) -> list[TaskResult]:
        if self._pending:
            self._flush()
        results, self._done = self._done, []
        if self.detach and not results and self._in_flight:
            raise Detached(sorted(self._in_flight))
        delay = 0.05
        while not results:
            if not self._in_flight:
                raise RuntimeError("SlurmExecutor.wait() called with nothing submitted")
            results = self._collect()
            if not results:
                time.sleep(delay)
                delay = min(0.5, delay * 1.5)
        return results

    def _collect(self) -> list[TaskResult]:
        results = [self._finished(jid) for jid, j in list(self._in_flight.items())
                   if j.job.paths.result_pickle.exists()]
        now = time.monotonic()
        if results or now - self._last_check < SACCT_EVERY:
            return results
        self._last_check = now
        watcher = next(iter(self._in_flight.values())).job.watcher
        watcher.update()  # one sacct call for every job in flight
        states = {jid: (watcher.get_state(jid, mode="cache") or "UNKNOWN").split()[0].upper() for jid in self._in_flight}
        if "UNKNOWN" in states.values():
            states.update(self._unknown_to_sacct([jid for jid, state in states.items() if state == "UNKNOWN"]))
        for jid, j in list(self._in_flight.items()):
            state = states[jid]
            if state not in ENDED:
                j.ended_seen = None  # requeued after all
                continue
            if j.job.paths.result_pickle.exists():
                results.append(self._finished(jid))
            elif state not in SETTLING:
                results.append(self._ended_without_result(jid, state))
            elif j.ended_seen is None:
                j.ended_seen = now
            elif now - j.ended_seen > self._grace:
                results.append(self._ended_without_result(jid, state))
        return results

    def _unknown_to_sacct(self, job_ids: list[str]) -> dict[str, str]:
        """Jobs sacct has no record of (just submitted, or a cluster without accounting): those that
        squeue no longer lists have left the queue; "VANISHED" settles like COMPLETED, then fails."""
        from .slurmctl import SlurmUnavailableError, queued_jobs

        try:
            queued = queued_jobs()
        except SlurmUnavailableError as e:  # the controller is busy or restarting: ask again next round
            if not self._warned_squeue:
                print(f"warning: {e}", file=sys.stderr)
                self._warned_squeue = True
            return {}
        return {jid: "VANISHED" for jid in job_ids if jid not in queued}

    def _finished(self, jid: str) -> TaskResult:
        j = self._in_flight.pop(jid)
        self.records.drop(j.record, j.job.job_id)
        try:
            where, data = j.job.result()
            result = decode_result(data)
        except Exception as e:  # the job side failed before running the node (submitit says why)
            return self._failure(j, "JobError", f"the job failed before running the node: {_first_lines(str(e), 12)}")
        result.node_id = j.node_id  # an adopted job was submitted by another run, with its node ids
        self.echo(f"job {where['job']} on {where['host']}: {j.label} {result.status} in {result.duration:.2f}s")
        if result.status == Status.FAILED:
            result.error += self._log_tail(j)
        return result

    def _ended_without_result(self, jid: str, state: str) -> TaskResult:
        j = self._in_flight.pop(jid)
        self.records.drop(j.record, j.job.job_id)
        why = {"CANCELLED": "was cancelled (scancel, or an administrator)",
               "TIMEOUT": "hit its time limit (give the stage a longer resources={'time': ...} or --slurm-time)",
               "OUT_OF_MEMORY": "ran out of memory (give the stage more resources={'mem': ...})",
               "NODE_FAIL": "lost its node",
               "VANISHED": "left Slurm's queue (sacct has no record of it)"}.get(state, f"ended {state}")
        return self._failure(j, "SlurmJobError", f"Slurm job {jid} {why} before the node finished")

    def _failure(self, j: _Job, error_type: str, message: str) -> TaskResult:
        node = self._node_of(j)
        self.echo(f"job {j.job.job_id} on {node}: {j.label} failed")
        return TaskResult(j.node_id, Status.FAILED, error_type=error_type,
                          error=f"stage {j.label}: {message} [Slurm job {j.job.job_id} on {node}]" + self._log_tail(j))

    @staticmethod
    def _node_of(j: _Job) -> str:
        info = j.job.watcher.get_info(j.job.job_id, mode="cache") or {}
        node = info.get("NodeList", "")
        return node if node and node not in ("None", "None assigned") else "no node (it never started)"

    @staticmethod
    def _log_tail(j: _Job) -> str:
        parts = []
        for path in (j.job.paths.stderr, j.job.paths.stdout):
            try:
                lines = Path(path).read_text(errors="replace").splitlines()
            except FileNotFoundError:
                continue
            if lines:
                tail = "\n".join("  " + line for line in lines[-LOG_TAIL:])
                parts.append(f"\nlast lines of the job's log {path}:\n{tail}")
        return "".join(parts) or f"\n(the job left no log in {Path(j.job.paths.stdout).parent})"

    # -- the end ------------------------------------------------------------------------------------
    def close(self, exit_code: int = 0) -> None:
        """Jobs still in flight here mean the run was interrupted (Ctrl-C, SIGTERM) or crashed: cancel them
        (after Ctrl-C at a terminal, ask first); their computations are not wanted by anyone waiting."""
        self._pending = []
        if not self._in_flight and not self.detach:
            from .slurmctl import queued_jobs

            try:  # a run that ended normally: drop the records of jobs that ended meanwhile, uncollected
                self.records.prune(queued_jobs)
            except OrchError as e:
                print(f"warning: {e}", file=sys.stderr)
        if not self._in_flight or self.detach:  # detached: they run on, recorded for re-attaching
            self._in_flight.clear()
            return
        ids = list(self._in_flight)
        from ..interrupts import EXIT_SIGTERM

        if exit_code != EXIT_SIGTERM and sys.stdin.isatty() and sys.stderr.isatty():  # SIGTERM: nobody to ask
            try:
                answer = input(f"\ncancel the {len(ids)} Slurm job(s) of this run still queued or running? [Y/n] ")
            except (KeyboardInterrupt, EOFError):  # another Ctrl-C, a SIGTERM, a closed stdin: nobody answered
                answer = "y"
            if answer.strip().lower() in ("n", "no"):
                print(f"left running: {' '.join(ids)}; what they compute is stored in the cache "
                      f"(a new run finds it there)", file=sys.stderr)
                self._in_flight.clear()
                return
        from .slurmctl import cancel

        trouble = cancel(ids)
        for j in self._in_flight.values():
            self.records.drop(j.record, j.job.job_id)
        print(f"cancelled {len(ids)} Slurm job(s): {' '.join(ids)}" + (f" ({trouble})" if trouble else ""),
              file=sys.stderr)
        self._in_flight.clear()


def _describe(res: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(res.items())) or "default resources"


def _first_lines(text: str, n: int) -> str:
    lines = text.strip().splitlines()
    return "\n".join(lines[:n]) + ("\n..." if len(lines) > n else "")
