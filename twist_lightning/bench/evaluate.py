"""Benchmark: evaluating many random subnets, one per forward pass vs several stacked into one.

``python -m twist_lightning.bench evaluate --out FILE`` times :func:`~twist_lightning.evaluate.evaluate_subnets`
(random init, random tokens: speed does not depend on the weights) on the same batches with ``subnet_batch=1``
(each subnet masked inside the full model, one at a time: how evaluation ran before stacking) and with
``subnet_batch=K`` (:class:`~twist_lightning.stacked.StackedSubnets`), side by side and interleaved, for the
``cpu`` preset (the default training model, compact 4096 vocabulary) and the GPT-2 124M shape. Rows give seconds
per subnet and the speed-up; the per-subnet PPLs of both ways are compared too (they must agree). No target
is set: it shows what stacking buys on the machine at hand (on a 2-core CPU: nothing, which is why
``evaluate`` stacks only on CUDA by default). ``--device cuda`` for a GPU.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from twist_lightning.bench.common import base_parser, format_report, make_report, pair_ratios, write_report
from twist_lightning.blueprints import PartitionSpec
from twist_lightning.evaluation import evaluate_subnets
from twist_lightning.model import GPT, GPTConfig

COLUMNS = ["name", "subnet_batch", "subnets", "tokens", "time_s", "s_per_subnet", "speedup", "max_rel_ppl_diff"]

#: (preset, size as a fraction, batch, seq_len, batches) per case; small enough for a 2-core CPU in minutes.
CASES = {
    "cpu": ("cpu", 0.5, 8, 128, 4),
    "gpt2": ("gpt2", 0.5, 2, 256, 1),
    "tiny": ("tiny", 0.5, 4, 32, 2),  # seconds; for tests
}
DEFAULT_CASES = ("cpu", "gpt2")


def _case(preset: str, fraction: float, batch: int, seq_len: int, n_batches: int, samples: int, stack: int,
          repeats: int, seed: int, device: str) -> list[dict[str, Any]]:
    torch.manual_seed(seed)
    cfg = GPTConfig.from_preset(preset, dropout=0.0)
    seq_len = min(seq_len, cfg.block_size)
    model = GPT(cfg).eval().to(device)
    spec = PartitionSpec.from_config(cfg, common="none")
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n_batches):
        x = torch.randint(0, cfg.vocab_size, (batch, seq_len), generator=g).to(device)
        batches.append((x, torch.roll(x, -1, dims=1)))
    runs: dict[int, list[float]] = {1: [], stack: []}
    results: dict[int, dict[str, Any]] = {}
    for _ in range(repeats):  # interleaved, minimum kept: other load only ever adds time
        for k in runs:
            start = time.perf_counter()
            results[k] = evaluate_subnets(model, batches, [fraction], samples, spec, seed=seed, importance=False,
                                          subnet_batch=k)  # returns floats: a CUDA run has synchronised
            runs[k].append(time.perf_counter() - start)
    one, many = results[1]["sizes"][0]["random_ppl"], results[stack]["sizes"][0]["random_ppl"]
    diff = max(abs(a - b) / b for a, b in zip(many, one))
    rows = []
    for k, times in runs.items():
        # evaluate_subnets also runs the full model once; both ways pay it alike
        rows.append({"name": f"{preset} {round(fraction * cfg.n_head)}/{cfg.n_head}", "subnet_batch": k,
                     "subnets": samples, "tokens": batch * seq_len * n_batches, "time_s": min(times),
                     "times_s": times, "s_per_subnet": min(times) / samples, "max_rel_ppl_diff": diff})
    pairs = pair_ratios(rows[0]["times_s"], rows[1]["times_s"])  # median of per-pair ratios, with their spread
    rows[1]["speedup"], rows[1]["speedup_min"], rows[1]["speedup_max"] = pairs["median"], pairs["min"], pairs["max"]
    rows[0]["speedup"] = 1.0
    return rows


def run(cases: list[str] | None = None, samples: int = 8, stack: int = 8, repeats: int = 2,
        seed: int = 0, device: str = "cpu") -> dict[str, Any]:
    """Time each case both ways; return the report dict."""
    names = list(DEFAULT_CASES) if cases is None else cases
    unknown = [c for c in names if c not in CASES]
    if unknown:
        raise ValueError(f"--cases {unknown} unknown; choose from {list(CASES)}.")
    rows = [row for name in names for row in _case(*CASES[name], samples, stack, repeats, seed, device)]
    config = {"cases": {n: dict(zip(("preset", "fraction", "batch", "seq_len", "batches"), CASES[n])) for n in names},
              "samples": samples, "subnet_batch": stack, "repeats": repeats, "seed": seed, "stat": "min",
              "common": "none", "dtype": "float32", "device": device,
              "step": "evaluate_subnets: full model + samples random subnets"}
    return make_report("evaluate", config, rows, [])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """CLI entry: parse ``argv``, run, print the table, write ``--out``; return the report."""
    parser = base_parser("evaluate", __doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=None,
                        help=f"any of {list(CASES)} (default: {' '.join(DEFAULT_CASES)})")
    parser.add_argument("--samples", type=int, default=8, help="random subnets per case")
    parser.add_argument("--subnet-batch", type=int, default=8, help="subnets per forward pass of the stacked run")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.set_defaults(repeats=2)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run(cases=args.cases, samples=args.samples, stack=args.subnet_batch, repeats=args.repeats,
                 seed=args.seed, device=args.device)
    print(format_report(report, COLUMNS))  # noqa: T201 - the CLI's console output
    write_report(report, args.out)
    return report
