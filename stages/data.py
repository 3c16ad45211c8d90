"""Data: random permeability fields and their numerical Darcy solutions, split into train and test.

The two splits are written as .npz files (arrays `k` and `u`, float32, shape (n, N, N)) and stored
by content: the training script reads its split straight from the cache by path, and any change of
`data.*` parameters or of the numerics (stages/darcy.py) regenerates them; nothing else does.
"""

from __future__ import annotations

import numpy as np

from orchestrator import Lazy, stage
from orchestrator.cachers import FileReferenceCacher

from .darcy import permeability, solve_darcy


@stage(outputs=[Lazy("train_data"), Lazy("test_data")], cachers=[FileReferenceCacher, FileReferenceCacher])
def make_dataset(record):
    """Generate data.n_train + data.n_test samples at data.resolution from one seed."""
    p = record.params.data
    k, u = generate(p.n_train + p.n_test, p.resolution, p.seed, kind=p.field, alpha=p.alpha, tau=p.tau)
    train_path, test_path = record.get_path("train.npz"), record.get_path("test.npz")
    np.savez(train_path, k=k[:p.n_train], u=u[:p.n_train])
    np.savez(test_path, k=k[p.n_train:], u=u[p.n_train:])
    print(f"generated {p.n_train} training and {p.n_test} test samples at {p.resolution}x{p.resolution} "
          f"(u in [{u.min():.3g}, {u.max():.3g}])")
    return train_path, test_path


def generate(n: int, resolution: int, seed: int, *, kind: str = "threshold", alpha: float = 2.0,
             tau: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """(k, u) as float32 arrays of shape (n, resolution, resolution), reproducible from `seed`."""
    rng = np.random.default_rng(seed)
    k = permeability(n, resolution, rng, kind=kind, alpha=alpha, tau=tau)
    u = solve_darcy(k)
    return k.astype(np.float32), u.astype(np.float32)
