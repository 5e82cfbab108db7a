"""Flat buffers and holder averaging: the bookkeeping the strategy's sync runs on."""

from __future__ import annotations

import copy

import torch

from test_subnets import unit_mask
from twist_lightning.model import GPT, GPTConfig
from twist_lightning.partition import PartitionSpec, explicit_blueprint, extract, param_index, random_blueprint
from twist_lightning.workers import Layout, average_over_holders, exchange_held, flatten_parameters


def _model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=64, ffn_groups=4))


def test_flatten_parameters_makes_views_and_keeps_the_tie() -> None:
    model = _model()
    ref = copy.deepcopy(model)
    flat = flatten_parameters(model)
    assert flat.numel() == sum(p.numel() for p in model.parameters())
    assert model.lm_head.weight is model.transformer.wte.weight
    flat.add_(1.0)  # writes through to every parameter
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.equal(p, q + 1.0)


def test_average_over_holders_is_exact() -> None:
    """Each element becomes the mean over the workers holding it; unheld elements keep their value."""
    model = _model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    spec = PartitionSpec.from_config(model.config, common="none")
    bp1 = explicit_blueprint(spec, heads=[[0, 1], [0, 1]], ffn=[[0], [0, 1]])
    bp2 = explicit_blueprint(spec, heads=[[1, 2], [0, 1]], ffn=[[1], [2]])  # head 3 and FFN group 3 unheld
    layout = Layout(model)
    central = flatten_parameters(model)
    held, indices = [], []
    for bp, value in ((bp1, 1.0), (bp2, 3.0)):
        sub = extract(model, bp)
        held.append(torch.full((sum(p.numel() for p in sub.parameters()),), value))  # the worker's held vector
        indices.append(param_index(model.config, bp))
        assert held[-1].numel() == sum(s.numel() for s in layout.held_shapes(indices[-1]))
    average_over_holders(central, layout, held, indices)
    m1, m2 = unit_mask(model, bp1), unit_mask(model, bp2)
    for name, p in model.named_parameters():
        a, b = m1[name].bool(), m2[name].bool()
        expected = torch.where(a & b, 2.0, torch.where(a, 1.0, torch.where(b, 3.0, before[name])))
        assert torch.equal(p, expected), name
    assert (~(m1["transformer.h.0.attn.c_attn.weight"].bool() | m2["transformer.h.0.attn.c_attn.weight"].bool())).any()


def test_gather_held_matches_extract_and_held_mask() -> None:
    """A masked worker's held vector is exactly the physical subnet's parameters, in the same order."""
    model = _model(1)
    layout = Layout(model)
    bp = random_blueprint(PartitionSpec.from_config(model.config, common="default"), 2, seed=3)
    index = param_index(model.config, bp)
    flat = flatten_parameters(copy.deepcopy(model))
    sub = extract(model, bp)
    assert torch.equal(layout.gather_held(flat, index), torch.cat([p.reshape(-1) for p in sub.parameters()]))
    mask = layout.held_mask(index, flat.device)
    assert int(mask.sum()) == sum(p.numel() for p in sub.parameters())
    masks = unit_mask(model, bp)
    assert torch.equal(mask, torch.cat([masks[n].reshape(-1).bool() for n, _ in model.named_parameters()]))


def test_exchange_held_single_process_is_identity() -> None:
    local = [torch.arange(3.0), torch.arange(3.0) + 10]
    out = exchange_held(local)
    assert len(out) == 2 and all(torch.equal(a, b) for a, b in zip(out, local))


def test_average_over_holders_equals_the_dense_mask_reference_bit_for_bit() -> None:
    """Random values, three workers (one head and one FFN group held by nobody, embeddings held by all)."""
    model = _model(2)
    layout = Layout(model)
    central = flatten_parameters(model)
    before = central.clone()
    spec = PartitionSpec.from_config(model.config, common="none")
    bps = [explicit_blueprint(spec, heads=[[0, 1], [0, 3]], ffn=[[0, 2], [1]]),
           explicit_blueprint(spec, heads=[[1, 2], [0, 1]], ffn=[[1], [2, 3]]),
           explicit_blueprint(spec, heads=[[0, 2], [1, 2]], ffn=[[2], [0, 1]])]
    indices = [param_index(model.config, bp) for bp in bps]
    g = torch.Generator().manual_seed(0)
    held = [torch.randn(layout.gather_held(central, i).numel(), generator=g) for i in indices]
    sums, counts = torch.zeros_like(central), torch.zeros_like(central)
    for h, index in zip(held, indices):
        mask = layout.held_mask(index, central.device)
        spread = torch.zeros_like(central)
        spread[mask] = h  # the held vector lists a parameter's kept elements in row-major order
        sums += spread
        counts += mask
    expected = torch.where(counts > 0, sums / counts.clamp_min(1.0), before)
    average_over_holders(central, layout, held, indices)
    assert torch.equal(central, expected)
    assert bool((counts == 0).any()) and bool((counts == 3).any())  # both edge cases are exercised


def test_gather_held_writes_into_a_given_buffer() -> None:
    model = _model(3)
    layout = Layout(model)
    flat = flatten_parameters(model)
    index = param_index(model.config, random_blueprint(PartitionSpec.from_config(model.config), 2, seed=1))
    out = torch.empty(layout.gather_held(flat, index).numel())
    assert layout.gather_held(flat, index, out=out) is out
    assert torch.equal(out, layout.gather_held(flat, index))
