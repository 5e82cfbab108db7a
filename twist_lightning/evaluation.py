"""Golden tickets: held-out perplexity of random and importance-selected subnets at every size.

:func:`evaluate_subnets` scores a model on given batches:

- the full model,
- ``samples`` uniformly random subnets at each size in ``sizes`` (heads = FFN groups per split layer; a float is
  a fraction of ``n_head``; default every size ``1..n_head``),
- the importance-selected subnet (highest-magnitude units) at each size,
- with ``methods=[flap, reconstruct, ...]``, the full model pruned by each post-training method of
  :mod:`twist_lightning.prune` at each size (calibrated on sequences of the *training* split), with the share of
  the gap between the random subnets and the full model that each closes,

under ``torch.inference_mode``, ``subnet_batch`` subnets of one size per forward pass
(:class:`~twist_lightning.stacked.StackedSubnets`; ``subnet_batch=1`` runs them one at a time, masked; the default
stacks 8 on CUDA and none on a CPU, where stacking measured no faster).

:func:`evaluate_checkpoint` loads a ``TwISTLitModule`` checkpoint and rebuilds its held-out split first
(:mod:`twist_lightning.checkpoint_data`); :func:`evaluate_grid` is the robustness grid (paper Fig. 5): each
checkpoint, trained at size X (:func:`train_size_of` reads it from the run folder), evaluated at every size Y.
The command line is ``python -m twist_lightning.evaluate`` (:mod:`twist_lightning.evaluate`); tables and plots of
the results are :mod:`twist_lightning.tables` and :mod:`twist_lightning.plots`.

Example::

    result = evaluate_subnets(model, batches, sizes=[2, 4], samples=8, spec=PartitionSpec.from_config(model.config))
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn

from twist_lightning.blueprints import Blueprint, PartitionSpec
from twist_lightning.checkpoint import check_shape, load_checkpoint, load_gpt, model_config
from twist_lightning.checkpoint_data import Batch, build_datamodule, collect_batches, train_calibration
from twist_lightning.guard import finite_stats
from twist_lightning.model import GPT
from twist_lightning.prune import Calibration, Method, Structure, calibrate, parse_method, prune
from twist_lightning.prune import check_settings as check_prune_settings
from twist_lightning.prune import parse_structure
from twist_lightning.selection import check_size, importance_blueprint, random_blueprint
from twist_lightning.stacked import StackedSubnets
from twist_lightning.subnets import subnet
from twist_lightning.tables import table_rows

__all__ = ["evaluate_checkpoint", "evaluate_grid", "evaluate_subnets", "pick_device", "resolve_methods",
           "resolve_sizes", "subnet_blueprints", "train_size_of"]


# ---- sizes and subnets --------------------------------------------------------------------------------------------
def resolve_sizes(spec: PartitionSpec, sizes: Sequence[int | float] | None, key: str = "sizes") -> list[int | float]:
    """Validate every size up front (a head count in 1..n_head or a fraction in (0, 1]); ``None`` = all counts."""
    if sizes is None:
        return list(range(1, spec.n_head + 1))
    sizes = list(sizes)
    if not sizes:
        raise ValueError(f"{key}=[] is empty: list head counts in 1..{spec.n_head} (or fractions in (0, 1]).")
    for i, s in enumerate(sizes):
        check_size(spec, s, key=f"{key}[{i}]")
    return sizes


def _sample_seed(seed: int, heads: int, index: int) -> int:
    # one independent, reproducible stream per (seed, size, sample); random_blueprint hashes it again
    return (int(seed) * 1_000_003 + heads) * 10_007 + index


def subnet_blueprints(model: GPT, spec: PartitionSpec, size: int | float, samples: int, seed: int,
                      importance: bool = True) -> tuple[list[Blueprint], Blueprint | None]:
    """``samples`` random blueprints of ``size`` and (with ``importance``) the importance-selected one."""
    heads, _ = check_size(spec, size)
    randoms = [random_blueprint(spec, size, _sample_seed(seed, heads, i)) for i in range(samples)]
    return randoms, (importance_blueprint(model, spec, size) if importance else None)


# ---- the evaluation loop ------------------------------------------------------------------------------------------
@torch.inference_mode()
def _mean_nll(model: GPT, batches: Sequence[Batch]) -> float:
    """Token-weighted mean cross-entropy of ``model`` (as it is currently set up) over ``batches``."""
    total, count = torch.zeros((), dtype=torch.float64, device=batches[0][1].device), 0  # summed on the device:
    for x, y in batches:  # no host sync per batch
        _, loss = model(x, y)
        total += loss.double() * y.numel()  # GPT returns the mean over the batch's tokens
        count += y.numel()
    return float(total) / count


def resolve_methods(methods: Sequence[str] | None, key: str = "method") -> list[Method]:
    """Validate pruning method names up front (``importance`` is an alias of ``magnitude``); duplicates dropped."""
    if methods is None:
        return []
    if isinstance(methods, str):
        methods = [methods]
    return list(dict.fromkeys(parse_method(m, key=f"{key}[{i}]") for i, m in enumerate(methods)))


def _gap_closed(random_ppl: float, method_ppl: float, full_ppl: float) -> float | None:
    """Share of the random-subnet-to-full-model PPL gap a method closes (1 = as good as the full model)."""
    gap = random_ppl - full_ppl
    return None if not math.isfinite(gap) or abs(gap) < 1e-9 else (random_ppl - method_ppl) / gap


def _check_subnet_batch(subnet_batch: int | None) -> None:
    if subnet_batch is None:
        return
    if isinstance(subnet_batch, bool) or not isinstance(subnet_batch, int) or subnet_batch < 1:
        raise ValueError(f"subnet_batch={subnet_batch!r} must be an int >= 1 (1 = one subnet per forward pass).")


@torch.inference_mode()
def _stacked_mean_nll(stack: StackedSubnets, batches: Sequence[Batch]) -> list[float]:
    """:func:`_mean_nll` of every subnet in ``stack``, all in one pass over ``batches``."""
    total, count = torch.zeros(stack.k, dtype=torch.float64, device=batches[0][1].device), 0
    for x, y in batches:
        total += stack.losses(x, y).double() * y.numel()
        count += y.numel()
    return (total / count).tolist()  # one host copy at the end


def _stacks(blueprints: Iterable[Blueprint], size: int) -> list[list[Blueprint]]:
    """Deterministic groups of at most ``size`` blueprints with equal per-layer unit counts."""
    by_shape: dict[tuple, list[Blueprint]] = {}
    for bp in sorted(blueprints, key=lambda b: (b.num_heads, str(b))):
        by_shape.setdefault(tuple(bp.sizes()), []).append(bp)
    return [group[i:i + size] for group in by_shape.values() for i in range(0, len(group), size)]


def _ppl(nll: float) -> float:
    return nll if math.isnan(nll) else math.exp(nll) if nll < 700 else math.inf  # NaN: a diverged model


def _stats(values: Sequence[float]) -> dict[str, float]:
    return finite_stats(list(values))  # over the finite values; "diverged" counts the others


def _progress(total: int, enabled: bool, desc: str) -> Any:
    from tqdm import tqdm  # installed with lightning

    return tqdm(total=total, desc=desc, disable=not enabled or rank_zero_only.rank != 0, leave=False)


def evaluate_subnets(model: GPT, batches: Iterable[Batch], sizes: Sequence[int | float] | None, samples: int,
                     spec: PartitionSpec, seed: int = 0, importance: bool = True, scale: bool = True,
                     progress: bool = False, subnet_batch: int | None = None, methods: Sequence[str] = (),
                     calibration: Calibration | None = None, structure: Structure | str = Structure.uniform,
                     damp: float = 0.01, flap_compensate: bool = True) -> dict[str, Any]:
    """Held-out perplexity of the full model and of random / importance subnets at each size.

    Every distinct blueprint is evaluated once (the size ``n_head`` subnet of every split layer is the full model,
    so its samples cost nothing) under ``torch.inference_mode``: up to ``subnet_batch`` subnets of one size share
    each forward pass (:class:`~twist_lightning.stacked.StackedSubnets`), or with ``subnet_batch=1`` they run one
    at a time, masked inside ``model``.

    Args:
        model: The full-size GPT, on the device of ``batches``; it is put in eval mode.
        batches: ``(x, y)`` token batches (re-iterated for every subnet, so a list is best).
        sizes: Head counts (or fractions of ``n_head``) per split layer; ``None`` = ``1..n_head``.
        samples: Random subnets per size (>= 1).
        spec: Which layers are split (``spec.common`` stays whole).
        seed: Seed of the random subnets (results are reproducible from it).
        importance: Also evaluate the importance-selected subnet per size.
        scale: Run subnets with TwIST's ``sqrt(N_full / N_sub)`` branch scaling (as trained).
        progress: Show a tqdm bar on rank zero.
        subnet_batch: Subnets per forward pass (memory grows with it: each holds a copy of its split layers);
            ``None`` = 8 on CUDA, 1 on a CPU (``python -m twist_lightning.bench evaluate`` measured no gain from
            stacking on a 2-core CPU, where the shared LM head dominates and the FLOPs are the same either way).
        methods: Post-training pruning methods (:class:`~twist_lightning.prune.Method` names) to run at each size
            on the full model; ``random`` is the random subnets' mean. Each pruned model is evaluated physically.
        calibration: :func:`~twist_lightning.prune.calibrate` of ``model`` on training-split batches (needed by
            activation, flap and reconstruct).
        structure: ``flap``'s allocation (``uniform`` or ``adaptive``); the other methods are always uniform.
        damp: ``reconstruct``'s ridge term.
        flap_compensate: ``flap``'s bias compensation (``False``: FLAP's units, scaled like random subnets).

    Returns:
        ``{"full": {"loss", "ppl"}, "sizes": [{"size", "heads", "ffn", "fraction", "random_ppl": [...],
        "mean_ppl", "std_ppl", "min_ppl", "max_ppl", "importance_ppl", "importance_blueprint"}], "samples",
        "seed", "common", "scale", "tokens"}``; with ``methods`` each size also has ``"methods": {name: ppl}``,
        ``"gap_closed": {name: share}`` and ``"method_blueprints"``.

    Raises:
        ValueError: A size outside ``1..n_head`` (before any evaluation), ``samples < 1`` or no batches.
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples={samples!r} must be an int >= 1.")
    _check_subnet_batch(subnet_batch)
    if subnet_batch is None:
        subnet_batch = 8 if model.lm_head.weight.is_cuda else 1
    spec.check_model(model)
    sizes = resolve_sizes(spec, sizes)
    methods = resolve_methods(methods)
    structure = parse_structure(structure)
    check_prune_settings(methods, structure, damp, has_calibration=calibration is not None)
    batches = list(batches)
    if not batches:
        raise ValueError("no evaluation batches: the held-out split is empty or max_batches=0.")
    if not spec.split_layers:
        rank_zero_warn(f"common={list(spec.common)} keeps every layer of this {spec.n_layer}-layer model whole, so "
                       "every subnet is the full model; use common=none (or fewer common layers).")
    model.eval()
    plan = [(size, *subnet_blueprints(model, spec, size, samples, seed, importance)) for size in sizes]
    unique = {bp for _, randoms, imp in plan for bp in (*randoms, *([imp] if imp else []))} - {Blueprint.full(spec)}
    nll: dict[Blueprint, float] = {}
    with _progress(len(unique) + 1, progress, "subnets") as bar:
        model.set_subnet(None)
        full_nll = _mean_nll(model, batches)
        bar.update()
        for group in _stacks(unique, subnet_batch):
            if subnet_batch == 1:
                with subnet(model, group[0], scale=scale):
                    nll[group[0]] = _mean_nll(model, batches)
            else:
                nll.update(zip(group, _stacked_mean_nll(StackedSubnets(model, group, scale=scale), batches)))
            bar.update(len(group))
    nll[Blueprint.full(spec)] = full_nll
    pruned = _evaluate_methods(model, batches, sizes, methods, spec, seed, scale, calibration, structure, damp,
                               flap_compensate, progress)
    rows = []
    for size, randoms, imp in plan:
        heads, ffn = check_size(spec, size)
        ppls = [_ppl(nll[bp]) for bp in randoms]
        rows.append({"size": size, "heads": heads, "ffn": ffn, "fraction": heads / spec.n_head,
                     "random_ppl": ppls, **_stats(ppls),
                     "importance_ppl": _ppl(nll[imp]) if imp else None,
                     "importance_blueprint": imp.to_dict() if imp else None})
        if methods:
            found = pruned[heads]
            rows[-1]["methods"] = {m: (rows[-1]["mean_ppl"] if m == Method.random.value else found[m][0])
                                   for m in (x.value for x in methods)}
            rows[-1]["gap_closed"] = {m: _gap_closed(rows[-1]["mean_ppl"], ppl, _ppl(full_nll))
                                      for m, ppl in rows[-1]["methods"].items()}
            rows[-1]["method_blueprints"] = {m: found[m][1] for m in found}
    _warn_diverged(full_nll, rows)
    full = {"loss": full_nll, "ppl": _ppl(full_nll), "diverged": not math.isfinite(full_nll)}
    return {"full": full, "sizes": rows, "samples": samples, "seed": seed,
            "common": list(spec.common), "scale": scale, "tokens": sum(y.numel() for _, y in batches)}


def _warn_diverged(full_nll: float, rows: list[dict[str, Any]]) -> None:
    bad = [f"{r['heads']} heads: {r['diverged']} of {len(r['random_ppl'])}" for r in rows if r["diverged"]]
    if not math.isfinite(full_nll) or bad:
        rank_zero_warn(f"diverged (non-finite loss): {'the full model; ' if not math.isfinite(full_nll) else ''}"
                       f"random subnets {'; '.join(bad) or 'none'}. Their perplexities are NaN (null in JSON) and "
                       "left out of the statistics; the checkpoint comes from a diverged run (lower module.lr).")


def _evaluate_methods(model: GPT, batches: Sequence[Batch], sizes: Sequence[int | float], methods: Sequence[Method],
                      spec: PartitionSpec, seed: int, scale: bool, calibration: Calibration | None,
                      structure: Structure, damp: float, flap_compensate: bool, progress: bool
                      ) -> dict[int, dict[str, tuple[float, Any]]]:
    """``{heads: {method: (ppl, blueprint dict)}}`` of every non-random pruning method at every size."""
    out: dict[int, dict[str, tuple[float, Any]]] = {}
    todo = [m for m in methods if m != Method.random]
    with _progress(len(todo) * len(sizes), progress and bool(todo), "pruning") as bar:
        for size in sizes:
            heads, _ = check_size(spec, size)
            out[heads] = {}
            for method in todo:
                result = prune(model, size, method, calibration, common=list(spec.common), seed=seed, scale=scale,
                               structure=structure if method == Method.flap else Structure.uniform, damp=damp,
                               compensate=flap_compensate)
                out[heads][method.value] = (_ppl(_mean_nll(result.model, batches)), result.blueprint.to_dict())
                bar.update()
    return out


def pick_device(device: str) -> torch.device:
    """``"auto"`` = the GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# ---- one checkpoint -----------------------------------------------------------------------------------------------
def evaluate_checkpoint(checkpoint: str | os.PathLike[str], sizes: Sequence[int | float] | None = None,
                        samples: int = 8, common: Any = "default", seed: int = 0, importance: bool = True,
                        scale: bool = True, split: str = "val", max_batches: int | None = 20,
                        batch_tokens: int = 4096, device: str = "auto", data: dict[str, Any] | None = None,
                        progress: bool = True, expect: Any = None, subnet_batch: int | None = None,
                        methods: Sequence[str] = (), calib_samples: int = 128, calib_seed: int = 0,
                        structure: str = "uniform", damp: float = 0.01, flap_compensate: bool = True
                        ) -> dict[str, Any]:
    """Load ``checkpoint``, rebuild its held-out data and run :func:`evaluate_subnets`; settings are checked first.

    Pruning ``methods`` calibrate on ``calib_samples`` windows of the *training* split (seeded by ``calib_seed``),
    never on the held-out split that is scored.
    """
    _check_subnet_batch(subnet_batch)
    methods = resolve_methods(methods)
    structure = parse_structure(structure)
    check_prune_settings(methods, structure, damp)
    if isinstance(calib_samples, bool) or not isinstance(calib_samples, int) or calib_samples < 1:
        raise ValueError(f"calib_samples={calib_samples!r} must be an int >= 1 (calibration sequences of the "
                         "training split for method=[...]).")
    dev = pick_device(device)
    model, vocab, saved = load_gpt(checkpoint, expect=expect)
    spec = PartitionSpec.from_config(model.config, common=common)
    sizes = resolve_sizes(spec, sizes)  # fail before tokenizing anything
    dm, remap = build_datamodule(saved, data or {}, model.config.vocab_size, model.config.block_size, vocab,
                                  str(checkpoint))
    batches = collect_batches(dm, split, max_batches, batch_tokens, dev, vocab if remap else None)
    rank_zero_info(f"Evaluating {checkpoint}: sizes {sizes} x {samples} random subnets (+ importance"
                   f"{''.join(', ' + m.value for m in methods)}) on {sum(y.numel() for _, y in batches)} {split} "
                   f"tokens, device {dev}")
    model = model.to(dev)
    calibration = None
    if any(m not in (Method.random, Method.magnitude) for m in methods):
        calib = train_calibration(dm, calib_samples, calib_seed, dev, vocab if remap else None)
        calibration = calibrate(model, calib, progress=progress)
    result = evaluate_subnets(model, batches, sizes, samples, spec, seed, importance, scale, progress,
                              subnet_batch, methods, calibration, structure, damp, flap_compensate)
    if calibration is not None:
        result["calibration"] = {"split": "train", "sequences": calibration.sequences, "tokens": calibration.tokens,
                                 "seed": calib_seed}
    data_used = {k: v for k, v in dm.hparams.items()}
    extra: dict[str, Any] = {}
    if vocab is not None and batches:  # how much of the scored text the compact vocabulary could not name
        unk = sum(int((y == vocab.unk_id).sum()) for _, y in batches)
        extra["unk_share"] = unk / sum(y.numel() for _, y in batches)
    return {"checkpoint": str(checkpoint), "model": model.config.to_dict(), "data": data_used, "split": split,
            # a byte-fallback vocabulary maps another corpus when it is cached (data.vocab_from), not batch by batch
            "vocab_remapped": remap or bool(vocab is not None and vocab.byte_fallback and dm.hparams.get("vocab_from")),
            "device": str(dev), **extra, **result}


# ---- the robustness grid ------------------------------------------------------------------------------------------
def train_size_of(checkpoint: str | os.PathLike[str]) -> int | float | None:
    """The subnet size a checkpoint was trained at (``None`` = dense, data-parallel), read from its run folder.

    Looks at ``<run>/.hydra/config.yaml`` for ``<run>/checkpoints/X.ckpt`` (``twist.variant`` and ``twist.n_sub``).

    Raises:
        ValueError: No saved run config; pass ``train_sizes=[...]``.
    """
    ckpt_path = Path(checkpoint)
    for cfg_path in (ckpt_path.parent.parent / ".hydra" / "config.yaml", ckpt_path.parent / ".hydra" / "config.yaml"):
        if cfg_path.is_file():
            twist = (yaml.safe_load(cfg_path.read_text()) or {}).get("twist") or {}
            if str(twist.get("variant", "none")) == "none":
                return None
            return twist.get("n_sub")
    raise ValueError(f"checkpoint={str(checkpoint)!r}: its training size is unknown (no .hydra/config.yaml in its run "
                     "folder). Fix: pass train_sizes=[...] with one size per checkpoint (null = dense).")


def evaluate_grid(checkpoints: Sequence[str], train_sizes: Sequence[int | float | None] | None = None,
                  **kwargs: Any) -> dict[str, Any]:
    """Evaluate every checkpoint (trained at size X) at every size Y; all must share one model shape.

    ``kwargs`` go to :func:`evaluate_checkpoint`. Returns ``{"rows": [...], "results": [...]}`` with one row per
    (checkpoint, eval size).
    """
    if not checkpoints:
        raise ValueError("grid=true needs checkpoints=[a.ckpt,b.ckpt,...].")
    if train_sizes is not None and len(train_sizes) != len(checkpoints):
        raise ValueError(f"train_sizes has {len(train_sizes)} entries for {len(checkpoints)} checkpoints.")
    first = load_checkpoint(checkpoints[0])
    shape = model_config(first, checkpoints[0])
    xs = list(train_sizes) if train_sizes is not None else [train_size_of(c) for c in checkpoints]  # fail early
    spec = PartitionSpec.from_config(shape, common=kwargs.get("common", "default"))
    for c in checkpoints[1:]:
        check_shape(model_config(load_checkpoint(c), c), shape, c)
    resolve_sizes(spec, kwargs.get("sizes"))
    for i, x in enumerate(xs):
        if x is not None:
            check_size(spec, x, key=f"train_sizes[{i}]")
    rows, results = [], []
    for ckpt, x in zip(checkpoints, xs):
        result = evaluate_checkpoint(ckpt, **kwargs)
        results.append(result)
        train_heads = spec.n_head if x is None else check_size(spec, x)[0]
        for r in table_rows(result):
            rows.append({"checkpoint": str(ckpt), "train_size": "dense" if x is None else train_heads, **r})
    return {"rows": rows, "results": results, "n_head": spec.n_head}
