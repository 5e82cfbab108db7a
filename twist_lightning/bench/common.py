"""Shared benchmark plumbing: machine info, timing, the JSON report and its console table.

Every benchmark writes exactly::

    {"bench": NAME, "machine": {...}, "config": {...}, "rows": [...],
     "targets": [{"name": ..., "value": ..., "target": ..., "met": ...}]}

The console table is :func:`twist_lightning.tables.format_table`, re-exported here for the benchmarks' old import.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from twist_lightning.tables import format_cell, format_table

__all__ = ["base_parser", "format_report", "format_table", "machine_info", "make_report", "pair_ratios", "target",
           "time_fn", "time_interleaved", "write_report"]


def machine_info() -> dict[str, Any]:
    """What the figures depend on: CPU count, torch version and threads, platform, accelerator."""
    return {
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def base_parser(name: str, description: str) -> argparse.ArgumentParser:
    """Argument parser with the options every benchmark shares (--out, --warmup, --repeats, --threads, --seed)."""
    parser = argparse.ArgumentParser(prog=f"python -m twist_lightning.bench {name}", description=description)
    parser.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls before timing")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls; the median is reported")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def time_fn(fn: Callable[[], Any], warmup: int = 1, repeats: int = 3, no_grad: bool = False) -> dict[str, Any]:
    """Median wall time of ``fn()`` after ``warmup`` untimed calls (allocator and kernel caches warm).

    Returns ``{"median_s", "min_s", "times_s", "cpu_times_s", "cpu_min_s"}``; ``cpu_*`` is this process's CPU
    time (all threads): less inflated than wall time by other processes, though OpenMP spin-waits still count. With
    ``no_grad`` the calls run under ``torch.no_grad()``.
    """
    if repeats < 1:
        raise ValueError(f"repeats={repeats} must be >= 1.")
    times, cpu_times = [], []
    with torch.no_grad() if no_grad else torch.enable_grad():
        for i in range(warmup + repeats):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            start, cpu_start = time.perf_counter(), time.process_time()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - start)
                cpu_times.append(time.process_time() - cpu_start)
    return {"median_s": statistics.median(times), "min_s": min(times), "times_s": times,
            "cpu_times_s": cpu_times, "cpu_min_s": min(cpu_times)}


def time_interleaved(fns: dict[str, Callable[[], Any]], warmup: int = 1, repeats: int = 3,
                     no_grad: bool = False) -> dict[str, dict[str, Any]]:
    """:func:`time_fn` for several callables, interleaved round-robin (one call of each per repeat).

    On a shared or thermally throttling machine, load changes then hit every variant alike instead of
    whichever happened to run last, so ratios between them stay meaningful.
    """
    if repeats < 1:
        raise ValueError(f"repeats={repeats} must be >= 1.")
    times: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(warmup + repeats):
        for name, fn in fns.items():
            t = time_fn(fn, warmup=0, repeats=1, no_grad=no_grad)
            if i >= warmup:
                times[name].append(t["median_s"])
                cpu[name].append(t["cpu_min_s"])
    return {name: {"median_s": statistics.median(t), "min_s": min(t), "times_s": t, "cpu_times_s": cpu[name],
                   "cpu_min_s": min(cpu[name])} for name, t in times.items()}


def pair_ratios(num: Sequence[float], den: Sequence[float]) -> dict[str, Any]:
    """``num[i] / den[i]`` for each interleaved repeat ``i``: the median (what targets are judged on), the spread
    (min, max) and every ratio. A load spike then inflates both halves of one pair, not one arm's whole series."""
    if len(num) != len(den) or not num:
        raise ValueError(f"pair_ratios needs two equally long, non-empty series (got {len(num)} and {len(den)}).")
    ratios = [a / b for a, b in zip(num, den)]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "ratios": ratios}


def target(name: str, value: float, goal: str, met: bool) -> dict[str, Any]:
    """One target entry: ``goal`` says what ``value`` must satisfy (e.g. ``"<= 0.71"``)."""
    return {"name": name, "value": value, "target": goal, "met": bool(met)}


def make_report(bench: str, config: dict[str, Any], rows: list[dict[str, Any]], targets: list[dict[str, Any]]) -> dict:
    """The report dict (machine info filled in)."""
    return {"bench": bench, "machine": machine_info(), "config": config, "rows": rows, "targets": targets}


def write_report(report: dict[str, Any], path: Path | str | None) -> None:
    """Write ``report`` as indented JSON to ``path`` (parents created); no-op for ``None``."""
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


def format_report(report: dict[str, Any], columns: Sequence[str]) -> str:
    """Console view of a report: the rows table and one line per target."""
    out = [f"bench {report['bench']} | torch {report['machine']['torch']} | {report['machine']['threads']} threads | "
           f"{report['machine']['processor']}", format_table(report["rows"], columns)]
    for t in report["targets"]:
        out.append(f"target {t['name']}: {format_cell(t['value'])} (want {t['target']}) -> {'MET' if t['met'] else 'MISSED'}")
    return "\n".join(out)
