"""Ending an `orch run` that computed nothing without the interpreter's teardown.

Tearing down the modules of a cached run (orch's, the stdlib's, the experiment's) costs ~20 M
instructions, 6% of a fully cached 200-stage run, and it finalizes nothing such a run needs: its
records (manifest, report, entry index) were written and renamed into place through unbuffered file
descriptors before this point. So the process ends with os._exit, as tools that measure their exit do
(snooty-parser, inmanta's compiler), but only when nothing else could be waiting for the teardown.
"""

from __future__ import annotations

import os
import sys


def end_now(code: int, nothing_ran: bool) -> None:
    """os._exit(code) if every check passes; otherwise return, and the caller exits normally.

    Checks, one guard each below:
    - nothing ran in this process: no stage body has left files or buffers behind (a fully cached run);
    - the program is the `orch` console script, not code that imports orch and calls it (a test, a
      notebook, `python -m cProfile`), which goes on after orch returns;
    - no tracer or profiler is installed (coverage and debuggers write their results at exit);
    - no atexit callback is registered (logging flushes its handlers there, multiprocessing joins its
      children, tempfile's finalizers remove their directories, and user code registers its own);
    - no thread but the main one is alive (the interpreter would wait for the non-daemon ones);
    - stdout and stderr flush (a closed pipe is left to the normal exit's handling).
    What the teardown would still have done, and this skips, is finalizing objects the experiment left
    alive (CPython does not promise that at exit either), e.g. a file it opened at import, wrote to
    and never closed.
    """
    if not nothing_ran:
        return
    main = sys.modules.get("__main__")
    if os.path.basename(getattr(main, "__file__", None) or "") != "orch":
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
    try:
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            if stream is not None:
                stream.flush()
    except (OSError, ValueError):
        return
    os._exit(code)
