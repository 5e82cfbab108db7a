"""Choosing one subnet to deploy: random, importance-selected (highest-magnitude units) or explicit blueprints.

:func:`random_blueprint`, :func:`importance_blueprint` (scores from :func:`unit_scores`) and
:func:`explicit_blueprint` each build one :class:`~twist_lightning.blueprints.Blueprint` of a full-size model;
:func:`select_blueprint` picks among them by name (:class:`Selector`, the ``selector=`` of ``export`` and
``generate``), and :func:`check_size` turns a size setting into unit counts with an error naming its key.

Pure torch + stdlib; knows nothing of Lightning.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import Any

import torch

from twist_lightning.blueprints import Blueprint, PartitionSpec, layer_units, resolve_n_sub, seeded_rng
from twist_lightning.model import GPT, ffn_cols, head_cols, head_rows

__all__ = ["SELECTORS", "Selector", "check_size", "explicit_blueprint", "importance_blueprint",
           "per_layer_blueprint", "random_blueprint", "select_blueprint", "top_units", "unit_scores"]


class Selector(str, Enum):
    """How one subnet is chosen (lower-case names: OmegaConf matches enum members by name)."""

    random = "random"  # seeded uniform units
    importance = "importance"  # the highest-magnitude units (unit_scores)
    explicit = "explicit"  # a given Blueprint (JSON file)


SELECTORS = tuple(s.value for s in Selector)


# ---- the selectors -----------------------------------------------------------------------------------------
def per_layer_blueprint(spec: PartitionSpec, pick: Any) -> Blueprint:
    """A blueprint with ``pick(layer) -> (heads, ffn)`` on split layers and whole layers elsewhere."""
    full = Blueprint.full(spec)
    heads, ffn = list(full.heads), list(full.ffn)
    for layer in spec.split_layers:
        heads[layer], ffn[layer] = pick(layer)
    return Blueprint(heads=tuple(heads), ffn=tuple(ffn), n_head=spec.n_head, ffn_groups=spec.ffn_groups)


def random_blueprint(spec: PartitionSpec, n_sub: int | float, seed: int) -> Blueprint:
    """One subnet with a uniformly random ``N_sub``-subset of heads and of FFN groups on every split layer."""
    n_heads, n_ffn = resolve_n_sub(spec, n_sub)
    rng = seeded_rng("twist.random_blueprint", int(seed))
    return per_layer_blueprint(spec, lambda _: (rng.sample(range(spec.n_head), n_heads),
                                                rng.sample(range(spec.ffn_groups), n_ffn)))


@torch.no_grad()
def unit_scores(model: GPT) -> tuple[torch.Tensor, torch.Tensor]:
    """Magnitude score of every unit: ``(heads (n_layer, n_head), ffn (n_layer, ffn_groups))``.

    A head scores ``||W_attn[q,k,v rows of h]||_F * ||W_proj[:, cols of h]||_F`` (how strongly it reads and how
    strongly it writes the residual stream); an FFN group ``||W_fc[rows of g]||_F * ||W_proj[:, cols of g]||_F``.
    Biases are left out. Scores are in float32 on the model's device.
    """
    cfg = model.config
    dev = model.lm_head.weight.device
    head_ids = [torch.tensor([h], device=dev) for h in range(cfg.n_head)]
    group_ids = [torch.tensor([g], device=dev) for g in range(cfg.ffn_groups)]
    hs, fs = [], []
    for block in model.transformer.h:
        w_attn, w_aproj = block.attn.c_attn.weight.float(), block.attn.c_proj.weight.float()
        w_fc, w_mproj = block.mlp.c_fc.weight.float(), block.mlp.c_proj.weight.float()
        hs.append(torch.stack([
            w_attn[head_rows(h, cfg.head_dim, cfg.n_embd)].norm() * w_aproj[:, head_cols(h, cfg.head_dim)].norm()
            for h in head_ids
        ]))
        fs.append(torch.stack([
            w_fc[ffn_cols(g, cfg.ffn_unit_width)].norm() * w_mproj[:, ffn_cols(g, cfg.ffn_unit_width)].norm()
            for g in group_ids
        ]))
    return torch.stack(hs), torch.stack(fs)


def top_units(scores: torch.Tensor, n: int) -> list[int]:
    """Sorted indices of the ``n`` highest scores; ties go to the lower index (deterministic, unlike ``topk``)."""
    values = scores.tolist()
    return sorted(sorted(range(len(values)), key=lambda i: (-values[i], i))[:n])


def importance_blueprint(model: GPT, spec: PartitionSpec, n_sub: int | float) -> Blueprint:
    """One subnet of the ``N_sub`` highest-scoring heads and FFN groups of every split layer (see :func:`unit_scores`)."""
    spec.check_model(model)
    n_heads, n_ffn = resolve_n_sub(spec, n_sub)
    head_scores, ffn_scores = unit_scores(model)
    return per_layer_blueprint(spec, lambda layer: (top_units(head_scores[layer], n_heads),
                                                    top_units(ffn_scores[layer], n_ffn)))


def explicit_blueprint(
    spec: PartitionSpec,
    heads: Mapping[int, Sequence[int]] | Sequence[Sequence[int] | None] | None = None,
    ffn: Mapping[int, Sequence[int]] | Sequence[Sequence[int] | None] | None = None,
) -> Blueprint:
    """A blueprint from user-given unit indices.

    Args:
        spec: Layers and unit counts.
        heads: Active heads per layer: a ``{layer: indices}`` mapping (unlisted layers whole) or a list with one
            entry per layer (``None`` = whole). ``None`` = every layer whole.
        ffn: Active FFN groups, same forms.

    Raises:
        ValueError: On out-of-range or duplicate indices, a wrong number of layers, or a common (or
            unpartitioned) layer that is not whole.
    """
    def per_layer(units: Any, full: int, what: str) -> list[tuple[int, ...]]:
        if units is None:
            units = {}
        if not isinstance(units, Mapping):
            units = list(units)
            if len(units) != spec.n_layer:
                raise ValueError(f"{what} lists {len(units)} layers; the model has {spec.n_layer}.")
            units = {i: u for i, u in enumerate(units) if u is not None}
        bad = [layer for layer in units if not 0 <= int(layer) < spec.n_layer]
        if bad:
            raise ValueError(f"{what} names layers {bad}; valid layers are 0..{spec.n_layer - 1}.")
        out = [tuple(range(full))] * spec.n_layer
        for layer, u in units.items():
            out[int(layer)] = layer_units(u, full, what, int(layer))
        whole = set(range(spec.n_layer)) - set(spec.split_layers)
        narrowed = sorted(layer for layer in whole if len(out[layer]) != full)
        if narrowed:
            raise ValueError(f"{what} narrows layers {narrowed}, which are common or unpartitioned and must stay whole "
                             f"(twist.common={list(spec.common)}).")
        return out

    return Blueprint(heads=tuple(per_layer(heads, spec.n_head, "heads")),
                     ffn=tuple(per_layer(ffn, spec.ffn_groups, "FFN groups")),
                     n_head=spec.n_head, ffn_groups=spec.ffn_groups)


# ---- choosing by name ------------------------------------------------------------------------------------------
def check_size(spec: PartitionSpec, size: int | float, key: str = "size") -> tuple[int, int]:
    """``(heads, ffn_groups)`` of ``size`` (a head count or a fraction); a ``ValueError`` naming ``key`` otherwise."""
    try:
        return resolve_n_sub(spec, size)
    except ValueError as err:
        raise ValueError(f"{key}={size!r} is out of range for this model (n_head={spec.n_head}, ffn_groups="
                         f"{spec.ffn_groups}): use a head count in 1..{spec.n_head} or a fraction in (0, 1]. "
                         f"({err})") from None


def select_blueprint(model: GPT, spec: PartitionSpec, selector: str, size: int | float | None = None,
                     seed: int = 0, blueprint: str | os.PathLike[str] | Blueprint | None = None) -> Blueprint:
    """The subnet to export.

    Args:
        model: The full-size model.
        spec: Which layers are split (``common`` layers stay whole).
        selector: ``"random"`` (seeded uniform units), ``"importance"`` (highest-magnitude units, see
            :func:`~twist_lightning.partition.unit_scores`) or ``"explicit"`` (``blueprint``).
        size: Units per split layer: a head count or a fraction of ``n_head`` (not used by ``explicit``).
        seed: Seed of the ``random`` selector.
        blueprint: ``explicit`` only: a :class:`Blueprint` or a JSON file of ``Blueprint.to_dict()``.

    Raises:
        ValueError: Unknown selector, missing or out-of-range size, or an explicit blueprint of another shape.
        FileNotFoundError: The blueprint file does not exist.
    """
    if selector not in SELECTORS:
        raise ValueError(f"selector={selector!r} is not one of {list(SELECTORS)}.")
    if selector == "explicit":
        if blueprint is None:
            raise ValueError("selector=explicit needs blueprint=FILE.json (a Blueprint.to_dict() JSON).")
        bp = blueprint if isinstance(blueprint, Blueprint) else _read_blueprint(blueprint)
        try:
            bp.check_model(model)
        except ValueError as err:
            raise ValueError(f"blueprint={blueprint}: {err}") from None
        return bp
    if size is None:
        raise ValueError(f"selector={selector} needs size=N (heads per split layer, 1..{spec.n_head}) or a fraction.")
    check_size(spec, size)
    if selector == "random":
        return random_blueprint(spec, size, seed)
    return importance_blueprint(model, spec, size)


def _read_blueprint(path: str | os.PathLike[str]) -> Blueprint:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"blueprint={str(path)!r} does not exist; write one with Blueprint.to_json().")
    try:
        return Blueprint.from_dict(json.loads(p.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"blueprint={str(path)!r} is not a Blueprint JSON ({err}); expected keys "
                         "n_head, ffn_groups, heads, ffn.") from None
