"""Exported subnets: same logits as the masked subnet, standalone reload, HF GPT-2 folder, CLI and errors."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from test_checkpoint import fit_tiny_checkpoint
from twist_lightning.export import (export_from_config, export_hf, export_subnet, load_exported, load_exported_vocab,
                                    register_configs, select_blueprint, to_hf)
from twist_lightning.model import GPT, GPTConfig
from twist_lightning.partition import Blueprint, PartitionSpec, subnet
from twist_lightning.vocab import CompactVocab

CONF = Path(__file__).resolve().parents[1] / "conf"
HAS_HF = importlib.util.find_spec("transformers") is not None


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    m = GPT(GPTConfig(n_layer=3, n_head=4, n_embd=32, block_size=16, vocab_size=64)).eval()
    with torch.no_grad():  # non-zero biases so a dropped bias or a missed scale would show
        for name, p in m.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    return m


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


def test_selection_errors(model: GPT, tmp_path: Path) -> None:
    spec = PartitionSpec.from_config(model.config, common="none")
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
    wrong = Blueprint(heads=((0,),) * 2, ffn=((0,),) * 2, n_head=4, ffn_groups=4)  # 2 layers, model has 3
    with pytest.raises(ValueError, match="does not match the model"):
        select_blueprint(model, spec, "explicit", blueprint=wrong)
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_exported(tmp_path)


def test_export_cli_compose(tmp_path: Path) -> None:
    ckpt = fit_tiny_checkpoint(tmp_path)  # a real 3-step Lightning checkpoint with a compact vocabulary
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("export", overrides=[f"checkpoint={ckpt}", "size=2", "selector=importance", "common=none",
                                           f"out={tmp_path / 'out'}", f"hf={HAS_HF}"])
        summary = export_from_config(cfg)
        bad = compose("export", overrides=[f"checkpoint={ckpt}", "size=7", f"out={tmp_path / 'bad'}"])
        missing = compose("export", overrides=[f"checkpoint={tmp_path / 'none.ckpt'}", "size=1", "out=x"])
        with pytest.raises(ConfigCompositionException, match="hf_layout"):  # a typo fails before any work
            compose("export", overrides=[f"checkpoint={ckpt}", "size=1", "out=x", "hf=true", "hf_layout=narrow"])
    assert summary["param_ratio"] < 1.0
    sub = load_exported(tmp_path / "out")
    assert sub.config.layer_heads == [2, 2, 2] and load_exported_vocab(tmp_path / "out").size == 256
    if HAS_HF:  # the HF folder holds the same, smaller model
        import transformers

        hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "hf").eval()
        idx = torch.randint(0, sub.config.vocab_size, (1, 8))
        with torch.no_grad():
            torch.testing.assert_close(hf(idx).logits, sub(idx)[0], atol=1e-5, rtol=1e-5)
        assert load_exported_vocab(tmp_path / "out" / "hf") == load_exported_vocab(tmp_path / "out")
    with pytest.raises(ValueError, match=r"size=7 is out of range"):
        export_from_config(bad)
    assert not (tmp_path / "bad").exists()  # failed before writing anything
    with pytest.raises(FileNotFoundError, match="checkpoint="):
        export_from_config(missing)


def test_inference_bench_tiny(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from twist_lightning.bench.__main__ import BENCHES, main

    out = tmp_path / "inference.json"
    argv = ["inference", "--preset", "tiny", "--out", str(out), "--warmup", "0", "--repeats", "1",
            "--latency-repeats", "1"]
    assert "inference" in BENCHES and main(argv) == 0
    report = json.loads(out.read_text())
    assert set(report) == {"bench", "machine", "config", "rows", "targets"} and report["bench"] == "inference"
    assert [r["name"] for r in report["rows"]] == ["dense", "3/4", "2/4", "1/4"]
    assert report["config"]["batch"] == 8 and report["config"]["seq_len"] == 32  # capped at the tiny block_size
    ratios = [r["flop_ratio"] for r in report["rows"]]
    assert ratios[0] == 1.0 and ratios == sorted(ratios, reverse=True)
    assert all(r["throughput_tok_s"] > 0 and r["latency_ms"] > 0 for r in report["rows"])
    assert report["targets"][0]["name"].startswith("2/4 batch-8 speedup") and "dense" in capsys.readouterr().out


def test_inference_bench_hf_rows(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from twist_lightning.bench.inference import run

    report = run(preset="tiny", warmup=0, repeats=1, latency_repeats=1, hf=True)
    rows = {r["name"]: r for r in report["rows"]}
    assert list(rows) == ["dense", "3/4", "2/4", "1/4", "hf dense", "hf 3/4", "hf 2/4", "hf 1/4"]
    for name in ("dense", "3/4", "2/4", "1/4"):  # the HF export is exactly as big as the subnet it came from
        assert rows[f"hf {name}"]["params_M"] == rows[name]["params_M"]
        assert rows[f"hf {name}"]["flop_ratio"] == rows[name]["flop_ratio"]
    assert rows["hf dense"]["speedup"] == 1.0 and [t["name"][:6] for t in report["targets"]] == ["2/4 ba", "hf 2/4"]


@pytest.mark.parametrize("method", ["flap", "reconstruct"])
def test_export_pruned_model_reloads_with_the_same_logits(tmp_path: Path, method: str) -> None:
    from twist_lightning.checkpoint import load_gpt
    from twist_lightning.evaluate import build_datamodule, train_calibration
    from twist_lightning.prune import calibrate, prune

    ckpt = fit_tiny_checkpoint(tmp_path)
    out = tmp_path / "pruned"
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("export", overrides=[f"checkpoint={ckpt}", "size=2", f"method={method}", "calib_samples=16",
                                           f"out={out}", f"hf={HAS_HF}"])
        summary = export_from_config(cfg)
        bad = compose("export", overrides=[f"checkpoint={ckpt}", "size=2", "method=obs", f"out={tmp_path / 'b'}"])
        clash = compose("export", overrides=[f"checkpoint={ckpt}", "size=2", "method=flap", "selector=importance",
                                             f"out={tmp_path / 'b'}"])
        uncompensated = compose("export", overrides=[f"checkpoint={ckpt}", "size=2", "method=flap",
                                                     "flap_compensate=false", "calib_samples=16",
                                                     f"out={tmp_path / 'u'}"])
    assert summary["param_ratio"] < 1.0
    sub = load_exported(out)
    assert sub.config.extra["export"]["method"] == method and sub.config.attn_scale[1] == 1.0
    # the same pruning done in Python gives the same model: the export stored the re-fitted weights, not a subnet
    model, vocab, saved = load_gpt(ckpt)
    dm, _ = build_datamodule(saved, {}, model.config.vocab_size, model.config.block_size, vocab)
    calib = calibrate(model, train_calibration(dm, 16, 0, torch.device("cpu")))
    ref = prune(model, 2, method, calib).model
    idx = torch.randint(0, sub.config.vocab_size, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(sub(idx)[0], ref(idx)[0])
        from twist_lightning.partition import extract

        plain = extract(model, prune(model, 2, method, calib).blueprint, scale=False)
        assert not torch.allclose(sub(idx)[0], plain(idx)[0])  # the kept weights were changed
    if HAS_HF:
        import transformers

        hf = transformers.AutoModelForCausalLM.from_pretrained(out / "hf", trust_remote_code=True).eval()
        with torch.no_grad():
            torch.testing.assert_close(hf(idx).logits, sub(idx)[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="method='obs' is not a pruning method"):
        export_from_config(bad)
    with pytest.raises(ValueError, match="drop selector=importance"):
        export_from_config(clash)
    assert not (tmp_path / "b").exists()
    if method == "flap":  # FLAP's units without the compensation: the kept weights as they were, scaled
        export_from_config(uncompensated)
        plain_scaled = extract(model, prune(model, 2, "flap", calib).blueprint)
        with torch.no_grad():
            torch.testing.assert_close(load_exported(tmp_path / "u")(idx)[0], plain_scaled(idx)[0])
