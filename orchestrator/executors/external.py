"""run_external(): launch a training script (under torchrun or python) or any program from a stage.

GPU training rarely belongs inside the orchestrator's own process: torchrun relaunches its command
once per GPU. So a stage builds a command line from parameters and input paths, runs it here, and
loads what it wrote back as artifacts. This module makes that launch safe and debuggable:

- list arguments only (never a shell), each value str()-ed, so a path with a space is one argument;
- the launched script's content goes into the running stage's trace, so editing it re-runs the stage;
- output is streamed live to the console and appended to the node's log in the run directory;
- a failure raises ExternalCommandError with the exact command line, exit code and log path, and the
  output's last lines when they were not streamed already (echo=False); they are its `tail` always;
- a timeout, Ctrl-C or failure of the caller kills the child's whole process group (torchrun workers
  included), so no stray trainer keeps a GPU busy;
- the child does not inherit the parent's MPI/torchrun identity (an `mpiexec -n 64 orch run` rank
  launching torchrun must not look like rank 17 of a 64-process job to it).

Importing this module is cheap: subprocess and threading are imported when a command runs.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

from ..errors import ExternalCommandError
from .reaper import guard_group

if TYPE_CHECKING:
    import collections
    import threading

__all__ = ["run_external", "ExternalResult", "clean_env", "build_command", "LAUNCHERS", "TAIL_LINES"]

LAUNCHERS = ("torchrun", "python", "none")
TAIL_LINES = 50
#: Seconds between SIGTERM and SIGKILL when a process group is stopped (torchrun forwards SIGTERM
#: to its workers, which may want to finish writing a checkpoint).
KILL_GRACE_S = 5.0

# Variables that make a process believe it is a rank of the parent's MPI job: an MPI library (or
# mpi4py, or torch's MPI backend) in the child would try to join that job. MPICH_*/I_MPI_* and
# OMPI_MCA_* are mostly user configuration, but Open MPI also passes its job wiring through
# OMPI_MCA_* (ess, hnp uri), so all of OMPI_* goes; MPICH_*/I_MPI_* tuning is kept because the
# launch state of MPICH and Intel MPI lives in PMI_*/MPI_LOCAL*/HYDRA_*, which go.
_MPI_PREFIXES = ("OMPI_", "PMI_", "PMIX_", "HYDRA_", "HYDI_", "MV2_COMM_WORLD_", "PALS_", "MPIRUN_")
_MPI_NAMES = {
    "MPI_LOCALRANKID", "MPI_LOCALNRANKS", "PMI_RANK", "PMI_SIZE",
    # Slurm's per-task identity (the job-level SLURM_* stay, so srun and job info keep working):
    # frameworks such as Lightning read SLURM_PROCID as the global rank.
    "SLURM_PROCID", "SLURM_LOCALID",
}
# A torchrun/torch.distributed identity inherited from a parent that itself runs under torchrun.
_TORCH_PREFIXES = ("TORCHELASTIC_",)
_TORCH_NAMES = {
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
    "ROLE_RANK", "ROLE_NAME", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCH_NCCL_ASYNC_ERROR_HANDLING",
}
# orch's own: the body of a multi-node Slurm job owns its allocation (executors.slurmlaunch), not what it launches.
_ORCH_NAMES = {"ORCH_SLURM_NODES"}


@dataclass
class ExternalResult:
    """What a successful run_external returns."""

    command: list[str]
    returncode: int
    duration_s: float
    log_path: str | None
    tail: list[str] = field(default_factory=list)

    @property
    def cmdline(self) -> str:
        return shlex.join(self.command)


def run_external(
    cmd: Sequence,
    *,
    nproc: int | str | None = None,
    nnodes: int | None = None,
    launcher: str | None = None,
    env: Mapping[str, str | None] | None = None,
    cwd: str | os.PathLike | None = None,
    log: str | os.PathLike | None = None,
    timeout: float | None = None,
    record=None,
    rdzv_endpoint: str | None = None,
    rdzv_id: str | None = None,
    max_restarts: int = 0,
    echo: bool = True,
) -> ExternalResult:
    """Run `cmd` (a list, e.g. ["external/train.py", "--lr", 0.1]) to completion, or raise.

    launcher: "torchrun" (`python -m torch.distributed.run`, the default when `nproc` is given or
        `nnodes > 1`), "python" (the current interpreter; default for a `.py` script), "none" (run
        `cmd` as is; default otherwise). `["-m", "pkg.mod", ...]` runs a module under either.
    nproc: processes per node for torchrun ("gpu"/"auto"/"cpu" are passed to it); default 1.
    nnodes: > 1 adds c10d rendezvous arguments: `rdzv_endpoint` (else $ORCH_RDZV_ENDPOINT, else the
        parent's $MASTER_ADDR:$MASTER_PORT) and `rdzv_id` (else $ORCH_RDZV_ID, else the batch job id).
        Every node must run the same command; one node per machine. Default 1, except in a job of
        `--executor slurm` with `resources={"nodes": N}`: there a torchrun launch runs on all N nodes
        (srun starts torchrun on each, the rendezvous is on the first; executors.slurmlaunch), and
        nnodes=1 keeps it on this node.
    env: variables added to the child's environment (None removes one). The parent's MPI and torchrun
        identity is never inherited; CUDA_VISIBLE_DEVICES is kept unless `env` sets it. PYTHONUNBUFFERED=1
        is set for live output unless `env` names it.
    cwd: working directory of the child; default the experiment's directory while a stage runs (so
        relative paths mean the same wherever `orch` was started from), else the current one.
    log: append the output to this file; default the running node's log in the run directory.
    timeout: seconds; past it the whole process group is stopped and ExternalCommandError raised.
    record: the stage's Record, to trace the script in; default the record of the running stage.
    max_restarts: torchrun's worker restarts on failure (the script resumes from its checkpoint).
    echo: print the command and stream the output to stdout (always written to the log); with
        echo=False a failure's message carries the output's last lines instead. The ranks of a torchrun
        launch share this stream unbuffered (torchrun runs `python -u`), so a print() is two writes and
        lines two ranks print at the same moment can interleave: print from rank 0, or write each
        line with one sys.stdout.write call.
    """
    from ..record import current_record

    if record is None:
        record = current_record.get()
    project_root = getattr(record, "project_root", None) if record is not None else None
    args = _stringify(cmd)
    run_dir = _resolve_cwd(cwd, project_root)
    chosen = _choose_launcher(args, launcher, nproc, nnodes)
    nnodes, alloc = _nodes(chosen, nnodes)
    script = _script_of(args, chosen, run_dir)
    child_env = clean_env(os.environ, env)
    _route_metrics(child_env, record, env)
    if script is not None and record is not None:
        record.track(script)
        if project_root is not None:  # and the project code it imports (its model, its data loading)
            _trace_script_imports(script, record, run_dir or Path(project_root), child_env)
    srun = []
    if alloc is not None:  # a multi-node Slurm job: torchrun on every node of the allocation
        from .slurmlaunch import rendezvous, srun_prefix

        srun = srun_prefix(nnodes)
        if rdzv_endpoint is None:
            rdzv_endpoint, job_id = rendezvous(alloc)
            rdzv_id = rdzv_id or job_id
    full = srun + build_command(args, launcher=chosen, nproc=nproc, nnodes=nnodes, rdzv_endpoint=rdzv_endpoint,
                                rdzv_id=rdzv_id, max_restarts=max_restarts)
    if not env or "PYTHONUNBUFFERED" not in env:  # env={"PYTHONUNBUFFERED": None} turns it off
        child_env.setdefault("PYTHONUNBUFFERED", "1")  # live output: Python block-buffers a pipe otherwise
    if chosen == "torchrun" and "OMP_NUM_THREADS" not in child_env:
        child_env["OMP_NUM_THREADS"] = str(_threads_per_proc(nproc))
    log_path = os.fspath(log) if log is not None else (getattr(record, "log_path", None) if record is not None else None)
    shown = _shown_command(full, run_dir, env)
    return _execute(full, shown, _name_of(args), run_dir, child_env, log_path, timeout, echo)


def _route_metrics(child_env: dict, record, env) -> None:
    """orchestrator.metrics.log in the child writes to the running node's stream (nowhere if none)."""
    from ..metrics import ENV_VAR

    if env and ENV_VAR in env:
        return
    path = getattr(record, "metrics_path", None) if record is not None else None
    if path:
        child_env[ENV_VAR] = path
    else:
        child_env.pop(ENV_VAR, None)


def _trace_script_imports(script: Path, record, run_dir: Path, child_env: dict) -> None:
    """Track the project modules the script imports, and make sure the child runs them as tracked:
    their bytecode is checked against their source (core.pycache), so an edit in the same second
    as the last compile cannot run stale code under the new trace."""
    from ..core.pycache import check_bytecode
    from ..hashing import ORCH_PACKAGE_DIR
    from ..hashing.scriptdeps import local_imports

    search = [run_dir, *child_env.get("PYTHONPATH", "").split(os.pathsep)] if child_env.get("PYTHONPATH") else [run_dir]
    deps = local_imports(script, record.project_root, exclude=[ORCH_PACKAGE_DIR], roots=record.code_roots,
                         search=[s for s in search if s])
    for dep in deps:
        record.track(dep)
    check_bytecode(deps, write=not child_env.get("PYTHONDONTWRITEBYTECODE"))


# -------------------------------------------------------------------------------- command building


def _stringify(cmd) -> list[str]:
    if isinstance(cmd, (str, bytes)):
        raise ExternalCommandError(
            f"run_external takes a list of arguments, not a shell string: write "
            f"{shlex.split(cmd) if isinstance(cmd, str) else cmd!r} rather than {cmd!r} (no shell is used, "
            f"so quoting and spaces in paths need no care)"
        )
    try:
        items = list(cmd)
    except TypeError:
        raise ExternalCommandError(f"run_external takes a list of arguments, got {type(cmd).__name__}") from None
    if not items:
        raise ExternalCommandError("run_external: the command is empty")
    out = []
    for i, item in enumerate(items):
        if item is None:
            before = f" (after {items[i - 1]!r})" if i else ""
            raise ExternalCommandError(
                f"run_external: argument {i}{before} is None in {items!r}; a missing parameter? "
                f"leave the option out instead"
            )
        out.append(os.fspath(item) if isinstance(item, os.PathLike) else str(item))
    return out


def _resolve_cwd(cwd, project_root) -> Path | None:
    if cwd is None:
        return Path(project_root) if project_root is not None else None
    p = Path(cwd)
    if not p.is_absolute() and project_root is not None:
        p = Path(project_root) / p
    if not p.is_dir():
        raise ExternalCommandError(f"run_external: working directory {p} does not exist")
    return p


def _choose_launcher(args: list[str], launcher: str | None, nproc, nnodes) -> str:
    if nnodes is not None and (not isinstance(nnodes, int) or isinstance(nnodes, bool) or nnodes < 1):
        raise ExternalCommandError(f"run_external: nnodes must be a positive integer, got {nnodes!r}")
    nnodes = nnodes or 1
    if nproc is not None and not (isinstance(nproc, int) and nproc >= 1 or nproc in ("gpu", "auto", "cpu")):
        raise ExternalCommandError(f"run_external: nproc must be a positive integer (or 'gpu'/'auto'), got {nproc!r}")
    if launcher is None:
        if nproc is not None or nnodes > 1:
            return "torchrun"
        return "python" if _is_python(args) else "none"
    if launcher not in LAUNCHERS:
        raise ExternalCommandError(f"run_external: launcher must be one of {', '.join(LAUNCHERS)}, got {launcher!r}")
    if launcher != "torchrun" and (nproc is not None or nnodes > 1):
        raise ExternalCommandError(
            f"run_external: nproc/nnodes need launcher='torchrun', not {launcher!r}; drop launcher= or nproc/nnodes"
        )
    if launcher == "python" and not _is_python(args):
        raise ExternalCommandError(
            f"run_external: launcher='python' runs a .py script or ['-m', module, ...], got {args[0]!r}"
        )
    return launcher


def _nodes(launcher: str, nnodes: int | None):
    """(nodes to launch on, the multi-node Slurm allocation to spread over or None). In the body of an
    `--executor slurm` job with several nodes, a torchrun launch uses them all unless nnodes=1."""
    from .slurmlaunch import allocation

    alloc = allocation() if launcher == "torchrun" else None
    if alloc is None or nnodes == 1:
        return nnodes or 1, None
    if nnodes is None or nnodes == alloc.nodes:
        return alloc.nodes, alloc
    raise ExternalCommandError(
        f"run_external(nnodes={nnodes}): this Slurm job has {alloc.nodes} nodes (the stage's "
        f"resources={{'nodes': {alloc.nodes}}}); leave nnodes out to run torchrun on all of them, pass nnodes=1 "
        f"to run it on this node only, or change the stage's resources={{'nodes': ...}}")


def _is_python(args: list[str]) -> bool:
    return args[0].endswith(".py") or (args[0] == "-m" and len(args) > 1)


def _script_of(args: list[str], launcher: str, run_dir: Path | None) -> Path | None:
    """The Python file the command runs, which must exist (checked before anything is launched)."""
    if launcher == "none" or not _is_python(args):
        return None
    base = run_dir or Path.cwd()
    if args[0] == "-m":
        rel = Path(*args[1].split("."))
        for candidate in (base / rel.with_suffix(".py"), base / rel / "__main__.py"):
            if candidate.is_file():
                return candidate
        return None  # an installed module: not part of the project, nothing to trace
    path = Path(args[0])
    path = path if path.is_absolute() else base / path
    if not path.is_file():
        raise ExternalCommandError(f"run_external: script {args[0]} not found (looked for {path})")
    return path


def build_command(args: list[str], *, launcher: str, nproc=None, nnodes: int = 1, rdzv_endpoint=None,
                  rdzv_id=None, max_restarts: int = 0, environ: Mapping[str, str] | None = None) -> list[str]:
    """The full argv for `args` under `launcher` (pure: no process is started)."""
    environ = os.environ if environ is None else environ
    if launcher == "none":
        return list(args)
    if launcher == "python":
        return [sys.executable, *args]
    tr = [sys.executable, "-m", "torch.distributed.run"]
    if nnodes > 1:
        endpoint = rdzv_endpoint or environ.get("ORCH_RDZV_ENDPOINT")
        if not endpoint and environ.get("MASTER_ADDR"):
            endpoint = f"{environ['MASTER_ADDR']}:{environ.get('MASTER_PORT', '29500')}"
        if not endpoint:
            raise ExternalCommandError(
                f"run_external: nnodes={nnodes} needs a rendezvous endpoint host:port reachable from every node; "
                f"pass rdzv_endpoint= or set ORCH_RDZV_ENDPOINT (or MASTER_ADDR/MASTER_PORT)"
            )
        run_id = rdzv_id or environ.get("ORCH_RDZV_ID") or next(
            (environ[v] for v in ("SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID", "JOB_ID") if environ.get(v)), "orch")
        tr += ["--nnodes", str(nnodes), "--rdzv_backend", "c10d", "--rdzv_endpoint", str(endpoint),
               "--rdzv_id", str(run_id)]
    else:
        tr.append("--standalone")  # a free local port: concurrent stages never collide
    tr += ["--nproc_per_node", str(nproc if nproc is not None else 1)]
    if max_restarts:
        tr += ["--max_restarts", str(int(max_restarts))]
    if args[0] == "-m":
        return tr + ["--module", *args[1:]]
    if args[0].endswith(".py"):
        return tr + args
    return tr + ["--no-python", *args]


def clean_env(base: Mapping[str, str], extra: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """`base` without the parent's MPI/torchrun identity, then `extra` on top (None deletes)."""
    env = {k: v for k, v in base.items() if not _inherited_identity(k)}
    for key, value in (extra or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[str(key)] = str(value)
    return env


def _inherited_identity(name: str) -> bool:
    return (name in _MPI_NAMES or name in _TORCH_NAMES or name in _ORCH_NAMES or name.startswith(_MPI_PREFIXES)
            or name.startswith(_TORCH_PREFIXES))


def _threads_per_proc(nproc) -> int:
    """torchrun would set 1 (and print a banner); share this machine's cores between the workers instead."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    n = int(nproc) if str(nproc).isdigit() and int(nproc) > 0 else cores
    return max(1, cores // n)


def _shown_command(full: list[str], run_dir: Path | None, env) -> str:
    """A line the user can paste into a shell to run the same thing by hand (with the variables
    given in `env=`; the parent's MPI/torchrun identity is not inherited by the child either)."""
    parts = [f"cd {shlex.quote(str(run_dir))} &&"] if run_dir is not None else []
    env = dict(env or {})
    unset = [k for k, v in env.items() if v is None]
    assigned = [f"{k}={shlex.quote(str(v))}" for k, v in env.items() if v is not None]
    if unset:
        parts.append("env " + " ".join(f"-u {k}" for k in unset))
    parts.extend(assigned)
    parts.append(shlex.join(full))
    return " ".join(parts)


# ------------------------------------------------------------------------------------------ running


def _execute(full: list[str], shown: str, name: str, run_dir, env: dict, log_path: str | None, timeout,
             echo: bool) -> ExternalResult:
    import collections
    import subprocess
    import threading

    log_file = None
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        log_file = open(log_path, "ab")
    console = _Console(echo)
    console.write(f"$ {shown}\n")
    if log_file is not None:
        log_file.write(f"$ {shown}\n".encode())
        log_file.flush()
    tail = _Tail(collections.deque(maxlen=TAIL_LINES), threading.Lock())
    t0 = time.perf_counter()
    try:
        try:
            proc = subprocess.Popen(full, cwd=run_dir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as e:
            raise ExternalCommandError(
                f"cannot start {full[0]!r}: {e.strerror or e}; is it installed and on PATH?\n  $ {shown}",
                command=full, returncode=None, tail=[], log_path=log_path,
            ) from e
        guard = None
        # One pipe for stdout and stderr keeps the order in which the child wrote them; a reader
        # thread drains it so the child never blocks on a full pipe while we wait on it.
        reader = threading.Thread(target=_pump, args=(proc.stdout, log_file, console, tail),
                                  name=f"run_external-{proc.pid}", daemon=True)
        reader.start()
        timed_out = False
        try:
            guard = guard_group(proc.pid, KILL_GRACE_S)  # stops the group if this process is killed
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _stop_group(proc)
        except BaseException:  # Ctrl-C or the stage being torn down: never leave the job running
            try:
                _stop_group(proc)
            except BaseException:  # interrupted again while stopping it: the guard finishes the job
                if guard is not None:
                    guard.abandon()
                    guard = None
                raise
            raise
        finally:
            _finish_reader(proc, reader)
            if guard is not None:
                guard.release()
        code = proc.returncode
    finally:
        if log_file is not None:
            log_file.close()
    duration = time.perf_counter() - t0
    lines = tail.lines()
    if timed_out or code != 0:
        what = f"timed out after {timeout:g}s; its process group was killed" if timed_out else _describe_exit(code)
        raise ExternalCommandError(
            _failure_message(f"{name} {what}", shown, lines, log_path, shown_live=console.enabled),
            command=full, returncode=code, tail=lines, log_path=log_path, timed_out=timed_out,
        )
    return ExternalResult(full, code, duration, log_path, lines)


class _Console:
    """Where echoed output goes; a closed or broken stdout stops echoing, never the draining."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def write(self, text: str) -> None:
        if not self.enabled:
            return
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except (OSError, ValueError):
            self.enabled = False


@dataclass
class _Tail:
    """The last lines of output, shared by the reader thread and the caller."""

    buffer: "collections.deque[str]"
    lock: "threading.Lock"

    def append(self, line: str) -> None:
        with self.lock:
            self.buffer.append(line)

    def lines(self) -> list[str]:
        with self.lock:
            return list(self.buffer)


def _pump(pipe, log_file, console: _Console, tail: _Tail) -> None:
    for raw in iter(pipe.readline, b""):
        if log_file is not None:
            log_file.write(raw)
            log_file.flush()
        text = raw.decode("utf-8", errors="replace")
        console.write(text)
        tail.append(text.rstrip("\r\n"))
    pipe.close()


def _stop_group(proc) -> None:
    """SIGTERM the child's process group, then SIGKILL what is left after a grace period."""
    import signal
    import subprocess

    _signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(proc, signal.SIGKILL)
    proc.wait()


def _signal_group(proc, sig) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:  # the group is already gone
        pass


def _finish_reader(proc, reader) -> None:
    """Wait for the output to be drained. Processes the child left behind in its group still hold the
    pipe open (and would keep running): they are killed."""
    import signal

    if proc.returncode is None:
        return
    reader.join(timeout=2.0)
    if reader.is_alive():
        _signal_group(proc, signal.SIGKILL)
        reader.join(timeout=5.0)


def _describe_exit(code: int) -> str:
    if code < 0:
        import signal

        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name} (exit code {code})"
    return f"failed with exit code {code}"


def _name_of(args: list[str]) -> str:
    """The command as the stage named it, for the first line of a failure: `external/train.py`."""
    return "python " + shlex.join(args[:2]) if args[0] == "-m" else shlex.quote(args[0])


def _failure_message(what: str, shown: str, tail: list[str], log_path: str | None, shown_live: bool) -> str:
    """What failed, how (first line: what the console's one-line summaries show), the command line to
    re-run it and where its output is. The output's last lines only if they were not streamed to the
    console already: a failure is said once, the full output is in the log."""
    lines = [f"external command {what}", f"  $ {shown}"]
    if log_path:
        lines.append(f"  log: {log_path}")
    if not shown_live:
        if tail:
            lines.append(f"last {len(tail)} lines of its output:")
            lines.extend("  | " + t for t in tail)
        else:
            lines.append("it printed nothing")
    return "\n".join(lines)
