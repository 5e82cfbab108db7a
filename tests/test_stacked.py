"""StackedSubnets: several same-size subnets in one pass compute exactly what each masked subnet computes."""

from __future__ import annotations

import pytest
import torch

from twist_lightning.model import GPT, GPTConfig
from twist_lightning.partition import Blueprint, PartitionSpec, importance_blueprint, random_blueprint, subnet
from twist_lightning.stacked import StackedSubnets


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    m = GPT(GPTConfig(n_layer=3, n_head=4, n_embd=32, block_size=16, vocab_size=64)).eval()
    with torch.no_grad():  # non-zero biases so a dropped or doubled bias would show
        for name, p in m.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    return m


def masked(model: GPT, bp: Blueprint, idx: torch.Tensor, y: torch.Tensor, scale: bool) -> tuple[torch.Tensor, ...]:
    with torch.no_grad(), subnet(model, bp, scale=scale):
        return model(idx, y)


@pytest.mark.parametrize("common", ["none", "default", [1]])
@pytest.mark.parametrize("size", [1, 2, 3])
@pytest.mark.parametrize("scale", [True, False])
def test_stacked_equals_masked(model: GPT, common, size: int, scale: bool) -> None:
    spec = PartitionSpec.from_config(model.config, common=common)
    bps = [random_blueprint(spec, size, seed) for seed in range(5)] + [importance_blueprint(model, spec, size)]
    idx, y = torch.randint(0, 64, (3, 16)), torch.randint(0, 64, (3, 16))
    stack = StackedSubnets(model, bps, scale=scale)
    logits, losses = stack(idx), stack.losses(idx, y)
    assert logits.shape == (6, 3, 16, 64) and losses.shape == (6,)
    for k, bp in enumerate(bps):
        ref_logits, ref_loss = masked(model, bp, idx, y, scale)
        torch.testing.assert_close(logits[k], ref_logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(losses[k], ref_loss, atol=1e-6, rtol=1e-6)
    if len({bp for bp in bps}) > 1:  # distinct subnets really give distinct outputs (no mix-up across the stack)
        assert not torch.allclose(logits[0], logits[-1])


def test_one_subnet_and_shorter_input(model: GPT) -> None:
    spec = PartitionSpec.from_config(model.config, common="none")
    bp = random_blueprint(spec, 2, 7)
    idx, y = torch.randint(0, 64, (2, 5)), torch.randint(0, 64, (2, 5))
    torch.testing.assert_close(StackedSubnets(model, [bp])(idx)[0], masked(model, bp, idx, y, True)[0], atol=1e-5,
                               rtol=1e-5)


def test_errors(model: GPT) -> None:
    spec = PartitionSpec.from_config(model.config, common="none")
    with pytest.raises(ValueError, match="at least one blueprint"):
        StackedSubnets(model, [])
    with pytest.raises(ValueError, match="equal per-layer unit counts"):
        StackedSubnets(model, [random_blueprint(spec, 1, 0), random_blueprint(spec, 2, 0)])
    other = Blueprint(heads=((0,),) * 2, ffn=((0,),) * 2, n_head=4, ffn_groups=4)  # 2 layers, the model has 3
    with pytest.raises(ValueError, match="does not match the model"):
        StackedSubnets(model, [other])
    with pytest.raises(ValueError, match="block_size=16"):
        StackedSubnets(model, [random_blueprint(spec, 1, 0)])(torch.zeros(1, 17, dtype=torch.long))
