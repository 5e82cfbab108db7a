"""The transformers export: pruned and padded GPT-2 folders, same logits as the subnet (hf_export.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_dense_export import masked_logits, tiny_model
from twist_lightning.blueprints import Blueprint, PartitionSpec
from twist_lightning.dense_export import export_subnet
from twist_lightning.hf_export import HFLayout, export_hf, parse_hf_layout, to_hf
from twist_lightning.model import GPT, GPTConfig
from twist_lightning.selection import select_blueprint


@pytest.fixture(scope="module")
def model() -> GPT:
    return tiny_model()


def hf_case(model: GPT, tmp_path: Path, common: str, bias: bool = True) -> tuple[GPT, GPT, Blueprint]:
    """A (full model, exported subnet, blueprint) triple; ``bias=False`` rebuilds the model without biases."""
    if not bias:
        torch.manual_seed(1)
        model = GPT(GPTConfig(**{**model.config.to_dict(), "bias": False, "extra": {}})).eval()
    spec = PartitionSpec.from_config(model.config, common=common)
    bp = select_blueprint(model, spec, "random", 2, seed=1)
    return model, export_subnet(model, bp, tmp_path), bp


@pytest.mark.parametrize("common,bias", [("none", True), ("default", True), ("default", False)])
def test_hf_pruned_export_same_logits_and_smaller(model: GPT, tmp_path: Path, common: str, bias: bool) -> None:
    transformers = pytest.importorskip("transformers")
    model, sub, bp = hf_case(model, tmp_path, common, bias)
    export_hf(sub, tmp_path / "hf")
    assert (tmp_path / "hf" / "hf_gpt2.py").is_file()  # the modeling code travels with the weights
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["model_type"] == "twist_gpt2" and cfg["auto_map"]["AutoModelForCausalLM"].startswith("hf_gpt2.")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()  # local folder: no download
    idx = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, masked_logits(model, bp, idx), atol=1e-5, rtol=1e-5)
    # the dropped units are gone, not zeroed: every layer is as narrow as the subnet's
    for i, block in enumerate(hf.transformer.h):
        heads, units = len(bp.heads[i]), len(bp.ffn[i])
        assert block.attn.c_attn.weight.shape == (32, 3 * heads * 8) and block.attn.c_proj.weight.shape == (heads * 8, 32)
        assert block.mlp.c_fc.weight.shape == (32, units * 32)
    assert hf.num_parameters() == sub.num_params(False) + (0 if bias else sum(  # HF always has biases
        p.numel() for n, p in hf.named_parameters() if n.endswith("bias")))
    assert hf.num_parameters() < model.num_params(False) or common == "default" and not bias


def test_hf_pruned_generate_matches_greedy(model: GPT, tmp_path: Path) -> None:
    """HF's KV cache holds a different head count per layer; greedy decoding must equal ours step by step."""
    pytest.importorskip("transformers")
    _, sub, _ = hf_case(model, tmp_path, "default")
    hf = to_hf(sub)
    prompt = torch.randint(0, 64, (2, 4))
    out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, do_sample=False,
                      pad_token_id=0)
    ours = prompt
    with torch.no_grad():
        for _ in range(8):
            ours = torch.cat([ours, sub(ours)[0][:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, ours)


def test_hf_pruned_loads_without_twist_lightning(model: GPT, tmp_path: Path) -> None:
    """trust_remote_code: the folder's own hf_gpt2.py builds the model in a process that never imports us."""
    pytest.importorskip("transformers")
    _, sub, _ = hf_case(model, tmp_path, "none")
    export_hf(sub, tmp_path / "hf")
    idx = torch.randint(0, 64, (2, 16))
    torch.save({"idx": idx, "logits": sub(idx)[0].detach()}, tmp_path / "ref.pt")
    code = ("import sys, torch; from transformers import AutoModelForCausalLM\n"
            "m = AutoModelForCausalLM.from_pretrained('hf', trust_remote_code=True).eval()\n"
            "ref = torch.load('ref.pt')\n"
            "torch.testing.assert_close(m(ref['idx']).logits, ref['logits'], atol=1e-5, rtol=1e-5)\n"
            "assert 'twist_lightning' not in sys.modules, 'loaded through twist_lightning'\n"
            "print(type(m).__module__, m.num_parameters())")
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    module, params = done.stdout.split()[-2:]
    assert module.startswith("transformers_modules.") and int(params) == sub.num_params(False)


@pytest.mark.parametrize("common", ["none", "default"])
def test_hf_padded_export_is_stock_gpt2(model: GPT, tmp_path: Path, common: str) -> None:
    transformers = pytest.importorskip("transformers")
    model, sub, bp = hf_case(model, tmp_path, common)
    export_hf(sub, tmp_path / "hf", layout="padded")
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    assert type(hf) is transformers.GPT2LMHeadModel and not (tmp_path / "hf" / "hf_gpt2.py").exists()
    idx = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, masked_logits(model, bp, idx), atol=1e-5, rtol=1e-5)
    # C=none: every layer has the same FFN width, so the padded model's FFN is narrower; attention never is
    assert hf.transformer.h[1].mlp.c_fc.weight.shape[1] == (64 if common == "none" else 128)
    assert hf.transformer.h[1].attn.c_attn.weight.shape[1] == 96
    assert to_hf(sub, layout="padded").config.twist_blueprint == bp.to_dict()
    with pytest.raises(ValueError, match=r"hf_layout='narrow' is not one of \['pruned', 'padded'\]"):
        to_hf(sub, layout="narrow")


def test_layout_names_and_a_subnet_is_required(model: GPT) -> None:
    assert parse_hf_layout("padded") is HFLayout.padded and parse_hf_layout(HFLayout.pruned) is HFLayout.pruned
    with pytest.raises(ValueError, match="hf_layout='narrow'"):
        parse_hf_layout("narrow")
    with pytest.raises(ValueError, match="needs a subnet made by"):
        to_hf(model)  # the full model has no blueprint in its config
