"""Golden tickets: held-out perplexity of random and importance-selected subnets at every size.

``python -m twist_lightning.evaluate checkpoint=PATH`` loads a ``TwISTLitModule`` checkpoint, rebuilds its held-out
split (from the checkpoint's ``datamodule_hyper_parameters``, or ``data.*`` overrides) and evaluates

- the full model,
- ``samples`` uniformly random subnets at each size in ``sizes`` (heads = FFN groups per split layer; a float is
  a fraction of ``n_head``; default every size ``1..n_head``),
- the importance-selected subnet (highest-magnitude units) at each size,
- with ``method=[flap,reconstruct,...]``, the full model pruned by each post-training method of
  :mod:`twist_lightning.prune` at each size (calibrated on ``calib_samples`` sequences of the *training* split),
  with the share of the gap between the random subnets and the full model that each closes,

under ``torch.inference_mode``, ``subnet_batch`` subnets of one size per forward pass
(:class:`~twist_lightning.stacked.StackedSubnets`; ``subnet_batch=1`` runs them one at a time, masked; the default
stacks 8 on CUDA and none on a CPU, where stacking measured no faster). It
prints a table, writes ``eval.json`` (to ``out=FILE``, else the Hydra run dir) and a box plot ``eval.png`` beside it.

``python -m twist_lightning.evaluate grid=true checkpoints=[a.ckpt,b.ckpt]`` is the robustness grid (paper
Fig. 5): each checkpoint, trained at size X, is evaluated at every size Y; it writes ``grid.csv``, ``grid.json`` and
a heatmap ``grid.png`` of mean random-subnet PPL (``out=FILE.csv`` names the CSV, the others go beside it). X comes
from ``train_sizes=[...]``, else from the training run's saved Hydra config (``<run>/.hydra/config.yaml``:
``twist.n_sub``, ``twist.variant=none`` = dense) next to ``<run>/checkpoints/*.ckpt``.

This module is the command line only. The library is :mod:`twist_lightning.evaluation` (:func:`evaluate_subnets`:
model + batches in, results dict out; :func:`evaluate_checkpoint`; :func:`evaluate_grid`), with
:mod:`twist_lightning.checkpoint_data`, :mod:`twist_lightning.tables` and :mod:`twist_lightning.plots`; the schema
is :class:`twist_lightning.config.EvaluateConfig`. The names that lived here before that split are re-exported.

Examples::

    python -m twist_lightning.evaluate checkpoint=outputs/train/x/checkpoints/last.ckpt sizes=[1,2,3,4] samples=8
    python -m twist_lightning.evaluate checkpoint=last.ckpt data.source=local data.path=other.txt max_batches=10
    python -m twist_lightning.evaluate grid=true checkpoints=[a.ckpt,b.ckpt] train_sizes=[2,4] out=grid.csv
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import OmegaConf

from twist_lightning.checkpoint_data import CORPUS_KEYS, Batch, build_datamodule, collect_batches, train_calibration
from twist_lightning.config import EvalDataConfig, EvaluateConfig, register_configs
from twist_lightning.evaluation import (evaluate_checkpoint, evaluate_grid, evaluate_subnets, pick_device,
                                        resolve_methods, resolve_sizes, subnet_blueprints, train_size_of)
from twist_lightning.io import write_json
from twist_lightning.plots import plot_boxes, plot_grid
from twist_lightning.tables import TABLE_COLUMNS, format_table, table_columns, table_rows, write_csv
from twist_lightning.validate import check_evaluate_settings

__all__ = [  # run_from_config is this module's own; the others are re-exported from the library modules
    "CORPUS_KEYS", "TABLE_COLUMNS", "Batch", "EvalDataConfig", "EvaluateConfig", "build_datamodule",
    "collect_batches", "evaluate_checkpoint", "evaluate_grid", "evaluate_subnets", "pick_device", "plot_boxes",
    "plot_grid", "register_configs", "resolve_methods", "resolve_sizes", "run_from_config", "subnet_blueprints",
    "table_columns", "table_rows", "train_calibration", "train_size_of", "write_csv",
]


def _run_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else Path.cwd()


def run_from_config(cfg: Any) -> dict[str, Any]:
    """Run the evaluation (or the grid) an :class:`EvaluateConfig` describes; write and print the results."""
    c = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg.__dict__)
    check_evaluate_settings({**c, "data": c["data"] if isinstance(c["data"], dict) else dict(c["data"].__dict__)})
    kwargs = {k: c[k] for k in ("sizes", "samples", "common", "seed", "importance", "scale", "split", "max_batches",
                                "batch_tokens", "subnet_batch", "device", "progress", "calib_samples",
                                "calib_seed", "structure", "damp", "flap_compensate")}
    kwargs["methods"] = c["method"]
    kwargs["data"] = c["data"] if isinstance(c["data"], dict) else dict(c["data"].__dict__)
    if c["grid"]:
        return _run_grid(c, kwargs)
    if not c["checkpoint"]:
        raise ValueError("checkpoint=PATH is required (or grid=true checkpoints=[...]).")
    result = evaluate_checkpoint(c["checkpoint"], **kwargs)
    out = Path(c["out"]) if c["out"] else _run_dir() / "eval.json"
    write_json(out, result)  # strict JSON (NaN -> null), atomic
    if c["plot"] and math.isfinite(result["full"]["ppl"]):  # nothing to plot for a diverged model
        plot_boxes(result, out.with_suffix(".png"))
    _print_table(table_rows(result), table_columns(result),
                 f"{result['split']} PPL, {result['tokens']} tokens -> {out}")
    return result


def _run_grid(c: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    grid = evaluate_grid(c["checkpoints"], c["train_sizes"], **kwargs)
    out = Path(c["out"]) if c["out"] else _run_dir() / "grid.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_csv(grid["rows"], out)
    write_json(out.with_suffix(".json"), grid)
    if c["plot"]:
        plot_grid(grid, out.with_suffix(".png"))
    _print_table(grid["rows"], ["train_size", *TABLE_COLUMNS], f"robustness grid -> {out}")
    return grid


@rank_zero_only
def _print_table(rows: list[dict[str, Any]], columns: list[str], title: str) -> None:
    print(f"\n{title}\n{format_table(rows, columns)}")  # noqa: T201 - the CLI's console output


def _main() -> None:
    register_configs()

    @hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
    def main(cfg: Any) -> None:
        run_from_config(cfg)

    main()


if __name__ == "__main__":
    _main()
