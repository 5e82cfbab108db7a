"""``python -m twist_lightning.report DIR... [--out FILE]``: a recipe's run folders as one ``report.md`` with plots.

It reads what the entry points leave behind, searching each ``DIR`` recursively:

* ``summary.json`` (``run``): one row per run, named by the run's Hydra overrides (``.hydra/overrides.yaml``);
* ``eval.json`` or any JSON shaped like :func:`~twist_lightning.evaluation.evaluate_checkpoint`'s result
  (``evaluate``): PPL per subnet size for random subnets (mean, std, min, max) and every pruning method, beside the
  fraction of all block units each size removes, and a plot of PPL per size, one line per method with the random
  subnets' spread as a band;
* ``grid.json`` (``evaluate grid=true``): the train-size x eval-size table and its heatmap.

Everything is sorted by path and written without timestamps (PNG metadata included), so the same JSON gives the
same report byte for byte. Plots go beside the report (``<out stem>_<n>.png``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from twist_lightning.io import atomic_path

__all__ = ["collect", "main", "units_removed", "write_report"]


# ---------------------------------------------------------------------- reading


def _kind(data: Any) -> str | None:
    if not isinstance(data, dict):
        return None
    if "val_ppl" in data and "global_step" in data:
        return "run"
    if isinstance(data.get("sizes"), list) and "full" in data and "model" in data:
        return "evaluate"
    if isinstance(data.get("rows"), list) and data["rows"] and "train_size" in data["rows"][0]:
        return "grid"
    return None


def _overrides(run_dir: Path) -> str:
    file = run_dir / ".hydra" / "overrides.yaml"
    if not file.is_file():
        return ""
    import yaml  # PyYAML comes with Hydra

    values = yaml.safe_load(file.read_text()) or []
    return " ".join(str(v) for v in values if not str(v).startswith("hydra."))


def collect(dirs: list[str | os.PathLike[str]]) -> dict[str, list[tuple[Path, dict[str, Any]]]]:
    """Every run summary, evaluation and grid JSON under ``dirs``, by kind, sorted by path.

    Raises:
        FileNotFoundError: A ``DIR`` that does not exist.
        ValueError: Nothing usable found (the message lists what the report reads).
    """
    found: dict[str, list[tuple[Path, dict[str, Any]]]] = {"run": [], "evaluate": [], "grid": []}
    for d in dirs:
        root = Path(d)
        if not root.exists():
            raise FileNotFoundError(f"report: {str(d)!r} does not exist. Fix: pass the run folders of a recipe "
                                    "(e.g. multirun/<task>/<date>).")
        files = [root] if root.is_file() else sorted(root.rglob("*.json"))
        for file in files:
            try:
                data = json.loads(file.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            kind = _kind(data)
            if kind is not None:
                found[kind].append((file, data))
    for kind in found:
        found[kind].sort(key=lambda item: str(item[0]))
    if not any(found.values()):
        raise ValueError(f"report: no summary.json, eval.json or grid.json under {[str(d) for d in dirs]}. Fix: pass "
                         "the folders a training run, `evaluate` or a recipe wrote.")
    return found


# ---------------------------------------------------------------------- numbers


def units_removed(result: dict[str, Any], heads: int, ffn: int) -> float:
    """Share of all the model's block units (heads and FFN groups of every layer) a subnet of this size drops."""
    model = result["model"]
    n_layer, n_head = int(model["n_layer"]), int(model["n_head"])
    groups = int(model.get("ffn_groups") or n_head)
    split = n_layer - len(result.get("common") or [])
    return split * ((n_head - heads) + (groups - ffn)) / (n_layer * (n_head + groups))


def _f(v: Any, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _rel(path: Path, out_dir: Path) -> str:
    return Path(os.path.relpath(path, out_dir)).as_posix()


# ---------------------------------------------------------------------- sections


def _runs_section(runs: list[tuple[Path, dict[str, Any]]], out_dir: Path) -> list[str]:
    lines = ["## Runs", "",
             "| run | settings | variant | steps | full PPL | subnet | subnet PPL mean ± std (min-max) | subnet / full "
             "| tokens/s | wall s | bytes/step |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for file, s in runs:
        mean, full = s.get("subnet_ppl_mean"), s.get("val_ppl")
        subnet = (f"{_f(mean)} ± {_f(s.get('subnet_ppl_std'), 2)} ({_f(s.get('subnet_ppl_min'))}-"
                  f"{_f(s.get('subnet_ppl_max'))})" if mean is not None else "")
        ratio = f"{mean / full:.3f}" if mean is not None and full else ""
        cells = [_rel(file.parent, out_dir), f"`{_overrides(file.parent)}`" if _overrides(file.parent) else "",
                 s.get("twist_variant", ""), _f(s.get("global_step")), _f(full), s.get("subnet_size", ""), subnet,
                 ratio, _f(s.get("tokens_per_s"), 0), _f(s.get("wall_s"), 0), _f(s.get("bytes_per_step"), 0)]
        if s.get("diverged"):
            cells[4] = "diverged"
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return [*lines, ""]


def _eval_section(file: Path, r: dict[str, Any], out_dir: Path, png: Path) -> list[str]:
    n_head = r["model"]["n_head"]
    methods = [m for m in (r["sizes"][0].get("methods", {}) if r["sizes"] else {}) if m != "random"]
    lines = [f"## Evaluation: {_rel(file, out_dir)}", "",
             f"Checkpoint `{r.get('checkpoint')}`, {r.get('split')} split, {r.get('tokens')} tokens, "
             f"{r.get('samples')} random subnets per size, common layers {r.get('common')}; full model PPL "
             f"**{_f(r['full']['ppl'], 2)}**.", "",
             "| " + " | ".join(["size", "block units removed", "random mean ± std", "min", "max", *methods]) + " |",
             "|---|---|---|---|---|" + "---|" * len(methods)]
    for row in r["sizes"]:
        cells = [f"{row['heads']}/{n_head}", f"{units_removed(r, row['heads'], row['ffn']):.1%}",
                 f"{_f(row.get('mean_ppl'), 2)} ± {_f(row.get('std_ppl'), 2)}", _f(row.get("min_ppl"), 2),
                 _f(row.get("max_ppl"), 2), *(_f(row.get("methods", {}).get(m), 2) for m in methods)]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, "", f"![PPL per size]({_rel(png, out_dir)})", ""]


def _grid_section(file: Path, grid: dict[str, Any], out_dir: Path, png: Path) -> list[str]:
    rows = grid["rows"]
    evals = list(dict.fromkeys(r["heads"] for r in rows))
    trains = list(dict.fromkeys((r["checkpoint"], r["train_size"]) for r in rows))
    table = {(r["checkpoint"], r["heads"]): r["mean_ppl"] for r in rows}
    lines = [f"## Train size x eval size: {_rel(file, out_dir)}", "",
             "Mean random-subnet PPL; rows: the size a model was trained at, columns: the size evaluated.", "",
             "| trained at | " + " | ".join(f"eval {h}" for h in evals) + " |", "|---|" + "---|" * len(evals)]
    for ckpt, size in trains:
        lines.append(f"| {size} | " + " | ".join(_f(table.get((ckpt, h)), 2) for h in evals) + " |")
    return [*lines, "", f"![grid]({_rel(png, out_dir)})", ""]


# ---------------------------------------------------------------------- plots


def _save(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png", metadata={"Software": None})  # no version stamp: same bytes


def _plot_sizes(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = r["sizes"]
    removed = [100 * units_removed(r, row["heads"], row["ffn"]) for row in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    mean = [row.get("mean_ppl") or math.nan for row in rows]
    std = [row.get("std_ppl") or 0.0 for row in rows]
    ax.plot(removed, mean, marker="o", color="tab:blue", label="random subnets (mean ± std, min-max)")
    ax.fill_between(removed, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                    color="tab:blue", alpha=0.25)
    ax.fill_between(removed, [row.get("min_ppl") or math.nan for row in rows],
                    [row.get("max_ppl") or math.nan for row in rows], color="tab:blue", alpha=0.1)
    others = [m for m in (rows[0].get("methods", {}) if rows else {}) if m != "random"]
    for i, (m, marker) in enumerate(zip(others, "s^vD<>p*")):  # C0 is the random subnets' blue
        ax.plot(removed, [row["methods"].get(m) or math.nan for row in rows], marker=marker, color=f"C{i + 1}",
                label=m)
    ax.axhline(r["full"]["ppl"], color="tab:green", linestyle="--", label="full model")
    ax.set(xlabel="block units removed (%)", ylabel=f"{r.get('split')} perplexity")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _plot_grid(grid: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = grid["rows"]
    evals = list(dict.fromkeys(r["heads"] for r in rows))
    trains = list(dict.fromkeys((r["checkpoint"], r["train_size"]) for r in rows))
    table = {(r["checkpoint"], r["heads"]): r["mean_ppl"] for r in rows}
    values = [[table.get((c, h)) or math.nan for h in evals] for c, _ in trains]
    fig, ax = plt.subplots(figsize=(0.9 * len(evals) + 3, 0.6 * len(trains) + 2))
    im = ax.imshow(values, cmap="viridis_r", aspect="auto")
    ax.set_xticks(range(len(evals)), [str(h) for h in evals])
    ax.set_yticks(range(len(trains)), [str(s) for _, s in trains])
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            ax.text(j, i, "" if math.isnan(v) else f"{v:.1f}", ha="center", va="center", fontsize=8, color="w")
    ax.set(xlabel="evaluated at (heads per split layer)", ylabel="trained at")
    fig.colorbar(im, ax=ax, label="mean PPL")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


# ---------------------------------------------------------------------- the report


def write_report(dirs: list[str | os.PathLike[str]], out: str | os.PathLike[str], plots: bool = True) -> Path:
    """Write ``out`` (markdown) and its PNGs from the JSON under ``dirs``; returns the report's path."""
    found = collect(dirs)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out_dir = out.parent.resolve()
    counts = {k: len(v) for k, v in found.items()}
    lines = ["# Report", "",
             f"Made by `python -m twist_lightning.report` from {counts['run']} run summaries, {counts['evaluate']} "
             f"evaluations and {counts['grid']} grids under " + ", ".join(f"`{_rel(Path(d).resolve(), out_dir)}`"
                                                                          for d in dirs) + ".", ""]
    if found["run"]:
        lines += _runs_section([(f.resolve(), d) for f, d in found["run"]], out_dir)
    n = 0
    for file, result in found["evaluate"]:
        n += 1
        png = out_dir / f"{out.stem}_{n}.png"
        lines += _eval_section(file.resolve(), result, out_dir, png)
        if plots:
            _plot_sizes(result, png)
    for file, grid in found["grid"]:
        n += 1
        png = out_dir / f"{out.stem}_{n}.png"
        lines += _grid_section(file.resolve(), grid, out_dir, png)
        if plots:
            _plot_grid(grid, png)
    with atomic_path(out) as tmp:
        Path(tmp).write_text("\n".join(lines))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m twist_lightning.report", description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", help="run folders (searched recursively for summary/eval/grid JSON)")
    parser.add_argument("--out", default=None, help="the markdown file (default: report.md in the first DIR)")
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    args = parser.parse_args(argv)
    first = Path(args.dirs[0])
    out = args.out or (first / "report.md" if first.is_dir() else first.with_name("report.md"))
    try:
        path = write_report(args.dirs, out, plots=not args.no_plots)
    except (FileNotFoundError, ValueError) as err:
        print(f"Error: {err}", file=sys.stderr)  # noqa: T201 - the CLI's message
        return 1
    print(f"report written to {path}")  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
