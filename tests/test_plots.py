"""Evaluation plots: a box plot per size and the robustness heatmap are written as PNGs (plots.py)."""

from __future__ import annotations

import math
from pathlib import Path

from twist_lightning.plots import plot_boxes, plot_grid


def test_box_plot_and_heatmap_are_written(tmp_path: Path) -> None:
    rows = [{"heads": h, "random_ppl": [20.0 / h, 21.0 / h, math.nan], "importance_ppl": 19.0 / h,
             "methods": {"random": 20.5 / h, "flap": 15.0 / h}} for h in (1, 2)]
    result = {"sizes": rows, "model": {"n_head": 2}, "full": {"ppl": 9.0}, "split": "val", "checkpoint": "a/b.ckpt",
              "samples": 3}
    plot_boxes(result, tmp_path / "eval.png")
    grid = {"n_head": 2, "rows": [{"checkpoint": c, "train_size": x, "heads": h, "mean_ppl": 10.0 + h}
                                  for c, x in (("r1/checkpoints/a.ckpt", 1), ("r2/checkpoints/b.ckpt", "dense"))
                                  for h in (1, 2)]}
    plot_grid(grid, tmp_path / "grid.png")
    for name in ("eval.png", "grid.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.png", "grid.png"]  # atomic: no temporaries left
