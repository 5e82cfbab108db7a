"""Evaluation plots: random-subnet PPL per size as box plots, and the robustness grid as a heatmap.

Both take the dicts :mod:`twist_lightning.evaluation` returns and write a PNG atomically; matplotlib (Agg backend)
is imported only when a plot is drawn.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from twist_lightning.io import atomic_path
from twist_lightning.prune import Method

__all__ = ["plot_boxes", "plot_grid"]


def plot_boxes(result: dict[str, Any], path: Path) -> None:
    """Box plot of random-subnet PPL per size, importance subnets as crosses, the full model as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["sizes"]
    labels = [f"{r['heads']}/{result['model']['n_head']}" for r in rows]
    fig, ax = plt.subplots(figsize=(1.2 * len(rows) + 2.5, 4))
    ax.boxplot([[v for v in r["random_ppl"] if math.isfinite(v)] for r in rows], tick_labels=labels)
    imp = [(i + 1, r["importance_ppl"]) for i, r in enumerate(rows) if r["importance_ppl"] is not None]
    if imp:
        ax.scatter(*zip(*imp), marker="x", color="tab:red", zorder=3, label="importance")
    markers = iter("os^vD<>p")
    for m in (list(rows[0].get("methods", {})) if rows else []):
        if m != Method.random.value:
            ax.plot(range(1, len(rows) + 1), [r["methods"][m] for r in rows], marker=next(markers, "o"), label=m)
    ax.axhline(result["full"]["ppl"], color="tab:green", linestyle="--", label="full model")
    ax.set(xlabel="subnet size (heads = FFN groups per split layer)", ylabel=f"{result['split']} perplexity",
           title=f"{Path(result['checkpoint']).name}: {result['samples']} random subnets per size")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def plot_grid(grid: dict[str, Any], path: Path) -> None:
    """Heatmap of mean random-subnet PPL: rows = training size (per checkpoint), columns = evaluation size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ckpts = list(dict.fromkeys(r["checkpoint"] for r in grid["rows"]))
    cols = sorted({r["heads"] for r in grid["rows"]})  # ascending sizes, whichever run lists which first
    table = {(r["checkpoint"], r["heads"]): r["mean_ppl"] for r in grid["rows"]}
    train = {r["checkpoint"]: r["train_size"] for r in grid["rows"]}
    values = [[table.get((c, h), math.nan) for h in cols] for c in ckpts]
    fig, ax = plt.subplots(figsize=(1.0 * len(cols) + 3, 0.7 * len(ckpts) + 2))
    im = ax.imshow(values, cmap="viridis_r", aspect="auto")
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", color="w", fontsize=8)
    ax.set_xticks(range(len(cols)), [f"{h}/{grid['n_head']}" for h in cols])
    ax.set_yticks(range(len(ckpts)), [f"X={train[c]} ({Path(c).parent.parent.name or Path(c).name})" for c in ckpts])
    ax.set(xlabel="evaluated at size Y", ylabel="trained at size X", title="mean PPL of random subnets")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
