"""Benchmark: inference (prompt processing) speed of exported TwIST subnets against the dense model.

``python -m twist_lightning.bench inference --out FILE`` runs forward passes only (eval mode, ``inference_mode``) of
the dense GPT-2 124M shape (random init) and of its exported 9/12, 6/12 and 3/12 subnets (every layer split,
C = none; :func:`~twist_lightning.subnets.extract`), side by side in one run: throughput (tokens/s) at batch 8
and latency at batch 1, prompt length 256. Repeats are interleaved across models (A B A B ...); throughput and
latency are the fastest repeat, and ``speedup`` is the median over repeats of the per-pair ratio (dense repeat i
over the subnet's repeat i), with its min and max, so load on a shared CPU hits both halves of a pair. Each row
has the analytic FLOP ratio beside the measured speed-up. Target: the 6/12 subnet's batch-8 speed-up reaches 90% of what its FLOP ratio allows
(``speedup >= 0.9 / flop_ratio``). ``--preset tiny`` runs in seconds (for tests).

``--hf`` (needs ``transformers``) adds the same models as exported ``transformers`` folders would hold them
(``export hf=true``: :class:`~twist_lightning.hf_gpt2.TwISTGPT2LMHeadModel`, pruned per layer), rows ``hf dense``,
``hf 9/12`` ..., with their speed-ups over ``hf dense`` and the same target for ``hf 6/12``.
"""

from __future__ import annotations

from typing import Any

import torch

from twist_lightning.bench.common import (base_parser, format_report, make_report, pair_ratios, target,
                                          time_interleaved, write_report)
from twist_lightning.bench.subnet import forward_flops_per_token, model_shape_row, param_bytes
from twist_lightning.blueprints import Blueprint, PartitionSpec
from twist_lightning.model import GPT, GPTConfig
from twist_lightning.selection import random_blueprint
from twist_lightning.subnets import extract

#: Fractions of the units kept per layer (C = none); 1.0 = the dense model.
FRACTIONS = (1.0, 0.75, 0.5, 0.25)
TARGET_FRACTION = 0.5
COLUMNS = ["name", "params_M", "flop_ratio", "throughput_tok_s", "speedup", "ideal_speedup", "speedup_over_ideal",
           "latency_ms", "latency_speedup"]


def build_models(cfg: GPTConfig, seed: int, device: torch.device, hf: bool = False) -> dict[str, torch.nn.Module]:
    """The dense model and its exported subnets, keyed by ``"k/N"`` (dense = ``"dense"``); ``hf`` adds each one's
    ``transformers`` export under ``"hf <key>"``."""
    torch.manual_seed(seed)
    dense = GPT(cfg).eval()
    spec = PartitionSpec.from_config(cfg, common="none")
    models: dict[str, torch.nn.Module] = {}
    for fraction in FRACTIONS:
        if fraction == 1.0:
            models["dense"] = dense
        else:
            k = round(fraction * cfg.n_head)
            models[f"{k}/{cfg.n_head}"] = extract(dense, random_blueprint(spec, fraction, seed)).eval()
    if hf:
        from twist_lightning.hf_export import to_hf  # transformers, only when asked for

        exported = {n: (extract(m, Blueprint.full(spec)) if n == "dense" else m) for n, m in models.items()}
        models.update({f"hf {n}": to_hf(m).eval() for n, m in exported.items()})  # to_hf needs extract's blueprint
    return {name: m.to(device) for name, m in models.items()}


def _forward(model: torch.nn.Module, idx: torch.Tensor) -> None:
    with torch.inference_mode():
        if isinstance(model, GPT):
            model(idx)
        else:  # transformers: every position's logits, as ours, and no KV cache to fill
            model(input_ids=idx, use_cache=False)


def run(preset: str = "gpt2", seq_len: int = 256, batch: int = 8, warmup: int = 1, repeats: int = 3,
        latency_repeats: int = 5, seed: int = 0, device: str = "cpu", hf: bool = False) -> dict[str, Any]:
    """Time every model at ``batch`` (throughput) and batch 1 (latency); return the report dict."""
    dev = torch.device(device)
    cfg = GPTConfig.from_preset(preset, dropout=0.0)
    seq_len = min(seq_len, cfg.block_size)
    models = build_models(cfg, seed, dev, hf)
    g = torch.Generator().manual_seed(seed)
    idx_b = torch.randint(0, cfg.vocab_size, (batch, seq_len), generator=g).to(dev)  # (B, T)
    idx_1 = idx_b[:1].contiguous()  # (1, T)
    thr = time_interleaved({n: (lambda m=m: _forward(m, idx_b)) for n, m in models.items()}, warmup, repeats)
    lat = time_interleaved({n: (lambda m=m: _forward(m, idx_1)) for n, m in models.items()}, warmup, latency_repeats)
    dense_flops = forward_flops_per_token(cfg, seq_len)
    rows = []
    for name, model in models.items():
        twin = models[name.removeprefix("hf ")]  # an HF export computes what its GPT does: same FLOPs
        shape = {**model_shape_row(name, twin, seq_len, dense_flops),
                 "params_M": sum(p.numel() for p in model.parameters()) / 1e6, "param_bytes": param_bytes(model)}
        rows.append({
            **shape,
            "time_s": thr[name]["min_s"],
            "times_s": thr[name]["times_s"],
            "throughput_tok_s": batch * seq_len / thr[name]["min_s"],
            "latency_ms": 1e3 * lat[name]["min_s"],
            "latency_times_s": lat[name]["times_s"],
        })
    by_name = {r["name"]: r for r in rows}
    for row in rows:
        base = by_name["hf dense" if row["name"].startswith("hf ") else "dense"]  # each family against its own dense
        pairs = pair_ratios(base["times_s"], row["times_s"])  # median of per-pair speed-ups, with their spread
        row["speedup"], row["speedup_min"], row["speedup_max"] = pairs["median"], pairs["min"], pairs["max"]
        row["ideal_speedup"] = 1.0 / row["flop_ratio"]
        row["speedup_over_ideal"] = row["speedup"] / row["ideal_speedup"]
        row["latency_speedup"] = base["latency_ms"] / row["latency_ms"]
    targets = []
    for prefix in ("", "hf ") if hf else ("",):
        half = by_name[f"{prefix}{round(TARGET_FRACTION * cfg.n_head)}/{cfg.n_head}"]
        goal = 0.9 * half["ideal_speedup"]
        targets.append(target(f"{half['name']} batch-{batch} speedup >= 0.9 / flop_ratio", half["speedup"],
                              f">= {goal:.4f}", half["speedup"] >= goal))
    config = {"preset": preset, "model": cfg.to_dict(), "seq_len": seq_len, "batch": batch, "latency_batch": 1,
              "warmup": warmup, "repeats": repeats, "latency_repeats": latency_repeats, "seed": seed, "stat": "min",
              "dtype": "float32", "device": str(dev), "common": "none", "hf": hf,
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
    parser.add_argument("--hf", action="store_true", help="also time the transformers exports (needs transformers)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run(preset=args.preset, seq_len=args.seq_len, batch=args.batch, warmup=args.warmup,
                 repeats=args.repeats, latency_repeats=args.latency_repeats, seed=args.seed, device=args.device, hf=args.hf)
    print(format_report(report, COLUMNS))  # noqa: T201 - the CLI's console output
    write_report(report, args.out)
    return report
