"""A physics-informed neural network (PINA on PyTorch Lightning) for a 2D Poisson problem, swept.

    make run-pinn                                                   # from the repository root
    orch run examples/pinn/experiment.py -p examples/pinn/params/sweep.yaml

    Δu = 2π² sin(πx) sin(πy) on the unit square, u = 0 on its boundary (PINA's Poisson2DSquareProblem);
    the exact solution is u = -sin(πx) sin(πy).

Per parameter set: `train` fits a small MLP to the equation's residual at sampled points through PINA's
Lightning-based Trainer (accelerator chosen cuda > mps > cpu, seeded, the losses logged into orch's
metrics stream by OrchLogger), and reports its relative L2 error against the exact solution; `plot`
draws the prediction, the exact solution and the error. Over the sweep, `compare` ranks the sets
(width x learning rate) and draws the error of each. `orch compare` shows the same ranking.
"""

from poisson import compare, plot, train


def run(record):
    train(record)
    plot(record)


def aggregate(records):
    compare(records)
