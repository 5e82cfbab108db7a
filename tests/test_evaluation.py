"""Subnet evaluation, the library: evaluate_subnets, stacked vs masked, sizes, training sizes (evaluation.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from twist_lightning.blueprints import PartitionSpec
from twist_lightning.evaluation import (evaluate_subnets, pick_device, resolve_methods, resolve_sizes,
                                        subnet_blueprints, train_size_of)
from twist_lightning.model import GPT, GPTConfig
from twist_lightning.prune import Method


def test_evaluate_subnets_api() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=3, n_head=4, n_embd=32, block_size=16, vocab_size=64))
    spec = PartitionSpec.from_config(model.config, common="default")  # only layer 1 is split
    x = torch.randint(0, 64, (3, 16))
    batches = [(x, torch.roll(x, -1, dims=1))]
    res = evaluate_subnets(model, batches, [1, 0.5, 4], samples=3, spec=spec, seed=0)
    assert [r["heads"] for r in res["sizes"]] == [1, 2, 4] and res["tokens"] == 48 and res["common"] == [0, 2]
    assert all(len(r["random_ppl"]) == 3 and r["importance_ppl"] > 0 for r in res["sizes"])
    full = res["sizes"][-1]  # size n_head is the full model: identical samples, no spread
    assert full["std_ppl"] == 0 and full["mean_ppl"] == pytest.approx(res["full"]["ppl"])
    assert res["full"]["ppl"] == pytest.approx(math.exp(res["full"]["loss"]))
    again = evaluate_subnets(model, batches, [1], samples=3, spec=spec, seed=0, importance=False)
    assert again["sizes"][0]["random_ppl"] == res["sizes"][0]["random_ppl"]  # reproducible from the seed
    assert again["sizes"][0]["importance_ppl"] is None

    class Exploding(list):
        def __iter__(self):
            raise AssertionError("data touched before the sizes were checked")

    for bad in ([0], [5], [1.5], []):
        with pytest.raises(ValueError, match=r"sizes"):
            evaluate_subnets(model, Exploding(), bad, samples=2, spec=spec)
    with pytest.raises(ValueError, match="samples=0"):
        evaluate_subnets(model, batches, [1], samples=0, spec=spec)


@pytest.mark.parametrize("common", ["none", "default"])
def test_stacked_and_one_at_a_time_agree(common: str) -> None:
    """subnet_batch only changes how subnets share forward passes, not their perplexities."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=3, n_head=4, n_embd=32, block_size=16, vocab_size=64))
    spec = PartitionSpec.from_config(model.config, common=common)
    x = torch.randint(0, 64, (4, 16))
    batches = [(x[:2], torch.roll(x[:2], -1, dims=1)), (x[2:], torch.roll(x[2:], -1, dims=1))]
    runs = {n: evaluate_subnets(model, batches, [1, 2, 3], samples=5, spec=spec, seed=1, subnet_batch=n)
            for n in (1, 2, 8, None)}  # None: the CPU default
    for n in (2, 8, None):
        for got, ref in zip(runs[n]["sizes"], runs[1]["sizes"]):
            assert got["random_ppl"] == pytest.approx(ref["random_ppl"], rel=1e-5)
            assert got["importance_ppl"] == pytest.approx(ref["importance_ppl"], rel=1e-5)
    assert len(set(runs[8]["sizes"][0]["random_ppl"])) > 1  # distinct subnets, distinct results
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match=rf"subnet_batch={bad!r} must be an int >= 1"):
            evaluate_subnets(model, batches, [1], samples=2, spec=spec, subnet_batch=bad)


def test_train_size_from_run_folder(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("twist:\n  variant: masked\n  n_sub: 0.5\n")
    assert train_size_of(tmp_path / "checkpoints" / "last.ckpt") == 0.5
    (tmp_path / ".hydra" / "config.yaml").write_text("twist:\n  variant: none\n  n_sub: 0.5\n")
    assert train_size_of(tmp_path / "checkpoints" / "last.ckpt") is None


def test_train_size_needs_a_run_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="training size is unknown.*train_sizes"):
        train_size_of(tmp_path / "checkpoints" / "last.ckpt")


def test_sizes_methods_and_blueprints_are_checked_up_front() -> None:
    spec = PartitionSpec(3, 4, 4)
    assert resolve_sizes(spec, None) == [1, 2, 3, 4] and resolve_sizes(spec, [0.5, 3]) == [0.5, 3]
    with pytest.raises(ValueError, match=r"sizes\[1\]=7 is out of range"):
        resolve_sizes(spec, [1, 7])
    assert resolve_methods(["importance", "flap", "magnitude"]) == [Method.magnitude, Method.flap]  # alias, deduped
    assert resolve_methods("random") == [Method.random] and resolve_methods(None) == []
    with pytest.raises(ValueError, match=r"method\[0\]='obs'"):
        resolve_methods(["obs"])
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=3, n_head=4, n_embd=32, block_size=16, vocab_size=64))
    randoms, imp = subnet_blueprints(model, spec, 2, samples=3, seed=0)
    assert len(randoms) == 3 and all(bp.sizes()[1] == (2, 2) for bp in randoms) and imp.sizes()[1] == (2, 2)
    assert subnet_blueprints(model, spec, 2, samples=3, seed=0)[0] == randoms  # reproducible from the seed
    assert subnet_blueprints(model, spec, 2, samples=1, seed=0, importance=False)[1] is None
    assert pick_device("cpu") == torch.device("cpu") and pick_device("auto").type in ("cpu", "cuda")
