"""Benchmark: inference (prompt processing) speed of exported TwIST subnets against the dense model.

``python -m twist_lightning.bench inference --out FILE`` runs forward passes only (eval mode, ``inference_mode``) of
the dense GPT-2 124M shape (random init) and of its exported 9/12, 6/12 and 3/12 subnets (every layer split,
C = none; :func:`~twist_lightning.partition.extract`), side by side in one run: throughput (tokens/s) at batch 8
and latency at batch 1, prompt length 256. Repeats are interleaved across models and the minimum is taken, since
on a shared CPU other processes only ever add time. Each row has the analytic FLOP ratio beside the measured
speed-up. Target: the 6/12 subnet's batch-8 speed-up reaches 90% of what its FLOP ratio allows
(``speedup >= 0.9 / flop_ratio``). ``--preset tiny`` runs in seconds (for tests).
"""

from __future__ import annotations

from typing import Any

import torch

from twist_lightning.bench.common import base_parser, format_report, make_report, target, time_interleaved, write_report
from twist_lightning.bench.subnet import forward_flops_per_token, model_shape_row
from twist_lightning.model import GPT, GPTConfig
from twist_lightning.partition import PartitionSpec, extract, random_blueprint

#: Fractions of the units kept per layer (C = none); 1.0 = the dense model.
FRACTIONS = (1.0, 0.75, 0.5, 0.25)
TARGET_FRACTION = 0.5
COLUMNS = ["name", "params_M", "flop_ratio", "throughput_tok_s", "speedup", "ideal_speedup", "speedup_over_ideal",
           "latency_ms", "latency_speedup"]


def build_models(cfg: GPTConfig, seed: int, device: torch.device) -> dict[str, GPT]:
    """The dense model and its exported subnets, keyed by ``"k/N"`` (dense = ``"dense"``)."""
    torch.manual_seed(seed)
    dense = GPT(cfg).eval()
    spec = PartitionSpec.from_config(cfg, common="none")
    models = {}
    for fraction in FRACTIONS:
        if fraction == 1.0:
            models["dense"] = dense
        else:
            k = round(fraction * cfg.n_head)
            models[f"{k}/{cfg.n_head}"] = extract(dense, random_blueprint(spec, fraction, seed)).eval()
    return {name: m.to(device) for name, m in models.items()}


def _forward(model: GPT, idx: torch.Tensor) -> None:
    with torch.inference_mode():
        model(idx)


def run(preset: str = "gpt2", seq_len: int = 256, batch: int = 8, warmup: int = 1, repeats: int = 3,
        latency_repeats: int = 5, seed: int = 0, device: str = "cpu") -> dict[str, Any]:
    """Time every model at ``batch`` (throughput) and batch 1 (latency); return the report dict."""
    dev = torch.device(device)
    cfg = GPTConfig.from_preset(preset, dropout=0.0)
    seq_len = min(seq_len, cfg.block_size)
    models = build_models(cfg, seed, dev)
    g = torch.Generator().manual_seed(seed)
    idx_b = torch.randint(0, cfg.vocab_size, (batch, seq_len), generator=g).to(dev)  # (B, T)
    idx_1 = idx_b[:1].contiguous()  # (1, T)
    thr = time_interleaved({n: (lambda m=m: _forward(m, idx_b)) for n, m in models.items()}, warmup, repeats)
    lat = time_interleaved({n: (lambda m=m: _forward(m, idx_1)) for n, m in models.items()}, warmup, latency_repeats)
    dense_flops = forward_flops_per_token(cfg, seq_len)
    rows = []
    for name, model in models.items():
        rows.append({
            **model_shape_row(name, model, seq_len, dense_flops),
            "time_s": thr[name]["min_s"],
            "times_s": thr[name]["times_s"],
            "throughput_tok_s": batch * seq_len / thr[name]["min_s"],
            "latency_ms": 1e3 * lat[name]["min_s"],
            "latency_times_s": lat[name]["times_s"],
        })
    for row in rows:
        row["speedup"] = rows[0]["time_s"] / row["time_s"]
        row["ideal_speedup"] = 1.0 / row["flop_ratio"]
        row["speedup_over_ideal"] = row["speedup"] / row["ideal_speedup"]
        row["latency_speedup"] = rows[0]["latency_ms"] / row["latency_ms"]
    half = next(r for r in rows if r["name"] == f"{round(TARGET_FRACTION * cfg.n_head)}/{cfg.n_head}")
    goal = 0.9 * half["ideal_speedup"]
    targets = [target(f"{half['name']} batch-{batch} speedup >= 0.9 / flop_ratio", half["speedup"], f">= {goal:.4f}",
                      half["speedup"] >= goal)]
    config = {"preset": preset, "model": cfg.to_dict(), "seq_len": seq_len, "batch": batch, "latency_batch": 1,
              "warmup": warmup, "repeats": repeats, "latency_repeats": latency_repeats, "seed": seed, "stat": "min",
              "dtype": "float32", "device": str(dev), "common": "none",
              "step": "forward only (eval mode, torch.inference_mode), full logits"}
    return make_report("inference", config, rows, targets)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """CLI entry: parse ``argv``, run, print the table, write ``--out``; return the report."""
    parser = base_parser("inference", __doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt2", help="model preset (gpt2 = 124M shape; tiny for smoke tests)")
    parser.add_argument("--seq-len", type=int, default=256, help="prompt length (capped at block_size)")
    parser.add_argument("--batch", type=int, default=8, help="batch of the throughput measurement")
    parser.add_argument("--latency-repeats", type=int, default=5, help="timed batch-1 calls per model")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run(preset=args.preset, seq_len=args.seq_len, batch=args.batch, warmup=args.warmup,
                 repeats=args.repeats, latency_repeats=args.latency_repeats, seed=args.seed, device=args.device)
    print(format_report(report, COLUMNS))  # noqa: T201 - the CLI's console output
    write_report(report, args.out)
    return report
