"""Post-training structured pruning of a normally trained GPT: the baselines TwIST's golden tickets are judged by.

Every method cuts exactly TwIST's structure: it keeps ``N_sub`` heads and ``N_sub`` FFN groups of every split layer
(common layers whole, as everywhere else) and returns a *physical* pruned :class:`~twist_lightning.model.GPT`
(a narrower dense model; some methods also change the kept weights) together with the :class:`Blueprint` it
chose. None of them trains: the only data they see is a small calibration set from the *training* split.

Methods (``method=`` values):

- ``random``: uniformly random units (:func:`~twist_lightning.selection.random_blueprint`).
- ``magnitude`` (alias ``importance``): the units with the largest weight norms
  (:func:`~twist_lightning.selection.unit_scores`), no data.
- ``activation``: Wanda's score (Sun et al. 2023, "A Simple and Effective Pruning Approach for LLMs",
  arXiv 2306.11695), ``|W_ij| * ||X_j||_2``, summed over the input channels of each unit's output projection
  (the structured "Wanda-sp" form that An et al. 2024 use as a baseline). Departure: Wanda scores every weight
  matrix; here only the output projection a unit writes through (``attn.c_proj`` columns of a head,
  ``mlp.c_proj`` columns of an FFN group), which is where a unit's removal shows.
- ``flap``: FLAP (An et al. 2024, "Fluctuation-based Adaptive Structured Pruning for Large Language Models",
  AAAI, arXiv 2312.11983). Score of an input channel of the output projection: the variance of that channel over
  the calibration tokens times the squared norm of its weight column (how much the output *fluctuates* when the
  channel is replaced by its mean). Removed channels are replaced by their mean: ``b += W[:, removed] @ mean``
  (bias compensation), so, fed the full model's inputs, the pruned branch's mean output on the calibration set
  equals the full branch's (exact at the first split layer, approximate after it).
  ``structure=uniform`` keeps ``N_sub`` units in every split layer; ``structure=adaptive`` is FLAP's global
  structure: scores are standardised within each layer and branch and the ``N_sub * layers`` best units of each
  branch type are kept across all split layers (every layer keeps at least one). Departure: FLAP ranks heads and
  FFN channels jointly and prunes single channels; here heads and FFN groups keep separate totals, so a pruned
  model has exactly TwIST's unit budget.
- ``reconstruct``: choose units by the ``activation`` score, then re-fit each pruned branch's output projection
  (weights and bias) by least squares on the calibration activations, so that the branch output matches the
  unpruned branch's: ``W' = W Sigma[:, S] (Sigma[S, S] + lambda I)^-1``, ``b' = b + W mu - W' mu[S]``. This is
  the layer-wise reconstruction step of Kwon et al. 2022 ("A Fast Post-Training Pruning Framework for
  Transformers", NeurIPS, arXiv 2204.09656), which re-fits the output layer of pruned heads and filters by linear
  least squares, and the structured form of what SparseGPT (Frantar & Alistarh 2023) and ZipLM (Kurtic et al.
  2023) do for weights. Layers are re-fitted in order on the activations of the already pruned model (as
  SparseGPT does), with SparseGPT's dampening ``lambda = damp * mean(diag)``. Departures: Kwon et al. choose units
  by a Fisher-information mask search; here the cheaper activation score picks them, and no mask rearrangement.

Typical use::

    calib = calibrate(model, calibration_batches(train_windows, samples=128))   # one shared pass
    result = prune(model, size=6, method="flap", calibration=calib)               # result.model, result.blueprint

Pure torch; knows nothing of Lightning or Hydra.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch
from torch import nn

from twist_lightning.model import GPT, ffn_cols
from twist_lightning.blueprints import Blueprint, PartitionSpec, resolve_n_sub
from twist_lightning.selection import per_layer_blueprint, random_blueprint, top_units, unit_scores
from twist_lightning.subnets import extract

__all__ = ["ALIASES", "Calibration", "ChannelStats", "Method", "PruneResult", "Structure", "calibrate",
           "calibration_batches", "method_scores", "parse_method", "parse_structure", "prune", "reconstruction_errors"]

Batch = tuple[torch.Tensor, torch.Tensor]


class Method(str, Enum):
    """A pruning method (lower-case values: Hydra/OmegaConf match enum members by name)."""

    random = "random"
    magnitude = "magnitude"
    activation = "activation"
    flap = "flap"
    reconstruct = "reconstruct"


ALIASES = {"importance": Method.magnitude}  # the name evaluate/export used before the pruning module
NEEDS_DATA = (Method.activation, Method.flap, Method.reconstruct)


class Structure(str, Enum):
    """How many units each split layer keeps: the same number everywhere, or FLAP's global allocation."""

    uniform = "uniform"
    adaptive = "adaptive"


def parse_method(value: Method | str, key: str = "method") -> Method:
    """``value`` as a :class:`Method` (aliases accepted); a ``ValueError`` naming ``key`` otherwise."""
    if isinstance(value, Method):
        return value
    name = str(value).lower()
    if name in ALIASES:
        return ALIASES[name]
    try:
        return Method(name)
    except ValueError:
        choices = [m.value for m in Method] + list(ALIASES)
        raise ValueError(f"{key}={value!r} is not a pruning method; choose one of {choices}.") from None


def check_size(spec: PartitionSpec, size: Any, key: str = "size") -> tuple[int, int]:
    """``(heads, ffn_groups)`` kept per split layer; a ``ValueError`` naming ``key`` otherwise."""
    try:
        return resolve_n_sub(spec, size)
    except ValueError:
        raise ValueError(f"{key}={size!r} is out of range for this model (n_head={spec.n_head}): use a head count "
                         f"in 1..{spec.n_head} or a fraction in (0, 1].") from None


def check_damp(damp: Any) -> None:
    if isinstance(damp, bool) or not isinstance(damp, (int, float)) or not 0 <= damp < 1:
        raise ValueError(f"damp={damp!r} must be in [0, 1) (a fraction of the mean covariance diagonal).")


def check_settings(methods: Sequence[Method], structure: Structure, damp: Any, has_calibration: bool = True) -> None:
    """The checks :func:`prune` makes of its settings, for callers that must fail before any work."""
    check_damp(damp)
    if structure == Structure.adaptive and Method.flap not in methods:
        raise ValueError(f"structure=adaptive is FLAP's allocation; it needs method=flap (got "
                         f"{[m.value for m in methods]}), or use structure=uniform.")
    if not has_calibration and any(m in NEEDS_DATA for m in methods):
        raise ValueError(f"method={[m.value for m in methods if m in NEEDS_DATA]} needs calibration data "
                         "(calibrate(model, batches) on the training split).")


def parse_structure(value: Structure | str) -> Structure:
    """``value`` as a :class:`Structure`; a ``ValueError`` naming ``structure`` otherwise."""
    try:
        return Structure(getattr(value, "value", value))
    except ValueError:
        raise ValueError(f"structure={value!r} is not one of {[s.value for s in Structure]} (flap's allocation of "
                         "units over layers).") from None


# ---- calibration --------------------------------------------------------------------------------------------------
class ChannelStats:
    """Running moments of the input channels of one output projection: sum, sum of squares, optional Gram matrix.

    Accumulated in float64 from per-batch float32 products, so 10^5 tokens lose no precision that matters.
    """

    def __init__(self, dim: int, gram: bool = False, device: torch.device | str = "cpu") -> None:
        self.n = 0
        self.total = torch.zeros(dim, dtype=torch.float64, device=device)
        self.total_sq = torch.zeros(dim, dtype=torch.float64, device=device)
        self.gram = torch.zeros(dim, dim, dtype=torch.float64, device=device) if gram else None

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, self.total.numel()).float()  # (tokens, D)
        self.n += x.size(0)
        self.total += x.sum(0).double()
        self.total_sq += x.square().sum(0).double()
        if self.gram is not None:
            self.gram += (x.T @ x).double()

    @property
    def mean(self) -> torch.Tensor:
        return self.total / self.n

    @property
    def var(self) -> torch.Tensor:
        """Per-channel variance over tokens (unbiased, as FLAP's fluctuation)."""
        return ((self.total_sq - self.n * self.mean.square()) / max(self.n - 1, 1)).clamp_min(0.0)

    @property
    def norm(self) -> torch.Tensor:
        """Per-channel L2 norm over tokens (Wanda's ``||X_j||_2``)."""
        return self.total_sq.sqrt()

    def second_moment(self, centered: bool) -> torch.Tensor:
        """``E[x x^T]`` (or the covariance with ``centered``), population-normalised."""
        if self.gram is None:
            raise RuntimeError("these statistics were collected without the Gram matrix (gram=False).")
        m = self.gram / self.n
        return m - torch.outer(self.mean, self.mean) if centered else m


@dataclass
class Calibration:
    """The calibration batches and the full model's per-layer channel statistics on them (one shared pass)."""

    batches: list[Batch]
    attn: list[ChannelStats]  # inputs of each layer's attn.c_proj: the heads' outputs, (n_embd,)
    mlp: list[ChannelStats]  # inputs of each layer's mlp.c_proj: the FFN hidden activations, (4 * n_embd,)

    @property
    def tokens(self) -> int:
        return sum(x.numel() for x, _ in self.batches)

    @property
    def sequences(self) -> int:
        return sum(x.size(0) for x, _ in self.batches)


def calibration_batches(windows: Any, samples: int = 128, seed: int = 0, batch_size: int = 8,
                        device: torch.device | str = "cpu", key: str = "calib_samples") -> list[Batch]:
    """``samples`` windows of a map-style ``(x, y)`` dataset (the *training* split), chosen deterministically.

    The windows are a seeded random subset (without replacement) in index order, batched by ``batch_size``. With
    fewer windows than ``samples`` all of them are used.

    Raises:
        ValueError: ``samples < 1``, or the split holds no full window (fewer tokens than one sequence).
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"{key}={samples!r} must be an int >= 1 (calibration sequences from the training split).")
    n = len(windows)
    if n == 0:
        raise ValueError(f"{key}: the calibration (training) split has fewer tokens than one sequence; use a "
                         "longer training text or a smaller data.block_size.")
    gen = torch.Generator().manual_seed(int(seed))
    picks = sorted(torch.randperm(n, generator=gen)[:samples].tolist())
    rows = [windows[i] for i in picks]
    xs, ys = torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])  # (samples, T)
    return [(x.to(device), y.to(device)) for x, y in zip(xs.split(batch_size), ys.split(batch_size))]


def _embed(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    pos = torch.arange(idx.size(1), dtype=torch.long, device=idx.device)  # (T,)
    return model.transformer.drop(model.transformer.wte(idx) + model.transformer.wpe(pos))  # (B, T, C)


def _branches(block: nn.Module) -> tuple[tuple[nn.Module, nn.Module, Any], tuple[nn.Module, nn.Module, Any]]:
    """``(layer norm, branch, c_proj input function)`` of the attention and the FFN branch of one block."""
    return ((block.ln_1, block.attn, block.attn.head_outputs), (block.ln_2, block.mlp, block.mlp.hidden))


def _progress(total: int, enabled: bool, desc: str) -> Any:
    from tqdm import tqdm  # a dependency of lightning and datasets, not of Lightning's API

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


def _check_full(model: GPT, spec: PartitionSpec) -> None:
    try:
        spec.check_model(model)
    except ValueError as err:
        raise ValueError(f"pruning needs the full-size GPT the checkpoint was trained as: {err}") from None
    if not model.config.is_full or model.subnet_active:
        raise ValueError("pruning needs a full-size GPT running in full, not a physical subnet or a masked one; "
                         "load the checkpoint's full model (checkpoint.load_gpt) and prune that.")


@torch.no_grad()
def calibrate(model: GPT, batches: Sequence[Batch], progress: bool = False) -> Calibration:
    """One pass of the full ``model`` over ``batches``, recording the input channels of every output projection.

    Only the blocks run (the LM head, the most expensive part of a small model, is not needed).
    """
    if not model.config.is_full or model.subnet_active:
        raise ValueError("calibrate needs a full-size GPT running in full (set_subnet(None)).")
    batches = list(batches)
    if not batches:
        raise ValueError("calib_samples: no calibration batches (the training split is empty?).")
    model.eval()
    dev, cfg = model.lm_head.weight.device, model.config
    attn = [ChannelStats(cfg.n_embd, device=dev) for _ in range(cfg.n_layer)]
    mlp = [ChannelStats(4 * cfg.n_embd, device=dev) for _ in range(cfg.n_layer)]
    with _progress(len(batches), progress, "calibration") as bar:
        for x, _ in batches:
            h = _embed(model, x)
            for block, a, m in zip(model.transformer.h, attn, mlp):
                for (ln, branch, inputs), stats, scale in zip(_branches(block), (a, m),
                                                              (block.attn_scale, block.mlp_scale)):
                    z = inputs(ln(h))  # (B, T, D): what c_proj reads
                    stats.add(z)
                    h = h + scale * branch.c_proj(z)  # the branch output (eval: dropout is the identity)
            bar.update()
    return Calibration(batches=batches, attn=attn, mlp=mlp)


# ---- unit scores --------------------------------------------------------------------------------------------------
def _per_unit(channel_scores: torch.Tensor, units: int) -> torch.Tensor:
    """Channel scores (D,) summed over each unit's contiguous channels -> (units,)."""
    return channel_scores.view(units, -1).sum(1)


@torch.no_grad()
def method_scores(model: GPT, method: Method | str, calibration: Calibration | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Score of every unit under ``method``: ``(heads (n_layer, n_head), ffn (n_layer, ffn_groups))``, higher = keep."""
    method = parse_method(method)
    if method == Method.magnitude:
        return tuple(s.double() for s in unit_scores(model))  # type: ignore[return-value]
    if method == Method.random:
        raise ValueError("method=random has no scores; it samples units (selection.random_blueprint).")
    if calibration is None:
        raise ValueError(f"method={method.value} needs calibration data (calib_samples sequences of the training "
                         "split); pass calibration=calibrate(model, batches).")
    cfg = model.config
    hs, fs = [], []
    for block, a, m in zip(model.transformer.h, calibration.attn, calibration.mlp):
        w_a, w_m = block.attn.c_proj.weight.double(), block.mlp.c_proj.weight.double()  # (C, C), (C, 4C)
        if method == Method.flap:  # fluctuation: Var(X_j) * ||W[:, j]||^2
            sa, sm = a.var * w_a.square().sum(0), m.var * w_m.square().sum(0)
        else:  # activation (and reconstruct's selection): Wanda's ||X_j|| * sum_i |W_ij|
            sa, sm = a.norm * w_a.abs().sum(0), m.norm * w_m.abs().sum(0)
        hs.append(_per_unit(sa, cfg.n_head))
        fs.append(_per_unit(sm, cfg.ffn_groups))
    return torch.stack(hs), torch.stack(fs)


def _adaptive(spec: PartitionSpec, scores: torch.Tensor, per_layer: int) -> dict[int, list[int]]:
    """FLAP's global allocation: the ``per_layer * len(split)`` best standardised scores over all split layers."""
    layers = list(spec.split_layers)
    z = {}
    for layer in layers:
        s = scores[layer]
        std = s.std()
        z[layer] = (s - s.mean()) / (std if std > 0 else 1.0)
    keep = {layer: [int(torch.argmax(z[layer]))] for layer in layers}  # no layer loses every unit
    rest = sorted(((float(z[layer][u]), -layer, -u) for layer in layers for u in range(scores.size(1))
                   if u not in keep[layer]), reverse=True)
    for _, neg_layer, neg_u in rest[:per_layer * len(layers) - len(layers)]:
        keep[-neg_layer].append(-neg_u)
    return {layer: sorted(units) for layer, units in keep.items()}


def _select(spec: PartitionSpec, heads: torch.Tensor, ffn: torch.Tensor, n_heads: int, n_ffn: int,
            structure: Structure) -> Blueprint:
    if structure == Structure.uniform:
        return per_layer_blueprint(spec, lambda layer: (top_units(heads[layer], n_heads), top_units(ffn[layer], n_ffn)))
    h, f = _adaptive(spec, heads, n_heads), _adaptive(spec, ffn, n_ffn)
    return per_layer_blueprint(spec, lambda layer: (h[layer], f[layer]))


# ---- weight updates -----------------------------------------------------------------------------------------------
def _removed(kept: Sequence[int], full: int, width: int, device: torch.device) -> torch.Tensor:
    """Channels of the units not in ``kept`` (unit ``u`` owns channels ``u*width .. (u+1)*width-1``)."""
    gone = torch.tensor([u for u in range(full) if u not in set(kept)], dtype=torch.long, device=device)
    return ffn_cols(gone, width)  # the same contiguous-block maths serves heads (width = head_dim)


@torch.no_grad()
def _compensate_bias(sub: GPT, full: GPT, bp: Blueprint, calib: Calibration) -> None:
    """FLAP: replace each removed channel by its calibration mean, folded into the output projection's bias."""
    cfg = full.config
    for layer, (heads, groups) in enumerate(zip(bp.heads, bp.ffn)):
        fb, sb = full.transformer.h[layer], sub.transformer.h[layer]
        for kept, n_full, width, stats, f_proj, s_proj in (
                (heads, cfg.n_head, cfg.head_dim, calib.attn[layer], fb.attn.c_proj, sb.attn.c_proj),
                (groups, cfg.ffn_groups, cfg.ffn_unit_width, calib.mlp[layer], fb.mlp.c_proj, sb.mlp.c_proj)):
            if len(kept) == n_full:
                continue
            gone = _removed(kept, n_full, width, stats.total.device)
            shift = f_proj.weight.double()[:, gone] @ stats.mean[gone]  # (C,)
            s_proj.bias.add_(shift.to(s_proj.bias.dtype))


def _least_squares(w: torch.Tensor, b: torch.Tensor | None, kept: torch.Tensor, stats: ChannelStats,
                   damp: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Output projection on channels ``kept`` whose output best matches ``x @ w.T + b`` on the calibration inputs."""
    w = w.double()  # (C_out, D)
    m = stats.second_moment(centered=b is not None)  # (D, D): covariance with an intercept, else E[x x^T]
    a = m[kept][:, kept]  # (k, k)
    if damp > 0:
        a = a + damp * a.diagonal().mean().clamp_min(1e-12) * torch.eye(a.size(0), dtype=a.dtype, device=a.device)
    rhs = m[kept] @ w.T  # (k, C_out) = Sigma[S, :] W^T
    w_new = torch.linalg.lstsq(a, rhs).solution.T if damp <= 0 else torch.linalg.solve(a, rhs).T  # (C_out, k)
    if b is None:
        return w_new, None
    mu = stats.mean
    return w_new, b.double() + w @ mu - w_new @ mu[kept]


@torch.no_grad()
def _refit(sub: GPT, full: GPT, bp: Blueprint, calib: Calibration, damp: float, progress: bool) -> None:
    """Re-fit every pruned branch's output projection in layer order, on the pruned model's own activations."""
    cfg, dev = full.config, full.lm_head.weight.device
    hs = [_embed(sub, x) for x, _ in calib.batches]  # the stream of the model pruned so far, (B, T, C) each
    with _progress(cfg.n_layer, progress, "reconstruct") as bar:
        for layer, (heads, groups) in enumerate(zip(bp.heads, bp.ffn)):
            fb, sb = full.transformer.h[layer], sub.transformer.h[layer]
            for kept, n_full, width, (ln, f_branch, f_inputs), (_, s_branch, s_inputs), scale in zip(
                    (heads, groups), (cfg.n_head, cfg.ffn_groups), (cfg.head_dim, cfg.ffn_unit_width),
                    _branches(fb), _branches(sb), (sb.attn_scale, sb.mlp_scale)):
                normed = [ln(h) for h in hs]
                if len(kept) < n_full:
                    # the full branch on the pruned stream: the kept units' outputs are columns of its c_proj input
                    stats = ChannelStats(f_branch.c_proj.in_features, gram=True, device=dev)
                    for z in normed:
                        stats.add(f_inputs(z))
                    idx = ffn_cols(torch.tensor(kept, dtype=torch.long, device=dev), width)
                    w, b = _least_squares(f_branch.c_proj.weight, f_branch.c_proj.bias, idx, stats, damp)
                    s_branch.c_proj.weight.copy_(w.to(s_branch.c_proj.weight.dtype))
                    if b is not None:
                        s_branch.c_proj.bias.copy_(b.to(s_branch.c_proj.bias.dtype))
                hs = [h + scale * s_branch.c_proj(s_inputs(z)) for h, z in zip(hs, normed)]
            bar.update()


@torch.no_grad()
def reconstruction_errors(pruned: GPT, full: GPT, batches: Sequence[Batch], candidate: GPT | None = None
                          ) -> list[tuple[float, float]]:
    """Per layer, each branch's squared L2 output error per token against the full branch's, on the same inputs.

    The models must be in eval mode (dropout off), as :func:`prune` returns them.

    The inputs are ``pruned``'s own stream (its layers so far); the branches scored are ``candidate``'s (default
    ``pruned``), so two pruned models with the same blueprint can be compared on identical inputs.
    """
    candidate = pruned if candidate is None else candidate
    errs = [[0.0, 0.0] for _ in range(full.config.n_layer)]
    count = 0
    for x, _ in batches:
        h = _embed(pruned, x)
        count += x.numel()
        for layer, (pb, cb, fb) in enumerate(zip(pruned.transformer.h, candidate.transformer.h, full.transformer.h)):
            for i, (ln, branch, _), (_, c_branch, _), (_, f_branch, _), scale, c_scale in zip(
                    range(2), _branches(pb), _branches(cb), _branches(fb), (pb.attn_scale, pb.mlp_scale),
                    (cb.attn_scale, cb.mlp_scale)):
                z = ln(h)
                errs[layer][i] += float((c_scale * c_branch(z) - f_branch(z)).square().sum())
                h = h + scale * branch(z)
    return [(a / count, m / count) for a, m in errs]


# ---- the entry point ----------------------------------------------------------------------------------------------
@dataclass
class PruneResult:
    """A pruned physical GPT, the units it kept and how it was made."""

    model: GPT
    blueprint: Blueprint
    method: Method
    info: dict[str, Any] = field(default_factory=dict)


def prune(model: GPT, size: int | float, method: Method | str = Method.flap, calibration: Calibration | None = None,
          common: Any = "default", seed: int = 0, scale: bool = True, structure: Structure | str = Structure.uniform,
          damp: float = 0.01, compensate: bool = True, progress: bool = False) -> PruneResult:
    """Prune the full-size ``model`` to ``size`` heads = FFN groups per split layer with ``method``.

    Args:
        model: A full-size GPT (not modified).
        size: Units kept per split layer: a head count or a fraction of ``n_head`` (as ``twist.n_sub``).
        method: See the module docstring; ``importance`` is an alias of ``magnitude``.
        calibration: :func:`calibrate` of ``model`` on training-split batches; needed by activation, flap,
            reconstruct.
        common: Layers kept whole (``"default"`` = first and last).
        seed: ``random`` only.
        scale: Give methods that do not re-fit (random, magnitude, activation) TwIST's ``sqrt(N_full / N_sub)``
            branch scaling, as ``evaluate`` does for random subnets; flap and reconstruct compensate themselves and
            are never scaled.
        structure: ``uniform`` (``size`` units in every split layer) or ``adaptive`` (FLAP's global allocation:
            the same total, layers differ; flap only).
        damp: reconstruct's ridge term, relative to the mean diagonal of the covariance (SparseGPT's 1%).
        compensate: flap's bias compensation (FLAP's own method). ``False`` keeps FLAP's units and structure but
            gives the kept units the ``scale`` branch scaling instead, like the methods that do not re-fit (a
            diagnostic: on the measured data-parallel model the compensation of the FFN branch hurt).
        progress: tqdm bars for calibration-heavy steps.

    Returns:
        :class:`PruneResult` whose ``model`` is a standalone dense GPT in eval mode on ``model``'s device.

    Raises:
        ValueError: Unknown method or structure, a size out of range, a model that is not full-size, a method that
            needs calibration without it, or flap on a bias-free model.
    """
    method = parse_method(method)
    structure = parse_structure(structure)
    spec = PartitionSpec.from_config(model.config, common=common)
    _check_full(model, spec)
    n_heads, n_ffn = check_size(spec, size)
    if structure == Structure.adaptive and method != Method.flap:
        raise ValueError(f"structure=adaptive is FLAP's allocation; use it with method=flap (got method="
                         f"{method.value}), or structure=uniform.")
    if method in NEEDS_DATA and calibration is None:
        raise ValueError(f"method={method.value} needs calibration data: pass calibration=calibrate(model, batches) "
                         "with calib_samples sequences of the training split.")
    if method == Method.flap and compensate and not model.config.bias:
        raise ValueError("method=flap folds removed units into c_proj.bias, but this model has bias=False; use "
                         "method=reconstruct, or flap with compensate=False (flap_compensate=false).")
    check_damp(damp)
    model.eval()
    if method == Method.random:
        bp = random_blueprint(spec, size, seed)
    else:
        heads, ffn = method_scores(model, method, calibration)
        bp = _select(spec, heads, ffn, n_heads, n_ffn, structure)
    compensating = method == Method.reconstruct or (method == Method.flap and compensate)
    sub = extract(model, bp, scale=scale and not compensating).eval()
    if method == Method.flap and compensate:
        _compensate_bias(sub, model, bp, calibration)
    elif method == Method.reconstruct:
        _refit(sub, model, bp, calibration, float(damp), progress)
    info = {"method": method.value, "size": size, "heads": n_heads, "ffn": n_ffn, "structure": structure.value,
            "scaled": scale and not compensating, "common": list(spec.common),
            "units_removed": removed_fraction(bp)}
    if calibration is not None and method in NEEDS_DATA:
        info.update(calib_sequences=calibration.sequences, calib_tokens=calibration.tokens)
    if method == Method.random:
        info["seed"] = seed
    if method == Method.reconstruct:
        info["damp"] = damp
    if method == Method.flap:
        info["compensate"] = bool(compensate)
    return PruneResult(model=sub, blueprint=bp, method=method, info=info)


def removed_fraction(bp: Blueprint) -> float:
    """Share of all block units (heads and FFN groups of every layer) that ``bp`` leaves out."""
    total = bp.n_layer * (bp.n_head + bp.ffn_groups)
    return 1.0 - (bp.num_heads + bp.num_ffn) / total

