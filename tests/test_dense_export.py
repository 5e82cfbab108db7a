"""The native export folder: a subnet or pruned model written, reloaded alone, same logits (dense_export.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from test_checkpoint import fit_tiny_checkpoint
from twist_lightning.blueprints import Blueprint, PartitionSpec
from twist_lightning.dense_export import (export_checkpoint_subnet, export_pruned, export_subnet, load_exported,
                                          load_exported_vocab)
from twist_lightning.model import GPT, GPTConfig
from twist_lightning.selection import select_blueprint
from twist_lightning.subnets import subnet
from twist_lightning.vocab import CompactVocab


def tiny_model() -> GPT:
    """3 layers x 4 heads, 32 wide, 64 ids, with non-zero biases so a dropped bias or a missed scale would show."""
    torch.manual_seed(0)
    m = GPT(GPTConfig(n_layer=3, n_head=4, n_embd=32, block_size=16, vocab_size=64)).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    return m


@pytest.fixture(scope="module")
def model() -> GPT:
    return tiny_model()


def masked_logits(model: GPT, bp: Blueprint, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), subnet(model, bp):
        return model(idx)[0]


@pytest.mark.parametrize("common", ["none", "default"])
@pytest.mark.parametrize("selector,size", [("random", 1), ("random", 0.5), ("importance", 3)])
def test_export_matches_masked_subnet(model: GPT, tmp_path: Path, common: str, selector: str, size) -> None:
    spec = PartitionSpec.from_config(model.config, common=common)
    bp = select_blueprint(model, spec, selector, size, seed=3)
    idx = torch.randint(0, 64, (2, 16))
    vocab = CompactVocab(list(range(63)))
    sub = export_subnet(model, bp, tmp_path, vocab=vocab, metadata={"selector": selector})
    loaded = load_exported(tmp_path)
    ref = masked_logits(model, bp, idx)
    with torch.no_grad():
        torch.testing.assert_close(sub(idx)[0], ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(loaded(idx)[0], ref, atol=1e-5, rtol=1e-5)
    assert not loaded.training and loaded.lm_head.weight is loaded.transformer.wte.weight  # tie restored
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert Blueprint.from_dict(cfg["extra"]["blueprint"]) == bp and cfg["extra"]["export"]["selector"] == selector
    assert load_exported_vocab(tmp_path) == vocab
    assert loaded.num_params() < model.num_params()


def test_explicit_blueprint_file(model: GPT, tmp_path: Path) -> None:
    spec = PartitionSpec.from_config(model.config, common="none")
    bp = Blueprint(heads=((0, 1), (2,), (0, 1, 3)), ffn=((1,), (0, 3), (2,)), n_head=4, ffn_groups=4)
    (tmp_path / "bp.json").write_text(bp.to_json())
    assert select_blueprint(model, spec, "explicit", blueprint=tmp_path / "bp.json") == bp
    export_subnet(model, bp, tmp_path / "e")  # no vocab -> no vocab.json
    assert load_exported_vocab(tmp_path / "e") is None
    idx = torch.randint(0, 64, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(load_exported(tmp_path / "e")(idx)[0], masked_logits(model, bp, idx), atol=1e-5,
                                   rtol=1e-5)


def test_load_errors_name_the_folder(model: GPT, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_exported(tmp_path)
    export_subnet(model, Blueprint.full(PartitionSpec.from_config(model.config)), tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not a GPTConfig"):
        load_exported(tmp_path)


def test_from_a_checkpoint_subnet_and_pruned(tmp_path: Path) -> None:
    ckpt = fit_tiny_checkpoint(tmp_path)
    full, sub, bp, vocab = export_checkpoint_subnet(ckpt, tmp_path / "s", "random", 2, seed=1, common="none")
    assert vocab is not None and load_exported_vocab(tmp_path / "s") == vocab and bp.sizes()[0] == (2, 2)
    meta = load_exported(tmp_path / "s").config.extra["export"]
    assert meta["selector"] == "random" and meta["checkpoint"] == str(ckpt) and sub.num_params() < full.num_params()
    with pytest.raises(ValueError, match="method='obs' is not a pruning method"):
        export_pruned(tmp_path / "missing.ckpt", tmp_path / "p", 2, "obs")  # checked before loading anything
    with pytest.raises(ValueError, match="needs size=N"):
        export_pruned(ckpt, tmp_path / "p", None, "magnitude")
    _, pruned, kept, _ = export_pruned(ckpt, tmp_path / "p", 2, "magnitude", common="none")
    assert load_exported(tmp_path / "p").config.extra["export"]["method"] == "magnitude"
    assert kept.sizes()[0] == (2, 2) and pruned.num_params() == sub.num_params()
