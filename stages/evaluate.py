"""Evaluation and inference from the stored checkpoint, the way a user would after training.

`evaluate` rebuilds the model from the checkpoint alone (class and init arguments are in it), on a
different device than it was trained on when this machine has one (a GPU-trained model is checked
on the CPU and vice versa), and measures the relative L2 error on the held-out split.
`predict` runs the model on new permeability fields, by default at twice the training resolution:
a neural operator is resolution-independent, and the stage reports how well that holds.
"""

from __future__ import annotations

import json
import time

import numpy as np

from orchestrator import Lazy, stage
from orchestrator.cachers import FileReferenceCacher, JsonCacher

from .darcy import permeability, solve_darcy


@stage(inputs=[Lazy("model"), Lazy("test_data"), "train_metrics"], outputs=["evaluation"], cachers=[JsonCacher])
def evaluate(record, model, test_data, train_metrics):
    """Relative L2 error of the trained model on the test split."""
    import torch

    trained_on = train_metrics["device"]
    device = other_device(trained_on, record.params.evaluate.device)
    net = model.load(device=device)  # rebuilt from the checkpoint: no model class named here
    data = np.load(test_data.path)
    t0 = time.perf_counter()
    errors = relative_errors(net, data["k"], data["u"], device)
    seconds = time.perf_counter() - t0
    result = {
        "rel_l2": float(errors.mean()),
        "rel_l2_median": float(np.median(errors)),
        "rel_l2_p95": float(np.quantile(errors, 0.95)),
        "rel_l2_max": float(errors.max()),
        "n_test": int(len(errors)),
        "resolution": int(data["k"].shape[-1]),
        "device": str(device),
        "trained_on": trained_on,
        "inference_s_per_sample": seconds / len(errors),
        "torch": torch.__version__,
    }
    print(f"test relative L2 error {result['rel_l2']:.2%} (median {result['rel_l2_median']:.2%}, "
          f"max {result['rel_l2_max']:.2%}) on {len(errors)} samples; model trained on {trained_on}, "
          f"evaluated on {device}")
    return result


@stage(inputs=[Lazy("model")], outputs=[Lazy("predictions")], cachers=[FileReferenceCacher(expect="dir")])
def predict(record, model):
    """Predict u for new fields (inference.n at inference.resolution); a directory with
    predictions.npz (k, u_pred, u_ref), summary.json and, with matplotlib, predictions.png."""
    p = record.params.inference
    net = model.load(device=p.device)
    rng = np.random.default_rng(p.seed)
    k = permeability(p.n, p.resolution, rng, kind=record.params.data.field, alpha=record.params.data.alpha,
                     tau=record.params.data.tau).astype(np.float32)
    u_pred = predict_fields(net, k, p.device)
    u_ref = solve_darcy(k).astype(np.float32)  # cheap here; a real deployment would have no reference
    errors = np.linalg.norm((u_pred - u_ref).reshape(len(k), -1), axis=1) / np.linalg.norm(u_ref.reshape(len(k), -1), axis=1)
    out = record.get_dir("predictions")
    np.savez(f"{out}/predictions.npz", k=k, u_pred=u_pred, u_ref=u_ref)
    summary = {"n": int(p.n), "resolution": int(p.resolution), "rel_l2": float(errors.mean()),
               "rel_l2_per_sample": [float(e) for e in errors]}
    with open(f"{out}/summary.json", "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    plotted = plot_predictions(k, u_pred, u_ref, f"{out}/predictions.png")
    print(f"predicted {p.n} new fields at {p.resolution}x{p.resolution}: relative L2 error "
          f"{summary['rel_l2']:.2%} against the numerical solution" + ("; plot in predictions.png" if plotted else ""))
    return out


def other_device(trained_on: str, choice: str = "auto") -> str:
    """`choice` unless "auto"; then a device other than `trained_on` if this machine has one."""
    if choice != "auto":
        return choice
    import torch

    if trained_on != "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if hasattr(torch.backends, "mps") and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def predict_fields(net, k: np.ndarray, device: str, batch: int = 64) -> np.ndarray:
    import torch

    net.eval()
    out = []
    with torch.inference_mode():
        for s in range(0, len(k), batch):
            out.append(net(torch.from_numpy(np.ascontiguousarray(k[s:s + batch])).to(device)).float().cpu().numpy())
    return np.concatenate(out)


def relative_errors(net, k: np.ndarray, u: np.ndarray, device: str) -> np.ndarray:
    pred = predict_fields(net, k, device)
    n = len(u)
    return np.linalg.norm((pred - u).reshape(n, -1), axis=1) / np.linalg.norm(u.reshape(n, -1), axis=1)


def plot_predictions(k, u_pred, u_ref, path: str, rows: int = 3) -> bool:
    """k, prediction, reference and error for the first samples; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = min(rows, len(k))
    fig, axes = plt.subplots(rows, 4, figsize=(11, 2.6 * rows), squeeze=False)
    for i in range(rows):
        panels = [(k[i], "permeability k", "viridis"), (u_pred[i], "predicted u", "magma"),
                  (u_ref[i], "numerical u", "magma"), (u_pred[i] - u_ref[i], "error", "coolwarm")]
        for ax, (img, title, cmap) in zip(axes[i], panels):
            im = ax.imshow(img, cmap=cmap, origin="lower")
            ax.set_title(title, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True
