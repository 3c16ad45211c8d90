"""How a run that is told to stop ends: Ctrl-C (SIGINT) and SIGTERM take the same path.

Why: `kill PID`, a cluster scheduler ending an allocation and a container stopping all send SIGTERM,
whose default action ends Python at once: no manifest saying the run was interrupted (it showed as
"died"), pool workers left to finish nodes nobody waits for, external commands not stopped in order.
`orch run` turns SIGTERM into `Terminated`, a KeyboardInterrupt, so every Ctrl-C path applies
(finished work is kept, the manifest says "interrupted", the executor stops its workers), and the
exit code tells which signal it was, as a shell reports it (128 + the signal number).
"""

from __future__ import annotations

import signal
import threading

#: Exit codes of a run stopped by SIGINT / SIGTERM (128 + signal number, what a shell shows).
EXIT_SIGINT = 128 + signal.SIGINT
EXIT_SIGTERM = 128 + signal.SIGTERM
INTERRUPTED_EXITS = (EXIT_SIGINT, EXIT_SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: end the run as Ctrl-C does."""


def terminate_as_interrupt() -> None:
    """Raise Terminated in the main thread on SIGTERM (signal handlers can only be set there)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


def _raise_terminated(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise Terminated()


def exit_code(interrupt: KeyboardInterrupt) -> int:
    return EXIT_SIGTERM if isinstance(interrupt, Terminated) else EXIT_SIGINT
