"""Benchmark: training-step cost of physical TwIST subnets against the dense model, on this machine.

``python -m twist_lightning.bench subnet --out FILE`` times forward+backward of the dense GPT-2 124M shape and
of its extracted 6/12 and 3/12 subnets (every layer split, C = none) and 6/12 with the default C (first and last
layer whole), side by side in one run (interleaved A B A B ... over ``--repeats``). Each row reports parameter
memory, analytic matmul FLOPs and the measured time, both as ratios to dense; ``time_ratio`` is the median of the
per-pair ratios (repeat i of the subnet over repeat i of dense), with its min and max. Target: the 6/12 (C = none)
time ratio is within 10% of its FLOP ratio.
"""

from __future__ import annotations

from typing import Any

import torch

from twist_lightning.bench.common import (base_parser, format_report, make_report, pair_ratios, target,
                                          time_interleaved, write_report)
from twist_lightning.blueprints import PartitionSpec
from twist_lightning.model import GPT, GPTConfig
from twist_lightning.selection import random_blueprint
from twist_lightning.subnets import extract

#: (common set, fraction of units per split layer); None = the dense model.
VARIANTS: list[tuple[str, float] | None] = [None, ("none", 0.5), ("none", 0.25), ("default", 0.5)]
COLUMNS = ["name", "params_M", "param_bytes", "flops_per_token_fwd", "flop_ratio", "time_s", "time_ratio",
           "time_ratio_min", "time_ratio_max", "time_over_flop", "cpu_ratio"]


def forward_flops_per_token(config: GPTConfig, seq_len: int) -> int:
    """Matmul FLOPs of one token's forward pass (a multiply-add = 2 FLOPs).

    Per layer: the four Linear layers (2 * weights) and attention scores and values (2 * 2 * seq_len * width,
    counting the full, not causally halved, T x T products); plus the LM head. Embedding look-ups, norms,
    softmax and GELU are not matmuls and are left out. A training step costs ~3x this (backward = 2x forward).
    """
    hd, unit, d = config.head_dim, config.ffn_unit_width, config.n_embd
    total = 2 * d * config.vocab_size  # LM head
    for layer in range(config.n_layer):
        width, hidden = config.heads(layer) * hd, config.ffn_units(layer) * unit
        linear = d * 3 * width + width * d + d * hidden + hidden * d
        total += 2 * linear + 4 * seq_len * width
    return total


def model_shape_row(name: str, model: GPT, seq_len: int, dense_flops: int) -> dict[str, Any]:
    """The size columns every model row of a benchmark starts with."""
    flops = forward_flops_per_token(model.config, seq_len)
    return {"name": name, "params_M": model.num_params(non_embedding=False) / 1e6, "param_bytes": param_bytes(model),
            "flops_per_token_fwd": flops, "flop_ratio": flops / dense_flops}


def param_bytes(model: GPT) -> int:
    """Bytes of the model's (unique) parameters."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _train_step(model: GPT, idx: torch.Tensor, targets: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)  # no gradient accumulation in the timed region
    _, loss = model(idx, targets)
    loss.backward()


def _label(spec: PartitionSpec, fraction: float, common: str) -> str:
    k = round(fraction * spec.n_head)
    return f"{k}/{spec.n_head} C={'none' if common == 'none' else 'first+last'}"


def run(preset: str = "gpt2", seq_len: int = 256, batch: int = 1, warmup: int = 1, repeats: int = 3,
        seed: int = 0, stat: str = "min", **overrides: Any) -> dict[str, Any]:
    """Time every variant and return the report dict (see :mod:`twist_lightning.bench.common`).

    ``time_s`` uses ``stat``: ``"min"`` by default because on a shared CPU other processes only ever add time;
    ``"median"`` is also reported in every row. ``time_ratio`` and the target use the median of per-pair ratios.
    """
    if stat not in ("min", "median"):
        raise ValueError(f"stat={stat!r} must be 'min' or 'median'.")
    torch.manual_seed(seed)
    cfg = GPTConfig.from_preset(preset, dropout=0.0, **overrides)
    seq_len = min(seq_len, cfg.block_size)
    dense = GPT(cfg).train()
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, cfg.vocab_size, (batch, seq_len + 1), generator=g)
    idx, targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()  # (B, T) each
    dense_flops = forward_flops_per_token(cfg, seq_len)
    models: dict[str, GPT] = {}
    for variant in VARIANTS:
        if variant is None:
            models["dense"] = dense
            continue
        common, fraction = variant
        spec = PartitionSpec.from_config(cfg, common=common)
        models[_label(spec, fraction, common)] = extract(dense, random_blueprint(spec, fraction, seed))
    steps = {name: (lambda m=model: _train_step(m, idx, targets)) for name, model in models.items()}
    timings = time_interleaved(steps, warmup=warmup, repeats=repeats)
    rows: list[dict[str, Any]] = []
    for name, model in models.items():
        shape = model_shape_row(name, model, seq_len, dense_flops)
        rows.append({
            **shape,
            "flops_step": 3 * shape["flops_per_token_fwd"] * batch * seq_len,
            "time_s": timings[name][f"{stat}_s"],
            "time_median_s": timings[name]["median_s"],
            "time_min_s": timings[name]["min_s"],
            "times_s": timings[name]["times_s"],
            "cpu_min_s": timings[name]["cpu_min_s"],
            "cpu_times_s": timings[name]["cpu_times_s"],
        })
    for row in rows:
        # judged on the median of per-pair ratios (this arm's repeat i over the dense step's repeat i)
        pairs = pair_ratios(row["times_s"], rows[0]["times_s"])
        row["time_ratio"] = pairs["median"]
        row["time_ratio_min"], row["time_ratio_max"], row["time_ratios"] = pairs["min"], pairs["max"], pairs["ratios"]
        row["time_over_flop"] = row["time_ratio"] / row["flop_ratio"]
        row["cpu_ratio"] = row["cpu_min_s"] / rows[0]["cpu_min_s"]  # cross-check only: OpenMP spin-waits still inflate it under load
    half = rows[1]
    targets_ = [target(f"{half['name']} time_ratio <= 1.1 * flop_ratio", half["time_ratio"],
                       f"<= {1.1 * half['flop_ratio']:.4f}", half["time_ratio"] <= 1.1 * half["flop_ratio"])]
    config = {"preset": preset, "model": cfg.to_dict(), "seq_len": seq_len, "batch": batch, "warmup": warmup,
              "repeats": repeats, "seed": seed, "stat": stat, "dtype": "float32", "step": "forward+backward (train mode)"}
    return make_report("subnet", config, rows, targets_)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """CLI entry: parse ``argv``, run, print the table, write ``--out``; return the report."""
    parser = base_parser("subnet", __doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt2", help="model preset (gpt2 = 124M shape; tiny for smoke tests)")
    parser.add_argument("--tiny", action="store_true", help="shorthand for --preset tiny")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per sequence (capped at block_size)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--stat", choices=("min", "median"), default="min",
                        help="repeat statistic behind time_s / time_ratio (min resists load from other processes)")
    parser.set_defaults(repeats=5)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run(preset="tiny" if args.tiny else args.preset, seq_len=args.seq_len, batch=args.batch,
                 warmup=args.warmup, repeats=args.repeats, seed=args.seed, stat=args.stat)
    print(format_report(report, COLUMNS))
    write_report(report, args.out)
    return report
