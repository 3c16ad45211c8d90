"""Which cache directory a command uses: one precedence for `orch run`, the readers (`orch get`,
`why`, `runs`, `show`, `report`, `cache ...`) and `orchestrator.load`."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import RunNotFoundError

#: The cache's directory name next to the experiment.
CACHE_DIRNAME = ".orch"


def cache_dir(cache: str | os.PathLike | None = None, experiment_dir: str | os.PathLike | None = None) -> Path:
    """The cache directory, first match wins:
    1. `cache` (--cache DIR, cache=...);
    2. $ORCH_CACHE;
    3. `.orch` in the experiment's directory, when the experiment is known (orch run, orch why EXP,
       load(experiment_dir=...));
    4. otherwise (a reader started anywhere in a project) the nearest `.orch` that holds runs, in the
       current directory or its parents; none is an error saying what to pass.
    """
    if cache is not None and os.fspath(cache) != "":
        return Path(cache).resolve()
    if os.environ.get("ORCH_CACHE"):
        return Path(os.environ["ORCH_CACHE"]).resolve()
    if experiment_dir is not None:
        return (Path(experiment_dir) / CACHE_DIRNAME).resolve()
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        if (d / CACHE_DIRNAME / "runs").is_dir():
            return d / CACHE_DIRNAME
    raise RunNotFoundError(f"no orch cache ({CACHE_DIRNAME}/runs) in {here} or its parents; run the experiment "
                           f"first, or pass the cache (--cache DIR, ORCH_CACHE, or cache=... / experiment_dir=...)")
