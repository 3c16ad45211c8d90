"""Ending an `orch run` that computed nothing without the interpreter's teardown.

Tearing down the modules of a cached run (orch's, the stdlib's, the experiment's) costs ~20 M
instructions, 6% of a fully cached 200-stage run, and it finalizes nothing such a run needs: its
records (manifest, report, entry index) were written and renamed into place through unbuffered file
descriptors before this point. So the process ends with os._exit, as tools that measure their exit do
(snooty-parser, inmanta's compiler), but only when nothing could be waiting for the teardown: a
light experiment, where the teardown is a sizeable part of the run. An experiment that imports a
compiled library (numpy, torch, h5py) exits normally, and there the teardown is a small part.
"""

from __future__ import annotations

import os
import sys


def end_now(code: int, nothing_ran: bool, cache: str) -> None:
    """os._exit(code) if every check passes; otherwise return, and the caller exits normally.
    `cache`: the run's cache directory, whose lock files orch keeps open (unbuffered) for the run.

    Checks, one guard each below:
    - nothing ran in this process: no stage body has left files or buffers behind (a fully cached run);
    - the interpreter was started on the `orch` console script itself (not `python -m pdb`, `-i`, `-X`,
      or a driver running the script through runpy: they go on afterwards). Code calling orch's
      launcher.main() never gets here: only the console script's launcher.console() asks;
    - no tracer or profiler is installed (coverage and debuggers write their results at exit);
    - no atexit callback is registered (logging flushes its handlers there, multiprocessing joins its
      children, tempfile's finalizers remove their directories, and user code registers its own);
    - no thread but the main one is alive (the interpreter would wait for the non-daemon ones);
    - no compiled module from outside Python's own library is loaded (a C library may hold buffered
      output or exit handlers of its own, which Python cannot see);
    - no regular file outside the cache is open for writing but on stdin, stdout and stderr (a file
      the experiment opened and wrote to without closing it has its buffer flushed by the teardown;
      Linux: /proc/self/fd, elsewhere this check fails and the exit is normal);
    - stdout and stderr flush (a closed pipe or a failing replacement is left to the normal exit).
    """
    if not nothing_ran:
        return
    main = sys.modules.get("__main__")
    script = getattr(main, "__file__", None)
    if not script or os.path.basename(script) != "orch" or getattr(sys, "orig_argv", [])[1:2] != [script]:
        return
    if sys.flags.inspect or os.environ.get("PYTHONINSPECT"):
        return
    if sys.gettrace() is not None or sys.getprofile() is not None:
        return
    import atexit

    count = getattr(atexit, "_ncallbacks", None)  # CPython; elsewhere: exit normally
    if count is None or count() != 0:
        return
    threading = sys.modules.get("threading")
    if threading is not None and threading.active_count() != 1:
        return
    if _foreign_extension_loaded():
        return
    if _files_open_for_writing(os.path.realpath(cache) + os.sep):
        return
    try:
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            if stream is not None:
                stream.flush()
    except Exception:  # noqa: BLE001 (the normal exit then reports it as it always did)
        return
    os._exit(code)


def _foreign_extension_loaded() -> bool:
    """A compiled module is loaded from outside the directory of Python's own library (lib-dynload)."""
    import _imp

    compiled, own = tuple(_imp.extension_suffixes()), os.path.dirname(os.__file__) + os.sep
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if isinstance(path, str) and path.endswith(compiled) and not path.startswith(own):
            return True
    return False


def _files_open_for_writing(cache: str) -> bool:
    """A regular file outside `cache` is open for writing on a descriptor other than 0-2 (or this
    cannot be told). Pipes and sockets are passed over: what a parent passed down (a jobserver, an
    IDE's channel)."""
    import fcntl
    import stat

    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except (OSError, ValueError):
        return True
    for fd in fds:
        if fd <= 2:
            continue
        try:
            if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY or not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the descriptor of the listing itself, closed since
            continue
        if not path.startswith(cache) and not path.endswith(" (deleted)"):  # (deleted: unreadable after the exit)
            return True
    return False
