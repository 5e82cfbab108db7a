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


#: Overrides every run of the report shares, left out of each row (stated once at the top); set by write_report.
_SHARED: set[str] = set()


def _override_list(run_dir: Path) -> list[str]:
    file = run_dir / ".hydra" / "overrides.yaml"
    if not file.is_file():
        return []
    import yaml  # PyYAML comes with Hydra

    return [str(v) for v in (yaml.safe_load(file.read_text()) or []) if not str(v).startswith("hydra.")]


def _overrides(run_dir: Path) -> str:
    return " ".join(v for v in _override_list(run_dir) if v not in _SHARED)


def _run_config(run_dir: Path) -> dict[str, Any]:
    file = run_dir / ".hydra" / "config.yaml"
    if not file.is_file():
        return {}
    import yaml

    return yaml.safe_load(file.read_text()) or {}


def trained_as(run_dir: Path) -> str | None:
    """How the run in ``run_dir`` trained: ``"dense"``, ``"6/12"`` (TwIST at that size, ``" no scale"`` added), or
    ``None`` when the folder holds no Hydra run config."""
    cfg = _run_config(run_dir)
    if not cfg:
        return None
    twist, model = cfg.get("twist") or {}, cfg.get("model") or {}
    if str(twist.get("variant", "none")) == "none":
        return "dense"
    n_head, n_sub = int(model.get("n_head", 0)), twist.get("n_sub")
    heads = round(n_sub * n_head) if isinstance(n_sub, float) else n_sub
    return f"{heads}/{n_head}" + ("" if twist.get("scale", True) else " no scale")


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


def _label(file: Path, out_dir: Path) -> str:
    overrides = _overrides(file.parent)
    return f"{_rel(file.parent, out_dir)}" + (f" (`{overrides}`)" if overrides else "")


def _comparison_sections(evals: list[tuple[Path, dict[str, Any]]], out_dir: Path, heatmap: Path | None
                         ) -> list[str]:
    """Full models side by side; TwIST's random subnets against the best pruning of a densely trained model; and
    the trained-size x evaluated-size table, from evaluations that sit in training run folders."""
    runs = [(f, r, trained_as(f.parent)) for f, r in evals]
    runs = [(f, r, t) for f, r, t in runs if t is not None]
    if not runs:
        return []
    lines = ["## Full models", "", "| run | trained as | split | full PPL | unknown-token share |", "|---|---|---|---|---|"]
    for f, r, t in runs:
        unk = f"{r['unk_share']:.2%}" if r.get("unk_share") is not None else "n/a"
        lines.append(f"| {_label(f, out_dir)} | {t} | {r.get('split')} | {_f(r['full']['ppl'], 2)} | {unk} |")
    lines.append("")
    pruned = [(f, r) for f, r, t in runs if t == "dense" and r["sizes"] and r["sizes"][0].get("methods")]
    twisted = [(f, r, t) for f, r, t in runs if t != "dense"]
    if pruned and twisted:
        base_file, base = pruned[0]
        best = {}
        for row in base["sizes"]:
            methods = {m: v for m, v in row["methods"].items() if v is not None and math.isfinite(v)}
            if methods and row["heads"] < base["model"]["n_head"]:
                m = min(methods, key=methods.get)
                best[row["heads"]] = (m, methods[m])
        lines += ["## TwIST's random subnets against post-training pruning", "",
                  f"R = TwIST's mean random-subnet PPL / the best pruning method's PPL at the same size on "
                  f"{_label(base_file, out_dir)} (the paper: R = 23.14 / 31.64 = 0.73 at 6/12 on GPT-2).", "",
                  "| TwIST run | trained as | size | random mean ± std (min-max) | best pruning (method) | R |",
                  "|---|---|---|---|---|---|"]
        n_head = base["model"]["n_head"]
        for f, r, t in twisted:
            for row in r["sizes"]:
                if row["heads"] in best and row.get("mean_ppl") is not None:
                    m, v = best[row["heads"]]
                    lines.append(f"| {_label(f, out_dir)} | {t} | {row['heads']}/{n_head} | {_f(row['mean_ppl'], 2)} ± "
                                 f"{_f(row.get('std_ppl'), 2)} ({_f(row.get('min_ppl'), 2)}-{_f(row.get('max_ppl'), 2)})"
                                 f" | {_f(v, 2)} ({m}) | {row['mean_ppl'] / v:.3f} |")
        half = n_head // 2  # the paper's headline size
        ratios = [(row["mean_ppl"] / best[half][1], _label(f, out_dir)) for f, r, t in twisted for row in r["sizes"]
                  if t == f"{half}/{n_head}" and row["heads"] == half and half in best and row.get("mean_ppl") is not None]
        if ratios:
            ratio, run = min(ratios)
            lines += ["", f"Headline: the lowest R of a TwIST model trained and evaluated at {half}/{n_head} is "
                          f"**{ratio:.3f}** ({run}); the goal R <= 0.75 is {'met' if ratio <= 0.75 else 'not met'} "
                          "(the paper: 0.73)."]
        lines.append("")
    sizes = sorted({row["heads"] for _, r, _ in runs for row in r["sizes"]})
    if len(runs) > 1 and len(sizes) > 1:
        lines += ["## Trained size x evaluated size", "",
                  "Mean random-subnet PPL; rows: how a model was trained, columns: the size evaluated.", "",
                  "| run | trained as | " + " | ".join(f"eval {h}" for h in sizes) + " |",
                  "|---|---|" + "---|" * len(sizes)]
        for f, r, t in runs:
            by = {row["heads"]: row.get("mean_ppl") for row in r["sizes"]}
            lines.append(f"| {_label(f, out_dir)} | {t} | " + " | ".join(_f(by.get(h), 2) for h in sizes) + " |")
        lines += ["", *([f"![trained size x evaluated size]({_rel(heatmap, out_dir)})", ""] if heatmap else [])]
    return lines


def _trained_grid(evals: list[tuple[Path, dict[str, Any]]], out_dir: Path) -> dict[str, Any] | None:
    """The trained-size x evaluated-size table as a grid for :func:`_plot_grid` (``None`` if there is none)."""
    rows = [{"checkpoint": _rel(f.parent, out_dir), "train_size": trained_as(f.parent), "heads": row["heads"],
             "mean_ppl": row.get("mean_ppl")} for f, r in evals if trained_as(f.parent) is not None for row in r["sizes"]]
    runs = {r["checkpoint"] for r in rows}
    return {"rows": rows} if len(runs) > 1 and len({r["heads"] for r in rows}) > 1 else None


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
        # a run folder's summary.json is named by its folder; a collected one (bench/results) by its file
        name = _rel(file.parent if file.name == "summary.json" else file.with_suffix(""), out_dir)
        cells = [name, f"`{_overrides(file.parent)}`" if _overrides(file.parent) else "",
                 s.get("twist_variant", ""), _f(s.get("global_step")), _f(full), s.get("subnet_size", ""), subnet,
                 ratio, _f(s.get("tokens_per_s"), 0), _f(s.get("wall_s"), 0), _f(s.get("bytes_per_step"), 0)]
        if s.get("diverged"):
            cells[4] = "diverged"
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return [*lines, ""]


def _eval_section(file: Path, r: dict[str, Any], out_dir: Path, png: Path | None) -> list[str]:
    n_head = r["model"]["n_head"]
    methods = [m for m in (r["sizes"][0].get("methods", {}) if r["sizes"] else {}) if m != "random"]
    lines = [f"## Evaluation: {_label(file, out_dir)}", "",
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
    return [*lines, "", *([f"![PPL per size]({_rel(png, out_dir)})", ""] if png else [])]


def _grid_section(file: Path, grid: dict[str, Any], out_dir: Path, png: Path | None) -> list[str]:
    rows = grid["rows"]
    evals = list(dict.fromkeys(r["heads"] for r in rows))
    trains = list(dict.fromkeys((r["checkpoint"], r["train_size"]) for r in rows))
    table = {(r["checkpoint"], r["heads"]): r["mean_ppl"] for r in rows}
    lines = [f"## Train size x eval size: {_rel(file, out_dir)}", "",
             "Mean random-subnet PPL; rows: the size a model was trained at, columns: the size evaluated.", "",
             "| trained at | " + " | ".join(f"eval {h}" for h in evals) + " |", "|---|" + "---|" * len(evals)]
    for ckpt, size in trains:
        lines.append(f"| {size} | " + " | ".join(_f(table.get((ckpt, h)), 2) for h in evals) + " |")
    return [*lines, "", *([f"![grid]({_rel(png, out_dir)})", ""] if png else [])]


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
    folders = {f.parent for kind in found.values() for f, _ in kind}
    lists = [set(_override_list(d)) for d in sorted(folders) if (d / ".hydra" / "overrides.yaml").is_file()]
    _SHARED.clear()
    if len(lists) > 1:
        _SHARED.update(set.intersection(*lists))
    lines = ["# Report", "",
             f"Made by `python -m twist_lightning.report` from {counts['run']} run summaries, {counts['evaluate']} "
             f"evaluations and {counts['grid']} grids under " + ", ".join(f"`{_rel(Path(d).resolve(), out_dir)}`"
                                                                          for d in dirs) + ".", ""]
    if _SHARED:
        lines += ["Every run was started with: `" + " ".join(sorted(_SHARED)) + "`.", ""]
    if found["run"]:
        lines += _runs_section([(f.resolve(), d) for f, d in found["run"]], out_dir)
    evals = [(f.resolve(), d) for f, d in found["evaluate"]]
    heatmap = out_dir / f"{out.stem}_trained.png"
    lines += _comparison_sections(evals, out_dir, heatmap if plots else None)  # no links to PNGs not made
    trained = _trained_grid(evals, out_dir)
    if plots and trained is not None:
        _plot_grid(trained, heatmap)
    # one section and one numbered PNG per evaluation, then per grid
    sections = [(f, d, _eval_section, _plot_sizes) for f, d in found["evaluate"]]
    sections += [(f, d, _grid_section, _plot_grid) for f, d in found["grid"]]
    for n, (file, data, section, plot) in enumerate(sections, start=1):
        png = out_dir / f"{out.stem}_{n}.png"
        lines += section(file.resolve(), data, out_dir, png if plots else None)
        if plots:
            plot(data, png)
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
