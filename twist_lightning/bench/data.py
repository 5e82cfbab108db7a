"""Benchmark: tokenizing a corpus into the token cache, cold and cached.

``python -m twist_lightning.bench data --path FILE_OR_FOLDER --out FILE`` times, interleaved (A B A B ...) so a
noisy machine inflates both alike:

* ``cold``: a full :meth:`~twist_lightning.token_cache.TokenCache.build` into an empty cache root (read, tokenize
  with tiktoken's encoder on 2 threads, chunk split, write, publish);
* ``datasets``: the tokenizing step the cache used before, ``datasets``' text loader plus ``Dataset.map`` over the
  same rows (reading and tokenizing only, so it is the smaller part of a cold build);
* ``cached``: reopening a finished cache (key check, ``meta.json``, memmaps of every split), what every later run pays.

Targets: cold <= 2 s and cached <= 0.2 s (the 10 MB book mix on 2 CPU cores). Without ``--path`` the bundled Tiny
Shakespeare is used. Every ratio is the median over the pairs; the machine's load average is recorded.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from twist_lightning.bench.common import base_parser, format_report, make_report, target, write_report
from twist_lightning.sources import DataSource
from twist_lightning.token_cache import SPLITS, TOKEN_DTYPE, TokenCache, tokenize_dataset

COLD_TARGET_S = 2.0
CACHED_TARGET_S = 0.2


def _cold(cache: TokenCache) -> float:
    start = time.perf_counter()
    cache.build(num_proc=2)
    return time.perf_counter() - start


def _datasets(cache: TokenCache, work: str) -> float:
    import datasets

    start = time.perf_counter()
    files = {s: str(p) for s, p in cache.files().items()}
    loaded = datasets.load_dataset("text", data_files=files, sample_by="line", keep_linebreaks=True, cache_dir=work)
    for ds in loaded.values():
        tokenize_dataset(ds, 2, work)
    return time.perf_counter() - start


def _cached(cache: TokenCache) -> float:
    start = time.perf_counter()
    assert cache.complete
    meta = cache.meta()
    for split in SPLITS:
        file = cache.folder / f"{split}.bin"
        if file.is_file():
            assert len(np.memmap(file, dtype=TOKEN_DTYPE, mode="r")) == meta["num_tokens"][split]
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = base_parser("data", __doc__.splitlines()[0])
    parser.add_argument("--path", default=None, help="a text file or a folder of split files (default: bundled)")
    parser.add_argument("--block-size", type=int, default=128)
    args = parser.parse_args(argv)
    source = DataSource.local if args.path else DataSource.bundled
    load_before = os.getloadavg()
    times: dict[str, list[float]] = {"cold": [], "datasets": [], "cached": []}
    with tempfile.TemporaryDirectory(prefix="twist-bench-data-") as tmp:
        for i in range(args.warmup + args.repeats):
            root = Path(tmp) / f"cache{i}"
            cache = TokenCache(source=source, path=args.path, block_size=args.block_size, root=root)
            cold = _cold(cache)
            cached = _cached(cache)
            with tempfile.TemporaryDirectory(dir=tmp) as work:
                via_datasets = _datasets(cache, work)
            if i >= args.warmup:
                times["cold"].append(cold)
                times["cached"].append(cached)
                times["datasets"].append(via_datasets)
        tokens = sum(cache.meta()["num_tokens"].values())
        size = sum(p.stat().st_size for p in cache.files().values())
    ratios = [c / d for c, d in zip(times["cold"], times["datasets"])]
    rows = [{"arm": arm, "median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts),
             "tokens_per_s": tokens / statistics.median(ts)} for arm, ts in times.items()]
    rows.append({"arm": "cold / datasets (median of pairs)", "median_s": statistics.median(ratios),
                 "min_s": min(ratios), "max_s": max(ratios), "tokens_per_s": None})
    cold_s, cached_s = statistics.median(times["cold"]), statistics.median(times["cached"])
    targets = [target("cold build seconds", cold_s, f"<= {COLD_TARGET_S:g}", cold_s <= COLD_TARGET_S),
               target("cached reload seconds", cached_s, f"<= {CACHED_TARGET_S:g}", cached_s <= CACHED_TARGET_S)]
    config = {"source": source.value, "path": args.path, "bytes": size, "tokens": tokens,
              "block_size": args.block_size, "warmup": args.warmup, "repeats": args.repeats,
              "load_avg_before": load_before, "load_avg_after": os.getloadavg()}
    report = make_report("data", config, rows, targets)
    print(format_report(report, ["arm", "median_s", "min_s", "max_s", "tokens_per_s"]))
    write_report(report, args.out)
    return report
