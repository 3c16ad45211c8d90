"""The stages of the PINN example: train (PINA + Lightning), plot, compare (an aggregate over the sweep).

PINA, Lightning, torch and matplotlib are imported inside the stages: planning a run, or a run whose
nodes are all cached, imports none of them.
"""

from __future__ import annotations

import math

from orchestrator import aggregate, stage
from orchestrator.cachers import CheckpointCacher, FileReferenceCacher, JsonCacher
from orchestrator.checkpoint import capture_init_args


def accelerator(requested: str = "auto") -> str:
    """cuda > mps > cpu, unless one is named (Lightning's own "auto" also tries TPUs and HPUs)."""
    if requested != "auto":
        return requested
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _network_class():
    import torch
    from pina.model import FeedForward

    @capture_init_args
    class PoissonNet(torch.nn.Module):
        """u(x, y): PINA's FeedForward with tanh; rebuilt from its init arguments when loaded."""

        def __init__(self, width: int, depth: int):
            super().__init__()
            self.net = FeedForward(input_dimensions=2, output_dimensions=1, inner_size=width, n_layers=depth)

        def forward(self, x):
            return self.net(x)

    return PoissonNet


def exact_solution(x, y):
    import torch

    return -torch.sin(math.pi * x) * torch.sin(math.pi * y)


def on_grid(model, n: int):
    """(x, y, predicted u, exact u) on an n x n grid of the unit square, on the CPU."""
    import torch

    g = torch.linspace(0, 1, n)
    x, y = torch.meshgrid(g, g, indexing="ij")
    device = next(model.parameters()).device
    with torch.no_grad():
        u = model(torch.stack([x.ravel(), y.ravel()], dim=1).to(device)).reshape(n, n).cpu()
    return x, y, torch.as_tensor(u), exact_solution(x, y)


@stage(outputs=["model", "metrics"], cachers=[CheckpointCacher, JsonCacher])
def train(record):
    """Fit the PINN; metrics: its relative L2 error against the exact solution (the losses are in the
    metrics stream, logged by OrchLogger)."""
    import lightning
    import torch
    from pina import Trainer
    from pina.optim import TorchOptimizer
    from pina.problem.zoo import Poisson2DSquareProblem
    from pina.solver import PhysicsInformedSingleModelSolver

    from orchestrator.integrations.lightning import OrchLogger

    p = record.params
    lightning.seed_everything(p.seed, workers=True, verbose=False)
    problem = Poisson2DSquareProblem()
    problem.discretise_domain(n=p.data.n_interior, mode="random", domains=["D"])
    problem.discretise_domain(n=p.data.n_boundary, mode="random", domains=["boundary"])
    model = _network_class()(width=p.train.width, depth=p.train.depth)
    solver = PhysicsInformedSingleModelSolver(problem, model,
                                              optimizer=TorchOptimizer(torch.optim.Adam, lr=p.train.lr))
    device = accelerator(p.train.accelerator)
    trainer = Trainer(solver, max_epochs=p.train.epochs, accelerator=device, devices=1, logger=OrchLogger(),
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    threads = torch.get_num_threads()
    if device == "cpu":  # a network this small runs fastest on one core (and sweep points can share them)
        torch.set_num_threads(1)
    try:
        trainer.train()
    finally:
        torch.set_num_threads(threads)
    _, _, u, exact = on_grid(model, p.eval.grid)
    rel_l2 = float(torch.linalg.norm(u - exact) / torch.linalg.norm(exact))
    return model.cpu(), {"rel_l2": rel_l2, "accelerator": device}


@stage(inputs=["model"], outputs=["plot"], cachers=[FileReferenceCacher(expect="file")])
def plot(record, model):
    """solution.png: the PINN's u, the exact u and their difference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, y, u, exact = on_grid(model, record.params.eval.grid)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), constrained_layout=True)
    for ax, values, title in zip(axes, (u, exact, u - exact), ("PINN u", "exact u", "PINN - exact")):
        im = ax.pcolormesh(x.numpy(), y.numpy(), values.numpy(), shading="auto", cmap="RdBu_r")
        ax.set_title(title)
        ax.set_aspect("equal")
        fig.colorbar(im, ax=ax)
    fig.suptitle(f"2D Poisson, {record.name}")
    path = record.get_path("solution.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


@aggregate(inputs=["metrics"], outputs=["comparison", "comparison_plot"],
           cachers=[JsonCacher, FileReferenceCacher(expect="file")])
def compare(record, metrics):
    """The sets ranked by error against the exact solution, and a bar chart of it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(({"set": name, "width": record.param_sets[name].train.width, "lr": record.param_sets[name].train.lr,
                    "rel_l2": m["rel_l2"]} for name, m in metrics.items()),
                  key=lambda r: r["rel_l2"])
    for r in rows:
        print(f"width {r['width']:>3}  lr {r['lr']:<7g} rel L2 error {r['rel_l2']:.3%}")
    fig, ax = plt.subplots(figsize=(6, 3.5), constrained_layout=True)
    ax.barh([f"width {r['width']}, lr {r['lr']:g}" for r in rows], [r["rel_l2"] for r in rows])
    ax.set_xlabel("relative L2 error vs the exact solution")
    ax.invert_yaxis()
    path = record.get_path("comparison.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return {"best": rows[0]["set"], "rows": rows}, path
