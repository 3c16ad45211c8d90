"""Comparing parameter sets (a sweep): one table row per set, written as CSV and JSON, plus a plot."""

from __future__ import annotations

import csv
import json

from orchestrator import Lazy, aggregate
from orchestrator.cachers import FileReferenceCacher, JsonCacher

COLUMNS = ["set", "width", "modes", "layers", "lr", "epochs", "n_params", "rel_l2", "rel_l2_max",
           "final_train_loss", "train_time_s", "wall_time_s", "world_size", "device"]


@aggregate(inputs=["evaluation", "train_metrics"], outputs=["comparison", Lazy("comparison_files")],
           cachers=[JsonCacher, FileReferenceCacher(expect="dir")])
def compare(record, evaluation, train_metrics):
    """Rows sorted by test error; files: comparison.csv, comparison.json, comparison.png."""
    rows = []
    for name in evaluation:
        train = record.param_sets[name]["train"]
        metrics, ev = train_metrics[name], evaluation[name]
        rows.append({
            "set": name, "width": train["width"], "modes": train["modes"], "layers": train["layers"],
            "lr": train["lr"], "epochs": train["epochs"], "n_params": metrics["n_params"],
            "rel_l2": round(ev["rel_l2"], 6), "rel_l2_max": round(ev["rel_l2_max"], 6),
            "final_train_loss": round(metrics["final_loss"], 6), "train_time_s": metrics["train_time_s"],
            "wall_time_s": metrics["wall_time_s"], "world_size": metrics["world_size"], "device": metrics["device"],
        })
    rows.sort(key=lambda r: r["rel_l2"])
    out = record.get_dir("comparison")
    with open(f"{out}/comparison.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    with open(f"{out}/comparison.json", "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=1)
    plot_comparison(rows, train_metrics, f"{out}/comparison.png")
    print(format_table(rows))
    return rows, out


def format_table(rows: list[dict]) -> str:
    w = max(3, *(len(r["set"]) for r in rows))
    head = f"{'set':<{w}} {'width':>5} {'lr':>8} {'params':>9} {'test rel L2':>11} {'train s':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['set']:<{w}} {r['width']:>5} {r['lr']:>8.2g} {r['n_params']:>9,} "
                     f"{r['rel_l2']:>11.2%} {r['train_time_s']:>8.1f}")
    return "\n".join(lines)


def plot_comparison(rows: list[dict], train_metrics: dict, path: str) -> bool:
    """Training curves per set, and test error against training time; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (curves, scatter) = plt.subplots(1, 2, figsize=(11, 4))
    for r in rows:
        history = train_metrics[r["set"]]["epochs"]
        curves.plot([h["epoch"] for h in history], [h["loss"] for h in history], label=r["set"])
        scatter.scatter(r["train_time_s"], r["rel_l2"])
        scatter.annotate(f"w={r['width']} lr={r['lr']:g}", (r["train_time_s"], r["rel_l2"]), fontsize=8,
                         xytext=(4, 4), textcoords="offset points")
    curves.set(xlabel="epoch", ylabel="training loss (relative L2)", yscale="log", title="training")
    curves.legend(fontsize=7)
    scatter.set(xlabel="training time (s)", ylabel="test relative L2", title="accuracy vs cost")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True
