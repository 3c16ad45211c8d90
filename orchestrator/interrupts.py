"""How a run that is told to stop ends: Ctrl-C (SIGINT) and SIGTERM take the same path.

Why: `kill PID`, a cluster scheduler ending an allocation and a container stopping all send SIGTERM,
whose default action ends Python at once: no manifest saying the run was interrupted (it showed as
"died"), pool workers left to finish nodes nobody waits for, external commands not stopped in order.
`orch run` turns SIGTERM into `Terminated`, a KeyboardInterrupt, so every Ctrl-C path applies
(finished work is kept, the manifest says "interrupted", the executor stops its workers), and the
exit code tells which signal it was, as a shell reports it (128 + the signal number).
"""

from __future__ import annotations

import functools
import os
import sys

try:  # the C module under `signal`, whose import builds three enums (3.3 M instructions, 1% of a cached
    import _signal as signal  # run) to wrap these same calls, taking and returning ints instead
except ImportError:  # an interpreter without it
    import signal

#: Exit codes of a run stopped by SIGINT / SIGTERM (128 + signal number, what a shell shows).
EXIT_SIGINT = 128 + signal.SIGINT
EXIT_SIGTERM = 128 + signal.SIGTERM
INTERRUPTED_EXITS = (EXIT_SIGINT, EXIT_SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: end the run as Ctrl-C does."""


def terminate_as_interrupt() -> None:
    """Raise Terminated in the main thread on SIGTERM (signal handlers can only be set there).

    A process forked from this one (a stage's multiprocessing, a DataLoader worker) must still die of
    SIGTERM. Resetting the handler in the child is not enough: CPython drops a signal that arrives
    between fork() and its after-fork bookkeeping, so `Process.start(); p.terminate()` would lose it
    and leave the child running. SIGTERM is therefore blocked in the forking thread across fork(); the
    child restores the default action and then unblocks it, so a pending SIGTERM ends it."""
    # threading is not imported by a cached run (4 M instructions); not imported yet, the check could only
    # pass (threading takes the thread that imports it for the main thread)
    threading = sys.modules.get("threading")
    if threading is None or threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, functools.partial(_raise_terminated, os.getpid()))
        os.register_at_fork(before=_block_sigterm, after_in_parent=_unblock_sigterm,
                            after_in_child=_default_sigterm)


def _block_sigterm() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})


def _unblock_sigterm() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def _default_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _unblock_sigterm()


def _raise_terminated(owner: int, signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    if os.getpid() != owner:  # a forked child inherited the handler (a stage's multiprocessing, a DataLoader
        os.kill(os.getpid(), signal.SIGTERM)  # worker): it dies of SIGTERM, as it would without orch
        return
    raise Terminated()


def exit_code(interrupt: KeyboardInterrupt) -> int:
    return EXIT_SIGTERM if isinstance(interrupt, Terminated) else EXIT_SIGINT
