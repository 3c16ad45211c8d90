"""When the cyclic garbage collector runs during `orch run`.

Planning a 10,000-node experiment builds a few hundred thousand long-lived objects (the graph, the
decisions, the entries) and almost no cyclic garbage. With the default thresholds the collector
still runs hundreds of times and traverses all of them at each full collection: measured, 32% of
the CPU time of a fully cached 10k-node run. So orch pauses the collector in its own bookkeeping
phases (planning, writing the manifest and report); while the experiment's run() builds the graph
(user code) it only collects less often; and for the run loop, where stage bodies allocate whatever
they like, it keeps what planning built out of the collector's traversals (gc.freeze) until the run
ends. Reference counting still frees everything as usual; only cycles created inside a paused phase
wait for the next collection.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from contextvars import ContextVar

TYPE_CHECKING = False  # typing.TYPE_CHECKING: a cached run does not import typing
if TYPE_CHECKING:
    from typing import Iterator

#: Whether the innermost run of this context owns a freeze it will undo (settle() adds only to such a freeze).
_OWNS_FREEZE: ContextVar[bool] = ContextVar("orch_gc_owns_freeze", default=False)


@contextmanager
def paused() -> Iterator[None]:
    """No cyclic collection inside (the collector's state is restored on exit)."""
    was_enabled = gc.isenabled()
    try:
        gc.disable()
        yield
    finally:
        if was_enabled:
            gc.enable()


#: The youngest generation's threshold while the experiment's run() builds the graph. At CPython's
#: default (700) building 100,000 nodes collects ~720 times and the full collections among them
#: traverse the growing graph: 0.21 of 0.35 s, measured. At 10,000: 50 collections, 0.04 s; cyclic
#: garbage the user's run() makes is still collected, at most a few MB later.
RELAXED_GEN0 = 10_000


@contextmanager
def relaxed() -> Iterator[None]:
    """The collector stays on, collecting the youngest generation less often (RELAXED_GEN0); the
    thresholds are restored on exit, unless the code inside set its own. A threshold of 0 (automatic
    collection off) is left as it is."""
    old = gc.get_threshold()
    ours = (max(old[0], RELAXED_GEN0), *old[1:]) if old[0] else old
    gc.set_threshold(*ours)
    try:
        yield
    finally:
        if gc.get_threshold() == ours:  # not if the experiment set its own thresholds meanwhile
            gc.set_threshold(*old)


@contextmanager
def frozen() -> Iterator[None]:
    """For one run: what is alive at entry (orch's and the experiment's modules), and what settle()
    adds later, is left out of collections until exit. Unfrozen then, so that a process running many
    experiments (a notebook, a test suite) still collects their cycles later. Does nothing when
    something else froze objects before (gc.unfreeze cannot tell whose they are)."""
    if gc.get_freeze_count():
        token = _OWNS_FREEZE.set(False)
        try:
            yield
        finally:
            _OWNS_FREEZE.reset(token)
        return
    token = _OWNS_FREEZE.set(True)
    try:
        gc.freeze()
        yield
    finally:
        _OWNS_FREEZE.reset(token)
        gc.unfreeze()


def settle() -> None:
    """Inside frozen() that froze: add everything alive now (the run's graph and plan) to the frozen set."""
    if _OWNS_FREEZE.get():
        gc.freeze()
