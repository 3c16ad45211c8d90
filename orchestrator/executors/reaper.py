"""A guard that ends an external command's process group when the process that started it dies.

Why: `run_external` starts its command in a new session (its own process group, so a terminal's
Ctrl-C reaches orch once and orch stops the group in order). When orch itself is killed (kill -9,
the OOM killer, a pool worker taken down with its coordinator) nothing would stop that group: a
torchrun job would train on for nobody, holding GPUs. PR_SET_PDEATHSIG cannot cover it (it fires
when the starting *thread* ends and reaches only the direct child, not torchrun's workers).

The guard is a tiny separate interpreter holding the read end of a pipe whose write end only the
starter has. The starter writes `done` and closes it when the command has ended; if the starter
dies first, the kernel closes it: end-of-file without `done`, and the guard stops the group
(SIGTERM, then SIGKILL after a grace period), as orch would have.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

#: Run with `python -S -E -c` (no site, no environment): it imports nothing of orch and starts in ~10 ms.
_PROGRAM = """
import os, signal, sys, time
pgid, grace = int(sys.argv[1]), float(sys.argv[2])
said = sys.stdin.buffer.read()
if said != b"done":
    try:
        os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            time.sleep(0.1)
            os.killpg(pgid, 0)
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
"""


@dataclass
class Guard:
    """The running guard of one process group; `release()` once the group has ended normally."""

    proc: object  # subprocess.Popen
    fd: int

    def release(self) -> None:
        try:
            os.write(self.fd, b"done")
        except OSError:  # the guard is gone already (killed with the rest of the session)
            pass
        finally:
            os.close(self.fd)
        self.proc.wait()

    def abandon(self) -> None:
        """Close the pipe without `done`: the guard stops the group (SIGTERM, grace, SIGKILL) on its own."""
        os.close(self.fd)


def guard_group(pgid: int, grace_s: float) -> Guard | None:
    """Start a guard for process group `pgid`; None where there are no process groups (Windows)."""
    import subprocess

    if not hasattr(os, "killpg"):
        return None
    try:
        read_end, write_end = os.pipe()  # both non-inheritable: no other child of ours gets the write end
    except OSError as e:
        return _unguarded(e)
    try:
        proc = subprocess.Popen([sys.executable, "-S", "-E", "-c", _PROGRAM, str(pgid), str(grace_s)],
                                stdin=read_end, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    except OSError as e:  # out of processes or descriptors: the command still runs, as it did before guards
        os.close(write_end)
        return _unguarded(e)
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    return Guard(proc, write_end)


def _unguarded(e: OSError) -> None:
    import logging

    logging.getLogger(__name__).warning("cannot start the guard of an external command (%s): if orch is killed, "
                                        "that command will not be stopped with it", e.strerror or e)
    return None
