"""How long a node will take, from how long its stage took before: the ETA of the progress display.

Two sources. This cache's recent run manifests: a row that ran has its `duration_s`, a cached row the
`computed_s` of the computation it reused. And this run: a node of the stage that finished already (the
other points of a sweep). A node's estimate is, in this order, the last duration of the same stage on
the same parameter set (the previous computation of this very node), the median of this run's finished
nodes of the stage, the median of the stage's recent durations; None when nothing is known.

The manifests are read once, by the display's thread, when a display is first shown (never for a
cached run) and the reading is bounded: the newest MAX_RUNS runs at most, stopped after BUDGET_S
seconds or as soon as every stage of the run has SAMPLES durations. An estimate is rough by nature
(other parameters, another machine): the display says "~".
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from ..core.status import Status

MAX_RUNS = 10
BUDGET_S = 0.5
SAMPLES = 5


class Durations:
    """Past durations per (stage id, parameter set) and per stage id, and this run's finished nodes."""

    def __init__(self, by_node: dict[tuple[str, str], float] | None = None,
                 by_stage: dict[str, list[float]] | None = None):
        self.by_node = by_node or {}
        self.by_stage = by_stage or {}

    def estimate(self, stage_id: str, set_name: str | None = None,
                 this_run: dict[str, tuple[float, ...]] | None = None) -> float | None:
        """Seconds a node of `stage_id` (on `set_name`; None: any set) takes; `this_run`: the
        durations of the stage's nodes that finished in this run."""
        if set_name is not None and (stage_id, set_name) in self.by_node:
            return self.by_node[(stage_id, set_name)]
        samples = (this_run or {}).get(stage_id) or self.by_stage.get(stage_id)
        return statistics.median(samples) if samples else None


def past_durations(cache_root: Path, stage_ids: set[str]) -> Durations:
    """The durations of `stage_ids` in the newest runs of this cache (bounded, see the module doc)."""
    from .manifest import manifests_newest_first

    by_node: dict[tuple[str, str], float] = {}
    by_stage: dict[str, list[float]] = {}
    deadline = time.monotonic() + BUDGET_S
    for i, (_run_id, manifest) in enumerate(manifests_newest_first(cache_root)):
        for row in manifest.get("nodes") or ():
            seconds = _duration(row)
            stage_id = row.get("stage_id") if isinstance(row, dict) else None
            if seconds is None or stage_id not in stage_ids:
                continue
            by_node.setdefault((stage_id, str(row.get("param_set"))), seconds)
            samples = by_stage.setdefault(stage_id, [])
            if len(samples) < SAMPLES:
                samples.append(seconds)
        enough = all(len(by_stage.get(s, ())) >= SAMPLES for s in stage_ids)
        if enough or i + 1 >= MAX_RUNS or time.monotonic() > deadline:
            break
    return Durations(by_node, by_stage)


def _duration(row) -> float | None:
    """What a manifest row says the computation took: its own run time, or for a cached row the time
    of the run that computed it. Failed, skipped and malformed rows say nothing."""
    if not isinstance(row, dict):
        return None
    status = row.get("status")
    value = row.get("duration_s") if status == Status.RAN else row.get("computed_s") if status == Status.CACHED else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        return None
    return float(value)
