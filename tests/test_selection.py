"""Choosing one subnet: random, importance and explicit blueprints, select_blueprint (twist_lightning/selection.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from test_subnets import perturbed_model
from twist_lightning.blueprints import Blueprint, PartitionSpec
from twist_lightning.model import GPT, GPTConfig
from twist_lightning.selection import (SELECTORS, Selector, importance_blueprint, random_blueprint, select_blueprint,
                                       top_units, unit_scores)


# ---- deployment selectors -----------------------------------------------------------------------------------------
def test_importance_blueprint_picks_boosted_units() -> None:
    model = perturbed_model(n_layer=3, n_head=4, ffn_groups=8)
    spec = PartitionSpec.from_config(model.config)  # layer 1 split
    cfg, hd, w = model.config, model.config.head_dim, model.config.ffn_unit_width
    with torch.no_grad():
        block = model.transformer.h[1]
        for part in range(3):
            block.attn.c_attn.weight[part * cfg.n_embd + 2 * hd: part * cfg.n_embd + 3 * hd] *= 3.0  # head 2
        block.attn.c_proj.weight[:, 3 * hd:] *= 3.0  # head 3 writes louder (less than head 2's 3 * 1)
        block.attn.c_proj.weight[:, 2 * hd: 3 * hd] *= 2.0
        block.mlp.c_fc.weight[5 * w: 6 * w] *= 4.0  # FFN group 5
    heads, ffn = unit_scores(model)
    assert heads.shape == (3, 4) and ffn.shape == (3, 8)
    bp1 = importance_blueprint(model, spec, 1)
    assert bp1.heads[1] == (2,) and 5 in bp1.ffn[1] and len(bp1.ffn[1]) == 2  # 1/4 of 8 groups
    assert bp1.ffn[1] == tuple(sorted(ffn[1].topk(2).indices.tolist()))
    bp2 = importance_blueprint(model, spec, 2)
    assert bp2.heads[1] == (2, 3) and 5 in bp2.ffn[1] and len(bp2.ffn[1]) == 4
    assert bp2.heads[0] == (0, 1, 2, 3)  # common layer stays whole


def test_random_blueprint_deterministic_and_sized() -> None:
    spec = PartitionSpec(6, 12, 12)
    bp = random_blueprint(spec, 0.25, seed=3)
    assert bp == random_blueprint(spec, 0.25, seed=3) and bp != random_blueprint(spec, 0.25, seed=4)
    assert [s for s in bp.sizes()] == [(12, 12)] + [(3, 3)] * 4 + [(12, 12)]


def test_top_units_breaks_ties_to_the_lower_index() -> None:
    assert top_units(torch.tensor([1.0, 3.0, 3.0, 2.0]), 2) == [1, 2]
    assert top_units(torch.tensor([5.0, 5.0, 5.0]), 2) == [0, 1]  # deterministic, unlike topk


def test_selectors_are_the_enum() -> None:
    assert SELECTORS == ("random", "importance", "explicit") == tuple(s.value for s in Selector)


def test_select_blueprint_by_name_and_its_errors(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=3, n_head=4, n_embd=32, block_size=16, vocab_size=64)).eval()
    spec = PartitionSpec.from_config(model.config, common="none")
    assert select_blueprint(model, spec, "random", 2, seed=3) == random_blueprint(spec, 2, 3)
    assert select_blueprint(model, spec, Selector.importance.value, 0.5) == importance_blueprint(model, spec, 0.5)
    bp = Blueprint(heads=((0, 1), (2,), (0, 1, 3)), ffn=((1,), (0, 3), (2,)), n_head=4, ffn_groups=4)
    (tmp_path / "bp.json").write_text(bp.to_json())
    assert select_blueprint(model, spec, "explicit", blueprint=tmp_path / "bp.json") == bp
    assert select_blueprint(model, spec, "explicit", blueprint=bp) == bp
    for size in (0, 5, 1.5, -0.5):
        with pytest.raises(ValueError, match=rf"size={size!r} is out of range .*1\.\.4"):
            select_blueprint(model, spec, "random", size)
    with pytest.raises(ValueError, match="needs size="):
        select_blueprint(model, spec, "random", None)
    with pytest.raises(ValueError, match="selector='best' is not one of"):
        select_blueprint(model, spec, "best", 2)
    with pytest.raises(ValueError, match="needs blueprint="):
        select_blueprint(model, spec, "explicit")
    with pytest.raises(FileNotFoundError, match="blueprint="):
        select_blueprint(model, spec, "explicit", blueprint=tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"heads": 1}')
    with pytest.raises(ValueError, match="is not a Blueprint JSON"):
        select_blueprint(model, spec, "explicit", blueprint=tmp_path / "bad.json")
    wrong = Blueprint(heads=((0,),) * 2, ffn=((0,),) * 2, n_head=4, ffn_groups=4)  # 2 layers, model has 3
    with pytest.raises(ValueError, match="does not match the model"):
        select_blueprint(model, spec, "explicit", blueprint=wrong)
