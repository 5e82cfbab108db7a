"""Masked and physical subnets: extract, scatter, param_index and the subnet context (twist_lightning/subnets.py)."""

from __future__ import annotations

import math

import pytest
import torch

from twist_lightning.blueprints import Blueprint, PartitionSpec
from twist_lightning.model import GPT, GPTConfig
from twist_lightning.selection import explicit_blueprint, random_blueprint
from twist_lightning.subnets import extract, param_index, scatter, subnet


def perturbed_model(n_layer: int = 3, n_head: int = 4, n_embd: int = 32, ffn_groups: int | None = None, seed: int = 0) -> GPT:
    """A small float32 GPT whose biases and layer norms are perturbed, so every parameter matters."""
    torch.manual_seed(seed)
    cfg = GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=16, vocab_size=64, ffn_groups=ffn_groups)
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def tokens_for(model: GPT, batch: int = 2, seq: int = 12, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, model.config.vocab_size, (batch, seq + 1), generator=g)
    return idx[:, :-1].contiguous(), idx[:, 1:].contiguous()  # model.forward views targets


# ---- test helper --------------------------------------------------------------------------------------------------
@torch.no_grad()
def unit_mask(model: GPT, blueprint: Blueprint) -> dict[str, torch.Tensor]:
    """Per parameter of the full-size ``model``: 1 where ``blueprint`` holds the element, 0 elsewhere.

    Shared parameters are all ones. Masks have the parameter's shape, dtype and device (ready to multiply grads).
    """
    blueprint.check_model(model)
    index = param_index(model.config, blueprint, model.lm_head.weight.device)
    masks = {}
    for name, p in model.named_parameters():
        if name in index:
            dim, idx = index[name]
            masks[name] = torch.zeros_like(p).index_fill_(dim, idx, 1.0)
        else:
            masks[name] = torch.ones_like(p)
    return masks


# ---- masked vs physical -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ffn_groups", [None, 8])
@pytest.mark.parametrize("common", ["default", "none"])
@pytest.mark.parametrize("scale", [True, False])
def test_masked_equals_physical_logits_and_grads(ffn_groups: int | None, common: str, scale: bool) -> None:
    model = perturbed_model(ffn_groups=ffn_groups)
    spec = PartitionSpec.from_config(model.config, common=common)
    idx, targets = tokens_for(model)
    for seed, n_sub in ((0, 1), (1, 2), (2, 3), (3, 0.5)):
        bp = random_blueprint(spec, n_sub, seed)
        model.zero_grad(set_to_none=True)
        with subnet(model, bp, scale=scale):
            logits, loss = model(idx, targets)
            loss.backward()
        assert not model.subnet_active  # restored on exit
        sub = extract(model, bp, scale=scale)
        assert Blueprint.from_dict(sub.config.extra["blueprint"]) == bp
        sub_logits, sub_loss = sub(idx, targets)
        sub_loss.backward()
        torch.testing.assert_close(sub_logits, logits, atol=1e-5, rtol=0)
        full = dict(model.named_parameters())
        index = param_index(model.config, bp)
        for name, p in sub.named_parameters():
            grad = full[name].grad
            expected = grad.index_select(*index[name]) if name in index else grad
            torch.testing.assert_close(p.grad, expected, atol=1e-5, rtol=0, msg=name)


def test_inactive_parameters_get_exactly_zero_grad() -> None:
    model = perturbed_model(ffn_groups=8)
    spec = PartitionSpec.from_config(model.config, common="none")
    idx, targets = tokens_for(model)
    bp = random_blueprint(spec, 2, seed=4)
    with subnet(model, bp):
        model(idx, targets)[1].backward()
    masks = unit_mask(model, bp)
    n_inactive = 0
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert (p.grad[masks[name] == 0] == 0).all(), name
        n_inactive += int((masks[name] == 0).sum())
        assert p.grad[masks[name] == 1].abs().sum() > 0, name  # active ones do learn
    assert n_inactive > 0


def test_unit_mask_matches_blueprint() -> None:
    model = perturbed_model(n_head=4, n_embd=32)
    bp = explicit_blueprint(PartitionSpec.from_config(model.config), heads={1: [2]}, ffn={1: [0, 3]})
    masks = unit_mask(model, bp)
    hd, w = model.config.head_dim, model.config.ffn_unit_width
    attn = masks["transformer.h.1.attn.c_attn.weight"]  # (3*C, C): q|k|v rows of head 2
    assert attn.sum() == 3 * hd * 32
    assert all(attn[part * 32 + 2 * hd: part * 32 + 3 * hd].all() for part in range(3))
    proj = masks["transformer.h.1.attn.c_proj.weight"]
    assert proj[:, 2 * hd: 3 * hd].all() and proj.sum() == hd * 32
    fc = masks["transformer.h.1.mlp.c_fc.bias"]
    assert fc[:w].all() and fc[3 * w:].all() and fc.sum() == 2 * w
    assert masks["transformer.h.0.attn.c_attn.weight"].all() and masks["transformer.h.1.attn.c_proj.bias"].all()


# ---- scatter and holder averaging ---------------------------------------------------------------------------------
def test_scatter_extract_round_trip() -> None:
    model = perturbed_model(ffn_groups=8)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    bp = random_blueprint(PartitionSpec.from_config(model.config, common="none"), 2, seed=5)
    sub = extract(model, bp)
    scatter(sub, model, bp)  # unchanged subnet: identity
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name
    with torch.no_grad():
        for p in sub.parameters():
            p.add_(1.0)
    scatter(sub, model, bp)
    masks = unit_mask(model, bp)
    for name, p in model.named_parameters():
        held = masks[name].bool()
        assert torch.equal(p[held], (before[name] + 1.0)[held]), name
        assert torch.equal(p[~held], before[name][~held]), name
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied
    torch.testing.assert_close(extract(model, bp)(tokens_for(model)[0])[0], sub(tokens_for(model)[0])[0])


def test_shape_mismatch_errors() -> None:
    model = perturbed_model(n_layer=2, n_head=4)
    spec = PartitionSpec.from_config(model.config, common="none")
    bp, other = random_blueprint(spec, 2, seed=0), random_blueprint(spec, 1, seed=0)
    sub = extract(model, bp)
    with pytest.raises(ValueError, match="do not match"):
        scatter(sub, model, other)
    with pytest.raises(ValueError, match="does not match"):
        random_blueprint(PartitionSpec(3, 4, 4), 2, 0).apply(model)
    with pytest.raises(ValueError, match="full-size"):
        extract(sub, bp)


# ---- scaling rule at initialisation -------------------------------------------------------------------------------
def _branch_norms(model: GPT, layer: int, idx: torch.Tensor) -> tuple[float, float]:
    """Frobenius norms of what layer ``layer``'s attention and FFN branches add to the residual stream."""
    block, seen = model.transformer.h[layer], {}
    hooks = [
        block.register_forward_pre_hook(lambda m, args: seen.__setitem__("in", args[0])),
        block.ln_2.register_forward_pre_hook(lambda m, args: seen.__setitem__("mid", args[0])),
        block.register_forward_hook(lambda m, args, out: seen.__setitem__("out", out)),
    ]
    with torch.no_grad():
        model(idx)
    for h in hooks:
        h.remove()
    return float((seen["mid"] - seen["in"]).norm()), float((seen["out"] - seen["mid"]).norm())


def _norm_ratios(model: GPT, spec: PartitionSpec, layer: int, trials: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Branch norms of half-width subnets, with and without scaling, over the full model's (summed over trials)."""
    full, scaled, unscaled = torch.zeros(2), torch.zeros(2), torch.zeros(2)
    for trial in range(trials):
        idx = torch.randint(0, model.config.vocab_size, (4, 64), generator=torch.Generator().manual_seed(trial))
        full += torch.tensor(_branch_norms(model, layer, idx))
        bp = random_blueprint(spec, 0.5, seed=trial)
        for scale, acc in ((True, scaled), (False, unscaled)):
            with subnet(model, bp, scale=scale):
                acc += torch.tensor(_branch_norms(model, layer, idx))
    return scaled / full, unscaled / full  # each (attn, FFN)


def test_scaling_rule_preserves_branch_norms_at_init() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=4, n_head=8, n_embd=256, block_size=64, vocab_size=512))
    # Only layer 2 split: identical inputs, so this isolates the per-layer rule.
    # Measured (8 subnets x 4x64 tokens): scaled/full = (0.998, 1.010), unscaled/full = (0.706, 0.715).
    scaled, unscaled = _norm_ratios(model, PartitionSpec.from_config(model.config, common="none", partitioned=[2]), 2)
    torch.testing.assert_close(scaled, torch.ones(2), atol=0.05, rtol=0)
    torch.testing.assert_close(unscaled, torch.full((2,), math.sqrt(0.5)), atol=0.05, rtol=0)
    # Default C (layers 1 and 2 split): the unscaled layer-1 deficit compounds into layer 2's attention input,
    # scaling keeps it in line. Measured: scaled (0.973, 1.006), unscaled (0.641, 0.713).
    scaled, unscaled = _norm_ratios(model, PartitionSpec.from_config(model.config), 2)
    torch.testing.assert_close(scaled, torch.ones(2), atol=0.08, rtol=0)
    assert (unscaled < 0.75).all()
