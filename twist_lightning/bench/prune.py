"""Benchmark: how long each post-training pruning method takes on the GPT-2 124M shape.

``python -m twist_lightning.bench prune --out FILE`` builds the model (random init and random tokens: the time does
not depend on the weights' values), draws ``--samples`` calibration sequences of ``--seq-len`` tokens, runs the
shared calibration pass once (:func:`~twist_lightning.prune.calibrate`; activation, flap and reconstruct all use
it) and then every method at ``--size``. A method's cost is its own time plus, for the data-aware methods, the
shared pass; the target is <= 5 minutes (300 s) per method. ``--preset tiny`` runs in seconds (tests). The
machine's load average is recorded, since other processes on a 2-core machine inflate every figure.
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch

from twist_lightning.bench.common import base_parser, format_report, make_report, target, write_report
from twist_lightning.model import GPT, GPTConfig
from twist_lightning.prune import NEEDS_DATA, Method, calibrate, prune

COLUMNS = ["method", "calibration_s", "method_s", "total_s", "params_ratio"]
TARGET_S = 300.0


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = base_parser("prune", __doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt2", help="model preset (gpt2 = the 124M shape)")
    parser.add_argument("--samples", type=int, default=128, help="calibration sequences")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per calibration sequence")
    parser.add_argument("--size", type=float, default=0.5, help="units kept per split layer (fraction of n_head)")
    parser.add_argument("--common", default="default", help="layers kept whole: default (first, last) or none")
    parser.add_argument("--methods", default=",".join(m.value for m in Method), help="comma-separated methods")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = [Method(m) for m in args.methods.split(",")]
    torch.manual_seed(args.seed)
    cfg = GPTConfig.from_preset(args.preset, dropout=0.0)
    seq_len = min(args.seq_len, cfg.block_size)
    model = GPT(cfg).eval()
    g = torch.Generator().manual_seed(args.seed)
    x = torch.randint(0, cfg.vocab_size, (args.samples, seq_len), generator=g)
    batches = [(xb, torch.roll(xb, -1, dims=1)) for xb in x.split(8)]
    load_before = os.getloadavg()
    start = time.perf_counter()
    calib = calibrate(model, batches)
    calib_s = time.perf_counter() - start
    rows, targets = [], []
    for method in methods:
        start = time.perf_counter()
        result = prune(model, args.size, method, calib, common=args.common)
        own = time.perf_counter() - start
        shared = calib_s if method in NEEDS_DATA else 0.0
        rows.append({"method": method.value, "calibration_s": shared, "method_s": own, "total_s": shared + own,
                     "params_ratio": result.model.num_params() / model.num_params()})
        targets.append(target(f"{method.value} total seconds ({args.preset}, {args.samples} x {seq_len} tokens)",
                              shared + own, f"<= {TARGET_S:g}", shared + own <= TARGET_S))
    config = {"preset": args.preset, "common": args.common, "samples": args.samples, "seq_len": seq_len, "size": args.size,
              "calibration_tokens": calib.tokens, "load_average_before": load_before,
              "load_average_after": os.getloadavg()}
    report = make_report("prune", config, rows, targets)
    write_report(report, args.out)
    print(format_report(report, COLUMNS))  # noqa: T201 - the bench's console output
    return report
