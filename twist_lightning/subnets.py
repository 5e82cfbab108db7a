"""Running a blueprint: masked inside the full model, or physically as a standalone narrower dense GPT.

:func:`subnet` runs the full model as a masked subnet for the length of a ``with`` block. :func:`extract` cuts a
blueprint's parameters out into a narrower dense GPT (whose logits and gradients equal the masked subnet's), and
:func:`scatter` writes them back; both index through :func:`param_index`, built from ``model.head_rows`` /
``model.head_cols`` / ``model.ffn_cols``. Averaging over holders is
:func:`twist_lightning.workers.average_over_holders`.

Pure torch; knows nothing of Lightning.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace

import torch

from twist_lightning.blueprints import Blueprint
from twist_lightning.model import GPT, GPTConfig, ffn_cols, head_cols, head_rows

__all__ = ["extract", "param_index", "scatter", "subnet"]


@contextlib.contextmanager
def subnet(model: GPT, blueprint: Blueprint, scale: bool = True) -> Iterator[GPT]:
    """Run ``model`` as the masked subnet ``blueprint`` inside the block; the full model is restored on exit.

    Example:
        >>> with subnet(model, bp):          # doctest: +SKIP
        ...     logits, loss = model(idx, targets)
    """
    blueprint.apply(model, scale=scale)
    try:
        yield model
    finally:
        model.set_subnet(None)


# ---- physical subnets ---------------------------------------------------------------------------------------------
def param_index(config: GPTConfig, blueprint: Blueprint, device: torch.device | str = "cpu") -> dict[str, tuple[int, torch.Tensor]]:
    """Where each narrowed parameter of ``blueprint`` sits in the full model: ``{name: (dim, index)}``.

    The subnet's parameter ``name`` equals ``full[name].index_select(dim, index)``. Parameters not listed
    (embeddings, layer norms, c_proj biases, and every parameter of whole layers) are shared whole.
    """
    out: dict[str, tuple[int, torch.Tensor]] = {}
    for layer, (h, f) in enumerate(zip(blueprint.heads, blueprint.ffn)):
        pre = f"transformer.h.{layer}"
        if len(h) != config.n_head:
            hid = torch.tensor(h, dtype=torch.long, device=device)
            rows = head_rows(hid, config.head_dim, config.n_embd)  # (3*h*hd,)
            out[f"{pre}.attn.c_attn.weight"] = (0, rows)
            out[f"{pre}.attn.c_proj.weight"] = (1, head_cols(hid, config.head_dim))
            if config.bias:
                out[f"{pre}.attn.c_attn.bias"] = (0, rows)
        if len(f) != config.ffn_groups:
            neurons = ffn_cols(torch.tensor(f, dtype=torch.long, device=device), config.ffn_unit_width)  # (g*w,)
            out[f"{pre}.mlp.c_fc.weight"] = (0, neurons)
            out[f"{pre}.mlp.c_proj.weight"] = (1, neurons)
            if config.bias:
                out[f"{pre}.mlp.c_fc.bias"] = (0, neurons)
    return out


def _check_sizes(sub_model: GPT, blueprint: Blueprint) -> None:
    """Raise ``ValueError`` unless ``sub_model``'s layer widths are ``blueprint``'s."""
    cfg = sub_model.config
    got = [(cfg.heads(i), cfg.ffn_units(i)) for i in range(cfg.n_layer)]
    if cfg.n_layer != blueprint.n_layer or got != blueprint.sizes():
        raise ValueError(f"subnet layer sizes {got} do not match the blueprint's {blueprint.sizes()}.")


@torch.no_grad()
def extract(model: GPT, blueprint: Blueprint, scale: bool = True) -> GPT:
    """A standalone dense GPT holding copies of ``blueprint``'s parameters of the full-size ``model``.

    Its config narrows each layer (``layer_heads`` / ``layer_ffn_units``), sets the branch scales
    (``sqrt(N_full / N_sub)`` per layer with ``scale``, else 1) and stores ``blueprint.to_dict()`` in
    ``config.extra["blueprint"]``. Its logits and gradients equal those of ``model`` running ``blueprint`` masked.
    The copy is on ``model``'s device and dtype, in ``model``'s train/eval mode.
    """
    blueprint.check_model(model)
    scales = blueprint.branch_scales(scale)
    cfg = replace(
        model.config,
        layer_heads=[h for h, _ in blueprint.sizes()],
        layer_ffn_units=[f for _, f in blueprint.sizes()],
        attn_scale=[a for a, _ in scales],
        mlp_scale=[m for _, m in scales],
        extra={**model.config.extra, "blueprint": blueprint.to_dict()},
    )
    ref = model.lm_head.weight
    sub = GPT(cfg).to(device=ref.device, dtype=ref.dtype).train(model.training)
    full = dict(model.named_parameters())
    index = param_index(model.config, blueprint, ref.device)
    for name, p in sub.named_parameters():
        src = full[name]
        p.copy_(src.index_select(*index[name]) if name in index else src)
    return sub


@torch.no_grad()
def scatter(sub_model: GPT, full_model: GPT, blueprint: Blueprint) -> None:
    """Write ``sub_model``'s parameters back into ``full_model`` at ``blueprint``'s rows/columns (inverse of
    :func:`extract`).

    Shared parameters are copied whole; units the blueprint does not hold are left untouched.
    """
    blueprint.check_model(full_model)
    _check_sizes(sub_model, blueprint)
    full = dict(full_model.named_parameters())
    index = param_index(full_model.config, blueprint, full_model.lm_head.weight.device)
    for name, p in sub_model.named_parameters():
        dst = full[name]
        if name in index:
            dst.index_copy_(*index[name], p.to(dst.dtype))
        else:
            dst.copy_(p)
