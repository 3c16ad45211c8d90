"""Objects orch pickles into queued work (Slurm job folders, MPI and pool hand-offs) load in the
next version too: a job queued before an update of orch still starts."""

from __future__ import annotations

import pickle

from orchestrator.executors.launch import WorkerConfig

# pickle.dumps(WorkerConfig("/a", "/b/e.py"), 4) as orch 61fdf61 wrote it (a frozen dataclass in
# orchestrator.executors.worker, its __dict__ as state)
OLD_WORKER_CONFIG = b'\x80\x04\x95c\x00\x00\x00\x00\x00\x00\x00\x8c\x1dorchestrator.executors.worker\x94\x8c\x0cWorkerConfig\x94\x93\x94)\x81\x94}\x94(\x8c\nstore_root\x94\x8c\x02/a\x94\x8c\nexperiment\x94\x8c\x07/b/e.py\x94ub.'


def test_a_worker_config_pickled_by_the_previous_version_loads():
    config = pickle.loads(OLD_WORKER_CONFIG)
    assert isinstance(config, WorkerConfig)
    assert (config.store_root, config.experiment) == ("/a", "/b/e.py")


def test_a_worker_config_round_trips_with_every_protocol():
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        config = pickle.loads(pickle.dumps(WorkerConfig("/cache", "/p/experiment.py"), protocol))
        assert (config.store_root, config.experiment) == ("/cache", "/p/experiment.py")
