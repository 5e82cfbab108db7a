"""sample(): seeded, greedy at temperature 0, top-k, context cropping, and a ticket equal to its masked subnet."""

from __future__ import annotations

import pytest
import torch

from twist_lightning.model import GPT, GPTConfig
from twist_lightning.partition import PartitionSpec, extract, random_blueprint, subnet
from twist_lightning.sampling import sample


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=3, n_head=4, n_embd=32, block_size=16, vocab_size=64)).eval()


def test_same_seed_same_tokens_and_another_seed_others(model):
    prompt = torch.tensor([[1, 2, 3]])
    a = sample(model, prompt, max_new_tokens=20, temperature=1.0, seed=7)
    torch.rand(5)  # the global generator's state must not matter
    b = sample(model, prompt, max_new_tokens=20, temperature=1.0, seed=7)
    c = sample(model, prompt, max_new_tokens=20, temperature=1.0, seed=8)
    assert a.shape == (1, 23) and torch.equal(a[:, :3], prompt)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_temperature_zero_and_top_k_one_are_greedy(model):
    prompt = torch.tensor([[5], [9]])
    greedy = prompt
    with torch.no_grad():
        for _ in range(10):
            greedy = torch.cat([greedy, model(greedy)[0][:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(sample(model, prompt, max_new_tokens=10, temperature=0), greedy)
    assert torch.equal(sample(model, prompt, max_new_tokens=10, temperature=1.5, top_k=1, seed=3), greedy)


def test_top_k_draws_only_among_the_k_most_likely(model):
    prompt = torch.tensor([[4, 4, 4]] * 64)
    out = sample(model, prompt, max_new_tokens=1, temperature=5.0, top_k=3, seed=0)[:, -1]
    with torch.no_grad():
        allowed = set(torch.topk(model(prompt[:1])[0][0, -1], 3).indices.tolist())
    assert set(out.tolist()) <= allowed and len(set(out.tolist())) > 1


def test_context_beyond_block_size_is_cropped_and_stop_id_ends_early(model):
    long = torch.randint(0, 64, (1, 40))
    out = sample(model, long, max_new_tokens=5, temperature=0)
    assert out.shape == (1, 45)
    first = int(sample(model, long, max_new_tokens=1, temperature=0)[0, -1])
    assert sample(model, long, max_new_tokens=5, temperature=0, stop_id=first).shape == (1, 41)


def test_a_ticket_samples_like_its_masked_subnet(model):
    spec = PartitionSpec.from_config(model.config, common="none")
    bp = random_blueprint(spec, 2, seed=3)
    ticket = extract(model, bp).eval()
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    with subnet(model, bp):
        masked = sample(model, prompt, max_new_tokens=30, temperature=1.0, top_k=20, seed=11)
    assert torch.equal(sample(ticket, prompt, max_new_tokens=30, temperature=1.0, top_k=20, seed=11), masked)
    assert not torch.equal(sample(model, prompt, max_new_tokens=30, temperature=1.0, top_k=20, seed=11), masked)


@pytest.mark.parametrize("kw, match", [
    (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(max_new_tokens=2, temperature=-0.1), "temperature"),
    (dict(max_new_tokens=2, temperature=float("nan")), "temperature"),
    (dict(max_new_tokens=2, top_k=0), "top_k"),
])
def test_bad_arguments_name_themselves(model, kw, match):
    with pytest.raises(ValueError, match=match):
        sample(model, torch.tensor([[1]]), **kw)
    with pytest.raises(ValueError, match="at least one token"):
        sample(model, torch.zeros(1, 0, dtype=torch.long), max_new_tokens=1)
