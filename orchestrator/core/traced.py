"""The current content hash of something a stage traced: a tracked file (record.track, an external
script and the project modules it imports) or an artifact of another run it loaded
(orchestrator.load inside a stage). Planning and the executors' re-check ask the same question."""

from __future__ import annotations

import os

from ..hashing import StatCache, hash_path
from .keys import artifact_query


def current_hash(traced: str, project_root: str | os.PathLike, stat_cache: StatCache | None) -> str | None:
    """The content hash `traced` has now; None when it is gone (a miss that says so)."""
    query = artifact_query(traced)
    if query is not None:
        from ..artifacts.retrieve import artifact_hash

        return artifact_hash(query)
    p = os.path.join(project_root, traced)  # (an absolute `traced` stays itself)
    try:
        return hash_path(p, stat_cache)[1]
    except (FileNotFoundError, NotADirectoryError):
        return None
